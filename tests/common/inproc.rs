//! DirkDB's parts started inside the test process, for tests that kill no process (the model is
//! mini-redis's `tests/server.rs`): a primary, a proxy and a cache run as tasks of the test's
//! own runtime with the same `run` functions as `dirkdb server|proxy|cache`, on loopback ports,
//! and stop when their handle is dropped. No binary start, no log file, no polling of a port
//! for a process to come up: a part is ready when its `run` has bound its listeners.
//!
//! Everything here is async (HTTP included): a blocking call would stall the runtime that
//! serves the very part it talks to.

use std::time::Duration;

use dirkdb_client::Client;
use dirkdb_core::config::ClusterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::free_port;

/// One part running in this process; dropping it stops it.
pub(crate) struct Part {
    /// Its SQL port.
    pub port: u16,
    /// Its admin HTTP port.
    pub admin: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Part {
    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client connected to it.
    pub(crate) async fn client(&self) -> Client {
        Client::connect(&self.addr()).await.expect("connect")
    }

    /// Asks it to stop and waits until it has (the server checkpoints its files).
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// Runs `run` (given a future that resolves when the part must stop) as a task, then waits
    /// until `port` and `admin` accept connections.
    async fn spawn<F>(port: u16, admin: u16, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Part
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stopped));
        for p in [port, admin] {
            accepting(p).await;
        }
        Part {
            port,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits up to 20 s until something accepts on `port` (an in-process part binds at once; this
/// only covers the task's first poll).
async fn accepting(port: u16) {
    let found = super::wait::until_async(Duration::from_secs(20), || async move {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    assert!(found, "nothing listens on port {port} after 20 s");
}

/// A primary `m1` with an admin port and its own data folder, and the config around it.
pub(crate) struct Primary {
    pub dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub part: Part,
}

/// The config of one primary `m1` on `port`/`admin`, a proxy on `proxy`/`proxy_admin`, and
/// `extra` top-level sections (`"cache": {…}`, …) appended as they are.
pub(crate) fn config_text(dir: &std::path::Path, ports: [u16; 4], extra: &str) -> String {
    let [port, admin, proxy, proxy_admin] = ports;
    format!(
        r#"{{ "instances": [ {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": {port},
               "adminPort": {admin}, "dataDirectory": "{}" }} ],
             "loadBalancer": {{ "listenHost": "127.0.0.1", "listenPort": {proxy},
               "adminPort": {proxy_admin}, "healthIntervalMillis": 50 }},
             "replication": {{ "type": "OPLOG", "heartbeatMillis": 100 }},
             "storage": {{ "synchronous": "NORMAL" }}{extra} }}"#,
        dir.join("m1").display()
    )
}

/// Starts a primary in this process (its proxy's ports are reserved in the config, not used).
pub(crate) async fn primary() -> Primary {
    primary_with("").await
}

/// Starts a primary whose config has `extra` top-level sections (see [`config_text`]).
pub(crate) async fn primary_with(extra: &str) -> Primary {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let config = ClusterConfig::parse(&config_text(dir.path(), ports, extra)).expect("test config");
    let running = config.clone();
    let part = Part::spawn(ports[0], ports[1], move |stopped| async move {
        let result = dirkdb_server::run(&running, "m1", None, stopped).await;
        if let Err(e) = result {
            panic!("in-process server: {e}");
        }
    })
    .await;
    Primary { dir, config, part }
}

/// Starts the proxy of `primary`'s config in this process.
pub(crate) async fn proxy(primary: &Primary) -> Part {
    let config = primary.config.clone();
    let lb = &config.load_balancer;
    let (port, admin) = (lb.listen_port, lb.admin_port);
    Part::spawn(port, admin, move |stopped| async move {
        if let Err(e) = dirkdb_proxy::run(config, None, stopped).await {
            panic!("in-process proxy: {e}");
        }
    })
    .await
}

/// Starts a cache in this process in front of `upstream` (`host:port`), following the
/// primary's change feed.
pub(crate) async fn cache(primary: &Primary, upstream: &str) -> Part {
    let mut settings = dirkdb_cache::CacheSettings::from_config(&primary.config);
    let (port, admin) = (free_port(), free_port());
    settings.listen = format!("127.0.0.1:{port}");
    settings.admin = format!("127.0.0.1:{admin}");
    settings.upstream = upstream.to_string();
    Part::spawn(port, admin, move |stopped| async move {
        if let Err(e) = dirkdb_cache::run(settings, stopped).await {
            panic!("in-process cache: {e}");
        }
    })
    .await
}

/// `GET path` on a loopback admin port; the status code and the body.
pub(crate) async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer within 30 s")
    .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// One scrape of `GET /metrics`, read as Prometheus' text format.
pub(crate) struct Scrape {
    pub text: String,
}

impl Scrape {
    /// Scrapes `port`'s `/metrics`, checking the answer is 200.
    pub(crate) async fn of(port: u16) -> Scrape {
        let (status, text) = http_get(port, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        Scrape { text }
    }

    /// The `# TYPE` of `name` (`counter`, `gauge`), if described.
    pub(crate) fn kind(&self, name: &str) -> Option<&str> {
        let prefix = format!("# TYPE {name} ");
        self.text.lines().find_map(|l| l.strip_prefix(&prefix))
    }

    /// The value of the sample written exactly `series` (`name` or `name{labels}`).
    pub(crate) fn value(&self, series: &str) -> Option<f64> {
        self.text.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    /// Checks every sample line is `name[{labels}] number` under a `# TYPE` of its name.
    pub(crate) fn assert_well_formed(&self) {
        let mut described = None::<String>;
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                described = rest.split(' ').next().map(str::to_string);
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let name = series.split('{').next().unwrap_or("");
            assert_eq!(described.as_deref(), Some(name), "{line} in\n{}", self.text);
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
