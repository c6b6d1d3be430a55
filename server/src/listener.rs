//! The SQL port: accepts clients through the shared accept loop
//! ([`dirkdb_core::accept_loop`]), which bounds how many are served (`limits.maxConnections`;
//! one more gets a `Hadisoana : too many connections` frame) and shuts down cleanly: told to
//! stop, every session finishes its statement; past `limits.shutdownTimeoutMs` the statements
//! still running are interrupted through SQLite's interrupt handle (see [`Session`]).
//!
//! Two statements switch a connection to another protocol: `DIRK REPLICATION` (a replica's
//! stream, first statement only) and `DIRK CHANGES` (a change feed, at any point; see
//! [`crate::change_feed`]). Both end with the server's shutdown like any session.

use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::accept_loop::{serve_clients, ServeOptions, Shutdown};
use dirkdb_core::conn_limit::AddressSlot;
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use dirkdb_core::tls::Stream;
use tokio::net::TcpListener;

use crate::change_feed;
use crate::replication::protocol::{HANDSHAKE, HANDSHAKE_OK};
use crate::replication::sender::serve_replica;
use crate::session::Session;
use crate::state::ServerState;

/// Accepts clients until `shutdown` resolves, then waits for every session to end (at most
/// `limits.shutdownTimeoutMs`, then interrupting what still runs).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future,
) {
    let limit = state.limits.max_connections;
    let options = ServeOptions {
        max_connections: limit,
        refusal: format!(
            "too many connections (limit {limit}, limits.maxConnections); try again later"
        ),
        shutdown_timeout: Duration::from_millis(state.limits.shutdown_timeout_ms),
        tls: state.security.tls.clone(),
        limits: state.client_limits.clone(),
    };
    let refused = || state.metrics.refused_one();
    serve_clients(
        listener,
        options,
        shutdown,
        refused,
        |socket, shutdown, slot| {
            let state = state.clone();
            async move {
                let peer = socket
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::debug!(%peer, "client connected");
                state.metrics.connection(1);
                if let Err(e) = handle_client(socket, state.clone(), shutdown, slot).await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                state.metrics.connection(-1);
            }
        },
    )
    .await;
}

fn is_replication_handshake(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Statement(s) if s.trim().eq_ignore_ascii_case(HANDSHAKE))
}

/// Hands the socket over to a replication sender (see `replication::protocol`). Only a
/// connection's first statement can do this, so no session state (an open transaction holding
/// the writer gate) lingers behind a stream.
async fn start_replication(
    mut conn: ServerConnection<Stream>,
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
    let (reader, writer) = tokio::io::split(socket);
    let node = state.node.clone();
    serve_replica(node, &state.modes, Box::new(reader), Box::new(writer), peer).await;
    Ok(())
}

/// The answer to a statement the input ended inside of.
const UNFINISHED: &str = "the input ended inside a statement that was never run: \
     a string literal is not closed, or the last `;` is missing";

/// Under `security.tls.mutualTls`, whether this connection carries a node certificate (the
/// client is told when not).
async fn may_stream(
    conn: &mut ServerConnection<Stream>,
    state: &ServerState,
) -> Result<bool, ConnectionError> {
    let tls = state.security.tls.as_deref();
    match dirkdb_core::tls::check_node_certificate(tls, conn.get_ref()) {
        Ok(()) => Ok(true),
        Err(msg) => {
            let peer = conn.get_ref().peer_ip();
            tracing::warn!(%peer, "replication or change feed refused: {msg}");
            conn.send(&Frame::error(msg)).await?;
            Ok(false)
        }
    }
}

async fn handle_client(
    socket: Stream,
    state: Arc<ServerState>,
    mut shutdown: Shutdown,
    mut slot: AddressSlot,
) -> Result<(), ConnectionError> {
    let peer = crate::auth::peer_ip(&socket);
    let mut conn = ServerConnection::new(socket, state.limits.max_statement_bytes);
    let mut session = Session::new(state, peer);
    session.interrupt_at(shutdown.deadline());
    conn.set_idle_limit(session.idle_limit(&slot));
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
                // A client that only half-closed still reads: it gets an answer, not silence.
                tracing::debug!("client left in the middle of a statement; it was not run");
                let _ = conn
                    .send(&dirkdb_core::frame::Frame::error(UNFINISHED))
                    .await;
            }
            return Ok(());
        };
        let handshake = first && is_replication_handshake(&incoming);
        // AUTH may come before the handshake.
        first = first && crate::auth::is_auth(&incoming);
        if (handshake || change_feed::is_changes_statement(&incoming))
            && !(crate::auth::may_replicate(&mut conn, session.auth()).await?
                && may_stream(&mut conn, &session.state()).await?)
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
        if !slot.is_exempt() && session.auth().is_cluster_login() {
            slot.release();
        }
        conn.set_idle_limit(session.idle_limit(&slot));
    }
}
