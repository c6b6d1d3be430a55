//! MULTI_PRIMARY end to end: DirkDB's own `config.json` (ports, data directories and the
//! listen host changed to loopback; admin ports added) run by `dirkdb cluster`, with real
//! processes and real TCP.
//!
//! Owners are DirkDB's rendezvous over m1, m2, m3 — vectors computed independently in Python
//! (see `core/src/rendezvous.rs`): `DB:testdb` → m1, `DB:testdb|TABLE:utilisateurs` → m1,
//! `DB:testdb|TABLE:commandes` → m2, `DB:testdb|TABLE:produits` → m3.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::http;
use common::{dirkdb_bin, wait_for_port};
use dirkdb_client::{Client, ClientError};
use serde_json::Value;

/// DirkDB's file run by `dirkdb cluster` (one process), or by one `dirkdb server` process per
/// master and a `dirkdb proxy` (so that one master can be killed).
struct LocalCluster {
    dir: tempfile::TempDir,
    /// (log name, process): `cluster`, or `m1`, `m2`, `m3`, `proxy`.
    children: Vec<(String, Option<Child>)>,
    lb: u16,
    lb_admin: u16,
    masters: Vec<(u16, u16)>,
    /// Every proxy's SQL and admin ports: `proxy` (`lb`, `lb_admin`) first, then `proxy2`, …
    proxies: Vec<(u16, u16)>,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        LocalCluster::start_with(|text| text)
    }

    /// DirkDB's file changed by `edit` (after the placeholders are filled in).
    fn start_with(edit: impl FnOnce(String) -> String) -> LocalCluster {
        LocalCluster::launch(edit, false)
    }

    /// Like [`LocalCluster::start_with`], one process per master and one for the proxy.
    fn start_separate(edit: impl FnOnce(String) -> String) -> LocalCluster {
        LocalCluster::launch(edit, true)
    }

    /// Like [`LocalCluster::start_separate`] with `count` proxies over the same file, each on
    /// its own ports (`config-proxyN.json` for the second and later).
    /// `own(k, text)` changes proxy `k`'s file further (`config.json`, the servers' too, for
    /// the first).
    fn start_proxies(
        count: usize,
        edit: impl FnOnce(String) -> String,
        own: &dyn Fn(usize, String) -> String,
    ) -> LocalCluster {
        LocalCluster::launch_with(edit, true, count, own)
    }

    fn launch(edit: impl FnOnce(String) -> String, separate: bool) -> LocalCluster {
        LocalCluster::launch_with(edit, separate, 1, &|_, text| text)
    }

    fn launch_with(
        edit: impl FnOnce(String) -> String,
        separate: bool,
        proxies: usize,
        own: &dyn Fn(usize, String) -> String,
    ) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let common::DirkdbConfig {
            text,
            lb,
            lb_admin,
            masters,
        } = common::dirkdb_config(dir.path());
        let config = dir.path().join("config.json");
        let text = edit(text);
        let mut ports = vec![(lb, lb_admin)];
        let mut names: Vec<String> = if separate {
            vec!["m1".into(), "m2".into(), "m3".into(), "proxy".into()]
        } else {
            vec!["cluster".into()]
        };
        for n in 2..=proxies {
            let listening = (common::free_port(), common::free_port());
            let listen = |(port, admin): (u16, u16)| {
                format!("\"listenPort\": {port}, \"adminPort\": {admin}")
            };
            let own_text = text.replace(&listen((lb, lb_admin)), &listen(listening));
            assert_ne!(own_text, text, "the proxy's ports are in the file");
            std::fs::write(
                dir.path().join(format!("config-proxy{n}.json")),
                own(n - 1, own_text),
            )
            .expect("write config");
            ports.push(listening);
            names.push(format!("proxy{n}"));
        }
        std::fs::write(&config, own(0, text)).expect("write config");
        let mut cluster = LocalCluster {
            dir,
            children: names.into_iter().map(|n| (n, None)).collect(),
            lb,
            lb_admin,
            masters,
            proxies: ports,
        };
        for i in 0..cluster.children.len() {
            cluster.spawn(i);
        }
        wait_for_port(cluster.lb);
        wait_for_port(cluster.lb_admin);
        cluster
    }

    /// Starts process `i` of `children` (appending to its log) and waits for its ports.
    fn spawn(&mut self, i: usize) {
        let name = self.children[i].0.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        let mut command = Command::new(dirkdb_bin());
        let mut config = self.dir.path().join("config.json");
        match name.as_str() {
            "cluster" => command.arg("cluster"),
            "proxy" => command.arg("proxy"),
            proxy if proxy.starts_with("proxy") => {
                config = self.dir.path().join(format!("config-{proxy}.json"));
                command.arg("proxy")
            }
            master => command.args(["server", "--instance", master]),
        };
        let child = command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dirkdb");
        self.children[i].1 = Some(child);
        let ports: Vec<(u16, u16)> = match name.as_str() {
            "cluster" => self.masters.clone(),
            "proxy" => vec![(self.lb, self.lb_admin)],
            proxy if proxy.starts_with("proxy") => {
                let n: usize = proxy["proxy".len()..].parse().unwrap_or(1);
                vec![self.proxies[n - 1]]
            }
            master => vec![self.masters[master[1..].parse::<usize>().unwrap_or(1) - 1]],
        };
        for (port, admin) in ports {
            wait_for_port(port);
            wait_for_port(admin);
        }
    }

    /// `kill -9` of master `m`'s process (separate processes only).
    fn kill9(&mut self, m: usize) {
        common::kill_child(&mut self.children[m - 1].1);
    }

    /// Every process's log so far.
    fn log(&self) -> String {
        common::logs_of(
            self.dir.path(),
            self.children.iter().map(|(n, _)| n.as_str()),
        )
    }

    /// Master `m`'s log so far (separate processes only).
    fn master_log(&self, m: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{m}.log"))).unwrap_or_default()
    }

    async fn proxy(&self) -> Client {
        Client::connect(&format!("127.0.0.1:{}", self.lb))
            .await
            .expect("connect to the proxy")
    }

    /// A client straight to master `m` (1-based), bypassing the proxy.
    async fn master(&self, m: usize) -> Client {
        Client::connect(&format!("127.0.0.1:{}", self.masters[m - 1].0))
            .await
            .expect("connect to a master")
    }

    fn master_status(&self, m: usize) -> Value {
        http(self.masters[m - 1].1, "GET", "/replication/status", "")
    }

    /// Waits until the three masters stand at the same per-origin positions with equal
    /// checksums (every database, every table); returns their `/replication/checksum`s.
    fn wait_converged(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = (1..=3)
                .map(|m| http(self.masters[m - 1].1, "GET", "/replication/checksum", ""))
                .collect::<Vec<Value>>();
            let same = |key: &str| last.iter().all(|c| c[key] == last[0][key]);
            if same("positions") && same("databases") && same("tables") {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the masters did not converge: {last:#?}\n{}", self.log());
    }

    /// Waits until every master took the proxy's ownership inputs (all three up).
    fn wait_for_ownership(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let all = (1..=3).all(|m| {
                let o = &self.master_status(m)["ownership"];
                o["term"].as_u64().unwrap_or(0) > 0 && o["up"].as_array().map(Vec::len) == Some(3)
            });
            if all {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the masters never received the proxy's ownership inputs\n{}",
            self.log()
        );
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            common::kill_child(child);
        }
    }
}

