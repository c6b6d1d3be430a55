//! The DirkDB storage server: many SQLite databases behind the DirkDB wire protocol.
//!
//! How a request flows:
//!
//! 1. [`listener`] accepts a TCP client (within `limits.maxConnections`) and gives it a
//!    [`session::Session`].
//! 2. The session reads `;`-terminated statements through `dirkdb_core`'s `ServerConnection`,
//!    translates Malagasy keywords, and either handles a database statement itself
//!    ([`database_statement`]: CREATE/DROP DATABASE, USE, SHOW) or runs SQL on its own SQLite
//!    connection to the current database, taken from the [`catalog`].
//! 3. [`statement_runner`] executes the SQL on a blocking thread and streams the response as
//!    frames (pages of rows, a success text, or a `Hadisoana : ` error) back to the session,
//!    which writes them to the socket.
//!
//! A replica refuses every statement SQLite reports as writing (`sqlite3_stmt_readonly`).

pub mod catalog;
pub mod database_statement;
pub mod error;
pub mod listener;
pub mod session;
pub mod shutdown;
pub mod statement_runner;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::config::{ClusterConfig, LimitsConfig, Role, StorageConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

use crate::catalog::{Catalog, ConnectionSettings};
pub use crate::error::{Result, ServerError, StartError};

/// Everything the sessions of one instance share.
pub struct ServerState {
    /// This instance's id from `config.json`.
    pub instance_id: String,
    /// Its databases.
    pub catalog: Catalog,
    /// What one client may ask.
    pub limits: LimitsConfig,
    read_only: AtomicBool,
}

impl ServerState {
    /// Opens the data directory of an instance.
    pub fn open(
        instance_id: &str,
        data_directory: &Path,
        role: Role,
        limits: LimitsConfig,
        storage: &StorageConfig,
    ) -> Result<ServerState> {
        let settings = ConnectionSettings {
            synchronous: storage.synchronous,
            busy_timeout: Duration::from_millis(limits.busy_timeout_ms),
        };
        Ok(ServerState {
            instance_id: instance_id.to_string(),
            catalog: Catalog::open(data_directory, settings)?,
            limits,
            read_only: AtomicBool::new(role == Role::Replica),
        })
    }

    /// `Some(instance id)` when client writes must be refused.
    pub fn read_only_instance(&self) -> Option<String> {
        self.read_only
            .load(Ordering::Acquire)
            .then(|| self.instance_id.clone())
    }
}

/// Runs instance `instance_id` of `config` until `shutdown` resolves, then checkpoints its files.
pub async fn run(
    config: &ClusterConfig,
    instance_id: &str,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let instance = config.instance(instance_id)?;
    let state = ServerState::open(
        &instance.id,
        &instance.data_directory,
        instance.role,
        config.limits.clone(),
        &config.storage,
    )?;
    let addr = instance.sql_addr();
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| StartError::Bind(addr.clone(), e))?;
    tracing::info!(
        instance = %instance.id,
        role = %instance.role,
        %addr,
        data = %instance.data_directory.display(),
        "DirkDB server listening"
    );
    serve(listener, Arc::new(state), shutdown).await;
    Ok(())
}

/// Serves an already bound listener (tests bind port 0), then checkpoints every database.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future,
) {
    listener::serve(listener, state.clone(), shutdown).await;
    let _ = tokio::task::spawn_blocking(move || state.catalog.checkpoint_all()).await;
    tracing::info!("server stopped; databases checkpointed");
}
