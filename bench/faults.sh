#!/usr/bin/env bash
# The long run of the fault harness (tests/fault_e2e.rs): ten 5 s pauses of the primary under
# four writers with write concern 1, twenty random faults (kill -9, pause, cuts of a node from
# the proxy, from its peers or from everyone, primary <-> one replica, one-way cuts; the seed is
# printed, FAULT_SEED=<seed> replays it), then the CI scenarios (pauses of the primary in OPLOG
# and FILE mode, a paused and an isolated replica, the primary cut from one replica, from both,
# deaf to both, from the proxy alone, from its replicas then the proxy in OPLOG and FILE mode,
# asymmetric cuts, majority leases, four random faults, …). Each run prints one line per
# scenario: acknowledged writes, failed or unknown ones, lost ones (must be 0), rollback
# entries, probe rounds with two writers (must be 0), read-your-writes reads going backwards
# (must be 0: below the session's own acknowledged increment, or below the position a
# reconnecting client carried into its new session with DIRK SEEN), the read-your-writes
# clients' reconnects, and their reads below an earlier session's increment in a session that
# carried no position (one of the two clients never carries its position: such reads are
# allowed, and counted to show how often a reconnect alone would look like a read backwards).
# Tests run one at a time (--test-threads 1); one run takes about 8 minutes on a
# loaded 2-core machine.
#
#   bench/faults.sh            # one long run
#   RUNS=10 bench/faults.sh    # ten of them (the issue's "done when")
#   FAULTS_LOG=faults.log bench/faults.sh   # keep the whole output (servers' logs of failures)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-1}"
if [ -n "${FAULTS_LOG:-}" ]; then
    log="$FAULTS_LOG"
    : >"$log"
else
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
fi
for run in $(seq 1 "$runs"); do
    echo "== fault run $run of $runs"
    cargo test --workspace --locked --test e2e fault_e2e:: -- --include-ignored --nocapture --test-threads 1 2>&1 \
        | tee -a "$log" \
        | grep -E "^(test |random faults: seed|.*acknowledged, )|panicked|FAILED|went backwards|lost:" \
        | cut -c1-2000 || true
done
# Totals per scenario over every run: runs, acknowledged writes, lost ones, probe rounds with
# two writers, reads that went backwards, reconnects of the read-your-writes clients, reads
# below an earlier session's write without a carried position, and test failures.
echo "== totals over $runs run(s)"
perl -ne '
    $failed += $1 if /^test result: FAILED\. \d+ passed; (\d+) failed/;
    s/^test \S+ \.\.\. //;
    if (/^(.*?): (\d+) acknowledged, .*? (\d+) lost, .*?\((\d+) with two writers\), .*?\((\d+) backwards\)/) {
        my ($k, $ack, $lost, $two, $back) = ($1, $2, $3, $4, $5);
        my ($re, $unbound) = /(\d+) reconnects, (\d+) reads below an earlier/ ? ($1, $2) : (0, 0);
        $k =~ s/, seed \d+.*//;
        $n{$k}++; $a{$k} += $ack; $l{$k} += $lost; $t{$k} += $two; $b{$k} += $back;
        $r{$k} += $re; $u{$k} += $unbound;
    }
    END {
        printf "%-58s %4s %9s %5s %5s %5s %6s %7s\n", "scenario", "runs", "acked", "lost", "two", "back", "reconn", "unbound";
        printf "%-58s %4d %9d %5d %5d %5d %6d %7d\n", $_, $n{$_}, $a{$_}, $l{$_}, $t{$_}, $b{$_}, $r{$_}, $u{$_} for sort keys %n;
        printf "failed tests: %d\n", $failed // 0;
    }' "$log"
