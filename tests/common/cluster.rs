//! A replicated topology of real `dirkdb server` processes on loopback: m1 (PRIMARY) and
//! replicas m2, m3, … with their SQL and admin ports, one `config.json`, one temp folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dirkdb_client::Client;
use serde_json::Value;

use super::{dirkdb_bin, free_port, wait_for_port};

/// One instance of the cluster.
pub(crate) struct Node {
    pub id: String,
    pub port: u16,
    pub admin: u16,
    pub child: Option<Child>,
}

/// The cluster: its folder, config and nodes.
pub(crate) struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// The proxy's SQL and admin ports, and its process once started.
    pub proxy: Node,
}

impl Cluster {
    /// Writes a config with `replicas` replicas and the given `replication.oplog` JSON, and
    /// starts every node.
    pub(crate) fn start(replicas: usize, oplog: &str) -> Cluster {
        let cluster = Cluster::configure(replicas, oplog);
        let mut cluster = cluster;
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        cluster
    }

    /// Writes a config with a `routing` section, starts every node, then the proxy.
    pub(crate) fn start_with_proxy(replicas: usize, oplog: &str, routing: &str) -> Cluster {
        let mut cluster = Cluster::configure_with(replicas, oplog, routing);
        cluster.spawn_all_with_proxy();
        cluster
    }

    /// Starts every node, then the proxy (for a config a test adjusted first).
    pub(crate) fn spawn_all_with_proxy(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        self.spawn_proxy();
    }

