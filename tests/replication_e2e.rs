//! End-to-end tests of oplog replication: real primary and replica processes on loopback.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::time::Duration;

use common::cluster::Cluster;
use dirkdb_client::{Client, ClientError};
use serde_json::{json, Value};

const DEFAULT_OPLOG: &str = r#"{ "maxEntries": 1000000, "retentionDays": 7 }"#;

async fn setup_shop(c: &mut Client) {
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, r INT DEFAULT (random()), at TEXT DEFAULT (datetime('now')))",
    ] {
        c.execute(sql).await.unwrap();
    }
}

async fn insert_many(c: &mut Client, from: usize, to: usize) {
    for i in from..to {
        c.execute(&format!("INSERT INTO t(v) VALUES ('v{i}')"))
            .await
            .unwrap();
    }
}

fn syncs(cluster: &Cluster, i: usize) -> (u64, u64) {
    let f = cluster.follower(i);
    (
        f["fullSyncs"].as_u64().unwrap_or(0),
        f["partialSyncs"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn first_connect_full_sync_then_streaming_with_identical_random_values() {
    let mut cluster = Cluster::configure(1, DEFAULT_OPLOG);
    cluster.spawn(0);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 100).await;
    cluster.spawn(1);
    cluster.assert_same_data(0);
    assert_eq!(syncs(&cluster, 1).0, 1, "first connect is a full sync");
    // Live changes stream; random()/datetime('now') values are those of the primary.
    c.execute("INSERT INTO t(v) VALUES ('live')").await.unwrap();
    cluster.assert_same_data(0);
    let mut r = cluster.client(1).await;
    r.execute("USE shop").await.unwrap();
    let q = "SELECT id, v, r, at FROM t ORDER BY id";
    assert_eq!(
        r.query(q).await.unwrap().rows,
        c.query(q).await.unwrap().rows
    );
    // Writes on the replica are refused, reads served.
    match r.execute("INSERT INTO t(v) VALUES ('x')").await {
        Err(ClientError::Server(e)) => assert!(e.contains("read-only REPLICA"), "{e}"),
        other => panic!("write on a replica: {other:?}"),
    }
    let replicas = cluster.get(0, "/replication/replicas");
    let m2 = &replicas["replicas"][0];
    assert_eq!(m2["instance"], "m2");
    assert_eq!(m2["state"], "Connected");
    assert_eq!(m2["lagOperations"], 0);
    assert!(m2["bytesSent"].as_u64().unwrap() > 0);
    assert_eq!(m2["ackedSequence"], cluster.committed(0));
}

#[tokio::test]
async fn brief_disconnect_resumes_with_a_partial_sync() {
    let mut cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 20).await;
    cluster.assert_same_data(0);
    let before = syncs(&cluster, 1);
    cluster.kill9(1);
    insert_many(&mut c, 20, 60).await;
    cluster.spawn(1);
    cluster.assert_same_data(0);
    let after = syncs(&cluster, 1);
    assert_eq!(after.0, 0, "no full sync in the new process");
    assert_eq!(after.1, 1, "one partial sync (before: {before:?})");
}

#[tokio::test]
async fn a_position_out_of_the_oplog_window_gets_a_full_sync() {
    let mut cluster = Cluster::start(1, r#"{ "maxEntries": 50, "retentionDays": 7 }"#);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    cluster.assert_same_data(0);
    let behind = cluster.committed(1);
    cluster.kill9(1);
    insert_many(&mut c, 0, 300).await;
    // The pruner runs every second: wait until the floor passed the replica's position.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.get(0, "/replication/status")["prunedThrough"]
        .as_u64()
        .unwrap_or(0)
        <= behind + 100
    {
        assert!(
            std::time::Instant::now() < deadline,
            "oplog was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The floor moves before the pruned entries are deleted (in batches): wait for both.
    loop {
        let stats = cluster.get(0, "/replication/oplog/stats");
        if stats["totalEntries"].as_u64().unwrap_or(u64::MAX) <= 60 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "oplog kept {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.spawn(1);
    cluster.assert_same_data(0);
    assert_eq!(
        syncs(&cluster, 1),
        (1, 0),
        "fell out of the window: full sync"
    );
}

#[tokio::test]
async fn several_replicas_at_different_positions_converge() {
    let mut cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 10).await;
    // Both replicas took their first full sync before being stopped at different points.
    cluster.assert_same_data(0);
    cluster.kill9(2);
    insert_many(&mut c, 10, 40).await;
    cluster.kill9(1);
    insert_many(&mut c, 40, 70).await;
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.assert_same_data(0);
    assert_eq!(syncs(&cluster, 1), (0, 1));
    assert_eq!(syncs(&cluster, 2), (0, 1));
}

#[tokio::test]
async fn a_replica_killed_during_a_write_load_resumes_and_converges() {
    let mut cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    let addr = cluster.addr(0);
    let writer = tokio::spawn(async move {
        let mut w = Client::connect(&addr).await.unwrap();
        w.execute("USE shop").await.unwrap();
        insert_many(&mut w, 0, 1500).await;
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill9(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.spawn(1);
    }
    writer.await.unwrap();
    cluster.assert_same_data(0);
    let (full, partial) = syncs(&cluster, 1);
    assert_eq!((full, partial), (0, 1), "resumed with a partial sync");
    let mut r = cluster.client(1).await;
    r.execute("USE shop").await.unwrap();
    assert_eq!(
        r.query("SELECT count(*) FROM t").await.unwrap().rows[0][0],
        json!(1500)
    );
}

#[tokio::test]
async fn a_primary_killed_after_acknowledged_writes_keeps_them_and_replicas_resume() {
    let mut cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 200).await;
    cluster.kill9(0);
    cluster.spawn(0);
    let mut c = cluster.client(0).await;
    c.execute("USE shop").await.unwrap();
    assert_eq!(
        c.query("SELECT count(*) FROM t").await.unwrap().rows[0][0],
        json!(200)
    );
    insert_many(&mut c, 200, 250).await;
    cluster.assert_same_data(0);
    for i in [1, 2] {
        let (full, partial) = syncs(&cluster, i);
        assert_eq!(full, 1, "only the first connect was a full sync");
        assert!(partial >= 1, "resumed with a partial sync");
    }
}

#[tokio::test]
async fn every_ddl_kind_replicates() {
    let cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    for sql in [
        "CREATE DATABASE d",
        "USE d",
        "CREATE TABLE a(id INTEGER PRIMARY KEY, x TEXT, y INT)",
        "CREATE TABLE w(k TEXT, n INT, v BLOB, PRIMARY KEY (k, n)) WITHOUT ROWID",
        "CREATE TABLE g(a INT, b INT GENERATED ALWAYS AS (a * 2) STORED)",
        "CREATE TABLE log(msg TEXT)",
        "CREATE INDEX ax ON a(x)",
        "CREATE UNIQUE INDEX ay ON a(y)",
        "CREATE VIEW av AS SELECT id, x FROM a WHERE y > 1",
        "CREATE TRIGGER a_log AFTER INSERT ON a BEGIN INSERT INTO log VALUES ('added ' || NEW.x); END",
        "INSERT INTO a(x, y) VALUES ('one', 1), ('two', 2), ('three', 3)",
        "INSERT INTO w VALUES ('k', 1, x'00ff'), ('k', 2, NULL)",
        "INSERT INTO g(a) VALUES (21)",
        "ALTER TABLE a ADD COLUMN z REAL DEFAULT 1.5",
        "ALTER TABLE a RENAME COLUMN x TO name",
        "UPDATE a SET z = 2.5 WHERE id = 2",
        "ALTER TABLE log RENAME TO journal",
        "INSERT INTO a(name, y) VALUES ('four', 4)",
        "ALTER TABLE a DROP COLUMN z",
        "DROP INDEX ax",
        "DROP TRIGGER a_log",
        "INSERT INTO a(name, y) VALUES ('five', 5)",
        "CREATE TABLE copy AS SELECT id, name, random() AS r, datetime('now') AS at FROM a",
        "CREATE TABLE gone(a)",
        "INSERT INTO gone VALUES (1)",
        "DROP TABLE gone",
        "CREATE DATABASE tmp",
        "DROP DATABASE tmp",
        "CREATE DATABASE e",
        "USE e",
        "CREATE TABLE t(a)",
        "DROP VIEW IF EXISTS nope",
    ] {
        c.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    c.execute("USE d").await.unwrap();
    c.execute("DROP VIEW av").await.unwrap();
    c.execute("CREATE VIEW av2 AS SELECT name FROM a")
        .await
        .unwrap();
    cluster.assert_same_data(0);
    let mut r = cluster.client(1).await;
    let dbs = r.query("SHOW DATABASES").await.unwrap().rows;
    assert_eq!(dbs, vec![vec![json!("d")], vec![json!("e")]]);
    r.execute("USE d").await.unwrap();
    for q in [
        "SELECT * FROM journal ORDER BY rowid",
        "SELECT * FROM copy ORDER BY id",
        "SELECT * FROM av2 ORDER BY name",
        "SELECT * FROM g",
        "SELECT * FROM w ORDER BY k, n",
        "SELECT name, sql FROM sqlite_schema WHERE name NOT LIKE '\\_dirk%' ESCAPE '\\' ORDER BY name",
    ] {
        assert_eq!(r.query(q).await.unwrap().rows, c.query(q).await.unwrap().rows, "{q}");
    }
    let journal = r.query("SELECT count(*) FROM journal").await.unwrap().rows;
    assert_eq!(
        journal[0][0],
        json!(4),
        "trigger effects arrive once, not twice"
    );
}

#[tokio::test]
async fn a_mixed_random_workload_of_10000_operations_ends_with_equal_checksums() {
    let cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    for sql in [
        "CREATE DATABASE w1",
        "CREATE DATABASE w2",
        "USE w1",
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INT)",
        "CREATE TABLE c(id INTEGER PRIMARY KEY, p INT REFERENCES p(id) ON DELETE CASCADE, v REAL)",
        "USE w2",
        "CREATE TABLE k(a TEXT, b INT, v BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID",
    ] {
        c.execute(sql).await.unwrap();
    }
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let addr = cluster.addr(0);
            tokio::spawn(async move { random_workload(&addr, w, 2500).await })
        })
        .collect();
    let mut ops = 0;
    for w in workers {
        ops += w.await.unwrap();
    }
    assert!(ops >= 10_000, "{ops}");
    cluster.assert_same_data(0);
    let sums = cluster.get(0, "/replication/checksum");
    assert!(sums["databases"]["w1"]["rows"].as_u64().unwrap() > 0);
}

/// Runs `count` random statements (inserts, upserts, updates, deletes with cascades,
/// INSERT OR REPLACE, multi-statement transactions, rollbacks) and returns how many ran.
async fn random_workload(addr: &str, seed: u64, count: usize) -> usize {
    let mut c = Client::connect(addr).await.unwrap();
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut done = 0;
    while done < count {
        let db = if next(3) == 0 { "w2" } else { "w1" };
        c.execute(&format!("USE {db}")).await.unwrap();
        let in_tx = next(10) == 0;
        if in_tx {
            c.execute("BEGIN").await.unwrap();
        }
        for _ in 0..if in_tx { 5 } else { 1 } {
            let id = next(200);
            let sql = match (db, next(7)) {
                ("w2", 0..=2) => format!("INSERT OR REPLACE INTO k VALUES ('a{}', {}, randomblob(4))", id % 20, id % 5),
                ("w2", 3..=4) => format!("UPDATE k SET v = x'{:02x}' WHERE a = 'a{}'", id % 256, id % 20),
                ("w2", _) => format!("DELETE FROM k WHERE b = {}", id % 5),
                (_, 0) => format!("INSERT INTO p(id, name, n) VALUES ({id}, 'n{id}', {id}) ON CONFLICT(id) DO UPDATE SET n = n + 1"),
                (_, 1) => format!("INSERT OR REPLACE INTO p(id, name, n) VALUES ({}, 'n{}', 0)", id, next(200)),
                (_, 2) => format!("INSERT INTO c(p, v) SELECT id, random() / 1e18 FROM p WHERE id = {id}"),
                (_, 3) => format!("UPDATE c SET v = v + 0.5 WHERE p = {id}"),
                (_, 4) => format!("DELETE FROM p WHERE id = {id}"),
                (_, 5) => format!("UPDATE p SET id = {} WHERE id = {id}", id + 1000),
                _ => format!("DELETE FROM c WHERE id % 7 = {}", id % 7),
            };
            // Constraint failures are part of the workload: they must not replicate anything.
            let _ = c.execute(&sql).await;
            done += 1;
        }
        if in_tx {
            let end = if next(4) == 0 { "ROLLBACK" } else { "COMMIT" };
            c.execute(end).await.unwrap();
        }
    }
    done
}

#[tokio::test]
async fn promotion_and_repoint_continue_without_a_full_sync() {
    let mut cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 50).await;
    cluster.assert_same_data(0);
    cluster.kill9(0);
    let promoted = cluster.post(1, "/replication/promote", "");
    assert_eq!(promoted["role"], "PRIMARY", "{promoted}");
    assert_eq!(promoted["history"].as_array().unwrap().len(), 2);
    let m2 = cluster.addr(1);
    let answer = cluster.post(
        2,
        "/replication/configure",
        &format!(r#"{{"primary":"{m2}"}}"#),
    );
    assert_eq!(answer["primary"], m2.as_str());
    let mut w = cluster.client(1).await;
    w.execute("USE shop").await.unwrap();
    insert_many(&mut w, 50, 80).await;
    cluster.assert_same_data(1);
    let (full, partial) = syncs(&cluster, 2);
    assert_eq!(full, 1, "only the very first connect was a full sync");
    assert!(partial >= 1);
    assert_eq!(cluster.follower(2)["primary"], m2.as_str());
    // The promotion is remembered across a restart of the promoted node.
    cluster.kill9(1);
    cluster.spawn(1);
    assert_eq!(cluster.get(1, "/health")["role"], "PRIMARY");
}

#[tokio::test]
async fn a_corrupt_oplog_record_is_refused_by_its_checksum() {
    let mut cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 10).await;
    cluster.assert_same_data(0);
    cluster.kill9(1);
    insert_many(&mut c, 10, 20).await;
    // Damage one stored entry behind the server's back (as a bad disk would), with the primary
    // down so that it reads the oplog from disk afterwards rather than from its memory backlog.
    cluster.kill9(0);
    let file = cluster.data_dir(0).join("shop.db");
    let raw = rusqlite::Connection::open(file).unwrap();
    let seq: i64 = raw
        .query_row("SELECT max(seq) FROM _dirk_oplog", [], |r| r.get(0))
        .unwrap();
    raw.execute(
        "UPDATE _dirk_oplog SET data = replace(data, 'v19', 'XX') WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(raw);
    cluster.spawn(0);
    cluster.spawn(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let error = cluster.follower(1)["lastError"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if error.contains("checksum") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "corruption not reported: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing of the damaged entry was applied: the replica stopped just before it.
    assert_eq!(cluster.committed(1), seq as u64 - 1);
    let mut r = cluster.client(1).await;
    r.execute("USE shop").await.unwrap();
    let bad = r
        .query("SELECT count(*) FROM t WHERE v = 'XX'")
        .await
        .unwrap()
        .rows;
    assert_eq!(bad[0][0], json!(0));
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_the_replica_retries() {
    use dirkdb_server::replication::protocol::{
        read_message, write_chunk, write_message, FileInfo, Message,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A scripted primary that always sends a snapshot whose CRC does not match its bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (rd, mut wr) = socket.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                let mut line = Vec::new();
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                if rd.read_until(b';', &mut line).await.is_err() {
                    return;
                }
                let _ = rd.read_until(b'\n', &mut line).await;
                let _ = wr
                    .write_all(b"RESULT_MESSAGE\nOK DIRK REPLICATION\nEND\n")
                    .await;
                let Ok(Message::Hello { .. }) = read_message(&mut rd).await else {
                    return;
                };
                let files = vec![FileInfo {
                    name: "_dirk_meta.db".into(),
                    bytes: 5,
                }];
                let _ = write_message(
                    &mut wr,
                    &Message::FullSyncBegin {
                        chain: vec![],
                        position: 9,
                        files: files.clone(),
                        term: 0,
                    },
                )
                .await;
                let _ = write_message(&mut wr, &Message::FileBegin(files[0].clone())).await;
                let _ = write_chunk(&mut wr, b"hello").await;
                let _ = write_message(
                    &mut wr,
                    &Message::FileEnd {
                        name: files[0].name.clone(),
                        crc: 12345,
                    },
                )
                .await;
                let _ = write_message(&mut wr, &Message::FullSyncEnd { position: 9 }).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let mut cluster = Cluster::configure(1, DEFAULT_OPLOG);
    cluster.spawn(1);
    cluster.post(
        1,
        "/replication/configure",
        &format!(r#"{{"primary":"127.0.0.1:{fake_port}"}}"#),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while attempts.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not retry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = cluster.follower(1)["lastError"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.contains("failed its checksum"), "{error}");
    assert_eq!(cluster.committed(1), 0, "nothing was installed");
    assert_eq!(cluster.get(1, "/health")["databases"], Value::from(0));
}

#[tokio::test]
async fn admin_api_shapes_and_sequences_that_never_repeat() {
    let mut cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 3).await;
    c.execute("UPDATE t SET v = 'changed' WHERE id = 1")
        .await
        .unwrap();
    c.execute("DELETE FROM t WHERE id = 2").await.unwrap();
    // LokiJS's changes shape: grouped by table, each change with operation/obj/sequence/timestamp.
    let changes = cluster.get(0, "/replication/changes?since=2&limit=100");
    assert_eq!(changes["count"], 5, "{changes}");
    assert_eq!(changes["latestSequence"], 7);
    let t = changes["changes"]["shop.t"].as_array().unwrap();
    let ops: Vec<&str> = t.iter().map(|c| c["operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["I", "I", "I", "U", "R"]);
    assert_eq!(t[3]["obj"]["v"], "changed");
    assert_eq!(t[4]["key"], json!({ "rowid": 2 }));
    assert!(t
        .iter()
        .all(|c| c["sequence"].is_u64() && c["timestamp"].is_i64()));
    let limited = cluster.get(0, "/replication/changes?since=0&limit=2");
    assert_eq!(limited["count"], 2);
    let by_table = cluster.get(0, "/replication/changes?since=0&limit=100&table=t");
    assert_eq!(by_table["count"], 6, "{by_table}");
    let stats = cluster.get(0, "/replication/oplog/stats");
    assert_eq!(stats["totalEntries"], 7);
    assert_eq!(stats["latestSequence"], 7);
    assert_eq!(stats["oldestSequence"], 1);
    assert_eq!(stats["perTable"]["shop.t"], 6);
    let metrics = http_text(cluster.nodes[0].admin, "/metrics");
    assert!(
        metrics.contains("dirkdb_committed_sequence{instance=\"m1\"} 7"),
        "{metrics}"
    );
    assert!(metrics.contains("dirkdb_replica_acked_sequence{instance=\"m1\",replica=\"m2\"}"));
    assert!(metrics.contains("# TYPE dirkdb_statements_total counter"));
    let health = cluster.get(1, "/health");
    assert_eq!(
        (health["role"].as_str(), health["status"].as_str()),
        (Some("REPLICA"), Some("ok"))
    );
    // Clearing the oplog keeps positions: after a restart, new entries continue the sequence.
    let cleared = cluster.post(0, "/replication/oplog/clear", "");
    assert_eq!(cleared["prunedThrough"], 7);
    cluster.kill9(0);
    cluster.spawn(0);
    let mut c = cluster.client(0).await;
    c.execute("USE shop").await.unwrap();
    c.execute("INSERT INTO t(v) VALUES ('after')")
        .await
        .unwrap();
    let changes = cluster.get(0, "/replication/changes?since=7&limit=10");
    assert_eq!(changes["changes"]["shop.t"][0]["sequence"], 8, "{changes}");
    cluster.assert_same_data(0);
}

fn http_text(port: u16, path: &str) -> String {
    match common::cluster::http(port, "GET", path, "") {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[tokio::test]
async fn an_interrupted_full_sync_install_or_a_reboot_after_a_crash_means_a_new_full_sync() {
    let mut cluster = Cluster::configure(1, DEFAULT_OPLOG);
    cluster.spawn(0);
    cluster.spawn_with_env(1, &[("DIRKDB_BOOT_ID", "boot-1")]);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 30).await;
    cluster.assert_same_data(0);
    // kill -9, same boot: a partial sync.
    cluster.kill9(1);
    cluster.spawn_with_env(1, &[("DIRKDB_BOOT_ID", "boot-1")]);
    cluster.assert_same_data(0);
    assert_eq!(syncs(&cluster, 1), (0, 1), "{}", cluster.log(1));
    // kill -9, then the machine "reboots": NORMAL-synced files may have lost commits.
    cluster.kill9(1);
    insert_many(&mut c, 30, 40).await;
    cluster.spawn_with_env(1, &[("DIRKDB_BOOT_ID", "boot-2")]);
    cluster.assert_same_data(0);
    assert_eq!(
        syncs(&cluster, 1),
        (1, 0),
        "an unclean stop before a reboot resyncs fully"
    );
    // A crash in the middle of installing a full sync leaves the marker behind.
    cluster.kill9(1);
    std::fs::write(
        cluster.data_dir(1).join("_dirk_install_pending"),
        r#"{"role":"REPLICA"}"#,
    )
    .unwrap();
    insert_many(&mut c, 40, 50).await;
    cluster.spawn_with_env(1, &[("DIRKDB_BOOT_ID", "boot-2")]);
    cluster.assert_same_data(0);
    assert_eq!(
        syncs(&cluster, 1),
        (1, 0),
        "an interrupted install restarts empty"
    );
    assert!(!cluster.data_dir(1).join("_dirk_install_pending").exists());
    assert_eq!(cluster.get(1, "/health")["role"], "REPLICA");
}

#[tokio::test]
async fn a_failed_alter_inside_a_transaction_keeps_capturing_and_database_events_wait() {
    let cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    c.execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO t(v) VALUES ('in tx')")
        .await
        .unwrap();
    assert!(c
        .execute("ALTER TABLE t RENAME COLUMN nosuch TO y")
        .await
        .is_err());
    match c.execute("CREATE DATABASE other").await {
        Err(ClientError::Server(e)) => assert!(
            e.contains("COMMIT or ROLLBACK before CREATE DATABASE"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    c.execute("INSERT INTO t(v) VALUES ('after the failed alter')")
        .await
        .unwrap();
    c.execute("COMMIT").await.unwrap();
    c.execute("INSERT INTO t(v) VALUES ('later')")
        .await
        .unwrap();
    cluster.assert_same_data(0);
    let mut r = cluster.client(1).await;
    r.execute("USE shop").await.unwrap();
    assert_eq!(
        r.query("SELECT count(*) FROM t").await.unwrap().rows[0][0],
        json!(3)
    );
}

#[tokio::test]
async fn a_demoted_primary_ends_its_streams_and_follows_the_new_one() {
    let cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 20).await;
    cluster.assert_same_data(0);
    // Switch roles while everything runs: m2 becomes primary, m1 follows it.
    cluster.post(1, "/replication/promote", "");
    let m2 = cluster.addr(1);
    let answer = cluster.post(
        0,
        "/replication/configure",
        &format!(r#"{{"primary":"{m2}"}}"#),
    );
    assert_eq!(answer["role"], "REPLICA", "{answer}");
    match c.execute("INSERT INTO t(v) VALUES ('old primary')").await {
        Err(ClientError::Server(e)) => assert!(e.contains("read-only REPLICA"), "{e}"),
        other => panic!("the demoted primary accepted a write: {other:?}"),
    }
    // m3 was streaming from m1: that stream ends, and m1 refuses to serve it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cluster.follower(2)["lastError"]
        .as_str()
        .unwrap_or("")
        .contains("REPLICA")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "m3 still follows a replica: {}",
            cluster.follower(2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.post(
        2,
        "/replication/configure",
        &format!(r#"{{"primary":"{m2}"}}"#),
    );
    let mut w = cluster.client(1).await;
    w.execute("USE shop").await.unwrap();
    insert_many(&mut w, 20, 40).await;
    cluster.assert_same_data(1);
    for i in [0, 2] {
        let (full, partial) = syncs(&cluster, i);
        assert!(
            partial >= 1,
            "node {i} continued with a partial sync ({full}, {partial})"
        );
    }
}

#[tokio::test]
async fn protocol_extensions_report_positions_and_wait_for_replicas() {
    let mut cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    let text = |r: dirkdb_client::Reply| match r {
        dirkdb_client::Reply::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(c.execute("DIRK POSITION").await.unwrap()),
        "position 0"
    );
    setup_shop(&mut c).await;
    c.execute("INSERT INTO t(v) VALUES ('x')").await.unwrap();
    let committed = cluster.committed(0);
    assert_eq!(
        text(c.execute("DIRK POSITION").await.unwrap()),
        format!("position {committed}")
    );
    let answer = text(
        c.execute(&format!("DIRK WAIT REPLICAS 1 {committed} 5000"))
            .await
            .unwrap(),
    );
    assert_eq!(answer, "replicas 1 term 0");
    let mut r = cluster.client(1).await;
    let answer = text(
        r.execute(&format!("DIRK WAIT {committed} 5000"))
            .await
            .unwrap(),
    );
    assert_eq!(answer, format!("position {committed}"));
    // With the replica down, the wait times out and says how far it got.
    cluster.kill9(1);
    c.execute("INSERT INTO t(v) VALUES ('y')").await.unwrap();
    let answer = text(
        c.execute(&format!("DIRK WAIT REPLICAS 1 {} 200", committed + 1))
            .await
            .unwrap(),
    );
    assert_eq!(answer, "replicas 0 term 0");
    match c
        .execute(&format!("DIRK WAIT {} 100", committed + 100))
        .await
    {
        Err(ClientError::Server(e)) => assert!(e.contains("not reached within 100 ms"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.execute("DIRK NONSENSE").await,
        Err(ClientError::Server(_))
    ));
}

/// The rollback files of node `i`, with every entry they hold.
fn rollback_entries(cluster: &Cluster, i: usize) -> (Vec<String>, Vec<Value>) {
    let dir = cluster.data_dir(i).join("rollback");
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for file in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        names.push(file.file_name().to_string_lossy().to_string());
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        entries.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    names.sort();
    (names, entries)
}

#[tokio::test]
async fn terms_grow_with_promotions_and_lower_terms_are_refused() {
    let mut cluster = Cluster::start(2, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 5).await;
    cluster.assert_same_data(0);
    let term = |cluster: &Cluster, i: usize| cluster.get(i, "/replication/status")["term"].as_u64();
    assert_eq!(
        [term(&cluster, 0), term(&cluster, 1), term(&cluster, 2)],
        [Some(0); 3]
    );
    // A promotion must start a term above the node's own.
    let promoted = cluster.post(1, "/replication/promote", r#"{"term": 5}"#);
    assert_eq!(promoted["term"], 5, "{promoted}");
    assert_eq!(term(&cluster, 1), Some(5));
    let m2 = cluster.addr(1);
    cluster.post(
        2,
        "/replication/configure",
        &format!(r#"{{"primary":"{m2}"}}"#),
    );
    let mut w = cluster.client(1).await;
    w.execute("USE shop").await.unwrap();
    insert_many(&mut w, 5, 10).await;
    cluster.assert_same_data_on(1, &[1, 2]);
    assert_eq!(
        term(&cluster, 2),
        Some(5),
        "a replica adopts its primary's term"
    );
    // m1 (term 0) hears of term 5 when m3 is pointed at it: it steps down instead of serving.
    let m1 = cluster.addr(0);
    cluster.post(
        2,
        "/replication/configure",
        &format!(r#"{{"primary":"{m1}"}}"#),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.get(0, "/replication/status")["role"] != "REPLICA" {
        assert!(
            std::time::Instant::now() < deadline,
            "the old primary did not step down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = cluster.get(0, "/replication/status");
    assert_eq!(status["fenced"], true, "{status}");
    assert_eq!(status["term"], 5, "{status}");
    match c.execute("INSERT INTO t(v) VALUES ('stale')").await {
        Err(ClientError::Server(e)) => assert!(e.contains("REPLICA"), "{e}"),
        other => panic!("a stepped-down primary accepted a write: {other:?}"),
    }
    // The term survives a restart, and a promotion to a lower or equal term is refused.
    cluster.kill9(2);
    cluster.spawn(2);
    assert_eq!(term(&cluster, 2), Some(5));
    let refused = cluster.post(0, "/replication/promote", r#"{"term": 5}"#);
    assert!(
        refused["error"].as_str().unwrap_or("").contains("term 5"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_node_promoted_by_hand_then_fenced_keeps_its_writes_in_a_rollback_file() {
    let cluster = Cluster::start(1, DEFAULT_OPLOG);
    let mut c = cluster.client(0).await;
    setup_shop(&mut c).await;
    insert_many(&mut c, 0, 10).await;
    cluster.assert_same_data(0);
    // m2 is promoted by hand while m1 stays primary: two branches of one history.
    let promoted = cluster.post(1, "/replication/promote", "");
    assert_eq!(promoted["term"], 1, "{promoted}");
    let mut w = cluster.client(1).await;
    w.execute("USE shop").await.unwrap();
    for i in 0..7 {
        w.execute(&format!("INSERT INTO t(v) VALUES ('stray{i}')"))
            .await
            .unwrap();
    }
    insert_many(&mut c, 10, 20).await;
    // m1 is made to outrank m2, then m2 is fenced: it follows m1 again.
    let raised = cluster.post(0, "/replication/term", r#"{"term": 2}"#);
    assert_eq!(raised["term"], 2, "{raised}");
    let m1 = cluster.addr(0);
    cluster.post(
        1,
        "/replication/configure",
        &format!(r#"{{"primary":"{m1}"}}"#),
    );
    cluster.assert_same_data(0);
    let (names, entries) = rollback_entries(&cluster, 1);
    assert_eq!(names.len(), 1, "{names:?}");
    let listed = cluster.get(1, "/replication/status")["rollbackFiles"].clone();
    assert_eq!(listed, json!(names), "listed in /replication/status");
    let stray: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["data"].as_str())
        .filter(|d| d.contains("stray"))
        .collect();
    assert_eq!(stray.len(), 7, "every stray write is saved: {entries:?}");
    assert_eq!(
        entries.len(),
        7,
        "nothing the primary holds is saved: {entries:?}"
    );
    assert_eq!(cluster.get(1, "/replication/status")["term"], 2);
}
