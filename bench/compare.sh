#!/usr/bin/env bash
# The whole topology side by side, in one run on fresh data directories (issue #7):
#   1. each workload straight to the primary, through the proxy, and through cache + proxy,
#      16 clients, rounds interleaved so machine noise falls on all three; ratios of the same run;
#   2. replication lag (commit → visible on a replica) at several write rates;
#   3. write throughput with 0 and with 2 replicas attached (1 and 16 clients);
#   4. full-sync throughput for a ~1 GB database;
#   5. the table of 1 with the cores split in two "hosts" (taskset): servers and proxies on one
#      half, the bench client and the cache on the other, where a local cache runs.
# Usage: bench/compare.sh [seconds-per-run] [sections]   (default 8 and 1234: about 9 minutes;
#        5 is asked for by name, e.g. `bench/compare.sh 5 15`;
#        leaves nothing running). `bench/compare.sh 5 1` runs only the workload table;
#        WORKLOADS="point-select mixed" limits it to those rows, DIRKDB_BIN=path uses that binary
#        instead of building target/release/dirkdb.
# Needs python3 and curl besides cargo. Prints a Markdown table for BENCHMARKS.md.
# Peers in the same table, when they are on the machine (Debian: haproxy, pgbouncer, postgresql;
# nothing is installed here, a missing one prints "skipped: not installed"):
#   HAProxy in TCP mode in front of the same primary (a pure relay: the least any proxy costs);
#   PgBouncer in front of PostgreSQL, `pgbench -S` with the same client count, beside PostgreSQL direct.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
sections=${2:-1234}
workloads=${WORKLOADS:-point-select range-select update insert mixed}
if [ -n "${DIRKDB_BIN:-}" ]; then
  bin=$DIRKDB_BIN
else
  cargo build --release --quiet --bin dirkdb
  bin=$PWD/target/release/dirkdb
fi
work=$(mktemp -d)
pids=()
pg_stop=()
cleanup() {
  for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  for c in "${pg_stop[@]:-}"; do [ -n "$c" ] && eval "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port); A1=$(port); A2=$(port); A3=$(port)
LB=$(port); LBA=$(port); CP=$(port); CA=$(port); LB1=$(port); LBA1=$(port)
cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": $P2, "adminPort": $A2, "dataDirectory": "$work/m2" },
  { "id": "m3", "role": "REPLICA", "host": "127.0.0.1", "port": $P3, "adminPort": $A3, "dataDirectory": "$work/m3" } ],
  "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": $LB, "adminPort": $LBA },
  "cache": { "listenHost": "127.0.0.1", "listenPort": $CP, "adminPort": $CA, "ttlMillis": 600000, "maxEntries": 20000 },
  "replication": { "heartbeatMillis": 500 } }
