//! MULTI_PRIMARY: conflict detection while one run of another master's entries is applied (the
//! model is in [`super::conflicts`]), and the resolutions it writes.
//!
//! For each row change of the run, [`RunJudge::entry`] finds the row's current version here
//! (this master's own latest change of it, or the last change applied from another master) and
//! judges the incoming change against it. A conflict on a row whose home is this master is
//! recorded in `dirkdb_conflicts` and handled by its strategy: `SOURCE_WINS` applies the change,
//! `TARGET_WINS` and `MANUAL` hold it; for the first two, [`RunJudge::write_resolutions`] then
//! writes each such row as it stands as this master's own entry, in the run's transaction, after
//! the run's knowledge step (so the resolution is known to have seen the source's change), and
//! [`RunJudge::publish`] publishes those entries once the transaction committed. A conflict on a
//! row another master is home of is held: recorded here with that home named (state `held`,
//! listed by `SHOW CONFLICTS`), counted (`heldForHome`) and logged; when a change of the row by
//! the home made in view of the held one is applied here (its resolution), [`RunJudge::publish`]
//! marks it resolved.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;

use super::conflicts::{self, Current, Detected, KeyShape, Verdict, Version};
use super::knowledge::{self, Known};
use super::node::Node;
use crate::error::Result;
use crate::oplog::capture;
use crate::oplog::{Entry, Op};
use dirkdb_core::config::ConflictStrategy;
use dirkdb_core::rendezvous::ObjectRef;

/// What to do with one incoming entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Apply it.
    Apply,
    /// Leave it unapplied (superseded, or a conflict held).
    Hold,
}

/// The key shapes of one database file's tables, kept between runs while the file's schema
/// stays as it was (its `schema_version`, which every CREATE, ALTER and DROP changes, by any
/// connection). Read anew for every run, they were a sixth of a run's time (two pragma
/// queries compiled each time).
#[derive(Default)]
pub(crate) struct Shapes {
    /// The schema version they were read at (`None`: none read since the last change).
    version: Option<i64>,
    of: HashMap<String, Option<KeyShape>>,
}

impl Shapes {
    /// Forgets every shape when the file's schema changed since they were read; `tx` is the
    /// run's transaction, so the version is the one its reads see.
    pub(crate) fn check(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let version: i64 = tx
            .prepare_cached("PRAGMA schema_version")?
            .query_row([], |r| r.get(0))?;
        if self.version != Some(version) {
            self.forget();
            self.version = Some(version);
        }
        Ok(())
    }

    /// Forgets every shape (a schema change applied in the run).
    fn forget(&mut self) {
        self.version = None;
        self.of.clear();
    }
}

/// The conflict bookkeeping of one run.
pub(crate) struct RunJudge<'a> {
    state: &'a Node,
    origin: &'a str,
    db: &'a str,
    known: &'a [Known],
    shapes: &'a mut Shapes,
    /// Per table: this master's own latest change of each row after a bound.
    own: HashMap<String, (u64, HashMap<String, u64>)>,
    /// Rows to write as resolved (table, row key, conflict id), once each.
    resolve: BTreeMap<(String, String), u64>,
    /// Rows held here for their home whose home's change this run applied (table, row key,
    /// the home's sequence).
    released: Vec<(String, String, u64)>,
}

/// The resolutions written in the run's transaction.
#[derive(Default)]
pub(crate) struct Written {
    entries: Vec<Entry>,
    conflicts: Vec<(u64, u64)>,
    /// Held rows the home resolved (see [`RunJudge`]'s `released`).
    released: Vec<(String, String, u64)>,
}

