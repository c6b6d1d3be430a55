#!/usr/bin/env bash
# MULTI_PRIMARY figures (issue #16), in one run on fresh data directories, beside SINGLE_PRIMARY:
#   1. write throughput, three masters with the writes spread over tables of all three owners,
#      against SINGLE_PRIMARY with two replicas, the same clients and tables: each statement to
#      any table through the proxy; each client one table through the proxy; each client one
#      table straight to its owner (the primary); rounds interleaved so machine noise falls on
#      both; storage.synchronous=FULL, write concern 0, single-row INSERTs;
#   2. lag between masters, commit on the owner -> visible on another master, p50/p99/max at
#      1,000 and 2,000 writes/s (and a primary -> replica figure at the same rates), measured by
#      `dirkdb bench --measure-lag --poll --pipeline 64` with storage.synchronous=NORMAL as in
#      bench/compare.sh (one connection cannot commit 2,000 fsyncs a second here): the writer
#      sends each INSERT at its time without waiting for the previous answer (at most 64
#      unanswered), so one connection reaches the rate; rows still commit in id order, and each
#      row's lag counts from its own acknowledgement.
# Usage: bench/multi_primary.sh [seconds-per-run]   (default 8; about 4 minutes; leaves nothing
#        running). DIRKDB_BIN=path uses that binary instead of building target/release/dirkdb;
#        DIRKDB_BENCH_BIN=path runs `dirkdb bench` from another binary (the same load generator
#        against two server builds).
# Needs python3 and curl besides cargo. Prints Markdown tables for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
if [ -n "${DIRKDB_BIN:-}" ]; then
  bin=$DIRKDB_BIN
else
  cargo build --release --quiet --bin dirkdb
  bin=$PWD/target/release/dirkdb
