//! Failover: replacing a dead (or unwanted) primary without losing acknowledged writes.
//!
//! In order: the old primary's write lease is taken away — it is asked to give it up, and when
//! it cannot be reached the failover waits until any lease it may hold has certainly ended
//! (see [`crate::lease`]), so two nodes never accept writes at once. Then the candidate is
//! chosen: the requested one, or the reachable replica with the highest applied position, and
//! it must hold every write the proxy acknowledged under a write concern of at least one
//! ([`crate::ack_watermark`]); when none does, nothing is promoted and the failover is retried
//! (writes keep failing on the unreachable primary meanwhile) rather than lose data. The
//! candidate is promoted into a new term above every term the proxy has seen
//! (`POST /replication/promote {"term", "leaseMillis", "sentAtMs"}`, which also grants its first
//! lease; its new history records where it branched), every other reachable replica is
//! repointed to it (`POST /replication/configure`, a partial sync since they share its
//! history), and the choice is persisted next to `config.json` so that a proxy restart does not
//! resurrect the old primary.
//!
//! The old primary is fenced: whenever the health checker finds an instance other than the
//! chosen primary calling itself PRIMARY (or one that stepped down and follows nobody), it
//! configures it to follow the chosen one — after raising the chosen primary's term above the
//! stray's when the stray was promoted behind the proxy's back; that node refuses writes from
//! then on, and its writes the new primary never received are saved to a rollback file before it
//! resyncs (see the server's `replication::rollback`).
//!
//! A failover holds the topology's writer turn from its choice to its store, so an automatic and
//! a manual failover, or a failover and a live reload, never overwrite each other.

use std::time::{Duration, Instant};

use crate::ack_watermark::{self, Position};
use crate::backend::HealthState;
use crate::error::FailoverError;
use crate::http::{get_json, post_json};
use crate::topology::{SharedTopology, Topology};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a requested candidate may take to catch up with the old primary's last writes.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Promotes `to` (or the most advanced reachable replica) and makes it the proxy's primary;
/// returns its id.
pub(crate) async fn fail_over(
    topology: &SharedTopology,
    to: Option<&str>,
) -> Result<String, FailoverError> {
    crate::coordinator::may_fail_over().map_err(FailoverError::Coordinator)?;
    let writer = topology.write().await;
    // From here until the new primary is installed, no write is acknowledged: the candidate
    // must hold every acknowledgement made before this point, and none is made after it.
    let frozen = ack_watermark::freeze();
    // With several proxies, what the others acknowledged counts too.
    let watermark = crate::coordinator::cluster_watermark(frozen.position).await;
    let t = writer.current();
    let requested = match to {
        Some(id) => Some(
            t.index_of(id)
                .ok_or_else(|| FailoverError::UnknownInstance(id.to_string()))?,
        ),
        None => None,
    };
    if requested == Some(t.primary) {
        return Err(FailoverError::AlreadyPrimary(t.primary().id.clone()));
    }
    let failover = &t.config.failover;
    crate::lease::take_lease_from(t.primary(), failover).await;
    let chosen = match requested {
        Some(i) => wait_until_it_holds_the_watermark(&t, i, watermark).await,
        None => most_advanced_replica(&t, watermark).await,
    };
    let target = match chosen {
        Ok(target) => target,
        Err(e) => {
            // Nothing promoted: the old primary may renew its lease again if it comes back.
            crate::lease::resume_renewing(&t.primary().id);
            if requested.is_none() && ack_watermark::failover_waits(&e.to_string()) {
                tracing::warn!(primary = %t.primary().id, reason = %e, "failover waits: statements for the primary are refused until a replica holding every acknowledged write can be promoted or the primary returns");
            }
            return Err(e);
        }
    };
    let new = &t.backends[target];
    let admin = new
        .admin
        .clone()
        .ok_or_else(|| FailoverError::NoAdminPort(new.id.clone()))?;
    let status = get_json(&admin, "/replication/status", ADMIN_TIMEOUT).await?;
    let proposed = crate::lease::highest_term().max(status_term(&status)) + 1;
    // The decision is recorded (in etcd, under an ETCD coordinator) before anything changes.
    let term = match crate::coordinator::commit_failover(&t.primary().id, &new.id, proposed).await {
        Ok(term) => term,
        Err(e) => {
            crate::lease::resume_renewing(&t.primary().id);
            return Err(FailoverError::Coordinator(e));
        }
    };
    if status["role"] != "PRIMARY" {
        let body = crate::lease::promotion_body(term, failover);
        let promoted = post_json(&admin, "/replication/promote", &body, ADMIN_TIMEOUT).await?;
        crate::lease::note_status(&new.id, status_term(&promoted), false);
    }
    crate::lease::resume_renewing(&new.id);
    let updated = t.with_primary(target);
    persist(&updated);
    let updated = writer.store(updated);
    ack_watermark::failover_over();
    drop(writer);
    drop(frozen);
    crate::status_page::record_failover(&t, target, to);
    tracing::warn!(old = %t.primary().id, new = %new.id, "failover: new primary");
    for (i, backend) in updated.backends.iter().enumerate() {
        if i != target {
            fence(&updated, i).await;
            backend.clear_pool();
        }
    }
    Ok(new.id.clone())
}

