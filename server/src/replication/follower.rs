//! A replica's side: follow the primary, whatever happens to either of them.
//!
//! The follower connects to the primary's SQL port, switches to the replication protocol and
//! sends its position. It then installs a full sync or continues, applies each batch of entries
//! (see [`super::apply`]) and acknowledges it, heartbeats, and treats a silent primary as gone.
//! On any failure it reconnects with exponential backoff (0.1 s to 5 s); after an apply failure
//! (the replica no longer matches the primary) it asks for a full sync. A change of target
//! (`POST /replication/configure`, promotion) ends the current stream at once.
//!
//! Silence is measured on what the primary sends: the deadline moves only when a unit arrives,
//! never when the replica sends its own heartbeat. Terms: the replica sends its term in `Hello`,
//! refuses a primary whose `Continue` or `FullSyncBegin` carries a lower one, adopts the
//! primary's term (durably, with its history) otherwise, and refuses entries and heartbeats of a
//! lower term than its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dirkdb_core::connection::ClientConnection;
use dirkdb_core::frame::Frame;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::apply::Applier;
use super::mode::Modes;
use super::node::Node;
use super::protocol::{write_message, FileInfo, Message, Unit, HANDSHAKE, HANDSHAKE_OK};
use super::stream::{
    check_term, next_unit, received, spawn_reader_compressed, StreamError, StreamWriter, Units,
};
use super::{snapshot, FullSyncFigures};
use crate::error::ServerError;
use dirkdb_core::clock::now_ms;
use dirkdb_core::sync::lock;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the target primary for as long as the server runs.
pub(crate) async fn run(state: Arc<Node>, modes: Arc<Modes>) {
    let mut target = state.replication.watch_target();
    let mut mode_changes = state.replication.watch_mode();
    let mut backoff = MIN_BACKOFF;
    let mut resync = state.take_resync_on_start();
    loop {
        let Some(addr) = target.borrow_and_update().clone() else {
            set_state(&state, super::FollowerState::Stopped, None);
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        set_state(&state, super::FollowerState::Connecting, None);
        mode_changes.borrow_and_update();
        let outcome = tokio::select! {
            r = follow(&state, &modes, &addr, resync) => r,
            _ = target.changed() => Ok(()),
            _ = mode_changes.changed() => Ok(()),
        };
        match outcome {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                resync = is_divergence(&e);
                // One failure is routine (a primary starting or restarting); repeated ones are not.
                if backoff >= Duration::from_millis(800) || resync {
                    tracing::warn!(primary = %addr, error = %e, resync, "replication stream ended; retrying");
                } else {
                    tracing::info!(primary = %addr, error = %e, "replication stream ended; retrying");
                }
                set_state(
                    &state,
                    super::FollowerState::Disconnected,
                    Some(e.to_string()),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = target.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn is_divergence(e: &StreamError) -> bool {
    matches!(e, StreamError::Server(ServerError::Refused(m)) if m.starts_with("replication apply"))
}

fn set_state(state: &Node, to: super::FollowerState, error: Option<String>) {
    state.replication.update_follower(|f| {
        f.state = to;
        if error.is_some() {
            f.last_error = error;
        }
        f.applied_sequence = state.write_path.committed();
    });
}

/// One connection to the primary, until it breaks: the handshake and `Hello` here, the rest in
/// the mode's [`super::mode::ReplicationMode::follow_primary`].
async fn follow(
    state: &Arc<Node>,
    modes: &Modes,
    addr: &str,
    resync: bool,
) -> Result<(), StreamError> {
    let replication = modes.get(state.replication.mode());
    let stream = handshake(addr, state.security.cluster.as_ref()).await?;
    let (reader, writer) = tokio::io::split(stream);
    let mut writer: StreamWriter = BufWriter::new(Box::new(writer));
    let chain = state
        .meta
        .history(&state.instance_id)
        .map_err(ServerError::from)?;
    let resync = resync || replication.needs_resync_on_entry(state);
    let history = match (resync, chain.last()) {
        (false, Some(link)) => link.id.clone(),
        _ => "resync".to_string(),
    };
    let hello = Message::Hello {
        instance: state.instance_id.clone(),
        history,
        seq: state.write_path.committed(),
        mode: replication.kind(),
        term: state.term(),
        compression: super::compression::offer(&state.replication.compression),
    };
    let offered = matches!(
        &hello,
        Message::Hello {
            compression: Some(_),
            ..
        }
    );
    write_message(&mut writer, &hello).await?;
    set_state(state, super::FollowerState::Syncing, None);
    let mut units = spawn_reader_compressed(Box::new(reader), offered);
    replication
        .follow_primary(state, &mut units, &mut writer)
        .await
}

/// OPLOG mode, secondary side: full or partial sync, then entries applied and acknowledged.
pub(crate) async fn oplog_follow(
    state: &Arc<Node>,
    units: &mut Units,
    applier: &Arc<Mutex<Applier>>,
    writer: &mut StreamWriter,
) -> Result<(), StreamError> {
    let silence = state.replication.silence();
    let mut beat = tokio::time::interval(state.replication.heartbeat);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            unit = units.recv() => {
                heard = tokio::time::Instant::now();
                match received(unit)? {
                    Unit::Message(m) => handle(state, m, units, applier, writer).await?,
                    Unit::Chunk(_) => return Err(StreamError::Peer("file chunk outside a full sync".into())),
                }
            }
            _ = tokio::time::sleep_until(heard + silence) => {
                return Err(StreamError::Peer(format!("primary silent for {silence:?}")));
            }
            _ = beat.tick() => {
                let Some(term) = term_to_tell(state) else { return Ok(()) };
                let beat = Message::Heartbeat { seq: state.write_path.committed(), ts: now_ms(), term };
                write_message(writer, &beat).await?;
            }
        }
    }
}

/// The term this follower's acknowledgements and heartbeats carry, or `None` once this node was
/// promoted (the stream is ending: a promotion does not fence the old primary through a stream
/// that merely had not noticed yet, which it used to do or not by the timing of one heartbeat).
/// The term is read before the role: a promotion stops being a replica before it raises the
/// term (`Node::promote`), so the new term is never read with the replica's role.
fn term_to_tell(state: &Node) -> Option<u64> {
    let term = state.term();
    state.is_replica().then_some(term)
}

pub(crate) async fn handshake(
    addr: &str,
    credentials: Option<&dirkdb_core::security::Credentials>,
) -> Result<dirkdb_core::tls::Stream, StreamError> {
    let stream = dirkdb_core::tls::connect_peer(addr, Duration::from_secs(5))
        .await
        .map_err(|e| StreamError::Peer(e.to_string()))?;
    let mut conn = ClientConnection::new(stream, 1 << 20);
    if let Some(credentials) = credentials {
        crate::auth::authenticate(&mut conn, credentials, addr)
            .await
            .map_err(StreamError::Peer)?;
    }
    conn.send_statement(HANDSHAKE)
        .await
        .map_err(|e| StreamError::Peer(e.to_string()))?;
    match conn.read_frame().await {
        Ok(Some(Frame::Message(m))) if m == HANDSHAKE_OK => {}
        Ok(Some(Frame::Message(m))) => {
            return Err(StreamError::Peer(format!("{addr} refused: {m}")))
        }
        // Under mutual TLS, a primary that does not trust this node's certificate says so
        // with an alert at the first read.
        Err(e) => {
            let hint = match dirkdb_core::tls::cluster_client() {
                Some(_) => {
                    " (with security.tls.mutualTls there, this node's certFile must be \
                            signed by that node's caFile)"
                }
                None => "",
            };
            return Err(StreamError::Peer(format!(
                "{addr} refused the stream: {e}{hint}"
            )));
        }
        other => {
            return Err(StreamError::Peer(format!(
                "{addr} did not answer the handshake: {other:?}"
            )))
        }
    }
    conn.into_inner()
        .map_err(|_| StreamError::Peer("primary sent data before the replica spoke".into()))
}

async fn handle<W: tokio::io::AsyncWrite + Unpin>(
    state: &Arc<Node>,
    message: Message,
    units: &mut Units,
    applier: &Arc<Mutex<Applier>>,
    writer: &mut W,
) -> Result<(), StreamError> {
    match message {
        Message::Continue { chain, from, term } => {
            check_term(state, term, "a stream")?;
            state
                .meta
                .adopt_history(&chain, term)
                .map_err(ServerError::from)?;
            state.replication.raise_term(term);
            state.replication.set_synced(true);
            tracing::info!(from, "partial sync: continuing from the oplog");
            state.replication.update_follower(|f| {
                f.partial_syncs += 1;
                f.state = super::FollowerState::Streaming;
            });
        }
        Message::FullSyncBegin {
            chain,
            position,
            files,
            term,
        } => {
            check_term(state, term, "a full sync")?;
            let (s, new_chain) = (state.clone(), chain.clone());
            let (saved, upto) = tokio::task::spawn_blocking(move || {
                let upto = super::rollback::saved_after(&s, &new_chain)?;
                super::rollback::save_divergent(&s, &new_chain).map(|saved| (saved, upto))
            })
            .await
            .map_err(ServerError::from)??;
            if let Some(path) = saved {
                tracing::warn!(file = %path.display(), "writes this node made that the new primary never received were saved to a rollback file");
            }
            receive_full_sync(state, units, &files, position, upto).await?;
            state
                .meta
                .adopt_history(&chain, term)
                .map_err(ServerError::from)?;
            state.replication.raise_term(term);
            state.replication.set_synced(true);
            lock(applier).reset();
            let Some(term) = term_to_tell(state) else {
                return Ok(());
            };
            write_message(
                writer,
                &Message::Ack {
                    applied: position,
                    term,
                },
            )
            .await?;
            state
                .replication
                .update_follower(|f| f.state = super::FollowerState::Streaming);
        }
        Message::Entries { entries, term } => {
            check_term(state, term, "entries")?;
            if let Some(delay) = crate::failure_injection::apply_delay() {
                tokio::time::sleep(delay).await;
            }
            let last_ts = entries.last().map(|e| e.ts);
            let (s, a) = (state.clone(), applier.clone());
            let owner = state.new_owner();
            let applied = tokio::task::spawn_blocking(move || lock(&a).apply(&s, owner, &entries))
                .await
                .map_err(ServerError::from)??;
            let Some(term) = term_to_tell(state) else {
                return Ok(());
            };
            write_message(writer, &Message::Ack { applied, term }).await?;
            state.replication.update_follower(|f| {
                f.applied_sequence = applied;
                f.primary_sequence = f.primary_sequence.max(applied);
                f.last_applied_commit_ms = last_ts.unwrap_or(f.last_applied_commit_ms);
            });
        }
        Message::Heartbeat { seq, term, .. } => {
            check_term(state, term, "a heartbeat")?;
            state
                .replication
                .update_follower(|f| f.primary_sequence = seq);
        }
        Message::Error { message } => return Err(StreamError::Peer(format!("primary: {message}"))),
        other => return Err(StreamError::Peer(format!("unexpected message {other:?}"))),
    }
    writer.flush().await?;
    Ok(())
}

/// Receives every file of a full sync, checks each CRC, saves this node's entries up to `upto`
/// that the snapshot lacks or holds differently (`rollback::save_divergent_from_snapshot`),
/// then installs them.
async fn receive_full_sync(
    state: &Arc<Node>,
    units: &mut Units,
    files: &[FileInfo],
    position: u64,
    upto: u64,
) -> Result<(), StreamError> {
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    tracing::info!(
        position,
        bytes = total,
        files = files.len(),
        "full sync: receiving"
    );
    let dir = snapshot::incoming_dir(state)?;
    let started = Instant::now();
    let mut done = 0u64;
    let mut last_log = Instant::now();
    let silence = state.replication.silence() + Duration::from_secs(9);
    loop {
        match next_unit(units, silence).await? {
            Unit::Message(Message::FileBegin(info)) => {
                if !snapshot::accepted_file_name(&info.name) {
                    return Err(StreamError::Peer(format!(
                        "unexpected file `{}`",
                        info.name
                    )));
                }
                let path = dir.join(&info.name);
                let mut file = tokio::fs::File::create(&path).await?;
                let mut hasher = crc32fast::Hasher::new();
                loop {
                    match next_unit(units, silence).await? {
                        Unit::Chunk(bytes) => {
                            hasher.update(&bytes);
                            file.write_all(&bytes).await?;
                            done += bytes.len() as u64;
                            if last_log.elapsed() >= Duration::from_secs(1) {
                                last_log = Instant::now();
                                let rate =
                                    done as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6;
                                tracing::info!(
                                    done,
                                    total,
                                    mb_per_sec = format!("{rate:.1}"),
                                    "full sync progress"
                                );
                            }
                        }
                        Unit::Message(Message::FileEnd { name, crc }) if name == info.name => {
                            file.sync_all().await?;
                            if hasher.finalize() != crc {
                                return Err(StreamError::Peer(format!(
                                    "snapshot file `{name}` failed its checksum; refused"
                                )));
                            }
                            break;
                        }
                        other => {
                            return Err(StreamError::Peer(format!(
                                "unexpected {other:?} in a file"
                            )))
                        }
                    }
                }
            }
            Unit::Message(Message::FullSyncEnd { position: end }) if end == position => break,
            other => {
                return Err(StreamError::Peer(format!(
                    "unexpected {other:?} in a full sync"
                )))
            }
        }
    }
    let (s, d, f) = (state.clone(), dir.clone(), files.to_vec());
    tokio::task::spawn_blocking(move || {
        for path in super::rollback::save_divergent_from_snapshot(&s, &d, upto)? {
            tracing::warn!(file = %path.display(), "entries this node held that the new primary's snapshot lacks or holds differently were saved to a rollback file");
        }
        snapshot::install(&s, &d, &f, position)
    })
    .await
    .map_err(ServerError::from)??;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(position, bytes = done, seconds, "full sync installed");
    state.replication.update_follower(|f| {
        f.full_syncs += 1;
        f.applied_sequence = position;
        f.last_full_sync = Some(FullSyncFigures {
            bytes: done,
            seconds,
            mb_per_sec: done as f64 / seconds.max(1e-9) / 1e6,
        });
    });
    Ok(())
}
