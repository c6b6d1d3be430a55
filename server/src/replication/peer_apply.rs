//! MULTI_PRIMARY: a master applying another origin's entries.
//!
//! Consecutive entries of one database are applied in one transaction on a connection whose
//! triggers and foreign-key actions are off (as a replica applies), and the same transaction
//! stores the origin's position in the file (`_dirk_origins`, with the checksum of the
//! origin's entry at that position, which the next hello carries back to the origin). Unlike a replica, the entries are
//! not written into this master's oplog: its oplog holds only what it committed itself, which
//! is all it streams, so nothing applied from one origin is ever sent on. CREATE/DROP DATABASE
//! go through the meta file first (live set and the origin's position in one transaction), then
//! the file operation, as on the owner.
//!
//! The meta file's copy of the position (`_dirk_peer_positions`, with the origin's history) is
//! not written after every batch. A restart resumes from the highest of the meta file's and the
//! files' positions, and the files hold the position of every run they applied, so the meta
//! file is written only when it must carry the position itself (a run of a database dropped
//! here, which no file records; the first batch since start; another history), otherwise at
//! most once per [`META_POSITION_EVERY`], and at the stream's heartbeat when it is behind
//! ([`PeerApplier::store_position_if_behind`]). Written after every batch (before issue #16's
//! lag work), it cost a meta-file commit per batch under the writer gate: an fsync per batch
//! with `synchronous = FULL`, and with NORMAL the meta file's inline WAL checkpoint (two
//! fsyncs) every thousand batches, which made the tail of the lag between masters.
//!
//! A run costs little beyond its rows: its statements are cached on the applier's connection,
//! the tables' key shapes are kept between runs until the file's schema changes
//! (`super::peer_conflicts::Shapes`), and the knowledge steps are pruned by a range removal
//! (`super::knowledge::record`). Streams of single-row commits arrive as runs of one or a few
//! entries, so before issue #16's apply work the fixed part (the file's schema probed for its
//! position, the key shapes read, the prune walking 4,096 steps) was about two thirds of a
//! run's time.
//!
//! Taking the writer gate waits for group commit's pending sync (`WritePath::acquire`), so the
//! knowledge step's `after` and the rows' `local_at` count only durable own entries: after a
//! power loss the sequences of own entries lost from another file are given out again, and a
//! version whose `local_at` stood above them would hide those new own changes from conflict
//! detection. Under local writers that sync, made holding the gate, is about a fifth of the
//! apply's CPU (perf, issue #16); it stays until the step and the version can name a durable
//! position some other way.
//!
//! Entries must rise; gaps are allowed (entries of a database the origin dropped since). An
//! entry at or below the file's stored position is skipped, so a batch sent again after a crash
//! or a reconnection is applied once. Entries of a database this master does not hold are
//! skipped when the database was dropped here (by its owner's event or its own), and otherwise
//! fail the batch: the database's CREATE comes on its owner's stream, and the stream is retried
//! until it has arrived.
//!
//! **What is skipped, and why that is safe (reviewed for issue #16):**
//! * Entries at or below the origin's position here (`Peers::applied`, the highest of the
//!   meta file's and the files' stored positions): applied already. The origin continues a
//!   stream only within a history this master streamed and at or below its own committed
//!   sequence (`peer_stream::continue_from`), and only when its own entry at that sequence has
//!   the checksum of the entry this master applied there (stored with the position, in the
//!   file's `_dirk_origins` and the meta file's `_dirk_peer_positions`, and sent in the
//!   hello), so they are the entries that were applied. An origin whose data directory was
//!   restored to an older copy under the same history and that committed past this master's
//!   position again refuses the stream (`peer_stream::verify_last_applied`), shown in
//!   `/replication/status`. Not caught (the stream continues unverified): a position stored
//!   without a checksum (by a version before it was recorded; the next batch stores one), and
//!   an entry at the position that the origin no longer holds (pruned at its oplog's floor, or
//!   of a database it dropped since).
//! * Entries at or below a file's own stored position (`_dirk_origins`, written in the
//!   transaction of the rows): that file has them (a batch sent again after a crash).
//! * Gaps in the origin's sequence: its oplog holds only its own commits, and a database it
//!   dropped takes its entries with it. A file removed by hand on the origin looks the same.
//! * Entries of a database dropped here: the DROP wins; the origin's writes to it made before
//!   it applied the DROP are dropped with it (logged as a warning with their count).
//! * A change the row's current version already saw (`Verdict::Skip`), and a conflicting change
//!   of a row another master is home of (counted in `heldForHome`, logged, and listed as held
//!   with that home named until its resolution is applied here): see
//!   `super::conflicts`.
//! * In [`apply_tolerant`]: the removal of a row that is not here (done already), and an update
//!   of a row that is not here, written as the row it carries (both can follow a conflict's
//!   resolution; logged). Not caught: such an INSERT OR REPLACE, like any applied insert,
//!   replaces a row that collides with it on another UNIQUE constraint.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::apply::apply_entry;
use super::knowledge::{self, Known};
use super::node::Node;
use super::peer_conflicts::{Outcome, RunJudge, Shapes};
use super::peers::{
    applied_position, file_schema, mark_dropped, store_file_position, store_meta_position,
    was_dropped, Mark,
};
use crate::catalog::open_apply_connection;
use crate::error::{Result, ServerError};
use crate::meta::update_live_set;
use crate::oplog::{Entry, Op};

