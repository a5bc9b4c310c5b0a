//! The wire types of the HTTP API: every request body, query and answer, shared by the handlers,
//! the OpenAPI document ([`super::openapi`]) and the Rust client ([`crate::client`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, schema::ObjectBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::{Category, CharacterName, Memory, MessageId, ScoredMemory, UserId};

/// A string schema limited to `values`.
fn string_enum<I: IntoIterator<Item = &'static str>>(values: I) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(values))
        .build()
}

/// A string schema for a validated id.
fn id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some("^[A-Za-z0-9_.-]+$"))
        .build()
}

fn category_schema() -> Object {
    string_enum(Category::ALL.map(Category::as_str))
}

fn role_schema() -> Object {
    string_enum(["user", "assistant"])
}

fn nullable_id_schema() -> RefOr<Schema> {
    Schema::from(
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some("^[A-Za-z0-9_.-]+$"))
            .build(),
    )
    .into()
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, safe to show: never internal error text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_request`, `unauthorized`, `unavailable`, ...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault (a body field, a query parameter or a path segment), if any.
    pub field: Option<String>,
}

/// `POST /firebase/message-created`: a message event from the Cloud Function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageCreated {
    /// The user.
    #[schema(schema_with = id_schema)]
    pub user_id: UserId,
    /// The character.
    #[schema(schema_with = id_schema)]
    pub character_name: CharacterName,
    /// The new message's id, for de-duplication of redelivered events.
    #[serde(default)]
    #[schema(schema_with = nullable_id_schema)]
    pub message_id: Option<MessageId>,
}

/// A short status answer (`accepted`, `ok`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// The status.
    pub status: String,
}

/// `POST /memory/messages/{user_id}/{character_name}`: a chat message to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Its id, unique within the pair; generated when absent. Sending the same id twice stores it
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = nullable_id_schema)]
    pub message_id: Option<MessageId>,
    /// Who wrote it.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// The text, at most 65 536 characters.
    pub text: String,
    /// When it was written; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Where it was written (1-32 characters of `[A-Za-z0-9_-]`); `api` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "whatsapp")]
    pub channel: Option<String>,
}

impl NewMessage {
    /// A message with a generated id, the current time and the `api` channel.
    pub fn new(role: &str, text: impl Into<String>) -> Self {
        Self {
            message_id: None,
            role: role.to_owned(),
            text: text.into(),
            created_at: None,
            channel: None,
        }
    }
}

/// The answer to an appended message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppendResponse {
    /// The stored message's id.
    #[schema(schema_with = id_schema)]
    pub message_id: MessageId,
    /// False when a message with this id already existed (nothing changed).
    pub created: bool,
}

/// Why a batch was (or was not) triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DueReason {
    /// The unsynced count reached the threshold.
    Threshold,
    /// The pair went quiet with at least the idle minimum waiting.
    Idle,
    /// Not due yet.
    NotDue,
}

/// The answer of `check-batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckBatchResponse {
    /// The user.
    #[schema(schema_with = id_schema)]
    pub user_id: UserId,
    /// The character.
    #[schema(schema_with = id_schema)]
    pub character_name: CharacterName,
    /// Messages waiting for a batch.
    pub unsynced: u64,
    /// Messages that make a batch due.
    pub threshold: usize,
    /// Whether a batch job was queued.
    pub triggered: bool,
    /// Why.
    pub reason: DueReason,
}

/// Query of `GET /memory/search/{user_id}/{character_name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// What to look for (1-2000 characters).
    #[param(min_length = 1, max_length = 2000)]
    pub query: String,
    /// How many memories at most (1-50, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<usize>,
    /// Also return memories a newer one replaced (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_superseded: Option<bool>,
}

/// A memory found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryHit {
    /// Deterministic id (UUIDv5 of batch id and index).
    pub id: Uuid,
    /// A self-contained statement about the user.
    pub text: String,
    /// Cosine similarity to the query, higher is closer.
    pub score: f32,
    /// What it is about.
    #[schema(schema_with = category_schema)]
    pub category: Category,
    /// 1 (trivia) to 5 (core identity).
    #[schema(minimum = 1, maximum = 5)]
    pub importance: u8,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the event or plan happens, where known.
    pub event_time: Option<DateTime<Utc>>,
    /// The messages it was drawn from.
    pub source_message_ids: Vec<String>,
    /// The batch that produced it.
    pub batch_id: String,
    /// The newer memory that replaced it, if any.
    pub superseded_by: Option<Uuid>,
}

impl From<&ScoredMemory> for MemoryHit {
    fn from(m: &ScoredMemory) -> Self {
        Self {
            id: m.memory.id,
            text: m.memory.text.clone(),
            score: m.score,
            category: m.memory.category,
            importance: m.memory.importance,
            created_at: m.memory.created_at,
            event_time: m.memory.event_time,
            source_message_ids: m.memory.source_message_ids.clone(),
            batch_id: m.memory.batch_id.clone(),
            superseded_by: m.memory.superseded_by,
        }
    }
}

/// The answer of a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// The query, trimmed.
    pub query: String,
    /// How many results.
    pub count: usize,
    /// Best first.
    pub results: Vec<MemoryHit>,
}

