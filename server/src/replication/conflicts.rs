//! MULTI_PRIMARY conflicts (issue #16 item 5): a row changed on two masters, neither change made
//! with the other in view, detected row by row as a master applies another master's stream.
//!
//! **Versions.** Each master knows, for every row it holds, the change that made its current
//! state: its own latest change of the row (its oplog, read through the `_dirk_oplog_tbl` index
//! this module adds), or the last change it applied from another master (`_dirk_row_versions`
//! in each database file: origin, sequence, and what that origin had applied of the others when
//! it committed it — [`super::knowledge`]). An incoming change of origin `B` is judged against the
//! current version ([`judge`]):
//! * the version is `B`'s own, or `B` had applied it when it made its change: applied;
//! * the version's origin had already applied the incoming change when it made its own (the
//!   incoming one arrives late, on another stream): skipped, it is superseded;
//! * otherwise the two were made apart: a **conflict**.
//!
//! **Keys.** Rows are keyed by their primary key (an `INTEGER PRIMARY KEY` is the rowid), and
//! by the rowid in a table without one. A rowid table with another primary key (TEXT,
//! composite) is keyed by that key, and its rows travel between masters by that key alone
//! ([`KeyShape::keyed_entry`]): each master assigns its own rowids to them, so two masters
//! inserting different keys under one rowid while apart both keep both rows (checksums compare
//! such tables by their primary key, `crate::checksum`).
//!
//! **Who resolves.** Every conflict is recorded and resolved by one master: the row's *home*,
//! its table's owner by DirkDB's rendezvous over every configured master (where its writes go
//! whenever all masters are up). The home is the *target*, the other master's change the
//! *source*. `replication.conflicts` in `config.json` gives the strategy per table, database or
//! by default: `SOURCE_WINS` applies the source's change, `TARGET_WINS` keeps the home's row,
//! and both write the row as it then stands as a new change of the home's own, which every
//! master applies after both versions, so all end equal. `MANUAL` keeps the home's row and the
//! conflict open (`dirkdb_conflicts` in the meta file, `SHOW CONFLICTS`) until a person resolves
//! it (`RESOLVE CONFLICT <id> KEEP LOCAL|REMOTE`), which writes the chosen row the same way.
//! A master that is not the home leaves a conflicting change unapplied (logged) and waits for
//! the home's resolution; it records it too, in its own `dirkdb_conflicts` with the home named
//! (`home`) and state `held` ([`record_held`], one per row: a newer change of the row replaces
//! the one held), so `SHOW CONFLICTS` on it lists what waits for a home that is down, and marks
//! it resolved when it applies the home's resolution: a change of the row by the home made in
//! view of the held change ([`HeldFor::resolved_by`], [`mark_held_resolved`]).
//! `RESOLVE CONFLICT` refuses a held one, naming its home.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::oplog::capture::ident;
use crate::oplog::{decode_value, encode_value, entry_crc, Entry, Op};
use crate::storage::Storage;
use dirkdb_core::clock::now_ms;
use dirkdb_core::config::ConflictStrategy;

/// The meta file's relation of conflicts (`SHOW CONFLICTS`).
pub(crate) const META_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS dirkdb_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    database TEXT NOT NULL, tbl TEXT NOT NULL, row_key TEXT NOT NULL, key_kind TEXT NOT NULL,
    local_origin TEXT NOT NULL, local_seq INTEGER NOT NULL,
    remote_origin TEXT NOT NULL, remote_seq INTEGER NOT NULL, remote_op TEXT NOT NULL,
    remote_key TEXT, remote_row TEXT,
    detected_at_ms INTEGER NOT NULL, strategy TEXT NOT NULL, state TEXT NOT NULL,
    resolution TEXT, resolved_at_ms INTEGER, resolved_seq INTEGER, home TEXT,
    UNIQUE (database, tbl, row_key, remote_origin, remote_seq));
    CREATE TABLE IF NOT EXISTS dirkdb_conflicts_held (issued INTEGER NOT NULL)";

/// Creates the meta file's relation of conflicts, adding `home` (the row's home master, for a
/// conflict held here for it; NULL for one this master is home of) to one made before it.
pub(crate) fn meta_schema(meta: &Connection) -> rusqlite::Result<()> {
    meta.execute_batch(META_SCHEMA)?;
    let has_home = meta
        .query_row(
            "SELECT 1 FROM pragma_table_info('dirkdb_conflicts') WHERE name = 'home'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_home {
        meta.execute_batch("ALTER TABLE dirkdb_conflicts ADD COLUMN home TEXT")?;
    }
    Ok(())
}

