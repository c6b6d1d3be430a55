//! Replication figures over real TCP, until `dirkdb bench --measure-lag` exists (issue #7).
//!
//! ```text
//! replication_figures lag    PRIMARY REPLICA RATE SECONDS   # commit-to-visible lag at a paced write rate
//! replication_figures writes PRIMARY CONNS SECONDS          # single-row INSERT throughput
//! ```
//!
//! Lag: writers insert rows with `INSERT … RETURNING id` at the given total rate; the rowid
//! follows commit order, and the replica applies in commit order, so a poller reading
//! `max(id)` on the replica in a loop knows when each row became visible there. A row's lag is
//! the first poll that saw it minus the moment its INSERT was acknowledged to the writer. The
//! poll round trip (~0.1 ms on loopback) bounds the resolution.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dirkdb_client::Client;
use hdrhistogram::Histogram;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "lag" => lag(&arg(1), &arg(2), arg(3).parse()?, arg(4).parse()?).await,
        "writes" => writes(&arg(1), arg(2).parse()?, arg(3).parse()?).await,
        _ => Err("usage: replication_figures lag PRIMARY REPLICA RATE SECONDS | writes PRIMARY CONNS SECONDS".into()),
    }
}

async fn prepare(primary: &str, db: &str) -> Result<(), Error> {
    let mut c = Client::connect(primary).await?;
    c.execute(&format!("DROP DATABASE IF EXISTS {db}")).await?;
    c.execute(&format!("CREATE DATABASE {db}")).await?;
    c.execute(&format!("USE {db}")).await?;
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .await?;
    Ok(())
}

async fn lag(primary: &str, replica: &str, rate: u64, seconds: u64) -> Result<(), Error> {
    prepare(primary, "lagbench").await?;
    let mut poller = Client::connect(replica).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while poller.execute("USE lagbench").await.is_err()
        || poller.query("SELECT max(id) FROM t").await.is_err()
    {
        if Instant::now() > deadline {
            return Err("the replica never got the table".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writers = rate.div_ceil(1500).max(1);
    let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (addr, acks) = (primary.to_string(), acks.clone());
        let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await?;
            c.execute("USE lagbench").await?;
            let mut next = start + interval.mul_f64(w as f64 / writers as f64);
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let rs = c
                    .query("INSERT INTO t(v) VALUES ('x') RETURNING id")
                    .await?;
                let acked = Instant::now();
                if let Some(id) = rs.rows.first().and_then(|r| r[0].as_i64()) {
                    acks.lock().map_err(|_| "poisoned")?.push((id, acked));
                }
                next += interval;
            }
            Ok::<(), Error>(())
        }));
    }
    // Poll the replica until every acknowledged row is visible there.
    let mut polls: Vec<(i64, Instant)> = Vec::new();
    let writers_done = || Instant::now() > end + Duration::from_millis(200);
    loop {
        let rs = poller.query("SELECT coalesce(max(id), 0) FROM t").await?;
        let seen = rs.rows[0][0].as_i64().unwrap_or(0);
        polls.push((seen, Instant::now()));
        let newest = acks
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .map(|a| a.0)
            .max()
            .unwrap_or(0);
        if writers_done() && seen >= newest {
            break;
        }
        if Instant::now() > end + Duration::from_secs(30) {
            return Err("the replica did not catch up within 30 s".into());
        }
    }
    for t in tasks {
        t.await??;
    }
    let acks = acks.lock().map_err(|_| "poisoned")?.clone();
    let mut hist = Histogram::<u64>::new(3)?;
    for (id, acked) in &acks {
        let first = polls.partition_point(|(seen, _)| seen < id);
        if let Some((_, at)) = polls.get(first) {
            hist.record(at.saturating_duration_since(*acked).as_micros() as u64)?;
        }
    }
    let achieved = acks.len() as f64 / seconds as f64;
    println!(
        "lag rate={rate}/s achieved={achieved:.0}/s rows={} p50={:.2}ms p99={:.2}ms max={:.2}ms (poll round trips: {})",
        acks.len(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        polls.len()
    );
    Ok(())
}

async fn writes(primary: &str, conns: usize, seconds: u64) -> Result<(), Error> {
    prepare(primary, "writebench").await?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = primary.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await?;
            c.execute("USE writebench").await?;
            let mut hist = Histogram::<u64>::new(3)?;
            while Instant::now() < end {
                let t = Instant::now();
                c.execute("INSERT INTO t(v) VALUES ('some value')").await?;
                hist.record(t.elapsed().as_micros() as u64)?;
            }
            Ok::<Histogram<u64>, Error>(hist)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    println!(
        "writes conns={conns} ops/s={:.0} p50={:.2}ms p99={:.2}ms",
        all.len() as f64 / seconds as f64,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}
