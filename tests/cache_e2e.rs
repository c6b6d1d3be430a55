//! End-to-end tests of `dirkdb cache` in front of a real proxy, primary and replica.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cache::{CacheProcess, RawConnection};
use common::cluster::Cluster;
use dirkdb_client::Client;
use serde_json::Value;

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

/// A cluster (primary + one replica + proxy) with database `shop` and a few rows.
async fn cluster_with_data() -> Cluster {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut c = cluster.proxy_client().await;
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL)",
        "CREATE TABLE audit(n INTEGER)",
        "INSERT INTO audit VALUES (0)",
        "CREATE TRIGGER count_items AFTER INSERT ON items BEGIN UPDATE audit SET n = n + 1; END",
        "CREATE VIEW cheap AS SELECT name FROM items WHERE price < 10",
        "CREATE TABLE other(x)",
        "INSERT INTO items(name, price) VALUES ('pen', 2.5), ('book', 12.0)",
    ] {
        c.execute(sql).await.unwrap();
    }
    cluster
}

fn rows(reply: dirkdb_client::ResultSet) -> Vec<Vec<Value>> {
    reply.rows
}

async fn count(c: &mut Client, sql: &str) -> i64 {
    c.query(sql).await.unwrap().rows[0][0].as_i64().unwrap()
}

#[tokio::test]
async fn a_repeated_select_is_served_from_memory_with_identical_bytes() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    let mut direct = RawConnection::connect(cluster.proxy.port);
    let mut cached = RawConnection::connect(cache.port);
    direct.exchange("USE shop");
    cached.exchange("USE shop");
    let query = "SELECT id, name, price FROM items ORDER BY id";
    let from_proxy = direct.exchange(query);
    let miss = cached.exchange(query);
    let hit = cached.exchange(query);
    assert_eq!(cache.stat("misses"), 1);
    assert_eq!(cache.stat("hits"), 1);
    assert_eq!(
        miss, from_proxy,
        "the cache passes the proxy's bytes on unchanged"
    );
    assert_eq!(
        hit, from_proxy,
        "a hit sends exactly the bytes of the first answer"
    );
    // Spelling, case and Malagasy keywords share the entry.
    assert_eq!(
        cached.exchange("select id,name,price from items order by id"),
        hit
    );
    assert_eq!(
        cached.exchange("alaivo id, name, price ao items ORDER BY id"),
        hit
    );
    assert_eq!(cache.stat("hits"), 3);
    // A different database is a different key.
    let mut c = cache.client().await;
    c.execute("CREATE DATABASE other").await.unwrap();
    c.execute("USE other").await.unwrap();
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        .await
        .unwrap();
    assert!(rows(c.query(query).await.unwrap()).is_empty());
    assert_eq!(cache.stat("hits"), 3);
}

#[tokio::test]
async fn writes_through_the_cache_are_seen_at_once_including_triggers_and_views() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    for i in 0..30 {
        assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 2 + i);
        assert_eq!(
            count(&mut c, "SELECT n FROM audit").await,
            2 + i,
            "trigger effect"
        );
        let cheap = c
            .query("SELECT count(*) AS n FROM cheap")
            .await
            .unwrap()
            .rows;
        assert_eq!(cheap[0][0].as_i64(), Some(1 + i), "view over items");
        c.execute(&format!(
            "INSERT INTO items(name, price) VALUES ('x{i}', 1)"
        ))
        .await
        .unwrap();
    }
    // Unrelated entries stay: `other` was never written.
    c.query("SELECT count(*) FROM other").await.unwrap();
    let hits = cache.stat("hits");
    c.execute("UPDATE items SET price = 100 WHERE id = 1")
        .await
        .unwrap();
    c.query("SELECT count(*) FROM other").await.unwrap();
    assert_eq!(
        cache.stat("hits"),
        hits + 1,
        "a write to items keeps other's entry"
    );
    // DDL and DROP DATABASE.
    c.query("SELECT * FROM other").await.unwrap();
    c.execute("ALTER TABLE other ADD COLUMN y").await.unwrap();
    let cols = c.query("SELECT * FROM other").await.unwrap().columns.len();
    assert_eq!(cols, 2, "the new column shows at once");
    c.execute("USE shop").await.unwrap();
    c.execute("DROP DATABASE shop").await.unwrap();
    let mut again = cache.client().await;
    assert!(again.execute("USE shop").await.is_err());
}