impl<'a> RunJudge<'a> {
    /// A judge for a run of `origin`'s entries of database `db`, with their knowledge steps
    /// and the file's key shapes ([`Shapes::check`]ed in the run's transaction).
    pub(crate) fn new(
        state: &'a Node,
        (origin, db): (&'a str, &'a str),
        known: &'a [Known],
        shapes: &'a mut Shapes,
    ) -> RunJudge<'a> {
        RunJudge {
            state,
            origin,
            db,
            known,
            shapes,
            own: HashMap::new(),
            resolve: BTreeMap::new(),
            released: Vec::new(),
        }
    }

    fn shape(&mut self, tx: &Connection, table: &str) -> Result<Option<KeyShape>> {
        if !self.shapes.of.contains_key(table) {
            let shape = conflicts::key_shape(tx, table)?;
            self.shapes.of.insert(table.to_string(), shape);
        }
        Ok(self.shapes.of.get(table).cloned().flatten())
    }

    /// `e` as this master applies it: keyed by its table's primary key when the rowid is local
    /// ([`KeyShape::keyed_entry`]).
    pub(crate) fn keyed(&mut self, tx: &Connection, e: &Entry) -> Result<Entry> {
        if !matches!(e.op, Op::Insert | Op::Update | Op::Remove) {
            return Ok(e.clone());
        }
        Ok(match self.shape(tx, &e.table)? {
            Some(shape) => shape.keyed_entry(e),
            None => e.clone(),
        })
    }

    /// The rows `e` changes, by their conflict keys.
    fn keys(shape: &KeyShape, e: &Entry) -> Vec<String> {
        let mut keys: Vec<String> = [e.old_key.as_deref(), e.new_key.as_deref()]
            .into_iter()
            .filter_map(|k| shape.row_key(k))
            .collect();
        keys.dedup();
        keys
    }

    /// This master's own latest change of `row_key` in `table` after `bound`, if any.
    fn own_latest(
        &mut self,
        tx: &Connection,
        table: &str,
        shape: &KeyShape,
        bound: u64,
        row_key: &str,
    ) -> Result<Option<u64>> {
        let stale = self.own.get(table).is_none_or(|(from, _)| *from > bound);
        if stale {
            let changes = conflicts::own_changes(tx, table, bound, shape)?;
            self.own.insert(table.to_string(), (bound, changes));
        }
        Ok(self
            .own
            .get(table)
            .and_then(|(_, m)| m.get(row_key).copied())
            .filter(|seq| *seq > bound))
    }

    /// Judges one incoming entry (recording a conflict where there is one).
    pub(crate) fn entry(&mut self, tx: &Connection, e: &Entry) -> Result<Outcome> {
        if !matches!(e.op, Op::Insert | Op::Update | Op::Remove) {
            self.shapes.forget();
            self.own.clear();
            return Ok(Outcome::Apply);
        }
        let Some(shape) = self.shape(tx, &e.table)? else {
            return Ok(Outcome::Apply);
        };
        let me = self.state.instance_id.clone();
        let known = knowledge::vector(self.known, self.db, e.seq);
        let keys = Self::keys(&shape, e);
        let mut outcome = if keys.is_empty() {
            Outcome::Apply
        } else {
            Outcome::Hold
        };
        for key in &keys {
            let version = conflicts::load_version(tx, &e.table, key)?;
            let knew_me = known.get(&me).copied().unwrap_or(0);
            let bound = version
                .as_ref()
                .map_or(knew_me, |v| v.local_at.min(knew_me));
            let own = self.own_latest(tx, &e.table, &shape, bound, key)?;
            let current = match (own, version) {
                (Some(w), Some(v)) if w <= v.local_at => Some(Current::Applied(v)),
                (Some(w), _) => Some(Current::Own(w)),
                (None, Some(v)) => Some(Current::Applied(v)),
                (None, None) => None,
            };
            match conflicts::judge(&me, self.origin, e.seq, &known, current.as_ref()) {
                Verdict::Apply => outcome = Outcome::Apply,
                Verdict::Skip => {}
                Verdict::Conflict(local, seq) => {
                    return self.conflict(e, &shape, key, (&local, seq));
                }
            }
        }
        if outcome == Outcome::Hold {
            tracing::debug!(origin = %self.origin, seq = e.seq, table = %e.table, "change superseded here: skipped");
        }
        Ok(outcome)
    }

    fn conflict(
        &mut self,
        e: &Entry,
        shape: &KeyShape,
        row_key: &str,
        local: (&str, u64),
    ) -> Result<Outcome> {
        let ownership = &self.state.settings.ownership;
        let home = ownership.home_of(&ObjectRef::table(self.db, &e.table));
        let strategy = self.state.peers.conflicts.strategy_for(self.db, &e.table);
        let detected = Detected {
            entry: e,
            origin: self.origin,
            row_key,
            key_kind: shape.kind(),
            local,
            strategy,
        };
        if home.as_deref() != Some(self.state.instance_id.as_str()) {
            return self.hold_for_home(&detected, home.as_deref());
        }
        let id = self
            .state
            .meta
            .with(|conn| conflicts::record(conn, &detected))?;
        tracing::warn!(
            id, origin = %self.origin, seq = e.seq, database = %self.db, table = %e.table,
            row = %row_key, local = ?local, strategy = strategy.as_str(),
            "conflict recorded: a row changed on two masters apart"
        );
        if strategy == ConflictStrategy::Manual {
            return Ok(Outcome::Hold);
        }
        self.resolve
            .insert((e.table.clone(), row_key.to_string()), id);
        Ok(match strategy {
            ConflictStrategy::SourceWins => Outcome::Apply,
            _ => Outcome::Hold,
        })
    }

    /// Leaves a conflicting change unapplied for the row's home: recorded here as held with the
    /// home named, counted and logged.
    fn hold_for_home(&mut self, d: &Detected<'_>, home: Option<&str>) -> Result<Outcome> {
        let e = d.entry;
        let peers = &self.state.peers;
        peers
            .held_for_home
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = match home {
            Some(home) => {
                let id = self
                    .state
                    .meta
                    .with(|conn| conflicts::record_held(conn, d, home))?;
                let row = (self.db.to_string(), e.table.clone(), d.row_key.to_string());
                let held = conflicts::HeldFor {
                    home: home.to_string(),
                    origin: self.origin.to_string(),
                    seq: e.seq,
                };
                peers.note_held(row, held);
                Some(id)
            }
            None => None,
        };
        tracing::warn!(
            id, origin = %self.origin, seq = e.seq, database = %self.db, table = %e.table,
            row = %d.row_key, local = ?d.local, home = ?home,
            "conflict: change made apart from this master's version of the row; left \
             unapplied for the row's home master to resolve (SHOW CONFLICTS lists it as held)"
        );
        Ok(Outcome::Hold)
    }

    /// Notes the version of the rows `e` (just applied) changed.
    pub(crate) fn applied(&mut self, tx: &Connection, e: &Entry) -> Result<()> {
        if !matches!(e.op, Op::Insert | Op::Update | Op::Remove) {
            self.shapes.forget();
            self.own.clear();
            return Ok(());
        }
        let Some(shape) = self.shape(tx, &e.table)? else {
            return Ok(());
        };
        let version = Version {
            origin: self.origin.to_string(),
            seq: e.seq,
            known: knowledge::vector(self.known, self.db, e.seq),
            local_at: self.state.write_path.committed(),
        };
        let any_held = self.state.peers.any_held();
        for key in Self::keys(&shape, e) {
            conflicts::store_version(tx, &e.table, &key, &version)?;
            if !any_held {
                continue;
            }
            let row = (self.db.to_string(), e.table.clone(), key);
            if self
                .state
                .peers
                .released_by(&row, self.origin, &version.known)
            {
                self.released.push((row.1, row.2, e.seq));
            }
        }
        Ok(())
    }

    /// Writes each row resolved in this run as this master's own entry after `after` (its
    /// committed sequence, under the writer gate), in the run's transaction.
    pub(crate) fn write_resolutions(&mut self, tx: &Connection, after: u64) -> Result<Written> {
        let mut written = Written {
            released: std::mem::take(&mut self.released),
            ..Written::default()
        };
        let resolve = std::mem::take(&mut self.resolve);
        for ((table, row_key), id) in resolve {
            let Some(shape) = self.shape(tx, &table)? else {
                continue;
            };
            let entry = write_row_as_own(tx, self.db, &table, &shape, &row_key, after, &written)?;
            written.conflicts.push((id, entry.seq));
            written.entries.push(entry);
        }
        Ok(written)
    }

    /// Publishes the resolutions (after their transaction committed) and notes them resolved,
    /// and marks the rows held here that their home resolved.
    pub(crate) fn publish(&self, mut written: Written) -> Result<()> {
        let released = std::mem::take(&mut written.released);
        publish_resolutions(self.state, written)?;
        release_held(self.state, self.db, self.origin, released)
    }
}

