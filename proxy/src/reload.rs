//! Live reload of `config.json`: instances added or removed, strategies, lag limits, write
//! concern and timeouts apply to the next statement, without a restart and without closing a
//! client connection.
//!
//! The file's folder is watched with `notify` (editors often replace a file by renaming a new
//! one over it); events are debounced for 200 ms, then the file is loaded and validated. An
//! invalid file is refused with an error naming the field, and the previous topology stays in
//! force. Instances whose address did not change keep their pooled connections and health; the
//! primary stays the one the proxy chose (a failover's choice outlives the file's stale roles)
//! unless it left the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dirkdb_core::config::ClusterConfig;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::topology::Topology;

/// Watches `path` and swaps the topology whenever a valid new version appears.
pub async fn watch(path: PathBuf, topology: Arc<ArcSwap<Topology>>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if !is_read_access(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                {
                    let _ = tx.send(());
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch config.json; live reload is off");
                return;
            }
        };
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, "cannot watch config.json; live reload is off");
        return;
    }
    while rx.recv().await.is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        reload(&path, &topology);
    }
}

/// Opening or reading the file (ours included) raises access events: reacting to them would
/// reload forever. A writer closing it still counts.
fn is_read_access(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access)
        if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// Loads, validates and applies the file once.
pub fn reload(path: &Path, topology: &ArcSwap<Topology>) {
    match ClusterConfig::load(path) {
        Ok(config) => {
            let updated = rebuild(&topology.load(), config);
            tracing::info!(
                instances = updated.backends.len(),
                primary = %updated.primary().id,
                "config.json reloaded"
            );
            topology.store(Arc::new(updated));
        }
        Err(e) => {
            tracing::error!(error = %e, "config.json refused; the previous topology stays in force")
        }
    }
}

fn rebuild(old: &Topology, config: ClusterConfig) -> Topology {
    let backends: Vec<Arc<Backend>> = config
        .instances
        .iter()
        .map(|instance| {
            let fresh = Backend::new(instance);
            old.backends
                .iter()
                .find(|b| b.id == fresh.id && b.addr == fresh.addr && b.admin == fresh.admin)
                .cloned()
                .unwrap_or_else(|| Arc::new(fresh))
        })
        .collect();
    let mut updated = Topology::new(config);
    updated.backends = backends;
    if let Some(i) = updated.index_of(&old.primary().id) {
        updated.primary = i;
    }
    updated.state_file = old.state_file.clone();
    updated
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};
    use notify::EventKind;

    #[test]
    fn reading_the_file_does_not_reload_it_but_writing_does() {
        assert!(is_read_access(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_access(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(!is_read_access(&EventKind::Create(CreateKind::File)));
    }
}
