//! The cache's admin HTTP API: `GET /health`, `GET /stats` (every counter as JSON) and
//! `GET /metrics` (Prometheus text format).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::result_store::ResultStore;
use crate::stats::CacheStats;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The kept results (to settle pending evictions before reporting).
    pub store: Arc<ResultStore>,
    /// The counters.
    pub stats: Arc<CacheStats>,
    /// Where the cache forwards to.
    pub upstream: String,
    /// The refusals counted alike by every part.
    pub guards: dirkdb_core::metrics::Guards,
}

/// Serves the admin API until the task is aborted; with `security.requireAuth`, `/stats` (and,
/// with `protectMetrics`, everything) needs ADMIN over HTTP Basic.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    security: std::sync::Arc<dirkdb_core::security::Security>,
    tls: Option<std::sync::Arc<dirkdb_core::tls::TlsServer>>,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(state);
    let app = dirkdb_core::security::http::protect(app, security);
    if let Err(e) = dirkdb_core::tls::http::serve(listener, app, tls).await {
        tracing::error!(error = %e, "cache admin API stopped");
    }
}

async fn health(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "upstream": s.upstream,
        "changeFeed": if s.store.feed_connected() { "connected" } else { "disconnected" },
    }))
}

async fn stats(State(s): State<AdminState>) -> Json<Value> {
    s.store.settle();
    Json(s.stats.to_json())
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.store.settle();
    match s.stats.to_prometheus(Some(s.guards.clone())) {
        Ok(text) => (
            [(header::CONTENT_TYPE, dirkdb_core::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot write the metrics\n",
        )
            .into_response(),
    }
}
