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
//! skew between the proxy's and this node's clocks.
//!
//! Leases are enforced from the first renewal a node receives (remembered in its meta file, so a
//! restarted primary waits for the proxy), and only while the node is a primary; a server that
//! never had a proxy in front of it (tests, a single node) writes without one. Writes are
//! refused at the writer gate ([`crate::write_path::WritePath::acquire_write`]) and once more at
//! the commit itself (a SQLite commit hook, [`Lease::refuses_commit`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::catalog::lock;
use crate::error::ServerError;

/// The meta file's setting that records that this node is under a lease.
pub const LEASE_REQUIRED_SETTING: &str = "lease_required";

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
    etcd: super::etcd_lease::EtcdHold,
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
        }
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
        self.primary.store(primary, Ordering::Release);
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
    }

    /// The lease in etcd ([`super::etcd_lease`]).
    pub fn etcd(&self) -> &super::etcd_lease::EtcdHold {
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
    /// has ended into a rollback (the server's own bookkeeping is never refused).
    pub fn refuses_commit(&self) -> bool {
        self.primary.load(Ordering::Acquire)
            && !self.allows_writes()
            && !crate::catalog::is_internal()
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

    #[test]
    fn a_lease_runs_out() {
        let lease = Lease::new(true, true);
        assert!(
            !lease.allows_writes(),
            "required and never granted since the start"
        );
        let now = crate::oplog::now_ms();
        lease.grant(30, now, now).unwrap();
        assert!(lease.allows_writes());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!lease.allows_writes());
        assert!(lease.remaining().is_none());
    }
}
