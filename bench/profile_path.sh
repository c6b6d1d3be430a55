#!/usr/bin/env bash
# One workload through one path of the quick start's topology (m1 PRIMARY + m2 REPLICA, the proxy,
# the cache in front of it), on fresh data directories and free ports: the throughput, each
# statement's latency, each process's share of a core over 5 s of the run (the bench client's too), the cache's counters,
# and with `perf` a `perf record -g` profile of each process (written to $OUT/<process>.data).
#
#   bench/profile_path.sh WORKLOAD PATH [SECONDS] [perf]
#     WORKLOAD: point-select | range-select | update | insert | mixed   (dirkdb bench -w)
#     PATH: direct (m1) | proxy | cache
#   C=1 bench/profile_path.sh update cache 6     # clients (default 16)
#   BENCH_ARGS="--rate 5000" bench/profile_path.sh mixed cache 10   # more `dirkdb bench` options
#   DIRKDB_BIN=… OUT=/tmp/prof …                 # binary (default target/release/dirkdb), profile folder
#   START=15 bench/profile_path.sh mixed cache 22  # begin the 5 s window later (default 3 s), warm
#   QS_EXTRA='"replication": {…}' …              # more config sections (bench/quickstart.sh)
#
# The run starts cold (an empty cache); SECONDS ≥ 8 leaves the 5 s window after a 3 s start.
# Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DIRKDB_BIN:-target/release/dirkdb}
w=${1:?usage: bench/profile_path.sh WORKLOAD direct|proxy|cache [SECONDS] [perf]}
via=${2:?usage: bench/profile_path.sh WORKLOAD direct|proxy|cache [SECONDS] [perf]}
secs=${3:-10}
perf=${4:-}
out=${OUT:-/tmp/prof}
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release --locked" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
. bench/quickstart.sh
quickstart_up
names=(m1 m2 proxy cache)
case $via in direct) ep=$P1;; proxy) ep=$LB;; cache) ep=$CP;; *) echo "PATH is direct, proxy or cache" >&2; exit 2;; esac
"$bin" bench --quiet --json --warmup 2 -d "$secs" --endpoint 127.0.0.1:$ep -c "${C:-16}" -w "$w" ${BENCH_ARGS:-} > "$work/out.json" &
bench_pid=$!
sleep "${START:-3}"
perfs=()
if [ -n "$perf" ]; then
  mkdir -p "$out"
  for i in 0 1 2 3; do
    perf record -F 2000 -g -o "$out/${names[$i]}.data" -p "${pids[$i]}" -- sleep 5 >/dev/null 2>&1 &
    perfs+=($!)
  done
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=(); for i in 0 1 2 3; do before+=("$(ticks "${pids[$i]}")"); done
bench_before=$(ticks "$bench_pid")
sleep 5
hz=$(getconf CLK_TCK)
for i in 0 1 2 3; do
  echo "${names[$i]}: $(( ($(ticks "${pids[$i]}") - before[i]) * 100 / hz / 5 )) % of a core"
done
echo "bench client: $(( ($(ticks "$bench_pid") - bench_before) * 100 / hz / 5 )) % of a core"
wait $bench_pid
python3 - "$work/out.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("ops/s %.0f" % d.get("ops_per_sec", 0))
for s in d.get("statements", []):
    l = s["latency_ms"]
    print("  %-14s p50 %.2f ms, mean %.2f, p99 %.2f" % (s["statement"][:14], l["p50"], l["mean"], l["p99"]))
PY
curl -s "127.0.0.1:$CA/stats" | python3 -c 'import json,sys;d=json.load(sys.stdin);print("cache: hit ratio %.3f, hits %d, misses %d, refreshed %d, writes %d, mean settle %.0f us" % (d["hit_ratio"], d["hits"], d["misses"], d.get("refreshed", 0), d["writes"], d["write_settle_micros"] / max(d["write_settles"], 1)))'
for p in "${perfs[@]:-}"; do [ -n "$p" ] && wait "$p"; done
[ -n "$perf" ] && echo "profiles: $out/{m1,m2,proxy,cache}.data (perf report -i …)"
exit 0
