//! A fault-injecting TCP relay for the fault tests: it listens on a free loopback port and
//! forwards every connection to a target port, until it is cut. Tests rarely use it alone:
//! [`super::network::Network`] puts one relay on every link between two processes and cuts
//! them by pair.
//!
//! A cut behaves like a network partition, not like a crash: connections already open stop
//! carrying bytes in the cut direction (they hang, as across a dropped link), and new
//! connections are accepted but carry nothing. A cut can be one-way ([`Direction`]): the other
//! direction of an open connection keeps carrying bytes, as when only one direction of a link
//! drops packets. Healing closes every connection that lived through a cut (their peers would
//! have timed out on a real network) and forwards new ones again.
//!
//! It runs on its own thread with its own Tokio runtime, so tests of any flavour can use it;
//! dropping the relay stops it.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which bytes of a relayed connection a cut drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the side that connected to the side it connected to.
    Upstream,
    /// Back from the side connected to.
    Downstream,
}

/// One relay.
pub(crate) struct Relay {
    /// The port it listens on.
    pub port: u16,
    /// The port it forwards to.
    pub target: u16,
    state: Arc<State>,
    /// Dropped with the relay: its thread stops accepting and ends its runtime.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default, Clone, Copy)]
struct Cuts {
    up: bool,
    down: bool,
    /// Changes at every cut; a connection born before the last cut ends on heal.
    generation: u64,
}

impl Cuts {
    fn any(&self) -> bool {
        self.up || self.down
    }

    fn of(&self, d: Direction) -> bool {
        match d {
            Direction::Upstream => self.up,
            Direction::Downstream => self.down,
        }
    }
}

#[derive(Default)]
struct State {
    cuts: Mutex<Cuts>,
    changed: tokio::sync::Notify,
}

impl State {
    fn now(&self) -> Cuts {
        *self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Cuts)) {
        f(&mut self.cuts.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_waiters();
    }

    /// True when a connection born at `born` must end: a cut began after it and is healed.
    fn outlived(&self, born: u64) -> bool {
        let c = self.now();
        c.generation != born && !c.any()
    }
}

impl Relay {
    /// A relay from a free port to `target` on loopback.
    pub(crate) fn start(target: u16) -> Relay {
        let port = super::free_port();
        let state = Arc::new(State::default());
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

    /// Stops carrying bytes both ways (a partition).
    pub(crate) fn cut(&self) {
        self.state.update(|c| {
            c.up = true;
            c.down = true;
            c.generation += 1;
        });
    }

    /// Stops carrying bytes in one direction only (an asymmetric partition).
    pub(crate) fn cut_one_way(&self, d: Direction) {
        self.state.update(|c| {
            match d {
                Direction::Upstream => c.up = true,
                Direction::Downstream => c.down = true,
            }
            c.generation += 1;
        });
    }

    /// Carries bytes again; connections that lived through the cut are closed.
    pub(crate) fn heal(&self) {
        self.state.update(|c| {
            c.up = false;
            c.down = false;
        });
    }

    /// True while cut in either direction.
    pub(crate) fn is_cut(&self) -> bool {
        self.state.now().any()
    }
}

async fn relay_connection(client: TcpStream, target: u16, state: Arc<State>) {
    let born = state.now().generation;
    // A connection opened during a cut carries nothing (no handshake crosses a cut link).
    if !wait_until_open(&state, born, None).await {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, state.clone(), born, Direction::Upstream));
    let down = tokio::spawn(pump(sr, cw, state.clone(), born, Direction::Downstream));
    let _ = tokio::join!(up, down);
}

/// Waits while `direction` (or, for `None`, either direction) is cut; false when the connection
/// must end instead (it was born before a cut that has since healed).
async fn wait_until_open(state: &State, born: u64, direction: Option<Direction>) -> bool {
    loop {
        let notified = state.changed.notified();
        if state.outlived(born) {
            return false;
        }
        let c = state.now();
        let cut = direction.map_or(c.any(), |d| c.of(d));
        if !cut {
            return true;
        }
        notified.await;
    }
}

/// Resolves once a cut that began after `born` has healed: the connection must end.
async fn outlived(state: &State, born: u64) {
    loop {
        let notified = state.changed.notified();
        if state.outlived(born) {
            return;
        }
        notified.await;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    born: u64,
    direction: Direction,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = outlived(&state, born) => break,
        };
        // Bytes read while this direction is cut are held, and dropped if the connection does
        // not outlive the cut (it never does: healing closes it).
        if !wait_until_open(&state, born, Some(direction)).await {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
