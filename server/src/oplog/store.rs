//! Reading the oplog back: per file, and merged across all files of the instance.
//!
//! The oplog of an instance is spread over its meta file and one `_dirk_oplog` table per
//! database; a [`Source`] is one of them with an open connection. Reads return entries in
//! sequence order, merged across sources, and verify every entry's checksum: a corrupt record
//! is an error, never sent on. The LokiJS-style operations (since N, a range, since N for one
//! table, latest, stats, clear) are built on [`merge`] and [`file_stats`].

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{Entry, Op};

/// One file's oplog, with the database name its entries belong to (`""` for the meta file).
pub struct Source {
    /// Database name.
    pub db: String,
    /// An open connection to the file.
    pub conn: Connection,
}

/// Why entries could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A stored entry does not match its checksum.
    #[error("corrupt oplog entry {seq} in database `{db}`: checksum mismatch")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// Its database.
        db: String,
    },
}

/// Which entries of a file to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Filter<'a> {
    /// Sequence numbers in `(after, to]`.
    Range {
        /// Exclusive lower bound.
        after: u64,
        /// Inclusive upper bound.
        to: u64,
    },
    /// Like `Range`, only for one table.
    Table {
        /// Exclusive lower bound.
        after: u64,
        /// The table.
        table: &'a str,
    },
}

/// Entries of one file with `seq > after`, in order, at most `limit`.
pub(crate) fn read_file_entries(
    conn: &Connection,
    db: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    read_filtered(
        conn,
        db,
        Filter::Range {
            after,
            to: u64::MAX,
        },
        limit,
    )
}

fn read_filtered(
    conn: &Connection,
    db: &str,
    filter: Filter<'_>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    const COLUMNS: &str = "SELECT seq, ts, tbl, op, old_key, new_key, data, crc FROM _dirk_oplog";
    let limit = limit.min(i64::MAX as usize) as i64;
    let mut stmt;
    let rows = match filter {
        Filter::Range { after, to } => {
            stmt = conn.prepare_cached(&format!(
                "{COLUMNS} WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
            ))?;
            stmt.query(params![clamp(after), clamp(to), limit])?
        }
        Filter::Table { after, table } => {
            stmt = conn.prepare_cached(&format!(
                "{COLUMNS} WHERE seq > ?1 AND tbl = ?2 ORDER BY seq LIMIT ?3"
            ))?;
            stmt.query(params![clamp(after), table, limit])?
        }
    };
    rows.and_then(|row| row_to_entry(row, db))
        .collect::<Result<Vec<_>, rusqlite::Error>>()?
        .into_iter()
        .map(|e| {
            if e.checksum_ok() {
                Ok(e)
            } else {
                Err(StoreError::Corrupt {
                    seq: e.seq,
                    db: db.to_string(),
                })
            }
        })
        .collect()
}

fn clamp(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

fn row_to_entry(row: &rusqlite::Row<'_>, db: &str) -> rusqlite::Result<Entry> {
    let op: String = row.get(3)?;
    let op = Op::from_code(&op).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown oplog operation `{op}`").into(),
        )
    })?;
    Ok(Entry {
        seq: row.get::<_, i64>(0)?.max(0) as u64,
        ts: row.get(1)?,
        db: db.to_string(),
        table: row.get(2)?,
        op,
        old_key: row.get(4)?,
        new_key: row.get(5)?,
        data: row.get(6)?,
        crc: row.get::<_, i64>(7)? as u32,
    })
}

/// Entries of every source matching `filter`, merged in sequence order, at most `limit`.
pub(crate) fn merge(
    sources: &[Source],
    filter: Filter<'_>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut all = Vec::new();
    for source in sources {
        all.extend(read_filtered(&source.conn, &source.db, filter, limit)?);
    }
    all.sort_by_key(|e| e.seq);
    all.truncate(limit);
    Ok(all)
}

/// The highest sequence number stored in a file (0 when it has none).
pub(crate) fn max_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM _dirk_oplog", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s.max(0) as u64)
}

/// Counts of one file's oplog.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct FileStats {
    /// Entries stored.
    pub entries: u64,
    /// Lowest sequence stored.
    pub oldest: Option<u64>,
    /// Highest sequence stored.
    pub latest: Option<u64>,
    /// Entries per table.
    pub per_table: BTreeMap<String, u64>,
}

/// Counts one file's entries.
pub(crate) fn file_stats(conn: &Connection) -> rusqlite::Result<FileStats> {
    let (entries, oldest, latest): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), min(seq), max(seq) FROM _dirk_oplog",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut per_table = BTreeMap::new();
    let mut stmt = conn.prepare_cached("SELECT tbl, count(*) FROM _dirk_oplog GROUP BY tbl")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (table, n) = row?;
        per_table.insert(table, n.max(0) as u64);
    }
    Ok(FileStats {
        entries: entries.max(0) as u64,
        oldest: oldest.map(|s| s.max(0) as u64),
        latest: latest.map(|s| s.max(0) as u64),
        per_table,
    })
}

/// Deletes entries with `seq <= through` or older than `before_ms`, always keeping the file's
/// newest entry (it anchors the file's position). Returns how many were deleted.
pub(crate) fn prune_file(
    conn: &Connection,
    through: u64,
    before_ms: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM _dirk_oplog WHERE (seq <= ?1 OR ts < ?2) \
         AND seq < (SELECT max(seq) FROM _dirk_oplog)",
        params![clamp(through), before_ms],
    )
}

/// The highest sequence whose entry is older than `before_ms` in this file (0 if none).
pub(crate) fn last_seq_before(conn: &Connection, before_ms: i64) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM _dirk_oplog WHERE ts < ?1",
        [before_ms],
        |r| r.get::<_, i64>(0),
    )
    .map(|s| s.max(0) as u64)
}
