//! The primary's side of one replica's stream.
//!
//! After the replica's `Hello`, the sender chooses the sync: partial when the replica's position
//! lies in a history this primary shares (its chain), at or above the oplog's pruning floor and
//! not ahead of the primary; full otherwise. Then it loops: read the committed sequence C, send
//! the entries in (cursor, C] in batches, and when there are none wait for the next commit or the
//! heartbeat period. Reading up to C only (C is published after the commit) guarantees that no
//! entry of another database file can still be invisible when a later one is sent. A separate
//! task reads the replica's acks and heartbeats into the [`super::ReplicationHub`].
//!
//! Terms: every message carries this primary's term; a replica whose `Hello` (or any later
//! message) shows a higher term proves that another node was promoted since, so this primary
//! steps down at once ([`Node::step_down`]) instead of serving it. Silence is measured
//! on what the replica sends: no ack or heartbeat for [`super::ReplicationHub::silence`] ends the
//! stream, and so does a send the replica does not take within that time (a paused replica).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::mode::{Hello, Modes};
use super::node::Node;
use super::protocol::{read_message, write_chunk, write_message, Message};
use super::snapshot;
use super::stream::{read_acks, send_within, StreamError, StreamReader, StreamWriter};
use crate::error::ServerError;
use crate::meta::position_in_chain;
use crate::oplog::store::{self, Filter, Source};
use crate::oplog::Entry;
use dirkdb_core::clock::now_ms;

/// Entries per message at most.
const BATCH: usize = 1000;
/// Snapshot chunk size.
const CHUNK: usize = 1024 * 1024;

/// Serves one secondary until its connection ends, in the mode this primary replicates in.
pub(crate) async fn serve_replica(
    state: Arc<Node>,
    modes: &Modes,
    mut reader: StreamReader,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    peer: String,
) {
    let (hello, mode, compression) = match read_message(&mut reader).await {
        Ok(Message::Hello {
            instance,
            history,
            seq,
            mode,
            term,
            compression,
        }) => (
            Hello {
                instance,
                history,
                seq,
                term,
            },
            mode,
            compression,
        ),
        Ok(Message::PeerHello {
            instance,
            origin,
            history,
            seq,
            crc,
        }) => {
            let hello = super::peers::PeerHello {
                instance,
                origin,
                history,
                seq,
                crc,
            };
            return super::peer_stream::serve_peer(state, hello, reader, writer, peer).await;
        }
        other => {
            tracing::warn!(%peer, ?other, "replication stream did not start with Hello");
            // A Hello this primary cannot read (a mode it does not know) gets the reason.
            if let Err(e) = other {
                let message = format!(
                    "the stream must start with a Hello this primary reads: {e} (replication.type)"
                );
                let mut writer = writer;
                let _ = write_message(&mut writer, &Message::Error { message }).await;
            }
            return;
        }
    };
    let level = super::compression::agreed(&state.replication.compression, compression.as_deref());
    let writer = match super::compression::sending(writer, level, &state.replication.sent).await {
        Ok(writer) => writer,
        Err(e) => {
            tracing::info!(replica = %hello.instance, %peer, error = %e, "replication stream ended");
            return;
        }
    };
    if let Some(level) = level {
        tracing::info!(replica = %hello.instance, level, "replication stream compressed with zstd");
    }
    let mut writer: StreamWriter = BufWriter::with_capacity(256 * 1024, writer);
    if !state.security.admits_replica(&hello.instance) {
        let message = format!(
            "`{}` is not an instance of this primary's config.json: replication refused",
            hello.instance
        );
        tracing::warn!(replica = %hello.instance, %peer, "refused: {message}");
        let _ = write_message(&mut writer, &Message::Error { message }).await;
        return;
    }
    let replication = modes.get(state.replication.mode());
    let ours = replication.kind();
    if mode != ours {
        let message = format!(
            "this primary replicates in {} mode, not {} (replication.type)",
            ours.as_str(),
            mode.as_str()
        );
        tracing::info!(replica = %hello.instance, %peer, "refused: {message}");
        let _ = write_message(&mut writer, &Message::Error { message }).await;
        return;
    }
    if hello.term > state.term() {
        let message = format!(
            "this node's term {} is behind the replica's {}: another node was promoted; stepping down",
            state.term(),
            hello.term
        );
        tracing::warn!(replica = %hello.instance, %peer, "{message}");
        if let Err(e) = state.step_down(hello.term, "a replica showed a higher term") {
            tracing::error!(error = %e, "could not step down");
        }
        let _ = write_message(&mut writer, &Message::Error { message }).await;
        let _ = writer.flush().await;
        return;
    }
    let (instance, hub) = (hello.instance.clone(), &state.replication);
    hub.replica_connected(&instance, &peer);
    tracing::info!(replica = %instance, %peer, history = %hello.history, seq = hello.seq, mode = ours.as_str(), "replica connected");
    let result = replication
        .serve_secondary(&state, hello, reader, &mut writer)
        .await;
    let error = result.err().map(|e| e.to_string());
    if let Some(e) = &error {
        let _ = write_message(&mut writer, &Message::Error { message: e.clone() }).await;
    }
    tracing::info!(replica = %instance, error = ?error, "replica disconnected");
    hub.replica_disconnected(&instance, error);
}

