//! The DirkDB local caching proxy (`dirkdb cache`, port 3951): it sits between clients and the
//! proxy, usually on the client's machine, and answers repeated reads from memory without ever
//! serving a result older than a write it has seen.
//!
//! How a request flows: the listener accepts a client (within `cache.maxConnections`) and gives
//! it a [`session::CacheSession`] with its own upstream connection. The session reads statements
//! with the same framing as a server and asks [`statement_analysis`] what each is. A cacheable
//! read is looked up in the [`result_store`] (lock-free hit path); a miss leads or joins a
//! flight, so identical misses send one query upstream, and the answer is kept under TTL, entry
//! and byte limits. Writes, transactions and other statements pass through unchanged; a write's
//! answer waits until the entries it can have changed are dropped. The [`change_listener`]
//! follows the primary's change feed to drop what other clients' writes changed. [`admin`]
//! serves the counters of [`stats`].

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod change_listener;
pub mod result_store;
pub mod row_refresh;
pub(crate) mod session;
pub mod statement_analysis;
pub mod stats;
pub mod table_keys;
pub(crate) mod upstream;
pub mod view_map;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use dirkdb_core::accept_loop::Listeners;
use dirkdb_core::accept_loop::{next_statement, serve_clients, ServeOptions, Shutdown};
use dirkdb_core::config::ClusterConfig;
use dirkdb_core::conn_limit::{AddressSlot, ClientLimits};
use dirkdb_core::connection::{ConnectionError, ServerConnection};
use dirkdb_core::tls::{Stream, TlsServer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::result_store::{ResultStore, StoreLimits};
use crate::session::{CacheSession, SessionContext};
use crate::statement_analysis::AnalysisMemo;
use crate::stats::CacheStats;

/// Everything the cache needs to run.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Address clients connect to (`host:port`).
    pub listen: String,
    /// Address of the admin API (`host:port`).
    pub admin: String,
    /// Address of the proxy (or server) it forwards to.
    pub upstream: String,
    /// Store limits.
    pub limits: StoreLimits,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Longest statement accepted from a client.
    pub max_statement_bytes: usize,
    /// Longest wait for one upstream answer.
    pub statement_timeout: Duration,
    /// Whether to follow the primary's change feed.
    pub change_feed: bool,
    /// Why the cache keeps no answer, when it does not: under `routing.writes.mode`
    /// MULTI_PRIMARY every master commits writes, and the change feed (one master's own
    /// commits) cannot tell the cache what the others changed, so a kept answer could be
    /// older than a write acknowledged elsewhere. Every statement then goes upstream as is.
    pub pass_through: Option<String>,
    /// On shutdown, how long client statements may take to finish (`limits.shutdownTimeoutMs`).
    pub shutdown_timeout: Duration,
    /// The whole file (its `security` section: users, grants, cluster credentials).
    pub config: ClusterConfig,
    /// The file to watch: its `security` section's users and grants apply live.
    pub config_path: Option<std::path::PathBuf>,
}

impl CacheSettings {
    /// The settings of `config.json`'s `cache` section (upstream: the proxy's address).
    pub fn from_config(config: &ClusterConfig) -> CacheSettings {
        let c = &config.cache;
        CacheSettings {
            listen: format!("{}:{}", c.listen_host, c.listen_port),
            admin: format!("{}:{}", c.listen_host, c.admin_port()),
            upstream: config.cache_upstream(),
            limits: StoreLimits {
                ttl: Duration::from_millis(c.ttl_millis),
                stale_window: Duration::from_millis(c.stale_if_error_millis),
                max_entries: c.max_entries,
                max_bytes: c.max_bytes,
                max_entry_bytes: c.max_entry_bytes.min(u64::from(u32::MAX)) as usize,
            },
            max_connections: c.max_connections.max(1),
            max_statement_bytes: config.limits.max_statement_bytes,
            statement_timeout: Duration::from_millis(c.statement_timeout_ms.max(1)),
            change_feed: c.change_feed,
            pass_through: pass_through_reason(config),
            shutdown_timeout: Duration::from_millis(config.limits.shutdown_timeout_ms),
            config: config.clone(),
            config_path: None,
        }
    }
}

/// Why a cache in front of `config`'s cluster must keep nothing (see
/// [`CacheSettings::pass_through`]).
fn pass_through_reason(config: &ClusterConfig) -> Option<String> {
    config.is_multi_primary().then(|| {
        "routing.writes.mode is MULTI_PRIMARY: the change feed reports one master's own commits, \
         so an answer kept here could miss a write committed on another master; the cache \
         passes every statement to the proxy and keeps nothing"
            .to_string()
    })
}

/// Statement texts whose analysis is remembered.
const ANALYSIS_MEMO_ENTRIES: u64 = 50_000;

/// Why the cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address is taken or not allowed.
    #[error(transparent)]
    Listen(#[from] dirkdb_core::accept_loop::BindError),
    /// The cluster credentials cannot be read (`security.clusterPasswordFile`).
    #[error("{0}")]
    Security(String),
}

/// Runs the cache until `shutdown` resolves.
pub async fn run(
    settings: CacheSettings,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let listeners = Listeners::bind(&settings.listen, Some(&settings.admin)).await?;
    run_on(listeners, settings, shutdown).await
}

