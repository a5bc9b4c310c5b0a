//! The HTTP API (axum), one router for the publisher and standalone mode.
//!
//! | route | what |
//! |---|---|
//! | `POST /firebase/message-created` | a message event from the Cloud Function -> 202 |
//! | `POST /memory/messages/{user_id}/{character_name}` | append a message and emit its event |
//! | `POST /memory/check-batch/{user_id}/{character_name}` | unsynced count; triggers a due batch |
//! | `GET /memory/search/{user_id}/{character_name}` | semantic search of the pair's memories (rate limited) |
//! | `GET /memory/stats/{user_id}/{character_name}` | message, memory and batch counts |
//! | `GET /memory/context/{user_id}/{character_name}` | context block within a token budget (rate limited) |
//! | `POST /memory/enhance-prompt/{user_id}/{character_name}` | system prompt + context (rate limited) |
//! | `DELETE /memory/{user_id}[/{character_name}]` | erase memories and batch records (GDPR) |
//! | `GET /healthz` | liveness: the process answers; never looks at a dependency (no auth) |
//! | `GET /readyz`, `/memory/health` | readiness: each dependency's state, 503 when one the process needs is down (no auth) |
//! | `GET /metrics` | Prometheus metrics (no auth; no user data) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of all of the above (no auth) |
//!
//! The routes are declared once, in the tables below ([`route_table`] lists them with who may
//! call them); [`openapi`] builds the document from the handlers' annotations and a test checks
//! that both name the same routes. The routes that embed a query are rate limited per API key
//! ([`mod@rate_limit`]).

pub mod api;
mod error;
mod extract;
mod handlers;
pub mod openapi;
pub mod rate_limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use extract::decode_json_body;
pub use rate_limit::{RateLimit, RateLimiter};

use crate::batching::BatchRules;
use crate::metrics::Metrics;
use crate::ports::{Embedder, EventBus, MemoryStore, MessageStore};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// Message store (source of truth).
    pub messages: Arc<dyn MessageStore>,
    /// Memory store (search).
    pub memories: Arc<dyn MemoryStore>,
    /// Query embeddings.
    pub embedder: Arc<dyn Embedder>,
    /// Where events and batch jobs go.
    pub bus: Arc<dyn EventBus>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Batch thresholds (for check-batch and stats).
    pub rules: BatchRules,
    /// Label of the extractor in use (`offline`, `openai:<model>`).
    pub extractor_name: String,
    /// Bearer token required on every non-health route, if set.
    pub api_key: Option<Arc<str>>,
    /// Secret of the Cloud Function webhook (bearer or HMAC); falls back to `api_key` when unset.
    pub webhook_secret: Option<Arc<str>>,
    /// Readiness checks beyond the ports, e.g. a worker's broker consumers.
    pub checks: Vec<ReadinessCheck>,
    /// The limit per API key on the routes that embed a query; `None`: no limit.
    pub rate_limiter: Option<Arc<RateLimiter>>,
}

/// A dependency readiness looks at besides the stores and the bus: its name in the answer and a
/// probe that must not block (it reads a state kept up to date elsewhere).
#[derive(Clone)]
pub struct ReadinessCheck {
    /// Its key under `components`.
    pub name: &'static str,
    /// `Ok` when up; the error's kind is reported otherwise.
    pub probe: Arc<dyn Fn() -> crate::PortResult<()> + Send + Sync>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One route: method, path template, handler.
type Route = (Method, &'static str, MethodRouter<AppState>);

/// `METHOD "/path" => handler, ...` into [`Route`]s, naming each method once.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        vec![$((
            Method::$method,
            $path,
            axum::routing::on(axum::routing::MethodFilter::$method, $handler),
        )),*]
    };
}

/// No auth: probes, metrics and the OpenAPI document.
fn open_routes() -> Vec<Route> {
    routes![
        GET "/memory/health" => handlers::health,
        GET "/healthz" => handlers::liveness,
        GET "/readyz" => handlers::readiness,
        GET "/metrics" => handlers::metrics,
        GET "/openapi.json" => handlers::openapi,
    ]
}

/// The Cloud Function's webhook: its own secret (bearer or HMAC), else the API key.
fn webhook_routes() -> Vec<Route> {
    routes![POST "/firebase/message-created" => handlers::message_created]
}

/// The API key.
fn guarded_routes() -> Vec<Route> {
    routes![
        POST "/memory/messages/{user_id}/{character_name}" => handlers::append_message,
        POST "/memory/check-batch/{user_id}/{character_name}" => handlers::check_batch,
        GET "/memory/stats/{user_id}/{character_name}" => handlers::stats,
        DELETE "/memory/{user_id}" => handlers::erase_user,
        DELETE "/memory/{user_id}/{character_name}" => handlers::erase_pair,
    ]
}

/// The API key, and a rate limit per key: each call embeds a query (a model call with the OpenAI
/// embedder) and reveals memories.
fn limited_routes() -> Vec<Route> {
    routes![
        GET "/memory/search/{user_id}/{character_name}" => handlers::search,
        GET "/memory/context/{user_id}/{character_name}" => handlers::context,
        POST "/memory/enhance-prompt/{user_id}/{character_name}" => handlers::enhance_prompt,
    ]
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes, metrics and the OpenAPI document.
    Open,
    /// The webhook secret (bearer or HMAC signature), else the API key.
    Webhook,
    /// The API key.
    ApiKey,
}

