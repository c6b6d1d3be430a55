//! The summary of a run: plain text for people, one JSON object (`--json`) for scripts, and the
//! exit status that goes with it.
//!
//! JSON fields (stable): `endpoint`, `workload`, `concurrency`, `seconds` (measured wall time),
//! `operations` (statements that succeeded), `ops_per_sec` (`operations / seconds`), `errors`
//! (statements that failed), `first_error` (its text or null), and `latency_ms` with `p50`,
//! `p95`, `p99`, `p999`, `max`, `mean` (milliseconds, of successful statements). A workload of
//! more than one statement (`mixed`, `custom` with several) adds `statements`: per statement,
//! `statement` (its name), `operations` and `latency_ms`, so the reads and the writes of a mix
//! are seen apart.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::runner::{Outcome, Plan};

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Highest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The figures of a histogram of microseconds (all 0 when it is empty).
    pub fn from_micros(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |quantile: f64| micros_to_ms(h.value_at_quantile(quantile) as f64);
        Latency {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: micros_to_ms(h.max() as f64),
            mean: micros_to_ms(h.mean()),
        }
    }

    /// The JSON object `{p50, p95, p99, p999, max, mean}`.
    pub fn to_json(&self) -> Value {
        json!({
            "p50": self.p50, "p95": self.p95, "p99": self.p99,
            "p999": self.p999, "max": self.max, "mean": self.mean,
        })
    }

    /// One line: `p50 0.412  p95 …`.
    pub fn to_text(&self) -> String {
        format!(
            "p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50, self.p95, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// Microseconds to milliseconds, rounded to the microsecond.
pub fn micros_to_ms(micros: f64) -> f64 {
    micros.round() / 1000.0
}

/// Rounds to `digits` decimals (for stable, short JSON numbers).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Share of `errors` among all attempts (0 when there were none).
pub fn error_ratio(operations: u64, errors: u64) -> f64 {
    match operations + errors {
        0 => 0.0,
        total => errors as f64 / total as f64,
    }
}

/// Exit status for an error ratio: 1 (with a note on stderr) above `max`, else 0.
pub fn exit_code(ratio: f64, max: f64) -> i32 {
    if ratio > max {
        eprintln!(
            "dirkdb bench: {:.2}% of the operations failed, more than --max-error-ratio {max}",
            ratio * 100.0
        );
        1
    } else {
        0
    }
}

/// The summary of a load run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `host:port`.
    pub endpoint: String,
    /// Workload name as given to `-w`.
    pub workload: String,
    /// Workload description for the text output.
    pub description: String,
    /// Clients.
    pub concurrency: u32,
    /// `--rate`: the statements per second asked for (`None`: back to back).
    pub target_rate: Option<u64>,
    /// Warmup seconds (not measured).
    pub warmup: f64,
    /// Measured wall time in seconds.
    pub seconds: f64,
    /// Successful statements.
    pub operations: u64,
    /// Failed statements.
    pub errors: u64,
    /// The earliest failure.
    pub first_error: Option<String>,
    /// Latency of the successful statements.
    pub latency: Latency,
    /// Per statement of a workload of several: its name, successful runs and latency.
    pub statements: Vec<StatementFigures>,
}

/// What one statement of a workload of several measured.
#[derive(Debug, Clone)]
pub struct StatementFigures {
    /// Its name (`point-select`, `update`, or a custom statement's first words).
    pub name: String,
    /// Its successful runs.
    pub operations: u64,
    /// Their latency.
    pub latency: Latency,
}

/// The figures per statement, none for a workload of one statement.
fn statement_figures(names: Vec<String>, histograms: &[Histogram<u64>]) -> Vec<StatementFigures> {
    if names.len() < 2 {
        return Vec::new();
    }
    names
        .into_iter()
        .zip(histograms)
        .map(|(name, h)| StatementFigures {
            name,
            operations: h.len(),
            latency: Latency::from_micros(h),
        })
        .collect()
}

impl Summary {
    /// The summary of `outcome`, a run of `plan`.
    pub fn new(plan: &Plan, outcome: Outcome) -> Summary {
        Summary {
            endpoint: plan.endpoint.clone(),
            workload: plan.workload.kind.name().to_string(),
            description: plan.workload.describe(),
            concurrency: plan.concurrency,
            target_rate: plan.rate,
            warmup: plan.warmup.as_secs_f64(),
            seconds: outcome.elapsed.as_secs_f64(),
            operations: outcome.histogram.len(),
            errors: outcome.errors,
            first_error: outcome.first_error,
            latency: Latency::from_micros(&outcome.histogram),
            statements: statement_figures(plan.workload.statement_names(), &outcome.per_statement),
        }
    }

    /// Successful statements per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.operations as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The JSON object of `--json`.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "endpoint": self.endpoint,
            "workload": self.workload,
            "concurrency": self.concurrency,
            "target_rate": self.target_rate,
            "seconds": round(self.seconds, 3),
            "operations": self.operations,
            "ops_per_sec": round(self.ops_per_sec(), 1),
            "errors": self.errors,
            "first_error": self.first_error,
            "latency_ms": self.latency.to_json(),
        });
        if !self.statements.is_empty() {
            value["statements"] = self
                .statements
                .iter()
                .map(|s| {
                    json!({
                        "statement": s.name,
                        "operations": s.operations,
                        "latency_ms": s.latency.to_json(),
                    })
                })
                .collect();
        }
        value
    }

    /// The plain-text summary.
    pub fn to_text(&self) -> String {
        let mut errors = self.errors.to_string();
        if let Some(first) = &self.first_error {
            let ratio = error_ratio(self.operations, self.errors) * 100.0;
            errors = format!("{errors} ({ratio:.2}%), first: {first}");
        }
        let clients = match self.target_rate {
            Some(rate) => format!("{} (paced: {rate} statements/s in all)", self.concurrency),
            None => self.concurrency.to_string(),
        };
        let mut text = format!(
            "dirkdb bench: {} on {}\n\
             clients      {clients}\n\
             measured     {:.3} s (after {} s of warmup)\n\
             operations   {}\n\
             throughput   {:.1} ops/s\n\
             errors       {errors}\n\
             latency ms   {}\n",
            self.description,
            self.endpoint,
            self.seconds,
            self.warmup,
            self.operations,
            self.ops_per_sec(),
            self.latency.to_text(),
        );
        for s in &self.statements {
            text.push_str(&format!(
                "  {}: {} operations, latency ms {}\n",
                s.name,
                s.operations,
                s.latency.to_text()
            ));
        }
        text
    }

    /// Prints the summary on stdout and returns the exit status.
    pub fn print(&self, json: bool, max_error_ratio: f64) -> i32 {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_text());
        }
        exit_code(error_ratio(self.operations, self.errors), max_error_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_ratios() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let l = Latency::from_micros(&h);
        assert!(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert!((l.max - 10.0).abs() < 0.02, "{l:?}");
        assert_eq!(
            Latency::from_micros(&Histogram::new(3).unwrap()),
            Latency::default()
        );
        assert_eq!(error_ratio(0, 0), 0.0);
        assert_eq!(error_ratio(99, 1), 0.01);
        assert_eq!(exit_code(0.01, 0.01), 0);
        assert_eq!(exit_code(0.02, 0.01), 1);
        assert_eq!(round(1.23456, 3), 1.235);
    }
}
