//! The cache's counters, shown by `SHOW CACHE STATS`, `GET /stats` and `GET /metrics`.
//!
//! Counters are plain atomics bumped on the paths that own them (sessions count hits and
//! misses, the store counts what it keeps and drops, the change listener counts notices), so
//! reading them never stops a client.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde_json::{json, Value};

/// Every counter of one cache process.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Cacheable reads answered from memory.
    pub hits: AtomicU64,
    /// Cacheable reads that found no fresh entry.
    pub misses: AtomicU64,
    /// Misses answered by joining an identical query already in flight.
    pub coalesced: AtomicU64,
    /// Entries served past their TTL because the upstream could not be reached.
    pub stale_served: AtomicU64,
    /// Reads that are never cached (transactions, non-deterministic functions, SHOW …).
    pub uncacheable: AtomicU64,
    /// Cacheable reads sent upstream (one per flight).
    pub upstream_reads: AtomicU64,
    /// Results kept.
    pub stored: AtomicU64,
    /// Results not kept: too large, an error, or invalidated while they were being fetched.
    pub not_stored: AtomicU64,
    /// Results kept with keyed dependencies (a query pinning a unique key to literals).
    pub stored_keyed: AtomicU64,
    /// Entries removed to respect the entry and byte limits.
    pub evictions: AtomicU64,
    /// Entries removed because their time was up.
    pub expirations: AtomicU64,
    /// Entries removed because a write could have changed them.
    pub invalidations: AtomicU64,
    /// Writes and change notices that invalidated something (or tried to).
    pub invalidation_events: AtomicU64,
    /// `FLUSH CACHE` statements, plus flushes when the change feed (re)connected.
    pub flushes: AtomicU64,
    /// Writes passed through the cache.
    pub writes: AtomicU64,
    /// Committed writes (or transactions) whose answer waited for the cache to drop what they
    /// changed.
    pub write_settles: AtomicU64,
    /// Microseconds those waits took in all (asking the write's position, then the change
    /// feed reporting it).
    pub write_settle_micros: AtomicU64,
    /// Settles the change feed did not report in time (or without a feed): the database's
    /// entries were dropped instead.
    pub write_settle_fallbacks: AtomicU64,
    /// Entries held now.
    pub entries: AtomicI64,
    /// Bytes of results held now.
    pub bytes: AtomicI64,
    /// 1 while the change feed is connected.
    pub feed_connected: AtomicU64,
    /// The primary's position the feed has reached.
    pub feed_position: AtomicU64,
    /// Change notices received.
    pub feed_notices: AtomicU64,
    /// Client connections open.
    pub clients: AtomicI64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl CacheStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Hits ÷ (hits + misses), 0 before any cacheable read.
    pub fn hit_ratio(&self) -> f64 {
        let (hits, misses) = (get(&self.hits), get(&self.misses));
        if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        }
    }

    /// Every figure as `(name, value)`, in the order they are shown.
    pub fn figures(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("hits", json!(get(&self.hits))),
            ("misses", json!(get(&self.misses))),
            (
                "hit_ratio",
                json!((self.hit_ratio() * 10_000.0).round() / 10_000.0),
            ),
            ("coalesced", json!(get(&self.coalesced))),
            ("stale_served", json!(get(&self.stale_served))),
            ("uncacheable", json!(get(&self.uncacheable))),
            ("upstream_reads", json!(get(&self.upstream_reads))),
            ("stored", json!(get(&self.stored))),
            ("stored_keyed", json!(get(&self.stored_keyed))),
            ("not_stored", json!(get(&self.not_stored))),
            ("evictions", json!(get(&self.evictions))),
            ("expirations", json!(get(&self.expirations))),
            ("invalidations", json!(get(&self.invalidations))),
            ("invalidation_events", json!(get(&self.invalidation_events))),
            ("flushes", json!(get(&self.flushes))),
            ("writes", json!(get(&self.writes))),
            ("write_settles", json!(get(&self.write_settles))),
            ("write_settle_micros", json!(get(&self.write_settle_micros))),
            (
                "write_settle_fallbacks",
                json!(get(&self.write_settle_fallbacks)),
            ),
            (
                "entries",
                json!(self.entries.load(Ordering::Relaxed).max(0)),
            ),
            ("bytes", json!(self.bytes.load(Ordering::Relaxed).max(0))),
            ("feed_connected", json!(get(&self.feed_connected))),
            ("feed_position", json!(get(&self.feed_position))),
            ("feed_notices", json!(get(&self.feed_notices))),
            (
                "clients",
                json!(self.clients.load(Ordering::Relaxed).max(0)),
            ),
        ]
    }

    /// The figures as one JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.figures()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The figures in Prometheus' text format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.figures() {
            let kind = match name {
                "hit_ratio" | "entries" | "bytes" | "feed_connected" | "feed_position"
                | "clients" => "gauge",
                _ => "counter",
            };
            let suffix = if kind == "counter" { "_total" } else { "" };
            out.push_str(&format!(
                "# TYPE dirkdb_cache_{name}{suffix} {kind}\ndirkdb_cache_{name}{suffix} {value}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_formats() {
        let stats = CacheStats::default();
        assert_eq!(stats.hit_ratio(), 0.0);
        for _ in 0..3 {
            CacheStats::bump(&stats.hits);
        }
        CacheStats::bump(&stats.misses);
        assert_eq!(stats.hit_ratio(), 0.75);
        assert_eq!(stats.to_json()["hit_ratio"], json!(0.75));
        let text = stats.to_prometheus();
        assert!(text.contains("dirkdb_cache_hits_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE dirkdb_cache_entries gauge\n"),
            "{text}"
        );
    }
}
