//! FILE mode: the secondaries receive consistent copies of the primary's database files.
//!
//! How it flows, on the same connection as OPLOG mode (`DIRK REPLICATION;`, `Hello` with
//! `mode: FILE`):
//!
//! 1. The secondary sends its inventory: for each database, the version of its last copy and
//!    the CRC-32 of each of its pages (read from its shadow copy, `_dirk_filecopy/<db>.db`, the
//!    exact file last received).
//! 2. The primary runs rounds. A round starts after a commit, a proxy's trigger
//!    (`POST /replication/written`), a change the `notify` watcher sees in the data directory,
//!    or the `intervalSeconds` sweep; rounds are at least [`MIN_ROUND_GAP`] apart, so a burst of
//!    writes makes a handful of rounds, not one per write.
//! 3. In a round, each database whose version (the newest oplog sequence in it) moved since the
//!    secondary's copy, or whose files changed on disk at a sweep, is copied with SQLite's backup
//!    API ([`crate::file_copy`]): a consistent state, never a file read mid-write. Only the pages
//!    whose CRC differs from the secondary's copy are sent (page deltas, `pageDeltas: false`
//!    sends them all), in chunks of [`PAGES_PER_CHUNK`], with the whole file's CRC.
//! 4. The secondary patches its shadow with the pages in place, refuses the result unless the CRC
//!    matches (the shadow is deleted and the primary resends every page), and installs it into
//!    the live database with the backup API: readers see the old or the new database, never a
//!    mix or an error. It answers `FileResult` for each database.
//! 5. Databases the primary no longer has are dropped on the secondary; new ones are created.
//!    The round ends with the primary's position; the secondary acknowledges it, so lag shows in
//!    `/replication/replicas` as in OPLOG mode, with each database's copy (version, age, size,
//!    bytes sent, failures).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use dirkdb_core::config::ReplicationType;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::mode::{Hello, ReplicationMode};
use super::node::Node;
use super::protocol::{read_message, write_chunk, write_message, CopyInfo, Message, Unit};
use super::stream::{check_term, next_unit, StreamError, StreamReader, StreamWriter, Units};
use crate::blocking::blocking;
use crate::catalog::{as_internal, validate_name};
use crate::error::ServerError;
use crate::file_copy::{self, changed_pages, DeltaWriter, PageMap};
use dirkdb_core::clock::now_ms;
use dirkdb_core::sync::lock;

/// Meta setting present on a node that holds FILE-mode copies (it needs a full sync before
/// following an oplog again).
pub(crate) const FILE_COPIES_SETTING: &str = "file_copies";
/// Shortest time between two rounds for one secondary.
pub(crate) const MIN_ROUND_GAP: Duration = Duration::from_millis(100);
/// Pages per chunk sent.
pub(crate) const PAGES_PER_CHUNK: usize = 256;
/// Longest wait for a secondary to install one copy.
const INSTALL_WAIT: Duration = Duration::from_secs(300);
/// Where a secondary keeps the exact copies it received.
const SHADOW_DIR: &str = "_dirk_filecopy";
/// Where a primary writes the copies it sends.
const OUTGOING_DIR: &str = "_dirk_filecopy_out";

/// FILE replication.
pub(crate) struct FileMode {
    interval: Duration,
    page_deltas: bool,
    triggers: watch::Sender<u64>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl FileMode {
    /// Sweeps every `interval`; sends page deltas when `page_deltas`.
    pub(crate) fn new(interval: Duration, page_deltas: bool) -> FileMode {
        FileMode {
            interval,
            page_deltas,
            triggers: watch::channel(0).0,
            watcher: Mutex::new(None),
        }
    }

    fn trigger(&self) {
        self.triggers.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Watches the data directory (once) so that changes made by any path start a round.
    fn watch_data_directory(&self, dir: &Path) {
        let mut watcher = lock(&self.watcher);
        if watcher.is_some() {
            return;
        }
        let triggers = self.triggers.clone();
        let made = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let ours = event.paths.iter().any(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with("_dirk") && (name.ends_with(".db") || name.ends_with(".db-wal"))
            });
            if ours && !event.kind.is_access() {
                triggers.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        match made {
            Ok(mut w) => {
                use notify::Watcher;
                if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(error = %e, "cannot watch the data directory; relying on commits and sweeps");
                }
                *watcher = Some(w);
            }
            Err(e) => tracing::warn!(error = %e, "no file watcher; relying on commits and sweeps"),
        }
    }
}

#[async_trait]
impl ReplicationMode for FileMode {
    fn kind(&self) -> ReplicationType {
        ReplicationType::File
    }

