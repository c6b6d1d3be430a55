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

use dirkdb_client::{Client, Reply};
pub(crate) use dirkdb_core::security::connection::{
    close_unauthenticated, cluster, deadline, gate, peer_ip, use_cluster_credentials,
};
use dirkdb_core::security::{ConnectionAuth, Permission};

/// Authenticates a fresh upstream connection as the cluster user, acting for `user` when given
/// (no-op without cluster credentials).
pub(crate) async fn login(client: &mut Client, user: Option<&str>) -> Result<(), String> {
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
pub(crate) fn may_read_kept(auth: Option<&ConnectionAuth>, db: Option<&str>) -> bool {
    match (auth, db) {
        (Some(auth), Some(db)) => auth.require(db, Permission::Read).is_ok(),
        (Some(auth), None) => auth.authenticated(),
        (None, _) => true,
    }
}

/// `FLUSH CACHE`: ADMIN on `*`.
pub(crate) fn may_flush(auth: Option<&ConnectionAuth>) -> Result<(), String> {
    auth.map_or(Ok(()), |a| a.require_everywhere(Permission::Admin))
}