fi
bench_bin=${DIRKDB_BENCH_BIN:-$bin}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start() { RUST_LOG=warn "$bin" "$@" 2>>"$work/process-${#pids[@]}.log" & pids+=($!); disown; }
wait_port() { for _ in $(seq 400); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
bench() { "$bench_bin" bench --quiet --json --warmup 2 -d "$secs" "$@"; }
field() { python3 -c "import json,sys;d=json.loads(sys.argv[1]);print($2)" "$3"; }
client() { "$bin" client 127.0.0.1 "$1" -c "$2" >/dev/null; }
# Runs `client` until it succeeds (the proxy's first health round, a database just created on
# its owner and not yet on the others).
settle() { for _ in $(seq 100); do client "$1" "$2" 2>/dev/null && return; sleep 0.2; done; client "$1" "$2"; }

# DirkDB's rendezvous (core/src/rendezvous.rs): FNV-1a 64 over the UTF-16 code units of
# "key|id", compared as signed 64-bit integers, the highest wins, a tie to the earlier master.
# `names <prefix> <key-template>` prints, for m1, m2, m3, the first <prefix><i> whose keys
# (the template's {} replaced) are all owned by that master.
names() {
  python3 - "$1" "$2" <<'PY'
import sys
prefix, templates = sys.argv[1], sys.argv[2].split(",")
def score(key, mid):
    h = 0xcbf29ce484222325
    data = (key + "|" + mid).encode("utf-16-le")
    for i in range(0, len(data), 2):
        h ^= data[i] | (data[i + 1] << 8)
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h
def owner(key, ids=("m1", "m2", "m3")):
    best = None
    for i, mid in enumerate(ids):
        s = score(key, mid)
        if best is None or s > best[0]:
            best = (s, i)
    return best[1]
out = []
for m in range(3):
    i = 0
    while not all(owner(t.replace("{}", f"{prefix}{i}")) == m for t in templates):
        i += 1
    out.append(f"{prefix}{i}")
print(" ".join(out))
PY
}

# Two topologies side by side, each three instances and a proxy on ports of their own.
config() { # config <file> <mode> <synchronous> <dir> <lb> <lba> <p1> <a1> <p2> <a2> <p3> <a3>
  local roles
  if [ "$2" = MULTI_PRIMARY ]; then roles=(MASTER MASTER MASTER); else roles=(PRIMARY REPLICA REPLICA); fi
  local writes='"mode": "SINGLE_PRIMARY"'
  [ "$2" = MULTI_PRIMARY ] && writes='"mode": "MULTI_PRIMARY", "partition": "DB_OBJECT", "hash": "RENDEZVOUS"'
  cat > "$1" <<JSON
{ "configVersion": 1,
  "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": $5, "adminPort": $6 },
  "instances": [
    { "id": "m1", "role": "${roles[0]}", "host": "127.0.0.1", "port": $7, "adminPort": $8, "dataDirectory": "$4/m1" },
    { "id": "m2", "role": "${roles[1]}", "host": "127.0.0.1", "port": $9, "adminPort": ${10}, "dataDirectory": "$4/m2" },
    { "id": "m3", "role": "${roles[2]}", "host": "127.0.0.1", "port": ${11}, "adminPort": ${12}, "dataDirectory": "$4/m3" } ],
  "routing": { "reads": { "strategy": "ROUND_ROBIN" }, "writes": { $writes } },
  "replication": { "type": "OPLOG", "heartbeatMillis": 500 },
  "storage": { "synchronous": "$3" } }
JSON
}
MLB=$(port); MLBA=$(port); M1=$(port); MA1=$(port); M2=$(port); MA2=$(port); M3=$(port); MA3=$(port)
SLB=$(port); SLBA=$(port); S1=$(port); SA1=$(port); S2=$(port); SA2=$(port); S3=$(port); SA3=$(port)
boot() { # boot FULL|NORMAL: (re)starts both topologies with that storage.synchronous
  for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; pids=(); sleep 0.3
  config "$work/mp.json" MULTI_PRIMARY "$1" "$work/mp" $MLB $MLBA $M1 $MA1 $M2 $MA2 $M3 $MA3
  config "$work/sp.json" SINGLE_PRIMARY "$1" "$work/sp" $SLB $SLBA $S1 $SA1 $S2 $SA2 $S3 $SA3
  for m in m1 m2 m3; do start server --config "$work/mp.json" --instance $m; start server --config "$work/sp.json" --instance $m; done
  for p in $M1 $M2 $M3 $S1 $S2 $S3; do wait_port $p; done
  start proxy --config "$work/mp.json"; start proxy --config "$work/sp.json"
  wait_port $MLB; wait_port $SLB
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/Model name: *//p'); load: $(uptime | sed 's/.*load average: //')"
echo
boot FULL
read -r W1 W2 W3 <<<"$(names w 'DB:dirkbench|TABLE:{}')"
for lb in $MLB $SLB; do
  settle $lb "CREATE DATABASE IF NOT EXISTS dirkbench"
  for t in $W1 $W2 $W3; do settle $lb "USE dirkbench; CREATE TABLE IF NOT EXISTS $t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"; done
done
for t in $W1 $W2 $W3; do echo "INSERT INTO $t(k, v) VALUES (:n, :s)"; done > "$work/spread.sql"
i=0; for t in $W1 $W2 $W3; do i=$((i + 1)); echo "INSERT INTO $t(k, v) VALUES (:n, :s)" > "$work/own$i.sql"; done
sleep 1

# Three benches at once, bench i on endpoint i writing only table i (6 clients each); the sum.
pinned() {
  local outs=() i=0
  for p in "$@"; do i=$((i + 1))
    bench --endpoint 127.0.0.1:$p -c 6 -w custom --sql-file "$work/own$i.sql" > "$work/d$i.json" & outs+=($!)
  done
  wait "${outs[@]}"
  python3 - "$work" <<'PY'
import json, sys
d = [json.load(open(f"{sys.argv[1]}/d{i}.json")) for i in (1, 2, 3)]
print(sum(x["ops_per_sec"] for x in d), max(x["latency_ms"]["p99"] for x in d))
PY
}
declare -A ops=() p99=()
runs="mp_mixed sp_mixed mp_pinned sp_pinned mp_direct sp_direct"
for k in $runs; do ops[$k]=0; p99[$k]=0; done
add() { ops[$1]=$(python3 -c "print(${ops[$1]} + $2 / 2)"); p99[$1]=$(python3 -c "print(max(${p99[$1]}, $3))"); }
for round in 1 2; do
  for k in $runs; do
    case $k in
      mp_mixed|sp_mixed)
        lb=$MLB; [ $k = sp_mixed ] && lb=$SLB
        out=$(bench --endpoint 127.0.0.1:$lb -c 18 -w custom --sql-file "$work/spread.sql")
        o=$(field "$out" 'd["ops_per_sec"]' "$out"); p=$(field "$out" 'd["latency_ms"]["p99"]' "$out");;
      mp_pinned) read -r o p <<<"$(pinned $MLB $MLB $MLB)";;
      sp_pinned) read -r o p <<<"$(pinned $SLB $SLB $SLB)";;
      mp_direct) read -r o p <<<"$(pinned $M1 $M2 $M3)";;
      sp_direct) read -r o p <<<"$(pinned $S1 $S1 $S1)";;
    esac
    add $k "$o" "$p"
  done