    async fn serve_secondary(
        &self,
        state: &Arc<Node>,
        hello: Hello,
        mut reader: StreamReader,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError> {
        self.watch_data_directory(&state.data_dir());
        let view = match read_message(&mut reader).await? {
            Message::FileInventory { databases } => {
                databases.into_iter().map(|c| (c.name.clone(), c)).collect()
            }
            other => {
                return Err(StreamError::Peer(format!(
                    "expected an inventory, got {other:?}"
                )))
            }
        };
        // The primary's term comes first: the secondary refuses copies before it knows it.
        let term = Message::Heartbeat {
            seq: state.write_path.committed(),
            ts: now_ms(),
            term: state.term(),
        };
        write_message(writer, &term).await?;
        writer.flush().await?;
        let (tx, replies) = mpsc::channel(16);
        let listener = tokio::spawn(read_replies(
            state.clone(),
            hello.instance.clone(),
            reader,
            tx,
        ));
        let mut primary = PrimaryRounds {
            mode: self,
            state,
            instance: hello.instance.clone(),
            view,
            stamps: HashMap::new(),
            replies,
            outgoing: state.data_dir().join(OUTGOING_DIR).join(&hello.instance),
        };
        state
            .replication
            .replica_syncing(&hello.instance, primary.view.is_empty(), hello.seq);
        let result = primary.run(writer).await;
        listener.abort();
        let _ = std::fs::remove_dir_all(&primary.outgoing);
        result
    }

    async fn follow_primary(
        &self,
        state: &Arc<Node>,
        units: &mut Units,
        writer: &mut StreamWriter,
    ) -> Result<(), StreamError> {
        let s = state.clone();
        let inventory = blocking(move || {
            s.meta.set_setting(FILE_COPIES_SETTING, Some("1"))?;
            local_inventory(&s)
        })
        .await?;
        write_message(
            writer,
            &Message::FileInventory {
                databases: inventory,
            },
        )
        .await?;
        writer.flush().await?;
        state
            .replication
            .update_follower(|f| f.state = super::FollowerState::Streaming);
        let silence = state.replication.heartbeat * 6 + Duration::from_secs(1);
        let mut beat = tokio::time::interval(state.replication.heartbeat);
        let mut primary_term = None;
        loop {
            tokio::select! {
                unit = next_unit(units, silence) => {
                    match unit? {
                        Unit::Message(m) => on_message(state, m, units, writer, &mut primary_term).await?,
                        Unit::Chunk(_) => return Err(StreamError::Peer("pages outside a copy".into())),
                    }
                    writer.flush().await?;
                }
                _ = beat.tick() => {
                    let seq = state.write_path.committed();
                    write_message(writer, &Message::Heartbeat { seq, ts: now_ms(), term: state.term() }).await?;
                    writer.flush().await?;
                }
            }
        }
    }

    fn database_written(&self, _db: &str) {
        self.trigger();
    }
}

/// What the secondary answered.
enum Reply {
    Installed { name: String, error: Option<String> },
    Closed(String),
}

/// Reads the secondary's acks, heartbeats and install results.
async fn read_replies(
    state: Arc<Node>,
    instance: String,
    mut reader: StreamReader,
    replies: mpsc::Sender<Reply>,
) {
    let silence = state.replication.heartbeat * 6 + Duration::from_secs(1);
    loop {
        let reply = match tokio::time::timeout(silence, read_message(&mut reader)).await {
            Ok(Ok(
                Message::Ack { applied, term }
                | Message::Heartbeat {
                    seq: applied, term, ..
                },
            )) => {
                if term > state.term() {
                    let _ = state.step_down(term, "a FILE-mode secondary showed a higher term");
                    Reply::Closed(format!("secondary is at term {term}"))
                } else {
                    state.replication.record_ack(&instance, applied, term);
                    continue;
                }
            }
            Ok(Ok(Message::FileResult { name, ok, error })) => Reply::Installed {
                name,
                error: if ok {
                    None
                } else {
                    Some(error.unwrap_or_default())
                },
            },
            Ok(Ok(Message::Error { message })) => {
                Reply::Closed(format!("secondary reported: {message}"))
            }
            Ok(Ok(other)) => Reply::Closed(format!("unexpected {other:?}")),
            Ok(Err(e)) => Reply::Closed(e.to_string()),
            Err(_) => Reply::Closed(format!("no heartbeat for {silence:?}")),
        };
        let closed = matches!(reply, Reply::Closed(_));
        if replies.send(reply).await.is_err() || closed {
            return;
        }
    }
}

/// The size and modification time of a database's files (`.db`, `-wal`).
type FileStamp = Vec<(u64, Option<SystemTime>)>;

fn file_stamp(dir: &Path, name: &str) -> FileStamp {
    ["", "-wal"]
        .iter()
        .map(|suffix| {
            std::fs::metadata(dir.join(format!("{name}.db{suffix}")))
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None))
        })
        .collect()
}

