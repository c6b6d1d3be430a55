//! The instance's own file, `_dirk_meta.db` in the data directory.
//!
//! It holds what belongs to no single database: the oplog entries of CREATE/DROP DATABASE (with
//! the set of live databases updated in the same transaction, so a crash between the event and
//! the file operation is repaired at start-up), the history chain used for partial resyncs after
//! a promotion (Redis PSYNC2: each history remembers the sequence at which it branched off the
//! previous one), the replication term (a number that only grows: every promotion starts a new
//! one, and a node refuses streams, entries and promotions from lower terms), and a few settings
//! (the oplog's pruning floor, a primary set by `POST /replication/configure`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::oplog::{capture, register_functions, store, Entry, Op, CREATE_OPLOG_SQL};
use dirkdb_core::sync::lock;

/// File name of the meta database.
pub(crate) const META_FILE: &str = "_dirk_meta.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _dirk_history (
    ord INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, parent_end INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _dirk_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _dirk_databases (name TEXT PRIMARY KEY);";

/// One history of the chain: its id and the sequence of the previous history it continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLink {
    /// History id.
    pub id: String,
    /// Last sequence of the previous history this one continues (0 for the first).
    pub parent_end: u64,
}

#[cfg(test)]
impl HistoryLink {
    /// A chain from `(id, parent_end)` pairs, for tests.
    pub(crate) fn chain(links: &[(&str, u64)]) -> Vec<HistoryLink> {
        links
            .iter()
            .map(|(id, parent_end)| HistoryLink {
                id: id.to_string(),
                parent_end: *parent_end,
            })
            .collect()
    }
}

/// The meta database.
pub struct Meta {
    conn: Mutex<Connection>,
    path: PathBuf,
    committed: Arc<AtomicU64>,
    synchronous: String,
}

impl Meta {
    /// Opens (or creates) the meta file of a data directory.
    pub fn open(
        dir: &Path,
        committed: Arc<AtomicU64>,
        synchronous: &str,
    ) -> rusqlite::Result<Meta> {
        let path = dir.join(META_FILE);
        let conn = open_meta_connection(&path, &committed, synchronous)?;
        Ok(Meta {
            conn: Mutex::new(conn),
            path,
            committed,
            synchronous: synchronous.to_string(),
        })
    }

    /// Swaps in another meta file (a replica installing a full sync): the current connection is
    /// closed, the old file and its WAL removed, the new file renamed into place and opened.
    pub fn replace_file(&self, new_file: &Path) -> std::io::Result<()> {
        let mut conn = lock(&self.conn);
        let placeholder = Connection::open_in_memory().map_err(std::io::Error::other)?;
        drop(std::mem::replace(&mut *conn, placeholder));
        for suffix in ["-wal", "-shm"] {
            let mut side = self.path.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
        std::fs::rename(new_file, &self.path)?;
        *conn = open_meta_connection(&self.path, &self.committed, &self.synchronous)
            .map_err(std::io::Error::other)?;
        Ok(())
    }

    /// Runs `f` on the meta connection.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        f(&lock(&self.conn))
    }

    /// A second connection to the meta file (for readers that must not hold the lock).
    pub fn open_reader(dir: &Path, committed: Arc<AtomicU64>) -> rusqlite::Result<Connection> {
        let conn = Connection::open(dir.join(META_FILE))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        register_functions(&conn, committed)?;
        Ok(conn)
    }

    /// The history chain, oldest first; a new instance starts one named after itself.
    pub fn history(&self, instance_id: &str) -> rusqlite::Result<Vec<HistoryLink>> {
        self.with(|conn| {
            let chain = read_history(conn)?;
            if !chain.is_empty() {
                return Ok(chain);
            }
            let first = HistoryLink {
                id: new_history_id(instance_id),
                parent_end: 0,
            };
            write_history(conn, std::slice::from_ref(&first))?;
            Ok(vec![first])
        })
    }

    /// Starts a new history after `end` (promotion); returns the new chain.
    pub fn branch(&self, instance_id: &str, end: u64) -> rusqlite::Result<Vec<HistoryLink>> {
        let mut chain = self.history(instance_id)?;
        chain.push(HistoryLink {
            id: new_history_id(instance_id),
            parent_end: end,
        });
        self.with(|conn| write_history(conn, &chain))?;
        Ok(chain)
    }

