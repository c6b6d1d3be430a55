//! The cache's figures for its issue, measured in one run against a running cluster:
//! cache-hit point-select throughput and latency with N clients versus the same queries straight
//! through the proxy (rounds alternate so machine noise falls on both), and the delay between a
//! write made by another client through the proxy and the moment the cache stops answering the
//! old value.
//!
//! ```text
//! cargo run --release -- cluster --config config.json &      # proxy :3949, cache :3951
//! cargo run --release --example cache_figures -- 127.0.0.1:3949 127.0.0.1:3951 [seconds] [clients]
//! ```

use std::time::{Duration, Instant};

use dirkdb_client::Client;

/// Distinct keys read (all fit in a cache of 200 entries).
const KEYS: u64 = 150;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let proxy = args.next().unwrap_or_else(|| "127.0.0.1:3949".into());
    let cache = args.next().unwrap_or_else(|| "127.0.0.1:3951".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let clients: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    prepare(&proxy).await?;
    let round = Duration::from_secs(seconds);
    let mut results: Vec<(&str, Vec<u64>)> = vec![("proxy", Vec::new()), ("cache", Vec::new())];
    for _ in 0..2 {
        for (name, addr) in [("proxy", &proxy), ("cache", &cache)] {
            let latencies = point_selects(addr, clients, round).await?;
            if let Some(slot) = results.iter_mut().find(|(n, _)| *n == name) {
                slot.1.extend(latencies);
            }
        }
    }
    println!("{clients} clients, point SELECT over {KEYS} keys, 2 × {seconds} s rounds each");
    println!(
        "{:<7} {:>10} {:>9} {:>9} {:>9}",
        "via", "ops/s", "p50 µs", "p99 µs", "max µs"
    );
    let mut rates = Vec::new();
    for (name, mut all) in results {
        all.sort_unstable();
        let rate = all.len() as f64 / (2.0 * round.as_secs_f64());
        rates.push(rate);
        println!(
            "{name:<7} {rate:>10.0} {:>9} {:>9} {:>9}",
            pct(&all, 0.5),
            pct(&all, 0.99),
            all.last().copied().unwrap_or(0)
        );
    }
    println!("cache-hit ÷ proxy: {:.2}", rates[1] / rates[0].max(1.0));
    invalidation_delay(&proxy, &cache).await
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0)
}

async fn prepare(proxy: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Client::connect(proxy).await?;
    c.execute("DROP DATABASE IF EXISTS cachefig").await?;
    c.execute("CREATE DATABASE cachefig").await?;
    c.execute("USE cachefig").await?;
    c.execute("CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT)")
        .await?;
    c.execute(&format!(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {KEYS}) \
         INSERT INTO kv SELECT i, printf('value-%d', i) FROM s"
    ))
    .await?;
    Ok(())
}

async fn point_selects(
    addr: &str,
    clients: usize,
    duration: Duration,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let mut c = Client::connect(addr).await?;
        c.execute("USE cachefig").await?;
        for id in 1..=KEYS {
            c.execute(&format!("SELECT v FROM kv WHERE id = {id}"))
                .await?;
        }
        tasks.push((worker, c));
    }
    let deadline = Instant::now() + duration;
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|(worker, mut c)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = worker as u64 * 7919;
                while Instant::now() < deadline {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let sql = format!("SELECT v FROM kv WHERE id = {}", (i >> 33) % KEYS + 1);
                    let started = Instant::now();
                    if c.execute(&sql).await.is_err() {
                        break;
                    }
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await?);
    }
    Ok(all)
}

/// Another client updates a row through the proxy; a reader of the cache polls until it sees
/// the new value. Reports the delay from the write's acknowledgement.
async fn invalidation_delay(proxy: &str, cache: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut writer = Client::connect(proxy).await?;
    writer.execute("USE cachefig").await?;
    let mut reader = Client::connect(cache).await?;
    reader.execute("USE cachefig").await?;
    let mut delays = Vec::new();
    let mut polls = 0u64;
    for round in 0..200 {
        let read = "SELECT v FROM kv WHERE id = 1";
        reader.execute(read).await?;
        writer
            .execute(&format!("UPDATE kv SET v = 'round-{round}' WHERE id = 1"))
            .await?;
        let written = Instant::now();
        loop {
            polls += 1;
            let rows = reader.query(read).await?.rows;
            if rows[0][0].as_str() == Some(format!("round-{round}").as_str()) {
                break;
            }
            if written.elapsed() > Duration::from_secs(5) {
                return Err("the cache kept the old value for 5 s".into());
            }
        }
        delays.push(written.elapsed().as_micros() as u64);
    }
    delays.sort_unstable();
    println!(
        "write by another client (through the proxy) → new value through the cache: \
         p50 {} µs, p99 {} µs, max {} µs ({} polls for 200 writes)",
        pct(&delays, 0.5),
        pct(&delays, 0.99),
        delays.last().copied().unwrap_or(0),
        polls
    );
    Ok(())
}
