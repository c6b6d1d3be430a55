//! The etcd coordinator: this proxy's session with etcd, its election, the watch that reroutes
//! it, and the one-transaction failover.
//!
//! A session: connect; take (or keep) this proxy's lease (`leaseMillis`, whole seconds); put
//! `<prefix>/proxies/<id>` under it; read `<prefix>/primary` (creating it, once for the whole
//! cluster, from the topology's primary when absent) and adopt it; watch the prefix from that
//! revision on. Every tick (a third of the lease, at most 500 ms) the lease is kept alive and the
//! election tried: `<prefix>/leader` is created under this proxy's lease when nobody holds it.
//! This proxy decides ([`Etcd::decides`]) only until the lease it last renewed can have ended
//! as seen from etcd (the renewal's send time plus nine tenths of its TTL), so a proxy cut off
//! from etcd stops renewing the primary's write lease before any other proxy can be elected.
//!
//! A session talks to one member of `endpoints`; after a failure the next session tries the
//! next member. When etcd stops answering, the session ends and is opened again every 500 ms: nothing is
//! decided meanwhile, routing stays on the last primary etcd named, `/cluster/status` says
//! `reachable: false` with the reason, and the log says it once per outage. etcd keeps leases
//! alive across its own restarts, so a proxy that comes back within its TTL keeps its lease and
//! its election.
//!
//! Under MULTI_PRIMARY the session also reads and watches the ownership plan
//! (`<prefix>/ownership`) and records acknowledgements (`<prefix>/acked/<id>`): see
//! [`multi_primary`].

mod multi_primary;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dirkdb_core::config::EtcdCoordinator;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::record::{PrimaryRecord, ProxyEntry};
use super::CoordinatorError;
use crate::ack_watermark::Position;
use crate::backend::HealthState;
use crate::http::{get_json, post_json};
use crate::topology::{SharedTopology, Topology};

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause between two attempts to reach etcd.
const RETRY: Duration = Duration::from_millis(500);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Test builds only: `DIRKDB_PAUSE_AFTER_FAILOVER_TXN_MS` holds a failover that long right after
/// its etcd transaction, before the promotion, so that a test can kill the proxy at that moment.
#[cfg(feature = "failure-injection")]
async fn pause_after_transaction() {
    let pause = std::env::var("DIRKDB_PAUSE_AFTER_FAILOVER_TXN_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = pause {
        tracing::warn!(
            ms,
            "failure injection: pausing after the failover transaction"
        );
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "failure-injection"))]
async fn pause_after_transaction() {}

