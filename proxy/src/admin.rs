//! The proxy's admin HTTP API: `GET /health`, `GET /cluster/status` (every instance with its
//! role, health, position, lag, statements in flight, reads, writes, errors and mean latency),
//! and `GET /metrics` in Prometheus text format. Both also show the configured replication
//! mode, each instance's reported mode, and the FILE-mode write trigger counters
//! ([`crate::file_triggers`]). `GET /` is the status page ([`crate::status_page`]).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::file_triggers::FileTriggers;
use crate::topology::{SharedTopology, Topology};
use crate::ProxyStats;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The current topology.
    pub topology: Arc<SharedTopology>,
    /// Client counters.
    pub stats: Arc<ProxyStats>,
    /// FILE-mode write triggers and their counters.
    pub file_triggers: Arc<FileTriggers>,
    /// The status page's samples of the last minutes.
    pub history: Arc<crate::status_page::History>,
}

/// Serves the admin API until the task is aborted; with `security.requireAuth`, everything but
/// `/health` and `/metrics` needs ADMIN (HTTP Basic).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    security: Arc<dirkdb_core::security::Security>,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/cluster/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cluster/failover", axum::routing::post(failover))
        .merge(crate::status_page::routes())
        .with_state(state);
    let app = dirkdb_core::security::http::protect(app, security)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "proxy admin API stopped");
    }
}

/// A JSON answer ending with a newline, so `curl` leaves the shell prompt on its own line.
struct JsonLine(Value);

impl IntoResponse for JsonLine {
    fn into_response(self) -> Response {
        let mut body = self.0.to_string();
        body.push('\n');
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

async fn health(State(s): State<AdminState>) -> JsonLine {
    let t = s.topology.load();
    JsonLine(json!({ "status": "ok", "primary": t.primary().id }))
}

fn instances(t: &Topology) -> Vec<Value> {
    t.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let h = b.health();
            let (reads, writes, errors, busy) = b.counters();
            let served = reads + writes;
            json!({
                "id": b.id,
                "address": b.addr,
                "role": t.role_of(i).to_string(),
                "reportedRole": h.reported_role,
                "term": crate::lease::term_of(&b.id),
                "reportedMode": h.reported_mode,
                "health": h.state,
                "committedSequence": h.committed,
                "lagOperations": h.lag_operations,
                "lagMs": h.lag_ms,
                "inFlight": b.in_flight(),
                "reads": reads,
                "writes": writes,
                "errors": errors,
                "statementErrors": b.statement_errors(),
                "meanLatencyMs": if served == 0 { 0.0 } else { busy as f64 / served as f64 / 1000.0 },
                "lastError": h.last_error,
            })
        })
        .collect()
}

async fn status(State(s): State<AdminState>) -> JsonLine {
    let t = s.topology.load();
    let reads = &t.config.routing.reads;
    JsonLine(json!({
        "primary": t.primary().id,
        "strategy": reads.strategy.as_str(),
        "consistency": reads.consistency.as_str(),
        "writeConcern": { "replicas": t.config.routing.writes.write_concern.replicas },
        "replication": t.config.replication.kind.as_str(),
        "writeMode": t.config.routing.writes.mode.as_str(),
        "multiPrimary": crate::ownership::status(&t),
        "fileTriggers": s.file_triggers.stats(),
        "clientConnections": s.stats.open(),
        "changeFeeds": s.stats.feeds(),
        "coordinator": crate::coordinator::status(),
        "instances": instances(&t),
    }))
}

/// `POST /cluster/failover` (optional body `{"to": "m2"}`): MANUAL failover.
async fn failover(State(s): State<AdminState>, body: Option<Json<Value>>) -> Response {
    let to = body
        .as_ref()
        .and_then(|b| b["to"].as_str().map(str::to_string));
    match crate::failover::fail_over(&s.topology, to.as_deref()).await {
        Ok(primary) => JsonLine(json!({ "primary": primary })).into_response(),
        Err(e) => (
            axum::http::StatusCode::CONFLICT,
            JsonLine(json!({ "error": e })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let t = s.topology.load();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP dirkdb_proxy_client_connections Client connections open.\n# TYPE dirkdb_proxy_client_connections gauge\ndirkdb_proxy_client_connections {}", s.stats.open());
    let series: [(&str, &str, &str); 6] = [
        (
            "dirkdb_proxy_reads_total",
            "Reads served by the instance.",
            "counter",
        ),
        (
            "dirkdb_proxy_writes_total",
            "Writes served by the instance.",
            "counter",
        ),
        (
            "dirkdb_proxy_errors_total",
            "Errors from the instance.",
            "counter",
        ),
        (
            "dirkdb_proxy_busy_seconds_total",
            "Time spent in statements on the instance.",
            "counter",
        ),
        (
            "dirkdb_proxy_instance_up",
            "1 when the instance is not down.",
            "gauge",
        ),
        (
            "dirkdb_proxy_instance_lag_ms",
            "How long the instance has been behind the primary.",
            "gauge",
        ),
    ];
    for (k, (name, help, kind)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for b in &t.backends {
            let (reads, writes, errors, busy) = b.counters();
            let h = b.health();
            let value = match k {
                0 => reads as f64,
                1 => writes as f64,
                2 => errors as f64,
                3 => busy as f64 / 1e6,
                4 => f64::from(u8::from(h.state != crate::backend::HealthState::Down)),
                _ => h.lag_ms as f64,
            };
            let _ = writeln!(out, "{name}{{instance=\"{}\"}} {value}", b.id);
        }
    }
    let file_mode = t.config.replication.kind == dirkdb_core::config::ReplicationType::File;
    let _ = writeln!(out, "# HELP dirkdb_proxy_replication_file_mode 1 when config.json's replication.type is FILE.\n# TYPE dirkdb_proxy_replication_file_mode gauge\ndirkdb_proxy_replication_file_mode {}", u8::from(file_mode));
    let name = "dirkdb_proxy_instance_file_mode";
    let _ = writeln!(out, "# HELP {name} 1 when the instance reports FILE replication, 0 for OPLOG (absent when it reports no mode).\n# TYPE {name} gauge");
    for b in &t.backends {
        if let Some(mode) = b.health().reported_mode {
            let value = u8::from(mode.eq_ignore_ascii_case("FILE"));
            let _ = writeln!(out, "{name}{{instance=\"{}\"}} {value}", b.id);
        }
    }
    let triggers = s.file_triggers.stats();
    let trigger_series = [
        (
            "dirkdb_proxy_file_triggers_requested_total",
            "Acknowledged writes handed to the FILE replication triggers.",
            "counter",
            triggers.requested,
        ),
        (
            "dirkdb_proxy_file_triggers_coalesced_total",
            "Triggers absorbed by a request already in flight or due.",
            "counter",
            triggers.coalesced,
        ),
        (
            "dirkdb_proxy_file_trigger_requests_sent_total",
            "POST /replication/written requests answered by the primary.",
            "counter",
            triggers.sent,
        ),
        (
            "dirkdb_proxy_file_trigger_requests_failed_total",
            "POST /replication/written requests that failed.",
            "counter",
            triggers.failed,
        ),
        (
            "dirkdb_proxy_file_trigger_requests_skipped_total",
            "Trigger requests not sent (no FILE mode, or a primary without adminPort).",
            "counter",
            triggers.skipped,
        ),
        (
            "dirkdb_proxy_file_triggers_in_flight",
            "Databases with a trigger request in flight or a follow-up due.",
            "gauge",
            triggers.in_flight,
        ),
    ];
    for (name, help, kind, value) in trigger_series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
