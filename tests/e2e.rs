//! Every end-to-end test of the `dirkdb` package in one test binary (`Cargo.toml`:
//! `autotests = false` and one `[[test]]`), each file of `tests/` a module of it, with the harness
//! of `tests/common/` compiled once. Each test file used to be a binary of its own: on a fresh
//! clone the 22 of them were compiled and linked one by one, and each ran alone, its slowest test
//! leaving the other test thread idle. Here one harness runs every test, four at a time on two
//! cores (`.cargo/config.toml` sets `RUST_TEST_THREADS`): most of a test's time is spent waiting
//! on the processes it started, so two threads left the cores idle.
//!
//!   cargo test --workspace --test e2e                    # all of them
//!   cargo test --workspace --test e2e fault_e2e::        # one file's tests
//!   cargo test --workspace --test e2e -- --exact proxy_e2e::a_test_name
//!
//! A new test file must be declared below: `every_test_file_is_a_module` fails otherwise.

mod common;

mod bench_smoke;
mod cache_e2e;
mod cache_freshness_e2e;
mod change_feed_e2e;
mod client_cli;
mod compression_e2e;
mod conflicts_e2e;
mod dirkdb_e2e;
mod dos_e2e;
mod etcd_e2e;
mod fault_e2e;
mod file_replication_e2e;
mod metrics_e2e;
mod multi_primary_e2e;
mod proxy_e2e;
mod replicate_files_e2e;
mod replication_e2e;
mod security_e2e;
mod server_e2e;
mod sqllogictest_e2e;
mod status_page_e2e;
mod tls_e2e;

/// A file of `tests/` that is not declared here is compiled by nobody and its tests never run
/// (with `autotests = false` cargo no longer finds it by itself).
#[test]
fn every_test_file_is_a_module() {
    let this = include_str!("e2e.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/") {
        let path = entry.expect("entry of tests/").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        if module != "e2e" && !this.contains(&format!("\nmod {module};\n")) {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "tests/{missing:?} not declared as `mod` in tests/e2e.rs: they would never run"
    );
}
