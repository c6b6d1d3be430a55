//! This instance as a member of a replicated cluster: its [`Storage`], its role (primary or
//! replica, fenced or not), its replication term and the bookkeeping of its streams
//! ([`ReplicationHub`], MULTI_PRIMARY [`Peers`]). Every replication task takes a [`Node`]; the
//! sessions reach it through `ServerState`. A `Node` derefs to its `Storage`.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::clock::now_ms;
use dirkdb_core::config::{ClusterConfig, InstanceConfig, Role};

use super::peers::Peers;
use super::ReplicationHub;
use crate::auth::ServerSecurity;
use crate::error::{Result, ServerError};
use crate::lease::{LeaseRefusal, LEASE_REQUIRED_SETTING};
use crate::meta::Meta;
use crate::storage::{role_on_disk, Storage};

/// One instance's storage, role, term and replication bookkeeping.
pub struct Node {
    /// Its databases, meta file and writer gate.
    pub storage: Storage,
    /// Replication bookkeeping and the followed primary.
    pub replication: ReplicationHub,
    /// Users, grants and this instance's cluster credentials.
    pub security: Arc<ServerSecurity>,
    /// MULTI_PRIMARY: the other masters' streams applied here (per-origin positions).
    pub peers: Peers,
    /// Where this instance reaches each other instance's replication listener, from its own
    /// `config.json` (`instances[].replicationAddress`, else `host:port`), by id.
    peer_addresses: BTreeMap<String, String>,
    read_only: AtomicBool,
    fenced: AtomicBool,
    resync_on_start: AtomicBool,
}

impl Deref for Node {
    type Target = Storage;

    fn deref(&self) -> &Storage {
        &self.storage
    }
}

impl Node {
    /// Opens the data directory of `instance` (finishing first a full-sync install a crash cut
    /// short). Its role is the one it last had (a promoted replica stays a primary across
    /// restarts), else the one in `config.json`; a replica follows the primary it was last
    /// pointed at, else the file's primary.
    pub fn open(instance: &InstanceConfig, config: &ClusterConfig) -> Result<Node> {
        let restored = super::snapshot::recover_interrupted_install(&instance.data_directory)?;
        let storage = Storage::open(instance, config, &restored)?;
        let meta = &storage.meta;
        let role = role_on_disk(meta, instance.role)?;
        let resync_on_start = role == Role::Replica && lost_power_since_last_run(meta)?;
        let target = match role {
            Role::Primary => None,
            Role::Replica => meta
                .setting("primary")?
                .or_else(|| config.primaries().next().map(|p| p.replication_addr())),
        };
        let replication = ReplicationHub::new(
            target,
            Duration::from_millis(config.replication.heartbeat_millis.max(10)),
            config.replication.kind,
        )
        .with_compression(config.replication.compression.clone());
        replication.raise_term(meta.term()?);
        replication.attach_lease(storage.settings.lease.clone());
        Ok(Node {
            replication,
            security: Arc::new(ServerSecurity::from_config(config)?),
            peers: Peers::new(config.replication.conflicts.clone()),
            peer_addresses: config
                .instances
                .iter()
                .filter(|i| i.id != instance.id)
                .map(|i| (i.id.clone(), i.replication_addr()))
                .collect(),
            read_only: AtomicBool::new(role == Role::Replica),
            fenced: AtomicBool::new(false),
            resync_on_start: AtomicBool::new(resync_on_start),
            storage,
        })
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
            let chain = self
                .meta
                .branch(&self.instance_id, self.write_path.committed())?;
            self.meta.set_setting("role", Some("PRIMARY"))?;
            self.meta.set_setting("primary", None)?;
            // No longer a replica before the new term shows: a follower stream that still runs
            // and reads the new term then sees this node is no replica, and tells its old
            // primary nothing (`follower::term_to_tell`).
            self.set_replica(false);
            self.replication.raise_term(new_term);
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

    /// True (once) when this replica must start with a full sync: see
    /// [`lost_power_since_last_run`].
    pub fn take_resync_on_start(&self) -> bool {
        self.resync_on_start.swap(false, Ordering::AcqRel)
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
