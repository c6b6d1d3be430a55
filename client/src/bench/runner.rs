//! The closed-loop load: one tokio task per client, each with its own connection, running
//! statements back to back and recording each measured latency in its own HDR histogram.
//!
//! A statement is measured when it starts after the warmup and can claim a slot of the run
//! (before the deadline of `-d`, or one of the `-n` operations, shared by all clients), so `-n`
//! runs exactly that many statements. Failed statements are counted, not timed; a broken
//! connection is reopened before the client's next statement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastrand::Rng;
use hdrhistogram::Histogram;

use crate::{Client, ClientError};
use dirkdb_core::security::Credentials;

use super::args::{BenchArgs, RunLength};
use super::progress::{self, Rate, Ticker};
use super::workload::Workload;
use super::BenchError;

/// Longest wait for one statement's response before its connection is given up.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause after a failed reconnection, so a dead endpoint is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Highest latency the histograms hold distinctly, in microseconds (one hour).
const MAX_MICROS: u64 = 3_600_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port` of the endpoint.
    pub endpoint: String,
    /// Database every client USEs.
    pub database: String,
    /// The statements.
    pub workload: Arc<Workload>,
    /// Clients (connections).
    pub concurrency: u32,
    /// When measuring stops.
    pub length: RunLength,
    /// Unmeasured load before.
    pub warmup: Duration,
    /// Presented by every connection.
    pub credentials: Option<Credentials>,
    /// `--rate`: statements per second in all (`None`: back to back).
    pub rate: Option<u64>,
}

impl Plan {
    /// The plan of the command line.
    pub fn from_args(
        args: &BenchArgs,
        workload: Workload,
        credentials: Option<Credentials>,
    ) -> Plan {
        Plan {
            endpoint: args.endpoint(),
            database: args.database.clone(),
            workload: Arc::new(workload),
            concurrency: args.concurrency,
            length: args.run_length(),
            warmup: args.warmup,
            credentials,
            rate: args.rate,
        }
    }

    /// Under `--rate`, the pause between two statements of one client.
    fn interval(&self) -> Option<Duration> {
        self.rate.map(|rate| {
            Duration::from_secs_f64(f64::from(self.concurrency.max(1)) / rate.max(1) as f64)
        })
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Latencies of the successful measured statements, in microseconds.
    pub histogram: Histogram<u64>,
    /// The same, per template of the workload (in [`Workload::statement_names`] order).
    pub per_statement: Vec<Histogram<u64>>,
    /// Measured statements that failed.
    pub errors: u64,
    /// The text of the earliest failure.
    pub first_error: Option<String>,
    /// From the end of the warmup until the last client stopped.
    pub elapsed: Duration,
}

/// A new latency histogram (microseconds, 3 significant digits).
pub fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .map_err(|e| BenchError::Failed(format!("latency histogram: {e}")))
}

/// Runs the plan and merges what every client measured.
pub async fn run(plan: &Plan, quiet: bool) -> Result<Outcome, BenchError> {
    let sessions = connect_all(plan).await?;
    let templates = plan.workload.statement_names().len();
    let empty = WorkerResult::new(new_histogram()?, templates);
    let shared = Arc::new(Shared::new(plan));
    let ticker = start_ticker(plan, shared.clone(), quiet);
    let start = Instant::now();
    let clients = plan.concurrency.max(1);
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let result = empty.clone();
            // Clients' schedules are spread over one interval, so the load is even.
            let pace = plan.interval().map(|every| Pace {
                next: start + every.mul_f64(i as f64 / f64::from(clients)),
                every,
            });
            tokio::spawn(worker(
                session,
                shared.clone(),
                plan.workload.clone(),
                result,
                pace,
            ))
        })
        .collect();
    let mut outcome = empty;
    for task in tasks {
        let result = task
            .await
            .map_err(|e| BenchError::Failed(format!("a client task failed: {e}")))?;
        outcome.merge(result)?;
    }
    ticker.finish();
    Ok(Outcome {
        histogram: outcome.histogram,
        per_statement: outcome.per_statement,
        errors: outcome.errors,
        first_error: outcome.first_error.map(|(_, text)| text),
        elapsed: shared.measure_start.elapsed(),
    })
}

/// State shared by the clients of a run.
struct Shared {
    measure_start: Instant,
    deadline: Option<Instant>,
    budget: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn new(plan: &Plan) -> Shared {
        let measure_start = Instant::now() + plan.warmup;
        let (deadline, budget) = match plan.length {
            RunLength::Duration(d) => (Some(measure_start + d), u64::MAX),
            RunLength::Operations(n) => (None, n),
        };
        Shared {
            measure_start,
            deadline,
            budget: AtomicU64::new(budget),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Takes the right to run one more measured statement.
    fn claim(&self) -> bool {
        match self.deadline {
            Some(deadline) => Instant::now() < deadline,
            None => self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// One client's connection, reopened (and its database selected again) after it breaks.
struct Session {
    addr: String,
    credentials: Option<Credentials>,
    database: String,
    client: Option<Client>,
}

impl Session {
    async fn open(
        addr: &str,
        credentials: Option<&Credentials>,
        database: &str,
    ) -> Result<Client, ClientError> {
        let mut client = Client::connect_as(addr, credentials).await?;
        client.execute(&format!("USE {database}")).await?;
        Ok(client)
    }

    /// Runs one statement; the error is the text to report.
    async fn execute(&mut self, sql: &str) -> Result<(), String> {
        if self.client.is_none() {
            match Self::open(&self.addr, self.credentials.as_ref(), &self.database).await {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Err(e.to_string());
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err("no connection".into());
        };
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(sql)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if e.is_fatal() {
                    self.client = None;
                }
                Err(e.to_string())
            }
            Err(_) => {
                self.client = None;
                Err(format!(
                    "no response within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                ))
            }
        }
    }
}

/// Opens every client's connection; a refused connection stops the run before it starts.
async fn connect_all(plan: &Plan) -> Result<Vec<Session>, BenchError> {
    let mut sessions = Vec::new();
    for _ in 0..plan.concurrency {
        let client = Session::open(&plan.endpoint, plan.credentials.as_ref(), &plan.database)
            .await
            .map_err(|e| match e {
                ClientError::Server(reason) => BenchError::Failed(format!(
                    "USE {}: {reason} (run with --init to create it)",
                    plan.database
                )),
                other => BenchError::client("opening the clients' connections", other),
            })?;
        sessions.push(Session {
            addr: plan.endpoint.clone(),
            credentials: plan.credentials.clone(),
            database: plan.database.clone(),
            client: Some(client),
        });
    }
    Ok(sessions)
}

/// What one client measured.
#[derive(Clone)]
struct WorkerResult {
    histogram: Histogram<u64>,
    per_statement: Vec<Histogram<u64>>,
    errors: u64,
    first_error: Option<(Instant, String)>,
}

impl WorkerResult {
    /// Nothing measured yet, with `templates` histograms besides the whole one.
    fn new(histogram: Histogram<u64>, templates: usize) -> WorkerResult {
        WorkerResult {
            per_statement: vec![histogram.clone(); templates],
            histogram,
            errors: 0,
            first_error: None,
        }
    }

    fn record(
        &mut self,
        template: usize,
        started: Instant,
        outcome: Result<(), String>,
        shared: &Shared,
    ) {
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.histogram.saturating_record(micros);
                if let Some(histogram) = self.per_statement.get_mut(template) {
                    histogram.saturating_record(micros);
                }
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(text) => {
                self.errors += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.get_or_insert((started, text));
            }
        }
    }

    fn merge(&mut self, other: WorkerResult) -> Result<(), BenchError> {
        let merge_failed = |e| BenchError::Failed(format!("merging latency histograms: {e}"));
        self.histogram.add(&other.histogram).map_err(merge_failed)?;
        for (mine, theirs) in self.per_statement.iter_mut().zip(&other.per_statement) {
            mine.add(theirs).map_err(merge_failed)?;
        }
        self.errors += other.errors;
        let earlier = match (&self.first_error, &other.first_error) {
            (None, Some(_)) => true,
            (Some((mine, _)), Some((theirs, _))) => theirs < mine,
            _ => false,
        };
        if earlier {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// One client's schedule under `--rate`.
struct Pace {
    next: Instant,
    every: Duration,
}

impl Pace {
    /// Waits for the next statement's turn; a client behind its schedule does not wait.
    async fn wait(&mut self) {
        tokio::time::sleep_until(self.next.into()).await;
        self.next += self.every;
    }
}

/// One client: statements back to back (or on its schedule) until the run is over.
async fn worker(
    mut session: Session,
    shared: Arc<Shared>,
    workload: Arc<Workload>,
    mut result: WorkerResult,
    mut pace: Option<Pace>,
) -> WorkerResult {
    let mut rng = Rng::new();
    loop {
        if let Some(pace) = &mut pace {
            pace.wait().await;
        }
        let measured = Instant::now() >= shared.measure_start;
        if measured && !shared.claim() {
            return result;
        }
        let (template, sql) = workload.next_statement(&mut rng);
        let started = Instant::now();
        let outcome = session.execute(&sql).await;
        if measured {
            result.record(template, started, outcome, &shared);
        }
    }
}

/// The progress bar: time (for `-d`) or operations (for `-n`), with the live throughput.
fn start_ticker(plan: &Plan, shared: Arc<Shared>, quiet: bool) -> Ticker {
    let len = match plan.length {
        RunLength::Duration(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        RunLength::Operations(n) => n,
    };
    let length = plan.length;
    let mut rate = Rate::default();
    Ticker::start(progress::bar(len, quiet), move |bar| {
        let now = Instant::now();
        if now < shared.measure_start {
            let left = shared.measure_start - now;
            bar.set_message(format!("warming up, {:.1} s left", left.as_secs_f64()));
            return;
        }
        let ok = shared.ok.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        bar.set_position(match length {
            RunLength::Duration(_) => u64::try_from((now - shared.measure_start).as_millis())
                .map_or(len, |ms| ms.min(len)),
            RunLength::Operations(_) => ok + errors,
        });
        let per_second = rate.per_second(ok);
        bar.set_message(format!("{per_second:.0} ops/s, {ok} ops, {errors} errors"));
    })
}
