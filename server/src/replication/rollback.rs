//! Rollback files: the writes a former primary committed that its successor never received.
//!
//! When a node rejoins a topology whose history branched off its own before its last entry
//! (it was the primary, lost contact, and a replica was promoted), the primary sends it a full
//! sync. Before that sync replaces its data, the entries past the branch point are written to
//! `<dataDirectory>/rollback/rollback-<ms>.jsonl`, one JSON entry per line, so an operator can
//! inspect and re-apply them: they are never silently merged or lost.

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
    let Some(own_history) = own.last() else {
        return Ok(None);
    };
    let Some(i) = new_chain.iter().position(|l| l.id == own_history.id) else {
        return Ok(None);
    };
    let Some(branch) = new_chain.get(i + 1).map(|l| l.parent_end) else {
        return Ok(None);
    };
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