/// [`run`] on listeners already bound (a test binds port 0); `settings.listen` and
/// `settings.admin` are then only logged. Without an admin listener there is no admin API.
pub async fn run_on(
    listeners: Listeners,
    settings: CacheSettings,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    auth::use_cluster_credentials(&settings.config).map_err(StartError::Security)?;
    let security_config = &settings.config.security;
    dirkdb_core::tls::use_cluster_tls(security_config)
        .map_err(|e| StartError::Security(e.to_string()))?;
    let tls =
        TlsServer::from_config(security_config).map_err(|e| StartError::Security(e.to_string()))?;
    let security = dirkdb_core::security::Security::new(&settings.config.security);
    let listen_host = settings.listen.rsplit_once(':').map_or("", |(h, _)| h);
    dirkdb_core::security::warn_if_exposed(listen_host, "the cache", &security);
    let Listeners {
        sql: listener,
        admin: admin_listener,
    } = listeners;
    let stats = Arc::new(CacheStats::default());
    let store = ResultStore::new(settings.limits.clone(), stats.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let client_limits = ClientLimits::new(&settings.config);
    let guards = dirkdb_core::metrics::Guards {
        limits: client_limits.clone(),
        security: security.clone(),
        tls: tls.clone(),
    };
    let mut background = Vec::new();
    if let Some(admin_listener) = admin_listener {
        background.push(tokio::spawn(admin::serve(
            admin_listener,
            admin::AdminState {
                store: store.clone(),
                stats: stats.clone(),
                upstream: settings.upstream.clone(),
                guards,
            },
            security.clone(),
            tls.clone(),
        )));
    }
    if let Some(path) = settings.config_path.clone() {
        let (security, tls) = (security.clone(), tls.clone());
        let client_limits = client_limits.clone();
        background.push(tokio::spawn(dirkdb_core::config::watch::watch(
            path,
            "cache".into(),
            move |config| {
                security.reload(&config.security);
                dirkdb_core::tls::reload(tls.as_deref(), &config.security);
                client_limits.reload(&config);
                std::future::ready(())
            },
        )));
    }
    if let Some(reason) = &settings.pass_through {
        tracing::warn!(reason = %reason, "the cache keeps no answer");
        stats.pass_through.store(1, Ordering::Relaxed);
    }
    if settings.change_feed && settings.pass_through.is_none() {
        background.push(tokio::spawn(change_listener::follow(
            settings.upstream.clone(),
            store.clone(),
            stats.clone(),
            stop_rx.clone(),
        )));
    }
    tracing::info!(
        listen = %settings.listen,
        admin = %settings.admin,
        upstream = %settings.upstream,
        ttl_ms = settings.limits.ttl.as_millis() as u64,
        max_entries = settings.limits.max_entries,
        "DirkDB cache listening"
    );
    let ctx = Arc::new(SessionContext {
        store,
        stats,
        upstream_addr: settings.upstream.clone(),
        statement_timeout: settings.statement_timeout,
        max_statement_bytes: settings.max_statement_bytes,
        in_flight: dirkdb_core::in_flight::InFlight::new(
            settings.config.limits.max_in_flight_statement_bytes,
        ),
        analyses: AnalysisMemo::new(ANALYSIS_MEMO_ENTRIES),
        security,
        keeps: settings.pass_through.is_none(),
    });
    // The feed stops as soon as shutdown begins: the proxy is usually stopping too, and a feed
    // lost then is not news. Writes still draining invalidate their whole database instead.
    let stopping = async {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    serve(
        listener,
        ctx,
        (settings.max_connections, tls, client_limits),
        settings.shutdown_timeout,
        stopping,
    )
    .await;
    for task in &background {
        task.abort();
    }
    Ok(())
}

async fn serve(
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    (max_connections, tls, limits): (usize, Option<Arc<TlsServer>>, Arc<ClientLimits>),
    shutdown_timeout: Duration,
    shutdown: impl std::future::Future,
) {
    let options = ServeOptions {
        max_connections,
        refusal: format!(
            "too many connections to the cache (limit {max_connections}, cache.maxConnections)"
        ),
        shutdown_timeout,
        tls,
        limits: limits.clone(),
    };
    serve_clients(
        listener,
        options,
        shutdown,
        || {},
        |socket, mut stop, slot| {
            let ctx = ctx.clone();
            let limits = limits.clone();
            async move {
                ctx.stats.clients.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = handle_client(socket, ctx.clone(), &mut stop, (slot, &limits)).await
                {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                ctx.stats.clients.fetch_sub(1, Ordering::Relaxed);
            }
        },
    )
    .await;
    tracing::info!("cache stopped: in-flight statements finished");
}

async fn handle_client(
    socket: Stream,
    ctx: Arc<SessionContext>,
    stop: &mut Shutdown,
    (mut slot, limits): (AddressSlot, &ClientLimits),
) -> Result<(), ConnectionError> {
    let mut auth =
        dirkdb_core::security::ConnectionAuth::new(ctx.security.clone(), auth::peer_ip(&socket));
    let mut conn = ServerConnection::new(socket, ctx.max_statement_bytes);
    conn.set_idle_limit(limits.idle_limit(&slot, false));
    let mut session = CacheSession::new(ctx);
    loop {
        let incoming = tokio::select! {
            incoming = next_statement(&mut conn, stop) => incoming?,
            _ = auth::deadline(&auth) => return auth::close_unauthenticated(&mut conn, &auth).await,
        };
        let Some(incoming) = incoming else { break };
        if auth::gate(&mut auth, &incoming, &mut conn).await? {
            session.set_identity(auth.clone());
            if auth.is_cluster_login() {
                slot.release();
            }
        } else {
            session.handle(incoming, &mut conn).await?;
        }
        conn.set_idle_limit(limits.idle_limit(&slot, session.in_transaction()));
    }
    Ok(())
}
