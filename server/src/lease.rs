//! The primary's write lease: a primary accepts writes only while it holds a lease that the
//! proxy renews (`POST /replication/lease`), so that the proxy can promote another node once
//! the old lease has certainly expired, whether or not it can reach the old primary.
//!
//! A renewal carries the proxy's term for this primary, the lease's length and the proxy's wall
//! clock when it sent the renewal (`sentAtMs`). The lease is anchored at that send time, not at
//! the arrival: a renewal that waited in a socket buffer (a paused or partitioned primary) grants
//! only what is left of it, and nothing once it is older than the lease. From then on the lease
//! runs on this node's monotonic clock, which keeps running while the process is stopped, so a
//! primary resumed after `SIGSTOP` finds its lease expired. The proxy waits for the lease plus
//! `failover.clockDriftMillis` after its last renewal before it promotes anyone, which covers the
//! skew between the proxy's and this node's clocks. That clock is tokio's [`Instant`] (the
//! system's monotonic clock outside paused test time), so the unit tests below run their leases
//! out on paused time and take no wall-clock time.
//!
//! Leases are enforced from the first renewal a node receives (remembered in its meta file, so a
//! restarted primary waits for the proxy), and only while the node is a primary; a server that
//! never had a proxy in front of it (tests, a single node) writes without one. Writes are
//! refused at the writer gate ([`crate::write_path::WritePath::acquire_write`]) and once more at
//! the commit itself (a SQLite commit hook, [`Lease::refuses_commit`]).
//!
//! Majority leases (`failover.majorityLease`): the lease then also needs a majority. A primary
//! accepts writes only while, within the last lease length, it heard from enough replicas of its
//! term (acknowledgements or heartbeats, [`Lease::note_replica`]) to make a majority of the
//! instances with itself; a primary cut off from its replicas refuses writes by itself even
//! while the proxy still renews its lease, says so in its status (`lease.majority`), and the
//! proxy's health check counts that as a failure and replaces it. A node that just became
//! primary has one lease length of grace for its replicas to connect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dirkdb_core::config::EtcdCoordinator;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ServerError;
use dirkdb_core::sync::lock;

/// The meta file's setting that records that this node is under a lease.
pub(crate) const LEASE_REQUIRED_SETTING: &str = "lease_required";

/// This node's lease.
#[derive(Debug, Default)]
pub struct Lease {
    required: AtomicBool,
    primary: AtomicBool,
    until: Mutex<Option<Instant>>,
    /// Renewals sent at or before this (proxy clock) are refused: a renewal still in flight when
    /// the proxy took the lease away must not give it back.
    revoked_through_ms: AtomicI64,
    /// The lease in etcd, when `failover.coordinator.serverLeases` asks for one.
    etcd: EtcdHold,
    /// Majority leases: replicas needed besides this node (0: off).
    needed: AtomicUsize,
    /// The lease length, the window in which replicas must have been heard.
    window: Mutex<Duration>,
    /// When each replica was last heard from in this node's term.
    heard: Mutex<HashMap<String, Instant>>,
    /// When this node last became primary (the start of its grace).
    primary_since: Mutex<Option<Instant>>,
}

/// What a majority lease stands on, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MajorityStatus {
    /// Replicas that must have been heard from within the window.
    pub needed: usize,
    /// Replicas heard from within it.
    pub heard: usize,
    /// True while writes may go on as far as the majority goes.
    pub holds: bool,
}

/// Why a renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    /// The renewal names another term than this node's.
    #[error("the lease is for term {asked} but this node is at term {own}")]
    Term {
        /// Term in the renewal.
        asked: u64,
        /// This node's term.
        own: u64,
    },
    /// The renewal was sent too long ago to grant anything.
    #[error("the renewal was sent {age_ms} ms ago, past its {lease_ms} ms lease")]
    Stale {
        /// Its age on arrival.
        age_ms: u64,
        /// The lease length asked.
        lease_ms: u64,
    },
    /// Only a primary holds a lease.
    #[error("this node is not a primary")]
    NotPrimary,
}