/// The user tables master `m` holds in `db`, sorted.
async fn tables_on(cluster: &LocalCluster, m: usize, db: &str) -> Vec<String> {
    let mut c = cluster.master(m).await;
    c.execute(&format!("USE {db}")).await.unwrap();
    let rows = c
        .query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_dirk%' ESCAPE '\\' ORDER BY name")
        .await
        .unwrap()
        .rows;
    rows.iter()
        .filter_map(|r| r[0].as_str().map(str::to_string))
        .collect()
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Server(text)) => text,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn dirkdbs_config_runs_with_dirkdbs_owners_and_one_writer_per_object() {
    let cluster = LocalCluster::start();

    // FILE under MULTI_PRIMARY is never silent: start-up log and /cluster/status say so.
    let status = http(cluster.lb_admin, "GET", "/cluster/status", "");
    assert_eq!(status["writeMode"], "MULTI_PRIMARY", "{status}");
    assert_eq!(status["replication"], "OPLOG", "{status}");
    let note = status["multiPrimary"]["replicationNote"]
        .as_str()
        .unwrap_or("");
    assert!(
        note.contains("FILE is not used under MULTI_PRIMARY"),
        "{status}"
    );
    assert!(cluster
        .log()
        .contains("FILE is not used under MULTI_PRIMARY"));
    let roles: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["PRIMARY", "PRIMARY", "PRIMARY"], "{status}");
    cluster.wait_for_ownership();

    // Tables created and written through the proxy land on their rendezvous owners.
    let mut c = cluster.proxy().await;
    c.execute("manamboara tahiry testdb").await.unwrap();
    c.execute("ampiasao testdb").await.unwrap();
    for table in ["utilisateurs", "commandes", "produits"] {
        c.execute(&format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, anarana TEXT)"
        ))
        .await
        .unwrap();
        for n in 0..3 {
            c.execute(&format!(
                "INSERT INTO {table} (anarana) VALUES ('{table}-{n}')"
            ))
            .await
            .unwrap();
        }
    }
    // Each landed on its owner first (the owner's own stream says so), and every master holds
    // all three once the masters streamed to each other.
    let converged = cluster.wait_converged();
    let owns = |m: usize, table: &str| -> u64 {
        converged[m - 1]["tables"]["testdb"][table]["rows"]
            .as_u64()
            .unwrap_or(0)
    };
    for m in 1..=3 {
        for table in ["utilisateurs", "commandes", "produits"] {
            assert_eq!(
                owns(m, table),
                3,
                "m{m} holds {table}: {}",
                converged[m - 1]
            );
        }
        assert_eq!(
            tables_on(&cluster, m, "testdb").await,
            ["commandes", "produits", "utilisateurs"]
        );
    }
    let positions = &converged[0]["positions"];
    assert!(positions["m1"].as_u64().unwrap_or(0) > 0, "{positions}");
    assert!(positions["m2"].as_u64().unwrap_or(0) > 0, "{positions}");
    assert!(positions["m3"].as_u64().unwrap_or(0) > 0, "{positions}");

    // The session reads its own writes (each read goes to the table's owner), in DirkDB's
    // syntax too.
    for table in ["utilisateurs", "commandes", "produits"] {
        let rows = c
            .query(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap()
            .rows;
        assert_eq!(rows[0][0], 3, "{table}");
    }
    let rows = c.query("alaivo * ao produits").await.unwrap().rows;
    assert_eq!(rows.len(), 3);
    // Reads go round robin over the three masters (no write concern here): each waits, when
    // it must, for its master to apply the session's write made on m3 just before.
    for n in 4..=20 {
        c.execute(&format!("INSERT INTO produits (anarana) VALUES ('p{n}')"))
            .await
            .unwrap();
        let rows = c.query("SELECT count(*) FROM produits").await.unwrap().rows;
        assert_eq!(rows[0][0], n, "a read right after write {n}");
    }
    c.execute("DELETE FROM produits WHERE id > 3")
        .await
        .unwrap();

    // A direct write to a non-owner is refused by the master itself.
    let mut m2 = cluster.master(2).await;
    m2.execute("USE testdb").await.unwrap();
    let why = refusal(m2.execute("CREATE TABLE produits (id INTEGER)").await);
    assert!(
        why.contains("table testdb.produits is owned by m3, not by m2"),
        "{why}"
    );
    let why = refusal(m2.execute("CREATE VIEW v_clients AS SELECT 1").await);
    assert!(why.contains("owned by m1"), "{why}");
    m2.execute("INSERT INTO commandes (anarana) VALUES ('direct')")
        .await
        .expect("the owner takes a direct write");

    // DirkDB's domains have owners too: `DB:testdb|DOMAIN:vola` → m3, `…|DOMAIN:taona` → m1
    // (while the domain table itself, `DB:testdb|TABLE:dirkdb_domains`, would be m1's).
    c.execute("manamboara efitra vola ( ISA(0,20) )")
        .await
        .unwrap();
    let mut m3 = cluster.master(3).await;
    m3.execute("USE testdb").await.unwrap();
    let rows = m3
        .query("SELECT name FROM dirkdb_domains")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "vola");
    let why = refusal(m2.execute("manamboara efitra taona ( ISA(0,20) )").await);
    assert!(why.contains("domain testdb.taona is owned by m1"), "{why}");
    // A domain of another owner in the same table: `dirkdb_domains` rows travel between masters
    // by their name (the table's primary key), each master numbering its own rowids, so both
    // reach every master (m3 wrote vola, m1 writes taona).
    c.execute("manamboara efitra taona ( ISA(1900,2100) )")
        .await
        .unwrap();

    // A transaction over two owners is refused clearly, and stays open for ROLLBACK.
    c.execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO utilisateurs (anarana) VALUES ('in-txn')")
        .await
        .unwrap();
    let why = refusal(
        c.execute("INSERT INTO produits (anarana) VALUES ('in-txn')")
            .await,
    );
    assert!(why.contains("the transaction runs on m1"), "{why}");
    assert!(why.contains("table testdb.produits (owner m3)"), "{why}");
    c.execute("ROLLBACK").await.unwrap();
    let rows = c
        .query("SELECT count(*) FROM utilisateurs")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows[0][0], 3, "the refused transaction left nothing");

    // A transaction on one owner commits there.
    c.execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO produits (anarana) VALUES ('t1')")
        .await
        .unwrap();
    c.execute("UPDATE produits SET anarana = 't2' WHERE anarana = 't1'")
        .await
        .unwrap();
    c.execute("COMMIT").await.unwrap();
    let rows = m3
        .query("SELECT anarana FROM produits WHERE anarana = 't2'")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows.len(), 1);

    // A read over tables of different owners is answered: every master holds everything.
    let rows = c
        .query("SELECT count(*) FROM utilisateurs JOIN produits USING (id)")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows[0][0], 3);

    // The database reached every master on its owner's stream (m1's), and a direct CREATE or
    // DROP DATABASE on another master is refused.
    for m in 1..=3 {
        let mut direct = cluster.master(m).await;
        direct.execute("USE testdb").await.unwrap();
    }
    assert!(Path::new(&cluster.dir.path().join("data/m3/testdb.db")).exists());
    let why = refusal(m2.execute("DROP DATABASE testdb").await);
    assert!(why.contains("database testdb is owned by m1"), "{why}");

    // Everything written since (a direct write to its owner, a domain, a transaction) reached
    // every master, and nothing was refused or failed on the streams between them.
    let converged = cluster.wait_converged();
    assert_eq!(
        converged[0]["tables"]["testdb"]["commandes"]["rows"], 4,
        "{}",
        converged[0]
    );
    assert_eq!(
        converged[1]["tables"]["testdb"]["dirkdb_domains"]["rows"],
        2
    );
    for m in 1..=3 {
        let mut master = cluster.master(m).await;
        master.execute("USE testdb").await.unwrap();
        let names = master
            .query("SELECT name FROM dirkdb_domains ORDER BY name")
            .await
            .unwrap()
            .rows;
        assert_eq!(names, vec![vec!["taona"], vec!["vola"]], "m{m}");
    }
    // Visible: SHOW OWNERS through `dirkdb client` (DirkDB's spelling too), each object's
    // owner and the per-origin positions and lag in /cluster/status, the same in /metrics.
    let port = cluster.lb.to_string();
    for show in ["SHOW OWNERS", "asehoy ny tompo"] {
        let out = common::run_client(&["127.0.0.1", &port, "-c", show], None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{show}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, owner) in [
            ("utilisateurs", "m1"),
            ("commandes", "m2"),
            ("produits", "m3"),
            ("vola", "m3"),
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{show}: no {name} in {text}"));
            assert!(
                line.contains(owner),
                "{show}: {name} owned by {owner}: {line}"
            );
        }
    }
    // No conflict here: SHOW CONFLICTS (both spellings) answers an empty relation through the
    // proxy, and the proxy counts none.
    for show in ["SHOW CONFLICTS", "asehoy ny fifanoherana"] {
        let listed = cluster.proxy().await.query(show).await.unwrap();
        assert!(listed.rows.is_empty(), "{show}: {listed:?}");
    }
    let status = http(cluster.lb_admin, "GET", "/cluster/status", "");
    let mp = &status["multiPrimary"];
    assert_eq!(mp["openConflicts"], 0, "{mp}");
    let objects = mp["objects"].as_array().cloned().unwrap_or_default();
    let owner = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["name"] == name)
            .map(|o| o["owner"].clone())
    };
    assert_eq!(owner("TABLE", "produits"), Some(Value::from("m3")), "{mp}");
    assert_eq!(owner("DATABASE", "testdb"), Some(Value::from("m1")), "{mp}");
    assert_eq!(owner("DOMAIN", "vola"), Some(Value::from("m3")), "{mp}");
    for m in ["m1", "m2", "m3"] {
        let streams = mp["positions"][m]["streams"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(streams.len(), 2, "{m}: {mp}");
        assert!(
            streams
                .iter()
                .all(|s| s["lagOperations"].is_u64() && s["lagMs"].is_u64()),
            "{mp}"
        );
        assert!(
            mp["positions"][m]["positions"]["m3"].as_u64().unwrap_or(0) > 0,
            "{mp}"
        );
        // Per-peer checkpoints: how far this master applied each peer's stream (its position
        // for that origin) and how far the peer acknowledged this master's own stream.
        let checkpoints = mp["positions"][m]["checkpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(checkpoints.len(), 2, "{m}: {mp}");
        for c in &checkpoints {
            let peer = c["peer"].as_str().unwrap_or_default();
            assert_eq!(
                c["applied"], mp["positions"][m]["positions"][peer],
                "{m}: {mp}"
            );
            assert!(c["acknowledged"].is_u64(), "{m}: {mp}");
        }
    }
    let metrics = http(cluster.masters[0].1, "GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("dirkdb_peer_lag_operations{instance=\"m1\",origin=\"m2\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dirkdb_peer_applied_sequence{instance=\"m1\",origin=\"m3\"}"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("dirkdb_peer_checkpoint{instance=\"m1\",peer=\"m2\",side=\"acknowledged\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("database=\"testdb\",object=\"produits\",owner=\"m3\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dirkdb_owned_objects{instance=\"m1\",owner=\"m3\"} 2"),
        "{metrics}"
    );
    // The proxy's /metrics: the term, each master's part, and the owner it routes each
    // object's writes to.
    let metrics = http(cluster.lb_admin, "GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or_default();
    for sample in [
        "dirkdb_proxy_master_ownership{instance=\"m1\",state=\"owning\"} 1",
        "dirkdb_proxy_master_ownership{instance=\"m3\",state=\"owning\"} 1",
        "dirkdb_proxy_object_owner{kind=\"TABLE\",database=\"testdb\",object=\"produits\",owner=\"m3\"} 1",
        "dirkdb_proxy_object_owner{kind=\"DOMAIN\",database=\"testdb\",object=\"vola\",owner=\"m3\"} 1",
        "dirkdb_proxy_object_owner{kind=\"DATABASE\",database=\"testdb\",object=\"testdb\",owner=\"m1\"} 1",
        "dirkdb_proxy_owned_objects{owner=\"m2\"}",
    ] {
        assert!(metrics.contains(sample), "{sample}: {metrics}");
    }
    let term = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dirkdb_proxy_ownership_term "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(term.is_some_and(|t| t > 0.0), "{metrics}");

    let log = cluster.log();
    assert!(!log.contains("multi-primary apply"), "{log}");
    assert!(!log.contains("stream refused"), "{log}");
}

/// The owner of `key` among m1, m2, m3 by DirkDB's rendezvous (vectors checked in
/// `core/src/rendezvous.rs`).
fn owner_of(key: &str) -> usize {
    dirkdb_core::rendezvous::owner(key, &["m1", "m2", "m3"]).expect("an owner") + 1
}

/// The cache `dirkdb cluster` starts in front of DirkDB's file: under MULTI_PRIMARY its change
/// feed would report one master's own commits, so it keeps nothing (and says so) instead of
/// serving an answer older than a write another master committed. Without that, the second
/// read below answered the first value for ever (m1's feed never reports m2's commits).
#[tokio::test]
async fn a_cache_in_front_of_the_masters_keeps_nothing_and_says_so() {
    let cluster = LocalCluster::start_with(|text| {
        text.replace(
            "\"hash\": \"RENDEZVOUS\"}",
            "\"hash\": \"RENDEZVOUS\", \"writeConcern\": {\"replicas\": 2, \"timeoutMs\": 5000}}",
        )
    });
    cluster.wait_for_ownership();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.path().join("config.json")).expect("config"),
    )
    .expect("config JSON");
    let port = |key: &str| config["cache"][key].as_u64().expect("a cache port") as u16;
    let (cache_port, cache_admin) = (port("listenPort"), port("adminPort"));
    wait_for_port(cache_port);
    assert_eq!(owner_of("DB:testdb|TABLE:commandes"), 2);
    let mut p = cluster.proxy().await;
    for sql in [
        "CREATE DATABASE testdb",
        "USE testdb",
        "CREATE TABLE commandes (id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO commandes VALUES (1, 'a')",
    ] {
        p.execute(sql).await.unwrap();
    }
    let mut c = Client::connect(&format!("127.0.0.1:{cache_port}"))
        .await
        .expect("connect to the cache");
    c.execute("USE testdb").await.unwrap();
    let value = |rows: Vec<Vec<Value>>| rows[0][0].as_str().unwrap_or_default().to_string();
    // Written through the proxy (acknowledged once every master applied it, writeConcern 2),
    // read through the cache: each read sees the newest value.
    for (now, next) in [("a", "b"), ("b", "c")] {
        for _ in 0..2 {
            let rows = c
                .query("SELECT v FROM commandes WHERE id = 1")
                .await
                .unwrap()
                .rows;
            assert_eq!(value(rows), now);
        }
        p.execute(&format!("UPDATE commandes SET v = '{next}' WHERE id = 1"))
            .await
            .unwrap();
    }
    let rows = c
        .query("SELECT v FROM commandes WHERE id = 1")
        .await
        .unwrap()
        .rows;
    assert_eq!(value(rows), "c");
    // A write through the cache, and a transaction, pass through too.
    c.execute("UPDATE commandes SET v = 'd' WHERE id = 1")
        .await
        .unwrap();
    c.execute("BEGIN").await.unwrap();
    c.execute("UPDATE commandes SET v = 'e' WHERE id = 1")
        .await
        .unwrap();
    c.execute("COMMIT").await.unwrap();
    let rows = p
        .query("SELECT v FROM commandes WHERE id = 1")
        .await
        .unwrap()
        .rows;
    assert_eq!(value(rows), "e");
    let stats = http(cache_admin, "GET", "/stats", "");
    assert_eq!(stats["pass_through"], 1, "{stats}");
    assert_eq!(stats["stored"], 0, "{stats}");
    assert_eq!(stats["hits"], 0, "{stats}");
    assert_eq!(stats["writes"], 2, "{stats}");
    let shown = c.query("SHOW CACHE STATS").await.unwrap().rows;
    assert!(
        shown.iter().any(|r| r[0] == "pass_through" && r[1] == 1),
        "{shown:?}"
    );
    assert!(
        cluster.log().contains("the cache keeps no answer"),
        "{}",
        cluster.log()
    );
}

#[tokio::test]
async fn reads_anywhere_see_the_sessions_writes_and_write_concern_counts_masters() {
    let cluster = LocalCluster::start_with(|text| {
        text.replace(
            "\"hash\": \"RENDEZVOUS\"}",
            "\"hash\": \"RENDEZVOUS\", \"writeConcern\": {\"replicas\": 2, \"timeoutMs\": 5000}}",
        )
    });
    cluster.wait_for_ownership();
    // A database whose owner is not m1, and two of its tables owned by two other masters:
    // CREATE DATABASE runs on its owner only, and a table created at once on another master
    // waits there for the database to arrive on the owner's stream.
    let db = (0..100)
        .map(|i| format!("shop{i}"))
        .find(|d| owner_of(&format!("DB:{d}")) == 2)
        .expect("a database owned by m2");
    let tables: Vec<String> = (0..100)
        .map(|i| format!("t{i}"))
        .filter(|t| owner_of(&format!("DB:{db}|TABLE:{t}")) != 2)
        .take(2)
        .collect();
    let mut c = cluster.proxy().await;
    c.execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    c.execute(&format!("USE {db}")).await.unwrap();
    for t in &tables {
        c.execute(&format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)"
        ))
        .await
        .unwrap();
    }
    let log = cluster.log();
    assert!(
        log.contains("database event applied from another master"),
        "CREATE DATABASE came on m2's stream: {log}"
    );
    // Each write is acknowledged once both other masters applied it (writeConcern 2): read
    // straight from every master at once, each holds it. Reads through the proxy go round
    // robin over the three and always see the session's own writes.
    let mut direct = Vec::new();
    for m in 1..=3 {
        let mut d = cluster.master(m).await;
        d.execute(&format!("USE {db}")).await.unwrap();
        direct.push(d);
    }
    for n in 1..=15u64 {
        let t = &tables[(n % 2) as usize];
        c.execute(&format!("INSERT INTO {t} (v) VALUES ('v{n}')"))
            .await
            .unwrap();
        let total = |rows: Vec<Vec<Value>>| rows[0][0].as_u64().unwrap_or(0);
        let sql = format!(
            "SELECT (SELECT count(*) FROM {}) + (SELECT count(*) FROM {})",
            tables[0], tables[1]
        );
        for (m, d) in direct.iter_mut().enumerate() {
            let rows = d.query(&sql).await.unwrap().rows;
            assert_eq!(total(rows), n, "m{} after write {n}", m + 1);
        }
        for _ in 0..3 {
            let rows = c.query(&sql).await.unwrap().rows;
            assert_eq!(total(rows), n, "a read through the proxy after write {n}");
        }
    }
    let status = http(cluster.masters[0].1, "GET", "/replication/status", "");
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 2, "{status}");
    for p in &peers {
        assert_eq!(p["state"], "Streaming", "{status}");
    }
    let converged = cluster.wait_converged();
    assert_eq!(
        converged[2]["tables"][db.as_str()][tables[0].as_str()]["rows"]
            .as_u64()
            .unwrap_or(0)
            + converged[2]["tables"][db.as_str()][tables[1].as_str()]["rows"]
                .as_u64()
                .unwrap_or(0),
        15
    );
}

