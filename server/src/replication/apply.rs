//! A replica writing the primary's entries.
//!
//! Entries arrive in sequence order and must be contiguous. Consecutive entries of one database
//! are applied in one transaction on a dedicated connection whose triggers and foreign-key
//! actions are off (cascades and trigger effects arrive as entries of their own); the same
//! transaction inserts the entries into the replica's own oplog. So the replica's position is
//! simply the highest sequence it stores, a crash at any instant loses nothing and applies
//! nothing twice (entries at or below the node's position, or at or below a file's own highest
//! sequence, the meta file's included, are skipped, once checked to be the very entries it
//! holds: a different one, or none where a file holds later ones, is a divergence, which a full
//! sync repairs), and
//! the replica holds the oplog it needs to serve others once promoted. CREATE/DROP DATABASE
//! events go through the meta file first, then the file operation, as on the primary.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::{Map, Value};

use crate::catalog::open_apply_connection;
use crate::database_statement::schema_object;
use crate::error::{Result, ServerError};
use crate::oplog::capture::{self, ident};
use crate::oplog::{decode_value, store, Entry, Op};
use crate::storage::Storage;

/// Applies batches of entries; keeps one connection per database between batches.
#[derive(Default)]
pub(crate) struct Applier {
    conns: HashMap<String, Connection>,
}

impl Applier {
    /// Forgets every connection (after a full sync replaced the files).
    pub(crate) fn reset(&mut self) {
        self.conns.clear();
    }

