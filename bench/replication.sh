#!/usr/bin/env bash
# Replication figures on this machine, in one run on fresh data directories:
#   write throughput on the primary with 0 and with 2 replicas attached (and their ratio),
#   commit-to-visible lag at several write rates, and full-sync throughput for a >= 1 GB database.
# Usage: bench/replication.sh [seconds-per-measurement]   (default 10; leaves nothing running)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release --quiet --bin dirkdb --example replication_figures
bin=target/release/dirkdb
fig=target/release/examples/replication_figures
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port); A1=$(port); A2=$(port); A3=$(port)
cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": $P2, "adminPort": $A2, "dataDirectory": "$work/m2" },
  { "id": "m3", "role": "REPLICA", "host": "127.0.0.1", "port": $P3, "adminPort": $A3, "dataDirectory": "$work/m3" } ],
  "replication": { "heartbeatMillis": 500 } }
JSON
start() { RUST_LOG=warn $bin server --config "$work/config.json" --instance "$1" 2>>"$work/$1.log" & pids+=($!); sleep 0.5; }
committed() { curl -s "127.0.0.1:$1/replication/status" | python3 -c 'import json,sys;print(json.load(sys.stdin)["committedSequence"])'; }
wait_synced() { for _ in $(seq 600); do [ "$(committed $A2)" = "$(committed $A1)" ] && [ "$(committed $A3)" = "$(committed $A1)" ] && return; sleep 0.1; done; echo "replicas did not catch up"; exit 1; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; storage.synchronous=FULL (default)"
start m1
echo "== write throughput, no replica"
w0_1=$($fig writes 127.0.0.1:$P1 1 "$secs"); echo "$w0_1"
w0_16=$($fig writes 127.0.0.1:$P1 16 "$secs"); echo "$w0_16"
start m2; start m3; wait_synced
echo "== write throughput, 2 replicas attached"
w2_1=$($fig writes 127.0.0.1:$P1 1 "$secs"); echo "$w2_1"
w2_16=$($fig writes 127.0.0.1:$P1 16 "$secs"); echo "$w2_16"
ops() { sed -E 's/.*ops\/s=([0-9]+).*/\1/' <<<"$1"; }
python3 -c "print('ratio (2 replicas / none): 1 conn %.2f, 16 conns %.2f' % ($(ops "$w2_1")/$(ops "$w0_1"), $(ops "$w2_16")/$(ops "$w0_16")))"
echo "== commit-to-visible lag on a replica (2 replicas attached)"
for rate in 250 500 1000 2000 3000; do $fig lag 127.0.0.1:$P1 127.0.0.1:$P2 "$rate" "$secs"; done
echo "== full sync of a >= 1 GB database"
kill -9 "${pids[2]}"; rm -rf "$work/m3"
$bin client 127.0.0.1 "$P1" -c "CREATE DATABASE big; USE big; CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
  INSERT INTO b(v) SELECT hex(randomblob(500)) FROM n;" >/dev/null
echo "database file on the primary: $(du -h "$work/m1/big.db" | cut -f1) (rows 1 KB each, plus their oplog entries)"
start m3
for _ in $(seq 1200); do s=$(curl -s "127.0.0.1:$A3/replication/status"); grep -q lastFullSync <<<"$s" && grep -q '"mbPerSec"' <<<"$s" && break; sleep 0.25; done
python3 -c "import json,sys;f=json.loads(sys.argv[1])['following']['lastFullSync'];print('full sync: %.0f MB in %.1f s = %.0f MB/s' % (f['bytes']/1e6, f['seconds'], f['mbPerSec']))" "$s"
