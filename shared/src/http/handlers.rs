//! The route handlers: validate, call the ports, shape the JSON.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::AppState;
use super::api::{
    AppendResponse, BatchCounts, CheckBatchResponse, ComponentHealth, ContextParams,
    ContextResponse, DueReason, EnhanceRequest, EnhanceResponse, EraseResponse, ErrorBody,
    HealthComponents, HealthResponse, MemoryCounts, MemoryHit, MessageCounts, MessageCreated,
    NewMessage, SearchParams, SearchResponse, StatsResponse, StatusResponse, TokenCounts,
};
use super::error::ApiError;
use super::extract::{JsonBody, PairPath, Params};
use crate::batching::Due;
use crate::context::{build_context, enhance_prompt as enhance};
use crate::domain::{Message, MessageId, Pair, Role, ScoredMemory, UserId};
use crate::ports::{MessageEvent, SearchQuery};

/// Longest search query or context message, in characters.
const MAX_QUERY_CHARS: usize = 2000;
/// Longest stored message, in characters.
use crate::domain::MAX_MESSAGE_CHARS;
/// Longest channel name.
const MAX_CHANNEL_CHARS: usize = 32;
/// Memories considered for a context block.
const CONTEXT_CANDIDATES: usize = 30;
/// Unsynced messages considered for a context block.
const CONTEXT_RECENT: usize = 20;

/// The `{user_id}` and `{character_name}` path segments (1-128 characters of `[A-Za-z0-9_.-]`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the OpenAPI derive only
pub(crate) struct PairSegments {
    /// The user.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.-]+$")]
    user_id: String,
    /// The character (e.g. `meher`).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.-]+$")]
    character_name: String,
}

/// The `{user_id}` path segment.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the OpenAPI derive only
pub(crate) struct UserSegment {
    /// The user.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.-]+$")]
    user_id: String,
}

