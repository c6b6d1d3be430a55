//! MULTI_PRIMARY: every master holds everything. Each master streams the changes it committed
//! itself (the objects it owns) to every other master, and applies the others' streams.
//!
//! * Streams: [`super::peer_stream`]. A master asks every other master for its stream
//!   (`PeerHello` on the replication connection), from its applied position for that origin;
//!   the origin answers `PeerContinue` and sends `PeerEntries` read from its own oplog (the
//!   same-transaction capture, backlog and oplog files of SINGLE_PRIMARY), then heartbeats. The
//!   asker acknowledges as a replica does, so the origin's write concern counts the masters
//!   that applied a write.
//! * Applying: [`super::peer_apply`]. Entries of another origin are applied with triggers off and
//!   are not written into the local oplog, so a master never re-sends what it applied from
//!   another origin, and its own sequence stays its own.
//! * Positions (this module): one per origin, a vector. Each database file stores, in the same
//!   transaction as the rows applied, the origin's sequence it reached and the checksum of the
//!   origin's entry there (`_dirk_origins`, [`Mark`]; the hello carries it so that an origin
//!   restored to older data refuses rather than resumes past entries it no longer has); the
//!   meta file stores each origin's position and history (`_dirk_peer_positions`) with each
//!   CREATE/DROP DATABASE applied, with a run no file records (a database dropped here), at the
//!   first batch since start or of another history, and otherwise at most once a second and at
//!   the stream's heartbeat (`super::peer_apply`). At start the position of an origin
//!   is the highest of them, so a restart resumes each stream from its own position, and an
//!   entry at or below a file's stored position is never applied twice.
//! * Read-your-writes across masters: `DIRK WAIT ORIGINS <timeout_ms> <id>=<seq> …` answers once
//!   this master reached every listed position (its own id against its committed sequence).
//!
//! No whole-database full sync ever runs between masters (it would overwrite the objects other
//! masters own): an origin whose oplog no longer holds the position asked refuses the stream
//! with a message naming `replication.oplog.maxEntries` and `retentionDays`.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::watch;

use crate::error::{Result, ServerError};
use crate::storage::Storage;
use dirkdb_core::clock::now_ms;
use dirkdb_core::sync::lock;

/// The meta file's table of per-origin positions (`crc`: the checksum of the origin's entry at
/// `seq`, added by [`meta_schema`] to a table made before it was recorded).
const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _dirk_peer_positions (
    origin TEXT PRIMARY KEY, seq INTEGER NOT NULL, history TEXT, crc INTEGER);
CREATE TABLE IF NOT EXISTS _dirk_peer_dropped (name TEXT PRIMARY KEY);";

/// Each database file's table of the origins' positions its rows stand at, with the checksum
/// of the origin's entry at that position (see [`file_schema`]).
const FILE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _dirk_origins (
    origin TEXT PRIMARY KEY, seq INTEGER NOT NULL, crc INTEGER)";

/// An origin's position here and the checksum of its entry there (`None`: not recorded, a
/// position stored before checksums were, or nothing applied yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The origin's last sequence applied.
    pub seq: u64,
    /// The CRC of the origin's entry at `seq`, as applied.
    pub crc: Option<u32>,
}

impl Mark {
    /// The later of two marks; at the same sequence the one with a checksum.
    fn max(self, other: Mark) -> Mark {
        if other.seq > self.seq || (other.seq == self.seq && self.crc.is_none()) {
            other
        } else {
            self
        }
    }
}

/// Creates a database file's `_dirk_origins`, adding the `crc` column to one made before it.
pub(crate) fn file_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(FILE_SCHEMA)?;
    add_crc_column(conn, "_dirk_origins")
}