/// Each database file's versions of the rows applied from other masters, and the index that
/// finds a master's own changes of one table.
pub(crate) const FILE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _dirk_row_versions (
    tbl TEXT NOT NULL, row_key TEXT NOT NULL, origin TEXT NOT NULL, seq INTEGER NOT NULL,
    known TEXT NOT NULL, local_at INTEGER NOT NULL, PRIMARY KEY (tbl, row_key)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS _dirk_oplog_tbl ON _dirk_oplog(tbl, seq);";

/// How a table's rows are keyed for conflicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyShape {
    /// The key columns as the oplog's key objects name them (`rowid` for the rowid).
    pub columns: Vec<String>,
    /// True when the key is the table's primary key (else the rowid of a table without one).
    pub primary: bool,
    /// False for a WITHOUT ROWID table.
    pub has_rowid: bool,
    /// The stored columns (generated ones left out), as the capture triggers write them.
    pub stored: Vec<String>,
}

impl KeyShape {
    /// `primary key` or `rowid` (the `keyKind` of `SHOW CONFLICTS`).
    pub(crate) fn kind(&self) -> &'static str {
        if self.primary {
            "primary key"
        } else {
            "rowid"
        }
    }

    /// True for a rowid table keyed by another primary key (TEXT, composite…): each master
    /// assigns such a table's rowids itself, so rows travel between masters by that key only.
    pub(crate) fn rowid_is_local(&self) -> bool {
        self.has_rowid && self.columns.iter().all(|c| c != "rowid")
    }

    /// `e` as another master applies it: for a table whose rowid is local
    /// ([`KeyShape::rowid_is_local`]), without the rowid in its key objects, so the insert
    /// replaces (and the update or removal finds) the row of that primary key, never whatever
    /// row sits under the same rowid there.
    pub(crate) fn keyed_entry(&self, e: &Entry) -> Entry {
        let mut out = e.clone();
        if !self.rowid_is_local() {
            return out;
        }
        let strip = |key: &Option<String>| -> Option<String> {
            let text = key.as_deref()?;
            match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(mut object) => {
                    object.remove("rowid");
                    Some(Value::Object(object).to_string())
                }
                Err(_) => Some(text.to_string()),
            }
        };
        out.old_key = strip(&e.old_key);
        out.new_key = strip(&e.new_key);
        out
    }

    /// The conflict key of a row from one of its oplog key objects (`None` without one).
    pub(crate) fn row_key(&self, key: Option<&str>) -> Option<String> {
        let object: Map<String, Value> = serde_json::from_str(key?).ok()?;
        let mut out = Map::new();
        for c in &self.columns {
            out.insert(c.clone(), object.get(c)?.clone());
        }
        Some(Value::Object(out).to_string())
    }
}

/// The key shape of `table` (`None` when it does not exist).
pub(crate) fn key_shape(conn: &Connection, table: &str) -> rusqlite::Result<Option<KeyShape>> {
    let without_rowid: Option<bool> = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(without_rowid) = without_rowid else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    let mut pk: Vec<(i64, String, String)> = Vec::new();
    let mut stored = Vec::new();
    let rows = stmt.query_map([table], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (name, ty, pk_index, hidden) = row?;
        if hidden == 0 {
            stored.push(name.clone());
        }
        if pk_index > 0 {
            pk.push((pk_index, name, ty));
        }
    }
    pk.sort();
    let rowid_alias = !without_rowid && pk.len() == 1 && pk[0].2.eq_ignore_ascii_case("INTEGER");
    let (columns, primary) = if rowid_alias {
        (vec!["rowid".to_string()], true)
    } else if pk.is_empty() {
        (vec!["rowid".to_string()], false)
    } else {
        (pk.into_iter().map(|(_, n, _)| n).collect(), true)
    };
    Ok(Some(KeyShape {
        columns,
        primary,
        has_rowid: !without_rowid,
        stored,
    }))
}

/// The change that made a row what it is on this master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Current {
    /// This master's own change at this sequence.
    Own(u64),
    /// A change applied from another master.
    Applied(Version),
}

/// A row's last change applied from another master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    /// Its origin.
    pub origin: String,
    /// Its sequence there.
    pub seq: u64,
    /// What its origin had applied of the others when it made it.
    pub known: BTreeMap<String, u64>,
    /// This master's committed sequence when it applied it.
    pub local_at: u64,
}

/// What to do with an incoming change of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Made with this master's version in view: apply it.
    Apply,
    /// Already superseded by the version here: skip it.
    Skip,
    /// Made apart from this master's version (its origin and sequence): a conflict.
    Conflict(String, u64),
}

/// Judges the change `seq` of `origin`, whose origin had applied `known` of the others, against
/// the row's current version on master `me`.
pub(crate) fn judge(
    me: &str,
    origin: &str,
    seq: u64,
    known: &BTreeMap<String, u64>,
    current: Option<&Current>,
) -> Verdict {
    let knew = |who: &str| known.get(who).copied().unwrap_or(0);
    match current {
        None => Verdict::Apply,
        Some(Current::Own(own)) if *own > knew(me) => Verdict::Conflict(me.to_string(), *own),
        Some(Current::Own(_)) => Verdict::Apply,
        Some(Current::Applied(v)) if v.origin == origin => Verdict::Apply,
        Some(Current::Applied(v)) if v.known.get(origin).copied().unwrap_or(0) >= seq => {
            Verdict::Skip
        }
        Some(Current::Applied(v)) if v.seq > knew(&v.origin) => {
            Verdict::Conflict(v.origin.clone(), v.seq)
        }
        Some(Current::Applied(_)) => Verdict::Apply,
    }
}

