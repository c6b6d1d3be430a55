//! HTTP Basic authentication for the admin APIs of the server, the proxy and the cache: with
//! `requireAuth`, every endpoint but `/health` and `/metrics` (those too with `protectMetrics`)
//! needs a user holding ADMIN on `*` (`curl -u admin:… …`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::{AdminDenied, Security};

/// `router` with every request checked by [`require_admin`].
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    security: Arc<Security>,
) -> Router<S> {
    router.layer(axum::middleware::from_fn_with_state(
        security,
        require_admin,
    ))
}

/// Lets a request through when its endpoint is open or its Basic credentials hold ADMIN.
pub async fn require_admin(
    State(security): State<Arc<Security>>,
    request: Request,
    next: Next,
) -> Response {
    if security.admin_open(request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match security.admin_check(authorization.as_deref(), peer).await {
        Ok(()) => next.run(request).await,
        Err(AdminDenied::Unauthenticated(msg)) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"dirkdb\"")],
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response(),
        Err(AdminDenied::Forbidden(msg)) => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response(),
    }
}
