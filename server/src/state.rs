//! What every session, replication task and admin request of one instance shares: the
//! [`Node`] (its storage, role, term and replication bookkeeping, which `ServerState` derefs
//! to), the replication modes, what one client may ask, and the counters of `/metrics`.

use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::{ClusterConfig, InstanceConfig, LimitsConfig};
use dirkdb_core::conn_limit::ClientLimits;
use dirkdb_core::in_flight::InFlight;

use crate::error::Result;
use crate::replication::file_mode::FileMode;
use crate::replication::mode::{Modes, ReplicationMode};
use crate::replication::node::Node;
use crate::replication::oplog_mode::OplogMode;

/// Everything the sessions of one instance share.
pub struct ServerState {
    /// Its storage, role, term and replication bookkeeping.
    pub node: Arc<Node>,
    /// The replication modes (one runs at a time: `replication.mode()`).
    pub modes: Arc<Modes>,
    /// What one client may ask.
    pub limits: LimitsConfig,
    /// Bytes held by the large statements running now (`limits.maxInFlightStatementBytes`).
    pub in_flight: Arc<InFlight>,
    /// `limits.maxConnectionsPerAddress` and the idle timeouts (reloaded with the file).
    pub client_limits: Arc<ClientLimits>,
    /// Counters for `/metrics`.
    pub metrics: Arc<ServerMetrics>,
}

impl Deref for ServerState {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl ServerState {
    /// Opens the data directory of `instance` (see [`Node::open`]).
    pub fn open(instance: &InstanceConfig, config: &ClusterConfig) -> Result<ServerState> {
        let node = Node::open(instance, config)?;
        let file = FileMode::new(
            Duration::from_secs(config.replication.interval_seconds.max(1)),
            config.replication.page_deltas,
        );
        let limits = config.limits.clone();
        Ok(ServerState {
            node: Arc::new(node),
            modes: Arc::new(Modes::new(Arc::new(OplogMode::default()), Arc::new(file))),
            in_flight: InFlight::new(limits.max_in_flight_statement_bytes),
            client_limits: ClientLimits::new(config),
            limits,
            metrics: Arc::default(),
        })
    }

    /// The replication mode this instance runs now.
    pub fn replication_mode(&self) -> Arc<dyn ReplicationMode> {
        self.modes.get(self.replication.mode())
    }
}

/// Connection and statement counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    open: AtomicI64,
    refused: AtomicU64,
    statements: AtomicU64,
    errors: AtomicU64,
    shaped: AtomicU64,
}

impl ServerMetrics {
    /// A client connected (`+1`) or left (`-1`).
    pub fn connection(&self, delta: i64) {
        self.open.fetch_add(delta, Ordering::Relaxed);
    }
    /// A client was refused over the connection limit.
    pub fn refused_one(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    /// A statement was answered, with an error or not.
    pub fn answered(&self, error: bool) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Client connections open.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Clients refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Statements answered.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
    /// Statements answered with an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// A client's write ran from its cached shape (`statement_shape`).
    pub fn shaped_one(&self) {
        self.shaped.fetch_add(1, Ordering::Relaxed);
    }
    /// Client writes run from a cached shape.
    pub fn shaped(&self) -> u64 {
        self.shaped.load(Ordering::Relaxed)
    }
}
