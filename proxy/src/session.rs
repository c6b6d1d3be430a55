//! One client's session through the proxy.
//!
//! Each statement is classified (`dirkdb_core::sql::classify`). Writes, transaction control,
//! `USE` and anything unsure run on the session's own connection to the primary, so its
//! transaction and connection state (`last_insert_rowid()`, TEMP tables) stay with it; reads
//! inside a transaction do too. Other reads go to the first candidate of the read strategy: with
//! READ_YOUR_WRITES the replica is first asked to reach the session's last write position
//! (`DIRK WAIT`), and a replica that cannot within `readYourWritesWaitMs` is passed over for the
//! next candidate, the primary last. A read whose instance fails before answering anything is
//! retried once on another. The session's database is replayed lazily on whichever connection
//! serves it. A write's rows pass to the client as they arrive; with a write concern of k
//! replicas, its outcome (the last frame) is held until k replicas have
//! applied it (`DIRK WAIT REPLICAS`), or replaced by an error saying how many did.
//!
//! A session's read-your-writes position is that of its last write: the sequence and the
//! history it was written in (`DIRK POSITION HISTORY`, sent to the primary right behind each
//! write in the same flush, so asking costs no round trip; see [`dirkdb_core::position`]), since a
//! new primary reuses the sequences of writes a failover rolled back. A replica serves the
//! session's reads once it holds that position of that history (`DIRK WAIT <seq> <ms>
//! <history>`); before the primary serves one, it is asked too (`DIRK WAIT <seq> 0 <history>`),
//! and when the position is not in its history (the write was never acknowledged to k ≥ 1
//! replicas and a failover rolled it back) the read is refused once with an error saying so,
//! and the session follows the primary's history from there: its reads never silently go
//! backwards.
//!
//! Three extensions are answered by the session itself, from its read-your-writes position:
//! `DIRK POSITION` → `position <seq>`, `DIRK POSITION HISTORY` → `position <seq> history <id>`,
//! and `DIRK SEEN <seq> [<history>]`, which raises the position (see `raise_position`) and is
//! answered as `position <n>`. A caching proxy in front sends `DIRK SEEN <seq>` with a change
//! notice's position (a bare sequence, compared by sequence alone), so that the session's later
//! reads on replicas wait for it. A client that reconnects sends `DIRK SEEN <seq> <history>`
//! with the position its previous session answered to `DIRK POSITION HISTORY`: a new session has
//! no position, so without it a read could go to a replica that lacks the earlier session's
//! writes. With the history, a position from an older term is judged by each node's history
//! chain as a session's own would be (held: served; rolled back: refused once). Other `DIRK`
//! statements go to the primary; `DIRK CHANGES` is the listener's (see [`crate::change_feed`]).
//!
//! A statement of an open transaction that times out, or whose primary connection fails, loses
//! the connection and with it the transaction (the server rolls it back). The session says so in
//! that statement's error, forgets the transaction, and refuses the transaction's further
//! statements until the client ends it: ROLLBACK answers OK, COMMIT (or RELEASE) answers that
//! nothing was committed. Nothing of the transaction can then commit statement by statement.
//!
//! What the session sends on its client's behalf (`DIRK WAIT`, `DIRK WAIT REPLICAS`, `DIRK
//! POSITION HISTORY`, …) is bounded like a statement: by the wait it asks the server for plus
//! `loadBalancer.statementTimeoutMs` (a frozen instance keeps its connections open and never
//! answers); past it the connection is dropped and the client told, naming the knob. A write
//! whose settling fails so is answered as of unknown outcome (it ran on the primary). A read
//! whose `DIRK WAIT` is not answered is tried on another instance. A COMMIT or RELEASE the
//! server answers with an error follows what the server says of the transaction: rolled back
//! (the session forgets it) or still open (the client may retry or roll back).
//!
//! In FILE replication mode, each acknowledged write outside a transaction, and each commit of a
//! transaction that wrote, hands the session's database to the shared
//! [`FileTriggers`](crate::file_triggers::FileTriggers) (fire-and-forget), which asks the
//! primary to copy that database to the secondaries; this happens before the write concern is
//! waited for, since in FILE mode the copy is what the replicas wait for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dirkdb_client::ClientError;
use dirkdb_core::config::{ReadConsistency, ReplicationType};
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::{Frame, RawKind};
use dirkdb_core::position::Position;
use dirkdb_core::sql::classify::{classify, StatementClass, TransactionControl};
use dirkdb_core::sql::transaction::{TransactionEnd, TransactionState, FAILED_COMMIT_ROLLED_BACK};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::backend::{within, Backend, BackendConn};
use crate::error::ProxyError;
use crate::file_triggers::FileTriggers;
use crate::topology::{SharedTopology, Topology};

