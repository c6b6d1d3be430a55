#!/usr/bin/env bash
# Instructions per statement of the proxy (or the cache), counted rather than timed, so that the
# machine's load does not enter (issue #19): the part under `valgrind --tool=callgrind`, counters
# zeroed after a warm-up and dumped after N measured statements of `dirkdb bench`.
#
# Usage: bench/proxy_profile.sh [topology] [workload] [operations]
#   topology   one   proxy in front of m1 alone (default)
#              two   the quick start's topology: m1 PRIMARY + m2 REPLICA, reads to either
#              cache the cache in front of the proxy of `two` (the cache is profiled)
#   workload   a `dirkdb bench -w` workload (default point-select)
#   operations statements measured (default 10000), 16 clients, after WARMUP (default 2000)
# GRIND=m1 or GRIND=m2 profiles that server instead, with the bench sent straight to it.
# DIRKDB_BIN=path uses that binary (default target/release/dirkdb, which must exist: a release
# build, so that the counts are those of the shipped code). Needs valgrind and python3.
# Prints the total and per-statement instruction count and leaves the callgrind file and the
# top functions (inclusive) in $OUT (default /tmp/proxy-profile-<topology>).
set -euo pipefail
cd "$(dirname "$0")/.."
topology=${1:-one}
workload=${2:-point-select}
ops=${3:-10000}
bin=${DIRKDB_BIN:-$PWD/target/release/dirkdb}
out=${OUT:-/tmp/proxy-profile-$topology}
[ -x "$bin" ] || { echo "no binary at $bin: nice cargo build --release --locked"; exit 1; }
rm -rf "$out"; mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened"; exit 1; }
P1=$(port); P2=$(port); A1=$(port); A2=$(port); LB=$(port); LBA=$(port); CP=$(port); CA=$(port)
replica=""
[ "$topology" != one ] && replica=", { \"id\": \"m2\", \"role\": \"REPLICA\", \"host\": \"127.0.0.1\", \"port\": $P2, \"adminPort\": $A2, \"dataDirectory\": \"$work/m2\" }"
cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" }$replica ],
  "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": $LB, "adminPort": $LBA },
  "cache": { "listenHost": "127.0.0.1", "listenPort": $CP, "adminPort": $CA, "ttlMillis": 600000, "maxEntries": 20000 },
  "replication": { "heartbeatMillis": 500 } }
JSON
start() { RUST_LOG=warn "$@" 2>>"$work/process-${#pids[@]}.log" & pids+=($!); }
grind() { start valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$@"; }
# GRIND=m1 or GRIND=m2 profiles that server instead, the bench sent straight to it.
grind_server=${GRIND:-}
server() { if [ "$grind_server" = "$1" ]; then grind "$bin" server --config "$work/config.json" --instance "$1"; else start "$bin" server --config "$work/config.json" --instance "$1"; fi; }
server m1; wait_port $P1
[ "$topology" != one ] && { server m2; wait_port $P2; }
endpoint=$LB
if [ -n "$grind_server" ]; then
  ground=${pids[$([ "$grind_server" = m1 ] && echo 0 || echo 1)]}
  start "$bin" proxy --config "$work/config.json"; wait_port $LB
  endpoint=$([ "$grind_server" = m1 ] && echo $P1 || echo $P2)
elif [ "$topology" = cache ]; then
  start "$bin" proxy --config "$work/config.json"; wait_port $LB
  grind "$bin" cache --config "$work/config.json"; wait_port $CP
  endpoint=$CP
else
  grind "$bin" proxy --config "$work/config.json"; wait_port $LB
fi
[ -z "$grind_server" ] && ground=${pids[-1]}
"$bin" bench --quiet --json --endpoint 127.0.0.1:$P1 --init --scale 1 -n 1 -w point-select >/dev/null
sleep 2 # the replica catches up with the load
"$bin" bench --quiet --json --endpoint 127.0.0.1:$endpoint -c 16 -n "${WARMUP:-2000}" --warmup 0 -w "$workload" >/dev/null
callgrind_control -z "$ground" >/dev/null
"$bin" bench --quiet --json --endpoint 127.0.0.1:$endpoint -c 16 -n "$ops" --warmup 0 -w "$workload" > "$out/bench.json"
callgrind_control -d "$ground" >/dev/null
sleep 1
dump=$out/callgrind.out.1 # the dump of the measured statements (the exit writes callgrind.out)
total=$(callgrind_annotate "$dump" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
callgrind_annotate --inclusive=yes "$dump" > "$out/inclusive.txt" 2>/dev/null
sed -n 1,100p "$out/inclusive.txt" > "$out/top-inclusive.txt"
python3 - "$total" "$ops" "$topology" "$workload" <<'PY'
import sys
total, ops = int(sys.argv[1]), int(sys.argv[2])
print(f"{sys.argv[3]} {sys.argv[4]}: {total:,} instructions over {ops:,} statements = {total / ops / 1000:.1f} K per statement")
PY
echo "callgrind file: $dump; top functions: $out/top-inclusive.txt; load: $(uptime | sed 's/.*load/load/')"
