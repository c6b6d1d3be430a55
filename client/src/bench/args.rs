//! The command line of `dirkdb bench` and the checks clap cannot express.

use std::path::PathBuf;
use std::time::Duration;

use clap::value_parser;

/// Seconds measured when neither `-d` nor `-n` is given.
pub const DEFAULT_SECONDS: u64 = 10;

/// Rows per `--scale` unit.
pub const ROWS_PER_SCALE: u64 = 10_000;

const AFTER_HELP: &str = "\
Workloads (table bench(id INTEGER PRIMARY KEY, k INTEGER, v TEXT, pad TEXT), made by --init):
  point-select   SELECT id, k, v, pad FROM bench WHERE id = :id
  range-select   SELECT id, v FROM bench WHERE id BETWEEN :id AND :id+99
  insert         INSERT INTO bench(k, v, pad) VALUES (:n, :s, :s)
  update         UPDATE bench SET k = :n, v = :s WHERE id = :id
  mixed          point-select with probability --read-ratio, update otherwise
  custom         statements of --sql-file

--sql-file: when the file contains a `;` outside quotes and comments, statements end at `;` and
may span lines; otherwise each non-blank line is one statement (lines starting with -- are
comments). Each operation runs one statement drawn at random (repeat a line to weight it).
Parameters, replaced outside string literals before each execution (every occurrence in one
statement gets the same value):
  :id   random integer 1..=rows (rows = --scale x 10000)
  :n    random integer 0..=999
  :s    a random 8-letter string literal, quotes included, e.g. 'qhzmkdwa'

Output: one summary on stdout (text, or one JSON object with --json); progress on stderr.
Exit status: 0 run worked, 1 error ratio above --max-error-ratio or run failed, 2 cannot connect.";

/// `dirkdb bench`: options of the load generator.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// Host of the endpoint (a server, the proxy or the cache).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the endpoint.
    #[arg(long, default_value_t = 3949)]
    pub port: u16,
    /// The endpoint as HOST:PORT (instead of --host and --port).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["host", "port"])]
    pub endpoint: Option<String>,
    /// Clients, each with its own connection and task.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 16,
          value_parser = value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Seconds measured after the warmup (default 10).
    #[arg(short = 'd', long, value_name = "SECONDS", value_parser = parse_duration,
          conflicts_with = "operations")]
    pub duration: Option<Duration>,
    /// Operations measured in total, over all clients (instead of -d).
    #[arg(short = 'n', long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    pub operations: Option<u64>,
    /// Seconds of load before measuring starts (not measured).
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_warmup)]
    pub warmup: Duration,
    /// What each operation runs.
    #[arg(short = 'w', long, value_enum, default_value_t = WorkloadKind::PointSelect)]
    pub workload: WorkloadKind,
    /// Share of point-selects in the mixed workload (the rest are updates).
    #[arg(long, value_name = "RATIO", default_value_t = 0.9, value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Statements of the custom workload (see below for the syntax).
    #[arg(long, value_name = "FILE", required_if_eq("workload", "custom"))]
    pub sql_file: Option<PathBuf>,
    /// Database the clients USE (and --init recreates).
    #[arg(long, value_name = "NAME", default_value = "dirkbench", value_parser = parse_identifier)]
    pub database: String,
    /// Recreate the database, table bench and its rows before running.
    #[arg(long)]
    pub init: bool,
    /// Rows of table bench, in units of 10,000 (for --init and the range of :id).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = value_parser!(u64).range(1..=100_000))]
    pub scale: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or setup messages on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Exit with status 1 when more than this share of operations failed.
    #[arg(long, value_name = "RATIO", default_value_t = 0.01, value_parser = parse_ratio)]
    pub max_error_ratio: f64,
    /// Measure replication lag: paced INSERTs on the endpoint, watched on --replica.
    #[arg(long, requires = "replica")]
    pub measure_lag: bool,
    /// The replica watched by --measure-lag, as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", requires = "measure_lag")]
    pub replica: Option<String>,
    /// --measure-lag watches the replica by polling even when it has a change feed: a
    /// MULTI_PRIMARY master's feed reports only its own commits, not another master's
    /// changes it applies (the lag between masters needs this).
    #[arg(long, requires = "measure_lag")]
    pub poll: bool,
    /// Statements per second in all, as pgbench's --rate: each client sends on its own even
    /// schedule (N / clients a second) instead of back to back, so paths can be compared at the
    /// same load; a client that falls behind catches up without waiting. With --measure-lag:
    /// the writes per second, paced evenly over one connection (1000 when not given).
    #[arg(long, value_name = "N",
          value_parser = value_parser!(u64).range(1..=1_000_000))]
    pub rate: Option<u64>,
    /// --measure-lag's writer sends each INSERT on schedule without waiting for the previous
    /// one's answer, with at most N unanswered (pipelining; 1 waits for each answer): one
    /// connection then reaches rates its round trip alone would not, and its rows still commit
    /// in id order.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "measure_lag",
          value_parser = value_parser!(u32).range(1..=4096))]
    pub pipeline: u32,
    /// Who every connection authenticates as.
    #[command(flatten)]
    pub credentials: crate::credentials::CredentialArgs,
    /// TLS of every connection (`--tls`, `--ca FILE`).
    #[command(flatten)]
    pub tls: crate::tls_args::TlsArgs,
}

