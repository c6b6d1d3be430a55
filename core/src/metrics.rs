//! The one Prometheus writer behind the server's, the proxy's and the cache's `GET /metrics`.
//!
//! Each part describes its metrics once, as [`Metric`] constants (name, help, type), and writes
//! their current values into a [`Page`] at every scrape; [`render`] turns the page into
//! Prometheus' text format (version 0.0.4) with `prometheus-client`, which escapes label values
//! and help texts. A counter's name is given without `_total`: the writer appends it, so the
//! exposed names are `dirkdb_statements_total` and alike.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What every part counts the same way about the connections it refused: over
/// `limits.maxConnectionsPerAddress`, failed authentications, failed TLS handshakes. Each part
/// keeps one and writes it into its page with [`Guards::write`].
#[derive(Debug, Clone)]
pub struct Guards {
    /// The connection limits (their refusals).
    pub limits: std::sync::Arc<crate::conn_limit::ClientLimits>,
    /// Users and the failure limiter (its failures).
    pub security: std::sync::Arc<crate::security::Security>,
    /// The ports' TLS, when on (its failed handshakes).
    pub tls: Option<std::sync::Arc<crate::tls::TlsServer>>,
}

const REFUSED_PER_ADDRESS: Metric = Metric::counter(
    "dirkdb_connections_refused_per_address",
    "Connections refused over limits.maxConnectionsPerAddress.",
);
const AUTH_FAILURES: Metric = Metric::counter(
    "dirkdb_auth_failures",
    "Authentications refused (wrong user or password, or over security.maxAuthFailures), SQL and admin ports.",
);
const TLS_FAILURES: Metric = Metric::counter(
    "dirkdb_tls_handshake_failures",
    "TLS handshakes that failed or timed out, SQL and admin ports (0 without security.tls).",
);

impl Guards {
    /// Writes the three counters.
    pub fn write(&self, page: &mut Page) -> fmt::Result {
        page.one(&REFUSED_PER_ADDRESS, self.limits.refused_per_address())?;
        page.one(&AUTH_FAILURES, self.security.auth_failures())?;
        let tls = self.tls.as_ref().map_or(0, |t| t.handshake_failures());
        page.one(&TLS_FAILURES, tls)
    }
}

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Whether a metric can go down ([`Kind::Gauge`]) or only up ([`Kind::Counter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A total that only goes up; its exposed name ends with `_total`.
    Counter,
}

/// One metric's description, written once per part.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name; a counter's without its `_total` suffix.
    pub name: &'static str,
    /// One sentence shown as `# HELP`.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
}

impl Metric {
    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            help,
            kind: Kind::Gauge,
        }
    }

    /// A counter, `name` without `_total`.
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            help,
            kind: Kind::Counter,
        }
    }

    /// The name of its samples (`_total` appended for a counter).
    pub fn sample_name(&self) -> String {
        match self.kind {
            Kind::Gauge => self.name.to_string(),
            Kind::Counter => format!("{}_total", self.name),
        }
    }
}

/// One sample's value; integers are written as integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count or a position.
    Int(i64),
    /// A ratio or seconds.
    Float(f64),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(i64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// Labels of one sample, as `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The metrics of one scrape, written in the order they are described.
pub struct Page<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Page<'_> {
    /// Writes `metric` with one sample without labels of its own.
    pub fn one(&mut self, metric: &Metric, value: impl Into<Value>) -> fmt::Result {
        self.each(metric, [(Labels::new(), value.into())])
    }

    /// Writes `metric` with one sample per `(labels, value)`; with no sample, only its
    /// description.
    pub fn each<V: Into<Value>>(
        &mut self,
        metric: &Metric,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) -> fmt::Result {
        let kind = match metric.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        };
        let mut family = self
            .encoder
            .encode_descriptor(metric.name, metric.help, None, kind)?;
        for (labels, value) in samples {
            encode(metric.kind, value.into(), family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Writes `metric` with one sample per distinct value of `keys`, labelled `label`, whose
    /// value is how many times it occurs (in key order).
    pub fn counts(
        &mut self,
        metric: &Metric,
        label: &'static str,
        keys: impl IntoIterator<Item = String>,
    ) -> fmt::Result {
        let mut counted: std::collections::BTreeMap<String, u64> = Default::default();
        for key in keys {
            *counted.entry(key).or_default() += 1;
        }
        self.each(
            metric,
            counted.into_iter().map(|(key, n)| (vec![(label, key)], n)),
        )
    }
}

/// Writes one sample's value as its metric's type.
fn encode(kind: Kind, value: Value, encoder: MetricEncoder) -> fmt::Result {
    match (kind, value) {
        (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(encoder),
        (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(encoder),
        (Kind::Counter, Value::Int(v)) => {
            ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(encoder)
        }
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v.max(0.0)).encode(encoder),
    }
}

/// Writes a page at each scrape (what [`render`] registers with `prometheus-client`).
struct PageWriter<F>(F);

impl<F> fmt::Debug for PageWriter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageWriter")
    }
}

impl<F> Collector for PageWriter<F>
where
    F: Fn(&mut Page) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut Page { encoder })
    }
}

/// The text of one scrape: `write` describes and fills the page; `constant` labels (the
/// server's `instance`) come first on every sample.
pub fn render<F>(constant: Labels, write: F) -> Result<String, fmt::Error>
where
    F: Fn(&mut Page) -> fmt::Result + Send + Sync + 'static,
{
    let mut registry = Registry::with_labels(
        constant
            .into_iter()
            .map(|(k, v)| (std::borrow::Cow::Borrowed(k), std::borrow::Cow::Owned(v))),
    );
    registry.register_collector(Box::new(PageWriter(write)));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Metric = Metric::gauge("t_open", "Connections open.");
    const DONE: Metric = Metric::counter("t_done", "Statements answered.");
    const RATIO: Metric = Metric::gauge("t_ratio", "A ratio.");

    #[test]
    fn writes_names_types_constant_and_escaped_labels() {
        let text = render(vec![("instance", "m1".into())], |page| {
            page.one(&OPEN, 2i64)?;
            page.one(&DONE, 7u64)?;
            page.one(&RATIO, 0.75)?;
            page.each(&DONE, [(vec![("replica", "a\"b\\c\nd".to_string())], 3u64)])
        })
        .unwrap();
        assert!(text.contains("# HELP t_open Connections open.\n# TYPE t_open gauge\n"));
        assert!(text.contains("t_open{instance=\"m1\"} 2\n"), "{text}");
        assert!(text.contains("# TYPE t_done_total counter\n"), "{text}");
        assert!(text.contains("t_done_total{instance=\"m1\"} 7\n"), "{text}");
        assert!(text.contains("t_ratio{instance=\"m1\"} 0.75\n"), "{text}");
        assert!(
            text.contains("t_done_total{instance=\"m1\",replica=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn without_constant_labels_samples_have_no_braces() {
        let text = render(Vec::new(), |page| page.one(&OPEN, 1i64)).unwrap();
        assert!(text.contains("\nt_open 1\n"), "{text}");
        assert_eq!(DONE.sample_name(), "t_done_total");
    }
}
