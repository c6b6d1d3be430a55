//! The one accept loop of every listener (server, proxy, cache), and its graceful shutdown.
//!
//! Every accepted client gets a task, at most `max_connections` at once and at most
//! `limits.maxConnectionsPerAddress` from one IP address ([`ClientLimits::admit`]; the handler
//! gets the connection's [`AddressSlot`]). One more gets a single error frame and is closed,
//! never left hanging; those refusals run [`MAX_REFUSING`] at a time, each for at most
//! [`REFUSAL_TIME`], and past that a refused socket is just closed, so a flood costs bounded
//! memory. Shutdown follows tokio's mini-redis:
//!
//! 1. the loop stops accepting and drops the sender of a broadcast channel, so every task's
//!    [`Shutdown::recv`] returns: a task finishes the statement it runs and ends when it next
//!    waits for input;
//! 2. each task holds a clone of a completion sender; the loop waits until the channel closes,
//!    which happens when the last task has dropped its clone;
//! 3. that wait is bounded by `shutdown_timeout` (`limits.shutdownTimeoutMs`): past it, the
//!    [`Deadline`] every task can watch turns, and a server interrupts the SQLite statements
//!    still running (their clients get an "interrupted" error); after [`INTERRUPT_GRACE`] more
//!    the loop returns whatever still runs.
//!
//! With `security.tls` ([`ServeOptions::tls`]), each accepted connection first goes through
//! [`TlsServer::accept`] on a task of its own (it holds its permit meanwhile): a TLS client gets
//! its handshake, a plaintext one is served as before (or refused with `required`), and only
//! then is the connection handed to the part's handler as a [`Stream`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn_limit::{AddressSlot, ClientLimits};
use crate::connection::{ConnectionError, Incoming, ServerConnection};
use crate::frame::{encode_frame, Frame};
use crate::tls::{AcceptError, Stream, TlsServer};

/// How long tasks get to end once the deadline interrupted them.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Refused connections being told why at once; more are closed without a word.
pub const MAX_REFUSING: usize = 64;

/// How long telling one refused connection why may take (its TLS handshake included).
pub const REFUSAL_TIME: Duration = Duration::from_secs(3);

/// A part's SQL listener and its admin listener, bound before the part starts: `run` binds the
/// configured addresses; a test binds port 0 and writes the ports it got into the config, so no
/// port is reserved first and taken by someone else before the part binds it.
#[derive(Debug)]
pub struct Listeners {
    /// The SQL port.
    pub sql: TcpListener,
    /// The admin HTTP port (a server may have none).
    pub admin: Option<TcpListener>,
}

/// An address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// `host:port` tried.
    pub addr: String,
    /// Why it failed.
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds `sql` and, when given, `admin` (`host:port` each).
    pub async fn bind(sql: &str, admin: Option<&str>) -> Result<Listeners, BindError> {
        let sql = bind(sql).await?;
        let admin = match admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { sql, admin })
    }

    /// The SQL listener's address, as bound (`127.0.0.1:41234` for port 0).
    pub fn sql_addr(&self) -> String {
        addr_of(&self.sql)
    }

    /// The admin listener's address, as bound.
    pub fn admin_addr(&self) -> Option<String> {
        self.admin.as_ref().map(addr_of)
    }
}

async fn bind(addr: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr: addr.to_string(),
        source,
    })
}

fn addr_of(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string())
}

/// How the loop serves and stops.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Clients served at once.
    pub max_connections: usize,
    /// Error text sent to a client over the limit (naming the knob).
    pub refusal: String,
    /// How long running statements may take to finish once shutdown begins.
    pub shutdown_timeout: Duration,
    /// TLS beside plaintext (`security.tls`); `None`: plaintext only.
    pub tls: Option<Arc<TlsServer>>,
    /// `limits.maxConnectionsPerAddress` and the idle timeouts (reloadable).
    pub limits: Arc<ClientLimits>,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every client task ended before the deadline.
    Finished,
    /// Some ran past the deadline and were interrupted; `left` of them still ran after the
    /// grace period.
    Interrupted {
        /// Tasks still running when the loop gave up waiting.
        left: usize,
    },
}