#[tokio::test]
async fn transactions_invalidate_on_commit_and_their_reads_are_never_cached() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 2);
    c.execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO items(name, price) VALUES ('t', 1)")
        .await
        .unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM items").await,
        3,
        "a read inside the transaction sees its own write"
    );
    let mut other = cache.client().await;
    other.execute("USE shop").await.unwrap();
    assert_eq!(count(&mut other, "SELECT count(*) FROM items").await, 2);
    c.execute("COMMIT").await.unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 3);
    assert_eq!(count(&mut other, "SELECT count(*) FROM items").await, 3);
    c.execute("BEGIN").await.unwrap();
    c.execute("DELETE FROM items").await.unwrap();
    c.execute("ROLLBACK").await.unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 3);
    // Non-deterministic reads go upstream every time.
    let before = cache.stat("uncacheable");
    let a = c.query("SELECT random()").await.unwrap().rows;
    let b = c.query("SELECT random()").await.unwrap().rows;
    assert_ne!(a, b);
    c.query("SELECT datetime('now')").await.unwrap();
    c.query("SELECT count(*) FROM items WHERE price < abs(random())")
        .await
        .unwrap();
    assert_eq!(cache.stat("uncacheable"), before + 4);
}

#[tokio::test]
async fn another_clients_write_is_seen_through_the_cache_without_waiting_for_the_ttl() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 600_000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    let mut writer = cluster.proxy_client().await;
    writer.execute("USE shop").await.unwrap();
    let mut delays = Vec::new();
    for i in 0..20 {
        assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 2 + i);
        assert_eq!(count(&mut c, "SELECT count(*) FROM items").await, 2 + i);
        writer
            .execute(&format!(
                "INSERT INTO items(name, price) VALUES ('w{i}', 1)"
            ))
            .await
            .unwrap();
        let written = Instant::now();
        loop {
            if count(&mut c, "SELECT count(*) FROM items").await == 3 + i {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(2),
                "the write was not seen through the cache within 2 s"
            );
        }
        delays.push(written.elapsed());
    }
    delays.sort();
    println!(
        "write by another client → visible through the cache: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(
        cache.stat("hits") >= 20,
        "the reads before each write were hits"
    );
}

#[tokio::test]
async fn entries_expire_at_the_ttl() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 400, 200, &[]);
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    let started = Instant::now();
    c.query("SELECT name FROM items").await.unwrap();
    c.query("SELECT name FROM items").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!((cache.stat("misses"), cache.stat("hits")), (1, 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.query("SELECT name FROM items").await.unwrap();
    assert_eq!((cache.stat("misses"), cache.stat("hits")), (2, 1));
}

#[tokio::test]
async fn capacity_limits_hold_under_a_flood_of_distinct_queries() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 25, &["--max-bytes", "20000"]);
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    for i in 0..600 {
        c.query(&format!("SELECT name FROM items WHERE id > {i}"))
            .await
            .unwrap();
        if i % 7 == 0 {
            // Some queries are asked again, so frequency has something to work with.
            c.query("SELECT name FROM items WHERE id > 0")
                .await
                .unwrap();
        }
    }
    let stats = cache.stats();
    let (entries, bytes) = (
        stats["entries"].as_u64().unwrap(),
        stats["bytes"].as_u64().unwrap(),
    );
    assert!(entries <= 25, "{entries} entries: {stats}");
    assert!(bytes <= 20_000, "{bytes} bytes: {stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    // Big results are passed on but not kept.
    let small = CacheProcess::start(&cluster, 60_000, 25, &["--max-entry-bytes", "50"]);
    let mut c = small.client().await;
    c.execute("USE shop").await.unwrap();
    c.query("SELECT * FROM items").await.unwrap();
    c.query("SELECT * FROM items").await.unwrap();
    assert_eq!(small.stat("hits"), 0);
    assert_eq!(small.stat("entries"), 0);
}

#[tokio::test]
async fn sixty_four_clients_with_the_same_cold_query_cause_one_upstream_query() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) \
                SELECT count(*) AS n FROM c JOIN items ON items.id = 1";
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut c = cache.client().await;
        c.execute("USE shop").await.unwrap();
        c.query("SELECT 1 AS warm FROM items LIMIT 1")
            .await
            .unwrap();
        clients.push(c);
    }
    let reads_before = cache.stat("upstream_reads");
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.query(slow).await.unwrap().rows
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(answers[0][0][0].as_i64(), Some(1_500_000));
    let stats = cache.stats();
    assert_eq!(
        cache.stat("upstream_reads") - reads_before,
        1,
        "one query went upstream: {stats}"
    );
    assert_eq!(stats["coalesced"].as_u64(), Some(63), "{stats}");
}

