//! MULTI_PRIMARY checkpoints between masters: what each master knew of every other master's
//! stream when it committed each of its own entries, so that the master applying an entry can
//! tell a change made *after* seeing its own version of a row from one made *without* it (a
//! conflict, [`super::conflicts`]).
//!
//! A step `(origin, after, applied)` of a database file says: this master's own entries of that
//! file with a sequence above `after` were committed once it had applied `origin`'s stream up to
//! `applied` in that file. The applier records one step per applied run ([`record`]), in the
//! run's own transaction (`_dirk_knowledge`, beside `_dirk_origins`), with `after` the master's
//! committed sequence at that instant (it holds the writer gate, so no own commit interleaves).
//! The steps are kept in memory too ([`Knowledge`]), loaded from every file at start, and the
//! origin sends with each `PeerEntries` batch the steps that cover its entries
//! ([`Knowledge::for_batch`]); the asker computes each entry's vector ([`vector`]). Steps only
//! rise. At most [`MAX_STEPS`] are kept per file and origin; an entry older than the oldest kept
//! step is taken to know nothing of that origin, which can only make a conflict out of a change
//! that was not one (never the reverse).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::oplog::Entry;
use dirkdb_core::sync::lock;

/// Each database file's table of steps.
pub(crate) const FILE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _dirk_knowledge (
    origin TEXT NOT NULL, after INTEGER NOT NULL, applied INTEGER NOT NULL,
    PRIMARY KEY (origin, after)) WITHOUT ROWID";

/// Steps kept per database file and origin.
pub(crate) const MAX_STEPS: usize = 4096;

/// One step, as sent with a batch of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The database file.
    pub db: String,
    /// The origin whose stream was applied.
    pub origin: String,
    /// Own entries above this sequence knew…
    pub after: u64,
    /// …the origin's stream up to here.
    pub applied: u64,
}

/// One file's steps per origin: `after → applied`.
type FileSteps = HashMap<String, BTreeMap<u64, u64>>;

/// The steps of every database file.
#[derive(Default)]
pub(crate) struct Knowledge {
    steps: std::sync::Mutex<HashMap<String, FileSteps>>,
}

impl Knowledge {
    /// Adds a step (after its transaction committed); keeps at most [`MAX_STEPS`].
    pub(crate) fn note(&self, db: &str, origin: &str, after: u64, applied: u64) {
        let mut steps = lock(&self.steps);
        let of = steps
            .entry(db.to_string())
            .or_default()
            .entry(origin.to_string())
            .or_default();
        let at = of.entry(after).or_insert(0);
        *at = (*at).max(applied);
        while of.len() > MAX_STEPS {
            of.pop_first();
        }
    }

    /// The oldest step [`Knowledge::note`] keeps for `db` and `origin` once it adds one at
    /// `after` (`None` while that drops none): the file's steps below it can go ([`record`]).
    /// At most [`MAX_STEPS`] are kept, so this looks at two of them.
    pub(crate) fn floor_after_adding(&self, db: &str, origin: &str, after: u64) -> Option<u64> {
        let steps = lock(&self.steps);
        let of = steps.get(db)?.get(origin)?;
        let dropped = (of.len() + usize::from(!of.contains_key(&after)))
            .checked_sub(MAX_STEPS)
            .filter(|n| *n > 0)?;
        let mut oldest: Vec<u64> = of.keys().take(dropped + 1).copied().collect();
        oldest.push(after);
        oldest.sort_unstable();
        oldest.dedup();
        oldest.get(dropped).copied()
    }

    /// Forgets a dropped database's steps.
    pub(crate) fn forget(&self, db: &str) {
        lock(&self.steps).remove(db);
    }

    /// Loads one database file's steps (at start).
    pub(crate) fn load(&self, db: &str, conn: &Connection) -> rusqlite::Result<()> {
        if !has_table(conn)? {
            return Ok(());
        }
        let mut stmt = conn.prepare("SELECT origin, after, applied FROM _dirk_knowledge")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (origin, after, applied) = row?;
            self.note(db, &origin, after.max(0) as u64, applied.max(0) as u64);
        }
        Ok(())
    }

    /// The steps that give each of `entries` (this master's own, in order) its vector: per
    /// database and origin, the last step below the database's first entry and every step up
    /// to its last.
    pub(crate) fn for_batch(&self, entries: &[Entry]) -> Vec<Known> {
        let mut span: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for e in entries.iter().filter(|e| !e.db.is_empty()) {
            let s = span.entry(&e.db).or_insert((e.seq, e.seq));
            s.0 = s.0.min(e.seq);
            s.1 = s.1.max(e.seq);
        }
        let steps = lock(&self.steps);
        let mut out = Vec::new();
        for (db, (first, last)) in span {
            let Some(origins) = steps.get(db) else {
                continue;
            };
            for (origin, of) in origins {
                let base = of.range(..first).next_back();
                let within = of.range(first..last);
                for (after, applied) in base.into_iter().chain(within) {
                    out.push(Known {
                        db: db.to_string(),
                        origin: origin.clone(),
                        after: *after,
                        applied: *applied,
                    });
                }
            }
        }
        out
    }
}