/// A task's view of the shutdown: the signal to stop taking statements, and the deadline past
/// which running statements are interrupted.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
    deadline: Deadline,
}

impl Shutdown {
    /// Waits for the signal (returns at once when it was already received).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }

    /// The shutdown deadline, for code that runs statements.
    pub fn deadline(&self) -> Deadline {
        self.deadline.clone()
    }
}

/// Turns when the shutdown deadline passed; clones watch the same deadline.
#[derive(Debug, Clone)]
pub struct Deadline(watch::Receiver<bool>);

impl Deadline {
    /// A deadline that never passes (a session outside any accept loop, in tests).
    pub fn never() -> Deadline {
        let (tx, rx) = watch::channel(false);
        // The receiver alone keeps the value; a dropped sender means "never changes".
        drop(tx);
        Deadline(rx)
    }

    /// Resolves once the deadline passed; never resolves otherwise.
    pub async fn passed(&mut self) {
        if self.0.wait_for(|passed| *passed).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// True once the deadline passed.
    pub fn has_passed(&self) -> bool {
        *self.0.borrow()
    }
}

/// Accepts clients until `shutdown` resolves, then drains them (see the module). `handle`
/// serves one client and returns soon after its [`Shutdown`] fires; `refused` is called for
/// each client over `max_connections` (a metric; those over the per-address bound are counted
/// by [`ClientLimits::refused_per_address`]), before its refusal frame is sent.
pub async fn serve_clients<H, F>(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future,
    refused: impl Fn(),
    mut handle: H,
) -> Drained
where
    H: FnMut(Stream, Shutdown, AddressSlot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max_connections = options.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let (notify_tx, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (deadline_tx, deadline_rx) = watch::channel(false);
    let mut handshakes = JoinSet::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    tokio::pin!(shutdown);
    loop {
        let (stream, permit) = tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let slot = match options.limits.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        tracing::debug!(%peer, "connection refused: {reason}");
                        refuse_bounded(&refusing, socket, reason, options.tls.clone());
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refused();
                    refuse_bounded(&refusing, socket, options.refusal.clone(), options.tls.clone());
                    continue;
                };
                let permit = (permit, slot);
                match &options.tls {
                    None => (Stream::Plain(socket), permit),
                    Some(tls) => {
                        handshakes.spawn(establish(tls.clone(), socket, permit));
                        continue;
                    }
                }
            }
            Some(established) = handshakes.join_next(), if !handshakes.is_empty() => {
                match established {
                    Ok(Some(ready)) => ready,
                    _ => continue,
                }
            }
            _ = &mut shutdown => break,
        };
        let (permit, slot) = permit;
        let client = handle(
            stream,
            Shutdown {
                is_shutdown: false,
                notify: notify_tx.subscribe(),
                deadline: Deadline(deadline_rx.clone()),
            },
            slot,
        );
        let done = done_tx.clone();
        tokio::spawn(async move {
            client.await;
            drop(permit);
            drop(done);
        });
    }
    // Connections still in their handshake were never served: they just close.
    handshakes.shutdown().await;
    drop(listener);
    let running = max_connections - permits.available_permits();
    if running > 0 {
        tracing::info!(
            clients = running,
            "shutting down: finishing in-flight statements"
        );
    }
    drop(notify_tx);
    drop(done_tx);
    if tokio::time::timeout(options.shutdown_timeout, done_rx.recv())
        .await
        .is_ok()
    {
        return Drained::Finished;
    }
    let running = max_connections - permits.available_permits();
    tracing::warn!(
        clients = running,
        timeout_ms = options.shutdown_timeout.as_millis() as u64,
        "statements still running at the shutdown deadline (limits.shutdownTimeoutMs): interrupting them"
    );
    let _ = deadline_tx.send(true);
    if tokio::time::timeout(INTERRUPT_GRACE, done_rx.recv())
        .await
        .is_ok()
    {
        return Drained::Interrupted { left: 0 };
    }
    let left = max_connections - permits.available_permits();
    tracing::warn!(clients = left, "stopping with client tasks still running");
    Drained::Interrupted { left }
}

