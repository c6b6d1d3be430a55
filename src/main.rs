//! `dirkdb`: the one binary of DirkDB. Each subcommand is one component of the topology; this
//! file only parses the command line, sets up logging and signals, and hands over to the crate
//! that does the work (`dirkdb-server`, `dirkdb-client`, …).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dirkdb_core::config::{ClusterConfig, ConfigError};

mod cluster;

#[derive(Parser)]
#[command(
    name = "dirkdb",
    version,
    about = "DirkDB: a small replicated SQL database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one storage server (an instance of config.json).
    Server(ServerArgs),
    /// The interactive SQL client (also runs -c SQL, -f FILE, or statements piped in).
    Client(dirkdb_client::cli::ClientArgs),
    /// The replicating proxy: routes reads and writes over the instances of config.json.
    Proxy(ConfigArg),
    /// The local caching proxy: answers repeated reads from memory, in front of the proxy.
    Cache(CacheArgs),
    /// Every instance of config.json, the proxy and the cache in one process: the local cluster.
    Cluster(ConfigArg),
    /// The load generator: throughput and latency of a workload, or replication lag.
    Bench(dirkdb_client::bench::BenchArgs),
    /// Asks the running proxy to fail over (promote the most advanced replica, or --to ID).
    Failover(FailoverArgs),
    /// One-way replication of the database files of --from into --to, as consistent copies.
    ReplicateFiles(ReplicateFilesArgs),
    /// Reads a password (one line) on standard input and prints its hash for security.users.
    Passwd,
}

/// `dirkdb replicate-files --from DIR --to DIR [--interval SECONDS] [--once]`.
#[derive(clap::Args)]
struct ReplicateFilesArgs {
    /// Directory whose `*.db` databases are copied.
    #[arg(long)]
    from: PathBuf,
    /// Directory that receives the copies (created if missing).
    #[arg(long)]
    to: PathBuf,
    /// Seconds between sweeps of --from (changes seen by the watcher are copied sooner).
    #[arg(long, default_value = "2", value_parser = parse_seconds)]
    interval: std::time::Duration,
    /// One pass, then exit (status 1 if a database could not be copied).
    #[arg(long)]
    once: bool,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Path of config.json.
    #[arg(long, env = "DIRK_CONFIG_PATH", default_value = "config.json")]
    config: PathBuf,
}

/// `dirkdb cache 127.0.0.1 3949 3951 3000 200`: DirkDB's positional arguments, each of which
/// overrides the `cache` section of config.json (used when the file exists).
#[derive(clap::Args)]
struct CacheArgs {
    /// Upstream host (default: the proxy's listenHost in config.json, or 127.0.0.1).
    upstream_host: Option<String>,
    /// Upstream port (default: the proxy's listenPort, 3949).
    upstream_port: Option<u16>,
    /// Port the cache listens on (default 3951).
    listen_port: Option<u16>,
    /// How long an entry is served, in milliseconds (default 3000).
    ttl_ms: Option<u64>,
    /// Entries kept at most (default 200).
    max_entries: Option<u64>,
    /// Path of config.json (optional for the cache).
    #[arg(long, env = "DIRK_CONFIG_PATH", default_value = "config.json")]
    config: PathBuf,
    /// Interface to bind (default 127.0.0.1).
    #[arg(long)]
    listen_host: Option<String>,
    /// Port of /metrics, /stats, /health (default: listen port + 1000).
    #[arg(long)]
    admin_port: Option<u16>,
    /// Bytes of results kept at most.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Largest result kept, in bytes.
    #[arg(long)]
    max_entry_bytes: Option<u64>,
    /// Serve entries up to this many ms past their TTL while the upstream is down (0: off).
    #[arg(long)]
    stale_if_error_ms: Option<u64>,
    /// Do not follow the primary's change feed (only the TTL bounds other clients' writes).
    #[arg(long)]
    no_change_feed: bool,
    /// Several upstreams, `host:port,host:port` (one per proxy): the first that answers is
    /// used, the next when it fails. Replaces the upstream host and port.
    #[arg(long, value_name = "HOST:PORT,…", value_delimiter = ',')]
    upstream: Vec<String>,
}

#[derive(clap::Args)]
struct FailoverArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Instance to promote (default: the replica with the highest applied position).
    #[arg(long)]
    to: Option<String>,
}

#[derive(clap::Args)]
struct ServerArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Which instance of config.json to run (its id, e.g. m1).
    #[arg(long, env = "DIRK_INSTANCE_ID")]
    instance: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Client(args) => ExitCode::from(dirkdb_client::cli::run(args).clamp(0, 255) as u8),
        Command::Server(args) => report(run_server(args)),
        Command::Proxy(args) => report(run_proxy(args)),
        Command::Cache(args) => report(run_cache(args)),
        Command::Cluster(args) => report(run_cluster(args)),
        Command::Bench(args) => ExitCode::from(dirkdb_client::bench::run(args).clamp(0, 255) as u8),
        Command::Failover(args) => report(run_failover(args)),
        Command::ReplicateFiles(args) => report(run_replicate_files(args)),
        Command::Passwd => report(run_passwd()),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dirkdb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: &std::path::Path) -> anyhow::Result<ClusterConfig> {
    let config = ClusterConfig::load(path).map_err(|e| match e {
        // The error names the file already.
        ConfigError::Read { .. } => anyhow::Error::new(e),
        other => anyhow::Error::new(other).context(format!("loading {}", path.display())),
    })?;
    dirkdb_core::sql::limits::configure_max_expression_depth(config.limits.max_expression_depth);
    Ok(config)
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = load_config(&args.config.config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let path = Some(args.config.config.clone());
        dirkdb_server::run(&config, &args.instance, path, shutdown_signal())
            .await
            .context("server")
    })
}

