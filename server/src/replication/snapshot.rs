//! Full syncs: a consistent copy of every database, taken on the primary and installed on a
//! replica.
//!
//! [`take`] holds the instance's writer gate only while it opens a read transaction on the meta
//! file and on every database (WAL readers see the files as they were when their transaction
//! began, whatever is committed after), so all copies stand at one sequence; then, with the gate
//! given back and writes going on, SQLite's backup API copies each file from its pinned read
//! transaction into a fresh folder. A backup whose source connection holds a read transaction
//! copies that snapshot and never restarts (only writes through the source connection itself
//! would restart it, and these connections write nothing). Writes do not wait for the copy: a
//! full sync of a large database used to hold every writer of the instance for as long as the
//! local copy took. The copies are written without fsync (a crash discards them) and streamed
//! from disk in chunks by the sender, so memory stays bounded whatever the size. [`install`] runs on the
//! replica once every file arrived with a matching CRC: under the gate it retires the open
//! databases (sessions reattach to the new files at their next statement), swaps the files in
//! with renames, and sets the applied position to the snapshot's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::Connection;

use super::protocol::FileInfo;
use crate::catalog::Catalog;
use crate::error::{Result, ServerError};
use crate::meta::META_FILE;
use crate::storage::Storage;

/// Settings of the meta file that describe this node, not the data (kept across a full sync).
pub(crate) const LOCAL_SETTINGS: [&str; 5] = [
    "role",
    "primary",
    "boot_id",
    "clean_shutdown",
    crate::lease::LEASE_REQUIRED_SETTING,
];

/// Copies of every file at one position, deleted when dropped.
pub(crate) struct Snapshot {
    /// Folder holding the copies.
    pub dir: PathBuf,
    /// Sequence all copies stand at.
    pub position: u64,
    /// The copies, meta file first.
    pub files: Vec<FileInfo>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Takes a consistent snapshot of the whole instance.
pub(crate) fn take(state: &Storage) -> Result<Snapshot> {
    let owner = state.new_owner();
    let (position, sources) = state.under_gate(owner, || {
        Ok((state.write_path.committed(), pin_sources(state)?))
    })?;
    let dir = state
        .data_dir()
        .join(format!("_dirk_snapshot_{}", unique()));
    std::fs::create_dir_all(&dir)?;
    let mut snapshot = Snapshot {
        dir,
        position,
        files: Vec::new(),
    };
    for source in sources {
        let copy = snapshot.dir.join(&source.file);
        copy_database(&source.conn, &copy)?;
        source.finish();
        snapshot.files.push(file_info(&copy)?);
    }
    Ok(snapshot)
}

/// A connection holding a read transaction on one file, so that it keeps seeing the file as
/// it was when the transaction began.
struct PinnedSource {
    /// The copy's file name (the meta file's, or `<database>.db`).
    file: String,
    conn: Connection,
    /// The database the connection was leased from (`None` for the meta file's reader).
    database: Option<std::sync::Arc<crate::catalog::Database>>,
}

impl PinnedSource {
    fn pin(
        file: String,
        conn: Connection,
        database: Option<std::sync::Arc<crate::catalog::Database>>,
    ) -> Result<PinnedSource> {
        // A read transaction starts at its first read: read the schema now, under the gate.
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(PinnedSource {
            file,
            conn,
            database,
        })
    }

