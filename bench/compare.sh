#!/usr/bin/env bash
# The whole topology side by side, in one run on fresh data directories (issue #7):
#   1. each workload straight to the primary, through the proxy, and through cache + proxy,
#      16 clients, rounds interleaved so machine noise falls on all three; ratios of the same run;
#   2. replication lag (commit → visible on a replica) at several write rates;
#   3. write throughput with 0 and with 2 replicas attached (1 and 16 clients);
#   4. full-sync throughput for a ~1 GB database.
# Usage: bench/compare.sh [seconds-per-run] [sections]   (default 8 and 1234: about 9 minutes;
#        leaves nothing running). `bench/compare.sh 5 1` runs only the workload table.
# Needs python3 and curl besides cargo. Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
sections=${2:-1234}
cargo build --release --quiet --bin dirkdb
bin=$PWD/target/release/dirkdb
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port); A1=$(port); A2=$(port); A3=$(port)
LB=$(port); LBA=$(port); CP=$(port); CA=$(port)
cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": $P2, "adminPort": $A2, "dataDirectory": "$work/m2" },
  { "id": "m3", "role": "REPLICA", "host": "127.0.0.1", "port": $P3, "adminPort": $A3, "dataDirectory": "$work/m3" } ],
  "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": $LB, "adminPort": $LBA },
  "cache": { "listenHost": "127.0.0.1", "listenPort": $CP, "adminPort": $CA, "ttlMillis": 600000, "maxEntries": 20000 },
  "replication": { "heartbeatMillis": 500 } }
JSON
start() { RUST_LOG=warn "$bin" "$@" 2>>"$work/process-${#pids[@]}.log" & pids+=($!); disown; }
want() { [[ $sections == *$1* ]]; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
committed() { curl -s "127.0.0.1:$1/replication/status" | python3 -c 'import json,sys;print(json.load(sys.stdin)["committedSequence"])'; }
wait_synced() { for _ in $(seq 1200); do local t; t=$(committed $A1); ok=1; for a in "$@"; do [ "$(committed $a)" = "$t" ] || ok=0; done; [ $ok = 1 ] && return; sleep 0.1; done; echo "replicas did not catch up"; exit 1; }
bench() { "$bin" bench --quiet --json --warmup 2 -d "$secs" "$@"; }
field() { python3 -c "import json,sys;d=json.loads(sys.argv[1]);print($2)" "$3"; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/Model name: *//p'); $(rustc --version)"
echo
start server --config "$work/config.json" --instance m1; wait_port $P1
start server --config "$work/config.json" --instance m2; wait_port $P2
start proxy --config "$work/config.json"; wait_port $LB
start cache --config "$work/config.json"; wait_port $CP
"$bin" bench --quiet --json --endpoint 127.0.0.1:$P1 --init --scale 1 -n 1 -w point-select >/dev/null
wait_synced $A2

if want 1; then
echo "## 1. Workloads, 16 clients, ${secs} s each (primary + 1 replica; reads through the proxy go to either)"
echo
echo "| workload | direct ops/s | p99 ms | proxy ops/s | p99 ms | cache+proxy ops/s | p99 ms | proxy ÷ direct | cache ÷ direct |"
echo "|---|---|---|---|---|---|---|---|---|"
for w in point-select range-select update insert mixed; do
  declare -A ops=() p99=()
  for via in direct proxy cache; do ops[$via]=0; p99[$via]=0; done
  for round in 1 2; do
    for via in direct proxy cache; do
      case $via in direct) ep=$P1;; proxy) ep=$LB;; cache) ep=$CP;; esac
      out=$(bench --endpoint 127.0.0.1:$ep -c 16 -w $w)
      ops[$via]=$(python3 -c "print(${ops[$via]} + $(field "$out" 'd["ops_per_sec"]' "$out") / 2)")
      p99[$via]=$(python3 -c "print(max(${p99[$via]}, $(field "$out" 'd["latency_ms"]["p99"]' "$out")))")
    done
  done
  python3 -c "d,p,c=${ops[direct]},${ops[proxy]},${ops[cache]};print('| $w | %.0f | %.2f | %.0f | %.2f | %.0f | %.2f | %.2f | %.2f |' % (d,${p99[direct]},p,${p99[proxy]},c,${p99[cache]},p/d,c/d))"
