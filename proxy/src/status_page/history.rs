//! What the status page charts: a bounded ring buffer of samples taken once a second from what
//! the proxy already knows (the topology, each instance's health and lag, its read and write
//! counters) plus the cache's counters when a cache answers on `cache.adminPort`.
//!
//! Replication lag comes from two places: the proxy's own health checks (how long a replica's
//! sequence has stayed below the primary's, as `/cluster/status` reports it) and, when the primary
//! answers, the primary's `/replication/replicas` (entries not yet acknowledged and the age of the
//! oldest), which is exact under load; a sample carries both, the page shows the primary's.
//!
//! At most [`CAPACITY`] samples are kept (five minutes at one a second); the oldest is dropped
//! when a new one comes, so memory stays bounded whatever the uptime. Rates are computed from
//! the counters' change since the previous sample.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::HealthState;
use crate::topology::{SharedTopology, Topology};

/// Samples kept.
pub(crate) const CAPACITY: usize = 300;
/// Time between samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for the cache's `/stats` and the primary's `/replication/replicas`.
const ADMIN_TIMEOUT: Duration = Duration::from_millis(500);

/// One instance at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceSample {
    pub id: String,
    pub role: String,
    pub health: HealthState,
    pub committed_sequence: u64,
    pub lag_operations: u64,
    pub lag_ms: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    /// The replication stream as the primary reports it (replicas it knows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamLag>,
}

/// One replica's stream in the primary's `/replication/replicas`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamLag {
    /// `Connected`, `Syncing`, `Lagging` or `Disconnected`.
    pub state: String,
    /// Entries committed on the primary and not yet acknowledged by the replica.
    pub lag_operations: u64,
    /// Age of the oldest entry not yet acknowledged.
    pub lag_ms: u64,
}

/// The cache at one instant (only while it answers).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheSample {
    /// Hits ÷ (hits + misses) since the previous sample; `None` when no cacheable read came.
    pub hit_ratio: Option<f64>,
    /// Hits ÷ (hits + misses) since the cache started.
    pub total_hit_ratio: f64,
    pub hits_per_sec: f64,
    pub misses_per_sec: f64,
    pub entries: u64,
    pub bytes: u64,
}

/// Everything sampled at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sample {
    /// Unix ms.
    pub at: u64,
    pub primary: String,
    pub instances: Vec<InstanceSample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSample>,
}

/// Whether a cache answers on the configured admin port.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheView {
    /// Where it is asked (`cache.listenHost`:`cache.adminPort`).
    pub admin: String,
    /// `absent` (never answered since the proxy started), `up` or `unreachable`.
    pub state: &'static str,
    /// Why it stopped answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counters seen at the previous sample, to turn totals into rates.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    instances: HashMap<String, (u64, u64)>,
    cache: Option<(u64, u64)>,
}

/// The ring buffer and what the sampler remembers between samples.
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
    cache: Mutex<CacheView>,
    previous: Mutex<Previous>,
}

impl History {
    /// An empty history.
    pub(crate) fn new() -> Arc<History> {
        Arc::new(History {
            samples: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            cache: Mutex::new(CacheView {
                admin: String::new(),
                state: "absent",
                error: None,
            }),
            previous: Mutex::new(Previous::default()),
        })
    }

    /// Samples taken after `since` (Unix ms), oldest first.
    pub(crate) fn since(&self, since: u64) -> Vec<Sample> {
        lock(&self.samples)
            .iter()
            .filter(|s| s.at > since)
            .cloned()
            .collect()
    }

    /// The cache's state.
    pub(crate) fn cache_view(&self) -> CacheView {
        lock(&self.cache).clone()
    }

