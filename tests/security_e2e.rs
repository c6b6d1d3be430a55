//! Security end to end, against real `dirkdb` processes: every hole of issue 15 is tried as an
//! outsider would (and refused), then with the right permission (and let through).
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cluster::Cluster;
use dirkdb_client::{Client, ClientError, Reply};
use serde_json::{json, Value};

const CLUSTER_PW: &str = "cluster-pw";

/// The users every test cluster has.
fn users() -> Value {
    let hash = |pw: &str| dirkdb_core::security::hash_password(pw).unwrap();
    json!([
        { "name": "admin", "passwordHash": hash("admin-pw"), "grants": { "*": ["READ", "WRITE", "ADMIN"] } },
        { "name": "app", "passwordHash": hash("app-pw"), "grants": { "shop": ["READ", "WRITE"] } },
        { "name": "reader", "passwordHash": hash("reader-pw"), "grants": { "shop": ["READ"] } },
        { "name": "writer", "passwordHash": hash("writer-pw"), "grants": { "shop": ["WRITE"] } },
        { "name": "cluster", "passwordHash": hash(CLUSTER_PW), "grants": { "*": ["READ", "WRITE", "REPLICATE", "ADMIN"] } }
    ])
}

/// Adds a `security` section (with `extra` fields) to the cluster's config.json.
fn secure(cluster: &Cluster, extra: Value) {
    let path = cluster.dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pw_file = cluster.dir.path().join("cluster.pw");
    std::fs::write(&pw_file, format!("{CLUSTER_PW}\n")).unwrap();
    let mut security = json!({
        "requireAuth": true,
        "users": users(),
        "clusterUser": "cluster",
        "clusterPasswordFile": pw_file,
    });
    if let (Some(s), Some(e)) = (security.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    config["security"] = security;
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn secure_cluster(replicas: usize, extra: Value) -> Cluster {
    let mut cluster = Cluster::configure(replicas, "{}");
    secure(&cluster, extra);
    for i in 0..=replicas {
        cluster.spawn(i);
    }
    cluster
}

async fn login(addr: &str, user: &str, password: &str) -> Client {
    let mut client = Client::connect(addr).await.expect("connect");
    let auth = format!("AUTH {user} {password}");
    client.execute(&auth).await.expect("AUTH accepted");
    client
}

fn denied(result: Result<Reply, ClientError>) -> String {
    match result {
        Err(ClientError::Server(text)) => text,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn rows(reply: Reply) -> Vec<Vec<Value>> {
    reply.rows().expect("rows").rows.clone()
}

/// An HTTP request with optional Basic credentials: (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    user: Option<(&str, &str)>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let auth = user
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_port_requires_auth_and_enforces_grants() {
    let cluster = secure_cluster(0, json!({}));
    let addr = cluster.addr(0);
    let mut anon = Client::connect(&addr).await.unwrap();
    for sql in [
        "SELECT 1",
        "CREATE DATABASE x",
        "SHOW DATABASES",
        "DROP DATABASE shop",
        "USE shop",
    ] {
        assert_eq!(
            denied(anon.execute(sql).await),
            "authentication required",
            "{sql}"
        );
    }
    let wrong = denied(anon.execute("AUTH admin nope").await);
    assert!(wrong.contains("authentication failed"), "{wrong}");

    let mut admin = login(&addr, "admin", "admin-pw").await;
    admin.execute("CREATE DATABASE shop").await.unwrap();
    admin.execute("CREATE DATABASE secret").await.unwrap();
    admin.execute("USE secret").await.unwrap();
    admin.execute("CREATE TABLE s (x)").await.unwrap();

    let mut app = login(&addr, "app", "app-pw").await;
    let e = denied(app.execute("CREATE DATABASE mine").await);
    assert!(e.contains("lacks ADMIN on database `mine`"), "{e}");
    let e = denied(app.execute("DROP DATABASE secret").await);
    assert!(e.contains("ADMIN"), "{e}");
    let e = denied(app.execute("USE secret").await);
    assert!(
        e.contains("permission denied") && e.contains("`secret`"),
        "{e}"
    );
    app.execute("USE shop").await.unwrap();
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    app.execute("INSERT INTO t (v) VALUES ('a')").await.unwrap();
    let shown = rows(app.execute("SHOW DATABASES").await.unwrap());
    assert_eq!(shown, vec![vec![json!("shop")]]);

    let mut reader = login(&addr, "reader", "reader-pw").await;
    reader.execute("USE shop").await.unwrap();
    assert_eq!(
        rows(reader.execute("SELECT v FROM t").await.unwrap()),
        vec![vec![json!("a")]]
    );
    for sql in [
        "INSERT INTO t (v) VALUES ('b')",
        "DELETE FROM t",
        "DROP TABLE t",
        "CREATE TABLE u (x)",
    ] {
        let e = denied(reader.execute(sql).await);
        assert!(e.contains("lacks WRITE on database `shop`"), "{sql}: {e}");
    }
    let all = rows(admin.execute("SHOW DATABASES").await.unwrap());
    assert_eq!(all.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_rate_limited_and_silent_connections_closed() {
    let cluster = secure_cluster(0, json!({ "authTimeoutMs": 1500, "maxAuthFailures": 3 }));
    let addr = cluster.addr(0);
    // A connection that never authenticates is closed after authTimeoutMs.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    let _ = silent.read_to_string(&mut seen);
    assert!(seen.contains("authentication timed out"), "{seen}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Three failures from this address, then even the right password is refused unchecked.
    let mut c = Client::connect(&addr).await.unwrap();
    for _ in 0..3 {
        denied(c.execute("AUTH app wrong").await);
    }
    let e = denied(c.execute("AUTH app app-pw").await);
    assert!(e.contains("too many failed authentications"), "{e}");
    assert!(cluster.log(0).contains("authentication failed"));
    // Four refusals counted on /metrics (open: protectMetrics is off).
    let (status, metrics) = http(cluster.nodes[0].admin, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("dirkdb_auth_failures_total{instance=\"m1\"} 4\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_admin_over_basic_auth() {
    let cluster = secure_cluster(1, json!({}));
    let admin_port = cluster.nodes[0].admin;
    let replica_admin = cluster.nodes[1].admin;
    assert_eq!(http(admin_port, "GET", "/health", None, "").0, 200);
    assert_eq!(http(admin_port, "GET", "/metrics", None, "").0, 200);
    let holes: [(u16, &str, &str, &str); 7] = [
        (replica_admin, "POST", "/replication/promote", ""),
        (
            replica_admin,
            "POST",
            "/replication/configure",
            r#"{"primary":"127.0.0.1:1"}"#,
        ),
        (admin_port, "POST", "/replication/oplog/clear", ""),
        (
            admin_port,
            "POST",
            "/replication/mode",
            r#"{"type":"FILE"}"#,
        ),
        (admin_port, "GET", "/replication/changes?since=0", ""),
        (admin_port, "GET", "/replication/checksum", ""),
        (admin_port, "GET", "/replication/status", ""),
    ];
    for (port, method, path, body) in holes {
        let (status, text) = http(port, method, path, None, body);
        assert_eq!(status, 401, "{path}: {text}");
        let (status, _) = http(port, method, path, Some(("admin", "wrong")), body);
        assert_eq!(status, 401, "{path}");
        let (status, text) = http(port, method, path, Some(("app", "app-pw")), body);
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("ADMIN"), "{text}");
    }
    // The replica still follows the real primary.
    let (status, text) = http(
        replica_admin,
        "GET",
        "/replication/status",
        Some(("admin", "admin-pw")),
        "",
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["role"],
        "REPLICA"
    );
    let (status, text) = http(
        admin_port,
        "GET",
        "/replication/changes?since=0",
        Some(("admin", "admin-pw")),
        "",
    );
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_needs_a_replicate_user_and_a_known_instance() {
    let cluster = secure_cluster(1, json!({}));
    let mut admin = login(&cluster.addr(0), "admin", "admin-pw").await;
    admin.execute("CREATE DATABASE shop").await.unwrap();
    admin.execute("USE shop").await.unwrap();
    admin.execute("CREATE TABLE t (x)").await.unwrap();
    admin.execute("INSERT INTO t VALUES (42)").await.unwrap();
    // The real replica authenticated as the cluster user and follows.
    let mut replica = login(&cluster.addr(1), "reader", "reader-pw").await;
    replica.execute("USE shop").await.ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        replica.execute("USE shop").await.ok();
        if let Ok(reply) = replica.execute("SELECT x FROM t").await {
            assert_eq!(rows(reply), vec![vec![json!(42)]]);
            break;
        }
        assert!(Instant::now() < deadline, "the replica never got the row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anyone else: no stream, no change feed.
    let mut anon = Client::connect(&cluster.addr(0)).await.unwrap();
    assert_eq!(
        denied(anon.execute("DIRK REPLICATION").await),
        "authentication required"
    );
    assert_eq!(
        denied(anon.execute("DIRK CHANGES").await),
        "authentication required"
    );
    let e = denied(admin.execute("DIRK CHANGES").await);
    assert!(e.contains("lacks REPLICATE"), "{e}");
    let mut fresh = login(&cluster.addr(0), "admin", "admin-pw").await;
    let e = denied(fresh.execute("DIRK REPLICATION").await);
    assert!(e.contains("lacks REPLICATE"), "{e}");
    // The cluster user with an instance id that is not in config.json is refused after Hello.
    let mut rogue = login(&cluster.addr(0), "cluster", CLUSTER_PW).await;
    match rogue.execute("DIRK REPLICATION").await {
        Ok(Reply::Message(m)) => assert_eq!(m, "OK DIRK REPLICATION"),
        other => panic!("{other:?}"),
    }
    let hello =
        br#"{"type":"hello","instance":"rogue","history":"resync","seq":99999999,"mode":"OPLOG"}"#;
    // A unit: length (kind byte + payload), kind 0 (message), the JSON.
    let mut frame = (hello.len() as u32 + 1).to_be_bytes().to_vec();
    frame.push(0);
    frame.extend_from_slice(hello);
    rogue.send_raw(&frame).await.ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster
        .log(0)
        .contains("is not an instance of this primary")
    {
        assert!(Instant::now() < deadline, "{}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secure_cluster_with_proxy(replicas: usize, routing: &str, extra: Value) -> Cluster {
    let mut cluster = Cluster::configure_with(replicas, "{}", routing);
    secure(&cluster, extra);
    cluster.spawn_all_with_proxy();
    cluster
}

/// Retries `sql` until it succeeds (the proxy finds the instances up shortly after start).
async fn eventually(client: &mut Client, sql: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.execute(sql).await {
            Ok(reply) => return reply,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_authenticates_clients_and_servers_enforce_their_grants() {
    let cluster = secure_cluster_with_proxy(1, "{}", json!({}));
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    let mut anon = Client::connect(&proxy).await.unwrap();
    for sql in ["SELECT 1", "USE shop", "DROP DATABASE shop", "DIRK CHANGES"] {
        assert_eq!(
            denied(anon.execute(sql).await),
            "authentication required",
            "{sql}"
        );
    }
    let mut admin = login(&proxy, "admin", "admin-pw").await;
    eventually(&mut admin, "CREATE DATABASE shop").await;
    admin.execute("CREATE DATABASE secret").await.unwrap();
    let mut app = login(&proxy, "app", "app-pw").await;
    let e = denied(app.execute("DROP DATABASE secret").await);
    assert!(e.contains("lacks ADMIN on database `secret`"), "{e}");
    let e = denied(app.execute("USE secret").await);
    assert!(e.contains("permission denied"), "{e}");
    app.execute("USE shop").await.unwrap();
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    app.execute("INSERT INTO t (v) VALUES ('a')").await.unwrap();
    assert_eq!(
        rows(app.execute("SHOW DATABASES").await.unwrap()),
        vec![vec![json!("shop")]]
    );

    // Reads go to the replica too (the proxy reaches it as the cluster user, acting for the
    // client); writes of a READ-only user are refused by the server with the permission named.
    let mut reader = login(&proxy, "reader", "reader-pw").await;
    reader.execute("USE shop").await.unwrap();
    for _ in 0..6 {
        let got = rows(eventually(&mut reader, "SELECT v FROM t").await);
        assert_eq!(got, vec![vec![json!("a")]]);
    }
    let e = denied(reader.execute("INSERT INTO t (v) VALUES ('b')").await);
    assert!(e.contains("lacks WRITE on database `shop`"), "{e}");
    let e = denied(reader.execute("DIRK CHANGES").await);
    assert!(e.contains("lacks REPLICATE"), "{e}");

    // Straight to a server, a client cannot claim another identity.
    let mut direct = login(&cluster.addr(0), "reader", "reader-pw").await;
    let e = denied(direct.execute("DIRK AS admin").await);
    assert!(e.contains("only security.clusterUser"), "{e}");
    direct.execute("USE shop").await.unwrap();
    denied(direct.execute("DELETE FROM t").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_admin_needs_admin_and_its_failover_reaches_the_servers() {
    let cluster = secure_cluster_with_proxy(1, "{}", json!({}));
    let admin_port = cluster.proxy.admin;
    assert_eq!(http(admin_port, "GET", "/health", None, "").0, 200);
    let body = r#"{"to":"m2"}"#;
    assert_eq!(
        http(admin_port, "POST", "/cluster/failover", None, body).0,
        401
    );
    assert_eq!(
        http(
            admin_port,
            "POST",
            "/cluster/failover",
            Some(("app", "app-pw")),
            body
        )
        .0,
        403
    );
    assert_eq!(http(admin_port, "GET", "/cluster/status", None, "").0, 401);
    // The old primary is still the primary: nothing happened.
    let (_, status) = http(
        cluster.nodes[0].admin,
        "GET",
        "/replication/status",
        Some(("admin", "admin-pw")),
        "",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&status).unwrap()["role"],
        "PRIMARY"
    );
    // An administrator's failover works: the proxy promotes m2 with the cluster credentials.
    let (code, text) = http(
        admin_port,
        "POST",
        "/cluster/failover",
        Some(("admin", "admin-pw")),
        body,
    );
    assert_eq!(code, 200, "{text}");
    let (_, status) = http(
        cluster.nodes[1].admin,
        "GET",
        "/replication/status",
        Some(("admin", "admin-pw")),
        "",
    );
    assert_eq!(
        serde_json::from_str::<Value>(&status).unwrap()["role"],
        "PRIMARY",
        "{status}"
    );
    let mut admin = login(
        &format!("127.0.0.1:{}", cluster.proxy.port),
        "admin",
        "admin-pw",
    )
    .await;
    eventually(&mut admin, "CREATE DATABASE after_failover").await;
}

/// `dirkdb cache` in front of the cluster's proxy, with the cluster's config.json (and so its
/// security section). Killed when dropped.
struct Cache {
    child: std::process::Child,
    port: u16,
    admin: u16,
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cache(cluster: &Cluster) -> Cache {
    let (port, admin) = (common::free_port(), common::free_port());
    let log = std::fs::File::create(cluster.dir.path().join("cache.log")).unwrap();
    let child = std::process::Command::new(common::dirkdb_bin())
        .args(["cache", "127.0.0.1"])
        .arg(cluster.proxy.port.to_string())
        .arg(port.to_string())
        .args(["60000", "200", "--admin-port"])
        .arg(admin.to_string())
        .arg("--config")
        .arg(cluster.dir.path().join("config.json"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    common::wait_for_port(port);
    Cache { child, port, admin }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_users_rows_apart() {
    let cluster = secure_cluster_with_proxy(0, "{}", json!({}));
    let cache = start_cache(&cluster);
    let addr = format!("127.0.0.1:{}", cache.port);
    let mut anon = Client::connect(&addr).await.unwrap();
    assert_eq!(
        denied(anon.execute("SELECT 1").await),
        "authentication required"
    );
    let mut admin = login(&addr, "admin", "admin-pw").await;
    eventually(&mut admin, "CREATE DATABASE secret").await;
    admin.execute("CREATE DATABASE shop").await.unwrap();
    admin.execute("USE secret").await.unwrap();
    admin.execute("CREATE TABLE s (v TEXT)").await.unwrap();
    admin
        .execute("INSERT INTO s VALUES ('classified')")
        .await
        .unwrap();
    // Kept by the admin's read...
    for _ in 0..3 {
        let got = rows(admin.execute("SELECT v FROM s").await.unwrap());
        assert_eq!(got, vec![vec![json!("classified")]]);
    }
    let (_, stats) = http(
        cache.admin,
        "GET",
        "/stats",
        Some(("admin", "admin-pw")),
        "",
    );
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["hits"].as_u64().unwrap() >= 2, "{stats}");
    // ...never served to a user without READ on `secret`, whatever the route.
    let mut app = login(&addr, "app", "app-pw").await;
    let e = denied(app.execute("USE secret").await);
    assert!(e.contains("permission denied"), "{e}");
    let e = denied(app.execute("SELECT v FROM secret.s").await);
    assert!(!e.contains("classified"), "{e}");
    let e = denied(app.execute("FLUSH CACHE").await);
    assert!(e.contains("ADMIN"), "{e}");
    // With READ, the same cache serves its own rows.
    app.execute("USE shop").await.unwrap();
    app.execute("CREATE TABLE t (v TEXT)").await.unwrap();
    app.execute("INSERT INTO t VALUES ('mine')").await.unwrap();
    assert_eq!(
        rows(app.execute("SELECT v FROM t").await.unwrap()),
        vec![vec![json!("mine")]]
    );
    assert_eq!(
        rows(app.execute("SELECT v FROM t").await.unwrap()),
        vec![vec![json!("mine")]]
    );
    // A user who may write to `shop` but not read it gets no kept rows of it.
    let mut writer = login(&addr, "writer", "writer-pw").await;
    writer.execute("USE shop").await.unwrap();
    let e = denied(writer.execute("SELECT v FROM t").await);
    assert!(e.contains("lacks READ on database `shop`"), "{e}");
    writer
        .execute("INSERT INTO t VALUES ('more')")
        .await
        .unwrap();
    // The admin API: /stats needs ADMIN, /health stays open.
    assert_eq!(http(cache.admin, "GET", "/stats", None, "").0, 401);
    assert_eq!(http(cache.admin, "GET", "/health", None, "").0, 200);
}

#[tokio::test]
async fn the_client_and_bench_authenticate_with_user_and_password() {
    let cluster = secure_cluster(0, json!({}));
    let port = cluster.nodes[0].port.to_string();
    let pw_file = cluster.dir.path().join("admin.pw");
    std::fs::write(&pw_file, "admin-pw\n").unwrap();
    let pw_path = pw_file.to_str().unwrap();
    let base = ["127.0.0.1", port.as_str()];
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();

    // Without credentials the statement is refused; with them it runs.
    let out = common::run_client(&[&base[..], &["-c", "SELECT 1"]].concat(), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("authentication required"));
    let sql = "CREATE DATABASE shop; USE shop; CREATE TABLE t(a); INSERT INTO t VALUES (7); SELECT a FROM t";
    let args = [
        &base[..],
        &["--user", "admin", "--password-file", pw_path, "-c", sql],
    ]
    .concat();
    let out = common::run_client(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains('7'), "{}", text(&out.stdout));

    // The password from the environment; a wrong one exits 2 naming the user.
    let out = std::process::Command::new(common::dirkdb_bin())
        .args([
            "client",
            "127.0.0.1",
            &port,
            "--user",
            "reader",
            "-c",
            "USE shop; SELECT a FROM t",
        ])
        .env("DIRKDB_PASSWORD", "reader-pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let args = [
        &base[..],
        &["--user", "app", "--password", "nope", "-c", "SELECT 1"],
    ]
    .concat();
    let out = common::run_client(&args, None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot authenticate to") && err.contains("as app"),
        "{err}"
    );
    // No terminal to ask on: the missing password is named, not waited for.
    let args = [&base[..], &["--user", "app", "-c", "SELECT 1"]].concat();
    let out = common::run_client(&args, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("needs a password"));

    // dirkdb bench: every connection authenticates; without credentials it fails at once.
    let bench = |extra: &[&str]| {
        std::process::Command::new(common::dirkdb_bin())
            .args([
                "bench",
                "--endpoint",
                &cluster.addr(0),
                "--database",
                "benchauth",
                "--init",
            ])
            .args(["-n", "200", "-c", "4", "-q", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = bench(&["--user", "admin", "--password", "admin-pw"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    let out = bench(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("authentication required"),
        "{}",
        text(&out.stderr)
    );
}

/// Rewrites the users of the cluster's config.json in place.
fn edit_users(cluster: &Cluster, edit: impl FnOnce(&mut Vec<Value>)) {
    let path = cluster.dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let users = config["security"]["users"].as_array_mut().unwrap();
    edit(users);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Retries `AUTH` (each time on a new connection, so `authTimeoutMs` never closes one) until
/// the part has read the new file.
async fn login_once_reloaded(addr: &str, user: &str, password: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = Client::connect(addr).await.unwrap();
        match client.execute(&format!("AUTH {user} {password}")).await {
            Ok(_) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{user} never admitted by {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxy_and_cache_apply_edited_users_live_and_keep_sessions() {
    // The retries below fail until the file is read: more than the default 5 a minute.
    let cluster = secure_cluster_with_proxy(0, "{}", json!({ "maxAuthFailures": 1000 }));
    let cache = start_cache(&cluster);
    let mut admin = login(&cluster.addr(0), "admin", "admin-pw").await;
    admin.execute("CREATE DATABASE shop").await.unwrap();
    admin.execute("USE shop").await.unwrap();
    admin.execute("CREATE TABLE t(a)").await.unwrap();
    let parts = [
        ("server", cluster.addr(0)),
        ("proxy", format!("127.0.0.1:{}", cluster.proxy.port)),
        ("cache", format!("127.0.0.1:{}", cache.port)),
    ];
    let mut apps = Vec::new();
    let mut readers = Vec::new();
    for (_, addr) in &parts {
        let mut app = login(addr, "app", "app-pw").await;
        eventually(&mut app, "USE shop").await;
        app.execute("INSERT INTO t VALUES (1)").await.unwrap();
        apps.push(app);
        let mut reader = login(addr, "reader", "reader-pw").await;
        eventually(&mut reader, "USE shop").await;
        readers.push(reader);
    }

    // One edit: `newbie` added, `reader` removed, `app` down to READ.
    let hash = dirkdb_core::security::hash_password("newbie-pw").unwrap();
    edit_users(&cluster, |users| {
        users.retain(|u| u["name"] != "reader");
        for u in users.iter_mut().filter(|u| u["name"] == "app") {
            u["grants"] = json!({ "shop": ["READ"] });
        }
        users.push(
            json!({ "name": "newbie", "passwordHash": hash, "grants": { "shop": ["READ"] } }),
        );
    });
    for (i, (part, addr)) in parts.iter().enumerate() {
        let mut newbie = login_once_reloaded(addr, "newbie", "newbie-pw").await;
        eventually(&mut newbie, "USE shop").await;
        // The open sessions go on, each with its user's new grants.
        let app = &mut apps[i];
        app.query("SELECT count(*) FROM t").await.unwrap();
        let refused = denied(app.execute("INSERT INTO t VALUES (2)").await);
        assert!(refused.contains("lacks WRITE"), "{part}: {refused}");
        let gone = denied(readers[i].execute("SELECT count(*) FROM t").await);
        assert!(gone.contains("no longer exists"), "{part}: {gone}");
    }
}

/// `AUTH` again inside a transaction, on `addr`: the transaction goes on under the new user's
/// grants (a statement it may not run is refused naming the permission) and ends as the client
/// says; nothing autocommits behind its back.
async fn reauth_inside_a_transaction(name: &str, addr: &str) {
    let mut admin = login(addr, "admin", "admin-pw").await;
    eventually(&mut admin, "USE shop").await;
    admin.execute("DELETE FROM r").await.unwrap();
    for (end, kept) in [("ROLLBACK", 0), ("COMMIT", 2)] {
        let mut c = login(addr, "admin", "admin-pw").await;
        c.execute("USE shop").await.unwrap();
        c.execute("BEGIN").await.unwrap();
        c.execute("INSERT INTO r VALUES ('by admin')")
            .await
            .unwrap();
        c.execute("AUTH app app-pw").await.unwrap();
        c.execute("INSERT INTO r VALUES ('by app')").await.unwrap();
        // Inside the transaction its own rows are seen (same connection all along).
        let seen = rows(c.execute("SELECT count(*) FROM r").await.unwrap());
        assert_eq!(seen, vec![vec![json!(2)]], "{name}: inside the transaction");
        c.execute("AUTH reader reader-pw").await.unwrap();
        let e = denied(c.execute("INSERT INTO r VALUES ('by reader')").await);
        assert!(e.contains("lacks WRITE on database `shop`"), "{name}: {e}");
        c.execute(end)
            .await
            .unwrap_or_else(|e| panic!("{name}: {end} after AUTH: {e}"));
        let after = rows(admin.execute("SELECT count(*) FROM r").await.unwrap());
        assert_eq!(after, vec![vec![json!(kept)]], "{name}: after {end}");
        admin.execute("DELETE FROM r").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticating_again_inside_a_transaction_keeps_the_transaction() {
    let cluster = secure_cluster_with_proxy(0, "{}", json!({}));
    let cache = start_cache(&cluster);
    let proxy = format!("127.0.0.1:{}", cluster.proxy.port);
    let mut admin = login(&proxy, "admin", "admin-pw").await;
    eventually(&mut admin, "CREATE DATABASE shop").await;
    admin.execute("USE shop").await.unwrap();
    admin.execute("CREATE TABLE r (v TEXT)").await.unwrap();
    reauth_inside_a_transaction("server", &cluster.addr(0)).await;
    reauth_inside_a_transaction("proxy", &proxy).await;
    reauth_inside_a_transaction("cache", &format!("127.0.0.1:{}", cache.port)).await;
}
