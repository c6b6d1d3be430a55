//! The proxy's admin HTTP API: `GET /health`, `GET /cluster/status` (every instance with its
//! role, health, position, lag, statements in flight, reads, writes, errors and mean latency),
//! and `GET /metrics` in Prometheus text format (under MULTI_PRIMARY with the owners,
//! [`crate::owner_metrics`]). Both also show the configured replication
//! mode, each instance's reported mode, and the FILE-mode write trigger counters
//! ([`crate::file_triggers`]). `GET /` is the status page ([`crate::status_page`]).

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
pub(crate) struct AdminState {
    /// The current topology.
    pub topology: Arc<SharedTopology>,
    /// Client counters.
    pub stats: Arc<ProxyStats>,
    /// FILE-mode write triggers and their counters.
    pub file_triggers: Arc<FileTriggers>,
    /// The status page's samples of the last minutes.
    pub history: Arc<crate::status_page::History>,
    /// The refusals counted alike by every part.
    pub guards: dirkdb_core::metrics::Guards,
}

/// Serves the admin API until the task is aborted; with `security.requireAuth`, everything but
/// `/health` and `/metrics` needs ADMIN (HTTP Basic).
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    security: Arc<dirkdb_core::security::Security>,
    tls: Option<Arc<dirkdb_core::tls::TlsServer>>,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/cluster/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cluster/failover", axum::routing::post(failover))
        .merge(crate::status_page::routes())
        .with_state(state);
    let app = dirkdb_core::security::http::protect(app, security);
    if let Err(e) = dirkdb_core::tls::http::serve(listener, app, tls).await {
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
    let t = s.topology.load_full();
    let reads = &t.config.routing.reads;
    JsonLine(json!({
        "primary": t.primary().id,
        "strategy": reads.strategy.as_str(),
        "consistency": reads.consistency.as_str(),
        "writeConcern": { "replicas": t.config.routing.writes.write_concern.replicas },
        "replication": t.config.replication.kind.as_str(),
        "writeMode": t.config.routing.writes.mode.as_str(),
        "multiPrimary": crate::ownership::status(&t).await,
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
            JsonLine(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let owners = crate::owner_metrics::gather(&s.topology.load_full()).await;
    let written = dirkdb_core::metrics::render(Vec::new(), move |page| {
        write_metrics(&s, page)?;
        match &owners {
            Some(owners) => crate::owner_metrics::write(owners, page),
            None => Ok(()),
        }
    });
    match written {
        Ok(text) => (
            [(header::CONTENT_TYPE, dirkdb_core::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            JsonLine(json!({ "error": "cannot write the metrics" })),
        )
            .into_response(),
    }
}

/// Every metric of `GET /metrics`, described once.
mod described {
    use dirkdb_core::metrics::Metric;

    pub(super) const CLIENTS: Metric = Metric::gauge(
        "dirkdb_proxy_client_connections",
        "Client connections open.",
    );
    pub(super) const READS: Metric =
        Metric::counter("dirkdb_proxy_reads", "Reads served by the instance.");
    pub(super) const WRITES: Metric =
        Metric::counter("dirkdb_proxy_writes", "Writes served by the instance.");
    pub(super) const ERRORS: Metric =
        Metric::counter("dirkdb_proxy_errors", "Errors from the instance.");
    pub(super) const BUSY: Metric = Metric::counter(
        "dirkdb_proxy_busy_seconds",
        "Time spent in statements on the instance.",
    );
    pub(super) const UP: Metric = Metric::gauge(
        "dirkdb_proxy_instance_up",
        "1 when the instance is not down.",
    );
    pub(super) const LAG: Metric = Metric::gauge(
        "dirkdb_proxy_instance_lag_ms",
        "How long the instance has been behind the primary.",
    );
    pub(super) const FILE_MODE: Metric = Metric::gauge(
        "dirkdb_proxy_replication_file_mode",
        "1 when config.json's replication.type is FILE.",
    );
    pub(super) const INSTANCE_FILE_MODE: Metric = Metric::gauge(
        "dirkdb_proxy_instance_file_mode",
        "1 when the instance reports FILE replication, 0 for OPLOG (absent when it reports no mode).",
    );
    pub(super) const TRIGGERS_REQUESTED: Metric = Metric::counter(
        "dirkdb_proxy_file_triggers_requested",
        "Acknowledged writes handed to the FILE replication triggers.",
    );
    pub(super) const TRIGGERS_COALESCED: Metric = Metric::counter(
        "dirkdb_proxy_file_triggers_coalesced",
        "Triggers absorbed by a request already in flight or due.",
    );
    pub(super) const TRIGGERS_SENT: Metric = Metric::counter(
        "dirkdb_proxy_file_trigger_requests_sent",
        "POST /replication/written requests answered by the primary.",
    );
    pub(super) const TRIGGERS_FAILED: Metric = Metric::counter(
        "dirkdb_proxy_file_trigger_requests_failed",
        "POST /replication/written requests that failed.",
    );
    pub(super) const TRIGGERS_SKIPPED: Metric = Metric::counter(
        "dirkdb_proxy_file_trigger_requests_skipped",
        "Trigger requests not sent (no FILE mode, or a primary without adminPort).",
    );
    pub(super) const TRIGGERS_IN_FLIGHT: Metric = Metric::gauge(
        "dirkdb_proxy_file_triggers_in_flight",
        "Databases with a trigger request in flight or a follow-up due.",
    );
}

/// The proxy's counters, each instance's (labelled `instance`), then the FILE-mode triggers'.
fn write_metrics(s: &AdminState, page: &mut dirkdb_core::metrics::Page) -> std::fmt::Result {
    use described::*;
    let t = s.topology.load();
    page.one(&CLIENTS, s.stats.open())?;
    s.guards.write(page)?;
    let per_instance =
        |figure: &dyn Fn(&crate::backend::Backend) -> dirkdb_core::metrics::Value| {
            t.backends
                .iter()
                .map(|b| (vec![("instance", b.id.clone())], figure(b)))
                .collect::<Vec<_>>()
        };
    page.each(&READS, per_instance(&|b| b.counters().0.into()))?;
    page.each(&WRITES, per_instance(&|b| b.counters().1.into()))?;
    page.each(&ERRORS, per_instance(&|b| b.counters().2.into()))?;
    page.each(
        &BUSY,
        per_instance(&|b| (b.counters().3 as f64 / 1e6).into()),
    )?;
    let up = |b: &crate::backend::Backend| b.health().state != crate::backend::HealthState::Down;
    page.each(&UP, per_instance(&|b| up(b).into()))?;
    page.each(&LAG, per_instance(&|b| b.health().lag_ms.into()))?;
    let file_mode = t.config.replication.kind == dirkdb_core::config::ReplicationType::File;
    page.one(&FILE_MODE, file_mode)?;
    let reported = t.backends.iter().filter_map(|b| {
        let mode = b.health().reported_mode?;
        Some((
            vec![("instance", b.id.clone())],
            mode.eq_ignore_ascii_case("FILE"),
        ))
    });
    page.each(&INSTANCE_FILE_MODE, reported)?;
    let triggers = s.file_triggers.stats();
    page.one(&TRIGGERS_REQUESTED, triggers.requested)?;
    page.one(&TRIGGERS_COALESCED, triggers.coalesced)?;
    page.one(&TRIGGERS_SENT, triggers.sent)?;
    page.one(&TRIGGERS_FAILED, triggers.failed)?;
    page.one(&TRIGGERS_SKIPPED, triggers.skipped)?;
    page.one(&TRIGGERS_IN_FLIGHT, triggers.in_flight)
}
