//! Who decides a failover (`failover.coordinator`).
//!
//! `LOCAL` (the default): this proxy alone, as it always did; every hook below lets it act.
//!
//! `ETCD`: several proxies share one decision through etcd ([`etcd`]). The cluster's state lives
//! under the configured prefix: `<prefix>/primary` (the current primary and its term, JSON),
//! `<prefix>/leader` (the one proxy that decides, bound to its etcd lease) and
//! `<prefix>/proxies/<id>` (each proxy's liveness under its own lease, with the highest write
//! position it acknowledged under a write concern of at least one). Only the elected proxy
//! renews the primary's write lease, fences stray primaries and fails over; a failover is one
//! etcd transaction that compares the primary record's revision it read (and that this proxy
//! still holds the leader key) and writes the new primary and term. Every proxy watches the
//! record and reroutes as soon as it changes. The term in etcd is the term the new primary is
//! promoted into: the fencing token the servers check.
//!
//! The hooks are process-wide (one proxy per process, like [`crate::lease`]): [`decides`],
//! [`may_fail_over`], [`commit_failover`], [`cluster_watermark`], [`complete_promotion`] and
//! [`status`]. With no ETCD coordinator started they all answer as `LOCAL`.

pub(crate) mod etcd;
mod record;

use std::sync::{Arc, RwLock};

use dirkdb_core::config::{ClusterConfig, CoordinatorConfig};
use serde_json::{json, Value};

use crate::ack_watermark::Position;
use crate::topology::{SharedTopology, Topology};

pub use record::PrimaryRecord;

/// Why the coordinator could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// etcd did not answer (or refused); nothing was decided.
    #[error("etcd unreachable at {endpoints} ({reason}): no failover is decided until it answers (failover.coordinator.endpoints)")]
    Unreachable {
        /// The configured endpoints.
        endpoints: String,
        /// What failed.
        reason: String,
    },
    /// This proxy's etcd lease ended: its liveness and any leadership are gone.
    #[error("this proxy's etcd lease expired (failover.coordinator.leaseMillis): it rejoins with a new one")]
    LeaseExpired,
    /// Another proxy is the elected one.
    #[error("this proxy does not decide failovers: {0} does (failover.coordinator ETCD); ask it")]
    NotLeader(String),
    /// The record changed since it was read, or leadership was lost: nothing was written.
    #[error(
        "etcd's primary record changed or this proxy lost its election: {0}; nothing was written"
    )]
    Conflict(String),
    /// etcd holds something that is not a primary record.
    #[error("etcd key {key} does not hold a DirkDB primary record: {reason}")]
    BadRecord {
        /// The key read.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn active_slot() -> &'static RwLock<Option<Arc<etcd::Etcd>>> {
    static ACTIVE: RwLock<Option<Arc<etcd::Etcd>>> = RwLock::new(None);
    &ACTIVE
}

fn active() -> Option<Arc<etcd::Etcd>> {
    active_slot()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Starts the configured coordinator for the proxy's lifetime: nothing for `LOCAL`; for `ETCD`
/// the task that keeps this proxy's session with etcd (returned, to abort at shutdown). Waits a
/// moment for etcd's first answer so that the proxy routes to etcd's primary from its first
/// statement; when etcd does not answer it starts with the file's primary and keeps trying.
pub async fn start(
    config: &ClusterConfig,
    topology: Arc<SharedTopology>,
) -> Option<tokio::task::JoinHandle<()>> {
    let CoordinatorConfig::Etcd(settings) = &config.failover.coordinator else {
        return None;
    };
    let lb = &config.load_balancer;
    let coordinator = Arc::new(etcd::Etcd::new(
        settings.clone(),
        proxy_id(lb.listen_port),
        format!("{}:{}", lb.listen_host, lb.admin_port),
    ));
    *active_slot().write().unwrap_or_else(|p| p.into_inner()) = Some(coordinator.clone());
    let first_contact = coordinator.first_contact();
    let task = tokio::spawn(coordinator.clone().run(topology));
    let wait = std::time::Duration::from_millis(settings.lease_millis.min(3000));
    if tokio::time::timeout(wait, first_contact).await.is_err() {
        tracing::error!(endpoints = %settings.endpoints.join(","), "etcd did not answer at start: routing to config.json's primary meanwhile, no failover until it answers");
    }
    Some(task)
}

/// This proxy's name among the proxies: the host name and the SQL port.
fn proxy_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "proxy".into());
    format!("{host}:{port}")
}

/// True when this proxy may act on the servers (renew the primary's lease, fence, fail over):
/// always under `LOCAL`; under `ETCD` only while it certainly holds the election.
pub fn decides() -> bool {
    active().is_none_or(|c| c.decides())
}

/// Refuses a failover on a proxy that is not the elected one.
pub fn may_fail_over() -> Result<(), String> {
    match active() {
        Some(c) if !c.decides() => Err(CoordinatorError::NotLeader(c.leader_name()).to_string()),
        _ => Ok(()),
    }
}

/// Records the decision to replace `old` by `new`; returns the term `new` is promoted into.
/// `LOCAL`: `proposed` as is. `ETCD`: one transaction, at a term above etcd's and `proposed`.
pub async fn commit_failover(old: &str, new: &str, proposed: u64) -> Result<u64, String> {
    match active() {
        None => Ok(proposed),
        Some(c) => c
            .commit_failover(old, new, proposed)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// The highest position acknowledged under write concern ≥ 1 by any proxy: `own` under
/// `LOCAL`; under `ETCD` also what the other live proxies published.
pub async fn cluster_watermark(own: Position) -> Position {
    match active() {
        None => own,
        Some(c) => c.cluster_watermark(own).await,
    }
}

/// Finishes a failover that an elected proxy recorded in etcd but could not carry out (it died
/// between the transaction and the promotion): when etcd's primary still reports REPLICA, the
/// elected proxy promotes it into etcd's term. Nothing under `LOCAL`.
pub async fn complete_promotion(topology: &SharedTopology, t: &Topology) {
    if let Some(c) = active() {
        if c.decides() {
            c.complete_promotion(topology, t).await;
        }
    }
}

/// The coordinator's part of `/cluster/status`.
pub fn status() -> Value {
    match active() {
        None => json!({ "type": "LOCAL", "decides": true }),
        Some(c) => c.status(),
    }
}
