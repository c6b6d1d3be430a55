//! The primary's write lease, as the proxy grants it, and the terms the proxy has seen.
//!
//! At every health check the proxy renews the lease of its chosen primary
//! (`POST /replication/lease {"term", "leaseMillis", "sentAtMs"}`, see the server's
//! `replication::lease`), and remembers when it last *sent* a renewal, answered or not: the
//! server anchors the lease at that send time, so no lease it holds can outlast
//! `last sent + failover.leaseMillis` (plus `failover.clockDriftMillis` of clock skew). A failover
//! first stops renewing the old primary ([`stop_renewing`]), asks it to give its lease up, and
//! when that fails (the node is paused, cut off or dead) waits until that bound has passed
//! ([`wait_for_expiry`]) before it promotes anyone: two nodes never hold a lease at once, and
//! fencing no longer depends on reaching the old primary.
//!
//! The bookkeeping is per proxy process (one proxy per process), keyed by instance id: the last
//! renewal sent, whether renewals are stopped, and each instance's last reported term and fenced
//! state (from the health checks), from which the next promotion's term is chosen.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dirkdb_core::config::FailoverConfig;

use crate::backend::Backend;
use crate::http::post_json;

#[derive(Debug, Default, Clone)]
struct Record {
    last_sent: Option<Instant>,
    stopped: bool,
    term: u64,
    fenced: bool,
}

fn records() -> std::sync::MutexGuard<'static, HashMap<String, Record>> {
    static RECORDS: OnceLock<Mutex<HashMap<String, Record>>> = OnceLock::new();
    RECORDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Notes what a health check found of an instance: its term and whether it stepped down.
pub(crate) fn note_status(id: &str, term: u64, fenced: bool) {
    let mut records = records();
    let r = records.entry(id.to_string()).or_default();
    r.term = term;
    r.fenced = fenced;
}

/// The last term an instance reported.
pub(crate) fn term_of(id: &str) -> u64 {
    records().get(id).map_or(0, |r| r.term)
}

/// True when an instance reported that it stepped down and follows nobody.
pub(crate) fn is_fenced(id: &str) -> bool {
    records().get(id).is_some_and(|r| r.fenced)
}

/// The highest term any instance reported.
pub(crate) fn highest_term() -> u64 {
    records().values().map(|r| r.term).max().unwrap_or(0)
}

/// The current time on the proxy's wall clock, ms since the epoch (sent with each renewal).
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Records a renewal about to be sent to `id`; false when renewals to it are stopped.
fn begin_renewal(id: &str) -> bool {
    let mut records = records();
    let r = records.entry(id.to_string()).or_default();
    if r.stopped {
        return false;
    }
    r.last_sent = Some(Instant::now());
    true
}

/// Renews the lease of `primary` in the background (a paused primary must not hold up the
/// health checks); the send time is recorded before anything leaves.
pub(crate) fn renew(primary: &Backend, failover: &FailoverConfig, timeout: Duration) {
    let Some(admin) = primary.admin.clone() else {
        return;
    };
    if !begin_renewal(&primary.id) {
        return;
    }
    let body = serde_json::json!({
        "term": term_of(&primary.id),
        "leaseMillis": failover.lease().as_millis() as u64,
        "sentAtMs": wall_ms(),
    })
    .to_string();
    let id = primary.id.clone();
    tokio::spawn(async move {
        if let Err(e) = post_json(&admin, "/replication/lease", &body, timeout).await {
            tracing::debug!(instance = %id, error = %e, "lease renewal failed");
        }
    });
}

/// Renewals to `id` start again (it was chosen as primary).
pub(crate) fn resume_renewing(id: &str) {
    records().entry(id.to_string()).or_default().stopped = false;
}

/// Stops renewing `id`'s lease; returns when the last renewal was sent, if ever.
pub(crate) fn stop_renewing(id: &str) -> Option<Instant> {
    let mut records = records();
    let r = records.entry(id.to_string()).or_default();
    r.stopped = true;
    r.last_sent
}

/// A primary under a majority lease (`failover.majorityLease`) that no longer hears from a
/// majority refuses writes by itself: its health check fails, so that it is replaced.
pub(crate) fn check_majority(status: &serde_json::Value) -> Result<(), String> {
    let majority = &status["lease"]["majority"];
    if majority["holds"] == false {
        return Err(format!(
            "the primary lost its majority lease (it heard from {} of the {} replicas it needs)",
            majority["heard"], majority["needed"]
        ));
    }
    Ok(())
}

/// The body of a promotion: the new term and a first lease.
pub(crate) fn promotion_body(term: u64, failover: &FailoverConfig) -> String {
    serde_json::json!({
        "term": term,
        "leaseMillis": failover.lease().as_millis() as u64,
        "sentAtMs": wall_ms(),
    })
    .to_string()
}

/// Takes the lease away from the old primary `old`: stops renewing it, asks it to give the
/// lease up, and when it does not answer, waits until any lease it may hold has certainly
/// ended (last renewal sent + lease + clock drift). Returns how long it waited.
pub(crate) async fn take_lease_from(old: &Backend, failover: &FailoverConfig) -> Duration {
    let last_sent = stop_renewing(&old.id);
    let Some(last_sent) = last_sent else {
        return Duration::ZERO;
    };
    if let Some(admin) = &old.admin {
        let body = serde_json::json!({ "term": 0, "leaseMillis": 0, "sentAtMs": wall_ms() });
        let body = body.to_string();
        let ask = post_json(
            admin,
            "/replication/lease",
            &body,
            Duration::from_millis(300),
        )
        .await;
        if ask.is_ok() {
            tracing::info!(instance = %old.id, "the old primary gave its lease up");
            return Duration::ZERO;
        }
    }
    wait_for_expiry(&old.id, last_sent, failover).await
}

/// Sleeps until a lease renewed at `last_sent` has certainly ended everywhere.
async fn wait_for_expiry(id: &str, last_sent: Instant, failover: &FailoverConfig) -> Duration {
    let ends = last_sent + failover.lease() + failover.clock_drift();
    let wait = ends.saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        tracing::warn!(instance = %id, wait_ms = wait.as_millis() as u64, "waiting for the old primary's lease to end before promoting");
        tokio::time::sleep(wait).await;
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failover_waits_for_the_lease_of_an_unreachable_primary() {
        let failover = FailoverConfig {
            lease_millis: Some(200),
            clock_drift_millis: Some(50),
            ..FailoverConfig::default()
        };
        assert!(begin_renewal("lease-test-a"));
        let started = Instant::now();
        let last = stop_renewing("lease-test-a").unwrap();
        assert!(
            !begin_renewal("lease-test-a"),
            "stopped renewals stay stopped"
        );
        wait_for_expiry("lease-test-a", last, &failover).await;
        assert!(started.elapsed() >= Duration::from_millis(240));
        resume_renewing("lease-test-a");
        assert!(begin_renewal("lease-test-a"));
        assert_eq!(
            stop_renewing("lease-test-never").map(|_| ()),
            None,
            "never renewed: nothing to wait for"
        );
    }

    #[test]
    fn terms_reported_are_remembered() {
        note_status("lease-test-b", 7, true);
        assert_eq!(term_of("lease-test-b"), 7);
        assert!(is_fenced("lease-test-b"));
        assert!(highest_term() >= 7);
    }
}
