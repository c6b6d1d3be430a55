//! What every session, replication task and admin request of one instance shares.
//!
//! Opening an instance brings its data directory to a consistent state before any client comes:
//! the meta file's set of live databases is authoritative (a CREATE or DROP DATABASE interrupted
//! by a crash between its event and its file operation is finished here), every database gets
//! its oplog table and capture triggers, and the committed sequence is the highest one on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::{
    ClusterConfig, InstanceConfig, LimitsConfig, OplogConfig, ReplicationType, Role,
};

use crate::catalog::{Catalog, ConnectionSettings};
use crate::error::{Result, ServerError};
use crate::lease::{Lease, LeaseRefusal, LEASE_REQUIRED_SETTING};
use crate::meta::Meta;
use crate::metrics::ServerMetrics;
use crate::oplog::store::{self, Source};
use crate::oplog::Op;
use crate::ownership::Ownership;
use crate::replication::file_mode::FileMode;
use crate::replication::mode::{OplogMode, ReplicationMode};
use crate::replication::ReplicationHub;
use crate::write_path::WritePath;
use dirkdb_core::clock::now_ms;

/// The implementations of [`ReplicationMode`], kept for the life of the instance.
pub struct Modes {
    /// Row-level oplog streaming.
    pub oplog: Arc<OplogMode>,
    /// Copies of database files.
    pub file: Arc<FileMode>,
}

/// Everything the sessions of one instance share.
pub struct ServerState {
    /// This instance's id from `config.json`.
    pub instance_id: String,
    /// Its databases.
    pub catalog: Catalog,
    /// Its meta file.
    pub meta: Meta,
    /// The writer gate and committed sequence.
    pub write_path: Arc<WritePath>,
    /// What one client may ask.
    pub limits: LimitsConfig,
    /// Bytes held by the large statements running now (`limits.maxInFlightStatementBytes`).
    pub in_flight: Arc<dirkdb_core::in_flight::InFlight>,
    /// `limits.maxConnectionsPerAddress` and the idle timeouts (reloaded with the file).
    pub client_limits: Arc<dirkdb_core::conn_limit::ClientLimits>,
    /// How its SQLite connections are opened.
    pub settings: ConnectionSettings,
    /// Replication bookkeeping and the followed primary.
    pub replication: ReplicationHub,
    /// Oplog bounds.
    pub oplog_limits: OplogConfig,
    /// Counters for `/metrics`.
    pub metrics: ServerMetrics,
    /// The replication modes (one runs at a time: `replication.mode()`).
    pub modes: Modes,
    /// Users, grants and this instance's cluster credentials.
    pub security: Arc<crate::auth::ServerSecurity>,
    /// MULTI_PRIMARY: the other masters' streams applied here (per-origin positions).
    pub peers: crate::replication::peers::Peers,
    /// Where this instance reaches each other instance's replication listener, from its own
    /// `config.json` (`instances[].replicationAddress`, else `host:port`), by id.
    peer_addresses: std::collections::BTreeMap<String, String>,
    read_only: AtomicBool,
    fenced: AtomicBool,
    next_owner: AtomicU64,
    resync_on_start: AtomicBool,
}

