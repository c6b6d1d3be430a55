//! The DirkDB replicating proxy (`dirkdb proxy`, port 3949): clients connect to it as if it were
//! one database; it sends each statement to the right instance of `config.json`.
//!
//! How a request flows: the listener accepts a client (within `loadBalancer.maxConnections`)
//! and gives it a [`session::ProxySession`]. The session reads statements with the same framing
//! as a server, classifies each with `sqlparser` (after the Malagasy translation), and runs it
//! on the primary (writes, transactions, anything unsure) or on a read candidate chosen by the
//! [`topology`]'s strategy among the instances the [`health`] checker finds up and within the
//! lag limit, passing the instance's frames back to the client. [`admin`] reports all of it,
//! and serves the [`status_page`] to look at in a browser.
//!
//! The session answers `DIRK POSITION` and `DIRK SEEN <seq>` itself (its read-your-writes
//! position). `DIRK CHANGES` turns the client's connection into a relay of the current primary's
//! change feed ([`change_feed`]), after which the connection closes.
//!
//! With `replication.type` FILE, acknowledged writes ask the primary to copy the written
//! database to the secondaries ([`file_triggers`], coalesced), and the [`health`] checker makes
//! every instance run the replication mode `config.json` names (also after a reload).
//!
//! With `failover.coordinator` ETCD, several proxies share one decision through etcd
//! ([`coordinator`]): one elected proxy fails over, every other follows etcd's record. Under
//! MULTI_PRIMARY the elected proxy also writes the ownership plan there ([`ownership`]), the
//! others route by it, and each records in etcd what it acknowledges before answering.

pub(crate) mod ack_watermark;
pub(crate) mod admin;
pub mod auth;
pub(crate) mod backend;
pub(crate) mod change_feed;
pub(crate) mod coordinator;
pub(crate) mod error;
pub(crate) mod failover;
pub(crate) mod file_triggers;
pub(crate) mod health;
pub mod http;
pub(crate) mod lease;
pub(crate) mod owner_metrics;
pub(crate) mod ownership;
pub(crate) mod reload;
pub(crate) mod session;
pub(crate) mod status_page;
pub(crate) mod topology;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub use dirkdb_core::accept_loop::Listeners;
use dirkdb_core::accept_loop::{next_statement, serve_clients, ServeOptions, Shutdown};
use dirkdb_core::config::ClusterConfig;
use dirkdb_core::conn_limit::{AddressSlot, ClientLimits};
use dirkdb_core::connection::ServerConnection;
use dirkdb_core::frame::Frame;
use dirkdb_core::tls::{Stream, TlsServer};
use tokio::net::TcpListener;

use crate::file_triggers::FileTriggers;
use crate::session::ProxySession;
use crate::topology::{SharedTopology, Topology};

/// Client counters of the proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    open: AtomicI64,
    feeds: AtomicI64,
}