    fn push(&self, sample: Sample) {
        let mut samples = lock(&self.samples);
        while samples.len() >= CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Takes one sample of `t`, with the primary's `/replication/replicas` and the cache's
    /// `/stats` answers (or why there are none).
    pub(crate) fn sample(
        &self,
        t: &Topology,
        replicas: Result<serde_json::Value, String>,
        cache_stats: Result<serde_json::Value, String>,
    ) {
        let streams = replicas.map(|r| streams(&r)).unwrap_or_default();
        let multi_primary = t.is_multi_primary();
        let now = Instant::now();
        let mut previous = lock(&self.previous);
        let seconds = previous
            .at
            .map(|at| now.duration_since(at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let instances = t
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (reads, writes, _, _) = b.counters();
                let before = previous.instances.insert(b.id.clone(), (reads, writes));
                let (reads_per_sec, writes_per_sec) = match (before, seconds) {
                    (Some((r, w)), Some(s)) => (rate(reads, r, s), rate(writes, w, s)),
                    _ => (0.0, 0.0),
                };
                let h = b.health();
                InstanceSample {
                    id: b.id.clone(),
                    role: t.role_of(i).to_string(),
                    health: h.state,
                    committed_sequence: h.committed,
                    lag_operations: h.lag_operations,
                    lag_ms: h.lag_ms,
                    reads_per_sec,
                    writes_per_sec,
                    stream: (multi_primary || i != t.primary)
                        .then(|| streams.get(&b.id).cloned())
                        .flatten(),
                }
            })
            .collect();
        previous.instances.retain(|id, _| t.index_of(id).is_some());
        let cache = self.cache_sample(t, cache_stats, &mut previous.cache, seconds);
        previous.at = Some(now);
        drop(previous);
        self.push(Sample {
            at: super::now_ms(),
            primary: t.primary().id.clone(),
            instances,
            cache,
        });
    }

    fn cache_sample(
        &self,
        t: &Topology,
        stats: Result<serde_json::Value, String>,
        previous: &mut Option<(u64, u64)>,
        seconds: Option<f64>,
    ) -> Option<CacheSample> {
        let mut view = lock(&self.cache);
        view.admin = cache_admin_addr(t);
        let stats = match stats {
            Ok(stats) => stats,
            Err(e) => {
                *previous = None;
                if view.state != "absent" {
                    view.state = "unreachable";
                    view.error = Some(e);
                }
                return None;
            }
        };
        view.state = "up";
        view.error = None;
        let field = |name: &str| stats[name].as_u64().unwrap_or(0);
        let (hits, misses) = (field("hits"), field("misses"));
        let before = previous.replace((hits, misses));
        let (dh, dm) = before
            .map(|(h, m)| (hits.saturating_sub(h), misses.saturating_sub(m)))
            .unwrap_or((0, 0));
        let per_sec = |d: u64| seconds.map(|s| d as f64 / s).unwrap_or(0.0);
        Some(CacheSample {
            hit_ratio: (before.is_some() && dh + dm > 0).then(|| dh as f64 / (dh + dm) as f64),
            total_hit_ratio: stats["hit_ratio"].as_f64().unwrap_or(0.0),
            hits_per_sec: per_sec(dh),
            misses_per_sec: per_sec(dm),
            entries: field("entries"),
            bytes: field("bytes"),
        })
    }
}

/// Samples the topology every [`INTERVAL`] forever.
pub(crate) async fn run(topology: Arc<SharedTopology>, history: Arc<History>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = topology.load_full();
        let cache_admin = cache_admin_addr(&t);
        let (replicas, stats) = tokio::join!(stream_lags(&t), async {
            let stats = crate::http::get_json(&cache_admin, "/stats", ADMIN_TIMEOUT).await;
            stats.map_err(|e| e.to_string())
        });
        history.sample(&t, replicas, stats);
    }
}

/// How far behind each instance's stream is, in the shape of the primary's
/// `/replication/replicas`: under SINGLE_PRIMARY that answer itself; under MULTI_PRIMARY, for
/// every master up, the worst of the streams it applies from the other masters
/// ([`master_stream_lags`]).
async fn stream_lags(t: &Topology) -> Result<serde_json::Value, String> {
    if t.is_multi_primary() {
        Ok(master_stream_lags(t).await)
    } else {
        primary_replicas(t).await
    }
}

