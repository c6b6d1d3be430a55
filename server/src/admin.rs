//! The admin HTTP API of a server (DESIGN.md §7): health, replication status and control, the
//! oplog in LokiJS's shape, content checksums, and Prometheus metrics.
//!
//! Handlers that read SQLite run on blocking threads; errors are JSON `{"error": …}` with a
//! 4xx/5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::checksum::{database_digest, table_digests, Digest};
use crate::error::ServerError;
use crate::oplog::store::{self, FileStats, Filter};
use crate::oplog::{Entry, Op};
use crate::state::ServerState;
use dirkdb_core::config::ReplicationType;

type Shared = State<Arc<ServerState>>;

/// Serves the admin API on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    let security = state.security.security.clone();
    let tls = state.security.tls.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/replication/status", get(status))
        .route("/replication/replicas", get(replicas))
        .route("/replication/changes", get(changes))
        .route("/replication/oplog/stats", get(oplog_stats))
        .route("/replication/oplog/clear", post(oplog_clear))
        .route("/replication/checksum", get(checksum))
        .route("/replication/promote", post(promote))
        .route("/replication/configure", post(configure))
        .route("/replication/term", post(raise_term))
        .route("/replication/lease", post(renew_lease))
        .route("/replication/write-probe", post(write_probe))
        .route("/replication/ownership", post(set_ownership))
        .route("/replication/owners", get(owners))
        .route("/replication/conflicts", get(conflicts))
        .route("/replication/mode", post(set_mode))
        .route("/replication/written", post(written))
        .route("/metrics", get(metrics))
        .with_state(state);
    let app = dirkdb_core::security::http::protect(app, security);
    if let Err(e) = dirkdb_core::tls::http::serve(listener, app, tls).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// An error answered as JSON.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

async fn blocking<T: Send + 'static>(
    state: &Arc<ServerState>,
    f: impl FnOnce(&ServerState) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ApiError> {
    let s = state.clone();
    Ok(crate::blocking::blocking(move || f(&s)).await?)
}

fn role(state: &ServerState) -> &'static str {
    if state.is_replica() {
        "REPLICA"
    } else {
        "PRIMARY"
    }
}

async fn health(State(state): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "instance": state.instance_id,
        "role": role(&state),
        "term": state.term(),
        "committedSequence": state.write_path.committed(),
        "databases": state.catalog.names().len(),
    }))
}

async fn status(State(state): Shared) -> ApiResult {
    let (chain, floor) = blocking(&state, |s| {
        Ok((s.meta.history(&s.instance_id)?, s.meta.pruned_through()?))
    })
    .await?;
    let committed = state.write_path.committed();
    let follower = state.replication.follower();
    Ok(Json(json!({
        "instance": state.instance_id,
        "role": role(&state),
        "term": state.term(),
        "fenced": state.is_fenced(),
        "acceptsWrites": state.accepts_writes(),
        "lease": {
            "required": state.write_path.lease().required(),
            "leftMs": state.write_path.lease().remaining().map(|d| d.as_millis() as u64),
            "majority": state.write_path.lease().majority(),
        },
        "etcdLease": crate::replication::etcd_lease::status(&state),
        "committedSequence": committed,
        "mode": state.replication.mode().as_str(),
        "prunedThrough": floor,
        "history": chain,
        "following": state.is_replica().then(|| {
            let mut f = serde_json::to_value(&follower).unwrap_or(Value::Null);
            f["lagOperations"] = json!(follower.primary_sequence.saturating_sub(committed));
            f
        }),
        "replicas": state.replication.replicas(committed),
        "rollbackFiles": rollback_files(&state),
        "ownership": ownership_status(&state),
        "peers": state.settings.ownership.active().then(|| state.peers.streams()),
        "checkpoints": state.settings.ownership.active().then(|| {
            state
                .peers
                .checkpoints(&crate::replication::peers::acked_by_peer(&state.replication))
        }),
        "positions": peer_positions(&state),
        "conflicts": conflict_counts(&state).await?,
    })))
}