/// Adds the `crc` column to `table` when it lacks it (a file or meta file of an older version).
fn add_crc_column(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    if !has_column(conn, table, "crc")? {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN crc INTEGER"))?;
    }
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn crc_of(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

/// What a master asking for a stream said.
#[derive(Debug, Clone)]
pub(crate) struct PeerHello {
    /// The asking master.
    pub instance: String,
    /// The origin it asks (this master).
    pub origin: String,
    /// The origin's history it last streamed in.
    pub history: Option<String>,
    /// Its applied position in the origin's stream.
    pub seq: u64,
    /// The checksum of the origin's entry at `seq` as it applied it (`None`: not known).
    pub crc: Option<u32>,
}

/// The state of one origin's stream on this master.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum PeerState {
    /// Connecting to the origin (or not yet tried).
    #[default]
    Connecting,
    /// Applying the origin's entries.
    Streaming,
    /// The stream ended; retrying.
    Disconnected,
    /// The origin refused the stream (see `lastError`); retrying.
    Refused,
}

/// One origin's stream as this master receives it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The origin master.
    pub origin: String,
    /// Its replication address.
    pub address: String,
    /// Connecting, Streaming, Disconnected or Refused.
    pub state: PeerState,
    /// The origin's last sequence applied here.
    pub applied_sequence: u64,
    /// The origin's committed sequence, from its heartbeats and entries.
    pub origin_sequence: u64,
    /// Entries committed on the origin and not applied here.
    pub lag_operations: u64,
    /// How long this master has been behind the origin (0 when caught up).
    pub lag_ms: u64,
    /// Commit time (on the origin) of the last entry applied.
    pub last_applied_commit_ms: i64,
    /// Entries applied since start.
    pub entries_applied: u64,
    /// The origin's history id.
    pub history: Option<String>,
    /// When the current stream started.
    pub connected_since_ms: i64,
    /// Why the last stream ended, or why the origin refused it.
    pub last_error: Option<String>,
    #[serde(skip)]
    behind_since_ms: Option<i64>,
}

/// The last positions this master and one other master have in common: how far this master
/// applied the peer's stream, and how far the peer acknowledged this master's own stream
/// (`/replication/status` `checkpoints`, `dirkdb_peer_checkpoint`). The per-entry form of the
/// same knowledge, which conflict detection uses, is [`super::knowledge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The other master.
    pub peer: String,
    /// The peer's last sequence applied here.
    pub applied: u64,
    /// This master's last sequence the peer acknowledged (since this master started).
    pub acknowledged: u64,
}

/// Per-origin positions and stream states.
pub struct Peers {
    applied: watch::Sender<BTreeMap<String, u64>>,
    /// The checksum of each origin's entry at its applied position, when known.
    crcs: std::sync::Mutex<BTreeMap<String, Mark>>,
    streams: std::sync::Mutex<BTreeMap<String, PeerStatus>>,
    /// What this master knew of each origin when it committed its own entries.
    pub(crate) knowledge: super::knowledge::Knowledge,
    /// `replication.conflicts`: how the conflicts this master resolves are resolved.
    pub(crate) conflicts: dirkdb_core::config::ConflictsConfig,
    /// Conflicting changes of rows another master is home of, left unapplied here for that
    /// master's resolution (since start).
    pub(crate) held_for_home: std::sync::atomic::AtomicU64,
    /// The rows with a conflicting change held here (`dirkdb_conflicts` state `held`), each
    /// with its home: applying the home's next change of one marks it resolved.
    held: std::sync::Mutex<
        std::collections::HashMap<super::conflicts::HeldRow, super::conflicts::HeldFor>,
    >,
}

impl Default for Peers {
    fn default() -> Peers {
        Peers::new(Default::default())
    }
}

impl Peers {
    /// No stream yet; conflicts resolved by `conflicts`.
    pub(crate) fn new(conflicts: dirkdb_core::config::ConflictsConfig) -> Peers {
        Peers {
            applied: watch::channel(BTreeMap::new()).0,
            crcs: std::sync::Mutex::new(BTreeMap::new()),
            streams: std::sync::Mutex::new(BTreeMap::new()),
            knowledge: Default::default(),
            conflicts,
            held_for_home: Default::default(),
            held: Default::default(),
        }
    }