/// The newest oplog sequence in a database file (0 when it has none or cannot say).
fn copy_version(conn: &rusqlite::Connection) -> u64 {
    as_internal(|| {
        conn.query_row("SELECT coalesce(max(seq), 0) FROM _dirk_oplog", [], |r| {
            r.get::<_, i64>(0)
        })
    })
    .map(|v| v.max(0) as u64)
    .unwrap_or(0)
}

/// One secondary's rounds, on the primary.
struct PrimaryRounds<'a> {
    mode: &'a FileMode,
    state: &'a Arc<Node>,
    instance: String,
    /// What the secondary holds (updated as it confirms installs).
    view: HashMap<String, CopyInfo>,
    /// File stamps at the last comparison, per database.
    stamps: HashMap<String, FileStamp>,
    replies: mpsc::Receiver<Reply>,
    outgoing: PathBuf,
}

/// How one database's copy went.
enum CopyOutcome {
    Sent,
    Unchanged,
    Failed,
}

impl PrimaryRounds<'_> {
    async fn run(&mut self, writer: &mut StreamWriter) -> Result<(), StreamError> {
        let state = self.state;
        let mut commits = state.write_path.subscribe();
        let mut triggers = self.mode.triggers.subscribe();
        let mut ended = state.replication.watch_streams();
        let mut sweep = tokio::time::interval(self.mode.interval);
        let heartbeat = state.replication.heartbeat;
        let (mut pending, mut sweep_due) = (true, true);
        let mut dirty_since = now_ms();
        let mut last_round: Option<Instant> = None;
        let mut last_sweep: Option<Instant> = None;
        loop {
            let gap = last_round.map_or(Duration::ZERO, |t| {
                MIN_ROUND_GAP.saturating_sub(t.elapsed())
            });
            let wait = if pending { gap } else { heartbeat };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    if !pending {
                        let beat = Message::Heartbeat { seq: state.write_path.committed(), ts: now_ms(), term: state.term() };
                        write_message(writer, &beat).await?;
                        writer.flush().await?;
                        continue;
                    }
                    let sweeping = sweep_due && last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                    pending = self.round(writer, sweeping, dirty_since).await?;
                    if sweeping {
                        last_sweep = Some(Instant::now());
                        sweep_due = false;
                    }
                    last_round = Some(Instant::now());
                    dirty_since = now_ms();
                }
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !pending { dirty_since = now_ms(); }
                    pending = true;
                }
                _ = triggers.changed() => { pending = true; sweep_due = true; }
                _ = sweep.tick() => { pending = true; sweep_due = true; }
                _ = ended.changed() => {
                    return Err(StreamError::Peer("the replication mode or this node's role changed".into()));
                }
                reply = self.replies.recv() => return Err(closed(reply)),
            }
        }
    }

    /// Copies what changed, drops what went, and ends the round at the position it started at.
    /// Returns true when something failed and a new round should follow soon.
    async fn round(
        &mut self,
        writer: &mut StreamWriter,
        sweeping: bool,
        dirty_since: i64,
    ) -> Result<bool, StreamError> {
        let state = self.state;
        let position = state.write_path.committed();
        let names = state.catalog.names();
        let mut retry = false;
        for name in &names {
            match self.sync_database(name, sweeping, writer).await? {
                CopyOutcome::Failed => retry = true,
                CopyOutcome::Sent | CopyOutcome::Unchanged => {}
            }
        }
        let gone: Vec<String> = self
            .view
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            write_message(writer, &Message::FileDrop { name: name.clone() }).await?;
            writer.flush().await?;
            self.wait_installed(&name).await?;
            self.view.remove(&name);
            self.stamps.remove(&name);
            state
                .replication
                .update_file_copy(&self.instance, &name, None::<fn(&mut _)>);
        }
        if retry {
            // A copy failed: the secondary does not hold `position`, so it must not confirm it.
            return Ok(true);
        }
        let chain = state
            .meta
            .history(&state.instance_id)
            .map_err(|e| StreamError::Server(e.into()))?;
        write_message(
            writer,
            &Message::FileRoundEnd {
                position,
                ts: dirty_since,
                chain,
            },
        )
        .await?;
        writer.flush().await?;
        state
            .replication
            .record_sent(&self.instance, 0, 0, Some((position, dirty_since)));
        Ok(false)
    }

    /// Sends `name` when the secondary's copy is older (or, at a sweep, when its files changed).
    async fn sync_database(
        &mut self,
        name: &str,
        sweeping: bool,
        writer: &mut StreamWriter,
    ) -> Result<CopyOutcome, StreamError> {
        let state = self.state.clone();
        let dir = state.data_dir();
        let stamp = file_stamp(&dir, name);
        let forced = sweeping && self.stamps.get(name) != Some(&stamp);
        let known_version = self.view.get(name).map(|c| c.version).unwrap_or(0);
        if !forced && known_version > 0 {
            let n = name.to_string();
            let s = state.clone();
            let version = blocking(move || {
                let db = s.catalog.get(&n)?;
                let conn = db.lease()?;
                let v = copy_version(&conn);
                db.give_back(conn);
                Ok(v)
            })
            .await
            .unwrap_or(0);
            if version == known_version {
                return Ok(CopyOutcome::Unchanged);
            }
        }
        let copy = self.outgoing.join(format!("{name}.db"));
        let (n, c) = (name.to_string(), copy.clone());
        let taken = blocking(move || {
            std::fs::create_dir_all(c.parent().unwrap_or(Path::new(".")))?;
            let started = Instant::now();
            let db = state.catalog.get(&n)?;
            let conn = db.lease()?;
            let taken = file_copy::snapshot_database(&conn, &c);
            db.give_back(conn);
            taken?;
            let snapshot_ms = started.elapsed().as_millis() as u64;
            let version = copy_version(&file_copy::open_source(&c)?);
            let map = PageMap::of_file(&c)?;
            let map_ms = started.elapsed().as_millis() as u64 - snapshot_ms;
            tracing::debug!(database = %n, bytes = map.bytes, snapshot_ms, map_ms, "copy taken");
            Ok((version, map))
        })
        .await;
        let (version, map) = match taken {
            Ok(taken) => taken,
            // Dropped meanwhile: the next round drops it on the secondary.
            Err(_) if !self.state.catalog.names().iter().any(|n| n == name) => {
                return Ok(CopyOutcome::Unchanged)
            }
            Err(e) => {
                tracing::warn!(replica = %self.instance, database = name, error = %e, "cannot take a copy; the round is retried");
                return Ok(CopyOutcome::Failed);
            }
        };
        self.stamps.insert(name.to_string(), stamp);
        let outcome = self.send_copy(name, version, &map, &copy, writer).await;
        let _ = std::fs::remove_file(&copy);
        outcome
    }

    async fn send_copy(
        &mut self,
        name: &str,
        version: u64,
        map: &PageMap,
        copy: &Path,
        writer: &mut StreamWriter,
    ) -> Result<CopyOutcome, StreamError> {
        let known = self.view.get(name).filter(|c| c.page_size == map.page_size);
        let pages: Vec<u32> = match known {
            Some(k) if self.mode.page_deltas => changed_pages(&k.crcs, map),
            _ => (0..map.crcs.len() as u32).collect(),
        };
        if pages.is_empty() && known.is_some_and(|k| k.version == version) {
            return Ok(CopyOutcome::Unchanged);
        }
        let begin = Message::FileCopyBegin {
            name: name.to_string(),
            version,
            page_size: map.page_size,
            bytes: map.bytes,
            file_crc: map.file_crc,
            pages: pages.len() as u64,
        };
        write_message(writer, &begin).await?;
        let sent = send_pages(copy, map.page_size, &pages, writer).await?;
        write_message(
            writer,
            &Message::FileCopyEnd {
                name: name.to_string(),
            },
        )
        .await?;
        writer.flush().await?;
        self.state
            .replication
            .record_sent(&self.instance, sent, 0, None);
        let hub = &self.state.replication;
        match self.wait_installed(name).await? {
            None => {
                let count = pages.len() as u64;
                hub.update_file_copy(
                    &self.instance,
                    name,
                    Some(|s: &mut super::FileCopyStatus| s.copied(version, map.bytes, sent, count)),
                );
                self.view.insert(
                    name.to_string(),
                    CopyInfo {
                        name: name.to_string(),
                        version,
                        page_size: map.page_size,
                        crcs: map.crcs.clone(),
                    },
                );
                Ok(CopyOutcome::Sent)
            }
            Some(error) => {
                tracing::warn!(replica = %self.instance, database = name, %error, "copy refused; sending every page next time");
                hub.update_file_copy(
                    &self.instance,
                    name,
                    Some(|s: &mut super::FileCopyStatus| s.failed(sent, error)),
                );
                self.view.remove(name);
                self.stamps.remove(name);
                Ok(CopyOutcome::Failed)
            }
        }
    }

    /// Waits for the secondary's result for `name`: `None` when installed, else why not.
    async fn wait_installed(&mut self, name: &str) -> Result<Option<String>, StreamError> {
        match tokio::time::timeout(INSTALL_WAIT, self.replies.recv()).await {
            Ok(Some(Reply::Installed { name: n, error })) if n == name => Ok(error),
            Ok(Some(Reply::Installed { name: n, .. })) => Err(StreamError::Peer(format!(
                "result for `{n}` while copying `{name}`"
            ))),
            Ok(other) => Err(closed(other)),
            Err(_) => Err(StreamError::Peer(format!(
                "`{name}` not installed within {INSTALL_WAIT:?}"
            ))),
        }
    }
}

