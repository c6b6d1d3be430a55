//! MULTI_PRIMARY conflicts end to end (issue #16 item 5), with real processes: DirkDB's
//! three-master file, one `dirkdb server` per master and a `dirkdb proxy`, every link between
//! two masters through its own relay (`tests/common/network.rs`), so the home of two tables (m1)
//! can be cut off from the other masters while the proxy still reaches it.
//!
//! The partitioned owner keeps writing (its writes acknowledged at write concern 0, applied by
//! no one else); it is then killed, its tables move to another master, which writes the same
//! rows; the links heal and m1 comes back. Its writes appear as conflicts on m1 (the rows'
//! home), `SOURCE_WINS` (the default) resolves one table's at once, the other table is `MANUAL`
//! and its conflict stays listed — through the proxy, in both spellings — until `RESOLVE
//! CONFLICT` resolves it; then all three masters have equal checksums.
#![allow(clippy::unwrap_used)] // a test may unwrap: a panic is its failure

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::http;
use common::network::Network;
use common::{dirkdb_bin, wait_for_port};
use dirkdb_client::{Client, ClientError};
use serde_json::{json, Value};

/// A table of `testdb` whose home (rendezvous over m1, m2, m3) is m1, other than utilisateurs.
fn manual_table() -> String {
    home_m1_table("notes")
}

/// Three masters and a proxy (see [`Cluster::start`]), once the proxy takes writes, with the
/// database `testdb`.
async fn cluster_taking_writes(manual: &str) -> Cluster {
    let cluster = Cluster::start(manual);
    {
        let mut c = Client::connect(&format!("127.0.0.1:{}", cluster.lb))
            .await
            .unwrap();
        cluster
            .until(
                "the proxy takes writes",
                Duration::from_secs(30),
                async || {
                    c.execute("CREATE DATABASE IF NOT EXISTS testdb")
                        .await
                        .is_ok()
                },
            )
            .await;
    }
    cluster
}

/// The first table `<prefix><i>` of `testdb` whose home is m1.
fn home_m1_table(prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| {
            let key = format!("DB:testdb|TABLE:{t}");
            dirkdb_core::rendezvous::owner(&key, &["m1", "m2", "m3"]) == Some(0)
        })
        .unwrap()
}

struct Cluster {
    dir: tempfile::TempDir,
    net: Network,
    /// `m1`, `m2`, `m3`, `proxy`, each with its process.
    children: Vec<(String, Option<Child>)>,
    lb: u16,
    lb_admin: u16,
    masters: Vec<(u16, u16)>,
}

