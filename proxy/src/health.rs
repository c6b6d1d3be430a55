//! Health checks: every `healthIntervalMillis`, each instance's admin API is asked for its role
//! and committed sequence (an instance without an admin port is pinged with `SELECT 1`).
//!
//! A replica is behind when its sequence is below the primary's; the proxy measures how long it
//! has been behind and marks it Lagging past `maxReplicationLagMs`. After `failCount` failed
//! checks in a row an instance is Down and its pooled connections are dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dirkdb_core::config::FailoverMode;

use crate::backend::{Backend, HealthState};
use crate::http::get_json;
use crate::topology::Topology;

/// What a check found.
struct Finding {
    committed: u64,
    role: Option<String>,
}

/// Checks every instance forever.
pub async fn run(topology: Arc<ArcSwap<Topology>>) {
    let mut behind_since: std::collections::HashMap<String, Instant> = Default::default();
    let mut primary_down_since: Option<Instant> = None;
    loop {
        let t = topology.load_full();
        let interval = Duration::from_millis(t.config.load_balancer.health_interval_millis.max(10));
        let checks: Vec<_> = t
            .backends
            .iter()
            .map(|b| tokio::spawn(check(b.clone(), interval)))
            .collect();
        let mut findings = Vec::with_capacity(checks.len());
        for task in checks {
            findings.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        let primary_seq = findings[t.primary]
            .as_ref()
            .map(|f| f.committed)
            .unwrap_or(0);
        for (i, finding) in findings.into_iter().enumerate() {
            apply(&t, i, finding, primary_seq, &mut behind_since);
        }
        fence_stray_primaries(&t).await;
        watch_primary(&topology, &t, &mut primary_down_since).await;
        tokio::time::sleep(interval).await;
    }
}

/// An instance other than the chosen primary that calls itself PRIMARY (an old primary back
/// from the dead) is told to follow the chosen one.
async fn fence_stray_primaries(t: &Topology) {
    for (i, b) in t.backends.iter().enumerate() {
        let h = b.health();
        if i != t.primary
            && h.state != HealthState::Down
            && h.reported_role.as_deref() == Some("PRIMARY")
        {
            tracing::warn!(instance = %b.id, primary = %t.primary().id, "fencing an instance that still acts as primary");
            crate::failover::fence(t, i).await;
        }
    }
}

/// AUTOMATIC failover once the primary has been down for `failover.detectionMillis`.
async fn watch_primary(
    topology: &Arc<ArcSwap<Topology>>,
    t: &Topology,
    down_since: &mut Option<Instant>,
) {
    if t.primary().health().state != HealthState::Down {
        *down_since = None;
        return;
    }
    let since = *down_since.get_or_insert_with(Instant::now);
    let detection = Duration::from_millis(t.config.failover.detection_millis);
    if t.config.failover.mode != FailoverMode::Automatic || since.elapsed() < detection {
        return;
    }
    match crate::failover::fail_over(topology, None).await {
        Ok(new) => {
            tracing::warn!(%new, "automatic failover done");
            *down_since = None;
        }
        Err(e) => tracing::error!(error = %e, "automatic failover failed; retrying"),
    }
}

async fn check(backend: Arc<Backend>, interval: Duration) -> Result<Finding, String> {
    let timeout = interval.max(Duration::from_millis(500));
    match &backend.admin {
        Some(admin) => {
            let status = get_json(admin, "/replication/status", timeout).await?;
            Ok(Finding {
                committed: status["committedSequence"].as_u64().unwrap_or(0),
                role: status["role"].as_str().map(str::to_string),
            })
        }
        None => {
            let mut conn = backend.checkout(None).await.map_err(|e| e.to_string())?;
            let ping = tokio::time::timeout(timeout, conn.client.execute("SELECT 1")).await;
            match ping {
                Ok(Ok(_)) => {
                    backend.checkin(conn);
                    Ok(Finding {
                        committed: 0,
                        role: None,
                    })
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("ping timed out".into()),
            }
        }
    }
}

fn apply(
    t: &Topology,
    i: usize,
    finding: Result<Finding, String>,
    primary_seq: u64,
    behind_since: &mut std::collections::HashMap<String, Instant>,
) {
    let backend = &t.backends[i];
    let max_lag = t.config.routing.reads.max_replication_lag_ms;
    let fail_count = t.config.load_balancer.fail_count.max(1);
    match finding {
        Ok(f) => {
            let lag_ops = if i == t.primary {
                0
            } else {
                primary_seq.saturating_sub(f.committed)
            };
            let lag_ms = if lag_ops == 0 {
                behind_since.remove(&backend.id);
                0
            } else {
                behind_since
                    .entry(backend.id.clone())
                    .or_insert_with(Instant::now)
                    .elapsed()
                    .as_millis() as u64
            };
            backend.set_health(|h| {
                h.state = if i != t.primary && lag_ms > max_lag {
                    HealthState::Lagging
                } else {
                    HealthState::Up
                };
                h.committed = f.committed;
                h.reported_role = f.role;
                h.lag_operations = lag_ops;
                h.lag_ms = lag_ms;
                h.failures = 0;
                h.last_error = None;
            });
        }
        Err(e) => {
            let mut went_down = false;
            backend.set_health(|h| {
                h.failures += 1;
                h.last_error = Some(e);
                if h.failures >= fail_count && h.state != HealthState::Down {
                    h.state = HealthState::Down;
                    went_down = true;
                }
            });
            if went_down {
                tracing::warn!(instance = %backend.id, "instance is down");
                backend.clear_pool();
            }
        }
    }
}
