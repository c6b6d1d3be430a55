//! MULTI_PRIMARY streams between masters, both sides (see [`super::peers`]).
//!
//! Asking side ([`run`]): one task per other master, for as long as the server runs. It
//! connects to that master's SQL port, switches to the replication protocol, sends `PeerHello`
//! with its applied position, the checksum of the entry applied there and the origin's history, then applies each `PeerEntries` batch
//! ([`super::peer_apply`]), together with the ones that arrived while the one before was
//! applied (up to [`BATCH`] entries, see [`gather`]), and acknowledges them; both sides heartbeat, and a silent origin counts
//! as gone. At its heartbeat the asker also brings the meta file's copy of the origin's position
//! up to what it applied (the files record it with every batch; see `super::peer_apply`). Any
//! failure reconnects with exponential backoff (0.1 s to 1 s); a failure is logged and shown in
//! `/replication/status` (`peers`), never dropped.
//!
//! Origin side ([`serve_peer`]): continues from the position asked when its oplog still holds
//! everything after it in the same history, else refuses naming the knob; refuses also when
//! the asker's position is past its committed sequence, or its own entry there is not the one
//! the asker applied (the hello's checksum; its data directory was replaced or restored); streams only the
//! entries it committed itself (its oplog holds nothing else), from the in-memory backlog or
//! the oplog files; counts the asker's acknowledgements like a replica's (write concerns).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::follower::handshake;
use super::node::Node;
use super::peer_apply::{Batch, PeerApplier};
use super::peers::{PeerHello, PeerState};
use super::protocol::{write_message, Message, Unit};
use super::stream::{
    next_unit, read_acks, received, send_within, spawn_reader, StreamError, StreamWriter, Units,
};
use crate::error::ServerError;
use crate::meta::position_in_chain;
use crate::oplog::store::{self, Filter};
use crate::oplog::Entry;
use dirkdb_core::clock::now_ms;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// At most one second between tries: a master back from a crash must be streamed from again
/// before the proxy gives it its objects back (`proxy/src/ownership.rs`).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Entries per message at most.
const BATCH: usize = 1000;

