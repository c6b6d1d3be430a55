//! The primary's own lease in etcd (`failover.coordinator.serverLeases`, under an ETCD
//! coordinator): a primary writes only while it renews a lease of `leaseMillis` in etcd and
//! etcd's primary record (`<prefix>/primary`, written by the proxies) names it at a term no
//! higher than its own. The term in etcd is the fencing token: a record naming another instance
//! at this node's term or above makes this primary step down at once (fenced, as when it learns
//! a higher term from a replica); a record naming it at a term it was not promoted into yet, or
//! naming another at a lower term, makes it refuse writes without stepping down.
//!
//! So a primary cut off from etcd stops accepting writes by itself within `leaseMillis`, with an
//! error naming the cause, and the write probe (`POST /replication/write-probe`) fails, which
//! makes the elected proxy replace it; once etcd answers again (and still names it) it writes
//! again without a restart. This lease only ever takes permission away: the proxy's write lease
//! ([`crate::lease`]) and the failover's wait for it stay as they are.
//!
//! One session talks to one member of `endpoints`, the next after a failure, every
//! [`RETRY`]. Each tick (a third of the lease, at most 500 ms) keeps the lease alive and reads
//! the record; the permission then runs until the keep-alive's send time plus nine tenths of
//! the TTL etcd answered, so it ends before etcd could see the lease expire. Each server also
//! keeps `<prefix>/servers/<id>` (its role, term and whether it holds the lease) under its
//! lease, for operators and the proxies' status.
//!
//! A reload of config.json applies new `endpoints` and `leaseMillis` at once ([`on_reload`]);
//! turning `serverLeases` on or off, or a new prefix, needs a restart of the server.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::{ClusterConfig, CoordinatorConfig, EtcdCoordinator};
use etcd_client::{Client, ConnectOptions, PutOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::node::Node;
use dirkdb_core::sync::lock;

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause between two sessions.
const RETRY: Duration = Duration::from_millis(200);
/// A primary that does not hold its lease yet (just promoted) looks again this often.
const QUICK: Duration = Duration::from_millis(50);
/// How long a promotion waits for the new primary's first lease before it answers.
const AFTER_PROMOTION: Duration = Duration::from_secs(1);

/// Why a session with etcd ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdLeaseError {
    /// etcd did not answer, or refused.
    #[error("etcd unreachable at {endpoint} ({reason}) (failover.coordinator.endpoints)")]
    Unreachable {
        /// The member tried.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// etcd let this node's lease expire (it did not renew it within its TTL).
    #[error("this node's etcd lease expired (failover.coordinator.leaseMillis)")]
    Expired,
    /// config.json changed `endpoints` or `leaseMillis`.
    #[error("failover.coordinator changed in config.json: reconnecting with the new settings")]
    Reconfigured,
}

/// What etcd's primary record says of this node.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It names this node (or there is none yet): hold the lease.
    Hold,
    /// It names another at this node's term or above: step down.
    StepDown { primary: String, term: u64 },
    /// Refuse writes without stepping down, for this reason.
    Refuse(String),
}

/// The part of `<prefix>/primary` a server reads.
#[derive(Debug, Deserialize)]
struct PrimaryRecord {
    primary: String,
    term: u64,
}

/// Judges `record` (None: etcd has none yet) for instance `me` at term `term`.
fn judge(me: &str, term: u64, record: Option<&PrimaryRecord>) -> Verdict {
    let Some(r) = record else {
        return Verdict::Hold;
    };
    match (r.primary == me, r.term <= term) {
        (true, true) => Verdict::Hold,
        (true, false) => Verdict::Refuse(format!(
            "etcd's primary record names this node at term {}, above its own term {term} (a \
             promotion not carried out yet)",
            r.term
        )),
        (false, _) if r.term >= term => Verdict::StepDown {
            primary: r.primary.clone(),
            term: r.term,
        },
        (false, _) => Verdict::Refuse(format!(
            "etcd's primary record names {} (at term {}, below this node's term {term})",
            r.primary, r.term
        )),
    }
}

/// Starts the lease's task when `config` asks for server leases; writes are refused from this
/// call on until the first renewal.
pub(crate) fn start(
    state: &Arc<Node>,
    config: &ClusterConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    let CoordinatorConfig::Etcd(settings) = &config.failover.coordinator else {
        return None;
    };
    if !settings.server_leases {
        return None;
    }
    let hold = state.write_path.lease().etcd();
    *lock(&hold.settings) = Some(settings.clone());
    hold.require();
    Some(tokio::spawn(run(state.clone())))
}

