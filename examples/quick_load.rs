//! A small load generator for the storage server, until `dirkdb bench` exists (issue #7).
//!
//! ```text
//! cargo run --release --example quick_load -- 127.0.0.1:3948 [seconds]
//! ```
//!
//! Prepares a database `quickload` with 10,000 rows, then runs, one after the other, point
//! SELECTs and single-row INSERTs with 1 and with 16 connections, and prints throughput and
//! latency percentiles for each.

use std::time::{Duration, Instant};

use dirkdb_client::Client;

#[derive(Clone, Copy)]
enum Workload {
    PointSelect,
    Insert,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3948".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    prepare(&addr).await?;
    println!(
        "{:<14} {:>5} {:>10} {:>9} {:>9} {:>9}",
        "workload", "conns", "ops/s", "p50 µs", "p99 µs", "max µs"
    );
    for workload in [Workload::PointSelect, Workload::Insert] {
        for conns in [1, 16] {
            run(&addr, workload, conns, Duration::from_secs(seconds)).await?;
        }
    }
    Ok(())
}

async fn prepare(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Client::connect(addr).await?;
    c.execute("DROP DATABASE IF EXISTS quickload").await?;
    c.execute("CREATE DATABASE quickload").await?;
    c.execute("USE quickload").await?;
    c.execute("CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT, n INT)")
        .await?;
    c.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 10000) \
         INSERT INTO kv SELECT i, printf('value-%d', i), i FROM s",
    )
    .await?;
    Ok(())
}

async fn run(
    addr: &str,
    workload: Workload,
    conns: usize,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..conns {
        let mut c = Client::connect(addr).await?;
        c.execute("USE quickload").await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker as u64;
            while Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let sql = match workload {
                    Workload::PointSelect => {
                        format!("SELECT v FROM kv WHERE id = {}", i % 10_000 + 1)
                    }
                    Workload::Insert => {
                        format!("INSERT INTO kv(v, n) VALUES ('w{worker}', {})", i % 1000)
                    }
                };
                let started = Instant::now();
                if c.execute(&sql).await.is_err() {
                    break;
                }
                latencies.push(started.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let name = match workload {
        Workload::PointSelect => "point-select",
        Workload::Insert => "insert",
    };
    println!(
        "{:<14} {:>5} {:>10.0} {:>9} {:>9} {:>9}",
        name,
        conns,
        all.len() as f64 / duration.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}