    /// Adopts the primary's chain and term (a replica follows its primary's history), in one
    /// transaction; the stored term never goes down.
    pub fn adopt_history(&self, chain: &[HistoryLink], term: u64) -> rusqlite::Result<()> {
        self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            replace_history(&tx, chain)?;
            raise_term(&tx, term)?;
            tx.commit()
        })
    }

    /// The highest replication term this node has seen (0 before any promotion).
    pub fn term(&self) -> rusqlite::Result<u64> {
        self.with(read_term)
    }

    /// Raises the stored term to `term` (never lowers it); returns the term now stored.
    pub fn raise_term(&self, term: u64) -> rusqlite::Result<u64> {
        self.with(|conn| {
            raise_term(conn, term)?;
            read_term(conn)
        })
    }

    /// A setting's value.
    pub fn setting(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.with(|conn| {
            conn.query_row(
                "SELECT value FROM _dirk_settings WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Sets (or with `None` removes) a setting.
    pub fn set_setting(&self, key: &str, value: Option<&str>) -> rusqlite::Result<()> {
        self.with(|conn| {
            match value {
                Some(v) => conn.execute(
                    "INSERT INTO _dirk_settings(key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                )?,
                None => conn.execute("DELETE FROM _dirk_settings WHERE key = ?1", [key])?,
            };
            Ok(())
        })
    }

    /// Sequences at or below this may have been pruned: partial syncs need a position above it.
    pub fn pruned_through(&self) -> rusqlite::Result<u64> {
        Ok(self
            .setting("pruned_through")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Raises the pruning floor (never lowers it).
    pub fn set_pruned_through(&self, seq: u64) -> rusqlite::Result<()> {
        if seq > self.pruned_through()? {
            self.set_setting("pruned_through", Some(&seq.to_string()))?;
        }
        Ok(())
    }

    /// Databases that exist according to the event log.
    pub fn live_databases(&self) -> rusqlite::Result<Option<Vec<String>>> {
        self.with(|conn| {
            let initialized: bool = conn
                .query_row(
                    "SELECT value FROM _dirk_settings WHERE key = 'databases_tracked'",
                    [],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !initialized {
                return Ok(None);
            }
            let mut stmt = conn.prepare("SELECT name FROM _dirk_databases ORDER BY name")?;
            let names = stmt.query_map([], |r| r.get(0))?;
            names.collect::<rusqlite::Result<Vec<String>>>().map(Some)
        })
    }

    /// Starts tracking databases from the files found on disk (data directories of older versions).
    pub fn track_databases(&self, names: &[String]) -> rusqlite::Result<()> {
        self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            for name in names {
                tx.execute("INSERT OR IGNORE INTO _dirk_databases(name) VALUES (?1)", [name])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO _dirk_settings(key, value) VALUES ('databases_tracked', '1')",
                [],
            )?;
            tx.commit()
        })
    }

    /// Records CREATE or DROP DATABASE on the primary; returns the entry's sequence.
    pub fn record_database_event(&self, name: &str, op: Op) -> rusqlite::Result<u64> {
        self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let seq = capture::record(&tx, name, op, None)?;
            update_live_set(&tx, name, op)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    /// Applies a CREATE or DROP DATABASE entry received from the primary.
    pub fn apply_database_event(&self, entry: &Entry) -> rusqlite::Result<()> {
        self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            capture::insert_entry(&tx, entry)?;
            update_live_set(&tx, &entry.table, entry.op)?;
            tx.commit()
        })
    }

    /// Entries of the meta oplog after `after`, at most `limit`.
    pub fn entries_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, store::StoreError> {
        store::read_file_entries(&lock(&self.conn), "", after, limit)
    }

    /// The highest sequence in the meta oplog.
    pub fn max_seq(&self) -> rusqlite::Result<u64> {
        self.with(store::max_seq)
    }
}

fn open_meta_connection(
    path: &Path,
    committed: &Arc<AtomicU64>,
    synchronous: &str,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=5000;"
    ))?;
    register_functions(&conn, committed.clone())?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(CREATE_OPLOG_SQL)?;
    Ok(conn)
}

pub(crate) fn update_live_set(conn: &Connection, name: &str, op: Op) -> rusqlite::Result<()> {
    match op {
        Op::CreateDatabase => conn.execute(
            "INSERT OR IGNORE INTO _dirk_databases(name) VALUES (?1)",
            [name],
        )?,
        _ => conn.execute("DELETE FROM _dirk_databases WHERE name = ?1", [name])?,
    };
    conn.execute(
        "INSERT OR REPLACE INTO _dirk_settings(key, value) VALUES ('databases_tracked', '1')",
        [],
    )?;
    Ok(())
}

fn read_term(conn: &Connection) -> rusqlite::Result<u64> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM _dirk_settings WHERE key = 'term'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn raise_term(conn: &Connection, term: u64) -> rusqlite::Result<()> {
    if term > read_term(conn)? {
        conn.execute(
            "INSERT INTO _dirk_settings(key, value) VALUES ('term', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [term.to_string()],
        )?;
    }
    Ok(())
}

fn read_history(conn: &Connection) -> rusqlite::Result<Vec<HistoryLink>> {
    let mut stmt = conn.prepare("SELECT id, parent_end FROM _dirk_history ORDER BY ord")?;
    let rows = stmt.query_map([], |r| {
        Ok(HistoryLink {
            id: r.get(0)?,
            parent_end: r.get::<_, i64>(1)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

/// Replaces the chain in one transaction.
fn write_history(conn: &Connection, chain: &[HistoryLink]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    replace_history(&tx, chain)?;
    tx.commit()
}

/// Replaces the chain inside the caller's transaction.
fn replace_history(tx: &Connection, chain: &[HistoryLink]) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM _dirk_history", [])?;
    for (i, link) in chain.iter().enumerate() {
        tx.execute(
            "INSERT INTO _dirk_history(ord, id, parent_end, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                i as i64,
                link.id,
                link.parent_end as i64,
                dirkdb_core::clock::now_ms()
            ],
        )?;
    }
    Ok(())
}

fn new_history_id(instance_id: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{instance_id}-{:x}-{:x}", nanos, std::process::id())
}

/// Whether a replica at (`history`, `seq`) can continue from `chain` without a full sync: its
/// position must lie inside a history of the chain, before that history was branched from.
pub(crate) fn position_in_chain(chain: &[HistoryLink], history: &str, seq: u64) -> bool {
    let Some(i) = chain.iter().position(|l| l.id == history) else {
        return false;
    };
    match chain.get(i + 1) {
        Some(next) => seq <= next.parent_end,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_positions() {
        let chain = vec![
            HistoryLink {
                id: "a".into(),
                parent_end: 0,
            },
            HistoryLink {
                id: "b".into(),
                parent_end: 100,
            },
        ];
        assert!(position_in_chain(&chain, "b", 500));
        assert!(position_in_chain(&chain, "a", 100));
        assert!(
            !position_in_chain(&chain, "a", 101),
            "diverged after the branch"
        );
        assert!(!position_in_chain(&chain, "x", 1));
    }

    #[test]
    fn history_branch_and_events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let committed = Arc::new(AtomicU64::new(0));
        let meta = Meta::open(dir.path(), committed.clone(), "NORMAL").unwrap();
        let first = meta.history("m1").unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(meta.live_databases().unwrap(), None);
        assert_eq!(
            meta.record_database_event("shop", Op::CreateDatabase)
                .unwrap(),
            1
        );
        committed.store(1, std::sync::atomic::Ordering::Release);
        assert_eq!(
            meta.record_database_event("tmp", Op::CreateDatabase)
                .unwrap(),
            2
        );
        assert_eq!(
            meta.record_database_event("tmp", Op::DropDatabase).unwrap(),
            3
        );
        let chain = meta.branch("m1", 3).unwrap();
        assert_eq!(meta.term().unwrap(), 0);
        assert_eq!(meta.raise_term(4).unwrap(), 4);
        assert_eq!(meta.raise_term(2).unwrap(), 4, "the term never goes down");
        meta.adopt_history(&chain, 3).unwrap();
        drop(meta);
        let meta = Meta::open(dir.path(), committed, "NORMAL").unwrap();
        assert_eq!(meta.history("m1").unwrap(), chain);
        assert_eq!(meta.term().unwrap(), 4, "the term is durable");
        assert_eq!(
            meta.live_databases().unwrap(),
            Some(vec!["shop".to_string()])
        );
        assert_eq!(meta.max_seq().unwrap(), 3);
        meta.set_pruned_through(2).unwrap();
        meta.set_pruned_through(1).unwrap();
        assert_eq!(meta.pruned_through().unwrap(), 2);
    }
}
