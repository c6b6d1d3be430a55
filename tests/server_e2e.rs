//! End-to-end tests of `dirkdb server` over real TCP with the client library: in this process
//! (`common::inproc`) where the test only talks to the server, as a real process where it
//! restarts, kills, signals or measures the memory of it.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::time::{Duration, Instant};

use common::{inproc, ServerProcess};
use dirkdb_client::{Client, ClientError, Reply};
use serde_json::json;

fn message(reply: Reply) -> String {
    match reply {
        Reply::Message(m) => m,
        Reply::Rows(rs) => panic!("expected a message, got rows {rs:?}"),
    }
}

fn server_error(result: Result<Reply, ClientError>) -> String {
    match result {
        Err(ClientError::Server(reason)) => reason,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn count(client: &mut Client, table: &str) -> i64 {
    let rs = client
        .query(&format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap();
    rs.rows[0][0].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_user_session_in_malagasy() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    assert_eq!(
        message(c.execute("CREATE DATABASE testdb;").await.unwrap()),
        "Ny tahiry : testdb dia voaforona soamantsara"
    );
    assert_eq!(
        message(c.execute("AMPIASAO testdb;").await.unwrap()),
        "Ny tahiry : testdb dia miasa ankehitriny"
    );
    assert_eq!(
        message(
            c.execute("CREATE TABLE utilisateurs (id INTEGER PRIMARY KEY, nom TEXT, age INT);")
                .await
                .unwrap()
        ),
        "Ny tabilao : utilisateurs dia voaforona soamantsara"
    );
    assert_eq!(
        message(
            c.execute("manampia ao@ utilisateurs (nom, age) sanda ('Alice', 30), ('Bob', 25);")
                .await
                .unwrap()
        ),
        "Tafinditra ny fiovana ny tabilao"
    );
    let rs = c
        .query("ALAIVO * FROM utilisateurs rehefa age > 26;")
        .await
        .unwrap();
    assert_eq!(rs.name.as_deref(), Some("utilisateurs"));
    let names: Vec<&str> = rs.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "nom", "age"]);
    assert_eq!(rs.columns[1].origin.as_deref(), Some("utilisateurs"));
    assert_eq!(rs.rows, vec![vec![json!(1), json!("Alice"), json!(30)]]);
    // Mixed Malagasy and English, a literal that looks like Malagasy left alone.
    let rs = c
        .query("alaivo nom, 'alaivo ao rehefa' antso lit ao utilisateurs WHERE age < 26 ary nom dia tsy NULL")
        .await
        .unwrap();
    assert_eq!(rs.rows, vec![vec![json!("Bob"), json!("alaivo ao rehefa")]]);
    let rs = c.query("asehoy ny tabilao").await.unwrap();
    assert_eq!(rs.rows, vec![vec![json!("utilisateurs")]]);
    let rs = c.query("SHOW DATABASES").await.unwrap();
    assert_eq!(rs.rows, vec![vec![json!("testdb")]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_type_round_trip() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    c.execute("CREATE DATABASE v").await.unwrap();
    c.execute("USE v").await.unwrap();
    let rs = c
        .query("SELECT 1, -9223372036854775808, 2.5, 'tx;t\nEND', x'00ff', NULL, 1e999")
        .await
        .unwrap();
    assert_eq!(
        rs.rows[0],
        vec![
            json!(1),
            json!(i64::MIN),
            json!(2.5),
            json!("tx;t\nEND"),
            json!({"blob": "00ff"}),
            json!(null),
            json!("Infinity")
        ]
    );
    // An empty result still has one page with its columns.
    c.execute("CREATE TABLE e(a, b)").await.unwrap();
    let rs = c.query("SELECT * FROM e").await.unwrap();
    assert_eq!(rs.pages, 1);
    assert_eq!(rs.columns.len(), 2);
    assert!(rs.rows.is_empty());
}

#[tokio::test]
async fn restart_keeps_data_and_sigterm_is_graceful() {
    let mut server = ServerProcess::start();
    {
        let mut c = server.client().await;
        c.execute("CREATE DATABASE shop").await.unwrap();
        c.execute("USE shop").await.unwrap();
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            .await
            .unwrap();
        c.execute("INSERT INTO t(v) VALUES ('a'), ('b')")
            .await
            .unwrap();
    }
    let status = server.terminate().expect("server exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    // The checkpoint folded the WAL into the database file.
    let wal = server.data_dir().join("shop.db-wal");
    assert!(std::fs::metadata(&wal)
        .map(|m| m.len() == 0)
        .unwrap_or(true));
    server.spawn();
    let mut c = server.client().await;
    c.execute("USE shop").await.unwrap();
    assert_eq!(count(&mut c, "t").await, 2);
}

#[tokio::test]
async fn acknowledged_write_survives_kill_9() {
    let mut server = ServerProcess::start();
    let mut c = server.client().await;
    c.execute("CREATE DATABASE d").await.unwrap();
    c.execute("USE d").await.unwrap();
    c.execute("CREATE TABLE t(x)").await.unwrap();
    for i in 0..50 {
        c.execute(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    server.kill9();
    server.spawn();
    let mut c = server.client().await;
    c.execute("USE d").await.unwrap();
    assert_eq!(count(&mut c, "t").await, 50);
}

/// With `synchronous = FULL` (group commit: sessions commit with NORMAL and share WAL syncs),
/// every write acknowledged to sixteen concurrent clients survives `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acknowledged_writes_survive_kill_9_under_group_commit() {
    let mut server = ServerProcess::start();
    server.kill9();
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    let full = config.replace(r#""synchronous": "NORMAL""#, r#""synchronous": "FULL""#);
    assert_ne!(config, full, "the test config names NORMAL");
    std::fs::write(server.config_path(), full).unwrap();
    server.spawn();
    let mut c = server.client().await;
    for sql in [
        "CREATE DATABASE g",
        "USE g",
        "CREATE TABLE t(who INT, n INT)",
    ] {
        c.execute(sql).await.unwrap();
    }
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writers: Vec<_> = (0..16)
        .map(|who| {
            let (addr, acknowledged) = (server.addr(), acknowledged.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(&addr).await.unwrap();
                c.execute("USE g").await.unwrap();
                for n in 0.. {
                    if c.execute(&format!("INSERT INTO t VALUES ({who}, {n})"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    server.spawn();
    let mut c = server.client().await;
    c.execute("USE g").await.unwrap();
    let stored = count(&mut c, "t").await;
    // A write in flight at the kill may have committed unacknowledged: never fewer, at most
    // one more per writer.
    assert!(
        stored >= acked && stored <= acked + 16,
        "{acked} writes acknowledged, {stored} stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_write_and_read_concurrently() {
    let server = inproc::server().await;
    let mut setup = server.client().await;
    setup.execute("CREATE DATABASE c").await.unwrap();
    setup.execute("USE c").await.unwrap();
    setup
        .execute("CREATE TABLE t(who TEXT, n INT)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for who in ["a", "b"] {
        let addr = server.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await.unwrap();
            c.execute("USE c").await.unwrap();
            for n in 0..200 {
                c.execute(&format!("INSERT INTO t VALUES ('{who}', {n})"))
                    .await
                    .unwrap();
                // Each client reads its own rows back while the other writes.
                let rs = c
                    .query(&format!("SELECT count(*) FROM t WHERE who = '{who}'"))
                    .await
                    .unwrap();
                assert_eq!(rs.rows[0][0], json!(n + 1));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(count(&mut setup, "t").await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_belong_to_their_connection() {
    let server = inproc::server().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.execute("CREATE DATABASE tx").await.unwrap();
    for c in [&mut a, &mut b] {
        c.execute("USE tx").await.unwrap();
    }
    a.execute("CREATE TABLE t(x)").await.unwrap();
    a.execute("BEGIN").await.unwrap();
    a.execute("INSERT INTO t VALUES (1)").await.unwrap();
    assert_eq!(count(&mut a, "t").await, 1);
    assert_eq!(count(&mut b, "t").await, 0, "uncommitted row is visible");
    a.execute("COMMIT").await.unwrap();
    assert_eq!(count(&mut b, "t").await, 1);
    a.execute("BEGIN").await.unwrap();
    a.execute("INSERT INTO t VALUES (2)").await.unwrap();
    a.execute("ROLLBACK").await.unwrap();
    assert_eq!(count(&mut b, "t").await, 1);
    // A client that leaves inside a transaction leaves nothing behind.
    a.execute("BEGIN").await.unwrap();
    a.execute("INSERT INTO t VALUES (3)").await.unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&mut b, "t").await, 1);
    b.execute("INSERT INTO t VALUES (4)").await.unwrap();
    assert_eq!(count(&mut b, "t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_does_not_block_writers() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    c.execute("CREATE DATABASE big").await.unwrap();
    c.execute("USE big").await.unwrap();
    fill(&mut c, 50_000).await;
    // Start a large read and stop consuming it half way: the server is stuck writing to us.
    let mut reader = server.client().await;
    reader.execute("USE big").await.unwrap();
    reader.send_raw(b"SELECT * FROM t;").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for i in 0..20 {
        c.execute(&format!("INSERT INTO t(v) VALUES ('w{i}')"))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "writes waited for the reader: {:?}",
        started.elapsed()
    );
    // The reader still gets its whole, consistent snapshot.
    let reply = reader.read_response().await.unwrap();
    assert_eq!(reply.rows().unwrap().rows.len(), 50_000);
    assert_eq!(count(&mut c, "t").await, 50_020);
}

async fn fill(c: &mut Client, rows: usize) {
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    c.execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
         INSERT INTO t(v) SELECT printf('%0200d', i) FROM n"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn large_select_is_streamed_in_pages_with_bounded_server_memory() {
    let server = ServerProcess::start();
    let mut c = server.client().await;
    c.execute("CREATE DATABASE big").await.unwrap();
    c.execute("USE big").await.unwrap();
    // 25k rows of 1 KB: 25 MB of result text in 50 pages (it was 100 MB, half the time of the
    // whole server_e2e under a debug build); the server's peak may grow by half of it at most.
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000) \
         INSERT INTO t(v) SELECT printf('%01000d', i) FROM n",
    )
    .await
    .unwrap();
    let before = server.peak_rss_kib().unwrap_or(0);
    let mut pages = Vec::new();
    let mut rows = 0usize;
    let mut bytes = 0usize;
    let mut next_id = 1i64;
    let reply = c
        .execute_streaming("SELECT * FROM t ORDER BY id", |page| {
            pages.push((page.page, page.total_pages));
            for row in &page.rows {
                assert_eq!(row[0].as_i64(), Some(next_id));
                next_id += 1;
                bytes += row[1].as_str().map_or(0, str::len);
            }
            rows += page.rows.len();
        })
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Rows(_)));
    assert_eq!(rows, 25_000);
    // 500 rows a page (the default), numbered 1..=50 of 50.
    assert_eq!(pages.len(), 50);
    assert!(pages
        .iter()
        .enumerate()
        .all(|(i, &(p, t))| p == i as u64 + 1 && t == 50));
    let after = server.peak_rss_kib().unwrap_or(0);
    eprintln!(
        "server peak RSS before {before} KiB, after {after} KiB, result {} KiB",
        bytes / 1024
    );
    assert_eq!(bytes, 25_000 * 1000);
    assert!(
        after < before + 12 * 1024,
        "server peak RSS grew by {} KiB for a {} KiB result",
        after.saturating_sub(before),
        bytes / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_connection_stays_usable() {
    let server = inproc::server_with("PRIMARY", r#"{ "maxStatementBytes": 1000 }"#).await;
    let mut c = server.client().await;
    let e = server_error(c.execute("SELECT * FROM t").await);
    assert!(
        e.contains("no such table: t") && e.contains("no database selected"),
        "{e}"
    );
    assert!(server_error(c.execute("SELEC 1").await).contains("syntax error"));
    assert!(server_error(c.execute("USE nowhere").await).contains("unknown database `nowhere`"));
    assert!(server_error(c.execute("CREATE DATABASE \"../etc\"").await)
        .contains("invalid database name"));
    c.execute("CREATE DATABASE b").await.unwrap();
    c.execute("USE b").await.unwrap();
    assert!(
        server_error(c.execute("SELECT * FROM missing").await).contains("no such table: missing")
    );
    assert!(server_error(c.execute("ATTACH 'x.db' AS x").await).contains("ATTACH"));
    // Over the size limit: refused, connection still fine.
    let big = format!("SELECT '{}'", "x".repeat(5000));
    let e = server_error(c.execute(&big).await);
    assert!(e.contains("over the limit of 1000 bytes"), "{e}");
    // Invalid UTF-8 between two good statements.
    c.send_raw(b"SELECT 1;SELECT '\xff\xfe';SELECT 3;")
        .await
        .unwrap();
    assert_eq!(
        c.read_response().await.unwrap().rows().unwrap().rows[0][0],
        json!(1)
    );
    assert!(matches!(c.read_response().await, Err(ClientError::Server(e)) if e.contains("UTF-8")));
    assert_eq!(
        c.read_response().await.unwrap().rows().unwrap().rows[0][0],
        json!(3)
    );
    // A `;` inside literals, identifiers and comments does not end a statement; empty ones are skipped.
    c.send_raw(b"  ; ;SELECT ';' AS \"a;b\" /* ; */ -- ;\n;")
        .await
        .unwrap();
    let rs = c.read_response().await.unwrap();
    assert_eq!(rs.rows().unwrap().columns[0].name, "a;b");
    assert_eq!(rs.rows().unwrap().rows[0][0], json!(";"));
    assert!(c.query("SHOW TABLES").await.unwrap().rows.is_empty());
    // DirkDB's own tables cannot be touched.
    let e = server_error(c.execute("DELETE FROM _dirk_oplog").await);
    assert!(e.contains("not authorized"), "{e}");
    assert!(server_error(c.execute("CREATE TABLE _dirk_x(a)").await).contains("not authorized"));
    assert!(server_error(c.execute("VACUUM").await).contains("VACUUM is refused"));
    c.execute("CREATE TABLE u(a)").await.unwrap();
    let e = server_error(c.execute("DROP TRIGGER _dirk_cap_i_u").await);
    assert!(e.contains("cannot be changed"), "{e}");
    c.execute("DROP TABLE u").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_statement_or_mid_result_changes_nothing() {
    let server = inproc::server().await;
    let mut c = server.client().await;
    c.execute("CREATE DATABASE h").await.unwrap();
    c.execute("USE h").await.unwrap();
    fill(&mut c, 20_000).await;
    {
        let mut half = server.client().await;
        half.execute("USE h").await.unwrap();
        half.send_raw(b"INSERT INTO t(v) VALUES ('half'); DELETE FROM t WHERE id < 10")
            .await
            .unwrap();
        // The first statement was complete and is answered; the second never ends.
        half.read_response().await.unwrap();
    }
    {
        let mut gone = server.client().await;
        gone.execute("USE h").await.unwrap();
        gone.send_raw(b"SELECT * FROM t;").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&mut c, "t").await, 20_001);
    let rs = c
        .query("SELECT count(*) FROM t WHERE id < 10")
        .await
        .unwrap();
    assert_eq!(rs.rows[0][0], json!(9));
    // The server is still fine for new clients.
    let mut again = server.client().await;
    again.execute("USE h").await.unwrap();
    assert_eq!(count(&mut again, "t").await, 20_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_a_message() {
    let server = inproc::server_with("PRIMARY", r#"{ "maxConnections": 3 }"#).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        c.execute("SELECT 1").await.unwrap();
        held.push(c);
    }
    let mut extra = server.client().await;
    let refused = tokio::time::timeout(Duration::from_secs(5), extra.execute("SELECT 1"))
        .await
        .expect("refusal must not hang");
    match refused {
        Err(ClientError::Server(e)) => assert!(e.contains("too many connections"), "{e}"),
        Err(ClientError::Connection(_)) | Err(ClientError::Closed) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(held.pop());
    // The freed slot is taken again as soon as the server has seen the client leave (bounded
    // wait: on a loaded machine that takes more than a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = server.client().await;
        match c.execute("SELECT 1").await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("too many connections"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the freed slot was never reused: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_writes_but_serves_reads() {
    let server = inproc::server_with("REPLICA", "{}").await;
    let mut c = server.client().await;
    let e = server_error(c.execute("CREATE DATABASE x").await);
    assert!(e.contains("read-only REPLICA"), "{e}");
    assert_eq!(
        c.query("SELECT 40 + 2").await.unwrap().rows[0][0],
        json!(42)
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_the_running_statement_finish() {
    // A deadline far off, even on a loaded machine: the statement finishes, it is not interrupted.
    let mut server = ServerProcess::start_with("PRIMARY", r#"{ "shutdownTimeoutMs": 120000 }"#);
    let mut c = server.client().await;
    c.execute("CREATE DATABASE g").await.unwrap();
    c.execute("USE g").await.unwrap();
    // A statement that takes a while: a recursive count to a few million.
    c.send_raw(
        b"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n;",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = server.pid().unwrap();
    common::signal(pid, "TERM");
    let reply = c.read_response().await.unwrap();
    assert_eq!(reply.rows().unwrap().rows[0][0], json!(3_000_000));
    assert!(server.terminate().map(|s| s.success()).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_write_refused_for_its_size_leaves_nothing_behind() {
    let server = inproc::server_with("PRIMARY", r#"{ "maxResultRows": 3 }"#).await;
    let mut c = server.client().await;
    c.execute("CREATE DATABASE r").await.unwrap();
    c.execute("USE r").await.unwrap();
    c.execute("CREATE TABLE t(a)").await.unwrap();
    let e = server_error(
        c.execute("INSERT INTO t VALUES (1), (2), (3), (4), (5) RETURNING a")
            .await,
    );
    assert!(e.contains("more than the limit of 3"), "{e}");
    assert_eq!(count(&mut c, "t").await, 0);
    let rs = c
        .query("INSERT INTO t VALUES (1), (2) RETURNING a")
        .await
        .unwrap();
    assert_eq!(rs.rows.len(), 2);
    assert_eq!(count(&mut c, "t").await, 2);
}

#[tokio::test]
async fn statements_piped_behind_a_long_one_wait_in_the_socket_not_in_memory() {
    use std::io::Write;
    let server = ServerProcess::start();
    let mut socket = std::net::TcpStream::connect(server.addr()).unwrap();
    let long = b"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
        WHERE i < 100000000) SELECT count(*) FROM n;";
    socket.write_all(long).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = server.peak_rss_kib().unwrap_or(0);
    // 100,000 statements of 1 KiB each: 100 MiB the server must not take in while it is busy.
    let statement = format!("SELECT '{}';", "x".repeat(1010));
    let mut writer = socket.try_clone().unwrap();
    let pipe = std::thread::spawn(move || {
        let mut sent = 0usize;
        for _ in 0..100_000 {
            if writer.write_all(statement.as_bytes()).is_err() {
                break;
            }
            sent += statement.len();
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(2000));
    let after = server.peak_rss_kib().unwrap_or(0);
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    let sent = pipe.join().unwrap();
    eprintln!(
        "server peak RSS {before} KiB before the pipe, {after} KiB after {} KiB were sent",
        sent / 1024
    );
    assert!(before > 0, "no VmHWM for the server");
    assert!(
        after < before + 4 * 1024,
        "the server took the piped statements into memory: {before} KiB -> {after} KiB"
    );
}

#[tokio::test]
async fn shutdown_interrupts_a_statement_that_never_ends_at_the_deadline() {
    let mut server = ServerProcess::start_with("PRIMARY", r#"{ "shutdownTimeoutMs": 500 }"#);
    let mut c = server.client().await;
    c.execute("CREATE DATABASE forever").await.unwrap();
    c.execute("USE forever").await.unwrap();
    c.send_raw(
        b"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n;",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    common::signal(server.pid().unwrap(), "TERM");
    let answer = tokio::time::timeout(Duration::from_secs(10), c.read_response())
        .await
        .expect("the client is answered");
    match answer {
        Err(ClientError::Server(e)) => {
            assert!(e.contains("shutting down"), "{e}");
            assert!(e.contains("limits.shutdownTimeoutMs"), "{e}");
        }
        other => panic!("expected the interruption's error, got {other:?}"),
    }
    let status = server.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "the server exits cleanly after the deadline: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