/// The workloads of `-w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// One row by primary key.
    PointSelect,
    /// 100 consecutive rows by primary key.
    RangeSelect,
    /// One new row.
    Insert,
    /// One existing row by primary key.
    Update,
    /// Point-selects and updates, mixed by --read-ratio.
    Mixed,
    /// The statements of --sql-file.
    Custom,
}

impl WorkloadKind {
    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::PointSelect => "point-select",
            WorkloadKind::RangeSelect => "range-select",
            WorkloadKind::Insert => "insert",
            WorkloadKind::Update => "update",
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Custom => "custom",
        }
    }
}

/// When a measured run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunLength {
    /// After this long.
    Duration(Duration),
    /// After this many operations in total.
    Operations(u64),
}

impl BenchArgs {
    /// The endpoint as `host:port`.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// How long the measured part lasts (`-n`, else `-d`, else 10 s).
    pub fn run_length(&self) -> RunLength {
        match (self.operations, self.duration) {
            (Some(n), _) => RunLength::Operations(n),
            (None, Some(d)) => RunLength::Duration(d),
            (None, None) => RunLength::Duration(Duration::from_secs(DEFAULT_SECONDS)),
        }
    }

    /// Rows of table bench, the range of `:id`.
    pub fn rows(&self) -> u64 {
        self.scale.saturating_mul(ROWS_PER_SCALE)
    }
}

/// A positive number of seconds, fractions allowed.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_warmup(text)? {
        d if d.is_zero() => Err(format!("`{text}`: must be more than 0 seconds")),
        d => Ok(d),
    }
}

/// A number of seconds, 0 or more.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// A share between 0 and 1.
fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}` is not a ratio between 0 and 1")),
    }
}

/// A plain SQL identifier (it is written into statements unquoted).
fn parse_identifier(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a plain name (letters, digits, _; not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(line: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_and_endpoint() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.endpoint(), "127.0.0.1:3949");
        assert_eq!(a.run_length(), RunLength::Duration(Duration::from_secs(10)));
        assert_eq!(a.concurrency, 16);
        assert_eq!(a.rows(), 10_000);
        let a = parse(&["--endpoint", "db:1", "-n", "5"]).unwrap();
        assert_eq!(a.endpoint(), "db:1");
        assert_eq!(a.run_length(), RunLength::Operations(5));
    }

    #[test]
    fn refusals() {
        assert!(parse(&["-d", "1", "-n", "5"]).is_err());
        assert!(parse(&["--endpoint", "a:1", "--port", "2"]).is_err());
        assert!(parse(&["-w", "custom"]).is_err());
        assert!(parse(&["--measure-lag"]).is_err());
        assert!(parse(&["--poll"]).is_err(), "--poll needs --measure-lag");
        assert!(
            parse(&["--pipeline", "8"]).is_err(),
            "--pipeline needs --measure-lag"
        );
        assert!(parse(&["--measure-lag", "--replica", "r:1", "--pipeline", "0"]).is_err());
        let a = parse(&["--measure-lag", "--replica", "r:1", "--pipeline", "32"]).unwrap();
        assert_eq!(a.pipeline, 32);
        assert!(parse(&["--database", "x; DROP"]).is_err());
        assert!(parse(&["--read-ratio", "1.5"]).is_err());
        assert!(parse(&["-d", "0"]).is_err());
        assert!(parse(&["-c", "0"]).is_err());
    }
}
