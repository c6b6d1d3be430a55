//! Replication from a PRIMARY to its REPLICAs, in `OPLOG` mode (below) or `FILE` mode
//! ([`file_mode`]), both behind [`mode::ReplicationMode`].
//!
//! How it flows: a replica's [`follower`] connects to the primary's SQL port, switches the
//! connection to the replication [`protocol`] and says where it stands (history id, sequence).
//! The primary's [`sender`] continues from there when its oplog still covers that position in a
//! history the two share (partial sync); otherwise it sends a consistent [`snapshot`] of every
//! database, checked by CRC before the replica installs it (full sync). Then it streams committed
//! entries as they appear; the replica's [`apply`] writes each batch, with the same entries into
//! its own oplog, in one transaction per database, and acknowledges. Both sides heartbeat.
//!
//! [`ReplicationHub`] is the shared bookkeeping: per replica on a primary (position, lag in
//! operations and ms, bytes sent, state), the follower's status and target on a replica, and the
//! node's replication term (kept durably in the meta file, cached here): an acknowledgement counts
//! for write concerns only when it carries the current term.

pub(crate) mod apply;
pub(crate) mod compression;
#[cfg(test)]
mod conflict_tests;
pub(crate) mod conflicts;
#[cfg(test)]
mod duplex_tests;
pub(crate) mod etcd_lease;
pub(crate) mod file_mode;
pub(crate) mod follower;
pub(crate) mod knowledge;
pub(crate) mod mode;
pub(crate) mod node;
pub(crate) mod oplog_mode;
pub(crate) mod peer_apply;
pub(crate) mod peer_conflicts;
pub(crate) mod peer_stream;
pub(crate) mod peers;
pub mod protocol;
pub(crate) mod rollback;
pub(crate) mod sender;
pub(crate) mod snapshot;
pub(crate) mod stream;
pub(crate) mod write_probe;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dirkdb_core::config::ReplicationType;
use serde::Serialize;
use tokio::sync::watch;

use dirkdb_core::clock::now_ms;
use dirkdb_core::sync::lock;

/// A replica's state as the primary sees it (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReplicaState {
    /// Streaming and caught up (or nearly).
    Connected,
    /// Receiving a full sync, or not yet acknowledged anything.
    Syncing,
    /// Connected but more than a second behind.
    Lagging,
    /// Not connected.
    Disconnected,
}

/// A replica's own view of its stream (`/replication/status`'s `following.state`); the
/// primary's view of each replica is [`ReplicaState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum FollowerState {
    /// Connecting to its primary.
    Connecting,
    /// Receiving a full sync or the first batch.
    Syncing,
    /// Applying the primary's stream.
    Streaming,
    /// The stream ended; it retries.
    Disconnected,
    /// Following nobody (a primary).
    #[default]
    Stopped,
}

/// What the primary reports about one replica.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replica instance id.
    pub instance: String,
    /// Its address as seen by the primary.
    pub address: String,
    /// Connected, Syncing, Lagging or Disconnected.
    pub state: ReplicaState,
    /// Last sequence it acknowledged (its offset).
    pub acked_sequence: u64,
    /// Committed entries it has not acknowledged.
    pub lag_operations: u64,
    /// Age of the oldest entry it has not acknowledged.
    pub lag_ms: u64,
    /// Bytes sent to it (entries and snapshots).
    pub bytes_sent: u64,
    /// Entries sent to it.
    pub operations_synced: u64,
    /// When it was last heard from (ms since the epoch).
    pub last_heartbeat_ms: i64,
    /// When its current connection started.
    pub connected_since_ms: i64,
    /// Full syncs served to it.
    pub full_syncs: u64,
    /// Partial syncs served to it.
    pub partial_syncs: u64,
    /// Why its last connection ended, if it did.
    pub last_error: Option<String>,
    /// FILE mode: its copy of each database.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileCopyStatus>,
}