fn status_term(status: &serde_json::Value) -> u64 {
    status["term"].as_u64().unwrap_or(0)
}

/// Where a status says the instance stands.
fn position(status: &serde_json::Value) -> Position {
    Position {
        term: status_term(status),
        seq: status["committedSequence"].as_u64().unwrap_or(0),
    }
}

/// The reachable replica with the highest position, if it holds every acknowledged write.
async fn most_advanced_replica(t: &Topology, watermark: Position) -> Result<usize, FailoverError> {
    let mut best: Option<(Position, usize)> = None;
    for (i, b) in t.backends.iter().enumerate() {
        if i == t.primary || b.health().state == HealthState::Down {
            continue;
        }
        let Some(admin) = &b.admin else { continue };
        if let Ok(status) = get_json(admin, "/replication/status", ADMIN_TIMEOUT).await {
            let p = position(&status);
            crate::lease::note_status(&b.id, p.term, status["fenced"] == true);
            if best.is_none_or(|(q, _)| (p.seq, p.term) > (q.seq, q.term)) {
                best = Some((p, i));
            }
        }
    }
    let (p, i) = best.ok_or(FailoverError::NoReachableReplica)?;
    if !p.holds(watermark) {
        return Err(FailoverError::Behind(format!(
            "no reachable replica holds every acknowledged write (the best, {}, stands at term {} sequence {}; writes were acknowledged up to term {} sequence {}): waiting for one to catch up or for the primary to return",
            t.backends[i].id, p.term, p.seq, watermark.term, watermark.seq
        )));
    }
    Ok(i)
}

/// Waits (a few seconds at most) until the requested candidate holds the watermark.
async fn wait_until_it_holds_the_watermark(
    t: &Topology,
    i: usize,
    watermark: Position,
) -> Result<usize, FailoverError> {
    let b = &t.backends[i];
    let admin = b
        .admin
        .clone()
        .ok_or_else(|| FailoverError::NoAdminPort(b.id.clone()))?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let status = get_json(&admin, "/replication/status", ADMIN_TIMEOUT).await?;
        let p = position(&status);
        if p.holds(watermark) {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            return Err(FailoverError::Behind(format!(
                "{} lacks acknowledged writes (at term {} sequence {}, acknowledged up to term {} sequence {}); not promoted",
                b.id, p.term, p.seq, watermark.term, watermark.seq
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Before a stray primary of a higher term is fenced, the chosen primary is raised above every
/// term seen, so that the stray follows it instead of making it step down.
pub(crate) async fn outrank(t: &Topology) {
    let primary = t.primary();
    let highest = crate::lease::highest_term();
    if crate::lease::term_of(&primary.id) >= highest {
        return;
    }
    let Some(admin) = &primary.admin else { return };
    let body = serde_json::json!({ "term": highest + 1 }).to_string();
    match post_json(admin, "/replication/term", &body, ADMIN_TIMEOUT).await {
        Ok(answer) => {
            tracing::warn!(instance = %primary.id, term = %answer["term"], "raised the primary's term above a stray primary's");
            crate::lease::note_status(&primary.id, status_term(&answer), false);
        }
        Err(e) => {
            tracing::warn!(instance = %primary.id, error = %e, "could not raise the primary's term")
        }
    }
}

/// Makes instance `i` follow the topology's primary (a no-op when it already does), reached at
/// the primary's replication address — or, since the primary's id is sent too, at the address
/// the instance's own config gives for it.
pub(crate) async fn fence(t: &Topology, i: usize) {
    let primary = t.primary();
    let primary_addr = t
        .config
        .instances
        .iter()
        .find(|i| i.id == primary.id)
        .map_or_else(|| primary.addr.clone(), |i| i.replication_addr());
    let Some(admin) = &t.backends[i].admin else {
        return;
    };
    // With its id, the instance may reach the primary at the address its own config gives.
    let body = serde_json::json!({ "primary": primary_addr, "primaryId": primary.id }).to_string();
    match post_json(admin, "/replication/configure", &body, ADMIN_TIMEOUT).await {
        Ok(_) => {
            tracing::info!(instance = %t.backends[i].id, primary = %t.primary().id, "instance follows the primary")
        }
        Err(e) => {
            tracing::debug!(instance = %t.backends[i].id, error = %e, "could not repoint instance (yet)")
        }
    }
}

/// Persists the topology's primary choice next to `config.json`.
pub(crate) fn persist(t: &Topology) {
    if let Some(path) = &t.state_file {
        let text = serde_json::json!({ "primary": t.primary().id }).to_string();
        if let Err(e) = std::fs::write(path, text) {
            tracing::error!(file = %path.display(), error = %e, "cannot persist the primary choice");
        }
    }
}
