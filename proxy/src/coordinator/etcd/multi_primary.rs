//! MULTI_PRIMARY over etcd: the ownership plan and the acknowledgements it is decided from.
//!
//! * `<prefix>/ownership` ([`OwnershipRecord`]) holds the plan `crate::ownership` decides: the
//!   owning masters, the set whose rendezvous routes writes, the masters returning and moving,
//!   the acknowledged positions and the ownership term. Only the elected proxy writes it, in one
//!   transaction that compares the revision it read and its hold on `<prefix>/leader`
//!   ([`Etcd::record_ownership`]); it sends the masters a view only once the view's term is in
//!   etcd. Every proxy reads it at the start of a session and watches it, and routes by it.
//! * `<prefix>/acked/<id>` ([`AckedEntry`], no lease, so it outlives the proxy) holds the
//!   highest sequence per origin this proxy acknowledged. A write under a write concern of at
//!   least one master is acknowledged only once this key covers it
//!   ([`Etcd::record_acknowledgement`]), in a transaction that compares the ownership plan's
//!   revision this proxy last saw and found the origin not moving. So once a plan marking a
//!   master *moving* is in etcd, no proxy can record a new acknowledgement of its writes, and
//!   the elected proxy's next read of every proxy's key ([`Etcd::acknowledged_by_all`]) is
//!   final: it moves the master's objects only when the others hold all of it.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};

use super::{first_kv, Etcd};
use crate::coordinator::record::{highest_by_origin, AckedEntry, OwnershipRecord, ProxyEntry};
use crate::coordinator::CoordinatorError;

/// Attempts to record one acknowledgement while the plan changes under it.
const ACK_ATTEMPTS: usize = 3;

impl Etcd {
    pub(super) fn ownership_key(&self) -> String {
        self.key("ownership")
    }

    fn acked_key(&self) -> String {
        self.key(&format!("acked/{}", self.id))
    }

    /// This session's client, or why there is none.
    fn client(&self) -> Result<Client, CoordinatorError> {
        self.state()
            .client
            .clone()
            .ok_or_else(|| self.unreachable("no session with etcd"))
    }

    /// Reads the ownership plan at the start of a session and routes by it.
    pub(super) async fn adopt_ownership(
        &self,
        client: &mut Client,
    ) -> Result<(), CoordinatorError> {
        let got = self
            .within("read ownership", client.get(self.ownership_key(), None))
            .await?;
        if let Some(kv) = got.kvs().first() {
            self.on_ownership(kv);
        }
        Ok(())
    }

    /// A plan read or watched: routing follows it (an older one than the plan held is ignored).
    pub(super) fn on_ownership(&self, kv: &KeyValue) {
        match OwnershipRecord::parse(&self.ownership_key(), kv.value()) {
            Ok(plan) => crate::ownership::adopt(plan, kv.mod_revision()),
            Err(e) => tracing::error!(error = %e, "ignored"),
        }
    }

    /// After a failed comparison: adopts the plan etcd holds now, or notes that there is none.
    fn take_current_plan(&self, responses: Vec<etcd_client::TxnOpResponse>) {
        match first_kv(responses) {
            Some(kv) => self.on_ownership(&kv),
            None => self.ownership_gone(),
        }
    }

    /// The plan is gone from etcd (deleted by hand): the revision held is forgotten, so that
    /// the elected proxy records its plan again and the next comparison is against none.
    pub(super) fn ownership_gone(&self) {
        tracing::warn!(key = %self.ownership_key(), "the ownership plan is gone from etcd: the elected proxy records it again");
        crate::ownership::plan_absent();
    }