/// The applied version of a row (`None`: none applied here).
pub(crate) fn load_version(
    conn: &Connection,
    table: &str,
    row_key: &str,
) -> rusqlite::Result<Option<Version>> {
    let row: Option<(String, i64, String, i64)> = conn
        .prepare_cached(
            "SELECT origin, seq, known, local_at FROM _dirk_row_versions \
             WHERE tbl = ?1 AND row_key = ?2",
        )?
        .query_row([table, row_key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    Ok(row.map(|(origin, seq, known, local_at)| Version {
        origin,
        seq: seq.max(0) as u64,
        known: serde_json::from_str(&known).unwrap_or_default(),
        local_at: local_at.max(0) as u64,
    }))
}

/// Stores the version of a row just applied.
pub(crate) fn store_version(
    conn: &Connection,
    table: &str,
    row_key: &str,
    v: &Version,
) -> rusqlite::Result<()> {
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    let known = serde_json::to_string(&v.known).unwrap_or_else(|_| "{}".into());
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _dirk_row_versions(tbl, row_key, origin, seq, known, local_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        table,
        row_key,
        v.origin,
        clamp(v.seq),
        known,
        clamp(v.local_at)
    ])?;
    Ok(())
}

/// This master's latest own change of each row of `table` after sequence `after`.
pub(crate) fn own_changes(
    conn: &Connection,
    table: &str,
    after: u64,
    shape: &KeyShape,
) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, old_key, new_key FROM _dirk_oplog WHERE tbl = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![table, after.min(i64::MAX as u64) as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (seq, old, new) = row?;
        for key in [old, new]
            .iter()
            .filter_map(|k| shape.row_key(k.as_deref()))
        {
            out.insert(key, seq.max(0) as u64);
        }
    }
    Ok(out)
}

/// A row as the capture triggers write it: its key object and its image.
pub(crate) type RowImage = (Map<String, Value>, Map<String, Value>);

