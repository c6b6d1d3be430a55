//! The proxy's status page in a real browser: a cluster of three instances behind the proxy and a
//! cache, the page opened in headless Chromium (driven through chromedriver with `fantoccini`),
//! every instance shown with its role, the primary killed and the failover seen on the page
//! within seconds, the proxy stopped and the page saying it cannot reach it. Screenshots land in
//! `target/status-page*.png` (laptop width, after the failover, narrow window). A second cluster
//! with `security.requireAuth` checks that the page and its JSON need the admin user and work
//! with its credentials. A replica applying late under `dirkdb bench` shows the lag chart move
//! and fall back; DirkDB's own three-master `config.json` under `dirkdb cluster` shows every
//! master with the objects it owns, the streams between them and the conflicts.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! other paths through `DIRKDB_CHROMIUM` / `DIRKDB_CHROMEDRIVER`); without them the test prints
//! why it is skipped and passes.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{dirkdb_bin, free_port, wait_for_port};
use fantoccini::{Client as Browser, ClientBuilder};
use serde_json::{json, Value};

const OPLOG: &str = r#"{ "maxEntries": 1000000 }"#;

/// Chromium and chromedriver, or why the test cannot run.
fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("DIRKDB_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    let driver = std::env::var_os("DIRKDB_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into());
    for (path, package) in [(&chromium, "chromium"), (&driver, "chromium-driver")] {
        if !path.exists() {
            return Err(format!(
                "{} is absent (Debian package `{package}`: apt-get install chromium \
                 chromium-driver; .ci/run does it)",
                path.display()
            ));
        }
    }
    Ok((chromium, driver))
}

