//! Real etcd for tests: Debian's `etcd-server` (3.4, `/usr/bin/etcd`; `.ci/run` installs it)
//! as a one-node or three-node cluster on free loopback ports, each member with its own data
//! directory in a temporary folder and its log beside it. Members can be killed (`kill -9`),
//! stopped and started again on the same ports and data; everything is killed on drop.
//!
//! Heartbeat 50 ms and election timeout 500 ms keep leader elections short on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_for_port};

/// One member.
pub(crate) struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
}

/// An etcd cluster of one or three members.
pub(crate) struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    token: String,
}

/// The etcd binary (`DIRKDB_ETCD` overrides it).
pub(crate) fn etcd_bin() -> String {
    std::env::var("DIRKDB_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into())
}

impl Etcd {
    /// One member.
    pub(crate) fn single() -> Etcd {
        Etcd::start(1)
    }

    /// Three members.
    pub(crate) fn three() -> Etcd {
        Etcd::start(3)
    }

    fn start(size: usize) -> Etcd {
        assert!(
            std::path::Path::new(&etcd_bin()).exists(),
            "{} is missing: `apt-get install etcd-server` (3.4), or set DIRKDB_ETCD",
            etcd_bin()
        );
        let members = (0..size)
            .map(|i| Member {
                name: format!("e{}", i + 1),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("tempdir"),
            members,
            token: format!("dirkdb-test-{}", std::process::id()),
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    /// `host:port` of every member, for `failover.coordinator.endpoints`.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a JSON array.
    pub(crate) fn endpoints_json(&self) -> String {
        serde_json::to_string(&self.endpoints()).expect("json")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// The log of member `i`.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    /// Starts member `i` (again, on its ports and data) and waits for its client port.
    pub(crate) fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let port = m.client_port;
        self.members[i].child = Some(child);
        wait_for_port(port);
    }

    /// `kill -9` member `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub(crate) fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member again and waits until the cluster answers.
    pub(crate) fn restart_stopped(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy(Duration::from_secs(20));
    }

    /// Member `i`'s `/health` (etcd's HTTP endpoint on the client port): true when it has a
    /// leader and answers.
    pub(crate) fn healthy(&self, i: usize) -> bool {
        let v = http_try(self.members[i].client_port, "GET", "/health", "");
        v.is_some_and(|v| v["health"] == "true")
    }

    /// Waits until every running member is healthy.
    pub(crate) fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some())
                .collect();
            if running.iter().all(|&i| self.healthy(i)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {timeout:?}:\n{}",
                self.log(running[0])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the member that is raft leader (from `/v3/maintenance/status`, the gRPC
    /// gateway), if one is known.
    pub(crate) fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let status = http_try(m.client_port, "POST", "/v3/maintenance/status", "{}")?;
            let member = status["header"]["member_id"].as_str().map(str::to_string);
            if member.is_some() && status["leader"].as_str().map(str::to_string) == member {
                return Some(i);
            }
        }
        None
    }

    /// The value stored at `key` (through the gRPC gateway's JSON, base64 keys and values),
    /// with its version (how many times it was written since it was created).
    pub(crate) fn get(&self, key: &str) -> Option<(String, i64)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Some(answer) = http_try(m.client_port, "POST", "/v3/kv/range", &body) else {
                continue;
            };
            let kv = answer["kvs"].get(0)?;
            let value = kv["value"].as_str().and_then(|v| b64.decode(v).ok())?;
            let version = kv["version"].as_str().and_then(|r| r.parse().ok())?;
            return Some((String::from_utf8_lossy(&value).to_string(), version));
        }
        None
    }
}

/// A small HTTP/1.1 request to etcd's client port (its `/health` and JSON gateway); `None` when
/// it does not answer within a second.
pub(crate) fn http_try(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

impl Etcd {
    /// Writes `value` at `key` (as an operator or a crashed writer would), through any member.
    pub(crate) fn put(&self, key: &str, value: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode(key), "value": b64.encode(value) });
        let done =
            self.members.iter().filter(|m| m.child.is_some()).any(|m| {
                http_try(m.client_port, "POST", "/v3/kv/put", &body.to_string()).is_some()
            });
        assert!(done, "no etcd member took the put");
    }
}

impl Etcd {
    /// Deletes `key` (as an operator would), through any member.
    pub(crate) fn delete(&self, key: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
        let done = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .any(|m| http_try(m.client_port, "POST", "/v3/kv/deleterange", &body).is_some());
        assert!(done, "no etcd member took the delete");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}
