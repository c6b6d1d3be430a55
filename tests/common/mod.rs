//! Test harness: real `dirkdb` processes on ephemeral loopback ports, each with its own
//! `config.json` and data directory in a temporary folder.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dirkdb_client::Client;

/// `kill -9` of a child process (if still held), waited for.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The logs `<name>.log` in `dir` of the named processes, one after the other.
pub(crate) fn logs_of<'a>(dir: &Path, names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(format!("{name}.log")));
            format!("==== {name}\n{}", text.unwrap_or_default())
        })
        .collect()
}

/// The `dirkdb` binary built for these tests.
pub(crate) fn dirkdb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dirkdb")
}

/// A port nobody listens on right now, taken below the kernel's ephemeral range (32768 and up
/// by default): outgoing connections draw their local ports from that range, so one of them
/// could otherwise take the port of a node a test stopped and is about to restart.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 60) * 200;
    for _ in 0..12_000 {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let port = (20_000 + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000 on loopback")
}

/// A `dirkdb server` process with its own config and data directory.
pub(crate) struct ServerProcess {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub role: &'static str,
    pub limits: String,
}

impl ServerProcess {
    /// Starts a PRIMARY with default limits.
    pub(crate) fn start() -> ServerProcess {
        Self::start_with("PRIMARY", "{}")
    }

    /// Starts an instance with the given role and `limits` JSON object.
    pub(crate) fn start_with(role: &'static str, limits: &str) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = ServerProcess {
            dir,
            port: free_port(),
            child: None,
            role,
            limits: limits.to_string(),
        };
        server.write_config();
        server.spawn();
        server
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_config(&self) {
        let config = lone_server_config(
            self.role,
            self.port,
            &self.dir.path().join("data"),
            free_port(),
            &self.limits,
        );
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Starts the process and waits until it accepts connections.
    pub(crate) fn spawn(&mut self) {
        let child = Command::new(dirkdb_bin())
            .args(["server", "--config"])
            .arg(self.config_path())
            .args(["--instance", "t1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dirkdb server");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// `kill -9`.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub(crate) fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        None
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Peak resident memory of the process in KiB (Linux `VmHWM`).
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(&self.addr()).await.expect("connect")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The config of a lone instance `t1` (`role` PRIMARY or REPLICA, data in `data`, `limits` a
/// JSON object) on `port`. A topology always needs a primary: when `t1` is a replica, a second
/// instance `t2` on `other_port`, never started, plays it (its data beside `data`).
pub(crate) fn lone_server_config(
    role: &str,
    port: u16,
    data: &Path,
    other_port: u16,
    limits: &str,
) -> String {
    let other_role = if role == "PRIMARY" {
        "REPLICA"
    } else {
        "PRIMARY"
    };
    let other_data = data.with_file_name("other");
    format!(
        r#"{{ "instances": [
            {{ "id": "t1", "role": "{role}", "host": "127.0.0.1", "port": {port}, "dataDirectory": "{}" }},
            {{ "id": "t2", "role": "{other_role}", "host": "127.0.0.1", "port": {other_port}, "dataDirectory": "{}" }}
          ],
          "limits": {limits},
          "storage": {{ "synchronous": "NORMAL" }} }}"#,
        data.display(),
        other_data.display(),
    )
}

/// Sends a signal with the `kill` command (no libc binding needed in tests).
pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Waits up to 20 s for something to accept on `port`.
pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port} after 20 s");
}

/// Runs `dirkdb client` with arguments and optional standard input.
pub(crate) fn run_client(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(dirkdb_bin())
        .arg("client")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dirkdb client");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("client output")
}

/// Writes a file into a folder and returns its path.
pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
pub(crate) mod cache;
pub(crate) mod cluster;
pub(crate) mod etcd;
pub(crate) mod inproc;
pub(crate) mod network;
pub(crate) mod relay;
pub(crate) mod wait;

/// DirkDB's own three-master `config.json` (from the head of its repository: MULTI_PRIMARY,
/// DB_OBJECT, RENDEZVOUS, FILE replication) with `{…}` placeholders for the ports and folder.
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

/// [`DIRKDB_CONFIG`] filled in: free ports, data under `dir`.
pub(crate) struct DirkdbConfig {
    /// The file's text.
    pub text: String,
    /// The proxy's SQL and admin ports.
    pub lb: u16,
    pub lb_admin: u16,
    /// Each master's SQL and admin ports, m1 first.
    pub masters: Vec<(u16, u16)>,
}

/// DirkDB's three-master file with free ports (the cache's too) and data folders under `dir`.
pub(crate) fn dirkdb_config(dir: &Path) -> DirkdbConfig {
    let (lb, lb_admin) = (free_port(), free_port());
    let masters: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut text = DIRKDB_CONFIG
        .replace("{lb}", &lb.to_string())
        .replace("{lb_admin}", &lb_admin.to_string())
        .replace("{cache}", &free_port().to_string())
        .replace("{cache_admin}", &free_port().to_string())
        .replace("{dir}", &dir.display().to_string());
    for (i, (port, admin)) in masters.iter().enumerate() {
        text = text
            .replace(&format!("{{m{}}}", i + 1), &port.to_string())
            .replace(&format!("{{m{}_admin}}", i + 1), &admin.to_string());
    }
    DirkdbConfig {
        text,
        lb,
        lb_admin,
        masters,
    }
}
