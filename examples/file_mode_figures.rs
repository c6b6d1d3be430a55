//! FILE mode's figures against a running cluster: the time from a write on the primary to its
//! visibility on a secondary, and the bytes sent per small write to a database of `MB`
//! megabytes. Run it once with `"pageDeltas": true` and once with `false` (bench/file_mode.sh
//! does both).
//!
//! ```text
//! cargo run --release --example file_mode_figures -- <primary sql> <primary admin> <secondary sql> [MB] [writes]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dirkdb_client::Client;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let primary = args.next().unwrap_or_else(|| "127.0.0.1:3948".into());
    let admin = args.next().unwrap_or_else(|| "127.0.0.1:4948".into());
    let secondary = args.next().unwrap_or_else(|| "127.0.0.1:3950".into());
    let mb: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let writes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut p = Client::connect(&primary).await?;
    p.execute("DROP DATABASE IF EXISTS filefig").await?;
    p.execute("CREATE DATABASE filefig").await?;
    p.execute("USE filefig").await?;
    p.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, pad TEXT)")
        .await?;
    let rows = mb * 1000;
    p.execute(&format!(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
         INSERT INTO big(pad) SELECT randomblob(500) || printf('%0480d', i) FROM s"
    ))
    .await?;
    let mut s = Client::connect(&secondary).await?;
    let started = Instant::now();
    wait_rows(
        &mut s,
        "SELECT count(*) FROM big",
        rows as i64,
        Duration::from_secs(600),
    )
    .await?;
    println!(
        "initial copy of ~{mb} MB visible on the secondary after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = bytes_sent(&admin)?;
    let mut latencies = Vec::new();
    for i in 0..writes {
        let id = 1 + (i as u64 * 7919) % rows;
        p.execute(&format!(
            "UPDATE big SET pad = 'changed {i}' WHERE id = {id}"
        ))
        .await?;
        let written = Instant::now();
        wait_value(&mut s, id, &format!("changed {i}")).await?;
        latencies.push(written.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = bytes_sent(&admin)? - before;
    latencies.sort();
    println!(
        "{writes} single-row UPDATEs, one at a time: write → visible on the secondary p50 {:.0} ms, max {:.0} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "bytes sent per write: {} ({} in all)",
        sent / writes as u64,
        sent
    );
    Ok(())
}

async fn wait_rows(
    c: &mut Client,
    sql: &str,
    want: i64,
    within: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        if c.execute("USE filefig").await.is_ok() {
            if let Ok(rs) = c.query(sql).await {
                if rs.rows[0][0].as_i64() == Some(want) {
                    return Ok(());
                }
            }
        }
        if started.elapsed() > within {
            return Err(format!("`{sql}` never answered {want}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_value(c: &mut Client, id: u64, want: &str) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        let rs = c
            .query(&format!("SELECT pad FROM big WHERE id = {id}"))
            .await?;
        if rs.rows[0][0].as_str() == Some(want) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("a write never reached the secondary".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Bytes the primary sent for `filefig` to its secondaries.
fn bytes_sent(admin: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(admin)?;
    write!(
        stream,
        "GET /replication/replicas HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    let status: Value = serde_json::from_str(body)?;
    Ok(status["replicas"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|r| r["files"]["filefig"]["bytesSent"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0))
}
