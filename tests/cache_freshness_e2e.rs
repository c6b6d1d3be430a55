//! Proof of freshness for the cache's row-precise invalidation: a randomized, seeded workload on
//! real processes (a primary, a replica, the proxy and the cache on free loopback ports).
//!
//! * Writers own disjoint keys of `kv(id INTEGER PRIMARY KEY, v INTEGER, code TEXT UNIQUE)`, so
//!   each key's history is the sequence of states its one owner committed, in commit order. Half
//!   the writers go through the cache, half straight through the proxy; each step updates,
//!   deletes or inserts one of its keys (a new `v` every time), appending the new state to the
//!   key's history before sending it.
//! * Readers go through the cache with random point reads by rowid (`WHERE id = k`, and DirkDB's
//!   `alaivo … #rehefa id = k`), by the UNIQUE column (`WHERE code = 'ck'`), `IN` lists and
//!   ranges (`BETWEEN`, table-level entries).
//! * The rule checked on every answer, for every key it covers: the state it shows is one the
//!   key had at or after its *required* state when the read started. A write through the cache
//!   is required once it is acknowledged; a write straight through the proxy is required once
//!   the cache's change feed has passed the write's position (`DIRK POSITION`, then the cache's
//!   `feed_position`): before that the cache cannot know about it. A stale answer is one showing
//!   an older state. Zero are allowed.
//! * At the end, every key read through the cache equals the primary's row.
//!
//! CI runs a short seeded run (`FRESHNESS_SECS`, default 3 s; `FRESHNESS_SEED` to replay one).
//! The long run: `cargo test --test cache_freshness_e2e -- --ignored` (60 s, or
//! `FRESHNESS_LONG_SECS`).
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cache::CacheProcess;
use common::cluster::{http, Cluster};
use dirkdb_client::{Client, Reply};
use serde_json::Value;

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;
const KEYS: i64 = 24;
const WRITERS: i64 = 4;
const READERS: usize = 6;

/// A key's state: `None` while it has no row, else its `v`.
type State = Option<i64>;

/// What every task shares: each key's history and the index of its required state.
#[derive(Default)]
struct Model {
    history: Mutex<HashMap<i64, Vec<State>>>,
    required: Mutex<HashMap<i64, usize>>,
}

impl Model {
    fn required(&self, keys: &[i64]) -> Vec<usize> {
        let required = self.required.lock().unwrap();
        keys.iter()
            .map(|k| required.get(k).copied().unwrap_or(0))
            .collect()
    }

    /// True when `state` is a state of `key` at index `required` or later.
    fn is_fresh(&self, key: i64, state: State, required: usize) -> bool {
        let history = self.history.lock().unwrap();
        history[&key]
            .iter()
            .enumerate()
            .any(|(i, s)| i >= required && *s == state)
    }
}

