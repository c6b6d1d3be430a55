//! `dirkdb cluster`: every instance, the proxy and the cache of a `config.json` in one process.
//!
//! Every port the cluster needs is checked before anything starts, so a second start (or any
//! other program on a port) fails at once with the part and the port named. The parts then start
//! in the order they depend on each other — primaries, replicas, the proxy, the cache — each
//! group once the previous one accepts connections, so nobody logs a refused connection to a
//! neighbour that is merely still starting; "local cluster running" comes last. Stopping goes the
//! other way round (cache, proxy, replicas, primaries), each group once the one before has
//! finished its in-flight statements, so no part reports losing a neighbour that is stopping.

use std::time::Duration;

use anyhow::Context;
use dirkdb_cache::CacheSettings;
use dirkdb_core::config::{ClusterConfig, Role};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// How long a group of parts may take to start listening before the cluster gives up.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One listening address of the cluster and the part it belongs to.
struct Port {
    part: String,
    addr: String,
}

/// A part of the cluster to start.
enum Part {
    Instance(String),
    Proxy,
    Cache,
}

/// The parts started so far, by start group, with the signal that stops each group.
struct Parts {
    groups: Vec<Group>,
    ended_tx: mpsc::UnboundedSender<anyhow::Result<()>>,
    ended: mpsc::UnboundedReceiver<anyhow::Result<()>>,
}

struct Group {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Runs the cluster until `shutdown` resolves or a part fails.
pub(crate) async fn run(
    config: ClusterConfig,
    config_path: std::path::PathBuf,
    shutdown: impl std::future::Future,
) -> anyhow::Result<()> {
    let cache = CacheSettings::from_config(&config);
    let groups = start_order(&config);
    let all: Vec<Port> = groups
        .iter()
        .flatten()
        .flat_map(|part| ports_of(part, &config, &cache))
        .collect();
    check_ports_free(&all)?;
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let mut parts = Parts {
        groups: Vec::new(),
        ended_tx,
        ended,
    };
    tokio::pin!(shutdown);
    for group in &groups {
        parts.start_group(group, &config, &config_path, &cache);
        let ports: Vec<Port> = group
            .iter()
            .flat_map(|part| ports_of(part, &config, &cache))
            .collect();
        let started = tokio::select! {
            started = wait_until_listening(&ports) => started,
            Some(ended) = parts.ended.recv() => Err(failure(ended)),
            _ = &mut shutdown => return parts.stop_all().await,
        };
        if let Err(e) = started {
            let _ = parts.stop_all().await;
            return Err(e);
        }
    }
    tracing::info!(
        instances = config.instances.len(),
        proxy = config.load_balancer.listen_port,
        cache = config.cache.listen_port,
        "local cluster running; Ctrl-C stops it"
    );
    tokio::select! {
        _ = &mut shutdown => parts.stop_all().await,
        Some(ended) = parts.ended.recv() => {
            let _ = parts.stop_all().await;
            Err(failure(ended))
        }
    }
}

/// Primaries, then replicas, then the proxy, then the cache.
fn start_order(config: &ClusterConfig) -> Vec<Vec<Part>> {
    let instances = |primary: bool| -> Vec<Part> {
        config
            .instances
            .iter()
            .filter(|i| (i.role == Role::Primary) == primary)
            .map(|i| Part::Instance(i.id.clone()))
            .collect()
    };
    vec![
        instances(true),
        instances(false),
        vec![Part::Proxy],
        vec![Part::Cache],
    ]
}

impl Parts {
    fn start_group(
        &mut self,
        parts: &[Part],
        config: &ClusterConfig,
        config_path: &std::path::Path,
        cache: &CacheSettings,
    ) {
        let mut group = Group {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
        };
        for part in parts {
            let mut stop = group.stop.subscribe();
            let stopped = async move {
                let _ = stop.changed().await;
            };
            let ended = self.ended_tx.clone();
            let run = run_part(part, config, config_path, cache, stopped);
            group.tasks.spawn(async move {
                let _ = ended.send(run.await);
            });
        }
        self.groups.push(group);
    }