/// The row of `table` keyed by `row_key` as an oplog key object and row image (`None`: no such
/// row), the form the capture triggers write.
pub(crate) fn row_image(
    conn: &Connection,
    table: &str,
    shape: &KeyShape,
    row_key: &str,
) -> Result<Option<RowImage>, String> {
    let key: Map<String, Value> = serde_json::from_str(row_key).map_err(|e| e.to_string())?;
    let mut selected: Vec<String> = Vec::new();
    if shape.has_rowid {
        selected.push("rowid".into());
    }
    selected.extend(shape.stored.iter().map(|c| ident(c)));
    let condition: Vec<String> = key
        .keys()
        .map(|c| format!("{} IS ?", super::apply::column(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        selected.join(", "),
        ident(table),
        condition.join(" AND ")
    );
    let values: Vec<rusqlite::types::Value> =
        key.values().map(decode_value).collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let mut rows = stmt
        .query(params_from_iter(values))
        .map_err(|e| e.to_string())?;
    let Some(row) = rows.next().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let value = |i: usize| row.get_ref(i).map(encode_value).map_err(|e| e.to_string());
    let mut new_key = Map::new();
    let mut data = Map::new();
    let mut i = 0;
    if shape.has_rowid {
        new_key.insert("rowid".into(), value(0)?);
        i = 1;
    }
    for c in &shape.stored {
        let v = value(i)?;
        if !shape.has_rowid && shape.columns.contains(c) {
            new_key.insert(c.clone(), v.clone());
        }
        data.insert(c.clone(), v);
        i += 1;
    }
    Ok(Some((new_key, data)))
}

/// The entry that writes a resolved row as this master's own change at `seq`: the row as it
/// stands (an insert, which replaces whatever a master holds under its key), or its removal.
pub(crate) fn resolution_entry(
    seq: u64,
    table: &str,
    row_key: &str,
    image: Option<RowImage>,
) -> Entry {
    let ts = now_ms();
    let (op, old_key, new_key, data) = match image {
        Some((key, data)) => (
            Op::Insert,
            None,
            Some(Value::Object(key).to_string()),
            Some(Value::Object(data).to_string()),
        ),
        None => (Op::Remove, Some(row_key.to_string()), None, None),
    };
    let crc = entry_crc(
        seq,
        ts,
        table,
        op.code(),
        old_key.as_deref(),
        new_key.as_deref(),
        data.as_deref(),
    );
    Entry {
        seq,
        ts,
        db: String::new(),
        table: table.to_string(),
        op,
        old_key,
        new_key,
        data,
        crc,
    }
}

/// A conflict as `SHOW CONFLICTS` and `GET /replication/conflicts` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Conflict {
    /// Its number on this master (`RESOLVE CONFLICT <id>`).
    pub id: u64,
    /// The master that recorded it (the row's home, or the master holding it for `home`).
    pub master: String,
    /// Database and table.
    pub database: String,
    /// The table.
    pub table: String,
    /// The row's key (JSON object).
    pub row_key: String,
    /// `primary key` or `rowid`.
    pub key_kind: String,
    /// The version this master held: origin and sequence.
    pub local_origin: String,
    /// Its sequence on its origin.
    pub local_seq: u64,
    /// The change that arrived: origin, sequence and operation (I, U, R).
    pub remote_origin: String,
    /// Its sequence on its origin.
    pub remote_seq: u64,
    /// I, U or R.
    pub remote_op: String,
    /// When it was detected (ms since the epoch).
    pub detected_at_ms: i64,
    /// SOURCE_WINS, TARGET_WINS or MANUAL.
    pub strategy: String,
    /// `open` or `resolved`; for a conflict held here for its row's home, `held: waits for
    /// <home>, the row's home`, then `resolved` once the home's resolution was applied here.
    pub state: String,
    /// `REMOTE` (the source's change won) or `LOCAL` (the home's row won), once resolved.
    pub resolution: Option<String>,
    /// When it was resolved.
    pub resolved_at_ms: Option<i64>,
    /// The home's own entry that wrote the resolved row.
    pub resolved_seq: Option<u64>,
    /// The row's home master when it is not this one (the conflict is held here for it).
    pub home: Option<String>,
}

/// A conflict about to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct Detected<'a> {
    /// The incoming entry.
    pub entry: &'a Entry,
    /// Its origin.
    pub origin: &'a str,
    /// The row's conflict key and key kind.
    pub row_key: &'a str,
    /// `primary key` or `rowid`.
    pub key_kind: &'a str,
    /// The version held here.
    pub local: (&'a str, u64),
    /// The strategy configured.
    pub strategy: ConflictStrategy,
}

/// Records a conflict (once per row and incoming change); returns its id.
pub(crate) fn record(meta: &Connection, d: &Detected<'_>) -> rusqlite::Result<u64> {
    meta_schema(meta)?;
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    let e = d.entry;
    let open = d.strategy == ConflictStrategy::Manual;
    if open {
        // A row already held open takes the newer remote change: one open conflict per row.
        let merged: Option<i64> = meta
            .query_row(
                "UPDATE dirkdb_conflicts SET remote_origin = ?4, remote_seq = ?5, remote_op = ?6, \
                 remote_key = ?7, remote_row = ?8 WHERE database = ?1 AND tbl = ?2 AND row_key = ?3 \
                 AND state = 'open' RETURNING id",
                params![
                    e.db,
                    e.table,
                    d.row_key,
                    d.origin,
                    clamp(e.seq),
                    e.op.code(),
                    e.new_key.as_deref().or(e.old_key.as_deref()),
                    e.data
                ],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = merged {
            return Ok(id.max(0) as u64);
        }
    }
    let resolution = match d.strategy {
        ConflictStrategy::SourceWins => Some("REMOTE"),
        ConflictStrategy::TargetWins => Some("LOCAL"),
        ConflictStrategy::Manual => None,
    };
    let stored = Stored {
        state: if open { "open" } else { "resolved" },
        resolution,
        resolved_at_ms: (!open).then(now_ms),
        home: None,
    };
    insert_conflict(meta, d, &stored)?;
    conflict_id(meta, d)
}

/// How a new row of `dirkdb_conflicts` is stored besides what was detected.
struct Stored<'a> {
    state: &'a str,
    resolution: Option<&'a str>,
    resolved_at_ms: Option<i64>,
    /// The row's home, for a conflict held here for it.
    home: Option<&'a str>,
}

/// Inserts the conflict `d` (once per row and incoming change); returns 1 when it was new.
fn insert_conflict(
    meta: &Connection,
    d: &Detected<'_>,
    stored: &Stored<'_>,
) -> rusqlite::Result<usize> {
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    let e = d.entry;
    meta.execute(
        "INSERT OR IGNORE INTO dirkdb_conflicts(database, tbl, row_key, key_kind, local_origin, \
         local_seq, remote_origin, remote_seq, remote_op, remote_key, remote_row, detected_at_ms, \
         strategy, state, resolution, resolved_at_ms, home) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            e.db,
            e.table,
            d.row_key,
            d.key_kind,
            d.local.0,
            clamp(d.local.1),
            d.origin,
            clamp(e.seq),
            e.op.code(),
            e.new_key.as_deref().or(e.old_key.as_deref()),
            e.data,
            now_ms(),
            d.strategy.as_str(),
            stored.state,
            stored.resolution,
            stored.resolved_at_ms,
            stored.home,
        ],
    )
}