/// OPLOG mode, primary side: a partial or full sync, then committed entries as they appear.
pub(crate) async fn oplog_stream<R, W>(
    state: &Arc<Node>,
    instance: &str,
    history: &str,
    seq: u64,
    reader: R,
    writer: &mut W,
) -> Result<(), StreamError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let chain = state
        .meta
        .history(&state.instance_id)
        .map_err(ServerError::from)?;
    let committed = state.write_path.committed();
    let floor = state.meta.pruned_through().map_err(ServerError::from)?;
    let partial = seq <= committed && seq >= floor && position_in_chain(&chain, history, seq);
    let mut cursor = if partial {
        let term = state.term();
        write_message(
            writer,
            &Message::Continue {
                chain,
                from: seq,
                term,
            },
        )
        .await?;
        seq
    } else {
        full_sync(state, instance, chain, writer).await?
    };
    state
        .replication
        .replica_syncing(instance, !partial, cursor);
    let (closed_tx, mut closed) = mpsc::channel::<String>(1);
    let acks = tokio::spawn(read_acks(
        state.clone(),
        instance.to_string(),
        reader,
        closed_tx,
    ));
    let result = stream_entries(state, instance, &mut cursor, writer, &mut closed).await;
    acks.abort();
    result
}

async fn stream_entries<W: AsyncWrite + Unpin>(
    state: &Arc<Node>,
    instance: &str,
    cursor: &mut u64,
    writer: &mut W,
    closed: &mut mpsc::Receiver<String>,
) -> Result<(), StreamError> {
    let mut commits = state.write_path.subscribe();
    let mut ended = state.replication.watch_streams();
    let mut sources: Option<(u64, Vec<Source>)> = None;
    let heartbeat = state.replication.heartbeat;
    let mut last_sent = Instant::now();
    loop {
        let upto = state.write_path.committed();
        if upto > *cursor {
            let batch = match state.write_path.from_backlog(*cursor, upto, BATCH) {
                Some(batch) => batch,
                None => {
                    let (batch, kept) =
                        read_batch(state.clone(), sources.take(), *cursor, upto).await?;
                    sources = Some(kept);
                    batch
                }
            };
            if let Some(last) = batch.last() {
                *cursor = last.seq;
                send_within(state, send_entries(state, instance, batch, writer)).await?;
                last_sent = Instant::now();
                continue;
            }
        }
        let wait = heartbeat.saturating_sub(last_sent.elapsed());
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(wait) => {
                let beat = Message::Heartbeat { seq: state.write_path.committed(), ts: now_ms(), term: state.term() };
                send_within(state, write_message(writer, &beat)).await?;
                last_sent = Instant::now();
            }
            why = closed.recv() => {
                return Err(StreamError::Peer(why.unwrap_or_else(|| "replica left".into())));
            }
            _ = ended.changed() => {
                return Err(StreamError::Peer("this instance is no longer a primary".into()));
            }
        }
    }
}

async fn send_entries<W: AsyncWrite + Unpin>(
    state: &Node,
    instance: &str,
    entries: Vec<Entry>,
    writer: &mut W,
) -> Result<(), StreamError> {
    let count = entries.len() as u64;
    let last = entries.last().map(|e| e.seq).unwrap_or(0);
    let oldest = entries.first().map(|e| e.ts).unwrap_or_else(now_ms);
    let message = Message::Entries {
        entries,
        term: state.term(),
    };
    let bytes = serde_json::to_vec(&message)
        .map(|v| v.len() as u64)
        .unwrap_or(0);
    write_message(writer, &message).await?;
    state
        .replication
        .record_sent(instance, bytes, count, Some((last, oldest)));
    Ok(())
}

