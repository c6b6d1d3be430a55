//! MULTI_PRIMARY ownership in the proxy's `GET /metrics` (issue #16): the ownership term, each
//! master's part (owning, returning, moving, out) and the owner this proxy routes each object's
//! writes to, with a count per owner, and the open conflicts of the masters up. The objects are asked of one master up at each scrape
//! ([`crate::ownership::routed_objects`]); nothing is written outside MULTI_PRIMARY.

use std::time::Duration;

use dirkdb_core::metrics::{Metric, Page};
use serde_json::Value;

use crate::topology::Topology;

const TERM: Metric = Metric::gauge(
    "dirkdb_proxy_ownership_term",
    "MULTI_PRIMARY: the ownership term the proxy last sent the masters.",
);
const MASTER: Metric = Metric::gauge(
    "dirkdb_proxy_master_ownership",
    "MULTI_PRIMARY: 1 per master, labelled with its part: owning, returning, moving or out.",
);
const OWNED: Metric = Metric::gauge(
    "dirkdb_proxy_owned_objects",
    "MULTI_PRIMARY: databases, tables, views and domains per owner, as the proxy routes writes.",
);
const OWNER: Metric = Metric::gauge(
    "dirkdb_proxy_object_owner",
    "MULTI_PRIMARY: 1 per object, labelled with the owner the proxy routes its writes to (first 1000).",
);

const OPEN_CONFLICTS: Metric = Metric::gauge(
    "dirkdb_proxy_open_conflicts",
    "MULTI_PRIMARY: open conflicts, summed over the masters up (each lists those it is home of).",
);

/// How long a scrape waits for a master's list of objects.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// What one scrape shows; gathered before the page is written (the page is written without
/// waiting).
pub(crate) struct OwnerMetrics {
    term: u64,
    masters: Vec<(String, &'static str)>,
    objects: Vec<Value>,
    open_conflicts: usize,
}

/// Gathers the ownership metrics; `None` outside MULTI_PRIMARY.
pub(crate) async fn gather(t: &Topology) -> Option<OwnerMetrics> {
    if !t.is_multi_primary() {
        return None;
    }
    let term = crate::ownership::current().map_or(0, |(_, term)| term);
    let objects = crate::ownership::routed_objects(t, ASK_TIMEOUT)
        .await
        .unwrap_or_default();
    let conflicts = crate::ownership::conflicts(t).await;
    Some(OwnerMetrics {
        term,
        masters: crate::ownership::master_states(t),
        objects,
        open_conflicts: conflicts.iter().filter(|c| c["state"] == "open").count(),
    })
}

/// Writes what [`gather`] found.
pub(crate) fn write(m: &OwnerMetrics, page: &mut Page) -> std::fmt::Result {
    page.one(&TERM, m.term)?;
    page.one(&OPEN_CONFLICTS, m.open_conflicts)?;
    page.each(
        &MASTER,
        m.masters.iter().map(|(id, state)| {
            (
                vec![("instance", id.clone()), ("state", state.to_string())],
                1u64,
            )
        }),
    )?;
    let text = |o: &Value, key: &str| o[key].as_str().unwrap_or_default().to_string();
    page.counts(&OWNED, "owner", m.objects.iter().map(|o| text(o, "owner")))?;
    page.each(
        &OWNER,
        m.objects.iter().map(|o| {
            let labels = vec![
                ("kind", text(o, "kind")),
                ("database", text(o, "database")),
                ("object", text(o, "name")),
                ("owner", text(o, "owner")),
            ];
            (labels, 1u64)
        }),
    )
}
