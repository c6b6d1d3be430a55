//! TLS end to end, against real `dirkdb` processes on loopback with a test CA made by rcgen in
//! the test's folder: every hop in TLS (client → cache → proxy → server → replica), plaintext
//! beside TLS on the same ports or refused with `required`, the client and the bench speaking
//! TLS, a wrong CA refused with a clear message, and a replica whose certificate no trusted CA
//! signed kept out under mutual TLS.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{dirkdb_bin, free_port, run_client, wait_for_port};
use dirkdb_client::{Client, ClientError, Reply};
use dirkdb_core::tls::TlsClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A test CA and one node certificate it signed (for localhost and 127.0.0.1), as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        Pki::for_names(dir, name, &["localhost", "127.0.0.1"])
    }

    /// A CA and a node certificate for `names` only.
    fn for_names(dir: &Path, name: &str, names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", cert.pem()),
            key: write("key.pem", key.serialize_pem()),
        }
    }

    /// A `security.tls` section with these files and `extra` fields.
    fn section(&self, extra: Value) -> Value {
        let mut tls = json!({ "certFile": self.cert, "keyFile": self.key, "caFile": self.ca });
        if let (Some(t), Some(e)) = (tls.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        tls
    }

    /// A client checking servers against this CA, presenting no certificate.
    fn client(&self) -> TlsClient {
        TlsClient::new(Some(&self.ca), None).unwrap()
    }
}