/// What a reload of config.json does with `failover.coordinator`: new `endpoints` and
/// `leaseMillis` apply at once (the session reconnects with them); turning `serverLeases` on
/// or off, or another type or prefix, needs a restart of the server, which keeps the settings
/// it started with and says so in the log and in `/replication/status` → `etcdLease`.
pub(crate) fn on_reload(state: &Node, config: &ClusterConfig) {
    let hold = state.write_path.lease().etcd();
    let running = lock(&hold.settings).clone();
    let wanted = match &config.failover.coordinator {
        CoordinatorConfig::Etcd(e) if e.server_leases => Some(e.clone()),
        _ => None,
    };
    let needs_restart = match (&running, &wanted) {
        (None, None) => None,
        (Some(a), Some(b)) if a.prefix == b.prefix => {
            if a.endpoints != b.endpoints || a.lease_millis != b.lease_millis {
                *lock(&hold.settings) = Some(b.clone());
                hold.reconfigured.notify_one();
            }
            None
        }
        (Some(a), Some(b)) => Some(format!(
            "failover.coordinator.prefix changed from {} to {} in config.json",
            a.prefix, b.prefix
        )),
        (None, Some(_)) => Some("failover.coordinator.serverLeases was turned on".to_string()),
        (Some(_), None) => Some("failover.coordinator.serverLeases was turned off".to_string()),
    };
    let mut note = lock(&hold.restart_needed);
    match needs_restart {
        None => *note = None,
        Some(what) => {
            let why = format!(
                "{what}: a running server keeps the lease settings it started with; restart it \
                 to apply this"
            );
            tracing::error!(instance = %state.instance_id, "{why}");
            *note = Some(why);
        }
    }
}