/// Reads the entries in `(after, upto]`, reusing the open sources while the catalog is
/// unchanged (its generation moves with every CREATE, DROP or reload, even of the same name).
/// Fails on a gap (a pruned or corrupt oplog) so the replica resyncs.
async fn read_batch(
    state: Arc<Node>,
    sources: Option<(u64, Vec<Source>)>,
    after: u64,
    upto: u64,
) -> Result<(Vec<Entry>, (u64, Vec<Source>)), StreamError> {
    tokio::task::spawn_blocking(move || {
        let generation = state.catalog.generation();
        let sources = match sources {
            Some((known, open)) if known == generation => open,
            _ => state.oplog_sources()?,
        };
        // A corrupt entry stops the stream, but only after everything before it was sent.
        let batch = match store::merge(&sources, Filter::Range { after, to: upto }, BATCH) {
            Err(store::StoreError::Corrupt { seq, .. }) if seq > after + 1 => {
                store::merge(&sources, Filter::Range { after, to: seq - 1 }, BATCH)
            }
            other => other,
        }
        .map_err(ServerError::from)?;
        if batch.first().map(|e| e.seq) != Some(after + 1) {
            return Err(StreamError::Peer(format!(
                "oplog no longer holds entry {}; the replica will resync",
                after + 1
            )));
        }
        Ok((batch, (generation, sources)))
    })
    .await
    .map_err(|e| StreamError::Server(ServerError::from(e)))?
}

/// Sends a snapshot of everything; returns the position streaming continues from.
async fn full_sync<W: AsyncWrite + Unpin>(
    state: &Arc<Node>,
    instance: &str,
    chain: Vec<crate::meta::HistoryLink>,
    writer: &mut W,
) -> Result<u64, StreamError> {
    let s = state.clone();
    let snapshot = tokio::task::spawn_blocking(move || snapshot::take(&s))
        .await
        .map_err(ServerError::from)??;
    let total: u64 = snapshot.files.iter().map(|f| f.bytes).sum();
    tracing::info!(replica = %instance, position = snapshot.position, bytes = total, "full sync started");
    write_message(
        writer,
        &Message::FullSyncBegin {
            chain,
            position: snapshot.position,
            files: snapshot.files.clone(),
            term: state.term(),
        },
    )
    .await?;
    let started = Instant::now();
    let mut progress = Progress {
        done: 0,
        total,
        last_log: Instant::now(),
        started,
    };
    for file in &snapshot.files {
        write_message(writer, &Message::FileBegin(file.clone())).await?;
        let crc = send_file(
            state,
            instance,
            &snapshot.dir.join(&file.name),
            writer,
            &mut progress,
        )
        .await?;
        write_message(
            writer,
            &Message::FileEnd {
                name: file.name.clone(),
                crc,
            },
        )
        .await?;
    }
    write_message(
        writer,
        &Message::FullSyncEnd {
            position: snapshot.position,
        },
    )
    .await?;
    writer.flush().await?;
    tracing::info!(
        replica = %instance,
        bytes = total,
        seconds = started.elapsed().as_secs_f64(),
        "full sync sent"
    );
    Ok(snapshot.position)
}

struct Progress {
    done: u64,
    total: u64,
    last_log: Instant,
    started: Instant,
}

impl Progress {
    fn advance(&mut self, bytes: u64, instance: &str) {
        self.done += bytes;
        if self.last_log.elapsed() >= Duration::from_secs(1) {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                replica = %instance,
                done = self.done,
                total = self.total,
                mb_per_sec = format!("{:.1}", self.done as f64 / secs / 1e6),
                "full sync progress"
            );
        }
    }
}

async fn send_file<W: AsyncWrite + Unpin>(
    state: &Node,
    instance: &str,
    path: &std::path::Path,
    writer: &mut W,
    progress: &mut Progress,
) -> Result<u32, StreamError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
        write_chunk(writer, &buf[..n]).await?;
        state.replication.record_sent(instance, n as u64, 0, None);
        progress.advance(n as u64, instance);
    }
}
