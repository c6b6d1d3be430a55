//! Health checks: every `healthIntervalMillis`, each instance's admin API is asked for its role
//! and committed sequence (an instance without an admin port is pinged with `SELECT 1`).
//!
//! A replica is behind when its sequence is below the primary's; the proxy measures how long it
//! has been behind and marks it Lagging past `maxReplicationLagMs`. After `failCount` failed
//! checks in a row an instance is Down and its pooled connections are dropped.
//!
//! The same poll keeps every instance in the replication mode `config.json` names
//! (`replication.type`, hot-reloaded): an instance whose `/replication/status` reports another
//! `mode` is sent `POST /replication/mode {"type": …}`, at most once per health interval. An
//! instance that reports no `mode` (an older server) is left alone.
//!
//! The chosen primary is also asked to prove that it can write (`POST
//! /replication/write-probe`: a synced file and a meta-file commit, no database touched and no
//! writer gate taken): a primary that answers but whose disk is full, read-only or stalled
//! fails its checks like an unreachable one, and is replaced after `failover.detectionMillis`.
//! A server without the probe (404) is judged on its status alone.
//!
//! Each round also renews the chosen primary's write lease (in the background, see
//! [`crate::lease`]) and notes every instance's term and whether it stepped down, from which
//! failovers choose the next term and fencing finds stray primaries. Under an ETCD coordinator
//! only the elected proxy renews, fences and fails over ([`crate::coordinator::decides`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dirkdb_core::config::{FailoverMode, ReplicationType};

use crate::backend::{Backend, HealthState};
use crate::http::{get_json, post_json};
use crate::topology::{SharedTopology, Topology};

/// What a check found.
struct Finding {
    committed: u64,
    role: Option<String>,
    mode: Option<String>,
    term: u64,
    fenced: bool,
}

