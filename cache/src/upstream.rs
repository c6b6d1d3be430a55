//! One session's connection to the upstream (the proxy, or a server), made when first needed
//! and made again after it breaks, with the session's database replayed on it.
//!
//! It also carries the position floor: before a read that may be kept, the cache tells the
//! upstream the highest primary position it has seen (`DIRK SEEN <seq>`), so the proxy serves
//! that read from an instance at least that far (its read-your-writes path). It is sent only
//! when the floor moved, in the same flush as the read (pipelined: no round trip of its own;
//! its answer is read before the read's), and dropped for good on an upstream that does not
//! know it.
//!
//! The upstream may be a list (`host:port,host:port`: several proxies). A new connection goes to
//! the first address that answers, starting with the one in use; when a connection breaks or
//! times out, the next one starts with the next address. A session's transaction does not
//! survive the move: the session reports it rolled back (see `session`).
//!
//! When a proxy dies, what is sent again follows one rule ([`Retry`]): a statement is sent
//! twice only when that cannot run it twice.
//! * Before any statement, a connection the upstream has closed meanwhile (a proxy killed
//!   between two statements) is replaced by one to the next address, and the statement goes
//!   there, once; inside a transaction it is not replaced: the statement fails with
//!   [`UpstreamError::TransactionLost`].
//! * A read outside a transaction (and `USE`, `DIRK SEEN`) whose connection breaks after it was
//!   sent and before the first frame of its answer arrived is sent again on the next address, at
//!   most once per address: nothing of it reached the client, and running a read twice changes
//!   nothing.
//! * A write, DDL or transaction statement that was sent is never sent again: when the
//!   connection breaks before its answer, it fails with [`UpstreamError::OutcomeUnknown`] (it may
//!   have committed). A timeout is never retried (the upstream may still be running it).

use std::time::Duration;

use bytes::BytesMut;
use dirkdb_client::{Client, ClientError};
use dirkdb_core::frame::{Frame, RawKind};
use tokio::time::Instant;

/// Why the upstream could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection, or it broke.
    #[error("the upstream {addr} cannot be reached: {reason}")]
    Unreachable {
        /// The upstream address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the statement timeout; the connection was closed.
    #[error("the upstream {addr} did not answer within {ms} ms (cache.statementTimeoutMs)")]
    Timeout {
        /// The upstream address.
        addr: String,
        /// The timeout.
        ms: u64,
    },
    /// The connection broke inside the session's transaction.
    #[error("the upstream {addr} connection broke inside a transaction ({reason}): the transaction was rolled back and its statements are lost; this session is now outside any transaction, start it again")]
    TransactionLost {
        /// The upstream address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection broke after a write was sent and before its answer.
    #[error("the upstream {addr} connection broke before the answer ({reason}): the statement may or may not have run; the cache never sends a write twice, check before repeating it")]
    OutcomeUnknown {
        /// The upstream address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream connection could not be switched to the client's new user.
    #[error("the upstream refused to run for user `{user}` (DIRK AS): {reason}")]
    ActAs {
        /// The user the client authenticated as.
        user: String,
        /// The upstream's answer.
        reason: String,
    },
    /// The session's database could not be selected again on a new connection.
    #[error("cannot select database {db} on the new upstream connection: {reason}")]
    Reselect {
        /// The database.
        db: String,
        /// The upstream's answer.
        reason: String,
    },
}

/// The addresses of an upstream list (`host:port,host:port`), in order; never empty.
pub(crate) fn addresses(list: &str) -> Vec<String> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        vec![list.to_string()]
    } else {
        addrs
    }
}

/// Connects to the first address of `addrs` that answers within `timeout`, trying them in
/// order from `start`; returns the client and the index of its address.
pub(crate) async fn connect_first(
    addrs: &[String],
    start: usize,
    timeout: Duration,
) -> Result<(Client, usize), ClientError> {
    let mut last = ClientError::Closed;
    for step in 0..addrs.len() {
        let i = (start + step) % addrs.len();
        match Client::connect_timeout(&addrs[i], timeout).await {
            Ok(client) => {
                if step > 0 {
                    tracing::info!(upstream = %addrs[i], "moved to the next upstream");
                }
                return Ok((client, i));
            }
            Err(e) => {
                tracing::debug!(upstream = %addrs[i], error = %e, "upstream unreachable");
                last = e;
            }
        }
    }
    Err(last)
}