/// The id of the conflict `d` (its row and incoming change).
fn conflict_id(meta: &Connection, d: &Detected<'_>) -> rusqlite::Result<u64> {
    let e = d.entry;
    let id: i64 = meta.query_row(
        "SELECT id FROM dirkdb_conflicts WHERE database = ?1 AND tbl = ?2 AND row_key = ?3 \
         AND remote_origin = ?4 AND remote_seq = ?5",
        params![
            e.db,
            e.table,
            d.row_key,
            d.origin,
            e.seq.min(i64::MAX as u64) as i64
        ],
        |r| r.get(0),
    )?;
    Ok(id.max(0) as u64)
}

/// The state of a conflict held here for its row's home, as stored.
pub(crate) const HELD: &str = "held";

/// Records a conflicting change left unapplied here for the row's home `home` (state
/// [`HELD`]); a row already held takes the newer change, so one is held per row. Returns its id.
pub(crate) fn record_held(
    meta: &Connection,
    d: &Detected<'_>,
    home: &str,
) -> rusqlite::Result<u64> {
    meta_schema(meta)?;
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    let e = d.entry;
    let tx = meta.unchecked_transaction()?;
    let merged: Option<i64> = tx
        .query_row(
            "UPDATE dirkdb_conflicts SET remote_origin = ?4, remote_seq = ?5, remote_op = ?6, \
             remote_key = ?7, remote_row = ?8, local_origin = ?9, local_seq = ?10 \
             WHERE database = ?1 AND tbl = ?2 AND row_key = ?3 AND state = 'held' RETURNING id",
            params![
                e.db,
                e.table,
                d.row_key,
                d.origin,
                clamp(e.seq),
                e.op.code(),
                e.new_key.as_deref().or(e.old_key.as_deref()),
                e.data,
                d.local.0,
                clamp(d.local.1)
            ],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = merged {
        tx.commit()?;
        return Ok(id.max(0) as u64);
    }
    let stored = Stored {
        state: HELD,
        resolution: None,
        resolved_at_ms: None,
        home: Some(home),
    };
    let inserted = insert_conflict(&tx, d, &stored)?;
    let id = conflict_id(&tx, d)?;
    let counted = if inserted == 1 {
        tx.execute("UPDATE dirkdb_conflicts_held SET issued = issued + 1", [])?
    } else {
        1
    };
    if counted == 0 {
        tx.execute("INSERT INTO dirkdb_conflicts_held(issued) VALUES (1)", [])?;
    }
    tx.commit()?;
    Ok(id)
}

/// Marks the conflicts held here for the row `row_key` of `database.table` resolved by its home
/// `home`, whose change `seq` of the row was just applied here; returns how many.
pub(crate) fn mark_held_resolved(
    meta: &Connection,
    row: &HeldRow,
    home: &str,
    seq: u64,
) -> rusqlite::Result<usize> {
    meta_schema(meta)?;
    meta.execute(
        "UPDATE dirkdb_conflicts SET state = 'resolved', resolution = 'HOME', \
         resolved_at_ms = ?5, resolved_seq = ?6 WHERE database = ?1 AND tbl = ?2 \
         AND row_key = ?3 AND home = ?4 AND state = 'held'",
        params![
            row.0,
            row.1,
            row.2,
            home,
            now_ms(),
            seq.min(i64::MAX as u64) as i64
        ],
    )
}

/// A row as held conflicts name it: database, table, conflict key.
pub(crate) type HeldRow = (String, String, String);

/// What a row is held for: its home, and the change held (origin and sequence), which the
/// home's resolution must have seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldFor {
    /// The row's home.
    pub home: String,
    /// The held change's origin.
    pub origin: String,
    /// Its sequence there.
    pub seq: u64,
}

impl HeldFor {
    /// True when a change of the row by `origin`, made having applied `known` of the others, is
    /// the home's resolution of the change held: the home's, made after the held change (on the
    /// home's own stream) or in view of it.
    pub(crate) fn resolved_by(&self, origin: &str, known: &BTreeMap<String, u64>) -> bool {
        origin == self.home
            && (self.origin == self.home
                || known.get(&self.origin).copied().unwrap_or(0) >= self.seq)
    }
}

/// Every row held here for its home, with what it is held for (loaded at start).
pub(crate) fn held_rows(meta: &Connection) -> rusqlite::Result<Vec<(HeldRow, HeldFor)>> {
    meta_schema(meta)?;
    let mut stmt = meta.prepare(
        "SELECT database, tbl, row_key, home, remote_origin, remote_seq FROM dirkdb_conflicts \
         WHERE state = 'held' AND home IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?),
            HeldFor {
                home: r.get(3)?,
                origin: r.get(4)?,
                seq: r.get::<_, i64>(5)?.max(0) as u64,
            },
        ))
    })?;
    rows.collect()
}

/// Notes the entry that wrote a conflict's resolved row (and, for a manual one, the choice).
pub(crate) fn mark_resolved(
    meta: &Connection,
    id: u64,
    resolution: Option<&str>,
    seq: Option<u64>,
) -> rusqlite::Result<()> {
    meta.execute(
        "UPDATE dirkdb_conflicts SET state = 'resolved', \
         resolution = coalesce(?2, resolution), resolved_at_ms = coalesce(resolved_at_ms, ?3), \
         resolved_seq = ?4 WHERE id = ?1",
        params![
            id as i64,
            resolution,
            now_ms(),
            seq.map(|s| s.min(i64::MAX as u64) as i64)
        ],
    )?;
    Ok(())
}