    /// Conflicting changes held here for their rows' home master since start.
    pub fn held_for_home(&self) -> u64 {
        self.held_for_home
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The origin's position applied here (0 before anything).
    pub fn applied(&self, origin: &str) -> u64 {
        self.applied.borrow().get(origin).copied().unwrap_or(0)
    }

    /// Notes `row` held here for its home (the newest change held replaces an older one).
    pub(crate) fn note_held(
        &self,
        row: super::conflicts::HeldRow,
        held: super::conflicts::HeldFor,
    ) {
        lock(&self.held).insert(row, held);
    }

    /// True when some row is held here for its home.
    pub(crate) fn any_held(&self) -> bool {
        !lock(&self.held).is_empty()
    }

    /// True when `row` is held here and a change of it by `origin`, made having applied
    /// `known`, is its home's resolution ([`super::conflicts::HeldFor::resolved_by`]).
    pub(crate) fn released_by(
        &self,
        row: &super::conflicts::HeldRow,
        origin: &str,
        known: &BTreeMap<String, u64>,
    ) -> bool {
        lock(&self.held)
            .get(row)
            .is_some_and(|held| held.resolved_by(origin, known))
    }

    /// Forgets `row` (its home's resolution was applied here).
    pub(crate) fn forget_held(&self, row: &super::conflicts::HeldRow) {
        lock(&self.held).remove(row);
    }

    /// The origin's position applied here with the checksum of its entry there, when known
    /// (what the hello carries, see `super::peer_stream`).
    pub(crate) fn applied_mark(&self, origin: &str) -> Mark {
        let seq = self.applied(origin);
        let crc = lock(&self.crcs)
            .get(origin)
            .filter(|m| m.seq == seq)
            .and_then(|m| m.crc);
        Mark { seq, crc }
    }

    /// Moves `origin`'s position to `mark` (never back), keeping the checksum of its entry there.
    pub(crate) fn advance_to(&self, origin: &str, mark: Mark) {
        {
            let mut crcs = lock(&self.crcs);
            let at = crcs.entry(origin.to_string()).or_default();
            *at = at.max(mark);
        }
        self.advance(origin, mark.seq);
    }

    /// Every origin's position applied here.
    pub fn positions(&self) -> BTreeMap<String, u64> {
        self.applied.borrow().clone()
    }

    /// Moves `origin`'s position to `seq` (never back) and wakes the waiters.
    pub(crate) fn advance(&self, origin: &str, seq: u64) {
        self.applied.send_if_modified(|map| {
            let at = map.entry(origin.to_string()).or_insert(0);
            let moved = seq > *at;
            *at = (*at).max(seq);
            moved
        });
        self.update(origin, |s| {
            s.applied_sequence = s.applied_sequence.max(seq);
            s.origin_sequence = s.origin_sequence.max(seq);
        });
    }

    /// Updates the status of `origin`'s stream.
    pub(crate) fn update(&self, origin: &str, f: impl FnOnce(&mut PeerStatus)) {
        let mut streams = lock(&self.streams);
        let status = streams
            .entry(origin.to_string())
            .or_insert_with(|| PeerStatus {
                origin: origin.to_string(),
                ..PeerStatus::default()
            });
        f(status);
        let now = now_ms();
        if status.origin_sequence > status.applied_sequence {
            status.behind_since_ms.get_or_insert(now);
        } else {
            status.behind_since_ms = None;
        }
    }

    /// The checkpoint with every other master; `acked` is what each one acknowledged of this
    /// master's stream (the replication hub's `ackedSequence` per instance).
    pub fn checkpoints(&self, acked: &BTreeMap<String, u64>) -> Vec<Checkpoint> {
        lock(&self.streams)
            .values()
            .map(|s| Checkpoint {
                peer: s.origin.clone(),
                applied: s.applied_sequence,
                acknowledged: acked.get(&s.origin).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Every origin's stream, with its lag now.
    pub fn streams(&self) -> Vec<PeerStatus> {
        let now = now_ms();
        lock(&self.streams)
            .values()
            .map(|s| {
                let mut s = s.clone();
                s.lag_operations = s.origin_sequence.saturating_sub(s.applied_sequence);
                s.lag_ms = s
                    .behind_since_ms
                    .map(|t| now.saturating_sub(t).max(0) as u64)
                    .unwrap_or(0);
                s
            })
            .collect()
    }

    /// Waits until this master reached every position of `wanted` (its own id counted against
    /// its committed sequence), at most `timeout`; `Err` names the positions it stands at.
    pub async fn wait_for(
        &self,
        state: &Storage,
        wanted: &[(String, u64)],
        timeout: Duration,
    ) -> Result<String> {
        let own = &state.instance_id;
        let own_wanted = wanted
            .iter()
            .filter(|(id, _)| id == own)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        let others: Vec<&(String, u64)> = wanted.iter().filter(|(id, _)| id != own).collect();
        let mut applied = self.applied.subscribe();
        let mut commits = state.write_path.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            loop {
                let peers_ok = {
                    let map = applied.borrow_and_update();
                    others
                        .iter()
                        .all(|(id, s)| map.get(id).copied().unwrap_or(0) >= *s)
                };
                let own_ok = *commits.borrow_and_update() >= own_wanted;
                if peers_ok && own_ok {
                    return;
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return; },
                    r = commits.changed() => if r.is_err() { return; },
                }
            }
        })
        .await;
        let mut at = self.positions();
        at.insert(own.clone(), state.write_path.committed());
        let text = at
            .iter()
            .map(|(id, s)| format!("{id}={s}"))
            .collect::<Vec<_>>()
            .join(" ");
        match reached {
            Ok(()) => Ok(format!("positions {text}")),
            Err(_) => Err(ServerError::Refused(format!(
                "positions not reached within {} ms: this master ({own}) stands at {text}",
                timeout.as_millis()
            ))),
        }
    }
}

/// The positions a session wants, per origin master.
pub(crate) type Wanted = Vec<(String, u64)>;

/// Parses `DIRK WAIT ORIGINS <timeout_ms> <id>=<seq> …`; `None` for any other statement.
pub(crate) fn parse_wait(sql: &str) -> Option<Result<(Duration, Wanted)>> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let is = |i: usize, w: &str| words.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !(is(0, "DIRK") && is(1, "WAIT") && is(2, "ORIGINS")) {
        return None;
    }
    let bad = || {
        ServerError::Syntax(format!(
            "expected `DIRK WAIT ORIGINS <timeout_ms> <instance>=<position> …`, got `{}`",
            sql.trim()
        ))
    };
    let digits = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let parsed = (|| {
        let timeout = words
            .get(3)
            .filter(|w| digits(w))
            .and_then(|w| w.parse().ok())
            .ok_or_else(bad)?;
        let mut wanted = Vec::new();
        for word in &words[4..] {
            let (id, seq) = word.split_once('=').ok_or_else(bad)?;
            if id.is_empty() || !digits(seq) {
                return Err(bad());
            }
            wanted.push((id.to_string(), seq.parse().map_err(|_| bad())?));
        }
        Ok((Duration::from_millis(timeout), wanted))
    })();
    Some(parsed)
}

