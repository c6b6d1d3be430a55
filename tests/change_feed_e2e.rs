//! End-to-end tests of the change feed (`DIRK CHANGES`) and of `DIRK SEEN`/`DIRK POSITION`,
//! on a server directly and through the proxy, with real processes over TCP.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{http, Cluster};
use common::wait::eventually;

/// How long a check may take to hold.
const FIVE_S: Duration = Duration::from_secs(5);
use dirkdb_client::{Client, ClientError, Reply};
use dirkdb_core::change_feed::ChangeNotice;
use dirkdb_core::frame::Frame;
use serde_json::{json, Value};

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

/// A client connection turned into a change feed.
struct Feed {
    client: Client,
    /// `upto` of the last notice read.
    upto: u64,
    /// False until the first notice (which says where the feed starts) was read.
    started: bool,
}

impl Feed {
    /// Subscribes at `addr` and returns the feed with its first notice.
    async fn open(addr: &str) -> (Feed, ChangeNotice) {
        let mut client = Client::connect(addr).await.expect("connect");
        client.send_statement("DIRK CHANGES").await.unwrap();
        let mut feed = Feed {
            client,
            upto: 0,
            started: false,
        };
        let first = feed.notice(Duration::from_secs(5)).await;
        (feed, first)
    }

    /// The next frame, within `within`.
    async fn frame(&mut self, within: Duration) -> Result<Frame, ClientError> {
        tokio::time::timeout(within, self.client.next_frame())
            .await
            .expect("no frame in time")
    }

    /// The next frame, which must be a notice not going backwards.
    async fn notice(&mut self, within: Duration) -> ChangeNotice {
        let frame = self.frame(within).await.expect("feed broke");
        let Frame::Message(text) = &frame else {
            panic!("not a notice: {frame:?}")
        };
        let notice = ChangeNotice::from_text(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(notice.upto >= self.upto, "upto went backwards: {notice:?}");
        if notice.is_empty() && self.started {
            assert_eq!(notice.upto, self.upto, "an empty notice moved upto");
        }
        assert!(
            self.started || notice.is_empty(),
            "a first notice lists changes"
        );
        self.started = true;
        self.upto = notice.upto;
        notice
    }

    /// The next notice reporting something; heartbeats in between must not move `upto`.
    async fn change(&mut self) -> ChangeNotice {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let notice = self.notice(left).await;
            if !notice.is_empty() {
                return notice;
            }
        }
    }

    /// Skips notices until the error frame that ends the feed; returns its reason.
    async fn error(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frame(left).await {
                Ok(Frame::Message(text)) => match Frame::Message(text.clone()).error_text() {
                    Some(reason) => return reason.to_string(),
                    None => assert!(ChangeNotice::from_text(&text).is_ok(), "{text:?}"),
                },
                other => panic!("expected notices then an error, got {other:?}"),
            }
        }
    }
}

/// What a notice should list (its `upto` is checked separately).
fn changes(tables: &[(&str, &str)], schemas: &[&str], databases: &[&str]) -> ChangeNotice {
    ChangeNotice {
        upto: 0,
        tables: tables
            .iter()
            .map(|(d, t)| (d.to_string(), t.to_string()))
            .collect(),
        schemas: schemas.iter().map(|s| s.to_string()).collect(),
        databases: databases.iter().map(|s| s.to_string()).collect(),
        all: false,
        rows: vec![],
        images: vec![],
        synced: None,
        keys: None,
    }
}

/// Runs an extension answered `position <n>` and returns `n`.
async fn position(c: &mut Client, statement: &str) -> u64 {
    match c.execute(statement).await.unwrap() {
        Reply::Message(text) => text
            .strip_prefix("position ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{statement}` answered {text:?}")),
        other => panic!("`{statement}` answered {other:?}"),
    }
}

