#!/usr/bin/env bash
# SQLite's sqllogictest corpus (or any directory of .test files) against DirkDB: a primary, the
# proxy in front of it and a cache in front of the proxy, started inside the test process of
# tests/sqllogictest_e2e.rs (release build) over real TCP with DirkDB's client. Each file runs in a
# database of its own; records under `onlyif`/`skipif` are matched against the labels `sqlite`
# and `dirkdb`. Prints each target's first failures (file:line, the SQL, expected against actual),
# then one line per target:
#
#   sqllogictest server: 24721 passed, 0 failed, 0 skipped (3 files)
#
#   bench/sqllogictest.sh DIR              # every .test file under DIR (or one file), all three targets
#   TARGETS=server bench/sqllogictest.sh DIR            # only some targets (server,proxy,cache)
#   SHOW_FAILURES=50 bench/sqllogictest.sh DIR          # failures printed per target (10)
#   PROFILE=dev bench/sqllogictest.sh DIR               # the tests' debug build (no release build)
#   bench/sqllogictest.sh --fetch DIR      # first clone SQLite's corpus into DIR, then run DIR/test
#
# SQLite's corpus is 622 files, about 1 GB and millions of records (test/select1-5.test,
# test/evidence, test/index, test/random); the whole of it through three targets takes many hours here, so point
# the script at a part of it (DIR/test/evidence, DIR/test/index/between/1, …). --fetch clones the
# GitHub mirror of SQLite's Fossil repository (https://github.com/gregrahn/sqllogictest) with git;
# the canonical copy is `fossil clone https://www.sqlite.org/sqllogictest sqllogictest.fossil`
# then `fossil open sqllogictest.fossil` in an empty folder. Neither download was tried from this
# machine, which reaches no network: the figures in the README come from a copy of the mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch" ]; then
    dest="${2:?usage: bench/sqllogictest.sh --fetch DIR}"
    if [ ! -d "$dest/test" ]; then
        git clone --depth 1 https://github.com/gregrahn/sqllogictest "$dest"
    fi
    set -- "$dest/test"
fi
dir="${1:?usage: bench/sqllogictest.sh DIR (a directory of .test files, or one file) | --fetch DIR}"
[ -e "$dir" ] || { echo "no such file or directory: $dir" >&2; exit 2; }
DIRKDB_SLT_DIR="$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")" \
DIRKDB_SLT_TARGETS="${TARGETS:-}" \
DIRKDB_SLT_SHOW_FAILURES="${SHOW_FAILURES:-10}" \
    cargo test --profile "${PROFILE:-release}" --locked --workspace --test e2e -- --ignored --nocapture \
    sqllogictest_e2e::corpus_of_dirkdb_slt_dir 2>&1 | grep -v '^test \|^running \|^test result\|^$'
