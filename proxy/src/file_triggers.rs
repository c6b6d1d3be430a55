//! Write triggers for FILE replication: after a write is acknowledged, the proxy asks the current
//! primary to copy that database to the secondaries (`POST /replication/written`), coalesced.
//!
//! Why this exists: in FILE mode the secondaries receive consistent copies of whole database
//! files instead of a row-level stream. DirkDB's proxy copied a master's files itself after each
//! WRITE it forwarded, so a replica caught up right after a write instead of at the next periodic
//! sweep (`replication.intervalSeconds`). Our proxy keeps that promptness but not the copying: the
//! primary owns its files and knows how to take a consistent copy, so the proxy only tells it
//! which database was written, and the primary copies it soon (coalescing bursts itself too).
//!
//! The proxy must never turn a write burst into a request burst, nor slow a client's write down:
//!
//! * [`FileTriggers::trigger`] only updates an in-memory set and returns (fire-and-forget).
//! * The first trigger for an idle database is sent at once. From then on the database stays in
//!   a window until [`FOLLOW_UP_GAP`] after its request ended: at most one request per database
//!   is in flight, and every trigger arriving during the request or the gap after it collapses
//!   into a single follow-up request, sent when the gap ends (and opening a new window). The
//!   follow-up covers every write acknowledged before it starts, so no acknowledged write is left
//!   without a copy request after it. A thousand writes a second to one database therefore cause
//!   at most `1 / (FOLLOW_UP_GAP + round trip)` requests a second (under 5), never a thousand,
//!   however fast the primary answers. The state machine is [`Coalescer`].
//! * Each request goes to the admin address of the primary current at send time (it changes on
//!   failover); a primary without an `adminPort` is skipped, as is a topology no longer in FILE
//!   mode. Failures are logged at debug and counted, never retried beyond the follow-up: the
//!   primary's own periodic sweep remains the safety net.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dirkdb_core::config::ReplicationType;
use serde::Serialize;

use crate::topology::SharedTopology;
use dirkdb_core::sync::lock;

/// Shortest time between the end of one request for a database and the next request for it.
pub(crate) const FOLLOW_UP_GAP: Duration = Duration::from_millis(200);

/// Longest wait for the primary's answer to one trigger request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin endpoint a trigger is sent to.
pub(crate) const WRITTEN_PATH: &str = "/replication/written";

/// How one trigger request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    /// The primary answered 200.
    Sent,
    /// Nothing was sent (no FILE mode any more, or a primary without an `adminPort`).
    Skipped(String),
    /// The request failed (unreachable primary, timeout, non-200 answer).
    Failed(String),
}

/// The future of one trigger request.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = SendOutcome> + Send>>;

/// Sends one trigger request for a database (injectable, so tests need no network).
pub(crate) type SendFn = Arc<dyn Fn(String) -> SendFuture + Send + Sync>;

/// The coalescing state: which databases are in a window (a request in flight, or the gap after
/// it), and whether a follow-up was asked for since the current request started.
///
/// A database goes through: absent → [`request`](Coalescer::request) returns true (the caller
/// starts a sender) → [`begin_send`](Coalescer::begin_send) → request in flight, then the gap;
/// meanwhile further `request`s return false and mark a follow-up → at the end of the gap
/// [`finished`](Coalescer::finished) returns true when a follow-up is due (the sender sends
/// again, from `begin_send`), or false and forgets the database (the next `request` starts a
/// new sender, which sends at once).
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    /// Database → a follow-up was requested since the last `begin_send`.
    pending: HashMap<String, bool>,
}

impl Coalescer {
    /// Records a trigger; true when no sender runs for `db`, so the caller must start one.
    pub(crate) fn request(&mut self, db: &str) -> bool {
        match self.pending.get_mut(db) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.pending.insert(db.to_string(), true);
                true
            }
        }
    }

    /// The sender is about to send for `db`: the request covers every trigger so far.
    pub(crate) fn begin_send(&mut self, db: &str) {
        if let Some(again) = self.pending.get_mut(db) {
            *again = false;
        }
    }

    /// The window after the sender's request for `db` ended; true when a follow-up is due
    /// (triggers arrived since [`begin_send`](Coalescer::begin_send)), false when the database
    /// is forgotten.
    pub(crate) fn finished(&mut self, db: &str) -> bool {
        match self.pending.get(db) {
            Some(true) => true,
            Some(false) => {
                self.pending.remove(db);
                false
            }
            None => false,
        }
    }

    /// Databases in a window (with a sender running).
    pub(crate) fn active(&self) -> usize {
        self.pending.len()
    }
}