/// A message event from the Cloud Function: published to the event bus, answered once the bus
/// accepted it.
#[utoipa::path(
    post, path = "/firebase/message-created", tag = "events",
    request_body = MessageCreated,
    security(("bearer" = []), ("signature" = [])),
    responses(
        (status = 202, description = "published", body = StatusResponse),
        (status = 400, description = "a field is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(crate) async fn message_created(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<MessageCreated>,
) -> Result<Response, ApiError> {
    let event = MessageEvent {
        user_id: body.user_id,
        character_name: body.character_name,
        message_id: body.message_id,
    };
    s.bus
        .publish_event(&event)
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    let body = StatusResponse {
        status: "accepted".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Stores a chat message unsynced and emits its event (what the Firestore trigger does in
/// production).
#[utoipa::path(
    post, path = "/memory/messages/{user_id}/{character_name}", tag = "memory",
    params(PairSegments),
    request_body = NewMessage,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored", body = AppendResponse),
        (status = 200, description = "a message with this id already existed", body = AppendResponse),
        (status = 400, description = "a field is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(crate) async fn append_message(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    JsonBody(body): JsonBody<NewMessage>,
) -> Result<Response, ApiError> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("role", "role must be \"user\" or \"assistant\""))?;
    if body.text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::invalid(
            "text",
            format!("text must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    let channel = body.channel.unwrap_or_else(|| "api".to_owned());
    if channel.is_empty()
        || channel.chars().count() > MAX_CHANNEL_CHARS
        || !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::invalid(
            "channel",
            format!("channel must be 1-{MAX_CHANNEL_CHARS} characters of [A-Za-z0-9_-]"),
        ));
    }
    let id = match body.message_id {
        Some(id) => id,
        None => MessageId::parse(uuid::Uuid::new_v4().simple().to_string())
            .expect("a uuid is a valid id"),
    };
    let message = Message {
        id: id.clone(),
        pair: pair.clone(),
        role,
        channel,
        text: body.text,
        created_at: body.created_at.unwrap_or_else(Utc::now),
        sync: false,
    };
    let created = s.messages.append(&message).await?;
    if created {
        // Stored is what matters: if the event is lost, the sweep still finds the message.
        let event = MessageEvent {
            user_id: pair.user_id,
            character_name: pair.character_name,
            message_id: Some(id.clone()),
        };
        if let Err(e) = s.bus.publish_event(&event).await {
            tracing::warn!(error = %e, "message stored but its event was not published");
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = AppendResponse {
        message_id: id,
        created,
    };
    Ok((status, Json(body)).into_response())
}

/// The pair's unsynced count; queues a batch job when one is due.
#[utoipa::path(
    post, path = "/memory/check-batch/{user_id}/{character_name}", tag = "memory",
    params(PairSegments),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the count and whether a batch was triggered", body = CheckBatchResponse),
        (status = 400, description = "a path segment is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(crate) async fn check_batch(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<CheckBatchResponse>, ApiError> {
    let unsynced = s.messages.count_unsynced(&pair).await?;
    let newest = s
        .messages
        .recent_unsynced(&pair, 1)
        .await?
        .first()
        .map(|m| m.created_at);
    let due = s.rules.due(unsynced as usize, newest, Utc::now());
    let triggered = due != Due::NotDue;
    if triggered {
        s.bus
            .publish_batch_job(&pair)
            .await
            .map_err(|e| ApiError::unavailable("the batch queue", &e))?;
    }
    Ok(Json(CheckBatchResponse {
        user_id: pair.user_id,
        character_name: pair.character_name,
        unsynced,
        threshold: s.rules.threshold,
        triggered,
        reason: match due {
            Due::Threshold => DueReason::Threshold,
            Due::Idle => DueReason::Idle,
            Due::NotDue => DueReason::NotDue,
        },
    }))
}

async fn search_pair(
    s: &AppState,
    pair: &Pair,
    query: &str,
    limit: usize,
    include_superseded: bool,
) -> Result<Vec<ScoredMemory>, ApiError> {
    let vector = s
        .embedder
        .embed(&[query.to_owned()])
        .await
        .map_err(|e| ApiError::unavailable("the embedder", &e))?
        .pop()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no vector"))?;
    let q = SearchQuery {
        pair: pair.clone(),
        vector,
        limit,
        score_threshold: None,
        include_superseded,
    };
    Ok(s.memories.search(&q).await?)
}

/// Semantic search of the pair's memories.
#[utoipa::path(
    get, path = "/memory/search/{user_id}/{character_name}", tag = "memory",
    params(PairSegments, SearchParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "memories, best first", body = SearchResponse),
        (status = 400, description = "a parameter is invalid; `field` names it", body = ErrorBody),
        (status = 429, description = "the API key's rate limit is spent: retry after `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
    )
)]
pub(crate) async fn search(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    params: Params,
) -> Result<Json<SearchResponse>, ApiError> {
    let query = params.text("query", MAX_QUERY_CHARS)?;
    let limit = params.int("limit", 5, 1, 50)?;
    let include_superseded = params.flag("include_superseded")?;
    let hits = search_pair(&s, &pair, &query, limit, include_superseded).await?;
    Ok(Json(SearchResponse {
        query,
        count: hits.len(),
        results: hits.iter().map(MemoryHit::from).collect(),
    }))
}

/// Message, memory, batch and token counts of the pair.
#[utoipa::path(
    get, path = "/memory/stats/{user_id}/{character_name}", tag = "memory",
    params(PairSegments),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the counts", body = StatsResponse),
        (status = 400, description = "a path segment is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(crate) async fn stats(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<StatsResponse>, ApiError> {
    let st = s.messages.stats(&pair).await?;
    let current = s.memories.count(&pair, false).await?;
    let all = s.memories.count(&pair, true).await?;
    Ok(Json(StatsResponse {
        user_id: pair.user_id,
        character_name: pair.character_name,
        messages: MessageCounts {
            total: st.total,
            synced: st.synced,
            unsynced: st.unsynced,
        },
        memories: MemoryCounts {
            current,
            superseded: all - current,
            total: all,
        },
        batches: BatchCounts {
            done: st.batches_done,
            failed: st.batches_failed,
        },
        last_batch_at: st.last_batch_at,
        tokens: TokenCounts {
            prompt: st.tokens.prompt_tokens,
            completion: st.tokens.completion_tokens,
        },
        threshold: s.rules.threshold,
        extractor: s.extractor_name.clone(),
    }))
}

async fn context_block(
    s: &AppState,
    pair: &Pair,
    message: Option<&str>,
    max_tokens: usize,
) -> Result<crate::context::ContextBlock, ApiError> {
    let recent = s.messages.recent_unsynced(pair, CONTEXT_RECENT).await?;
    // Without a message, rank against what the user said most recently.
    let fallback: String = recent
        .iter()
        .rev()
        .filter(|m| m.role == Role::User)
        .map(|m| m.text.as_str())
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    let query = message.unwrap_or(fallback.as_str());
    let candidates = if query.trim().is_empty() || s.memories.count(pair, false).await? == 0 {
        Vec::new()
    } else {
        search_pair(s, pair, query, CONTEXT_CANDIDATES, false).await?
    };
    Ok(build_context(&candidates, &recent, max_tokens, Utc::now()))
}

/// A context block for the bot: the best-ranked memories, then recent unsynced messages, within
/// a token budget.
#[utoipa::path(
    get, path = "/memory/context/{user_id}/{character_name}", tag = "memory",
    params(PairSegments, ContextParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the context block", body = ContextResponse),
        (status = 400, description = "a parameter is invalid; `field` names it", body = ErrorBody),
        (status = 429, description = "the API key's rate limit is spent: retry after `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
    )
)]
pub(crate) async fn context(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    params: Params,
) -> Result<Json<ContextResponse>, ApiError> {
    let message = params.opt_text("message", MAX_QUERY_CHARS)?;
    let max_tokens = params.int("max_tokens", 800, 50, 8000)?;
    let block = context_block(&s, &pair, message.as_deref(), max_tokens).await?;
    Ok(Json(ContextResponse {
        estimated_tokens: block.estimated_tokens,
        max_tokens,
        memories: block.memories.iter().map(Into::into).collect(),
        recent_messages: block.recent_messages,
        context: block.text,
    }))
}

/// The bot's system prompt with the context block appended, fenced as data.
#[utoipa::path(
    post, path = "/memory/enhance-prompt/{user_id}/{character_name}", tag = "memory",
    params(PairSegments),
    request_body = EnhanceRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the enhanced system prompt", body = EnhanceResponse),
        (status = 400, description = "a field is invalid; `field` names it", body = ErrorBody),
        (status = 429, description = "the API key's rate limit is spent: retry after `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
    )
)]
pub(crate) async fn enhance_prompt(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    JsonBody(body): JsonBody<EnhanceRequest>,
) -> Result<Json<EnhanceResponse>, ApiError> {
    if let Some(m) = &body.message
        && m.chars().count() > MAX_QUERY_CHARS
    {
        return Err(ApiError::invalid(
            "message",
            format!("message must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let max_tokens = body.max_tokens.unwrap_or(800);
    if !(50..=8000).contains(&max_tokens) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be from 50 to 8000",
        ));
    }
    let block = context_block(&s, &pair, body.message.as_deref(), max_tokens).await?;
    Ok(Json(EnhanceResponse {
        system_prompt: enhance(&body.base_system_prompt, &block),
        memories_used: block.memories.len(),
        recent_messages: block.recent_messages,
        estimated_context_tokens: block.estimated_tokens,
    }))
}

/// Erases every memory, batch record and extraction cache of a user, for every character.
#[utoipa::path(
    delete, path = "/memory/{user_id}", tag = "memory",
    params(UserSegment),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "what was deleted", body = EraseResponse),
        (status = 400, description = "the user id is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn erase_user(
    State(s): State<AppState>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Result<Json<EraseResponse>, ApiError> {
    let user =
        UserId::parse(user).map_err(|e| ApiError::invalid("user_id", format!("user_id {e}")))?;
    // Memories first: a failure half-way leaves batch records, never orphaned memories.
    let memories = s.memories.delete_user(&user).await?;
    let batches = s.messages.erase_batches(&user, None).await?;
    tracing::info!(memories, batches, "erased a user's memories");
    Ok(Json(EraseResponse {
        user_id: user,
        character_name: None,
        memories_deleted: memories,
        batches_deleted: batches,
    }))
}

/// Erases the pair's memories, batch records and extraction caches.
#[utoipa::path(
    delete, path = "/memory/{user_id}/{character_name}", tag = "memory",
    params(PairSegments),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "what was deleted", body = EraseResponse),
        (status = 400, description = "a path segment is invalid; `field` names it", body = ErrorBody),
    )
)]
pub(crate) async fn erase_pair(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<EraseResponse>, ApiError> {
    let memories = s.memories.delete_pair(&pair).await?;
    let batches = s
        .messages
        .erase_batches(&pair.user_id, Some(&pair.character_name))
        .await?;
    tracing::info!(memories, batches, "erased a pair's memories");
    Ok(Json(EraseResponse {
        user_id: pair.user_id,
        character_name: Some(pair.character_name),
        memories_deleted: memories,
        batches_deleted: batches,
    }))
}

/// Liveness: the process is up and serving. Never looks at a dependency, so an outage of the
/// broker or a store does not get every replica restarted.
#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the process runs", body = StatusResponse))
)]
pub(crate) async fn liveness() -> Json<StatusResponse> {
    Json(StatusResponse {
        status: "ok".into(),
    })
}