    /// One primary and one replica that applies every batch `apply_delay_ms` late, behind a
    /// proxy reading only from replicas with `consistency` and a lag limit of 60 s: the setup
    /// for showing what a lagging replica does to reads.
    pub(crate) fn start_with_lagging_replica(consistency: &str, apply_delay_ms: u64) -> Cluster {
        let routing = format!(
            r#"{{ "reads": {{ "includeRoles": ["REPLICA"], "consistency": "{consistency}", "maxReplicationLagMs": 60000 }} }}"#
        );
        let mut cluster = Cluster::configure_with(1, r#"{ "maxEntries": 1000000 }"#, &routing);
        cluster.spawn(0);
        let delay = apply_delay_ms.to_string();
        cluster.spawn_with_env(1, &[("DIRKDB_APPLY_DELAY_MS", delay.as_str())]);
        cluster.spawn_proxy();
        cluster
    }

    /// Writes the config without starting anything.
    pub(crate) fn configure(replicas: usize, oplog: &str) -> Cluster {
        Cluster::configure_with(replicas, oplog, "{}")
    }

    /// Writes the config with a `routing` section, without starting anything.
    pub(crate) fn configure_with(replicas: usize, oplog: &str, routing: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = (0..=replicas)
            .map(|i| Node {
                id: format!("m{}", i + 1),
                port: free_port(),
                admin: free_port(),
                child: None,
            })
            .collect();
        let instances: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    r#"{{ "id": "{}", "role": "{}", "host": "127.0.0.1", "port": {}, "adminPort": {}, "dataDirectory": "{}" }}"#,
                    n.id,
                    if i == 0 { "PRIMARY" } else { "REPLICA" },
                    n.port,
                    n.admin,
                    dir.path().join(&n.id).display()
                )
            })
            .collect();
        let proxy = Node {
            id: "proxy".into(),
            port: free_port(),
            admin: free_port(),
            child: None,
        };
        let config = format!(
            r#"{{ "instances": [ {} ],
                 "loadBalancer": {{ "listenHost": "127.0.0.1", "listenPort": {}, "adminPort": {}, "healthIntervalMillis": 50 }},
                 "routing": {routing},
                 "replication": {{ "type": "OPLOG", "heartbeatMillis": 100, "oplog": {oplog} }},
                 "storage": {{ "synchronous": "NORMAL" }} }}"#,
            instances.join(",\n"),
            proxy.port,
            proxy.admin
        );
        std::fs::write(dir.path().join("config.json"), config).expect("write config");
        Cluster { dir, nodes, proxy }
    }

    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].id)
    }

    /// Starts node `i` and waits for its SQL port.
    pub(crate) fn spawn(&mut self, i: usize) {
        self.spawn_with_env(i, &[]);
    }

    /// Starts node `i` with extra environment variables.
    pub(crate) fn spawn_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", self.nodes[i].id)))
            .expect("log file");
        let child = Command::new(dirkdb_bin())
            .args(["server", "--config"])
            .arg(self.dir.path().join("config.json"))
            .args(["--instance", &self.nodes[i].id])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dirkdb server");
        self.nodes[i].child = Some(child);
        wait_for_port(self.nodes[i].port);
        wait_for_port(self.nodes[i].admin);
    }

    /// Starts the proxy and waits for its ports.
    pub(crate) fn spawn_proxy(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("proxy.log")).expect("log file");
        let child = Command::new(dirkdb_bin())
            .args(["proxy", "--config"])
            .arg(self.dir.path().join("config.json"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dirkdb proxy");
        self.proxy.child = Some(child);
        wait_for_port(self.proxy.port);
        wait_for_port(self.proxy.admin);
    }

    /// A client of the proxy.
    pub(crate) async fn proxy_client(&self) -> Client {
        Client::connect(&format!("127.0.0.1:{}", self.proxy.port))
            .await
            .expect("connect to the proxy")
    }

    /// The proxy's `/cluster/status`.
    pub(crate) fn proxy_status(&self) -> Value {
        http(self.proxy.admin, "GET", "/cluster/status", "")
    }

    /// `kill -9` node `i`.
    pub(crate) fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `i`, as `kill -<signal>` does.
    pub(crate) fn signal(&self, i: usize, signal: &str) {
        let Some(child) = &self.nodes[i].child else {
            return;
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} of {}", self.nodes[i].id);
    }

    /// Kills the proxy (`kill -9`): a node promoted by hand afterwards is not fenced by the
    /// proxy's health checker as a stray primary.
    pub(crate) fn kill_proxy(&mut self) {
        if let Some(mut child) = self.proxy.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The log of node `i` so far.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].id)))
            .unwrap_or_default()
    }

    pub(crate) fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    pub(crate) async fn client(&self, i: usize) -> Client {
        Client::connect(&self.addr(i)).await.expect("connect")
    }

    pub(crate) fn get(&self, i: usize, path: &str) -> Value {
        http(self.nodes[i].admin, "GET", path, "")
    }

    pub(crate) fn post(&self, i: usize, path: &str, body: &str) -> Value {
        http(self.nodes[i].admin, "POST", path, body)
    }

    pub(crate) fn committed(&self, i: usize) -> u64 {
        self.get(i, "/replication/status")["committedSequence"]
            .as_u64()
            .unwrap_or(0)
    }

    pub(crate) fn follower(&self, i: usize) -> Value {
        self.get(i, "/replication/status")["following"].clone()
    }

    /// Waits until every running node stands at the primary `p`'s committed sequence, then
    /// returns their checksums (which the caller compares).
    pub(crate) fn wait_converged(&self, p: usize, timeout: Duration) -> Vec<Value> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        self.wait_converged_on(p, &running, timeout)
    }

    /// Like `wait_converged`, for the given nodes (which may run outside this harness).
    pub(crate) fn wait_converged_on(
        &self,
        p: usize,
        running: &[usize],
        timeout: Duration,
    ) -> Vec<Value> {
        let running = running.to_vec();
        let deadline = Instant::now() + timeout;
        loop {
            let target = self.committed(p);
            if running.iter().all(|&i| self.committed(i) == target) {
                let sums: Vec<Value> = running
                    .iter()
                    .map(|&i| self.get(i, "/replication/checksum")["databases"].clone())
                    .collect();
                if self.committed(p) == target {
                    return sums;
                }
            }
            if Instant::now() > deadline {
                let states: Vec<(String, u64)> = running
                    .iter()
                    .map(|&i| (self.nodes[i].id.clone(), self.committed(i)))
                    .collect();
                panic!(
                    "no convergence on {target} within {timeout:?}: {states:?}\n{}",
                    self.log(1)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that every running node holds the same data as the primary `p`.
    pub(crate) fn assert_same_data(&self, p: usize) {
        let sums = self.wait_converged(p, Duration::from_secs(60));
        Self::assert_equal_sums(&sums);
    }

    /// Asserts that the given nodes hold the same data as the primary `p`.
    pub(crate) fn assert_same_data_on(&self, p: usize, nodes: &[usize]) {
        Self::assert_equal_sums(&self.wait_converged_on(p, nodes, Duration::from_secs(60)));
    }

    fn assert_equal_sums(sums: &[Value]) {
        for (i, s) in sums.iter().enumerate() {
            assert_eq!(s, &sums[0], "node #{i} differs from the primary: {sums:?}");
        }
        assert!(
            sums[0].as_object().is_some_and(|m| !m.is_empty()),
            "no database at all"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if let Some(mut child) = self.proxy.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 request to the admin API on loopback; returns the JSON body.
pub(crate) fn http(port: u16, method: &str, path: &str, body: &str) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))
}