/// Creates the meta file's tables of positions (adding the `crc` column to an older one).
fn meta_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(META_SCHEMA)?;
    add_crc_column(conn, "_dirk_peer_positions")
}

/// Stores `origin`'s position (with the checksum of its entry there) and history in the meta
/// file (inside the caller's transaction when it has one); never lowers it.
pub(crate) fn store_meta_position(
    conn: &Connection,
    origin: &str,
    mark: Mark,
    history: Option<&str>,
) -> rusqlite::Result<()> {
    meta_schema(conn)?;
    conn.execute(
        "INSERT INTO _dirk_peer_positions(origin, seq, history, crc) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(origin) DO UPDATE SET seq = max(seq, excluded.seq), \
         history = coalesce(excluded.history, history), \
         crc = CASE WHEN excluded.seq > seq THEN excluded.crc \
                    WHEN excluded.seq = seq THEN coalesce(excluded.crc, crc) ELSE crc END",
        params![
            origin,
            mark.seq.min(i64::MAX as u64) as i64,
            history,
            mark.crc.map(i64::from)
        ],
    )?;
    Ok(())
}

/// Stores `origin`'s position in a database file, in the transaction of the rows applied;
/// never lowers it.
pub(crate) fn store_file_position(
    conn: &Connection,
    origin: &str,
    mark: Mark,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO _dirk_origins(origin, seq, crc) VALUES (?1, ?2, ?3) \
         ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq, crc = excluded.crc \
         WHERE excluded.seq >= seq",
    )?
    .execute(params![
        origin,
        mark.seq.min(i64::MAX as u64) as i64,
        mark.crc.map(i64::from)
    ])?;
    Ok(())
}

