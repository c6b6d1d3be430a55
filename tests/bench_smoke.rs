//! Smoke tests of `dirkdb bench` against real `dirkdb server` processes: each workload kind
//! runs, `-n` runs exactly that many operations, a custom SQL file works, an unreachable
//! endpoint exits with status 2, and `--measure-lag` measures a replica (also with its writes
//! pipelined, `--pipeline`).

use crate::common;

use std::process::{Command, Output};

use common::cluster::Cluster;
use common::ServerProcess;
use serde_json::Value;

/// Runs `dirkdb bench ARGS --json -q` and returns its exit status and parsed summary.
fn bench(args: &[&str]) -> (Option<i32>, Value, Output) {
    let output = Command::new(common::dirkdb_bin())
        .arg("bench")
        .args(args)
        .args(["--json", "-q"])
        .output()
        .expect("run dirkdb bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code(), summary, output)
}

/// Runs a bench that must succeed and returns its summary.
fn bench_ok(args: &[&str]) -> Value {
    let (code, summary, output) = bench(args);
    assert_eq!(
        code,
        Some(0),
        "dirkdb bench {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(summary.is_object(), "no JSON summary: {output:?}");
    summary
}

fn u64_field(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {summary}"))
}

fn ms(summary: &Value, group: &str, field: &str) -> f64 {
    summary[group][field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {group}.{field} in {summary}"))
}

async fn bench_rows(server: &ServerProcess) -> i64 {
    let mut client = server.client().await;
    client.execute("USE dirkbench").await.expect("USE");
    let rs = client
        .query("SELECT count(*) FROM bench")
        .await
        .expect("count");
    rs.rows[0][0].as_i64().expect("a count")
}

#[tokio::test]
async fn workloads_run_against_a_server() {
    let server = ServerProcess::start();
    let port = server.port.to_string();
    let p = port.as_str();

    let mixed = bench_ok(&[
        "--port", p, "--init", "--scale", "1", "-w", "mixed", "-c", "4", "-d", "2", "--warmup", "0",
    ]);
    assert_eq!(mixed["workload"], "mixed");
    assert_eq!(u64_field(&mixed, "concurrency"), 4);
    assert!(u64_field(&mixed, "operations") > 0, "{mixed}");
    assert_eq!(u64_field(&mixed, "errors"), 0, "{mixed}");
    assert!(
        mixed["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{mixed}"
    );
    let (p50, p99, max) = (
        ms(&mixed, "latency_ms", "p50"),
        ms(&mixed, "latency_ms", "p99"),
        ms(&mixed, "latency_ms", "max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{mixed}");
    let mixed_parts = statements(&mixed);
    let names: Vec<&str> = mixed_parts.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["point-select", "update"], "{mixed}");
    let counted: u64 = mixed_parts.iter().map(|(_, n)| n).sum();
    assert_eq!(counted, u64_field(&mixed, "operations"), "{mixed}");
    assert!(mixed_parts.iter().all(|(_, n)| *n > 0), "{mixed}");
    assert_eq!(bench_rows(&server).await, 10_000);

    let insert = bench_ok(&["--port", p, "-n", "200", "-w", "insert", "--warmup", "0"]);
    assert_eq!(u64_field(&insert, "operations"), 200, "{insert}");
    assert_eq!(u64_field(&insert, "errors"), 0, "{insert}");
    assert!(
        insert.get("statements").is_none(),
        "one statement: {insert}"
    );
    assert_eq!(bench_rows(&server).await, 10_200);

    let sql = common::write_file(
        server.dir.path(),
        "custom.sql",
        "-- one of each\nSELECT v FROM bench WHERE id BETWEEN :id AND :id + 9;\n\
         UPDATE bench SET k = :n WHERE id = :id;\nINSERT INTO bench(k, v) VALUES (:n, :s);\n",
    );
    let custom = bench_ok(&[
        "--endpoint",
        &server.addr(),
        "-w",
        "custom",
        "--sql-file",
        &sql.to_string_lossy(),
        "-n",
        "300",
        "-c",
        "3",
        "--warmup",
        "0",
    ]);
    assert_eq!(u64_field(&custom, "operations"), 300, "{custom}");
    assert_eq!(u64_field(&custom, "errors"), 0, "{custom}");
    let rows = bench_rows(&server).await;
    assert!((10_201..=10_500).contains(&rows), "{rows} rows");
    let custom_parts = statements(&custom);
    assert_eq!(custom_parts.len(), 3, "{custom}");
    assert_eq!(
        custom_parts[0].0,
        "SELECT v FROM bench WHERE id BETWEEN :id…"
    );
    assert_eq!(custom_parts[2].0, "INSERT INTO bench(k, v) VALUES (:n, :s)");
    assert_eq!(custom_parts.iter().map(|(_, n)| n).sum::<u64>(), 300);
    // Every row past the first 10,200 is one of the custom run's inserts.
    assert_eq!(custom_parts[2].1, u64::try_from(rows - 10_200).unwrap_or(0));

    // --rate paces the clients (150 statements a second in all, over 3 clients), where the
    // same run back to back goes thousands a second.
    let paced = bench_ok(&[
        "--port",
        p,
        "-w",
        "point-select",
        "-c",
        "3",
        "-d",
        "2",
        "--warmup",
        "0",
        "--rate",
        "150",
    ]);
    assert_eq!(u64_field(&paced, "target_rate"), 150, "{paced}");
    assert_eq!(u64_field(&paced, "errors"), 0, "{paced}");
    let rate = paced["ops_per_sec"].as_f64().unwrap_or(0.0);
    assert!((75.0..=170.0).contains(&rate), "{paced}");
}

/// The `statements` of a summary: each statement's name and operations.
fn statements(summary: &Value) -> Vec<(String, u64)> {
    let Some(list) = summary["statements"].as_array() else {
        panic!("no statements in {summary}");
    };
    list.iter()
        .map(|s| {
            let name = s["statement"].as_str().unwrap_or_default().to_string();
            assert!(s["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
            (name, u64_field(s, "operations"))
        })
        .collect()
}

#[test]
fn an_unreachable_endpoint_exits_with_status_2() {
    let port = common::free_port().to_string();
    let (code, summary, _) = bench(&["--port", &port, "-d", "1"]);
    assert_eq!(code, Some(2));
    assert!(summary.is_null());
}

/// `--measure-lag` for 2 s against a new primary and its replica, with `extra` arguments.
fn lag_on_a_replica(extra: &[&str]) -> Value {
    let cluster = Cluster::start(1, r#"{ "maxEntries": 1000000 }"#);
    let (primary, replica) = (cluster.addr(0), cluster.addr(1));
    let mut args = vec![
        "--endpoint",
        &primary,
        "--measure-lag",
        "--replica",
        &replica,
        "-d",
        "2",
    ];
    args.extend_from_slice(extra);
    bench_ok(&args)
}

#[test]
fn measure_lag_on_a_replica() {
    let lag = lag_on_a_replica(&["--rate", "200"]);
    assert!(u64_field(&lag, "samples") > 0, "{lag}");
    assert_eq!(u64_field(&lag, "unseen"), 0, "{lag}");
    assert_eq!(u64_field(&lag, "errors"), 0, "{lag}");
    assert_eq!(u64_field(&lag, "samples"), u64_field(&lag, "writes"));
    assert!(
        ms(&lag, "lag_ms", "p50") <= ms(&lag, "lag_ms", "max"),
        "{lag}"
    );
    assert_eq!(
        lag["method"], "feed",
        "the replica's change feed is watched: {lag}"
    );
}

#[test]
fn measure_lag_with_pipelined_writes_keeps_rows_and_positions_in_step() {
    let lag = lag_on_a_replica(&["--rate", "400", "--pipeline", "16"]);
    assert_eq!(u64_field(&lag, "pipeline"), 16, "{lag}");
    assert_eq!(u64_field(&lag, "errors"), 0, "{lag}");
    assert_eq!(u64_field(&lag, "unseen"), 0, "{lag}");
    assert!(u64_field(&lag, "writes") > 1, "{lag}");
    assert_eq!(u64_field(&lag, "samples"), u64_field(&lag, "writes"));
    // The feed's positions map one to one onto the ids only when the first row's position was
    // asked with nothing else in flight and the rows committed in id order.
    assert_eq!(lag["method"], "feed", "{lag}");
}