fn closed(reply: Option<Reply>) -> StreamError {
    match reply {
        Some(Reply::Closed(why)) => StreamError::Peer(why),
        _ => StreamError::Peer("secondary left".into()),
    }
}

/// Sends the given pages of `copy` as chunks; returns the bytes sent.
async fn send_pages(
    copy: &Path,
    page_size: u32,
    pages: &[u32],
    writer: &mut StreamWriter,
) -> Result<u64, StreamError> {
    let mut sent = 0u64;
    for batch in pages.chunks(PAGES_PER_CHUNK) {
        let (path, batch) = (copy.to_path_buf(), batch.to_vec());
        let mut chunk = blocking(move || {
            let mut file = std::fs::File::open(&path)?;
            let mut chunk = Vec::with_capacity(batch.len() * (4 + page_size as usize));
            for index in batch {
                chunk.extend_from_slice(&index.to_be_bytes());
                chunk.extend_from_slice(&file_copy::read_page(&mut file, page_size, index)?);
            }
            Ok(chunk)
        })
        .await?;
        crate::failure_injection::corrupt_file_chunk(&mut chunk);
        write_chunk(writer, &chunk).await?;
        sent += chunk.len() as u64;
    }
    Ok(sent)
}

/// The newest oplog sequence in the live database `name`.
fn live_version(state: &Node, name: &str) -> Option<u64> {
    let db = state.catalog.get(name).ok()?;
    let conn = db.lease().ok()?;
    let version = copy_version(&conn);
    db.give_back(conn);
    Some(version)
}

