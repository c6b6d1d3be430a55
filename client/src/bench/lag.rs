//! `--measure-lag`: commit-to-visible replication lag, measured from outside.
//!
//! Method (carried over from the `replication_figures` example and tightened):
//!
//! * One writer connection on the endpoint (the primary, or the proxy in front of it) inserts
//!   rows into `lagprobe` with explicit, strictly increasing ids, paced evenly at `--rate` per
//!   second (a late writer catches up on its schedule, but never by more than [`MAX_BEHIND`]:
//!   beyond that the schedule restarts, so a stall does not turn into a burst). Each row's
//!   acknowledgement time is kept. By default the writer waits for each answer before the next
//!   INSERT, so one round trip bounds its rate; with `--pipeline N` it sends each INSERT at its
//!   time with up to N unanswered (the server runs them in order, one autocommit transaction
//!   each), so rows still commit in id order and each row's lag still counts from its own
//!   acknowledgement. The first row is always written alone, so that `DIRK POSITION` right
//!   after it gives that row's position.
//! * The watcher follows the replica's change feed (`DIRK CHANGES`): the replica pushes a notice
//!   each time its applied position moves, so nothing polls and the measurement takes no CPU
//!   from the replica it measures. The writer learns the position of its first and last rows
//!   (`DIRK POSITION`); with one row per commit and no other writer, row `first + k` stands at
//!   position `p + k`, which turns each notice into "every row up to this id is visible". When
//!   the replica has no feed, or other writes interleave (the positions do not match the ids),
//!   the watcher falls back to polling (as it does with `--poll`: a MULTI_PRIMARY master's
//!   feed reports its own commits only, not the other masters' changes it applies):
//! * one watcher connection on `--replica` runs
//!   `SELECT coalesce(max(id), 0) FROM lagprobe` back to back, as fast as the replica answers.
//!   One writer means ids commit in order, and a replica applies in commit order, so when a
//!   poll returns `max(id) = m`, every row up to `m` is visible. The watcher keeps the
//!   completion time of the first poll that returned each new maximum.
//! * A row's lag is the completion time of the first poll that saw it minus the time its INSERT
//!   was acknowledged (0 if the replica showed it before the acknowledgement reached the
//!   writer). This overestimates by at most one poll round trip, reported as the resolution.
//! * After the writes, the watcher waits up to [`CATCH_UP_TIMEOUT`] for the last row; rows never
//!   seen are reported (and make the exit status 1).
//!
//! Before measuring, the table is created on the endpoint if missing, new ids start above the
//! highest one already there, and the watcher waits until the replica holds the table and has
//! caught up with those rows, so old rows never pass for new ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{Client, ClientError};
use dirkdb_core::security::Credentials;

use super::args::{BenchArgs, DEFAULT_SECONDS};
use super::progress::{self, Ticker};
use super::report::{self, round, Latency};
use super::runner::{new_histogram, STATEMENT_TIMEOUT};
use super::BenchError;

/// Writes per second when `--rate` is not given.
const DEFAULT_RATE: u64 = 1000;

/// How far the writer may fall behind its schedule and still catch up.
pub const MAX_BEHIND: Duration = Duration::from_millis(50);

/// How long the watcher waits for the last row after the writes end.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the replica may take to show the table before measuring starts.
pub const REPLICA_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The table written and watched.
pub const TABLE: &str = "lagprobe";

/// What to measure.
#[derive(Debug, Clone)]
pub struct LagPlan {
    /// Where the writes go (`host:port`).
    pub primary: String,
    /// Where the watcher polls (`host:port`).
    pub replica: String,
    /// Database holding `lagprobe`.
    pub database: String,
    /// Writes per second asked for.
    pub rate: u64,
    /// How long to write.
    pub duration: Duration,
    /// Presented by every connection, to the primary and to the replica.
    pub credentials: Option<Credentials>,
    /// Poll the replica even when it has a change feed (`--poll`).
    pub poll: bool,
    /// INSERTs sent ahead without their answer at most (`--pipeline`; 1: none).
    pub pipeline: u32,
}

