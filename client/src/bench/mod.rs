//! `dirkdb bench`: a load generator that speaks the wire protocol to any endpoint (a server, the
//! proxy or the cache), measured the way pgbench, redis-benchmark and sysbench measure.
//!
//! How a run flows:
//!
//! 1. [`args`] parses and checks the command line ([`BenchArgs`]); [`workload`] turns the chosen
//!    workload (or the `--sql-file` of a custom one) into statement templates before anything
//!    touches the network, so a bad file fails fast.
//! 2. With `--init`, [`setup`] recreates the database and fills table `bench` with
//!    `--scale` × 10,000 rows in a few large `WITH RECURSIVE` inserts.
//! 3. [`runner`] opens one connection per client (`-c`), each driven by its own tokio task. Every
//!    task runs statements back to back; those that start during `--warmup` are not measured,
//!    the others record their latency in the task's own HDR histogram until `-d` seconds have
//!    passed or `-n` operations have been claimed. [`progress`] shows a live bar meanwhile.
//! 4. The histograms are merged and [`report`] prints throughput, errors and latency
//!    percentiles as text or as one JSON object (`--json`).
//!
//! `--measure-lag` replaces steps 3–4 with [`lag`]: paced writes on the endpoint and a watcher
//! on `--replica` give the commit-to-visible replication lag.
//!
//! Exit status: 0 when the run worked (errors are reported, up to `--max-error-ratio`), 1 when
//! more statements failed than that ratio allows or the run could not be carried out, 2 when an
//! endpoint cannot be reached.

pub mod args;
pub mod lag;
pub mod progress;
pub mod report;
pub mod runner;
pub mod setup;
pub mod workload;

pub use args::BenchArgs;

use crate::ClientError;

/// Why a benchmark could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An endpoint could not be reached (exit status 2).
    #[error("{0}")]
    Connect(String),
    /// Anything else that stopped the run (exit status 1).
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Connect(_) => 2,
            BenchError::Failed(_) => 1,
        }
    }

    /// Wraps a client error met while doing `what`; connection failures map to
    /// [`BenchError::Connect`].
    pub fn client(what: &str, error: ClientError) -> BenchError {
        match error {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout(_)
            | ClientError::AuthFailed { .. } => BenchError::Connect(error.to_string()),
            other => BenchError::Failed(format!("{what}: {other}")),
        }
    }
}

/// Runs `dirkdb bench` and returns the process exit status.
pub fn run(args: BenchArgs) -> i32 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dirkdb bench: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dirkdb bench: {e}");
            e.exit_code()
        }
    }
}

async fn run_async(args: BenchArgs) -> Result<i32, BenchError> {
    let workload = workload::Workload::from_args(&args)?;
    let endpoint = args.endpoint();
    let credentials =
        (args.credentials.resolve()).map_err(|e| BenchError::Connect(e.to_string()))?;
    args.tls.apply().map_err(BenchError::Connect)?;
    if args.init {
        setup::init(
            &endpoint,
            credentials.as_ref(),
            &args.database,
            args.scale,
            args.quiet,
        )
        .await?;
    }
    if args.measure_lag {
        let plan = lag::LagPlan::from_args(&args, credentials)?;
        let summary = lag::measure(&plan, args.quiet).await?;
        return Ok(summary.print(args.json, args.max_error_ratio));
    }
    let plan = runner::Plan::from_args(&args, workload, credentials);
    let outcome = runner::run(&plan, args.quiet).await?;
    let summary = report::Summary::new(&plan, outcome);
    Ok(summary.print(args.json, args.max_error_ratio))
}
