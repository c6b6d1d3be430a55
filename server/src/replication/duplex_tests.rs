//! Replication without a socket: a primary and a replica opened in this process, joined by
//! `tokio::io::duplex`, run the real sender and the real OPLOG follower (full sync, install,
//! then a write streamed as entries) on one connection's two halves.

use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::{ClusterConfig, ReplicationType};
use tokio::io::BufWriter;

use super::protocol::{write_message, Message};
use super::sender::serve_replica;
use super::stream::{spawn_reader, StreamWriter};
use crate::state::ServerState;

fn config(dir: &std::path::Path) -> ClusterConfig {
    let text = format!(
        r#"{{ "instances": [
              {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 1, "dataDirectory": "{0}/m1" }},
              {{ "id": "r1", "role": "REPLICA", "host": "127.0.0.1", "port": 2, "dataDirectory": "{0}/r1" }} ],
            "replication": {{ "type": "OPLOG", "heartbeatMillis": 50 }},
            "storage": {{ "synchronous": "NORMAL" }} }}"#,
        dir.display()
    );
    ClusterConfig::parse(&text).expect("test config")
}

fn rows(state: &ServerState) -> Vec<(i64, String)> {
    let Ok(db) = state.catalog.get("d") else {
        return Vec::new();
    };
    let conn = db.lease().unwrap();
    let rows = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    db.give_back(conn);
    rows
}

/// A write on the primary under the writer gate, its tables captured and its sequence published
/// (the sender reads the entries from the oplog files).
fn write(state: &ServerState, sql: &str) {
    let owner = state.new_owner();
    state
        .under_gate(owner, || {
            let db = state.catalog.get("d")?;
            let conn = db.lease()?;
            conn.execute_batch(sql)?;
            crate::catalog::as_internal(|| crate::oplog::capture::reconcile_triggers(&conn))?;
            db.give_back(conn);
            state.write_path.publish(state.latest_on_disk()?);
            Ok(())
        })
        .unwrap();
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

/// Runs `primary`'s real sender and `replica`'s real OPLOG follower over one in-memory duplex;
/// the follower says it stands at `seq` and asks for a full sync.
fn join(
    primary: &Arc<ServerState>,
    replica: &Arc<ServerState>,
    seq: u64,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<Result<(), super::stream::StreamError>>,
) {
    let (primary_end, replica_end) = tokio::io::duplex(64 * 1024);
    let (p_read, p_write) = tokio::io::split(primary_end);
    let (r_read, r_write) = tokio::io::split(replica_end);
    let p = primary.clone();
    let sender = tokio::spawn(async move {
        let node = p.node.clone();
        serve_replica(
            node,
            &p.modes,
            Box::new(p_read),
            Box::new(p_write),
            "duplex".into(),
        )
        .await
    });
    let r = replica.clone();
    let follower = tokio::spawn(async move {
        let mut writer: StreamWriter = BufWriter::new(Box::new(r_write));
        let hello = Message::Hello {
            instance: "r1".into(),
            history: "resync".into(),
            seq,
            mode: ReplicationType::Oplog,
            term: r.term(),
            compression: None,
        };
        write_message(&mut writer, &hello).await.unwrap();
        let mut units = spawn_reader(Box::new(r_read));
        let mode = r.modes.get(ReplicationType::Oplog);
        mode.follow_primary(&r.node, &mut units, &mut writer).await
    });
    (sender, follower)
}

#[tokio::test]
async fn a_replica_follows_its_primary_over_an_in_memory_duplex() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let primary = Arc::new(ServerState::open(&config.instances[0], &config).unwrap());
    let replica = Arc::new(ServerState::open(&config.instances[1], &config).unwrap());
    primary
        .create_database(primary.new_owner(), "d", false)
        .unwrap();
    write(
        &primary,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a'), ('b');",
    );

    let (sender, follower) = join(&primary, &replica, 0);

    until("the full sync", || rows(&replica).len() == 2).await;
    assert_eq!(rows(&replica), rows(&primary));
    write(
        &primary,
        "INSERT INTO t(v) VALUES ('c'); UPDATE t SET v = 'B' WHERE id = 2;",
    );
    until("the streamed write", || rows(&replica) == rows(&primary)).await;
    assert_eq!(
        replica.write_path.committed(),
        primary.write_path.committed()
    );
    assert_eq!(rows(&replica)[1], (2, "B".to_string()));
    sender.abort();
    follower.abort();
}