/// Checks every instance forever.
pub(crate) async fn run(topology: Arc<SharedTopology>) {
    let mut behind_since: std::collections::HashMap<String, Instant> = Default::default();
    let mut primary_down_since: Option<Instant> = None;
    let mut mode_switched_at: std::collections::HashMap<String, Instant> = Default::default();
    loop {
        let t = topology.load_full();
        let interval = Duration::from_millis(t.config.load_balancer.health_interval_millis.max(10));
        // Under an ETCD coordinator only the elected proxy renews, fences and fails over; read
        // once, so a round that renewed nothing never fails over.
        let decides = crate::coordinator::decides();
        if decides {
            renew_leases(&t, interval.max(Duration::from_millis(500)));
        }
        let checks: Vec<_> = t
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                tokio::spawn(check(b.clone(), interval, i == t.primary || t.is_master(i)))
            })
            .collect();
        let mut findings = Vec::with_capacity(checks.len());
        for task in checks {
            findings.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        let primary_seq = findings[t.primary]
            .as_ref()
            .map(|f| f.committed)
            .unwrap_or(0);
        let modes: Vec<(usize, String)> = findings
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((i, f.as_ref().ok()?.mode.clone()?)))
            .collect();
        for (i, finding) in findings.into_iter().enumerate() {
            apply(&t, i, finding, primary_seq, &mut behind_since);
        }
        align_replication_modes(&t, &modes, &mut mode_switched_at, interval).await;
        if decides && t.is_multi_primary() {
            // Every master is a primary: none is a stray, and no failover promotes one; the
            // masters get the ownership inputs instead (crate::ownership).
            crate::ownership::round(&t, interval.max(Duration::from_millis(500))).await;
        } else if decides {
            crate::coordinator::complete_promotion(&topology, &t).await;
            fence_stray_primaries(&topology, &t).await;
            watch_primary(&topology, &t, &mut primary_down_since).await;
        } else {
            primary_down_since = None;
            if t.is_multi_primary() {
                // The elected proxy sends the views; this one routes by the plan in etcd.
                crate::ownership::not_deciding();
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Renews the write lease of the primary (MULTI_PRIMARY: of every master).
fn renew_leases(t: &Topology, timeout: Duration) {
    if t.is_multi_primary() {
        for master in t.masters_up() {
            crate::lease::renew(&master, &t.config.failover, timeout);
        }
    } else {
        crate::lease::renew(t.primary(), &t.config.failover, timeout);
    }
}

/// An instance other than the chosen primary that calls itself PRIMARY (an old primary back
/// from the dead) is told to follow the chosen one.
///
/// `seen` is the topology this round of checks began with; a failover may have promoted a node
/// since. So suspects are judged again under the writer's turn, against the latest topology: a
/// node that a failover has just promoted is the primary there, not a stray to fence.
async fn fence_stray_primaries(topology: &SharedTopology, seen: &Topology) {
    if stray_primaries(seen).is_empty() {
        return;
    }
    let writer = topology.write().await;
    let t = writer.current();
    for i in stray_primaries(&t) {
        let b = &t.backends[i];
        tracing::warn!(instance = %b.id, primary = %t.primary().id, "fencing an instance that still acts as primary");
        crate::failover::outrank(&t).await;
        crate::failover::fence(&t, i).await;
    }
}

/// The instances of `t`, other than its primary, that are up and act as primary (or were fenced
/// and must be told again).
fn stray_primaries(t: &Topology) -> Vec<usize> {
    t.backends
        .iter()
        .enumerate()
        .filter(|(i, b)| {
            let h = b.health();
            *i != t.primary
                && h.state != HealthState::Down
                && (h.reported_role.as_deref() == Some("PRIMARY") || crate::lease::is_fenced(&b.id))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Sends `POST /replication/mode` to each instance (index, reported mode) whose reported mode
/// differs from `replication.type`, at most once per `interval` per instance, concurrently.
async fn align_replication_modes(
    t: &Topology,
    reported: &[(usize, String)],
    switched_at: &mut std::collections::HashMap<String, Instant>,
    interval: Duration,
) {
    let wanted = t.config.replication.kind;
    let body = serde_json::json!({ "type": wanted.as_str() }).to_string();
    let timeout = interval.max(Duration::from_millis(500));
    let mut switches = Vec::new();
    for (i, mode) in reported {
        let backend = &t.backends[*i];
        let from = match ReplicationType::try_from(mode.clone()) {
            Ok(from) if from == wanted => continue,
            Ok(from) => from.as_str(),
            Err(e) => {
                tracing::debug!(instance = %backend.id, error = %e, "unknown reported replication mode; left alone");
                continue;
            }
        };
        let Some(admin) = backend.admin.clone() else {
            continue;
        };
        if switched_at
            .get(&backend.id)
            .is_some_and(|at| at.elapsed() < interval)
        {
            continue;
        }
        switched_at.insert(backend.id.clone(), Instant::now());
        let (id, body) = (backend.id.clone(), body.clone());
        switches.push(tokio::spawn(async move {
            let result = post_json(&admin, "/replication/mode", &body, timeout).await;
            (id, from, result)
        }));
    }
    for switch in switches {
        let Ok((id, from, result)) = switch.await else {
            continue;
        };
        match result {
            Ok(answer) => tracing::info!(
                instance = %id,
                from,
                to = wanted.as_str(),
                reported = %answer["mode"],
                "switched the instance's replication mode to config.json's"
            ),
            Err(e) => tracing::warn!(
                instance = %id,
                from,
                to = wanted.as_str(),
                error = %e,
                "could not switch the instance's replication mode (retrying next health check)"
            ),
        }
    }
}

/// AUTOMATIC failover once the primary has been down for `failover.detectionMillis`.
async fn watch_primary(topology: &SharedTopology, t: &Topology, down_since: &mut Option<Instant>) {
    if t.primary().health().state != HealthState::Down {
        *down_since = None;
        crate::ack_watermark::failover_over();
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
        // A wait for a caught-up candidate was logged once when it began (see `failover`).
        Err(e) if crate::ack_watermark::failover_waiting().is_some() => {
            tracing::debug!(error = %e, "automatic failover still waiting; retrying")
        }
        Err(e) => tracing::error!(error = %e, "automatic failover failed; retrying"),
    }
}

/// One check of one instance; `primary`: it is the chosen primary, which must also pass the
/// write probe.
async fn check(
    backend: Arc<Backend>,
    interval: Duration,
    primary: bool,
) -> Result<Finding, String> {
    let timeout = interval.max(Duration::from_millis(500));
    match &backend.admin {
        Some(admin) => {
            let status = get_json(admin, "/replication/status", timeout)
                .await
                .map_err(|e| e.to_string())?;
            if primary && status["role"] == "PRIMARY" {
                probe_write(admin, timeout).await?;
                crate::lease::check_majority(&status)?;
            }
            Ok(Finding {
                committed: status["committedSequence"].as_u64().unwrap_or(0),
                role: status["role"].as_str().map(str::to_string),
                mode: status["mode"].as_str().map(str::to_string),
                term: status["term"].as_u64().unwrap_or(0),
                fenced: status["fenced"] == true,
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
                        mode: None,
                        term: 0,
                        fenced: false,
                    })
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("ping timed out".into()),
            }
        }
    }
}

/// The primary's write probe; a server that has none (404) passes.
async fn probe_write(admin: &str, timeout: Duration) -> Result<(), String> {
    match post_json(admin, "/replication/write-probe", "", timeout).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(format!("the write probe failed ({e})")),
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
            crate::lease::note_status(&backend.id, f.term, f.fenced);
            let lag_ops = if i == t.primary || t.is_master(i) {
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
                h.state = if i != t.primary && !t.is_master(i) && lag_ms > max_lag {
                    HealthState::Lagging
                } else {
                    HealthState::Up
                };
                h.committed = f.committed;
                h.reported_role = f.role;
                h.reported_mode = f.mode;
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