impl ServerState {
    /// Opens the data directory of `instance`. Its role is the one it last had (a promoted
    /// replica stays a primary across restarts), else the one in `config.json`; a replica follows
    /// the primary it was last pointed at, else the file's primary.
    pub fn open(instance: &InstanceConfig, config: &ClusterConfig) -> Result<ServerState> {
        let data_directory = &instance.data_directory;
        std::fs::create_dir_all(data_directory)?;
        let limits = config.limits.clone();
        let committed = Arc::new(AtomicU64::new(0));
        let sync = config.storage.synchronous.as_str();
        let restored = crate::replication::snapshot::recover_interrupted_install(data_directory)?;
        let meta = Meta::open(data_directory, committed.clone(), sync)?;
        for (key, value) in &restored {
            meta.set_setting(key, value.as_deref())?;
        }
        meta.history(&instance.id)?;
        reconcile_database_files(&meta, data_directory)?;
        let role = match meta.setting("role")?.as_deref() {
            Some("PRIMARY") => Role::Primary,
            Some("REPLICA") => Role::Replica,
            _ => instance.role,
        };
        let lease_required = meta.setting(LEASE_REQUIRED_SETTING)?.is_some();
        let mut lease = Lease::new(lease_required, role == Role::Primary);
        if config.failover.majority_lease {
            lease = lease.with_majority(config.instances.len(), config.failover.lease());
        }
        let lease = Arc::new(lease);
        let settings = ConnectionSettings {
            synchronous: config.storage.synchronous,
            busy_timeout: Duration::from_millis(limits.busy_timeout_ms),
            committed: committed.clone(),
            lease: lease.clone(),
            ownership: Arc::new(Ownership::new(&instance.id, config.master_ids())),
        };
        if config.replication.file_replaced_by_oplog {
            tracing::warn!(instance = %instance.id, "{}", dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY);
        }
        let catalog = Catalog::open(data_directory, settings.clone())?;
        let resync_on_start = role == Role::Replica && lost_power_since_last_run(&meta)?;
        let target = match role {
            Role::Primary => None,
            Role::Replica => meta
                .setting("primary")?
                .or_else(|| config.primaries().next().map(|p| p.replication_addr())),
        };
        let state = ServerState {
            instance_id: instance.id.clone(),
            catalog,
            meta,
            write_path: Arc::new(
                WritePath::new(committed, Duration::from_millis(limits.busy_timeout_ms))
                    .with_lease(lease.clone()),
            ),
            in_flight: dirkdb_core::in_flight::InFlight::new(limits.max_in_flight_statement_bytes),
            client_limits: dirkdb_core::conn_limit::ClientLimits::new(config),
            limits,
            settings,
            replication: ReplicationHub::new(
                target,
                Duration::from_millis(config.replication.heartbeat_millis.max(10)),
                config.replication.kind,
            ),
            modes: Modes {
                oplog: Arc::new(OplogMode::default()),
                file: Arc::new(FileMode::new(
                    Duration::from_secs(config.replication.interval_seconds.max(1)),
                    config.replication.page_deltas,
                )),
            },
            oplog_limits: config.replication.oplog.clone(),
            metrics: ServerMetrics::default(),
            security: Arc::new(crate::auth::ServerSecurity::from_config(config)?),
            peers: Default::default(),
            peer_addresses: config
                .instances
                .iter()
                .filter(|i| i.id != instance.id)
                .map(|i| (i.id.clone(), i.replication_addr()))
                .collect(),
            read_only: AtomicBool::new(role == Role::Replica),
            fenced: AtomicBool::new(false),
            next_owner: AtomicU64::new(1),
            resync_on_start: AtomicBool::new(resync_on_start),
        };
        state.replication.raise_term(state.meta.term()?);
        state.replication.attach_lease(lease);
        let latest = state.latest_on_disk()?;
        state.write_path.publish(latest);
        Ok(state)
    }

    /// The replication mode this instance runs now.
    pub fn replication_mode(&self) -> Arc<dyn ReplicationMode> {
        match self.replication.mode() {
            ReplicationType::Oplog => self.modes.oplog.clone(),
            ReplicationType::File => self.modes.file.clone(),
        }
    }

    /// Turns this replica into a primary: it stops following, starts a new term (`term`, which
    /// must be above the node's, or the next one) and a new history that records where it
    /// branched from the old one, and accepts writes. Persisted across restarts. Returns the
    /// new chain and term.
    pub fn promote(&self, term: Option<u64>) -> Result<(Vec<crate::meta::HistoryLink>, u64)> {
        let current = self.meta.term()?;
        if let Some(t) = term.filter(|t| *t <= current) {
            return Err(ServerError::Refused(format!(
                "promotion to term {t} refused: this node is already at term {current}"
            )));
        }
        let new_term = term.unwrap_or(current + 1);
        self.replication.set_target(None);
        let owner = self.new_owner();
        let chain = self.under_gate(owner, || {
            self.meta.raise_term(new_term)?;
            self.replication.raise_term(new_term);
            let chain = self
                .meta
                .branch(&self.instance_id, self.write_path.committed())?;
            self.meta.set_setting("role", Some("PRIMARY"))?;
            self.meta.set_setting("primary", None)?;
            self.set_replica(false);
            Ok(chain)
        })?;
        self.fenced.store(false, Ordering::Release);
        tracing::info!(instance = %self.instance_id, term = new_term, history = ?chain.last(), "promoted to PRIMARY");
        Ok((chain, new_term))
    }

