//! The one interface both replication modes implement, so the listener, the follower, the
//! admin API and the proxy's triggers never branch on the mode: a third mode is a new
//! implementation of [`ReplicationMode`], not new branches everywhere.
//!
//! * [`super::oplog_mode::OplogMode`]: the row-level stream of the primary's oplog (partial or full sync, then
//!   entries), in [`super::sender`] and [`super::follower`]'s apply loop.
//! * [`super::file_mode::FileMode`]: consistent copies of changed database files, sent as page
//!   deltas.
//!
//! Both run on the same connection (`DIRK REPLICATION;`, then the [`super::protocol`] units);
//! the secondary's `Hello` names its mode and a primary in another mode refuses it, so the two
//! never mix. Switching a running cluster (`POST /replication/mode`) ends every stream; they
//! reconnect in the new mode, and a FILE-mode secondary going back to OPLOG asks for a full sync
//! (its copies were taken database by database, not at one oplog position).

use std::sync::Arc;

use async_trait::async_trait;
use dirkdb_core::config::ReplicationType;

use super::node::Node;
use super::stream::{StreamError, StreamReader, StreamWriter, Units};

/// Who connected, as its `Hello` said.
#[derive(Debug, Clone)]
pub struct Hello {
    /// The secondary's instance id.
    pub instance: String,
    /// Its history id (OPLOG).
    pub history: String,
    /// Its position.
    pub seq: u64,
    /// The highest term it has seen.
    pub term: u64,
}

/// A way of keeping secondaries equal to their primary.
#[async_trait]
pub trait ReplicationMode: Send + Sync {
    /// The mode as `config.json` names it.
    fn kind(&self) -> ReplicationType;

    /// Primary side: serves one secondary, whose `Hello` was read, until the connection ends
    /// or the streams are ended.
    async fn serve_secondary(
        &self,
        state: &Arc<Node>,
        hello: Hello,
        reader: StreamReader,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError>;

    /// Secondary side: follows the primary on one connection (its `Hello` sent) until it breaks.
    async fn follow_primary(
        &self,
        state: &Arc<Node>,
        units: &mut Units,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError>;

    /// A write to `db` was acknowledged (the proxy says so after each write): replicate it soon.
    fn database_written(&self, _db: &str) {}

    /// Whether a secondary connecting in this mode must first be fully resynced.
    fn needs_resync_on_entry(&self, _state: &Node) -> bool {
        false
    }
}

/// The implementations of [`ReplicationMode`], kept for the life of the instance; the hub's
/// `mode()` says which one runs.
pub struct Modes {
    oplog: Arc<dyn ReplicationMode>,
    file: Arc<dyn ReplicationMode>,
}

impl Modes {
    /// Row-level oplog streaming and copies of database files.
    pub fn new(oplog: Arc<dyn ReplicationMode>, file: Arc<dyn ReplicationMode>) -> Modes {
        Modes { oplog, file }
    }

    /// The implementation of `kind`.
    pub fn get(&self, kind: ReplicationType) -> Arc<dyn ReplicationMode> {
        match kind {
            ReplicationType::Oplog => self.oplog.clone(),
            ReplicationType::File => self.file.clone(),
        }
    }
}