/// Writes the row `row_key` of `table` as it stands now (or its removal) as this master's own
/// entry, the next after `after` and the entries already `written`.
fn write_row_as_own(
    tx: &Connection,
    db: &str,
    table: &str,
    shape: &KeyShape,
    row_key: &str,
    after: u64,
    written: &Written,
) -> Result<Entry> {
    let image = conflicts::row_image(tx, table, shape, row_key)
        .map_err(|e| crate::error::ServerError::Refused(format!("conflict resolution: {e}")))?;
    let seq = after + written.entries.len() as u64 + 1;
    let mut entry = conflicts::resolution_entry(seq, table, row_key, image);
    entry.db = db.to_string();
    capture::insert_entry(tx, &entry)?;
    Ok(entry)
}

/// Marks the conflicts held here on `released` rows of `db` resolved by their home `home`
/// (whose changes of those rows were just applied), and prunes resolved ones beyond the limit.
fn release_held(
    state: &Node,
    db: &str,
    home: &str,
    released: Vec<(String, String, u64)>,
) -> Result<()> {
    if released.is_empty() {
        return Ok(());
    }
    let keep = state.peers.conflicts.keep_resolved;
    state.meta.with(|conn| {
        for (table, row_key, seq) in &released {
            let row = (db.to_string(), table.clone(), row_key.clone());
            conflicts::mark_held_resolved(conn, &row, home, *seq)?;
            tracing::info!(database = %db, table = %table, row = %row_key, %home, seq, "conflict held here resolved by the row's home");
        }
        conflicts::prune_resolved(conn, keep).map(|_| ())
    })?;
    for (table, row_key, _) in released {
        state.peers.forget_held(&(db.to_string(), table, row_key));
    }
    Ok(())
}

