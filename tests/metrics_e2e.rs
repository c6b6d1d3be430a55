//! `GET /metrics` of the server, the proxy and the cache, scraped over real HTTP from parts
//! running in this process: each page is well formed (every sample under its `# TYPE`), names
//! and types are the documented ones, and a value moves with what a client does.

use crate::common;

use std::time::Duration;

use common::inproc::{self, Scrape};
use dirkdb_client::Client;

/// Runs `sql` until it succeeds (a proxy takes a health round to find its primary).
async fn execute_soon(c: &mut Client, sql: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = c.execute(sql).await {
        assert!(
            std::time::Instant::now() < deadline,
            "`{sql}` kept failing: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_server_s_metrics_count_statements_and_connections() {
    let primary = inproc::primary().await;
    let admin = primary.part.admin;
    let before = Scrape::of(admin).await;
    before.assert_well_formed();
    for (name, kind) in [
        ("dirkdb_committed_sequence", "gauge"),
        ("dirkdb_is_primary", "gauge"),
        ("dirkdb_databases", "gauge"),
        ("dirkdb_connections_open", "gauge"),
        ("dirkdb_connections_refused_total", "counter"),
        ("dirkdb_statements_total", "counter"),
        ("dirkdb_statement_errors_total", "counter"),
        ("dirkdb_replica_acked_sequence", "gauge"),
        ("dirkdb_replica_bytes_sent_total", "counter"),
        ("dirkdb_file_copy_failures_total", "counter"),
    ] {
        assert_eq!(before.kind(name), Some(kind), "{name} in\n{}", before.text);
    }
    assert_eq!(
        before.value("dirkdb_is_primary{instance=\"m1\"}"),
        Some(1.0)
    );
    let statements = before
        .value("dirkdb_statements_total{instance=\"m1\"}")
        .expect("statements counted");
    let mut c = primary.part.client().await;
    for sql in ["CREATE DATABASE m", "USE m", "CREATE TABLE t(v TEXT)"] {
        c.execute(sql).await.expect(sql);
    }
    assert!(c.execute("SELECT * FROM missing").await.is_err());
    let after = Scrape::of(admin).await;
    after.assert_well_formed();
    assert_eq!(
        after.value("dirkdb_statements_total{instance=\"m1\"}"),
        Some(statements + 4.0),
        "{}",
        after.text
    );
    assert_eq!(
        after.value("dirkdb_statement_errors_total{instance=\"m1\"}"),
        Some(1.0)
    );
    assert_eq!(
        after.value("dirkdb_connections_open{instance=\"m1\"}"),
        Some(1.0)
    );
    assert_eq!(after.value("dirkdb_databases{instance=\"m1\"}"), Some(1.0));
    let committed = after
        .value("dirkdb_committed_sequence{instance=\"m1\"}")
        .expect("a position");
    assert!(committed >= 2.0, "{}", after.text);
    drop(c);
    primary.part.stop().await;
}

/// Writes sent with their values written in run from one cached statement per shape, with the
/// values bound (`statement_shape`), and do exactly what their text says; statements that do not
/// qualify, or whose shape does not compile, run as sent.
#[tokio::test]
async fn writes_with_their_values_written_in_run_from_one_statement_per_shape() {
    let primary = inproc::primary().await;
    let admin = primary.part.admin;
    let mut c = primary.part.client().await;
    for sql in [
        "CREATE DATABASE s",
        "USE s",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v TEXT)",
    ] {
        c.execute(sql).await.expect(sql);
    }
    let parameterized = |s: &Scrape| {
        s.value("dirkdb_statements_parameterized_total{instance=\"m1\"}")
            .expect("the counter is on the page")
    };
    let before = parameterized(&Scrape::of(admin).await);
    let mut shaped = 0.0;
    for i in 0..30 {
        c.execute(&format!(
            "INSERT INTO t VALUES ({i}, '{}', 'it''s {i}')",
            i * 2
        ))
        .await
        .expect("insert");
        shaped += 1.0;
    }
    for i in 0..30 {
        c.execute(&format!(
            "UPDATE t SET n = n + {i}, v = v || '!' WHERE id = {i}"
        ))
        .await
        .expect("update");
        shaped += 1.0;
    }
    c.execute("DELETE FROM t WHERE id IN (1, 2) OR v = 'it''s 3!'")
        .await
        .expect("delete");
    shaped += 1.0;
    // Not parameterized: RETURNING, a subquery, a string where a name stands (its shape does
    // not compile, so it runs as sent), and a syntax error, which keeps SQLite's own message.
    c.query("UPDATE t SET n = 0 WHERE id = 4 RETURNING n")
        .await
        .expect("returning");
    c.execute("DELETE FROM t WHERE id IN (SELECT id FROM t WHERE n > 80)")
        .await
        .expect("subquery");
    c.execute("INSERT INTO t('id', 'n') VALUES (100, 1)")
        .await
        .expect("names as strings");
    let error = c
        .execute("UPDATE t SET n = = 1 WHERE id = 5")
        .await
        .expect_err("a syntax error");
    assert!(error.to_string().contains("syntax error"), "{error}");
    let after = parameterized(&Scrape::of(admin).await);
    assert_eq!(after - before, shaped);
    let rows = c
        .query("SELECT id, n, typeof(n), v FROM t ORDER BY id")
        .await
        .expect("read");
    let mut expected = Vec::new();
    for i in (0..30).filter(|i| ![1, 2, 3].contains(i)) {
        let n = if i == 4 { 0 } else { i * 3 };
        if n > 80 {
            continue;
        }
        expected.push(serde_json::json!([i, n, "integer", format!("it's {i}!")]));
    }
    expected.push(serde_json::json!([100, 1, "integer", null]));
    let got: Vec<serde_json::Value> = rows.rows.iter().map(|r| serde_json::json!(r)).collect();
    assert_eq!(got, expected);
    drop(c);
    primary.part.stop().await;
}

#[tokio::test]
async fn the_proxy_s_metrics_count_each_instance_s_reads_and_writes() {
    let primary = inproc::primary().await;
    let proxy = inproc::proxy(&primary).await;
    let mut c = proxy.client().await;
    execute_soon(&mut c, "CREATE DATABASE p").await;
    let before = Scrape::of(proxy.admin).await;
    before.assert_well_formed();
    for (name, kind) in [
        ("dirkdb_proxy_client_connections", "gauge"),
        ("dirkdb_proxy_reads_total", "counter"),
        ("dirkdb_proxy_writes_total", "counter"),
        ("dirkdb_proxy_errors_total", "counter"),
        ("dirkdb_proxy_busy_seconds_total", "counter"),
        ("dirkdb_proxy_instance_up", "gauge"),
        ("dirkdb_proxy_instance_lag_ms", "gauge"),
        ("dirkdb_proxy_replication_file_mode", "gauge"),
        ("dirkdb_proxy_instance_file_mode", "gauge"),
        ("dirkdb_proxy_file_triggers_requested_total", "counter"),
        ("dirkdb_proxy_file_triggers_in_flight", "gauge"),
    ] {
        assert_eq!(before.kind(name), Some(kind), "{name} in\n{}", before.text);
    }
    assert_eq!(before.value("dirkdb_proxy_client_connections"), Some(1.0));
    assert_eq!(
        before.value("dirkdb_proxy_replication_file_mode"),
        Some(0.0)
    );
    assert_eq!(
        before.value("dirkdb_proxy_instance_up{instance=\"m1\"}"),
        Some(1.0)
    );
    let writes = before
        .value("dirkdb_proxy_writes_total{instance=\"m1\"}")
        .expect("m1's writes");
    for sql in [
        "USE p",
        "CREATE TABLE t(v TEXT)",
        "INSERT INTO t VALUES ('a')",
    ] {
        c.execute(sql).await.expect(sql);
    }
    let after = Scrape::of(proxy.admin).await;
    after.assert_well_formed();
    let now = after
        .value("dirkdb_proxy_writes_total{instance=\"m1\"}")
        .expect("m1's writes");
    assert!(now >= writes + 2.0, "{writes} -> {now}\n{}", after.text);
    drop(c);
    proxy.stop().await;
    primary.part.stop().await;
}

#[tokio::test]
async fn the_cache_s_metrics_count_hits_and_entries() {
    let primary = inproc::primary().await;
    let mut w = primary.part.client().await;
    for sql in [
        "CREATE DATABASE c",
        "USE c",
        "CREATE TABLE items(name TEXT)",
        "INSERT INTO items VALUES ('a')",
    ] {
        w.execute(sql).await.expect(sql);
    }
    let cache = inproc::cache(&primary, &primary.part.addr()).await;
    let before = Scrape::of(cache.admin).await;
    before.assert_well_formed();
    for (name, kind) in [
        ("dirkdb_cache_hits_total", "counter"),
        ("dirkdb_cache_misses_total", "counter"),
        ("dirkdb_cache_hit_ratio", "gauge"),
        ("dirkdb_cache_entries", "gauge"),
        ("dirkdb_cache_bytes", "gauge"),
        ("dirkdb_cache_feed_position", "gauge"),
        ("dirkdb_cache_clients", "gauge"),
    ] {
        assert_eq!(before.kind(name), Some(kind), "{name} in\n{}", before.text);
    }
    assert_eq!(before.value("dirkdb_cache_hits_total"), Some(0.0));
    let mut c = cache.client().await;
    c.execute("USE c").await.expect("USE");
    for _ in 0..3 {
        c.query("SELECT name FROM items").await.expect("read");
    }
    let after = Scrape::of(cache.admin).await;
    after.assert_well_formed();
    assert_eq!(
        after.value("dirkdb_cache_misses_total"),
        Some(1.0),
        "{}",
        after.text
    );
    assert_eq!(after.value("dirkdb_cache_hits_total"), Some(2.0));
    assert_eq!(after.value("dirkdb_cache_entries"), Some(1.0));
    assert_eq!(after.value("dirkdb_cache_hit_ratio"), Some(0.6667));
    assert_eq!(after.value("dirkdb_cache_clients"), Some(1.0));
    drop((c, w));
    cache.stop().await;
    primary.part.stop().await;
}

/// Group commit (`storage.groupCommit`, on by default with FULL): sixteen sessions writing at
/// once share WAL syncs, as `/metrics` counts them, and every acknowledged row is there. On a
/// server without group commit the counters are absent and the test fails at the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_wal_syncs() {
    let primary = inproc::primary_full().await;
    let mut setup = primary.part.client().await;
    for sql in [
        "CREATE DATABASE g",
        "USE g",
        "CREATE TABLE t(who INT, n INT)",
    ] {
        setup.execute(sql).await.expect(sql);
    }
    let before = Scrape::of(primary.part.admin).await;
    let commits_before = before
        .value("dirkdb_group_commit_commits_total{instance=\"m1\"}")
        .expect("group commit is on by default");
    let writers: Vec<_> = (0..16)
        .map(|who| {
            let addr = primary.part.addr();
            tokio::spawn(async move {
                let mut c = Client::connect(&addr).await.expect("connect");
                c.execute("USE g").await.expect("USE");
                for n in 0..25 {
                    c.execute(&format!("INSERT INTO t VALUES ({who}, {n})"))
                        .await
                        .expect("insert");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let rows = setup.query("SELECT count(*) FROM t").await.expect("count");
    assert_eq!(rows.rows[0][0], serde_json::json!(400));
    let after = Scrape::of(primary.part.admin).await;
    let commits = after
        .value("dirkdb_group_commit_commits_total{instance=\"m1\"}")
        .expect("commits")
        - commits_before;
    let syncs = after
        .value("dirkdb_group_commit_syncs_total{instance=\"m1\"}")
        .expect("syncs")
        - before
            .value("dirkdb_group_commit_syncs_total{instance=\"m1\"}")
            .expect("syncs");
    assert_eq!(commits, 400.0, "{}", after.text);
    assert!(
        syncs >= 1.0 && syncs < commits,
        "{syncs} syncs for {commits} concurrent commits: nothing was grouped"
    );
}
