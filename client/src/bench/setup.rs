//! `--init`: recreates the benchmark database and fills table `bench`.
//!
//! Rows are made by the server itself, `ROWS_PER_BATCH` per statement, with a recursive CTE, so
//! initializing sends a handful of short statements whatever the scale. The index on `k` is
//! built after the rows are in, which is faster than maintaining it row by row.

use std::time::Instant;

use crate::Client;
use dirkdb_core::security::Credentials;

use super::args::ROWS_PER_SCALE;
use super::progress;
use super::BenchError;

/// Rows inserted by one statement.
pub const ROWS_PER_BATCH: u64 = ROWS_PER_SCALE;

/// The schema of table `bench`.
pub const CREATE_TABLE: &str =
    "CREATE TABLE bench(id INTEGER PRIMARY KEY, k INTEGER, v TEXT, pad TEXT)";

/// The index on `k`.
pub const CREATE_INDEX: &str = "CREATE INDEX bench_k ON bench(k)";

/// Recreates `database` on `addr` with `scale` × 10,000 rows in table `bench`.
pub async fn init(
    addr: &str,
    credentials: Option<&Credentials>,
    database: &str,
    scale: u64,
    quiet: bool,
) -> Result<(), BenchError> {
    let started = Instant::now();
    let mut client = Client::connect_as(addr, credentials)
        .await
        .map_err(|e| BenchError::client("connecting", e))?;
    let rows = scale.saturating_mul(ROWS_PER_SCALE);
    let statements = statements(database, rows);
    let bar = progress::bar(statements.len() as u64, quiet);
    bar.set_message(format!("initializing {database}"));
    for sql in &statements {
        let result = client.execute(sql).await;
        result.map_err(|e| {
            BenchError::client(&format!("--init, running `{}`", first_line(sql)), e)
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "initialized {database}: {rows} rows in table bench in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Every statement of `--init`, in order.
fn statements(database: &str, rows: u64) -> Vec<String> {
    let mut statements = vec![
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
        format!("USE {database}"),
        CREATE_TABLE.to_string(),
    ];
    statements.extend(batches(rows));
    statements.push(CREATE_INDEX.to_string());
    statements
}

/// The INSERT statements that fill ids 1..=rows.
pub fn batches(rows: u64) -> Vec<String> {
    (0..rows.div_ceil(ROWS_PER_BATCH))
        .map(|b| {
            let first = b * ROWS_PER_BATCH + 1;
            let last = ((b + 1) * ROWS_PER_BATCH).min(rows);
            batch(first, last, rows)
        })
        .collect()
}

/// One INSERT of ids `first..=last`; `k` is uniform in 1..=rows, `pad` 60 random characters.
fn batch(first: u64, last: u64, rows: u64) -> String {
    format!(
        "INSERT INTO bench(id, k, v, pad) \
         WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last}) \
         SELECT i, abs(random() % {rows}) + 1, printf('value-%d', i), hex(randomblob(30)) FROM s"
    )
}

fn first_line(sql: &str) -> &str {
    let line = sql.lines().next().unwrap_or(sql);
    line.get(..60).unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_id_once() {
        let b = batches(25_000);
        assert_eq!(b.len(), 3);
        assert!(b[0].contains("SELECT 1 UNION") && b[0].contains("i < 10000)"));
        assert!(b[2].contains("SELECT 20001 UNION") && b[2].contains("i < 25000)"));
    }
}
