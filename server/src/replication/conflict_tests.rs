//! Conflicts between two MULTI_PRIMARY masters opened in this process, their streams replaced by
//! handing each one's own entries (with its knowledge steps) to the other's real applier: a
//! partitioned home that kept writing, the object moved to the other master meanwhile, then
//! both streams applied — the conflicts detected row by row, resolved per strategy, and both
//! masters end with equal digests. Also, with the same harness: the meta file's copy of a
//! stream's position trails the files' without losing the position at a restart.

use dirkdb_core::config::ClusterConfig;
use dirkdb_core::rendezvous::{self, ObjectRef};

use super::conflicts;
use super::peer_apply::{Batch, PeerApplier};
use super::peer_conflicts::resolve_manually;
use crate::oplog::store::{self, Filter};
use crate::state::ServerState;

fn config(dir: &std::path::Path, strategy: &str) -> ClusterConfig {
    let text = format!(
        r#"{{ "instances": [
              {{ "id": "m1", "role": "MASTER", "host": "127.0.0.1", "port": 1, "dataDirectory": "{0}/m1" }},
              {{ "id": "m2", "role": "MASTER", "host": "127.0.0.1", "port": 2, "dataDirectory": "{0}/m2" }} ],
            "routing": {{ "writes": {{ "mode": "MULTI_PRIMARY" }} }},
            "replication": {{ "type": "OPLOG", "conflicts": {{ "strategy": "{strategy}" }} }},
            "storage": {{ "synchronous": "NORMAL" }} }}"#,
        dir.display()
    );
    ClusterConfig::parse(&text).expect("test config")
}

/// A database and a table whose home (rendezvous over m1, m2) is m1.
fn names() -> (String, String) {
    let masters = ["m1", "m2"];
    let home_m1 = |key: String| rendezvous::owner(&key, &masters) == Some(0);
    let db = (0..)
        .map(|i| format!("d{i}"))
        .find(|d| home_m1(ObjectRef::database(d).key()))
        .unwrap();
    let table = (0..)
        .map(|i| format!("t{i}"))
        .find(|t| home_m1(ObjectRef::table(&db, t).key()))
        .unwrap();
    (db, table)
}

struct Pair {
    m1: ServerState,
    m2: ServerState,
    db: String,
    table: String,
    /// What each master applied of the other's stream: (m1 of m2, m2 of m1).
    at: (u64, u64),
    _dir: tempfile::TempDir,
}