done
rows() { curl -s "127.0.0.1:$1/replication/checksum" | python3 -c 'import json,sys;print(json.load(sys.stdin)["databases"]["dirkbench"]["rows"])'; }
echo "## MULTI_PRIMARY write throughput, ${secs} s per run, 2 rounds interleaved (synchronous=FULL, write concern 0)"
echo
echo "Single-row INSERTs into $W1, $W2, $W3 (owners m1, m2, m3 by DirkDB's rendezvous), 18 clients."
echo "*Each statement any table*: every client draws the table at random per INSERT, through the"
echo "proxy. *Each client one table*: three benches of 6 clients at once, bench i writing table i only"
echo "(through the proxy, or straight to table i's owner, i.e. to the primary for SINGLE_PRIMARY)."
echo
echo "| how | MULTI_PRIMARY ops/s | p99 ms | SINGLE_PRIMARY ops/s | p99 ms | MULTI ÷ SINGLE |"
echo "|---|---|---|---|---|---|"
line() { python3 -c "print('| $1 | %.0f | %.2f | %.0f | %.2f | %.2f |' % (${ops[mp_$2]}, ${p99[mp_$2]}, ${ops[sp_$2]}, ${p99[sp_$2]}, ${ops[mp_$2]} / ${ops[sp_$2]}))"; }
line "each statement any table, through the proxy" mixed
line "each client one table, through the proxy" pinned
line "each client one table, straight to its owner" direct
echo
for _ in $(seq 100); do [ "$(rows $MA1)" = "$(rows $MA2)" ] && [ "$(rows $MA2)" = "$(rows $MA3)" ] && break; sleep 0.2; done
echo "rows of dirkbench afterwards on m1, m2, m3: $(rows $MA1), $(rows $MA2), $(rows $MA3)"
echo

echo "## Lag between masters, commit on the owner -> visible on another master (synchronous=NORMAL)"
echo
echo "\`dirkdb bench --measure-lag --poll --pipeline 64\`: one connection writes lagprobe on its owner at"
echo "the rate asked (each INSERT at its time, at most 64 unanswered); another connection polls the"
echo "other instance (resolution: one poll round trip)."
echo
boot NORMAL
read -r L1 _ _ <<<"$(names lag 'DB:{},DB:{}|TABLE:lagprobe')"
lag() { "$bench_bin" bench --quiet --json --endpoint 127.0.0.1:$1 --measure-lag --poll --pipeline 64 --replica 127.0.0.1:$2 --rate $3 -d "$secs" --warmup 1 --database $4; }
echo "| from -> to | writes/s asked | achieved | lag p50 ms | p99 ms | max ms | poll round trip p50 ms |"
echo "|---|---|---|---|---|---|---|"
for rate in 1000 2000; do
  for pair in "m1 -> m2 (MULTI_PRIMARY)|$M1|$M2|$L1" "m1 -> m3 (MULTI_PRIMARY)|$M1|$M3|$L1" "primary -> replica (SINGLE_PRIMARY)|$S1|$S2|lagsp"; do
    IFS='|' read -r what from to db <<<"$pair"
    out=$(lag "$from" "$to" "$rate" "$db")
    field "$out" "'| $what | $rate | %.0f | %.2f | %.2f | %.2f | %s |' % (d['achieved_rate'], d['lag_ms']['p50'], d['lag_ms']['p99'], d['lag_ms']['max'], d['poll_ms']['p50'])" "$out"
  done
done
echo
echo "load after the run: $(uptime | sed 's/.*load average: //')"
