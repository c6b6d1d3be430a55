//! The kept results: a `moka` cache (TinyLFU admission, LRU eviction, TTL) plus the index that
//! says which entries read which tables, so a write drops exactly those.
//!
//! * **Hit path:** [`ResultStore::fresh`] is a lookup in `moka`'s concurrent map: no lock of
//!   ours, whatever the number of clients.
//! * **Fill path:** a miss becomes a flight ([`ResultStore::flight`]); identical misses that
//!   arrive while it runs wait for its answer instead of asking the upstream again. The flight
//!   notes the invalidation clock when it starts; [`ResultStore::keep`] stores its answer only if
//!   nothing the answer depends on was invalidated since, so an answer fetched before a write is
//!   never kept after it.
//! * **Invalidation:** a write through the cache or a change notice from the primary bumps the
//!   clock for what it changed and removes the indexed entries, under the same lock as
//!   [`ResultStore::keep`]'s check, so the two cannot interleave. An entry depends on tables
//!   (every change of the table drops it) and on keyed rows ([`KeyedRows`]: a query that pins a
//!   unique key to literals): [`ResultStore::invalidate_rows`] drops the entries depending on
//!   the changed tables as a whole and the keyed entries whose key values a changed row had,
//!   old or new, and nothing else. A flight with keyed dependencies is registered while it
//!   runs, and a row change matching it marks it, so its answer is not kept. Before that, it raises the
//!   position the cache has seen ([`ResultStore::seen`]); fills read at least at that position,
//!   so a lagging replica cannot hand back what a write replaced.
//! * **Capacity:** each entry weighs its bytes, but at least `maxBytes / maxEntries`, against a
//!   capacity of `maxBytes`: both the byte and the entry limits hold with one weigher.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use tokio::sync::watch;

use crate::row_refresh::{refreshed, RowRefresh};
use crate::stats::CacheStats;
use crate::table_keys::{key_id, tuple_of_row, KeyColumn};
use crate::view_map::{DbSchema, ANY_TABLE};
use dirkdb_core::change_feed::{RowImage, RowKey};
use dirkdb_core::sync::lock;

/// Limits of the store.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// How long an entry is served.
    pub ttl: Duration,
    /// How long past its TTL an entry is kept for stale-if-error (zero: off).
    pub stale_window: Duration,
    /// Entries kept at most.
    pub max_entries: u64,
    /// Bytes kept at most.
    pub max_bytes: u64,
    /// Largest result kept.
    pub max_entry_bytes: usize,
}

/// Where a result is kept: the session's database and the normalized statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Current database (lower case; empty when none).
    pub db: Arc<str>,
    /// The normalized statement.
    pub statement: Arc<str>,
}

/// One kept result: the response exactly as sent to the client that caused it.
#[derive(Debug)]
pub struct CachedResult {
    id: u64,
    /// The response frames, encoded.
    pub bytes: Bytes,
    /// When it was fetched (or last refreshed from a changed row).
    pub stored_at: Instant,
    /// How it follows from its one row, when a change of the row may rewrite it.
    refresh: Option<Arc<RowRefresh>>,
    /// The change feed's sync ([`ResultStore::sync_answered`]) after which the notices are all
    /// newer than this answer: before it, a change of its row drops it.
    refreshable_from: u64,
}

/// What a miss does: fetch (and share) the answer, or wait for the one in flight.
pub enum FlightRole {
    /// Fetch it; hand the answer to [`FlightLeader::finish`].
    Leader(FlightLeader),
    /// Wait for another session's fetch.
    Follower(watch::Receiver<Option<FlightOutcome>>),
}

/// The end of a flight, as its followers see it.
#[derive(Debug, Clone)]
pub enum FlightOutcome {
    /// The response to send.
    Shared(Bytes),
    /// The leader got no shareable answer (too large, or it failed): ask the upstream yourself.
    Retry,
}

/// The session fetching a result for everyone waiting on the same key.
pub struct FlightLeader {
    store: Arc<ResultStore>,
    key: Arc<CacheKey>,
    id: u64,
    deps: Dependencies,
    tx: watch::Sender<Option<FlightOutcome>>,
    /// The invalidation clock when the flight started.
    pub since: u64,
}

impl FlightLeader {
    /// Tells the followers how the flight ended.
    pub fn finish(self, outcome: FlightOutcome) {
        self.tx.send_replace(Some(outcome));
    }

    /// Keeps the flight's answer unless something it read changed since it started (see
    /// [`ResultStore::keep`]). Returns whether it was kept.
    pub fn keep(&self, bytes: Bytes) -> bool {
        self.keep_refreshable(bytes, None)
    }

    /// [`FlightLeader::keep`] for a point query's answer, which a change of its row rewrites
    /// from the row's image (`refresh`) instead of dropping it, when the query's dependencies
    /// are the one keyed row of its table.
    pub fn keep_refreshable(&self, bytes: Bytes, refresh: Option<Arc<RowRefresh>>) -> bool {
        let refresh =
            refresh.filter(
                |r| match (self.deps.tables.as_slice(), self.deps.rows.as_slice()) {
                    ([], [rows]) => rows.tuples.len() == 1 && rows.table == r.table,
                    _ => false,
                },
            );
        self.store.keep_fill(
            self.key.clone(),
            bytes,
            &self.deps,
            self.since,
            self.id,
            refresh,
        )
    }
}