impl Lease {
    /// A lease, enforced from the start when `required` (the node had one before).
    pub fn new(required: bool, primary: bool) -> Lease {
        Lease {
            required: AtomicBool::new(required),
            primary: AtomicBool::new(primary),
            until: Mutex::new(None),
            revoked_through_ms: AtomicI64::new(i64::MIN),
            etcd: Default::default(),
            needed: AtomicUsize::new(0),
            window: Mutex::new(Duration::ZERO),
            heard: Mutex::new(HashMap::new()),
            primary_since: Mutex::new(primary.then(Instant::now)),
        }
    }

    /// Makes the lease a majority lease over `instances` instances (this one included), with
    /// replicas heard within `window` (the lease length).
    pub fn with_majority(self, instances: usize, window: Duration) -> Lease {
        self.needed.store(instances / 2, Ordering::Release);
        *lock(&self.window) = window;
        self
    }

    /// A replica of this node's term was heard from (an acknowledgement or a heartbeat).
    pub fn note_replica(&self, instance: &str) {
        if self.needed.load(Ordering::Acquire) > 0 {
            lock(&self.heard).insert(instance.to_string(), Instant::now());
        }
    }

    /// Where the majority stands; `None` without majority leases.
    pub fn majority(&self) -> Option<MajorityStatus> {
        let needed = self.needed.load(Ordering::Acquire);
        if needed == 0 {
            return None;
        }
        let window = *lock(&self.window);
        let heard = lock(&self.heard)
            .values()
            .filter(|t| t.elapsed() <= window)
            .count();
        let grace = lock(&self.primary_since).is_some_and(|t| t.elapsed() <= window);
        Some(MajorityStatus {
            needed,
            heard,
            holds: heard >= needed || grace || !self.required(),
        })
    }

    fn majority_holds(&self) -> bool {
        self.majority().is_none_or(|m| m.holds)
    }

    /// Grants what is left of a `lease_ms` lease sent at `sent_at_ms` (proxy wall clock), now
    /// being `now_ms` here; returns the time left. Enforcement starts with the first grant.
    pub fn grant(
        &self,
        lease_ms: u64,
        sent_at_ms: i64,
        now_ms: i64,
    ) -> Result<Duration, LeaseRefusal> {
        if !self.primary.load(Ordering::Acquire) {
            return Err(LeaseRefusal::NotPrimary);
        }
        let age_ms = now_ms.saturating_sub(sent_at_ms).max(0) as u64;
        if age_ms >= lease_ms || sent_at_ms <= self.revoked_through_ms.load(Ordering::Acquire) {
            return Err(LeaseRefusal::Stale { age_ms, lease_ms });
        }
        let left = Duration::from_millis(lease_ms - age_ms);
        *lock(&self.window) = Duration::from_millis(lease_ms);
        let mut until = lock(&self.until);
        let end = Instant::now() + left;
        *until = Some(until.map_or(end, |u| u.max(end)));
        self.required.store(true, Ordering::Release);
        Ok(left)
    }

    /// Gives the lease up (this node is demoted).
    pub fn revoke(&self) {
        *lock(&self.until) = None;
    }

    /// Gives the lease up because the proxy takes it away, at `at_ms` on the proxy's clock:
    /// renewals it sent until then are refused if they arrive later.
    pub fn revoke_at(&self, at_ms: i64) {
        let mut until = lock(&self.until);
        self.revoked_through_ms.fetch_max(at_ms, Ordering::AcqRel);
        *until = None;
    }

    /// The node became a primary (`true`) or a replica.
    pub fn set_primary(&self, primary: bool) {
        let was = self.primary.swap(primary, Ordering::AcqRel);
        if primary && !was {
            *lock(&self.primary_since) = Some(Instant::now());
            lock(&self.heard).clear();
        }
        if !primary {
            self.revoke();
        }
    }

    /// Whether leases are enforced on this node.
    pub fn required(&self) -> bool {
        self.required.load(Ordering::Acquire)
    }

