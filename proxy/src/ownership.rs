//! MULTI_PRIMARY ownership, the proxy's side: which master owns each object, telling the
//! masters the inputs they check their writes against, and moving objects safely when a
//! master is down (issue #16 item 4).
//!
//! An object's owner is DirkDB's rendezvous of its key over the masters that *own* objects
//! ([`Topology::owner_of`]), in `config.json` order. At every health check the proxy sends each
//! reachable master `POST /replication/ownership {"up": [...], "term": T, "leaseMillis",
//! "sentAtMs"}`, so that a master refuses writes to objects it does not own even from a client
//! that bypasses the proxy (`server/src/replication/ownership.rs`). The update is a lease: a
//! master whose view is not renewed within `failover.leaseMillis` (anchored at the send time)
//! refuses every write. `T`, the ownership term, is raised whenever the set changes, and starts
//! at the proxy's wall clock in milliseconds so that a restarted proxy never sends a term below
//! one it sent before; a master refuses lower terms and keeps its term across restarts.
//!
//! The set moves in two ways, decided once per health round ([`plan`]):
//!
//! * **Away from a master down** for `failover.detectionMillis` (AUTOMATIC failover only): from
//!   then on no write of that master is acknowledged (its outcome is reported unknown), and
//!   the master leaves the set only once (a) any view it may hold has certainly lapsed — last
//!   update sent + `failover.leaseMillis` + `failover.clockDriftMillis` — and (b) every other
//!   master of the set that is up has applied the master's stream up to the highest position
//!   the proxy acknowledged for it under a write concern of at least one master
//!   ([`acknowledge`]). Its objects then go to the next masters by rendezvous. Until (b) holds
//!   (the only master that applied the last acknowledged write is down too) they stay where
//!   they are and their writes fail: no acknowledged write is ever left behind.
//! * **Back to a master that returns**: it is *returning* first. The other masters get a view
//!   that gives it its objects back (so they stop writing them) and answer with their
//!   committed sequence; the returning master gets a view in which it owns nothing, until it
//!   has applied every other master's stream up to those sequences, and every other master up
//!   has applied its stream up to its committed sequence and is streaming from it (so that all
//!   of them stream from it again before it writes: a write it later has acknowledged by one master is then on the
//!   others' way too). Then it joins the set and owns its objects again. Meanwhile the proxy
//!   refuses writes to them with that reason.
//!
//! Under an ETCD coordinator (several proxies) only the elected proxy decides, and the plan
//! lives in etcd (`<prefix>/ownership`, `crate::coordinator`): the elected proxy records each
//! new plan by compare-and-swap and sends the masters a view only once its term is in etcd, so
//! the term the masters fence on comes from etcd. The other proxies adopt the plan they read
//! and watch ([`adopt`]) and route by it. Every proxy records in etcd what it acknowledges
//! before answering the client, unless the plan says the origin is moving; the elected proxy
//! moves a master's objects only after a plan marking it moving is in etcd and the others hold
//! the highest sequence any proxy recorded for it, a proxy whose lease lapsed included.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dirkdb_core::config::{FailoverConfig, FailoverMode};
use dirkdb_core::rendezvous::ObjectRef;
use serde_json::{json, Value};

use crate::coordinator::record::OwnershipRecord;
use crate::http::{get_json, post_json};
use crate::topology::Topology;

#[derive(Debug, Default)]
struct Record {
    /// The masters that own objects, in config order (`None` before the first round).
    owning: Option<Vec<String>>,
    /// Masters back and catching up: per master, each other master's committed sequence once it
    /// took the view that gives the returning one its objects back.
    returning: BTreeMap<String, BTreeMap<String, u64>>,
    /// The set (owning and returning) the term is for.
    up: Option<Vec<String>>,
    term: u64,
    /// Highest position acknowledged per origin under a write concern of at least one master.
    acked: HashMap<String, u64>,
    /// Origins whose objects are moving away: their writes are no longer acknowledged.
    moving: HashSet<String>,
    /// Since when each master has been down (as the health checks see it).
    down_since: HashMap<String, Instant>,
    /// When a view was last sent to each master.
    view_sent: HashMap<String, Instant>,
    /// Each master's positions as it last answered (per origin; its own committed sequence).
    positions: HashMap<String, BTreeMap<String, u64>>,
    /// The origins each master was streaming from when it last answered.
    streaming: HashMap<String, HashSet<String>>,
    /// True under an ETCD coordinator: a move needs its master recorded moving in etcd first,
    /// and every proxy's acknowledged positions.
    coordinated: bool,
    /// Under ETCD: the plan last recorded in or read from etcd, and its revision.
    recorded: Option<(OwnershipRecord, i64)>,
    /// Under ETCD: per origin, the highest sequence any proxy recorded as acknowledged, read
    /// this round (`None`: etcd did not answer, so nothing moves).
    acked_by_all: Option<BTreeMap<String, u64>>,
}