/// A chromedriver process on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(binary: &Path, log: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        wait_for_port(port);
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `dirkdb cache --config` process (the config's cache section), killed when dropped.
struct Cache(Child);

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn set_config(cluster: &Cluster, section: &str, value: Value) {
    let path = cluster.dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read config")).expect("json");
    config[section] = value;
    std::fs::write(&path, config.to_string()).expect("write config");
}

/// Three instances, AUTOMATIC failover after 500 ms, and a cache whose ports are in the config.
fn cluster_with_cache() -> (Cluster, Cache, u16) {
    let mut cluster = Cluster::configure_with(2, OPLOG, "{}");
    let (cache_port, cache_admin) = (free_port(), free_port());
    set_config(
        &cluster,
        "failover",
        json!({ "mode": "AUTOMATIC", "detectionMillis": 500 }),
    );
    set_config(
        &cluster,
        "cache",
        json!({ "listenHost": "127.0.0.1", "listenPort": cache_port, "adminPort": cache_admin,
                "ttlMillis": 5000, "maxEntries": 100 }),
    );
    cluster.spawn_all_with_proxy();
    let log = std::fs::File::create(cluster.dir.path().join("cache.log")).expect("cache log");
    let child = Command::new(dirkdb_bin())
        .args(["cache", "--config"])
        .arg(cluster.dir.path().join("config.json"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn dirkdb cache");
    wait_for_port(cache_port);
    wait_for_port(cache_admin);
    (cluster, Cache(child), cache_port)
}

/// Writes through the proxy and reads through the cache and the proxy until `stop` (at most
/// 120 s), so the charts have something to show; errors (during the failover) are skipped.
async fn load(proxy: String, cache: String, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let setup = "CREATE DATABASE IF NOT EXISTS shop; USE shop; \
                 CREATE TABLE IF NOT EXISTS w (id INTEGER PRIMARY KEY, v TEXT); \
                 CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY, v TEXT); \
                 INSERT OR IGNORE INTO r VALUES (1, 'one'), (2, 'two')";
    let mut writer = dirkdb_client::Client::connect(&proxy).await.expect("proxy");
    for statement in setup.split("; ") {
        writer.execute(statement).await.expect(statement);
    }
    let mut cached = dirkdb_client::Client::connect(&cache).await.expect("cache");
    cached
        .execute("USE shop")
        .await
        .expect("USE through the cache");
    let mut reader = dirkdb_client::Client::connect(&proxy).await.expect("proxy");
    reader.execute("USE shop").await.expect("USE");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        i += 1;
        let _ = writer
            .execute(&format!("INSERT INTO w(v) VALUES ('row {i}')"))
            .await;
        for _ in 0..3 {
            let _ = cached
                .execute(&format!("SELECT v FROM r WHERE id = {}", i % 2 + 1))
                .await;
        }
        let _ = reader.execute("SELECT count(*) FROM r").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// chromedriver (its log in `dir`), a fresh browser profile and a browser session; the driver
/// and the profile must outlive the session.
async fn start_browser(
    chromium: &Path,
    driver_bin: &Path,
    dir: &Path,
) -> (Driver, tempfile::TempDir, Browser) {
    let driver = Driver::start(driver_bin, &dir.join("chromedriver.log"));
    let profile = tempfile::tempdir().expect("browser profile");
    let browser = open_browser(chromium, &driver, profile.path()).await;
    (driver, profile, browser)
}

async fn open_browser(chromium: &Path, driver: &Driver, profile: &Path) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium.display().to_string(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1366,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromedriver session")
}

/// What the page shows, read from its DOM.
async fn page_view(browser: &Browser) -> Value {
    const READ: &str = r#"
        const all = (s) => Array.from(document.querySelectorAll(s));
        return {
          instances: all('g[data-instance]').map((g) => ({
            id: g.dataset.instance, role: g.dataset.role, health: g.dataset.health,
            text: g.textContent })),
          cache: all('g[data-node="cache"]').map((g) => g.dataset.health),
          failovers: all('#failovers li[data-from]').map((l) => ({
            from: l.dataset.from, to: l.dataset.to, text: l.textContent })),
          lagRows: all('#lag-table tr[data-lag-instance]').map((r) => r.textContent),
          lag: Object.fromEntries(all('#lag-table tr[data-lag-ops]').map((r) =>
            [r.dataset.lagInstance, { ops: Number(r.dataset.lagOps), ms: Number(r.dataset.lagMs) }])),
          lagPaths: all('#lag-chart svg path').map((p) => p.getAttribute('d')).join(' | '),
          owns: Object.fromEntries(all('g[data-instance][data-owns]').map((g) =>
            [g.dataset.instance, Number(g.dataset.owns)])),
          owners: all('#owners tr[data-object]').map((r) => [r.dataset.object, r.dataset.owner]),
          ownersShown: !document.getElementById('owners-card').hidden,
          meshEdges: all('#topology path.mesh').length,
          openConflicts: (document.querySelector('#conflicts [data-open-conflicts]') || {dataset: {}})
            .dataset.openConflicts,
          conflictsText: document.getElementById('conflicts').innerText,
          conn: document.getElementById('conn').dataset.state,
          alerts: document.getElementById('alerts').innerText,
          charts: all('.chart svg path').length,
        };"#;
    browser.execute(READ, vec![]).await.expect("read the page")
}

/// Polls the page until `done` holds (returns the view and how long it took) or `timeout`.
async fn wait_for(
    browser: &Browser,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let view = page_view(browser).await;
        if done(&view) {
            return (view, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "the page did not show {what} within {timeout:?}; it shows {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).expect("target folder");
    target.join(name)
}

async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let path = artifact(name);
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
}

fn role_of<'a>(view: &'a Value, id: &str) -> Option<(&'a str, &'a str)> {
    view["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| Some((i["role"].as_str()?, i["health"].as_str()?)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster_and_a_failover_in_a_real_browser() {
    let (chromium, driver_bin) = match browser_binaries() {
        Ok(paths) => paths,
        Err(why) => {
            println!(
                "SKIPPED the_status_page_shows_the_cluster_and_a_failover_in_a_real_browser: {why}"
            );
            return;
        }
    };
    let (mut cluster, _cache, cache_port) = cluster_with_cache();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        format!("127.0.0.1:{}", cluster.proxy.port),
        format!("127.0.0.1:{cache_port}"),
        stop.clone(),
    ));
    let (_driver, _profile, browser) =
        start_browser(&chromium, &driver_bin, cluster.dir.path()).await;
    let url = format!("http://127.0.0.1:{}/", cluster.proxy.admin);
    browser.goto(&url).await.expect("open the status page");

    // Every instance with its role, all up, the cache drawn, the charts drawn.
    let (view, _) = wait_for(&browser, Duration::from_secs(15), "the cluster", |v| {
        role_of(v, "m1") == Some(("PRIMARY", "Up"))
            && role_of(v, "m2") == Some(("REPLICA", "Up"))
            && role_of(v, "m3") == Some(("REPLICA", "Up"))
            && v["cache"] == json!(["Up"])
            && v["conn"] == "live"
    })
    .await;
    assert_eq!(
        view["lagRows"].as_array().map(Vec::len),
        Some(2),
        "{view:#}"
    );
    assert!(
        view["alerts"].as_str() == Some(""),
        "no alert while all is well: {view:#}"
    );
    // The charts draw their lines once samples come (waited for: it used to be a fixed 6 s).
    wait_for(
        &browser,
        Duration::from_secs(15),
        "three chart lines",
        |v| v["charts"].as_u64().unwrap_or(0) >= 3,
    )
    .await;
    screenshot(&browser, "status-page.png").await;

    // Kill the primary: the page shows m1 unreachable and the failover, by itself.
    let killed = Instant::now();
    cluster.kill9(0);
    let (view, took) = wait_for(&browser, Duration::from_secs(15), "the failover", |v| {
        let promoted = ["m2", "m3"]
            .iter()
            .any(|id| role_of(v, id).is_some_and(|(role, _)| role == "PRIMARY"));
        promoted
            && role_of(v, "m1") == Some(("REPLICA", "Down"))
            && v["failovers"][0]["from"] == "m1"
            && v["alerts"]
                .as_str()
                .is_some_and(|a| a.contains("The proxy cannot reach m1"))
    })
    .await;
    let failover = &view["failovers"][0];
    assert!(
        failover["text"]
            .as_str()
            .is_some_and(|t| t.contains("primary m1 unreachable") && t.contains("automatic")),
        "{failover:#}"
    );
    println!(
        "the page showed the failover m1 → {} {:.1} s after kill -9 ({:.1} s of page polling)",
        failover["to"],
        killed.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    // The screenshots are for people (target/*.png); half a second lets the page paint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&browser, "status-page-failover.png").await;
    browser
        .set_window_size(420, 1400)
        .await
        .expect("narrow window");
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&browser, "status-page-narrow.png").await;

    // The proxy gone: the page says so instead of showing stale figures as live.
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    if let Some(mut proxy) = cluster.proxy.child.take() {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    let (view, _) = wait_for(&browser, Duration::from_secs(10), "the lost proxy", |v| {
        v["conn"] == "error"
    })
    .await;
    assert!(
        view["alerts"]
            .as_str()
            .is_some_and(|a| a.contains("cannot reach the proxy's admin API")),
        "{view:#}"
    );
    browser.close().await.expect("close the browser");
}

/// `GET path` on loopback `port`: the status line, the headers and the body.
fn raw_get(port: u16, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// Without a browser: the page, its assets and its JSON come from the proxy's admin port.
#[test]
fn the_admin_port_serves_the_page_its_assets_and_the_history() {
    let cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let (status, headers, body) = raw_get(cluster.proxy.admin, "/");
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(body.contains("/status/app.js") && body.contains("/status/style.css"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no outside address"
    );
    for (path, kind) in [
        ("/status/app.js", "text/javascript"),
        ("/status/style.css", "text/css"),
    ] {
        let (status, headers, body) = raw_get(cluster.proxy.admin, path);
        assert!(status.ends_with("200 OK"), "{path}: {status}");
        assert!(headers.contains(kind), "{path}: {headers}");
        assert!(body.len() > 1000, "{path} is the real asset");
    }
    // A second of samples, each with both instances and their roles.
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let history = common::cluster::http(cluster.proxy.admin, "GET", "/status/history", "");
        if history["samples"].as_array().is_some_and(|s| s.len() >= 2) {
            break history;
        }
        assert!(Instant::now() < deadline, "no samples: {history}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let last = history["samples"]
        .as_array()
        .and_then(|s| s.last())
        .cloned();
    let last = last.unwrap_or_default();
    assert_eq!(last["primary"], "m1", "{last}");
    let roles: Vec<(&str, &str)> = last["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| Some((i["id"].as_str()?, i["role"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(roles, [("m1", "PRIMARY"), ("m2", "REPLICA")]);
    assert_eq!(
        last["instances"][1]["stream"]["state"], "Connected",
        "{last}"
    );
    assert_eq!(
        history["cache"]["state"], "absent",
        "no cache runs: {history}"
    );
    assert_eq!(history["failovers"], json!([]));
    assert_eq!(history["capacity"], 300);
    // `since` leaves out what the page already has; a bad one is refused.
    let at = last["at"].as_u64().unwrap_or(0);
    let newer = common::cluster::http(
        cluster.proxy.admin,
        "GET",
        &format!("/status/history?since={at}"),
        "",
    );
    assert!(
        newer["samples"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| x["at"].as_u64() > Some(at))),
        "{newer}"
    );
    let (status, _, _) = raw_get(cluster.proxy.admin, "/status/history?since=yesterday");
    assert!(status.contains(" 400 "), "{status}");
}

/// With `security.requireAuth`, the page needs the admin user's credentials, and once the browser
/// holds them (here given in the address) its requests for the JSON carry them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_works_with_admin_authentication_on() {
    let (chromium, driver_bin) = match browser_binaries() {
        Ok(paths) => paths,
        Err(why) => {
            println!("SKIPPED the_status_page_works_with_admin_authentication_on: {why}");
            return;
        }
    };
    let mut cluster = Cluster::configure_with(1, OPLOG, "{}");
    let hash = |pw: &str| dirkdb_core::security::hash_password(pw).expect("argon2 hash");
    let password_file = cluster.dir.path().join("cluster.pw");
    std::fs::write(&password_file, "cluster-pw\n").expect("password file");
    set_config(
        &cluster,
        "security",
        json!({
            "requireAuth": true,
            "users": [
                { "name": "admin", "passwordHash": hash("admin-pw"), "grants": { "*": ["READ", "WRITE", "ADMIN"] } },
                { "name": "cluster", "passwordHash": hash("cluster-pw"), "grants": { "*": ["READ", "WRITE", "REPLICATE", "ADMIN"] } }
            ],
            "clusterUser": "cluster",
            "clusterPasswordFile": password_file,
        }),
    );
    cluster.spawn_all_with_proxy();
    let (status, headers, _) = raw_get(cluster.proxy.admin, "/");
    assert!(
        status.contains(" 401 "),
        "the page needs credentials: {status}"
    );
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    let (status, _, _) = raw_get(cluster.proxy.admin, "/status/history");
    assert!(status.contains(" 401 "), "so does its JSON: {status}");

    let (_driver, _profile, browser) =
        start_browser(&chromium, &driver_bin, cluster.dir.path()).await;
    let url = format!("http://admin:admin-pw@127.0.0.1:{}/", cluster.proxy.admin);
    browser.goto(&url).await.expect("open the status page");
    let (view, _) = wait_for(&browser, Duration::from_secs(15), "the cluster", |v| {
        role_of(v, "m1") == Some(("PRIMARY", "Up"))
            && role_of(v, "m2") == Some(("REPLICA", "Up"))
            && v["conn"] == "live"
    })
    .await;
    assert_eq!(view["alerts"], "", "{view:#}");
    // The lag figures come from the primary, which the proxy asks with the cluster's credentials.
    let (view, _) = wait_for(
        &browser,
        Duration::from_secs(10),
        "the primary's lag",
        |v| {
            v["lagRows"][0]
                .as_str()
                .is_some_and(|row| row.contains("connected"))
        },
    )
    .await;
    println!("with authentication on: {}", view["lagRows"]);
    browser.close().await.expect("close the browser");
}

/// The page's failover list outlives the proxy: a failover and its reason are still listed after
/// the proxy is killed and started again.
#[test]
fn the_failover_log_is_kept_across_a_proxy_restart() {
    let mut cluster = Cluster::start_with_proxy(1, OPLOG, "{}");
    let answer = common::cluster::http(
        cluster.proxy.admin,
        "POST",
        "/cluster/failover",
        r#"{"to":"m2"}"#,
    );
    assert_eq!(answer["primary"], "m2", "{answer}");
    let listed =
        |port: u16| common::cluster::http(port, "GET", "/status/history", "")["failovers"].clone();
    let before = listed(cluster.proxy.admin);
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    assert_eq!(
        (&before[0]["from"], &before[0]["to"], &before[0]["kind"]),
        (&json!("m1"), &json!("m2"), &json!("manual")),
        "{before}"
    );
    assert_eq!(before[0]["reason"], "POST /cluster/failover asked for m2");
    cluster.kill_proxy();
    cluster.spawn_proxy();
    let after = listed(cluster.proxy.admin);
    assert_eq!(after, before, "the same failover, with its time and reason");
}

/// `dirkdb bench ARGS` as a user runs it, in the background.
fn spawn_bench(args: &[&str], log: &Path) -> Child {
    Command::new(dirkdb_bin())
        .arg("bench")
        .args(args)
        .stdout(std::fs::File::create(log).expect("bench log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run dirkdb bench")
}

/// The lag the page's table shows for `id` in operations (`None`: no figure shown).
fn lag_ops(view: &Value, id: &str) -> Option<u64> {
    view["lag"][id]["ops"].as_u64()
}

/// The quick start's promise: "watches the lag chart move under `dirkdb bench`". One primary
/// and one replica that applies every batch 25 ms late (the test-only fault hook), `dirkdb
/// bench -w insert` through the proxy, 600 single-row INSERTs: while the replica works through
/// them the page shows the replica behind
/// in its table and its chart line climbs off zero and changes from second to second; when the
/// bench ends the replica catches up and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_chart_moves_under_dirkdb_bench() {
    let (chromium, driver_bin) = match browser_binaries() {
        Ok(paths) => paths,
        Err(why) => {
            println!("SKIPPED the_lag_chart_moves_under_dirkdb_bench: {why}");
            return;
        }
    };
    let cluster = Cluster::start_with_lagging_replica("EVENTUAL", 25);
    let (_driver, _profile, browser) =
        start_browser(&chromium, &driver_bin, cluster.dir.path()).await;
    let url = format!("http://127.0.0.1:{}/", cluster.proxy.admin);
    browser.goto(&url).await.expect("open the status page");
    let (view, _) = wait_for(&browser, Duration::from_secs(15), "the cluster", |v| {
        role_of(v, "m1") == Some(("PRIMARY", "Up")) && lag_ops(v, "m2") == Some(0)
    })
    .await;
    assert!(view["conn"] == "live", "{view:#}");

    let port = cluster.proxy.port.to_string();
    let bench_log = cluster.dir.path().join("bench.out");
    let mut bench = spawn_bench(
        &[
            "--port", &port, "--init", "-w", "insert", "-c", "4", "-n", "600", "--warmup", "0",
            "-q",
        ],
        &bench_log,
    );
    let (view, took) = wait_for(
        &browser,
        Duration::from_secs(40),
        "the replica behind",
        |v| lag_ops(v, "m2").unwrap_or(0) > 0 && v["lag"]["m2"]["ms"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    println!(
        "the page showed m2 {} ops / {} ms behind {:.1} s into the bench",
        view["lag"]["m2"]["ops"],
        view["lag"]["m2"]["ms"],
        took.as_secs_f64()
    );
    // The chart moves: its line is redrawn with new points from one second to the next, and
    // not every point of it is on the zero line any more.
    let before = page_view(&browser).await["lagPaths"].clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = page_view(&browser).await;
    assert_ne!(before, after["lagPaths"], "the lag chart did not change");
    screenshot(&browser, "status-page-lag-under-bench.png").await;

    let status = bench.wait().expect("wait for dirkdb bench");
    let out = std::fs::read_to_string(&bench_log).unwrap_or_default();
    assert!(status.success(), "dirkdb bench failed: {out}");
    let (_, took) = wait_for(
        &browser,
        Duration::from_secs(60),
        "the replica caught up",
        |v| lag_ops(v, "m2") == Some(0),
    )
    .await;
    println!(
        "after the bench the page showed m2 caught up in {:.1} s",
        took.as_secs_f64()
    );
    browser.close().await.expect("close the browser");
}

/// Under MULTI_PRIMARY the page shows every master as MASTER with the objects it owns (the
/// same owners `SHOW OWNERS` gives through the proxy), one stream line per pair of masters, the
/// owners' table, the lag of the streams between masters, and the conflicts as the proxy
/// reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_dirkdbs_masters_and_their_objects() {
    let (chromium, driver_bin) = match browser_binaries() {
        Ok(paths) => paths,
        Err(why) => {
            println!("SKIPPED the_status_page_shows_dirkdbs_masters_and_their_objects: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // DirkDB's own three-master file, with free ports (and free ones for the cache that
    // `dirkdb cluster` starts).
    let common::DirkdbConfig {
        text,
        lb,
        lb_admin,
        masters: ports,
    } = common::dirkdb_config(dir.path());
    std::fs::write(dir.path().join("config.json"), text).expect("write config");
    let log = std::fs::File::create(dir.path().join("cluster.log")).expect("log");
    let child = Command::new(dirkdb_bin())
        .args(["cluster", "--config"])
        .arg(dir.path().join("config.json"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn dirkdb cluster");
    let _cluster = Cache(child);
    for (port, admin) in &ports {
        wait_for_port(*port);
        wait_for_port(*admin);
    }
    wait_for_port(lb);
    wait_for_port(lb_admin);

    // DirkDB's own statements through the proxy: a database, tables spread over the owners.
    let mut client = dirkdb_client::Client::connect(&format!("127.0.0.1:{lb}"))
        .await
        .expect("connect to the proxy");
    let mut script = vec![
        "manamboara tahiry sekoly".to_string(),
        "ampiasao sekoly".into(),
    ];
    for t in [
        "mpianatra",
        "mpampianatra",
        "taranja",
        "efitrano",
        "fanadinana",
        "naoty",
    ] {
        script.push(format!(
            "manamboara tabilao {t} (id ISA(null,null), anarana LAHATSORATRA(null,null))"
        ));
    }
    for statement in &script {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The proxy learns which masters are up (and so the owners) within its first checks.
        while let Err(e) = client.execute(statement).await {
            assert!(Instant::now() < deadline, "{statement}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let owners = client.query("SHOW OWNERS").await.expect("SHOW OWNERS");
    let expected: std::collections::BTreeMap<String, String> = owners
        .rows
        .iter()
        .filter(|r| r.len() >= 4)
        .map(|r| {
            let cell = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (format!("{}|{}|{}", cell(0), cell(1), cell(2)), cell(3))
        })
        .collect();
    assert!(expected.len() >= 7, "SHOW OWNERS: {owners:?}");
    let mut per_master: std::collections::BTreeMap<String, u64> = Default::default();
    for owner in expected.values() {
        *per_master.entry(owner.clone()).or_default() += 1;
    }

    let (_driver, _profile, browser) = start_browser(&chromium, &driver_bin, dir.path()).await;
    browser
        .goto(&format!("http://127.0.0.1:{lb_admin}/"))
        .await
        .expect("open the status page");
    let (view, _) = wait_for(&browser, Duration::from_secs(20), "the masters", |v| {
        ["m1", "m2", "m3"]
            .iter()
            .all(|id| role_of(v, id) == Some(("MASTER", "Up")))
            && v["ownersShown"] == true
            && v["owners"].as_array().map(Vec::len) == Some(expected.len())
            && v["lag"].as_object().map(|l| l.len()) == Some(3)
    })
    .await;
    for m in ["m1", "m2", "m3"] {
        assert_eq!(
            view["owns"][m].as_u64().unwrap_or(0),
            per_master.get(m).copied().unwrap_or(0),
            "objects of {m} on the page against SHOW OWNERS {per_master:?}: {view:#}"
        );
    }
    assert_eq!(view["meshEdges"], 3, "one stream line per pair: {view:#}");
    let status: Value =
        serde_json::from_str(&raw_get(lb_admin, "/cluster/status").2).expect("json");
    match status["multiPrimary"]["openConflicts"].as_u64() {
        Some(open) => assert_eq!(view["openConflicts"], open.to_string(), "{view:#}"),
        None => assert!(
            view["conflictsText"]
                .as_str()
                .is_some_and(|t| t.contains("does not report conflicts")),
            "{view:#}"
        ),
    }
    screenshot(&browser, "status-page-multi-primary.png").await;
    browser.close().await.expect("close the browser");
}