JSON
# The one-instance topology: a second proxy in front of m1 alone.
python3 - "$work" "$LB1" "$LBA1" <<'PY'
import json, sys
work, lb, lba = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = json.load(open(f"{work}/config.json"))
c["instances"] = c["instances"][:1]
c["loadBalancer"].update(listenPort=lb, adminPort=lba)
json.dump(c, open(f"{work}/config-one.json", "w"))
PY
start() { RUST_LOG=warn "$bin" "$@" 2>>"$work/process-${#pids[@]}.log" & pids+=($!); disown; }
want() { [[ $sections == *$1* ]]; }
# Stops every process and starts the next section on new data directories: in section 1 the
# proxy gave m1 a write lease, and a primary that once held one refuses writes until a proxy
# renews it again (fencing, README "Leases"), while sections 2 and 3 run the servers alone.
fresh() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work/m1" "$work/m2" "$work/m3"; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
committed() { curl -s "127.0.0.1:$1/replication/status" | python3 -c 'import json,sys;print(json.load(sys.stdin)["committedSequence"])'; }
wait_synced() { for _ in $(seq 1200); do local t; t=$(committed $A1); ok=1; for a in "$@"; do [ "$(committed $a)" = "$t" ] || ok=0; done; [ $ok = 1 ] && return; sleep 0.1; done; echo "replicas did not catch up"; exit 1; }
bench() { "$bin" bench --quiet --json --warmup 2 -d "$secs" "$@"; }
field() { python3 -c "import json,sys;d=json.loads(sys.argv[1]);print($2)" "$3"; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(lscpu | sed -n 's/Model name: *//p'); $(rustc --version)"
echo
start server --config "$work/config.json" --instance m1; wait_port $P1; server_pids=(${pids[-1]})
start server --config "$work/config.json" --instance m2; wait_port $P2; server_pids+=(${pids[-1]})
start proxy --config "$work/config.json"; wait_port $LB; server_pids+=(${pids[-1]})
start cache --config "$work/config.json"; wait_port $CP; cache_pid=${pids[-1]}
start proxy --config "$work/config-one.json"; wait_port $LB1; server_pids+=(${pids[-1]})
"$bin" bench --quiet --json --endpoint 127.0.0.1:$P1 --init --scale 1 -n 1 -w point-select >/dev/null
wait_synced $A2

have() { command -v "$1" >/dev/null 2>&1; }
# HAProxy in TCP mode in front of m1; sets HP when it runs.
start_haproxy() {
  have haproxy || { echo "HAProxy: skipped: not installed (Debian: apt-get install haproxy)"; return; }
  HP=$(port)
  printf '%s\n' "global" "  maxconn 4096" "defaults" "  mode tcp" "  timeout connect 5s" \
    "  timeout client 1h" "  timeout server 1h" "frontend dirkdb" "  bind 127.0.0.1:$HP" \
    "  default_backend m1" "backend m1" "  server m1 127.0.0.1:$P1" > "$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" >>"$work/haproxy.log" 2>&1 & pids+=($!); disown
  wait_port $HP
}
# PostgreSQL (its own data directory, trust on loopback) and PgBouncer in transaction mode in
# front of it, both run as the postgres user when this script runs as root; sets PGP and PBP.
start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ] || ! have pgbench || ! have pgbouncer; then
    echo "PostgreSQL + PgBouncer: skipped: not installed (Debian: apt-get install postgresql pgbouncer)"; return
  fi
  local as=()
  if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); chmod 755 "$work"; fi
  mkdir -p "$work/pg"; [ ${#as[@]} -gt 0 ] && chown postgres "$work/pg"
  PGP=$(port); PBP=$(port)
  "${as[@]}" "$bin/initdb" -D "$work/pg/data" -A trust -U postgres >"$work/pg-init.log" 2>&1
  "${as[@]}" "$bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
    -o "-p $PGP -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
  pg_stop+=("${as[*]} $bin/pg_ctl -D $work/pg/data -m immediate stop")
  echo '"postgres" ""' > "$work/pg/users.txt"
  printf '%s\n' "[databases]" "bench = host=127.0.0.1 port=$PGP dbname=bench" "[pgbouncer]" \
    "listen_addr = 127.0.0.1" "listen_port = $PBP" "unix_socket_dir =" "auth_type = trust" \
    "auth_file = $work/pg/users.txt" "pool_mode = transaction" "max_client_conn = 200" \
    "default_pool_size = 16" "pidfile = $work/pg/pgbouncer.pid" "logfile = $work/pg/pgbouncer.log" \
    > "$work/pg/pgbouncer.ini"
  [ ${#as[@]} -gt 0 ] && chown postgres "$work/pg/pgbouncer.ini" "$work/pg/users.txt"
  "${as[@]}" pgbouncer -d "$work/pg/pgbouncer.ini"
  pg_stop+=("kill -9 \$(cat $work/pg/pgbouncer.pid)")
  wait_port $PBP
  "$bin/createdb" -h 127.0.0.1 -p "$PGP" -U postgres bench
  pgbench -i -q -s 1 -h 127.0.0.1 -p "$PGP" -U postgres bench >/dev/null 2>&1
}
pgbench_tps() { pgbench -S -n -c 16 -j 2 -T "$secs" -h 127.0.0.1 -p "$1" -U postgres bench 2>/dev/null \
  | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p'; }

# The workload table's rows (section 1, and section 5 with the processes pinned): each
# workload on each path, two interleaved rounds; $pin_client runs the bench client (empty: as
# is), the vias are the paths; then each path's mixed p50 per statement.
declare -A mixed_parts=()
# The cache's hits and misses so far.
cache_counts() { curl -s 127.0.0.1:$CA/stats | python3 -c 'import json,sys;d=json.load(sys.stdin);print(d["hits"], d["misses"])'; }

workload_rows() {
  local vias=$1 w via round ep out hits0 misses0 hits1 misses1
  mixed_parts=(); mixed_hits=0; mixed_misses=0
  for w in $workloads; do
    declare -A ops=() p99=()
    for via in direct haproxy proxy1 proxy cache pg pgb; do ops[$via]=0; p99[$via]=0; done
    for round in 1 2; do
      for via in $vias; do
        case $via in direct) ep=$P1;; haproxy) ep=$HP;; proxy1) ep=$LB1;; proxy) ep=$LB;; cache) ep=$CP;; esac
        [ "$w/$via" = mixed/cache ] && read -r hits0 misses0 <<<"$(cache_counts)"
        out=$($pin_client "$bin" bench --quiet --json --warmup 2 -d "$secs" --endpoint 127.0.0.1:$ep -c 16 -w $w)
        if [ "$w/$via" = mixed/cache ]; then
          read -r hits1 misses1 <<<"$(cache_counts)"
          mixed_hits=$((mixed_hits + hits1 - hits0)); mixed_misses=$((mixed_misses + misses1 - misses0))
        fi
        ops[$via]=$(python3 -c "print(${ops[$via]} + $(field "$out" 'd["ops_per_sec"]' "$out") / 2)")
        p99[$via]=$(python3 -c "print(max(${p99[$via]}, $(field "$out" 'd["latency_ms"]["p99"]' "$out")))")
        [ "$w" = mixed ] && mixed_parts[$via]+="$(field "$out" '" ".join("%s:%s" % (s["statement"], s["latency_ms"]["p50"]) for s in d["statements"])' "$out") "
      done
      if [ "$w" = point-select ] && [ -n "$PGP" ]; then
        ops[pg]=$(python3 -c "print(${ops[pg]} + $(pgbench_tps $PGP) / 2)")
        ops[pgb]=$(python3 -c "print(${ops[pgb]} + $(pgbench_tps $PBP) / 2)")
      fi
    done
    python3 - "$w" "${ops[direct]}" "${p99[direct]}" "${ops[haproxy]}" "${ops[proxy1]}" "${p99[proxy1]}" \
      "${ops[proxy]}" "${p99[proxy]}" "${ops[cache]}" "${p99[cache]}" "${ops[pg]}" "${ops[pgb]}" <<'PY'