/// MULTI_PRIMARY: this master's open and resolved conflicts (`null` outside MULTI_PRIMARY).
async fn conflict_counts(state: &Arc<ServerState>) -> Result<Value, ApiError> {
    if !state.settings.ownership.active() {
        return Ok(Value::Null);
    }
    let (open, resolved) = blocking(state, |s| crate::replication::conflicts::counts_of(s)).await?;
    Ok(json!({
        "open": open,
        "resolved": resolved,
        "heldForHome": state.peers.held_for_home(),
    }))
}

/// `GET /replication/conflicts`: the conflicts this master recorded as the home of their rows
/// (MULTI_PRIMARY; 409 otherwise), with the counts.
async fn conflicts(State(state): Shared) -> ApiResult {
    if !state.settings.ownership.active() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "not a master of a MULTI_PRIMARY topology (routing.writes.mode)".into(),
        ));
    }
    let listed = blocking(&state, |s| crate::replication::conflicts::listed_json(s)).await?;
    let open = listed.iter().filter(|c| c["state"] == "open").count();
    Ok(Json(json!({
        "instance": state.instance_id,
        "open": open,
        "resolved": listed.len() - open,
        "conflicts": listed,
    })))
}

/// MULTI_PRIMARY: the position this master reached in every master's stream, its own
/// (committed) included (`null` outside MULTI_PRIMARY).
fn peer_positions(state: &ServerState) -> Value {
    if !state.settings.ownership.active() {
        return Value::Null;
    }
    let mut positions = state.peers.positions();
    positions.insert(state.instance_id.clone(), state.write_path.committed());
    json!(positions)
}

/// MULTI_PRIMARY: the masters up and the ownership term this master writes under (`null`
/// outside MULTI_PRIMARY).
fn ownership_status(state: &ServerState) -> Value {
    let ownership = &state.settings.ownership;
    if !ownership.active() {
        return Value::Null;
    }
    let mut view = serde_json::to_value(ownership.view()).unwrap_or(Value::Null);
    view["leaseLeftMs"] = json!(ownership.lease_left().map(|d| d.as_millis() as u64));
    view
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnershipBody {
    up: Vec<String>,
    term: u64,
    /// The view's lease (absent: the view never lapses).
    lease_millis: Option<u64>,
    /// The proxy's wall clock when it sent the update.
    sent_at_ms: Option<i64>,
}

/// `POST /replication/ownership {"up": [...], "term": T, "leaseMillis": L, "sentAtMs": S}`: the
/// masters that own objects as the proxy decided, leased (MULTI_PRIMARY); 409 for a term below
/// the one in force, an unknown master, or outside MULTI_PRIMARY. A new term is kept in the
/// meta file. The answer carries this master's positions (per origin, its own committed
/// sequence included), from which the proxy decides when ownership may move.
async fn set_ownership(State(state): Shared, body: Option<Json<OwnershipBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"up\": [\"m1\", …], \"term\": <number>}".into(),
        ));
    };
    use crate::ownership::{ViewLease, OWNERSHIP_TERM_SETTING};
    let lease = body
        .lease_millis
        .zip(body.sent_at_ms)
        .map(|(lease_ms, sent_at_ms)| ViewLease {
            lease_ms,
            sent_at_ms,
            now_ms: dirkdb_core::clock::now_ms(),
        });
    let before = state.settings.ownership.view().term;
    let view = state
        .settings
        .ownership
        .update(&body.up, body.term, lease)
        .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    if view.term != before {
        let term = view.term.to_string();
        blocking(&state, move |s| {
            Ok(s.meta.set_setting(OWNERSHIP_TERM_SETTING, Some(&term))?)
        })
        .await?;
    }
    Ok(Json(json!({
        "instance": state.instance_id,
        "ownership": view,
        "committedSequence": state.write_path.committed(),
        "positions": peer_positions(&state),
        "streaming": state
            .peers
            .streams()
            .into_iter()
            .filter(|s| s.state == crate::replication::peers::PeerState::Streaming)
            .map(|s| s.origin)
            .collect::<Vec<_>>(),
    })))
}