/// Two primaries of unrelated histories (a and b, in the two data directories returned last)
/// and a replica of a's cluster.
fn diverged() -> (
    ServerState,
    ServerState,
    ServerState,
    (tempfile::TempDir, tempfile::TempDir),
) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (config_a, config_b) = (config(dir_a.path()), config(dir_b.path()));
    (
        ServerState::open(&config_a.instances[0], &config_a).unwrap(),
        ServerState::open(&config_b.instances[0], &config_b).unwrap(),
        ServerState::open(&config_a.instances[1], &config_a).unwrap(),
        (dir_a, dir_b),
    )
}

/// Makes table `t` of database `d` outside the oplog, as a full sync's files hold it.
fn make_table(state: &ServerState) {
    let db = state.catalog.get("d").unwrap();
    let conn = db.lease().unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    db.give_back(conn);
}

/// Every entry `state` holds, in sequence order.
fn all_entries(state: &ServerState) -> Vec<crate::oplog::Entry> {
    let sources = state.oplog_sources().unwrap();
    let range = crate::oplog::store::Filter::Range {
        after: 0,
        to: u64::MAX,
    };
    crate::oplog::store::merge(&sources, range, usize::MAX).unwrap()
}

/// #14: a database file holding an entry beyond the node's committed position (a FILE-mode
/// copy newer than its round's position, a crash between the file's commit and the position's)
/// used to make the apply skip the primary's entry at that sequence without a look, so the
/// replica kept its own row while reporting the primary's position. A different entry there is
/// now a divergence (the follower resyncs fully); the very same entry is still skipped.
#[test]
fn an_entry_beyond_the_position_is_skipped_only_when_it_is_the_one_held() {
    let (a, b, replica, _dirs) = diverged();
    for (primary, v) in [(&a, "a"), (&b, "x")] {
        primary
            .create_database(primary.new_owner(), "d", false)
            .unwrap();
        write(primary, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        write(primary, &format!("INSERT INTO t(v) VALUES ('{v}');"));
    }
    let (from_a, from_b) = (all_entries(&a), all_entries(&b));
    let last = from_a.last().map(|e| e.seq).unwrap();
    assert_eq!(from_b.last().map(|e| e.seq), Some(last));
    let mut applier = super::apply::Applier::default();
    // The table is made outside the oplog (as in a full sync's files); the rows arrive as entries.
    applier
        .apply(&replica, replica.new_owner(), &from_a[..1])
        .unwrap();
    make_table(&replica);
    applier
        .apply(&replica, replica.new_owner(), &from_a[1..])
        .unwrap();
    assert_eq!(rows(&replica), vec![(1, "a".to_string())]);

    // The file holds A's last entry; the node's position says it does not.
    replica.write_path.reset(last - 1);
    let same = applier.apply(&replica, replica.new_owner(), &from_a[from_a.len() - 1..]);
    assert_eq!(same.unwrap(), last, "the very entry held is skipped");
    replica.write_path.reset(last - 1);
    let other = applier.apply(&replica, replica.new_owner(), &from_b[from_b.len() - 1..]);
    let err = other.expect_err("B's different entry must not be skipped silently");
    assert!(
        err.to_string().contains("replication apply") && err.to_string().contains("resync"),
        "{err}"
    );
    assert_eq!(
        replica.write_path.committed(),
        last - 1,
        "no position advanced"
    );
}

/// #14: the meta file, like a database file, may hold a CREATE/DROP DATABASE event beyond the
/// node's position. The apply used to skip the primary's event at that sequence without a look
/// (another primary's CREATE DATABASE was never made); a different event, or none, is now a
/// divergence, and the very same event is still skipped.
#[test]
fn a_database_event_beyond_the_position_is_skipped_only_when_it_is_the_one_held() {
    let (a, b, replica, _dirs) = diverged();
    a.create_database(a.new_owner(), "d", false).unwrap();
    b.create_database(b.new_owner(), "e", false).unwrap();
    let (from_a, from_b) = (all_entries(&a), all_entries(&b));
    assert_eq!((from_a.len(), from_b.len()), (1, 1));
    assert_eq!(from_a[0].seq, from_b[0].seq);
    let mut applier = super::apply::Applier::default();
    assert_eq!(
        applier
            .apply(&replica, replica.new_owner(), &from_a)
            .unwrap(),
        1
    );

    // The meta file holds A's event; the node's position says it does not.
    replica.write_path.reset(0);
    let same = applier.apply(&replica, replica.new_owner(), &from_a);
    assert_eq!(same.unwrap(), 1, "the very event held is skipped");
    replica.write_path.reset(0);
    let other = applier.apply(&replica, replica.new_owner(), &from_b);
    let err = other.expect_err("B's different event must not be skipped silently");
    assert!(
        err.to_string().contains("replication apply") && err.to_string().contains("resync"),
        "{err}"
    );
    assert_eq!(replica.write_path.committed(), 0, "no position advanced");
    assert!(replica.catalog.get("e").is_err());
}

/// #14: entries a file holds beyond the node's position (a FILE-mode copy newer than its round's
/// position) go to the rollback file of the full sync that follows, even when the chains say
/// nothing diverged (they were never checked against a history). They used to be replaced
/// unsaved: only entries up to the node's position were saved.
#[test]
fn a_full_sync_saves_the_entries_held_beyond_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let node = ServerState::open(&config.instances[0], &config).unwrap();
    node.create_database(node.new_owner(), "d", false).unwrap();
    write(&node, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    write(&node, "INSERT INTO t(v) VALUES ('a');");
    write(&node, "INSERT INTO t(v) VALUES ('b');");
    let last = node.write_path.committed();
    node.write_path.reset(last - 2);
    let chain = node.meta.history(&node.instance_id).unwrap();
    let saved = super::rollback::save_divergent(&node, &chain)
        .unwrap()
        .expect("a rollback file");
    let seqs: Vec<u64> = std::fs::read_to_string(saved)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<crate::oplog::Entry>(l).unwrap().seq)
        .collect();
    assert_eq!(seqs, vec![last - 1, last]);
    node.write_path.reset(last);
    assert_eq!(
        super::rollback::save_divergent(&node, &chain).unwrap(),
        None,
        "nothing beyond the position, nothing diverged: nothing saved"
    );
}

