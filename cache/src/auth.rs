//! The cache's side of authentication (see `dirkdb_core::security`).
//!
//! * Clients authenticate to the cache (`AUTH`, checked against `security.users`); nothing else
//!   passes before that with `requireAuth`, and silent connections are closed after
//!   `security.authTimeoutMs`.
//! * A kept answer is served only to a user holding READ on the session's database; anyone
//!   else's statement goes upstream, where the proxy and the server refuse it with the
//!   permission named. So one user's rows never reach a user without READ on that database.
//! * Upstream connections authenticate as `security.clusterUser` and run for the client
//!   (`DIRK AS <user>`), so the proxy and the servers enforce the client's own grants; the change
//!   feed is followed as the cluster user.
//! * `FLUSH CACHE` needs ADMIN on `*`.

use std::net::IpAddr;
use std::sync::RwLock;

use dirkdb_client::{Client, Reply};
use dirkdb_core::config::ClusterConfig;
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use dirkdb_core::security::{cluster_credentials, ConnectionAuth, Credentials, Permission};
use tokio::io::{AsyncRead, AsyncWrite};

static CLUSTER: RwLock<Option<Credentials>> = RwLock::new(None);

/// Reads the cluster credentials of `config` (with `requireAuth`) for the upstream connections.
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

/// Authenticates a fresh upstream connection as the cluster user, acting for `user` when given
/// (no-op without cluster credentials).
pub async fn login(client: &mut Client, user: Option<&str>) -> Result<(), String> {
    let Some(credentials) = cluster() else {
        return Ok(());
    };
    let mut statements = vec![credentials.auth_statement()];
    statements.extend(user.map(|u| format!("DIRK AS {u}")));
    for statement in statements {
        match client.execute(&statement).await {
            Ok(Reply::Message(_)) => {}
            Ok(Reply::Rows(_)) => return Err("unexpected rows while authenticating".into()),
            Err(e) => {
                return Err(format!(
                    "{} refused the cache's credentials (security.clusterUser `{}`): {e}",
                    client.addr(),
                    credentials.user
                ))
            }
        }
    }
    Ok(())
}

/// Whether a kept answer in `db` may be served to this client.
pub fn may_read_kept(auth: Option<&ConnectionAuth>, db: Option<&str>) -> bool {
    match (auth, db) {
        (Some(auth), Some(db)) => auth.require(db, Permission::Read).is_ok(),
        (Some(auth), None) => auth.authenticated(),
        (None, _) => true,
    }
}

/// `FLUSH CACHE`: ADMIN on `*`.
pub fn may_flush(auth: Option<&ConnectionAuth>) -> Result<(), String> {
    auth.map_or(Ok(()), |a| a.require_everywhere(Permission::Admin))
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

/// Resolves when an unauthenticated connection's time is up.
pub async fn deadline(auth: &ConnectionAuth) {
    match auth.time_left() {
        Some(left) => tokio::time::sleep(left).await,
        None => std::future::pending().await,
    }
}

/// Tells a client that did not authenticate in time why it is closed.
pub async fn close_unauthenticated<S: AsyncRead + AsyncWrite + Unpin>(
    out: &mut ServerConnection<S>,
) -> Result<(), ConnectionError> {
    out.send(&Frame::error(
        "authentication timed out (security.authTimeoutMs): connection closed",
    ))
    .await
}

/// The client's IP address (loopback when the socket cannot say).
pub fn peer_ip(socket: &tokio::net::TcpStream) -> IpAddr {
    socket
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}
