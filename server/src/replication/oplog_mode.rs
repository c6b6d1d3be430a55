//! OPLOG mode: the row-level stream of the primary's oplog (partial or full sync, then
//! entries), in [`super::sender`] (primary side) and [`super::follower`]'s apply loop
//! (secondary side), behind [`ReplicationMode`].

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dirkdb_core::config::ReplicationType;

use super::apply::Applier;
use super::follower::oplog_follow;
use super::mode::{Hello, ReplicationMode};
use super::node::Node;
use super::sender::oplog_stream;
use super::stream::{StreamError, StreamReader, StreamWriter, Units};

/// Row-level replication of the oplog.
#[derive(Default)]
pub(crate) struct OplogMode {
    applier: Arc<Mutex<Applier>>,
}

#[async_trait]
impl ReplicationMode for OplogMode {
    fn kind(&self) -> ReplicationType {
        ReplicationType::Oplog
    }

    async fn serve_secondary(
        &self,
        state: &Arc<Node>,
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
        state: &Arc<Node>,
        units: &mut Units,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError> {
        oplog_follow(state, units, &self.applier, writer).await
    }

    fn needs_resync_on_entry(&self, state: &Node) -> bool {
        // Copies from FILE mode stand at no single oplog position.
        state
            .meta
            .setting(super::file_mode::FILE_COPIES_SETTING)
            .ok()
            .flatten()
            .is_some()
    }
}