done
hits=$(curl -s 127.0.0.1:$CA/stats | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%.3f" % d["hit_ratio"])')
echo
echo "cache hit ratio over the whole run: $hits (point-select and range-select repeat 10,000 keys)"
echo
fi

if want 2; then
echo "## 2. Replication lag, commit → visible on a replica (writes straight to the primary)"
echo
echo "What is measured is the replication itself: m1 and m2 run alone (no proxy, no cache following"
echo "the change feed), with storage.synchronous=NORMAL, since one connection cannot commit 2,000"
echo "fsyncs a second on this disk."
echo
sed 's/"replication": {/"storage": { "synchronous": "NORMAL" }, "replication": {/' "$work/config.json" > "$work/config-normal.json"
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; sleep 0.3
start server --config "$work/config-normal.json" --instance m1; wait_port $P1
start server --config "$work/config-normal.json" --instance m2; wait_port $P2
wait_synced $A2
echo "| writes/s asked | achieved | lag p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
for rate in 500 1000 2000 3000; do
  out=$("$bin" bench --quiet --json --endpoint 127.0.0.1:$P1 --measure-lag --replica 127.0.0.1:$P2 --rate $rate -d "$secs" --warmup 1)
  field "$out" "'| $rate | %.0f | %.2f | %.2f | %.2f |' % (d['achieved_rate'], d['lag_ms']['p50'], d['lag_ms']['p99'], d['lag_ms']['max'])" "$out"
done
echo
fi

if want 3; then
echo "## 3. Write throughput on the primary (single-row INSERTs, synchronous=FULL)"
echo
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; sleep 0.3
start server --config "$work/config.json" --instance m1; wait_port $P1
declare -A w=()
for c in 1 16; do out=$(bench --endpoint 127.0.0.1:$P1 -c $c -w insert); w[0_$c]=$(field "$out" 'd["ops_per_sec"]' "$out"); done
start server --config "$work/config.json" --instance m2; wait_port $P2
start server --config "$work/config.json" --instance m3; wait_port $P3; m3pid=${pids[-1]}
wait_synced $A2 $A3
for c in 1 16; do out=$(bench --endpoint 127.0.0.1:$P1 -c $c -w insert); w[2_$c]=$(field "$out" 'd["ops_per_sec"]' "$out"); done
echo "| clients | no replica ops/s | 2 replicas ops/s | ratio |"
echo "|---|---|---|---|"
for c in 1 16; do python3 -c "print('| $c | %.0f | %.0f | %.2f |' % (${w[0_$c]}, ${w[2_$c]}, ${w[2_$c]}/${w[0_$c]}))"; done
echo
fi

if want 4; then
echo "## 4. Full sync of a ~1 GB database"
echo
[ -n "${m3pid:-}" ] && kill -9 "$m3pid"; sleep 0.3; rm -rf "$work/m3"
"$bin" client 127.0.0.1 "$P1" -c "CREATE DATABASE big; USE big; CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
  INSERT INTO b(v) SELECT hex(randomblob(500)) FROM n;" >/dev/null
start server --config "$work/config.json" --instance m3; wait_port $P3
for _ in $(seq 2400); do s=$(curl -s "127.0.0.1:$A3/replication/status"); grep -q '"mbPerSec"' <<<"$s" && break; sleep 0.25; done
python3 -c "import json,sys;f=json.loads(sys.argv[1])['following']['lastFullSync'];print('full sync: %.0f MB in %.1f s = %.0f MB/s (file on the primary: $(du -h "$work/m1/big.db" | cut -f1))' % (f['bytes']/1e6, f['seconds'], f['mbPerSec']))" "$s"
fi
