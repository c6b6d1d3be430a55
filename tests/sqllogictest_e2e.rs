//! The sqllogictest conformance check: the corpus in `tests/slt/` (SQLite's sqllogictest format;
//! the expected results of every file but `dialect.test` come from plain SQLite through
//! `tests/slt/complete.py`) runs against a primary, through the proxy in front of it, and through
//! a cache in front of the proxy, all over real TCP with DirkDB's client. Every record must pass
//! on all three.
//!
//! `bench/sqllogictest.sh <dir>` runs any directory of `.test` files the same way (SQLite's whole
//! corpus, for one) through the ignored test below and prints the counts per target.

use crate::common;
#[path = "common/slt.rs"]
mod slt;

use std::path::{Path, PathBuf};

use common::inproc;

/// The parts a corpus runs against, in the order they are tried: (name, SQL address).
struct Targets {
    _primary: inproc::Primary,
    _proxy: inproc::Part,
    _cache: inproc::Part,
    addrs: Vec<(&'static str, String)>,
}

/// A primary, a proxy in front of it and a cache in front of the proxy, in this process.
async fn targets() -> Targets {
    let primary = inproc::primary().await;
    let proxy = inproc::proxy(&primary).await;
    let cache = inproc::cache(&primary, &proxy.addr()).await;
    let addrs = vec![
        ("server", primary.part.addr()),
        ("proxy", proxy.addr()),
        ("cache", cache.addr()),
    ];
    Targets {
        _primary: primary,
        _proxy: proxy,
        _cache: cache,
        addrs,
    }
}

/// Runs `files` against each target named in `only` (all when empty), results of more than
/// `hash_threshold` values compared by MD5 (see [`slt::run_files`]); one report per target.
async fn run_corpus(
    files: &[PathBuf],
    only: &[String],
    hash_threshold: usize,
) -> Vec<(&'static str, slt::Report)> {
    let targets = targets().await;
    let mut reports = Vec::new();
    for (name, addr) in &targets.addrs {
        if only.is_empty() || only.iter().any(|o| o == name) {
            reports.push((
                *name,
                slt::run_files(addr, name, files, hash_threshold).await,
            ));
        }
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_corpus_passes_on_the_server_the_proxy_and_the_cache() {
    let files = slt::test_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt"));
    assert!(files.len() >= 5, "the corpus in tests/slt: {files:?}");
    for (target, report) in run_corpus(&files, &[], 0).await {
        assert!(
            report.tally.failed == 0,
            "{target}: {report}\n{}",
            report.failures.join("\n\n")
        );
        // Every record of the corpus ran (two of select.test are for other engines).
        assert!(report.tally.passed >= 300, "{target}: {report}");
        assert_eq!(report.tally.skipped, 2, "{target}: {report}");
    }
}

/// `DIRKDB_SLT_DIR` (a directory of `.test` files, or one file) against the targets listed in
/// `DIRKDB_SLT_TARGETS` (`server,proxy,cache` by default); prints each target's counts and its
/// first failures. Run by `bench/sqllogictest.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs DIRKDB_SLT_DIR; run through bench/sqllogictest.sh"]
async fn corpus_of_dirkdb_slt_dir() {
    let dir = std::env::var("DIRKDB_SLT_DIR").expect("DIRKDB_SLT_DIR names a directory");
    let only: Vec<String> = std::env::var("DIRKDB_SLT_TARGETS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let shown: usize = std::env::var("DIRKDB_SLT_SHOW_FAILURES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    // SQLite's corpus hashes every result of more than 8 values without saying so in its files.
    let hash_threshold: usize = std::env::var("DIRKDB_SLT_HASH_THRESHOLD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let files = slt::test_files(Path::new(&dir));
    assert!(!files.is_empty(), "no .test file under {dir}");
    for (target, report) in run_corpus(&files, &only, hash_threshold).await {
        for failure in report.failures.iter().take(shown) {
            println!("{target}: {failure}\n");
        }
        println!("sqllogictest {target}: {report}");
    }
}