/// Deletes the oldest resolved conflicts beyond the newest `keep`
/// (`replication.conflicts.keepResolved`, held ones resolved by their home counted with them);
/// open and held ones are never deleted. Returns how many went.
pub(crate) fn prune_resolved(meta: &Connection, keep: u64) -> rusqlite::Result<usize> {
    meta.execute(
        "DELETE FROM dirkdb_conflicts WHERE state = 'resolved' AND id NOT IN \
         (SELECT id FROM dirkdb_conflicts WHERE state = 'resolved' ORDER BY id DESC LIMIT ?1)",
        [keep.min(i64::MAX as u64) as i64],
    )
}

/// What a manual resolution needs of a recorded conflict.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The conflict as listed.
    pub conflict: Conflict,
    /// The remote change's key object and row image (`None` for a removal).
    pub remote_key: Option<String>,
    /// Its row image.
    pub remote_row: Option<String>,
}

const COLUMNS: &str = "id, database, tbl, row_key, key_kind, local_origin, local_seq, \
    remote_origin, remote_seq, remote_op, detected_at_ms, strategy, state, resolution, \
    resolved_at_ms, resolved_seq, remote_key, remote_row, home";

fn read_row(master: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let home: Option<String> = r.get(18)?;
    let mut state: String = r.get(12)?;
    if let (Some(home), HELD) = (&home, state.as_str()) {
        state = format!("held: waits for {home}, the row's home");
    }
    Ok(Held {
        conflict: Conflict {
            id: u(0)?,
            master: master.to_string(),
            database: r.get(1)?,
            table: r.get(2)?,
            row_key: r.get(3)?,
            key_kind: r.get(4)?,
            local_origin: r.get(5)?,
            local_seq: u(6)?,
            remote_origin: r.get(7)?,
            remote_seq: u(8)?,
            remote_op: r.get(9)?,
            detected_at_ms: r.get(10)?,
            strategy: r.get(11)?,
            state,
            resolution: r.get(13)?,
            resolved_at_ms: r.get(14)?,
            resolved_seq: r.get::<_, Option<i64>>(15)?.map(|s| s.max(0) as u64),
            home,
        },
        remote_key: r.get(16)?,
        remote_row: r.get(17)?,
    })
}

/// Every conflict recorded on this master (`master`), oldest first.
pub(crate) fn list(meta: &Connection, master: &str) -> rusqlite::Result<Vec<Conflict>> {
    meta_schema(meta)?;
    let mut stmt = meta.prepare(&format!(
        "SELECT {COLUMNS} FROM dirkdb_conflicts ORDER BY id"
    ))?;
    let rows = stmt.query_map([], |r| read_row(master, r))?;
    rows.map(|r| r.map(|h| h.conflict)).collect()
}

/// One recorded conflict (`None`: no such id).
pub(crate) fn held(meta: &Connection, master: &str, id: u64) -> rusqlite::Result<Option<Held>> {
    meta_schema(meta)?;
    meta.query_row(
        &format!("SELECT {COLUMNS} FROM dirkdb_conflicts WHERE id = ?1"),
        [id as i64],
        |r| read_row(master, r),
    )
    .optional()
}

/// This master's conflicts as `GET /replication/conflicts` lists them.
pub(crate) fn listed_json(storage: &Storage) -> crate::error::Result<Vec<Value>> {
    let listed = storage.meta.with(|conn| list(conn, &storage.instance_id))?;
    Ok(listed
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect())
}

/// This master's open and resolved conflicts.
pub(crate) fn counts_of(storage: &Storage) -> crate::error::Result<(u64, u64)> {
    Ok(storage.meta.with(counts)?)
}

