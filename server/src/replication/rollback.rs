//! Rollback files: the writes a former primary committed that its successor never received.
//!
//! When a node rejoins a topology whose history branched off its own before its last entry
//! (it was the primary, lost contact, and a replica was promoted; or it was promoted by hand and
//! then fenced), the primary sends it a full sync. Before that sync replaces its data, the
//! entries past the last point the two histories share are written to
//! `<dataDirectory>/rollback/rollback-<ms>.jsonl`, one JSON entry per line, so an operator can
//! inspect and re-apply them: they are never silently merged or lost.
//!
//! The shared point is found whatever the chains' shapes ([`shared_through`]): the newest
//! history both chains hold, up to where the first of the two left it. When the chains share
//! no history at all, every entry the node still holds is saved. Entries a file holds beyond
//! the node's own position are saved too, whatever the chains say: only a FILE-mode copy newer
//! than its round's position leaves such entries, and nothing checked them against the history
//! (the very ones the new primary holds may be saved with them: a rollback file may hold more
//! than was lost, never less).
//!
//! The OPLOG full sync then compares what the chains cannot vouch for: once the snapshot is
//! received, [`save_divergent_from_snapshot`] saves each database's entries at or below that
//! point which the snapshot's file lacks or holds differently (a node can adopt its primary's
//! chain in a FILE round while another file still holds an older primary's copy).
//!
//! FILE mode has no history chain: a demoted node's databases are replaced by its new primary's
//! copies. Before a copy replaces a database on a node that has not synced with its primary yet
//! (it was repointed or demoted), [`save_divergent_from_copy`] saves every entry of the
//! database's own oplog that the copy lacks or holds differently (compared by sequence and
//! checksum) — the same file format. Entries older than the copy's oldest are not compared (the
//! primary pruned them). A database the new primary no longer has is dropped, on such a node,
//! only after every entry of its oplog was saved ([`save_database`]: the primary holds none of
//! them now, though it may have held some before it dropped the database).

use std::io::Write;
use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension};

use crate::error::Result;
use crate::meta::HistoryLink;
use crate::oplog::store::{self, Filter};
use crate::storage::Storage;
use dirkdb_core::clock::now_ms;

/// Saves this node's entries beyond its branch point in `new_chain`, and every entry its files
/// hold beyond its position (a FILE-mode copy newer than its round's position leaves some: they
/// were never checked against any primary's history); returns the file written, if there was
/// anything to save.
pub(crate) fn save_divergent(
    state: &Storage,
    new_chain: &[HistoryLink],
) -> Result<Option<PathBuf>> {
    let after = saved_after(state, new_chain)?;
    let sources = state.oplog_sources()?;
    let entries = store::merge(
        &sources,
        Filter::Range {
            after,
            to: u64::MAX,
        },
        usize::MAX,
    )?;
    let mut file = RollbackFile::new(state, "");
    file.write(&entries)?;
    file.finish()
}

/// Where [`save_divergent`] starts saving: the branch point in `new_chain`, or the node's
/// position when lower.
pub(crate) fn saved_after(state: &Storage, new_chain: &[HistoryLink]) -> Result<u64> {
    let own = state.meta.history(&state.instance_id)?;
    Ok(shared_through(&own, new_chain).min(state.write_path.committed()))
}

/// OPLOG full sync, once the snapshot is received (in `incoming`) and before it replaces this
/// node's files: saves, per database, the entries at or below `upto` (where
/// [`save_divergent`] started) that the snapshot's file lacks or holds differently, compared
/// by sequence and checksum as [`save_divergent_from_copy`] does, and every entry up to `upto`
/// of a database the snapshot lacks. The chains alone cannot show these: a node that adopted
/// its primary's chain while a file still held another history's entries (a FILE-mode copy
/// newer than its round's position, counted in the node's position after a restart) diverged
/// below its position under the same chain. Returns the files written.
pub(crate) fn save_divergent_from_snapshot(
    state: &Storage,
    incoming: &std::path::Path,
    upto: u64,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in state.catalog.names() {
        let db = state.catalog.get(&name)?;
        let live = db.lease()?;
        let snapshot = incoming.join(format!("{name}.db"));
        let saved = if snapshot.exists() {
            crate::file_copy::open_source(&snapshot)
                .and_then(|copy| save_lacking_upto(state, &name, &live, &copy, upto))
        } else {
            save_file_entries(state, &name, &live, 0, &mut |e| Ok(e.seq <= upto))
        };
        db.give_back(live);
        written.extend(saved?);
    }
    Ok(written)
}

/// The entries of `live` at or below `upto` that `copy` lacks or holds differently.
fn save_lacking_upto(
    state: &Storage,
    db: &str,
    live: &Connection,
    copy: &Connection,
    upto: u64,
) -> Result<Option<PathBuf>> {
    let oldest = store::file_stats(copy)?.oldest;
    let mut held = copy.prepare("SELECT crc FROM _dirk_oplog WHERE seq = ?1")?;
    let mut lacks = |entry: &crate::oplog::Entry| -> Result<bool> {
        if entry.seq > upto {
            return Ok(false);
        }
        let theirs: Option<i64> = held
            .query_row([entry.seq.min(i64::MAX as u64) as i64], |r| r.get(0))
            .optional()?;
        Ok(theirs.map(|c| c as u32) != Some(entry.crc))
    };
    save_file_entries(
        state,
        db,
        live,
        oldest.map_or(0, |o| o.saturating_sub(1)),
        &mut lacks,
    )
}