impl Pair {
    fn open(strategy: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), strategy);
        let m1 = ServerState::open(&config.instances[0], &config).unwrap();
        let m2 = ServerState::open(&config.instances[1], &config).unwrap();
        let (db, table) = names();
        m1.create_database(m1.new_owner(), &db, false).unwrap();
        let mut pair = Pair {
            m1,
            m2,
            db,
            table,
            at: (0, 0),
            _dir: dir,
        };
        pair.exchange();
        let t = pair.table.clone();
        for m in [1, 2] {
            pair.create_table(
                m,
                &format!("CREATE TABLE {t}(id INTEGER PRIMARY KEY, v TEXT)"),
            );
        }
        pair.write(
            1,
            &format!("INSERT INTO {t} VALUES (1, 'a'), (2, 'a'), (3, 'a')"),
        );
        pair.exchange();
        pair
    }

    /// The same table made on a master directly (a session's DDL entry is the statement
    /// runner's, which these tests do not run).
    fn create_table(&self, m: usize, sql: &str) {
        let db = self.master(m).catalog.get(&self.db).unwrap();
        let conn = db.lease().unwrap();
        crate::catalog::as_internal(|| {
            conn.execute_batch(sql)?;
            crate::oplog::capture::reconcile_triggers(&conn)
        })
        .unwrap();
        db.give_back(conn);
    }

    fn master(&self, m: usize) -> &ServerState {
        if m == 1 {
            &self.m1
        } else {
            &self.m2
        }
    }

    /// A write on master `m` under its writer gate, published as a session's would be.
    fn write(&self, m: usize, sql: &str) {
        let state = self.master(m);
        let owner = state.new_owner();
        state
            .under_gate(owner, || {
                let db = state.catalog.get(&self.db)?;
                let conn = db.lease()?;
                conn.execute_batch(sql)?;
                crate::catalog::as_internal(|| crate::oplog::capture::reconcile_triggers(&conn))?;
                let entries = store::read_file_entries(
                    &conn,
                    &self.db,
                    state.write_path.committed(),
                    usize::MAX,
                )?;
                db.give_back(conn);
                state.write_path.publish_entries(entries);
                Ok(())
            })
            .unwrap();
    }

    /// Master `from`'s own entries after `after`, as its stream sends them.
    fn stream_of(&self, from: usize, after: u64) -> Batch {
        let state = self.master(from);
        let upto = state.write_path.committed();
        let sources = state.oplog_sources().unwrap();
        let entries = store::merge(&sources, Filter::Range { after, to: upto }, 10_000).unwrap();
        Batch {
            known: state.peers.knowledge.for_batch(&entries),
            entries,
        }
    }

    /// Applies `from`'s new entries on the other master.
    fn apply(&mut self, from: usize) {
        let (origin, to, after) = if from == 1 {
            ("m1", &self.m2, self.at.1)
        } else {
            ("m2", &self.m1, self.at.0)
        };
        let batch = self.stream_of(from, after);
        let applied = PeerApplier::new(origin).apply(to, &batch, None).unwrap();
        if from == 1 {
            self.at.1 = applied.position;
        } else {
            self.at.0 = applied.position;
        }
    }

    /// Both streams, until neither has anything new (resolutions travel too).
    fn exchange(&mut self) {
        for _ in 0..4 {
            self.apply(2);
            self.apply(1);
        }
    }

    fn rows(&self, m: usize) -> Vec<(i64, String)> {
        let db = self.master(m).catalog.get(&self.db).unwrap();
        let conn = db.lease().unwrap();
        let sql = format!("SELECT id, v FROM {} ORDER BY id", self.table);
        let rows = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        db.give_back(conn);
        rows
    }

    fn digest(&self, m: usize) -> String {
        let db = self.master(m).catalog.get(&self.db).unwrap();
        let conn = db.lease().unwrap();
        let digest = crate::checksum::database_digest(&conn).unwrap().digest;
        db.give_back(conn);
        digest
    }

    fn conflicts(&self, m: usize) -> Vec<conflicts::Conflict> {
        let state = self.master(m);
        state
            .meta
            .with(|c| conflicts::list(c, &state.instance_id))
            .unwrap()
    }

    /// m1 (the home) cut off keeps writing rows 1 and 2; the table moves to m2, which writes
    /// rows 1 and 3; then both streams flow again.
    fn partition_and_heal(&mut self) {
        let t = self.table.clone();
        self.write(1, &format!("UPDATE {t} SET v = 'm1' WHERE id IN (1, 2)"));
        self.m2
            .settings
            .ownership
            .update(&["m2".to_string()], 1, None)
            .unwrap();
        self.write(2, &format!("UPDATE {t} SET v = 'm2' WHERE id IN (1, 3)"));
        self.exchange();
    }
}

fn row(id: i64, v: &str) -> (i64, String) {
    (id, v.to_string())
}

#[test]
fn source_wins_resolves_at_once_and_both_masters_end_equal() {
    let mut pair = Pair::open("SOURCE_WINS");
    pair.partition_and_heal();
    let expected = vec![row(1, "m2"), row(2, "m1"), row(3, "m2")];
    assert_eq!(pair.rows(1), expected);
    assert_eq!(pair.rows(2), expected);
    assert_eq!(pair.digest(1), pair.digest(2));
    let listed = pair.conflicts(1);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let c = &listed[0];
    assert_eq!(
        (c.row_key.as_str(), c.key_kind.as_str(), c.state.as_str()),
        (r#"{"rowid":1}"#, "primary key", "resolved")
    );
    assert_eq!(
        (c.local_origin.as_str(), c.remote_origin.as_str()),
        ("m1", "m2")
    );
    assert_eq!(c.resolution.as_deref(), Some("REMOTE"));
    assert!(c.resolved_seq.is_some(), "{c:?}");
    // Only the row's home records it as its own; m2 held m1's change for m1 and lists it,
    // resolved by m1 once m1's resolution was applied.
    let held = pair.conflicts(2);
    assert_eq!(held.len(), 1, "{held:?}");
    let h = &held[0];
    assert_eq!(
        (h.home.as_deref(), h.state.as_str(), h.resolution.as_deref()),
        (Some("m1"), "resolved", Some("HOME"))
    );
    assert_eq!((h.remote_origin.as_str(), h.master.as_str()), ("m1", "m2"));
    assert_eq!(conflicts::counts_of(&pair.m2).unwrap(), (0, 0));
}

#[test]
fn target_wins_keeps_the_homes_row_everywhere() {
    let mut pair = Pair::open("TARGET_WINS");
    pair.partition_and_heal();
    let expected = vec![row(1, "m1"), row(2, "m1"), row(3, "m2")];
    assert_eq!(pair.rows(1), expected);
    assert_eq!(pair.rows(2), expected);
    assert_eq!(pair.digest(1), pair.digest(2));
    assert_eq!(pair.conflicts(1)[0].resolution.as_deref(), Some("LOCAL"));
}

#[test]
fn manual_stays_open_until_resolved_and_the_resolution_replicates() {
    let mut pair = Pair::open("MANUAL");
    pair.partition_and_heal();
    // Open: each master keeps its own row 1; the rest converged.
    assert_eq!(pair.rows(1)[0], row(1, "m1"));
    assert_eq!(pair.rows(2)[0], row(1, "m2"));
    assert_eq!(pair.rows(1)[1..], pair.rows(2)[1..]);
    let listed = pair.conflicts(1);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, "open");
    assert_eq!(conflicts::counts_of(&pair.m1).unwrap(), (1, 0));
    // m2 holds m1's change for m1, listed with m1 named; it does not resolve it.
    let held = pair.conflicts(2);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].home.as_deref(), held[0].state.as_str()),
        (Some("m1"), "held: waits for m1, the row's home")
    );
    let refused = resolve_manually(&pair.m2, held[0].id, false)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("held for m1, the row's home"), "{refused}");
    assert_eq!(conflicts::counts_of(&pair.m2).unwrap(), (0, 0));
    let id = listed[0].id;
    let answer = resolve_manually(&pair.m1, id, true).unwrap();
    assert!(answer.contains("resolved"), "{answer}");
    let again = resolve_manually(&pair.m1, id, false)
        .unwrap_err()
        .to_string();
    assert!(again.contains("already resolved"), "{again}");
    pair.exchange();
    let expected = vec![row(1, "m2"), row(2, "m1"), row(3, "m2")];
    assert_eq!(pair.rows(1), expected);
    assert_eq!(pair.rows(2), expected);
    assert_eq!(pair.digest(1), pair.digest(2));
    assert_eq!(conflicts::counts_of(&pair.m1).unwrap(), (0, 1));
    assert_eq!(pair.conflicts(2)[0].state, "resolved");
}