impl LagPlan {
    /// The plan of the command line (`-d` seconds of writes, 10 by default).
    pub fn from_args(
        args: &BenchArgs,
        credentials: Option<Credentials>,
    ) -> Result<LagPlan, BenchError> {
        let replica = args
            .replica
            .clone()
            .ok_or_else(|| BenchError::Failed("--measure-lag needs --replica HOST:PORT".into()))?;
        if args.operations.is_some() {
            return Err(BenchError::Failed(
                "--measure-lag writes for -d SECONDS; -n does not apply".into(),
            ));
        }
        Ok(LagPlan {
            primary: args.endpoint(),
            replica,
            database: args.database.clone(),
            rate: args.rate.unwrap_or(DEFAULT_RATE).max(1),
            duration: args
                .duration
                .unwrap_or(Duration::from_secs(DEFAULT_SECONDS)),
            credentials,
            poll: args.poll,
            pipeline: args.pipeline.max(1),
        })
    }
}

/// Runs the measurement.
pub async fn measure(plan: &LagPlan, quiet: bool) -> Result<LagSummary, BenchError> {
    let (writer, base) = prepare_primary(plan).await?;
    let watcher = prepare_replica(plan, base).await?;
    let feed = match plan.poll {
        true => None,
        false => subscribe_feed(plan).await,
    };
    let (done_tx, done_rx) = watch::channel(None);
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let ticker = start_ticker(plan, started, written.clone(), quiet);
    let writes = tokio::spawn(write(writer, plan.clone(), base, done_tx, written));
    let polls = match feed {
        Some(feed) => {
            let notices = watch_feed(feed, done_rx.clone()).await;
            let writes = writes
                .await
                .map_err(|e| BenchError::Failed(format!("the writer task failed: {e}")))?;
            ticker.finish();
            if let Some(polls) = notices.and_then(|n| n.as_polls(&writes, base)) {
                return summarize(plan, writes, polls);
            }
            // Positions did not line up with ids (another writer?): measure again by polling.
            return Err(BenchError::Failed(
                "the replica's positions did not match the written rows (was something else writing?); run again on a quiet primary".into(),
            ));
        }
        None => watch_replica(watcher, base, done_rx, new_histogram()?).await,
    };
    let writes = writes
        .await
        .map_err(|e| BenchError::Failed(format!("the writer task failed: {e}")))?;
    ticker.finish();
    summarize(plan, writes, polls)
}

/// A connection to the replica's change feed, when it has one.
async fn subscribe_feed(plan: &LagPlan) -> Option<Client> {
    let credentials = plan.credentials.as_ref();
    let mut client = Client::connect_as(&plan.replica, credentials).await.ok()?;
    client.send_statement("DIRK CHANGES").await.ok()?;
    match tokio::time::timeout(Duration::from_secs(3), client.next_frame()).await {
        Ok(Ok(dirkdb_core::frame::Frame::Message(text))) if text.starts_with("{\"upto\"") => {
            Some(client)
        }
        _ => None,
    }
}

/// What the replica's feed reported: each new applied position and when it arrived.
struct Notices {
    events: Vec<(u64, Instant)>,
    error: Option<String>,
}

/// Records the replica's notices until it reports the writer's last position (or gives up).
async fn watch_feed(mut feed: Client, mut done: watch::Receiver<Option<Done>>) -> Option<Notices> {
    let mut notices = Notices {
        events: Vec::new(),
        error: None,
    };
    let mut finished: Option<(Option<u64>, Instant)> = None;
    loop {
        let frame = tokio::select! {
            frame = feed.next_frame() => frame,
            _ = done.changed(), if finished.is_none() => {
                finished = (*done.borrow()).map(|d| (d.position, Instant::now()));
                continue;
            }
        };
        let text = match frame {
            Ok(dirkdb_core::frame::Frame::Message(text)) => text,
            Ok(_) => continue,
            Err(e) => {
                notices.error = Some(format!("the replica's feed ended: {e}"));
                return Some(notices);
            }
        };
        let upto = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["upto"].as_u64());
        if let Some(upto) = upto {
            if notices.events.last().is_none_or(|(last, _)| upto > *last) {
                notices.events.push((upto, Instant::now()));
            }
        }
        if let Some((target, at)) = finished {
            let reached =
                target.is_some_and(|t| notices.events.last().is_some_and(|(u, _)| *u >= t));
            if reached || target.is_none() || at.elapsed() > CATCH_UP_TIMEOUT {
                return Some(notices);
            }
        }
    }
}