/// Waits (a second at most) until a node just promoted holds its etcd lease, so that the
/// promotion's answer means writes are accepted. A no-op without server leases.
pub(crate) async fn after_promotion(state: &Node) {
    let hold = state.write_path.lease().etcd();
    if !hold.required() {
        return;
    }
    let deadline = Instant::now() + AFTER_PROMOTION;
    hold.wake.notify_one();
    while !hold.allows_writes() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `/replication/status`'s `etcdLease` (`null` without server leases).
pub(crate) fn status(state: &Node) -> Value {
    let hold = state.write_path.lease().etcd();
    let restart_needed = lock(&hold.restart_needed).clone();
    if !hold.required() {
        return restart_needed.map_or(Value::Null, |why| json!({ "restartNeeded": why }));
    }
    json!({
        "held": hold.remaining().is_some(),
        "leftMs": hold.remaining().map(|d| d.as_millis() as u64),
        "whyNot": lock(&hold.why_not).clone(),
        "endpoints": lock(&hold.settings).as_ref().map(|s| s.endpoints.clone()),
        "restartNeeded": restart_needed,
    })
}

/// Keeps a session with etcd forever, one member after another.
async fn run(state: Arc<Node>) {
    let hold = state.write_path.lease().etcd();
    let reachable = AtomicBool::new(true);
    for attempt in 0usize.. {
        let Some(settings) = lock(&hold.settings).clone() else {
            return;
        };
        let Some(endpoint) = settings
            .endpoints
            .get(attempt % settings.endpoints.len().max(1))
            .cloned()
        else {
            return;
        };
        let Err(e) = Session::new(&state, &settings, endpoint, &reachable)
            .run()
            .await;
        if matches!(e, EtcdLeaseError::Reconfigured) {
            tracing::warn!(instance = %state.instance_id, endpoints = %settings.endpoints.join(","), "failover.coordinator changed in config.json: the etcd lease reconnects with the new settings");
            continue;
        }
        hold.lapse(e.to_string());
        if reachable.swap(false, Ordering::AcqRel) {
            tracing::error!(instance = %state.instance_id, error = %e, primary = !state.is_replica(), "etcd lease lost: this node refuses writes as a primary until it renews it");
        } else {
            tracing::debug!(error = %e, "etcd still unreachable");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One session with one etcd member.
struct Session<'a> {
    state: &'a Arc<Node>,
    settings: &'a EtcdCoordinator,
    endpoint: String,
    reachable: &'a AtomicBool,
    /// The value of `<prefix>/servers/<id>` last put.
    published: Option<Value>,
}

impl<'a> Session<'a> {
    fn new(
        state: &'a Arc<Node>,
        settings: &'a EtcdCoordinator,
        endpoint: String,
        reachable: &'a AtomicBool,
    ) -> Session<'a> {
        Session {
            state,
            settings,
            endpoint,
            reachable,
            published: None,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.settings.prefix.trim_end_matches('/'))
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> EtcdLeaseError {
        EtcdLeaseError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    async fn within<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdLeaseError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.unreachable(format!("{what}: {e}"))),
            Err(_) => {
                Err(self.unreachable(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))
            }
        }
    }

    /// Runs until etcd fails; returns only with the reason.
    async fn run(mut self) -> Result<std::convert::Infallible, EtcdLeaseError> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_millis(500), Duration::from_millis(1000));
        let mut client = self
            .within(
                "connect",
                Client::connect([self.endpoint.clone()], Some(options)),
            )
            .await?;
        let ttl = self.settings.lease_seconds();
        let lease = self
            .within("lease grant", client.lease_grant(ttl, None))
            .await?
            .id();
        let (mut keeper, mut alive) = self
            .within("keep-alive stream", client.lease_keep_alive(lease))
            .await?;
        let full = Duration::from_secs(ttl as u64);
        let period = (full / 3).min(Duration::from_millis(500));
        let hold = self.state.write_path.lease().etcd();
        loop {
            let sent = Instant::now();
            self.within("keep-alive", keeper.keep_alive()).await?;
            let answer = self
                .within("keep-alive", alive.message())
                .await?
                .ok_or_else(|| self.unreachable("keep-alive stream closed"))?;
            if answer.ttl() <= 0 {
                return Err(EtcdLeaseError::Expired);
            }
            let granted = Duration::from_secs(answer.ttl() as u64).min(full);
            self.judge_record(&mut client, sent + granted - granted / 10)
                .await?;
            self.publish(&mut client, lease).await?;
            if !self.reachable.swap(true, Ordering::AcqRel) {
                tracing::warn!(instance = %self.state.instance_id, "etcd reachable again: the etcd lease is renewed");
            }
            let wait = if !self.state.is_replica() && !hold.allows_writes() {
                QUICK
            } else {
                period
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = hold.wake.notified() => {}
                _ = hold.reconfigured.notified() => return Err(EtcdLeaseError::Reconfigured),
            }
        }
    }

    /// Reads etcd's primary record and acts on it: holds the lease until `until`, refuses,
    /// or steps down.
    async fn judge_record(
        &self,
        client: &mut Client,
        until: Instant,
    ) -> Result<(), EtcdLeaseError> {
        let hold = self.state.write_path.lease().etcd();
        if self.state.is_replica() {
            hold.lapse("this node is a replica".into());
            return Ok(());
        }
        let key = self.key("primary");
        let got = self
            .within("read primary", client.get(key.clone(), None))
            .await?;
        let record = match got.kvs().first() {
            None => None,
            Some(kv) => match serde_json::from_slice::<PrimaryRecord>(kv.value()) {
                Ok(r) => Some(r),
                Err(e) => {
                    hold.lapse(format!(
                        "etcd key {key} does not hold a DirkDB primary record ({e})"
                    ));
                    return Ok(());
                }
            },
        };
        let id = &self.state.instance_id;
        match judge(id, self.state.term(), record.as_ref()) {
            Verdict::Hold => hold.extend_to(until),
            Verdict::Refuse(why) => {
                if lock(&hold.why_not).as_deref() != Some(why.as_str()) {
                    tracing::warn!(instance = %id, reason = %why, "refusing writes");
                }
                hold.lapse(why);
            }
            Verdict::StepDown { primary, term } => {
                let why = format!("etcd's primary record names {primary} at term {term}");
                hold.lapse(why.clone());
                self.step_down(term, why).await;
            }
        }
        Ok(())
    }

    async fn step_down(&self, term: u64, why: String) {
        let state = self.state.clone();
        // `step_down` takes the writer gate: it waits for a running write, off the runtime.
        let stepped = tokio::task::spawn_blocking(move || state.step_down(term, &why)).await;
        if let Err(e) = stepped
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(instance = %self.state.instance_id, error = %e, "could not step down");
        }
    }

    /// Puts `<prefix>/servers/<id>` under the lease when its value changed.
    async fn publish(&mut self, client: &mut Client, lease: i64) -> Result<(), EtcdLeaseError> {
        let hold = self.state.write_path.lease().etcd();
        let value = json!({
            "role": if self.state.is_replica() { "REPLICA" } else { "PRIMARY" },
            "term": self.state.term(),
            "holdsLease": !self.state.is_replica() && hold.remaining().is_some(),
        });
        if self.published.as_ref() == Some(&value) {
            return Ok(());
        }
        let key = self.key(&format!("servers/{}", self.state.instance_id));
        let options = PutOptions::new().with_lease(lease);
        self.within(
            "put server entry",
            client.put(key, value.to_string(), Some(options)),
        )
        .await?;
        self.published = Some(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(primary: &str, term: u64) -> PrimaryRecord {
        PrimaryRecord {
            primary: primary.into(),
            term,
        }
    }

    #[test]
    fn the_record_in_etcd_decides_whether_a_primary_may_write() {
        assert_eq!(judge("m1", 0, None), Verdict::Hold, "no record yet");
        assert_eq!(judge("m1", 3, Some(&record("m1", 3))), Verdict::Hold);
        assert_eq!(
            judge("m1", 5, Some(&record("m1", 3))),
            Verdict::Hold,
            "a term raised above etcd's by the proxy"
        );
        assert!(matches!(
            judge("m1", 3, Some(&record("m1", 4))),
            Verdict::Refuse(why) if why.contains("term 4")
        ));
        assert_eq!(
            judge("m1", 3, Some(&record("m2", 4))),
            Verdict::StepDown {
                primary: "m2".into(),
                term: 4
            }
        );
        assert_eq!(
            judge("m1", 3, Some(&record("m2", 3))),
            Verdict::StepDown {
                primary: "m2".into(),
                term: 3
            },
            "the same term naming another: this node is not the primary"
        );
        assert!(matches!(
            judge("m1", 3, Some(&record("m2", 1))),
            Verdict::Refuse(why) if why.contains("m2")
        ));
    }
}