/// What may be sent again when the upstream connection breaks around a statement (the rule is
/// in this module's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// A read outside a transaction: sent again on the next address when the connection breaks
    /// before the first frame of its answer.
    Read,
    /// A write outside a transaction: a connection found closed before sending is replaced;
    /// once sent, never again.
    BeforeSending,
    /// Inside a transaction: nothing is replaced; a closed connection lost the transaction.
    Never,
}

/// The statement whose answer is being read, kept while a retry may still send it again.
struct Pending {
    db: Option<String>,
    statement: String,
    /// Addresses still to try.
    tries_left: usize,
    /// The position floor the statement was sent at (0: none of its own), set again first on
    /// the next address.
    floor: u64,
}

/// The session's upstream connection.
pub(crate) struct Upstream {
    /// The address in use (the first of `addrs` until a connection moved on).
    addr: String,
    addrs: Vec<String>,
    current: usize,
    client: Option<Client>,
    /// The database selected on `client`.
    db: Option<String>,
    floor: u64,
    floor_supported: bool,
    /// A floor to send in front of the next read ([`Upstream::raise_floor`]).
    floor_due: u64,
    timeout: Duration,
    deadline: Option<Instant>,
    /// The client the session runs for (`crate::auth`).
    user: Option<String>,
    /// The client the open connection runs for (`DIRK AS`); it follows `user` before the next
    /// statement is sent.
    acting: Option<String>,
    /// A read sent whose first frame has not arrived yet.
    pending: Option<Pending>,
}

impl Upstream {
    /// Not connected yet.
    pub(crate) fn new(addr: String, timeout: Duration) -> Upstream {
        let addrs = addresses(&addr);
        Upstream {
            addr: addrs[0].clone(),
            addrs,
            current: 0,
            client: None,
            db: None,
            floor: 0,
            floor_supported: true,
            floor_due: 0,
            timeout,
            deadline: None,
            user: None,
            acting: None,
            pending: None,
        }
    }