/// xorshift64*: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_through_the_cache_never_see_an_overwritten_row() {
    let secs = env_u64("FRESHNESS_SECS", 3);
    freshness_run(Duration::from_secs(secs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long run (60 s): cargo test --test cache_freshness_e2e -- --ignored"]
async fn long_random_run_finds_no_stale_answer() {
    let secs = env_u64("FRESHNESS_LONG_SECS", 60);
    freshness_run(Duration::from_secs(secs)).await;
}

/// Totals of one run.
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    checked: AtomicU64,
    stale: AtomicU64,
    writes: AtomicU64,
}

async fn freshness_run(length: Duration) {
    let seed = env_u64("FRESHNESS_SEED", 0x5EED_F00D);
    eprintln!("freshness run: seed {seed:#x}, {} s", length.as_secs());
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut setup = cluster.proxy_client().await;
    let model = Arc::new(Model::default());
    for sql in [
        "CREATE DATABASE fresh",
        "USE fresh",
        "CREATE TABLE kv(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, code TEXT UNIQUE)",
    ] {
        setup.execute(sql).await.unwrap();
    }
    for k in 1..=KEYS {
        setup
            .execute(&format!("INSERT INTO kv VALUES ({k}, 0, 'c{k}')"))
            .await
            .unwrap();
        model.history.lock().unwrap().insert(k, vec![Some(0)]);
    }
    let cache = Arc::new(CacheProcess::start(&cluster, 60_000, 10_000, &[]));
    cache.wait_for_feed();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let stale_log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let through_cache = w % 2 == 0;
        let mut client = if through_cache {
            cache.client().await
        } else {
            cluster.proxy_client().await
        };
        client.execute("USE fresh").await.unwrap();
        let writer = Writer {
            client,
            through_cache,
            keys: (1..=KEYS).filter(|k| k % WRITERS == w).collect(),
            model: model.clone(),
            cache: cache.clone(),
            rng: Rng(seed ^ (0x1000 + w as u64)),
            counts: counts.clone(),
        };
        tasks.push(tokio::spawn(writer.run(stop.clone())));
    }
    for r in 0..READERS {
        let mut client = cache.client().await;
        client.execute("USE fresh").await.unwrap();
        let reader = Reader {
            client,
            model: model.clone(),
            rng: Rng(seed ^ (0x2000 + r as u64)),
            counts: counts.clone(),
            stale: stale_log.clone(),
        };
        tasks.push(tokio::spawn(reader.run(stop.clone())));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let stats = cache.stats();
    eprintln!(
        "reads {}, key checks {}, writes {}, stale {}; cache: hits {} misses {} stored_keyed {} invalidations {} write_settles {} write_settle_micros {} fallbacks {}",
        counts.reads.load(Ordering::Relaxed),
        counts.checked.load(Ordering::Relaxed),
        counts.writes.load(Ordering::Relaxed),
        counts.stale.load(Ordering::Relaxed),
        stats["hits"],
        stats["misses"],
        stats["stored_keyed"],
        stats["invalidations"],
        stats["write_settles"],
        stats["write_settle_micros"],
        stats["write_settle_fallbacks"],
    );
    let stale = stale_log.lock().unwrap().clone();
    assert!(
        stale.is_empty(),
        "stale answers (seed {seed:#x}): {stale:#?}"
    );
    assert!(counts.reads.load(Ordering::Relaxed) > 100, "too few reads");
    assert!(counts.writes.load(Ordering::Relaxed) > 20, "too few writes");
    assert!(
        stats["hits"].as_u64().unwrap_or(0) > 0,
        "the cache served nothing"
    );
    assert!(stats["stored_keyed"].as_u64().unwrap_or(0) > 0);

    // Quiet now: once the feed reached the primary's position, the cache agrees with it.
    let committed = cluster.committed(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stat("feed_position") < committed {
        assert!(Instant::now() < deadline, "the feed never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut primary = cluster.client(0).await;
    primary.execute("USE fresh").await.unwrap();
    let mut through = cache.client().await;
    through.execute("USE fresh").await.unwrap();
    for k in 1..=KEYS {
        let q = format!("SELECT id, v FROM kv WHERE id = {k}");
        assert_eq!(
            through.query(&q).await.unwrap().rows,
            primary.query(&q).await.unwrap().rows,
            "key {k} at the end"
        );
    }
}

struct Writer {
    client: Client,
    through_cache: bool,
    keys: Vec<i64>,
    model: Arc<Model>,
    cache: Arc<CacheProcess>,
    rng: Rng,
    counts: Arc<Counts>,
}

impl Writer {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut next_v = 1_000_000 * (1 + self.keys[0]);
        while !stop.load(Ordering::SeqCst) {
            let k = self.keys[self.rng.below(self.keys.len() as u64) as usize];
            next_v += 1;
            let current = *self.model.history.lock().unwrap()[&k].last().unwrap();
            let (sql, state) = match current {
                Some(_) if self.rng.below(5) == 0 => {
                    (format!("DELETE FROM kv WHERE id = {k}"), None)
                }
                Some(_) => (
                    format!("UPDATE kv SET v = {next_v} WHERE id = {k}"),
                    Some(next_v),
                ),
                None => (
                    format!("INSERT INTO kv VALUES ({k}, {next_v}, 'c{k}')"),
                    Some(next_v),
                ),
            };
            let index = {
                let mut history = self.model.history.lock().unwrap();
                let states = history.get_mut(&k).unwrap();
                states.push(state);
                states.len() - 1
            };
            self.client
                .execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            if !self.through_cache {
                self.wait_until_the_cache_saw_it().await;
            }
            self.model.required.lock().unwrap().insert(k, index);
            self.counts.writes.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(self.rng.below(4))).await;
        }
    }

    /// Waits until the cache's change feed passed this session's last write.
    async fn wait_until_the_cache_saw_it(&mut self) {
        let position = match self.client.execute("DIRK POSITION").await.unwrap() {
            Reply::Message(text) => text
                .strip_prefix("position ")
                .and_then(|p| p.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("DIRK POSITION answered {text:?}")),
            other => panic!("DIRK POSITION answered {other:?}"),
        };
        let admin = self.cache.admin;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = tokio::task::spawn_blocking(move || http(admin, "GET", "/stats", ""))
                .await
                .unwrap()["feed_position"]
                .as_u64()
                .unwrap_or(0);
            if seen >= position {
                return;
            }
            assert!(Instant::now() < deadline, "the cache's feed stalls");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

struct Reader {
    client: Client,
    model: Arc<Model>,
    rng: Rng,
    counts: Arc<Counts>,
    stale: Arc<Mutex<Vec<String>>>,
}

impl Reader {
    fn key(&mut self) -> i64 {
        1 + self.rng.below(KEYS as u64) as i64
    }

    /// A random query and the keys whose state its answer shows.
    fn query(&mut self) -> (String, Vec<i64>) {
        let k = self.key();
        match self.rng.below(5) {
            0 => (format!("SELECT id, v FROM kv WHERE id = {k}"), vec![k]),
            1 => (format!("alaivo id, v #ao@ kv #rehefa id = {k}"), vec![k]),
            2 => (format!("SELECT id, v FROM kv WHERE code = 'c{k}'"), vec![k]),
            3 => {
                let j = self.key();
                let mut keys = vec![k, j];
                keys.dedup();
                (
                    format!("SELECT id, v FROM kv WHERE id IN ({k}, {j}) ORDER BY id"),
                    keys,
                )
            }
            _ => {
                let last = (k + 4).min(KEYS);
                (
                    format!("SELECT id, v FROM kv WHERE id BETWEEN {k} AND {last} ORDER BY id"),
                    (k..=last).collect(),
                )
            }
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let (sql, keys) = self.query();
            let required = self.model.required(&keys);
            let rows = self
                .client
                .query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .rows;
            self.counts.reads.fetch_add(1, Ordering::Relaxed);
            let seen: HashMap<i64, i64> = rows
                .iter()
                .map(|row| (as_int(&row[0]), as_int(&row[1])))
                .collect();
            for (key, required) in keys.iter().zip(required) {
                let state = seen.get(key).copied();
                self.counts.checked.fetch_add(1, Ordering::Relaxed);
                if !self.model.is_fresh(*key, state, required) {
                    self.counts.stale.fetch_add(1, Ordering::Relaxed);
                    let history = self.model.history.lock().unwrap()[key].clone();
                    let mut log = self.stale.lock().unwrap();
                    if log.len() < 10 {
                        log.push(format!(
                            "{sql}: key {key} showed {state:?}, required state #{required} of {history:?}"
                        ));
                    }
                }
            }
        }
    }
}

/// An integer column as JSON (DirkDB's grammar answers numbers as doubles).
fn as_int(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))
        .unwrap_or_else(|| panic!("not a number: {value}"))
}
