#!/usr/bin/env bash
# What security costs (issue #15): `dirkdb bench -w point-select -c 16` straight to a server with
# authentication off, with `requireAuth` on (every connection AUTHs once, every statement is
# checked against the user's grants), and with requireAuth plus TLS, in interleaved rounds of
# the same run (off, auth, tls, off, auth, tls, …) so the machine's noise falls on all three.
# Usage: bench/security.sh [seconds-per-round] [rounds]   (default 8 and 5). Prints every round
# and the ratios of the medians. Leaves nothing running. Needs python3 and openssl.
# The binary: $DIRKDB_BIN, else a release build in ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-5}
if [ -z "${DIRKDB_BIN:-}" ]; then
  cargo build --release --quiet --locked --bin dirkdb
  DIRKDB_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/dirkdb
fi
bin=$DIRKDB_BIN
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

# A test CA and a certificate for 127.0.0.1 (serverAuth and clientAuth).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$work/node.key" -out "$work/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' > "$work/ext"
openssl x509 -req -in "$work/node.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext" -out "$work/node.pem" 2>/dev/null
echo "bench-pw" > "$work/bench.pw"
hash=$(echo "bench-pw" | "$bin" passwd)

declare -A PORT
for kind in off auth tls; do
  PORT[$kind]=$(port)
  admin=$(port)
  case $kind in
    off) security='{}' ;;
    auth) security="{ \"requireAuth\": true, \"users\": [ { \"name\": \"bench\", \"passwordHash\": \"$hash\", \"grants\": { \"*\": [\"READ\", \"WRITE\", \"ADMIN\"] } } ] }" ;;
    tls) security="{ \"requireAuth\": true, \"users\": [ { \"name\": \"bench\", \"passwordHash\": \"$hash\", \"grants\": { \"*\": [\"READ\", \"WRITE\", \"ADMIN\"] } } ],
                    \"tls\": { \"certFile\": \"$work/node.pem\", \"keyFile\": \"$work/node.key\", \"caFile\": \"$work/ca.pem\" } }" ;;
  esac
  cat > "$work/$kind.json" <<JSON
{ "instances": [ { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": ${PORT[$kind]}, "adminPort": $admin, "dataDirectory": "$work/$kind" } ],
  "storage": { "synchronous": "FULL" }, "security": $security }
JSON
  RUST_LOG=warn "$bin" server --config "$work/$kind.json" --instance m1 2>>"$work/$kind.log" & pids+=($!)
  wait_port "${PORT[$kind]}"
done

args() {
  case $1 in
    off) echo "--endpoint 127.0.0.1:${PORT[off]}" ;;
    auth) echo "--endpoint 127.0.0.1:${PORT[auth]} --user bench --password-file $work/bench.pw" ;;
    tls) echo "--endpoint 127.0.0.1:${PORT[tls]} --user bench --password-file $work/bench.pw --tls --ca $work/ca.pem" ;;
  esac
}
for kind in off auth tls; do
  # shellcheck disable=SC2046
  "$bin" bench --quiet --init -d 1 --warmup 0 -w point-select -c 1 $(args $kind) >/dev/null
done

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the start; $secs s per round, $rounds rounds"
echo "| round | off ops/s | auth ops/s | auth+TLS ops/s | auth ÷ off | TLS ÷ off |"
echo "|---|---|---|---|---|---|"
results=$work/results
for r in $(seq "$rounds"); do
  line="| $r"
  for kind in off auth tls; do
    # shellcheck disable=SC2046
    out=$("$bin" bench --quiet --json --warmup 2 -d "$secs" -w point-select -c 16 $(args $kind))
    ops=$(python3 -c 'import json,sys;print(round(json.loads(sys.argv[1])["ops_per_sec"]))' "$out")
    echo "$r $kind $ops" >> "$results"
    eval "ops_$kind=$ops"
    line="$line | $ops"
  done
  line="$line | $(python3 -c "print(f'{$ops_auth/$ops_off:.3f}')") | $(python3 -c "print(f'{$ops_tls/$ops_off:.3f}')") |"
  echo "$line"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {k: [int(o) for _, kk, o in rows if kk == k] for k in ("off", "auth", "tls")}
med = {k: statistics.median(v) for k, v in by.items()}
spread = {k: (max(v) - min(v)) / med[k] for k, v in by.items()}
per_round = lambda k: [a / b for a, b in zip(by[k], by["off"])]
print(f"| median | {med['off']:.0f} | {med['auth']:.0f} | {med['tls']:.0f} | "
      f"{med['auth']/med['off']:.3f} | {med['tls']/med['off']:.3f} |")
print(f"spread (max-min)/median: off {spread['off']:.1%}, auth {spread['auth']:.1%}, tls {spread['tls']:.1%}; "
      f"auth/off per round {min(per_round('auth')):.3f}-{max(per_round('auth')):.3f}, "
      f"median {statistics.median(per_round('auth')):.3f}")
PY