/// `GET /replication/owners`: every database, table, view and domain this master holds, with
/// its owner in this master's view (MULTI_PRIMARY; 409 otherwise).
async fn owners(State(state): Shared) -> ApiResult {
    if !state.settings.ownership.active() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "not a master of a MULTI_PRIMARY topology (routing.writes.mode)".into(),
        ));
    }
    let objects = blocking(&state, |s| {
        crate::owners::owned_objects(s, &s.catalog.names())
    })
    .await?;
    Ok(Json(json!({
        "instance": state.instance_id,
        "ownership": state.settings.ownership.view(),
        "objects": objects,
    })))
}

/// Files in `<dataDirectory>/rollback` (writes saved when this node rejoined a new primary).
fn rollback_files(state: &ServerState) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.data_dir().join("rollback"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn replicas(State(state): Shared) -> Json<Value> {
    let committed = state.write_path.committed();
    Json(json!({
        "committedSequence": committed,
        "mode": state.replication.mode().as_str(),
        "replicas": state.replication.replicas(committed),
    }))
}

#[derive(Deserialize)]
struct ChangesQuery {
    since: Option<u64>,
    limit: Option<usize>,
    table: Option<String>,
}

/// LokiJS's changes API: entries after `since`, grouped by `database.table`.
async fn changes(State(state): Shared, Query(q): Query<ChangesQuery>) -> ApiResult {
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let entries = blocking(&state, move |s| {
        let sources = s.oplog_sources()?;
        let filter = match &q.table {
            Some(table) => Filter::Table {
                after: since,
                table,
            },
            None => Filter::Range {
                after: since,
                to: u64::MAX,
            },
        };
        Ok(store::merge(&sources, filter, limit)?)
    })
    .await?;
    let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in &entries {
        grouped
            .entry(group_key(e))
            .or_default()
            .push(change_json(e));
    }
    Ok(Json(json!({
        "changes": grouped,
        "latestSequence": state.write_path.committed(),
        "count": entries.len(),
    })))
}

fn group_key(e: &Entry) -> String {
    match e.op {
        Op::CreateDatabase | Op::DropDatabase => "_databases".to_string(),
        _ => format!("{}.{}", e.db, e.table),
    }
}

fn change_json(e: &Entry) -> Value {
    let parse = |text: &Option<String>| -> Value {
        text.as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null)
    };
    let obj = match e.op {
        Op::CreateDatabase | Op::DropDatabase => json!({ "database": e.table }),
        _ => parse(&e.data),
    };
    json!({
        "operation": e.op.code(),
        "obj": obj,
        "key": parse(if e.op == Op::Insert { &e.new_key } else { &e.old_key }),
        "sequence": e.seq,
        "timestamp": e.ts,
        "checksum": e.crc,
    })
}