/// The secondary's copies, for its inventory (shadows of databases it no longer has go).
fn local_inventory(state: &Node) -> crate::error::Result<Vec<CopyInfo>> {
    let shadows = state.data_dir().join(SHADOW_DIR);
    std::fs::create_dir_all(&shadows)?;
    let names = state.catalog.names();
    for entry in std::fs::read_dir(&shadows)? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !names.iter().any(|n| n == stem) || path.extension().is_none_or(|e| e != "db") {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let shadow = shadows.join(format!("{name}.db"));
            match (PageMap::of_file(&shadow), file_copy::open_source(&shadow)) {
                (Ok(map), Ok(conn)) => CopyInfo {
                    // A database written since its last copy (this node was a primary meanwhile)
                    // is not that copy: version 0 makes the primary send it again.
                    version: Some(copy_version(&conn))
                        .filter(|v| live_version(state, &name) == Some(*v))
                        .unwrap_or(0),
                    page_size: map.page_size,
                    crcs: map.crcs,
                    name,
                },
                _ => CopyInfo {
                    name,
                    ..CopyInfo::default()
                },
            }
        })
        .collect())
}

/// Handles one message from the primary, on the secondary.
async fn on_message(
    state: &Arc<Node>,
    message: Message,
    units: &mut Units,
    writer: &mut StreamWriter,
    primary_term: &mut Option<u64>,
) -> Result<(), StreamError> {
    if let Message::Heartbeat { seq, term, .. } = message {
        // A FILE-mode secondary takes its primary's term from the heartbeats, so that its
        // acknowledgements count for write concerns, and refuses a primary of a lower term.
        check_term(state, term, "a FILE-mode primary")?;
        state.adopt_term(term)?;
        *primary_term = Some(term);
        state
            .replication
            .update_follower(|f| f.primary_sequence = seq);
        return Ok(());
    }
    if primary_term.is_none() {
        return Err(StreamError::Peer(
            "the primary sent copies before its term".into(),
        ));
    }
    let answer = match message {
        Message::FileCopyBegin {
            name,
            version,
            page_size,
            bytes,
            file_crc,
            pages,
        } => {
            let copy = IncomingCopy {
                name,
                version,
                page_size,
                bytes,
                file_crc,
                pages,
            };
            on_copy(state, copy, units).await?
        }
        Message::FileDrop { name } => on_drop(state, name).await?,
        Message::FileRoundEnd {
            position,
            ts,
            chain,
        } => {
            adopt_chain(state, &chain)?;
            state.write_path.reset(position);
            // Every database now equals the primary's copy at `position` or later.
            state.replication.set_synced(true);
            state.replication.update_follower(|f| {
                f.applied_sequence = position;
                f.primary_sequence = f.primary_sequence.max(position);
                f.last_applied_commit_ms = ts;
            });
            Message::Ack {
                applied: position,
                term: state.term(),
            }
        }
        Message::Error { message } => return Err(StreamError::Peer(format!("primary: {message}"))),
        other => return Err(StreamError::Peer(format!("unexpected message {other:?}"))),
    };
    write_message(writer, &answer).await?;
    Ok(())
}

