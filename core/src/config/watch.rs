//! Watching `config.json` for edits, for every part that applies them live.
//!
//! The file's folder is watched with `notify` (editors often replace a file by renaming a new one
//! over it, which a watch on the file itself would lose); events are debounced for 200 ms, then the
//! file is loaded and validated. A valid file is handed to the caller; an invalid one is refused
//! with an error naming the field, and the previous settings stay in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::ClusterConfig;

/// How long edits settle before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Calls `apply` with each valid new version of the file at `path`, until the task is dropped.
/// `what` names the part in the logs ("proxy", "instance m1", "cache").
pub async fn watch<F, Fut>(path: PathBuf, what: String, mut apply: F)
where
    F: FnMut(ClusterConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
            if ours && !is_read_access(&event.kind) {
                let _ = tx.send(());
            }
        }
    });
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _watcher = match watcher
        .and_then(|mut w| w.watch(folder, RecursiveMode::NonRecursive).map(|()| w))
    {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(part = %what, error = %e, "cannot watch config.json; live reload is off");
            return;
        }
    };
    while rx.recv().await.is_some() {
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        match ClusterConfig::load(&path) {
            Ok(config) => apply(config).await,
            Err(e) => tracing::error!(
                part = %what,
                error = %e,
                "config.json refused; the previous settings stay in force"
            ),
        }
    }
}

/// Opening or reading the file (ours included) raises access events: reacting to them would
/// reload forever. A writer closing it still counts.
pub fn is_read_access(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access)
        if !matches!(access, AccessKind::Close(AccessMode::Write)))
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