/// Writes `security.tls` into the config at `path`.
fn set_tls(path: &Path, tls: Value) {
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["security"] = json!({ "tls": tls });
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn config_path(cluster: &Cluster) -> PathBuf {
    cluster.dir.path().join("config.json")
}

async fn connect(addr: &str, tls: Option<&TlsClient>) -> Result<Client, ClientError> {
    Client::connect_with(addr, TIMEOUT, tls).await
}

fn text(reply: Reply) -> Vec<Vec<Value>> {
    reply.rows().expect("rows").rows.clone()
}

/// Runs `statement` on `addr` until it succeeds (parts still finding each other) or 30 s pass.
async fn eventually(addr: &str, tls: &TlsClient, statements: &[&str]) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut client = connect(addr, Some(tls)).await?;
            let mut last = None;
            for statement in statements {
                last = Some(client.execute(statement).await?);
            }
            Ok::<_, ClientError>(last.expect("a statement"))
        };
        match attempt.await {
            Ok(reply) => return reply,
            Err(e) if Instant::now() > deadline => panic!("{statements:?} on {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One HTTP GET (over TLS with `tls`); the whole answer as text.
async fn get(port: u16, path: &str, tls: Option<&TlsClient>) -> String {
    let addr = format!("127.0.0.1:{port}");
    let mut stream = dirkdb_core::tls::connect(&addr, TIMEOUT, tls)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A TLS peer may close without close_notify once the answer is sent.
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A `dirkdb cache` in front of the cluster's proxy, reading the cluster's config.json.
struct CacheChild {
    port: u16,
    admin: u16,
    child: Child,
    log: PathBuf,
}

impl CacheChild {
    fn start(cluster: &Cluster) -> CacheChild {
        let (port, admin) = (free_port(), free_port());
        let log = cluster.dir.path().join("cache.log");
        let child = Command::new(dirkdb_bin())
            .args(["cache", "127.0.0.1", &cluster.proxy.port.to_string()])
            .args([
                &port.to_string(),
                "3000",
                "200",
                "--admin-port",
                &admin.to_string(),
            ])
            .arg("--config")
            .arg(config_path(cluster))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn dirkdb cache");
        wait_for_port(port);
        wait_for_port(admin);
        CacheChild {
            port,
            admin,
            child,
            log,
        }
    }
}

impl Drop for CacheChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dirkdb server` for `instance` of the config at `config` (its log beside it).
fn spawn_server(config: &Path, instance: &str, log: &Path) -> Child {
    Command::new(dirkdb_bin())
        .args(["server", "--config"])
        .arg(config)
        .args(["--instance", instance])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn dirkdb server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_speaks_tls_client_cache_proxy_server_replica() {
    // With `required` no hop can fall back to plaintext, and with `mutualTls` the replica's
    // stream and the cache's change feed must carry node certificates.
    let mut cluster = Cluster::configure(1, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    set_tls(
        &config_path(&cluster),
        pki.section(json!({ "required": true, "mutualTls": true })),
    );
    cluster.spawn_all_with_proxy();
    let cache = CacheChild::start(&cluster);
    let tls = pki.client();
    let cache_addr = format!("127.0.0.1:{}", cache.port);

    eventually(&cache_addr, &tls, &["CREATE DATABASE shop"]).await;
    let mut client = connect(&cache_addr, Some(&tls)).await.unwrap();
    for sql in [
        "USE shop",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t VALUES (1, 'over tls')",
    ] {
        client
            .execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let rows = text(client.execute("SELECT v FROM t").await.unwrap());
    assert_eq!(rows, vec![vec![json!("over tls")]]);

    // The replica got it over its TLS stream.
    let replica = eventually(&cluster.addr(1), &tls, &["USE shop", "SELECT v FROM t"]).await;
    assert_eq!(text(replica), vec![vec![json!("over tls")]]);

    // The cache follows the change feed (cache → proxy → m1, node certificates both ways).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(cache.admin, "/stats", Some(&tls))
        .await
        .contains("\"feed_connected\":1")
    {
        let log = std::fs::read_to_string(&cache.log).unwrap_or_default();
        assert!(Instant::now() < deadline, "no change feed: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The proxy reaches the servers' admin APIs in HTTPS: it sees both instances up.
    let status = get(cluster.proxy.admin, "/cluster/status", Some(&tls)).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("m1") && status.contains("m2"), "{status}");

    // Plaintext is refused everywhere, with the reason.
    let proxy_addr = format!("127.0.0.1:{}", cluster.proxy.port);
    for addr in [cache_addr.clone(), cluster.addr(0), proxy_addr] {
        let mut plain = connect(&addr, None).await.unwrap();
        match plain.execute("SELECT 1").await {
            Err(ClientError::Server(reason)) => {
                assert!(reason.contains("security.tls.required"), "{addr}: {reason}")
            }
            other => panic!("{addr}: plaintext got {other:?}"),
        }
    }
    for port in [cache.admin, cluster.proxy.admin, cluster.nodes[0].admin] {
        let answer = get(port, "/health", None).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("requires TLS"),
            "{port}: {answer}"
        );
    }

    // A TLS client without a node certificate cannot take a replication stream.
    let mut outsider = connect(&cluster.addr(0), Some(&tls)).await.unwrap();
    match outsider.execute("DIRK REPLICATION").await {
        Err(ClientError::Server(reason)) => {
            assert!(reason.contains("security.tls.mutualTls"), "{reason}")
        }
        other => panic!("replication without a node certificate got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_share_the_ports_when_tls_is_not_required() {
    let mut cluster = Cluster::configure(0, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    set_tls(&config_path(&cluster), pki.section(json!({})));
    cluster.spawn(0);
    let tls = pki.client();
    let addr = cluster.addr(0);

    let mut secure = connect(&addr, Some(&tls)).await.unwrap();
    secure.execute("CREATE DATABASE shop").await.unwrap();
    secure.execute("USE shop").await.unwrap();
    secure.execute("CREATE TABLE t (v TEXT)").await.unwrap();
    secure
        .execute("INSERT INTO t VALUES ('tls')")
        .await
        .unwrap();
    let mut plain = connect(&addr, None).await.unwrap();
    plain.execute("USE shop").await.unwrap();
    plain
        .execute("INSERT INTO t VALUES ('plain')")
        .await
        .unwrap();
    let rows = text(secure.execute("SELECT v FROM t ORDER BY v").await.unwrap());
    assert_eq!(rows, vec![vec![json!("plain")], vec![json!("tls")]]);

    // The admin port answers HTTP and HTTPS alike; the harness's plain helper still works.
    let admin = cluster.nodes[0].admin;
    assert!(get(admin, "/health", Some(&tls))
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(get(admin, "/health", None)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(cluster.committed(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_refuses_plaintext_and_the_client_and_bench_speak_tls() {
    let mut cluster = Cluster::configure(0, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    set_tls(
        &config_path(&cluster),
        pki.section(json!({ "required": true })),
    );
    cluster.spawn(0);
    let port = cluster.nodes[0].port.to_string();
    let ca = pki.ca.display().to_string();

    let plain = run_client(&["127.0.0.1", &port, "-c", "SELECT 1"], None);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert_ne!(plain.status.code(), Some(0), "plaintext was served");
    assert!(stderr.contains("security.tls.required"), "{stderr}");

    let secure = run_client(
        &[
            "127.0.0.1",
            &port,
            "--tls",
            "--ca",
            &ca,
            "-c",
            "SELECT 41 + 1 AS answer",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&secure.stdout);
    assert_eq!(
        secure.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&secure.stderr)
    );
    assert!(stdout.contains("42"), "{stdout}");

    let bench = Command::new(dirkdb_bin())
        .args(["bench", "--port", &port, "--tls", "--ca", &ca, "--init"])
        .args(["-n", "200", "-c", "2", "--warmup", "0", "--json", "-q"])
        .output()
        .expect("run dirkdb bench");
    let summary: Value = serde_json::from_slice(&bench.stdout).unwrap_or(Value::Null);
    assert_eq!(
        bench.status.code(),
        Some(0),
        "{summary}{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(summary.to_string().contains("200"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_is_refused_with_a_clear_message() {
    let mut cluster = Cluster::configure(0, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    let other = Pki::new(cluster.dir.path(), "other");
    set_tls(&config_path(&cluster), pki.section(json!({})));
    cluster.spawn(0);
    let port = cluster.nodes[0].port.to_string();
    let wrong = other.ca.display().to_string();
    let out = run_client(
        &["127.0.0.1", &port, "--ca", &wrong, "-c", "SELECT 1"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("TLS with 127.0.0.1:{port} failed"))
            && stderr.contains("invalid peer certificate")
            && stderr.contains("--ca"),
        "{stderr}"
    );
    // A CA file that is none is named as the option at fault.
    let out = run_client(&["127.0.0.1", &port, "--ca", "/nonexistent.pem"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--ca: cannot read /nonexistent.pem"),
        "{stderr}"
    );
    // The server goes on serving the right CA's clients.
    let mut client = connect(&cluster.addr(0), Some(&pki.client()))
        .await
        .unwrap();
    client.execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_unknown_certificate_is_refused_under_mutual_tls() {
    let mut cluster = Cluster::configure(1, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    let rogue = Pki::new(cluster.dir.path(), "rogue");
    set_tls(
        &config_path(&cluster),
        pki.section(json!({ "mutualTls": true })),
    );
    // m2 trusts the primary, but presents a certificate no CA of the primary signed.
    let rogue_config = cluster.dir.path().join("rogue.json");
    std::fs::copy(config_path(&cluster), &rogue_config).unwrap();
    let mut section = pki.section(json!({ "mutualTls": true }));
    section["certFile"] = json!(rogue.cert);
    section["keyFile"] = json!(rogue.key);
    set_tls(&rogue_config, section);
    cluster.spawn(0);
    let tls = pki.client();
    let mut primary = connect(&cluster.addr(0), Some(&tls)).await.unwrap();
    for sql in [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t (v TEXT)",
        "INSERT INTO t VALUES ('secret')",
    ] {
        primary.execute(sql).await.unwrap();
    }

    let log = cluster.dir.path().join("m2-rogue.log");
    let mut child = spawn_server(&rogue_config, "m2", &log);
    wait_for_port(cluster.nodes[1].port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let replica_log = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("refused the stream") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        replica_log.contains("refused the stream") && replica_log.contains("UnknownCA"),
        "{replica_log}"
    );
    // It serves its own certificate.
    let mut replica = connect(&cluster.addr(1), Some(&rogue.client()))
        .await
        .unwrap();
    assert!(
        replica.execute("USE shop").await.is_err(),
        "the rogue replica got the data"
    );
    assert!(cluster.log(0).contains("certificate"), "{}", cluster.log(0));
    let _ = child.kill();
    let _ = child.wait();

    // The same replica with a certificate of the trusted CA follows (so the refusal above was
    // the certificate's doing).
    cluster.spawn(1);
    let rows = eventually(&cluster.addr(1), &tls, &["USE shop", "SELECT v FROM t"]).await;
    assert_eq!(text(rows), vec![vec![json!("secret")]]);
}

#[test]
fn unusable_tls_files_stop_the_server_at_start_naming_the_field() {
    let cluster = Cluster::configure(0, "{}");
    let pki = Pki::new(cluster.dir.path(), "good");
    let other = Pki::new(cluster.dir.path(), "other");
    let cases = [
        (
            json!({ "keyFile": other.key }),
            "security.tls.keyFile",
            "is not the private key",
        ),
        (
            json!({ "certFile": "/nonexistent/cert.pem" }),
            "security.tls.certFile",
            "cannot read",
        ),
        (
            json!({ "caFile": pki.key }),
            "security.tls.caFile",
            "holds no PEM certificate",
        ),
    ];
    for (extra, field, problem) in cases {
        set_tls(&config_path(&cluster), pki.section(extra));
        let out = Command::new(dirkdb_bin())
            .args(["server", "--config"])
            .arg(config_path(&cluster))
            .args(["--instance", "m1"])
            .output()
            .expect("run dirkdb server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with a bad {field}");
        assert!(
            stderr.contains(field) && stderr.contains(problem),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_tls_section_is_used_for_new_connections_without_a_restart() {
    let mut cluster = Cluster::configure(0, "{}");
    let pki = Pki::new(cluster.dir.path(), "old");
    let renewed = Pki::new(cluster.dir.path(), "new");
    set_tls(&config_path(&cluster), pki.section(json!({})));
    cluster.spawn(0);
    let addr = cluster.addr(0);
    let mut open = connect(&addr, Some(&pki.client())).await.unwrap();
    let e = connect(&addr, Some(&renewed.client())).await.err();
    assert!(matches!(e, Some(ClientError::Tls { .. })), "{e:?}");

    set_tls(&config_path(&cluster), renewed.section(json!({})));
    let deadline = Instant::now() + Duration::from_secs(20);
    while connect(&addr, Some(&renewed.client())).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not reloaded: {}",
            cluster.log(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session opened before keeps its connection.
    open.execute("SELECT 1").await.unwrap();
    let e = connect(&addr, Some(&pki.client())).await.err();
    assert!(matches!(e, Some(ClientError::Tls { .. })), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_lets_certificates_name_another_host_than_the_one_dialled() {
    // One certificate for `db.internal` on every node, the nodes reached at 127.0.0.1: with
    // serverName the replica, the proxy and the client check it against that name.
    let mut cluster = Cluster::configure(1, "{}");
    let pki = Pki::for_names(cluster.dir.path(), "named", &["db.internal"]);
    set_tls(
        &config_path(&cluster),
        pki.section(json!({ "required": true, "serverName": "db.internal" })),
    );
    cluster.spawn_all_with_proxy();
    let named = TlsClient::new(Some(&pki.ca), None)
        .unwrap()
        .with_server_name("db.internal")
        .unwrap();
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    let statements = [
        "CREATE DATABASE shop",
        "USE shop",
        "CREATE TABLE t (v TEXT)",
        "INSERT INTO t VALUES ('named')",
    ];
    eventually(&proxy, &named, &statements).await;
    let replica = eventually(&cluster.addr(1), &named, &["USE shop", "SELECT v FROM t"]).await;
    assert_eq!(text(replica), vec![vec![json!("named")]]);
    // The client: refused by the dialled host's name, accepted with --server-name.
    let port = cluster.nodes[0].port.to_string();
    let ca = pki.ca.display().to_string();
    let out = run_client(&["127.0.0.1", &port, "--ca", &ca, "-c", "SELECT 1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not valid for name"), "{stderr}");
    let out = run_client(
        &[
            "127.0.0.1",
            &port,
            "--ca",
            &ca,
            "--server-name",
            "db.internal",
            "-c",
            "SELECT 1",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refused handshake is counted on m1's /metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(cluster.nodes[0].admin, "/metrics", Some(&named)).await;
        let failures = metrics
            .lines()
            .find(|l| l.starts_with("dirkdb_tls_handshake_failures_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if failures >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