/// FILE mode: one database's copy on one secondary.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileCopyStatus {
    /// Version of the last copy installed (the newest oplog sequence in it).
    pub version: u64,
    /// When it was installed (ms since the epoch).
    pub copied_at_ms: i64,
    /// Its age now, in ms.
    pub age_ms: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes of pages sent for it, all copies together.
    pub bytes_sent: u64,
    /// Pages sent for it, all copies together.
    pub pages_sent: u64,
    /// Copies installed.
    pub copies: u64,
    /// Copies refused or failed.
    pub failures: u64,
    /// Why the last one failed.
    pub last_error: Option<String>,
}

impl FileCopyStatus {
    /// Records an installed copy.
    pub fn copied(&mut self, version: u64, bytes: u64, sent: u64, pages: u64) {
        self.version = version;
        self.copied_at_ms = now_ms();
        self.bytes = bytes;
        self.bytes_sent += sent;
        self.pages_sent += pages;
        self.copies += 1;
    }

    /// Records a failed copy.
    pub fn failed(&mut self, sent: u64, error: String) {
        self.bytes_sent += sent;
        self.failures += 1;
        self.last_error = Some(error);
    }

    fn aged(mut self, now: i64) -> Self {
        self.age_ms = now.saturating_sub(self.copied_at_ms).max(0) as u64;
        self
    }
}

struct ReplicaRecord {
    status: ReplicaStatus,
    syncing: bool,
    connected: bool,
    /// (last sequence, oldest commit time) of each batch sent and not yet acknowledged.
    unacked: VecDeque<(u64, i64)>,
}

/// What a replica reports about its own following.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerStatus {
    /// The primary followed (`None` on a primary).
    pub primary: Option<String>,
    /// Where its stream stands (serialized as the variant's name, as before).
    pub state: FollowerState,
    /// Last applied sequence.
    pub applied_sequence: u64,
    /// The primary's committed sequence, from its heartbeats.
    pub primary_sequence: u64,
    /// Commit time of the last applied entry.
    pub last_applied_commit_ms: i64,
    /// Full syncs received.
    pub full_syncs: u64,
    /// Partial syncs.
    pub partial_syncs: u64,
    /// Last full sync: bytes, seconds and MB/s.
    pub last_full_sync: Option<FullSyncFigures>,
    /// Why the last connection ended.
    pub last_error: Option<String>,
    /// FILE mode: the copy of each database received.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileCopyStatus>,
}

/// Size and speed of a full sync.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FullSyncFigures {
    /// Bytes received.
    pub bytes: u64,
    /// Seconds from the first to the last byte, installation included.
    pub seconds: f64,
    /// Throughput.
    pub mb_per_sec: f64,
}

/// Replication bookkeeping shared by the sender tasks, the follower and the admin API.
pub struct ReplicationHub {
    replicas: Mutex<BTreeMap<String, ReplicaRecord>>,
    follower: Mutex<FollowerStatus>,
    target: watch::Sender<Option<String>>,
    acks: watch::Sender<u64>,
    streams_epoch: watch::Sender<u64>,
    mode: watch::Sender<ReplicationType>,
    term: AtomicU64,
    /// True once this replica's data is known to be a prefix of its current primary's history
    /// (a partial sync accepted, a full sync installed, a FILE round applied); false from a
    /// change of target or a step-down until then — a demoted primary may hold writes its new
    /// primary lacks, at positions the new primary reuses. Read-your-writes waits refuse
    /// meanwhile.
    synced: AtomicBool,
    /// This node's write lease, told of every replica heard from (majority leases).
    lease: std::sync::OnceLock<std::sync::Arc<crate::lease::Lease>>,
    /// Heartbeat period (`replication.heartbeatMillis`).
    pub heartbeat: Duration,
    /// `replication.compression`: what this node offers as a replica and accepts as a primary.
    pub compression: dirkdb_core::config::CompressionConfig,
    /// Bytes sent to replicas, before and after compression.
    pub sent: std::sync::Arc<compression::WireCounters>,
}

