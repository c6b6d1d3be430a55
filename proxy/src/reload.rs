//! Live reload of `config.json`: instances added or removed, strategies, lag limits, write
//! concern and timeouts apply to the next statement, without a restart and without closing a
//! client connection.
//!
//! The watching itself (debounced, invalid files refused with the previous settings kept) is
//! `dirkdb_core::config::watch`, shared with the servers and the cache. Instances whose address
//! did not change keep their pooled connections and health; the primary stays the one the proxy chose (a failover's choice outlives the file's stale roles)
//! unless it left the file. A reload takes the topology's writer turn, so it waits for a
//! failover under way and rebuilds from the topology that failover stored.

use std::path::PathBuf;
use std::sync::Arc;

use dirkdb_core::config::ClusterConfig;

use crate::backend::Backend;
use crate::topology::{SharedTopology, Topology};

/// Watches `path` and swaps the topology whenever a valid new version appears.
pub(crate) async fn watch(path: PathBuf, topology: Arc<SharedTopology>) {
    dirkdb_core::config::watch::watch(path, "proxy".into(), |config| {
        let topology = topology.clone();
        async move { apply(config, &topology).await }
    })
    .await
}

/// Applies a loaded and validated file, under the topology's writer turn.
async fn apply(config: ClusterConfig, topology: &SharedTopology) {
    crate::coordinator::on_reload(&config);
    let writer = topology.write().await;
    let updated = writer.store(rebuild(&writer.current(), config));
    tracing::info!(
        instances = updated.backends.len(),
        primary = %updated.primary().id,
        "config.json reloaded"
    );
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
    use std::time::Duration;
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
        apply(ClusterConfig::load(&path).unwrap(), &shared).await;
        assert_eq!(failover.await.unwrap().ok().as_deref(), Some("m2"));
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
}