/// The first key-value a transaction's `get` answered.
fn first_kv(responses: Vec<TxnOpResponse>) -> Option<etcd_client::KeyValue> {
    responses.into_iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// The later of two positions, compared as (term, seq) pairs: a position of a later term is
/// later whatever its sequence (each term's primary numbers its writes on from its own).
fn highest_position(a: Position, b: Position) -> Position {
    if (b.term, b.seq) > (a.term, a.seq) {
        b
    } else {
        a
    }
}

/// One proxy's coordinator.
pub(crate) struct Etcd {
    /// The settings in force: `endpoints` and `leaseMillis` change on a reload of config.json
    /// (the prefix never does, see [`super::on_reload`]).
    settings: Mutex<EtcdCoordinator>,
    /// Ends the session, so that the next one uses new settings.
    reconfigured: Notify,
    /// This proxy's name (`host:sqlPort`).
    id: String,
    /// This proxy's admin address, published with its liveness.
    admin: String,
    state: Mutex<State>,
    contact: Notify,
    /// One acknowledgement record in etcd at a time (the next one carries every write
    /// acknowledged meanwhile).
    ack_turn: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    lease: Option<i64>,
    /// The TTL `lease` was granted with, in seconds.
    lease_ttl: i64,
    reachable: bool,
    last_error: Option<String>,
    unreachable_since_ms: Option<i64>,
    /// Who holds `<prefix>/leader`, as last seen.
    leader: Option<String>,
    /// This proxy decides until then.
    decides_until: Option<Instant>,
    /// The last primary record seen, and its revision.
    record: Option<(PrimaryRecord, i64)>,
    /// The watermark and per-origin positions last put in the liveness entry.
    published: Option<(Position, BTreeMap<String, u64>)>,
    failovers: u64,
    /// The per-origin positions last recorded at `<prefix>/acked/<id>`.
    acked_recorded: BTreeMap<String, u64>,
    /// Ownership plans this proxy recorded that changed the owning masters.
    ownership_moves: u64,
    /// Sessions opened so far (picks the member of the next one).
    sessions: usize,
}

impl Etcd {
    pub(crate) fn new(settings: EtcdCoordinator, id: String, admin: String) -> Etcd {
        Etcd {
            settings: Mutex::new(settings),
            reconfigured: Notify::new(),
            id,
            admin,
            state: Mutex::new(State::default()),
            contact: Notify::new(),
            ack_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> EtcdCoordinator {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies new `endpoints` and `leaseMillis` (same prefix): the session ends and the next
    /// one connects with them (under a new lease when `leaseMillis` changed).
    pub(crate) fn reconfigure(&self, settings: EtcdCoordinator) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        self.reconfigured.notify_one();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.settings().prefix.trim_end_matches('/'))
    }

    fn primary_key(&self) -> String {
        self.key("primary")
    }

    fn leader_key(&self) -> String {
        self.key("leader")
    }

    fn proxy_key(&self) -> String {
        self.key(&format!("proxies/{}", self.id))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.settings().lease_seconds() as u64)
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> CoordinatorError {
        CoordinatorError::Unreachable {
            endpoints: self.settings().endpoints.join(","),
            reason: reason.to_string(),
        }
    }

    /// Runs `request` within [`REQUEST_TIMEOUT`].
    async fn within<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordinatorError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.unreachable(format!("{what}: {e}"))),
            Err(_) => {
                Err(self.unreachable(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))
            }
        }
    }

    /// Resolves once etcd has answered and its primary was adopted.
    pub(crate) fn first_contact(&self) -> impl Future<Output = ()> + '_ {
        self.contact.notified()
    }

    /// True while this proxy certainly holds the election.
    pub(crate) fn decides(&self) -> bool {
        self.state()
            .decides_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Why etcd cannot be counted on now (`None` while the session answers).
    pub(crate) fn unreachable_reason(&self) -> Option<String> {
        let s = self.state();
        (!s.reachable).then(|| {
            s.last_error
                .clone()
                .unwrap_or_else(|| "not reached yet since this proxy started".into())
        })
    }

    pub(crate) fn leader_name(&self) -> String {
        self.state()
            .leader
            .clone()
            .unwrap_or_else(|| "no proxy (none elected yet, or etcd unreachable)".into())
    }

    /// Keeps a session with etcd open forever, opening a new one after any failure.
    pub(crate) async fn run(self: Arc<Self>, topology: Arc<SharedTopology>) {
        loop {
            let Err(e) = self.session(&topology).await;
            if matches!(e, CoordinatorError::Reconfigured) {
                tracing::warn!(endpoints = %self.settings().endpoints.join(","), lease_millis = self.settings().lease_millis, "failover.coordinator changed in config.json: reconnecting to etcd with the new settings");
                self.state().client = None;
                continue;
            }
            self.note_failure(&e, &topology);
            tokio::time::sleep(RETRY).await;
        }
    }

    fn note_failure(&self, e: &CoordinatorError, topology: &SharedTopology) {
        let mut s = self.state();
        s.client = None;
        if matches!(e, CoordinatorError::LeaseExpired) {
            s.lease = None;
            s.decides_until = None;
        }
        let first = s.reachable || s.unreachable_since_ms.is_none();
        s.reachable = false;
        s.last_error = Some(e.to_string());
        if first {
            s.unreachable_since_ms = Some(crate::lease::wall_ms());
            drop(s);
            tracing::error!(error = %e, primary = %topology.load().primary().id, "etcd coordinator: no failover can be decided; routing goes on to the last known primary");
        } else {
            tracing::debug!(error = %e, "etcd still unreachable");
        }
    }

    fn note_contact(&self, client: &Client) {
        let mut s = self.state();
        s.client = Some(client.clone());
        if !s.reachable {
            if s.unreachable_since_ms.is_some() {
                tracing::warn!(proxy = %self.id, "etcd reachable again: coordination resumed");
            }
            s.reachable = true;
            s.last_error = None;
            s.unreachable_since_ms = None;
        }
    }

    /// One session; returns only with the reason it ended.
    async fn session(
        &self,
        topology: &SharedTopology,
    ) -> Result<std::convert::Infallible, CoordinatorError> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_millis(500), Duration::from_millis(1000));
        // One member per session, the next after each failure: a client balanced over every
        // member keeps sending some requests to a dead one.
        let endpoint = self.next_endpoint();
        let mut client = self
            .within("connect", Client::connect([endpoint], Some(options)))
            .await?;
        let lease = self.lease(&mut client).await?;
        let (mut keeper, mut alive) = self
            .within("keep-alive stream", client.lease_keep_alive(lease))
            .await?;
        self.publish(&mut client, lease, true).await?;
        let revision = self.adopt_current(&mut client, topology).await?;
        self.adopt_ownership(&mut client).await?;
        let (_watcher, mut events) = self
            .within(
                "watch",
                client.watch(
                    self.key(""),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                ),
            )
            .await?;
        self.note_contact(&client);
        self.contact.notify_waiters();
        let period = (self.ttl() / 3).min(Duration::from_millis(500));
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                message = events.message() => {
                    let message = message
                        .map_err(|e| self.unreachable(format!("watch: {e}")))?
                        .ok_or_else(|| self.unreachable("watch: stream closed"))?;
                    if message.canceled() {
                        return Err(self.unreachable(format!("watch canceled: {}", message.cancel_reason())));
                    }
                    for event in message.events() {
                        self.on_event(event, topology).await;
                    }
                }
                _ = ticks.tick() => {
                    self.tick(&mut client, lease, &mut keeper, &mut alive).await?;
                    self.note_contact(&client);
                }
                _ = self.reconfigured.notified() => return Err(CoordinatorError::Reconfigured),
            }
        }
    }

    /// The member the next session talks to (round robin over `endpoints`).
    fn next_endpoint(&self) -> String {
        let mut s = self.state();
        let endpoints = self.settings().endpoints;
        let i = s.sessions % endpoints.len().max(1);
        s.sessions += 1;
        endpoints.get(i).cloned().unwrap_or_default()
    }

    /// The lease this proxy held before (when etcd still knows it) or a new one.
    async fn lease(&self, client: &mut Client) -> Result<i64, CoordinatorError> {
        let ttl = self.settings().lease_seconds();
        let previous = self.state().lease;
        if let Some(old) = previous.filter(|_| self.state().lease_ttl == ttl) {
            let (mut keeper, mut alive) = self
                .within("keep-alive stream", client.lease_keep_alive(old))
                .await?;
            self.within("keep-alive", keeper.keep_alive()).await?;
            let answer = self.within("keep-alive", alive.message()).await?;
            if answer.is_some_and(|a| a.ttl() > 0) {
                return Ok(old);
            }
        }
        if let Some(old) = previous {
            // leaseMillis changed: the old lease (and the election it may hold) ends now.
            let _ = self.within("lease revoke", client.lease_revoke(old)).await;
        }
        let granted = self
            .within("lease grant", client.lease_grant(ttl, None))
            .await?;
        let mut s = self.state();
        s.lease = Some(granted.id());
        s.lease_ttl = ttl;
        s.decides_until = None;
        Ok(granted.id())
    }

    /// Puts this proxy's liveness entry (when forced or when its watermark moved).
    async fn publish(
        &self,
        client: &mut Client,
        lease: i64,
        force: bool,
    ) -> Result<(), CoordinatorError> {
        let acked = crate::ack_watermark::current();
        let by_origin = crate::ownership::acknowledged();
        let now = Some((acked, by_origin.clone()));
        if !force && self.state().published == now {
            return Ok(());
        }
        let entry = ProxyEntry {
            admin: self.admin.clone(),
            acked_term: acked.term,
            acked_seq: acked.seq,
            acked_by_origin: by_origin,
        };
        let value = serde_json::to_string(&entry).unwrap_or_default();
        let options = PutOptions::new().with_lease(lease);
        self.within(
            "put liveness",
            client.put(self.proxy_key(), value, Some(options)),
        )
        .await?;
        self.state().published = now;
        Ok(())
    }

    /// Keeps the lease alive, tries the election, republishes the watermark.
    async fn tick(
        &self,
        client: &mut Client,
        lease: i64,
        keeper: &mut etcd_client::LeaseKeeper,
        alive: &mut etcd_client::LeaseKeepAliveStream,
    ) -> Result<(), CoordinatorError> {
        let sent = Instant::now();
        self.within("keep-alive", keeper.keep_alive()).await?;
        let answer = self
            .within("keep-alive", alive.message())
            .await?
            .ok_or_else(|| self.unreachable("keep-alive stream closed"))?;
        if answer.ttl() <= 0 {
            return Err(CoordinatorError::LeaseExpired);
        }
        let ttl = Duration::from_secs(answer.ttl() as u64).min(self.ttl());
        self.campaign(client, lease, sent + ttl - ttl / 10).await?;
        self.publish(client, lease, false).await
    }

    /// Creates `<prefix>/leader` under this proxy's lease when nobody holds it; notes who does.
    async fn campaign(
        &self,
        client: &mut Client,
        lease: i64,
        certain_until: Instant,
    ) -> Result<(), CoordinatorError> {
        let key = self.leader_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let answer = self.within("election", client.txn(txn)).await?;
        let holder = if answer.succeeded() {
            tracing::warn!(proxy = %self.id, "elected: this proxy now decides failovers");
            Some((self.id.clone(), lease))
        } else {
            answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| (String::from_utf8_lossy(kv.value()).to_string(), kv.lease())),
                _ => None,
            })
        };
        let mut s = self.state();
        let ours = holder.as_ref().is_some_and(|(_, l)| *l == lease);
        if !ours && s.decides_until.take().is_some() {
            tracing::warn!(proxy = %self.id, "no longer elected: another proxy decides failovers");
        }
        if ours {
            s.decides_until = Some(certain_until);
        }
        s.leader = holder.map(|(name, _)| name);
        Ok(())
    }

    /// Reads the primary record (creating it from the topology when the cluster has none yet),
    /// adopts it, and returns the revision to watch from.
    async fn adopt_current(
        &self,
        client: &mut Client,
        topology: &SharedTopology,
    ) -> Result<i64, CoordinatorError> {
        let key = self.primary_key();
        let initial = {
            let t = topology.load_full();
            PrimaryRecord {
                primary: t.primary().id.clone(),
                term: crate::lease::term_of(&t.primary().id),
                by: self.id.clone(),
                at_ms: crate::lease::wall_ms(),
            }
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), initial.to_json(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = self.within("read primary", client.txn(txn)).await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let (record, record_revision) = if answer.succeeded() {
            tracing::info!(primary = %initial.primary, "etcd had no primary record for this cluster: recorded config.json's");
            (initial, revision)
        } else {
            let kv = first_kv(answer.op_responses())
                .ok_or_else(|| self.unreachable("read primary: empty answer"))?;
            (PrimaryRecord::parse(&key, kv.value())?, kv.mod_revision())
        };
        self.adopt(record, record_revision, topology).await;
        Ok(revision)
    }

    async fn on_event(&self, event: &etcd_client::Event, topology: &SharedTopology) {
        let Some(kv) = event.kv() else { return };
        let key = String::from_utf8_lossy(kv.key()).to_string();
        if key == self.primary_key() && event.event_type() == EventType::Put {
            match PrimaryRecord::parse(&key, kv.value()) {
                Ok(record) => self.adopt(record, kv.mod_revision(), topology).await,
                Err(e) => tracing::error!(error = %e, "ignored"),
            }
        } else if key == self.ownership_key() {
            match event.event_type() {
                EventType::Put => self.on_ownership(kv),
                EventType::Delete => self.ownership_gone(),
            }
        } else if key == self.leader_key() && event.event_type() == EventType::Delete {
            tracing::info!("the elected proxy left; the next tick holds an election");
        }
    }

    /// Makes etcd's primary this proxy's primary (a no-op when it already is).
    async fn adopt(&self, record: PrimaryRecord, revision: i64, topology: &SharedTopology) {
        self.state().record = Some((record.clone(), revision));
        if topology.load().primary().id == record.primary {
            return;
        }
        let writer = topology.write().await;
        let t = writer.current();
        if t.primary().id == record.primary {
            return;
        }
        let Some(i) = t.index_of(&record.primary) else {
            tracing::error!(etcd = %record.primary, ours = %t.primary().id, "etcd names a primary config.json does not have; keeping ours");
            return;
        };
        let old = t.primary().id.clone();
        crate::lease::stop_renewing(&old);
        crate::lease::resume_renewing(&record.primary);
        let updated = writer.store(t.with_primary(i));
        drop(writer);
        crate::failover::persist(&updated);
        for (j, backend) in updated.backends.iter().enumerate() {
            if j != i {
                backend.clear_pool();
            }
        }
        tracing::warn!(%old, new = %record.primary, term = record.term, by = %record.by, "etcd names a new primary: rerouted");
    }

    /// The failover transaction: compares the primary record's revision read and this proxy's
    /// hold on the leader key, and writes the new primary and term. Returns the term.
    pub(crate) async fn commit_failover(
        &self,
        old: &str,
        new: &str,
        proposed: u64,
    ) -> Result<u64, CoordinatorError> {
        let (client, lease) = {
            let s = self.state();
            (s.client.clone(), s.lease)
        };
        let (Some(mut client), Some(lease)) = (client, lease) else {
            return Err(self.unreachable("no session"));
        };
        if !self.decides() {
            return Err(CoordinatorError::NotLeader(self.leader_name()));
        }
        let key = self.primary_key();
        let got = self
            .within("read primary", client.get(key.clone(), None))
            .await?;
        let kv = got
            .kvs()
            .first()
            .ok_or_else(|| CoordinatorError::Conflict("the primary record vanished".into()))?;
        let current = PrimaryRecord::parse(&key, kv.value())?;
        if current.primary != old {
            return Err(CoordinatorError::Conflict(format!(
                "etcd already names {} (term {}), not {old}",
                current.primary, current.term
            )));
        }
        let record = PrimaryRecord {
            primary: new.to_string(),
            term: proposed.max(current.term + 1),
            by: self.id.clone(),
            at_ms: crate::lease::wall_ms(),
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                Compare::lease(self.leader_key(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::put(key, record.to_json(), None)]);
        let answer = self.within("failover transaction", client.txn(txn)).await?;
        if !answer.succeeded() {
            return Err(CoordinatorError::Conflict(format!(
                "revision {} is no longer current, or the leader key is not this proxy's",
                kv.mod_revision()
            )));
        }
        let revision = answer.header().map_or(0, |h| h.revision());
        {
            let mut s = self.state();
            s.record = Some((record.clone(), revision));
            s.failovers += 1;
        }
        tracing::warn!(%old, %new, term = record.term, revision, "failover recorded in etcd");
        pause_after_transaction().await;
        Ok(record.term)
    }

    /// `own` and every live proxy's published watermark, whichever is highest.
    pub(crate) async fn cluster_watermark(&self, own: Position) -> Position {
        let client = self.state().client.clone();
        let Some(mut client) = client else { return own };
        let options = GetOptions::new().with_prefix();
        let Ok(got) = self
            .within(
                "read proxies",
                client.get(self.key("proxies/"), Some(options)),
            )
            .await
        else {
            return own;
        };
        got.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<ProxyEntry>(kv.value()).ok())
            .map(|e| e.acked())
            .fold(own, highest_position)
    }

    /// Promotes etcd's primary when it still reports REPLICA (see
    /// [`super::complete_promotion`]), after taking the lease from every other instance this
    /// proxy renewed, then repoints the others.
    pub(crate) async fn complete_promotion(&self, topology: &SharedTopology, seen: &Topology) {
        if seen.primary().health().reported_role.as_deref() != Some("REPLICA")
            || seen.primary().health().state == HealthState::Down
        {
            return;
        }
        let Some((record, _)) = self.state().record.clone() else {
            return;
        };
        let writer = topology.write().await;
        let t = writer.current();
        let primary = t.primary().clone();
        let Some(admin) = primary.admin.clone() else {
            return;
        };
        if primary.id != record.primary {
            return;
        }
        let Ok(status) = get_json(&admin, "/replication/status", ADMIN_TIMEOUT).await else {
            return;
        };
        if status["role"] != "REPLICA" {
            return;
        }
        tracing::warn!(instance = %primary.id, term = record.term, "etcd's primary is still a replica (a failover was interrupted): promoting it");
        for b in t.backends.iter().filter(|b| b.id != primary.id) {
            crate::lease::take_lease_from(b, &t.config.failover).await;
        }
        let body = crate::lease::promotion_body(record.term, &t.config.failover);
        match post_json(&admin, "/replication/promote", &body, ADMIN_TIMEOUT).await {
            Ok(promoted) => {
                let term = promoted["term"].as_u64().unwrap_or(record.term);
                crate::lease::note_status(&primary.id, term, false);
                crate::lease::resume_renewing(&primary.id);
            }
            Err(e) => {
                tracing::error!(instance = %primary.id, error = %e, "could not finish the interrupted failover; retrying");
                return;
            }
        }
        drop(writer);
        for i in 0..t.backends.len() {
            if i != t.primary {
                crate::failover::fence(&t, i).await;
            }
        }
    }

    /// `/cluster/status`'s `coordinator`.
    pub(crate) fn status(&self) -> Value {
        let decides = self.decides();
        let settings = self.settings();
        let ownership = crate::ownership::recorded_status();
        let s = self.state();
        let record = s.record.as_ref().map(
            |(r, rev)| json!({ "primary": r.primary, "term": r.term, "by": r.by, "revision": rev }),
        );
        json!({
            "type": "ETCD",
            "endpoints": settings.endpoints,
            "prefix": settings.prefix,
            "leaseMillis": settings.lease_millis,
            "proxy": self.id,
            "reachable": s.reachable,
            "lastError": s.last_error,
            "unreachableSinceMs": s.unreachable_since_ms,
            "leader": s.leader,
            "decides": decides,
            "record": record,
            "failoversRecorded": s.failovers,
            "ownershipMovesRecorded": s.ownership_moves,
            "ownership": ownership,
            "note": if s.reachable { Value::Null } else {
                json!("etcd unreachable: no failover is decided; routing goes on to the last known primary")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_watermark_compares_positions_as_term_then_sequence() {
        let p = |term, seq| Position { term, seq };
        assert_eq!(highest_position(p(1, 90), p(2, 5)), p(2, 5));
        assert_eq!(highest_position(p(2, 5), p(1, 90)), p(2, 5));
        assert_eq!(highest_position(p(2, 5), p(2, 7)), p(2, 7));
        assert_eq!(highest_position(p(2, 7), p(2, 7)), p(2, 7));
    }
}