/// Runs `statements` on `w`, then expects exactly one notice listing `expected`, brought to
/// `w`'s last write position.
async fn step(w: &mut Client, feed: &mut Feed, statements: &[&str], expected: ChangeNotice) {
    for sql in statements {
        w.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let upto = position(w, "DIRK POSITION").await;
    let notice = feed.change().await;
    // Row keys are checked by `a_feed_lists_the_keys_of_the_rows_each_commit_changed`.
    let tables = ChangeNotice {
        rows: vec![],
        images: vec![],
        ..notice.clone()
    };
    assert_eq!(
        tables,
        ChangeNotice { upto, ..expected },
        "after {statements:?}"
    );
    for (db, table, _) in &notice.rows {
        assert!(
            notice.tables.contains(&(db.clone(), table.clone())),
            "{notice:?}"
        );
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let Value::String(text) = http(port, "GET", "/metrics", "") else {
        panic!("/metrics is not text")
    };
    text.lines()
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next() == Some(name)).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_primary_s_feed_lists_exactly_what_each_commit_touched() {
    let cluster = Cluster::start(0, OPLOG);
    let mut w = cluster.client(0).await;
    w.execute("CREATE DATABASE before").await.unwrap();
    let committed = position(&mut w, "DIRK SEEN 0").await;
    assert!(committed > 0);
    let (mut feed, first) = Feed::open(&cluster.addr(0)).await;
    assert_eq!(
        first.to_text(),
        format!(r#"{{"upto":{committed},"keys":1000}}"#)
    );

    // Each step: statements, then the one notice they must cause (tables, schemas, databases).
    type Step<'a> = (&'a [&'a str], ChangeNotice);
    let steps: Vec<Step> = vec![
        (&["CREATE DATABASE shop"], changes(&[], &[], &["shop"])),
        (
            &["USE shop", "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT)"],
            changes(&[], &["shop"], &[]),
        ),
        (
            &["CREATE TABLE b(id INTEGER PRIMARY KEY, n INTEGER)"],
            changes(&[], &["shop"], &[]),
        ),
        (
            &["INSERT INTO a(v) VALUES ('x'), ('y')"],
            changes(&[("shop", "a")], &[], &[]),
        ),
        // One transaction over two tables: one notice, each table once.
        (
            &[
                "BEGIN",
                "INSERT INTO b(n) VALUES (1)",
                "UPDATE a SET v = 'z' WHERE id = 1",
                "INSERT INTO b(n) VALUES (2)",
                "COMMIT",
            ],
            changes(&[("shop", "a"), ("shop", "b")], &[], &[]),
        ),
        // A write that changes no row commits nothing: the notice is the next write's.
        (
            &[
                "UPDATE b SET n = 5 WHERE id = 999",
                "UPDATE b SET n = n + 1",
            ],
            changes(&[("shop", "b")], &[], &[]),
        ),
        (
            &["DELETE FROM a WHERE id = 2"],
            changes(&[("shop", "a")], &[], &[]),
        ),
        (
            &["ALTER TABLE b ADD COLUMN note TEXT"],
            changes(&[], &["shop"], &[]),
        ),
        (&["CREATE DATABASE other"], changes(&[], &[], &["other"])),
        (
            &["USE other", "CREATE TABLE c(x)"],
            changes(&[], &["other"], &[]),
        ),
        (
            &["INSERT INTO c VALUES (1), (2)"],
            changes(&[("other", "c")], &[], &[]),
        ),
        (
            &["USE shop", "DROP DATABASE other"],
            changes(&[], &[], &["other"]),
        ),
        (&["DROP TABLE a"], changes(&[], &["shop"], &[])),
    ];
    for (statements, expected) in steps {
        step(&mut w, &mut feed, statements, expected).await;
    }

    // Idle: heartbeats with the same position, about every 500 ms.
    let last = feed.upto;
    for _ in 0..2 {
        let beat = feed.notice(Duration::from_millis(1500)).await;
        assert_eq!(beat.to_text(), format!(r#"{{"upto":{last}}}"#));
    }
    // What the client sends on a feed is ignored; the feed goes on.
    feed.client
        .send_raw(b"SELECT 1;\nDIRK POSITION;\n")
        .await
        .unwrap();
    let insert_b = ["INSERT INTO b(n) VALUES (3)"];
    step(
        &mut w,
        &mut feed,
        &insert_b,
        changes(&[("shop", "b")], &[], &[]),
    )
    .await;

    // Closing the feed's socket ends it on the server.
    let admin = cluster.nodes[0].admin;
    assert_eq!(metric(admin, "dirkdb_connections_open"), 2.0);
    drop(feed);
    eventually(
        FIVE_S,
        "the feed's connection stays open on the server",
        || metric(admin, "dirkdb_connections_open") == 1.0,
    )
    .await;
}

/// Runs `sql`, then returns the `rows` of the notice it caused (as JSON) and the notice's text.
async fn rows_after(w: &mut Client, feed: &mut Feed, sql: &str) -> (Value, String) {
    w.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let upto = position(w, "DIRK POSITION").await;
    let notice = feed.change().await;
    assert_eq!(notice.upto, upto);
    let rows = serde_json::to_value(&notice.rows).unwrap();
    (rows, notice.to_text())
}

#[tokio::test]
async fn a_feed_lists_the_keys_of_the_rows_each_commit_changed() {
    let cluster = Cluster::start(0, r#"{ "maxEntries": 1000000, "changeFeedRowKeys": 4 }"#);
    let mut w = cluster.client(0).await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT)",
        "CREATE TABLE w(a TEXT, b INT, PRIMARY KEY (a, b)) WITHOUT ROWID",
    ] {
        w.execute(sql).await.unwrap();
    }
    let (mut feed, first) = Feed::open(&cluster.addr(0)).await;
    assert_eq!(first.keys, Some(4), "{first:?}");
    let (rows, _) = rows_after(
        &mut w,
        &mut feed,
        "INSERT INTO u VALUES (1, 'a@x', 0), (2, 'b@x', 0)",
    )
    .await;
    assert_eq!(
        rows,
        json!([["shop", "u", [{"email": "a@x", "rowid": 1}, {"email": "b@x", "rowid": 2}]]])
    );
    // An UPDATE that changes keys: old and new, each once.
    let (rows, _) = rows_after(
        &mut w,
        &mut feed,
        "UPDATE u SET id = 7, email = 'c@x' WHERE id = 1",
    )
    .await;
    assert_eq!(
        rows,
        json!([["shop", "u", [{"email": "a@x", "rowid": 1}, {"email": "c@x", "rowid": 7}]]])
    );
    let (rows, _) = rows_after(&mut w, &mut feed, "UPDATE u SET n = n + 1 WHERE id = 2").await;
    assert_eq!(rows, json!([["shop", "u", [{"email": "b@x", "rowid": 2}]]]));
    let (rows, _) = rows_after(&mut w, &mut feed, "INSERT INTO w VALUES ('k', 1)").await;
    assert_eq!(rows, json!([["shop", "w", [{"a": "k", "b": 1}]]]));
    let (rows, _) = rows_after(&mut w, &mut feed, "DELETE FROM u WHERE id = 7").await;
    assert_eq!(rows, json!([["shop", "u", [{"email": "c@x", "rowid": 7}]]]));
    // More keys than `changeFeedRowKeys` in one commit: the table is reported whole.
    let (rows, text) = rows_after(
        &mut w,
        &mut feed,
        "INSERT INTO u(email) VALUES ('1'), ('2'), ('3'), ('4'), ('5')",
    )
    .await;
    assert_eq!(rows, json!([]));
    assert!(text.contains(r#""tables":[["shop","u"]]"#), "{text}");
}

#[tokio::test]
async fn a_feed_started_inside_a_transaction_rolls_it_back_and_frees_the_writer() {
    let cluster = Cluster::start(0, OPLOG);
    let mut w = cluster.client(0).await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER)",
    ] {
        w.execute(sql).await.unwrap();
    }
    let mut c = cluster.client(0).await;
    for sql in ["USE shop", "BEGIN", "INSERT INTO t(n) VALUES (100)"] {
        c.execute(sql).await.unwrap();
    }
    c.send_statement("dirk   changes").await.unwrap();
    let mut feed = Feed {
        client: c,
        upto: 0,
        started: false,
    };
    let first = feed.notice(Duration::from_secs(5)).await;
    assert!(first.is_empty() && first.upto > 0, "{first:?}");
    // The transaction held the writer gate; the feed's start gave it back at once (the busy
    // timeout is 5 s).
    let started = Instant::now();
    let insert = ["INSERT INTO t(n) VALUES (200)"];
    step(
        &mut w,
        &mut feed,
        &insert,
        changes(&[("shop", "t")], &[], &[]),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let rows = w.query("SELECT n FROM t ORDER BY n").await.unwrap().rows;
    assert_eq!(
        rows,
        vec![vec![json!(200)]],
        "the open transaction was rolled back"
    );
}

#[tokio::test]
async fn a_feed_says_all_when_a_commit_overflows_the_backlog() {
    let cluster = Cluster::start(0, OPLOG);
    let mut w = cluster.client(0).await;
    for sql in [
        "CREATE DATABASE big",
        "USE big",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)",
    ] {
        w.execute(sql).await.unwrap();
    }
    let (mut feed, _) = Feed::open(&cluster.addr(0)).await;
    let rows = |n: u32| {
        format!(
            "INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < {n}) SELECT x FROM c"
        )
    };
    // Within the backlog (20,000 entries): listed precisely, over many batches.
    let start = feed.upto;
    step(
        &mut w,
        &mut feed,
        &[&rows(15_000)],
        changes(&[("big", "t")], &[], &[]),
    )
    .await;
    assert_eq!(feed.upto, start + 15_000);
    // One commit of more entries than the backlog holds: the first ones left it already.
    w.execute(&rows(25_000)).await.unwrap();
    let upto = position(&mut w, "DIRK POSITION").await;
    let notice = feed.change().await;
    assert_eq!(notice.to_text(), format!(r#"{{"upto":{upto},"all":true}}"#));
    // Then precise again.
    let one = ["INSERT INTO t(v) VALUES (0)"];
    step(&mut w, &mut feed, &one, changes(&[("big", "t")], &[], &[])).await;
}

#[tokio::test]
async fn a_server_shutting_down_closes_its_feeds_without_waiting_for_them() {
    let mut server = common::ServerProcess::start();
    let (mut feed, _) = Feed::open(&server.addr()).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    // Notices may still arrive; then the connection closes.
    let end = loop {
        match feed.frame(Duration::from_secs(10)).await {
            Ok(Frame::Message(text)) if ChangeNotice::from_text(&text).is_ok() => continue,
            other => break other,
        }
    };
    assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
    let (_server, status) = status.await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Sets `section.key` in the cluster's config.json.
fn set_config(cluster: &Cluster, section: &str, key: &str, value: Value) {
    let path = cluster.dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[section][key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[tokio::test]
async fn through_the_proxy_a_feed_relays_the_primary_until_a_failover() {
    let mut cluster = Cluster::configure(1, OPLOG);
    set_config(&cluster, "failover", "mode", json!("MANUAL"));
    cluster.spawn_all_with_proxy();
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    let mut w = cluster.proxy_client().await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    ] {
        w.execute(sql).await.unwrap();
    }
    let (mut feed, first) = Feed::open(&proxy).await;
    assert_eq!(
        first.to_text(),
        format!(r#"{{"upto":{},"keys":1000}}"#, cluster.committed(0))
    );
    // A replica's own feed: its apply path publishes positions only, so it says `all`.
    cluster.wait_converged(0, Duration::from_secs(10));
    let (mut replica_feed, replica_first) = Feed::open(&cluster.addr(1)).await;
    assert_eq!(replica_first.upto, first.upto);

    let insert = ["INSERT INTO t(v) VALUES ('a')"];
    step(
        &mut w,
        &mut feed,
        &insert,
        changes(&[("shop", "t")], &[], &[]),
    )
    .await;
    let upto = feed.upto;
    assert_eq!(upto, cluster.committed(0));
    loop {
        let notice = replica_feed.change().await;
        let all = format!(r#"{{"upto":{},"all":true}}"#, notice.upto);
        assert_eq!(notice.to_text(), all);
        if notice.upto == upto {
            break;
        }
    }
    // Heartbeats are relayed.
    let beat = feed.notice(Duration::from_millis(1500)).await;
    assert_eq!(beat.to_text(), format!(r#"{{"upto":{upto}}}"#));

    // A second feed whose client leaves: the proxy lets the connection go.
    let (other, _) = Feed::open(&proxy).await;
    // Feeds are counted apart from client sessions (`w` is the one client).
    let open = || {
        let status = cluster.proxy_status();
        (
            status["clientConnections"].as_i64().unwrap(),
            status["changeFeeds"].as_i64().unwrap(),
        )
    };
    assert_eq!(open(), (1, 2));
    drop(other);
    eventually(FIVE_S, "the proxy kept a closed feed", || open() == (1, 1)).await;

    let answer = http(cluster.proxy.admin, "POST", "/cluster/failover", "{}");
    assert_eq!(answer["primary"], "m2", "{answer}");
    let reason = feed.error(Duration::from_secs(3)).await;
    assert_eq!(reason, "the primary changed from m1 to m2; subscribe again");
    assert!(matches!(
        feed.frame(Duration::from_secs(3)).await,
        Err(ClientError::Closed)
    ));

    // Subscribing again follows the new primary.
    let (mut feed, first) = Feed::open(&proxy).await;
    assert_eq!(first.upto, cluster.committed(1));
    let mut w = cluster.proxy_client().await;
    let insert = ["USE shop", "INSERT INTO t(v) VALUES ('b')"];
    step(
        &mut w,
        &mut feed,
        &insert,
        changes(&[("shop", "t")], &[], &[]),
    )
    .await;
}

#[tokio::test]
async fn through_the_proxy_a_feed_ends_when_the_primary_dies_and_a_dead_primary_is_an_error() {
    let mut cluster = Cluster::configure(1, OPLOG);
    set_config(&cluster, "failover", "mode", json!("MANUAL"));
    cluster.spawn_all_with_proxy();
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    let (mut feed, _) = Feed::open(&proxy).await;
    cluster.kill9(0);
    let reason = feed.error(Duration::from_secs(3)).await;
    assert!(
        reason.starts_with("the change feed from m1 ended: "),
        "{reason}"
    );
    assert!(matches!(
        feed.frame(Duration::from_secs(3)).await,
        Err(ClientError::Closed)
    ));
    // The primary cannot be reached: an error, and the session goes on.
    let mut c = cluster.proxy_client().await;
    c.execute("DIRK SEEN 4").await.unwrap();
    match c.execute("DIRK CHANGES").await {
        Err(ClientError::Server(reason)) => assert!(
            reason.starts_with("instance m1: cannot open its change feed: "),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(position(&mut c, "DIRK POSITION").await, 4);
}

#[tokio::test]
async fn the_proxy_answers_dirk_seen_and_position_and_seen_positions_are_read() {
    let cluster = Cluster::start_with_lagging_replica("READ_YOUR_WRITES", 400);
    let mut c = cluster.proxy_client().await;
    assert_eq!(position(&mut c, "DIRK POSITION").await, 0);
    assert_eq!(position(&mut c, "dirk seen 7").await, 7);
    assert_eq!(position(&mut c, "DIRK SEEN 3").await, 7);
    assert_eq!(position(&mut c, "DIRK POSITION").await, 7);
    for bad in [
        "DIRK SEEN",
        "DIRK SEEN x",
        "DIRK SEEN -1",
        "DIRK SEEN +9",
        "DIRK SEEN 1 h 2",
        "DIRK SEEN h 2",
    ] {
        match c.execute(bad).await {
            Err(ClientError::Server(reason)) => {
                assert!(
                    reason.starts_with("expected `DIRK SEEN <position> [<history>]`"),
                    "{reason}"
                )
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert_eq!(position(&mut c, "DIRK POSITION").await, 7);
    // A position carried with its history (a reconnecting client's) is answered back whole.
    let mut carried = cluster.proxy_client().await;
    assert_eq!(position(&mut carried, "DIRK SEEN 9 m1-a").await, 9);
    assert_eq!(position(&mut carried, "DIRK SEEN 8 m1-a").await, 9);
    match carried.execute("DIRK POSITION HISTORY").await {
        Ok(Reply::Message(text)) => assert_eq!(text, "position 9 history m1-a"),
        other => panic!("DIRK POSITION HISTORY: {other:?}"),
    }

    // A write through the proxy: its position, the same on every ask.
    let mut w = cluster.proxy_client().await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t(v) VALUES ('a')",
    ] {
        w.execute(sql).await.unwrap();
    }
    let p = position(&mut w, "DIRK POSITION").await;
    assert!(p > 0);
    assert_eq!(p, cluster.committed(0));
    assert_eq!(position(&mut w, "DIRK POSITION").await, p);
    cluster.wait_converged(0, Duration::from_secs(10));

    // Writes straight to the primary; the replica applies each 400 ms late. A session that
    // says it has seen the write reads it; one that did not may read the replica's stale data.
    let mut direct = cluster.client(0).await;
    direct.execute("USE shop").await.unwrap();
    let mut seer = cluster.proxy_client().await;
    let mut other = cluster.proxy_client().await;
    for c in [&mut seer, &mut other] {
        c.execute("USE shop").await.unwrap();
    }
    let mut stale = 0;
    for i in 2..=4 {
        direct
            .execute(&format!("INSERT INTO t(v) VALUES ('v{i}')"))
            .await
            .unwrap();
        let seen = position(&mut direct, "DIRK POSITION").await;
        let count = |rows: &[Vec<Value>]| rows[0][0].as_i64().unwrap();
        let read = other.query("SELECT count(*) FROM t").await.unwrap().rows;
        if count(&read) < i {
            stale += 1;
        }
        assert_eq!(
            position(&mut seer, &format!("DIRK SEEN {seen}")).await,
            seen
        );
        let read = seer.query("SELECT count(*) FROM t").await.unwrap().rows;
        assert_eq!(
            count(&read),
            i,
            "a read after DIRK SEEN {seen} is older than it"
        );
    }
    assert!(
        stale > 0,
        "no stale read without DIRK SEEN: the test proves nothing"
    );
}

/// A new connection to the proxy is a new session with no position: it may read a replica
/// that has not applied what the client's previous session wrote. A client that carries the
/// previous session's position into the new one (`DIRK POSITION HISTORY` there, `DIRK SEEN
/// <seq> <history>` first thing here) reads its writes; one that does not, reads stale rows.
#[tokio::test]
async fn a_reconnecting_client_that_carries_its_position_reads_its_writes() {
    let cluster = Cluster::start_with_lagging_replica("READ_YOUR_WRITES", 400);
    let mut setup = cluster.proxy_client().await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    ] {
        setup.execute(sql).await.unwrap();
    }
    cluster.wait_converged(0, Duration::from_secs(10));
    let count = |rows: &[Vec<Value>]| rows[0][0].as_i64().unwrap();
    let mut stale = 0;
    for i in 1..=3 {
        let mut old = cluster.proxy_client().await;
        old.execute("USE shop").await.unwrap();
        old.execute(&format!("INSERT INTO t(v) VALUES ('v{i}')"))
            .await
            .unwrap();
        let carried = match old.execute("DIRK POSITION HISTORY").await.unwrap() {
            Reply::Message(text) => text,
            other => panic!("DIRK POSITION HISTORY answered {other:?}"),
        };
        drop(old);
        let words: Vec<&str> = carried.split_whitespace().collect();
        let ["position", seq, "history", history] = words[..] else {
            panic!("DIRK POSITION HISTORY answered {carried:?}");
        };
        let (mut carrier, mut bare) = (cluster.proxy_client().await, cluster.proxy_client().await);
        let seen = format!("DIRK SEEN {seq} {history}");
        assert_eq!(position(&mut carrier, &seen).await.to_string(), seq);
        for c in [&mut carrier, &mut bare] {
            c.execute("USE shop").await.unwrap();
        }
        if count(&bare.query("SELECT count(*) FROM t").await.unwrap().rows) < i {
            stale += 1;
        }
        let read = carrier.query("SELECT count(*) FROM t").await.unwrap().rows;
        assert_eq!(
            count(&read),
            i,
            "a new session carrying `{carried}` read older rows"
        );
    }
    assert!(
        stale > 0,
        "no stale read in a new session without a position: the test proves nothing"
    );
}