    /// Makes the connection run for `user` from the next statement on. An open connection is
    /// kept and switched with `DIRK AS` before that statement, so a client that authenticates
    /// again inside a transaction keeps its transaction (under the new user's grants), as on
    /// the proxy and the server.
    pub(crate) fn set_user(&mut self, user: Option<String>) {
        self.user = user;
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            addr: self.addr.clone(),
            reason: e.to_string(),
        }
    }

    /// Connected, with `db` selected.
    async fn ready(&mut self, db: Option<&str>) -> Result<&mut Client, UpstreamError> {
        if self.client.is_none() {
            let (mut client, i) = connect_first(&self.addrs, self.current, Duration::from_secs(2))
                .await
                .map_err(|e| self.unreachable(e))?;
            self.current = i;
            self.addr = self.addrs[i].clone();
            crate::auth::login(&mut client, self.user.as_deref())
                .await
                .map_err(|e| self.unreachable(e))?;
            self.client = Some(client);
            self.acting = self.user.clone();
            self.db = None;
            self.floor = 0;
        }
        self.act_for_user().await?;
        if let Some(db) = db.filter(|db| self.db.as_deref() != Some(*db)) {
            let statement = format!("USE {db}");
            match self.call(&statement).await {
                Ok(Frame::Message(text)) if !text.starts_with(dirkdb_core::frame::ERROR_PREFIX) => {
                    self.db = Some(db.to_string());
                }
                Ok(frame) => {
                    return Err(UpstreamError::Reselect {
                        db: db.to_string(),
                        reason: frame
                            .error_text()
                            .unwrap_or("unexpected answer")
                            .to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| UpstreamError::Unreachable {
                addr: self.addr.clone(),
                reason: "not connected".into(),
            })
    }

    /// Switches the open connection to the session's user (`DIRK AS`) when it runs for another
    /// one; without cluster credentials nobody is acted for (grants are not enforced upstream).
    async fn act_for_user(&mut self) -> Result<(), UpstreamError> {
        if self.acting == self.user || crate::auth::cluster().is_none() {
            return Ok(());
        }
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        match self.call(&format!("DIRK AS {user}")).await? {
            Frame::Message(text) if !text.starts_with(dirkdb_core::frame::ERROR_PREFIX) => {
                self.acting = Some(user);
                Ok(())
            }
            frame => Err(UpstreamError::ActAs {
                user,
                reason: frame
                    .error_text()
                    .unwrap_or("unexpected answer")
                    .to_string(),
            }),
        }
    }

    /// Sends a statement whose answer is one message frame, and returns that frame.
    async fn call(&mut self, statement: &str) -> Result<Frame, UpstreamError> {
        self.send_raw(statement).await?;
        loop {
            match self.next_frame_once().await? {
                frame @ Frame::Message(_) => return Ok(frame),
                _ => continue,
            }
        }
    }

    async fn send_raw(&mut self, statement: &str) -> Result<(), UpstreamError> {
        self.send_raw_then(statement, None).await
    }

    /// [`Upstream::send_raw`], with `then` (when given) right behind it in the same flush.
    async fn send_raw_then(
        &mut self,
        statement: &str,
        then: Option<&str>,
    ) -> Result<(), UpstreamError> {
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        self.deadline = Some(Instant::now() + self.timeout);
        let sent = match then {
            Some(then) => client.send_framed_then(statement, then).await,
            None => client.send_statement(statement).await,
        };
        if let Err(e) = sent {
            return Err(self.broken(e));
        }
        Ok(())
    }

    /// Sends `statement` with `db` selected, and `then` right behind it in the same flush
    /// (pipelined: its answer follows the statement's); read the answers with
    /// [`Upstream::next_frame`]. `retry` says what may happen when the connection turns out
    /// broken (see [`Retry`]).
    pub(crate) async fn send(
        &mut self,
        db: Option<&str>,
        statement: &str,
        then: Option<&str>,
        retry: Retry,
    ) -> Result<(), UpstreamError> {
        self.pending = None;
        self.replace_if_closed(retry).await?;
        self.ready(db).await?;
        let floor = self.take_due_floor(retry);
        if retry == Retry::Read {
            self.pending = Some(Pending {
                db: db.map(str::to_string),
                statement: statement.to_string(),
                tries_left: self.addrs.len().saturating_sub(1),
                floor: floor.unwrap_or(0),
            });
        }
        if let Some(seen) = floor {
            return self.send_behind_floor(seen, statement).await;
        }
        match self.send_raw_then(statement, then).await {
            Ok(()) => Ok(()),
            // `next_frame` sends the read again, on the next address.
            Err(_) if self.pending.as_ref().is_some_and(|p| p.tries_left > 0) => Ok(()),
            Err(e) if retry == Retry::Never => Err(self.transaction_lost(e)),
            Err(e) => Err(e),
        }
    }

    /// Drops a connection the upstream closed since the last answer (a proxy that died between
    /// statements): the next statement then goes to the next address. Inside a transaction
    /// that is the transaction's loss.
    async fn replace_if_closed(&mut self, retry: Retry) -> Result<(), UpstreamError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        // Nothing is due between two answers: a frame or an end here means the connection is
        // over (or out of step), and polling once never waits.
        let why = match ready_now(client.next_frame()).await {
            None => return Ok(()),
            Some(Err(e)) => e.to_string(),
            Some(Ok(_)) => "a frame arrived between two answers".to_string(),
        };
        let error = self.broken_because(why);
        tracing::info!(error = %error, "the upstream connection was closed since the last statement: moving on");
        match retry {
            Retry::Never => Err(self.transaction_lost(error)),
            _ => Ok(()),
        }
    }

    fn transaction_lost(&self, error: UpstreamError) -> UpstreamError {
        UpstreamError::TransactionLost {
            addr: self.addr.clone(),
            reason: reason_of(error),
        }
    }

    /// Declares the session's database after a successful `USE` it sent itself.
    pub(crate) fn selected(&mut self, db: &str) {
        self.db = Some(db.to_string());
    }

    /// The next frame of the current answer. A read sent with [`Retry::Read`] whose connection
    /// breaks before its first frame is sent again on the next address, transparently.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame, UpstreamError> {
        loop {
            match self.next_frame_once().await {
                Ok(frame) => {
                    self.pending = None;
                    return Ok(frame);
                }
                Err(e @ UpstreamError::Unreachable { .. }) => self.send_pending_again(e).await?,
                Err(e) => {
                    self.pending = None;
                    return Err(e);
                }
            }
        }
    }

    /// Like [`Upstream::next_frame`], without decoding the frame: its bytes, as they came, are
    /// appended to `into`, and its kind is returned (the cache passes answers on and keeps them
    /// as bytes: nothing is decoded and encoded again).
    pub(crate) async fn next_raw_frame(
        &mut self,
        into: &mut BytesMut,
    ) -> Result<RawKind, UpstreamError> {
        loop {
            match self.next_raw_frame_once(into).await {
                Ok(kind) => {
                    self.pending = None;
                    return Ok(kind);
                }
                Err(e @ UpstreamError::Unreachable { .. }) => self.send_pending_again(e).await?,
                Err(e) => {
                    self.pending = None;
                    return Err(e);
                }
            }
        }
    }

    /// After the connection broke before an answer: sends the pending read again on the next
    /// address, or gives back `e` when there is none (or no tries are left).
    async fn send_pending_again(&mut self, e: UpstreamError) -> Result<(), UpstreamError> {
        let Some(mut pending) = self.pending.take() else {
            return Err(e);
        };
        if pending.tries_left == 0 {
            return Err(e);
        }
        pending.tries_left -= 1;
        tracing::info!(error = %e, statement = %pending.statement, "the upstream broke before answering a read: sending it to the next upstream");
        let floor = self.floor.max(pending.floor);
        self.ready(pending.db.as_deref()).await?;
        self.restore_floor(floor).await?;
        self.send_raw(&pending.statement).await?;
        self.pending = Some(pending);
        Ok(())
    }

    /// A read sent again on a new connection keeps the position floor the first one had.
    async fn restore_floor(&mut self, floor: u64) -> Result<(), UpstreamError> {
        if self.floor_supported && floor > self.floor {
            let frame = self.call(&format!("DIRK SEEN {floor}")).await?;
            if frame.error_text().is_none() {
                self.floor = floor;
            }
        }
        Ok(())
    }

    async fn next_frame_once(&mut self) -> Result<Frame, UpstreamError> {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.timeout);
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        match tokio::time::timeout_at(deadline, client.next_frame()).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => Err(self.broken(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn next_raw_frame_once(&mut self, into: &mut BytesMut) -> Result<RawKind, UpstreamError> {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.timeout);
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        match tokio::time::timeout_at(deadline, client.next_raw_frame()).await {
            Ok(Ok((kind, bytes))) => {
                into.extend_from_slice(bytes);
                Ok(kind)
            }
            Ok(Err(e)) => Err(self.broken(e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// No answer within the statement timeout: the connection is closed.
    fn timed_out(&mut self) -> UpstreamError {
        self.client = None;
        self.move_on();
        UpstreamError::Timeout {
            addr: self.addr.clone(),
            ms: self.timeout.as_millis() as u64,
        }
    }

    fn broken(&mut self, e: ClientError) -> UpstreamError {
        self.broken_because(e)
    }

    fn broken_because(&mut self, why: impl std::fmt::Display) -> UpstreamError {
        self.client = None;
        let error = self.unreachable(why);
        self.move_on();
        error
    }

    /// The next connection starts with the next upstream of the list.
    fn move_on(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
    }

    /// Asks that the next read sent with [`Retry::Read`] be served at a position of at least
    /// `seen` (the highest the change feed reported): `DIRK SEEN <seen>` goes in front of it,
    /// in the same flush, when `seen` is above this connection's floor.
    pub(crate) fn raise_floor(&mut self, seen: u64) {
        self.floor_due = self.floor_due.max(seen);
    }

    /// The floor to send in front of a statement sent with `retry`, when one is due.
    fn take_due_floor(&mut self, retry: Retry) -> Option<u64> {
        if retry != Retry::Read {
            return None;
        }
        let due = std::mem::take(&mut self.floor_due);
        (self.floor_supported && due > self.floor).then_some(due)
    }

    /// Sends `DIRK SEEN <seen>` and the read `statement` behind it in one flush, and reads the
    /// floor's answer; the read's follows. When the connection breaks before the read's
    /// answer, the read is sent again on the next address at the same floor
    /// ([`Upstream::send_pending_again`]).
    async fn send_behind_floor(&mut self, seen: u64, statement: &str) -> Result<(), UpstreamError> {
        let floor = format!("DIRK SEEN {seen}");
        if let Err(e) = self.send_raw_then(&floor, Some(statement)).await {
            return self.send_pending_again(e).await;
        }
        let answer = loop {
            match self.next_frame_once().await {
                Ok(frame @ Frame::Message(_)) => break frame,
                Ok(_) => continue,
                Err(e @ UpstreamError::Unreachable { .. }) => {
                    return self.send_pending_again(e).await
                }
                Err(e) => {
                    self.pending = None;
                    return Err(e);
                }
            }
        };
        if answer.error_text().is_some() {
            tracing::debug!(upstream = %self.addr, "the upstream does not take DIRK SEEN; reads are not held to a position floor");
            self.floor_supported = false;
        } else {
            self.floor = seen;
        }
        Ok(())
    }

    /// Reads the answer of a `DIRK POSITION` already sent behind the previous statement
    /// (pipelined); `None` when the upstream does not say.
    pub(crate) async fn pipelined_position(&mut self) -> Option<u64> {
        self.client.as_ref()?;
        loop {
            match self.next_frame().await.ok()? {
                Frame::Message(text) => {
                    return text.strip_prefix("position ")?.trim().parse().ok();
                }
                _ => continue,
            }
        }
    }
}

/// Polls `future` once: its output when it is ready at once, else `None`. Not a zero
/// `tokio::time::timeout`: that one registers a timer, which fires at the timer's next
/// millisecond tick, so the check it made before every statement cost each write through the
/// cache about 1 ms of waiting (1.2 ms of a 2.0 ms write at one client).
async fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// The reason inside an upstream error, for an error that wraps it.
fn reason_of(error: UpstreamError) -> String {
    match error {
        UpstreamError::Unreachable { reason, .. }
        | UpstreamError::TransactionLost { reason, .. }
        | UpstreamError::OutcomeUnknown { reason, .. }
        | UpstreamError::Reselect { reason, .. } => reason,
        e @ (UpstreamError::Timeout { .. } | UpstreamError::ActAs { .. }) => e.to_string(),
    }
}

/// A write's error once sent: a broken connection leaves its outcome unknown.
pub(crate) fn after_write(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::Unreachable { addr, reason } => {
            UpstreamError::OutcomeUnknown { addr, reason }
        }
        other => other,
    }
}

/// A `COMMIT` (or outermost `RELEASE`) whose connection broke may have committed.
pub(crate) fn at_commit(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::TransactionLost { addr, reason } => {
            UpstreamError::OutcomeUnknown { addr, reason }
        }
        other => other,
    }
}

/// A transaction's error: a broken connection rolled it back.
pub(crate) fn inside_transaction(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::Unreachable { addr, reason }
        | UpstreamError::OutcomeUnknown { addr, reason } => {
            UpstreamError::TransactionLost { addr, reason }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check before each statement must not wait for a timer: polling once is ready at
    /// its first poll, where a zero `timeout` over a pending future is not (it waits for the
    /// timer's next tick: the 1 ms each write through the cache used to wait).
    #[tokio::test]
    async fn polling_once_is_ready_at_the_first_poll() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        let mut once = std::pin::pin!(ready_now(std::future::pending::<()>()));
        assert_eq!(once.as_mut().poll(&mut cx), Poll::Ready(None));
        let mut ready = std::pin::pin!(ready_now(async { 7 }));
        assert_eq!(ready.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
        let mut zero = std::pin::pin!(tokio::time::timeout(
            Duration::ZERO,
            std::future::pending::<()>()
        ));
        assert!(
            zero.as_mut().poll(&mut cx).is_pending(),
            "a zero timeout is ready at once now: this test no longer tells the two apart"
        );
    }

    #[tokio::test]
    async fn a_list_is_split_and_the_first_address_that_answers_is_used() {
        assert_eq!(addresses("a:1, b:2,"), vec!["a:1", "b:2"]);
        assert_eq!(addresses("a:1"), vec!["a:1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let addrs = vec![dead.clone(), live.clone()];
        let (_, i) = connect_first(&addrs, 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(i, 1, "the dead address is skipped");
        let e = connect_first(std::slice::from_ref(&dead), 0, Duration::from_secs(1))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&dead), "{e}");
    }

    /// How a fake upstream treats each connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answers every statement with `ok <n>`.
        Answers,
        /// Reads one statement and closes without answering (dies mid-statement).
        DiesMidStatement,
        /// Answers one statement, then closes (dies between statements).
        DiesAfterOne,
        /// Answers statements two at a time, once both have arrived: a client that waits for
        /// the first answer before sending the second never gets one.
        AnswersPairs,
    }

    /// A fake upstream; returns its address and the statements it received.
    async fn fake(behaviour: Behaviour) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use dirkdb_core::connection::ServerConnection;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut conn = ServerConnection::new(socket, 1 << 20);
                    let mut n = 0;
                    while let Ok(Some(incoming)) = conn.read_statement().await {
                        let Ok(sql) = incoming.into_statement(1 << 20) else {
                            return;
                        };
                        log.lock().unwrap().push(sql);
                        n += 1;
                        if matches!(behaviour, Behaviour::DiesMidStatement) {
                            return;
                        }
                        if matches!(behaviour, Behaviour::AnswersPairs) {
                            if n % 2 == 1 {
                                continue;
                            }
                            let _ = conn.send(&Frame::Message(format!("ok {}", n - 1))).await;
                        }
                        let _ = conn.send(&Frame::Message(format!("ok {n}"))).await;
                        if matches!(behaviour, Behaviour::DiesAfterOne) {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn a_read_is_sent_again_on_the_next_upstream_a_write_never_is() {
        let (dying, dying_saw) = fake(Behaviour::DiesMidStatement).await;
        let (live, live_saw) = fake(Behaviour::Answers).await;
        let list = format!("{dying},{live}");
        let timeout = Duration::from_secs(5);
        let mut read = Upstream::new(list.clone(), timeout);
        read.send(None, "SELECT 1", None, Retry::Read)
            .await
            .unwrap();
        let frame = read.next_frame().await.unwrap();
        assert!(
            matches!(frame, Frame::Message(ref m) if m == "ok 1"),
            "{frame:?}"
        );
        assert_eq!(*live_saw.lock().unwrap(), vec!["SELECT 1"]);
        let mut write = Upstream::new(list, timeout);
        write
            .send(None, "INSERT INTO t VALUES (1)", None, Retry::BeforeSending)
            .await
            .unwrap();
        let e = after_write(write.next_frame().await.unwrap_err()).to_string();
        assert!(e.contains("may or may not have run"), "{e}");
        assert_eq!(
            dying_saw.lock().unwrap().len(),
            2,
            "both reached the dying upstream once"
        );
        assert_eq!(
            live_saw.lock().unwrap().len(),
            1,
            "the write was not sent twice"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_between_statements_is_replaced_before_sending_except_in_a_transaction(
    ) {
        let (once, _) = fake(Behaviour::DiesAfterOne).await;
        let (live, live_saw) = fake(Behaviour::Answers).await;
        let list = format!("{once},{live}");
        let timeout = Duration::from_secs(5);
        let mut up = Upstream::new(list.clone(), timeout);
        up.send(None, "SELECT 1", None, Retry::Read).await.unwrap();
        up.next_frame().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        up.send(None, "INSERT INTO t VALUES (1)", None, Retry::BeforeSending)
            .await
            .unwrap();
        let frame = up.next_frame().await.unwrap();
        assert!(
            matches!(frame, Frame::Message(ref m) if m == "ok 1"),
            "{frame:?}"
        );
        assert_eq!(*live_saw.lock().unwrap(), vec!["INSERT INTO t VALUES (1)"]);
        let mut txn = Upstream::new(list, timeout);
        txn.send(None, "BEGIN", None, Retry::BeforeSending)
            .await
            .unwrap();
        txn.next_frame().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = txn
            .send(None, "INSERT INTO t VALUES (2)", None, Retry::Never)
            .await
            .unwrap_err();
        assert!(matches!(e, UpstreamError::TransactionLost { .. }), "{e}");
        assert!(e.to_string().contains("rolled back"), "{e}");
        assert_eq!(
            live_saw.lock().unwrap().len(),
            1,
            "nothing of the transaction went on"
        );
    }

    #[tokio::test]
    async fn a_read_goes_behind_its_floor_in_the_same_flush_and_a_floor_is_sent_once() {
        let (addr, saw) = fake(Behaviour::AnswersPairs).await;
        let mut up = Upstream::new(addr, Duration::from_secs(5));
        async fn read(up: &mut Upstream, sql: &str) -> Frame {
            tokio::time::timeout(Duration::from_secs(2), async {
                up.send(None, sql, None, Retry::Read).await?;
                up.next_frame().await
            })
            .await
            .expect("the read waited for its floor's answer before it was sent")
            .unwrap()
        }
        up.raise_floor(5);
        let frame = read(&mut up, "SELECT 1").await;
        assert!(
            matches!(frame, Frame::Message(ref m) if m == "ok 2"),
            "{frame:?}"
        );
        up.raise_floor(5);
        up.raise_floor(9);
        let frame = read(&mut up, "SELECT 2").await;
        assert!(
            matches!(frame, Frame::Message(ref m) if m == "ok 4"),
            "{frame:?}"
        );
        up.raise_floor(9);
        // A floor already held is not sent again: this read goes alone (and is answered with
        // the next one, in a pair).
        up.send(None, "SELECT 3", None, Retry::Read).await.unwrap();
        up.send_raw("SELECT 4").await.unwrap();
        up.next_frame().await.unwrap();
        assert_eq!(
            *saw.lock().unwrap(),
            vec![
                "DIRK SEEN 5",
                "SELECT 1",
                "DIRK SEEN 9",
                "SELECT 2",
                "SELECT 3",
                "SELECT 4"
            ]
        );
    }

    #[tokio::test]
    async fn a_read_sent_again_on_the_next_upstream_keeps_its_floor() {
        let (dying, dying_saw) = fake(Behaviour::DiesMidStatement).await;
        let (live, live_saw) = fake(Behaviour::Answers).await;
        let mut up = Upstream::new(format!("{dying},{live}"), Duration::from_secs(5));
        up.raise_floor(7);
        up.send(None, "SELECT 1", None, Retry::Read).await.unwrap();
        let frame = up.next_frame().await.unwrap();
        assert!(
            matches!(frame, Frame::Message(ref m) if m == "ok 2"),
            "{frame:?}"
        );
        assert_eq!(*dying_saw.lock().unwrap(), vec!["DIRK SEEN 7"]);
        assert_eq!(*live_saw.lock().unwrap(), vec!["DIRK SEEN 7", "SELECT 1"]);
    }
}
