//! An instance's storage: its databases ([`Catalog`]), its meta file ([`Meta`]) and the writer
//! gate with the committed sequence ([`WritePath`]), and what changes them together (CREATE and
//! DROP DATABASE, pruning the oplog). Replication and the sessions build on it; it knows
//! nothing of either.
//!
//! Opening it brings the data directory to a consistent state before any client comes: the meta
//! file's set of live databases is authoritative (a CREATE or DROP DATABASE interrupted by a
//! crash between its event and its file operation is finished here), every database gets its
//! oplog table and capture triggers, and the committed sequence is the highest one on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::clock::now_ms;
use dirkdb_core::config::{ClusterConfig, InstanceConfig, OplogConfig, Role, Synchronous};

use crate::catalog::{Catalog, ConnectionSettings};
use crate::error::{Result, ServerError};
use crate::lease::{Lease, LEASE_REQUIRED_SETTING};
use crate::meta::Meta;
use crate::oplog::store::{self, Source};
use crate::oplog::Op;
use crate::ownership::Ownership;
use crate::write_path::WritePath;

/// One instance's databases, meta file and writer gate.
pub struct Storage {
    /// This instance's id from `config.json`.
    pub instance_id: String,
    /// Its databases.
    pub catalog: Catalog,
    /// Its meta file.
    pub meta: Meta,
    /// The writer gate and committed sequence.
    pub write_path: Arc<WritePath>,
    /// How its SQLite connections are opened.
    pub settings: ConnectionSettings,
    /// Oplog bounds.
    pub oplog_limits: OplogConfig,
    next_owner: AtomicU64,
}

impl Storage {
    /// Opens the data directory of `instance`, restoring first the meta settings `restored`
    /// (a node's own settings saved across an interrupted full-sync install).
    pub fn open(
        instance: &InstanceConfig,
        config: &ClusterConfig,
        restored: &[(String, Option<String>)],
    ) -> Result<Storage> {
        let data_directory = &instance.data_directory;
        std::fs::create_dir_all(data_directory)?;
        let busy_timeout = Duration::from_millis(config.limits.busy_timeout_ms);
        let committed = Arc::new(AtomicU64::new(0));
        let sync = config.storage.synchronous.as_str();
        let meta = Meta::open(data_directory, committed.clone(), sync)?;
        for (key, value) in restored {
            meta.set_setting(key, value.as_deref())?;
        }
        meta.history(&instance.id)?;
        reconcile_database_files(&meta, data_directory)?;
        let role = role_on_disk(&meta, instance.role)?;
        let lease_required = meta.setting(LEASE_REQUIRED_SETTING)?.is_some();
        let mut lease = Lease::new(lease_required, role == Role::Primary);
        if config.failover.majority_lease {
            lease = lease.with_majority(config.instances.len(), config.failover.lease());
        }
        let lease = Arc::new(lease);
        let group_commit = config.storage.uses_group_commit();
        let settings = ConnectionSettings {
            // Group commit syncs the WAL itself, once for the commits of a group
            // (`write_path`'s doc); SQLite's NORMAL writes it without syncing.
            synchronous: if group_commit {
                Synchronous::Normal
            } else {
                config.storage.synchronous
            },
            busy_timeout,
            committed: committed.clone(),
            lease: lease.clone(),
            ownership: Arc::new(restored_ownership(
                &meta,
                &instance.id,
                config.master_ids(),
            )?),
        };
        if config.replication.file_replaced_by_oplog {
            tracing::warn!(instance = %instance.id, "{}", dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY);
        }
        let catalog = Catalog::open(data_directory, settings.clone())?;
        let storage = Storage {
            instance_id: instance.id.clone(),
            catalog,
            meta,
            write_path: Arc::new(
                WritePath::new(committed, busy_timeout)
                    .with_lease(lease)
                    .with_group_commit(group_commit),
            ),
            settings,
            oplog_limits: config.replication.oplog.clone(),
            next_owner: AtomicU64::new(1),
        };
        let latest = storage.latest_on_disk()?;
        storage.write_path.publish(latest);
        Ok(storage)
    }

    /// A fresh owner id for the writer gate.
    pub fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.catalog.dir().to_path_buf()
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

    /// Records a graceful stop (after the final checkpoint).
    pub fn mark_clean_shutdown(&self) -> Result<()> {
        self.meta.set_setting("clean_shutdown", Some("1"))?;
        Ok(())
    }
}

/// The role this node last had (a promoted replica stays a primary across restarts), else
/// `configured`, the one in `config.json`.
pub(crate) fn role_on_disk(meta: &Meta, configured: Role) -> Result<Role> {
    Ok(match meta.setting("role")?.as_deref() {
        Some("PRIMARY") => Role::Primary,
        Some("REPLICA") => Role::Replica,
        _ => configured,
    })
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

/// This master's ownership view at start: lapsed at its stored term when it ever had one
/// (see `ownership.rs`).
fn restored_ownership(meta: &Meta, instance: &str, masters: Vec<String>) -> Result<Ownership> {
    let ownership = Ownership::new(instance, masters);
    let stored = meta.setting(crate::ownership::OWNERSHIP_TERM_SETTING)?;
    if let Some(term) = stored.and_then(|t| t.parse::<u64>().ok()) {
        if ownership.active() {
            ownership.restore(term);
        }
    }
    Ok(ownership)
}