impl ReplicationHub {
    /// A hub whose replica (if it is one) follows `target`, in `mode`.
    pub fn new(
        target: Option<String>,
        heartbeat: Duration,
        mode: ReplicationType,
    ) -> ReplicationHub {
        ReplicationHub {
            replicas: Mutex::new(BTreeMap::new()),
            follower: Mutex::new(FollowerStatus {
                primary: target.clone(),
                state: if target.is_some() {
                    FollowerState::Connecting
                } else {
                    FollowerState::Stopped
                },
                ..FollowerStatus::default()
            }),
            target: watch::channel(target).0,
            acks: watch::channel(0).0,
            streams_epoch: watch::channel(0).0,
            mode: watch::channel(mode).0,
            term: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            lease: std::sync::OnceLock::new(),
            heartbeat,
            compression: Default::default(),
            sent: Default::default(),
        }
    }

    /// The same hub with `replication.compression` applied.
    pub fn with_compression(mut self, compression: dirkdb_core::config::CompressionConfig) -> Self {
        self.compression = compression;
        self
    }

    /// The node's current replication term (the cached copy of the meta file's).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Tells `lease` of every replica heard from in this node's term (majority leases).
    pub fn attach_lease(&self, lease: std::sync::Arc<crate::lease::Lease>) {
        let _ = self.lease.set(lease);
    }

    /// See [`ReplicationHub::is_synced`].
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    /// True once this replica's data is known to be a prefix of its current primary's history.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Raises the cached term (callers store it durably first).
    pub fn raise_term(&self, term: u64) {
        self.term.fetch_max(term, Ordering::AcqRel);
    }

    /// How long the other side of a stream may stay silent before it is treated as gone:
    /// six heartbeats plus a second.
    pub fn silence(&self) -> Duration {
        self.heartbeat * 6 + Duration::from_secs(1)
    }

    /// The replication mode this instance runs.
    pub fn mode(&self) -> ReplicationType {
        *self.mode.borrow()
    }

    /// Switches the mode: every stream served ends and the follower reconnects in the new one.
    pub fn set_mode(&self, mode: ReplicationType) -> bool {
        let changed = self
            .mode
            .send_if_modified(|m| std::mem::replace(m, mode) != mode);
        if changed {
            self.end_streams();
        }
        changed
    }

    /// Notified when the mode changes.
    pub fn watch_mode(&self) -> watch::Receiver<ReplicationType> {
        self.mode.subscribe()
    }

    /// FILE mode: updates what the primary knows of `instance`'s copy of `db` (`None` removes it).
    pub fn update_file_copy(
        &self,
        instance: &str,
        db: &str,
        f: Option<impl FnOnce(&mut FileCopyStatus)>,
    ) {
        self.with_replica(instance, |r| match f {
            Some(f) => f(r.status.files.entry(db.to_string()).or_default()),
            None => {
                r.status.files.remove(db);
            }
        });
    }

    /// The primary this instance follows.
    pub fn target(&self) -> Option<String> {
        self.target.borrow().clone()
    }

    /// Follow another primary (or, with `None`, stop following).
    pub fn set_target(&self, target: Option<String>) {
        self.set_synced(false);
        lock(&self.follower).primary = target.clone();
        self.target.send_replace(target);
    }

    /// Notified when the target changes.
    pub fn watch_target(&self) -> watch::Receiver<Option<String>> {
        self.target.subscribe()
    }