/// A snapshot of the trigger counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerStats {
    /// Triggers handed over by sessions (acknowledged writes in FILE mode).
    pub requested: u64,
    /// Triggers absorbed into a request in flight or a follow-up.
    pub coalesced: u64,
    /// Requests sent to a primary and answered 200.
    pub sent: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests not sent (not FILE mode any more, or a primary without an `adminPort`).
    pub skipped: u64,
    /// Databases in a window: a request in flight, or the gap after it.
    pub in_flight: u64,
}

/// The shared trigger component: sessions call [`trigger`](FileTriggers::trigger), background
/// tasks (at most one per database) send the requests.
pub(crate) struct FileTriggers {
    coalescer: Mutex<Coalescer>,
    send: SendFn,
    gap: Duration,
    requested: AtomicU64,
    coalesced: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl FileTriggers {
    /// Triggers sent over HTTP to the admin API of `topology`'s current primary.
    pub(crate) fn new(topology: Arc<SharedTopology>) -> Arc<FileTriggers> {
        let send: SendFn = Arc::new(move |db: String| {
            let topology = topology.clone();
            Box::pin(async move { send_written(&topology, &db).await }) as SendFuture
        });
        FileTriggers::with_sender(send, FOLLOW_UP_GAP)
    }

    /// Triggers sent by `send`, each request for a database at least `gap` after the end of the
    /// previous one.
    pub(crate) fn with_sender(send: SendFn, gap: Duration) -> Arc<FileTriggers> {
        Arc::new(FileTriggers {
            coalescer: Mutex::new(Coalescer::default()),
            send,
            gap,
            requested: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        })
    }

    /// Notes that a write to `db` was acknowledged; returns at once. Starts a sender task for
    /// `db` unless `db` is in a window already, in which case the trigger joins its follow-up.
    /// Must be called within a Tokio runtime.
    pub(crate) fn trigger(self: &Arc<Self>, db: &str) {
        self.requested.fetch_add(1, Ordering::Relaxed);
        if !lock(&self.coalescer).request(db) {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let this = self.clone();
        let db = db.to_string();
        tokio::spawn(async move { this.run_sender(db).await });
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> TriggerStats {
        TriggerStats {
            requested: self.requested.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            in_flight: lock(&self.coalescer).active() as u64,
        }
    }

    /// Sends for `db`, then again after each gap in which triggers arrived.
    async fn run_sender(self: Arc<Self>, db: String) {
        loop {
            lock(&self.coalescer).begin_send(&db);
            match (self.send)(db.clone()).await {
                SendOutcome::Sent => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                }
                SendOutcome::Skipped(why) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(database = %db, reason = %why, "file replication trigger skipped");
                }
                SendOutcome::Failed(why) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(database = %db, error = %why, "file replication trigger failed");
                }
            }
            tokio::time::sleep(self.gap).await;
            if !lock(&self.coalescer).finished(&db) {
                return;
            }
        }
    }
}