impl Drop for FlightLeader {
    fn drop(&mut self) {
        if self.tx.borrow().is_none() {
            self.tx.send_replace(Some(FlightOutcome::Retry));
        }
        if !self.deps.rows.is_empty() {
            self.store.index().fills.remove(&self.id);
        }
        let mut flights = lock(&self.store.flights);
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

struct Flight {
    id: u64,
    since: u64,
    db: String,
    deps: Dependencies,
    rx: watch::Receiver<Option<FlightOutcome>>,
}

/// The rows of one table a query can read: those whose `key` columns hold one of `tuples`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRows {
    /// The table (lower case).
    pub table: String,
    /// The key's columns (lower case; `rowid` for the rowid), as the change feed names them,
    /// with the collation their values are folded by.
    pub columns: Arc<[KeyColumn]>,
    /// Canonical value tuples (see `crate::table_keys`).
    pub tuples: Vec<String>,
}

impl KeyedRows {
    fn key_id(&self) -> String {
        key_id(&self.columns)
    }
}

/// What a kept result depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// Tables any change of which drops it ([`ANY_TABLE`]: any table of the database).
    pub tables: Vec<String>,
    /// Tables of which only some rows matter.
    pub rows: Vec<KeyedRows>,
}

impl Dependencies {
    /// Table-level dependencies only.
    pub fn tables(tables: Vec<String>) -> Dependencies {
        Dependencies {
            tables,
            rows: Vec::new(),
        }
    }
}

/// The rows of one table a change notice reports: their key objects and, beside them (or
/// empty), each one's image after the change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangedRows {
    /// The table (lower case).
    pub table: String,
    /// The changed rows' key objects, old and new.
    pub keys: Vec<RowKey>,
    /// `images[i]`: the row `keys[i]` names after the change, when the feed sent it.
    pub images: Vec<Option<RowImage>>,
}

/// What an entry depends on, in the index.
struct Live {
    id: u64,
    db: String,
    deps: Dependencies,
}

/// A running flight with keyed dependencies: a matching row change marks it `dirty`.
struct Fill {
    db: String,
    rows: Vec<KeyedRows>,
    dirty: bool,
}

/// A changed row's key object with its names in lower case.
type ChangedRow<'a> = HashMap<String, &'a serde_json::Value>;

/// Keyed entries of one table: key id → (columns, tuple → entries).
type KeyedIndex = HashMap<String, (Arc<[KeyColumn]>, HashMap<String, HashSet<Arc<CacheKey>>>)>;

/// The invalidation bookkeeping, under one lock.
#[derive(Default)]
struct Index {
    clock: u64,
    all_at: u64,
    db_at: HashMap<String, u64>,
    any_table_at: HashMap<String, u64>,
    /// When a table last changed as a whole.
    table_at: HashMap<(String, String), u64>,
    /// When some rows of a table last changed (matters to table-level dependencies only).
    rows_at: HashMap<(String, String), u64>,
    by_table: HashMap<(String, String), HashSet<Arc<CacheKey>>>,
    by_row: HashMap<(String, String), KeyedIndex>,
    by_db: HashMap<String, HashSet<Arc<CacheKey>>>,
    live: HashMap<Arc<CacheKey>, Live>,
    fills: HashMap<u64, Fill>,
    schemas: HashMap<String, Arc<DbSchema>>,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// True when nothing `db`/`tables` depend on was invalidated after `since`.
    fn unchanged_since(&self, db: &str, tables: &[String], since: u64) -> bool {
        let at = |v: Option<&u64>| v.copied().unwrap_or(0) <= since;
        self.all_at <= since
            && at(self.db_at.get(db))
            && tables.iter().all(|t| {
                if t == ANY_TABLE {
                    at(self.any_table_at.get(db))
                } else {
                    let slot = (db.to_string(), t.clone());
                    at(self.table_at.get(&slot)) && at(self.rows_at.get(&slot))
                }
            })
    }

    /// True when nothing `deps` depend on was invalidated after `since` (the keyed rows: by a
    /// change of their whole table, or one that marked `fill`).
    fn valid_since(&self, db: &str, deps: &Dependencies, since: u64, fill: u64) -> bool {
        let at = |v: Option<&u64>| v.copied().unwrap_or(0) <= since;
        self.unchanged_since(db, &deps.tables, since)
            && deps
                .rows
                .iter()
                .all(|r| at(self.table_at.get(&(db.to_string(), r.table.clone()))))
            && (deps.rows.is_empty() || self.fills.get(&fill).is_some_and(|f| !f.dirty))
    }

    fn add(&mut self, key: Arc<CacheKey>, id: u64, deps: Dependencies) {
        self.forget(&key, None);
        let db = key.db.to_string();
        for t in &deps.tables {
            self.by_table
                .entry((db.clone(), t.clone()))
                .or_default()
                .insert(key.clone());
        }
        for rows in &deps.rows {
            let (_, tuples) = self
                .by_row
                .entry((db.clone(), rows.table.clone()))
                .or_default()
                .entry(rows.key_id())
                .or_insert_with(|| (rows.columns.clone(), HashMap::new()));
            for tuple in &rows.tuples {
                tuples.entry(tuple.clone()).or_default().insert(key.clone());
            }
        }
        self.by_db
            .entry(db.clone())
            .or_default()
            .insert(key.clone());
        self.live.insert(key, Live { id, db, deps });
    }

