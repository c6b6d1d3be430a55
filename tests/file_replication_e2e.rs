//! End-to-end tests of FILE replication mode: a primary, secondaries and the proxy as real
//! processes, consistent database copies sent over TCP.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use dirkdb_client::Client;
use serde_json::Value;

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

/// Writes the config in FILE mode (sweep every `interval` s), without starting anything.
fn file_mode_cluster(replicas: usize, interval: u64) -> Cluster {
    let cluster = Cluster::configure(replicas, OPLOG);
    let path = cluster.dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        r#""type": "OPLOG""#,
        &format!(r#""type": "FILE", "intervalSeconds": {interval}"#),
    );
    std::fs::write(&path, text).unwrap();
    cluster
}

async fn count(c: &mut Client, sql: &str) -> Option<i64> {
    c.query(sql).await.ok()?.rows.first()?.first()?.as_i64()
}

/// Polls `node` until `sql` answers `want`; returns how long it took.
async fn wait_for(
    cluster: &Cluster,
    node: usize,
    sql: &str,
    want: i64,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut c = cluster.client(node).await;
    loop {
        let _ = c.execute("USE shop").await;
        if count(&mut c, sql).await == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "node {node} never answered {want} to `{sql}` within {within:?}: {:?}\n{}",
            count(&mut c, sql).await,
            cluster.log(node)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn make_shop(c: &mut Client) {
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    ] {
        c.execute(sql).await.unwrap();
    }
}

fn copy_of<'a>(status: &'a Value, replica: &str, db: &str) -> &'a Value {
    status["replicas"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["instance"] == replica))
        .map(|r| &r["files"][db])
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn writes_through_the_proxy_reach_every_secondary_and_drops_propagate() {
    let mut cluster = file_mode_cluster(2, 2);
    cluster.spawn_all_with_proxy();
    let mut c = cluster.proxy_client().await;
    make_shop(&mut c).await;
    let mut slowest = Duration::ZERO;
    for round in 1..=5 {
        c.execute(&format!("INSERT INTO t(v) VALUES ('r{round}')"))
            .await
            .unwrap();
        for node in [1, 2] {
            let took = wait_for(
                &cluster,
                node,
                "SELECT count(*) FROM t",
                round,
                Duration::from_secs(2),
            )
            .await;
            slowest = slowest.max(took);
        }
    }
    println!("write → visible on both secondaries in FILE mode: slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "within intervalSeconds: {slowest:?}"
    );
    cluster.assert_same_data(0);
    let status = cluster.get(0, "/replication/replicas");
    assert_eq!(status["mode"], "FILE", "{status}");
    let copy = copy_of(&status, "m2", "shop");
    assert!(copy["version"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(copy["bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(copy["copies"].as_u64().unwrap_or(0) >= 1, "{status}");
    let metrics = common::cluster::http(cluster.nodes[0].admin, "GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(metrics.contains("dirkdb_file_copy_version{"), "{metrics}");
    assert!(
        cluster.get(1, "/replication/status")["following"]["files"]["shop"]["version"].as_u64()
            > Some(0)
    );
    // A new database appears, a dropped one goes.
    c.execute("CREATE DATABASE extra").await.unwrap();
    c.execute("USE extra").await.unwrap();
    c.execute("CREATE TABLE e(x)").await.unwrap();
    c.execute("DROP DATABASE shop").await.unwrap();
    let started = Instant::now();
    loop {
        let mut s = cluster.client(2).await;
        let dbs = s.query("SHOW DATABASES").await.unwrap().rows;
        let names: Vec<&str> = dbs.iter().filter_map(|r| r[0].as_str()).collect();
        if names == ["extra"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn copies_under_a_heavy_write_load_are_consistent_and_readers_never_fail() {
    let mut cluster = file_mode_cluster(1, 1);
    cluster.spawn_all_with_proxy();
    let mut c = cluster.client(0).await;
    make_shop(&mut c).await;
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        0,
        Duration::from_secs(5),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, batches, mut c) = (stop.clone(), batches.clone(), cluster.client(0).await);
        tokio::spawn(async move {
            c.execute("USE shop").await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                c.execute("BEGIN").await.unwrap();
                c.execute(
                    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) \
                     INSERT INTO t(v) SELECT printf('%0100d', i) FROM s",
                )
                .await
                .unwrap();
                c.execute("COMMIT").await.unwrap();
                batches.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut reader = cluster.client(1).await;
    let started = Instant::now();
    let (mut reads, mut last) = (0u64, 0i64);
    let mut errors = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        if reader.execute("USE shop").await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        match reader.query("SELECT count(*) FROM t").await {
            Ok(rs) => {
                let n = rs.rows[0][0].as_i64().unwrap();
                assert_eq!(n % 100, 0, "a copy holds part of a transaction: {n} rows");
                assert!(n >= last, "the secondary went back in time: {last} → {n}");
                last = n;
                reads += 1;
            }
            Err(e) => errors.push(e.to_string()),
        }
        if reads % 50 == 0 {
            let check = reader.query("PRAGMA integrity_check").await.unwrap();
            assert_eq!(check.rows[0][0], "ok");
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(
        errors.is_empty(),
        "readers saw errors while copies were installed: {errors:?}"
    );
    assert!(last > 0 && reads > 20, "{reads} reads, last {last}");
    let total = batches.load(Ordering::Relaxed) as i64 * 100;
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        total,
        Duration::from_secs(10),
    )
    .await;
    cluster.assert_same_data(0);
    let status = cluster.get(0, "/replication/replicas");
    let copy = copy_of(&status, "m2", "shop");
    println!("copies under load: {copy}");
    assert!(copy["copies"].as_u64().unwrap_or(0) >= 2, "{status}");
}

#[tokio::test]
async fn a_corrupted_transfer_is_refused_by_its_checksum_and_sent_again() {
    let mut cluster = file_mode_cluster(1, 1);
    cluster.spawn_with_env(0, &[("DIRKDB_CORRUPT_FILE_COPIES", "1")]);
    cluster.spawn(1);
    cluster.spawn_proxy();
    let mut c = cluster.client(0).await;
    make_shop(&mut c).await;
    c.execute("INSERT INTO t(v) VALUES ('a'), ('b')")
        .await
        .unwrap();
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        2,
        Duration::from_secs(5),
    )
    .await;
    cluster.assert_same_data(0);
    let status = cluster.get(0, "/replication/replicas");
    let failures: u64 = status["replicas"][0]["files"]
        .as_object()
        .map(|files| {
            files
                .values()
                .map(|f| f["failures"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(failures, 1, "{status}");
    let follower = cluster.get(1, "/replication/status");
    let error = follower["following"]["files"]
        .as_object()
        .and_then(|files| {
            files
                .values()
                .find_map(|f| f["lastError"].as_str().map(str::to_string))
        })
        .unwrap_or_default();
    assert!(error.contains("checksum"), "{follower}");
}

#[tokio::test]
async fn switching_a_running_cluster_between_oplog_and_file_keeps_every_row() {
    let mut cluster = Cluster::configure(1, OPLOG);
    cluster.spawn_all_with_proxy();
    let mut c = cluster.proxy_client().await;
    make_shop(&mut c).await;
    c.execute("INSERT INTO t(v) VALUES ('oplog')")
        .await
        .unwrap();
    cluster.assert_same_data(0);
    let config = cluster.dir.path().join("config.json");
    let set_mode = |mode: &str| {
        let text = std::fs::read_to_string(&config).unwrap();
        let (from, to) = if mode == "FILE" {
            (
                r#""type": "OPLOG""#,
                r#""type": "FILE", "intervalSeconds": 1"#,
            )
        } else {
            (
                r#""type": "FILE", "intervalSeconds": 1"#,
                r#""type": "OPLOG""#,
            )
        };
        std::fs::write(&config, text.replace(from, to)).unwrap();
        // The proxy reloads the file and brings every instance to its mode.
        let started = Instant::now();
        while (0..2).any(|n| cluster.get(n, "/replication/status")["mode"] != mode) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "instances never switched to {mode}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    set_mode("FILE");
    c.execute("INSERT INTO t(v) VALUES ('file')").await.unwrap();
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        2,
        Duration::from_secs(5),
    )
    .await;
    cluster.assert_same_data(0);
    assert_eq!(cluster.get(1, "/replication/status")["mode"], "FILE");
    let full_syncs = cluster.follower(1)["fullSyncs"].as_u64().unwrap_or(0);
    set_mode("OPLOG");
    c.execute("INSERT INTO t(v) VALUES ('oplog again')")
        .await
        .unwrap();
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        3,
        Duration::from_secs(5),
    )
    .await;
    cluster.assert_same_data(0);
    assert_eq!(
        cluster.follower(1)["fullSyncs"].as_u64().unwrap_or(0),
        full_syncs + 1,
        "a full sync bridges FILE → OPLOG"
    );
    // And the stream goes on row by row.
    c.execute("INSERT INTO t(v) VALUES ('streamed')")
        .await
        .unwrap();
    wait_for(
        &cluster,
        1,
        "SELECT count(*) FROM t",
        4,
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn a_secondary_in_the_other_mode_is_refused_with_a_clear_reason() {
    let mut cluster = file_mode_cluster(1, 1);
    cluster.spawn(0);
    cluster.spawn(1);
    cluster.post(1, "/replication/mode", r#"{"type":"OPLOG"}"#);
    let started = Instant::now();
    loop {
        let error = cluster.follower(1)["lastError"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if error.contains("replicates in FILE mode") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = cluster.post(1, "/replication/mode", r#"{"type":"TELEPATHY"}"#);
    assert!(
        bad["error"].as_str().unwrap_or("").contains("TELEPATHY"),
        "{bad}"
    );
}