/// Follows every other master's stream (`peers`: id and replication address) until aborted.
pub(crate) async fn run(state: Arc<Node>, peers: Vec<(String, String)>) {
    let origins: Vec<String> = peers.iter().map(|(id, _)| id.clone()).collect();
    let s = state.clone();
    let loaded =
        tokio::task::spawn_blocking(move || super::peers::load_positions(&s, &s.peers, &origins))
            .await
            .map_err(ServerError::from)
            .and_then(|r| r);
    if let Err(e) = loaded {
        tracing::error!(error = %e, "cannot read the positions of the other masters' streams: not following them");
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (origin, addr) in peers {
        tasks.spawn(follow_origin(state.clone(), origin, addr));
    }
    while tasks.join_next().await.is_some() {}
}

async fn follow_origin(state: Arc<Node>, origin: String, addr: String) {
    let mut applier = PeerApplier::new(&origin);
    let mut backoff = MIN_BACKOFF;
    state.peers.update(&origin, |s| s.address = addr.clone());
    loop {
        match stream_from(&state, &origin, &addr, &mut applier).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                let refused = matches!(&e, StreamError::Peer(m) if m.starts_with("refused:"));
                if backoff >= Duration::from_millis(800) || refused {
                    tracing::warn!(%origin, error = %e, "stream from another master ended; retrying");
                } else {
                    tracing::info!(%origin, error = %e, "stream from another master ended; retrying");
                }
                state.peers.update(&origin, |s| {
                    s.state = if refused {
                        PeerState::Refused
                    } else {
                        PeerState::Disconnected
                    };
                    s.last_error = Some(e.to_string());
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection to `origin`, until it breaks.
async fn stream_from(
    state: &Arc<Node>,
    origin: &str,
    addr: &str,
    applier: &mut PeerApplier,
) -> Result<(), StreamError> {
    state
        .peers
        .update(origin, |s| s.state = PeerState::Connecting);
    let stream = handshake(addr, state.security.cluster.as_ref()).await?;
    let (reader, writer) = tokio::io::split(stream);
    let mut writer: StreamWriter = BufWriter::new(Box::new(writer));
    let mut units = spawn_reader(Box::new(reader));
    let mut history = state
        .peers
        .streams()
        .into_iter()
        .find(|s| s.origin == origin)
        .and_then(|s| s.history);
    let mark = state.peers.applied_mark(origin);
    let hello = Message::PeerHello {
        instance: state.instance_id.clone(),
        origin: origin.to_string(),
        history: history.clone(),
        seq: mark.seq,
        crc: mark.crc,
    };
    write_message(&mut writer, &hello).await?;
    let silence = state.replication.silence();
    let term = match next(&mut units, silence).await? {
        Message::PeerContinue {
            origin: o,
            chain,
            from,
            term,
        } if o == origin => {
            history = chain.last().map(|l| l.id.clone());
            let h = history.clone();
            state.peers.update(origin, |s| {
                s.state = PeerState::Streaming;
                s.history = h;
                s.connected_since_ms = now_ms();
                s.last_error = None;
            });
            tracing::info!(%origin, from, "streaming another master's changes");
            term
        }
        Message::Error { message } => return Err(StreamError::Peer(format!("refused: {message}"))),
        other => {
            return Err(StreamError::Peer(format!(
                "{addr} did not continue {origin}'s stream: {other:?}"
            )))
        }
    };
    let mut beat = tokio::time::interval(state.replication.heartbeat);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            unit = units.recv() => {
                heard = tokio::time::Instant::now();
                match received(unit)? {
                    Unit::Message(Message::PeerEntries { origin: o, entries, known, .. }) if o == origin => {
                        let mut batch = Batch { entries, known };
                        let after = gather(&mut units, origin, &mut batch)?;
                        let applied = apply(state, applier, batch, history.clone()).await?;
                        write_message(&mut writer, &Message::Ack { applied, term }).await?;
                        writer.flush().await?;
                        if let Some(unit) = after {
                            other_unit(state, origin, unit)?;
                        }
                    }
                    other => other_unit(state, origin, other)?,
                }
            }
            _ = tokio::time::sleep_until(heard + silence) => {
                return Err(StreamError::Peer(format!("{origin} silent for {silence:?}")));
            }
            _ = beat.tick() => {
                let seq = state.peers.applied(origin);
                write_message(&mut writer, &Message::Heartbeat { seq, ts: now_ms(), term }).await?;
                writer.flush().await?;
                let h = history.clone();
                on_blocking(state, applier, move |s, a| a.store_position_if_behind(s, h.as_deref())).await??;
            }
        }
    }
}

/// Adds to `batch` the origin's batches already received (up to [`BATCH`] entries in all), so
/// that what arrived while the last one was applied is applied in one go: one hand-off to a
/// blocking thread, one transaction per database and one acknowledgement, where each message
/// cost its own. Under single-row commits each message holds one or a few entries, and the
/// hand-offs (the blocking pool's wake-ups and context switches) took more of an applying
/// master's CPU than the apply itself. Returns the first other unit taken, to handle after.
fn gather(units: &mut Units, origin: &str, batch: &mut Batch) -> Result<Option<Unit>, StreamError> {
    while batch.entries.len() < BATCH {
        let Ok(unit) = units.try_recv() else {
            return Ok(None);
        };
        match received(Some(unit))? {
            Unit::Message(Message::PeerEntries {
                origin: o,
                entries,
                known,
                ..
            }) if o == origin => {
                batch.entries.extend(entries);
                batch.known.extend(known);
            }
            other => return Ok(Some(other)),
        }
    }
    Ok(None)
}

/// A unit of the origin's stream other than its entries: a heartbeat, or the end.
fn other_unit(state: &Node, origin: &str, unit: Unit) -> Result<(), StreamError> {
    match unit {
        Unit::Message(Message::Heartbeat { seq, .. }) => {
            state
                .peers
                .update(origin, |s| s.origin_sequence = s.origin_sequence.max(seq));
            Ok(())
        }
        Unit::Message(Message::Error { message }) => {
            Err(StreamError::Peer(format!("{origin}: {message}")))
        }
        other => Err(StreamError::Peer(format!(
            "unexpected from {origin}: {other:?}"
        ))),
    }
}

async fn next(units: &mut Units, silence: Duration) -> Result<Message, StreamError> {
    match next_unit(units, silence).await? {
        Unit::Message(m) => Ok(m),
        Unit::Chunk(_) => Err(StreamError::Peer(
            "file chunk in a stream between masters".into(),
        )),
    }
}

/// Runs `f` with the applier on a blocking thread.
async fn on_blocking<T: Send + 'static>(
    state: &Arc<Node>,
    applier: &mut PeerApplier,
    f: impl FnOnce(&Node, &mut PeerApplier) -> T + Send + 'static,
) -> Result<T, StreamError> {
    let s = state.clone();
    let placeholder = PeerApplier::new(applier.origin());
    let mut taken = std::mem::replace(applier, placeholder);
    let (result, taken) = tokio::task::spawn_blocking(move || {
        let result = f(&s, &mut taken);
        (result, taken)
    })
    .await
    .map_err(ServerError::from)?;
    *applier = taken;
    Ok(result)
}

/// Applies one batch on a blocking thread; returns the origin's position now.
async fn apply(
    state: &Arc<Node>,
    applier: &mut PeerApplier,
    batch: Batch,
    history: Option<String>,
) -> Result<u64, StreamError> {
    let last = batch.entries.last().map(|e| (e.seq, e.ts));
    let applied = on_blocking(state, applier, move |s, a| {
        a.apply(s, &batch, history.as_deref())
    })
    .await??;
    state.peers.update(applier.origin(), |s| {
        s.entries_applied += applied.entries;
        if let Some((seq, ts)) = last {
            s.origin_sequence = s.origin_sequence.max(seq);
            s.last_applied_commit_ms = ts;
        }
    });
    Ok(applied.position)
}

/// Origin side: serves one master's request for this master's stream until it ends.
pub(crate) async fn serve_peer<R, W>(
    state: Arc<Node>,
    hello: PeerHello,
    reader: R,
    writer: W,
    address: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    let instance = hello.instance.clone();
    let from = match continue_from(&state, &hello) {
        Ok(from) => from,
        Err(message) => {
            tracing::warn!(master = %instance, %address, "stream refused: {message}");
            let _ = write_message(&mut writer, &Message::Error { message }).await;
            let _ = writer.flush().await;
            return;
        }
    };
    let hub = &state.replication;
    hub.replica_connected(&instance, &address);
    hub.replica_syncing(&instance, false, from);
    tracing::info!(master = %instance, %address, from, "another master follows this one's stream");
    let result = serve_from(&state, &instance, from, reader, &mut writer).await;
    let error = result.err().map(|e| e.to_string());
    if let Some(e) = &error {
        let _ = write_message(&mut writer, &Message::Error { message: e.clone() }).await;
        let _ = writer.flush().await;
    }
    tracing::info!(master = %instance, error = ?error, "another master stopped following");
    hub.replica_disconnected(&instance, error);
}

/// Where the stream asked for continues, or why it cannot.
fn continue_from(state: &Node, hello: &PeerHello) -> Result<u64, String> {
    let me = &state.instance_id;
    if !state.settings.ownership.active() {
        return Err(format!(
            "{me} is not a master of a MULTI_PRIMARY topology (routing.writes.mode)"
        ));
    }
    if !state.security.admits_replica(&hello.instance) {
        return Err(format!(
            "`{}` is not an instance of {me}'s config.json",
            hello.instance
        ));
    }
    if hello.origin != *me {
        return Err(format!(
            "{} asked {me} for the stream of {}: check the instances' addresses in config.json",
            hello.instance, hello.origin
        ));
    }
    let chain = state.meta.history(me).map_err(|e| e.to_string())?;
    let floor = state.meta.pruned_through().map_err(|e| e.to_string())?;
    let committed = state.write_path.committed();
    let seq = hello.seq;
    if seq > committed {
        return Err(format!(
            "{} stands at {seq} in {me}'s stream, but {me} committed only {committed}: {me}'s \
             data directory was replaced or restored; its stream cannot continue",
            hello.instance
        ));
    }
    if let Some(history) = &hello.history {
        if !position_in_chain(&chain, history, seq) {
            return Err(format!(
                "{} streamed {me}'s history {history}, which {me} no longer continues: its data \
                 directory was replaced",
                hello.instance
            ));
        }
    }
    if seq < floor {
        return Err(oplog_window_message(me, &hello.instance, seq, floor));
    }
    verify_last_applied(state, hello)?;
    Ok(seq)
}

/// Refuses the stream when this master's own entry at the asker's position is not the one the
/// asker applied there (its checksum differs): this master's data directory was restored to an
/// older copy and committed other entries under the same sequences since, so continuing would
/// skip its new entries up to that position unseen. Allowed unverified: a hello without a
/// checksum (an asker of an older version, or a position stored before checksums were), and a
/// position whose entry this master no longer holds (pruned at the oplog's floor, or an entry
/// of a database dropped since, which takes its entries with it).
fn verify_last_applied(state: &Node, hello: &PeerHello) -> Result<(), String> {
    let (Some(crc), seq) = (hello.crc, hello.seq) else {
        return Ok(());
    };
    if seq == 0 {
        return Ok(());
    }
    let me = &state.instance_id;
    let own = own_entry(state, seq).map_err(|e| e.to_string())?;
    match own {
        Some(entry) if entry.crc != crc => Err(format!(
            "{asker} applied {me}'s entry {seq} with checksum {crc:08x}, but {me}'s entry {seq} \
             is now another (checksum {:08x}): {me}'s data directory was restored to an older \
             copy and {me} committed other changes since, so {me}'s entries up to {seq} would \
             be skipped unseen; {asker} holds changes {me} lost. Rebuild {asker} from a copy of \
             {me}'s data directory (after recovering what {asker} holds of {me}'s objects), or \
             restore {me} from a copy that has entry {seq} as {asker} applied it",
            entry.crc,
            asker = hello.instance,
        )),
        Some(_) => Ok(()),
        None => {
            tracing::info!(master = %hello.instance, seq, "this master no longer holds its entry at the position asked (pruned, or of a database dropped since): continuing unverified");
            Ok(())
        }
    }
}

/// This master's own entry at `seq`, when its oplog still holds it.
fn own_entry(state: &Node, seq: u64) -> crate::error::Result<Option<Entry>> {
    let sources = state.oplog_sources()?;
    let found = store::merge(
        &sources,
        Filter::Range {
            after: seq - 1,
            to: seq,
        },
        1,
    )?;
    Ok(found.into_iter().find(|e| e.seq == seq))
}

fn oplog_window_message(me: &str, peer: &str, seq: u64, floor: u64) -> String {
    format!(
        "{me}'s oplog no longer holds entry {} that {peer} needs (pruned through {floor}): raise \
         replication.oplog.maxEntries or replication.oplog.retentionDays so a master that was \
         away can catch up; a whole-database full sync is never used between masters (it would \
         overwrite the objects others own), so {peer} must be rebuilt from a copy of a master's \
         data directory",
        seq + 1
    )
}

async fn serve_from<R, W>(
    state: &Arc<Node>,
    instance: &str,
    from: u64,
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
    let term = state.term();
    write_message(
        writer,
        &Message::PeerContinue {
            origin: state.instance_id.clone(),
            chain,
            from,
            term,
        },
    )
    .await?;
    writer.flush().await?;
    let (closed_tx, mut closed) = mpsc::channel::<String>(1);
    let acks = tokio::spawn(read_acks(
        state.clone(),
        instance.to_string(),
        reader,
        closed_tx,
    ));
    let result = stream_own_entries(state, instance, from, writer, &mut closed).await;
    acks.abort();
    result
}

async fn stream_own_entries<W: AsyncWrite + Unpin>(
    state: &Arc<Node>,
    instance: &str,
    mut cursor: u64,
    writer: &mut W,
    closed: &mut mpsc::Receiver<String>,
) -> Result<(), StreamError> {
    let mut commits = state.write_path.subscribe();
    let mut ended = state.replication.watch_streams();
    let heartbeat = state.replication.heartbeat;
    let mut last_sent = Instant::now();
    loop {
        let upto = state.write_path.committed();
        if upto > cursor {
            let batch = match state.write_path.from_backlog(cursor, upto, BATCH) {
                Some(batch) => batch,
                None => read_held(state.clone(), instance.to_string(), cursor, upto).await?,
            };
            match batch.last().map(|e| (e.seq, e.ts)) {
                Some((last, oldest)) => {
                    let count = batch.len() as u64;
                    let first_ts = batch.first().map(|e| e.ts).unwrap_or(oldest);
                    let message = Message::PeerEntries {
                        origin: state.instance_id.clone(),
                        known: state.peers.knowledge.for_batch(&batch),
                        entries: batch,
                        term: state.term(),
                    };
                    send_within(state, write_message(writer, &message)).await?;
                    send_within(state, writer.flush()).await?;
                    state
                        .replication
                        .record_sent(instance, 0, count, Some((last, first_ts)));
                    cursor = last;
                }
                // Nothing held in (cursor, upto]: entries of databases dropped since.
                None => cursor = upto,
            }
            last_sent = Instant::now();
            continue;
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
                send_within(state, writer.flush()).await?;
                last_sent = Instant::now();
            }
            why = closed.recv() => {
                return Err(StreamError::Peer(why.unwrap_or_else(|| format!("{instance} left"))));
            }
            _ = ended.changed() => {
                return Err(StreamError::Peer("the streams of this master were ended".into()));
            }
        }
    }
}

/// The entries held in `(after, upto]` (at most a batch), read from the oplog files; an error
/// naming the knob when pruning passed `after` meanwhile.
async fn read_held(
    state: Arc<Node>,
    instance: String,
    after: u64,
    upto: u64,
) -> Result<Vec<Entry>, StreamError> {
    tokio::task::spawn_blocking(move || {
        let floor = state.meta.pruned_through().map_err(ServerError::from)?;
        if after < floor {
            return Err(StreamError::Peer(oplog_window_message(
                &state.instance_id,
                &instance,
                after,
                floor,
            )));
        }
        let sources = state.oplog_sources()?;
        let batch = store::merge(&sources, Filter::Range { after, to: upto }, BATCH)
            .map_err(ServerError::from)?;
        Ok(batch)
    })
    .await
    .map_err(|e| StreamError::Server(ServerError::from(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::Op;
    use crate::replication::knowledge::Known;

    fn entries(origin: &str, seqs: std::ops::RangeInclusive<u64>) -> Unit {
        let entries = seqs
            .map(|seq| Entry {
                seq,
                ts: 0,
                db: "d".into(),
                table: "t".into(),
                op: Op::Insert,
                old_key: None,
                new_key: None,
                data: None,
                crc: 0,
            })
            .collect();
        let known = vec![Known {
            db: "d".into(),
            origin: "m3".into(),
            after: 0,
            applied: 1,
        }];
        Unit::Message(Message::PeerEntries {
            origin: origin.into(),
            entries,
            term: 1,
            known,
        })
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.entries.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn batches_already_received_are_applied_in_one_go_up_to_a_limit() {
        let (tx, mut units) = mpsc::channel(64);
        for unit in [entries("m1", 2..=3), entries("m1", 4..=4)] {
            tx.send(Ok(unit)).await.unwrap();
        }
        let beat = Unit::Message(Message::Heartbeat {
            seq: 9,
            ts: 0,
            term: 1,
        });
        tx.send(Ok(beat)).await.unwrap();
        tx.send(Ok(entries("m1", 5..=5))).await.unwrap();
        let mut batch = Batch::default();
        let after = gather(&mut units, "m1", &mut batch).unwrap();
        assert_eq!(seqs(&batch), [2, 3, 4], "up to the first other unit");
        assert_eq!(batch.known.len(), 2, "with every batch's steps");
        assert!(matches!(
            after,
            Some(Unit::Message(Message::Heartbeat { seq: 9, .. }))
        ));
        let mut batch = Batch::default();
        assert!(gather(&mut units, "m1", &mut batch).unwrap().is_none());
        assert_eq!(seqs(&batch), [5], "then what follows it");

        let big = BATCH as u64;
        for unit in [entries("m1", 1..=big - 1), entries("m1", big..=big + 1)] {
            tx.send(Ok(unit)).await.unwrap();
        }
        tx.send(Ok(entries("m1", big + 2..=big + 2))).await.unwrap();
        let mut batch = Batch::default();
        assert!(gather(&mut units, "m1", &mut batch).unwrap().is_none());
        assert_eq!(
            batch.entries.len(),
            BATCH + 1,
            "no more once the limit is reached"
        );
        let mut batch = Batch::default();
        gather(&mut units, "m1", &mut batch).unwrap();
        assert_eq!(seqs(&batch), [big + 2]);

        tx.send(Ok(entries("m2", 1..=1))).await.unwrap();
        let mut batch = Batch::default();
        let other = gather(&mut units, "m1", &mut batch).unwrap();
        assert!(
            batch.entries.is_empty(),
            "another origin's entries are not this stream's"
        );
        assert!(other.is_some());
    }
}