    /// Ends the read transaction and returns a leased connection to its pool.
    fn finish(self) {
        let _ = self.conn.execute_batch("COMMIT");
        if let Some(db) = self.database {
            db.give_back(self.conn);
        }
    }
}

/// Opens a read transaction on the meta file and on every database; called under the gate.
fn pin_sources(state: &Storage) -> Result<Vec<PinnedSource>> {
    let meta =
        crate::meta::Meta::open_reader(&state.data_dir(), state.write_path.committed_handle())?;
    let mut sources = vec![PinnedSource::pin(META_FILE.to_string(), meta, None)?];
    for name in state.catalog.names() {
        let db = state.catalog.get(&name)?;
        let conn = db.lease()?;
        sources.push(PinnedSource::pin(format!("{name}.db"), conn, Some(db))?);
    }
    Ok(sources)
}

fn copy_database(source: &Connection, to: &Path) -> rusqlite::Result<()> {
    let mut target = Connection::open(to)?;
    // The copy is a scratch file until it is streamed: a crash discards it, so no fsync.
    target.execute_batch("PRAGMA synchronous=OFF")?;
    // 4 MiB (of 4 KiB pages) per step; the source's read transaction keeps the copy consistent.
    Backup::new(source, &mut target)?.run_to_completion(1024, Duration::ZERO, None)?;
    Ok(())
}

fn file_info(path: &Path) -> Result<FileInfo> {
    Ok(FileInfo {
        name: path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
        bytes: std::fs::metadata(path)?.len(),
    })
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// The folder a replica receives a full sync into (emptied first).
pub(crate) fn incoming_dir(state: &Storage) -> Result<PathBuf> {
    let dir = state.data_dir().join("_dirk_incoming");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Checks that a file name sent by a primary is one of ours (no path tricks).
pub(crate) fn accepted_file_name(name: &str) -> bool {
    name == META_FILE
        || name
            .strip_suffix(".db")
            .is_some_and(|stem| crate::catalog::validate_name(stem).is_ok())
}

/// Replaces the replica's whole state with the received snapshot.
pub(crate) fn install(
    state: &Storage,
    incoming: &Path,
    files: &[FileInfo],
    position: u64,
) -> Result<()> {
    if files.iter().any(|f| !accepted_file_name(&f.name))
        || !files.iter().any(|f| f.name == META_FILE)
    {
        return Err(ServerError::Refused(
            "snapshot has unexpected file names".into(),
        ));
    }
    let owner = state.new_owner();
    state.under_gate(owner, || {
        // The snapshot's meta file is the primary's; what belongs to this node stays its own.
        let local: Vec<(&str, Option<String>)> = LOCAL_SETTINGS
            .iter()
            .map(|k| Ok((*k, state.meta.setting(k)?)))
            .collect::<Result<_>>()?;
        let dir = state.data_dir();
        write_marker(&dir, &local)?;
        state.catalog.forget_all();
        for name in Catalog::files_on_disk(&dir)? {
            remove_database_files(&dir, &format!("{name}.db"))?;
        }
        state.meta.replace_file(&incoming.join(META_FILE))?;
        for file in files.iter().filter(|f| f.name != META_FILE) {
            std::fs::rename(incoming.join(&file.name), dir.join(&file.name))?;
        }
        state.catalog.reload()?;
        for (key, value) in &local {
            state.meta.set_setting(key, value.as_deref())?;
        }
        sync_dir(&dir)?;
        std::fs::remove_file(dir.join(INSTALL_MARKER))?;
        sync_dir(&dir)?;
        state.write_path.reset(position);
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(incoming);
    Ok(())
}

/// Present while a full sync is being installed: finding it at start-up means a crash left the
/// data directory half old, half new.
const INSTALL_MARKER: &str = "_dirk_install_pending";

fn write_marker(dir: &Path, local: &[(&str, Option<String>)]) -> Result<()> {
    let settings: serde_json::Map<String, serde_json::Value> = local
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let path = dir.join(INSTALL_MARKER);
    std::fs::write(&path, serde_json::Value::Object(settings).to_string())?;
    std::fs::File::open(&path)?.sync_all()?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// At start-up, before anything opens the data directory: if a full-sync install was cut short,
/// removes every database and the meta file (the node then starts empty and receives a full
/// sync) and returns the node's own settings saved in the marker, to be restored.
pub(crate) fn recover_interrupted_install(dir: &Path) -> Result<Vec<(String, Option<String>)>> {
    let marker = dir.join(INSTALL_MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return Ok(Vec::new());
    };
    tracing::warn!(dir = %dir.display(), "an interrupted full-sync install was found: starting empty for a new full sync");
    for name in Catalog::files_on_disk(dir)? {
        remove_database_files(dir, &format!("{name}.db"))?;
    }
    remove_database_files(dir, META_FILE)?;
    let _ = std::fs::remove_dir_all(dir.join("_dirk_incoming"));
    let settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).unwrap_or_default();
    std::fs::remove_file(&marker)?;
    Ok(settings
        .into_iter()
        .map(|(k, v)| (k, v.as_str().map(str::to_string)))
        .collect())
}

/// Removes a database file with its WAL and shared-memory files.
pub(crate) fn remove_database_files(dir: &Path, file: &str) -> Result<()> {
    for suffix in ["-wal", "-shm", ""] {
        match std::fs::remove_file(dir.join(format!("{file}{suffix}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}
