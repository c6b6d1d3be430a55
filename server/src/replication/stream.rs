//! What every replication stream is made of, whatever its mode: the two halves of the
//! connection, the units read from the other side on a task of their own, the errors that end a
//! stream, and the silence and term rules both sides apply (see [`super::mode`] for the modes,
//! [`super::peer_stream`] for MULTI_PRIMARY streams).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tokio::sync::mpsc;

use super::node::Node;
use super::protocol::{read_message, read_unit, Message, ProtocolError, Unit};
use crate::error::ServerError;

/// The reading half of a replication connection, whatever carries it (TCP, TLS, a test's
/// `tokio::io::duplex`).
pub(crate) type StreamReader = Box<dyn AsyncRead + Send + Unpin>;

/// The writing half of a replication connection, buffered.
pub(crate) type StreamWriter = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection broke.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Reading the oplog or taking a snapshot failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The peer went silent or misbehaved.
    #[error("{0}")]
    Peer(String),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Protocol(e.into())
    }
}

/// The units read from the primary, by a task of their own.
pub(crate) type Units = mpsc::Receiver<Result<Unit, ProtocolError>>;

/// Reads units on their own task so the main loop can wait on them and on timers safely.
pub(crate) fn spawn_reader(reader: StreamReader) -> Units {
    spawn_reader_compressed(reader, false)
}

/// [`spawn_reader`] for a stream whose `Hello` asked for compression (`offered`): a
/// `Compression` message from the primary switches the reader to its decoder and is not passed
/// on; one that was not asked for ends the stream.
pub(crate) fn spawn_reader_compressed(mut reader: StreamReader, offered: bool) -> Units {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let unit = match read_unit(&mut reader).await {
                Ok(Unit::Message(Message::Compression { algorithm })) => {
                    if offered && algorithm.eq_ignore_ascii_case(super::compression::ZSTD) {
                        reader = super::compression::receiving(reader);
                        continue;
                    }
                    Err(ProtocolError::Invalid(format!(
                        "the primary compresses with {algorithm}, which this node did not ask for \
                         (replication.compression)"
                    )))
                }
                unit => unit,
            };
            let failed = unit.is_err();
            if tx.send(unit).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The next unit, or an error when the primary stays silent for `silence` or leaves.
pub(crate) async fn next_unit(units: &mut Units, silence: Duration) -> Result<Unit, StreamError> {
    match tokio::time::timeout(silence, units.recv()).await {
        Err(_) => Err(StreamError::Peer(format!("primary silent for {silence:?}"))),
        Ok(unit) => received(unit),
    }
}

pub(crate) fn received(unit: Option<Result<Unit, ProtocolError>>) -> Result<Unit, StreamError> {
    match unit {
        None => Err(StreamError::Peer("primary closed the stream".into())),
        Some(unit) => Ok(unit?),
    }
}

/// Refuses a primary (or its message) of a lower term than this node's.
pub(crate) fn check_term(state: &Node, term: u64, what: &str) -> Result<(), StreamError> {
    let own = state.term();
    if term < own {
        return Err(StreamError::Peer(format!(
            "{what} of term {term} refused: this node is at term {own} (the primary was replaced)"
        )));
    }
    Ok(())
}

/// A send the replica does not take within the silence limit ends the stream (its receive
/// buffer is full: it is paused or cut off).
pub(crate) async fn send_within<F, E>(state: &Node, send: F) -> Result<(), StreamError>
where
    F: std::future::Future<Output = Result<(), E>>,
    StreamError: From<E>,
{
    let silence = state.replication.silence();
    match tokio::time::timeout(silence, send).await {
        Ok(result) => result.map_err(StreamError::from),
        Err(_) => Err(StreamError::Peer(format!(
            "the replica took nothing for {silence:?}"
        ))),
    }
}

/// Primary side: reads a secondary's acknowledgements and heartbeats into the hub until it
/// leaves, goes silent or shows a higher term (then this node steps down); `closed` hears why.
pub(crate) async fn read_acks<R: AsyncRead + Unpin>(
    state: Arc<Node>,
    instance: String,
    mut reader: R,
    closed: mpsc::Sender<String>,
) {
    let silence = state.replication.silence();
    loop {
        let message = match tokio::time::timeout(silence, read_message(&mut reader)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let _ = closed.send(e.to_string()).await;
                return;
            }
            Err(_) => {
                let _ = closed.send(format!("no heartbeat for {silence:?}")).await;
                return;
            }
        };
        match message {
            Message::Ack { applied, term }
            | Message::Heartbeat {
                seq: applied, term, ..
            } => {
                if term > state.term() {
                    let _ = state.step_down(term, "a replica acknowledged in a higher term");
                    let _ = closed.send(format!("replica is at term {term}")).await;
                    return;
                }
                if !state.replication.record_ack(&instance, applied, term) {
                    tracing::debug!(replica = %instance, term, "acknowledgement of another term not counted");
                }
            }
            Message::Error { message } => {
                let _ = closed.send(format!("replica reported: {message}")).await;
                return;
            }
            other => tracing::debug!(?other, "unexpected message from replica"),
        }
    }
}