import sys
w = sys.argv[1]
d, dp, h, p1, p1p, p2, p2p, c, cp, pg, pgb = map(float, sys.argv[2:])
opt = lambda v, f="%.0f": (f % v) if v else "—"
ratio = lambda a, b: ("%.2f" % (a / b)) if a and b else "—"
print("| %s | %.0f | %.2f | %s | %.0f | %.2f | %.0f | %.2f | %.0f | %.2f | %s | %.2f | %.2f | %.2f | %s | %s | %s |" % (
    w, d, dp, opt(h), p1, p1p, p2, p2p, c, cp, ratio(p1, h), p1 / d, p2 / d, c / d,
    opt(pg), opt(pgb), ratio(pgb, pg)))
PY
  done
  if [[ " $workloads " == *" mixed "* ]]; then
    echo
    echo "mixed, each statement's p50 in ms (two rounds): where a client of the mix spends its time"
    echo
    echo "| path | point-select p50 | update p50 |"
    echo "|---|---|---|"
    for via in direct haproxy proxy1 proxy cache; do
      [ -n "${mixed_parts[$via]:-}" ] || continue
      python3 - "$via" ${mixed_parts[$via]} <<'PY'
import sys
via, parts = sys.argv[1], [p.rsplit(":", 1) for p in sys.argv[2:]]
reads = [float(v) for k, v in parts if k == "point-select"]
writes = [float(v) for k, v in parts if k == "update"]
show = lambda vs: " / ".join("%.2f" % v for v in vs)
print("| %s | %s | %s |" % (via, show(reads), show(writes)))
PY
    done
    if [ $((mixed_hits + mixed_misses)) -gt 0 ]; then
      echo
      python3 -c "print('cache hit ratio in the mixed rounds alone: %.3f' % ($mixed_hits / $((mixed_hits + mixed_misses))))"
    fi
  fi
}

