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
//! How a write flows: before the first writing statement of a transaction (SQLite's
//! `sqlite3_stmt_readonly` decides), the session takes the instance's writer gate
//! ([`write_path`]); capture triggers ([`oplog::capture`]) record every changed row in the same
//! transaction; when the transaction ends, the writer reads its new entries back, pushes them into
//! the in-memory backlog and publishes the committed sequence, and only then is the client
//! answered. A replica refuses every writing statement.
//!
//! How replication flows: see [`replication`]. A replica's follower connects to the primary's
//! SQL port, the primary's sender streams entries from the backlog (or the oplog files, or a
//! [`replication::snapshot`]), the replica's applier writes them, and both sides report through
//! the [`admin`] API. Background tasks prune the oplog ([`storage::Storage::prune_oplog`]) and
//! checkpoint WAL files.
//!
//! How a change feed flows: a client's `DIRK CHANGES;` turns its connection into a stream of
//! notices saying which tables, schemas and databases each commit touched ([`change_feed`]),
//! read from the same backlog the replica streams use.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod blocking;
pub(crate) mod catalog;
pub(crate) mod change_feed;
pub(crate) mod checksum;
pub(crate) mod database_statement;
pub(crate) mod dirkdb_functions;
pub(crate) mod error;
pub(crate) mod extension;
mod failure_injection;
pub(crate) mod file_copy;
pub(crate) mod lease;
pub(crate) mod listener;
pub(crate) mod meta;
pub(crate) mod metrics;
#[cfg(test)]
mod no_cycles;
pub(crate) mod oplog;
pub(crate) mod owners;
pub(crate) mod ownership;
pub mod replicate_files;
pub mod replication;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod statement_runner;
pub(crate) mod statement_shape;
pub(crate) mod storage;
pub(crate) mod write_path;

use std::sync::Arc;

pub use dirkdb_core::accept_loop::Listeners;
use dirkdb_core::config::{ClusterConfig, InstanceConfig};
use tokio::net::TcpListener;

pub use crate::error::{Result, ServerError, StartError};
pub use crate::state::ServerState;

/// Runs instance `instance_id` of `config` until `shutdown` resolves, then checkpoints its files.
/// Its ports are bound once its files are open, so nothing accepts before it can serve.
pub async fn run(
    config: &ClusterConfig,
    instance_id: &str,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let instance = config.instance(instance_id)?;
    let state = Arc::new(ServerState::open(instance, config)?);
    let host = instance.bind_host();
    let admin = instance.admin_port.map(|port| format!("{host}:{port}"));
    let listeners = Listeners::bind(&format!("{host}:{}", instance.port), admin.as_deref()).await?;
    serve_instance(state, listeners, (config, instance), config_path, shutdown).await;
    Ok(())
}

/// [`run`] on listeners already bound (a test binds port 0, then writes the ports it got into
/// `config`, which the proxy and the replicas dial).
pub async fn run_on(
    listeners: Listeners,
    config: &ClusterConfig,
    instance_id: &str,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let instance = config.instance(instance_id)?;
    let state = Arc::new(ServerState::open(instance, config)?);
    serve_instance(state, listeners, (config, instance), config_path, shutdown).await;
    Ok(())
}

/// Serves an opened instance on its listeners with its background tasks until `shutdown`.
async fn serve_instance(
    state: Arc<ServerState>,
    listeners: Listeners,
    (config, instance): (&ClusterConfig, &InstanceConfig),
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future,
) {
    let addr = listeners.sql_addr();
    dirkdb_core::security::warn_if_exposed(
        instance.bind_host(),
        &format!("instance {}", instance.id),
        &state.security.security,
    );
    let Listeners {
        sql: listener,
        admin,
    } = listeners;
    let admin = admin.map(|admin| tokio::spawn(admin::serve(admin, state.clone())));
    tracing::info!(
        instance = %instance.id,
        role = if state.is_replica() { "REPLICA" } else { "PRIMARY" },
        %addr,
        admin_port = ?instance.admin_port,
        following = ?state.replication.target(),
        data = %instance.data_directory.display(),
        "DirkDB server listening"
    );
    let follower = tokio::spawn(replication::follower::run(
        state.node.clone(),
        state.modes.clone(),
    ));
    let peers = tokio::spawn(replication::peer_stream::run(
        state.node.clone(),
        other_masters(config, &instance.id),
    ));
    let mut background = vec![
        tokio::spawn(prune_periodically(state.clone())),
        tokio::spawn(checkpoint_periodically(state.clone())),
    ];
    background.extend(replication::etcd_lease::start(&state.node, config));
    if let Some(path) = config_path {
        background.push(tokio::spawn(watch_security(path, state.clone())));
    }
    // A stopping replica stops following at once: its primary is often stopping too, and a
    // stream that ends then is not worth a "retrying".
    let stopping = async {
        shutdown.await;
        follower.abort();
        peers.abort();
    };
    serve(listener, state, stopping).await;
    for task in background
        .iter()
        .chain(admin.iter())
        .chain([&follower, &peers])
    {
        task.abort();
    }
}

/// MULTI_PRIMARY: every other master (id, replication address), whose streams this one applies;
/// empty otherwise.
fn other_masters(config: &ClusterConfig, me: &str) -> Vec<(String, String)> {
    let masters = config.master_ids();
    if !masters.iter().any(|m| m == me) {
        return Vec::new();
    }
    config
        .instances
        .iter()
        .filter(|i| i.id != me && masters.contains(&i.id))
        .map(|i| (i.id.clone(), i.replication_addr()))
        .collect()
}

/// Applies each valid edit of `config.json`'s users, grants and instance list to open sessions
/// at their next statement, and its connection limits to the next connections (the rest of the
/// file is read at start).
async fn watch_security(path: std::path::PathBuf, state: Arc<ServerState>) {
    let what = format!("instance {}", state.instance_id);
    dirkdb_core::config::watch::watch(path, what, |config| {
        state.security.reload(&config);
        state.client_limits.reload(&config);
        replication::etcd_lease::on_reload(&state, &config);
        std::future::ready(())
    })
    .await
}

/// Keeps the oplog within `maxEntries` and `retentionDays`.
async fn prune_periodically(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = state.clone();
        let pruned = tokio::task::spawn_blocking(move || s.prune_oplog(50_000)).await;
        match pruned {
            Ok(Err(ServerError::WriterBusy(_))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "oplog pruning failed"),
            _ => {}
        }
    }
}

/// Checkpoints every WAL in the background so commits don't have to.
async fn checkpoint_periodically(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.catalog.checkpoint_passive()).await;
    }
}

/// Serves an already bound listener (tests bind port 0), then checkpoints every database.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future,
) {
    listener::serve(listener, state.clone(), shutdown).await;
    let _ = tokio::task::spawn_blocking(move || {
        state.catalog.checkpoint_all();
        if let Err(e) = state.mark_clean_shutdown() {
            tracing::warn!(error = %e, "cannot record the clean shutdown");
        }
    })
    .await;
    tracing::info!("server stopped; databases checkpointed");
}