/// Adopts the primary's history chain when it differs from this node's (`chain` empty: the
/// primary predates chains in FILE rounds).
fn adopt_chain(state: &Node, chain: &[crate::meta::HistoryLink]) -> Result<(), StreamError> {
    if chain.is_empty() {
        return Ok(());
    }
    let own = state
        .meta
        .history(&state.instance_id)
        .map_err(|e| StreamError::Server(e.into()))?;
    if own != chain {
        state
            .meta
            .adopt_history(chain, state.term())
            .map_err(|e| StreamError::Server(e.into()))?;
    }
    Ok(())
}

/// Receives and installs one copy; answers how it went.
async fn on_copy(
    state: &Arc<Node>,
    copy: IncomingCopy,
    units: &mut Units,
) -> Result<Message, StreamError> {
    validate_name(&copy.name).map_err(StreamError::Server)?;
    let error = receive_copy(state, &copy, units)
        .await?
        .err()
        .map(|e| e.to_string());
    record_follower_copy(state, &copy, error.clone());
    Ok(Message::FileResult {
        name: copy.name,
        ok: error.is_none(),
        error,
    })
}

/// Drops a database the primary no longer has, with its shadow; answers how it went.
async fn on_drop(state: &Arc<Node>, name: String) -> Result<Message, StreamError> {
    validate_name(&name).map_err(StreamError::Server)?;
    let (s, n) = (state.clone(), name.clone());
    let dropped = blocking(move || {
        if !s.replication.is_synced() {
            save_dropped_database(&s, &n)?;
        }
        s.catalog.drop_database(&n, true)?;
        let _ = std::fs::remove_file(s.data_dir().join(SHADOW_DIR).join(format!("{n}.db")));
        Ok(())
    })
    .await;
    state.replication.update_follower(|f| {
        f.files.remove(&name);
    });
    let error = dropped.err().map(|e| e.to_string());
    Ok(Message::FileResult {
        name,
        ok: error.is_none(),
        error,
    })
}

