//! The last failovers the proxy carried out, newest last, with why each happened: a small
//! process-wide log (at most [`KEPT`] entries) that `failover::fail_over` feeds through
//! [`record`] and the status page shows.
//!
//! The log outlives the proxy: each entry is appended as one JSON line to
//! `dirkdb-proxy.failovers.jsonl` beside `config.json` (next to the persisted primary choice),
//! and [`load`] reads the last [`KEPT`] back when the proxy starts, so a failover and its reason
//! are still on the page after a restart. The file is rewritten to its last [`KEPT`] lines once
//! it holds twice as many; a line that does not parse is skipped with a warning.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dirkdb_core::config::FailoverMode;
use serde::{Deserialize, Serialize};

use crate::backend::HealthState;
use crate::topology::Topology;

/// Failovers kept; older ones are forgotten.
pub(crate) const KEPT: usize = 20;

static LOG: Mutex<VecDeque<Failover>> = Mutex::new(VecDeque::new());

/// One change of primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failover {
    /// When the new primary took over (Unix ms).
    pub at: u64,
    /// The primary before.
    pub from: String,
    /// The primary after.
    pub to: String,
    /// `automatic` (the primary was down past `failover.detectionMillis`) or `manual`.
    pub kind: Kind,
    /// Why, in words.
    pub reason: String,
}

/// Whether a failover was decided by the proxy or asked for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// The primary was down past `failover.detectionMillis` under AUTOMATIC mode.
    Automatic,
    /// `POST /cluster/failover`.
    Manual,
}

/// Records that `before`'s primary was replaced by instance `target`; `requested` is the
/// instance a `POST /cluster/failover` named, if any.
pub(crate) fn record(before: &Topology, target: usize, requested: Option<&str>) {
    let entry = describe(before, target, requested, super::now_ms());
    tracing::info!(from = %entry.from, to = %entry.to, reason = %entry.reason, "failover recorded");
    if let Some(path) = log_file(before) {
        if let Err(e) = append(&path, &entry) {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the failover log");
        }
    }
    keep(entry);
}

fn keep(entry: Failover) {
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() == KEPT {
        log.pop_front();
    }
    log.push_back(entry);
}

/// The failover log's file: beside the persisted primary choice (none without a config file).
fn log_file(t: &Topology) -> Option<PathBuf> {
    t.state_file
        .as_ref()
        .map(|state| state.with_file_name("dirkdb-proxy.failovers.jsonl"))
}

/// Reads the last [`KEPT`] failovers of an earlier run back into the log (at start).
pub(crate) fn load(t: &Topology) {
    let Some(path) = log_file(t) else { return };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the failover log");
            return;
        }
    };
    let entries = parse_lines(&text, &path);
    let skip = entries.len().saturating_sub(KEPT);
    for entry in entries.into_iter().skip(skip) {
        keep(entry);
    }
}

fn parse_lines(text: &str, path: &Path) -> Vec<Failover> {
    let mut entries = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => tracing::warn!(file = %path.display(), line = n + 1, error = %e,
                "skipping a failover log line that does not parse"),
        }
    }
    entries
}

/// Appends `entry`; rewrites the file to its last [`KEPT`] entries once it holds `2 * KEPT`.
fn append(path: &Path, entry: &Failover) -> std::io::Result<()> {
    let line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")?;
    file.sync_data()?;
    drop(file);
    let text = std::fs::read_to_string(path)?;
    let entries = parse_lines(&text, path);
    if entries.len() >= 2 * KEPT {
        let mut kept = String::new();
        for e in &entries[entries.len() - KEPT..] {
            kept.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
            kept.push('\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
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
        kind: if automatic {
            Kind::Automatic
        } else {
            Kind::Manual
        },
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
            ("m1", "m2", Kind::Automatic)
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
        assert_eq!(f.kind, Kind::Manual);
        assert_eq!(f.reason, "POST /cluster/failover asked for m2");
        t.backends[0].set_health(|h| h.state = HealthState::Down);
        assert_eq!(
            describe(&t, 1, None, 7).kind,
            Kind::Manual,
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

    #[test]
    fn the_file_keeps_every_entry_and_is_cut_back_to_the_last_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dirkdb-proxy.failovers.jsonl");
        let t = topology("MANUAL");
        for at in 0..2 * KEPT as u64 - 1 {
            append(&path, &describe(&t, 1, Some("m2"), at)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            parse_lines(&text, &path).len(),
            2 * KEPT - 1,
            "all kept so far"
        );
        append(&path, &describe(&t, 1, Some("m2"), 99)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap() + "not json\n";
        let entries = parse_lines(&text, &path);
        assert_eq!(entries.len(), KEPT, "cut back; the bad line skipped");
        assert_eq!(entries.last().map(|e| e.at), Some(99));
        assert_eq!(entries[0].kind, Kind::Manual);
    }
}
