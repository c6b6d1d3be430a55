//! What every SQL port (server, proxy, cache) does the same with a client's authentication: the
//! gate in front of its statements, the `security.authTimeoutMs` deadline and its closing
//! message, the peer's address, and the process-wide cluster credentials a part uses to reach
//! the next one.

use std::net::IpAddr;
use std::sync::RwLock;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{cluster_credentials, ConnectionAuth, Credentials};
use crate::config::ClusterConfig;
use crate::connection::{ConnectionError, Incoming, ServerConnection};
use crate::frame::Frame;

static CLUSTER: RwLock<Option<Credentials>> = RwLock::new(None);

/// Reads the cluster credentials of `config` (with `requireAuth`) for every connection and
/// admin call this process makes to the other parts; an unreadable password file is an error.
pub fn use_cluster_credentials(config: &ClusterConfig) -> Result<(), String> {
    let credentials = if config.security.require_auth {
        cluster_credentials(&config.security).map_err(|e| e.to_string())?
    } else {
        None
    };
    *CLUSTER.write().unwrap_or_else(|p| p.into_inner()) = credentials;
    Ok(())
}

/// The cluster credentials in use, if any.
pub fn cluster() -> Option<Credentials> {
    CLUSTER.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Answers `AUTH`/`DIRK AS` and refuses statements before authentication; `true` when the
/// statement was answered here.
pub async fn gate<S: AsyncRead + AsyncWrite + Unpin>(
    auth: &mut ConnectionAuth,
    incoming: &Incoming,
    out: &mut ServerConnection<S>,
) -> Result<bool, ConnectionError> {
    let frame = match incoming {
        Incoming::Statement(sql) => auth.gate(sql).await,
        _ if !auth.authenticated() => Some(Frame::error("authentication required")),
        _ => None,
    };
    match frame {
        Some(frame) => out.send(&frame).await.map(|()| true),
        None => Ok(false),
    }
}

/// Resolves when an unauthenticated connection's `security.authTimeoutMs` has passed; never for
/// one that authenticated (or when authentication is not required).
pub async fn deadline(auth: &ConnectionAuth) {
    match auth.time_left() {
        Some(left) => tokio::time::sleep(left).await,
        None => std::future::pending().await,
    }
}

/// Tells a client that did not authenticate in time why it is closed.
pub async fn close_unauthenticated<S: AsyncRead + AsyncWrite + Unpin>(
    out: &mut ServerConnection<S>,
    auth: &ConnectionAuth,
) -> Result<(), ConnectionError> {
    tracing::info!(peer = %auth.peer(), "closing a connection that did not authenticate in time");
    out.send(&Frame::error(
        "authentication timed out (security.authTimeoutMs): connection closed",
    ))
    .await
}

/// The client's IP address (loopback when the socket cannot say).
pub fn peer_ip(socket: &crate::tls::Stream) -> IpAddr {
    socket.peer_ip()
}
