//! The cache's counters, shown by `SHOW CACHE STATS`, `GET /stats` and `GET /metrics`.
//!
//! Counters are plain atomics bumped on the paths that own them (sessions count hits and
//! misses, the store counts what it keeps and drops, the change listener counts notices), so
//! reading them never stops a client.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use std::sync::Arc;

use dirkdb_core::metrics::{Metric, Value as Sample};
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
    /// Entries a change rewrote in place from the changed row's image instead of dropping them
    /// (see `crate::row_refresh`).
    pub refreshed: AtomicU64,
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
    /// Syncs the change feed answered (`DIRK SYNC`): after one, the answers kept before it may
    /// be refreshed from row images.
    pub feed_syncs: AtomicU64,
    /// Client connections open.
    pub clients: AtomicI64,
    /// 1 when the cache keeps no answer and passes every statement on (see
    /// `CacheSettings::pass_through`).
    pub pass_through: AtomicU64,
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
        FIGURES
            .iter()
            .map(|f| {
                let value = match (f.value)(self) {
                    Sample::Int(v) => json!(v),
                    Sample::Float(v) => json!(v),
                };
                (f.key, value)
            })
            .collect()
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

    /// The figures in Prometheus' text format, through the one writer of every `/metrics`.
    /// `guards` adds the refusals every part counts alike.
    pub fn to_prometheus(
        self: &Arc<Self>,
        guards: Option<dirkdb_core::metrics::Guards>,
    ) -> Result<String, std::fmt::Error> {
        let stats = self.clone();
        dirkdb_core::metrics::render(Vec::new(), move |page| {
            FIGURES
                .iter()
                .try_for_each(|f| page.one(&f.metric, (f.value)(&stats)))?;
            guards.as_ref().map_or(Ok(()), |g| g.write(page))
        })
    }
}

/// One figure: its key in `/stats` and `SHOW CACHE STATS`, its metric (`dirkdb_cache_<key>`,
/// `_total` for a counter) and how it is read.
struct Figure {
    key: &'static str,
    metric: Metric,
    value: fn(&CacheStats) -> Sample,
}

/// Declares a figure once: `figure!(key, counter|gauge, "help", |stats| value)`.
macro_rules! figure {
    ($key:ident, $kind:ident, $help:literal, $value:expr) => {
        Figure {
            key: stringify!($key),
            metric: Metric::$kind(concat!("dirkdb_cache_", stringify!($key)), $help),
            value: $value,
        }
    };
}

fn held(v: &AtomicI64) -> Sample {
    Sample::Int(v.load(Ordering::Relaxed).max(0))
}

/// Every figure, in the order they are shown.
const FIGURES: [Figure; 28] = [
    figure!(
        hits,
        counter,
        "Cacheable reads answered from memory.",
        |s| get(&s.hits).into()
    ),
    figure!(
        misses,
        counter,
        "Cacheable reads that found no fresh entry.",
        |s| get(&s.misses).into()
    ),
    figure!(
        hit_ratio,
        gauge,
        "Hits / (hits + misses), 0 before any cacheable read.",
        |s| { Sample::Float((s.hit_ratio() * 10_000.0).round() / 10_000.0) }
    ),
    figure!(
        coalesced,
        counter,
        "Misses answered by joining an identical query in flight.",
        |s| get(&s.coalesced).into()
    ),
    figure!(
        stale_served,
        counter,
        "Entries served past their TTL while the upstream was unreachable.",
        |s| get(&s.stale_served).into()
    ),
    figure!(uncacheable, counter, "Reads that are never cached.", |s| {
        get(&s.uncacheable).into()
    }),
    figure!(
        upstream_reads,
        counter,
        "Cacheable reads sent upstream (one per flight).",
        |s| get(&s.upstream_reads).into()
    ),
    figure!(stored, counter, "Results kept.", |s| get(&s.stored).into()),
    figure!(
        stored_keyed,
        counter,
        "Results kept with keyed dependencies.",
        |s| get(&s.stored_keyed).into()
    ),
    figure!(
        not_stored,
        counter,
        "Results not kept (too large, an error, or invalidated in flight).",
        |s| get(&s.not_stored).into()
    ),
    figure!(
        evictions,
        counter,
        "Entries removed to respect the entry and byte limits.",
        |s| get(&s.evictions).into()
    ),
    figure!(
        expirations,
        counter,
        "Entries removed because their time was up.",
        |s| get(&s.expirations).into()
    ),
    figure!(
        invalidations,
        counter,
        "Entries removed because a write could have changed them.",
        |s| get(&s.invalidations).into()
    ),
    figure!(
        refreshed,
        counter,
        "Entries rewritten from a changed row's image instead of dropped.",
        |s| get(&s.refreshed).into()
    ),
    figure!(
        invalidation_events,
        counter,
        "Writes and change notices that invalidated something.",
        |s| get(&s.invalidation_events).into()
    ),
    figure!(
        flushes,
        counter,
        "FLUSH CACHE statements and flushes at change-feed (re)connections.",
        |s| get(&s.flushes).into()
    ),
    figure!(writes, counter, "Writes passed through the cache.", |s| {
        get(&s.writes).into()
    }),
    figure!(
        write_settles,
        counter,
        "Committed writes whose answer waited for the cache to drop what they changed.",
        |s| get(&s.write_settles).into()
    ),
    figure!(
        write_settle_micros,
        counter,
        "Microseconds those waits took in all.",
        |s| get(&s.write_settle_micros).into()
    ),
    figure!(
        write_settle_fallbacks,
        counter,
        "Settles not reported in time: the database's entries were dropped instead.",
        |s| get(&s.write_settle_fallbacks).into()
    ),
    figure!(entries, gauge, "Entries held now.", |s| held(&s.entries)),
    figure!(bytes, gauge, "Bytes of results held now.", |s| held(
        &s.bytes
    )),
    figure!(
        feed_connected,
        gauge,
        "1 while the change feed is connected.",
        |s| get(&s.feed_connected).into()
    ),
    figure!(
        feed_position,
        gauge,
        "The primary's position the change feed has reached.",
        |s| get(&s.feed_position).into()
    ),
    figure!(feed_notices, counter, "Change notices received.", |s| get(
        &s.feed_notices
    )
    .into()),
    figure!(
        feed_syncs,
        counter,
        "Syncs the change feed answered.",
        |s| get(&s.feed_syncs).into()
    ),
    figure!(clients, gauge, "Client connections open.", |s| held(
        &s.clients
    )),
    figure!(
        pass_through,
        gauge,
        "1 when the cache keeps no answer and passes every statement on (MULTI_PRIMARY).",
        |s| get(&s.pass_through).into()
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_formats() {
        let stats = Arc::new(CacheStats::default());
        assert_eq!(stats.hit_ratio(), 0.0);
        for _ in 0..3 {
            CacheStats::bump(&stats.hits);
        }
        CacheStats::bump(&stats.misses);
        assert_eq!(stats.hit_ratio(), 0.75);
        assert_eq!(stats.to_json()["hit_ratio"], json!(0.75));
        let text = stats.to_prometheus(None).unwrap();
        assert!(text.contains("dirkdb_cache_hits_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE dirkdb_cache_entries gauge\n"),
            "{text}"
        );
    }
}