/// What the origin of `seq` in `db` had applied of each other origin when it committed it.
#[allow(dead_code)] // read by conflict detection, the next step of #16 item 5
pub(crate) fn vector(known: &[Known], db: &str, seq: u64) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for k in known.iter().filter(|k| k.db == db && k.after < seq) {
        let at = out.entry(k.origin.clone()).or_insert(0);
        *at = (*at).max(k.applied);
    }
    out
}

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_dirk_knowledge'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Records a step in the applier's transaction on a database file (the table must exist), and
/// drops that origin's steps below `floor` ([`Knowledge::floor_after_adding`]: the oldest of
/// the [`MAX_STEPS`] kept). Both statements are cached, and the removal looks up only the
/// steps it removes: it used to find the floor itself, walking the newest 4,096 steps of the
/// index at every applied run, the largest part of a run's cost once they were that many.
pub(crate) fn record(
    tx: &Connection,
    origin: &str,
    (after, applied): (u64, u64),
    floor: Option<u64>,
) -> rusqlite::Result<()> {
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    tx.prepare_cached(
        "INSERT INTO _dirk_knowledge(origin, after, applied) VALUES (?1, ?2, ?3) \
         ON CONFLICT(origin, after) DO UPDATE SET applied = max(applied, excluded.applied)",
    )?
    .execute(params![origin, clamp(after), clamp(applied)])?;
    if let Some(floor) = floor {
        tx.prepare_cached("DELETE FROM _dirk_knowledge WHERE origin = ?1 AND after < ?2")?
            .execute(params![origin, clamp(floor)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::Op;

    fn entry(seq: u64, db: &str) -> Entry {
        Entry {
            seq,
            ts: 0,
            db: db.into(),
            table: "t".into(),
            op: Op::Insert,
            old_key: None,
            new_key: None,
            data: None,
            crc: 0,
        }
    }

    #[test]
    fn each_entry_knows_what_was_applied_before_it_committed() {
        let k = Knowledge::default();
        k.note("d", "m2", 0, 5);
        k.note("d", "m2", 10, 8);
        k.note("d", "m2", 20, 12);
        k.note("d", "m3", 15, 3);
        k.note("other", "m2", 0, 99);
        let known = k.for_batch(&[entry(12, "d"), entry(21, "d")]);
        assert!(known.iter().all(|k| k.db == "d"));
        assert_eq!(vector(&known, "d", 12)["m2"], 8);
        assert_eq!(vector(&known, "d", 12).get("m3"), None);
        assert_eq!(vector(&known, "d", 21)["m2"], 12);
        assert_eq!(vector(&known, "d", 21)["m3"], 3);
        // The step at `after == seq` was taken after the entry committed.
        assert_eq!(vector(&known, "d", 20)["m2"], 8);
    }

    #[test]
    fn steps_are_durable_rise_and_stay_bounded() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(FILE_SCHEMA).unwrap();
        let noted = Knowledge::default();
        let step = |origin: &str, after: u64, applied: u64| {
            let floor = noted.floor_after_adding("d", origin, after);
            record(&conn, origin, (after, applied), floor).unwrap();
            noted.note("d", origin, after, applied);
        };
        step("m2", 3, 7);
        step("m2", 3, 5);
        for after in 10..(10 + MAX_STEPS as u64 + 5) {
            step("m3", after, after);
        }
        let k = Knowledge::default();
        k.load("d", &conn).unwrap();
        let oldest: i64 = conn
            .query_row(
                "SELECT min(after) FROM _dirk_knowledge WHERE origin = 'm3'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(oldest, 15, "the oldest steps went, file and memory alike");
        assert_eq!(k.floor_after_adding("d", "m3", 10_000), Some(16));
        assert_eq!(
            k.floor_after_adding("d", "m3", 15),
            None,
            "a step already kept"
        );
        assert_eq!(
            k.floor_after_adding("d", "m2", 99),
            None,
            "fewer than MAX_STEPS"
        );
        let known = k.for_batch(&[entry(4, "d")]);
        assert_eq!(vector(&known, "d", 4)["m2"], 7);
        let count: i64 = conn
            .query_row(
                "SELECT count(*) FROM _dirk_knowledge WHERE origin = 'm3'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, MAX_STEPS as i64);
    }
}
