//! Micro-benchmarks of the cache's per-read work (issue #7).
//!
//! * `analyze/*`: [`analyze`], which every statement a client sends goes through: Malagasy
//!   translation, classification, and for a read the parse that yields its cache key.
//! * `fresh/*`: [`ResultStore::fresh`], the hit-path lookup (hits and misses), with 1, 200 (the
//!   default `cache.maxEntries`) and 10 000 entries kept, single-threaded.
//! * `hit_path/*`: a hit as a session without a memo of analyses does it, before writing the
//!   bytes: `analyze`, build the [`CacheKey`], `fresh`.
//!
//! Run with `cargo bench -p dirkdb-cache --bench cache_key`; figures are in `bench/MICRO.md`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dirkdb_cache::result_store::{CacheKey, ResultStore, StoreLimits};
use dirkdb_cache::statement_analysis::{analyze, Analysis};
use dirkdb_cache::stats::CacheStats;

const POINT_SELECT: &str = "SELECT * FROM utilisateurs WHERE id = 42";
const JOIN_SUBQUERY: &str = "SELECT u.nom, c.total FROM utilisateurs u JOIN commandes c ON c.user_id = u.id \
     WHERE c.total > (SELECT avg(total) FROM commandes WHERE ville = 'Antananarivo') ORDER BY c.total DESC LIMIT 20";
const MALAGASY: &str = "alaivo * ao utilisateurs rehefa age > 30 ary nom dia tsy NULL";
/// Unaliased expression columns: the key keeps the statement's exact text too.
const UNALIASED_EXPR: &str =
    "SELECT ville, count(*), avg(age) + 1 FROM utilisateurs WHERE age > 30 GROUP BY ville";

/// The cache key of a statement that must be cacheable.
fn key_of(sql: &str) -> String {
    match analyze(sql) {
        Analysis::Cacheable(read) => read.key.to_string(),
        other => panic!("{sql:?} is not cacheable: {other:?}"),
    }
}

fn bench_analyze(c: &mut Criterion) {
    let mut group = c.benchmark_group("analyze");
    for (name, sql) in [
        ("point_select", POINT_SELECT),
        ("join_subquery", JOIN_SUBQUERY),
        ("malagasy_select", MALAGASY),
        ("unaliased_expr_select", UNALIASED_EXPR),
    ] {
        key_of(sql);
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| analyze(black_box(sql))));
    }
    group.finish();
}

/// A store holding `n` point-select results (`... WHERE id = 1000000`, `1000001`, ...) of about
/// 3 KB each, settled (moka's pending work done), with limits high enough that nothing is
/// evicted. Returns the store and the key text before the id.
fn store_with(n: u64) -> (Arc<ResultStore>, String) {
    let store = ResultStore::new(
        StoreLimits {
            ttl: Duration::from_secs(3600),
            stale_window: Duration::ZERO,
            max_entries: n.max(200) * 2,
            max_bytes: 1 << 30,
            max_entry_bytes: 1 << 20,
        },
        Arc::new(CacheStats::default()),
    );
    let canonical = key_of(POINT_SELECT);
    let prefix = canonical
        .strip_suffix("42")
        .expect("the key ends with the id")
        .to_string();
    let body = Bytes::from(vec![b'x'; 3000]);
    let mut probe = Probe::new(&prefix);
    for i in 0..n {
        let since = store.clock();
        let key = Arc::new(probe.key(FIRST_ID + i));
        let kept = store.keep(key, body.clone(), vec!["utilisateurs".to_string()], since);
        assert!(kept);
    }
    store.settle();
    assert_eq!(store.entry_count(), n);
    assert!((0..n).all(|i| store.fresh(&probe.key(FIRST_ID + i)).is_some()));
    (store, prefix)
}

const FIRST_ID: u64 = 1_000_000;

/// The key a session would build: formatted afresh for every lookup (into a reused buffer, then
/// copied into the key, as `analyze` hands a session a new key), so it is hot in the CPU cache
/// whichever entry it names.
struct Probe {
    template: CacheKey,
    buf: String,
    prefix_len: usize,
}

impl Probe {
    fn new(prefix: &str) -> Probe {
        Probe {
            template: CacheKey {
                db: "dirk".into(),
                statement: prefix.into(),
            },
            buf: prefix.to_string(),
            prefix_len: prefix.len(),
        }
    }

    fn key(&mut self, id: u64) -> CacheKey {
        self.buf.truncate(self.prefix_len);
        write!(self.buf, "{id}").expect("writes to a String");
        CacheKey {
            db: self.template.db.clone(),
            statement: self.buf.as_str().into(),
        }
    }
}

fn bench_fresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("fresh");
    group.throughput(Throughput::Elements(1));
    for n in [1_u64, 200, 10_000] {
        let (store, prefix) = store_with(n);
        let mut probe = Probe::new(&prefix);
        // The entries in turn (a stride coprime with `n`, so not in insertion order); with one
        // entry that is the same one every time.
        let mut i = 0;
        group.bench_function(format!("hit/{n}_entries"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                store
                    .fresh(black_box(&probe.key(FIRST_ID + i)))
                    .expect("hit")
            })
        });
        if n > 1 {
            // The same entry every time, in the same store: separates the cost of the store's
            // size from the cost of touching a different entry on every lookup.
            group.bench_function(format!("hit_same_key/{n}_entries"), |b| {
                b.iter(|| {
                    store
                        .fresh(black_box(&probe.key(FIRST_ID + n / 2)))
                        .expect("hit")
                })
            });
        }
        group.bench_function(format!("miss/{n}_entries"), |b| {
            b.iter(|| store.fresh(black_box(&probe.key(FIRST_ID + n))))
        });
    }
    group.finish();

    // A whole hit as a session sees it: analyze the statement, build its key, look it up.
    let mut group = c.benchmark_group("hit_path");
    group.throughput(Throughput::Elements(1));
    let (store, _) = store_with(200);
    for (name, sql) in [
        ("point_select", POINT_SELECT),
        ("join_subquery", JOIN_SUBQUERY),
    ] {
        let key = CacheKey {
            db: "dirk".into(),
            statement: key_of(sql).into(),
        };
        let kept = store.keep(
            Arc::new(key),
            Bytes::from_static(b"RESULT_MESSAGE\nOK\nEND\n"),
            vec!["utilisateurs".to_string(), "commandes".to_string()],
            store.clock(),
        );
        assert!(kept);
        group.bench_function(format!("analyze_and_fresh/{name}"), |b| {
            b.iter(|| {
                let Analysis::Cacheable(read) = analyze(black_box(sql)) else {
                    unreachable!("cacheable")
                };
                let key = CacheKey {
                    db: "dirk".into(),
                    statement: read.key,
                };
                store.fresh(&key).expect("hit")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_analyze, bench_fresh);
criterion_main!(benches);
