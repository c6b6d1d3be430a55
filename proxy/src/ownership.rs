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

use crate::http::{get_json, post_json};
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
pub(crate) fn current() -> Option<(Vec<String>, u64)> {
    let r = record();
    r.up.clone().map(|up| (up, r.term))
}

/// Sends the ownership inputs to every master that is not down, in the background (a paused
/// master must not hold up the health checks).
pub(crate) fn push(t: &Topology, timeout: Duration) {
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
    for (id, task) in asked {
        let Ok((status, owners)) = task.await else {
            continue;
        };
        let entry = match status {
            Ok(s) => json!({
                "positions": s["positions"],
                "streams": s["peers"],
                "committedSequence": s["committedSequence"],
            }),
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
        "partition": t.config.routing.writes.partition.as_str(),
        "hash": t.config.routing.writes.hash.as_str(),
        "replicationNote": t.config.replication.file_replaced_by_oplog
            .then_some(dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY),
        "streamsBetweenMasters": true,
        "objects": objects,
        "positions": masters,
    })
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

    #[test]
    fn the_term_rises_when_the_set_changes_and_only_then() {
        let a = term_for(&["m1".into(), "m2".into()]);
        assert_eq!(term_for(&["m1".into(), "m2".into()]), a);
        let b = term_for(&["m1".into()]);
        assert!(b > a);
        assert!(term_for(&["m1".into(), "m2".into()]) > b);
    }
}