#[tokio::test]
async fn show_cache_stats_flush_cache_and_metrics() {
    let cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    c.query("SELECT name FROM items").await.unwrap();
    c.query("SELECT name FROM items").await.unwrap();
    let stats = c.query("SHOW CACHE STATS").await.unwrap();
    assert_eq!(stats.columns[0].name, "stat");
    let stat = |rows: &[Vec<Value>], name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .map(|r| r[1].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(stat(&stats.rows, "hits"), 1);
    assert_eq!(stat(&stats.rows, "entries"), 1);
    assert_eq!(stat(&stats.rows, "hit_ratio"), 0.5);
    let malagasy = c.query("asehoy cache stats").await.unwrap();
    assert_eq!(stat(&malagasy.rows, "hits"), 1);
    let flushed = c.execute("FLUSH CACHE").await.unwrap();
    assert!(
        format!("{flushed:?}").contains("1 entries dropped"),
        "{flushed:?}"
    );
    c.query("SELECT name FROM items").await.unwrap();
    assert_eq!(cache.stat("misses"), 2);
    let metrics = common::cluster::http(cache.admin, "GET", "/metrics", "");
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("dirkdb_cache_hits_total 1"), "{text}");
    assert!(text.contains("dirkdb_cache_entries 1"), "{text}");
}

#[tokio::test]
async fn upstream_down_gives_errors_then_reconnects_and_can_serve_stale() {
    let mut cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 300, 200, &["--stale-if-error-ms", "60000"]);
    // The feed's first notice flushes the cache; fill it after that.
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    let fresh = c.query("SELECT name FROM items ORDER BY id").await.unwrap();
    let mut raw = RawConnection::connect(cache.port);
    raw.exchange("USE shop");
    if let Some(mut proxy) = cluster.proxy.child.take() {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    let err = c.query("SELECT price FROM items").await.unwrap_err();
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale = c
        .execute("SELECT name FROM items ORDER BY id")
        .await
        .unwrap();
    let stale_rows = stale.rows().expect("rows").clone();
    assert_eq!(stale_rows.rows, fresh.rows, "the kept rows are served");
    let text = String::from_utf8(raw.exchange("SELECT name FROM items ORDER BY id")).unwrap();
    assert!(text.contains("stale: served from the cache"), "{text}");
    assert_eq!(cache.stat("stale_served"), 2);
    cluster.spawn_proxy();
    let again = c.query("SELECT price FROM items").await.unwrap();
    assert_eq!(
        again.rows.len(),
        2,
        "the session reconnected and kept its database"
    );
    let text = String::from_utf8(raw.exchange("SELECT name FROM items ORDER BY id")).unwrap();
    assert!(!text.contains("stale"), "{text}");
}

