//! The route handlers: validate, call the ports, shape the JSON.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBody, PairPath, Params};
use crate::batching::Due;
use crate::context::{build_context, enhance_prompt as enhance};
use crate::domain::{CharacterName, Message, MessageId, Pair, Role, ScoredMemory, UserId};
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageCreated {
    user_id: UserId,
    character_name: CharacterName,
    #[serde(default)]
    message_id: Option<MessageId>,
}

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
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "accepted"}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    #[serde(default)]
    message_id: Option<MessageId>,
    role: String,
    text: String,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    channel: Option<String>,
}

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
    Ok((status, Json(json!({"message_id": id, "created": created}))).into_response())
}

pub(crate) async fn check_batch(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "user_id": pair.user_id,
        "character_name": pair.character_name,
        "unsynced": unsynced,
        "threshold": s.rules.threshold,
        "triggered": triggered,
        "reason": match due { Due::Threshold => "threshold", Due::Idle => "idle", Due::NotDue => "not_due" },
    })))
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

fn memory_json(m: &ScoredMemory) -> Value {
    json!({
        "id": m.memory.id,
        "text": m.memory.text,
        "score": m.score,
        "category": m.memory.category,
        "importance": m.memory.importance,
        "created_at": m.memory.created_at,
        "event_time": m.memory.event_time,
        "source_message_ids": m.memory.source_message_ids,
        "batch_id": m.memory.batch_id,
        "superseded_by": m.memory.superseded_by,
    })
}

pub(crate) async fn search(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let query = params.text("query", MAX_QUERY_CHARS)?;
    let limit = params.int("limit", 5, 1, 50)?;
    let include_superseded = params.flag("include_superseded")?;
    let hits = search_pair(&s, &pair, &query, limit, include_superseded).await?;
    Ok(Json(json!({
        "query": query,
        "count": hits.len(),
        "results": hits.iter().map(memory_json).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn stats(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<Value>, ApiError> {
    let st = s.messages.stats(&pair).await?;
    let current = s.memories.count(&pair, false).await?;
    let all = s.memories.count(&pair, true).await?;
    Ok(Json(json!({
        "user_id": pair.user_id,
        "character_name": pair.character_name,
        "messages": {"total": st.total, "synced": st.synced, "unsynced": st.unsynced},
        "memories": {"current": current, "superseded": all - current, "total": all},
        "batches": {"done": st.batches_done, "failed": st.batches_failed},
        "last_batch_at": st.last_batch_at,
        "tokens": {"prompt": st.tokens.prompt_tokens, "completion": st.tokens.completion_tokens},
        "threshold": s.rules.threshold,
        "extractor": s.extractor_name,
    })))
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

pub(crate) async fn context(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let message = params.opt_text("message", MAX_QUERY_CHARS)?;
    let max_tokens = params.int("max_tokens", 800, 50, 8000)?;
    let block = context_block(&s, &pair, message.as_deref(), max_tokens).await?;
    Ok(Json(json!({
        "context": block.text,
        "estimated_tokens": block.estimated_tokens,
        "max_tokens": max_tokens,
        "memories": block.memories,
        "recent_messages": block.recent_messages,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnhanceBody {
    #[serde(default)]
    message: Option<String>,
    base_system_prompt: String,
    #[serde(default)]
    max_tokens: Option<usize>,
}

pub(crate) async fn enhance_prompt(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
    JsonBody(body): JsonBody<EnhanceBody>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "system_prompt": enhance(&body.base_system_prompt, &block),
        "memories_used": block.memories.len(),
        "recent_messages": block.recent_messages,
        "estimated_context_tokens": block.estimated_tokens,
    })))
}

pub(crate) async fn erase_user(
    State(s): State<AppState>,
    axum::extract::Path(user): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user =
        UserId::parse(user).map_err(|e| ApiError::invalid("user_id", format!("user_id {e}")))?;
    // Memories first: a failure half-way leaves batch records, never orphaned memories.
    let memories = s.memories.delete_user(&user).await?;
    let batches = s.messages.erase_batches(&user, None).await?;
    tracing::info!(memories, batches, "erased a user's memories");
    Ok(Json(json!({
        "user_id": user,
        "memories_deleted": memories,
        "batches_deleted": batches,
    })))
}

pub(crate) async fn erase_pair(
    State(s): State<AppState>,
    PairPath(pair): PairPath,
) -> Result<Json<Value>, ApiError> {
    let memories = s.memories.delete_pair(&pair).await?;
    let batches = s
        .messages
        .erase_batches(&pair.user_id, Some(&pair.character_name))
        .await?;
    tracing::info!(memories, batches, "erased a pair's memories");
    Ok(Json(json!({
        "user_id": pair.user_id,
        "character_name": pair.character_name,
        "memories_deleted": memories,
        "batches_deleted": batches,
    })))
}

/// Liveness: the process is up and serving. Never looks at a dependency, so an outage of the
/// broker or a store does not get every replica restarted.
pub(crate) async fn liveness() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long readiness waits for one dependency before reporting it down.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One component's entry in the readiness answer, from its probe's result.
fn component(result: &crate::PortResult<()>, latency: Option<std::time::Duration>) -> Value {
    let mut v = match result {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "down", "kind": e.kind()}),
    };
    if let Some(l) = latency {
        v["latency_ms"] = json!(l.as_millis() as u64);
    }
    v
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
pub(crate) async fn health(State(s): State<AppState>) -> Response {
    let ((m, m_ms), (v, v_ms), (b, b_ms)) = tokio::join!(
        ping_within(s.messages.ping()),
        ping_within(s.memories.ping()),
        ping_within(s.bus.ping()),
    );
    let mut ok = m.is_ok() && v.is_ok() && b.is_ok();
    let mut components = json!({
        "message_store": component(&m, Some(m_ms)),
        "memory_store": component(&v, Some(v_ms)),
        "event_bus": component(&b, Some(b_ms)),
        // Validated at start-up (a bad setting stops the process); calls are watched through
        // recall_llm_requests_total, not here, so a model outage does not unready the API.
        "extractor": {"status": "ok", "mode": s.extractor_name},
        "embedder": {"status": "ok", "model": s.embedder.name(), "dimension": s.embedder.dimension()},
    });
    for check in &s.checks {
        let result = (check.probe)();
        ok &= result.is_ok();
        components[check.name] = component(&result, None);
    }
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "components": components,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}