/// Each master's `/replication/status` peers folded into one line per master: the largest lag
/// (operations and ms) over the origins it follows, and `Streaming` only when every stream is
/// (else the first state that is not). A master that does not answer is left out (its health
/// already says why).
async fn master_stream_lags(t: &Topology) -> serde_json::Value {
    let asked: Vec<_> = t
        .masters_up()
        .into_iter()
        .filter_map(|m| {
            let admin = m.admin.clone()?;
            let id = m.id.clone();
            Some(tokio::spawn(async move {
                let status = crate::http::get_json(&admin, "/replication/status", ADMIN_TIMEOUT);
                (id, status.await)
            }))
        })
        .collect();
    let mut lines = Vec::new();
    for task in asked {
        if let Ok((id, Ok(status))) = task.await {
            lines.push(worst_peer_stream(&id, &status["peers"]));
        }
    }
    serde_json::json!({ "replicas": lines })
}

/// One master's incoming streams (`peers` of its `/replication/status`) as one replica line.
fn worst_peer_stream(id: &str, peers: &serde_json::Value) -> serde_json::Value {
    let peers = peers.as_array().map(Vec::as_slice).unwrap_or_default();
    let field = |p: &serde_json::Value, name: &str| p[name].as_u64().unwrap_or(0);
    let state = peers
        .iter()
        .filter_map(|p| p["state"].as_str())
        .find(|s| *s != "Streaming")
        .unwrap_or(if peers.is_empty() {
            "Connecting"
        } else {
            "Connected"
        });
    serde_json::json!({
        "instance": id,
        "state": state,
        "lagOperations": peers.iter().map(|p| field(p, "lagOperations")).max().unwrap_or(0),
        "lagMs": peers.iter().map(|p| field(p, "lagMs")).max().unwrap_or(0),
    })
}