impl ProxyStats {
    /// Client connections open (change feeds not included).
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections turned into change feeds (`DIRK CHANGES`, such as a cache's).
    pub fn feeds(&self) -> i64 {
        self.feeds.load(Ordering::Relaxed)
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address is taken or not allowed.
    #[error(transparent)]
    Listen(#[from] dirkdb_core::accept_loop::BindError),
    /// The cluster credentials cannot be read (`security.clusterPasswordFile`).
    #[error("{0}")]
    Security(String),
}

/// Runs the proxy for `config` until `shutdown` resolves. With the file's path, the proxy
/// reloads it when it changes and keeps its primary choice in `dirkdb-proxy.state.json` beside
/// it, across restarts.
pub async fn run(
    config: ClusterConfig,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let lb = &config.load_balancer;
    let listeners = Listeners::bind(
        &format!("{}:{}", lb.listen_host, lb.listen_port),
        Some(&format!("{}:{}", lb.listen_host, lb.admin_port)),
    )
    .await?;
    run_on(listeners, config, config_path, shutdown).await
}

/// [`run`] on listeners already bound (a test binds port 0 and writes the ports it got into
/// `config`); without an admin listener the proxy serves no admin API.
pub async fn run_on(
    listeners: Listeners,
    config: ClusterConfig,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future,
) -> Result<(), StartError> {
    let state_file = config_path.as_ref().map(|p| {
        p.parent()
            .map(|d| d.join("dirkdb-proxy.state.json"))
            .unwrap_or_else(|| "dirkdb-proxy.state.json".into())
    });
    let lb = config.load_balancer.clone();
    auth::use_cluster_credentials(&config).map_err(StartError::Security)?;
    let tls = tls_of(&config.security)?;
    let security = dirkdb_core::security::Security::new(&config.security);
    dirkdb_core::security::warn_if_exposed(&lb.listen_host, "the proxy", &security);
    let (addr, admin_addr) = (listeners.sql_addr(), listeners.admin_addr());
    let Listeners {
        sql: listener,
        admin: admin_listener,
    } = listeners;
    if config.replication.file_replaced_by_oplog {
        tracing::warn!("{}", dirkdb_core::config::FILE_UNDER_MULTI_PRIMARY);
    }
    let topology = Arc::new(SharedTopology::new(Topology::load(config, state_file)));
    status_page::load_failovers(&topology.load());
    let stats = Arc::new(ProxyStats::default());
    let file_triggers = FileTriggers::new(topology.clone());
    let history = status_page::History::new();
    let client_limits = ClientLimits::new(&topology.load().config);
    let mut background = vec![
        tokio::spawn(auth::follow_reloads(
            security.clone(),
            topology.clone(),
            (tls.clone(), client_limits.clone()),
        )),
        tokio::spawn(health::run(topology.clone())),
        tokio::spawn(status_page::history::run(topology.clone(), history.clone())),
    ];
    if let Some(admin_listener) = admin_listener {
        background.push(tokio::spawn(admin::serve(
            admin_listener,
            admin::AdminState {
                topology: topology.clone(),
                stats: stats.clone(),
                file_triggers: file_triggers.clone(),
                history,
                guards: dirkdb_core::metrics::Guards {
                    limits: client_limits.clone(),
                    security: security.clone(),
                    tls: tls.clone(),
                },
            },
            security.clone(),
            tls.clone(),
        )));
    }
    if let Some(path) = config_path {
        background.push(tokio::spawn(reload::watch(path, topology.clone())));
    }
    let coordinator_config = topology.load().config.clone();
    background.extend(coordinator::start(&coordinator_config, topology.clone()).await);
    tracing::info!(%addr, admin = ?admin_addr, primary = %topology.load().primary().id, "DirkDB proxy listening");
    serve(
        listener,
        topology,
        stats,
        file_triggers,
        security,
        (lb.max_connections.max(1), tls, client_limits),
        shutdown,
    )
    .await;
    for task in &background {
        task.abort();
    }
    Ok(())
}

async fn serve(
    listener: TcpListener,
    topology: Arc<SharedTopology>,
    stats: Arc<ProxyStats>,
    file_triggers: Arc<FileTriggers>,
    security: Arc<dirkdb_core::security::Security>,
    (max_connections, tls, limits): (usize, Option<Arc<TlsServer>>, Arc<ClientLimits>),
    shutdown: impl std::future::Future,
) {
    let options = ServeOptions {
        max_connections,
        refusal: format!(
            "too many connections to the proxy (limit {max_connections}, loadBalancer.maxConnections)"
        ),
        shutdown_timeout: std::time::Duration::from_millis(
            topology.load().config.limits.shutdown_timeout_ms,
        ),
        tls,
        limits: limits.clone(),
    };
    serve_clients(
        listener,
        options,
        shutdown,
        || {},
        |socket, mut stop, slot| {
            let (topology, stats) = (topology.clone(), stats.clone());
            let file_triggers = file_triggers.clone();
            let security = security.clone();
            let limits = limits.clone();
            async move {
                stats.open.fetch_add(1, Ordering::Relaxed);
                let peer = auth::peer_ip(&socket);
                let auth = auth::connection(&security, peer);
                let client = Client { auth, slot, limits };
                if let Err(e) =
                    handle_client(socket, topology, file_triggers, &stats, client, &mut stop).await
                {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                stats.open.fetch_sub(1, Ordering::Relaxed);
            }
        },
    )
    .await;
    tracing::info!("proxy stopped: in-flight statements finished");
}

/// The ports' TLS (`security.tls`), and the TLS this process speaks to the servers.
fn tls_of(
    security: &dirkdb_core::security::SecurityConfig,
) -> Result<Option<Arc<TlsServer>>, StartError> {
    dirkdb_core::tls::use_cluster_tls(security).map_err(|e| StartError::Security(e.to_string()))?;
    TlsServer::from_config(security).map_err(|e| StartError::Security(e.to_string()))
}

/// One client connection's identity and its place under the connection limits.
struct Client {
    auth: dirkdb_core::security::ConnectionAuth,
    slot: AddressSlot,
    limits: Arc<ClientLimits>,
}

async fn handle_client(
    socket: Stream,
    topology: Arc<SharedTopology>,
    file_triggers: Arc<FileTriggers>,
    stats: &ProxyStats,
    client: Client,
    stop: &mut Shutdown,
) -> Result<(), dirkdb_core::connection::ConnectionError> {
    let Client {
        mut auth,
        mut slot,
        limits,
    } = client;
    let max = topology.load().config.limits.max_statement_bytes;
    let mut conn = ServerConnection::new(socket, max);
    conn.set_idle_limit(limits.idle_limit(&slot, false));
    let mut session = ProxySession::new(topology.clone(), file_triggers);
    loop {
        let incoming = tokio::select! {
            incoming = next_statement(&mut conn, stop) => incoming?,
            _ = auth::deadline(&auth) => return auth::close_unauthenticated(&mut conn, &auth).await,
        };
        let Some(incoming) = incoming else { break };
        if auth::gate(&mut auth, &incoming, &mut conn).await? {
            session.set_user(auth.effective_name().map(str::to_string));
            if auth.is_cluster_login() {
                slot.release();
            }
            conn.set_idle_limit(limits.idle_limit(&slot, session.in_transaction()));
            continue;
        }
        if change_feed::is_changes_statement(&incoming) {
            if let Err(e) = auth::may_follow_changes(&auth) {
                conn.send(&Frame::error(e)).await?;
                continue;
            }
            let subscribed = tokio::select! {
                s = change_feed::subscribe(&topology) => s,
                _ = stop.recv() => return Ok(()),
            };
            match subscribed {
                Ok(upstream) => {
                    // The session ends first (an open transaction is rolled back on the
                    // primary), then the connection only carries the feed, and closes after.
                    drop(session);
                    // A feed is not a client session: /cluster/status counts it apart.
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    stats.feeds.fetch_add(1, Ordering::Relaxed);
                    let relayed = tokio::select! {
                        r = change_feed::relay(upstream, &mut conn, &topology) => r,
                        _ = stop.recv() => Ok(()),
                    };
                    stats.feeds.fetch_sub(1, Ordering::Relaxed);
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    return relayed;
                }
                Err(e) => {
                    conn.send(&Frame::error(e)).await?;
                    continue;
                }
            }
        }
        session.handle(incoming, &mut conn).await?;
        conn.set_idle_limit(limits.idle_limit(&slot, session.in_transaction()));
    }
    Ok(())
}
