//! The last failovers the proxy carried out, newest last, with why each happened: a small
//! process-wide log (at most [`KEPT`] entries) that `failover::fail_over` feeds through
//! [`record`] and the status page shows. It starts empty when the proxy starts.

use std::collections::VecDeque;
use std::sync::Mutex;

use dirkdb_core::config::FailoverMode;
use serde::Serialize;

use crate::backend::HealthState;
use crate::topology::Topology;

/// Failovers kept; older ones are forgotten.
pub(crate) const KEPT: usize = 20;

static LOG: Mutex<VecDeque<Failover>> = Mutex::new(VecDeque::new());

/// One change of primary.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failover {
    /// When the new primary took over (Unix ms).
    pub at: u64,
    /// The primary before.
    pub from: String,
    /// The primary after.
    pub to: String,
    /// `automatic` (the primary was down past `failover.detectionMillis`) or `manual`.
    pub kind: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// Records that `before`'s primary was replaced by instance `target`; `requested` is the
/// instance a `POST /cluster/failover` named, if any.
pub fn record(before: &Topology, target: usize, requested: Option<&str>) {
    let entry = describe(before, target, requested, super::now_ms());
    tracing::info!(from = %entry.from, to = %entry.to, reason = %entry.reason, "failover recorded");
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() == KEPT {
        log.pop_front();
    }
    log.push_back(entry);
}

/// Every failover kept, oldest first.
pub(crate) fn recent() -> Vec<Failover> {
    let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.iter().cloned().collect()
}

fn describe(before: &Topology, target: usize, requested: Option<&str>, at: u64) -> Failover {
    let old = before.primary();
    let health = old.health();
    let down = health.state == HealthState::Down;
    let why_down = format!(
        "primary {} unreachable ({} failed checks: {})",
        old.id,
        health.failures,
        health.last_error.as_deref().unwrap_or("no answer")
    );
    let automatic =
        requested.is_none() && down && before.config.failover.mode == FailoverMode::Automatic;
    let reason = if automatic {
        format!(
            "{why_down} for failover.detectionMillis = {} ms",
            before.config.failover.detection_millis
        )
    } else {
        let asked = match requested {
            Some(id) => format!("POST /cluster/failover asked for {id}"),
            None => "POST /cluster/failover".to_string(),
        };
        if down {
            format!("{asked}; {why_down}")
        } else {
            asked
        }
    };
    Failover {
        at,
        from: old.id.clone(),
        to: before.backends[target].id.clone(),
        kind: if automatic { "automatic" } else { "manual" },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dirkdb_core::config::ClusterConfig;

    fn topology(mode: &str) -> Topology {
        let text = format!(
            r#"{{ "instances": [
              {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 1, "dataDirectory": "a" }},
              {{ "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": 2, "dataDirectory": "b" }} ],
              "failover": {{ "mode": "{mode}", "detectionMillis": 1500 }} }}"#
        );
        Topology::new(ClusterConfig::parse(&text).unwrap())
    }

    #[test]
    fn a_dead_primary_under_automatic_mode_is_an_automatic_failover_with_its_error() {
        let t = topology("AUTOMATIC");
        t.backends[0].set_health(|h| {
            h.state = HealthState::Down;
            h.failures = 3;
            h.last_error = Some("Connection refused (os error 111)".into());
        });
        let f = describe(&t, 1, None, 7);
        assert_eq!(
            (f.from.as_str(), f.to.as_str(), f.kind),
            ("m1", "m2", "automatic")
        );
        assert_eq!(
            f.reason,
            "primary m1 unreachable (3 failed checks: Connection refused (os error 111)) \
             for failover.detectionMillis = 1500 ms"
        );
    }

    #[test]
    fn a_requested_failover_is_manual_and_names_the_target() {
        let t = topology("MANUAL");
        let f = describe(&t, 1, Some("m2"), 7);
        assert_eq!(f.kind, "manual");
        assert_eq!(f.reason, "POST /cluster/failover asked for m2");
        t.backends[0].set_health(|h| h.state = HealthState::Down);
        assert_eq!(
            describe(&t, 1, None, 7).kind,
            "manual",
            "MANUAL mode never fails over by itself"
        );
    }

    #[test]
    fn the_log_keeps_only_the_last_entries() {
        let t = topology("MANUAL");
        for _ in 0..KEPT + 5 {
            record(&t, 1, Some("m2"));
        }
        assert_eq!(recent().len(), KEPT);
    }
}