/// Records (or with `dropped == false` forgets) that a database was dropped by another origin,
/// so that late entries of that database are skipped rather than waited for.
pub(crate) fn mark_dropped(conn: &Connection, name: &str, dropped: bool) -> rusqlite::Result<()> {
    meta_schema(conn)?;
    if dropped {
        conn.execute(
            "INSERT OR IGNORE INTO _dirk_peer_dropped(name) VALUES (?1)",
            [name],
        )?;
    } else {
        conn.execute("DELETE FROM _dirk_peer_dropped WHERE name = ?1", [name])?;
    }
    Ok(())
}

/// True when `name` was dropped here, by another origin's event or by this master's own.
pub(crate) fn was_dropped(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    meta_schema(conn)?;
    let by_peer = conn
        .query_row(
            "SELECT 1 FROM _dirk_peer_dropped WHERE name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let own = conn
        .query_row(
            "SELECT 1 FROM _dirk_oplog WHERE op = 'DROPDB' AND tbl = ?1 LIMIT 1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    Ok(by_peer || own)
}

/// The position a database file's rows stand at for `origin` (0 when none), on a connection
/// [`file_schema`] ran on (the applier's, so `_dirk_origins` exists with its `crc` column): one
/// cached statement, where [`file_mark`] first probes the schema (two more statements, each
/// compiled anew), which was a fifth of the time an applied run took.
pub(crate) fn applied_position(conn: &Connection, origin: &str) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM _dirk_origins WHERE origin = ?1")?
        .query_row([origin], |r| r.get(0))
        .optional()?;
    Ok(seq.map_or(0, |s| s.max(0) as u64))
}

/// The position a database file's rows stand at for `origin`, with the checksum of the entry
/// there when the file recorded it (a file of an older version has no `crc` column; read
/// without changing it).
pub(crate) fn file_mark(conn: &Connection, origin: &str) -> rusqlite::Result<Mark> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_dirk_origins'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(Mark::default());
    }
    let crc = if has_column(conn, "_dirk_origins", "crc")? {
        "crc"
    } else {
        "NULL"
    };
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            &format!("SELECT seq, {crc} FROM _dirk_origins WHERE origin = ?1"),
            [origin],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map_or(Mark::default(), |(seq, crc)| Mark {
        seq: seq.max(0) as u64,
        crc: crc_of(crc),
    }))
}