/// How often at most the meta file's copy of an origin's position is written while batches
/// arrive (see the module's documentation).
pub(crate) const META_POSITION_EVERY: Duration = Duration::from_secs(1);

/// Applies one origin's entries; keeps one connection per database between batches.
pub(crate) struct PeerApplier {
    origin: String,
    conns: HashMap<String, FileApplier>,
    /// The origin's last entry applied by this applier, with its checksum.
    applied: Mark,
    /// What the meta file holds of the origin's position: the sequence, the history and when
    /// this applier wrote them (`None`: not yet since start).
    meta: Option<(u64, Option<String>, Instant)>,
    /// [`META_POSITION_EVERY`] (tests set more).
    meta_every: Duration,
}

/// What the applier keeps of one database file between batches.
struct FileApplier {
    conn: Connection,
    /// Its tables' key shapes.
    shapes: Shapes,
}

/// One `PeerEntries` batch: the origin's entries and what it knew of the others' streams when
/// it committed them (`super::knowledge`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    /// The entries, in the origin's order.
    pub entries: Vec<Entry>,
    /// The origin's steps covering them.
    pub known: Vec<Known>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The origin's position now.
    pub position: u64,
    /// Entries applied (skipped ones not counted).
    pub entries: u64,
}

impl PeerApplier {
    /// An applier of `origin`'s stream.
    pub(crate) fn new(origin: &str) -> PeerApplier {
        PeerApplier {
            origin: origin.to_string(),
            conns: HashMap::new(),
            applied: Mark::default(),
            meta: None,
            meta_every: META_POSITION_EVERY,
        }
    }

    /// The same applier writing the meta file's copy of the position at most once per `every`
    /// while batches arrive.
    #[cfg(test)]
    pub(crate) fn with_meta_every(mut self, every: Duration) -> PeerApplier {
        self.meta_every = every;
        self
    }

    /// True when the meta file's copy of the position must be written with `seq` now: never
    /// written since start, another history, a position no database file records
    /// (`unrecorded`), or the last write older than [`META_POSITION_EVERY`].
    fn meta_due(&self, seq: u64, history: Option<&str>, unrecorded: bool) -> bool {
        match &self.meta {
            None => true,
            Some((stored, h, at)) => {
                seq > *stored
                    && (unrecorded
                        || (history.is_some() && h.as_deref() != history)
                        || at.elapsed() >= self.meta_every)
            }
        }
    }

    fn store_meta(&mut self, state: &Node, mark: Mark, history: Option<&str>) -> Result<()> {
        let seq = mark.seq;
        state
            .meta
            .with(|conn| store_meta_position(conn, &self.origin, mark, history))?;
        let history = history
            .map(str::to_string)
            .or_else(|| self.meta.as_ref().and_then(|m| m.1.clone()));
        self.meta = Some((seq, history, Instant::now()));
        Ok(())
    }