/// How long readiness waits for one dependency before reporting it down.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One component's entry in the readiness answer, from its probe's result.
fn component(
    result: &crate::PortResult<()>,
    latency: Option<std::time::Duration>,
) -> ComponentHealth {
    let mut c = match result {
        Ok(()) => ComponentHealth::ok(),
        Err(e) => ComponentHealth {
            status: "down".into(),
            kind: Some(e.kind().into()),
            ..ComponentHealth::ok()
        },
    };
    c.latency_ms = latency.map(|l| l.as_millis() as u64);
    c
}

/// Pings with a deadline: a dependency that hangs is down, and the probe still answers in time.
async fn ping_within(
    ping: impl std::future::Future<Output = crate::PortResult<()>>,
) -> (crate::PortResult<()>, std::time::Duration) {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(PING_TIMEOUT, ping)
        .await
        .unwrap_or_else(|_| {
            Err(crate::PortError::unavailable(
                "health",
                format!("no answer within {PING_TIMEOUT:?}"),
            ))
        });
    (result, started.elapsed())
}

/// Readiness (`/readyz`, `/memory/health`): pings the message store, the memory store and the
/// event bus (broker) at once, reads the node's extra checks (a worker's consumers), and reports
/// the model configuration. 503 when any of them is down: the process cannot do its job.
#[utoipa::path(
    get, path = "/memory/health", tag = "health",
    responses(
        (status = 200, description = "every component is up", body = HealthResponse),
        (status = 503, description = "a component is down", body = HealthResponse),
    )
)]
pub(crate) async fn health(State(s): State<AppState>) -> Response {
    let ((m, m_ms), (v, v_ms), (b, b_ms)) = tokio::join!(
        ping_within(s.messages.ping()),
        ping_within(s.memories.ping()),
        ping_within(s.bus.ping()),
    );
    let mut ok = m.is_ok() && v.is_ok() && b.is_ok();
    let mut extra = std::collections::BTreeMap::new();
    for check in &s.checks {
        let result = (check.probe)();
        ok &= result.is_ok();
        extra.insert(check.name.to_string(), component(&result, None));
    }
    let body = HealthResponse {
        status: if ok { "ok" } else { "degraded" }.into(),
        components: HealthComponents {
            message_store: component(&m, Some(m_ms)),
            memory_store: component(&v, Some(v_ms)),
            event_bus: component(&b, Some(b_ms)),
            // Validated at start-up (a bad setting stops the process); calls are watched through
            // recall_llm_requests_total, not here, so a model outage does not unready the API.
            extractor: ComponentHealth {
                mode: Some(s.extractor_name.clone()),
                ..ComponentHealth::ok()
            },
            embedder: ComponentHealth {
                model: Some(s.embedder.name()),
                dimension: Some(s.embedder.dimension()),
                ..ComponentHealth::ok()
            },
            extra,
        },
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Readiness for Kubernetes: the same answer as `/memory/health`.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "every component is up", body = HealthResponse),
        (status = 503, description = "a component is down", body = HealthResponse),
    )
)]
pub(crate) async fn readiness(state: State<AppState>) -> Response {
    health(state).await
}

/// Prometheus metrics in the text exposition format (no user data).
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses((status = 200, description = "the metrics", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// This document: the OpenAPI 3.1 description of the API.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_json(),
    )
        .into_response()
}