    /// The node's replication term.
    pub fn term(&self) -> u64 {
        self.replication.term()
    }

    /// Stores `term` durably when it is above the node's (a replica adopting its primary's).
    pub fn adopt_term(&self, term: u64) -> Result<()> {
        if term > self.term() {
            let stored = self.meta.raise_term(term)?;
            self.replication.raise_term(stored);
        }
        Ok(())
    }

    /// A primary that learnt of a higher term (another node was promoted) stops accepting
    /// writes at once and ends the streams it serves; it stays fenced (refusing writes, following
    /// nobody) until it is pointed at the new primary or promoted again.
    pub fn step_down(&self, term: u64, why: &str) -> Result<()> {
        self.adopt_term(term)?;
        if self.is_replica() {
            return Ok(());
        }
        let owner = self.new_owner();
        self.under_gate(owner, || {
            self.set_replica(true);
            self.fenced.store(true, Ordering::Release);
            Ok(())
        })?;
        self.replication.set_synced(false);
        self.replication.end_streams();
        tracing::warn!(instance = %self.instance_id, term, why, "stepped down: writes refused until this node follows the new primary");
        Ok(())
    }

    /// Raises this node's term to `term` (which must be above it) without a promotion: the proxy
    /// does it to its chosen primary when another node was promoted behind its back, so that the
    /// chosen one outranks it. A primary ends the streams it serves, so that its replicas
    /// reconnect and adopt the new term.
    pub fn raise_term_to(&self, term: u64) -> Result<u64> {
        let current = self.term();
        if term <= current {
            return Err(ServerError::Refused(format!(
                "term {term} refused: this node is already at term {current}"
            )));
        }
        let owner = self.new_owner();
        self.under_gate(owner, || self.adopt_term(term))?;
        if !self.is_replica() {
            self.replication.end_streams();
        }
        tracing::warn!(instance = %self.instance_id, term, "term raised");
        Ok(term)
    }

    /// True while this node stepped down by itself and follows nobody yet.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Where this instance reaches instance `id` as its primary, per its own `config.json`.
    pub fn peer_replication_addr(&self, id: &str) -> Option<&str> {
        self.peer_addresses.get(id).map(String::as_str)
    }

    /// Makes this instance a replica of `primary` (host:port), persisted across restarts. It
    /// waits for an open write transaction to end (the writer gate), so nothing commits locally
    /// after the switch, and ends the streams it served as a primary.
    pub fn follow(&self, primary: &str) -> Result<()> {
        let owner = self.new_owner();
        self.under_gate(owner, || {
            self.meta.set_setting("role", Some("REPLICA"))?;
            self.meta.set_setting("primary", Some(primary))?;
            self.set_replica(true);
            Ok(())
        })?;
        self.fenced.store(false, Ordering::Release);
        self.replication.end_streams();
        self.replication.set_target(Some(primary.to_string()));
        tracing::info!(instance = %self.instance_id, %primary, "following a new primary");
        Ok(())
    }

    /// Drops oplog entries beyond `maxEntries` or older than `retentionDays` (at most `step`
    /// per file per call, so the writer gate is held briefly); returns the new pruning floor.
    pub fn prune_oplog(&self, step: u64) -> Result<u64> {
        let committed = self.write_path.committed();
        let by_count = committed.saturating_sub(self.oplog_limits.max_entries);
        let before_ms = now_ms()
            .saturating_sub((self.oplog_limits.retention_days as i64).saturating_mul(86_400_000));
        let sources = self.oplog_sources()?;
        let mut by_time = 0;
        for source in &sources {
            by_time = by_time.max(store::last_seq_before(&source.conn, before_ms)?);
        }
        let floor = self.meta.pruned_through()?;
        let through = by_count.max(by_time).min(floor.saturating_add(step));
        if through <= floor {
            return Ok(floor);
        }
        // Pruning waits for no one: when a long write holds the gate, it tries again later.
        let owner = self.new_owner();
        self.write_path
            .acquire_for(owner, Duration::from_millis(20))?;
        let _release = GateRelease(&self.write_path, owner);
        self.prune_through(&sources, through)
    }

    /// Raises the pruning floor first (durably), then deletes; a failure in between leaves a
    /// floor that is merely conservative.
    fn prune_through(&self, sources: &[Source], through: u64) -> Result<u64> {
        self.meta.set_pruned_through(through)?;
        for source in sources {
            crate::catalog::as_internal(|| store::prune_file(&source.conn, through, i64::MIN))?;
        }
        Ok(through)
    }

