#!/usr/bin/env bash
# What zstd compression of the replication stream costs and saves on loopback (issue #19), in one
# run on fresh data directories: two clusters of a primary and two replicas, identical but for
# `replication.compression` (NONE against ZSTD at the given level), measured in interleaved
# rounds so machine noise falls on both:
#   1. write throughput on the primary with both replicas attached, 1 and 16 connections;
#   2. commit-to-visible lag on a replica at 2,000 writes/s;
#   3. a full sync of a text-heavy database (~100 MB of course notes) to a wiped replica: seconds,
#      MB/s and the bytes that crossed the wire.
# Usage: bench/compression.sh [seconds-per-round] [zstd-level] [rounds]   (default 8, 3, 2)
# Needs python3 and curl besides cargo; leaves nothing running.
# The third section once seemed to stall: the replica restarted right after `kill -9` while the
# kernel still held its listening port, exited with "Address already in use", and the script
# waited ten minutes for a sync that could not start. It now waits for both ports to be free and
# stops at once if the restarted replica exits. One run (1 s rounds, load 2.4, 2026-12-02): full
# sync of 119 MB, NONE 1.11 s (107 MB/s, 118.8 MB on the wire), ZSTD level 3 1.60 s (74 MB/s,
# 5.9 MB on the wire, 20x fewer bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
level=${2:-3}
rounds=${3:-2}
cargo build --release --quiet --bin dirkdb --example replication_figures
bin=$PWD/target/release/dirkdb
fig=$PWD/target/release/examples/replication_figures
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# wait_free PORT: a process killed with -9 holds its listening socket until the kernel has torn it
# down; restarting before that fails with "Address already in use".
wait_free() {
  python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(200):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1]))); sys.exit(0)
    except OSError:
        time.sleep(0.05)
    finally:
        s.close()
sys.exit(f"port {sys.argv[1]} still taken 10 s after kill -9")
PY
}

# cluster NAME COMPRESSION-JSON: writes $work/NAME/config.json and sets NAME_P1.. and NAME_A1..
cluster() {
  local name=$1 comp=$2 i
  mkdir -p "$work/$name"
  for i in 1 2 3; do eval "${name}_P$i=$(port)"; eval "${name}_A$i=$(port)"; done
  local p1=${name}_P1 p2=${name}_P2 p3=${name}_P3 a1=${name}_A1 a2=${name}_A2 a3=${name}_A3
  cat > "$work/$name/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": ${!p1}, "adminPort": ${!a1}, "dataDirectory": "$work/$name/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": ${!p2}, "adminPort": ${!a2}, "dataDirectory": "$work/$name/m2" },
  { "id": "m3", "role": "REPLICA", "host": "127.0.0.1", "port": ${!p3}, "adminPort": ${!a3}, "dataDirectory": "$work/$name/m3" } ],
  "replication": { "heartbeatMillis": 500, "compression": $comp } }
JSON
}
start() { # start CLUSTER INSTANCE: records the pid in pid_CLUSTER_INSTANCE
  RUST_LOG=warn $bin server --config "$work/$1/config.json" --instance "$2" 2>>"$work/$1/$2.log" &
  pids+=($!); eval "pid_$1_$2=$!"; disown $!; sleep 0.5
}
status() { curl -s "127.0.0.1:$1/replication/status"; }
committed() { status "$1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["committedSequence"])'; }
wait_synced() { # wait_synced CLUSTER
  local a1=${1}_A1 a2=${1}_A2 a3=${1}_A3 _
  for _ in $(seq 1200); do
    [ "$(committed ${!a2})" = "$(committed ${!a1})" ] && [ "$(committed ${!a3})" = "$(committed ${!a1})" ] && return
    sleep 0.1
  done
  echo "replicas of $1 did not catch up"; exit 1
}
wire() { # wire ADMIN-PORT: stream and wire bytes the node has sent its replicas, from /metrics
  curl -s "127.0.0.1:$1/metrics" | awk '/^dirkdb_replication_stream_bytes_total/{s+=$2} /^dirkdb_replication_wire_bytes_total/{w+=$2} END{printf "%d %d", s, w}'
}
ops() { sed -E 's/.*ops\/s=([0-9]+).*/\1/' <<<"$1"; }

cluster plain '{"type": "NONE"}'
cluster zstd "{\"type\": \"ZSTD\", \"level\": $level}"
for c in plain zstd; do for i in m1 m2 m3; do start $c $i; done; done
wait_synced plain; wait_synced zstd
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); zstd level $level; $rounds interleaved rounds of ${secs}s"