/// Publishes resolution entries just committed and notes their conflicts resolved.
fn publish_resolutions(state: &Node, written: Written) -> Result<()> {
    if written.entries.is_empty() {
        return Ok(());
    }
    state.write_path.publish_entries(written.entries);
    let keep = state.peers.conflicts.keep_resolved;
    state.meta.with(|conn| {
        for (id, seq) in &written.conflicts {
            conflicts::mark_resolved(conn, *id, None, Some(*seq))?;
        }
        conflicts::prune_resolved(conn, keep)?;
        Ok(())
    })?;
    Ok(())
}

/// `RESOLVE CONFLICT <id> KEEP LOCAL|REMOTE` on this master (the conflict's home): the row kept
/// (the remote change applied first for REMOTE) is written as this master's own entry, which
/// every master applies, and the conflict is marked resolved. Returns the answer's text.
pub(crate) fn resolve_manually(state: &Node, id: u64, keep_remote: bool) -> Result<String> {
    use crate::error::ServerError;
    let me = state.instance_id.clone();
    let held = state
        .meta
        .with(|conn| conflicts::held(conn, &me, id))?
        .ok_or_else(|| {
            ServerError::Refused(format!(
                "no conflict {id} on {me} (SHOW CONFLICTS lists them with the master that holds each)"
            ))
        })?;
    let c = &held.conflict;
    if let Some(home) = &c.home {
        return Err(ServerError::Refused(format!(
            "conflict {id} on {me} is held for {home}, the row's home: {me} does not resolve it; \
             {home} records it as its own conflict and resolves it (SHOW CONFLICTS lists it with \
             master {home}, once {home} is up), and {me} marks this one resolved when {home}'s \
             resolution arrives"
        )));
    }
    if c.state != "open" {
        return Err(ServerError::Refused(format!(
            "conflict {id} on {me} is already resolved ({}{})",
            c.resolution.as_deref().unwrap_or("?"),
            c.resolved_seq
                .map(|s| format!(", written at {me}'s sequence {s}"))
                .unwrap_or_default()
        )));
    }
    let database = state.catalog.get(&c.database)?;
    let resolution = if keep_remote { "REMOTE" } else { "LOCAL" };
    let owner = state.new_owner();
    let entry = state.under_gate(owner, || {
        let conn = crate::catalog::open_apply_connection(database.path(), &state.settings)?;
        let tx = conn.unchecked_transaction()?;
        let shape = conflicts::key_shape(&tx, &c.table)?.ok_or_else(|| {
            ServerError::Refused(format!("table {}.{} no longer exists", c.database, c.table))
        })?;
        if keep_remote {
            apply_remote(&tx, &shape, &held)?;
        }
        let after = state.write_path.committed();
        let none = Written::default();
        let entry = write_row_as_own(&tx, &c.database, &c.table, &shape, &c.row_key, after, &none)?;
        tx.commit()?;
        let keep = state.peers.conflicts.keep_resolved;
        state.meta.with(|conn| {
            conflicts::mark_resolved(conn, id, Some(resolution), Some(entry.seq))?;
            conflicts::prune_resolved(conn, keep).map(|_| ())
        })?;
        state.write_path.publish_entries(vec![entry.clone()]);
        Ok(entry)
    })?;
    tracing::info!(
        id,
        resolution,
        seq = entry.seq,
        "conflict resolved by a statement"
    );
    Ok(format!(
        "conflict {id} resolved: {} kept, written at {me}'s sequence {}",
        if keep_remote {
            "the remote change"
        } else {
            "the local row"
        },
        entry.seq
    ))
}