/// A copy being received.
struct IncomingCopy {
    name: String,
    version: u64,
    page_size: u32,
    bytes: u64,
    file_crc: u32,
    pages: u64,
}

fn record_follower_copy(state: &Node, copy: &IncomingCopy, error: Option<String>) {
    let sent = copy.pages * (4 + u64::from(copy.page_size));
    state.replication.update_follower(|f| {
        let status = f.files.entry(copy.name.clone()).or_default();
        match error {
            None => status.copied(copy.version, copy.bytes, sent, copy.pages),
            Some(e) => status.failed(sent, e),
        }
    });
}

/// Receives the pages of one copy, verifies it, installs it. The outer error ends the stream;
/// the inner one (a refused copy) is reported to the primary, which sends it again.
async fn receive_copy(
    state: &Arc<Node>,
    copy: &IncomingCopy,
    units: &mut Units,
) -> Result<crate::error::Result<()>, StreamError> {
    let shadows = state.data_dir().join(SHADOW_DIR);
    let shadow = shadows.join(format!("{}.db", copy.name));
    let (target, page_size, bytes) = (shadow.clone(), copy.page_size, copy.bytes);
    let mut delta = Some(
        blocking(move || {
            std::fs::create_dir_all(target.parent().unwrap_or(Path::new(".")))?;
            DeltaWriter::in_place(&target, page_size, bytes)
        })
        .await,
    );
    let silence = state.replication.heartbeat * 6 + Duration::from_secs(10);
    loop {
        match next_unit(units, silence).await? {
            Unit::Chunk(chunk) => {
                // After a failed write the rest of the copy is read and dropped.
                if matches!(delta, Some(Ok(_))) {
                    if let Some(Ok(writer)) = delta.take() {
                        delta =
                            Some(blocking(move || write_pages(writer, &chunk, page_size)).await);
                    }
                }
            }
            Unit::Message(Message::FileCopyEnd { name }) if name == copy.name => break,
            other => return Err(StreamError::Peer(format!("unexpected {other:?} in a copy"))),
        }
    }
    let writer = match delta {
        Some(Ok(w)) => w,
        Some(Err(e)) => return Ok(Err(e)),
        None => return Ok(Err(ServerError::Internal("copy lost".into()))),
    };
    let (s, name, crc) = (state.clone(), copy.name.clone(), copy.file_crc);
    let installed = blocking(move || Ok(install(&s, &name, writer, &shadow, crc))).await?;
    Ok(installed)
}

