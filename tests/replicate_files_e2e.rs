//! `dirkdb replicate-files` end to end: real processes copying real SQLite files (WAL mode, as
//! DirkDB's servers keep them) while other threads write the sources and read the copies.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::dirkdb_bin;
use common::wait::holds_within as eventually;
use rusqlite::{Connection, OpenFlags};

use crate::common;

/// A source database in WAL mode with `rows` rows of 200 characters in table `t`.
fn source_db(path: &Path, rows: i64) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    if rows > 0 {
        insert_rows(&conn, rows);
    }
    conn
}

fn insert_rows(conn: &Connection, rows: i64) {
    conn.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1) \
         INSERT INTO t(v) SELECT printf('%0200d', i) FROM s",
        [rows],
    )
    .unwrap();
}

/// A read-only connection, as a reader of the destination would open it.
fn reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn rows(path: &Path) -> rusqlite::Result<Vec<(i64, String)>> {
    let conn = reader(path)?;
    let mut statement = conn.prepare("SELECT id, v FROM t ORDER BY id")?;
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn count(path: &Path) -> rusqlite::Result<i64> {
    reader(path)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

fn integrity(path: &Path) -> rusqlite::Result<String> {
    reader(path)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))
}

/// `dirkdb replicate-files --once`: its exit status and its log.
fn once(from: &Path, to: &Path) -> (ExitStatus, String) {
    let output = Command::new(dirkdb_bin())
        .args(["replicate-files", "--once", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `pages_changed` the log reports for `database`, one per copy.
fn pages_changed(log: &str, database: &str) -> Vec<usize> {
    let marker = format!("database copied database={database} pages_changed=");
    log.lines()
        .filter_map(|line| line.split_once(&marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A running `dirkdb replicate-files`, killed when dropped; its log goes to a file.
struct Tool {
    child: Child,
    log: PathBuf,
}

impl Tool {
    fn start(from: &Path, to: &Path, log: PathBuf) -> Tool {
        let child = Command::new(dirkdb_bin())
            .args(["replicate-files", "--interval", "1", "--from"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Tool { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().ok()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Dirs {
    _root: tempfile::TempDir,
    from: PathBuf,
    to: PathBuf,
    log: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let from = root.path().join("from");
    std::fs::create_dir(&from).unwrap();
    Dirs {
        from,
        to: root.path().join("to"),
        log: root.path().join("tool.log"),
        _root: root,
    }
}

#[test]
fn once_copies_consistent_databases_then_only_what_changed() {
    let d = dirs();
    let a = source_db(&d.from.join("a.db"), 2000);
    let _b = source_db(&d.from.join("b.db"), 300);
    drop(source_db(&d.from.join("_dirk_meta.db"), 1));
    std::fs::write(d.from.join("notes.db"), "not a database").unwrap();

    let (status, log) = once(&d.from, &d.to);
    assert!(status.success(), "{log}");
    for name in ["a.db", "b.db"] {
        let (source, copy) = (d.from.join(name), d.to.join(name));
        assert_eq!(integrity(&copy).unwrap(), "ok");
        assert_eq!(rows(&copy).unwrap(), rows(&source).unwrap(), "{name}");
        assert_eq!(pages_changed(&log, name).len(), 1, "{log}");
    }
    assert!(!d.to.join("_dirk_meta.db").exists() && !d.to.join("notes.db").exists());
    assert!(log.contains("not a SQLite database"), "{log}");

    let stamp = |p: &Path| std::fs::metadata(p).map(|m| (m.modified().unwrap(), m.len()));
    let before = stamp(&d.to.join("a.db")).unwrap();
    let (status, log) = once(&d.from, &d.to);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("copied=0") && !log.contains("database copied"),
        "{log}"
    );
    assert_eq!(stamp(&d.to.join("a.db")).unwrap(), before);

    a.execute("UPDATE t SET v = 'changed' WHERE id = 1500", [])
        .unwrap();
    let (status, log) = once(&d.from, &d.to);
    assert!(status.success(), "{log}");
    let changed = pages_changed(&log, "a.db");
    assert!(changed.len() == 1 && (1..=4).contains(&changed[0]), "{log}");
    assert!(pages_changed(&log, "b.db").is_empty(), "{log}");
    assert_eq!(
        rows(&d.to.join("a.db")).unwrap(),
        rows(&d.from.join("a.db")).unwrap()
    );
}

#[test]
fn once_fails_on_a_broken_database_and_still_copies_the_others() {
    let d = dirs();
    let _good = source_db(&d.from.join("good.db"), 10);
    let mut broken = b"SQLite format 3\0".to_vec();
    broken.resize(8192, 0xAB);
    std::fs::write(d.from.join("broken.db"), broken).unwrap();

    let (status, log) = once(&d.from, &d.to);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("broken.db"), "{log}");
    assert_eq!(count(&d.to.join("good.db")).unwrap(), 10);
    assert!(!d.to.join("broken.db").exists());
}

#[test]
fn the_running_tool_keeps_the_destination_current() {
    let d = dirs();
    let a = source_db(&d.from.join("a.db"), 100);
    let b = source_db(&d.from.join("b.db"), 5);
    let mut tool = Tool::start(&d.from, &d.to, d.log.clone());
    let copy_a = d.to.join("a.db");
    assert!(
        eventually(Duration::from_secs(5), || count(&copy_a) == Ok(100)),
        "{}",
        tool.log()
    );

    insert_rows(&a, 7);
    let seen = eventually(Duration::from_secs(2), || count(&copy_a) == Ok(107));
    assert!(seen, "rows not copied within 2 s: {}", tool.log());

    let c = source_db(&d.from.join("c.db"), 3);
    let new = eventually(Duration::from_secs(2), || {
        count(&d.to.join("c.db")) == Ok(3)
    });
    assert!(new, "new database not copied: {}", tool.log());
    drop(c);

    drop(b);
    std::fs::remove_file(d.from.join("b.db")).unwrap();
    let gone = eventually(Duration::from_secs(2), || !d.to.join("b.db").exists());
    assert!(gone, "deleted database still copied: {}", tool.log());
    assert!(!d.to.join("b.db-wal").exists());

    let status = tool.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        tool.log()
    );
}

#[test]
fn copies_taken_under_a_heavy_write_load_are_points_in_time() {
    let d = dirs();
    let source = d.from.join("load.db");
    drop(source_db(&source, 100));
    let tool = Tool::start(&d.from, &d.to, d.log.clone());
    let copy = d.to.join("load.db");
    assert!(eventually(Duration::from_secs(5), || count(&copy).is_ok()));

    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (source, writing) = (source.clone(), writing.clone());
        thread::spawn(move || {
            let conn = source_db(&source, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                conn.execute_batch("BEGIN").unwrap();
                insert_rows(&conn, 100);
                conn.execute_batch("COMMIT").unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            writing.store(false, Ordering::SeqCst);
        })
    };
    let mut counts = std::collections::BTreeSet::new();
    while writing.load(Ordering::SeqCst) {
        assert_eq!(integrity(&copy).unwrap(), "ok");
        let n = count(&copy).unwrap();
        assert_eq!(n % 100, 0, "a copy caught a transaction midway: {n} rows");
        counts.insert(n);
        thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    assert!(
        counts.len() >= 3,
        "too few copies during the load: {counts:?}"
    );
    let expected = count(&source).unwrap();
    let caught_up = eventually(Duration::from_secs(5), || count(&copy) == Ok(expected));
    assert!(
        caught_up,
        "copy has {:?} rows, source {expected}",
        count(&copy)
    );
    assert_eq!(integrity(&copy).unwrap(), "ok");
    assert!(!tool.log().contains("copy failed"), "{}", tool.log());
}

#[test]
fn a_reader_of_the_destination_sees_no_error_while_copies_land() {
    let d = dirs();
    let source = source_db(&d.from.join("read.db"), 1000);
    let tool = Tool::start(&d.from, &d.to, d.log.clone());
    let copy = d.to.join("read.db");
    assert!(eventually(Duration::from_secs(5), || count(&copy).is_ok()));

    let reading = Arc::new(AtomicBool::new(true));
    let reader_thread = {
        let (copy, reading) = (copy.clone(), reading.clone());
        thread::spawn(
            move || -> rusqlite::Result<(usize, std::collections::BTreeSet<i64>)> {
                let kept = reader(&copy)?;
                let (mut queries, mut sums) = (0, std::collections::BTreeSet::new());
                while reading.load(Ordering::SeqCst) {
                    let sum: i64 =
                        kept.query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))?;
                    let fresh: i64 =
                        reader(&copy)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                    assert!(fresh >= 1000);
                    sums.insert(sum);
                    queries += 1;
                }
                Ok((queries, sums))
            },
        )
    };
    for i in 0..40 {
        source
            .execute(
                "UPDATE t SET v = ?1 WHERE id = ?2",
                (format!("v{i}"), 10 + i * 20),
            )
            .unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    reading.store(false, Ordering::SeqCst);
    let (queries, sums) = reader_thread
        .join()
        .unwrap()
        .expect("the reader saw an error");
    assert!(queries > 20, "{queries} queries");
    assert!(
        sums.len() >= 3,
        "the reader saw too few copies land: {sums:?}"
    );
    assert!(!tool.log().contains("copy failed"), "{}", tool.log());
}