/// Asked right behind every statement that can commit a write on the primary, in the same
/// flush (pipelined), for the write's position: no round trip of its own.
const POSITION_HISTORY: &str = "DIRK POSITION HISTORY";

mod multi_primary;

/// Per-client state.
pub(crate) struct ProxySession {
    topology: Arc<SharedTopology>,
    db: Option<String>,
    txn: TransactionState,
    /// A write succeeded in the open transaction (its commit triggers a FILE copy).
    txn_wrote: bool,
    /// Why the open transaction was rolled back, until the client ends it.
    rolled_back: Option<String>,
    /// The read-your-writes position: the session's last write (or a change notice's position).
    last_write: Position,
    primary: Option<(Arc<Backend>, BackendConn)>,
    file_triggers: Arc<FileTriggers>,
    /// The authenticated client; backend connections run for it (`crate::auth`).
    user: Option<String>,
    /// MULTI_PRIMARY: the master the next statement runs on instead of the primary.
    route_to: Option<Arc<Backend>>,
    /// MULTI_PRIMARY: the open transaction's master, once its first statement chose it.
    txn_owner: Option<(Arc<Backend>, String)>,
    /// MULTI_PRIMARY: transaction control answered before the transaction's master was known,
    /// replayed on it before the transaction's first statement.
    pending_txn: Vec<String>,
    /// The last statement run on the primary (or a master) was answered with an error.
    last_failed: bool,
    /// MULTI_PRIMARY: the positions of the session's writes per master, and what each master
    /// was seen to have applied of them (read-your-writes across masters).
    positions: multi_primary::SessionPositions,
}

/// Where a statement's frames go.
enum Sink<'a, S> {
    /// Straight to the client, as they arrive; `sent` turns true with the first frame.
    Client {
        out: &'a mut ServerConnection<S>,
        sent: bool,
    },
    /// Rows straight to the client as they arrive; the last frame (the statement's outcome,
    /// its bytes as the server sent them) kept until the write is settled (its write concern),
    /// so memory stays one frame whatever the answer's size.
    HoldLast {
        out: &'a mut ServerConnection<S>,
        last: Option<Vec<u8>>,
    },
}

/// What a write concern wait answered.
struct Confirmations {
    concern: dirkdb_core::config::WriteConcern,
    /// Replicas (or other masters) that applied the write.
    confirmed: u64,
    /// The server's whole answer (the ack watermark reads it too).
    answer: String,
}

/// How a read attempt ended.
enum ReadOutcome {
    Served,
    /// The replica could not reach the session's last write in time.
    Behind,
}

impl ProxySession {
    /// A session with no current database; its acknowledged writes go to `file_triggers` when
    /// the topology is in FILE replication mode.
    pub(crate) fn new(
        topology: Arc<SharedTopology>,
        file_triggers: Arc<FileTriggers>,
    ) -> ProxySession {
        ProxySession {
            topology,
            db: None,
            txn: TransactionState::default(),
            txn_wrote: false,
            rolled_back: None,
            last_write: Position::default(),
            primary: None,
            file_triggers,
            user: None,
            route_to: None,
            txn_owner: None,
            pending_txn: Vec::new(),
            last_failed: false,
            positions: Default::default(),
        }
    }