/// `POST /replication/written {"database": db}` to the current primary's admin API.
async fn send_written(topology: &SharedTopology, db: &str) -> SendOutcome {
    let t = topology.load_full();
    if t.config.replication.kind != ReplicationType::File {
        return SendOutcome::Skipped(format!(
            "replication is {} now",
            t.config.replication.kind.as_str()
        ));
    }
    let primary = t.primary();
    let Some(admin) = &primary.admin else {
        return SendOutcome::Skipped(format!("primary {} has no adminPort", primary.id));
    };
    let body = serde_json::json!({ "database": db }).to_string();
    match crate::http::post_json(admin, WRITTEN_PATH, &body, REQUEST_TIMEOUT).await {
        Ok(_) => SendOutcome::Sent,
        Err(e) => SendOutcome::Failed(format!("{} ({admin}): {e}", primary.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use tokio::sync::Semaphore;
    // tokio's clock: real time, except in the tests that start with it paused.
    use tokio::time::Instant;

    #[test]
    fn a_burst_during_a_request_collapses_into_one_follow_up() {
        let mut c = Coalescer::default();
        assert!(c.request("shop"), "the first trigger starts a sender");
        c.begin_send("shop");
        for _ in 0..1000 {
            assert!(!c.request("shop"), "no second sender while one runs");
        }
        assert!(c.finished("shop"), "the burst asks for one follow-up");
        c.begin_send("shop");
        assert!(!c.finished("shop"), "nothing arrived during the follow-up");
        assert_eq!(c.active(), 0);
        assert!(c.request("shop"), "a later trigger starts a new sender");
    }

    #[test]
    fn triggers_before_the_send_starts_are_covered_by_it() {
        let mut c = Coalescer::default();
        assert!(c.request("shop"));
        // Triggers between the spawn and the send (or during the follow-up gap) ride along.
        assert!(!c.request("shop"));
        assert!(!c.request("shop"));
        c.begin_send("shop");
        assert!(!c.finished("shop"), "no follow-up: the send covered them");
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn databases_are_coalesced_separately() {
        let mut c = Coalescer::default();
        assert!(c.request("a"));
        assert!(c.request("b"));
        c.begin_send("a");
        c.begin_send("b");
        assert!(!c.request("a"));
        assert!(!c.finished("b"));
        assert_eq!(c.active(), 1);
        assert!(c.finished("a"));
        assert!(c.request("b"), "b's sender ended, a new one starts");
        assert_eq!(c.active(), 2);
    }

    /// A sender that records its calls and holds each request until a permit is released.
    fn gated(outcome: SendOutcome) -> (SendFn, Arc<Mutex<Vec<String>>>, Arc<Semaphore>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (c, g) = (calls.clone(), gate.clone());
        let send: SendFn = Arc::new(move |db: String| {
            let (c, g, outcome) = (c.clone(), g.clone(), outcome.clone());
            Box::pin(async move {
                lock(&c).push(db);
                g.acquire().await.unwrap().forget();
                outcome
            }) as SendFuture
        });
        (send, calls, gate)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_thousand_writes_cause_two_requests_and_never_wait_for_them() {
        let (send, calls, gate) = gated(SendOutcome::Sent);
        let triggers = FileTriggers::with_sender(send, Duration::from_millis(5));
        triggers.trigger("shop");
        until("first request", || lock(&calls).len() == 1).await;
        let started = Instant::now();
        for _ in 0..1000 {
            triggers.trigger("shop");
        }
        triggers.trigger("blog");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "triggering never waits for a request"
        );
        until("blog's own request", || lock(&calls).len() == 2).await;
        assert_eq!(triggers.stats().in_flight, 2);
        gate.add_permits(2);
        until("shop's follow-up", || lock(&calls).len() == 3).await;
        gate.add_permits(1);
        until("idle", || triggers.stats().in_flight == 0).await;
        // Give a wrongly spawned extra sender the chance to show up.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut seen = lock(&calls).clone();
        seen.sort();
        assert_eq!(seen, ["blog", "shop", "shop"]);
        let stats = triggers.stats();
        assert_eq!(
            stats,
            TriggerStats {
                requested: 1002,
                coalesced: 1000,
                sent: 3,
                failed: 0,
                skipped: 0,
                in_flight: 0,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_just_after_a_fast_request_wait_for_its_window() {
        // The primary answers at once: writes arriving after a request ended must still
        // collapse, or a steady write load would send one request per write.
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let send: SendFn = Arc::new(move |db: String| {
            lock(&c).push((db, Instant::now()));
            Box::pin(async { SendOutcome::Sent }) as SendFuture
        });
        let gap = Duration::from_millis(150);
        let triggers = FileTriggers::with_sender(send, gap);
        triggers.trigger("shop");
        until("first request", || lock(&calls).len() == 1).await;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            triggers.trigger("shop");
        }
        until("idle", || triggers.stats().in_flight == 0).await;
        let calls = lock(&calls).clone();
        assert_eq!(calls.len(), 2, "one request, then one follow-up");
        assert!(
            calls[1].1 - calls[0].1 >= gap,
            "the follow-up waits for the gap"
        );
        assert_eq!(triggers.stats().coalesced, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_and_the_next_write_triggers_again() {
        let (send, calls, gate) = gated(SendOutcome::Failed("connection refused".into()));
        let triggers = FileTriggers::with_sender(send, Duration::from_millis(5));
        gate.add_permits(10);
        triggers.trigger("shop");
        until("idle", || triggers.stats().in_flight == 0).await;
        triggers.trigger("shop");
        until("second request", || lock(&calls).len() == 2).await;
        until("idle again", || triggers.stats().in_flight == 0).await;
        let stats = triggers.stats();
        assert_eq!((stats.requested, stats.sent, stats.failed), (2, 0, 2));
    }

    #[tokio::test]
    async fn a_topology_without_file_mode_or_admin_port_is_skipped() {
        let config = |kind: &str, admin: &str| {
            dirkdb_core::config::ClusterConfig::parse(&format!(
                r#"{{ "instances": [ {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1",
                   "port": 1, {admin} "dataDirectory": "a" }} ],
                   "replication": {{ "type": "{kind}" }} }}"#
            ))
            .unwrap()
        };
        let t = SharedTopology::new(Topology::new(config("OPLOG", r#""adminPort": 9,"#)));
        assert!(matches!(
            send_written(&t, "shop").await,
            SendOutcome::Skipped(_)
        ));
        t.write().await.store(Topology::new(config("FILE", "")));
        assert!(matches!(
            send_written(&t, "shop").await,
            SendOutcome::Skipped(_)
        ));
    }
}
