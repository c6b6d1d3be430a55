#!/usr/bin/env bash
# FILE replication figures on this machine, on fresh data directories: write → visible on the
# secondary, and bytes sent per small write to a database of MB megabytes, first with page
# deltas, then with whole-file copies (pageDeltas: false).
# Usage: bench/file_mode.sh [MB] [writes]   (defaults 100 and 20; FILE_INTERVAL=s sets intervalSeconds;
#        leaves nothing running)
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-100}
writes=${2:-20}
cargo build --release --quiet --bin dirkdb --example file_mode_figures
bin=target/release/dirkdb
fig=target/release/examples/file_mode_figures
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for deltas in true false; do
  P1=$(port); P2=$(port); A1=$(port); A2=$(port)
  rm -rf "$work/m1" "$work/m2"
  cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": $P2, "adminPort": $A2, "dataDirectory": "$work/m2" } ],
  "replication": { "type": "FILE", "intervalSeconds": ${FILE_INTERVAL:-2}, "pageDeltas": $deltas } }
JSON
  for m in m1 m2; do RUST_LOG=${RUST_LOG:-warn} $bin server --config "$work/config.json" --instance $m 2>>"$work/$m.log" & pids+=($!); done
  sleep 1
  echo "== FILE mode, pageDeltas=$deltas, ${mb} MB database"
  $fig 127.0.0.1:$P1 127.0.0.1:$A1 127.0.0.1:$P2 "$mb" "$writes"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
