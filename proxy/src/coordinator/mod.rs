//! Who decides a failover (`failover.coordinator`).
//!
//! `LOCAL` (the default): this proxy alone, as it always did; every hook below lets it act.
//!
//! `ETCD`: several proxies share one decision through etcd ([`etcd`]). The cluster's state lives
//! under the configured prefix: `<prefix>/primary` (the current primary and its term, JSON),
//! `<prefix>/leader` (the one proxy that decides, bound to its etcd lease) and
//! `<prefix>/proxies/<id>` (each proxy's liveness under its own lease, with the highest write
//! position it acknowledged under a write concern of at least one) and, under MULTI_PRIMARY,
//! `<prefix>/ownership` (the ownership plan and its term, written by the elected proxy) and
//! `<prefix>/acked/<id>` (what each proxy acknowledged, without a lease; see
//! `etcd/multi_primary.rs`). Only the elected proxy renews the primary's write lease, fences
//! stray primaries, fails over and writes the ownership plan; a failover is one etcd
//! transaction that compares the primary record's revision it read (and that this proxy still
//! holds the leader key) and writes the new primary and term. Every proxy watches the
//! record and reroutes as soon as it changes. The term in etcd is the term the new primary is
//! promoted into: the fencing token the servers check.
//!
//! The hooks are process-wide (one proxy per process, like [`crate::lease`]): [`decides`],
//! [`may_fail_over`], [`commit_failover`], [`cluster_watermark`], [`complete_promotion`],
//! [`status`] and, under MULTI_PRIMARY, [`record_ownership`], [`acknowledged_by_all`] and
//! [`record_acknowledgement`]. With no ETCD coordinator started they all answer as `LOCAL`.
//!
//! On a reload of config.json ([`on_reload`]) new etcd `endpoints` and `leaseMillis` apply at
//! once; a new type (LOCAL ↔ ETCD) or prefix needs a restart of the proxy, which keeps the one
//! it started with and says so in the log and in `/cluster/status`.

pub(crate) mod etcd;
pub(crate) mod record;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use dirkdb_core::config::{ClusterConfig, CoordinatorConfig, EtcdCoordinator};
use serde_json::{json, Value};

use self::record::OwnershipRecord;
use crate::ack_watermark::Position;
use crate::topology::{SharedTopology, Topology};

