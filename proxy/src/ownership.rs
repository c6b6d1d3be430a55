//! MULTI_PRIMARY ownership, the proxy's side: which master owns each object, and telling the
//! masters the inputs they check their writes against.
//!
//! An object's owner is DirkDB's rendezvous of its key over the masters that are up
//! ([`Topology::owner_of`]). At every health check the proxy sends each reachable master
//! `POST /replication/ownership {"up": [...], "term": T}` (the way it renews leases), so that a
//! master refuses writes to objects it does not own even from a client that bypasses the proxy
//! (`server/src/replication/ownership.rs`). `T`, the ownership term, is raised whenever the set
//! of masters up changes, and starts at the proxy's wall clock in milliseconds so that a
//! restarted proxy never sends a term below one it sent before; a master refuses lower terms.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use dirkdb_core::rendezvous::ObjectRef;
use serde_json::{json, Value};

use crate::http::post_json;
use crate::topology::Topology;

#[derive(Debug, Default)]
struct Record {
    up: Option<Vec<String>>,
    term: u64,
}

fn record() -> std::sync::MutexGuard<'static, Record> {
    static RECORD: OnceLock<Mutex<Record>> = OnceLock::new();
    RECORD
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The ownership term for the masters `up`: raised when the set changed since the last call.
fn term_for(up: &[String]) -> u64 {
    let mut r = record();
    if r.up.as_deref() != Some(up) {
        let now = crate::lease::wall_ms().max(0) as u64;
        r.term = now.max(r.term + 1);
        r.up = Some(up.to_vec());
    }
    r.term
}

/// The masters up and the ownership term last sent (`None` before the first health check).
pub fn current() -> Option<(Vec<String>, u64)> {
    let r = record();
    r.up.clone().map(|up| (up, r.term))
}

/// Sends the ownership inputs to every master that is not down, in the background (a paused
/// master must not hold up the health checks).
pub fn push(t: &Topology, timeout: Duration) {
    if !t.is_multi_primary() {
        return;
    }
    let up: Vec<String> = t.masters_up().iter().map(|b| b.id.clone()).collect();
    let term = term_for(&up);
    let body = json!({ "up": up, "term": term }).to_string();
    for master in t.masters_up() {
        let Some(admin) = master.admin.clone() else {
            continue;
        };
        let (body, id) = (body.clone(), master.id.clone());
        tokio::spawn(async move {
            if let Err(e) = post_json(&admin, "/replication/ownership", &body, timeout).await {
                tracing::debug!(instance = %id, error = %e, "ownership update failed");
            }
        });
    }
}

/// The owners of `objects`, as (object, owner id) pairs; an object without an owner (no master
/// up) is paired with `None`.
pub fn owners(t: &Topology, objects: &[ObjectRef]) -> Vec<(ObjectRef, Option<String>)> {
    objects
        .iter()
        .map(|o| (o.clone(), t.owner_of(o).map(|b| b.id.clone())))
        .collect()
}

/// `object (owner), …` for error messages.
pub fn describe(owned: &[(ObjectRef, Option<String>)]) -> String {
    owned
        .iter()
        .map(|(o, owner)| match owner {
            Some(owner) => format!("{o} (owner {owner})"),
            None => format!("{o} (no master up)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The MULTI_PRIMARY part of `/cluster/status` (`null` in SINGLE_PRIMARY).
pub fn status(t: &Topology) -> Value {
    if !t.is_multi_primary() {
        return Value::Null;
    }
    let (up, term) = current().unwrap_or_default();
    json!({
        "masters": t.config.master_ids(),
        "mastersUp": up,
        "ownershipTerm": term,
        "partition": t.config.routing.writes.partition.as_str(),
        "hash": t.config.routing.writes.hash.as_str(),
        "replicationNote": t.config.replication.file_replaced_by_oplog
            .then_some(dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY),
        "streamsBetweenMasters": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_rises_when_the_set_changes_and_only_then() {
        let a = term_for(&["m1".into(), "m2".into()]);
        assert_eq!(term_for(&["m1".into(), "m2".into()]), a);
        let b = term_for(&["m1".into()]);
        assert!(b > a);
        assert!(term_for(&["m1".into(), "m2".into()]) > b);
    }
}
