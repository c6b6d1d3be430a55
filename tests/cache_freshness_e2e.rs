//! Proof of freshness for the cache's row-precise invalidation: a randomized, seeded workload on
//! real processes (a primary, a replica, the proxy and the cache on free loopback ports), every
//! answer checked against the primary at the same position.
//!
//! * Writers update, insert, replace, re-key and delete random rows of
//!   `kv(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, code TEXT UNIQUE)`, half through the cache,
//!   half straight through the proxy, any writer any key, without waiting for anything.
//! * Readers go through the cache with random point reads by rowid (`WHERE id = k`, and DirkDB's
//!   `alaivo … #rehefa id = k`), by the UNIQUE column (`WHERE code = 'ck'`), `IN` lists, ranges
//!   and an aggregate over a range (the last two table-level entries).
//! * **The truth is the primary's own oplog**: after the run, the test reads the primary's
//!   `_dirk_oplog` for `kv` and rebuilds the table as it stood at every position. Nothing the
//!   writers believe enters the check.
//! * **The rule**: each answer must be the query's answer on the primary at some position `p`
//!   with `r <= p <= e`. `e` is the primary's committed position read after the answer arrived.
//!   `r` is the highest position the read had to see when it started: the position of every
//!   write through the cache acknowledged before (its `DIRK POSITION`), and the cache's
//!   `feed_position` sampled before (a write straight through the proxy reaches the cache by
//!   its change feed; once the feed has passed it, the cache must not answer from before it).
//!   An answer matching no such `p` is stale; zero are allowed.
//! * At the end, the rebuilt table equals the primary's, and every key read through the cache
//!   equals the primary's row.
//! * Point reads by id and by code are rewritten from the feed's row images
//!   (`dirkdb_cache::row_refresh`) rather than dropped, once the feed answered a sync;
//!   the run must have refreshed some, and their answers are checked like every other.
//!
//! A second test checks the guarantee this rests on directly: with the change feed held back on
//! purpose, a write through the cache is acknowledged only once the feed has reported it.
//!
//! CI runs a short seeded run (`FRESHNESS_SECS`, default 3 s; `FRESHNESS_SEED` to replay one).
//! The long run: `cargo test --workspace --test e2e cache_freshness_e2e:: -- --ignored --nocapture`
//! (60 s, or `FRESHNESS_LONG_SECS`); it prints the counts of answers checked and stale.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cache::CacheProcess;
use common::cluster::{http, Cluster};
use dirkdb_client::{Client, Reply};
use serde_json::Value;

