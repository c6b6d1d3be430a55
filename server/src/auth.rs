//! The server's side of authentication and permissions (see `dirkdb_core::security`).
//!
//! * The listener gives every connection a [`ConnectionAuth`]; the session answers `AUTH` and
//!   `DIRK AS` and refuses everything else until the connection authenticated (with
//!   `security.requireAuth`); a connection still unauthenticated after `security.authTimeoutMs`
//!   is closed.
//! * Grants: `USE` needs any permission on the database, reads need READ, writing statements
//!   and DDL need WRITE (SQLite's `sqlite3_stmt_readonly` decides, as for replicas),
//!   CREATE/DROP DATABASE need ADMIN on it; `SHOW DATABASES` lists only what the user holds
//!   something on. `DIRK REPLICATION` and `DIRK CHANGES` need REPLICATE on `*`, and a replica's
//!   `Hello` must name an instance of `config.json`.
//! * A replica authenticates to its primary as `security.clusterUser`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use dirkdb_core::config::ClusterConfig;
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use dirkdb_core::security::statement::{self, AuthStatement};
use dirkdb_core::security::{
    cluster_credentials, ConnectionAuth, Credentials, Permission, Security, SecurityError,
};
use dirkdb_core::tls::TlsServer;
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use dirkdb_core::security::connection::{
    close_unauthenticated, deadline as auth_deadline, peer_ip,
};

use crate::error::ServerError;

/// What an instance knows about security: the users, its own credentials, its peers.
#[derive(Debug)]
pub struct ServerSecurity {
    /// Users, grants, limiter.
    pub security: Arc<Security>,
    /// How this instance authenticates to its primary (`security.clusterUser`), when
    /// authentication is required.
    pub cluster: Option<Credentials>,
    /// TLS of the SQL and admin ports (`security.tls`).
    pub tls: Option<Arc<TlsServer>>,
    instances: RwLock<HashSet<String>>,
}

impl ServerSecurity {
    /// Reads the `security` section and, with `requireAuth`, the cluster password file.
    pub fn from_config(config: &ClusterConfig) -> Result<ServerSecurity, SecurityError> {
        let cluster = if config.security.require_auth {
            cluster_credentials(&config.security)?
        } else {
            None
        };
        dirkdb_core::tls::use_cluster_tls(&config.security)?;
        Ok(ServerSecurity {
            security: Security::new(&config.security),
            cluster,
            tls: TlsServer::from_config(&config.security)?,
            instances: RwLock::new(instance_ids(config)),
        })
    }

    /// Applies a reloaded file's users and instances.
    pub fn reload(&self, config: &ClusterConfig) {
        self.security.reload(&config.security);
        dirkdb_core::tls::reload(self.tls.as_deref(), &config.security);
        *dirkdb_core::sync::write(&self.instances) = instance_ids(config);
    }

    /// Whether a replica calling itself `id` may stream from this primary.
    pub fn admits_replica(&self, id: &str) -> bool {
        !self.security.required() || dirkdb_core::sync::read(&self.instances).contains(id)
    }
}

fn instance_ids(config: &ClusterConfig) -> HashSet<String> {
    config.instances.iter().map(|i| i.id.clone()).collect()
}

/// What one statement run may do in its database: `None` allowed, else the denial's text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    read: Option<String>,
    write: Option<String>,
}

impl Access {
    /// The grants of `auth` on `database`.
    pub(crate) fn in_database(auth: &ConnectionAuth, database: &str) -> Access {
        Access {
            read: auth.require(database, Permission::Read).err(),
            write: auth.require(database, Permission::Write).err(),
        }
    }

    /// Refuses a statement the grants do not cover. Transaction control passes (it reads or
    /// writes nothing by itself).
    pub(crate) fn check(&self, writes: bool, first_word: Option<&str>) -> Result<(), ServerError> {
        let denial = if writes { &self.write } else { &self.read };
        let control = matches!(
            first_word,
            Some("BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE")
        );
        match denial {
            Some(msg) if !control => Err(ServerError::PermissionDenied(msg.clone())),
            _ => Ok(()),
        }
    }
}

/// `USE database`: any permission on it.
pub(crate) fn check_use(auth: &ConnectionAuth, database: &str) -> Result<(), ServerError> {
    if auth.sees(database) {
        return Ok(());
    }
    let msg = auth
        .require(database, Permission::Read)
        .err()
        .unwrap_or_default();
    Err(ServerError::PermissionDenied(msg))
}

/// `CREATE`/`DROP DATABASE database`: ADMIN on it.
pub(crate) fn check_admin(auth: &ConnectionAuth, database: &str) -> Result<(), ServerError> {
    auth.require(database, Permission::Admin)
        .map_err(ServerError::PermissionDenied)
}

/// The databases `SHOW DATABASES` lists to this connection.
pub(crate) fn visible(auth: &ConnectionAuth, names: Vec<String>) -> Vec<String> {
    names.into_iter().filter(|n| auth.sees(n)).collect()
}

/// `DIRK REPLICATION` and `DIRK CHANGES`: REPLICATE on `*`.
pub(crate) fn check_replicate(auth: &ConnectionAuth) -> Result<(), String> {
    auth.require_everywhere(Permission::Replicate)
}

/// Whether `incoming` is an `AUTH` statement.
pub(crate) fn is_auth(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Statement(s)
        if matches!(statement::parse(s), Some(Ok(AuthStatement::Auth { .. }))))
}

/// For `DIRK REPLICATION` and `DIRK CHANGES`: true when the connection holds REPLICATE on
/// `*`; otherwise the client is told why not and false returned.
pub(crate) async fn may_replicate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ServerConnection<S>,
    auth: &ConnectionAuth,
) -> Result<bool, ConnectionError> {
    match check_replicate(auth) {
        Ok(()) => Ok(true),
        Err(msg) => {
            tracing::warn!(peer = %auth.peer(), user = ?auth.effective_name(), "replication or change feed refused: {msg}");
            conn.send(&Frame::error(msg)).await?;
            Ok(false)
        }
    }
}

/// Sends `credentials` as an `AUTH` statement on a fresh connection to `addr`.
pub(crate) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut dirkdb_core::connection::ClientConnection<S>,
    credentials: &Credentials,
    addr: &str,
) -> Result<(), String> {
    conn.send_statement(&credentials.auth_statement())
        .await
        .map_err(|e| e.to_string())?;
    match conn.read_frame().await {
        Ok(Some(frame)) => match frame.error_text() {
            None => Ok(()),
            Some(e) => Err(format!(
                "{addr} refused security.clusterUser `{}`: {e}",
                credentials.user
            )),
        },
        other => Err(format!("{addr} did not answer AUTH: {other:?}")),
    }
}