    /// The LokiJS `clear`: forgets every entry the instance has committed (each file keeps its
    /// newest, which anchors its position); replicas behind it will need a full sync.
    pub fn clear_oplog(&self) -> Result<u64> {
        let owner = self.new_owner();
        let through = self.write_path.committed();
        let sources = self.oplog_sources()?;
        self.under_gate(owner, || self.prune_through(&sources, through))
    }

    /// True (once) when this replica must start with a full sync: see
    /// [`lost_power_since_last_run`].
    pub fn take_resync_on_start(&self) -> bool {
        self.resync_on_start.swap(false, Ordering::AcqRel)
    }

    /// Records a graceful stop (after the final checkpoint).
    pub fn mark_clean_shutdown(&self) -> Result<()> {
        self.meta.set_setting("clean_shutdown", Some("1"))?;
        Ok(())
    }

    /// `Some(instance id)` when client writes must be refused.
    pub fn read_only_instance(&self) -> Option<String> {
        self.read_only
            .load(Ordering::Acquire)
            .then(|| self.instance_id.clone())
    }

    /// True on a replica.
    pub fn is_replica(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Switches between primary (writes accepted) and replica.
    pub fn set_replica(&self, replica: bool) {
        self.read_only.store(replica, Ordering::Release);
        self.write_path.lease().set_primary(!replica);
    }

    /// `POST /replication/lease`: grants this primary a write lease of `lease_ms` sent at
    /// `sent_at_ms` (the proxy's clock) for `term`, which must be this node's; the first grant
    /// makes leases enforced on this node for good. Returns the time left.
    pub fn grant_lease(&self, term: u64, lease_ms: u64, sent_at_ms: i64) -> Result<Duration> {
        let refused = |r: LeaseRefusal| ServerError::Refused(format!("lease refused: {r}"));
        let own = self.term();
        if term != own {
            return Err(refused(LeaseRefusal::Term { asked: term, own }));
        }
        let first = !self.write_path.lease().required();
        let left = self
            .write_path
            .lease()
            .grant(lease_ms, sent_at_ms, now_ms())
            .map_err(refused)?;
        if first {
            self.meta.set_setting(LEASE_REQUIRED_SETTING, Some("1"))?;
        }
        Ok(left)
    }

    /// True when this node would accept a client write now: a primary, not fenced, and
    /// holding its lease where leases are enforced.
    pub fn accepts_writes(&self) -> bool {
        !self.is_replica() && self.write_path.lease().allows_writes()
    }

    /// A fresh owner id for the writer gate.
    pub fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.catalog.dir().to_path_buf()
    }

    /// The highest sequence stored anywhere (or the pruning floor).
    pub fn latest_on_disk(&self) -> Result<u64> {
        let mut latest = self.meta.max_seq()?.max(self.meta.pruned_through()?);
        for source in self.oplog_sources()? {
            latest = latest.max(store::max_seq(&source.conn)?);
        }
        Ok(latest)
    }

    /// One open connection per oplog file: the meta file and every database.
    pub fn oplog_sources(&self) -> Result<Vec<Source>> {
        let mut sources = vec![Source {
            db: String::new(),
            conn: Meta::open_reader(&self.data_dir(), self.write_path.committed_handle())?,
        }];
        for name in self.catalog.names() {
            let db = self.catalog.get(&name)?;
            sources.push(Source {
                db: name,
                conn: db.lease()?,
            });
        }
        Ok(sources)
    }

    /// CREATE DATABASE on a primary: the event is logged, then the file made, under the gate.
    pub fn create_database(&self, owner: u64, name: &str, if_not_exists: bool) -> Result<bool> {
        crate::catalog::validate_name(name)?;
        self.check_database_owner(name)?;
        self.write_path.lease().check_write()?;
        self.under_gate(owner, || {
            self.write_path.lease().check_write_holding_gate()?;
            if self.catalog.get(name).is_ok() {
                return if if_not_exists {
                    Ok(false)
                } else {
                    Err(ServerError::DatabaseExists(name.to_string()))
                };
            }
            // Published before the file operation: if that fails, the committed event still
            // owns its sequence number (start-up reconciliation makes the file match it).
            let seq = self.meta.record_database_event(name, Op::CreateDatabase)?;
            self.publish_meta_event(seq)?;
            self.catalog.create(name, false)?;
            Ok(true)
        })
    }

