//! Consistent copies of SQLite database files, their page maps, page deltas, and installing a
//! copy into a live database: the pieces FILE replication and `dirkdb replicate-files` share.
//!
//! * [`snapshot_database`] copies a database with SQLite's backup API in one step, inside one
//!   read transaction of the source, so the copy is a state the database really had (never a
//!   file read mid-write, which is what DirkDB's FileReplicator copied).
//! * [`PageMap`] is a copy's page size, one CRC-32 per page and the CRC-32 of the whole file; the
//!   page CRCs of two copies say which pages differ ([`changed_pages`]), so only those travel
//!   (the LiteFS idea), and the whole-file CRC verifies the result.
//! * [`DeltaWriter`] rebuilds a copy from the previous one plus the changed pages, and refuses
//!   the result unless its whole-file CRC matches.
//! * [`install_copy`] writes a verified copy into a live database through the backup API: one
//!   write transaction on the destination, so its readers (WAL mode) see the old content or the
//!   new, never a mix and never an error, and no file is renamed under them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Result, ServerError};

/// Page size assumed when a file is too short to say.
const DEFAULT_PAGE_SIZE: u32 = 4096;

/// Copies the database behind `source` into a new file `to`, in one backup step (one read
/// transaction of the source).
pub(crate) fn snapshot_database(source: &Connection, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    let mut target = Connection::open(to)?;
    copy_in_one_step(source, &mut target)?;
    target.close().map_err(|(_, e)| ServerError::from(e))?;
    Ok(())
}

/// Opens a database file read-only (for copying it) with a busy timeout.
pub(crate) fn open_source(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// What a copy is made of, page by page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PageMap {
    /// Bytes per page (from the file header).
    pub page_size: u32,
    /// CRC-32 of each page, in order.
    pub crcs: Vec<u32>,
    /// CRC-32 of the whole file.
    pub file_crc: u32,
    /// File length.
    pub bytes: u64,
}

/// Reads a file's page size from its SQLite header (bytes 16–17; 1 means 65536).
fn header_page_size(header: &[u8]) -> u32 {
    match header.get(16..18) {
        Some([1, 0]) => 65536,
        Some(&[hi, lo]) if hi != 0 || lo != 0 => u32::from(u16::from_be_bytes([hi, lo])),
        _ => DEFAULT_PAGE_SIZE,
    }
}

impl PageMap {
    /// Reads `path` once and maps it.
    pub(crate) fn of_file(path: &Path) -> Result<PageMap> {
        let mut file = File::open(path)?;
        let mut header = [0u8; 100];
        let read = file.read(&mut header)?;
        let page_size = header_page_size(&header[..read]);
        file.seek(SeekFrom::Start(0))?;
        let mut map = PageMap {
            page_size,
            ..PageMap::default()
        };
        let mut whole = crc32fast::Hasher::new();
        let mut page = vec![0u8; page_size as usize];
        loop {
            let n = read_full(&mut file, &mut page)?;
            if n == 0 {
                break;
            }
            whole.update(&page[..n]);
            map.crcs.push(crc32fast::hash(&page[..n]));
            map.bytes += n as u64;
            if n < page.len() {
                break;
            }
        }
        map.file_crc = whole.finalize();
        Ok(map)
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Indexes of the pages of `new` that `old` (page CRCs of the previous copy) does not have.
pub(crate) fn changed_pages(old: &[u32], new: &PageMap) -> Vec<u32> {
    new.crcs
        .iter()
        .enumerate()
        .filter(|(i, crc)| old.get(*i) != Some(crc))
        .map(|(i, _)| i as u32)
        .collect()
}

/// Reads page `index` of a file.
pub(crate) fn read_page(file: &mut File, page_size: u32, index: u32) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(u64::from(index) * u64::from(page_size)))?;
    let mut page = vec![0u8; page_size as usize];
    let n = read_full(file, &mut page)?;
    page.truncate(n);
    Ok(page)
}

/// Builds a new copy from the previous one (if any) and the pages that changed.
pub(crate) struct DeltaWriter {
    file: File,
    page_size: u32,
    bytes: u64,
}

impl DeltaWriter {
    /// Starts `target` as a byte copy of `base` (or empty), to become `bytes` long with pages
    /// of `page_size`.
    #[cfg(test)]
    pub(crate) fn start(
        base: Option<&Path>,
        target: &Path,
        page_size: u32,
        bytes: u64,
    ) -> Result<Self> {
        if page_size < 512 || !page_size.is_power_of_two() || page_size > 65536 {
            return Err(ServerError::Refused(format!(
                "page size {page_size} is not a SQLite page size"
            )));
        }
        match base.filter(|b| b.exists()) {
            Some(base) => {
                std::fs::copy(base, target)?;
            }
            None => {
                File::create(target)?;
            }
        }
        let file = std::fs::OpenOptions::new().write(true).open(target)?;
        Ok(DeltaWriter {
            file,
            page_size,
            bytes,
        })
    }