/// Applies a held conflict's remote change (its row, or its removal) on `tx`.
fn apply_remote(tx: &Connection, shape: &KeyShape, held: &conflicts::Held) -> Result<()> {
    use crate::error::ServerError;
    let c = &held.conflict;
    let op = if c.remote_op == Op::Remove.code() {
        Op::Remove
    } else {
        Op::Insert
    };
    let entry = Entry {
        seq: c.remote_seq,
        ts: 0,
        db: c.database.clone(),
        table: c.table.clone(),
        op,
        old_key: (op == Op::Remove).then(|| c.row_key.clone()),
        new_key: held.remote_key.clone().filter(|_| op == Op::Insert),
        data: held.remote_row.clone().filter(|_| op == Op::Insert),
        crc: 0,
    };
    match super::apply::apply_entry(tx, &shape.keyed_entry(&entry)) {
        Err(e) if !(op == Op::Remove && e.starts_with("no row matched")) => {
            Err(ServerError::Refused(format!(
                "conflict {}: the remote change does not apply: {e}",
                c.id
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connections to one file, as the applier's and a session's are.
    fn two_connections() -> (tempfile::TempDir, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let applier = Connection::open(&path).unwrap();
        applier
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        let session = Connection::open(&path).unwrap();
        (dir, applier, session)
    }

    #[test]
    fn key_shapes_are_kept_between_runs_until_the_schema_changes() {
        let (_dir, applier, session) = two_connections();
        let mut shapes = Shapes::default();
        let run = |shapes: &mut Shapes| {
            let tx = applier.unchecked_transaction().unwrap();
            shapes.check(&tx).unwrap();
            if !shapes.of.contains_key("t") {
                let shape = conflicts::key_shape(&tx, "t").unwrap();
                shapes.of.insert("t".into(), shape);
            }
            tx.commit().unwrap();
            shapes.of["t"].clone().unwrap()
        };
        assert_eq!(run(&mut shapes).columns, ["rowid"]);
        shapes.of.get_mut("t").unwrap().as_mut().unwrap().stored = vec!["marked".into()];
        assert_eq!(
            run(&mut shapes).stored,
            ["marked"],
            "kept while the schema stays"
        );
        session
            .execute_batch("DROP TABLE t; CREATE TABLE t(k TEXT PRIMARY KEY, v)")
            .unwrap();
        let shape = run(&mut shapes);
        assert_eq!(
            (shape.columns, shape.stored),
            (vec!["k".into()], vec!["k".into(), "v".into()])
        );
        shapes.forget();
        assert!(shapes.of.is_empty() && shapes.version.is_none());
    }
}