    /// Whether a transaction is open (its idle limit is `limits.idleInTransactionTimeoutMs`;
    /// closing the connection rolls it back on the primary).
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.open
    }

    /// The client the session's statements run for, once it authenticated.
    pub(crate) fn set_user(&mut self, user: Option<String>) {
        self.user = user;
    }

    /// Answers one statement with one complete response.
    pub(crate) async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        incoming: Incoming,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let limit = self.topology.load().config.limits.max_statement_bytes;
        let sql = match incoming.into_statement(limit) {
            Ok(sql) => sql,
            Err(refusal) => return out.send(&refusal).await,
        };
        let _held = match self.topology.in_flight().hold(sql.len()) {
            Ok(held) => held,
            Err(refusal) => return out.send(&Frame::error(refusal)).await,
        };
        if let Some(own) = own_extension(&sql) {
            let frame = match own {
                Ok(OwnExtension::Position) => {
                    Frame::Message(format!("position {}", self.last_write.seq))
                }
                Ok(OwnExtension::PositionHistory) => Frame::Message(self.last_write.to_string()),
                Ok(OwnExtension::Seen(seen)) => {
                    raise_position(&mut self.last_write, seen);
                    Frame::Message(format!("position {}", self.last_write.seq))
                }
                Err(msg) => Frame::error(msg),
            };
            return out.send(&frame).await;
        }
        if crate::change_feed::is_changes_sql(&sql) {
            // Never on a pooled connection: it would turn into a feed for good.
            let msg =
                "DIRK CHANGES is served on a connection of its own: send it to the proxy's port";
            return out.send(&Frame::error(msg)).await;
        }
        if let Err(e) = dirkdb_core::sql::limits::check_expression_depth(&sql) {
            return out.send(&Frame::error(e)).await;
        }
        let class = classify(&sql);
        if let Some(answer) = self.answer_in_rolled_back_transaction(&class) {
            return out.send(&answer).await;
        }
        let in_transaction = self.txn.open;
        let result = if self.topology.load().is_multi_primary() {
            self.multi_primary(&sql, &class, out).await
        } else {
            match class {
                StatementClass::Read if !self.txn.open => self.read(&sql, out).await,
                class => self.on_primary(&sql, &class, out).await,
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(ProxyError::Client(e)) => Err(e),
            // The failed statement took the primary connection: its transaction is gone (unless
            // the statement was its COMMIT, which ran: then only settling it failed).
            Err(e) if in_transaction && self.txn.open && self.primary.is_none() => {
                let e = self.roll_back_transaction(e);
                out.send(&Frame::error(e)).await
            }
            Err(e) => out.send(&Frame::error(e)).await,
        }
    }

    /// Forgets the open transaction, which `cause` rolled back; its further statements are
    /// refused until the client ends it.
    fn roll_back_transaction(&mut self, cause: ProxyError) -> ProxyError {
        self.txn = TransactionState::default();
        self.txn_wrote = false;
        self.txn_owner = None;
        self.pending_txn.clear();
        self.rolled_back = Some(cause.to_string());
        tracing::debug!(error = %cause, "a failed statement rolled back the session's transaction");
        ProxyError::TransactionRolledBack(Box::new(cause))
    }

    /// After a rollback the client was told of: the answer to each statement until the client
    /// ends the transaction (ROLLBACK: OK; COMMIT or RELEASE: nothing committed; others refused).
    fn answer_in_rolled_back_transaction(&mut self, class: &StatementClass) -> Option<Frame> {
        let cause = self.rolled_back.as_ref()?;
        let answer = match class {
            StatementClass::Transaction(TransactionControl::Rollback) => {
                Frame::Message("OK".into())
            }
            StatementClass::Transaction(
                TransactionControl::Commit | TransactionControl::Release(_),
            ) => Frame::error(ProxyError::NothingCommitted(cause.clone())),
            _ => {
                return Some(Frame::error(ProxyError::InRolledBackTransaction(
                    cause.clone(),
                )))
            }
        };
        self.rolled_back = None;
        Some(answer)
    }

    fn statement_timeout(&self) -> Duration {
        Duration::from_millis(
            self.topology
                .load()
                .config
                .load_balancer
                .statement_timeout_ms
                .max(1),
        )
    }

    /// The session's connection to the current primary (a new one when the primary changed);
    /// MULTI_PRIMARY: to the master chosen for the statement (`route_to`).
    async fn primary_conn(&mut self) -> Result<(Arc<Backend>, BackendConn), ProxyError> {
        let current = match &self.route_to {
            Some(master) => master.clone(),
            None => self.topology.load().primary().clone(),
        };
        match self.primary.take() {
            Some((backend, conn)) if Arc::ptr_eq(&backend, &current) => Ok((backend, conn)),
            Some(_) if self.txn.open => Err(ProxyError::Backend {
                instance: current.id.clone(),
                reason: "the primary changed during the transaction".into(),
            }),
            held => {
                if let Some((backend, conn)) = held {
                    backend.checkin(conn);
                }
                let conn = current.checkout(None).await?;
                Ok((current, conn))
            }
        }
    }

    /// Runs a statement on the primary; writes are held until their write concern is met.
    async fn on_primary<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        class: &StatementClass,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        if let Some(reason) = crate::ack_watermark::failover_waiting() {
            return Err(ProxyError::FailoverWaiting(reason));
        }
        let (backend, mut conn) = self.primary_conn().await?;
        let timeout = self.statement_timeout();
        // RELEASE too: the outermost one commits (an inner one leaves the transaction open,
        // and nothing is waited for then).
        let settles_write = matches!(
            class,
            StatementClass::Write
                | StatementClass::Transaction(
                    TransactionControl::Commit | TransactionControl::Release(_)
                )
        );
        let mut sink = if settles_write {
            Sink::HoldLast {
                out: &mut *out,
                last: None,
            }
        } else {
            Sink::Client {
                out: &mut *out,
                sent: false,
            }
        };
        let db = self.db.clone();
        let user = self.user.clone();
        // A write's position is asked right behind it (MULTI_PRIMARY settles on its master).
        let ask =
            (settles_write && !self.topology.load().is_multi_primary()).then_some(POSITION_HISTORY);
        let run = async {
            backend.ensure_user(&mut conn, user.as_deref()).await?;
            if !matches!(class, StatementClass::Use(_)) {
                backend.ensure_db(&mut conn, db.as_deref()).await?;
            }
            if !leaves_connection_as_it_was(sql, class) {
                conn.note_statement(sql);
            }
            let failed = exchange(&backend, &mut conn, sql, &mut sink, settles_write, ask).await?;
            let position = match ask {
                Some(_) => Some(position_answer(&backend, &mut conn).await?),
                None => None,
            };
            Ok::<_, ProxyError>((failed, position))
        };
        let (failed, position) = match tokio::time::timeout(timeout, run).await {
            Ok(Ok((failed, position))) => {
                self.last_failed = failed;
                (failed, position)
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ProxyError::Timeout(
                    timeout.as_millis() as u64,
                    backend.id.clone(),
                ))
            }
        };
        if !failed && self.after_success(sql, class, &mut conn) {
            self.written();
        }
        if failed {
            self.after_failed_commit(&sink);
        }
        let (last, replaced) = match sink {
            Sink::HoldLast {
                last: Some(last), ..
            } if !failed => {
                let replaced = self.settle_write(&backend, &mut conn, position).await?;
                (Some(last), replaced)
            }
            Sink::HoldLast { last, .. } => (last, None),
            Sink::Client { .. } => (None, None),
        };
        self.primary = Some((backend, conn));
        match (replaced, last) {
            (Some(error), _) => out.send(&error).await?,
            (None, Some(last)) => {
                out.write_raw(&last).await?;
                out.flush().await?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Follows a statement that succeeded on the primary; true when it made writes durable
    /// (a write outside a transaction, or the commit of a transaction that wrote).
    fn after_success(&mut self, sql: &str, class: &StatementClass, conn: &mut BackendConn) -> bool {
        if let StatementClass::Use(name) = class {
            self.db = Some(name.clone());
            conn.db = Some(name.clone());
        }
        // Dropping the current database unselects it (the server did so on its side).
        if matches!(class, StatementClass::Write) && self.db.is_some() {
            let dropped = dirkdb_core::sql::dirkdb::dropped_database(sql);
            if dropped.is_some() && dropped == self.db {
                self.db = None;
                conn.db = None;
            }
        }
        follow_writes(&mut self.txn, &mut self.txn_wrote, class)
    }

    /// A COMMIT (or RELEASE) the server answered with an error ending in
    /// [`FAILED_COMMIT_ROLLED_BACK`] left no transaction open: the session follows. (One ending
    /// in `FAILED_COMMIT_STILL_OPEN`, or any other error, leaves it open, as the session has it.)
    fn after_failed_commit<S>(&mut self, sink: &Sink<'_, S>) {
        let Sink::HoldLast {
            last: Some(last), ..
        } = sink
        else {
            return;
        };
        // Held as the server's bytes: decoded here, on a failed write only.
        let held = dirkdb_core::frame::decode_whole(last).ok().flatten();
        if self.txn.open
            && held
                .as_ref()
                .and_then(Frame::error_text)
                .is_some_and(|e| e.ends_with(FAILED_COMMIT_ROLLED_BACK))
        {
            self.txn = TransactionState::default();
            self.txn_wrote = false;
            self.txn_owner = None;
        }
    }

    /// Hands the session's database to the FILE replication triggers (FILE mode only).
    fn written(&self) {
        let Some(db) = self.db.as_deref() else {
            return;
        };
        if self.topology.load().config.replication.kind == ReplicationType::File {
            self.file_triggers.trigger(db);
        }
    }

    /// Records the write's position and applies the write concern to its outcome (the last
    /// frame of its answer): `None` keeps it (the concern is met), `Some` is the error that
    /// replaces it.
    /// `asked` is the answer to the position asked right behind the write, when it was.
    async fn settle_write(
        &mut self,
        backend: &Backend,
        conn: &mut BackendConn,
        asked: Option<String>,
    ) -> Result<Option<Frame>, ProxyError> {
        if self.topology.load().is_multi_primary() {
            return self.settle_on_master(backend, conn).await;
        }
        let text = match asked {
            Some(text) => text,
            None => backend
                .extension(conn, POSITION_HISTORY, self.statement_timeout())
                .await
                .map_err(|e| outcome_unknown(backend, e))?,
        };
        let written = dirkdb_core::position::parse(&text).unwrap_or_default();
        let position = written.seq;
        self.wrote_at(written);
        let confirmations = self.confirmations(backend, conn, position).await;
        let Some(Confirmations {
            concern,
            confirmed,
            answer,
        }) = confirmations.map_err(|e| outcome_unknown(backend, e))?
        else {
            return Ok(None);
        };
        let still_primary = || self.topology.load().primary().id == backend.id;
        if confirmed >= u64::from(concern.replicas)
            && !crate::ack_watermark::acknowledge(position, &answer, still_primary)
            || !still_primary()
        {
            return Ok(Some(Frame::error(format!(
                "the write's outcome is unknown: {} stopped being the primary, or a failover began, before it was confirmed (it may be in a rollback file)",
                backend.id
            ))));
        }
        if confirmed < u64::from(concern.replicas) {
            let msg = format!(
                "the write is committed on the primary ({}) but only {confirmed} of {} replicas confirmed it within {} ms (routing.writes.writeConcern)",
                backend.id, concern.replicas, concern.timeout_ms
            );
            return Ok(Some(Frame::error(msg)));
        }
        Ok(None)
    }

    /// Follows the session's write at `written`: its position becomes the session's, unless an
    /// earlier write of the same history stands further (never, for one session).
    fn wrote_at(&mut self, written: Position) {
        if written.history != self.last_write.history || written.seq >= self.last_write.seq {
            self.last_write = written;
        }
    }

    /// READ_YOUR_WRITES, before the primary serves a read: asks it whether the session's
    /// position is in its history; when not, refuses this read with the reason and moves the
    /// session's position to the primary's.
    async fn own_writes_on_primary(&mut self) -> Result<(), ProxyError> {
        let topology = self.topology.load_full();
        if topology.config.routing.reads.consistency != ReadConsistency::ReadYourWrites
            || self.last_write.seq == 0
            || self.last_write.history.is_none()
            // The read is refused at once with the failover's reason (`on_primary`).
            || crate::ack_watermark::failover_waiting().is_some()
        {
            return Ok(());
        }
        let (backend, mut conn) = self.primary_conn().await?;
        let wait = self.last_write.wait_statement(0);
        let limit = self.statement_timeout();
        // On a timeout the connection is dropped: its answer may still come.
        let answer = within(limit, &backend.id, &wait, conn.client.execute(&wait)).await?;
        self.primary = Some((backend.clone(), conn));
        match answer {
            Err(ClientError::Server(e)) => match dirkdb_core::position::parse_refusal(&e) {
                Some(primary_at) => {
                    let position = std::mem::replace(&mut self.last_write, primary_at);
                    tracing::warn!(instance = %backend.id, %position, "a read-your-writes session's last write is not in the primary's history");
                    Err(ProxyError::OwnWriteRolledBack {
                        position: position.to_string(),
                        instance: backend.id.clone(),
                    })
                }
                // Not reached yet, or not told: the primary serves it as before.
                None => Ok(()),
            },
            Err(e) => {
                self.primary = None;
                Err(backend.failure(e.to_string()))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Waits for the write concern of a write at `position` (`DIRK WAIT REPLICAS`, answered
    /// within the concern's `timeoutMs` plus `loadBalancer.statementTimeoutMs`); `None` when
    /// there is nothing to wait for: no concern, an open transaction, or no position.
    async fn confirmations(
        &self,
        backend: &Backend,
        conn: &mut BackendConn,
        position: u64,
    ) -> Result<Option<Confirmations>, ProxyError> {
        let concern = self
            .topology
            .load()
            .config
            .routing
            .writes
            .write_concern
            .clone();
        if concern.replicas == 0 || self.txn.open || position == 0 {
            return Ok(None);
        }
        let wait = format!(
            "DIRK WAIT REPLICAS {} {position} {}",
            concern.replicas, concern.timeout_ms
        );
        let limit = Duration::from_millis(concern.timeout_ms) + self.statement_timeout();
        let answer = backend.extension(conn, &wait, limit).await?;
        let confirmed = parse_number(&answer, "replicas").unwrap_or(0);
        Ok(Some(Confirmations {
            concern,
            confirmed,
            answer,
        }))
    }

    /// Routes a read outside a transaction.
    async fn read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ProxyError> {
        let topology = self.topology.load_full();
        let primary = topology.primary().clone();
        let mut retried = false;
        for backend in topology.read_candidates(self.db.as_deref()) {
            if Arc::ptr_eq(&backend, &primary) {
                self.own_writes_on_primary().await?;
                return self.on_primary(sql, &StatementClass::Read, out).await;
            }
            let mut sent = false;
            match self.read_on(&topology, &backend, sql, out, &mut sent).await {
                Ok(ReadOutcome::Served) => return Ok(()),
                Ok(ReadOutcome::Behind) => continue,
                Err(ProxyError::Client(e)) => return Err(ProxyError::Client(e)),
                Err(e) if sent || retried => return Err(e),
                Err(e) => {
                    tracing::debug!(instance = %backend.id, error = %e, "read failed; retrying on another instance");
                    retried = true;
                }
            }
        }
        self.own_writes_on_primary().await?;
        self.on_primary(sql, &StatementClass::Read, out).await
    }

    async fn read_on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        topology: &Topology,
        backend: &Backend,
        sql: &str,
        out: &mut ServerConnection<S>,
        sent: &mut bool,
    ) -> Result<ReadOutcome, ProxyError> {
        let mut conn = backend.checkout(self.db.as_deref()).await?;
        let lb = &topology.config.load_balancer;
        let timeout = Duration::from_millis(lb.statement_timeout_ms.max(1));
        if topology.config.routing.reads.consistency == ReadConsistency::ReadYourWrites
            && self.last_write.seq > 0
        {
            let wait = self.last_write.wait_statement(lb.read_your_writes_wait_ms);
            let limit = Duration::from_millis(lb.read_your_writes_wait_ms) + timeout;
            // On a timeout the connection is dropped and the read tried elsewhere (`read`).
            match within(limit, &backend.id, &wait, conn.client.execute(&wait)).await? {
                Ok(_) => {}
                Err(ClientError::Server(_)) => {
                    backend.checkin(conn);
                    return Ok(ReadOutcome::Behind);
                }
                Err(e) => return Err(backend.failure(e.to_string())),
            }
        }
        let mut sink = Sink::Client {
            out: &mut *out,
            sent: false,
        };
        let run = async {
            backend.ensure_user(&mut conn, self.user.as_deref()).await?;
            backend.ensure_db(&mut conn, self.db.as_deref()).await?;
            exchange(backend, &mut conn, sql, &mut sink, false, None).await
        };
        let result = tokio::time::timeout(timeout, run).await;
        if let Sink::Client { sent: true, .. } = sink {
            *sent = true;
        }
        match result {
            Ok(Ok(_)) => {
                backend.checkin(conn);
                Ok(ReadOutcome::Served)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProxyError::Timeout(
                timeout.as_millis() as u64,
                backend.id.clone(),
            )),
        }
    }
}

impl Drop for ProxySession {
    fn drop(&mut self) {
        // A connection left inside a transaction is closed (the server rolls it back).
        if let Some((backend, conn)) = self.primary.take() {
            if !self.txn.open {
                backend.checkin(conn);
            }
        }
    }
}

/// Sends `sql` (a statement as the client connection's splitter framed it, or text checked to
/// be one statement) and passes its response frames to `sink`; returns whether it ended in an
/// error.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &Backend,
    conn: &mut BackendConn,
    sql: &str,
    sink: &mut Sink<'_, S>,
    write: bool,
    then: Option<&str>,
) -> Result<bool, ProxyError> {
    let started = Instant::now();
    let _running = backend.start();
    let sent = match then {
        Some(then) => conn.client.send_framed_then(sql, then).await,
        None => conn.client.send_framed(sql).await,
    };
    sent.map_err(|e| backend.failure(e.to_string()))?;
    loop {
        let (kind, bytes) = conn
            .client
            .next_raw_frame()
            .await
            .map_err(|e| backend.failure(format!("failed mid-statement: {e}")))?;
        let last = matches!(kind, RawKind::Message { .. });
        let failed = matches!(kind, RawKind::Message { error: true });
        // Passed on as the bytes they came in: nothing is decoded or encoded again.
        match sink {
            Sink::Client { out, sent } => {
                *sent = true;
                out.write_raw(bytes).await?;
            }
            Sink::HoldLast { out, last: held } => {
                if last {
                    *held = Some(bytes.to_vec());
                } else {
                    out.write_raw(bytes).await?;
                }
            }
        }
        if last {
            if let Sink::Client { out, .. } = sink {
                out.flush().await?;
            }
            backend.record(write, failed, started.elapsed().as_micros() as u64);
            return Ok(failed);
        }
    }
}

/// Reads the answer to the `DIRK POSITION HISTORY` sent right behind a write (see
/// [`exchange`]): its text, or the failure that leaves the write's outcome unknown.
async fn position_answer(backend: &Backend, conn: &mut BackendConn) -> Result<String, ProxyError> {
    loop {
        let frame = conn.client.next_frame().await.map_err(|e| {
            outcome_unknown(
                backend,
                backend.failure(format!("no answer to `{POSITION_HISTORY}`: {e}")),
            )
        })?;
        if let Some(reason) = frame.error_text() {
            return Err(outcome_unknown(
                backend,
                backend.failure(format!("`{POSITION_HISTORY}` failed: {reason}")),
            ));
        }
        if let Frame::Message(text) = frame {
            return Ok(text);
        }
    }
}

/// Follows a statement that succeeded on the primary in the session's transaction state and
/// its "the open transaction wrote" flag; true when the statement made writes durable: a write
/// outside a transaction, or the commit (`COMMIT`, `END`, outermost `RELEASE`) of a transaction
/// in which a write succeeded.
fn follow_writes(txn: &mut TransactionState, txn_wrote: &mut bool, class: &StatementClass) -> bool {
    match class {
        StatementClass::Transaction(control) => {
            let was_open = txn.open;
            let end = txn.follow(control);
            if !was_open && txn.open {
                *txn_wrote = false;
            }
            match end {
                TransactionEnd::None => false,
                TransactionEnd::Committed => std::mem::take(txn_wrote),
                TransactionEnd::RolledBack => {
                    *txn_wrote = false;
                    false
                }
            }
        }
        StatementClass::Write if txn.open => {
            *txn_wrote = true;
            false
        }
        StatementClass::Write => true,
        StatementClass::Read | StatementClass::Use(_) => false,
    }
}

/// True for a read that cannot change the state of the connection it runs on: `classify` makes
/// a Read of no PRAGMA, no TEMP name and nothing connection-bound, so only an `EXPLAIN` (of an
/// ATTACH, say) is left for [`BackendConn::note_statement`] to look at. Saves that second
/// lexing on every read (issue #19).
fn leaves_connection_as_it_was(sql: &str, class: &StatementClass) -> bool {
    let explain = sql
        .trim_start()
        .get(..7)
        .is_some_and(|w| w.eq_ignore_ascii_case("EXPLAIN"));
    matches!(class, StatementClass::Read) && !explain
}

/// The extensions the session answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnExtension {
    /// `DIRK POSITION`
    Position,
    /// `DIRK POSITION HISTORY`
    PositionHistory,
    /// `DIRK SEEN <seq> [<history>]`
    Seen(Position),
}

/// Recognizes `DIRK POSITION [HISTORY]` and `DIRK SEEN <seq> [<history>]` (case-insensitive,
/// the history id as written); `Err` with the reason for malformed forms of these, `None` for
/// every other statement.
fn own_extension(sql: &str) -> Option<Result<OwnExtension, String>> {
    let head = sql.trim_start().get(..4);
    if !head.is_some_and(|w| w.eq_ignore_ascii_case("DIRK")) {
        return None; // every statement passes here: no allocation for the others
    }
    let words: Vec<&str> = sql.split_whitespace().collect();
    let is = |i: usize, word: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(word));
    if !is(0, "DIRK") {
        return None;
    }
    if is(1, "POSITION") {
        return Some(match words.len() {
            2 => Ok(OwnExtension::Position),
            3 if is(2, "HISTORY") => Ok(OwnExtension::PositionHistory),
            _ => Err(format!(
                "`DIRK POSITION` takes no argument but HISTORY, got `{}`",
                sql.trim()
            )),
        });
    }
    if is(1, "SEEN") {
        let seq = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        };
        let seen = match words.as_slice() {
            [_, _, n] => seq(n).map(|seq| Position { seq, history: None }),
            [_, _, n, history] => seq(n).map(|seq| Position {
                seq,
                history: Some(history.to_string()),
            }),
            _ => None,
        };
        return Some(seen.map(OwnExtension::Seen).ok_or_else(|| {
            format!(
                "expected `DIRK SEEN <position> [<history>]` with a position from 0 to {}, got `{}`",
                u64::MAX,
                sql.trim()
            )
        }));
    }
    None
}