fn run_proxy(args: ConfigArg) -> anyhow::Result<()> {
    init_logging();
    let config = load_config(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        dirkdb_proxy::run(config, Some(args.config.clone()), shutdown_signal())
            .await
            .context("proxy")
    })
}

/// The cache's settings: config.json's `cache` section when the file exists, then the command
/// line on top.
fn cache_settings(args: &CacheArgs) -> anyhow::Result<dirkdb_cache::CacheSettings> {
    let mut config = if args.config.exists() {
        load_config(&args.config)?
    } else {
        let text = r#"{"instances":[{"id":"m1","role":"PRIMARY","host":"127.0.0.1","port":3948,"dataDirectory":"data/m1"}]}"#;
        ClusterConfig::parse(text).context("built-in defaults")?
    };
    let c = &mut config.cache;
    if let Some(host) = &args.upstream_host {
        c.upstream_host = Some(host.clone());
    }
    c.upstream_port = args.upstream_port.or(c.upstream_port);
    if args.upstream_host.is_some() || args.upstream_port.is_some() {
        c.upstreams.clear();
    }
    if !args.upstream.is_empty() {
        c.upstreams = args.upstream.clone();
    }
    if let Some(port) = args.listen_port {
        c.listen_port = port;
    }
    c.admin_port = args.admin_port.or(c.admin_port);
    c.ttl_millis = args.ttl_ms.unwrap_or(c.ttl_millis);
    c.max_entries = args.max_entries.unwrap_or(c.max_entries);
    c.max_bytes = args.max_bytes.unwrap_or(c.max_bytes);
    c.max_entry_bytes = args.max_entry_bytes.unwrap_or(c.max_entry_bytes);
    c.stale_if_error_millis = args.stale_if_error_ms.unwrap_or(c.stale_if_error_millis);
    if let Some(host) = &args.listen_host {
        c.listen_host = host.clone();
    }
    c.change_feed &= !args.no_change_feed;
    let mut settings = dirkdb_cache::CacheSettings::from_config(&config);
    settings.config_path = args.config.exists().then(|| args.config.clone());
    Ok(settings)
}

fn run_cache(args: CacheArgs) -> anyhow::Result<()> {
    init_logging();
    let settings = cache_settings(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        dirkdb_cache::run(settings, shutdown_signal())
            .await
            .context("cache")
    })
}

/// `dirkdb passwd`: one line on standard input → its argon2id PHC string on standard output.
fn run_passwd() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on standard input (e.g. `echo 's3cret' | dirkdb passwd`)");
    }
    let hash = dirkdb_core::security::hash_password(password)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    println!("{hash}");
    Ok(())
}

/// Asks the running proxy for a MANUAL failover.
fn run_failover(args: FailoverArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config.config)?;
    let lb = &config.load_balancer;
    let admin = format!("{}:{}", lb.listen_host, lb.admin_port);
    let body = match &args.to {
        Some(id) => format!(r#"{{"to":"{id}"}}"#),
        None => String::new(),
    };
    dirkdb_proxy::auth::use_cluster_credentials(&config).map_err(|e| anyhow::anyhow!(e))?;
    dirkdb_core::tls::use_cluster_tls(&config.security)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let answer = runtime
        .block_on(dirkdb_proxy::http::post_json(
            &admin,
            "/cluster/failover",
            &body,
            std::time::Duration::from_secs(30),
        ))
        .map_err(|e| anyhow::anyhow!("failover through the proxy at {admin}: {e}"))?;
    println!("{answer}");
    Ok(())
}

fn run_cluster(args: ConfigArg) -> anyhow::Result<()> {
    init_logging();
    let config = load_config(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(cluster::run(config, args.config.clone(), shutdown_signal()))
}

/// A positive number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds <= 0.0 {
        return Err(format!(
            "`{text}`: the interval must be more than 0 seconds"
        ));
    }
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// `dirkdb replicate-files`: one pass with --once, else passes until Ctrl-C or SIGTERM.
fn run_replicate_files(args: ReplicateFilesArgs) -> anyhow::Result<()> {
    use dirkdb_server::replicate_files::{self, FileReplicator};
    use std::sync::atomic::{AtomicBool, Ordering};
    init_logging();
    let mut replicator = FileReplicator::open(&args.from, &args.to)?;
    if args.once {
        let started = std::time::Instant::now();
        let report = replicator.pass(&AtomicBool::new(false));
        report.log(started.elapsed(), true);
        return match report.failure_summary() {
            Some(summary) => Err(anyhow::anyhow!(summary)),
            None => Ok(()),
        };
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut passes = tokio::task::spawn_blocking(move || {
            replicate_files::watch(replicator, args.interval, &flag)
        });
        tokio::select! {
            done = &mut passes => return done.context("replicate-files"),
            _ = shutdown_signal() => stop.store(true, Ordering::Relaxed),
        }
        passes.await.context("replicate-files")
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
