//! The proxy's side of authentication (see `dirkdb_core::security`).
//!
//! * Clients authenticate to the proxy itself (`AUTH <user> <password>`, checked against
//!   `security.users`); nothing else passes before that with `requireAuth`, and a connection
//!   still unauthenticated after `security.authTimeoutMs` is closed.
//! * The proxy reaches the servers as `security.clusterUser` (its password from
//!   `security.clusterPasswordFile`): every backend connection starts with that `AUTH`, and
//!   before a client's statement runs on it the connection is switched to the client's identity
//!   (`DIRK AS <user>`), so the server enforces the client's own grants. Only the cluster user
//!   may switch identities, so going to a server directly grants nothing more.
//! * The admin calls the proxy makes to the servers (`/replication/promote`, …) carry the
//!   cluster user's HTTP Basic credentials.
//!
//! The cluster credentials are process-wide (every part of one `config.json` shares them).

use std::net::IpAddr;
use std::sync::Arc;

use dirkdb_client::{Client, Reply};
pub use dirkdb_core::security::connection::{
    close_unauthenticated, cluster, deadline, gate, peer_ip, use_cluster_credentials,
};
use dirkdb_core::security::{ConnectionAuth, Permission, Security};

/// The `Authorization` header for admin calls to the servers, if any.
pub fn admin_header() -> Option<String> {
    cluster().map(|c| c.basic_header())
}

/// Authenticates a fresh connection to a server as the cluster user (no-op without one).
pub async fn login(client: &mut Client) -> Result<(), String> {
    let Some(credentials) = cluster() else {
        return Ok(());
    };
    match client.execute(&credentials.auth_statement()).await {
        Ok(Reply::Message(_)) => Ok(()),
        Ok(Reply::Rows(_)) => Err("unexpected rows in answer to AUTH".into()),
        Err(e) => Err(format!(
            "{} refused security.clusterUser `{}`: {e}",
            client.addr(),
            credentials.user
        )),
    }
}

/// The statement making a backend connection run for `user`.
pub fn act_as_statement(user: &str) -> String {
    format!("DIRK AS {user}")
}

/// A client connection's identity at the proxy.
pub fn connection(security: &Arc<Security>, peer: IpAddr) -> ConnectionAuth {
    ConnectionAuth::new(security.clone(), peer)
}

/// `DIRK CHANGES` through the proxy: REPLICATE on `*`.
pub fn may_follow_changes(auth: &ConnectionAuth) -> Result<(), String> {
    auth.require_everywhere(Permission::Replicate)
}

/// Applies the `security` section of every reloaded topology (users, grants, cluster
/// credentials) to `security`, and its connection limits to `limits`, checking once a second;
/// sessions keep going with their user.
pub async fn follow_reloads(
    security: Arc<Security>,
    topology: Arc<crate::topology::SharedTopology>,
    (tls, limits): (
        Option<Arc<dirkdb_core::tls::TlsServer>>,
        Arc<dirkdb_core::conn_limit::ClientLimits>,
    ),
) {
    let mut applied = topology.load().config.security.clone();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let config = topology.load().config.clone();
        limits.reload(&config);
        if config.security == applied {
            continue;
        }
        security.reload(&config.security);
        dirkdb_core::tls::reload(tls.as_deref(), &config.security);
        if let Err(e) = use_cluster_credentials(&config) {
            tracing::error!(error = %e, "reloaded security section: cluster credentials unusable; keeping the previous ones");
        }
        applied = config.security.clone();
    }
}
