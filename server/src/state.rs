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

use dirkdb_core::config::{LimitsConfig, Role, StorageConfig};

use crate::catalog::{Catalog, ConnectionSettings};
use crate::error::{Result, ServerError};
use crate::meta::Meta;
use crate::oplog::store::{self, Source};
use crate::oplog::Op;
use crate::write_path::WritePath;

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
    /// How its SQLite connections are opened.
    pub settings: ConnectionSettings,
    read_only: AtomicBool,
    next_owner: AtomicU64,
}

impl ServerState {
    /// Opens the data directory of an instance.
    pub fn open(
        instance_id: &str,
        data_directory: &Path,
        role: Role,
        limits: LimitsConfig,
        storage: &StorageConfig,
    ) -> Result<ServerState> {
        std::fs::create_dir_all(data_directory)?;
        let committed = Arc::new(AtomicU64::new(0));
        let settings = ConnectionSettings {
            synchronous: storage.synchronous,
            busy_timeout: Duration::from_millis(limits.busy_timeout_ms),
            committed: committed.clone(),
        };
        let meta = Meta::open(
            data_directory,
            committed.clone(),
            storage.synchronous.as_str(),
        )?;
        meta.history(instance_id)?;
        reconcile_database_files(&meta, data_directory)?;
        let catalog = Catalog::open(data_directory, settings.clone())?;
        let state = ServerState {
            instance_id: instance_id.to_string(),
            catalog,
            meta,
            write_path: Arc::new(WritePath::new(
                committed,
                Duration::from_millis(limits.busy_timeout_ms),
            )),
            limits,
            settings,
            read_only: AtomicBool::new(role == Role::Replica),
            next_owner: AtomicU64::new(1),
        };
        let latest = state.latest_on_disk()?;
        state.write_path.publish(latest);
        Ok(state)
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
        self.under_gate(owner, || {
            if self.catalog.get(name).is_ok() {
                return if if_not_exists {
                    Ok(false)
                } else {
                    Err(ServerError::DatabaseExists(name.to_string()))
                };
            }
            let seq = self.meta.record_database_event(name, Op::CreateDatabase)?;
            self.catalog.create(name, false)?;
            self.write_path.publish(seq);
            Ok(true)
        })
    }

    /// DROP DATABASE on a primary: the event is logged, then the files removed, under the gate.
    pub fn drop_database(&self, owner: u64, name: &str, if_exists: bool) -> Result<bool> {
        self.under_gate(owner, || {
            if self.catalog.get(name).is_err() {
                return if if_exists {
                    Ok(false)
                } else {
                    Err(ServerError::UnknownDatabase(name.to_string()))
                };
            }
            let seq = self.meta.record_database_event(name, Op::DropDatabase)?;
            self.catalog.drop_database(name, true)?;
            self.write_path.publish(seq);
            Ok(true)
        })
    }

    /// Runs `f` holding the writer gate; gives it back unless `owner` held it already (an open
    /// transaction of the same session).
    pub fn under_gate<T>(&self, owner: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let held_before = self.write_path.holds(owner);
        self.write_path.acquire(owner)?;
        let out = f();
        if !held_before {
            self.write_path.release(owner);
        }
        out
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
