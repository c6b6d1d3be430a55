#!/usr/bin/env bash
# What a write through the cache costs against the proxy it fronts (issue #20, item 4), in one
# run on the quick start's topology (m1 PRIMARY + m2 REPLICA + proxy + cache, fresh data
# directories, release build), proxy and cache rounds interleaved, two rounds each:
#   1. updates at 1 and at 16 clients, with the cache's own wait for the change feed
#      (dirkdb_cache_write_settle_micros_total / dirkdb_cache_write_settles_total);
#   2. the mixed workload's writes: mixed with 15 clients and, beside it, one client updating
#      through the same path; first with the mixed load through the path measured (the cache
#      then raises the whole workload's rate, so m1 commits more writes a second), then with the
#      mixed load straight to m1 for both (only the writer's path differs).
# Usage: bench/cache_writes.sh   (about 2 minutes; leaves nothing running)
# SPLIT=1 splits the cores in two "hosts" as bench/compare.sh's section 5 does (taskset): m1,
# m2 and the proxy on the first half, the cache and every bench client on the second.
# DIRKDB_BIN=path uses that binary (default target/release/dirkdb). Needs python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIRKDB_BIN:-$PWD/target/release/dirkdb}
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release --locked"; exit 1; }
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
. bench/quickstart.sh
quickstart_up
client=()
if [ "${SPLIT:-0}" = 1 ]; then
  half=$(( $(nproc) / 2 ))
  for p in "${pids[@]:0:3}"; do taskset -a -p -c 0-$((half - 1)) "$p" >/dev/null; done
  taskset -a -p -c $half-$(( $(nproc) - 1 )) "${pids[3]}" >/dev/null
  client=(taskset -c $half-$(( $(nproc) - 1 )))
  echo "(cores split: servers and proxy on CPUs 0-$((half - 1)), cache and bench clients on the rest)"
  echo
fi
settle() { curl -s 127.0.0.1:$CA/metrics | awk '/^dirkdb_cache_write_settles_total/ {n=$2} /^dirkdb_cache_write_settle_micros_total/ {u=$2} END {print n+0, u+0}'; }
name() { [ "$1" = $LB ] && echo proxy || echo cache; }
summary() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); l = r["latency_ms"]; print("%.0f ops/s, p50 %s ms, p99 %s ms" % (r["ops_per_sec"], l["p50"], l["p99"]))' "$1"; }
echo "## Updates through the proxy and through the cache"
echo
for clients in 1 16; do
  n=$([ $clients = 1 ] && echo 1000 || echo 10000)
  for ep in $LB $CP $LB $CP; do
    read -r n0 u0 < <(settle)
    "${client[@]}" "$bin" bench --quiet --json --endpoint 127.0.0.1:$ep -c $clients -n $n --warmup 0 -w update > "$work/r.json"
    read -r n1 u1 < <(settle)
    wait_ms=$(python3 -c "import sys; n=$n1-$n0; print(f'{($u1-$u0)/n/1000:.3f} ms' if n else '-')")
    echo "- $clients client(s), $(name $ep): $(summary "$work/r.json"); the cache's wait for the feed per write: $wait_ms"
  done
done
echo
echo "## The mixed workload's writes: one client updating beside mixed (15 clients, 8 s)"
echo
for background in path m1; do
  for ep in $LB $CP $LB $CP; do
    bg=$([ $background = m1 ] && echo $P1 || echo $ep)
    "${client[@]}" "$bin" bench --quiet --json --endpoint 127.0.0.1:$bg -c 15 -d 8 -w mixed > "$work/mixed.json" &
    mixed=$!
    sleep 1
    "${client[@]}" "$bin" bench --quiet --json --endpoint 127.0.0.1:$ep -c 1 -d 6 --warmup 0 -w update > "$work/w.json"
    wait $mixed
    echo "- mixed through $([ $background = m1 ] && echo "m1 directly" || name $ep) ($(summary "$work/mixed.json")); the writer through $(name $ep): $(summary "$work/w.json")"
  done
done