/// The primary's `/replication/replicas`, when it has an admin port and answers.
async fn primary_replicas(t: &Topology) -> Result<serde_json::Value, String> {
    let admin = t
        .primary()
        .admin
        .as_deref()
        .ok_or("the primary has no adminPort")?;
    crate::http::get_json(admin, "/replication/replicas", ADMIN_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// Each replica's stream by instance id, from a `/replication/replicas` answer.
fn streams(answer: &serde_json::Value) -> HashMap<String, StreamLag> {
    let Some(replicas) = answer["replicas"].as_array() else {
        return HashMap::new();
    };
    replicas
        .iter()
        .filter_map(|r| {
            let stream = StreamLag {
                state: r["state"].as_str().unwrap_or("unknown").to_string(),
                lag_operations: r["lagOperations"].as_u64().unwrap_or(0),
                lag_ms: r["lagMs"].as_u64().unwrap_or(0),
            };
            Some((r["instance"].as_str()?.to_string(), stream))
        })
        .collect()
}

/// Where the cache of `config.json` serves its admin API (a wildcard listen address is asked
/// on loopback).
fn cache_admin_addr(t: &Topology) -> String {
    let cache = &t.config.cache;
    let host = match cache.listen_host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        host => host,
    };
    format!("{host}:{}", cache.admin_port())
}

fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    let per_sec = now.saturating_sub(before) as f64 / seconds;
    (per_sec * 10.0).round() / 10.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dirkdb_core::config::ClusterConfig;
    use serde_json::json;

    fn topology() -> Topology {
        Topology::new(
            ClusterConfig::parse(
                r#"{ "instances": [
                  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 1, "dataDirectory": "a" },
                  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": 2, "dataDirectory": "b" } ],
                  "cache": { "listenHost": "0.0.0.0", "adminPort": 4999 } }"#,
            )
            .unwrap(),
        )
    }

    fn no_primary() -> Result<serde_json::Value, String> {
        Err("refused".into())
    }

    #[test]
    fn a_masters_streams_fold_into_the_one_furthest_behind() {
        let peers = serde_json::json!([
            { "origin": "m2", "state": "Streaming", "lagOperations": 3, "lagMs": 40 },
            { "origin": "m3", "state": "Disconnected", "lagOperations": 1, "lagMs": 900 },
        ]);
        let line = worst_peer_stream("m1", &peers);
        assert_eq!(
            line,
            serde_json::json!({ "instance": "m1", "state": "Disconnected",
                                "lagOperations": 3, "lagMs": 900 })
        );
        let caught_up = serde_json::json!([{ "state": "Streaming" }, { "state": "Streaming" }]);
        assert_eq!(worst_peer_stream("m1", &caught_up)["state"], "Connected");
        assert_eq!(
            worst_peer_stream("m1", &serde_json::Value::Null)["state"],
            "Connecting"
        );
    }

    #[test]
    fn replicas_carry_the_primarys_view_of_their_stream() {
        let (h, t) = (History::new(), topology());
        let answer = json!({ "replicas": [
            { "instance": "m2", "state": "Lagging", "lagOperations": 12, "lagMs": 1500 },
            { "instance": "gone", "state": "Disconnected", "lagOperations": 1, "lagMs": 9 } ] });
        h.sample(&t, Ok(answer), no_primary());
        let s = h.since(0).pop().unwrap();
        assert_eq!(
            s.instances[0].stream, None,
            "the primary has no stream to itself"
        );
        let m2 = s.instances[1].stream.as_ref().unwrap();
        assert_eq!(
            (m2.state.as_str(), m2.lag_operations, m2.lag_ms),
            ("Lagging", 12, 1500)
        );
    }

    #[test]
    fn the_ring_buffer_keeps_the_last_samples_only() {
        let (h, t) = (History::new(), topology());
        for _ in 0..CAPACITY + 7 {
            h.sample(&t, Err("refused".into()), Err("refused".into()));
        }
        assert_eq!(h.since(0).len(), CAPACITY);
        let last = h.since(0).last().unwrap().at;
        assert!(h.since(last).is_empty());
    }

    #[test]
    fn rates_come_from_the_counters_change_between_samples() {
        let (h, t) = (History::new(), topology());
        h.sample(&t, Err("refused".into()), Err("refused".into()));
        for _ in 0..50 {
            t.backends[1].record(false, false, 10);
        }
        t.backends[0].record(true, false, 10);
        std::thread::sleep(Duration::from_millis(100));
        h.sample(&t, Err("refused".into()), Err("refused".into()));
        let s = h.since(0).pop().unwrap();
        let (m1, m2) = (&s.instances[0], &s.instances[1]);
        assert_eq!((m1.role.as_str(), m2.role.as_str()), ("PRIMARY", "REPLICA"));
        assert!(
            m2.reads_per_sec > 100.0 && m2.reads_per_sec <= 500.0,
            "{m2:?}"
        );
        assert_eq!(m2.writes_per_sec, 0.0);
        assert!(m1.writes_per_sec > 0.0 && m1.reads_per_sec == 0.0, "{m1:?}");
    }

    #[test]
    fn the_cache_appears_once_it_answers_and_its_ratio_is_per_interval() {
        let (h, t) = (History::new(), topology());
        h.sample(&t, Err("refused".into()), Err("refused".into()));
        assert_eq!(h.cache_view().state, "absent");
        assert_eq!(h.cache_view().admin, "127.0.0.1:4999");
        let stats = |hits: u64, misses: u64| {
            Ok(json!({"hits": hits, "misses": misses, "hit_ratio": 0.5, "entries": 3, "bytes": 90}))
        };
        h.sample(&t, no_primary(), stats(10, 10));
        h.sample(&t, no_primary(), stats(19, 11));
        let cache = h.since(0).pop().unwrap().cache.unwrap();
        assert_eq!(cache.hit_ratio, Some(0.9));
        assert_eq!(
            (cache.entries, cache.bytes, cache.total_hit_ratio),
            (3, 90, 0.5)
        );
        h.sample(&t, no_primary(), stats(19, 11));
        assert_eq!(h.since(0).pop().unwrap().cache.unwrap().hit_ratio, None);
        h.sample(&t, no_primary(), Err("Connection refused".into()));
        let view = h.cache_view();
        assert_eq!(
            (view.state, view.error.as_deref()),
            ("unreachable", Some("Connection refused"))
        );
        assert!(h.since(0).pop().unwrap().cache.is_none());
    }
}