    /// Applies `entries` (which must follow the replica's position without a gap) and returns
    /// the new position.
    pub(crate) fn apply(&mut self, state: &Storage, owner: u64, entries: &[Entry]) -> Result<u64> {
        let mut position = state.write_path.committed();
        for e in entries {
            if !e.checksum_ok() {
                return Err(apply_error(format!("entry {} failed its checksum", e.seq)));
            }
            if e.seq <= position {
                continue;
            }
            if e.seq != position + 1 {
                return Err(apply_error(format!(
                    "gap in the stream: expected {}, got {}",
                    position + 1,
                    e.seq
                )));
            }
            position = e.seq;
        }
        state.under_gate(owner, || {
            let committed = state.write_path.committed();
            for held in entries.iter().filter(|e| e.seq <= committed) {
                self.check_held(state, held)?;
            }
            let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > committed).collect();
            for run in fresh.chunk_by(|a, b| a.db == b.db) {
                let last = run.last().map(|e| e.seq).unwrap_or(0);
                if run[0].db.is_empty() {
                    for e in run {
                        self.apply_database_event(state, e)?;
                    }
                } else {
                    self.apply_run(state, run)?;
                }
                state.write_path.publish(last);
            }
            Ok(())
        })?;
        Ok(state.write_path.committed())
    }

    /// A CREATE/DROP DATABASE event. The meta file may hold events beyond the node's position
    /// (as a database file may, see [`Applier::apply_run`]): one at or below its highest sequence
    /// is skipped only when it is the very event the primary sent.
    fn apply_database_event(&mut self, state: &Storage, e: &Entry) -> Result<()> {
        if e.seq <= state.meta.max_seq()? {
            let held = state.meta.entries_after(e.seq.saturating_sub(1), 1)?;
            return refuse_unless_held(held.first(), e, "the meta file holds");
        }
        state.meta.apply_database_event(e)?;
        match e.op {
            Op::CreateDatabase => {
                state.catalog.create(&e.table, true)?;
            }
            Op::DropDatabase => {
                self.conns.remove(&e.table);
                state.catalog.drop_database(&e.table, true)?;
            }
            other => return Err(apply_error(format!("{other:?} entry without a database"))),
        }
        Ok(())
    }

    /// An entry at or below this node's position (a stream that restarted behind it) is skipped,
    /// but only when it is the entry this node holds at that sequence: a different one means
    /// this node committed something of its own there that its primary never had (its history
    /// diverged with equal positions), and skipping would leave the two apart for good. The
    /// apply then fails as a divergence, so the follower asks for a full sync, which saves this
    /// node's own entries to a rollback file first. Entries pruned or dropped since are taken
    /// on trust.
    fn check_held(&mut self, state: &Storage, e: &Entry) -> Result<()> {
        if e.db.is_empty() || state.catalog.get(&e.db).is_err() {
            return Ok(());
        }
        let conn = self.connection(state, &e.db)?;
        refuse_if_held_differently(conn, e, "this node holds")
    }

    /// This applier's connection to `db`, opened on first use.
    fn connection(&mut self, state: &Storage, db: &str) -> Result<&Connection> {
        if !self.conns.contains_key(db) {
            let database = state.catalog.get(db)?;
            let conn = open_apply_connection(database.path(), &state.settings)?;
            self.conns.insert(db.to_string(), conn);
        }
        self.conns
            .get(db)
            .ok_or_else(|| apply_error(format!("no connection for `{db}`")))
    }

    /// A run of one database's entries, in one transaction. The file may hold entries beyond
    /// the node's position (a FILE-mode copy newer than its round's position): each entry at or
    /// below the file's highest sequence is skipped only when it is the very entry the file
    /// holds there. A different one, or none (the file holds later entries of this database but
    /// not this one, so it does not follow the primary's history), is a divergence.
    fn apply_run(&mut self, state: &Storage, run: &[&Entry]) -> Result<()> {
        let conn = self.connection(state, &run[0].db)?;
        let tx = conn.unchecked_transaction()?;
        let stored = store::max_seq(&tx)?;
        for e in run.iter().filter(|e| e.seq <= stored) {
            let held = store::read_file_entries(&tx, &e.db, e.seq.saturating_sub(1), 1)?;
            refuse_unless_held(held.first(), e, "this database's file holds")?;
        }
        for e in run.iter().filter(|e| e.seq > stored) {
            apply_entry(&tx, e).map_err(|err| {
                apply_error(format!(
                    "entry {} ({:?} on {}.{}): {err}",
                    e.seq, e.op, e.db, e.table
                ))
            })?;
            capture::insert_entry(&tx, e)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Fails, as a divergence (the follower then resyncs fully, saving this node's own entries to a
/// rollback file), when `conn`'s oplog holds an entry at `e.seq` other than `e`.
fn refuse_if_held_differently(conn: &Connection, e: &Entry, holder: &str) -> Result<()> {
    let held = store::read_file_entries(conn, &e.db, e.seq.saturating_sub(1), 1)?;
    match held.first() {
        Some(h) if h.seq == e.seq && h.crc != e.crc => Err(divergence(e, holder, "a different")),
        _ => Ok(()),
    }
}

/// Fails as a divergence unless `held` (the first entry a file holds from `e.seq` on) is `e`.
fn refuse_unless_held(held: Option<&Entry>, e: &Entry, holder: &str) -> Result<()> {
    match held {
        Some(h) if h.seq == e.seq && h.crc == e.crc => Ok(()),
        Some(h) if h.seq == e.seq => Err(divergence(e, holder, "a different")),
        _ => Err(divergence(e, holder, "no")),
    }
}

/// The apply error of a divergence at `e`: `holder` holds `what` entry at its sequence.
fn divergence(e: &Entry, holder: &str, what: &str) -> ServerError {
    tracing::warn!(seq = e.seq, db = %e.db, "{holder} {what} entry where the primary sent one: resyncing fully");
    let of = match e.db.as_str() {
        "" => "of a database event".to_string(),
        db => format!("on `{db}`"),
    };
    apply_error(format!(
        "{holder} {what} entry at {} where the primary sent one {of}: this node's history \
         diverged from the primary's; resyncing",
        e.seq
    ))
}

fn apply_error(message: String) -> ServerError {
    ServerError::Refused(format!("replication apply: {message}"))
}

pub(crate) fn apply_entry(conn: &Connection, e: &Entry) -> std::result::Result<(), String> {
    let table = ident(&e.table);
    match e.op {
        Op::Insert => {
            let mut values = object(e.new_key.as_deref())?;
            values.extend(object(e.data.as_deref())?);
            let columns: Vec<String> = values.keys().map(|c| column(c)).collect();
            let marks = vec!["?"; columns.len()].join(", ");
            let sql = format!(
                "INSERT OR REPLACE INTO {table}({}) VALUES ({marks})",
                columns.join(", ")
            );
            execute(conn, &sql, values.values())
        }
        Op::Update => {
            let mut set = object(e.new_key.as_deref())?;
            set.extend(object(e.data.as_deref())?);
            let key = object(e.old_key.as_deref())?;
            let assignments: Vec<String> =
                set.keys().map(|c| format!("{} = ?", column(c))).collect();
            let sql = format!(
                "UPDATE {table} SET {} WHERE {}",
                assignments.join(", "),
                key_condition(&key)
            );
            execute(conn, &sql, set.values().chain(key.values()))
        }
        Op::Remove => {
            let key = object(e.old_key.as_deref())?;
            let sql = format!("DELETE FROM {table} WHERE {}", key_condition(&key));
            execute(conn, &sql, key.values())
        }
        Op::Ddl => {
            let data: Value = serde_json::from_str(e.data.as_deref().unwrap_or("{}"))
                .map_err(|err| err.to_string())?;
            let sql = data
                .get("sql")
                .and_then(Value::as_str)
                .ok_or("DDL entry without sql")?;
            // As on the primary: capture triggers must not stand in an ALTER TABLE's way.
            if let Some(o) = schema_object(sql).filter(|o| o.verb == "ALTER") {
                capture::drop_triggers_for(conn, &o.name).map_err(|err| err.to_string())?;
            }
            conn.execute_batch(sql).map_err(|err| err.to_string())?;
            capture::reconcile_triggers(conn).map_err(|err| err.to_string())
        }
        Op::CreateDatabase | Op::DropDatabase => Err("database event inside a database".into()),
    }
}

fn object(json: Option<&str>) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str(json.unwrap_or("{}")) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected a JSON object, got {other}")),
        Err(err) => Err(err.to_string()),
    }
}

/// `rowid` stays a keyword (it is not a column); every other name is quoted.
pub(crate) fn column(name: &str) -> String {
    if name == "rowid" {
        name.to_string()
    } else {
        ident(name)
    }
}

fn key_condition(key: &Map<String, Value>) -> String {
    let parts: Vec<String> = key.keys().map(|c| format!("{} IS ?", column(c))).collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(" AND ")
    }
}

fn execute<'a>(
    conn: &Connection,
    sql: &str,
    values: impl Iterator<Item = &'a Value>,
) -> std::result::Result<(), String> {
    let values: Vec<SqlValue> = values
        .map(decode_value)
        .collect::<std::result::Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    let changed = stmt
        .execute(params_from_iter(values))
        .map_err(|e| e.to_string())?;
    if changed == 0 {
        return Err(format!("no row matched: `{sql}`"));
    }
    Ok(())
}
