//! Failover: replacing a dead (or unwanted) primary without losing acknowledged writes.
//!
//! The replica with the highest applied position is promoted (`POST /replication/promote`; its
//! new history records where it branched), every other reachable replica is repointed to it
//! (`POST /replication/configure`, a partial sync since they share its history), and the
//! choice is persisted next to `config.json` so that a proxy restart does not resurrect the old
//! primary. The old primary is fenced: whenever the health checker finds an instance other than
//! the chosen primary calling itself PRIMARY, it configures it to follow the chosen one; that
//! node refuses writes from then on, and its writes the new primary never received are saved to
//! a rollback file before it resyncs (see the server's `replication::rollback`).
//!
//! A failover holds the topology's writer turn from its choice to its store, so an automatic and
//! a manual failover, or a failover and a live reload, never overwrite each other.

use std::time::Duration;

use crate::backend::HealthState;
use crate::http::{get_json, post_json};
use crate::topology::{SharedTopology, Topology};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Promotes `to` (or the most advanced reachable replica) and makes it the proxy's primary;
/// returns its id.
pub async fn fail_over(topology: &SharedTopology, to: Option<&str>) -> Result<String, String> {
    let writer = topology.write().await;
    let t = writer.current();
    let target = match to {
        Some(id) => t
            .index_of(id)
            .ok_or_else(|| format!("no instance `{id}` in config.json"))?,
        None => most_advanced_replica(&t).await?,
    };
    if target == t.primary {
        return Err(format!("{} is already the primary", t.backends[target].id));
    }
    let new = &t.backends[target];
    let admin = new
        .admin
        .clone()
        .ok_or_else(|| format!("{} has no adminPort", new.id))?;
    let status = get_json(&admin, "/replication/status", ADMIN_TIMEOUT).await?;
    if status["role"] != "PRIMARY" {
        post_json(&admin, "/replication/promote", "", ADMIN_TIMEOUT).await?;
    }
    let updated = t.with_primary(target);
    persist(&updated);
    let updated = writer.store(updated);
    drop(writer);
    crate::status_page::record_failover(&t, target, to);
    tracing::warn!(old = %t.primary().id, new = %new.id, "failover: new primary");
    for (i, backend) in updated.backends.iter().enumerate() {
        if i != target {
            fence(&updated, i).await;
            backend.clear_pool();
        }
    }
    Ok(new.id.clone())
}

async fn most_advanced_replica(t: &Topology) -> Result<usize, String> {
    let mut best: Option<(u64, usize)> = None;
    for (i, b) in t.backends.iter().enumerate() {
        if i == t.primary || b.health().state == HealthState::Down {
            continue;
        }
        let Some(admin) = &b.admin else { continue };
        if let Ok(status) = get_json(admin, "/replication/status", ADMIN_TIMEOUT).await {
            let seq = status["committedSequence"].as_u64().unwrap_or(0);
            if best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, i));
            }
        }
    }
    best.map(|(_, i)| i)
        .ok_or_else(|| "no reachable replica to promote".to_string())
}

/// Makes instance `i` follow the topology's primary (a no-op when it already does).
pub async fn fence(t: &Topology, i: usize) {
    let (Some(admin), Some(primary_addr)) = (&t.backends[i].admin, Some(t.primary().addr.clone()))
    else {
        return;
    };
    let body = format!(r#"{{"primary":"{primary_addr}"}}"#);
    match post_json(admin, "/replication/configure", &body, ADMIN_TIMEOUT).await {
        Ok(_) => {
            tracing::info!(instance = %t.backends[i].id, primary = %t.primary().id, "instance follows the primary")
        }
        Err(e) => {
            tracing::debug!(instance = %t.backends[i].id, error = %e, "could not repoint instance (yet)")
        }
    }
}

fn persist(t: &Topology) {
    if let Some(path) = &t.state_file {
        let text = serde_json::json!({ "primary": t.primary().id }).to_string();
        if let Err(e) = std::fs::write(path, text) {
            tracing::error!(file = %path.display(), error = %e, "cannot persist the primary choice");
        }
    }
}