/// #14: a database file that holds later entries of its database but none at the sequence of
/// the primary's entry does not follow the primary's history either: a divergence, where the
/// entry used to be neither applied nor refused.
#[test]
fn an_entry_missing_under_later_held_ones_is_a_divergence() {
    let (a, b, replica, _dirs) = diverged();
    a.create_database(a.new_owner(), "d", false).unwrap();
    a.create_database(a.new_owner(), "x", false).unwrap();
    write(&a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    write(&a, "INSERT INTO t(v) VALUES ('a');");
    b.create_database(b.new_owner(), "d", false).unwrap();
    write(&b, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    write(&b, "INSERT INTO t(v) VALUES ('b');");
    let (from_a, from_b) = (all_entries(&a), all_entries(&b));
    let mut applier = super::apply::Applier::default();
    applier
        .apply(&replica, replica.new_owner(), &from_a[..2])
        .unwrap();
    // The table is made outside the oplog (as in a full sync's files).
    make_table(&replica);
    let applied = applier.apply(&replica, replica.new_owner(), &from_a[2..]);
    assert_eq!(applied.unwrap(), 3);
    // d's file holds A's entry 3, not 2; B's entry 2 is on d.
    replica.write_path.reset(1);
    let err = applier
        .apply(&replica, replica.new_owner(), &from_b[1..])
        .expect_err("B's entry 2 must not vanish under A's entry 3");
    assert!(err.to_string().contains("no entry at 2"), "{err}");
    assert_eq!(replica.write_path.committed(), 1, "no position advanced");
}

/// #14: a node whose chain is its primary's while a file holds another history's entries at or
/// below its position (it adopted the chain in a FILE round while that file was an older
/// primary's copy, then restarted: the position counts the file) saves them in the full sync
/// that its divergence brings. The chains say nothing diverged, so only a comparison with the
/// snapshot finds them; they used to be replaced unsaved.
#[tokio::test]
async fn a_full_sync_saves_what_the_snapshot_lacks_below_the_position_under_the_same_chain() {
    let (a, b, replica, _dirs) = diverged();
    let (b, replica) = (Arc::new(b), Arc::new(replica));
    for (primary, v) in [(&a, "a"), (&*b, "b")] {
        primary
            .create_database(primary.new_owner(), "d", false)
            .unwrap();
        write(primary, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        write(primary, &format!("INSERT INTO t(v) VALUES ('{v}');"));
    }
    let from_a = all_entries(&a);
    let mut applier = super::apply::Applier::default();
    applier
        .apply(&replica, replica.new_owner(), &from_a[..1])
        .unwrap();
    make_table(&replica);
    let at = applier.apply(&replica, replica.new_owner(), &from_a[1..]);
    let at = at.unwrap();
    let chain = b.meta.history(&b.instance_id).unwrap();
    replica.meta.adopt_history(&chain, b.term()).unwrap();

    let (sender, follower) = join(&b, &replica, at);
    until("the full sync", || rows(&replica) == rows(&b)).await;
    let saved: Vec<crate::oplog::Entry> = std::fs::read_dir(replica.data_dir().join("rollback"))
        .map(|dir| dir.flatten().map(|f| f.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let lines: Vec<crate::oplog::Entry> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            lines
        })
        .collect();
    let insert = from_a.last().unwrap();
    assert!(
        saved
            .iter()
            .any(|e| e.seq == insert.seq && e.crc == insert.crc),
        "A's insert, replaced by B's at its sequence, is in no rollback file: {saved:?}"
    );
    sender.abort();
    follower.abort();
}

/// A full sync's snapshot used to hold the writer gate while it copied every file, so writers
/// waited for as long as the local copy of the largest database took. It now holds the gate only
/// to open its read transactions: writes go on during the copy, and the copies stand at the
/// snapshot's position, not at whatever was committed while they were made.
#[test]
fn a_snapshot_copies_while_writers_go_on_and_stands_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let primary = Arc::new(ServerState::open(&config.instances[0], &config).unwrap());
    primary
        .create_database(primary.new_owner(), "d", false)
        .unwrap();
    write(&primary, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    // About 96 MB outside the oplog, so that copying the file takes far longer than a write.
    let db = primary.catalog.get("d").unwrap();
    let conn = db.lease().unwrap();
    conn.execute_batch(
        "CREATE TABLE big(b BLOB); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 \
         FROM c WHERE x < 12000) INSERT INTO big SELECT randomblob(8000) FROM c;",
    )
    .unwrap();
    db.give_back(conn);

    let s = primary.clone();
    let started = std::time::Instant::now();
    let taking = std::thread::spawn(move || super::snapshot::take(&s));
    let (mut longest, mut during) = (Duration::ZERO, 0);
    while !taking.is_finished() {
        let one = std::time::Instant::now();
        write(&primary, "INSERT INTO t(v) VALUES ('during')");
        longest = longest.max(one.elapsed());
        during += 1;
        // A client's next statement comes a round trip later.
        std::thread::sleep(Duration::from_millis(1));
    }
    let snapshot = taking
        .join()
        .unwrap()
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(20),
        "the copy took {took:?}: too small to tell"
    );
    // The old snapshot held the gate for the whole copy: the first write waited for nearly
    // all of it and one or two got through. Bounds loose enough for a loaded machine.
    assert!(
        during >= 5 && longest * 2 < took,
        "{during} writes during the snapshot's {took:?}, the longest waited {longest:?}"
    );
    let copy = rusqlite::Connection::open(snapshot.dir.join("d.db")).unwrap();
    assert_eq!(
        crate::oplog::store::max_seq(&copy).unwrap(),
        snapshot.position,
        "the copy of d stands at the snapshot's position"
    );
    assert!(
        primary.write_path.committed() > snapshot.position,
        "writes went on"
    );
    let big: i64 = copy
        .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
        .unwrap();
    assert_eq!(big, 12000);
}
