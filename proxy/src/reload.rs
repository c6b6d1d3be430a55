//! Live reload of `config.json`: instances added or removed, strategies, lag limits, write
//! concern and timeouts apply to the next statement, without a restart and without closing a
//! client connection.
//!
//! The file's folder is watched with `notify` (editors often replace a file by renaming a new
//! one over it); events are debounced for 200 ms, then the file is loaded and validated. An
//! invalid file is refused with an error naming the field, and the previous topology stays in
//! force. Instances whose address did not change keep their pooled connections and health; the
//! primary stays the one the proxy chose (a failover's choice outlives the file's stale roles)
//! unless it left the file. A reload takes the topology's writer turn, so it waits for a
//! failover under way and rebuilds from the topology that failover stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::ClusterConfig;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::topology::{SharedTopology, Topology};

/// Watches `path` and swaps the topology whenever a valid new version appears.
pub async fn watch(path: PathBuf, topology: Arc<SharedTopology>) {
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
        reload(&path, &topology).await;
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
pub async fn reload(path: &Path, topology: &SharedTopology) {
    match ClusterConfig::load(path) {
        Ok(config) => {
            let writer = topology.write().await;
            let updated = writer.store(rebuild(&writer.current(), config));
            tracing::info!(
                instances = updated.backends.len(),
                primary = %updated.primary().id,
                "config.json reloaded"
            );
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An instance admin API that reports a replica and takes `promote_delay` to promote it.
    async fn slow_promoting_admin(promote_delay: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = vec![0u8; 4096];
                    let n = socket.read(&mut head).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&head[..n]).to_string();
                    if head.contains("/replication/promote") {
                        tokio::time::sleep(promote_delay).await;
                    }
                    let body = r#"{"role":"REPLICA","committedSequence":7}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        port
    }

    fn cluster_file(admin: u16, lag_ms: u64) -> String {
        format!(
            r#"{{ "instances": [
              {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 1, "dataDirectory": "a" }},
              {{ "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": 2, "adminPort": {admin},
                 "dataDirectory": "b" }} ],
              "routing": {{ "reads": {{ "maxReplicationLagMs": {lag_ms} }} }} }}"#
        )
    }

    #[tokio::test]
    async fn a_reload_during_a_failover_keeps_both_the_new_primary_and_the_new_file() {
        let admin = slow_promoting_admin(Duration::from_millis(400)).await;
        let dir = std::env::temp_dir().join(format!("dirkdb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, cluster_file(admin, 1000)).unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        let shared = Arc::new(SharedTopology::new(Topology::new(config)));
        let failover = {
            let shared = shared.clone();
            tokio::spawn(async move { crate::failover::fail_over(&shared, Some("m2")).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, cluster_file(admin, 4321)).unwrap();
        reload(&path, &shared).await;
        assert_eq!(failover.await.unwrap(), Ok("m2".to_string()));
        let t = shared.load();
        assert_eq!(
            t.primary().id,
            "m2",
            "the failover's primary survives the reload"
        );
        assert_eq!(
            t.config.routing.reads.max_replication_lag_ms, 4321,
            "the reload survives the failover"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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