#[tokio::test]
async fn without_stale_if_error_an_expired_entry_is_not_served() {
    let mut cluster = cluster_with_data().await;
    let cache = CacheProcess::start(&cluster, 200, 200, &[]);
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    c.query("SELECT name FROM items").await.unwrap();
    if let Some(mut proxy) = cluster.proxy.child.take() {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = c.query("SELECT name FROM items").await.unwrap_err();
    assert!(err.to_string().contains("cannot be reached"), "{err}");
}

/// Queries `sql` through `c` until its rows equal `want` (another client's write reaches the
/// cache through the change feed), for at most 5 s.
async fn eventually_rows(c: &mut Client, sql: &str, want: Vec<Vec<Value>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = c.query(sql).await.unwrap().rows;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the cache's change feed answered at least `n` syncs.
fn wait_for_syncs(cache: &CacheProcess, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.stat("feed_syncs") < n {
        assert!(Instant::now() < deadline, "the feed answered no sync");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn an_updated_row_is_rewritten_in_place_with_the_servers_own_bytes() {
    let cluster = cluster_with_data().await;
    let mut proxy = cluster.proxy_client().await;
    for sql in [
        "USE shop",
        "CREATE TABLE acc(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT, r REAL)",
        "INSERT INTO acc VALUES (1, 'e1', 0, 0.5), (2, 'e2', 0, 0.5), (3, 'e3', 0, 0.5)",
    ] {
        proxy.execute(sql).await.unwrap();
    }
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    cache.wait_for_feed();
    let mut cached = RawConnection::connect(cache.port);
    let mut direct = RawConnection::connect(cluster.nodes[0].port);
    cached.exchange("USE shop");
    direct.exchange("USE shop");
    let point = "SELECT id, email AS mail, n FROM acc WHERE id = 1";
    let by_email = "SELECT * FROM acc WHERE email = 'e2' AND n = 0";
    let dirkdb = "alaivo id, n #ao@ acc #rehefa id = 3";
    for q in [point, by_email, dirkdb] {
        cached.exchange(q);
    }
    assert_eq!(cache.stat("misses"), 3);
    wait_for_syncs(&cache, 1);

    // Another client updates row 1 through the proxy: the entry is rewritten from the feed's
    // image of the row, byte for byte what the primary answers, and the next read is a hit.
    proxy
        .execute("UPDATE acc SET n = 7, email = 'e1' WHERE id = 1")
        .await
        .unwrap();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    eventually_rows(&mut c, point, vec![vec![1.into(), "e1".into(), 7.into()]]).await;
    assert_eq!(cache.stat("refreshed"), 1);
    assert_eq!(cache.stat("misses"), 3, "the rewritten entry answered");
    assert_eq!(cached.exchange(point), direct.exchange(point));

    // A REAL in the row (written differently in DirkDB's answers) is not rewritten: dropped,
    // and fetched again.
    proxy
        .execute("UPDATE acc SET r = 1.25 WHERE id = 2")
        .await
        .unwrap();
    eventually_rows(
        &mut c,
        by_email,
        vec![vec![2.into(), "e2".into(), 0.into(), 1.25.into()]],
    )
    .await;
    assert_eq!(cache.stat("refreshed"), 1);
    assert_eq!(cached.exchange(by_email), direct.exchange(by_email));
    // A pinned column that no longer holds its literal: the row leaves the answer.
    wait_for_syncs(&cache, 2);
    proxy
        .execute("UPDATE acc SET n = 1, r = NULL WHERE id = 2")
        .await
        .unwrap();
    eventually_rows(&mut c, by_email, vec![]).await;
    assert_eq!(cache.stat("refreshed"), 1);

    // DirkDB's answers are never rewritten, only dropped.
    proxy
        .execute("UPDATE acc SET n = 9 WHERE id = 3")
        .await
        .unwrap();
    let want = direct.exchange(dirkdb);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cached.exchange(dirkdb) != want {
        assert!(
            Instant::now() < deadline,
            "the DirkDB entry was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.stat("refreshed"), 1);

    // A delete drops the entry: no row.
    proxy.execute("DELETE FROM acc WHERE id = 1").await.unwrap();
    eventually_rows(&mut c, point, vec![]).await;
    assert_eq!(cache.stat("refreshed"), 1);
    assert_eq!(cached.exchange(point), direct.exchange(point));
}

#[tokio::test]
async fn a_write_drops_only_the_entries_of_the_rows_it_changed() {
    let cluster = cluster_with_data().await;
    let mut proxy = cluster.proxy_client().await;
    for sql in [
        "USE shop",
        "CREATE TABLE acc(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT)",
        "INSERT INTO acc VALUES (1, 'e1', 0), (2, 'e2', 0), (3, 'e3', 0), (4, 'e4', 0)",
    ] {
        proxy.execute(sql).await.unwrap();
    }
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    let by_id = |id: i64| format!("SELECT id, email, n FROM acc WHERE id = {id}");
    let keyed = [
        by_id(1),
        "SELECT id FROM acc WHERE email = 'e3'".to_string(),
        "alaivo id #ao@ acc #rehefa id = 4".to_string(),
        "SELECT a.id, i.name FROM acc a JOIN items i ON i.id = 1 WHERE a.id IN (1, 4)".to_string(),
        by_id(99),
    ];
    let read_all = async |c: &mut Client| {
        let mut out = Vec::new();
        for q in &keyed {
            out.push(c.query(q).await.unwrap().rows);
        }
        out
    };
    let first = read_all(&mut c).await;
    assert_eq!(first[4], Vec::<Vec<Value>>::new(), "no row 99 yet");
    c.query(&by_id(2)).await.unwrap();
    let count = "SELECT count(*) AS n FROM acc";
    c.query(count).await.unwrap();
    assert_eq!(cache.stat("stored_keyed"), keyed.len() as u64 + 1);

    // Another client updates row 2 through the proxy: the feed drops row 2's entry and the
    // count, nothing else.
    proxy
        .execute("UPDATE acc SET n = 7 WHERE id = 2")
        .await
        .unwrap();
    eventually_rows(
        &mut c,
        &by_id(2),
        vec![vec![2.into(), "e2".into(), 7.into()]],
    )
    .await;
    let hits = cache.stat("hits");
    assert_eq!(read_all(&mut c).await, first);
    assert_eq!(
        cache.stat("hits"),
        hits + keyed.len() as u64,
        "every keyed entry stayed"
    );
    let misses = cache.stat("misses");
    c.query(count).await.unwrap();
    assert_eq!(
        cache.stat("misses"),
        misses + 1,
        "the table-level entry went"
    );

    // Writes through the cache are seen as soon as they are acknowledged: an insert of a key
    // that had no row, a key change (old and new value), a delete.
    c.execute("INSERT INTO acc VALUES (99, 'e99', 1)")
        .await
        .unwrap();
    assert_eq!(
        c.query(&by_id(99)).await.unwrap().rows,
        vec![vec![Value::from(99), Value::from("e99"), Value::from(1)]]
    );
    c.execute("UPDATE acc SET email = 'new3' WHERE id = 3")
        .await
        .unwrap();
    assert!(c.query(&keyed[1]).await.unwrap().rows.is_empty());
    assert_eq!(
        c.query("SELECT id FROM acc WHERE email = 'new3'")
            .await
            .unwrap()
            .rows,
        vec![vec![Value::from(3)]]
    );
    c.execute("DELETE FROM acc WHERE id = 1").await.unwrap();
    assert!(c.query(&by_id(1)).await.unwrap().rows.is_empty());
    assert_eq!(
        c.query(&keyed[3]).await.unwrap().rows,
        vec![vec![Value::from(4), Value::from("pen")]]
    );
    let hits = cache.stat("hits");
    c.query(&keyed[2]).await.unwrap();
    assert_eq!(
        cache.stat("hits"),
        hits + 1,
        "row 4's DirkDB entry outlived them all"
    );
    assert_eq!(cache.stat("write_settle_fallbacks"), 0);
    assert_eq!(cache.stat("write_settles"), 3);

    // A schema change forgets the keys: the next reads are misses, then keyed again.
    c.execute("CREATE INDEX acc_n ON acc(n)").await.unwrap();
    let misses = cache.stat("misses");
    c.query(&keyed[2]).await.unwrap();
    assert_eq!(cache.stat("misses"), misses + 1);
}

/// Collations, partial and expression indexes (#20): a key serves a query only when the query
/// compares by the equality its index enforces (the column's own collation, an index's
/// `COLLATE`, or the query's), so such entries survive other rows' changes; every other query
/// over these tables depends on the whole table, and none of them ever shows a changed row
/// stale, whether the change comes through the cache or through the proxy.
#[tokio::test]
async fn keys_serve_only_queries_comparing_as_their_index_does() {
    let cluster = cluster_with_data().await;
    let mut proxy = cluster.proxy_client().await;
    for sql in [
        "USE shop",
        "CREATE TABLE nc(id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE UNIQUE, v INT)",
        "INSERT INTO nc VALUES (1, 'a', 0), (2, 'b', 0)",
        "CREATE TABLE mix(id INTEGER PRIMARY KEY, email TEXT UNIQUE, note TEXT COLLATE NOCASE, v INT)",
        "INSERT INTO mix VALUES (1, 'e1', 'x', 0), (2, 'e2', 'y', 0)",
        "CREATE TABLE ic(id INTEGER PRIMARY KEY, name TEXT, v INT)",
        "CREATE UNIQUE INDEX ic_name ON ic(name COLLATE NOCASE)",
        "INSERT INTO ic VALUES (1, 'a', 0), (2, 'b', 0)",
        "CREATE TABLE pu(id INTEGER PRIMARY KEY, code TEXT, active INT, v INT)",
        "CREATE UNIQUE INDEX pu_code ON pu(code) WHERE active = 1",
        "INSERT INTO pu VALUES (1, 'k', 1, 0), (2, 'k', 0, 0), (3, 'm', 1, 0)",
        "CREATE TABLE ex(id INTEGER PRIMARY KEY, name TEXT, v INT)",
        "CREATE UNIQUE INDEX ex_lower ON ex(lower(name))",
        "INSERT INTO ex VALUES (1, 'A', 0), (2, 'b', 0)",
    ] {
        proxy.execute(sql).await.unwrap();
    }
    let cache = CacheProcess::start(&cluster, 60_000, 200, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE shop").await.unwrap();
    let row = |id: i64, v: i64| vec![Value::from(id), Value::from(v)];
    // Keyed: the column's NOCASE, a BINARY key beside a NOCASE column, an index's NOCASE.
    let nocase_column = "SELECT id, v FROM nc WHERE name = 'A'";
    let binary_beside = "SELECT id, v FROM mix WHERE email = 'e1'";
    let nocase_index = "SELECT id, v FROM ic WHERE name = 'A' COLLATE NOCASE";
    // Whole tables: BINARY against a NOCASE index, NOCASE against a BINARY key, a partial
    // index, an expression index.
    let binary_query = "SELECT id, v FROM ic WHERE name = 'A'";
    let nocase_query = "SELECT id, v FROM mix WHERE email = 'E1' COLLATE NOCASE";
    let partial = "SELECT id, v FROM pu WHERE code = 'k' ORDER BY id";
    let expression = "SELECT id, v FROM ex WHERE name = 'a'";
    let keyed = [nocase_column, binary_beside, nocase_index];
    let first = [
        vec![row(1, 0)],
        vec![row(1, 0)],
        vec![row(1, 0)],
        vec![],
        vec![row(1, 0)],
        vec![row(1, 0), row(2, 0)],
        vec![],
    ];
    let all = [
        nocase_column,
        binary_beside,
        nocase_index,
        binary_query,
        nocase_query,
        partial,
        expression,
    ];
    for (q, want) in all.iter().zip(&first) {
        assert_eq!(&c.query(q).await.unwrap().rows, want, "{q}");
    }
    assert_eq!(cache.stat("stored_keyed"), keyed.len() as u64);

    // Other rows change (through the proxy): the keyed entries stay.
    for t in ["nc", "mix", "ic"] {
        proxy
            .execute(&format!("UPDATE {t} SET v = 5 WHERE id = 2"))
            .await
            .unwrap();
    }
    eventually_rows(
        &mut c,
        "SELECT v FROM ic WHERE id = 2",
        vec![vec![5.into()]],
    )
    .await;
    let hits = cache.stat("hits");
    for q in keyed {
        c.query(q).await.unwrap();
    }
    assert_eq!(cache.stat("hits"), hits + 3, "the keyed entries stayed");

    // The rows they read change through the proxy: every answer follows.
    for sql in [
        "UPDATE nc SET v = 1 WHERE name = 'a'",
        "UPDATE mix SET v = 1 WHERE id = 1",
        "UPDATE ic SET v = 1 WHERE id = 1",
        "UPDATE pu SET v = 1 WHERE id = 2",
        "UPDATE ex SET name = 'a' WHERE id = 1",
    ] {
        proxy.execute(sql).await.unwrap();
    }
    eventually_rows(&mut c, nocase_column, vec![row(1, 1)]).await;
    eventually_rows(&mut c, binary_beside, vec![row(1, 1)]).await;
    eventually_rows(&mut c, nocase_query, vec![row(1, 1)]).await;
    eventually_rows(&mut c, nocase_index, vec![row(1, 1)]).await;
    eventually_rows(&mut c, partial, vec![row(1, 0), row(2, 1)]).await;
    eventually_rows(&mut c, expression, vec![row(1, 0)]).await;

    // Through the cache, each is seen at once: a key changing case under NOCASE, a new key
    // in another case where a read found none.
    let none_yet = "SELECT id, v FROM nc WHERE name = 'c'";
    assert!(c.query(none_yet).await.unwrap().rows.is_empty());
    c.execute("UPDATE ic SET name = 'A' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(c.query(binary_query).await.unwrap().rows, vec![row(1, 1)]);
    c.execute("UPDATE ic SET name = 'q', v = 2 WHERE id = 1")
        .await
        .unwrap();
    assert!(c.query(nocase_index).await.unwrap().rows.is_empty());
    c.execute("INSERT INTO nc VALUES (3, 'C', 4)")
        .await
        .unwrap();
    assert_eq!(c.query(none_yet).await.unwrap().rows, vec![row(3, 4)]);
    c.execute("UPDATE nc SET name = 'Z' WHERE id = 1")
        .await
        .unwrap();
    assert!(c.query(nocase_column).await.unwrap().rows.is_empty());
    assert_eq!(cache.stat("write_settle_fallbacks"), 0);
}