/// `text` without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `from=` of each "streaming another master's changes" line in `log`, per origin.
fn resumed_from(log: &str) -> Vec<(String, u64)> {
    without_colours(log)
        .lines()
        .filter(|l| l.contains("streaming another master's changes"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_string)
            };
            Some((field("origin=")?, field("from=")?.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn a_master_killed_and_restarted_catches_up_from_its_per_origin_positions() {
    let mut cluster = LocalCluster::start_separate(|text| {
        text.replace(
            "\"hash\": \"RENDEZVOUS\"}",
            "\"hash\": \"RENDEZVOUS\", \"writeConcern\": {\"replicas\": 1, \"timeoutMs\": 5000}}",
        )
    });
    cluster.wait_for_ownership();
    let mut c = cluster.proxy().await;
    c.execute("CREATE DATABASE testdb").await.unwrap();
    c.execute("USE testdb").await.unwrap();
    for table in ["utilisateurs", "commandes", "produits"] {
        c.execute(&format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)"
        ))
        .await
        .unwrap();
        for n in 0..5 {
            c.execute(&format!("INSERT INTO {table} (v) VALUES ('{n}')"))
                .await
                .unwrap();
        }
    }
    cluster.wait_converged();
    let before = cluster.master_status(3)["positions"].clone();

    // Writers go on through the proxy to m1's and m2's tables while m3 is killed and restarted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lb = cluster.lb;
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = Client::connect(&format!("127.0.0.1:{lb}")).await.unwrap();
            c.execute("USE testdb").await.unwrap();
            let (mut ok, mut errors) = ([0u64; 2], Vec::new());
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let (i, table) = [(0, "utilisateurs"), (1, "commandes")][n % 2];
                match c
                    .execute(&format!("INSERT INTO {table} (v) VALUES ('w{n}')"))
                    .await
                {
                    Ok(_) => ok[i] += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                n += 1;
            }
            (ok, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.kill9(3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.spawn(2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors) = writer.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}\n{}", cluster.log());
    assert!(ok[0] > 5 && ok[1] > 5, "the writers wrote: {ok:?}");

    // Every acknowledged write is on every master, m3 included, with equal checksums.
    let converged = cluster.wait_converged();
    for (m, c) in converged.iter().enumerate() {
        let rows = |t: &str| c["tables"]["testdb"][t]["rows"].as_u64().unwrap_or(0);
        assert_eq!(rows("utilisateurs"), 5 + ok[0], "m{}: {c}", m + 1);
        assert_eq!(rows("commandes"), 5 + ok[1], "m{}: {c}", m + 1);
        assert_eq!(rows("produits"), 5, "m{}: {c}", m + 1);
    }

    // The restarted m3 resumed each stream from its own stored position (not from 0), behind
    // where the origins stood once it was back.
    let log = cluster.master_log(3);
    let restarted = log
        .rsplit("DirkDB server listening")
        .next()
        .unwrap_or_default();
    let resumed = resumed_from(restarted);
    for origin in ["m1", "m2"] {
        let from = resumed
            .iter()
            .find(|(o, _)| o == origin)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("m3 never resumed {origin}'s stream: {restarted}"));
        let was = before[origin].as_u64().unwrap_or(0);
        let now = converged[2]["positions"][origin].as_u64().unwrap_or(0);
        assert!(
            from >= was && from > 0,
            "{origin}: resumed from {from}, stood at {was} before the writes"
        );
        assert!(now > from, "{origin}: m3 caught up from {from} to {now}");
        eprintln!("m3 resumed {origin}'s stream from {from} (was {was}) and caught up to {now}; acknowledged writes {ok:?}");
    }
}

/// Copies directory `from` to `to` (made), files and subdirectories.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Inserts `values` into `utilisateurs` (m1's) straight on m1, one statement each, retried while
/// m1 does not own it yet (back from a restart, before the proxy's inputs).
async fn insert_on_m1(cluster: &LocalCluster, values: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for v in values {
        loop {
            let mut c = cluster.master(1).await;
            let done = match c.execute("USE testdb").await {
                Ok(_) => c
                    .execute(&format!("INSERT INTO utilisateurs (v) VALUES ('{v}')"))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("insert {v} on m1: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("insert {v} on m1: {e}\n{}", cluster.log()),
            }
        }
    }
}

/// Master `m`'s position in `origin`'s stream (its committed sequence for its own id).
fn position(cluster: &LocalCluster, m: usize, origin: &str) -> u64 {
    let c = http(cluster.masters[m - 1].1, "GET", "/replication/checksum", "");
    c["positions"][origin].as_u64().unwrap_or(0)
}

/// Gap 1 of issue #16's review: m1's data directory is restored to an older copy (same history)
/// and m1 commits other rows past where m2 stood in its stream before m2 reconnects. m2's hello
/// carries the checksum of the last entry it applied from m1, m1's entry at that sequence is now
/// another, and m1 refuses the stream saying why, rather than m2 skipping m1's new entries up to
/// its position unseen.
#[tokio::test]
async fn an_origin_restored_to_older_data_that_committed_past_a_master_is_refused_not_skipped() {
    let mut cluster = LocalCluster::start_separate(|text| text);
    cluster.wait_for_ownership();
    let mut c = cluster.proxy().await;
    c.execute("CREATE DATABASE testdb").await.unwrap();
    c.execute("USE testdb").await.unwrap();
    c.execute("CREATE TABLE utilisateurs (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    for n in 0..3 {
        c.execute(&format!("INSERT INTO utilisateurs (v) VALUES ('kept{n}')"))
            .await
            .unwrap();
    }
    drop(c);
    cluster.wait_converged();

    // A copy of m1's data directory, taken while m1 is stopped.
    let data = cluster.dir.path().join("data");
    let backup = cluster.dir.path().join("m1-backup");
    cluster.kill9(1);
    copy_dir(&data.join("m1"), &backup);
    cluster.spawn(0);
    cluster.wait_for_ownership();
    let copied = position(&cluster, 1, "m1");

    // m1 commits more; m2 applies it; m2 stops.
    let lost: Vec<String> = (0..5).map(|n| format!("lost{n}")).collect();
    insert_on_m1(&cluster, &lost).await;
    let applied = position(&cluster, 1, "m1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while position(&cluster, 2, "m1") < applied {
        assert!(
            Instant::now() < deadline,
            "m2 applies m1's writes\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill9(2);

    // m1 is restored from the copy and commits other rows, past m2's position.
    cluster.kill9(1);
    std::fs::remove_dir_all(data.join("m1")).unwrap();
    copy_dir(&backup, &data.join("m1"));
    cluster.spawn(0);
    assert_eq!(
        position(&cluster, 1, "m1"),
        copied,
        "m1 stands where the copy did"
    );
    let new: Vec<String> = (0..8).map(|n| format!("new{n}")).collect();
    insert_on_m1(&cluster, &new).await;
    let now = position(&cluster, 1, "m1");
    assert!(now > applied, "m1 committed past m2's {applied}: {now}");

    // m2 comes back: m1 refuses its stream, naming both and what to do, in m2's status.
    cluster.spawn(1);
    let error_on_m2 = || {
        let status = cluster.master_status(2);
        status["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|s| s["origin"] == "m1").cloned())
            .map(|s| {
                (
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (state, error) = loop {
        let (state, error) = error_on_m2();
        // Between two refused attempts the stream is `Connecting` again (its last error
        // stays): wait for a snapshot taken at a refusal, within the deadline.
        let refused = error.contains("restored to an older copy") && state == "Refused";
        if refused || Instant::now() > deadline {
            break (state, error);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        error.contains(&format!("m2 applied m1's entry {applied} with checksum"))
            && error.contains("m1's data directory was restored to an older copy")
            && error.contains("Rebuild m2 from a copy of m1's data directory"),
        "state {state}, error {error:?}\n{}",
        cluster.log()
    );
    assert!(
        state == "Refused" || state == "Connecting",
        "the stream is refused (or retrying after a refusal): {state}"
    );
    // And m2 applied none of m1's new rows: nothing was skipped silently or applied halfway.
    let mut d = cluster.master(2).await;
    d.execute("USE testdb").await.unwrap();
    let rows = d
        .query("SELECT count(*) FROM utilisateurs WHERE v LIKE 'new%'")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows[0][0].as_i64(), Some(0), "{rows:?}");
    assert_eq!(position(&cluster, 2, "m1"), applied);
    eprintln!("m2 on m1's stream: {error}");
}

/// DirkDB's file with write concern 1 and a quick failover: health checks every 100 ms, an
/// instance down after 2 failed checks, `failover.detectionMillis` 1000, leases of 1500 ms
/// (longer than a health round that waits 500 ms for a paused master).
fn with_quick_failover(text: String) -> String {
    text.replace(
        "\"hash\": \"RENDEZVOUS\"}",
        "\"hash\": \"RENDEZVOUS\", \"writeConcern\": {\"replicas\": 1, \"timeoutMs\": 3000}}",
    )
    .replace(
        "\"listenHost\": \"127.0.0.1\",",
        "\"listenHost\": \"127.0.0.1\", \"healthIntervalMillis\": 100, \"failCount\": 2,",
    )
    .replace(
        " \"replication\":",
        " \"failover\": {\"detectionMillis\": 1000, \"leaseMillis\": 1500, \"clockDriftMillis\": 100},\n \"replication\":",
    )
}

/// What one writer did: its acknowledged (table, value) pairs and the errors it was given.
type WriterOutcome = (Vec<(String, String)>, Vec<String>);

/// Writers through the proxy, each on its own connection, inserting distinct values into the
/// three tables in turn; every acknowledged value is kept per table.
struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterOutcome>>,
}

const TABLES: [&str; 3] = ["utilisateurs", "commandes", "produits"];

impl Writers {
    fn start(lb: u16, count: usize) -> Writers {
        Writers::start_on(lb, count, &TABLES)
    }

    /// Writers into `tables` only, in turn.
    fn start_on(lb: u16, count: usize, tables: &'static [&'static str]) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..count)
            .map(|w| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut acked, mut errors) = (Vec::new(), Vec::new());
                    let mut c: Option<Client> = None;
                    let mut n = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        if c.is_none() {
                            c = connect_testdb(lb).await;
                            if c.is_none() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                        let Some(client) = c.as_mut() else { continue };
                        let table = tables[n % tables.len()];
                        let v = format!("w{w}-{n}");
                        match client
                            .execute(&format!("INSERT INTO {table} (v) VALUES ('{v}')"))
                            .await
                        {
                            Ok(_) => acked.push((table.to_string(), v)),
                            Err(ClientError::Server(e)) => {
                                errors.push(e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(e) => {
                                errors.push(e.to_string());
                                c = None;
                            }
                        }
                    }
                    (acked, errors)
                })
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers; returns every acknowledged (table, value) and the errors seen.
    async fn finish(self) -> WriterOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (a, e) = task.await.unwrap();
            acked.extend(a);
            errors.extend(e);
        }
        (acked, errors)
    }
}

/// Prints how many writes were acknowledged, refused or failed, and of unknown outcome.
fn report(acked: &[(String, String)], errors: &[String], how: &str) {
    let unknown = errors
        .iter()
        .filter(|e| e.contains("outcome is unknown"))
        .count();
    eprintln!(
        "{} writes acknowledged{how}, {} refused or failed ({unknown} of unknown outcome)",
        acked.len(),
        errors.len()
    );
}

async fn connect_testdb(lb: u16) -> Option<Client> {
    let mut c = Client::connect(&format!("127.0.0.1:{lb}")).await.ok()?;
    c.execute("USE testdb").await.ok()?;
    Some(c)
}

impl LocalCluster {
    /// Sends `signal` (`STOP`, `CONT`) to master `m`'s process.
    fn signal(&self, m: usize, signal: &str) {
        let pid = self.children[m - 1]
            .1
            .as_ref()
            .map(Child::id)
            .expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Proxy `k`'s (0: `proxy`) `/cluster/status` MULTI_PRIMARY part.
    fn multi_primary_of(&self, k: usize) -> Value {
        self.cluster_status(k)["multiPrimary"].clone()
    }

    /// Proxy `k`'s `/cluster/status`.
    fn cluster_status(&self, k: usize) -> Value {
        http(self.proxies[k].1, "GET", "/cluster/status", "")
    }

    /// Waits until the proxy routes writes to `testdb.produits` to `owner` with no master
    /// returning, and one such write through the proxy succeeds; returns how long it took.
    async fn wait_produits_owned(&self, owner_is_m3: bool, limit: Duration) -> Duration {
        self.wait_produits_owned_via(0, owner_is_m3, limit).await
    }

    /// [`LocalCluster::wait_produits_owned`] through proxy `k`.
    async fn wait_produits_owned_via(
        &self,
        k: usize,
        owner_is_m3: bool,
        limit: Duration,
    ) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            let mp = self.multi_primary_of(k);
            let routed = mp["objects"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["name"] == "produits").cloned())
                .map(|o| o["owner"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            let settled = mp["returning"].as_object().is_some_and(|r| r.is_empty());
            if settled && !routed.is_empty() && (routed == "m3") == owner_is_m3 {
                if let Some(mut c) = connect_testdb(self.proxies[k].0).await {
                    match c
                        .execute(&format!(
                            "INSERT INTO produits (v) VALUES ('probe-{}')",
                            started.elapsed().as_nanos()
                        ))
                        .await
                    {
                        Ok(_) => return started.elapsed(),
                        Err(e) => last = e.to_string(),
                    }
                }
            } else {
                last = mp.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "produits never became writable on {} within {limit:?}: {last}\n{}",
            if owner_is_m3 { "m3" } else { "another master" },
            self.log()
        );
    }

    /// testdb and its three tables, through the first proxy.
    async fn create_tables(&self) {
        let mut c = self.proxy().await;
        self.settle(&mut c, "CREATE DATABASE testdb").await;
        c.execute("USE testdb").await.unwrap();
        // Rows keyed by their distinct values: writes of the old owner that no one else applied
        // (conflicts, item 5, tested apart) cannot meet the new owner's rows by rowid here.
        for table in TABLES {
            let sql = format!("CREATE TABLE {table} (v TEXT PRIMARY KEY) WITHOUT ROWID");
            self.settle(&mut c, &sql).await;
        }
        assert_eq!(owner_of("DB:testdb|TABLE:produits"), 3);
    }

    /// Runs `sql` until it succeeds, or finds it done by an earlier try ("already exists"):
    /// on a loaded machine a write can miss its write concern's timeout, or the proxy can lose
    /// its etcd session for a moment, and be refused.
    async fn settle(&self, c: &mut Client, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.execute(sql).await {
                Ok(_) => return,
                Err(ClientError::Server(e)) if e.contains("already exists") => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("`{sql}` refused, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("`{sql}`: {e}\n{}", self.log()),
            }
        }
    }

    /// Asserts that masters `on` hold every acknowledged value of `acked`.
    async fn assert_held(&self, acked: &[(String, String)], on: &[usize]) {
        self.assert_held_in(acked, on, &TABLES).await;
    }

    /// [`LocalCluster::assert_held`] for `tables`.
    async fn assert_held_in(&self, acked: &[(String, String)], on: &[usize], tables: &[&str]) {
        for &table in tables {
            let wanted: Vec<&String> = acked
                .iter()
                .filter(|(t, _)| t == table)
                .map(|(_, v)| v)
                .collect();
            // (More than 3: the file's ten tests run at once; at a load of 23 one run gave a
            // table 10 or fewer.)
            assert!(wanted.len() > 3, "{table}: {} acknowledged", wanted.len());
            for &m in on {
                let held = self.values_on(m, table).await;
                let lost: Vec<&&String> = wanted.iter().filter(|v| !held.contains(**v)).collect();
                assert!(
                    lost.is_empty(),
                    "m{m} lacks acknowledged writes to {table}: {lost:?}\n{}",
                    self.log()
                );
            }
        }
    }

    /// Every value of `table` in testdb on master `m`.
    async fn values_on(&self, m: usize, table: &str) -> std::collections::HashSet<String> {
        let mut c = self.master(m).await;
        c.execute("USE testdb").await.unwrap();
        c.query(&format!("SELECT v FROM {table}"))
            .await
            .unwrap()
            .rows
            .iter()
            .filter_map(|r| r[0].as_str().map(str::to_string))
            .collect()
    }
}

#[tokio::test]
async fn an_owner_killed_or_paused_under_writers_hands_its_tables_over_and_gets_them_back() {
    let mut cluster = LocalCluster::start_separate(with_quick_failover);
    cluster.wait_for_ownership();
    cluster.create_tables().await;
    cluster
        .wait_produits_owned(true, Duration::from_secs(10))
        .await;
    let writers = Writers::start(cluster.lb, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 of produits' owner: its tables move to the next master by rendezvous and are
    // writable there; restarted, m3 catches up and owns them again.
    cluster.kill9(3);
    let moved = cluster
        .wait_produits_owned(false, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.spawn(2);
    let back = cluster
        .wait_produits_owned(true, Duration::from_secs(20))
        .await;
    eprintln!("kill -9: produits writable elsewhere after {moved:?}, back on m3 after {back:?}");

    // SIGSTOP of m3: the same while it is frozen; resumed, it writes nothing until it caught up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal(3, "STOP");
    let moved = cluster
        .wait_produits_owned(false, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(3, "CONT");
    let back = cluster
        .wait_produits_owned(true, Duration::from_secs(20))
        .await;
    eprintln!("SIGSTOP: produits writable elsewhere after {moved:?}, back on m3 after {back:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, errors) = writers.finish().await;

    // No acknowledged write lost, on any master; all three equal.
    let converged = cluster.wait_converged();
    cluster.assert_held(&acked, &[1, 2, 3]).await;
    assert_eq!(converged[0]["tables"], converged[2]["tables"]);
    report(&acked, &errors, "");
}

/// The values of `produits` equal to `v` on master `m`.
async fn produits_rows(cluster: &LocalCluster, m: usize, v: &str) -> usize {
    let mut c = cluster.master(m).await;
    c.execute("USE testdb").await.unwrap();
    c.query(&format!("SELECT v FROM produits WHERE v = '{v}'"))
        .await
        .unwrap()
        .rows
        .len()
}

/// A transaction whose statements passed the ownership check on produits' owner (m3) does not
/// commit there once ownership changed while it was open: first m3's view lapses (the proxy
/// frozen past `failover.leaseMillis`, after which the proxy may move produits), then a view
/// that moves produits away reaches m3 (as a proxy that moved it would send it). Both COMMITs
/// are refused saying why, and m3 holds neither row.
#[tokio::test]
async fn a_transaction_open_on_the_owner_across_an_ownership_change_does_not_commit_there() {
    let cluster = LocalCluster::start_separate(with_quick_failover);
    cluster.wait_for_ownership();
    cluster.create_tables().await;
    cluster
        .wait_produits_owned(true, Duration::from_secs(10))
        .await;

    let mut m3 = cluster.master(3).await;
    m3.execute("USE testdb").await.unwrap();
    m3.execute("BEGIN").await.unwrap();
    m3.execute("INSERT INTO produits VALUES ('open-across-a-lapse')")
        .await
        .unwrap();
    cluster.signal(4, "STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lapsed = m3.execute("COMMIT").await;
    cluster.signal(4, "CONT");
    let lapsed = refusal(lapsed);
    assert!(
        lapsed.contains("not committed") && lapsed.contains("refuses every write"),
        "{lapsed}"
    );
    assert_eq!(produits_rows(&cluster, 3, "open-across-a-lapse").await, 0);

    cluster
        .wait_produits_owned(true, Duration::from_secs(20))
        .await;
    m3.execute("BEGIN").await.unwrap();
    m3.execute("INSERT INTO produits VALUES ('open-across-a-move')")
        .await
        .unwrap();
    let term = cluster.master_status(3)["ownership"]["term"]
        .as_u64()
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let moved = http(
        cluster.masters[2].1,
        "POST",
        "/replication/ownership",
        &format!(
            r#"{{"up": ["m1", "m2"], "term": {}, "leaseMillis": 60000, "sentAtMs": {now_ms}}}"#,
            term + 100
        ),
    );
    assert_eq!(
        moved["ownership"]["up"],
        serde_json::json!(["m1", "m2"]),
        "{moved}"
    );
    let refused = refusal(m3.execute("COMMIT").await);
    assert!(
        refused.contains("not committed")
            && refused.contains("produits is owned by m")
            && refused.contains("rolled back"),
        "{refused}"
    );
    assert_eq!(produits_rows(&cluster, 3, "open-across-a-move").await, 0);
}

/// The prefix of the ownership plan in etcd in the tests below.
const ETCD_PREFIX: &str = "/dirkdb/mp-e2e";

/// [`with_quick_failover`] with several proxies coordinated through etcd at `endpoints` (the
/// ownership plan in etcd, a proxy's etcd lease of 1 s).
fn with_etcd(text: String, endpoints: &[String]) -> String {
    let coordinator = serde_json::json!({
        "type": "ETCD", "endpoints": endpoints, "prefix": ETCD_PREFIX, "leaseMillis": 1000
    });
    let text = with_quick_failover(text);
    let with = text.replace(
        "\"clockDriftMillis\": 100}",
        &format!("\"clockDriftMillis\": 100, \"coordinator\": {coordinator}}}"),
    );
    assert_ne!(with, text);
    with
}

/// The ownership plan in etcd (`Null` when there is none).
fn plan_in(etcd: &common::etcd::Etcd) -> Value {
    etcd.get(&format!("{ETCD_PREFIX}/ownership"))
        .map(|(value, _)| serde_json::from_str(&value).unwrap())
        .unwrap_or(Value::Null)
}

impl LocalCluster {
    /// Three masters and `proxies` proxies coordinated through `etcd`, with testdb's tables,
    /// once every proxy and master took etcd's plan and every proxy writes produits on m3;
    /// returns the plan.
    async fn start_over(etcd: &common::etcd::Etcd, proxies: usize) -> (LocalCluster, Value) {
        LocalCluster::start_over_with(etcd, proxies, &|_, text| text).await
    }

    /// [`LocalCluster::start_over`], with `own` changing proxy `k`'s file.
    async fn start_over_with(
        etcd: &common::etcd::Etcd,
        proxies: usize,
        own: &dyn Fn(usize, String) -> String,
    ) -> (LocalCluster, Value) {
        let endpoints = etcd.endpoints();
        let cluster = LocalCluster::start_proxies(proxies, |text| with_etcd(text, &endpoints), own);
        cluster.wait_for_ownership();
        cluster.create_tables().await;
        let plan = cluster.wait_plan_everywhere(etcd, &[1, 2, 3]);
        for k in 0..proxies {
            cluster
                .wait_produits_owned_via(k, true, Duration::from_secs(10))
                .await;
        }
        (cluster, plan)
    }

    /// Waits until every proxy routes by etcd's plan (the same term), and masters `masters`
    /// took that term; returns the plan.
    fn wait_plan_everywhere(&self, etcd: &common::etcd::Etcd, masters: &[usize]) -> Value {
        self.wait_plan_on(etcd, masters, &(0..self.proxies.len()).collect::<Vec<_>>())
    }

    /// [`LocalCluster::wait_plan_everywhere`] on proxies `proxies` only.
    fn wait_plan_on(
        &self,
        etcd: &common::etcd::Etcd,
        masters: &[usize],
        proxies: &[usize],
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let plan = plan_in(etcd);
            let term = &plan["term"];
            let proxies = proxies.iter().all(|&k| {
                &self.cluster_status(k)["coordinator"]["ownership"]["plan"]["term"] == term
            });
            let told = masters
                .iter()
                .all(|&m| &self.master_status(m)["ownership"]["term"] == term);
            if term.is_u64() && proxies && told {
                return plan;
            }
            last = plan;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the proxies and masters never took etcd's plan {last}\n{}",
            self.log()
        );
    }

    /// `kill -9` of proxy `k` (0: `proxy`).
    fn kill9_proxy(&mut self, k: usize) {
        let name = if k == 0 {
            "proxy".to_string()
        } else {
            format!("proxy{}", k + 1)
        };
        let i = self.children.iter().position(|(n, _)| *n == name).unwrap();
        if let Some(mut child) = self.children[i].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` of m3 (produits' owner) under writers through the first two proxies: waits
    /// until both route produits elsewhere, then asserts one move in etcd, recorded by one
    /// proxy, and every acknowledged write on m1 and m2; returns the writers' outcome.
    async fn kill_owner_under_writers(&mut self, etcd: &common::etcd::Etcd) -> WriterOutcome {
        let writers: Vec<Writers> = (0..2)
            .map(|k| Writers::start(self.proxies[k].0, 2))
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.kill9(3);
        for k in 0..2 {
            let moved = self
                .wait_produits_owned_via(k, false, Duration::from_secs(30))
                .await;
            eprintln!("proxy {k}: produits writable elsewhere after {moved:?}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        for w in writers {
            let (a, e) = w.finish().await;
            acked.extend(a);
            errors.extend(e);
        }
        let plan = self.wait_plan_everywhere(etcd, &[1, 2]);
        assert_eq!(plan["owning"], serde_json::json!(["m1", "m2"]), "{plan}");
        assert_eq!(plan["moves"], 1, "exactly one ownership change: {plan}");
        assert_eq!(self.moves_recorded(&[0, 1]), 1, "one proxy recorded it");
        self.assert_held(&acked, &[1, 2]).await;
        (acked, errors)
    }

    /// How many ownership moves the proxies recorded in etcd, all together.
    fn moves_recorded(&self, proxies: &[usize]) -> u64 {
        proxies
            .iter()
            .map(|&k| self.cluster_status(k)["coordinator"]["ownershipMovesRecorded"].as_u64())
            .map(|n| n.unwrap_or(0))
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_etcd_an_owner_killed_under_writers_through_two_proxies_moves_once_and_loses_nothing()
{
    let etcd = common::etcd::Etcd::single();
    let (mut cluster, plan) = LocalCluster::start_over(&etcd, 2).await;
    assert_eq!(
        plan["owning"],
        serde_json::json!(["m1", "m2", "m3"]),
        "{plan}"
    );
    assert_eq!(plan["moves"], 0);
    // kill -9 of produits' owner under writers through both proxies: its tables move once, by
    // the elected proxy's plan in etcd, and both proxies route by it.
    let (acked, errors) = cluster.kill_owner_under_writers(&etcd).await;

    // m3 back: it catches up, owns produits again, and the three masters are equal.
    cluster.spawn(2);
    for k in 0..2 {
        cluster
            .wait_produits_owned_via(k, true, Duration::from_secs(30))
            .await;
    }
    let converged = cluster.wait_converged();
    assert_eq!(converged[0]["tables"], converged[2]["tables"]);
    cluster.assert_held(&acked, &[1, 2, 3]).await;
    assert_eq!(plan_in(&etcd)["moves"], 2, "and one back");
    report(&acked, &errors, " through two proxies");

    // The plan deleted from etcd by hand: the elected proxy records it again, writes go on.
    etcd.delete(&format!("{ETCD_PREFIX}/ownership"));
    common::wait::until(Duration::from_secs(10), "the plan recorded again", || {
        plan_in(&etcd)["owning"].is_array().then_some(())
    });
    cluster.wait_plan_everywhere(&etcd, &[1, 2, 3]);
    for k in 0..2 {
        cluster
            .wait_produits_owned_via(k, true, Duration::from_secs(10))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_etcd_with_etcd_stopped_no_ownership_moves_and_writes_are_refused_saying_why() {
    let mut etcd = common::etcd::Etcd::single();
    let (mut cluster, _) = LocalCluster::start_over(&etcd, 2).await;
    etcd.kill_all();
    for k in 0..2 {
        common::wait::until(
            Duration::from_secs(10),
            "the proxy saying etcd is unreachable",
            || (cluster.cluster_status(k)["coordinator"]["reachable"] == false).then_some(()),
        );
    }
    // m3 killed while etcd is down: past failover.detectionMillis + leases (about 2.6 s),
    // twice over, nothing moves; writes are refused with the reason.
    cluster.kill9(3);
    let outage = Instant::now();
    let mut reasons = Vec::new();
    while outage.elapsed() < Duration::from_secs(6) {
        for k in 0..2 {
            let plan = &cluster.cluster_status(k)["coordinator"]["ownership"]["plan"];
            assert_eq!(
                plan["owning"],
                serde_json::json!(["m1", "m2", "m3"]),
                "proxy {k}"
            );
            // (USE fails while a loaded machine lets m1 miss two 100 ms health checks.)
            let Some(mut c) = connect_testdb(cluster.proxies[k].0).await else {
                continue;
            };
            for table in ["produits", "utilisateurs"] {
                let sql = format!("INSERT INTO {table} (v) VALUES ('outage-{k}')");
                reasons.push(refusal(c.execute(&sql).await));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reasons.len() >= 4, "{reasons:?}");
    for reason in &reasons {
        assert!(
            reason.contains("etcd") && reason.contains("failover.coordinator"),
            "{reason}"
        );
    }
    etcd.restart_stopped();
    // etcd back: the elected proxy moves m3's objects, once.
    for k in 0..2 {
        cluster
            .wait_produits_owned_via(k, false, Duration::from_secs(30))
            .await;
    }
    let plan = cluster.wait_plan_everywhere(&etcd, &[1, 2]);
    assert_eq!(plan["moves"], 1, "{plan}");
    assert_eq!(cluster.moves_recorded(&[0, 1]), 1);
    eprintln!(
        "{} writes refused during the outage, e.g. {}",
        reasons.len(),
        reasons[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_etcd_what_a_killed_proxy_acknowledged_still_holds_a_move_back_until_the_others_have_it(
) {
    let etcd = common::etcd::Etcd::single();
    let (mut cluster, _) = LocalCluster::start_over(&etcd, 3).await;
    // Only the third proxy writes produits (m3's): what it acknowledged is in etcd under a key
    // without a lease, and stays there once the proxy is killed and its liveness entry lapsed.
    let third = cluster.cluster_status(2)["coordinator"]["proxy"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = Writers::start_on(cluster.proxies[2].0, 2, &["produits"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut acked, _) = writer.finish().await;
    let acked_key = format!("{ETCD_PREFIX}/acked/{third}");
    let recorded: Value = serde_json::from_str(&etcd.get(&acked_key).unwrap().0).unwrap();
    let by_third = recorded["ackedByOrigin"]["m3"].as_u64().unwrap();
    assert!(by_third > 0, "{recorded}");
    cluster.kill9_proxy(2);
    common::wait::until(
        Duration::from_secs(10),
        "the killed proxy's liveness entry lapsing",
        || {
            etcd.get(&format!("{ETCD_PREFIX}/proxies/{third}"))
                .is_none()
                .then_some(())
        },
    );

    // m3 killed under writers through the two others (to m1's and m2's tables): produits moves
    // once, and only when m1 and m2 hold everything the dead proxy acknowledged.
    let writers: Vec<Writers> = (0..2)
        .map(|k| Writers::start_on(cluster.proxies[k].0, 2, &["utilisateurs", "commandes"]))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill9(3);
    for k in 0..2 {
        cluster
            .wait_produits_owned_via(k, false, Duration::from_secs(30))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut errors = Vec::new();
    for w in writers {
        let (a, e) = w.finish().await;
        acked.extend(a);
        errors.extend(e);
    }
    let plan = cluster.wait_plan_on(&etcd, &[1, 2], &[0, 1]);
    assert_eq!(plan["owning"], serde_json::json!(["m1", "m2"]), "{plan}");
    assert_eq!(plan["moves"], 1, "{plan}");
    assert!(
        plan["acknowledged"]["m3"].as_u64() >= Some(by_third),
        "the plan counted the killed proxy's acknowledgements of m3 ({by_third}): {plan}"
    );
    assert!(etcd.get(&acked_key).is_some(), "kept without a lease");
    assert_eq!(cluster.moves_recorded(&[0, 1]), 1);
    cluster.assert_held_in(&acked, &[1, 2], &TABLES).await;
    report(&acked, &errors, " through three proxies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_etcd_the_elected_proxy_killed_inside_a_move_leaves_it_to_the_other_once() {
    let etcd = common::etcd::Etcd::single();
    let (mut cluster, first) = LocalCluster::start_over(&etcd, 2).await;
    let elected = common::wait::until(Duration::from_secs(10), "one proxy elected", || {
        (0..2).find(|&k| cluster.cluster_status(k)["coordinator"]["decides"] == true)
    });
    let other = 1 - elected;
    let writers = Writers::start(cluster.proxies[other].0, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // m3 killed; as soon as etcd's plan says it is moving, the elected proxy is killed too:
    // the other is elected, takes the plan from etcd and finishes the move, once.
    cluster.kill9(3);
    common::wait::until(Duration::from_secs(20), "m3 recorded moving", || {
        plan_in(&etcd)["moving"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "m3"))
            .then_some(())
    });
    cluster.kill9_proxy(elected);
    let at_kill = plan_in(&etcd);
    let moved = cluster
        .wait_produits_owned_via(other, false, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (acked, errors) = writers.finish().await;
    let plan = cluster.wait_plan_on(&etcd, &[1, 2], &[other]);
    assert_eq!(plan["owning"], serde_json::json!(["m1", "m2"]), "{plan}");
    assert_eq!(plan["moves"], 1, "{plan}");
    assert!(plan["term"].as_u64() > first["term"].as_u64(), "{plan}");
    assert_eq!(
        cluster.cluster_status(other)["coordinator"]["decides"],
        true
    );
    cluster.assert_held(&acked, &[1, 2]).await;
    eprintln!(
        "produits writable elsewhere {moved:?} after the elected proxy was killed (etcd's plan then: owning {})",
        at_kill["owning"]
    );
    report(&acked, &errors, " through the surviving proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_etcd_the_elected_proxy_cut_off_from_etcd_refuses_writes_and_the_other_moves_once() {
    let etcd = common::etcd::Etcd::single();
    let member = etcd.endpoints()[0].clone();
    let port = etcd.members[0].client_port;
    let relays: Vec<common::relay::Relay> =
        (0..2).map(|_| common::relay::Relay::start(port)).collect();
    let through =
        |k: usize, text: String| text.replace(&member, &format!("127.0.0.1:{}", relays[k].port));
    let (mut cluster, _) = LocalCluster::start_over_with(&etcd, 2, &through).await;
    let elected = common::wait::until(Duration::from_secs(10), "one proxy elected", || {
        (0..2).find(|&k| cluster.cluster_status(k)["coordinator"]["decides"] == true)
    });
    let other = 1 - elected;
    let writers = Writers::start(cluster.proxies[other].0, 3);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The elected proxy cut off from etcd: it stops deciding, the other is elected.
    relays[elected].cut();
    common::wait::until(Duration::from_secs(10), "the other proxy elected", || {
        let cut_off = cluster.cluster_status(elected)["coordinator"].clone();
        let next = cluster.cluster_status(other)["coordinator"].clone();
        (cut_off["reachable"] == false && cut_off["decides"] == false && next["decides"] == true)
            .then_some(())
    });
    // m3 killed: the proxy that reaches etcd moves its objects, once; the cut-off one refuses
    // writes, naming etcd, and moves nothing.
    cluster.kill9(3);
    cluster
        .wait_produits_owned_via(other, false, Duration::from_secs(30))
        .await;
    let cut_off = cluster.cluster_status(elected)["coordinator"].clone();
    assert_eq!(cut_off["ownershipMovesRecorded"], 0, "{cut_off}");
    let mut c = connect_testdb(cluster.proxies[elected].0)
        .await
        .expect("USE through the cut-off proxy");
    let refused = refusal(
        c.execute("INSERT INTO utilisateurs (v) VALUES ('cut')")
            .await,
    );
    assert!(refused.contains("etcd"), "{refused}");

    // Healed: it takes etcd's plan and routes by it.
    relays[elected].heal();
    cluster
        .wait_produits_owned_via(elected, false, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, errors) = writers.finish().await;
    let plan = cluster.wait_plan_everywhere(&etcd, &[1, 2]);
    assert_eq!(plan["owning"], serde_json::json!(["m1", "m2"]), "{plan}");
    assert_eq!(plan["moves"], 1, "{plan}");
    assert_eq!(cluster.moves_recorded(&[0, 1]), 1);
    cluster.assert_held(&acked, &[1, 2]).await;
    report(&acked, &errors, " through the proxy that reached etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_a_three_node_etcd_that_loses_its_leader_a_killed_owner_still_moves_once() {
    let mut etcd = common::etcd::Etcd::three();
    let (mut cluster, _) = LocalCluster::start_over(&etcd, 2).await;
    let leader = common::wait::until(Duration::from_secs(10), "an etcd leader", || etcd.leader());
    etcd.kill(leader);
    etcd.wait_healthy(Duration::from_secs(15));
    common::wait::until(Duration::from_secs(15), "one proxy elected again", || {
        (0..2)
            .any(|k| cluster.cluster_status(k)["coordinator"]["decides"] == true)
            .then_some(())
    });
    assert_eq!(
        plan_in(&etcd)["moves"],
        0,
        "the etcd leader's death moves nothing"
    );
    let (acked, errors) = cluster.kill_owner_under_writers(&etcd).await;
    report(
        &acked,
        &errors,
        " through two proxies, two etcd members left",
    );
}