    /// Time left on the lease (`None`: none held).
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*lock(&self.until))?;
        until.checked_duration_since(Instant::now())
    }

    /// True when a primary may write now: leases are not enforced, or one is held (and the
    /// etcd lease too, when one is required).
    pub fn allows_writes(&self) -> bool {
        (!self.required() || self.remaining().is_some_and(|d| !d.is_zero()))
            && self.etcd.allows_writes()
            && self.majority_holds()
    }

    /// The lease in etcd (kept by `replication/etcd_lease.rs`).
    pub fn etcd(&self) -> &EtcdHold {
        &self.etcd
    }

    /// `Ok` when a client write may start now; the reason otherwise.
    pub fn check_write(&self) -> Result<(), ServerError> {
        if self.primary.load(Ordering::Acquire) {
            self.etcd.check()?;
        }
        if !self.primary.load(Ordering::Acquire) || self.allows_writes() {
            return Ok(());
        }
        if let Some(m) = self.majority().filter(|m| !m.holds) {
            return Err(ServerError::Refused(format!(
                "this primary lost its majority lease: it heard from {} of the {} replicas it \
                 needs within the lease (failover.majorityLease); writes are refused until they \
                 are back or another node is promoted",
                m.heard, m.needed
            )));
        }
        Err(ServerError::Refused(
            "this primary holds no write lease (the proxy has not renewed it within \
             failover.leaseMillis): writes are refused until it is renewed or another node is \
             promoted"
                .into(),
        ))
    }

    /// `Ok` when a client write that now holds the writer gate may go on: this node is still a
    /// primary and holds its lease. [`Lease::check_write`] runs before the writer waits for the
    /// gate; a fence or a demotion (`POST /replication/configure`, a step-down) switches the
    /// node to a replica under that same gate, so a write that was checked before it waited
    /// must be checked again once it holds the gate, or it would commit on a replica (at a
    /// sequence its new primary gives to another entry).
    pub fn check_write_holding_gate(&self) -> Result<(), ServerError> {
        if !self.primary.load(Ordering::Acquire) {
            return Err(ServerError::Refused(
                "this node stopped being a primary while the write waited for the writer gate \
                 (it was fenced or demoted): nothing was written; send it to the new primary"
                    .into(),
            ));
        }
        self.check_write()
    }

    /// The SQLite commit hook's answer: true turns a client commit on a primary whose lease
    /// has ended into a rollback (the catalog's hook never asks it for the server's own
    /// bookkeeping).
    pub fn refuses_commit(&self) -> bool {
        self.primary.load(Ordering::Acquire) && !self.allows_writes()
    }
}

/// The permission to write that the etcd lease gives, checked by [`Lease`] at
/// the writer gate and in the commit hook. Not required (always allowing) unless
/// `serverLeases` is on.
#[derive(Debug, Default)]
pub struct EtcdHold {
    required: AtomicBool,
    until: Mutex<Option<Instant>>,
    /// Why the lease is not held, when it is not.
    pub(crate) why_not: Mutex<Option<String>>,
    /// Wakes the session (a promotion wants its first lease now).
    pub(crate) wake: Notify,
    /// The settings in force (`None` without server leases).
    pub(crate) settings: Mutex<Option<EtcdCoordinator>>,
    /// Ends the session, so that the next one uses new settings.
    pub(crate) reconfigured: Notify,
    /// Why config.json's coordinator is not the one in force (a change needing a restart).
    pub(crate) restart_needed: Mutex<Option<String>>,
}

impl EtcdHold {
    /// From now on writes need the etcd lease.
    pub fn require(&self) {
        *lock(&self.why_not) = Some("etcd has not answered since this node started".into());
        self.required.store(true, Ordering::Release);
    }

    /// Whether writes need the etcd lease.
    pub fn required(&self) -> bool {
        self.required.load(Ordering::Acquire)
    }