impl Cluster {
    /// DirkDB's file with quick failover, write concern 0 and `manual` under MANUAL; each master
    /// reaches the others through relays.
    fn start(manual: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::new();
        let filled = common::dirkdb_config(dir.path());
        let mut base: Value = serde_json::from_str(&filled.text).unwrap();
        base["loadBalancer"]["healthIntervalMillis"] = json!(100);
        base["loadBalancer"]["failCount"] = json!(2);
        base["failover"] =
            json!({"detectionMillis": 1000, "leaseMillis": 1500, "clockDriftMillis": 100});
        base["routing"]["writes"]["writeConcern"] = json!({"replicas": 0});
        base["replication"]["conflicts"] = json!({
            "strategy": "SOURCE_WINS",
            "tables": {format!("testdb.{manual}"): "MANUAL"},
            "keepResolved": 1
        });
        write_config(dir.path(), "proxy", &base);
        let ids = ["m1", "m2", "m3"];
        for (k, me) in ids.iter().enumerate() {
            let mut own = base.clone();
            for (j, other) in ids.iter().enumerate().filter(|(j, _)| *j != k) {
                let port = net.link(me, other, filled.masters[j].0);
                own["instances"][j]["replicationAddress"] = json!(format!("127.0.0.1:{port}"));
            }
            write_config(dir.path(), me, &own);
        }
        let mut cluster = Cluster {
            dir,
            net,
            children: ["m1", "m2", "m3", "proxy"]
                .iter()
                .map(|n| (n.to_string(), None))
                .collect(),
            lb: filled.lb,
            lb_admin: filled.lb_admin,
            masters: filled.masters,
        };
        for i in 0..4 {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let name = self.children[i].0.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(dirkdb_bin());
        match name.as_str() {
            "proxy" => command.arg("proxy"),
            master => command.args(["server", "--instance", master]),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.path().join(format!("config-{name}.json")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i].1 = Some(child);
        let (port, admin) = match name.as_str() {
            "proxy" => (self.lb, self.lb_admin),
            _ => self.masters[i],
        };
        wait_for_port(port);
        wait_for_port(admin);
    }

    fn kill9(&mut self, m: usize) {
        common::kill_child(&mut self.children[m - 1].1);
    }

    fn log(&self) -> String {
        common::logs_of(
            self.dir.path(),
            self.children.iter().map(|(n, _)| n.as_str()),
        )
    }

    /// A session on the proxy in testdb (USE runs on the database's owner, so it fails while
    /// that owner is down and its objects have not moved yet).
    async fn try_proxy(&self) -> Result<Client, ClientError> {
        let mut c = Client::connect(&format!("127.0.0.1:{}", self.lb)).await?;
        c.execute("USE testdb").await?;
        Ok(c)
    }

    /// A session on the proxy in testdb, retried while the database's owner is away.
    async fn proxy(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_proxy().await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("USE testdb through the proxy: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("USE testdb through the proxy: {e}\n{}", self.log()),
            }
        }
    }

    fn admin(&self, m: usize, path: &str) -> Value {
        http(self.masters[m - 1].1, "GET", path, "")
    }

    /// The values of `table` on master `m`, by id.
    async fn values(&self, m: usize, table: &str) -> Vec<(i64, String)> {
        let mut c = Client::connect(&format!("127.0.0.1:{}", self.masters[m - 1].0))
            .await
            .unwrap();
        c.execute("USE testdb").await.unwrap();
        let rows = c
            .query(&format!("SELECT id, v FROM {table} ORDER BY id"))
            .await
            .unwrap()
            .rows;
        rows.iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap_or(0),
                    r[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Waits until `done` holds, at most `limit`; panics with `what` and the logs.
    async fn until(&self, what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what} within {limit:?}\n{}", self.log());
    }

    /// Each master's digest of `table` (or of every table when `None`) and its positions.
    fn digests(&self, table: Option<&str>) -> Vec<Value> {
        (1..=3)
            .map(|m| {
                let c = self.admin(m, "/replication/checksum");
                match table {
                    Some(t) => json!([c["positions"], c["tables"]["testdb"][t]]),
                    None => json!([c["positions"], c["tables"]]),
                }
            })
            .collect()
    }

    /// Runs `sql` through the proxy until it is not refused (an owner down or catching up).
    async fn write_retrying(&self, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = match self.try_proxy().await {
                Ok(mut c) => c.execute(sql).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match done {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{sql}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{sql}: {e}\n{}", self.log()),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            common::kill_child(child);
        }
    }
}

fn write_config(dir: &Path, name: &str, config: &Value) {
    std::fs::write(
        dir.join(format!("config-{name}.json")),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
}

fn rows(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
    pairs.iter().map(|(i, v)| (*i, v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_owner_that_kept_writing_comes_back_with_its_writes_as_conflicts() {
    let manual = manual_table();
    let mut cluster = cluster_taking_writes(&manual).await;
    for table in ["utilisateurs", manual.as_str()] {
        cluster
            .write_retrying(&format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)"
            ))
            .await;
        cluster
            .write_retrying(&format!(
                "INSERT INTO {table} VALUES (1, 'a'), (2, 'a'), (3, 'a')"
            ))
            .await;
    }
    cluster
        .until(
            "the masters converge",
            Duration::from_secs(30),
            async || {
                let d = cluster.digests(None);
                d.iter().all(|x| *x == d[0])
            },
        )
        .await;

    // m1, home and owner of both tables, is cut off from the other masters; the proxy still
    // reaches it and it keeps writing: acknowledged at write concern 0, applied by no one else.
    cluster.net.partition(&["m1"], &["m2", "m3"]);
    for table in ["utilisateurs", manual.as_str()] {
        let mut c = cluster.proxy().await;
        c.execute(&format!(
            "UPDATE {table} SET v = 'partitioned' WHERE id IN (1, 2)"
        ))
        .await
        .unwrap();
        assert_eq!(
            cluster.values(1, table).await,
            rows(&[(1, "partitioned"), (2, "partitioned"), (3, "a")])
        );
    }
    assert_eq!(cluster.values(2, "utilisateurs").await[0], (1, "a".into()));

    // m1 dies; its tables move to another master, which writes rows 1 and 3.
    cluster.kill9(1);
    for table in ["utilisateurs", manual.as_str()] {
        cluster
            .write_retrying(&format!(
                "UPDATE {table} SET v = 'moved' WHERE id IN (1, 3)"
            ))
            .await;
    }
    let status = http(cluster.lb_admin, "GET", "/cluster/status", "");
    eprintln!(
        "owners while m1 is down: {}",
        status["multiPrimary"]["mastersUp"]
    );

    // The links heal and m1 comes back: each side applies the other's writes.
    cluster.net.heal_all();
    cluster.spawn(0);
    let conflicts_on_m1 = || cluster.admin(1, "/replication/conflicts");
    cluster
        .until(
            "m1 records both conflicts",
            Duration::from_secs(60),
            async || conflicts_on_m1()["conflicts"].as_array().map(Vec::len) == Some(2),
        )
        .await;
    let listed = conflicts_on_m1();
    let of = |table: &str| {
        listed["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["table"] == table)
            .cloned()
            .unwrap_or_else(|| panic!("no conflict on {table}: {listed:#}"))
    };
    let (auto, held) = (of("utilisateurs"), of(&manual));
    // The masters that are not the rows' home held m1's conflicting changes, and say so, once
    // m1's stream reached them (m1 may record its conflicts first: the streams are apart).
    let held_elsewhere = || -> u64 {
        (2..=3)
            .map(|m| {
                cluster.admin(m, "/replication/status")["conflicts"]["heldForHome"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    cluster
        .until(
            "m2 and m3 hold m1's two conflicting changes for m1",
            Duration::from_secs(30),
            async || held_elsewhere() >= 2,
        )
        .await;
    for c in [&auto, &held] {
        assert_eq!(c["rowKey"], r#"{"rowid":1}"#, "{c}");
        assert_eq!(c["keyKind"], "primary key", "{c}");
        assert_eq!(c["localOrigin"], "m1", "{c}");
        assert_ne!(c["remoteOrigin"], "m1", "{c}");
    }
    assert_eq!(
        (&auto["strategy"], &auto["state"], &auto["resolution"]),
        (&json!("SOURCE_WINS"), &json!("resolved"), &json!("REMOTE")),
        "{auto}"
    );
    assert_eq!(
        (&held["strategy"], &held["state"]),
        (&json!("MANUAL"), &json!("open"))
    );

    // SOURCE_WINS: the new owner's row 1 everywhere, m1's partitioned row 2, equal checksums.
    let expected = rows(&[(1, "moved"), (2, "partitioned"), (3, "moved")]);
    cluster
        .until(
            "utilisateurs converges",
            Duration::from_secs(60),
            async || {
                let d = cluster.digests(Some("utilisateurs"));
                d[0][1] == d[1][1] && d[1][1] == d[2][1]
            },
        )
        .await;
    for m in 1..=3 {
        assert_eq!(cluster.values(m, "utilisateurs").await, expected, "m{m}");
    }

    // MANUAL: listed open, through the proxy in both spellings, counted by the proxy and in
    // m1's /metrics; m1 keeps its row meanwhile.
    assert_eq!(
        cluster.values(1, &manual).await[0],
        (1, "partitioned".into())
    );
    for show in ["SHOW CONFLICTS", "asehoy ny fifanoherana"] {
        let mut c = cluster.proxy().await;
        let answer = c.query(show).await.unwrap();
        let (on_home, held): (Vec<_>, Vec<_>) = answer.rows.iter().partition(|r| r[1] == "m1");
        assert_eq!(on_home.len(), 2, "{show}: {answer:?}");
        // What m2 and m3 held for m1 is listed by them, with m1 named as the home.
        assert!(
            !held.is_empty() && held.iter().all(|r| r[13] == "m1"),
            "{show}: {answer:?}"
        );
        let first = &answer.rows[0];
        assert_eq!(first[1], "m1", "{show}: {answer:?}");
        assert_eq!(first[3], manual.as_str(), "open first: {answer:?}");
        assert_eq!(first[10], "open", "{answer:?}");
    }
    cluster
        .until(
            "the proxy counts one open conflict",
            Duration::from_secs(30),
            async || {
                let status = http(cluster.lb_admin, "GET", "/cluster/status", "");
                status["multiPrimary"]["openConflicts"] == 1
            },
        )
        .await;
    let metrics = cluster.admin(1, "/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("dirkdb_open_conflicts{instance=\"m1\"} 1"),
        "{metrics}"
    );
    let metrics = http(cluster.lb_admin, "GET", "/metrics", "");
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("dirkdb_proxy_open_conflicts 1"),
        "{metrics}"
    );

    // Resolved by a statement (DirkDB's spelling), through the proxy: m1's row everywhere.
    let id = format!("m1.{}", held["id"]);
    let mut c = cluster.proxy().await;
    let answer = c
        .execute(&format!("vahao ny fifanoherana {id} tazony eto"))
        .await
        .unwrap();
    assert!(format!("{answer:?}").contains("resolved"), "{answer:?}");
    let again = c
        .execute(&format!("RESOLVE CONFLICT {id} KEEP REMOTE"))
        .await;
    assert!(
        matches!(&again, Err(ClientError::Server(e)) if e.contains("already resolved")),
        "{again:?}"
    );
    cluster
        .until(
            "all masters converge",
            Duration::from_secs(60),
            async || {
                let d = cluster.digests(None);
                d.iter().all(|x| *x == d[0])
            },
        )
        .await;
    for m in 1..=3 {
        assert_eq!(
            cluster.values(m, &manual).await,
            rows(&[(1, "partitioned"), (2, "partitioned"), (3, "moved")]),
            "m{m}"
        );
    }
    // The changes m2 and m3 held for m1 were marked resolved when m1's resolutions arrived.
    for m in 2..=3 {
        let listed = cluster.admin(m, "/replication/conflicts");
        let still_held: Vec<&Value> = listed["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"].as_str().unwrap_or_default().starts_with("held"))
            .collect();
        assert!(still_held.is_empty(), "m{m}: {listed:#}");
    }
    let status = http(cluster.lb_admin, "GET", "/cluster/status", "");
    assert_eq!(status["multiPrimary"]["openConflicts"], 0, "{status:#}");

    // replication.conflicts.keepResolved 1: of its two resolved conflicts m1 keeps the newest
    // listed, and still counts both.
    let listed = cluster.admin(1, "/replication/conflicts");
    let kept: Vec<&Value> = listed["conflicts"].as_array().unwrap().iter().collect();
    assert_eq!(kept.len(), 1, "{listed:#}");
    assert_eq!(kept[0]["table"], manual.as_str(), "{listed:#}");
    let counted = &cluster.admin(1, "/replication/status")["conflicts"];
    assert_eq!(
        (&counted["open"], &counted["resolved"]),
        (&json!(0), &json!(2))
    );

    // The home down: SHOW CONFLICTS through the proxy still answers, with a row saying that
    // m1's conflicts are not listed and why.
    cluster.kill9(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = cluster.proxy().await;
        let answer = c.query("SHOW CONFLICTS").await.unwrap();
        let unlisted = answer.rows.iter().any(|r| {
            r[1] == "m1"
                && r[10]
                    .as_str()
                    .is_some_and(|s| s.starts_with("not listed: m1 is down"))
        });
        if unlisted {
            // Besides it, only what m2 and m3 held for m1, listed resolved by it.
            let others: Vec<_> = answer.rows.iter().filter(|r| r[1] != "m1").collect();
            assert_eq!(answer.rows.len(), 1 + others.len(), "{answer:?}");
            assert!(
                others
                    .iter()
                    .all(|r| r[13] == "m1" && r[10] == "resolved" && r[11] == "HOME"),
                "{answer:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SHOW CONFLICTS with m1 down: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each master's rows of `table` as text (`SELECT <columns> … ORDER BY <columns>`).
async fn texts(cluster: &Cluster, m: usize, table: &str, columns: &str) -> Vec<String> {
    let mut c = Client::connect(&format!("127.0.0.1:{}", cluster.masters[m - 1].0))
        .await
        .unwrap();
    c.execute("USE testdb").await.unwrap();
    let answer = c
        .query(&format!("SELECT {columns} FROM {table} ORDER BY {columns}"))
        .await
        .unwrap();
    answer
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// Rowid tables keyed by another primary key (TEXT, composite) travel between masters by that
/// key: the partitioned owner and the master its tables moved to each insert a different key
/// under the same rowid, and every master ends with both rows, no conflict recorded (the keys
/// differ), equal checksums. Before, each master's INSERT OR REPLACE by rowid replaced the
/// other's row unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_keyed_by_a_text_or_composite_primary_key_are_never_overwritten_by_rowid() {
    let (codes, pairs) = (home_m1_table("codes"), home_m1_table("pairs"));
    let mut cluster = cluster_taking_writes(&manual_table()).await;
    cluster
        .write_retrying(&format!(
            "CREATE TABLE {codes} (code TEXT PRIMARY KEY, v TEXT)"
        ))
        .await;
    cluster
        .write_retrying(&format!(
            "CREATE TABLE {pairs} (a TEXT, b INT, v TEXT, PRIMARY KEY (a, b))"
        ))
        .await;
    cluster
        .write_retrying(&format!("INSERT INTO {codes} VALUES ('base', 'all')"))
        .await;
    cluster
        .write_retrying(&format!("INSERT INTO {pairs} VALUES ('x', 0, 'all')"))
        .await;
    cluster
        .until(
            "the masters converge",
            Duration::from_secs(30),
            async || {
                let d = cluster.digests(None);
                d.iter().all(|x| *x == d[0])
            },
        )
        .await;

    // m1 (owner and home) apart inserts under rowid 2; the new owner does too, other keys.
    cluster.net.partition(&["m1"], &["m2", "m3"]);
    let mut c = cluster.proxy().await;
    c.execute(&format!("INSERT INTO {codes} VALUES ('from-m1', 'm1')"))
        .await
        .unwrap();
    c.execute(&format!("INSERT INTO {pairs} VALUES ('x', 1, 'm1')"))
        .await
        .unwrap();
    drop(c);
    cluster.kill9(1);
    cluster
        .write_retrying(&format!("INSERT INTO {codes} VALUES ('from-new', 'new')"))
        .await;
    cluster
        .write_retrying(&format!("INSERT INTO {pairs} VALUES ('x', 2, 'new')"))
        .await;
    for m in 2..=3 {
        let rowids = texts(&cluster, m, &codes, "rowid, code").await;
        eprintln!("m{m} while m1 is away: {rowids:?}");
    }

    cluster.net.heal_all();
    cluster.spawn(0);
    let want_codes = [
        "\"base\"|\"all\"",
        "\"from-m1\"|\"m1\"",
        "\"from-new\"|\"new\"",
    ];
    let want_pairs = ["\"x\"|0|\"all\"", "\"x\"|1|\"m1\"", "\"x\"|2|\"new\""];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for m in 1..=3 {
            all &= texts(&cluster, m, &codes, "code, v").await == want_codes;
            all &= texts(&cluster, m, &pairs, "a, b, v").await == want_pairs;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            for m in 1..=3 {
                eprintln!(
                    "m{m}: {:?} {:?}",
                    texts(&cluster, m, &codes, "rowid, code, v").await,
                    texts(&cluster, m, &pairs, "rowid, a, b, v").await
                );
            }
            panic!("every master holds both sides' rows\n{}", cluster.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for table in [&codes, &pairs] {
        let d = cluster.digests(Some(table));
        assert!(d.iter().all(|x| x[1] == d[0][1]), "{table}: {d:?}");
    }
    let listed = cluster.admin(1, "/replication/conflicts");
    assert_eq!(listed["conflicts"], json!([]), "{listed:#}");
}

/// Schema changes are not judged as conflicts (README, *Conflicts*): the partitioned owner and
/// the master its table moved to both add the same column apart; once m1 is back, each one's
/// DDL no longer applies on the other, and each stream stops there with the error in
/// `/replication/status` → `peers` (`lastError`) — never silently. This test pins today's
/// behaviour: repairing the schema is left to a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_column_added_on_two_masters_apart_stops_their_streams_saying_why() {
    let table = home_m1_table("schemas");
    let mut cluster = cluster_taking_writes(&manual_table()).await;
    cluster
        .write_retrying(&format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)"
        ))
        .await;
    cluster
        .until(
            "the masters converge",
            Duration::from_secs(30),
            async || {
                let d = cluster.digests(None);
                d.iter().all(|x| *x == d[0])
            },
        )
        .await;
    cluster.net.partition(&["m1"], &["m2", "m3"]);
    let mut c = cluster.proxy().await;
    c.execute(&format!("ALTER TABLE {table} ADD COLUMN extra TEXT"))
        .await
        .unwrap();
    drop(c);
    cluster.kill9(1);
    cluster
        .write_retrying(&format!("ALTER TABLE {table} ADD COLUMN extra TEXT"))
        .await;
    let key = format!("DB:testdb|TABLE:{table}");
    let new_owner = dirkdb_core::rendezvous::owner(&key, &["m2", "m3"]).unwrap() + 2;
    cluster.net.heal_all();
    cluster.spawn(0);
    let error_from = |m: usize, origin: String| {
        let status = cluster.admin(m, "/replication/status");
        status["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|s| s["origin"] == origin.as_str()).cloned())
            .and_then(|s| s["lastError"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    cluster
        .until(
            "both streams stop on the other's DDL, saying why",
            Duration::from_secs(60),
            async || {
                error_from(new_owner, "m1".into()).contains("duplicate column name")
                    && error_from(1, format!("m{new_owner}")).contains("duplicate column name")
            },
        )
        .await;
    eprintln!(
        "m{new_owner} on m1's stream: {}",
        error_from(new_owner, "m1".into())
    );
}

/// A conflicting change held by the masters that are not the row's home is listed by them, with
/// the home named and the state saying it waits for it, while the home is down (`SHOW
/// CONFLICTS` through the proxy, `GET /replication/conflicts`); `RESOLVE CONFLICT` on it is
/// refused naming the home; once the home is back and resolves, it is listed resolved. m1, the
/// table's home, is cut off and writes a row, is killed, the table moves and the row is written
/// again; m1 comes back reaching none of the others (they still reach it), so they apply its
/// stream and hold its change, and m1 learns nothing; m1 is killed again and the holders list
/// what waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_held_for_a_home_that_is_down_is_listed_naming_it_until_the_home_resolves() {
    let table = home_m1_table("gardes");
    let mut cluster = cluster_taking_writes(&manual_table()).await;
    cluster
        .write_retrying(&format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)"
        ))
        .await;
    cluster
        .write_retrying(&format!("INSERT INTO {table} VALUES (1, 'a'), (2, 'a')"))
        .await;
    cluster
        .until(
            "the masters converge",
            Duration::from_secs(30),
            async || converged(&cluster),
        )
        .await;

    // m1 (home and owner) is cut off and writes row 1; it dies; the new owner writes row 1.
    cluster.net.partition(&["m1"], &["m2", "m3"]);
    let mut c = cluster.proxy().await;
    c.execute(&format!(
        "UPDATE {table} SET v = 'partitioned' WHERE id = 1"
    ))
    .await
    .unwrap();
    drop(c);
    cluster.kill9(1);
    cluster
        .write_retrying(&format!("UPDATE {table} SET v = 'moved' WHERE id = 1"))
        .await;

    // m1 comes back reaching neither other master, which both reach it: they apply its stream
    // and hold its change for it; it never sees theirs.
    cluster.net.heal_all();
    cluster.net.cut_links_from("m1", "m2");
    cluster.net.cut_links_from("m1", "m3");
    cluster.spawn(0);
    cluster
        .until(
            "m2 and m3 hold m1's change of row 1 for m1",
            Duration::from_secs(60),
            async || (2..=3).all(|m| !held_on(&cluster, m, &table).is_empty()),
        )
        .await;
    cluster.kill9(1);

    // With m1 down: listed by each holder, with the home named and the state saying why.
    for m in 2..=3 {
        let listed = held_on(&cluster, m, &table);
        assert_eq!(listed.len(), 1, "m{m}: {listed:#?}");
        let c = &listed[0];
        assert_eq!(
            (&c["master"], &c["home"], &c["state"]),
            (
                &json!(format!("m{m}")),
                &json!("m1"),
                &json!("held: waits for m1, the row's home")
            ),
            "m{m}: {c}"
        );
        assert_eq!(
            (&c["rowKey"], &c["remoteOrigin"]),
            (&json!(r#"{"rowid":1}"#), &json!("m1")),
            "m{m}: {c}"
        );
        let status = cluster.admin(m, "/replication/status");
        assert!(
            status["conflicts"]["heldForHome"].as_u64().unwrap_or(0) >= 1,
            "m{m}: {status}"
        );
    }
    let mut c = cluster.proxy().await;
    for show in ["SHOW CONFLICTS", "asehoy ny fifanoherana"] {
        let answer = c.query(show).await.unwrap();
        let held: Vec<_> = answer
            .rows
            .iter()
            .filter(|r| r[3] == table.as_str())
            .collect();
        assert_eq!(held.len(), 2, "{show}: {answer:?}");
        for r in &held {
            assert_eq!(r[13], "m1", "{show}: {answer:?}");
            assert_eq!(r[10], "held: waits for m1, the row's home", "{answer:?}");
        }
        assert!(
            answer
                .rows
                .iter()
                .any(|r| r[1] == "m1" && r[10].as_str().unwrap_or("").contains("m1 is down")),
            "{show}: {answer:?}"
        );
    }
    // Not resolvable where it is held: the error names the home.
    let id = format!("m2.{}", held_on(&cluster, 2, &table)[0]["id"]);
    let refused = c
        .execute(&format!("RESOLVE CONFLICT {id} KEEP LOCAL"))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Server(e)) if e.contains("held for m1, the row's home")),
        "{refused:?}"
    );
    drop(c);

    // m1 returns reaching everyone: it records the conflict as the row's home and resolves it
    // (SOURCE_WINS); its resolution, applied on m2 and m3, marks their held ones resolved.
    cluster.net.heal_all();
    cluster.spawn(0);
    cluster
        .until(
            "m2 and m3 list it resolved by m1",
            Duration::from_secs(60),
            async || {
                (2..=3).all(|m| {
                    held_on(&cluster, m, &table)
                        .iter()
                        .all(|c| c["state"] == "resolved" && c["resolution"] == "HOME")
                })
            },
        )
        .await;
    for m in 2..=3 {
        let c = &held_on(&cluster, m, &table)[0];
        assert!(c["resolvedSeq"].as_u64().unwrap_or(0) > 0, "m{m}: {c}");
    }
    cluster
        .until(
            "the masters converge",
            Duration::from_secs(60),
            async || converged(&cluster),
        )
        .await;
    for m in 1..=3 {
        assert_eq!(
            cluster.values(m, &table).await,
            rows(&[(1, "moved"), (2, "a")]),
            "m{m}"
        );
    }
}

/// The conflicts master `m` lists on `table`.
fn held_on(cluster: &Cluster, m: usize, table: &str) -> Vec<Value> {
    let listed = cluster.admin(m, "/replication/conflicts");
    listed["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["table"] == table)
        .collect()
}

/// True when the three masters have equal digests and positions.
fn converged(cluster: &Cluster) -> bool {
    let d = cluster.digests(None);
    d.iter().all(|x| *x == d[0])
}