const OPLOG: &str = r#"{ "maxEntries": 10000000 }"#;
const KEYS: i64 = 24;
const WRITERS: u64 = 4;
const READERS: u64 = 8;

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

    fn key(&mut self) -> i64 {
        1 + self.below(KEYS as u64) as i64
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_through_the_cache_match_the_primary_at_their_position() {
    let secs = env_u64("FRESHNESS_SECS", 3);
    freshness_run(Duration::from_secs(secs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long run (60 s): cargo test --workspace --test e2e cache_freshness_e2e:: -- --ignored --nocapture"]
async fn long_random_run_finds_no_stale_answer() {
    let secs = env_u64("FRESHNESS_LONG_SECS", 60);
    freshness_run(Duration::from_secs(secs)).await;
}

/// The guarantee at the root of freshness: the cache acknowledges a write only once the change
/// feed has reported the write's position. A relay between the cache and the proxy holds the
/// feed's bytes back [`FEED_DELAY`] (statements pass at once), so a cache that answered before
/// its feed reported the write is caught every time: right after the acknowledgement, its
/// `feed_position` would still be below the write's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_is_acknowledged_only_once_the_feed_reported_it() {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut setup = cluster.proxy_client().await;
    for sql in [
        "CREATE DATABASE ack",
        "USE ack",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
        "INSERT INTO t VALUES (1, 0)",
    ] {
        setup.execute(sql).await.unwrap();
    }
    let relay = FeedDelayRelay::start(cluster.proxy.port).await;
    let cache = CacheProcess::start_in_front_of(&cluster, relay.port, 60_000, 1_000, &[]);
    cache.wait_for_feed();
    let mut c = cache.client().await;
    c.execute("USE ack").await.unwrap();
    let read = "SELECT v FROM t WHERE id = 1";
    for i in 1..=5_i64 {
        assert_eq!(
            c.query(read).await.unwrap().rows,
            vec![vec![Value::from(i - 1)]]
        );
        let started = Instant::now();
        c.execute(&format!("UPDATE t SET v = {i} WHERE id = 1"))
            .await
            .unwrap();
        let waited = started.elapsed();
        let feed = cache.stat("feed_position");
        let position = last_write_position(&mut c).await;
        assert!(
            feed >= position,
            "write {i} (position {position}) was acknowledged before the feed reported it (feed at {feed})"
        );
        // The relay did hold the feed back, so the check above could have failed.
        assert!(
            waited >= FEED_DELAY - Duration::from_millis(50),
            "write {i} was acknowledged in {waited:?}: the feed was not held back"
        );
        assert_eq!(
            c.query(read).await.unwrap().rows,
            vec![vec![Value::from(i)]]
        );
    }
    assert_eq!(
        cache.stat("write_settle_fallbacks"),
        0,
        "the feed reported in time"
    );
}

/// How long [`FeedDelayRelay`] holds back what the proxy sends on a change feed (under the
/// cache's 500 ms wait for its feed, so no write falls back to dropping the database).
const FEED_DELAY: Duration = Duration::from_millis(250);

/// A TCP relay in front of the proxy that forwards every connection as it is, except that the
/// bytes the proxy sends on a change feed (a connection whose first statement is `DIRK
/// CHANGES`) reach the cache [`FEED_DELAY`] after they arrived, in order.
struct FeedDelayRelay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl FeedDelayRelay {
    async fn start(target: u16) -> FeedDelayRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_one(client, target));
            }
        });
        FeedDelayRelay { port, task }
    }
}

impl Drop for FeedDelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_one(client: tokio::net::TcpStream, target: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_proxy, mut to_proxy) = upstream.into_split();
    let mut first = vec![0u8; 4096];
    let n = from_client.read(&mut first).await.unwrap_or(0);
    if n == 0 || to_proxy.write_all(&first[..n]).await.is_err() {
        return;
    }
    let feed = String::from_utf8_lossy(&first[..n])
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("DIRK CHANGES");
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_proxy).await;
    });
    if !feed {
        let _ = tokio::io::copy(&mut from_proxy, &mut to_client).await;
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 65536];
        while let Ok(n @ 1..) = from_proxy.read(&mut chunk).await {
            if tx.send((Instant::now(), chunk[..n].to_vec())).is_err() {
                return;
            }
        }
    });
    while let Some((arrived, bytes)) = rx.recv().await {
        tokio::time::sleep_until((arrived + FEED_DELAY).into()).await;
        if to_client.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// A row of `kv` as the primary's oplog recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    v: i64,
    code: String,
}

/// The reads the readers make (each knows its SQL and its answer on a table state).
#[derive(Debug, Clone, Copy)]
enum Query {
    ById(i64),
    DirkDb(i64),
    ByCode(i64),
    In(i64, i64),
    Range(i64, i64),
    Sum(i64, i64),
}

impl Query {
    fn random(rng: &mut Rng) -> Query {
        let k = rng.key();
        let last = (k + 1 + rng.below(4) as i64).min(KEYS);
        match rng.below(6) {
            0 => Query::ById(k),
            1 => Query::DirkDb(k),
            2 => Query::ByCode(k),
            3 => Query::In(k, rng.key()),
            4 => Query::Range(k, last),
            _ => Query::Sum(k, last),
        }
    }