fn write_pages(
    mut writer: DeltaWriter,
    chunk: &[u8],
    page_size: u32,
) -> crate::error::Result<DeltaWriter> {
    let record = 4 + page_size as usize;
    for part in chunk.chunks(record) {
        let (index, page) = part.split_at(4.min(part.len()));
        let index = u32::from_be_bytes(
            index
                .try_into()
                .map_err(|_| ServerError::Refused("a page record is cut short".into()))?,
        );
        writer.write_page(index, page)?;
    }
    Ok(writer)
}

/// On a node not yet synced with its primary (repointed, or a demoted primary): the writes of
/// `name` the copy lacks go to a rollback file before the copy replaces them.
fn save_own_writes(state: &Node, name: &str, shadow: &Path) -> crate::error::Result<()> {
    if !state.catalog.names().iter().any(|n| n == name) {
        return Ok(());
    }
    let db = state.catalog.get(name)?;
    let live = db.lease()?;
    let saved = file_copy::open_source(shadow)
        .and_then(|copy| super::rollback::save_divergent_from_copy(state, name, &live, &copy));
    db.give_back(live);
    if let Some(path) = saved? {
        tracing::warn!(database = name, file = %path.display(), "writes this node made that the new primary's copy lacks were saved to a rollback file");
    }
    Ok(())
}

/// On a node not yet synced with its primary: every write of `name`, which the primary no
/// longer has, goes to a rollback file before the database is dropped.
fn save_dropped_database(state: &Node, name: &str) -> crate::error::Result<()> {
    if !state.catalog.names().iter().any(|n| n == name) {
        return Ok(());
    }
    let db = state.catalog.get(name)?;
    let live = db.lease()?;
    let saved = super::rollback::save_database(state, name, &live);
    db.give_back(live);
    if let Some(path) = saved? {
        tracing::warn!(database = name, file = %path.display(), "the writes of a database the new primary no longer has were saved to a rollback file before it was dropped");
    }
    Ok(())
}

/// Verifies the patched shadow and writes it into the live database (created when new). A
/// shadow that fails its CRC is deleted: the next inventory asks for every page.
fn install(
    state: &Node,
    name: &str,
    writer: DeltaWriter,
    shadow: &Path,
    crc: u32,
) -> crate::error::Result<()> {
    let started = Instant::now();
    if let Err(e) = writer.finish(shadow, crc) {
        let _ = std::fs::remove_file(shadow);
        return Err(e);
    }
    let verify_ms = started.elapsed().as_millis() as u64;
    if !state.replication.is_synced() {
        save_own_writes(state, name, shadow)?;
    }
    let owner = state.new_owner();
    state.under_gate(owner, || {
        state.catalog.create(name, true)?;
        let db = state.catalog.get(name)?;
        file_copy::install_copy(shadow, db.path())
    })?;
    let install_ms = started.elapsed().as_millis() as u64 - verify_ms;
    tracing::debug!(database = name, verify_ms, install_ms, "copy installed");
    Ok(())
}