    /// Stops the groups in the reverse of their start order, each after the one before has
    /// finished; the first failure among the parts is returned.
    async fn stop_all(mut self) -> anyhow::Result<()> {
        while let Some(mut group) = self.groups.pop() {
            let _ = group.stop.send(true);
            while group.tasks.join_next().await.is_some() {}
        }
        let mut first = Ok(());
        while let Ok(ended) = self.ended.try_recv() {
            if first.is_ok() {
                first = ended;
            }
        }
        first
    }
}

/// The future that runs one part until `stopped` resolves.
fn run_part(
    part: &Part,
    config: &ClusterConfig,
    config_path: &std::path::Path,
    cache: &CacheSettings,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
    match part {
        Part::Instance(id) => {
            let (config, id) = (config.clone(), id.clone());
            let path = config_path.to_path_buf();
            Box::pin(async move {
                let result = dirkdb_server::run(&config, &id, Some(path), stopped).await;
                result.with_context(|| format!("instance {id}"))
            })
        }
        Part::Proxy => {
            let (config, path) = (config.clone(), config_path.to_path_buf());
            Box::pin(async move {
                let result = dirkdb_proxy::run(config, Some(path), stopped).await;
                result.context("proxy")
            })
        }
        Part::Cache => {
            let mut settings = cache.clone();
            settings.config_path = Some(config_path.to_path_buf());
            Box::pin(async move { dirkdb_cache::run(settings, stopped).await.context("cache") })
        }
    }
}

/// What a part that ended on its own has to say.
fn failure(ended: anyhow::Result<()>) -> anyhow::Error {
    ended
        .err()
        .unwrap_or_else(|| anyhow::anyhow!("a part of the cluster stopped on its own"))
}

/// The addresses a part listens on, each named.
fn ports_of(part: &Part, config: &ClusterConfig, cache: &CacheSettings) -> Vec<Port> {
    let port = |part: String, addr: String| Port { part, addr };
    match part {
        Part::Instance(id) => {
            let Some(instance) = config.instances.iter().find(|i| &i.id == id) else {
                return Vec::new();
            };
            let host = instance.bind_host();
            let name = format!("instance {id}");
            let mut ports = vec![port(name.clone(), format!("{host}:{}", instance.port))];
            if let Some(admin) = instance.admin_port {
                ports.push(port(format!("{name} (admin)"), format!("{host}:{admin}")));
            }
            ports
        }
        Part::Proxy => {
            let lb = &config.load_balancer;
            vec![
                port(
                    "proxy".into(),
                    format!("{}:{}", lb.listen_host, lb.listen_port),
                ),
                port(
                    "proxy (admin)".into(),
                    format!("{}:{}", lb.listen_host, lb.admin_port),
                ),
            ]
        }
        Part::Cache => vec![
            port("cache".into(), cache.listen.clone()),
            port("cache (admin)".into(), cache.admin.clone()),
        ],
    }
}

/// Binds and releases every address; names each one that is taken.
fn check_ports_free(ports: &[Port]) -> anyhow::Result<()> {
    let taken: Vec<String> = ports
        .iter()
        .filter_map(|port| match std::net::TcpListener::bind(&port.addr) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Some(format!("{} {} is in use", port.part, port.addr))
            }
            Err(e) => Some(format!("{} {}: {e}", port.part, port.addr)),
        })
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot start the cluster: {} (is another `dirkdb cluster` running? otherwise change the ports in config.json)",
        taken.join(", ")
    )
}

/// Waits until every address accepts a connection, within [`START_DEADLINE`].
async fn wait_until_listening(ports: &[Port]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    for port in ports {
        while tokio::net::TcpStream::connect(&port.addr).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} is not listening on {} after {}s",
                    port.part,
                    port.addr,
                    START_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
