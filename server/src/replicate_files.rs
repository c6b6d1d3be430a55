//! `dirkdb replicate-files`: one-way replication of the database files of one directory into
//! another, the job of DirkDB's FileReplicator, done so that a copy is always a state the
//! database really had and a reader of the destination never sees a half-written file.
//!
//! One pass ([`FileReplicator::pass`]) goes like this:
//!
//! 1. **List** `--from`: every regular file named `*.db`, except names starting with `_dirk`
//!    (DirkDB's own metadata) or `.`; `-wal`, `-shm`, journals and temporary files never match.
//!    A file whose first 16 bytes are not `SQLite format 3\0` is skipped with a warning.
//! 2. **Cheap check**: the [`Stamp`] of the `.db` and of its `-wal` (size, mtime, inode).
//!    When it equals the stamp remembered with the last copy, nothing else is done. A stamp is
//!    only remembered once it is *settled* (its newest time at least two seconds old when it was
//!    read), so a write landing in the same clock tick as the check can never hide (the "racy
//!    git" rule): a database written recently is compared by content at the next pass again.
//! 3. **Snapshot**: [`file_copy::snapshot_database`] from a read-only connection
//!    ([`file_copy::open_source`]) copies the database in one read transaction into a work
//!    file, never a raw copy of a file that a writer may be changing.
//! 4. **Compare**: the snapshot's [`PageMap`] against the map of the last copy installed (kept in
//!    memory and in `--to/.dirkdb-replicate-files/state.json`; without it, e.g. after the state
//!    file was lost, the map of a snapshot of the destination itself). Equal maps: nothing is
//!    written. Otherwise [`file_copy::changed_pages`] says how many pages changed, which the
//!    log reports with the bytes.
//! 5. **Verify and install**: the snapshot must pass `PRAGMA integrity_check`, then
//!    [`file_copy::install_copy`] writes it into the live destination in one transaction
//!    (readers see the old content or the new; a database new to `--to` is the snapshot file
//!    itself, renamed into place complete), and the destination is read back through a second
//!    snapshot whose whole-file CRC must equal the first one's.
//! 6. **Deletions**: a database this tool installed whose source is gone is removed from
//!    `--to` with its `-wal` and `-shm`. Files in `--to` it never installed are left alone,
//!    and nothing is removed when `--from` cannot be listed.
//!
//! A failure (unreadable or locked file, failed check) is logged with the database's name, the
//! other databases go on, and the database is tried again at the next pass.
//!
//! [`watch`] runs passes until told to stop: after a change reported by `notify` in `--from`
//! (waiting [`COALESCE`] for the rest of a burst) and every interval, which also catches
//! anything the watcher missed. One tool at a time may write into a given `--to`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;
use crate::file_copy::{self, PageMap};

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// Folder of `--to` that holds the state file and the work copies.
pub const WORK_DIR: &str = ".dirkdb-replicate-files";
/// The state file inside [`WORK_DIR`].
const STATE_FILE: &str = "state.json";
/// How old a stamp's newest time must be before the stamp alone may say "unchanged".
const SETTLE: Duration = Duration::from_secs(2);
/// How long to gather more change events after the first one before a pass.
pub const COALESCE: Duration = Duration::from_millis(50);
/// How often a waiting [`watch`] looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Why the tool cannot start, or why one database could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The directories given on the command line cannot work.
    #[error("{0}")]
    Setup(String),
    /// A file operation failed.
    #[error("{what} `{}`: {error}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        error: io::Error,
    },
    /// One step of copying a database failed.
    #[error("{step} failed: {error}")]
    Step {
        /// Which step (snapshot, integrity check, install, read-back check).
        step: &'static str,
        /// Why.
        error: ServerError,
    },
}

/// Wraps an I/O error with what was done and to which path.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ReplicateError {
    let path = path.to_path_buf();
    move |error| ReplicateError::Io { what, path, error }
}

/// Wraps a copy error with the step that failed.
fn step(step: &'static str) -> impl FnOnce(ServerError) -> ReplicateError {
    move |error| ReplicateError::Step { step, error }
}