    /// Ends every stream this node serves as a primary (it is being demoted).
    pub fn end_streams(&self) {
        self.streams_epoch.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when the streams this node serves must end.
    pub fn watch_streams(&self) -> watch::Receiver<u64> {
        self.streams_epoch.subscribe()
    }

    /// Notified whenever a replica acknowledges (for write concerns).
    pub fn watch_acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// A replica connected.
    pub fn replica_connected(&self, instance: &str, address: &str) {
        let mut replicas = lock(&self.replicas);
        let now = now_ms();
        let record = replicas
            .entry(instance.to_string())
            .or_insert_with(|| ReplicaRecord {
                status: ReplicaStatus {
                    instance: instance.to_string(),
                    address: address.to_string(),
                    state: ReplicaState::Syncing,
                    acked_sequence: 0,
                    lag_operations: 0,
                    lag_ms: 0,
                    bytes_sent: 0,
                    operations_synced: 0,
                    last_heartbeat_ms: now,
                    connected_since_ms: now,
                    full_syncs: 0,
                    partial_syncs: 0,
                    last_error: None,
                    files: BTreeMap::new(),
                },
                syncing: true,
                connected: true,
                unacked: VecDeque::new(),
            });
        record.status.address = address.to_string();
        record.status.connected_since_ms = now;
        record.status.last_heartbeat_ms = now;
        record.connected = true;
        record.syncing = true;
        record.unacked.clear();
    }

    /// The kind of sync chosen for a replica; `position` is where streaming starts.
    pub fn replica_syncing(&self, instance: &str, full: bool, position: u64) {
        self.with_replica(instance, |r| {
            if full {
                r.status.full_syncs += 1;
            } else {
                r.status.partial_syncs += 1;
            }
            r.status.acked_sequence = position;
        });
    }

    /// Bytes and entries went to a replica; `last_seq`/`oldest_ts` describe an entry batch.
    pub fn record_sent(&self, instance: &str, bytes: u64, entries: u64, batch: Option<(u64, i64)>) {
        self.with_replica(instance, |r| {
            r.status.bytes_sent += bytes;
            r.status.operations_synced += entries;
            if let Some(b) = batch {
                r.unacked.push_back(b);
            }
        });
    }

    /// A replica acknowledged everything up to `applied` in `term`; an acknowledgement of
    /// another term than this node's is not counted (returns false).
    pub fn record_ack(&self, instance: &str, applied: u64, term: u64) -> bool {
        if term != self.term() {
            return false;
        }
        if let Some(lease) = self.lease.get() {
            lease.note_replica(instance);
        }
        self.with_replica(instance, |r| {
            r.status.acked_sequence = r.status.acked_sequence.max(applied);
            r.status.last_heartbeat_ms = now_ms();
            r.syncing = false;
            while r.unacked.front().is_some_and(|(seq, _)| *seq <= applied) {
                r.unacked.pop_front();
            }
        });
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// A replica's connection ended.
    pub fn replica_disconnected(&self, instance: &str, error: Option<String>) {
        self.with_replica(instance, |r| {
            r.connected = false;
            r.status.last_error = error;
        });
    }

    fn with_replica(&self, instance: &str, f: impl FnOnce(&mut ReplicaRecord)) {
        if let Some(r) = lock(&self.replicas).get_mut(instance) {
            f(r);
        }
    }

    /// Every replica ever connected, with lag computed against `committed`.
    pub fn replicas(&self, committed: u64) -> Vec<ReplicaStatus> {
        let now = now_ms();
        lock(&self.replicas)
            .values()
            .map(|r| {
                let mut s = r.status.clone();
                s.files = std::mem::take(&mut s.files)
                    .into_iter()
                    .map(|(k, v)| (k, v.aged(now)))
                    .collect();
                s.lag_operations = committed.saturating_sub(s.acked_sequence);
                s.lag_ms = r
                    .unacked
                    .front()
                    .map(|(_, ts)| now.saturating_sub(*ts).max(0) as u64)
                    .unwrap_or(0);
                s.state = if !r.connected {
                    ReplicaState::Disconnected
                } else if r.syncing {
                    ReplicaState::Syncing
                } else if s.lag_operations > 0 && s.lag_ms > 1000 {
                    ReplicaState::Lagging
                } else {
                    ReplicaState::Connected
                };
                s
            })
            .collect()
    }

    /// Positions acknowledged by connected replicas.
    pub fn acked_positions(&self) -> Vec<u64> {
        lock(&self.replicas)
            .values()
            .filter(|r| r.connected)
            .map(|r| r.status.acked_sequence)
            .collect()
    }

    /// The follower's status.
    pub fn follower(&self) -> FollowerStatus {
        let mut status = lock(&self.follower).clone();
        let now = now_ms();
        status.files = std::mem::take(&mut status.files)
            .into_iter()
            .map(|(k, v)| (k, v.aged(now)))
            .collect();
        status
    }

    /// Updates the follower's status.
    pub fn update_follower(&self, f: impl FnOnce(&mut FollowerStatus)) {
        f(&mut lock(&self.follower));
    }
}