#[test]
fn changes_made_in_view_of_each_other_are_no_conflict() {
    let mut pair = Pair::open("MANUAL");
    let t = pair.table.clone();
    pair.write(1, &format!("UPDATE {t} SET v = 'first' WHERE id = 1"));
    pair.exchange();
    pair.m2
        .settings
        .ownership
        .update(&["m2".to_string()], 1, None)
        .unwrap();
    pair.write(2, &format!("UPDATE {t} SET v = 'second' WHERE id = 1"));
    pair.exchange();
    assert_eq!(pair.rows(1)[0], row(1, "second"));
    assert_eq!(pair.digest(1), pair.digest(2));
    assert!(pair.conflicts(1).is_empty());
}

#[test]
fn the_meta_file_trails_the_files_and_a_restart_resumes_from_the_files() {
    let mut pair = Pair::open("SOURCE_WINS");
    let t = pair.table.clone();
    let hour = std::time::Duration::from_secs(3600);
    let mut applier = PeerApplier::new("m1").with_meta_every(hour);
    let mut at = pair.at.1;
    for i in 0..5 {
        pair.write(1, &format!("INSERT INTO {t} VALUES ({}, 'x')", 10 + i));
        let batch = pair.stream_of(1, at);
        at = applier
            .apply(&pair.m2, &batch, Some("h1"))
            .unwrap()
            .position;
    }
    pair.at.1 = at;
    let meta_seq = |state: &ServerState| -> i64 {
        state
            .meta
            .with(|c| {
                c.query_row(
                    "SELECT seq FROM _dirk_peer_positions WHERE origin = 'm1'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap()
    };
    let stored = meta_seq(&pair.m2);
    assert!(
        stored > 0 && (stored as u64) < at,
        "the meta file is written at the first batch only: {stored}, applied {at}"
    );
    // A restart resumes from the highest position kept, the file's, in the history stored.
    let peers = super::peers::Peers::default();
    let loaded = super::peers::load_positions(&pair.m2, &peers, &["m1".to_string()]).unwrap();
    assert_eq!(loaded["m1"], (at, Some("h1".to_string())));
    assert_eq!(peers.applied("m1"), at);
    // The stream's heartbeat brings the meta file up to what was applied, once.
    assert!(applier
        .store_position_if_behind(&pair.m2, Some("h1"))
        .unwrap());
    assert_eq!(meta_seq(&pair.m2) as u64, at);
    assert!(!applier
        .store_position_if_behind(&pair.m2, Some("h1"))
        .unwrap());
    // Another history is stored at once.
    pair.write(1, &format!("INSERT INTO {t} VALUES (20, 'x')"));
    let batch = pair.stream_of(1, at);
    let at = applier
        .apply(&pair.m2, &batch, Some("h2"))
        .unwrap()
        .position;
    let loaded = super::peers::load_positions(&pair.m2, &peers, &["m1".to_string()]).unwrap();
    assert_eq!(loaded["m1"], (at, Some("h2".to_string())));
    assert_eq!(meta_seq(&pair.m2) as u64, at);
}