impl Notices {
    /// The notices as "every row up to id m visible at t", when the writer's positions map
    /// one to one onto its ids.
    fn as_polls(&self, writes: &Writes, base: i64) -> Option<Polls> {
        let (first, last) = (writes.first_position?, writes.last_position?);
        let first_id = writes.acks.first()?.0;
        let last_id = writes.acks.last()?.0;
        if last.checked_sub(first)? != u64::try_from(last_id - first_id).ok()? {
            return None;
        }
        let seen = self
            .events
            .iter()
            .filter(|(upto, _)| *upto >= first)
            .map(|(upto, at)| {
                let id = first_id + i64::try_from(upto - first).unwrap_or(i64::MAX);
                (id.min(last_id).max(base), *at)
            })
            .collect();
        Some(Polls {
            seen,
            round_trips: new_histogram().ok()?,
            error: self.error.clone(),
            method: "feed",
        })
    }
}

/// Creates the database and table if missing; returns the writer's connection and the highest
/// id already in the table.
async fn prepare_primary(plan: &LagPlan) -> Result<(Client, i64), BenchError> {
    let fail = |e| BenchError::client(&format!("preparing {TABLE} on {}", plan.primary), e);
    let credentials = plan.credentials.as_ref();
    let mut client = Client::connect_as(&plan.primary, credentials)
        .await
        .map_err(fail)?;
    let db = &plan.database;
    if let Err(ClientError::Server(_)) = client.execute(&format!("USE {db}")).await {
        client
            .execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(fail)?;
        client.execute(&format!("USE {db}")).await.map_err(fail)?;
    }
    let create =
        format!("CREATE TABLE IF NOT EXISTS {TABLE}(id INTEGER PRIMARY KEY, written_ms INTEGER)");
    client.execute(&create).await.map_err(fail)?;
    let base = max_id(&mut client).await.map_err(fail)?;
    Ok((client, base))
}

/// `max(id)` of the table (0 when empty).
async fn max_id(client: &mut Client) -> Result<i64, ClientError> {
    let rows = client
        .query(&format!("SELECT coalesce(max(id), 0) FROM {TABLE}"))
        .await?;
    let value = rows.rows.first().and_then(|row| row.first());
    Ok(value.and_then(Value::as_i64).unwrap_or(0))
}

