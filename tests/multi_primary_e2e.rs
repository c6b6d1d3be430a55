//! MULTI_PRIMARY end to end: DirkDB's own `config.json` (ports, data directories and the
//! listen host changed to loopback; admin ports added) run by `dirkdb cluster`, with real
//! processes and real TCP.
//!
//! Owners are DirkDB's rendezvous over m1, m2, m3 — vectors computed independently in Python
//! (see `core/src/rendezvous.rs`): `DB:testdb` → m1, `DB:testdb|TABLE:utilisateurs` → m1,
//! `DB:testdb|TABLE:commandes` → m2, `DB:testdb|TABLE:produits` → m3.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::http;
use common::{dirkdb_bin, free_port, wait_for_port};
use dirkdb_client::{Client, ClientError};
use serde_json::Value;

/// DirkDB's file with `{…}` placeholders for what a test must change.
const DIRKDB_CONFIG: &str = r#"{"configVersion": 1,
 "loadBalancer": {"listenHost": "127.0.0.1", "listenPort": {lb}, "adminPort": {lb_admin}},
 "cache": {"listenPort": {cache}, "adminPort": {cache_admin}},
 "instances": [
   {"id": "m1", "role": "MASTER", "host": "127.0.0.1", "port": {m1}, "adminPort": {m1_admin}, "dataDirectory": "{dir}/data/m1"},
   {"id": "m2", "role": "MASTER", "host": "127.0.0.1", "port": {m2}, "adminPort": {m2_admin}, "dataDirectory": "{dir}/data/m2"},
   {"id": "m3", "role": "MASTER", "host": "127.0.0.1", "port": {m3}, "adminPort": {m3_admin}, "dataDirectory": "{dir}/data/m3"}],
 "routing": {"reads": {"strategy": "ROUND_ROBIN", "includeRoles": ["MASTER"]},
             "writes": {"mode": "MULTI_PRIMARY", "partition": "DB_OBJECT", "hash": "RENDEZVOUS"}},
 "replication": {"type": "FILE", "intervalSeconds": 2}}"#;

/// `dirkdb cluster` running DirkDB's file.
struct LocalCluster {
    dir: tempfile::TempDir,
    child: Child,
    lb: u16,
    lb_admin: u16,
    masters: Vec<(u16, u16)>,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        LocalCluster::start_with(|text| text)
    }

    /// DirkDB's file changed by `edit` (after the placeholders are filled in).
    fn start_with(edit: impl FnOnce(String) -> String) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lb, lb_admin) = (free_port(), free_port());
        let masters: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut text = DIRKDB_CONFIG
            .replace("{lb}", &lb.to_string())
            .replace("{lb_admin}", &lb_admin.to_string())
            .replace("{cache}", &free_port().to_string())
            .replace("{cache_admin}", &free_port().to_string())
            .replace("{dir}", &dir.path().display().to_string());
        for (i, (port, admin)) in masters.iter().enumerate() {
            text = text
                .replace(&format!("{{m{}}}", i + 1), &port.to_string())
                .replace(&format!("{{m{}_admin}}", i + 1), &admin.to_string());
        }
        let config = dir.path().join("config.json");
        std::fs::write(&config, edit(text)).expect("write config");
        let log = std::fs::File::create(dir.path().join("cluster.log")).expect("log");
        let child = Command::new(dirkdb_bin())
            .args(["cluster", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dirkdb cluster");
        let cluster = LocalCluster {
            dir,
            child,
            lb,
            lb_admin,
            masters,
        };
        for (port, admin) in &cluster.masters {
            wait_for_port(*port);
            wait_for_port(*admin);
        }
        wait_for_port(cluster.lb);
        wait_for_port(cluster.lb_admin);
        cluster
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster.log")).unwrap_or_default()
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        1
    );
    let log = cluster.log();
    assert!(!log.contains("multi-primary apply"), "{log}");
    assert!(!log.contains("stream refused"), "{log}");
}

/// The owner of `key` among m1, m2, m3 by DirkDB's rendezvous (vectors checked in
/// `core/src/rendezvous.rs`).
fn owner_of(key: &str) -> usize {
    dirkdb_core::rendezvous::owner(key, &["m1", "m2", "m3"]).expect("an owner") + 1
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