    fn sql(self) -> String {
        match self {
            Query::ById(k) => format!("SELECT id, v FROM kv WHERE id = {k}"),
            Query::DirkDb(k) => format!("alaivo id, v #ao@ kv #rehefa id = {k}"),
            Query::ByCode(k) => format!("SELECT id, v FROM kv WHERE code = 'c{k}'"),
            Query::In(k, j) => format!("SELECT id, v FROM kv WHERE id IN ({k}, {j}) ORDER BY id"),
            Query::Range(a, b) => {
                format!("SELECT id, v, code FROM kv WHERE id BETWEEN {a} AND {b} ORDER BY id")
            }
            Query::Sum(a, b) => format!(
                "SELECT count(*) AS n, coalesce(sum(v), 0) AS s FROM kv WHERE id BETWEEN {a} AND {b}"
            ),
        }
    }

    /// The keys whose rows the answer depends on.
    fn keys(self) -> Vec<i64> {
        match self {
            Query::ById(k) | Query::DirkDb(k) | Query::ByCode(k) => vec![k],
            Query::In(k, j) => vec![k, j],
            Query::Range(a, b) | Query::Sum(a, b) => (a..=b).collect(),
        }
    }

    /// The answer on the table as `row_of` has it, in the form of [`normalize`].
    fn answer(self, row_of: impl Fn(i64) -> Option<Row>) -> Vec<Vec<String>> {
        let id_v = |k: i64| row_of(k).map(|r| vec![k.to_string(), r.v.to_string()]);
        match self {
            Query::ById(k) | Query::DirkDb(k) => id_v(k).into_iter().collect(),
            Query::ByCode(k) => row_of(k)
                .filter(|r| r.code == format!("c{k}"))
                .map(|r| vec![k.to_string(), r.v.to_string()])
                .into_iter()
                .collect(),
            Query::In(k, j) => {
                let mut keys = vec![k, j];
                keys.sort();
                keys.dedup();
                keys.into_iter().filter_map(id_v).collect()
            }
            Query::Range(a, b) => (a..=b)
                .filter_map(|k| {
                    let r = row_of(k)?;
                    Some(vec![
                        k.to_string(),
                        r.v.to_string(),
                        format!("'{}'", r.code),
                    ])
                })
                .collect(),
            Query::Sum(a, b) => {
                let rows: Vec<Row> = (a..=b).filter_map(&row_of).collect();
                let sum: i64 = rows.iter().map(|r| r.v).sum();
                vec![vec![rows.len().to_string(), sum.to_string()]]
            }
        }
    }
}

/// An answer's rows as text: integers (DirkDB's grammar answers doubles) and quoted strings.
fn normalize(rows: &[Vec<Value>]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::String(s) => format!("'{s}'"),
                    other => match other.as_i64().or_else(|| other.as_f64().map(|f| f as i64)) {
                        Some(i) => i.to_string(),
                        None => other.to_string(),
                    },
                })
                .collect()
        })
        .collect()
}

/// One answer the cache gave.
struct Observation {
    query: Query,
    /// The position the read had to see (see the module's rule): first the cache's feed
    /// position sampled before it started, then raised by the writes acknowledged before.
    required: u64,
    /// When the read was sent.
    started: Instant,
    /// When the answer had arrived.
    ended: Instant,
    rows: Vec<Vec<String>>,
}

/// What every task shares while the run lasts.
struct Shared {
    stop: AtomicBool,
    /// The highest feed position the cache reported so far.
    feed: AtomicU64,
    /// The primary's committed position, each with the time its request was sent.
    committed: Mutex<Vec<(Instant, u64)>>,
    /// Writes through the cache: when each was acknowledged, and its position.
    acks: Mutex<Vec<(Instant, u64)>>,
    writes: AtomicU64,
}

/// Raises each observation's required position to every write acknowledged before it
/// started.
fn require_acknowledged(observations: &mut [Observation], mut acks: Vec<(Instant, u64)>) {
    acks.sort();
    let mut highest = 0;
    let prefix_max: Vec<u64> = acks
        .iter()
        .map(|(_, p)| {
            highest = highest.max(*p);
            highest
        })
        .collect();
    for o in observations {
        let before = acks.partition_point(|(acked, _)| *acked < o.started);
        if let Some(i) = before.checked_sub(1) {
            o.required = o.required.max(prefix_max[i]);
        }
    }
}

