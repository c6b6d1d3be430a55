//! A `dirkdb cache` process in front of a test cluster's proxy, plus helpers to read raw
//! response bytes (to compare what the cache sends with what the proxy sends).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use dirkdb_client::Client;
use dirkdb_core::frame::{Frame, FrameDecoder};
use serde_json::Value;

use super::cluster::{http, Cluster};
use super::{dirkdb_bin, free_port, wait_for_port};

/// A running cache.
pub(crate) struct CacheProcess {
    pub port: u16,
    pub admin: u16,
    pub upstream_port: u16,
    pub child: Option<Child>,
    pub log: std::path::PathBuf,
    args: Vec<String>,
}

impl CacheProcess {
    /// Starts `dirkdb cache 127.0.0.1 <proxy> <port> <ttl_ms> <max_entries> [extra…]` in front
    /// of the cluster's proxy.
    pub(crate) fn start(
        cluster: &Cluster,
        ttl_ms: u64,
        max_entries: u64,
        extra: &[&str],
    ) -> CacheProcess {
        Self::start_in_front_of(cluster, cluster.proxy.port, ttl_ms, max_entries, extra)
    }

    /// Like [`CacheProcess::start`], its upstream at `upstream_port` (a relay in front of the
    /// cluster's proxy, say).
    pub(crate) fn start_in_front_of(
        cluster: &Cluster,
        upstream_port: u16,
        ttl_ms: u64,
        max_entries: u64,
        extra: &[&str],
    ) -> CacheProcess {
        let mut cache = CacheProcess {
            port: free_port(),
            admin: free_port(),
            upstream_port,
            child: None,
            log: cluster.dir.path().join("cache.log"),
            args: Vec::new(),
        };
        cache.args = vec![
            "cache".into(),
            "127.0.0.1".into(),
            cache.upstream_port.to_string(),
            cache.port.to_string(),
            ttl_ms.to_string(),
            max_entries.to_string(),
            "--admin-port".into(),
            cache.admin.to_string(),
            "--config".into(),
            cluster
                .dir
                .path()
                .join("no-config.json")
                .display()
                .to_string(),
        ];
        cache.args.extend(extra.iter().map(|s| s.to_string()));
        cache.spawn();
        cache
    }

    /// Starts the process (again) with the same arguments.
    pub(crate) fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("cache log");
        let child = Command::new(dirkdb_bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dirkdb cache");
        self.child = Some(child);
        wait_for_port(self.port);
        wait_for_port(self.admin);
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(&self.addr())
            .await
            .expect("connect to the cache")
    }

    /// `GET /stats`.
    pub(crate) fn stats(&self) -> Value {
        http(self.admin, "GET", "/stats", "")
    }

    /// One counter of `/stats`.
    pub(crate) fn stat(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap_or(0)
    }

    /// Waits until the cache follows the primary's change feed.
    pub(crate) fn wait_for_feed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.stat("feed_connected") != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never followed the change feed: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain socket that sends statements and returns each response's exact bytes.
pub(crate) struct RawConnection {
    stream: TcpStream,
}

impl RawConnection {
    pub(crate) fn connect(port: u16) -> RawConnection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        RawConnection { stream }
    }

    /// Sends `statement;` and returns the bytes of its whole response.
    pub(crate) fn exchange(&mut self, statement: &str) -> Vec<u8> {
        self.stream
            .write_all(format!("{statement};\n").as_bytes())
            .expect("send");
        let mut raw = Vec::new();
        let mut pending = BytesMut::new();
        let mut decoder = FrameDecoder::new(1 << 30);
        let mut chunk = [0u8; 65536];
        loop {
            while let Some(frame) = decoder.decode(&mut pending).expect("frames") {
                if matches!(frame, Frame::Message(_)) {
                    assert!(pending.is_empty(), "bytes after the end of a response");
                    return raw;
                }
            }
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed mid-response");
            raw.extend_from_slice(&chunk[..n]);
            pending.extend_from_slice(&chunk[..n]);
        }
    }
}
