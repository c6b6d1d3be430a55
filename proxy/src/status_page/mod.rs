//! The status page on the proxy's admin port: `GET /` serves one HTML page (with
//! `/status/style.css` and `/status/app.js`, all compiled into the binary) that draws the
//! topology, replication lag, statements per second, the cache's hit ratio and the last
//! failovers, and refreshes itself once a second from two JSON documents of the same origin:
//! `GET /cluster/status` (the live view, see [`crate::admin`]) and `GET /status/history`
//! (the [`history`] ring buffer, the cache's state and the [`failovers`] log). Being served
//! from the admin port itself, the page's requests carry whatever HTTP credentials the browser
//! holds for that port.

pub(crate) mod failovers;
pub(crate) mod history;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::admin::AdminState;

pub(crate) use failovers::load as load_failovers;
pub(crate) use failovers::record as record_failover;
pub(crate) use history::History;

const PAGE: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The page's routes, merged into the admin router.
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(page))
        .route("/status/style.css", get(style))
        .route("/status/app.js", get(script))
        .route("/status/history", get(history_json))
}

/// Now as Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `?since=<Unix ms>`: only the samples taken after it.
#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

/// `GET /status/history[?since=MS]`.
async fn history_json(State(s): State<AdminState>, Query(q): Query<Since>) -> Response {
    let t = s.topology.load();
    let config = &t.config;
    let body = json!({
        "now": now_ms(),
        "intervalMs": history::INTERVAL.as_millis() as u64,
        "capacity": history::CAPACITY,
        "writeMode": config.routing.writes.mode.as_str(),
        "failoverMode": config.failover.mode.as_str(),
        "maxReplicationLagMs": config.routing.reads.max_replication_lag_ms,
        "proxy": format!("{}:{}", config.load_balancer.listen_host, config.load_balancer.listen_port),
        "cache": s.history.cache_view(),
        "failovers": failovers::recent(),
        "samples": s.history.since(q.since),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