async fn freshness_run(length: Duration) {
    let seed = env_u64("FRESHNESS_SEED", 0x5EED_F00D);
    eprintln!("freshness run: seed {seed:#x}, {} s", length.as_secs());
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let mut setup = cluster.proxy_client().await;
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
    }
    let cache = Arc::new(CacheProcess::start(&cluster, 60_000, 10_000, &[]));
    cache.wait_for_feed();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        feed: AtomicU64::new(0),
        committed: Mutex::new(Vec::new()),
        acks: Mutex::new(Vec::new()),
        writes: AtomicU64::new(0),
    });
    let watcher = tokio::spawn(watch_positions(
        shared.clone(),
        cache.admin,
        cluster.nodes[0].admin,
    ));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (mut client, mut probe) = if w % 2 == 0 {
            (cache.client().await, Some(cache.client().await))
        } else {
            (cluster.proxy_client().await, None)
        };
        client.execute("USE fresh").await.unwrap();
        if let Some(probe) = probe.as_mut() {
            probe.execute("USE fresh").await.unwrap();
        }
        let rng = Rng(seed ^ (0x1000 + w));
        writers.push(tokio::spawn(write_randomly(
            client,
            probe,
            rng,
            shared.clone(),
        )));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let mut client = cache.client().await;
        client.execute("USE fresh").await.unwrap();
        let rng = Rng(seed ^ (0x2000 + r));
        readers.push(tokio::spawn(read_randomly(client, rng, shared.clone())));
    }
    tokio::time::sleep(length).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut observations = Vec::new();
    for task in writers {
        observations.extend(task.await.unwrap());
    }
    for task in readers {
        observations.extend(task.await.unwrap());
    }
    watcher.await.unwrap();
    let acks = std::mem::take(&mut *shared.acks.lock().unwrap());
    require_acknowledged(&mut observations, acks);

    let history = History::of_primary(&cluster).await;
    let committed = std::mem::take(&mut *shared.committed.lock().unwrap());
    let final_position = cluster.committed(0);
    let mut stale = 0;
    let mut first_stale = Vec::new();
    for o in &observations {
        let after = committed.partition_point(|(sent, _)| *sent < o.ended);
        let upper = committed.get(after).map_or(final_position, |(_, p)| *p);
        if !history.answers_between(o, upper) {
            stale += 1;
            if first_stale.len() < 10 {
                first_stale.push(history.describe(o, upper));
            }
        }
    }
    let stats = cache.stats();
    eprintln!(
        "answers checked {}, stale {}, writes {}, oplog entries of kv {}; cache: hits {} misses {} stored_keyed {} refreshed {} invalidations {} write_settles {} write_settle_micros {} fallbacks {}",
        observations.len(),
        stale,
        shared.writes.load(Ordering::Relaxed),
        history.entries,
        stats["hits"],
        stats["misses"],
        stats["stored_keyed"],
        stats["refreshed"],
        stats["invalidations"],
        stats["write_settles"],
        stats["write_settle_micros"],
        stats["write_settle_fallbacks"],
    );
    assert_eq!(
        stale, 0,
        "stale answers (seed {seed:#x}), the first ten: {first_stale:#?}"
    );
    assert!(observations.len() > 100, "too few reads");
    assert!(shared.writes.load(Ordering::Relaxed) > 20, "too few writes");
    assert!(
        stats["hits"].as_u64().unwrap_or(0) > 0,
        "the cache served nothing"
    );
    assert!(stats["stored_keyed"].as_u64().unwrap_or(0) > 0);
    // Point reads by id and by code were rewritten from row images too, and checked like all.
    assert!(
        stats["refreshed"].as_u64().unwrap_or(0) > 0,
        "no entry was refreshed from a row image: {stats}"
    );

    // Quiet now: the rebuilt history ends where the primary's table is, and once the feed
    // reached the primary's position, the cache agrees with it.
    let mut primary = cluster.client(0).await;
    primary.execute("USE fresh").await.unwrap();
    let everything = Query::Range(1, KEYS);
    let on_primary = primary.query(&everything.sql()).await.unwrap().rows;
    assert_eq!(
        normalize(&on_primary),
        everything.answer(|k| history.state(k, u64::MAX)),
        "the oplog's history ends at the primary's table"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stat("feed_position") < final_position {
        assert!(Instant::now() < deadline, "the feed never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut through = cache.client().await;
    through.execute("USE fresh").await.unwrap();
    for k in 1..=KEYS {
        let q = Query::ById(k).sql();
        assert_eq!(
            through.query(&q).await.unwrap().rows,
            primary.query(&q).await.unwrap().rows,
            "key {k} at the end"
        );
    }
}

/// Samples the cache's feed position (raising what reads must see) and the primary's committed
/// position (bounding what they can see) until the run stops.
async fn watch_positions(shared: Arc<Shared>, cache_admin: u16, primary_admin: u16) {
    while !shared.stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let (feed, committed) = tokio::task::spawn_blocking(move || {
            let feed = http(cache_admin, "GET", "/stats", "")["feed_position"].as_u64();
            let status = http(primary_admin, "GET", "/replication/status", "");
            (feed, status["committedSequence"].as_u64())
        })
        .await
        .unwrap();
        if let Some(feed) = feed {
            shared.feed.fetch_max(feed, Ordering::SeqCst);
        }
        if let Some(committed) = committed {
            shared.committed.lock().unwrap().push((sent, committed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One writer: random writes of random keys until the run stops. Through the cache, each
/// write's acknowledgement time and position are kept (every read that starts afterwards must
/// see it), and the writer reads its key before and right after the write on `probe`, its
/// second connection to the cache: the tightest race between an acknowledgement and the entry
/// it must have dropped. (Not on the writing connection: the cache raises that session's
/// position with `DIRK SEEN` for its reads, and `DIRK POSITION` would answer that instead of
/// the write's.) Returns those answers.
async fn write_randomly(
    mut client: Client,
    mut probe: Option<Client>,
    mut rng: Rng,
    shared: Arc<Shared>,
) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut next_v = 1_000_000 * (1 + rng.below(1000) as i64);
    while !shared.stop.load(Ordering::SeqCst) {
        let k = rng.key();
        next_v += 1;
        if let Some(probe) = probe.as_mut() {
            out.push(observe(probe, Query::ById(k), &shared).await);
        }
        let sql = match rng.below(6) {
            0 => format!("DELETE FROM kv WHERE id = {k}"),
            1 => format!("INSERT OR IGNORE INTO kv VALUES ({k}, {next_v}, 'c{k}')"),
            2 => format!("INSERT OR REPLACE INTO kv VALUES ({k}, {next_v}, 'c{k}')"),
            3 => format!(
                "UPDATE kv SET code = CASE code WHEN 'c{k}' THEN 'd{k}' ELSE 'c{k}' END WHERE id = {k}"
            ),
            _ => format!("UPDATE kv SET v = {next_v} WHERE id = {k}"),
        };
        client
            .execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let acked = Instant::now();
        if let Some(probe) = probe.as_mut() {
            out.push(observe(probe, Query::ById(k), &shared).await);
            let position = last_write_position(&mut client).await;
            shared.acks.lock().unwrap().push((acked, position));
        }
        shared.writes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
    }
    out
}

/// The session's last write position (`DIRK POSITION`).
async fn last_write_position(client: &mut Client) -> u64 {
    match client.execute("DIRK POSITION").await.unwrap() {
        Reply::Message(text) => text
            .strip_prefix("position ")
            .and_then(|p| p.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("DIRK POSITION answered {text:?}")),
        other => panic!("DIRK POSITION answered {other:?}"),
    }
}

/// One reader: random queries through the cache until the run stops; returns its answers.
async fn read_randomly(mut client: Client, mut rng: Rng, shared: Arc<Shared>) -> Vec<Observation> {
    let mut out = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        out.push(observe(&mut client, Query::random(&mut rng), &shared).await);
    }
    out
}

/// Reads `query` through `client` (the cache) and notes what the answer must match.
async fn observe(client: &mut Client, query: Query, shared: &Shared) -> Observation {
    let required = shared.feed.load(Ordering::SeqCst);
    let started = Instant::now();
    let sql = query.sql();
    let rows = client
        .query(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows;
    Observation {
        query,
        required,
        started,
        ended: Instant::now(),
        rows: normalize(&rows),
    }
}

/// `kv` on the primary at every position, rebuilt from the primary's oplog: each key's states,
/// each from the position of the entry that made it.
struct History {
    by_key: HashMap<i64, Vec<(u64, Option<Row>)>>,
    entries: usize,
}

impl History {
    async fn of_primary(cluster: &Cluster) -> History {
        let mut primary = cluster.client(0).await;
        primary.execute("USE fresh").await.unwrap();
        let rows = primary
            .query("SELECT seq, op, old_key, data FROM _dirk_oplog WHERE tbl = 'kv' AND op IN ('I', 'U', 'R') ORDER BY seq")
            .await
            .unwrap()
            .rows;
        let mut by_key: HashMap<i64, Vec<(u64, Option<Row>)>> = HashMap::new();
        let json =
            |v: &Value| -> Value { serde_json::from_str(v.as_str().unwrap_or("null")).unwrap() };
        for row in &rows {
            let seq = row[0].as_u64().unwrap();
            let op = row[1].as_str().unwrap();
            let old = json(&row[2]);
            let data = json(&row[3]);
            if op != "I" {
                let old_id = old["rowid"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("oplog entry {row:?}"));
                by_key.entry(old_id).or_default().push((seq, None));
            }
            if op != "R" {
                let new = Row {
                    v: data["v"].as_i64().unwrap(),
                    code: data["code"].as_str().unwrap().to_string(),
                };
                let id = data["id"].as_i64().unwrap();
                by_key.entry(id).or_default().push((seq, Some(new)));
            }
        }
        assert!(
            rows.first().is_some_and(|r| r[1] == "I"),
            "the oplog starts with the first insert"
        );
        History {
            by_key,
            entries: rows.len(),
        }
    }

    /// Key `k`'s row at position `p`.
    fn state(&self, k: i64, p: u64) -> Option<Row> {
        let states = self.by_key.get(&k)?;
        let at = states.partition_point(|(seq, _)| *seq <= p);
        at.checked_sub(1).and_then(|i| states[i].1.clone())
    }

    /// The positions in `[from, to]` where the answer to `query` can change: `from` and each
    /// entry of its keys.
    fn changes(&self, query: Query, from: u64, to: u64) -> Vec<u64> {
        let mut out = vec![from];
        for k in query.keys() {
            for (seq, _) in self.by_key.get(&k).into_iter().flatten() {
                if *seq > from && *seq <= to {
                    out.push(*seq);
                }
            }
        }
        out
    }

    /// True when the answer is the query's answer at some position in `[o.required, upper]`.
    fn answers_between(&self, o: &Observation, upper: u64) -> bool {
        self.changes(o.query, o.required, upper)
            .iter()
            .any(|p| o.query.answer(|k| self.state(k, *p)) == o.rows)
    }

    /// A stale answer, for the failure message: what it showed, what the window allowed, and
    /// the latest position before the window that gives it.
    fn describe(&self, o: &Observation, upper: u64) -> String {
        let mut earlier = self.changes(o.query, 0, o.required.saturating_sub(1));
        earlier.sort();
        let seen_at = earlier
            .into_iter()
            .rev()
            .find(|p| o.query.answer(|k| self.state(k, *p)) == o.rows);
        format!(
            "{}: showed {:?}; at {} (required) the primary answered {:?}, at {upper} {:?}; last matching position {seen_at:?}",
            o.query.sql(),
            o.rows,
            o.required,
            o.query.answer(|k| self.state(k, o.required)),
            o.query.answer(|k| self.state(k, upper)),
        )
    }
}