/// Connects to the replica and waits until it has the table with every row up to `base`.
async fn prepare_replica(plan: &LagPlan, base: i64) -> Result<Client, BenchError> {
    let mut client = Client::connect_as(&plan.replica, plan.credentials.as_ref())
        .await
        .map_err(|e| BenchError::client("connecting to the replica", e))?;
    let deadline = Instant::now() + REPLICA_READY_TIMEOUT;
    let mut last_error = String::from("no answer yet");
    while Instant::now() < deadline {
        let ready = match client.execute(&format!("USE {}", plan.database)).await {
            Ok(_) => max_id(&mut client).await.map(|max| max >= base),
            Err(e) => Err(e),
        };
        match ready {
            Ok(true) => return Ok(client),
            Ok(false) => last_error = format!("it has not caught up with id {base} yet"),
            Err(e) if e.is_fatal() => return Err(BenchError::client("polling the replica", e)),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BenchError::Failed(format!(
        "the replica {} did not show {}.{TABLE} within {} s ({last_error}); does it replicate from {}?",
        plan.replica,
        plan.database,
        REPLICA_READY_TIMEOUT.as_secs(),
        plan.primary
    )))
}

/// What the writer did.
struct Writes {
    /// Each acknowledged id and when its acknowledgement arrived.
    acks: Vec<(i64, Instant)>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// The primary's position of the first and of the last acknowledged row (`DIRK POSITION`).
    first_position: Option<u64>,
    last_position: Option<u64>,
}

/// What the writer announces when it stops: its last id and that row's position.
#[derive(Debug, Clone, Copy)]
struct Done {
    id: i64,
    position: Option<u64>,
}

/// The session's last write position, as the server (or proxy) tells it.
async fn position(client: &mut Client) -> Option<u64> {
    match client.execute("DIRK POSITION").await.ok()? {
        crate::Reply::Message(text) => text.strip_prefix("position ")?.trim().parse().ok(),
        _ => None,
    }
}

/// The paced writer; announces the last acknowledged id on `done` when it stops.
async fn write(
    mut client: Client,
    plan: LagPlan,
    base: i64,
    done: watch::Sender<Option<Done>>,
    written: Arc<AtomicU64>,
) -> Writes {
    let interval = Duration::from_secs_f64(1.0 / plan.rate as f64);
    let depth = plan.pipeline.max(1) as usize;
    let started = Instant::now();
    let end = started + plan.duration;
    let mut writes = Writes {
        acks: Vec::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        first_position: None,
        last_position: None,
    };
    // INSERTs sent and not answered yet, oldest first: their ids and when each was sent.
    let mut in_flight: VecDeque<(i64, Instant)> = VecDeque::new();
    let (mut next, mut id) = (started, base);
    loop {
        // Alone until the first row is acknowledged (its position is asked right after it).
        let limit = if writes.acks.is_empty() { 1 } else { depth };
        let may_send = next < end && in_flight.len() < limit;
        let now = Instant::now();
        if may_send && now >= next {
            next = slot(next, now);
            id += 1;
            let sql = format!(
                "INSERT INTO {TABLE}(id, written_ms) VALUES ({id}, {})",
                unix_ms()
            );
            if let Err(e) = client.send_statement(&sql).await {
                writes.failed(e.to_string());
                break;
            }
            in_flight.push_back((id, now));
            next += interval;
            continue;
        }
        let Some(&(_, oldest)) = in_flight.front() else {
            if next >= end {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            continue;
        };
        let give_up = oldest + STATEMENT_TIMEOUT;
        let wake = if may_send { next.min(give_up) } else { give_up };
        let frame = match tokio::time::timeout_at(wake.into(), client.next_frame()).await {
            // Reading a frame is cancel-safe: bytes already read stay in the client's buffer.
            Err(_) if Instant::now() < give_up => continue,
            Err(_) => {
                writes.failed(format!(
                    "no response within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                ));
                break;
            }
            Ok(Err(e)) => {
                writes.failed(e.to_string());
                break;
            }
            Ok(Ok(frame)) => frame,
        };
        // An answer ends with a message; pages of rows before it are not answers.
        if !matches!(frame, dirkdb_core::frame::Frame::Message(_)) {
            continue;
        }
        let Some((acked, _)) = in_flight.pop_front() else {
            writes.failed(format!("an answer to nothing sent: {frame:?}"));
            break;
        };
        if let Some(reason) = frame.error_text() {
            writes.failed(ClientError::Server(reason.to_string()).to_string());
            continue;
        }
        writes.acks.push((acked, Instant::now()));
        written.fetch_add(1, Ordering::Relaxed);
        if writes.acks.len() == 1 {
            writes.first_position = position(&mut client).await;
        }
    }
    writes.elapsed = started.elapsed();
    // After a failure with answers outstanding, the position would not be the last row's.
    writes.last_position = if in_flight.is_empty() {
        position(&mut client).await
    } else {
        None
    };
    let _ = done.send(Some(Done {
        id: writes.acks.last().map_or(base, |a| a.0),
        position: writes.last_position,
    }));
    writes
}

impl Writes {
    fn failed(&mut self, text: String) {
        self.errors += 1;
        self.first_error.get_or_insert(text);
    }
}

/// The time a write due at `scheduled` and sent `now` counts for: its schedule, unless that is
/// more than [`MAX_BEHIND`] ago (then the schedule restarts now).
fn slot(scheduled: Instant, now: Instant) -> Instant {
    if now > scheduled + MAX_BEHIND {
        now
    } else {
        scheduled
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// What the watcher saw.
struct Polls {
    /// Each new `max(id)` and when the poll that first returned it completed.
    seen: Vec<(i64, Instant)>,
    /// Round trips of the polls, in microseconds.
    round_trips: Histogram<u64>,
    /// Why watching stopped early.
    error: Option<String>,
    /// `feed` (pushed notices) or `poll`.
    method: &'static str,
}

/// Polls the replica until it shows the writer's last row, or gives up.
async fn watch_replica(
    mut client: Client,
    base: i64,
    done: watch::Receiver<Option<Done>>,
    round_trips: Histogram<u64>,
) -> Polls {
    let mut polls = Polls {
        seen: Vec::new(),
        round_trips,
        error: None,
        method: "poll",
    };
    let (mut last, mut finished): (i64, Option<(i64, Instant)>) = (base, None);
    loop {
        let sent = Instant::now();
        let max = match tokio::time::timeout(STATEMENT_TIMEOUT, max_id(&mut client)).await {
            Ok(Ok(max)) => max,
            Ok(Err(e)) => break polls.stopped(format!("polling the replica: {e}")),
            Err(_) => break polls.stopped("polling the replica: no response".into()),
        };
        let received = Instant::now();
        let micros = u64::try_from((received - sent).as_micros()).unwrap_or(u64::MAX);
        polls.round_trips.saturating_record(micros);
        if max > last {
            polls.seen.push((max, received));
            last = max;
        }
        if finished.is_none() {
            finished = (*done.borrow()).map(|d| (d.id, received));
        }
        if let Some((last_id, at)) = finished {
            if last >= last_id || received - at > CATCH_UP_TIMEOUT {
                break polls;
            }
        }
    }
}

impl Polls {
    fn stopped(mut self, error: String) -> Polls {
        self.error = Some(error);
        self
    }
}

/// The result of a lag measurement.
#[derive(Debug, Clone)]
pub struct LagSummary {
    /// Where the writes went.
    pub primary: String,
    /// Where the watcher polled.
    pub replica: String,
    /// Writes per second asked for.
    pub target_rate: u64,
    /// INSERTs the writer sent ahead of their answers at most (`--pipeline`).
    pub pipeline: u32,
    /// Seconds spent writing.
    pub seconds: f64,
    /// Acknowledged writes.
    pub writes: u64,
    /// Failed writes.
    pub errors: u64,
    /// The first failure (of a write, else of the watcher).
    pub first_error: Option<String>,
    /// Rows whose lag was measured.
    pub samples: u64,
    /// Acknowledged rows the replica never showed.
    pub unseen: u64,
    /// Commit-to-visible lag.
    pub lag: Latency,
    /// Polls run on the replica.
    pub polls: u64,
    /// Round trip of one poll: the resolution of the lag figures (empty with the feed).
    pub poll: Latency,
    /// How the replica was watched: `feed` or `poll`.
    pub method: &'static str,
}

fn summarize(plan: &LagPlan, writes: Writes, polls: Polls) -> Result<LagSummary, BenchError> {
    let mut lag = new_histogram()?;
    let mut unseen = 0;
    for (id, acked) in &writes.acks {
        let first = polls.seen.partition_point(|(max, _)| max < id);
        match polls.seen.get(first) {
            Some((_, at)) => {
                let micros = at.saturating_duration_since(*acked).as_micros();
                lag.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            None => unseen += 1,
        }
    }
    Ok(LagSummary {
        primary: plan.primary.clone(),
        replica: plan.replica.clone(),
        target_rate: plan.rate,
        pipeline: plan.pipeline,
        seconds: writes.elapsed.as_secs_f64(),
        writes: writes.acks.len() as u64,
        errors: writes.errors,
        first_error: writes.first_error.or(polls.error),
        samples: lag.len(),
        unseen,
        lag: Latency::from_micros(&lag),
        polls: polls.round_trips.len(),
        poll: Latency::from_micros(&polls.round_trips),
        method: polls.method,
    })
}

impl LagSummary {
    /// Acknowledged writes per second.
    pub fn achieved_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.writes as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The JSON object of `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "endpoint": self.primary,
            "replica": self.replica,
            "workload": "measure-lag",
            "seconds": round(self.seconds, 3),
            "target_rate": self.target_rate,
            "pipeline": self.pipeline,
            "achieved_rate": round(self.achieved_rate(), 1),
            "writes": self.writes,
            "errors": self.errors,
            "first_error": self.first_error,
            "samples": self.samples,
            "unseen": self.unseen,
            "lag_ms": self.lag.to_json(),
            "method": self.method,
            "polls": self.polls,
            "poll_ms": { "p50": self.poll.p50, "p99": self.poll.p99, "max": self.poll.max },
        })
    }

    /// The plain-text summary.
    pub fn to_text(&self) -> String {
        let mut errors = self.errors.to_string();
        if let Some(first) = &self.first_error {
            errors = format!("{errors}, first: {first}");
        }
        format!(
            "dirkdb bench --measure-lag: writes on {} watched on {}\n\
             writes       {} in {:.3} s: {:.1}/s achieved of {}/s asked\n\
             errors       {errors}\n\
             lag ms       p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}\n\
             samples      {} rows measured, {} never seen on the replica\n\
             watching     {}: {} polls, poll round trip p50 {:.3} ms, p99 {:.3} ms\n{}",
            self.primary,
            self.replica,
            self.writes,
            self.seconds,
            self.achieved_rate(),
            self.target_rate,
            self.lag.p50,
            self.lag.p95,
            self.lag.p99,
            self.lag.max,
            self.lag.mean,
            self.samples,
            self.unseen,
            self.method,
            self.polls,
            self.poll.p50,
            self.poll.p99,
            self.rate_note(),
        )
    }

    /// A note when one connection could not write at the rate asked for.
    fn rate_note(&self) -> String {
        if self.errors > 0 || self.achieved_rate() >= 0.95 * self.target_rate as f64 {
            return String::new();
        }
        let how = match self.pipeline {
            1 => "one connection waiting for each answer (--pipeline N sends ahead)".to_string(),
            n => format!("one connection with up to {n} INSERTs unanswered"),
        };
        format!(
            "note         {how} wrote at {:.0}/s at most: the lag figures are at that rate\n",
            self.achieved_rate()
        )
    }

    /// Prints the summary on stdout and returns the exit status.
    pub fn print(&self, json: bool, max_error_ratio: f64) -> i32 {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_text());
        }
        if self.unseen > 0 {
            eprintln!(
                "dirkdb bench: {} acknowledged rows never appeared on the replica",
                self.unseen
            );
            return 1;
        }
        report::exit_code(
            report::error_ratio(self.writes, self.errors),
            max_error_ratio,
        )
    }
}

/// The progress bar over the writing time, with the writes so far.
fn start_ticker(plan: &LagPlan, started: Instant, written: Arc<AtomicU64>, quiet: bool) -> Ticker {
    let len = u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX);
    Ticker::start(progress::bar(len, quiet), move |bar| {
        let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        bar.set_position(millis.min(len));
        let writes = written.load(Ordering::Relaxed);
        if millis >= len {
            bar.set_message(format!(
                "{writes} writes; waiting for the replica to show the last one"
            ));
        } else {
            bar.set_message(format!("{writes} writes"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_catches_up_a_little_then_restarts() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        assert_eq!(slot(t0, t0), t0);
        assert_eq!(
            slot(t0, t0 + ms * 20),
            t0,
            "20 ms late: caught up on the schedule"
        );
        let late = t0 + Duration::from_millis(200);
        assert_eq!(slot(t0, late), late, "200 ms late: the schedule restarts");
    }

    #[test]
    fn lag_is_first_poll_seeing_the_row_minus_its_acknowledgement() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let writes = Writes {
            acks: vec![(1, ms(0)), (2, ms(10)), (3, ms(20))],
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(1),
            first_position: None,
            last_position: None,
        };
        let polls = Polls {
            seen: vec![(2, ms(12)), (3, ms(19))],
            round_trips: new_histogram().unwrap(),
            error: None,
            method: "poll",
        };
        let plan = LagPlan {
            primary: "p".into(),
            replica: "r".into(),
            database: "d".into(),
            rate: 100,
            duration: Duration::from_secs(1),
            credentials: None,
            poll: false,
            pipeline: 1,
        };
        let s = summarize(&plan, writes, polls).unwrap();
        assert_eq!((s.samples, s.unseen, s.writes), (3, 0, 3));
        assert!((s.lag.max - 12.0).abs() < 0.05, "{:?}", s.lag);
        assert!(s.lag.p50 < 2.1, "{:?}", s.lag);
    }
}