/// The client's next statement; `None` when it closed the connection or the process is
/// stopping, so a client loop ends either way.
pub async fn next_statement<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ServerConnection<S>,
    shutdown: &mut Shutdown,
) -> Result<Option<Incoming>, ConnectionError> {
    tokio::select! {
        incoming = conn.read_statement() => incoming,
        _ = shutdown.recv() => Ok(None),
    }
}

/// A client's TLS handshake (or plaintext check); `None` when it is not to be served.
async fn establish<P>(tls: Arc<TlsServer>, socket: TcpStream, permit: P) -> Option<(Stream, P)> {
    let peer = socket.peer_addr().ok();
    match tls.accept(socket, &plaintext_refusal()).await {
        Ok(stream) => Some((stream, permit)),
        Err(e @ (AcceptError::PlaintextRefused | AcceptError::Handshake(_))) => {
            tracing::info!(?peer, error = %e, "connection refused");
            None
        }
        Err(e) => {
            tracing::debug!(?peer, error = %e, "connection closed before it was served");
            None
        }
    }
}

/// The frame a plaintext client gets on a port with `security.tls.required`.
fn plaintext_refusal() -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    let text = "this port requires TLS (security.tls.required): connect with TLS \
                (dirkdb client --tls); plaintext is refused";
    encode_frame(&Frame::error(text), &mut bytes);
    bytes.to_vec()
}

/// Tells a refused connection why on a task of its own, unless [`MAX_REFUSING`] are being told
/// already: then it is closed at once.
fn refuse_bounded(
    refusing: &Arc<Semaphore>,
    socket: TcpStream,
    reason: String,
    tls: Option<Arc<TlsServer>>,
) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, refuse(socket, reason, tls)).await;
        drop(permit);
    });
}

async fn refuse(socket: TcpStream, reason: String, tls: Option<Arc<TlsServer>>) {
    let mut stream = match tls {
        None => Stream::Plain(socket),
        Some(tls) => match tls.accept(socket, &plaintext_refusal()).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
    };
    let mut bytes = bytes::BytesMut::new();
    encode_frame(&Frame::error(reason), &mut bytes);
    if stream.write_all(&bytes).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // What the client sent meanwhile is read (briefly), so closing does not reset the
    // connection before it read the refusal.
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// How long a refused connection's own bytes are read before it is closed.
const DRAIN_TIME: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn listener() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    fn options(timeout_ms: u64) -> ServeOptions {
        ServeOptions {
            max_connections: 1,
            refusal: "full (limits.maxConnections)".into(),
            shutdown_timeout: Duration::from_millis(timeout_ms),
            tls: None,
            limits: ClientLimits::unlimited(&crate::config::LimitsConfig::default()),
        }
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_interrupted_at_the_deadline() {
        let (listener, addr) = listener().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve_clients(
            listener,
            options(100),
            stop_rx,
            || {},
            |_socket, shutdown, _slot| async move {
                // A statement that never ends by itself: only the deadline stops it.
                let mut deadline = shutdown.deadline();
                deadline.passed().await;
            },
        ));
        let _client = TcpStream::connect(&addr).await.unwrap();
        let mut refused = TcpStream::connect(&addr).await.unwrap();
        let mut text = String::new();
        refused.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("limits.maxConnections"), "{text}");
        let _ = stop_tx.send(());
        let started = std::time::Instant::now();
        assert_eq!(serving.await.unwrap(), Drained::Interrupted { left: 0 });
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < INTERRUPT_GRACE);
    }

    #[tokio::test]
    async fn tasks_that_stop_on_the_signal_finish_before_the_deadline() {
        let (listener, addr) = listener().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve_clients(
            listener,
            options(10_000),
            stop_rx,
            || {},
            |_socket, mut shutdown, _slot| async move { shutdown.recv().await },
        ));
        let _client = TcpStream::connect(&addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop_tx.send(());
        let started = std::time::Instant::now();
        assert_eq!(serving.await.unwrap(), Drained::Finished);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