    /// Writes `plan` if the plan in etcd is still at revision `expected` (0: none yet) and this
    /// proxy still holds the election; returns the new revision. On a conflict the plan in etcd
    /// is adopted and nothing is written.
    pub(crate) async fn record_ownership(
        &self,
        mut plan: OwnershipRecord,
        expected: i64,
    ) -> Result<i64, CoordinatorError> {
        let mut client = self.client()?;
        let lease = self
            .state()
            .lease
            .ok_or_else(|| self.unreachable("no lease"))?;
        if !self.decides() {
            return Err(CoordinatorError::NotLeader(self.leader_name()));
        }
        plan.by = self.id.clone();
        plan.at_ms = crate::lease::wall_ms();
        let key = self.ownership_key();
        let value = serde_json::to_string(&plan).unwrap_or_default();
        let moves_owners = crate::ownership::moves_owners(&plan);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, expected),
                Compare::lease(self.leader_key(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let answer = self
            .within("ownership transaction", client.txn(txn))
            .await?;
        if !answer.succeeded() {
            self.take_current_plan(answer.op_responses());
            return Err(CoordinatorError::Conflict(format!(
                "the ownership plan is no longer at revision {expected}, or the leader key is \
                 not this proxy's"
            )));
        }
        let revision = answer.header().map_or(0, |h| h.revision());
        tracing::warn!(owning = ?plan.owning, moving = ?plan.moving, returning = ?plan.returning.keys().collect::<Vec<_>>(), term = plan.term, revision, "ownership plan recorded in etcd");
        if moves_owners {
            self.state().ownership_moves += 1;
        }
        crate::ownership::committed(plan, revision);
        Ok(revision)
    }

    /// Per origin, the highest sequence any proxy ever recorded as acknowledged (the keys
    /// without a lease, and the live proxies' liveness entries).
    pub(crate) async fn acknowledged_by_all(
        &self,
    ) -> Result<BTreeMap<String, u64>, CoordinatorError> {
        let mut client = self.client()?;
        let mut maps = Vec::new();
        for prefix in ["acked/", "proxies/"] {
            let got = self
                .within(
                    "read acknowledgements",
                    client.get(self.key(prefix), Some(GetOptions::new().with_prefix())),
                )
                .await?;
            for kv in got.kvs() {
                let map = if prefix == "acked/" {
                    serde_json::from_slice::<AckedEntry>(kv.value())
                        .map(|e| e.acked_by_origin)
                        .ok()
                } else {
                    serde_json::from_slice::<ProxyEntry>(kv.value())
                        .map(|e| e.acked_by_origin)
                        .ok()
                };
                maps.extend(map);
            }
        }
        Ok(highest_by_origin(&maps))
    }

    /// Records in etcd that this proxy acknowledges `origin`'s write at `seq`, unless the plan
    /// says `origin`'s objects are moving away. Concurrent calls share one write.
    pub(crate) async fn record_acknowledgement(
        &self,
        origin: &str,
        seq: u64,
    ) -> Result<(), CoordinatorError> {
        let _turn = self.ack_turn.lock().await;
        for _ in 0..ACK_ATTEMPTS {
            if self
                .state()
                .acked_recorded
                .get(origin)
                .is_some_and(|at| *at >= seq)
            {
                return Ok(());
            }
            let seen = crate::ownership::plan_revision_unless_moving(origin)
                .ok_or_else(|| CoordinatorError::Moving(origin.to_string()))?;
            let acked = crate::ownership::acknowledged();
            let entry = AckedEntry {
                acked_by_origin: acked.clone(),
                at_ms: crate::lease::wall_ms(),
            };
            let key = self.ownership_key();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen)])
                .and_then([TxnOp::put(
                    self.acked_key(),
                    serde_json::to_string(&entry).unwrap_or_default(),
                    None,
                )])
                .or_else([TxnOp::get(key, None)]);
            let mut client = self.client()?;
            let answer = self
                .within("record acknowledgement", client.txn(txn))
                .await?;
            if answer.succeeded() {
                self.state().acked_recorded = acked;
                return Ok(());
            }
            // The plan changed since this proxy read it: take it, then judge again.
            self.take_current_plan(answer.op_responses());
        }
        Err(CoordinatorError::Conflict(
            "the ownership plan kept changing while the acknowledgement was recorded".into(),
        ))
    }
}
