//! `replication.compression` on real processes: a primary and two replicas with
//! `{"type": "ZSTD"}`, a text-heavy table written before a replica starts (so it arrives in a full
//! sync's snapshot) and after (the live stream). The replicas end equal to the primary, and the
//! primary's `/metrics` show at least 3 × fewer bytes on the wire than it wrote to the streams.
//! A replica whose own config says NONE still follows a ZSTD primary, plainly.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{http, Cluster};
use common::{dirkdb_bin, wait_for_port};
use serde_json::{json, Value};

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

/// Sets `replication.compression` in the cluster's config.json.
fn set_compression(cluster: &Cluster, compression: Value) -> String {
    let path = cluster.dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["replication"]["compression"] = compression;
    let text = config.to_string();
    std::fs::write(&path, &text).unwrap();
    text
}

/// A `counter` of node `i`'s `/metrics` (its `_total` sample).
fn counter(cluster: &Cluster, i: usize, name: &str) -> u64 {
    let text = http(cluster.nodes[i].admin, "GET", "/metrics", "");
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}_total")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `text` without the terminal colour sequences of the logs (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Database `sekoly` with the empty table `naoty` on the primary.
async fn create_notes(cluster: &Cluster) {
    let mut client = cluster.client(0).await;
    for statement in [
        "CREATE DATABASE sekoly",
        "USE sekoly",
        "CREATE TABLE naoty (id INTEGER PRIMARY KEY, anarana TEXT, fanamarihana TEXT)",
    ] {
        client.execute(statement).await.unwrap();
    }
}

/// Rows of course notes: repetitive text, as real tables of names and comments are.
async fn write_notes(cluster: &Cluster, from: u32, rows: u32) {
    let mut client = cluster.client(0).await;
    client.execute("USE sekoly").await.unwrap();
    for batch in (from..from + rows).step_by(50) {
        let values: Vec<String> = (batch..batch + 50)
            .map(|i| {
                format!(
                    "({i}, 'mpianatra {i}', 'Ny mpianatra laharana {i} dia nahazo naoty {} tamin''ny \
                     fanadinana farany, ary nankasitrahan''ny mpampianatra noho ny fahazotoany.')",
                    i % 20
                )
            })
            .collect();
        client
            .execute(&format!("INSERT INTO naoty VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_primary_serves_compressed_and_plain_replicas_the_same_data() {
    let mut cluster = Cluster::configure(2, OPLOG);
    let zstd = set_compression(&cluster, json!({ "type": "ZSTD", "level": 3 }));
    cluster.spawn(0);
    cluster.spawn(1);
    create_notes(&cluster).await;
    write_notes(&cluster, 0, 2000).await;

    // m3 starts with its own file saying NONE: it follows the ZSTD primary plainly.
    let plain = zstd.replace(r#""ZSTD""#, r#""NONE""#);
    let plain_path = cluster.dir.path().join("config-m3.json");
    std::fs::write(&plain_path, plain).unwrap();
    let log = std::fs::File::create(cluster.dir.path().join("m3.log")).unwrap();
    let child = Command::new(dirkdb_bin())
        .args(["server", "--config"])
        .arg(&plain_path)
        .args(["--instance", "m3"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    cluster.nodes[2].child = Some(child);
    wait_for_port(cluster.nodes[2].port);
    wait_for_port(cluster.nodes[2].admin);
    cluster.assert_same_data(0);

    // m2 restarted with its oplog position lost: a full sync of everything, compressed.
    cluster.kill9(1);
    std::fs::remove_dir_all(cluster.data_dir(1)).unwrap();
    cluster.spawn(1);
    write_notes(&cluster, 2000, 2000).await;
    cluster.assert_same_data(0);

    let log = without_colours(&cluster.log(0));
    let compressed = log
        .lines()
        .filter(|l| l.contains("replication stream compressed with zstd"))
        .collect::<Vec<_>>();
    assert!(
        compressed.iter().any(|l| l.contains("replica=m2")),
        "m2 asked for zstd: {log}"
    );
    assert!(
        !compressed.iter().any(|l| l.contains("replica=m3")),
        "m3 did not: {log}"
    );
    let (stream, wire) = (
        counter(&cluster, 0, "dirkdb_replication_stream_bytes"),
        counter(&cluster, 0, "dirkdb_replication_wire_bytes"),
    );
    // m3's plain stream counts the same on both sides; m2's two streams (a full sync, then the
    // live entries) shrink. Measured on m2's share alone the ratio is larger still.
    println!(
        "stream bytes {stream}, wire bytes {wire}: {:.1} × fewer",
        stream as f64 / wire.max(1) as f64
    );
    assert!(stream > 500_000, "{stream}");
    assert!(wire < stream, "{wire} on the wire for {stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_heavy_table_needs_three_times_fewer_bytes_on_the_wire() {
    let mut cluster = Cluster::configure(1, OPLOG);
    set_compression(&cluster, json!({ "type": "ZSTD" }));
    cluster.spawn(0);
    create_notes(&cluster).await;
    write_notes(&cluster, 0, 1000).await;
    cluster.spawn(1);
    write_notes(&cluster, 1000, 1000).await;
    cluster.assert_same_data(0);
    let wait = std::time::Instant::now();
    let (stream, wire) = loop {
        let figures = (
            counter(&cluster, 0, "dirkdb_replication_stream_bytes"),
            counter(&cluster, 0, "dirkdb_replication_wire_bytes"),
        );
        if figures.0 > 0 || wait.elapsed() > Duration::from_secs(5) {
            break figures;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "stream bytes {stream}, wire bytes {wire}: {:.1} × fewer",
        stream as f64 / wire.max(1) as f64
    );
    assert!(
        wire * 3 <= stream,
        "zstd sent {wire} bytes for {stream}: less than 3 × fewer"
    );
}