    /// Time left on the lease (`None`: not held).
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*lock(&self.until))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// True when it is not required, or held.
    pub fn allows_writes(&self) -> bool {
        !self.required() || self.remaining().is_some()
    }

    /// `Ok` when a primary may write as far as etcd is concerned; the reason otherwise.
    pub fn check(&self) -> Result<(), ServerError> {
        if self.allows_writes() {
            return Ok(());
        }
        let why = lock(&self.why_not).clone().unwrap_or_else(|| {
            "its last renewal is older than the lease (etcd did not answer in time)".into()
        });
        Err(ServerError::Refused(format!(
            "this primary holds no lease in etcd (failover.coordinator.serverLeases): {why}; \
             writes are refused until it renews it or another node is promoted"
        )))
    }

    /// The lease is held until `until`.
    pub(crate) fn extend_to(&self, until: Instant) {
        *lock(&self.until) = Some(until);
        *lock(&self.why_not) = None;
    }

    /// The lease is not held, for this reason.
    pub(crate) fn lapse(&self, why: String) {
        *lock(&self.until) = None;
        *lock(&self.why_not) = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_anchored_at_its_send_time_and_enforced_once_granted() {
        let lease = Lease::new(false, true);
        assert!(lease.allows_writes(), "no lease ever: not enforced");
        assert!(lease.check_write().is_ok());
        let left = lease.grant(1000, 10_000, 10_300).unwrap();
        assert_eq!(
            left,
            Duration::from_millis(700),
            "300 ms were spent in transit"
        );
        assert!(lease.required() && lease.allows_writes());
        assert_eq!(
            lease.grant(1000, 10_000, 11_000),
            Err(LeaseRefusal::Stale {
                age_ms: 1000,
                lease_ms: 1000
            }),
            "a renewal that waited past its lease grants nothing"
        );
        lease.grant(1000, 20_000, 20_000).unwrap();
        lease.revoke_at(20_500);
        assert!(
            lease.grant(1000, 20_400, 20_600).is_err(),
            "a renewal sent before the revocation arrives late: refused"
        );
        lease.grant(1000, 20_501, 20_600).unwrap();
        lease.revoke();
        assert!(!lease.allows_writes());
        assert!(lease.check_write().is_err());
        assert!(lease.refuses_commit());
        lease.set_primary(false);
        assert!(
            lease.check_write().is_ok(),
            "a replica's writes are refused elsewhere"
        );
        assert!(!lease.refuses_commit());
        assert!(
            lease.check_write_holding_gate().is_err(),
            "a write that waited while the node became a replica is refused"
        );
        assert_eq!(
            lease.grant(1000, 0, 0),
            Err(LeaseRefusal::NotPrimary),
            "only a primary holds a lease"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_majority_lease_needs_replicas_heard_within_the_lease() {
        let lease = Lease::new(false, false).with_majority(3, Duration::from_millis(60));
        lease.set_primary(true);
        lease.grant(10_000, 1_000, 1_000).unwrap();
        assert!(
            lease.allows_writes(),
            "a new primary has a lease length of grace"
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        lease.grant(60, 2_000, 2_000).unwrap();
        assert!(lease.allows_writes(), "the grace's last instant");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!lease.allows_writes(), "no replica heard: no majority");
        let refused = lease.check_write().unwrap_err().to_string();
        assert!(refused.contains("majority"), "{refused}");
        lease.note_replica("m2");
        assert!(
            lease.allows_writes(),
            "one replica of two makes a majority of three"
        );
        assert_eq!(
            lease.majority(),
            Some(MajorityStatus {
                needed: 1,
                heard: 1,
                holds: true
            })
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        lease.grant(60, 3_000, 3_000).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(lease.allows_writes(), "heard exactly one lease length ago");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!lease.allows_writes(), "heard too long ago");
        assert_eq!(lease.majority().map(|m| m.heard), Some(0));
        assert!(
            Lease::new(true, true).majority().is_none(),
            "off by default"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out() {
        let lease = Lease::new(true, true);
        assert!(
            !lease.allows_writes(),
            "required and never granted since the start"
        );
        lease.grant(30, 1_000, 1_000).unwrap();
        assert!(lease.allows_writes());
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(lease.allows_writes(), "1 ms left");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!lease.allows_writes(), "its last instant grants nothing");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(lease.remaining().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_hold_refuses_writes_once_required_until_extended_and_after_it_runs_out() {
        let hold = EtcdHold::default();
        assert!(hold.allows_writes() && hold.check().is_ok(), "not required");
        hold.require();
        let e = hold.check().unwrap_err().to_string();
        assert!(
            e.contains("serverLeases") && e.contains("not answered"),
            "{e}"
        );
        hold.extend_to(Instant::now() + Duration::from_millis(30));
        assert!(hold.allows_writes());
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(hold.allows_writes(), "1 ms left");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!hold.allows_writes());
        assert!(hold.check().unwrap_err().to_string().contains("older"));
        hold.extend_to(Instant::now() + Duration::from_secs(5));
        hold.lapse("etcd unreachable at x".into());
        assert!(hold
            .check()
            .unwrap_err()
            .to_string()
            .contains("unreachable at x"));
    }
}
