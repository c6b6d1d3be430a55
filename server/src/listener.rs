//! The SQL port: accepts clients, bounds how many are served, and shuts down cleanly.
//!
//! Each accepted socket gets a task running a [`Session`]. A semaphore holds
//! `limits.maxConnections` permits; a client arriving when none is left receives one
//! `Hadisoana : too many connections` frame and is closed, so it never hangs. On shutdown the
//! accept loop stops, every task is told through [`Shutdown`], in-flight statements finish, and
//! the caller learns that all tasks are gone when the completion channel closes.
//!
//! Two statements switch a connection to another protocol: `DIRK REPLICATION` (a replica's
//! stream, first statement only) and `DIRK CHANGES` (a change feed, at any point; see
//! [`crate::change_feed`]). Both end with the server's shutdown like any session.

use std::sync::Arc;

use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::change_feed;
use crate::replication::protocol::{HANDSHAKE, HANDSHAKE_OK};
use crate::replication::sender::serve_replica;
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
            state.metrics.refused_one();
            tokio::spawn(refuse(socket, state.clone()));
            continue;
        };
        let state = state.clone();
        let shutdown = Shutdown::new(notify_shutdown.subscribe());
        let done = done.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "client connected");
            state.metrics.connection(1);
            if let Err(e) = handle_client(socket, state.clone(), shutdown).await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            state.metrics.connection(-1);
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

fn is_replication_handshake(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Statement(s) if s.trim().eq_ignore_ascii_case(HANDSHAKE))
}

/// Hands the socket over to a replication sender (see `replication::protocol`). Only a
/// connection's first statement can do this, so no session state (an open transaction holding
/// the writer gate) lingers behind a stream.
async fn start_replication(
    mut conn: ServerConnection<TcpStream>,
    state: Arc<ServerState>,
) -> Result<(), ConnectionError> {
    if let Some(id) = state.read_only_instance() {
        let msg = format!("{id} is a REPLICA: replicate from the primary");
        return conn.send(&Frame::error(msg)).await;
    }
    conn.send(&Frame::Message(HANDSHAKE_OK.to_string())).await?;
    let socket = conn.into_inner().await?;
    let peer = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (reader, writer) = socket.into_split();
    serve_replica(state, reader, writer, peer).await;
    Ok(())
}

async fn handle_client(
    socket: TcpStream,
    state: Arc<ServerState>,
    mut shutdown: Shutdown,
) -> Result<(), ConnectionError> {
    let peer = crate::auth::peer_ip(&socket);
    let mut conn = ServerConnection::new(socket, state.limits.max_statement_bytes);
    let mut session = Session::new(state, peer);
    let mut first = true;
    loop {
        let incoming = tokio::select! {
            incoming = conn.read_statement() => incoming?,
            _ = shutdown.recv() => return Ok(()),
            _ = crate::auth::auth_deadline(session.auth()) => {
                return crate::auth::close_unauthenticated(&mut conn, session.auth()).await;
            }
        };
        let Some(incoming) = incoming else {
            if conn.had_partial_statement() {
                tracing::debug!("client left in the middle of a statement; it was not run");
            }
            return Ok(());
        };
        let handshake = first && is_replication_handshake(&incoming);
        // AUTH may come before the handshake.
        first = first && crate::auth::is_auth(&incoming);
        if (handshake || change_feed::is_changes_statement(&incoming))
            && !crate::auth::may_replicate(&mut conn, session.auth()).await?
        {
            continue;
        }
        if handshake {
            // A replica's stream ends with the server, like any client.
            return tokio::select! {
                r = start_replication(conn, session.state()) => r,
                _ = shutdown.recv() => Ok(()),
            };
        }
        if change_feed::is_changes_statement(&incoming) {
            // The session ends first: an open transaction is rolled back and its writer gate
            // freed, instead of lingering as long as the feed.
            let state = session.state();
            drop(session);
            return tokio::select! {
                r = change_feed::serve(&mut conn, &state) => r,
                _ = shutdown.recv() => Ok(()),
            };
        }
        session.handle(incoming, &mut conn).await?;
    }
}
