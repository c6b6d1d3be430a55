//! The one interface both replication modes implement, so the listener, the follower, the
//! admin API and the proxy's triggers never branch on the mode: a third mode is a new
//! implementation of [`ReplicationMode`], not new branches everywhere.
//!
//! * [`OplogMode`]: the row-level stream of the primary's oplog (partial or full sync, then
//!   entries), in [`super::sender`] and [`super::follower`]'s apply loop.
//! * [`super::file_mode::FileMode`]: consistent copies of changed database files, sent as page
//!   deltas.
//!
//! Both run on the same connection (`DIRK REPLICATION;`, then the [`super::protocol`] units);
//! the secondary's `Hello` names its mode and a primary in another mode refuses it, so the two
//! never mix. Switching a running cluster (`POST /replication/mode`) ends every stream; they
//! reconnect in the new mode, and a FILE-mode secondary going back to OPLOG asks for a full sync
//! (its copies were taken database by database, not at one oplog position).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dirkdb_core::config::ReplicationType;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter};

use super::apply::Applier;
use super::follower::{oplog_follow, Units};
use super::sender::{oplog_stream, StreamError};
use crate::state::ServerState;

/// The reading half of a replication connection, whatever carries it (TCP, TLS, a test's
/// `tokio::io::duplex`).
pub(crate) type StreamReader = Box<dyn AsyncRead + Send + Unpin>;

/// The writing half of a replication connection, buffered.
pub(crate) type StreamWriter = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

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
        state: &Arc<ServerState>,
        hello: Hello,
        reader: StreamReader,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError>;

    /// Secondary side: follows the primary on one connection (its `Hello` sent) until it breaks.
    async fn follow_primary(
        &self,
        state: &Arc<ServerState>,
        units: &mut Units,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError>;

    /// A write to `db` was acknowledged (the proxy says so after each write): replicate it soon.
    fn database_written(&self, _db: &str) {}

    /// Whether a secondary connecting in this mode must first be fully resynced.
    fn needs_resync_on_entry(&self, _state: &ServerState) -> bool {
        false
    }
}

/// Row-level replication of the oplog.
#[derive(Default)]
pub struct OplogMode {
    applier: Arc<Mutex<Applier>>,
}

#[async_trait]
impl ReplicationMode for OplogMode {
    fn kind(&self) -> ReplicationType {
        ReplicationType::Oplog
    }

    async fn serve_secondary(
        &self,
        state: &Arc<ServerState>,
        hello: Hello,
        reader: StreamReader,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError> {
        oplog_stream(
            state,
            &hello.instance,
            &hello.history,
            hello.seq,
            reader,
            writer,
        )
        .await
    }

    async fn follow_primary(
        &self,
        state: &Arc<ServerState>,
        units: &mut Units,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError> {
        oplog_follow(state, units, &self.applier, writer).await
    }

    fn needs_resync_on_entry(&self, state: &ServerState) -> bool {
        // Copies from FILE mode stand at no single oplog position.
        state
            .meta
            .setting(super::file_mode::FILE_COPIES_SETTING)
            .ok()
            .flatten()
            .is_some()
    }
}