/// FILE mode: saves the entries of database `db`'s own oplog (`live`) that the copy about to
/// replace it (`copy`, the new primary's file) lacks or holds differently; returns the file
/// written, if there was anything to save.
pub(crate) fn save_divergent_from_copy(
    state: &Storage,
    db: &str,
    live: &Connection,
    copy: &Connection,
) -> Result<Option<PathBuf>> {
    save_lacking_upto(state, db, live, copy, u64::MAX)
}

/// FILE mode: saves every entry of database `db`'s own oplog (`live`), which the new primary
/// no longer has; returns the file written, if there was anything to save.
pub(crate) fn save_database(
    state: &Storage,
    db: &str,
    live: &Connection,
) -> Result<Option<PathBuf>> {
    save_file_entries(state, db, live, 0, &mut |_| Ok(true))
}

/// Saves the entries of `live`'s oplog after `after` for which `lacks` is true.
fn save_file_entries(
    state: &Storage,
    db: &str,
    live: &Connection,
    mut after: u64,
    lacks: &mut dyn FnMut(&crate::oplog::Entry) -> Result<bool>,
) -> Result<Option<PathBuf>> {
    const STEP: usize = 1000;
    let mut file = RollbackFile::new(state, db);
    loop {
        let own = store::read_file_entries(live, db, after, STEP)?;
        let Some(last) = own.last().map(|e| e.seq) else {
            break;
        };
        let mut divergent = Vec::new();
        for entry in own {
            if lacks(&entry)? {
                divergent.push(entry);
            }
        }
        file.write(&divergent)?;
        after = last;
    }
    file.finish()
}

/// A rollback file, created with its first entry.
struct RollbackFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl RollbackFile {
    /// `rollback-<ms>.jsonl`, or `rollback-<ms>-<db>.jsonl` for one database's.
    fn new(state: &Storage, db: &str) -> RollbackFile {
        let name = if db.is_empty() {
            format!("rollback-{}.jsonl", now_ms())
        } else {
            format!("rollback-{}-{db}.jsonl", now_ms())
        };
        RollbackFile {
            path: state.data_dir().join("rollback").join(name),
            file: None,
        }
    }

    fn write(&mut self, entries: &[crate::oplog::Entry]) -> Result<()> {
        for entry in entries {
            let line = serde_json::to_string(entry)
                .map_err(|e| crate::error::ServerError::Internal(e.to_string()))?;
            let file = match &mut self.file {
                Some(f) => f,
                None => {
                    std::fs::create_dir_all(self.path.parent().unwrap_or(&self.path))?;
                    self.file.insert(std::fs::File::create(&self.path)?)
                }
            };
            writeln!(file, "{line}")?;
        }
        Ok(())
    }

    /// Syncs the file; `None` when nothing was written.
    fn finish(self) -> Result<Option<PathBuf>> {
        match self.file {
            None => Ok(None),
            Some(f) => {
                f.sync_all()?;
                Ok(Some(self.path))
            }
        }
    }
}

/// The last sequence `own` and `new` certainly share: in the newest history both hold, the
/// sequence at which the first of them moved on to another history (none moved on: everything,
/// `u64::MAX`). 0 when they share no history.
pub(crate) fn shared_through(own: &[HistoryLink], new: &[HistoryLink]) -> u64 {
    let end = |chain: &[HistoryLink], i: usize| chain.get(i + 1).map_or(u64::MAX, |l| l.parent_end);
    own.iter()
        .enumerate()
        .rev()
        .find_map(|(i, link)| {
            let j = new.iter().position(|l| l.id == link.id)?;
            Some(end(own, i).min(end(new, j)))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(links: &[(&str, u64)]) -> Vec<HistoryLink> {
        HistoryLink::chain(links)
    }

    #[test]
    fn the_shared_point_whatever_the_shapes() {
        let a = chain(&[("a", 0)]);
        let ab = chain(&[("a", 0), ("b", 10)]);
        let ac = chain(&[("a", 0), ("c", 7)]);
        assert_eq!(shared_through(&a, &ab), 10, "old primary, replica promoted");
        assert_eq!(shared_through(&ab, &a), 10, "promoted by hand, then fenced");
        assert_eq!(
            shared_through(&ab, &ac),
            7,
            "two promotions off one history"
        );
        assert_eq!(shared_through(&ac, &ab), 7);
        assert_eq!(
            shared_through(&ab, &ab),
            u64::MAX,
            "same history: nothing diverged"
        );
        assert_eq!(shared_through(&a, &chain(&[("x", 0)])), 0, "nothing shared");
        let abd = chain(&[("a", 0), ("b", 10), ("d", 15)]);
        assert_eq!(shared_through(&abd, &ab), 15);
        assert_eq!(shared_through(&ab, &abd), 15);
    }
}