async fn oplog_stats(State(state): Shared) -> ApiResult {
    let (files, floor) = blocking(&state, |s| {
        let mut files = Vec::new();
        for source in s.oplog_sources()? {
            files.push((source.db.clone(), store::file_stats(&source.conn)?));
        }
        Ok((files, s.meta.pruned_through()?))
    })
    .await?;
    let mut per_table = BTreeMap::new();
    let mut total = FileStats::default();
    for (db, stats) in files {
        total.entries += stats.entries;
        total.oldest = min_some(total.oldest, stats.oldest);
        total.latest = total.latest.max(stats.latest);
        for (table, n) in stats.per_table {
            let key = if db.is_empty() {
                "_databases".to_string()
            } else {
                format!("{db}.{table}")
            };
            *per_table.entry(key).or_insert(0u64) += n;
        }
    }
    Ok(Json(json!({
        "totalEntries": total.entries,
        "latestSequence": state.write_path.committed(),
        "oldestSequence": total.oldest,
        "prunedThrough": floor,
        "perTable": per_table,
    })))
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

async fn oplog_clear(State(state): Shared) -> ApiResult {
    let through = blocking(&state, |s| s.clear_oplog()).await?;
    Ok(Json(json!({ "prunedThrough": through })))
}

async fn checksum(State(state): Shared) -> ApiResult {
    let sequence = blocking(&state, |s| {
        let sequence = s.write_path.committed();
        let mut digests: BTreeMap<String, Digest> = BTreeMap::new();
        let mut tables: BTreeMap<String, BTreeMap<String, Digest>> = BTreeMap::new();
        for name in s.catalog.names() {
            let db = s.catalog.get(&name)?;
            let conn = db.lease()?;
            digests.insert(name.clone(), database_digest(&conn)?);
            tables.insert(name, table_digests(&conn)?);
            db.give_back(conn);
        }
        Ok((sequence, digests, tables))
    })
    .await?;
    let (sequence, digests, tables) = sequence;
    Ok(Json(json!({
        "instance": state.instance_id,
        "sequence": sequence,
        "positions": peer_positions(&state),
        "databases": digests,
        "tables": tables,
    })))
}

/// `POST /replication/promote`, optionally `{"term": T}`: a new term must be above the node's
/// (409 otherwise); without one the node takes its term plus one.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PromoteBody {
    term: Option<u64>,
    /// A first lease granted with the promotion (`leaseMillis`, `sentAtMs`).
    lease_millis: Option<u64>,
    sent_at_ms: Option<i64>,
}

async fn promote(State(state): Shared, body: axum::body::Bytes) -> ApiResult {
    let body: PromoteBody = if body.iter().all(u8::is_ascii_whitespace) {
        PromoteBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("expected an empty body or {{\"term\": <number>}}: {e}"),
            )
        })?
    };
    if !state.is_replica() {
        return Err(ApiError(StatusCode::CONFLICT, "already a PRIMARY".into()));
    }
    let s = state.clone();
    let promoted = tokio::task::spawn_blocking(move || s.promote(body.term))
        .await
        .map_err(ServerError::from)?;
    let (chain, term) = promoted.map_err(conflict)?;
    crate::replication::etcd_lease::after_promotion(&state).await;
    let lease = match (body.lease_millis, body.sent_at_ms) {
        (Some(ms), Some(at)) => state
            .grant_lease(term, ms, at)
            .map(|left| left.as_millis() as u64)
            .ok(),
        _ => None,
    };
    Ok(Json(
        json!({ "instance": state.instance_id, "role": "PRIMARY", "history": chain, "term": term, "leaseLeftMs": lease }),
    ))
}

/// A refusal is a 409 naming the reason; anything else a 500.
fn conflict(e: ServerError) -> ApiError {
    match e {
        ServerError::Refused(m) => ApiError(StatusCode::CONFLICT, m),
        other => ApiError::from(other),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseBody {
    term: u64,
    lease_millis: u64,
    sent_at_ms: i64,
}

/// `POST /replication/lease {"term": T, "leaseMillis": L, "sentAtMs": S}`: the proxy renews this
/// primary's write lease (see `lease.rs`); `leaseMillis` 0 gives it up at once, and
/// refuses renewals sent until `sentAtMs` that arrive later.
async fn renew_lease(State(state): Shared, body: Option<Json<LeaseBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"term\": T, \"leaseMillis\": L, \"sentAtMs\": S}".into(),
        ));
    };
    if body.lease_millis == 0 {
        state.write_path.lease().revoke_at(body.sent_at_ms);
        return Ok(Json(
            json!({ "instance": state.instance_id, "term": state.term(), "leaseLeftMs": 0 }),
        ));
    }
    let s = state.clone();
    let granted = tokio::task::spawn_blocking(move || {
        s.grant_lease(body.term, body.lease_millis, body.sent_at_ms)
    })
    .await
    .map_err(ServerError::from)?;
    let left = granted.map_err(conflict)?;
    Ok(Json(
        json!({ "instance": state.instance_id, "term": state.term(), "leaseLeftMs": left.as_millis() as u64 }),
    ))
}

