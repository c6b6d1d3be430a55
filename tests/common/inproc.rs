//! DirkDB's parts started inside the test process, for tests that kill no process (the model is
//! mini-redis's `tests/server.rs`): servers, a proxy and a cache run as tasks of the test's own
//! runtime with the same code as `dirkdb server|proxy|cache` (`run_on`), and stop when their
//! handle is dropped. Every port is bound to port 0 first and the config is written with the
//! ports the kernel gave, so no port is reserved and lost to someone else before the part binds
//! it, and no test polls for a process to come up: a bound port queues connections until the part
//! serves them.
//!
//! Everything here is async (HTTP included): a blocking call would stall the runtime that
//! serves the very part it talks to.

use std::time::Duration;

use dirkdb_client::Client;
use dirkdb_core::accept_loop::Listeners;
use dirkdb_core::config::ClusterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One part running in this process; dropping it stops it.
pub(crate) struct Part {
    /// Its SQL port.
    pub port: u16,
    /// Its admin HTTP port (0: none).
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

    /// Runs `run` (given the part's listeners and a future that resolves when the part must
    /// stop) as a task.
    fn spawn<F>(
        listeners: Listeners,
        run: impl FnOnce(Listeners, oneshot::Receiver<()>) -> F,
    ) -> Part
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let port = port_of(&listeners.sql);
        let admin = listeners.admin.as_ref().map_or(0, port_of);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(listeners, stopped));
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

/// A listener on a port of loopback the kernel chooses.
pub(crate) async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")
}

/// A part's SQL and admin listeners on ports the kernel chooses.
pub(crate) async fn listeners() -> Listeners {
    Listeners {
        sql: bind().await,
        admin: Some(bind().await),
    }
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().expect("local address").port()
}

/// A port nothing listens on (bound, then closed): for an instance a config names but no test
/// starts, which refuses connections.
pub(crate) async fn closed_port() -> u16 {
    port_of(&bind().await)
}

/// A primary `m1` with an admin port and its own data folder, the config around it, and the
/// proxy's listeners, bound and held for [`proxy`].
pub(crate) struct Primary {
    pub dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub part: Part,
    proxy_listeners: std::sync::Mutex<Option<Listeners>>,
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

/// Starts a primary in this process (its proxy's ports are bound and held for [`proxy`]).
pub(crate) async fn primary() -> Primary {
    primary_with("").await
}

/// Starts a primary whose config has `extra` top-level sections (see [`config_text`]).
pub(crate) async fn primary_with(extra: &str) -> Primary {
    start_primary(extra, false).await
}

/// Starts a primary with `storage.synchronous = FULL` (the default a user gets, so group
/// commit), where the other tests save their time with NORMAL.
pub(crate) async fn primary_full() -> Primary {
    start_primary("", true).await
}

async fn start_primary(extra: &str, full: bool) -> Primary {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, proxy) = (listeners().await, listeners().await);
    let ports = [
        port_of(&server.sql),
        server.admin.as_ref().map_or(0, port_of),
        port_of(&proxy.sql),
        proxy.admin.as_ref().map_or(0, port_of),
    ];
    let mut text = config_text(dir.path(), ports, extra);
    if full {
        text = text.replace(r#""synchronous": "NORMAL""#, r#""synchronous": "FULL""#);
    }
    let config = ClusterConfig::parse(&text).expect("test config");
    let part = server_part(server, config.clone(), "m1");
    Primary {
        dir,
        config,
        part,
        proxy_listeners: std::sync::Mutex::new(Some(proxy)),
    }
}

/// Runs instance `id` of `config` on `listeners` in this process.
pub(crate) fn server_part(listeners: Listeners, config: ClusterConfig, id: &'static str) -> Part {
    Part::spawn(listeners, move |listeners, stopped| async move {
        let result = dirkdb_server::run_on(listeners, &config, id, None, stopped).await;
        if let Err(e) = result {
            panic!("in-process server {id}: {e}");
        }
    })
}

/// Starts the proxy of `primary`'s config in this process, on the ports its config names.
pub(crate) async fn proxy(primary: &Primary) -> Part {
    let config = primary.config.clone();
    let listeners = primary
        .proxy_listeners
        .lock()
        .expect("proxy listeners")
        .take()
        .expect("one proxy per primary");
    Part::spawn(listeners, move |listeners, stopped| async move {
        if let Err(e) = dirkdb_proxy::run_on(listeners, config, None, stopped).await {
            panic!("in-process proxy: {e}");
        }
    })
}

/// Starts a cache in this process in front of `upstream` (`host:port`), following the
/// primary's change feed.
pub(crate) async fn cache(primary: &Primary, upstream: &str) -> Part {
    let mut settings = dirkdb_cache::CacheSettings::from_config(&primary.config);
    let listeners = listeners().await;
    settings.listen = listeners.sql_addr();
    settings.admin = listeners.admin_addr().unwrap_or_default();
    settings.upstream = upstream.to_string();
    Part::spawn(listeners, move |listeners, stopped| async move {
        if let Err(e) = dirkdb_cache::run_on(listeners, settings, stopped).await {
            panic!("in-process cache: {e}");
        }
    })
}

/// A lone server `t1` in this process, as `ServerProcess` starts one (the same config, from
/// [`super::lone_server_config`]), for tests that neither kill, signal nor measure its process.
pub(crate) struct Server {
    pub dir: tempfile::TempDir,
    pub part: Part,
}

impl Server {
    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> String {
        self.part.addr()
    }

    /// A client connected to it.
    pub(crate) async fn client(&self) -> Client {
        self.part.client().await
    }
}

/// A lone PRIMARY with default limits.
pub(crate) async fn server() -> Server {
    server_with("PRIMARY", "{}").await
}

/// A lone instance of `role` (PRIMARY or REPLICA) with the `limits` JSON object; a replica's
/// primary `t2` is on a closed port.
pub(crate) async fn server_with(role: &str, limits: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let listeners = Listeners {
        sql: bind().await,
        admin: None,
    };
    let text = super::lone_server_config(
        role,
        port_of(&listeners.sql),
        &dir.path().join("data"),
        closed_port().await,
        limits,
    );
    let config = ClusterConfig::parse(&text).expect("test config");
    let part = server_part(listeners, config, "t1");
    Server { dir, part }
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
