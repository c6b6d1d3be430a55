//! A fault-injecting TCP relay for the fault tests: it listens on a free loopback port and
//! forwards every connection to a target port, until it is cut.
//!
//! A cut behaves like a network partition, not like a crash: connections already open stop
//! carrying bytes in both directions (they hang, as across a dropped link), and new connections
//! are accepted but carry nothing. Healing closes every connection that lived through the cut
//! (their peers would have timed out on a real network) and forwards new ones again.
//!
//! It runs on its own thread with its own Tokio runtime, so tests of any flavour can use it;
//! dropping the relay stops it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One relay.
pub struct Relay {
    /// The port it listens on.
    pub port: u16,
    /// The port it forwards to.
    pub target: u16,
    state: Arc<State>,
    /// Dropped with the relay: its thread stops accepting and ends its runtime.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

struct State {
    cut: AtomicBool,
    /// Changes at every cut; a connection opened before the last cut ends on heal.
    generation: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Relay {
    /// A relay from a free port to `target` on loopback.
    pub fn start(target: u16) -> Relay {
        let port = super::free_port();
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("relay port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking relay port");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("relay listener");
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        let s = s.clone();
                        tokio::spawn(async move { relay_connection(client, target, s).await });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        Relay {
            port,
            target,
            state,
            _shutdown: shutdown,
        }
    }

    /// Stops carrying bytes (a partition).
    pub fn cut(&self) {
        self.state.generation.fetch_add(1, Ordering::AcqRel);
        self.state.cut.store(true, Ordering::Release);
        self.state.changed.notify_waiters();
    }

    /// Carries bytes again; connections that lived through the cut are closed.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::Release);
        self.state.changed.notify_waiters();
    }

    /// True while cut.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::Acquire)
    }
}

async fn relay_connection(client: TcpStream, target: u16, state: Arc<State>) {
    let born = state.generation.load(Ordering::Acquire);
    if !wait_while_cut(&state, born).await {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, state.clone(), born));
    let down = tokio::spawn(pump(sr, cw, state.clone(), born));
    let _ = tokio::join!(up, down);
}

/// Waits while the relay is cut; false when the connection must end instead (it was born
/// before a cut that has since healed).
async fn wait_while_cut(state: &State, born: u64) -> bool {
    loop {
        let notified = state.changed.notified();
        if state.generation.load(Ordering::Acquire) != born && !state.cut.load(Ordering::Acquire) {
            return false;
        }
        if !state.cut.load(Ordering::Acquire) {
            return true;
        }
        notified.await;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            alive = wait_cut_over(&state, born) => {
                if alive { continue } else { break }
            }
        };
        // Bytes read during a cut are held (never delivered if the cut outlives the connection).
        if !wait_while_cut(&state, born).await {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Resolves when a cut begins and then ends: `false` when this connection must end (it lived
/// through the cut); never resolves while nothing happens.
async fn wait_cut_over(state: &State, born: u64) -> bool {
    loop {
        let notified = state.changed.notified();
        if state.generation.load(Ordering::Acquire) != born {
            // A cut began after this connection was born: it stays silent until the heal, then
            // ends.
            return wait_while_cut(state, born).await;
        }
        notified.await;
    }
}