/// `POST /replication/write-probe`: proves this node can still write durably (see
/// `replication::write_probe`); 503 with the reason when it cannot.
async fn write_probe(State(state): Shared) -> ApiResult {
    let s = state.clone();
    let probed = tokio::task::spawn_blocking(move || crate::replication::write_probe::probe(&s))
        .await
        .map_err(ServerError::from)?;
    let took = probed.map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node cannot write: {e}"),
        )
    })?;
    Ok(Json(
        json!({ "instance": state.instance_id, "ok": true, "ms": took.as_millis() as u64 }),
    ))
}

#[derive(Deserialize)]
struct TermBody {
    term: u64,
}

/// `POST /replication/term {"term": T}`: raises the node's term to T (above its own, else 409);
/// a primary's replicas reconnect and adopt it.
async fn raise_term(State(state): Shared, body: Option<Json<TermBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"term\": <number>}".into(),
        ));
    };
    let s = state.clone();
    let raised = tokio::task::spawn_blocking(move || s.raise_term_to(body.term))
        .await
        .map_err(ServerError::from)?;
    let term = raised.map_err(conflict)?;
    Ok(Json(json!({ "instance": state.instance_id, "term": term })))
}

#[derive(Deserialize)]
struct ConfigureBody {
    primary: String,
    /// The primary's instance id: when this instance's own config names it, the address there
    /// (`replicationAddress`) wins over `primary`, since the network path may differ per node.
    #[serde(default, rename = "primaryId")]
    primary_id: Option<String>,
}

async fn configure(State(state): Shared, body: Option<Json<ConfigureBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"primary\": \"host:port\"}".into(),
        ));
    };
    let primary = body
        .primary_id
        .as_deref()
        .and_then(|id| state.peer_replication_addr(id))
        .unwrap_or(body.primary.trim())
        .to_string();
    if primary
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`{primary}` is not host:port"),
        ));
    }
    let p = primary.clone();
    blocking(&state, move |s| s.follow(&p)).await?;
    Ok(Json(
        json!({ "instance": state.instance_id, "role": "REPLICA", "primary": primary }),
    ))
}

#[derive(Deserialize)]
struct ModeBody {
    #[serde(rename = "type")]
    kind: String,
}

/// `POST /replication/mode {"type": "FILE"}`: switches the replication mode; every stream ends
/// and reconnects in the new mode (a FILE-mode secondary going back to OPLOG resyncs fully).
async fn set_mode(State(state): Shared, body: Option<Json<ModeBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"type\": \"OPLOG\" | \"FILE\"}".into(),
        ));
    };
    let kind =
        ReplicationType::try_from(body.kind).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    if state.replication.set_mode(kind) {
        tracing::info!(
            mode = kind.as_str(),
            "replication mode switched; streams restart"
        );
    }
    Ok(Json(
        json!({ "instance": state.instance_id, "mode": kind.as_str() }),
    ))
}

#[derive(Deserialize)]
struct WrittenBody {
    database: String,
}

/// `POST /replication/written {"database": "shop"}`: the proxy says a write to `shop` was
/// acknowledged; the mode replicates it soon (FILE mode starts a round; OPLOG has streamed it).
async fn written(State(state): Shared, body: Option<Json<WrittenBody>>) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"database\": \"<name>\"}".into(),
        ));
    };
    state.replication_mode().database_written(&body.database);
    Ok(Json(json!({ "triggered": true })))
}

async fn metrics(State(state): Shared) -> Response {
    match crate::metrics::page(&state) {
        Ok(text) => (
            [(header::CONTENT_TYPE, dirkdb_core::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot write the metrics".into(),
        )
        .into_response(),
    }
}