if want 1; then
HP=; PGP=
start_haproxy
start_postgres
echo "## 1. Workloads, 16 clients, ${secs} s each (primary + 1 replica; reads through the proxy go to either)"
echo
echo "proxy (1) is a proxy in front of m1 alone; proxy (2) the quick start's two-instance topology."
echo "HAProxy relays TCP to m1. PostgreSQL and PgBouncer run \`pgbench -S\` (select by primary key,"
echo "100,000 rows) with the same 16 clients, in the same rounds; their columns fill the point-select row."
echo
echo "| workload | direct ops/s | p99 ms | HAProxy-TCP ops/s | proxy (1) ops/s | p99 ms | proxy (2) ops/s | p99 ms | cache+proxy ops/s | p99 ms | proxy (1) ÷ HAProxy | proxy (1) ÷ direct | proxy (2) ÷ direct | cache ÷ direct | PostgreSQL tps | PgBouncer tps | PgBouncer ÷ PostgreSQL |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
vias="direct proxy1 proxy cache"; [ -n "$HP" ] && vias="direct haproxy proxy1 proxy cache"
pin_client= workload_rows "$vias"
hits=$(curl -s 127.0.0.1:$CA/stats | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%.3f" % d["hit_ratio"])')
echo
echo "cache hit ratio over the whole run: $hits (point-select and range-select repeat 10,000 keys)"
echo
fi

# Section 5: the cache where it is meant to run, on the client's host. The machine's cores are
# split in two "hosts": the servers and both proxies on the first half, the bench client and
# the cache on the second (taskset; every thread of each running process is moved).
if want 5 && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  cores=$(nproc); half=$((cores / 2))
  server_cpus=0-$((half - 1)); client_cpus=$half-$((cores - 1))
  pin() { local cpus=$1; shift; for p in "$@"; do taskset -a -p -c "$cpus" "$p" >/dev/null; done; }
  pin "$server_cpus" "${server_pids[@]}"; pin "$client_cpus" "$cache_pid"
  read -r hits0 misses0 <<<"$(cache_counts)"
  echo "## 5. Workloads, 16 clients, the client's host apart: servers and proxies on CPUs $server_cpus, bench client and cache on CPUs $client_cpus"
  echo
  echo "The same table as section 1, with the cores split in two hosts: direct, proxy (1) and proxy (2)"
  echo "put the bench client alone on the client's CPUs; the cache runs beside it, as a local cache does."
  echo
  echo "| workload | direct ops/s | p99 ms | HAProxy-TCP ops/s | proxy (1) ops/s | p99 ms | proxy (2) ops/s | p99 ms | cache+proxy ops/s | p99 ms | proxy (1) ÷ HAProxy | proxy (1) ÷ direct | proxy (2) ÷ direct | cache ÷ direct | PostgreSQL tps | PgBouncer tps | PgBouncer ÷ PostgreSQL |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  PGP= pin_client="taskset -c $client_cpus" workload_rows "direct proxy1 proxy cache"
  read -r hits1 misses1 <<<"$(cache_counts)"
  echo
  python3 -c "h=$hits1-$hits0; m=$misses1-$misses0; print('cache hit ratio in this section: %.3f' % (h / max(h + m, 1)))"
  echo
  pin "0-$((cores - 1))" "${server_pids[@]}" "$cache_pid"
fi

if want 2; then
echo "## 2. Replication lag, commit → visible on a replica (writes straight to the primary)"
echo
echo "What is measured is the replication itself: m1 and m2 run alone (no proxy, no cache following"
echo "the change feed), with storage.synchronous=NORMAL, since one connection cannot commit 2,000"
echo "fsyncs a second on this disk."
echo
sed 's/"replication": {/"storage": { "synchronous": "NORMAL" }, "replication": {/' "$work/config.json" > "$work/config-normal.json"
fresh
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
fresh
start server --config "$work/config.json" --instance m1; wait_port $P1
"$bin" bench --quiet --endpoint 127.0.0.1:$P1 --init --scale 1 -n 1 >/dev/null
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