    /// Patches `target` where it lies (created when missing): no copy of the previous version,
    /// so a large database costs only its changed pages. If the result fails its CRC the caller
    /// must delete the file (its pages then match nothing and everything is sent again).
    pub(crate) fn in_place(target: &Path, page_size: u32, bytes: u64) -> Result<Self> {
        if page_size < 512 || !page_size.is_power_of_two() || page_size > 65536 {
            return Err(ServerError::Refused(format!(
                "page size {page_size} is not a SQLite page size"
            )));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)?;
        Ok(DeltaWriter {
            file,
            page_size,
            bytes,
        })
    }

    /// Writes page `index`.
    pub(crate) fn write_page(&mut self, index: u32, page: &[u8]) -> Result<()> {
        let offset = u64::from(index) * u64::from(self.page_size);
        if page.len() > self.page_size as usize || offset + page.len() as u64 > self.bytes {
            return Err(ServerError::Refused(format!(
                "page {index} of {} bytes does not fit a file of {} bytes",
                page.len(),
                self.bytes
            )));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(page)?;
        Ok(())
    }

    /// Cuts the file to its final length, flushes it, and checks its CRC; a mismatch refuses
    /// the copy (the caller asks for it again).
    pub(crate) fn finish(self, target: &Path, expected_crc: u32) -> Result<PageMap> {
        self.file.set_len(self.bytes)?;
        self.file.sync_all()?;
        drop(self.file);
        let map = PageMap::of_file(target)?;
        if map.file_crc != expected_crc {
            return Err(ServerError::Refused(format!(
                "copy `{}` failed its checksum (crc {:08x}, expected {expected_crc:08x}); refused",
                target.display(),
                map.file_crc
            )));
        }
        Ok(map)
    }
}

/// Writes the verified copy at `copy` into the live database at `destination` (created if
/// missing) in one write transaction of the destination.
pub(crate) fn install_copy(copy: &Path, destination: &Path) -> Result<()> {
    let source = open_source(copy)?;
    let mut target = Connection::open(destination)?;
    target.busy_timeout(Duration::from_secs(30))?;
    copy_in_one_step(&source, &mut target)
}

/// Runs a backup as one step of every page (retrying while the destination is busy), so the
/// source is read in a single read transaction.
fn copy_in_one_step(source: &Connection, target: &mut Connection) -> Result<()> {
    let backup = Backup::new(source, target)?;
    for _ in 0..3000 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Err(ServerError::Refused(
        "the destination stayed busy for 30 s; copy abandoned".into(),
    ))
}

/// Runs SQLite's integrity check on a file; `Ok(())` only when it answers `ok`.
pub(crate) fn integrity_check(path: &Path) -> Result<()> {
    let conn = open_source(path)?;
    let answer: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if answer == "ok" {
        Ok(())
    } else {
        Err(ServerError::Refused(format!(
            "`{}` failed its integrity check: {answer}",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(path: &Path, rows: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1) \
             INSERT INTO t(v) SELECT printf('%0200d', i) FROM s",
            [rows],
        )
        .unwrap();
        conn
    }

    fn count(path: &Path) -> i64 {
        open_source(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_small_change_travels_as_a_few_pages_and_rebuilds_the_exact_copy() {
        let dir = tempfile::tempdir().unwrap();
        let live = database(&dir.path().join("live.db"), 5000);
        let first = dir.path().join("first.db");
        snapshot_database(&live, &first).unwrap();
        let old = PageMap::of_file(&first).unwrap();
        assert!(old.crcs.len() > 200, "{} pages", old.crcs.len());
        live.execute("UPDATE t SET v = 'changed' WHERE id = 4000", [])
            .unwrap();
        let second = dir.path().join("second.db");
        snapshot_database(&live, &second).unwrap();
        let new = PageMap::of_file(&second).unwrap();
        let pages = changed_pages(&old.crcs, &new);
        assert!(!pages.is_empty() && pages.len() <= 4, "{pages:?}");

        let rebuilt = dir.path().join("rebuilt.db");
        let mut writer =
            DeltaWriter::start(Some(&first), &rebuilt, new.page_size, new.bytes).unwrap();
        let mut source = File::open(&second).unwrap();
        for &i in &pages {
            writer
                .write_page(i, &read_page(&mut source, new.page_size, i).unwrap())
                .unwrap();
        }
        assert_eq!(writer.finish(&rebuilt, new.file_crc).unwrap(), new);
        integrity_check(&rebuilt).unwrap();

        // A missing page makes the checksum refuse the copy.
        let broken = dir.path().join("broken.db");
        let writer = DeltaWriter::start(Some(&first), &broken, new.page_size, new.bytes).unwrap();
        assert!(writer.finish(&broken, new.file_crc).is_err());
    }

    #[test]
    fn installing_a_copy_keeps_readers_of_the_destination_working() {
        let dir = tempfile::tempdir().unwrap();
        let live = database(&dir.path().join("primary.db"), 100);
        let copy = dir.path().join("copy.db");
        snapshot_database(&live, &copy).unwrap();
        let destination = dir.path().join("secondary.db");
        install_copy(&copy, &destination).unwrap();
        assert_eq!(count(&destination), 100);
        let reader = open_source(&destination).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let before: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        live.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
        snapshot_database(&live, &copy).unwrap();
        install_copy(&copy, &destination).unwrap();
        let during: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            (before, during),
            (100, 100),
            "an open read keeps its snapshot"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&destination), 101);
    }
}