    /// The keyed entries of `db.table` whose key values one of `changed` had (all of a key
    /// when a changed row's object lacks its columns), each once with the one changed row
    /// that matched it (`None`: several did, or one lacking the key's columns), and marks the
    /// matching fills.
    fn keyed_matches(
        &mut self,
        db: &str,
        table: &str,
        changed: &[ChangedRow<'_>],
    ) -> Vec<(Arc<CacheKey>, Option<usize>)> {
        let mut out: HashMap<Arc<CacheKey>, Option<usize>> = HashMap::new();
        let mut add = |key: &Arc<CacheKey>, row: Option<usize>| {
            out.entry(key.clone())
                .and_modify(|seen| {
                    if *seen != row {
                        *seen = None;
                    }
                })
                .or_insert(row);
        };
        if let Some(keys) = self.by_row.get(&(db.to_string(), table.to_string())) {
            for (columns, tuples) in keys.values() {
                for (i, row) in changed.iter().enumerate() {
                    match tuple_of_row(row, columns) {
                        Some(tuple) => tuples
                            .get(&tuple)
                            .into_iter()
                            .flatten()
                            .for_each(|k| add(k, Some(i))),
                        None => tuples.values().flatten().for_each(|k| add(k, None)),
                    }
                }
            }
        }
        for fill in self.fills.values_mut().filter(|f| f.db == db && !f.dirty) {
            fill.dirty = fill.rows.iter().filter(|r| r.table == table).any(|r| {
                changed
                    .iter()
                    .any(|row| match tuple_of_row(row, &r.columns) {
                        Some(tuple) => r.tuples.contains(&tuple),
                        None => true,
                    })
            });
        }
        out.into_iter().collect()
    }

    /// Every keyed entry of `db.table`.
    fn keyed_all(&self, db: &str, table: &str) -> Vec<Arc<CacheKey>> {
        self.by_row
            .get(&(db.to_string(), table.to_string()))
            .into_iter()
            .flat_map(|keys| keys.values())
            .flat_map(|(_, tuples)| tuples.values().flatten().cloned())
            .collect()
    }

    /// Drops `key` from the index (only when its entry is `id`, if given).
    fn forget(&mut self, key: &Arc<CacheKey>, id: Option<u64>) {
        if id.is_some_and(|id| self.live.get(key).is_none_or(|l| l.id != id)) {
            return;
        }
        let Some(live) = self.live.remove(key) else {
            return;
        };
        for t in live.deps.tables {
            let slot = (live.db.clone(), t);
            if let Some(set) = self.by_table.get_mut(&slot) {
                set.remove(key);
                if set.is_empty() {
                    self.by_table.remove(&slot);
                }
            }
        }
        for rows in live.deps.rows {
            let slot = (live.db.clone(), rows.table.clone());
            let Some(keys) = self.by_row.get_mut(&slot) else {
                continue;
            };
            if let Some((_, tuples)) = keys.get_mut(&rows.key_id()) {
                for tuple in &rows.tuples {
                    if let Some(set) = tuples.get_mut(tuple) {
                        set.remove(key);
                        if set.is_empty() {
                            tuples.remove(tuple);
                        }
                    }
                }
                if tuples.is_empty() {
                    keys.remove(&rows.key_id());
                }
            }
            if keys.is_empty() {
                self.by_row.remove(&slot);
            }
        }
        if let Some(set) = self.by_db.get_mut(&live.db) {
            set.remove(key);
            if set.is_empty() {
                self.by_db.remove(&live.db);
            }
        }
    }
}

/// Entries `moka` removed on its own (evicted, expired), with their ids, waiting to leave the
/// index.
type RemovedEntries = Arc<Mutex<Vec<(Arc<CacheKey>, u64)>>>;

/// The change feed's syncs (`DIRK SYNC`, see `dirkdb_core::change_feed`): an answer read before
/// sync `n` was asked is refreshed from images only once `n` is answered, since every notice
/// after that answer is newer than what the answer read (a fill can read a row a commit
/// changed before the feed reports the commit).
#[derive(Default)]
struct Syncs {
    /// The last token asked (or about to be).
    asked: AtomicU64,
    /// The highest token answered.
    answered: AtomicU64,
    /// True when an answer was kept since the last sync was asked.
    wanted: std::sync::atomic::AtomicBool,
    /// Wakes the change listener to ask.
    notify: tokio::sync::Notify,
}

/// The store shared by every session of one cache process.
pub struct ResultStore {
    sync: Syncs,
    cache: Cache<Arc<CacheKey>, Arc<CachedResult>>,
    index: Mutex<Index>,
    removed: RemovedEntries,
    flights: Mutex<HashMap<Arc<CacheKey>, Flight>>,
    next_id: AtomicU64,
    seen: AtomicU64,
    feed: watch::Sender<FeedState>,
    limits: StoreLimits,
    stats: Arc<CacheStats>,
}

/// What the change feed has told the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedState {
    /// True while a feed is connected.
    pub connected: bool,
    /// The position its notices have reached.
    pub upto: u64,
}