/// Open conflicts on this master, and those it resolved (as their rows' home) since its meta
/// file was made (pruned ones included: every conflict recorded took the next id,
/// `sqlite_sequence`, and `dirkdb_conflicts_held` counts the ids that went to held ones).
pub(crate) fn counts(meta: &Connection) -> rusqlite::Result<(u64, u64)> {
    meta_schema(meta)?;
    meta.query_row(
        "SELECT coalesce(sum(state = 'open' AND home IS NULL), 0), \
         max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'dirkdb_conflicts'), 0) \
             - coalesce((SELECT sum(issued) FROM dirkdb_conflicts_held), 0) \
             - coalesce(sum(state = 'open' AND home IS NULL), 0), \
             coalesce(sum(state = 'resolved' AND home IS NULL), 0)) \
         FROM dirkdb_conflicts",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    fn applied(origin: &str, seq: u64, knew: &[(&str, u64)]) -> Current {
        Current::Applied(Version {
            origin: origin.into(),
            seq,
            known: known(knew),
            local_at: 0,
        })
    }

    #[test]
    fn a_change_made_apart_from_the_version_here_is_a_conflict() {
        // m1 wrote the row at 101 while m2, which had applied m1 up to 100, wrote it at 51.
        let v = judge(
            "m1",
            "m2",
            51,
            &known(&[("m1", 100)]),
            Some(&Current::Own(101)),
        );
        assert_eq!(v, Verdict::Conflict("m1".into(), 101));
        // m2 had applied m1's 101 first: no conflict.
        let v = judge(
            "m1",
            "m2",
            52,
            &known(&[("m1", 101)]),
            Some(&Current::Own(101)),
        );
        assert_eq!(v, Verdict::Apply);
        assert_eq!(judge("m1", "m2", 1, &known(&[]), None), Verdict::Apply);
        // On m3: m2's 51 applied, then m1's 101 made without it.
        let here = applied("m2", 51, &[("m1", 100)]);
        let v = judge("m3", "m1", 101, &known(&[("m2", 50)]), Some(&here));
        assert_eq!(v, Verdict::Conflict("m2".into(), 51));
        // The same origin's later change follows its stream.
        assert_eq!(
            judge("m3", "m2", 52, &known(&[]), Some(&here)),
            Verdict::Apply
        );
        // m1's resolution, made after applying m2's 51, supersedes it.
        let v = judge("m3", "m1", 102, &known(&[("m2", 51)]), Some(&here));
        assert_eq!(v, Verdict::Apply);
    }

    #[test]
    fn a_change_the_version_here_already_saw_is_skipped() {
        // m1's resolution (knowing m2 up to 51) arrived before m2's 51 itself.
        let here = applied("m1", 102, &[("m2", 51)]);
        assert_eq!(
            judge("m3", "m2", 51, &known(&[]), Some(&here)),
            Verdict::Skip
        );
        assert_eq!(
            judge("m3", "m2", 52, &known(&[]), Some(&here)),
            Verdict::Conflict("m1".into(), 102)
        );
    }

    #[test]
    fn rows_are_keyed_by_primary_key_else_rowid() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE b(code TEXT PRIMARY KEY, v TEXT);
             CREATE TABLE c(v TEXT, w AS (v || 'x'));
             CREATE TABLE d(x INT, y INT, v, PRIMARY KEY (y, x)) WITHOUT ROWID;",
        )
        .unwrap();
        let a = key_shape(&conn, "a").unwrap().unwrap();
        assert_eq!(
            (a.columns.clone(), a.kind()),
            (vec!["rowid".into()], "primary key")
        );
        let b = key_shape(&conn, "b").unwrap().unwrap();
        assert_eq!(b.columns, ["code"]);
        assert_eq!(
            b.row_key(Some(r#"{"rowid":3,"code":"x"}"#)).as_deref(),
            Some(r#"{"code":"x"}"#)
        );
        let c = key_shape(&conn, "c").unwrap().unwrap();
        assert_eq!(
            (c.kind(), c.stored.clone()),
            ("rowid", vec!["v".to_string()])
        );
        let d = key_shape(&conn, "d").unwrap().unwrap();
        assert_eq!(
            (d.columns.clone(), d.has_rowid),
            (vec!["y".into(), "x".into()], false)
        );
        assert!(key_shape(&conn, "nope").unwrap().is_none());
        conn.execute("INSERT INTO b VALUES ('x', 'it''s')", [])
            .unwrap();
        let (key, data) = row_image(&conn, "b", &b, r#"{"code":"x"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(Value::Object(key).to_string(), r#"{"rowid":1}"#);
        assert_eq!(
            Value::Object(data).to_string(),
            r#"{"code":"x","v":"it's"}"#
        );
        assert!(row_image(&conn, "b", &b, r#"{"code":"y"}"#)
            .unwrap()
            .is_none());
    }

    #[test]
    fn conflicts_are_recorded_once_and_resolved() {
        let meta = Connection::open_in_memory().unwrap();
        let entry = Entry {
            seq: 51,
            ts: 0,
            db: "testdb".into(),
            table: "t".into(),
            op: Op::Update,
            old_key: Some(r#"{"rowid":1}"#.into()),
            new_key: Some(r#"{"rowid":1}"#.into()),
            data: Some(r#"{"v":"m2"}"#.into()),
            crc: 0,
        };
        let d = Detected {
            entry: &entry,
            origin: "m2",
            row_key: r#"{"rowid":1}"#,
            key_kind: "primary key",
            local: ("m1", 101),
            strategy: ConflictStrategy::Manual,
        };
        let id = record(&meta, &d).unwrap();
        assert_eq!(record(&meta, &d).unwrap(), id);
        assert_eq!(counts(&meta).unwrap(), (1, 0));
        let h = held(&meta, "m1", id).unwrap().unwrap();
        assert_eq!(h.remote_row.as_deref(), Some(r#"{"v":"m2"}"#));
        assert_eq!(h.conflict.state, "open");
        mark_resolved(&meta, id, Some("REMOTE"), Some(120)).unwrap();
        let c = &list(&meta, "m1").unwrap()[0];
        assert_eq!(
            (c.state.as_str(), c.resolution.as_deref(), c.resolved_seq),
            ("resolved", Some("REMOTE"), Some(120))
        );
        assert_eq!(counts(&meta).unwrap(), (0, 1));
        // Resolved ones beyond the limit go, oldest first; open ones stay; the count keeps them.
        let again = |seq: u64| Entry {
            seq,
            ..entry.clone()
        };
        let (e52, e53) = (again(52), again(53));
        let second = record(
            &meta,
            &Detected {
                entry: &e52,
                ..d.clone()
            },
        )
        .unwrap();
        mark_resolved(&meta, second, Some("LOCAL"), Some(121)).unwrap();
        let open = record(
            &meta,
            &Detected {
                entry: &e53,
                ..d.clone()
            },
        )
        .unwrap();
        assert!(id < second && second < open);
        assert_eq!(prune_resolved(&meta, 1).unwrap(), 1);
        let last = second;
        let ids: Vec<u64> = list(&meta, "m1").unwrap().iter().map(|c| c.id).collect();
        assert_eq!(
            ids.len(),
            2,
            "the open one and the newest resolved: {ids:?}"
        );
        assert!(ids.contains(&last));
        assert_eq!(counts(&meta).unwrap(), (1, 2));
    }

    #[test]
    fn held_ones_are_one_per_row_never_pruned_unresolved_and_not_counted_as_resolved() {
        let meta = Connection::open_in_memory().unwrap();
        // A relation of an older version, without `home`, with one resolved conflict.
        meta.execute_batch(
            &META_SCHEMA
                .replace(", home TEXT", "")
                .replace("dirkdb_conflicts_held", "unused_before"),
        )
        .unwrap();
        let entry = |seq: u64| Entry {
            seq,
            ts: 0,
            db: "testdb".into(),
            table: "t".into(),
            op: Op::Update,
            old_key: Some(r#"{"rowid":1}"#.into()),
            new_key: Some(r#"{"rowid":1}"#.into()),
            data: Some(r#"{"v":"m1"}"#.into()),
            crc: 0,
        };
        let (e5, e7, e8) = (entry(5), entry(7), entry(8));
        let d = |e| Detected {
            entry: e,
            origin: "m1",
            row_key: r#"{"rowid":1}"#,
            key_kind: "primary key",
            local: ("m3", 3),
            strategy: ConflictStrategy::SourceWins,
        };
        let done = record(&meta, &d(&e5)).unwrap();
        let id = record_held(&meta, &d(&e7), "m1").unwrap();
        assert!(id > done);
        assert_eq!(
            record_held(&meta, &d(&e8), "m1").unwrap(),
            id,
            "one per row"
        );
        let h = held(&meta, "m2", id).unwrap().unwrap().conflict;
        assert_eq!(
            (h.state.as_str(), h.home.as_deref(), h.remote_seq),
            ("held: waits for m1, the row's home", Some("m1"), 8)
        );
        assert_eq!(held_rows(&meta).unwrap().len(), 1);
        assert_eq!(
            prune_resolved(&meta, 0).unwrap(),
            1,
            "the resolved one only"
        );
        assert_eq!(
            counts(&meta).unwrap(),
            (0, 1),
            "the held one is not resolved here"
        );
        let row = (
            "testdb".to_string(),
            "t".to_string(),
            r#"{"rowid":1}"#.to_string(),
        );
        assert_eq!(
            mark_held_resolved(&meta, &row, "m3", 20).unwrap(),
            0,
            "not its home"
        );
        assert_eq!(mark_held_resolved(&meta, &row, "m1", 20).unwrap(), 1);
        let h = held(&meta, "m2", id).unwrap().unwrap().conflict;
        assert_eq!(
            (h.state.as_str(), h.resolution.as_deref(), h.resolved_seq),
            ("resolved", Some("HOME"), Some(20))
        );
        assert!(held_rows(&meta).unwrap().is_empty());
        assert_eq!(counts(&meta).unwrap(), (0, 1));
    }

    #[test]
    fn a_held_change_is_released_by_the_homes_change_made_in_view_of_it() {
        let of_m2 = HeldFor {
            home: "m1".into(),
            origin: "m2".into(),
            seq: 51,
        };
        assert!(of_m2.resolved_by("m1", &known(&[("m2", 51)])));
        assert!(
            !of_m2.resolved_by("m1", &known(&[("m2", 50)])),
            "made before it"
        );
        assert!(
            !of_m2.resolved_by("m3", &known(&[("m2", 99)])),
            "not the home"
        );
        let of_home = HeldFor {
            origin: "m1".into(),
            ..of_m2
        };
        assert!(
            of_home.resolved_by("m1", &known(&[])),
            "later on the home's own stream"
        );
    }
}