/// Why the coordinator could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CoordinatorError {
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
    /// MULTI_PRIMARY: the ownership plan in etcd says this master's objects are moving away.
    #[error("the ownership plan in etcd moves {0}'s objects to other masters (it is down): its writes are no longer acknowledged")]
    Moving(String),
    /// config.json changed `endpoints` or `leaseMillis`: the session ends and the next one
    /// uses them.
    #[error("failover.coordinator changed in config.json: reconnecting with the new settings")]
    Reconfigured,
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
pub(crate) async fn start(
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
pub(crate) fn decides() -> bool {
    active().is_none_or(|c| c.decides())
}

/// Refuses a failover on a proxy that is not the elected one.
pub(crate) fn may_fail_over() -> Result<(), String> {
    match active() {
        Some(c) if !c.decides() => Err(CoordinatorError::NotLeader(c.leader_name()).to_string()),
        _ => Ok(()),
    }
}

/// Records the decision to replace `old` by `new`; returns the term `new` is promoted into.
/// `LOCAL`: `proposed` as is. `ETCD`: one transaction, at a term above etcd's and `proposed`.
pub(crate) async fn commit_failover(old: &str, new: &str, proposed: u64) -> Result<u64, String> {
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
pub(crate) async fn cluster_watermark(own: Position) -> Position {
    match active() {
        None => own,
        Some(c) => c.cluster_watermark(own).await,
    }
}

/// True under an ETCD coordinator: the MULTI_PRIMARY ownership plan lives in etcd.
pub(crate) fn coordinated() -> bool {
    active().is_some()
}

/// Under ETCD, why etcd cannot be counted on now (`None` when it answers, and under `LOCAL`).
pub(crate) fn unreachable_reason() -> Option<String> {
    active().and_then(|c| c.unreachable_reason())
}

/// MULTI_PRIMARY: records the elected proxy's ownership `plan` if etcd's is still at revision
/// `expected`; returns the new revision (`LOCAL`: nothing to record, 0).
pub(crate) async fn record_ownership(plan: OwnershipRecord, expected: i64) -> Result<i64, String> {
    match active() {
        None => Ok(0),
        Some(c) => c
            .record_ownership(plan, expected)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// MULTI_PRIMARY: per origin, the highest sequence any proxy recorded as acknowledged, its
/// lease lapsed or not (`LOCAL`: none besides this proxy's own).
pub(crate) async fn acknowledged_by_all() -> Result<BTreeMap<String, u64>, String> {
    match active() {
        None => Ok(BTreeMap::new()),
        Some(c) => c.acknowledged_by_all().await.map_err(|e| e.to_string()),
    }
}

/// MULTI_PRIMARY: records in etcd, before the client is answered, that this proxy acknowledges
/// `origin`'s write at `seq` (`LOCAL`: nothing to do).
pub(crate) async fn record_acknowledgement(origin: &str, seq: u64) -> Result<(), String> {
    match active() {
        None => Ok(()),
        Some(c) => c
            .record_acknowledgement(origin, seq)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Finishes a failover that an elected proxy recorded in etcd but could not carry out (it died
/// between the transaction and the promotion): when etcd's primary still reports REPLICA, the
/// elected proxy promotes it into etcd's term. Nothing under `LOCAL`.
pub(crate) async fn complete_promotion(topology: &SharedTopology, t: &Topology) {
    if let Some(c) = active() {
        if c.decides() {
            c.complete_promotion(topology, t).await;
        }
    }
}

/// The coordinator's part of `/cluster/status`.
pub(crate) fn status() -> Value {
    let mut status = match active() {
        None => json!({ "type": "LOCAL", "decides": true }),
        Some(c) => c.status(),
    };
    status["restartNeeded"] = json!(restart_needed_slot()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone());
    status
}

/// Why config.json's coordinator is not the one in force (a change a reload cannot apply).
fn restart_needed_slot() -> &'static RwLock<Option<String>> {
    static NOTE: RwLock<Option<String>> = RwLock::new(None);
    &NOTE
}

/// What a reload of config.json can do with its `failover.coordinator`, given the one in force.
#[derive(Debug, PartialEq)]
enum ReloadVerdict {
    /// Nothing this proxy uses changed.
    Same,
    /// New `endpoints` or `leaseMillis` under the same prefix: applied live.
    Apply(EtcdCoordinator),
    /// Another type or prefix: this proxy keeps the coordinator it started with.
    NeedsRestart(String),
}

fn judge_reload(running: &CoordinatorConfig, wanted: &CoordinatorConfig) -> ReloadVerdict {
    use CoordinatorConfig::{Etcd, Local};
    let kind = |c: &CoordinatorConfig| match c {
        Local => "LOCAL",
        Etcd(_) => "ETCD",
    };
    match (running, wanted) {
        (Local, Local) => ReloadVerdict::Same,
        (Etcd(a), Etcd(b)) if a.prefix != b.prefix => ReloadVerdict::NeedsRestart(format!(
            "failover.coordinator.prefix changed from {} to {} in config.json: that is another \
             cluster's state in etcd, and a running proxy does not move to it; restart this \
             proxy to apply it (it keeps coordinating under {} meanwhile)",
            a.prefix, b.prefix, a.prefix
        )),
        (Etcd(a), Etcd(b)) if a.endpoints != b.endpoints || a.lease_millis != b.lease_millis => {
            ReloadVerdict::Apply(b.clone())
        }
        (Etcd(_), Etcd(_)) => ReloadVerdict::Same,
        (a, b) => ReloadVerdict::NeedsRestart(format!(
            "failover.coordinator changed from {} to {} in config.json: a running proxy does \
             not change who decides failovers (switching one proxy of several would let two \
             decide); restart this proxy to apply it (it keeps the {} coordinator meanwhile)",
            kind(a),
            kind(b),
            kind(a)
        )),
    }
}

/// Called on every valid reload of config.json: applies new etcd `endpoints` and `leaseMillis`
/// at once (the session reconnects), and refuses a change of type or prefix, which needs a
/// restart: said in the log and in `/cluster/status` → `coordinator.restartNeeded`, with the
/// running coordinator kept.
pub(crate) fn on_reload(config: &ClusterConfig) {
    let running = match active() {
        None => CoordinatorConfig::Local,
        Some(c) => CoordinatorConfig::Etcd(c.settings()),
    };
    let verdict = judge_reload(&running, &config.failover.coordinator);
    let mut note = restart_needed_slot()
        .write()
        .unwrap_or_else(|p| p.into_inner());
    match verdict {
        ReloadVerdict::Same => *note = None,
        ReloadVerdict::Apply(settings) => {
            *note = None;
            if let Some(c) = active() {
                c.reconfigure(settings);
            }
        }
        ReloadVerdict::NeedsRestart(why) => {
            tracing::error!("{why}");
            *note = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoints: &[&str], prefix: &str, lease_millis: u64) -> CoordinatorConfig {
        CoordinatorConfig::Etcd(EtcdCoordinator {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            prefix: prefix.into(),
            lease_millis,
            server_leases: false,
        })
    }

    #[test]
    fn a_reload_applies_endpoints_and_lease_and_refuses_a_new_type_or_prefix() {
        use CoordinatorConfig::Local;
        let running = etcd(&["a:1"], "/d/x", 3000);
        assert_eq!(judge_reload(&Local, &Local), ReloadVerdict::Same);
        assert_eq!(judge_reload(&running, &running), ReloadVerdict::Same);
        let mut leases = etcd(&["a:1"], "/d/x", 3000);
        if let CoordinatorConfig::Etcd(e) = &mut leases {
            e.server_leases = true;
        }
        assert_eq!(
            judge_reload(&running, &leases),
            ReloadVerdict::Same,
            "serverLeases is the servers' business"
        );
        let moved = etcd(&["b:1", "c:1"], "/d/x", 2000);
        assert!(matches!(
            judge_reload(&running, &moved),
            ReloadVerdict::Apply(_)
        ));
        let ReloadVerdict::NeedsRestart(why) =
            judge_reload(&running, &etcd(&["a:1"], "/d/y", 3000))
        else {
            panic!("a new prefix needs a restart")
        };
        assert!(why.contains("/d/y") && why.contains("restart"), "{why}");
        for (a, b) in [(&Local, &running), (&running, &Local)] {
            let ReloadVerdict::NeedsRestart(why) = judge_reload(a, b) else {
                panic!("a new type needs a restart")
            };
            assert!(why.contains("LOCAL") && why.contains("ETCD") && why.contains("restart"));
        }
    }
}