declare -A sum
echo "== write throughput on the primary, 2 replicas attached"
for r in $(seq "$rounds"); do
  for conns in 1 16; do
    for c in plain zstd; do
      p1=${c}_P1
      line=$($fig writes "127.0.0.1:${!p1}" "$conns" "$secs")
      echo "round $r $c: $line"
      sum[$c$conns]=$(( ${sum[$c$conns]:-0} + $(ops "$line") ))
    done
  done
done
for conns in 1 16; do
  python3 -c "print('writes, $conns conn(s): NONE %d ops/s, ZSTD %d ops/s, ZSTD/NONE %.2f' % (${sum[plain$conns]}/$rounds, ${sum[zstd$conns]}/$rounds, ${sum[zstd$conns]}/${sum[plain$conns]}))"
done

echo "== commit-to-visible lag on a replica at 2,000 writes/s"
for r in $(seq "$rounds"); do
  for c in plain zstd; do
    p1=${c}_P1; p2=${c}_P2
    echo "round $r $c: $($fig lag "127.0.0.1:${!p1}" "127.0.0.1:${!p2}" 2000 "$secs")"
  done
done

echo "== full sync of a text-heavy database to a wiped replica"
for c in plain zstd; do
  p1=${c}_P1
  $bin client 127.0.0.1 "${!p1}" -c "CREATE DATABASE notes; USE notes; CREATE TABLE n(id INTEGER PRIMARY KEY, course TEXT, body TEXT);
    WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 200000)
    INSERT INTO n(course, body) SELECT 'Course ' || (i % 40), 'Lecture ' || i || ': the replication stream carries every committed change of the primary to its replicas, in commit order, with the term and the history of the node that wrote it; a replica applies each batch in one transaction. ' || (i * 7919 % 1000) FROM k;" >/dev/null
  wait_synced "$c"
done
echo "database file on each primary: $(du -h "$work/plain/m1/notes.db" | cut -f1)"
for c in plain zstd; do
  a1=${c}_A1; a3=${c}_A3; p3=${c}_P3; pid=pid_${c}_m3
  kill -9 "${!pid}"; rm -rf "$work/$c/m3"
  wait_free "${!p3}"; wait_free "${!a3}"
  before=$(wire "${!a1}")
  start "$c" m3
  for _ in $(seq 2400); do
    kill -0 "${!pid}" 2>/dev/null || { echo "$c m3 exited during its full sync:"; tail -5 "$work/$c/m3.log"; exit 1; }
    s=$(status "${!a3}" 2>/dev/null || true)
    grep -q lastFullSync <<<"$s" && grep -q '"mbPerSec"' <<<"$s" && break
    sleep 0.25
  done
  after=$(wire "${!a1}")
  python3 - "$c" "$s" "$before" "$after" <<'PY'
import json, sys
name, status, before, after = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
f = status["following"]["lastFullSync"]
stream, wire = int(after[0]) - int(before[0]), int(after[1]) - int(before[1])
print(f"{name}: full sync {f['bytes'] / 1e6:.0f} MB in {f['seconds']:.2f} s = {f['mbPerSec']:.0f} MB/s; "
      f"sent {stream / 1e6:.1f} MB of stream as {wire / 1e6:.1f} MB on the wire ({stream / max(wire, 1):.1f}x fewer)")
PY
done