impl ResultStore {
    /// An empty store.
    pub fn new(limits: StoreLimits, stats: Arc<CacheStats>) -> Arc<ResultStore> {
        let max_entries = limits.max_entries.max(1);
        let max_bytes = limits.max_bytes.max(max_entries);
        let min_weight = max_bytes.div_ceil(max_entries).min(u64::from(u32::MAX)) as u32;
        let removed: RemovedEntries = Arc::default();
        let listener_stats = stats.clone();
        let listener_removed = removed.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &Arc<CacheKey>, value: &Arc<CachedResult>| {
                let bytes = value.bytes.len() + key.statement.len();
                (bytes.min(u32::MAX as usize) as u32).max(min_weight)
            })
            .time_to_live(limits.ttl + limits.stale_window)
            .eviction_listener(move |key, value: Arc<CachedResult>, cause| {
                listener_stats.entries.fetch_sub(1, Ordering::Relaxed);
                listener_stats
                    .bytes
                    .fetch_sub(value.bytes.len() as i64, Ordering::Relaxed);
                match cause {
                    RemovalCause::Size => CacheStats::bump(&listener_stats.evictions),
                    RemovalCause::Expired => CacheStats::bump(&listener_stats.expirations),
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                }
                if cause != RemovalCause::Replaced {
                    lock(&listener_removed).push(((*key).clone(), value.id));
                }
            })
            .build();
        Arc::new(ResultStore {
            sync: Syncs::default(),
            cache,
            index: Mutex::default(),
            removed,
            flights: Mutex::default(),
            next_id: AtomicU64::new(1),
            seen: AtomicU64::new(0),
            feed: watch::channel(FeedState::default()).0,
            limits,
            stats,
        })
    }

    /// The limits it was built with.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The index, after dropping the entries `moka` evicted or expired since the last look.
    fn index(&self) -> MutexGuard<'_, Index> {
        let mut index = lock(&self.index);
        let removed = std::mem::take(&mut *lock(&self.removed));
        for (key, id) in removed {
            index.forget(&key, Some(id));
        }
        index
    }

    /// A result younger than the TTL.
    pub fn fresh(&self, key: &CacheKey) -> Option<Arc<CachedResult>> {
        self.cache
            .get(key)
            .filter(|r| r.stored_at.elapsed() <= self.limits.ttl)
    }

    /// A result within TTL + the stale-if-error window (for when the upstream is down).
    pub fn stale(&self, key: &CacheKey) -> Option<Arc<CachedResult>> {
        if self.limits.stale_window.is_zero() {
            return None;
        }
        self.cache
            .get(key)
            .filter(|r| r.stored_at.elapsed() <= self.limits.ttl + self.limits.stale_window)
    }

    /// The schema of `db` (views and keys) when it is known; `None` means: fetch it
    /// ([`ResultStore::set_schema`]) first.
    pub fn schema(&self, db: &str) -> Option<Arc<DbSchema>> {
        self.index().schemas.get(db).cloned()
    }

    /// The current invalidation clock (read before fetching anything that is kept later).
    pub fn clock(&self) -> u64 {
        self.index().clock
    }

    /// Records the schema of `db`, fetched after `since`, unless it changed meanwhile.
    pub fn set_schema(&self, db: &str, schema: DbSchema, since: u64) {
        let mut index = self.index();
        if index.unchanged_since(db, &[], since) {
            index.schemas.insert(db.to_string(), Arc::new(schema));
        }
    }

    /// Joins the flight fetching `key`, or starts one.
    pub fn flight(self: &Arc<Self>, key: Arc<CacheKey>, deps: &Dependencies) -> FlightRole {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(&key) {
            let alive = flight.rx.has_changed().is_ok();
            let valid = alive
                && self
                    .index()
                    .valid_since(&flight.db, &flight.deps, flight.since, flight.id);
            if valid {
                return FlightRole::Follower(flight.rx.clone());
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let since = {
            let mut index = self.index();
            if !deps.rows.is_empty() {
                index.fills.insert(
                    id,
                    Fill {
                        db: key.db.to_string(),
                        rows: deps.rows.clone(),
                        dirty: false,
                    },
                );
            }
            index.clock
        };
        let (tx, rx) = watch::channel(None);
        flights.insert(
            key.clone(),
            Flight {
                id,
                since,
                db: key.db.to_string(),
                deps: deps.clone(),
                rx,
            },
        );
        FlightRole::Leader(FlightLeader {
            store: self.clone(),
            key,
            id,
            deps: deps.clone(),
            tx,
            since,
        })
    }

    /// Keeps a response with table-level dependencies, fetched from `since` on, unless it is too
    /// large or something it read was invalidated meanwhile. Returns whether it was kept.
    pub fn keep(&self, key: Arc<CacheKey>, bytes: Bytes, tables: Vec<String>, since: u64) -> bool {
        self.keep_fill(key, bytes, &Dependencies::tables(tables), since, 0, None)
    }

    /// [`ResultStore::keep`] for any dependencies; keyed ones need the running fill `fill`
    /// ([`FlightLeader::keep`]).
    fn keep_fill(
        &self,
        key: Arc<CacheKey>,
        bytes: Bytes,
        deps: &Dependencies,
        since: u64,
        fill: u64,
        refresh: Option<Arc<RowRefresh>>,
    ) -> bool {
        if bytes.len() > self.limits.max_entry_bytes {
            CacheStats::bump(&self.stats.not_stored);
            return false;
        }
        let mut index = self.index();
        if !index.valid_since(&key.db, deps, since, fill) {
            CacheStats::bump(&self.stats.not_stored);
            return false;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let size = bytes.len() as i64;
        // The next token asked is sent after this load, so after this answer was read; asking
        // for it only then means whichever sync takes `wanted` has at least that token.
        let refreshable_from = self.sync.asked.load(Ordering::Acquire) + 1;
        if refresh.is_some() {
            self.sync.wanted.store(true, Ordering::Release);
            self.sync.notify.notify_one();
        }
        let result = Arc::new(CachedResult {
            id,
            bytes,
            stored_at: Instant::now(),
            refresh,
            refreshable_from,
        });
        index.add(key.clone(), id, deps.clone());
        if !deps.rows.is_empty() {
            CacheStats::bump(&self.stats.stored_keyed);
        }
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
        self.cache.insert(key, result);
        CacheStats::bump(&self.stats.stored);
        true
    }

    /// The highest primary position the cache has seen (a write's, or the change feed's).
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    fn saw(&self, position: Option<u64>) {
        if let Some(p) = position {
            self.seen.fetch_max(p, Ordering::AcqRel);
        }
    }

    /// Drops the entries reading `tables` of `db`, changed as a whole at `position`.
    pub fn invalidate_tables(&self, db: &str, tables: &[String], position: Option<u64>) -> usize {
        self.saw(position);
        let mut index = self.index();
        let at = index.tick();
        index.any_table_at.insert(db.to_string(), at);
        let mut keys: Vec<Arc<CacheKey>> = Vec::new();
        for t in tables.iter().chain(std::iter::once(&ANY_TABLE.to_string())) {
            let slot = (db.to_string(), t.clone());
            if t != ANY_TABLE {
                index.table_at.insert(slot.clone(), at);
                keys.extend(index.keyed_all(db, t));
            }
            keys.extend(index.by_table.get(&slot).into_iter().flatten().cloned());
        }
        self.drop_keys(&mut index, keys)
    }

    /// Drops what rows of `db` changed at `position` can have changed: per table, the entries
    /// depending on the whole table and the keyed entries of the changed rows' keys (old and
    /// new key objects, as the change feed lists them). A keyed entry that exactly one changed
    /// row matched, and that row came with its image, is rewritten from it instead when it can
    /// be (`crate::row_refresh`). Returns how many entries went.
    pub fn invalidate_rows(
        &self,
        db: &str,
        changes: &[ChangedRows],
        position: Option<u64>,
    ) -> usize {
        self.saw(position);
        let mut index = self.index();
        let at = index.tick();
        index.any_table_at.insert(db.to_string(), at);
        let any = (db.to_string(), ANY_TABLE.to_string());
        let mut keys: Vec<Arc<CacheKey>> = index
            .by_table
            .get(&any)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for change in changes {
            let slot = (db.to_string(), change.table.clone());
            index.rows_at.insert(slot.clone(), at);
            keys.extend(index.by_table.get(&slot).into_iter().flatten().cloned());
            let changed: Vec<ChangedRow<'_>> = change
                .keys
                .iter()
                .map(|row| row.iter().map(|(k, v)| (k.to_lowercase(), v)).collect())
                .collect();
            for (key, matched) in index.keyed_matches(db, &change.table, &changed) {
                let image =
                    matched.and_then(|i| Some((&change.keys[i], change.images.get(i)?.as_ref()?)));
                match image {
                    Some((row, image)) if self.refresh(&key, row, image) => {}
                    _ => keys.push(key),
                }
            }
        }
        self.drop_keys(&mut index, keys)
    }

    /// Rewrites the entry `key` from the image of its changed row; false when it cannot be
    /// (it is then dropped).
    fn refresh(&self, key: &Arc<CacheKey>, row: &RowKey, image: &RowImage) -> bool {
        let Some(entry) = self.cache.get(key) else {
            return false;
        };
        let Some(refresh) = &entry.refresh else {
            return false;
        };
        if entry.refreshable_from > self.sync.answered.load(Ordering::Acquire) {
            // Read before the notices could be known to follow it: it may be newer than this
            // change's image.
            return false;
        }
        let Some(columns) = image.columns() else {
            return false;
        };
        let Some(bytes) = refreshed(&entry.bytes, refresh, row, &columns) else {
            return false;
        };
        if bytes.len() > self.limits.max_entry_bytes {
            return false;
        }
        // As in `keep_fill`: the eviction listener takes the replaced entry off the counts.
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(bytes.len() as i64, Ordering::Relaxed);
        self.cache.insert(
            key.clone(),
            Arc::new(CachedResult {
                id: entry.id,
                bytes,
                stored_at: Instant::now(),
                refresh: entry.refresh.clone(),
                refreshable_from: entry.refreshable_from,
            }),
        );
        CacheStats::bump(&self.stats.refreshed);
        true
    }

    /// Drops every entry of `db` and what is known of its views (schema change, DROP DATABASE,
    /// or a write the cache cannot read precisely).
    pub fn invalidate_database(&self, db: &str, position: Option<u64>) -> usize {
        self.saw(position);
        let mut index = self.index();
        let at = index.tick();
        index.db_at.insert(db.to_string(), at);
        index.any_table_at.insert(db.to_string(), at);
        index.schemas.remove(db);
        let keys: Vec<_> = index.by_db.get(db).into_iter().flatten().cloned().collect();
        self.drop_keys(&mut index, keys)
    }

    /// Drops everything (`FLUSH CACHE`, a change feed that could not say what changed, or one
    /// that just (re)connected after missing notices).
    pub fn invalidate_all(&self, position: Option<u64>) -> usize {
        self.saw(position);
        let mut index = self.index();
        let at = index.tick();
        index.all_at = at;
        index.schemas.clear();
        let keys: Vec<_> = index.live.keys().cloned().collect();
        let dropped = self.drop_keys(&mut index, keys);
        self.cache.invalidate_all();
        dropped
    }

    fn drop_keys(&self, index: &mut Index, keys: Vec<Arc<CacheKey>>) -> usize {
        CacheStats::bump(&self.stats.invalidation_events);
        let mut dropped = 0;
        for key in keys {
            if index.live.contains_key(&key) {
                index.forget(&key, None);
                self.cache.invalidate(&key);
                dropped += 1;
            }
        }
        self.stats
            .invalidations
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Runs `moka`'s pending evictions and expirations, so the counters are exact.
    pub fn settle(&self) {
        self.cache.run_pending_tasks();
        drop(self.index());
    }

    /// Entries held (after [`ResultStore::settle`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Waits until an answer that a sync would make refreshable was kept, then returns the
    /// token to ask the feed for (`DIRK SYNC <token>`).
    pub async fn next_sync(&self) -> u64 {
        while !self.sync.wanted.swap(false, Ordering::AcqRel) {
            self.sync.notify.notified().await;
        }
        self.sync.asked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The feed answered sync `token` (its notices before are applied).
    pub fn synced(&self, token: u64) {
        self.sync.answered.fetch_max(token, Ordering::AcqRel);
    }

    /// Records what the change feed reports.
    pub fn set_feed(&self, state: FeedState) {
        self.saw(Some(state.upto));
        self.stats
            .feed_connected
            .store(u64::from(state.connected), Ordering::Relaxed);
        self.stats
            .feed_position
            .store(state.upto, Ordering::Relaxed);
        self.feed.send_replace(state);
    }

    /// True while a change feed is connected.
    pub fn feed_connected(&self) -> bool {
        self.feed.borrow().connected
    }

    /// Waits until the change feed has reported `position` (its notices up to there are
    /// applied); false when no feed is connected or `wait` passes first.
    pub async fn wait_for_feed(&self, position: u64, wait: Duration) -> bool {
        let mut rx = self.feed.subscribe();
        let reached =
            tokio::time::timeout(wait, rx.wait_for(|f| !f.connected || f.upto >= position)).await;
        matches!(reached, Ok(Ok(state)) if state.connected && state.upto >= position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: u64, max_bytes: u64) -> Arc<ResultStore> {
        ResultStore::new(
            StoreLimits {
                ttl: Duration::from_secs(60),
                stale_window: Duration::ZERO,
                max_entries,
                max_bytes,
                max_entry_bytes: 1000,
            },
            Arc::default(),
        )
    }

    fn key(db: &str, s: &str) -> Arc<CacheKey> {
        Arc::new(CacheKey {
            db: db.into(),
            statement: s.into(),
        })
    }

    fn tables(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn invalidation_drops_exactly_the_readers_of_a_table() {
        let s = store(100, 1 << 20);
        let since = s.clock();
        assert!(s.keep(key("d", "a"), Bytes::from("A"), tables(&["t1"]), since));
        assert!(s.keep(key("d", "b"), Bytes::from("B"), tables(&["t2"]), since));
        assert!(s.keep(
            key("d", "ab"),
            Bytes::from("AB"),
            tables(&["t1", "t2"]),
            since
        ));
        assert!(s.keep(key("e", "a"), Bytes::from("A"), tables(&["t1"]), since));
        assert_eq!(s.invalidate_tables("d", &tables(&["t1"]), Some(5)), 2);
        assert!(s.fresh(&key("d", "a")).is_none());
        assert!(s.fresh(&key("d", "ab")).is_none());
        assert!(s.fresh(&key("d", "b")).is_some());
        assert!(s.fresh(&key("e", "a")).is_some());
        assert_eq!(s.seen(), 5);
        assert_eq!(s.invalidate_database("e", None), 1);
        assert_eq!(s.invalidate_all(None), 1);
        assert!(s.fresh(&key("d", "b")).is_none());
    }

    #[test]
    fn a_result_fetched_before_an_invalidation_is_not_kept() {
        let s = store(100, 1 << 20);
        let since = s.clock();
        s.invalidate_tables("d", &tables(&["t1"]), None);
        assert!(!s.keep(key("d", "a"), Bytes::from("A"), tables(&["t1"]), since));
        assert!(s.keep(key("d", "b"), Bytes::from("B"), tables(&["t2"]), since));
        let since = s.clock();
        s.invalidate_tables("d", &tables(&["t9"]), None);
        assert!(
            !s.keep(key("d", "v"), Bytes::from("V"), tables(&[ANY_TABLE]), since),
            "a dependency on any table sees every table change"
        );
    }

    #[test]
    fn flights_are_shared_until_invalidated() {
        let s = store(100, 1 << 20);
        let k = key("d", "q");
        let deps = Dependencies::tables(tables(&["t"]));
        let FlightRole::Leader(leader) = s.flight(k.clone(), &deps) else {
            panic!("first is the leader")
        };
        let FlightRole::Follower(mut rx) = s.flight(k.clone(), &deps) else {
            panic!("second follows")
        };
        s.invalidate_tables("d", &tables(&["t"]), None);
        assert!(
            matches!(s.flight(k.clone(), &deps), FlightRole::Leader(_)),
            "a flight older than a write is not joined"
        );
        leader.finish(FlightOutcome::Shared(Bytes::from("x")));
        assert!(matches!(
            &*rx.borrow_and_update(),
            Some(FlightOutcome::Shared(_))
        ));
    }

    fn keyed(table: &str, column: &str, tuples: &[&str]) -> Dependencies {
        Dependencies {
            tables: vec![],
            rows: vec![KeyedRows {
                table: table.into(),
                columns: vec![KeyColumn {
                    name: column.to_string(),
                    collation: crate::table_keys::Collation::Binary,
                }]
                .into(),
                tuples: tuples.iter().map(|t| t.to_string()).collect(),
            }],
        }
    }

    fn fill(s: &Arc<ResultStore>, k: &Arc<CacheKey>, deps: &Dependencies) -> FlightLeader {
        match s.flight(k.clone(), deps) {
            FlightRole::Leader(leader) => leader,
            FlightRole::Follower(_) => panic!("no flight expected"),
        }
    }

    fn row(json: &str) -> RowKey {
        serde_json::from_str(json).unwrap()
    }

    /// Runs a future that is ready at once.
    fn futures_now<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Rows of table `t` changed, without images.
    fn changed(table: &str, keys: Vec<RowKey>) -> Vec<ChangedRows> {
        vec![ChangedRows {
            table: table.into(),
            keys,
            images: Vec::new(),
        }]
    }

    /// The answer the server gives to `SELECT id, v FROM t WHERE id = …` of one row.
    fn one_row(id: i64, v: &str) -> Bytes {
        use dirkdb_core::frame::{encode_frame, Column, Frame, PageFrame, RelationPage};
        let page = RelationPage {
            name: Some("t".into()),
            page: 1,
            total_pages: 1,
            columns: ["id", "v"]
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    origin: Some("t".into()),
                })
                .collect(),
            rows: vec![vec![serde_json::json!(id), serde_json::json!(v)]],
        };
        let mut out = bytes::BytesMut::new();
        encode_frame(&Frame::Page(PageFrame::from_page(&page).unwrap()), &mut out);
        encode_frame(&Frame::RelationEnd, &mut out);
        encode_frame(&Frame::Message("OK".into()), &mut out);
        out.freeze()
    }

    #[test]
    fn a_point_answer_is_rewritten_from_its_rows_image() {
        use crate::row_refresh::{Projection, RowRefresh};
        let s = store(100, 1 << 20);
        let refresh = Arc::new(RowRefresh {
            table: "t".into(),
            projection: Projection::Columns(vec!["id".into(), "v".into()]),
            pins: vec![("id".into(), vec!["n:5".into()])],
        });
        let k5 = key("d", "SELECT id, v FROM t WHERE id = 5");
        let deps = keyed("t", "rowid", &["n:5"]);
        let leader = fill(&s, &k5, &deps);
        assert!(leader.keep_refreshable(one_row(5, "old"), Some(refresh.clone())));
        drop(leader);
        let image = |v: &str| RowImage::from_json(format!(r#"{{"id":5,"v":"{v}"}}"#));
        let update = |v: &str| {
            vec![ChangedRows {
                table: "t".into(),
                keys: vec![row(r#"{"rowid":5}"#), row(r#"{"rowid":6}"#)],
                images: vec![image(v), None],
            }]
        };
        // Before the feed answered a sync asked after the answer was read, the change could
        // be older than the answer: dropped.
        assert_eq!(s.invalidate_rows("d", &update("new"), Some(2)), 1);
        let leader = fill(&s, &k5, &deps);
        assert!(leader.keep_refreshable(one_row(5, "old"), Some(refresh.clone())));
        drop(leader);
        let token = futures_now(s.next_sync());
        assert_eq!(token, 1);
        s.synced(token);
        // Row 5 changed in place: the entry now holds the new row, and nothing was dropped.
        assert_eq!(s.invalidate_rows("d", &update("new"), Some(3)), 0);
        assert_eq!(s.fresh(&k5).unwrap().bytes, one_row(5, "new"));
        assert_eq!(s.stats.refreshed.load(Ordering::Relaxed), 1);
        // Without an image (deleted, or past the feed's budget) it is dropped.
        let deleted = changed("t", vec![row(r#"{"rowid":5}"#)]);
        assert_eq!(s.invalidate_rows("d", &deleted, Some(4)), 1);
        assert!(s.fresh(&k5).is_none());
        // An entry kept without a refresh (its dependencies are not one keyed row) is dropped.
        let leader = fill(&s, &k5, &keyed("t", "rowid", &["n:5", "n:6"]));
        assert!(leader.keep_refreshable(one_row(5, "old"), Some(refresh)));
        drop(leader);
        assert_eq!(s.invalidate_rows("d", &update("x"), Some(5)), 1);
    }

    #[test]
    fn a_row_change_drops_its_keyed_entries_and_the_table_readers_only() {
        let s = store(100, 1 << 20);
        let k5 = key("d", "id=5");
        let k6 = key("d", "id=6");
        let k_email = key("d", "email");
        let range = key("d", "range");
        let other = key("d", "other table");
        for (k, deps) in [
            (&k5, keyed("t", "rowid", &["n:5"])),
            (&k6, keyed("t", "rowid", &["n:6"])),
            (&k_email, keyed("t", "email", &["s:a@x"])),
            (&range, Dependencies::tables(tables(&["t"]))),
            (&other, keyed("u", "rowid", &["n:5"])),
        ] {
            let leader = fill(&s, k, &deps);
            assert!(leader.keep(Bytes::from("x")), "{k:?}");
        }
        // Row 5 changed (its email too): its entries and the range go, row 6 and u stay.
        let dropped = s.invalidate_rows(
            "d",
            &changed("t", vec![row(r#"{"rowid":5,"Email":"a@x"}"#)]),
            Some(9),
        );
        assert_eq!(dropped, 3);
        assert!(s.fresh(&k5).is_none() && s.fresh(&k_email).is_none());
        assert!(s.fresh(&range).is_none());
        assert!(s.fresh(&k6).is_some() && s.fresh(&other).is_some());
        assert_eq!(s.seen(), 9);
        // An inserted row 7 drops nothing keyed but row 7's (none); a key object without the
        // email column may hold any email.
        assert_eq!(
            s.invalidate_rows("d", &changed("t", vec![row(r#"{"rowid":7}"#)]), None),
            0
        );
        let leader = fill(&s, &k_email, &keyed("t", "email", &["s:a@x"]));
        assert!(leader.keep(Bytes::from("x")));
        assert_eq!(
            s.invalidate_rows("d", &changed("t", vec![row(r#"{"rowid":8}"#)]), None),
            1
        );
        // A change of the whole table drops every keyed entry of it.
        assert_eq!(s.invalidate_tables("d", &tables(&["t"]), None), 1);
        assert!(s.fresh(&k6).is_none());
    }

    #[test]
    fn a_keyed_fill_is_not_kept_after_a_change_of_its_rows_only() {
        let s = store(100, 1 << 20);
        let k5 = key("d", "id=5");
        let deps = keyed("t", "rowid", &["n:5"]);
        let leader = fill(&s, &k5, &deps);
        s.invalidate_rows("d", &changed("t", vec![row(r#"{"rowid":6}"#)]), None);
        assert!(matches!(
            s.flight(k5.clone(), &deps),
            FlightRole::Follower(_)
        ));
        assert!(leader.keep(Bytes::from("x")), "another row changed");
        drop(leader);
        let leader = fill(&s, &k5, &deps);
        s.invalidate_rows("d", &changed("t", vec![row(r#"{"rowid":5.0}"#)]), None);
        assert!(
            matches!(s.flight(k5.clone(), &deps), FlightRole::Leader(_)),
            "a flight older than a change of its row is not joined"
        );
        assert!(!leader.keep(Bytes::from("x")));
        drop(leader);
        let leader = fill(&s, &k5, &deps);
        s.invalidate_tables("d", &tables(&["t"]), None);
        assert!(!leader.keep(Bytes::from("x")), "the whole table changed");
    }

    #[test]
    fn entry_and_byte_limits_both_hold() {
        let s = store(10, 1000);
        for i in 0..200 {
            let since = s.clock();
            s.keep(
                key("d", &format!("q{i}")),
                Bytes::from(vec![b'x'; 20]),
                vec![],
                since,
            );
            // Ask for them more than once, so TinyLFU admits newcomers now and then.
            let _ = s.fresh(&key("d", &format!("q{i}")));
        }
        s.settle();
        assert!(s.entry_count() <= 10, "{} entries", s.entry_count());
        let s = store(1000, 1000);
        for i in 0..200 {
            let since = s.clock();
            s.keep(
                key("d", &format!("q{i}")),
                Bytes::from(vec![b'x'; 200]),
                vec![],
                since,
            );
        }
        s.settle();
        assert!(
            s.entry_count() <= 5,
            "{} entries of ~200 bytes in 1000",
            s.entry_count()
        );
        assert!(!s.keep(
            key("d", "big"),
            Bytes::from(vec![0; 1001]),
            vec![],
            s.clock()
        ));
    }
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    #[test]
    fn an_expired_entry_is_kept_for_the_stale_window() {
        let s = ResultStore::new(
            StoreLimits {
                ttl: Duration::from_millis(50),
                stale_window: Duration::from_secs(60),
                max_entries: 10,
                max_bytes: 10_000,
                max_entry_bytes: 1000,
            },
            Arc::default(),
        );
        let key = Arc::new(CacheKey {
            db: "d".into(),
            statement: "q".into(),
        });
        assert!(s.keep(key.clone(), Bytes::from("x"), vec![], s.clock()));
        assert!(s.fresh(&key).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.fresh(&key).is_none());
        assert!(s.stale(&key).is_some());
    }
}