/// `DIRK SEEN`: raises a session's read-your-writes position `mine` to `seen`. A bare sequence
/// (a change notice's) raises the sequence alone when it is further. A position with its history
/// (one a client carried over from an earlier session, read there with `DIRK POSITION
/// HISTORY`) is taken when the session has no position yet, or only a sequence that is not
/// further, or a position of the same history that is not further. The session's own position
/// in another history stands: the session wrote it after it connected, so after what it saw.
fn raise_position(mine: &mut Position, seen: Position) {
    let raises = match (&seen.history, &mine.history) {
        _ if mine.seq == 0 => true,
        (None, _) => seen.seq > mine.seq,
        (Some(_), None) => seen.seq >= mine.seq,
        (Some(carried), Some(own)) => carried == own && seen.seq > mine.seq,
    };
    if raises {
        *mine = seen;
    }
}

/// What a client is told when its write ran on the primary `backend` but settling it (its
/// position, its write concern) failed with `cause`.
fn outcome_unknown(backend: &Backend, cause: ProxyError) -> ProxyError {
    ProxyError::OutcomeUnknown {
        instance: backend.id.clone(),
        cause: Box::new(cause),
    }
}

/// The number after `word` at the start of `text` (`replicas 2 term 5` → 2).
fn parse_number(text: &str, word: &str) -> Option<u64> {
    text.strip_prefix(word)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_durable_writes_trigger_a_file_copy() {
        let (mut txn, mut wrote) = (TransactionState::default(), false);
        let mut run = |sql: &str| follow_writes(&mut txn, &mut wrote, &classify(sql));
        assert!(run("INSERT INTO t VALUES (1)"), "an autocommit write");
        assert!(!run("SELECT * FROM t"));
        assert!(!run("USE shop"));
        assert!(!run("BEGIN"));
        assert!(!run("SELECT * FROM t"));
        assert!(!run("COMMIT"), "a transaction without writes");
        assert!(!run("BEGIN"));
        assert!(!run("UPDATE t SET a = 2"), "not durable before the commit");
        assert!(!run("DELETE FROM t"));
        assert!(run("COMMIT"), "the commit of a transaction that wrote");
        assert!(!run("BEGIN"));
        assert!(!run("INSERT INTO t VALUES (2)"));
        assert!(!run("ROLLBACK"), "rolled back");
        assert!(!run("BEGIN"));
        assert!(!run("COMMIT"), "the rolled back write does not linger");
        assert!(!run("SAVEPOINT a"));
        assert!(!run("INSERT INTO t VALUES (3)"));
        assert!(!run("SAVEPOINT b"));
        assert!(!run("RELEASE b"), "an inner release commits nothing");
        assert!(run("RELEASE a"), "the outermost release commits");
        assert!(!run("COMMIT"), "nothing open any more");
    }

    #[test]
    fn a_seen_position_raises_the_session_s_only_where_it_is_further() {
        let at = |seq: u64, history: Option<&str>| Position {
            seq,
            history: history.map(str::to_string),
        };
        let raised = |mine: Position, seen: Position| {
            let mut mine = mine;
            raise_position(&mut mine, seen);
            mine
        };
        let carried = at(5, Some("m1-a"));
        assert_eq!(
            raised(at(0, None), carried.clone()),
            carried,
            "a new session"
        );
        assert_eq!(raised(at(3, None), carried.clone()), carried);
        assert_eq!(raised(at(9, None), carried.clone()), at(9, None));
        assert_eq!(raised(at(3, Some("m1-a")), carried.clone()), carried);
        assert_eq!(
            raised(at(8, Some("m1-a")), carried.clone()),
            at(8, Some("m1-a"))
        );
        assert_eq!(
            raised(at(2, Some("m2-b")), carried.clone()),
            at(2, Some("m2-b")),
            "the session's own write of another history stands"
        );
        assert_eq!(raised(at(3, Some("m1-a")), at(4, None)), at(4, None));
        assert_eq!(
            raised(at(5, Some("m1-a")), at(4, None)),
            at(5, Some("m1-a"))
        );
    }

    #[test]
    fn only_plain_reads_skip_the_connection_state_check() {
        let skips = |sql: &str| leaves_connection_as_it_was(sql, &classify(sql));
        assert!(skips("SELECT id, k FROM bench WHERE id = 5"));
        assert!(skips("WITH t(a) AS (SELECT 1) SELECT a FROM t"));
        for looked_at in [
            "EXPLAIN PRAGMA query_only = 1",
            " explain ATTACH 'x.db' AS x",
            "PRAGMA foreign_keys = OFF",
            "SELECT * FROM temp.t",
            "CREATE TEMP TABLE t(a)",
            "ATTACH 'x.db' AS x",
        ] {
            assert!(!skips(looked_at), "{looked_at}");
        }
    }

    #[test]
    fn own_extensions_parse_strictly() {
        assert_eq!(
            own_extension("DIRK POSITION"),
            Some(Ok(OwnExtension::Position))
        );
        assert_eq!(
            own_extension(" dirk\tposition "),
            Some(Ok(OwnExtension::Position))
        );
        let at = |seq: u64, history: Option<&str>| {
            Some(Ok(OwnExtension::Seen(Position {
                seq,
                history: history.map(str::to_string),
            })))
        };
        assert_eq!(own_extension("dirk seen 42"), at(42, None));
        assert_eq!(
            own_extension("DIRK SEEN 18446744073709551615"),
            at(u64::MAX, None)
        );
        assert_eq!(
            own_extension("DIRK SEEN 7 m1-18f-2A"),
            at(7, Some("m1-18f-2A")),
            "the history as written"
        );
        assert_eq!(
            own_extension("dirk position history"),
            Some(Ok(OwnExtension::PositionHistory))
        );
        for bad in [
            "DIRK SEEN",
            "DIRK SEEN x",
            "DIRK SEEN -1",
            "DIRK SEEN +1",
            "DIRK SEEN 1.5",
            "DIRK SEEN x h",
            "DIRK SEEN 1 h 2",
            "DIRK SEEN 18446744073709551616",
            "DIRK POSITION 3",
            "DIRK POSITION HISTORY 3",
        ] {
            assert!(matches!(own_extension(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(own_extension("DIRK WAIT 1 2"), None);
        assert_eq!(own_extension("DIRK CHANGES"), None);
        assert_eq!(own_extension("SELECT 1"), None);
    }
}
