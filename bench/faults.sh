#!/usr/bin/env bash
# The long run of the fault harness (tests/fault_e2e.rs): ten 5 s pauses of the primary under
# four writers with write concern 1, twenty random faults (kill -9, pause, cuts of any node;
# the seed is printed, FAULT_SEED=<seed> replays it), two pauses in FILE mode, then the CI scenarios (a paused replica,
# an isolated replica, primary <-> replicas cut, proxy <-> primary cut, four random faults, a
# write waiting at the gate while its node is fenced). Each run prints one line per
# scenario: acknowledged writes, failed or unknown ones, lost ones (must be 0), rollback
# entries, probe rounds with two writers (must be 0), read-your-writes reads going backwards
# (must be 0).
#
#   bench/faults.sh            # one long run
#   RUNS=10 bench/faults.sh    # ten of them (the issue's "done when")
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-1}"
for run in $(seq 1 "$runs"); do
    echo "== fault run $run of $runs"
    cargo test --test fault_e2e -- --include-ignored --nocapture --test-threads 1 2>&1 \
        | grep -E "^(test |random faults: seed|.*acknowledged, )|panicked|FAILED" || true
done