fn record() -> std::sync::MutexGuard<'static, Record> {
    static RECORD: OnceLock<Mutex<Record>> = OnceLock::new();
    RECORD
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Record {
    /// The ownership term for the set `up`: raised when the set changed since the last call.
    fn term_for(&mut self, up: &[String]) -> u64 {
        if self.up.as_deref() != Some(up) {
            let now = crate::lease::wall_ms().max(0) as u64;
            self.term = now.max(self.term + 1);
            self.up = Some(up.to_vec());
        }
        self.term
    }

    /// See [`acknowledge`].
    fn acknowledge(&mut self, origin: &str, seq: u64) -> bool {
        let owns = self
            .owning
            .as_ref()
            .is_none_or(|o| o.iter().any(|m| m == origin));
        if !owns || self.moving.contains(origin) {
            return false;
        }
        let at = self.acked.entry(origin.to_string()).or_insert(0);
        *at = (*at).max(seq);
        true
    }

    /// See [`adopt`].
    fn adopt(&mut self, plan: OwnershipRecord, revision: i64) {
        if self
            .recorded
            .as_ref()
            .is_some_and(|(_, held)| *held >= revision)
        {
            return;
        }
        if self.up.as_ref() != Some(&plan.set) || self.term != plan.term {
            tracing::info!(owning = ?plan.owning, moving = ?plan.moving, term = plan.term, by = %plan.by, "ownership plan from etcd: routing by it");
        }
        self.owning = Some(plan.owning.clone());
        self.up = Some(plan.set.clone());
        self.term = plan.term;
        self.returning = plan.returning.clone();
        self.moving = plan.moving.iter().cloned().collect();
        self.recorded = Some((plan, revision));
    }

    /// See [`committed`].
    fn commit(&mut self, plan: OwnershipRecord, revision: i64) {
        if self
            .recorded
            .as_ref()
            .is_none_or(|(_, held)| *held < revision)
        {
            self.recorded = Some((plan, revision));
        }
    }

    /// See [`moves_owners`].
    fn moves_owners(&self, plan: &OwnershipRecord) -> bool {
        self.recorded
            .as_ref()
            .is_some_and(|(previous, _)| previous.owning != plan.owning)
    }

    /// See [`plan_revision_unless_moving`].
    fn revision_unless_moving(&self, origin: &str) -> Option<i64> {
        if self.moving.contains(origin) {
            return None;
        }
        Some(self.recorded.as_ref().map_or(0, |(_, revision)| *revision))
    }

    fn position(&self, on: &str, origin: &str) -> u64 {
        self.positions
            .get(on)
            .and_then(|p| p.get(origin))
            .copied()
            .unwrap_or(0)
    }
}

/// One view to send: to whom, and the masters it says own objects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outgoing {
    to: String,
    up: Vec<String>,
}

/// Decides this round's set from the masters `up` (health), `masters` (config order) and the
/// failover settings; returns the views to send and the term.
fn plan(
    r: &mut Record,
    up: &[String],
    masters: &[String],
    failover: &FailoverConfig,
    now: Instant,
) -> (Vec<Outgoing>, u64) {
    if r.view_sent.is_empty() {
        // A view sent by an earlier proxy (or the one elected before) may still run: counted
        // as sent now.
        for m in masters {
            r.view_sent.insert(m.clone(), now);
        }
    }
    let mut owning = r.owning.clone().unwrap_or_else(|| masters.to_vec());
    for m in masters {
        if up.contains(m) {
            r.down_since.remove(m);
        } else {
            r.down_since.entry(m.clone()).or_insert(now);
        }
    }
    for m in owning.clone() {
        if up.contains(&m) {
            r.moving.remove(&m);
            continue;
        }
        let down_for = r.down_since.get(&m).map_or(Duration::ZERO, |t| now - *t);
        if failover.mode != FailoverMode::Automatic
            || down_for < Duration::from_millis(failover.detection_millis)
        {
            continue;
        }
        if r.moving.insert(m.clone()) {
            tracing::warn!(instance = %m, acknowledged = r.acked.get(&m).copied().unwrap_or(0), "master down past failover.detectionMillis: its objects move once its view lapsed and the others hold its acknowledged writes");
        }
        if may_leave(r, &owning, up, &m, failover, now) {
            owning.retain(|o| o != &m);
            tracing::warn!(instance = %m, owning = ?owning, "ownership moved: the master's objects go to the next masters by rendezvous");
        }
    }
    r.returning.retain(|m, _| up.contains(m));
    for m in up {
        if !owning.contains(m) {
            r.returning.entry(m.clone()).or_default();
        }
    }
    let others_up: Vec<String> = owning.iter().filter(|o| up.contains(o)).cloned().collect();
    let caught_up: Vec<String> = r
        .returning
        .iter()
        .filter(|(m, cutoffs)| {
            others_up.iter().all(|o| {
                cutoffs.get(o).is_some_and(|c| r.position(m, o) >= *c)
                    && r.position(o, m) >= r.position(m, m)
                    && r.streaming.get(o).is_some_and(|s| s.contains(m.as_str()))
            })
        })
        .map(|(m, _)| m.clone())
        .collect();
    for m in caught_up {
        r.returning.remove(&m);
        r.moving.remove(&m);
        owning.push(m.clone());
        tracing::info!(instance = %m, "the returning master caught up: it owns its objects again");
    }
    owning = in_order(masters, &owning);
    let set = in_order(
        masters,
        &owning
            .iter()
            .chain(r.returning.keys())
            .cloned()
            .collect::<Vec<_>>(),
    );
    r.owning = Some(owning);
    let term = r.term_for(&set);
    let sends = up
        .iter()
        .map(|to| Outgoing {
            to: to.clone(),
            up: if r.returning.contains_key(to) {
                set.iter().filter(|m| *m != to).cloned().collect()
            } else {
                set.clone()
            },
        })
        .collect();
    (sends, term)
}

