//! The SQL port: accepts clients, bounds how many are served, and shuts down cleanly.
//!
//! Each accepted socket gets a task running a [`Session`]. A semaphore holds
//! `limits.maxConnections` permits; a client arriving when none is left receives one
//! `Hadisoana : too many connections` frame and is closed, so it never hangs. On shutdown the
//! accept loop stops, every task is told through [`Shutdown`], in-flight statements finish, and
//! the caller learns that all tasks are gone when the completion channel closes.

use std::sync::Arc;

use dirkdb_core::connection::ServerConnection;
use dirkdb_core::frame::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::session::Session;
use crate::shutdown::Shutdown;
use crate::state::ServerState;

/// Accepts clients until `shutdown` resolves, then waits for every session to end.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future,
) {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    tokio::select! {
        _ = accept_loop(&listener, &state, &permits, &notify_shutdown, &done_tx) => {}
        _ = shutdown => tracing::info!("shutting down: finishing in-flight statements"),
    }
    drop(notify_shutdown);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

async fn accept_loop(
    listener: &TcpListener,
    state: &Arc<ServerState>,
    permits: &Arc<Semaphore>,
    notify_shutdown: &broadcast::Sender<()>,
    done: &mpsc::Sender<()>,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(socket, state.clone()));
            continue;
        };
        let state = state.clone();
        let shutdown = Shutdown::new(notify_shutdown.subscribe());
        let done = done.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "client connected");
            if let Err(e) = handle_client(socket, state, shutdown).await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
            drop(done);
        });
    }
}

async fn refuse(socket: TcpStream, state: Arc<ServerState>) {
    let limit = state.limits.max_connections;
    let mut conn = ServerConnection::new(socket, 1024);
    let msg =
        format!("too many connections (limit {limit}, limits.maxConnections); try again later");
    let _ = conn.send(&Frame::error(msg)).await;
}

async fn handle_client(
    socket: TcpStream,
    state: Arc<ServerState>,
    mut shutdown: Shutdown,
) -> Result<(), dirkdb_core::connection::ConnectionError> {
    let mut conn = ServerConnection::new(socket, state.limits.max_statement_bytes);
    let mut session = Session::new(state);
    loop {
        let incoming = tokio::select! {
            incoming = conn.read_statement() => incoming?,
            _ = shutdown.recv() => return Ok(()),
        };
        let Some(incoming) = incoming else {
            if conn.had_partial_statement() {
                tracing::debug!("client left in the middle of a statement; it was not run");
            }
            return Ok(());
        };
        session.handle(incoming, &mut conn).await?;
    }
}