/// Size, times and identity of one file: what the cheap change check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: u64,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        let mtime_ns = meta.modified().map(epoch_ns).unwrap_or(0);
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            mtime_ns,
            inode,
        }
    }
}

/// Nanoseconds since the epoch (0 before it, saturated far after it).
fn epoch_ns(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The stamps of a database file and of its `-wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The `.db` file.
    pub db: FileStamp,
    /// The `-wal` file, when there is one.
    pub wal: Option<FileStamp>,
}

impl Stamp {
    /// Reads the stamps of `db` and `db-wal`.
    pub fn read(db: &Path) -> io::Result<Stamp> {
        let db_stamp = FileStamp::of(&fs::metadata(db)?);
        let wal = match fs::metadata(companion(db, "-wal")) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Stamp { db: db_stamp, wal })
    }

    /// True when every time in the stamp is at least [`SETTLE`] older than `now`: a later write
    /// then necessarily changes the stamp.
    pub fn settled(&self, now: SystemTime) -> bool {
        let newest = [Some(self.db), self.wal]
            .into_iter()
            .flatten()
            .map(|f| f.mtime_ns)
            .max()
            .unwrap_or(0);
        epoch_ns(now).saturating_sub(newest) >= SETTLE.as_nanos() as u64
    }
}

/// `path` with `suffix` appended to its file name (`a.db` → `a.db-wal`).
fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A page map as the state file stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedMap {
    page_size: u32,
    bytes: u64,
    file_crc: u32,
    crcs: Vec<u32>,
}

impl From<&PageMap> for SavedMap {
    fn from(map: &PageMap) -> SavedMap {
        SavedMap {
            page_size: map.page_size,
            bytes: map.bytes,
            file_crc: map.file_crc,
            crcs: map.crcs.clone(),
        }
    }
}

/// What the tool knows about one database it installed in `--to`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    /// The source's settled stamp when the installed copy was taken.
    stamp: Option<Stamp>,
    /// Page map of the installed copy; `None` when the destination's content is unknown
    /// (an install that failed midway), which forces a full copy.
    map: Option<SavedMap>,
}

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    version: u32,
    databases: BTreeMap<String, Entry>,
}

/// One database copied by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// File name of the database (`shop.db`).
    pub database: String,
    /// Pages that differ from the previous copy (all of them for a new database).
    pub pages_changed: usize,
    /// Pages of the new copy.
    pub pages_total: usize,
    /// Bytes of the new copy.
    pub bytes: u64,
    /// Bytes of the changed pages.
    pub changed_bytes: u64,
    /// Time the copy took, in milliseconds.
    pub millis: u64,
}

impl CopyReport {
    fn new(database: &str, pages_changed: usize, map: &PageMap, started: Instant) -> CopyReport {
        let changed_bytes = pages_changed as u64 * u64::from(map.page_size);
        CopyReport {
            database: database.to_string(),
            pages_changed,
            pages_total: map.crcs.len(),
            bytes: map.bytes,
            changed_bytes: changed_bytes.min(map.bytes),
            millis: started.elapsed().as_millis() as u64,
        }
    }
}

/// One database a pass could not copy or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// File name of the database, or the directory when it could not be listed.
    pub database: String,
    /// Why.
    pub error: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Databases copied.
    pub copied: Vec<CopyReport>,
    /// Databases found unchanged (by stamp or by page map).
    pub unchanged: usize,
    /// Files skipped (not SQLite, or still empty).
    pub skipped: usize,
    /// Databases removed from `--to` because their source is gone.
    pub removed: Vec<String>,
    /// Databases that failed; they are tried again at the next pass.
    pub failed: Vec<Failure>,
}

impl PassReport {
    /// True when the pass neither changed nor failed anything.
    pub fn is_quiet(&self) -> bool {
        self.copied.is_empty() && self.removed.is_empty() && self.failed.is_empty()
    }

    /// One line naming every failure, when there was any.
    pub fn failure_summary(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.database, f.error))
            .collect();
        Some(format!(
            "{} database(s) could not be copied: {}",
            self.failed.len(),
            list.join("; ")
        ))
    }

    /// Logs the pass's totals (at `info` when something happened or `always`, else `debug`).
    pub fn log(&self, elapsed: Duration, always: bool) {
        let ms = elapsed.as_millis() as u64;
        let (copied, removed, failed) = (self.copied.len(), self.removed.len(), self.failed.len());
        let (unchanged, skipped) = (self.unchanged, self.skipped);
        if always || !self.is_quiet() {
            tracing::info!(copied, unchanged, skipped, removed, failed, ms, "pass done");
        } else {
            tracing::debug!(copied, unchanged, skipped, removed, failed, ms, "pass done");
        }
    }
}

/// What happened to one database in a pass.
enum Outcome {
    Copied(CopyReport),
    Unchanged,
    Skipped,
}

/// A work file, removed (with its `-wal`, `-shm` and `-journal`) when dropped.
struct WorkFile(PathBuf);

impl WorkFile {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkFile {
    fn drop(&mut self) {
        let _ = remove_database_files(&self.0);
    }
}

/// Removes a database file and its companions; a file already gone is fine. The `-wal` goes
/// first, so a later database of the same name can never pick up a stale log.
fn remove_database_files(db: &Path) -> io::Result<()> {
    for suffix in ["-wal", "-shm", "-journal", ""] {
        match fs::remove_file(companion(db, suffix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// True for a file name this tool replicates: `*.db`, not `_dirk*`, not hidden, no separator.
pub fn is_database_name(name: &str) -> bool {
    name.len() > 3
        && name.ends_with(".db")
        && !name.starts_with("_dirk")
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
}

/// The names of the database files in `dir` (header not checked yet).
fn list_databases(dir: &Path) -> Result<BTreeSet<String>, ReplicateError> {
    let entries = fs::read_dir(dir).map_err(io_error("cannot list the source directory", dir))?;
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list the source directory", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_database_name(&name) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Whether a file starts with SQLite's header: `Ok(None)` for an empty file.
fn has_sqlite_header(path: &Path) -> Result<Option<bool>, ReplicateError> {
    let mut file = fs::File::open(path).map_err(io_error("cannot open", path))?;
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    file.by_ref()
        .take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(io_error("cannot read", path))?;
    Ok(match header.len() {
        0 => None,
        _ => Some(header == SQLITE_HEADER),
    })
}

/// True when `path` is a readable file starting with SQLite's header.
fn is_database_file(path: &Path) -> bool {
    matches!(has_sqlite_header(path), Ok(Some(true)))
}

/// One-way replicator of the databases of `from` into `to`.
pub struct FileReplicator {
    from: PathBuf,
    to: PathBuf,
    work: PathBuf,
    known: BTreeMap<String, Entry>,
    /// Non-SQLite files already warned about, with the stamp they had then.
    warned: HashMap<String, Stamp>,
    /// True when `known` differs from the state file.
    dirty: bool,
}

impl FileReplicator {
    /// Checks the directories (creating `to` if needed) and loads the state of earlier runs.
    pub fn open(from: &Path, to: &Path) -> Result<FileReplicator, ReplicateError> {
        check_directories(from, to)?;
        let work = to.join(WORK_DIR);
        fs::create_dir_all(&work).map_err(io_error("cannot create", &work))?;
        let mut replicator = FileReplicator {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            work,
            known: BTreeMap::new(),
            warned: HashMap::new(),
            dirty: false,
        };
        replicator.clean_work_dir();
        replicator.known = replicator.load_state();
        Ok(replicator)
    }

    /// Removes work files left by an earlier run that stopped midway.
    fn clean_work_dir(&self) {
        let Ok(entries) = fs::read_dir(&self.work) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name() != STATE_FILE {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The state file's databases; an unreadable file is reported and treated as empty (every
    /// database is then compared with a snapshot of its copy in `to`).
    fn load_state(&self) -> BTreeMap<String, Entry> {
        let path = self.work.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the state file; every database is compared with its copy again");
                return BTreeMap::new();
            }
        };
        match serde_json::from_str::<SavedState>(&text) {
            Ok(state) => state
                .databases
                .into_iter()
                .filter(|(name, _)| is_database_name(name))
                .collect(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the state file is damaged; every database is compared with its copy again");
                BTreeMap::new()
            }
        }
    }

    /// Writes the state file (through a temporary file and a rename) when it changed.
    fn save_state(&mut self) {
        if !self.dirty {
            return;
        }
        let state = SavedState {
            version: 1,
            databases: self.known.clone(),
        };
        let path = self.work.join(STATE_FILE);
        let temp = self.work.join("state.json.tmp");
        let written = serde_json::to_vec(&state)
            .map_err(io::Error::other)
            .and_then(|bytes| fs::write(&temp, bytes))
            .and_then(|()| fs::rename(&temp, &path));
        match written {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot save the state file; will retry")
            }
        }
    }

    /// Brings `to` up to date with `from` once: copies what changed, removes what is gone.
    /// Stops between databases when `stop` is set.
    pub fn pass(&mut self, stop: &AtomicBool) -> PassReport {
        let mut report = PassReport::default();
        match list_databases(&self.from) {
            Ok(names) => {
                for name in &names {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.sync_one(name, &mut report);
                }
                if !stop.load(Ordering::Relaxed) {
                    self.remove_deleted(&names, &mut report);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "pass skipped");
                report.failed.push(Failure {
                    database: self.from.display().to_string(),
                    error: e.to_string(),
                });
            }
        }
        self.save_state();
        report
    }

    /// Syncs one database and records the outcome.
    fn sync_one(&mut self, name: &str, report: &mut PassReport) {
        match self.sync(name) {
            Ok(Outcome::Copied(copy)) => {
                tracing::info!(
                    database = %copy.database,
                    pages_changed = copy.pages_changed,
                    pages_total = copy.pages_total,
                    bytes = copy.bytes,
                    changed_bytes = copy.changed_bytes,
                    ms = copy.millis,
                    "database copied"
                );
                report.copied.push(copy);
            }
            Ok(Outcome::Unchanged) => report.unchanged += 1,
            Ok(Outcome::Skipped) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "copy failed; retrying at the next pass");
                report.failed.push(Failure {
                    database: name.to_string(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// The cheap check, then snapshot, compare, and install when the content changed.
    fn sync(&mut self, name: &str) -> Result<Outcome, ReplicateError> {
        let started = Instant::now();
        let source = self.from.join(name);
        let destination = self.to.join(name);
        let stamp = match Stamp::read(&source) {
            Ok(stamp) => stamp,
            // Deleted since the listing: the next pass removes its copy.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::Skipped),
            Err(e) => return Err(io_error("cannot read", &source)(e)),
        };
        let settled = stamp.settled(SystemTime::now());
        let entry = self.known.get(name).cloned().unwrap_or_default();
        if entry.map.is_some() && entry.stamp == Some(stamp) && destination.exists() {
            return Ok(Outcome::Unchanged);
        }
        if !self.is_sqlite(name, &source, stamp)? {
            return Ok(Outcome::Skipped);
        }
        let (snapshot, map) = self.snapshot(&source, "snapshot.db")?;
        let saved = SavedMap::from(&map);
        let old = self.installed_map(entry.map, &destination);
        if old.as_ref() == Some(&saved) {
            tracing::debug!(database = %name, "page maps equal; nothing written");
            self.remember(name, stamp, settled, saved);
            return Ok(Outcome::Unchanged);
        }
        let old_crcs = old.map(|m| m.crcs).unwrap_or_default();
        let changed = file_copy::changed_pages(&old_crcs, &map).len();
        self.install(name, &snapshot, &map, &destination)?;
        self.remember(name, stamp, settled, saved);
        Ok(Outcome::Copied(CopyReport::new(
            name, changed, &map, started,
        )))
    }

    /// The page map of what `destination` holds: the one remembered, or else (state file lost,
    /// install failed midway) one read from the destination itself, whose snapshot is byte for
    /// byte the source's when their content is the same. `None` when it holds no database.
    fn installed_map(&self, remembered: Option<SavedMap>, destination: &Path) -> Option<SavedMap> {
        if !is_database_file(destination) {
            return None;
        }
        remembered.or_else(|| {
            let (_work, map) = self.snapshot(destination, "verify.db").ok()?;
            Some(SavedMap::from(&map))
        })
    }

    /// Checks the header; a non-SQLite file is warned about once per version of it.
    fn is_sqlite(
        &mut self,
        name: &str,
        source: &Path,
        stamp: Stamp,
    ) -> Result<bool, ReplicateError> {
        match has_sqlite_header(source)? {
            Some(true) => Ok(true),
            None => {
                tracing::debug!(database = %name, "empty file; not a database yet");
                Ok(false)
            }
            Some(false) => {
                if self.warned.insert(name.to_string(), stamp) != Some(stamp) {
                    tracing::warn!(file = %source.display(), "not a SQLite database (no `SQLite format 3` header); skipped");
                }
                Ok(false)
            }
        }
    }

    /// Copies the database at `source` in one read transaction into the work file `file`,
    /// and maps it.
    fn snapshot(&self, source: &Path, file: &str) -> Result<(WorkFile, PageMap), ReplicateError> {
        let work = WorkFile(self.work.join(file));
        let connection = file_copy::open_source(source).map_err(step("opening the database"))?;
        file_copy::snapshot_database(&connection, work.path()).map_err(step("snapshot"))?;
        drop(connection);
        let map = PageMap::of_file(work.path()).map_err(step("mapping the snapshot"))?;
        Ok((work, map))
    }

    /// Checks the snapshot, writes it into the live destination, and reads it back.
    fn install(
        &mut self,
        name: &str,
        snapshot: &WorkFile,
        map: &PageMap,
        destination: &Path,
    ) -> Result<(), ReplicateError> {
        file_copy::integrity_check(snapshot.path())
            .map_err(step("integrity check of the snapshot"))?;
        // From here on the destination may change: until the copy is verified, the next pass
        // maps the destination itself instead of trusting a remembered map.
        self.known.insert(name.to_string(), Entry::default());
        self.dirty = true;
        if is_database_file(destination) {
            file_copy::install_copy(snapshot.path(), destination).map_err(step("install"))?;
        } else {
            // Nobody reads a database that does not exist yet (or a file that is none): the
            // verified snapshot moves in whole, so a new database never appears half written.
            remove_database_files(destination).map_err(io_error("cannot clear", destination))?;
            fs::rename(snapshot.path(), destination)
                .map_err(io_error("cannot create", destination))?;
        }
        let (_readback, installed) = self.snapshot(destination, "verify.db")?;
        if installed.file_crc != map.file_crc || installed.bytes != map.bytes {
            return Err(ReplicateError::Step {
                step: "read-back check",
                error: ServerError::Refused(format!(
                    "the destination reads back as {} bytes with crc {:08x}, expected {} bytes with crc {:08x}",
                    installed.bytes, installed.file_crc, map.bytes, map.file_crc
                )),
            });
        }
        Ok(())
    }

    /// Records the copy now installed (and the stamp, when settled).
    fn remember(&mut self, name: &str, stamp: Stamp, settled: bool, map: SavedMap) {
        let entry = Entry {
            stamp: settled.then_some(stamp),
            map: Some(map),
        };
        let old = self.known.insert(name.to_string(), entry.clone());
        let same = old.is_some_and(|o| o.stamp == entry.stamp && o.map == entry.map);
        self.dirty |= !same;
    }

    /// Removes from `to` the databases this tool installed whose source is gone.
    fn remove_deleted(&mut self, present: &BTreeSet<String>, report: &mut PassReport) {
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|name| !present.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            let destination = self.to.join(&name);
            match remove_database_files(&destination) {
                Ok(()) => {
                    tracing::info!(database = %name, "source removed; copy removed");
                    self.known.remove(&name);
                    self.dirty = true;
                    report.removed.push(name);
                }
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "cannot remove the copy; retrying at the next pass");
                    report.failed.push(Failure {
                        database: name,
                        error: format!("cannot remove `{}`: {e}", destination.display()),
                    });
                }
            }
        }
    }
}

/// `from` must be a directory, and `to` another one (or not exist yet).
fn check_directories(from: &Path, to: &Path) -> Result<(), ReplicateError> {
    let meta = fs::metadata(from).map_err(io_error("cannot open the source directory", from))?;
    if !meta.is_dir() {
        let message = format!("--from `{}` is not a directory", from.display());
        return Err(ReplicateError::Setup(message));
    }
    let from_real = fs::canonicalize(from).map_err(io_error("cannot resolve", from))?;
    if fs::canonicalize(to).is_ok_and(|to_real| to_real == from_real) {
        let message = format!(
            "--from and --to are the same directory (`{}`)",
            from.display()
        );
        return Err(ReplicateError::Setup(message));
    }
    Ok(())
}

/// Runs passes until `stop` is set: one now, then one after each burst of changes in the
/// source directory and one every `interval`. Returns after the pass in progress when stopped.
pub fn watch(mut replicator: FileReplicator, interval: Duration, stop: &AtomicBool) {
    let (changes, events) = mpsc::channel();
    let _watcher = start_watcher(&replicator.from, changes);
    tracing::info!(
        from = %replicator.from.display(),
        to = %replicator.to.display(),
        interval_ms = interval.as_millis() as u64,
        "replicating database files"
    );
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let report = replicator.pass(stop);
        report.log(started.elapsed(), false);
        if !wait_for_work(&events, interval, stop) {
            break;
        }
    }
    tracing::info!("replicate-files stopped");
}

/// Watches `from` and sends a unit for each event that may mean a database changed. `None`
/// (with a warning) when the platform's watcher fails: the interval sweeps still run.
fn start_watcher(from: &Path, changes: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if is_relevant(&event) {
            let _ = changes.send(());
        }
    };
    let watched = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(from, RecursiveMode::NonRecursive).map(|()| w));
    match watched {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the source directory; relying on the interval sweeps");
            None
        }
    }
}

/// True for an event that may change a database: not a mere access or attribute change, and
/// about a `.db` or its `-wal` (or about unknown paths, or a request to rescan).
fn is_relevant(event: &notify::Result<notify::Event>) -> bool {
    let Ok(event) = event else {
        return true;
    };
    if event.need_rescan() {
        return true;
    }
    // Opening a file, or changing its attributes, changes no content (SQLite itself chowns a
    // `-wal` each time a connection opens it, when running as root).
    if matches!(
        event.kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
    ) {
        return false;
    }
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            is_database_name(name.strip_suffix("-wal").unwrap_or(name))
        })
}

/// Waits until the next sweep is due or a change arrives (then [`COALESCE`] more to gather
/// the rest of the burst). False when `stop` was set meanwhile.
fn wait_for_work(events: &mpsc::Receiver<()>, interval: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + interval;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match events.recv_timeout(left.min(STOP_POLL)) {
            Ok(()) => {
                gather_burst(events);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(left.min(STOP_POLL)),
        }
    }
    !stop.load(Ordering::Relaxed)
}

/// Takes in the events arriving within [`COALESCE`] of the first one.
fn gather_burst(events: &mpsc::Receiver<()>) {
    let until = Instant::now() + COALESCE;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if events.recv_timeout(left).is_err() {
            break;
        }
    }
    while events.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names() {
        for name in ["a.db", "shop-2.db", "x.y.db"] {
            assert!(is_database_name(name), "{name}");
        }
        for name in [
            "_dirk_meta.db",
            ".hidden.db",
            "a.db-wal",
            "a.db-shm",
            "a.tmp",
            ".db",
            "a/b.db",
        ] {
            assert!(!is_database_name(name), "{name}");
        }
    }

    #[test]
    fn a_recent_stamp_is_not_settled() {
        let file = FileStamp {
            len: 1,
            mtime_ns: epoch_ns(SystemTime::now()),
            inode: 1,
        };
        let stamp = Stamp {
            db: file,
            wal: None,
        };
        assert!(!stamp.settled(SystemTime::now()));
        assert!(stamp.settled(SystemTime::now() + Duration::from_secs(3)));
    }
}