/// True when master `m`, down, may leave the set `owning`: any view it holds has lapsed and
/// every other master of the set that is up applied its acknowledged writes (under ETCD: the
/// highest any proxy recorded, read after a plan marking `m` moving was in etcd).
fn may_leave(
    r: &Record,
    owning: &[String],
    up: &[String],
    m: &str,
    failover: &FailoverConfig,
    now: Instant,
) -> bool {
    let lapsed = r
        .view_sent
        .get(m)
        .is_none_or(|sent| now >= *sent + failover.lease() + failover.clock_drift());
    let mut acked = r.acked.get(m).copied().unwrap_or(0);
    if r.coordinated {
        let recorded_moving = r
            .recorded
            .as_ref()
            .is_some_and(|(plan, _)| plan.moving.iter().any(|x| x == m));
        let Some(all) = r.acked_by_all.as_ref().filter(|_| recorded_moving) else {
            return false;
        };
        acked = acked.max(all.get(m).copied().unwrap_or(0));
    }
    let others: Vec<&String> = owning
        .iter()
        .filter(|o| *o != m && up.contains(o))
        .collect();
    lapsed && !others.is_empty() && others.iter().all(|o| r.position(o, m) >= acked)
}

/// `ids` in `masters`' order, each once.
fn in_order(masters: &[String], ids: &[String]) -> Vec<String> {
    masters
        .iter()
        .filter(|m| ids.contains(m))
        .cloned()
        .collect()
}

/// The plan to record in etcd with the revision it replaces, when it differs from the one
/// recorded.
fn proposal(r: &Record) -> Option<(OwnershipRecord, i64)> {
    let (previous, revision) = r.recorded.clone().unwrap_or_default();
    let owning = r.owning.clone().unwrap_or_default();
    let moves = match &r.recorded {
        Some(_) if previous.owning != owning => previous.moves + 1,
        _ => previous.moves,
    };
    let mut moving: Vec<String> = r.moving.iter().cloned().collect();
    moving.sort();
    let own: BTreeMap<String, u64> = r.acked.iter().map(|(o, s)| (o.clone(), *s)).collect();
    let next = OwnershipRecord {
        owning,
        set: r.up.clone().unwrap_or_default(),
        returning: r.returning.clone(),
        moving,
        acknowledged: crate::coordinator::record::highest_by_origin(
            [&own].into_iter().chain(r.acked_by_all.as_ref()),
        ),
        term: r.term,
        moves,
        ..OwnershipRecord::default()
    };
    let unchanged = r.recorded.is_some() && next.same_plan(&previous);
    (!unchanged).then_some((next, revision))
}

/// A plan read from etcd at `revision` (the elected proxy's, or one it wrote before): this
/// proxy routes, refuses and acknowledges by it. A plan older than the one held is ignored.
pub(crate) fn adopt(plan: OwnershipRecord, revision: i64) {
    record().adopt(plan, revision);
}

/// The elected proxy recorded `plan` at `revision`.
pub(crate) fn committed(plan: OwnershipRecord, revision: i64) {
    record().commit(plan, revision);
}

/// True when `plan` changes the owning masters of the plan held (read before it is recorded:
/// the watch may bring it back before the recording proxy notes it).
pub(crate) fn moves_owners(plan: &OwnershipRecord) -> bool {
    record().moves_owners(plan)
}

