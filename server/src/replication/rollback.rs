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
//! no history at all, every entry the node still holds is saved.

use std::io::Write;
use std::path::PathBuf;

use crate::error::Result;
use crate::meta::HistoryLink;
use crate::oplog::now_ms;
use crate::oplog::store::{self, Filter};
use crate::state::ServerState;

/// Saves this node's entries beyond its branch point in `new_chain`; returns the file written,
/// if there was anything to save.
pub fn save_divergent(state: &ServerState, new_chain: &[HistoryLink]) -> Result<Option<PathBuf>> {
    let own = state.meta.history(&state.instance_id)?;
    let branch = shared_through(&own, new_chain);
    let committed = state.write_path.committed();
    if committed <= branch {
        return Ok(None);
    }
    let sources = state.oplog_sources()?;
    let entries = store::merge(
        &sources,
        Filter::Range {
            after: branch,
            to: committed,
        },
        usize::MAX,
    )?;
    if entries.is_empty() {
        return Ok(None);
    }
    let dir = state.data_dir().join("rollback");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("rollback-{}.jsonl", now_ms()));
    let mut file = std::fs::File::create(&path)?;
    for entry in &entries {
        let line = serde_json::to_string(entry)
            .map_err(|e| crate::error::ServerError::Internal(e.to_string()))?;
        writeln!(file, "{line}")?;
    }
    file.sync_all()?;
    Ok(Some(path))
}

/// The last sequence `own` and `new` certainly share: in the newest history both hold, the
/// sequence at which the first of them moved on to another history (none moved on: everything,
/// `u64::MAX`). 0 when they share no history.
pub fn shared_through(own: &[HistoryLink], new: &[HistoryLink]) -> u64 {
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
        links
            .iter()
            .map(|(id, parent_end)| HistoryLink {
                id: id.to_string(),
                parent_end: *parent_end,
            })
            .collect()
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