/// Message, memory and batch counts of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsResponse {
    /// The user.
    #[schema(schema_with = id_schema)]
    pub user_id: UserId,
    /// The character.
    #[schema(schema_with = id_schema)]
    pub character_name: CharacterName,
    /// Stored messages.
    pub messages: MessageCounts,
    /// Stored memories.
    pub memories: MemoryCounts,
    /// Batch records.
    pub batches: BatchCounts,
    /// When the last batch completed.
    pub last_batch_at: Option<DateTime<Utc>>,
    /// Tokens spent on this pair's batches.
    pub tokens: TokenCounts,
    /// Messages that make a batch due.
    pub threshold: usize,
    /// The extractor in use (`offline`, `openai:<model>`).
    pub extractor: String,
}

/// Message counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageCounts {
    /// All messages.
    pub total: u64,
    /// Messages whose memories are extracted.
    pub synced: u64,
    /// Messages waiting for a batch.
    pub unsynced: u64,
}

/// Memory counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryCounts {
    /// Live memories.
    pub current: u64,
    /// Memories a newer one replaced.
    pub superseded: u64,
    /// Both.
    pub total: u64,
}

/// Batch counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchCounts {
    /// Completed.
    pub done: u64,
    /// Whose last attempt failed and that are not done yet.
    pub failed: u64,
}

/// Token counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenCounts {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
}

/// Query of `GET /memory/context/{user_id}/{character_name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContextParams {
    /// The user's new message, to rank memories against (1-2000 characters); without it, the
    /// user's most recent unsynced messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 2000)]
    pub message: Option<String>,
    /// Token budget of the block (50-8000, default 800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 50, maximum = 8000)]
    pub max_tokens: Option<usize>,
}

/// A memory in a context block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContextMemory {
    /// Deterministic id (UUIDv5 of batch id and index).
    pub id: Uuid,
    /// The user.
    #[schema(schema_with = id_schema)]
    pub user_id: UserId,
    /// The character.
    #[schema(schema_with = id_schema)]
    pub character_name: CharacterName,
    /// A self-contained statement about the user.
    pub text: String,
    /// What it is about.
    #[schema(schema_with = category_schema)]
    pub category: Category,
    /// 1 (trivia) to 5 (core identity).
    #[schema(minimum = 1, maximum = 5)]
    pub importance: u8,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the event or plan happens, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// The messages it was drawn from.
    pub source_message_ids: Vec<String>,
    /// The batch that produced it.
    pub batch_id: String,
}

impl From<&Memory> for ContextMemory {
    fn from(m: &Memory) -> Self {
        Self {
            id: m.id,
            user_id: m.pair.user_id.clone(),
            character_name: m.pair.character_name.clone(),
            text: m.text.clone(),
            category: m.category,
            importance: m.importance,
            created_at: m.created_at,
            event_time: m.event_time,
            source_message_ids: m.source_message_ids.clone(),
            batch_id: m.batch_id.clone(),
        }
    }
}

/// A context block for the bot's system prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContextResponse {
    /// The text: ranked memories, then recent unsynced messages, within the budget.
    pub context: String,
    /// Estimated tokens of `context`.
    pub estimated_tokens: usize,
    /// The budget it was built for.
    pub max_tokens: usize,
    /// The memories it contains, best first.
    pub memories: Vec<ContextMemory>,
    /// How many recent messages it contains.
    pub recent_messages: usize,
}

/// `POST /memory/enhance-prompt/{user_id}/{character_name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnhanceRequest {
    /// The user's new message, to rank memories against (at most 2000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The bot's own system prompt; the context is appended, fenced as data.
    pub base_system_prompt: String,
    /// Token budget of the context (50-8000, default 800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 50, maximum = 8000)]
    pub max_tokens: Option<usize>,
}

/// The enhanced system prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnhanceResponse {
    /// The base prompt with the context block.
    pub system_prompt: String,
    /// How many memories the context holds.
    pub memories_used: usize,
    /// How many recent messages it holds.
    pub recent_messages: usize,
    /// Estimated tokens of the context.
    pub estimated_context_tokens: usize,
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EraseResponse {
    /// The user.
    #[schema(schema_with = id_schema)]
    pub user_id: UserId,
    /// The character, when one pair was erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = nullable_id_schema)]
    pub character_name: Option<CharacterName>,
    /// Memories deleted.
    pub memories_deleted: u64,
    /// Batch records (with their extraction caches) deleted.
    pub batches_deleted: u64,
}

/// The state of each component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, or `degraded` when a component is down (the answer is then a 503).
    #[schema(schema_with = health_status_schema)]
    pub status: String,
    /// Each component.
    pub components: HealthComponents,
}

fn health_status_schema() -> Object {
    string_enum(["ok", "degraded"])
}

fn component_status_schema() -> Object {
    string_enum(["ok", "down"])
}

/// The components of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthComponents {
    /// Where messages live.
    pub message_store: ComponentHealth,
    /// Where memories live.
    pub memory_store: ComponentHealth,
    /// Where events and batch jobs go.
    pub event_bus: ComponentHealth,
    /// The extractor (`mode`: `offline`, `openai:<model>`).
    pub extractor: ComponentHealth,
    /// The embedder (`model`, `dimension`).
    pub embedder: ComponentHealth,
    /// The node's own checks, by name (a worker's `consumers`).
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, ComponentHealth>,
}

/// One component's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComponentHealth {
    /// `ok` or `down`.
    #[schema(schema_with = component_status_schema)]
    pub status: String,
    /// The kind of failure when down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The extractor's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The embedding model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The embedding dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<usize>,
    /// How long its ping took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

impl ComponentHealth {
    /// A component that is up.
    pub fn ok() -> Self {
        Self {
            status: "ok".into(),
            kind: None,
            mode: None,
            model: None,
            dimension: None,
            latency_ms: None,
        }
    }
}