    /// Writes the position applied into the meta file when the meta file is behind it (called
    /// at the stream's heartbeat, so the meta file's copy trails by a heartbeat at most once
    /// batches stop); returns whether it wrote.
    pub(crate) fn store_position_if_behind(
        &mut self,
        state: &Node,
        history: Option<&str>,
    ) -> Result<bool> {
        let behind = self.meta.as_ref().is_none_or(|m| self.applied.seq > m.0);
        if self.applied.seq == 0 || !behind {
            return Ok(false);
        }
        self.store_meta(state, self.applied, history)?;
        Ok(true)
    }

    /// The origin whose entries this applier applies.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Applies `entries` of the origin; `history` is the origin's history id, stored with the
    /// position.
    pub(crate) fn apply(
        &mut self,
        state: &Node,
        batch: &Batch,
        history: Option<&str>,
    ) -> Result<Applied> {
        let entries = &batch.entries;
        let start = state.peers.applied(&self.origin);
        let mut previous = start;
        for e in entries {
            if !e.checksum_ok() {
                return Err(apply_error(format!(
                    "entry {} of {} failed its checksum",
                    e.seq, self.origin
                )));
            }
            if e.seq <= previous && e.seq > start {
                return Err(apply_error(format!(
                    "entries of {} out of order: {} after {previous}",
                    self.origin, e.seq
                )));
            }
            previous = previous.max(e.seq);
        }
        let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > start).collect();
        let Some(last) = fresh.last().map(|e| mark_of(e)) else {
            return Ok(Applied {
                position: start,
                entries: 0,
            });
        };
        let owner = state.new_owner();
        let mut applied = 0;
        // A run of a database dropped here moves the position without any file recording it.
        let mut unrecorded = false;
        state.under_gate(owner, || {
            for run in fresh.chunk_by(|a, b| a.db == b.db) {
                let run_last = run.last().map(|e| mark_of(e)).unwrap_or_default();
                if run[0].db.is_empty() {
                    for e in run {
                        self.apply_database_event(state, e)?;
                    }
                    applied += run.len() as u64;
                } else {
                    match self.apply_run(state, run, &batch.known)? {
                        Some(n) => applied += n,
                        None => unrecorded = true,
                    }
                }
                if run_last.seq > self.applied.seq {
                    self.applied = run_last;
                }
                state.peers.advance_to(&self.origin, run_last);
            }
            if self.meta_due(last.seq, history, unrecorded) {
                self.store_meta(state, last, history)?;
            }
            Ok(())
        })?;
        Ok(Applied {
            position: last.seq,
            entries: applied,
        })
    }

    fn apply_database_event(&mut self, state: &Node, e: &Entry) -> Result<()> {
        let name = e.table.clone();
        state.meta.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            update_live_set(&tx, &name, e.op)?;
            mark_dropped(&tx, &name, e.op == Op::DropDatabase)?;
            store_meta_position(&tx, &self.origin, mark_of(e), None)?;
            tx.commit()
        })?;
        if let Some(meta) = &mut self.meta {
            meta.0 = meta.0.max(e.seq);
        }
        match e.op {
            Op::CreateDatabase => {
                state.catalog.create(&name, true)?;
            }
            Op::DropDatabase => {
                self.conns.remove(&name);
                state.peers.knowledge.forget(&name);
                state.catalog.drop_database(&name, true)?;
            }
            other => {
                return Err(apply_error(format!(
                    "{other:?} entry of {} without a database",
                    self.origin
                )))
            }
        }
        tracing::info!(origin = %self.origin, database = %name, op = ?e.op, "database event applied from another master");
        Ok(())
    }

    /// This applier's connection to `db`, opened on first use; `None` when the database was
    /// dropped here.
    fn connection(&mut self, state: &Node, db: &str) -> Result<Option<&mut FileApplier>> {
        if !self.conns.contains_key(db) {
            let database = match state.catalog.get(db) {
                Ok(database) => database,
                Err(ServerError::UnknownDatabase(_)) => {
                    if state.meta.with(|conn| was_dropped(conn, db))? {
                        return Ok(None);
                    }
                    return Err(apply_error(format!(
                        "entries of {} for database `{db}`, which this master does not hold \
                         yet (its CREATE DATABASE comes on its owner's stream): retrying",
                        self.origin
                    )));
                }
                Err(e) => return Err(e),
            };
            let conn = open_apply_connection(database.path(), &state.settings)?;
            file_schema(&conn)?;
            conn.execute_batch(knowledge::FILE_SCHEMA)?;
            conn.execute_batch(super::conflicts::FILE_SCHEMA)?;
            let file = FileApplier {
                conn,
                shapes: Shapes::default(),
            };
            self.conns.insert(db.to_string(), file);
        }
        Ok(self.conns.get_mut(db))
    }

    /// Applies one database's run in one transaction with the origin's position, each row
    /// change judged against this master's version of the row first (a conflict is recorded
    /// and resolved, or held, see `super::conflicts`); returns the entries applied, or `None`
    /// when the database was dropped here (the run skipped, its position in no file).
    fn apply_run(&mut self, state: &Node, run: &[&Entry], known: &[Known]) -> Result<Option<u64>> {
        let origin = self.origin.clone();
        let db = run[0].db.clone();
        let Some(file) = self.connection(state, &db)? else {
            tracing::warn!(%origin, database = %db, entries = run.len(), "entries of a database dropped here skipped: the DROP DATABASE wins over writes made before the origin applied it");
            return Ok(None);
        };
        let tx = file.conn.unchecked_transaction()?;
        let stored = applied_position(&tx, &origin)?;
        file.shapes.check(&tx)?;
        let mut judge = RunJudge::new(state, (&origin, &db), known, &mut file.shapes);
        let mut applied = 0;
        for e in run.iter().filter(|e| e.seq > stored) {
            if judge.entry(&tx, e)? != Outcome::Apply {
                continue;
            }
            let keyed = judge.keyed(&tx, e)?;
            apply_tolerant(&tx, &keyed).map_err(|err| {
                apply_error(format!(
                    "entry {} of {origin} ({:?} on {}.{}): {err}",
                    e.seq, e.op, e.db, e.table
                ))
            })?;
            judge.applied(&tx, e)?;
            applied += 1;
        }
        let run_last = run.last().map(|e| mark_of(e)).unwrap_or_default();
        store_file_position(&tx, &origin, run_last)?;
        let last = run_last.seq.max(stored);
        let after = state.write_path.committed();
        let floor = state
            .peers
            .knowledge
            .floor_after_adding(&db, &origin, after);
        knowledge::record(&tx, &origin, (after, last), floor)?;
        let resolutions = judge.write_resolutions(&tx, after)?;
        tx.commit()?;
        state.peers.knowledge.note(&db, &origin, after, last);
        judge.publish(resolutions)?;
        Ok(Some(applied))
    }
}

/// Applies another master's entry; a removal of a row that is not here is done already, and an
/// update of a row that is not here writes the row it carries (both can follow a conflict's
/// resolution, and are logged).
fn apply_tolerant(tx: &Connection, e: &Entry) -> std::result::Result<(), String> {
    match apply_entry(tx, e) {
        Err(err)
            if err.starts_with("no row matched") && matches!(e.op, Op::Remove | Op::Update) =>
        {
            tracing::info!(seq = e.seq, database = %e.db, table = %e.table, op = ?e.op, "row not here: applied as the row the entry leaves");
            if e.op == Op::Remove {
                return Ok(());
            }
            let insert = Entry {
                op: Op::Insert,
                old_key: None,
                ..e.clone()
            };
            apply_entry(tx, &insert)
        }
        other => other,
    }
}

/// An entry's position with its checksum (what the hello carries back to its origin).
fn mark_of(e: &Entry) -> Mark {
    Mark {
        seq: e.seq,
        crc: Some(e.crc),
    }
}

fn apply_error(message: String) -> ServerError {
    ServerError::Refused(format!("multi-primary apply: {message}"))
}