/// One route of [`router`].
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// Its method.
    pub method: Method,
    /// Its path template (`{user_id}`, `{character_name}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether it is rate limited per API key.
    pub rate_limited: bool,
}

/// Every route [`router`] serves, with who may call it.
pub fn route_table() -> Vec<RouteInfo> {
    let tables = [
        (open_routes(), Access::Open, false),
        (webhook_routes(), Access::Webhook, false),
        (guarded_routes(), Access::ApiKey, false),
        (limited_routes(), Access::ApiKey, true),
    ];
    tables
        .into_iter()
        .flat_map(|(routes, access, rate_limited)| {
            routes.into_iter().map(move |(method, path, _)| RouteInfo {
                method,
                path,
                access,
                rate_limited,
            })
        })
        .collect()
}

/// Every route [`router`] serves, as (method, path template).
pub fn routes() -> Vec<(Method, &'static str)> {
    route_table()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

fn mount(routes: Vec<Route>) -> Router<AppState> {
    routes
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
}

/// Builds the router with auth, body limit and metrics layers.
pub fn router(state: AppState) -> Router {
    let open = mount(open_routes());
    let webhook = mount(webhook_routes()).route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_webhook_auth,
    ));
    let guarded = mount(guarded_routes()).route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_api_key,
    ));
    // The key first, then the limit: only callers with the key spend a bucket.
    let limited = mount(limited_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            enforce_rate_limit,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    open.merge(guarded)
        .merge(limited)
        .merge(webhook)
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), track_metrics))
        .with_state(state)
}

/// Refuses to serve without an API key anywhere but on loopback.
pub fn check_exposure(addr: SocketAddr, api_key: Option<&str>) -> Result<(), String> {
    if api_key.is_none_or(str::is_empty) && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without RECALL_API_KEY: set it, or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        return next.run(req).await;
    };
    if bearer_matches(&req, key) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Header carrying `sha256=<hex HMAC-SHA256 of the raw body, keyed with RECALL_WEBHOOK_SECRET>`.
pub const SIGNATURE_HEADER: &str = "x-recall-signature";

/// The value of [`SIGNATURE_HEADER`] for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook accepts `Bearer <secret>` or a body signature; without a secret, the API key rule.
async fn require_webhook_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(secret) = state.webhook_secret.clone() else {
        return require_api_key(State(state), req, next).await;
    };
    if bearer_matches(&req, &secret) {
        return next.run(req).await;
    }
    let Some(signature) = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return ApiError::unauthorized().into_response();
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::too_large().into_response();
    };
    let expected = sign(secret.as_bytes(), &bytes);
    if bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
        next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn bearer_matches(req: &Request, key: &str) -> bool {
    let presented = bearer(req).unwrap_or("");
    bool::from(presented.as_bytes().ct_eq(key.as_bytes()))
}

/// Takes one request from the caller's bucket (see [`mod@rate_limit`]); 429 with `Retry-After` when
/// it is empty. Runs after [`require_api_key`], so the bearer is the API key when one is set.
async fn enforce_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = state.rate_limiter.as_deref() else {
        return next.run(req).await;
    };
    let client = match (&state.api_key, bearer(&req)) {
        (Some(_), Some(credential)) => rate_limit::ClientKey::credential(credential),
        _ => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| rate_limit::ClientKey::address(addr.ip()))
            .unwrap_or_else(rate_limit::ClientKey::unknown),
    };
    let Err(wait) = limiter.check(&client) else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let retry_after = rate_limit::retry_after_seconds(wait);
    state
        .metrics
        .http_rate_limited_total
        .with_label_values(&[route])
        .inc();
    tracing::debug!(route, retry_after, "rate limited");
    ApiError::rate_limited(retry_after).into_response()
}

async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let code = resp.status();
    let status = code.as_u16().to_string();
    let m = &state.metrics;
    m.http_requests_total
        .with_label_values(&[&route, &method, &status])
        .inc();
    m.http_request_duration_seconds
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    if INGEST_ROUTES.contains(&route.as_str()) {
        count_ingest(m, code);
    }
    resp
}

/// The routes through which message events enter: the Cloud Function webhook and the append
/// endpoint (which stores the message and emits its event).
const INGEST_ROUTES: [&str; 2] = [
    "/firebase/message-created",
    "/memory/messages/{user_id}/{character_name}",
];

/// One event received on an ingest route, by the answer it got: `accepted` (201, 202),
/// `duplicate` (200: the message id was stored before) or `rejected` with a reason.
fn count_ingest(m: &Metrics, status: axum::http::StatusCode) {
    use axum::http::StatusCode as S;
    let outcome = match status {
        S::CREATED | S::ACCEPTED => "accepted",
        S::OK => "duplicate",
        _ => "rejected",
    };
    m.events_total.with_label_values(&[outcome]).inc();
    if outcome == "rejected" {
        let reason = match status {
            S::UNAUTHORIZED | S::FORBIDDEN => "unauthorized",
            S::PAYLOAD_TOO_LARGE => "too_large",
            S::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "invalid",
            _ => "error",
        };
        m.events_rejected_total.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests;