/// Loads every origin's durable position (and history) at start: the highest of the meta
/// file's and of every database file's.
pub(crate) fn load_positions(
    state: &Storage,
    peers: &Peers,
    origins: &[String],
) -> Result<BTreeMap<String, (u64, Option<String>)>> {
    let mut out = BTreeMap::new();
    state.meta.with(|conn| {
        for (row, held) in super::conflicts::held_rows(conn)? {
            peers.note_held(row, held);
        }
        meta_schema(conn)?;
        for origin in origins {
            let row: Option<(i64, Option<String>, Option<i64>)> = conn
                .query_row(
                    "SELECT seq, history, crc FROM _dirk_peer_positions WHERE origin = ?1",
                    [origin],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let (seq, history, crc) = row.unwrap_or((0, None, None));
            let mark = Mark {
                seq: seq.max(0) as u64,
                crc: crc_of(crc),
            };
            out.insert(origin.clone(), (mark, history));
        }
        Ok(())
    })?;
    for name in state.catalog.names() {
        let db = state.catalog.get(&name)?;
        let conn = db.lease()?;
        for origin in origins {
            let mark = file_mark(&conn, origin)?;
            if let Some(entry) = out.get_mut(origin) {
                entry.0 = entry.0.max(mark);
            }
        }
        peers.knowledge.load(&name, &conn)?;
        db.give_back(conn);
    }
    for (origin, (mark, history)) in &out {
        peers.advance_to(origin, *mark);
        peers.update(origin, |s| s.history = history.clone());
    }
    Ok(out
        .into_iter()
        .map(|(origin, (mark, history))| (origin, (mark.seq, history)))
        .collect())
}

/// The MULTI_PRIMARY metrics of `GET /metrics`: per origin stream and per object owner.
mod described {
    use dirkdb_core::metrics::Metric;

    pub(super) const APPLIED: Metric = Metric::gauge(
        "dirkdb_peer_applied_sequence",
        "MULTI_PRIMARY: the origin master's last sequence applied here.",
    );
    pub(super) const ORIGIN: Metric = Metric::gauge(
        "dirkdb_peer_origin_sequence",
        "MULTI_PRIMARY: the origin master's committed sequence, as last heard.",
    );
    pub(super) const LAG_OPS: Metric = Metric::gauge(
        "dirkdb_peer_lag_operations",
        "MULTI_PRIMARY: entries the origin committed that are not applied here.",
    );
    pub(super) const LAG_MS: Metric = Metric::gauge(
        "dirkdb_peer_lag_ms",
        "MULTI_PRIMARY: how long this master has been behind the origin.",
    );
    pub(super) const STREAMING: Metric = Metric::gauge(
        "dirkdb_peer_streaming",
        "MULTI_PRIMARY: 1 while the origin's stream is up.",
    );
    pub(super) const CHECKPOINT: Metric = Metric::gauge(
        "dirkdb_peer_checkpoint",
        "MULTI_PRIMARY: the last position in common with another master: side=applied is how \
         far this master applied the peer's stream, side=acknowledged how far the peer \
         acknowledged this master's own.",
    );
    pub(super) const OPEN_CONFLICTS: Metric = Metric::gauge(
        "dirkdb_open_conflicts",
        "MULTI_PRIMARY: conflicts this master recorded (as the home of their rows) and that wait \
         for RESOLVE CONFLICT.",
    );
    pub(super) const RESOLVED_CONFLICTS: Metric = Metric::gauge(
        "dirkdb_resolved_conflicts",
        "MULTI_PRIMARY: conflicts this master recorded and resolved.",
    );
    pub(super) const HELD_FOR_HOME: Metric = Metric::gauge(
        "dirkdb_conflicts_held_for_home",
        "MULTI_PRIMARY: conflicting changes of rows another master is home of, left unapplied \
         here for that master's resolution (since start).",
    );
    pub(super) const OWNED: Metric = Metric::gauge(
        "dirkdb_owned_objects",
        "MULTI_PRIMARY: databases, tables, views and domains per owner, in this master's view.",
    );
    pub(super) const OWNER: Metric = Metric::gauge(
        "dirkdb_object_owner",
        "MULTI_PRIMARY: 1 per object, labelled with its owner (first 1000 objects).",
    );
}

/// What each other master acknowledged of this master's own stream.
pub(crate) fn acked_by_peer(hub: &super::ReplicationHub) -> BTreeMap<String, u64> {
    hub.replicas(0)
        .into_iter()
        .map(|r| (r.instance, r.acked_sequence))
        .collect()
}

/// Objects listed one by one in `dirkdb_object_owner` at most.
const OWNER_SAMPLES: usize = 1000;

/// Writes the MULTI_PRIMARY metrics (nothing outside MULTI_PRIMARY).
pub(crate) fn write_metrics(
    state: &Storage,
    peers: &Peers,
    hub: &super::ReplicationHub,
    page: &mut dirkdb_core::metrics::Page,
) -> std::fmt::Result {
    use described::*;
    if !state.settings.ownership.active() {
        return Ok(());
    }
    let streams = peers.streams();
    let per_origin = |figure: fn(&PeerStatus) -> u64| {
        streams
            .iter()
            .map(move |s| (vec![("origin", s.origin.clone())], figure(s)))
    };
    page.each(&APPLIED, per_origin(|s| s.applied_sequence))?;
    page.each(&ORIGIN, per_origin(|s| s.origin_sequence))?;
    page.each(&LAG_OPS, per_origin(|s| s.lag_operations))?;
    page.each(&LAG_MS, per_origin(|s| s.lag_ms))?;
    page.each(
        &STREAMING,
        per_origin(|s| u64::from(s.state == PeerState::Streaming)),
    )?;
    let checkpoints = peers.checkpoints(&acked_by_peer(hub));
    page.each(
        &CHECKPOINT,
        checkpoints.iter().flat_map(|c| {
            let labels = |side: &str| vec![("peer", c.peer.clone()), ("side", side.to_string())];
            [
                (labels("applied"), c.applied),
                (labels("acknowledged"), c.acknowledged),
            ]
        }),
    )?;
    let (open, resolved) = super::conflicts::counts_of(state).unwrap_or_default();
    page.one(&OPEN_CONFLICTS, open)?;
    page.one(&RESOLVED_CONFLICTS, resolved)?;
    page.one(&HELD_FOR_HOME, peers.held_for_home())?;
    let objects = crate::owners::owned_objects(state, &state.catalog.names()).unwrap_or_default();
    let owners = objects.iter().map(|o| o.owner.clone().unwrap_or_default());
    page.counts(&OWNED, "owner", owners)?;
    page.each(
        &OWNER,
        objects.into_iter().take(OWNER_SAMPLES).map(|o| {
            let labels = vec![
                ("kind", o.kind.to_string()),
                ("database", o.database),
                ("object", o.name),
                ("owner", o.owner.unwrap_or_default()),
            ];
            (labels, 1u64)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statements_parse_strictly() {
        let (timeout, wanted) = parse_wait("dirk wait origins 250 m1=5 M2=0")
            .unwrap()
            .unwrap();
        assert_eq!(timeout, Duration::from_millis(250));
        assert_eq!(wanted, [("m1".to_string(), 5), ("M2".to_string(), 0)]);
        assert!(parse_wait("DIRK WAIT ORIGINS 10")
            .unwrap()
            .unwrap()
            .1
            .is_empty());
        for bad in [
            "DIRK WAIT ORIGINS",
            "DIRK WAIT ORIGINS x m1=1",
            "DIRK WAIT ORIGINS 10 m1",
            "DIRK WAIT ORIGINS 10 =1",
            "DIRK WAIT ORIGINS 10 m1=-1",
            "DIRK WAIT ORIGINS 10 m1=99999999999999999999999",
        ] {
            assert!(parse_wait(bad).unwrap().is_err(), "{bad}");
        }
        assert!(parse_wait("DIRK WAIT 1 2").is_none());
    }

    #[test]
    fn positions_never_go_back_and_lag_follows_the_origin() {
        let peers = Peers::default();
        peers.advance("m2", 5);
        peers.advance("m2", 3);
        assert_eq!(peers.applied("m2"), 5);
        peers.update("m2", |s| s.origin_sequence = 9);
        let s = &peers.streams()[0];
        assert_eq!((s.applied_sequence, s.lag_operations), (5, 4));
        peers.advance("m2", 9);
        assert_eq!(peers.streams()[0].lag_operations, 0);
        assert_eq!(peers.streams()[0].lag_ms, 0);
    }

    #[test]
    fn meta_positions_only_rise() {
        let conn = Connection::open_in_memory().unwrap();
        let mark = |seq, crc| Mark { seq, crc };
        store_meta_position(&conn, "m2", mark(7, Some(70)), Some("h1")).unwrap();
        store_meta_position(&conn, "m2", mark(4, Some(40)), None).unwrap();
        store_meta_position(&conn, "m2", mark(7, None), None).unwrap();
        let crc: i64 = conn
            .query_row("SELECT crc FROM _dirk_peer_positions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(crc, 70, "the checksum follows the position it is of");
        let (seq, history): (i64, String) = conn
            .query_row(
                "SELECT seq, history FROM _dirk_peer_positions WHERE origin = 'm2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((seq, history.as_str()), (7, "h1"));
        mark_dropped(&conn, "d", true).unwrap();
        conn.execute_batch(crate::oplog::CREATE_OPLOG_SQL).unwrap();
        assert!(was_dropped(&conn, "d").unwrap());
        mark_dropped(&conn, "d", false).unwrap();
        assert!(!was_dropped(&conn, "d").unwrap());
        assert_eq!(file_mark(&conn, "m2").unwrap().seq, 0);
        // A file of an older version: no checksum column, read as unknown, added on use.
        conn.execute_batch(
            "CREATE TABLE _dirk_origins (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL);
             INSERT INTO _dirk_origins VALUES ('m2', 3)",
        )
        .unwrap();
        assert_eq!(file_mark(&conn, "m2").unwrap(), mark(3, None));
        file_schema(&conn).unwrap();
        store_file_position(&conn, "m2", mark(5, Some(50))).unwrap();
        store_file_position(&conn, "m2", mark(4, Some(40))).unwrap();
        assert_eq!(file_mark(&conn, "m2").unwrap(), mark(5, Some(50)));
        assert_eq!(applied_position(&conn, "m2").unwrap(), 5);
    }
}