    /// DROP DATABASE on a primary: the event is logged, then the files removed, under the gate.
    pub fn drop_database(&self, owner: u64, name: &str, if_exists: bool) -> Result<bool> {
        self.check_database_owner(name)?;
        self.write_path.lease().check_write()?;
        self.under_gate(owner, || {
            self.write_path.lease().check_write_holding_gate()?;
            if self.catalog.get(name).is_err() {
                return if if_exists {
                    Ok(false)
                } else {
                    Err(ServerError::UnknownDatabase(name.to_string()))
                };
            }
            let seq = self.meta.record_database_event(name, Op::DropDatabase)?;
            self.publish_meta_event(seq)?;
            self.catalog.drop_database(name, true)?;
            Ok(true)
        })
    }

    /// MULTI_PRIMARY: CREATE/DROP DATABASE run on the owner of `DB:<name>` only (the other
    /// masters apply its event from its stream).
    fn check_database_owner(&self, name: &str) -> Result<()> {
        let database = dirkdb_core::rendezvous::ObjectRef::database(name);
        self.settings
            .ownership
            .check(&database)
            .map_err(ServerError::Refused)
    }

    /// Publishes the meta file's entry `seq` (with the backlog) under the gate.
    fn publish_meta_event(&self, seq: u64) -> Result<()> {
        let entries = self.meta.entries_after(seq.saturating_sub(1), 1)?;
        self.write_path.publish_entries(entries);
        self.write_path.publish(seq);
        Ok(())
    }

    /// Runs `f` holding the writer gate; gives it back unless `owner` held it already (an open
    /// transaction of the same session).
    pub fn under_gate<T>(&self, owner: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let held_before = self.write_path.holds(owner);
        self.write_path.acquire(owner)?;
        // Released even if `f` panics: a gate left held would stop every writer.
        let _release = (!held_before).then(|| GateRelease(&self.write_path, owner));
        f()
    }
}

/// A replica applies with `synchronous=NORMAL` across several files: a process crash loses
/// nothing, but a power loss or OS crash could lose one file's newest commits while another
/// file's later ones survive, leaving a hole its position does not show. So when the last run
/// did not stop cleanly and the machine has rebooted since (the kernel's boot id changed), the
/// replica starts with a full sync. Records this run's boot id and marks it not yet stopped.
fn lost_power_since_last_run(meta: &Meta) -> Result<bool> {
    let boot = boot_id();
    let unclean = meta.setting("clean_shutdown")?.as_deref() == Some("0");
    let rebooted =
        matches!((meta.setting("boot_id")?, &boot), (Some(old), Some(now)) if &old != now);
    meta.set_setting("boot_id", boot.as_deref())?;
    meta.set_setting("clean_shutdown", Some("0"))?;
    if unclean && rebooted {
        tracing::warn!(
            "the machine restarted after an unclean stop: this replica will resync fully"
        );
    }
    Ok(unclean && rebooted)
}

/// The kernel's id of this boot (with the `failure-injection` feature, `DIRKDB_BOOT_ID`
/// overrides it, for tests).
fn boot_id() -> Option<String> {
    crate::failure_injection::boot_id()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())
        .map(|s| s.trim().to_string())
}

struct GateRelease<'a>(&'a WritePath, u64);

impl Drop for GateRelease<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Finishes CREATE/DROP DATABASE operations a crash interrupted, and starts tracking databases
/// of data directories written before the meta file existed.
fn reconcile_database_files(meta: &Meta, dir: &Path) -> Result<()> {
    let on_disk = Catalog::files_on_disk(dir)?;
    let Some(live) = meta.live_databases()? else {
        meta.track_databases(&on_disk)?;
        return Ok(());
    };
    for name in on_disk.iter().filter(|n| !live.contains(n)) {
        tracing::warn!(database = %name, "removing the files of a database dropped before a crash");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.db{suffix}")));
        }
    }
    for name in live.iter().filter(|n| !on_disk.contains(n)) {
        tracing::warn!(database = %name, "creating a database whose creation a crash interrupted");
        rusqlite::Connection::open(dir.join(format!("{name}.db")))?;
    }
    Ok(())
}