/// The plan is not in etcd (deleted by hand): the next one recorded replaces none. Routing
/// and refusals go on by the plan held meanwhile.
pub(crate) fn plan_absent() {
    record().recorded = None;
}

/// The revision of the plan this proxy routes by (0: none in etcd yet), or `None` when it says
/// `origin`'s objects are moving away (read together, under one lock).
pub(crate) fn plan_revision_unless_moving(origin: &str) -> Option<i64> {
    record().revision_unless_moving(origin)
}

/// This proxy does not decide this round: the views it sent are forgotten, so that once
/// elected it counts every master's view as just sent (another proxy may have sent one).
pub(crate) fn not_deciding() {
    record().view_sent.clear();
}

/// The plan in etcd as this proxy holds it, with its revision (for `/cluster/status`).
pub(crate) fn recorded_status() -> Value {
    let r = record();
    match &r.recorded {
        None => Value::Null,
        Some((plan, revision)) => json!({ "plan": plan, "revision": revision }),
    }
}

/// Takes a master's answer to its view: its positions, and for a master that gave returning
/// ones their objects back, its committed sequence as their cutoff.
fn take_answer(r: &mut Record, from: &str, answer: &Value) {
    let mut positions = BTreeMap::new();
    if let Some(map) = answer["positions"].as_object() {
        for (origin, seq) in map {
            positions.insert(origin.clone(), seq.as_u64().unwrap_or(0));
        }
    }
    let committed = answer["committedSequence"].as_u64().unwrap_or(0);
    positions.insert(from.to_string(), committed);
    r.positions.insert(from.to_string(), positions);
    let streaming = answer["streaming"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    r.streaming.insert(from.to_string(), streaming);
    // Only an answer to a view that gives the returning masters their objects back counts
    // (answers arrive in the background, possibly to an earlier view).
    let current_view = answer["ownership"]["term"].as_u64() == Some(r.term);
    if current_view && !r.returning.contains_key(from) {
        for cutoffs in r.returning.values_mut() {
            cutoffs.entry(from.to_string()).or_insert(committed);
        }
    }
}

/// A write of `origin` at `seq` was confirmed under a write concern of at least one master:
/// records it and returns true when it may be acknowledged (its objects are not moving away).
pub(crate) fn acknowledge(origin: &str, seq: u64) -> bool {
    record().acknowledge(origin, seq)
}

/// The highest sequence acknowledged per origin under a write concern of at least one master
/// (what this proxy publishes in etcd for the proxy that decides ownership moves).
pub(crate) fn acknowledged() -> std::collections::BTreeMap<String, u64> {
    record()
        .acked
        .iter()
        .map(|(o, s)| (o.clone(), *s))
        .collect()
}

/// The masters whose rendezvous decides owners (owning and returning, config order), once the
/// first round ran.
pub(crate) fn routing_set() -> Option<Vec<String>> {
    record().up.clone()
}

/// True while `id` is back but catching up (its objects are not writable yet).
pub(crate) fn is_returning(id: &str) -> bool {
    record().returning.contains_key(id)
}

/// True while `id` is down past `failover.detectionMillis` and its objects are moving away.
pub(crate) fn is_moving(id: &str) -> bool {
    record().moving.contains(id)
}

/// The set and the ownership term last sent (`None` before the first health check).
pub(crate) fn current() -> Option<(Vec<String>, u64)> {
    let r = record();
    r.up.clone().map(|up| (up, r.term))
}

/// One round: decides the set ([`plan`]), records it in etcd under an ETCD coordinator, and
/// sends each master that is not down its leased view in the background; the answers (within
/// `timeout`) feed the next rounds.
pub(crate) async fn round(t: &Topology, timeout: Duration) {
    if !t.is_multi_primary() {
        return;
    }
    let coordinated = crate::coordinator::coordinated();
    let up: Vec<String> = t.masters_up().iter().map(|b| b.id.clone()).collect();
    let masters = t.config.master_ids();
    // Only a master down may move: every proxy's acknowledgements are read then.
    let acked_by_all = if coordinated && up.len() < masters.len() {
        crate::coordinator::acknowledged_by_all()
            .await
            .map_err(|e| tracing::warn!(error = %e, "acknowledgements not read from etcd: no ownership moves this round"))
            .ok()
    } else {
        None
    };
    let failover = &t.config.failover;
    let (sends, term, proposal) = {
        let mut r = record();
        r.coordinated = coordinated;
        r.acked_by_all = acked_by_all;
        let (sends, term) = plan(&mut r, &up, &masters, failover, Instant::now());
        let proposal = if coordinated { proposal(&r) } else { None };
        (sends, term, proposal)
    };
    if let Some((plan, expected)) = proposal {
        // The masters hear of a new plan (and its term) only once it is in etcd.
        if let Err(e) = crate::coordinator::record_ownership(plan, expected).await {
            tracing::warn!(error = %e, "ownership plan not recorded in etcd: no view sent this round");
            return;
        }
    }
    for send in sends {
        send_view(t, send, term, timeout);
    }
}

/// Sends one master its view in the background (a paused master must not delay the others'
/// renewals); its answer feeds the next rounds.
fn send_view(t: &Topology, send: Outgoing, term: u64, timeout: Duration) {
    let Some(admin) = t
        .index_of(&send.to)
        .and_then(|i| t.backends[i].admin.clone())
    else {
        return;
    };
    record().view_sent.insert(send.to.clone(), Instant::now());
    let failover = &t.config.failover;
    let body = json!({
        "up": send.up,
        "term": term,
        "leaseMillis": failover.lease().as_millis() as u64,
        "sentAtMs": crate::lease::wall_ms(),
    })
    .to_string();
    let id = send.to;
    tokio::spawn(async move {
        match post_json(&admin, "/replication/ownership", &body, timeout).await {
            Ok(answer) => take_answer(&mut record(), &id, &answer),
            Err(e) => tracing::debug!(instance = %id, error = %e, "ownership update failed"),
        }
    });
}

/// The owners of `objects`, as (object, owner id) pairs; an object without an owner (no master
/// up) is paired with `None`.
pub(crate) fn owners(t: &Topology, objects: &[ObjectRef]) -> Vec<(ObjectRef, Option<String>)> {
    objects
        .iter()
        .map(|o| (o.clone(), t.owner_of(o).map(|b| b.id.clone())))
        .collect()
}

/// `object (owner), …` for error messages.
pub(crate) fn describe(owned: &[(ObjectRef, Option<String>)]) -> String {
    owned
        .iter()
        .map(|(o, owner)| match owner {
            Some(owner) => format!("{o} (owner {owner})"),
            None => format!("{o} (no master up)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Objects listed in `/cluster/status` at most.
const STATUS_OBJECTS: usize = 1000;

/// The MULTI_PRIMARY part of `/cluster/status` (`null` in SINGLE_PRIMARY): the ownership
/// inputs, each object's owner (the objects as a master lists them, the owner as this proxy
/// routes), and each master's per-origin positions and streams with their lag, asked of the
/// masters up (`GET /replication/status`, `/replication/owners`) at each request.
pub(crate) async fn status(t: &Topology) -> Value {
    if !t.is_multi_primary() {
        return Value::Null;
    }
    let (up, term) = current().unwrap_or_default();
    let timeout = Duration::from_millis(500);
    let mut asked = Vec::new();
    for master in t.masters_up() {
        let Some(admin) = master.admin.clone() else {
            continue;
        };
        asked.push((
            master.id.clone(),
            tokio::spawn(async move {
                let status = get_json(&admin, "/replication/status", timeout).await;
                let owners = get_json(&admin, "/replication/owners", timeout).await;
                (status, owners)
            }),
        ));
    }
    let mut masters = serde_json::Map::new();
    let mut objects: Option<Vec<Value>> = None;
    let mut open_conflicts = 0;
    for (id, task) in asked {
        let Ok((status, owners)) = task.await else {
            continue;
        };
        let entry = match status {
            Ok(s) => {
                open_conflicts += s["conflicts"]["open"].as_u64().unwrap_or(0);
                json!({
                "positions": s["positions"],
                "streams": s["peers"],
                "checkpoints": s["checkpoints"],
                "conflicts": s["conflicts"],
                "committedSequence": s["committedSequence"],
                })
            }
            Err(e) => json!({ "error": e.to_string() }),
        };
        masters.insert(id, entry);
        if objects.is_none() {
            objects = owners.ok().map(|o| routed_owners(t, &o["objects"]));
        }
    }
    json!({
        "masters": t.config.master_ids(),
        "mastersUp": up,
        "ownershipTerm": term,
        "returning": returning_status(),
        "moving": moving_status(),
        "partition": t.config.routing.writes.partition.as_str(),
        "hash": t.config.routing.writes.hash.as_str(),
        "replicationNote": t.config.replication.file_replaced_by_oplog
            .then_some(dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY),
        "streamsBetweenMasters": true,
        "objects": objects,
        "positions": masters,
        "openConflicts": open_conflicts,
    })
}

/// Every master's conflicts (`GET /replication/conflicts` of each master up; a master that
/// does not answer within 500 ms is left out, and logged).
pub(crate) async fn conflicts(t: &Topology) -> Vec<Value> {
    listing(t).await.0
}

/// Every master's conflicts, and for each configured master whose conflicts are not among
/// them, `{"master": id, "unlisted": why}` (`SHOW CONFLICTS` gives it a row of its own, so a
/// listing without a master's conflicts says so).
pub(crate) async fn conflicts_and_unlisted(t: &Topology) -> Vec<Value> {
    let (mut out, answered) = listing(t).await;
    for id in t.config.master_ids() {
        if answered.contains(&id) {
            continue;
        }
        let up = t.masters_up().iter().any(|m| m.id == id);
        let why = if up {
            format!("not listed: {id} did not answer (GET /replication/conflicts within 500 ms)")
        } else {
            format!(
                "not listed: {id} is down; the conflicts of the rows it is home of are recorded \
                 and resolved on it, once it is back (the other masters hold those changes \
                 meanwhile and list them, with home {id} and state held)"
            )
        };
        out.push(json!({ "master": id, "unlisted": why }));
    }
    out
}

/// The conflicts of the masters up that answered, and their ids.
async fn listing(t: &Topology) -> (Vec<Value>, Vec<String>) {
    let mut out = Vec::new();
    let mut answered = Vec::new();
    for master in t.masters_up() {
        let Some(admin) = master.admin.as_deref() else {
            continue;
        };
        match get_json(admin, "/replication/conflicts", Duration::from_millis(500)).await {
            Ok(listed) => {
                out.extend(listed["conflicts"].as_array().cloned().unwrap_or_default());
                answered.push(master.id.clone());
            }
            Err(e) => {
                tracing::warn!(instance = %master.id, error = %e, "SHOW CONFLICTS: a master did not answer")
            }
        }
    }
    (out, answered)
}

/// The masters back and catching up, with what each must reach.
fn returning_status() -> Value {
    let r = record();
    json!(r.returning)
}

/// The masters whose objects are moving away, with the position acknowledged for each.
fn moving_status() -> Value {
    let r = record();
    let moving: BTreeMap<&String, u64> = r
        .moving
        .iter()
        .map(|m| (m, r.acked.get(m).copied().unwrap_or(0)))
        .collect();
    json!(moving)
}

/// The objects as the first master up that answers lists them (`GET /replication/owners`),
/// each with the owner this proxy routes its writes to; `None` when no master answered.
pub(crate) async fn routed_objects(t: &Topology, timeout: Duration) -> Option<Vec<Value>> {
    for master in t.masters_up() {
        let Some(admin) = master.admin.as_deref() else {
            continue;
        };
        if let Ok(listed) = get_json(admin, "/replication/owners", timeout).await {
            return Some(routed_owners(t, &listed["objects"]));
        }
    }
    None
}

/// Each configured master's part in ownership, as this proxy last decided it: `owning`,
/// `returning` (back, catching up), `moving` (down, its objects moving away) or `out`.
pub(crate) fn master_states(t: &Topology) -> Vec<(String, &'static str)> {
    let r = record();
    t.config
        .master_ids()
        .into_iter()
        .map(|id| {
            let state = if r.returning.contains_key(&id) {
                "returning"
            } else if r.moving.contains(&id) {
                "moving"
            } else if r.up.as_ref().is_some_and(|up| up.contains(&id)) {
                "owning"
            } else {
                "out"
            };
            (id, state)
        })
        .collect()
}

/// The objects a master listed, each with the owner this proxy routes its writes to.
fn routed_owners(t: &Topology, listed: &Value) -> Vec<Value> {
    use dirkdb_core::rendezvous::ObjectKind;
    let empty = Vec::new();
    listed
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .take(STATUS_OBJECTS)
        .filter_map(|o| {
            let (kind, db, name) = (
                o["kind"].as_str()?,
                o["database"].as_str()?,
                o["name"].as_str()?,
            );
            let object = match kind {
                "DATABASE" => ObjectRef::database(db),
                "VIEW" => ObjectRef::object(db, ObjectKind::View, name),
                "DOMAIN" => ObjectRef::object(db, ObjectKind::Domain, name),
                _ => ObjectRef::object(db, ObjectKind::Table, name),
            };
            let owner = t.owner_of(&object).map(|b| b.id.clone());
            Some(json!({ "kind": kind, "database": db, "name": name, "owner": owner }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn failover() -> FailoverConfig {
        FailoverConfig {
            detection_millis: 1000,
            lease_millis: Some(500),
            clock_drift_millis: Some(100),
            ..FailoverConfig::default()
        }
    }

    fn answer(positions: &[(&str, u64)], committed: u64, term: u64) -> Value {
        let map: serde_json::Map<String, Value> = positions
            .iter()
            .map(|(o, s)| (o.to_string(), json!(s)))
            .collect();
        let streaming: Vec<&str> = positions.iter().map(|(o, _)| *o).collect();
        json!({ "positions": map, "committedSequence": committed, "streaming": streaming,
                "ownership": { "term": term } })
    }

    #[test]
    fn the_term_rises_when_the_set_changes_and_only_then() {
        let mut r = Record::default();
        let a = r.term_for(&ids(&["m1", "m2"]));
        assert_eq!(r.term_for(&ids(&["m1", "m2"])), a);
        let b = r.term_for(&ids(&["m1"]));
        assert!(b > a);
        assert!(r.term_for(&ids(&["m1", "m2"])) > b);
    }

    #[test]
    fn a_down_master_leaves_only_once_its_view_lapsed_and_the_others_hold_its_acknowledged_writes()
    {
        let masters = ids(&["m1", "m2", "m3"]);
        let f = failover();
        let mut r = Record::default();
        let t0 = Instant::now();
        let (sends, term) = plan(&mut r, &masters, &masters, &f, t0);
        assert_eq!(sends.len(), 3);
        assert!(sends.iter().all(|s| s.up == masters));
        r.view_sent.insert("m3".into(), t0);
        r.acked.insert("m3".into(), 40);
        // m3 goes down: nothing moves before failover.detectionMillis.
        let up = ids(&["m1", "m2"]);
        let (sends, same) = plan(&mut r, &up, &masters, &f, t0);
        assert_eq!((sends[0].up.clone(), same), (masters.clone(), term));
        // Past detection, the others lack m3's acknowledged write 40: it stays, writes refused.
        let a = answer(&[("m3", 40)], 9, r.term);
        take_answer(&mut r, "m1", &a);
        let a = answer(&[("m3", 39)], 7, r.term);
        take_answer(&mut r, "m2", &a);
        let (sends, _) = plan(&mut r, &up, &masters, &f, t0 + Duration::from_millis(1100));
        assert_eq!(sends[0].up, masters, "m2 has not applied m3's 40");
        assert!(r.moving.contains("m3"));
        assert!(!r.acknowledge("m3", 41), "no acknowledgement while moving");
        // Both hold it now: m3 leaves, at a higher term.
        let a = answer(&[("m3", 40)], 7, r.term);
        take_answer(&mut r, "m2", &a);
        let (sends, moved) = plan(&mut r, &up, &masters, &f, t0 + Duration::from_millis(1200));
        assert_eq!(sends[0].up, up);
        assert!(moved > term);
        // m3 returns: the others give it its objects back, it owns nothing until caught up.
        let all = masters.clone();
        let (sends, back) = plan(&mut r, &all, &masters, &f, t0 + Duration::from_millis(1300));
        assert!(back > moved);
        let to = |id: &str| sends.iter().find(|s| s.to == id).map(|s| s.up.clone());
        assert_eq!(to("m1"), Some(masters.clone()));
        assert_eq!(to("m3"), Some(ids(&["m1", "m2"])));
        let a = answer(&[("m3", 40)], 12, r.term);
        take_answer(&mut r, "m1", &a);
        let a = answer(&[("m3", 40)], 8, r.term);
        take_answer(&mut r, "m2", &a);
        let a = answer(&[("m1", 11), ("m2", 8)], 40, r.term);
        take_answer(&mut r, "m3", &a);
        let (sends, _) = plan(&mut r, &all, &masters, &f, t0 + Duration::from_millis(1400));
        assert_eq!(
            sends.iter().find(|s| s.to == "m3").map(|s| s.up.clone()),
            Some(ids(&["m1", "m2"])),
            "m3 lacks m1's 12"
        );
        let a = answer(&[("m1", 12), ("m2", 8)], 40, r.term);
        take_answer(&mut r, "m3", &a);
        let (sends, last) = plan(&mut r, &all, &masters, &f, t0 + Duration::from_millis(1500));
        assert!(sends.iter().all(|s| s.up == masters));
        assert_eq!(last, back, "the set did not change: same term");
        assert!(r.acknowledge("m3", 41));
    }

    #[test]
    fn a_master_that_comes_back_before_it_left_keeps_its_objects() {
        let masters = ids(&["m1", "m2", "m3"]);
        let f = failover();
        let mut r = Record::default();
        let t0 = Instant::now();
        plan(&mut r, &ids(&["m1", "m2"]), &masters, &f, t0);
        r.view_sent
            .insert("m3".into(), t0 + Duration::from_millis(1000));
        plan(
            &mut r,
            &ids(&["m1", "m2"]),
            &masters,
            &f,
            t0 + Duration::from_millis(1100),
        );
        assert!(r.moving.contains("m3"), "its view has not lapsed yet");
        let (sends, _) = plan(
            &mut r,
            &masters,
            &masters,
            &f,
            t0 + Duration::from_millis(1200),
        );
        assert!(!r.moving.contains("m3"));
        assert!(sends.iter().all(|s| s.up == masters));
        let manual = FailoverConfig {
            mode: FailoverMode::Manual,
            ..failover()
        };
        let mut r = Record::default();
        plan(&mut r, &ids(&["m1"]), &masters, &manual, t0);
        let (sends, _) = plan(
            &mut r,
            &ids(&["m1"]),
            &masters,
            &manual,
            t0 + Duration::from_secs(60),
        );
        assert_eq!(
            sends[0].up, masters,
            "MANUAL failover: nothing moves by itself"
        );
    }

    #[test]
    fn under_etcd_a_master_moves_only_once_etcd_says_moving_and_the_others_hold_every_proxys_acks()
    {
        let masters = ids(&["m1", "m2", "m3"]);
        let up = ids(&["m1", "m2"]);
        let f = failover();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Record {
            coordinated: true,
            acked_by_all: Some(BTreeMap::new()),
            ..Record::default()
        };
        plan(&mut r, &masters, &masters, &f, at(0));
        let (first, revision) = proposal(&r).expect("the first plan is recorded");
        assert_eq!((first.owning.clone(), revision), (masters.clone(), 0));
        assert!(!r.moves_owners(&first), "no owning master changed");
        r.commit(first, 5);
        assert!(proposal(&r).is_none(), "nothing new to record");
        plan(&mut r, &up, &masters, &f, at(0));
        // m3 down past detection: this proxy acknowledged 10 of it, another proxy (its lease
        // maybe lapsed) 40; m1 and m2 applied 10 only.
        r.view_sent.insert("m3".into(), at(0));
        r.acked.insert("m3".into(), 10);
        r.acked_by_all = Some(BTreeMap::from([("m3".into(), 40)]));
        let a = answer(&[("m3", 10)], 9, r.term);
        take_answer(&mut r, "m1", &a);
        let a = answer(&[("m3", 10)], 7, r.term);
        take_answer(&mut r, "m2", &a);
        let (sends, _) = plan(&mut r, &up, &masters, &f, at(1100));
        assert_eq!(sends[0].up, masters, "not moved before etcd says moving");
        let (moving, revision) = proposal(&r).expect("moving is recorded");
        assert_eq!((moving.moving.clone(), revision), (ids(&["m3"]), 5));
        assert_eq!(moving.acknowledged.get("m3"), Some(&40));
        r.commit(moving, 6);
        let (sends, _) = plan(&mut r, &up, &masters, &f, at(1200));
        assert_eq!(
            sends[0].up, masters,
            "the others lack the 40 another proxy acknowledged"
        );
        let a = answer(&[("m3", 40)], 9, r.term);
        take_answer(&mut r, "m1", &a);
        let a = answer(&[("m3", 40)], 7, r.term);
        take_answer(&mut r, "m2", &a);
        r.acked_by_all = None;
        let (sends, _) = plan(&mut r, &up, &masters, &f, at(1300));
        assert_eq!(
            sends[0].up, masters,
            "etcd unread this round: nothing moves"
        );
        r.acked_by_all = Some(BTreeMap::from([("m3".into(), 40)]));
        let (sends, term) = plan(&mut r, &up, &masters, &f, at(1400));
        assert_eq!(sends[0].up, up);
        let (moved, _) = proposal(&r).expect("the move is recorded");
        assert_eq!(
            (moved.owning.clone(), moved.term, moved.moves),
            (up, term, 1)
        );
        assert!(r.moves_owners(&moved), "the owning masters changed");
        r.commit(moved, 7);
    }

    #[test]
    fn a_proxy_routes_by_the_plan_it_adopts_and_ignores_an_older_one() {
        let plan = OwnershipRecord {
            owning: ids(&["m1", "m2"]),
            set: ids(&["m1", "m2"]),
            moving: ids(&["m3"]),
            term: 77,
            ..OwnershipRecord::default()
        };
        let mut r = Record::default();
        assert_eq!(
            r.revision_unless_moving("m3"),
            Some(0),
            "no plan in etcd yet"
        );
        r.adopt(plan.clone(), 9);
        assert_eq!((r.up.clone(), r.term), (Some(ids(&["m1", "m2"])), 77));
        assert!(r.moving.contains("m3"));
        assert_eq!(r.revision_unless_moving("m3"), None);
        assert_eq!(r.revision_unless_moving("m1"), Some(9));
        assert!(
            !r.acknowledge("m3", 5),
            "its objects move: not acknowledged"
        );
        assert!(r.acknowledge("m1", 5));
        r.adopt(OwnershipRecord { term: 70, ..plan }, 8);
        assert_eq!(r.term, 77, "an older plan is ignored");
    }
}
