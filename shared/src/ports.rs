//! Ports: one small trait per external system. The domain depends on these, never on an adapter.
//!
//! | port | embedded adapter | production adapter |
//! |---|---|---|
//! | [`MessageStore`] | SQLite | Firestore |
//! | [`MemoryStore`] | Qdrant Edge (in process) | Qdrant server |
//! | [`Extractor`] | offline rule-based | OpenAI-compatible chat completion |
//! | [`Embedder`] | all-MiniLM-L6-v2 (candle) | OpenAI-compatible embeddings |
//! | [`EventBus`] | tokio channels | RabbitMQ |

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    BatchOutcome, Extraction, Memory, Message, MessageId, MessageStats, Pair, ScoredMemory, UserId,
};
use crate::error::PortResult;

/// The messages a worker wants to turn into one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// Deterministic id derived from the message ids.
    pub batch_id: String,
    /// The messages, oldest first.
    pub messages: Vec<Message>,
}

/// A batch this worker now holds the lease of.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedBatch {
    /// The batch id.
    pub batch_id: String,
    /// 1 for the first claim, +1 for each takeover or retry.
    pub attempt: u32,
    /// The extraction saved by an earlier attempt, reused instead of calling the LLM again.
    pub extraction: Option<Extraction>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The lease is ours until it expires.
    Acquired(ClaimedBatch),
    /// Another worker holds a live lease.
    Held {
        /// Its worker id.
        by: String,
        /// When its lease expires.
        until: DateTime<Utc>,
    },
    /// The batch already completed.
    Done,
    /// The plan no longer matches the store (another batch of the pair is open, or a message
    /// is already synced): plan again from [`MessageStore::open_batch`].
    Stale,
}

/// A batch of a pair that was claimed but not completed (running, failed, or its holder died).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBatch {
    /// The batch id.
    pub batch_id: String,
    /// Its messages, in batch order.
    pub message_ids: Vec<MessageId>,
    /// The worker holding or last holding the lease.
    pub claimed_by: Option<String>,
    /// When that lease expires (in the past when free).
    pub lease_until: Option<DateTime<Utc>>,
    /// Attempts so far.
    pub attempt: u32,
    /// Reason of the last failed attempt.
    pub last_error: Option<String>,
}

/// Where chat messages live and batches are claimed: the source of truth.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a new message (`sync: false`); returns `false` if that id already existed.
    async fn append(&self, message: &Message) -> PortResult<bool>;
    /// Counts the pair's unsynced messages.
    async fn count_unsynced(&self, pair: &Pair) -> PortResult<u64>;
    /// Lists up to `limit` unsynced messages of the pair, oldest first.
    async fn list_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>>;
    /// Lists up to `limit` of the pair's most recent unsynced messages, oldest first.
    async fn recent_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>>;
    /// Loads messages of the pair by id, in the order given; unknown ids are skipped.
    async fn get_messages(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<Message>>;
    /// The pair's open (claimed, not completed) batch, if any. A pair has at most one.
    async fn open_batch(&self, pair: &Pair) -> PortResult<Option<OpenBatch>>;
    /// Takes the lease of a batch. Atomically checks that no other batch of the pair is open and
    /// that every planned message is still unsynced ([`Claim::Stale`] otherwise), and that no
    /// other worker holds a live lease on it ([`Claim::Held`]).
    async fn claim_batch(
        &self,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: Duration,
    ) -> PortResult<Claim>;
    /// Saves the extraction on the batch; [`crate::PortError::Conflict`] if the lease was lost.
    async fn save_extraction(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        extraction: &Extraction,
    ) -> PortResult<()>;
    /// Flips the batch's messages to `sync: true`, records provenance, marks the batch done.
    /// Returns how many messages were flipped.
    async fn complete_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        message_ids: &[MessageId],
        outcome: &BatchOutcome,
    ) -> PortResult<u64>;
    /// Records a failed attempt with its reason and releases the lease for a retry.
    async fn fail_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        reason: &str,
    ) -> PortResult<()>;
    /// Message and batch statistics of the pair.
    async fn stats(&self, pair: &Pair) -> PortResult<MessageStats>;
    /// Pairs with at least `min_unsynced` unsynced messages, with their counts (for sweeps).
    async fn unsynced_pairs(&self, min_unsynced: u64) -> PortResult<Vec<(Pair, u64)>>;
    /// Erases a user's batch records and extraction caches, of one character or of all
    /// (`None`); returns how many batch records were erased. Messages belong to the app and are
    /// left alone.
    async fn erase_batches(
        &self,
        user: &UserId,
        character: Option<&crate::domain::CharacterName>,
    ) -> PortResult<u64>;
    /// Checks the store answers.
    async fn ping(&self) -> PortResult<()>;
}

/// A memory with its embedding, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPoint {
    /// The memory.
    pub memory: Memory,
    /// Its embedding.
    pub vector: Vec<f32>,
}

/// A semantic search within one pair. The pair is mandatory: no search crosses tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Whose memories to search.
    pub pair: Pair,
    /// The query embedding.
    pub vector: Vec<f32>,
    /// At most this many results.
    pub limit: usize,
    /// Drop results scoring below this.
    pub score_threshold: Option<f32>,
    /// Also return memories that a newer one replaced.
    pub include_superseded: bool,
}

/// The order of [`MemoryStore::export`]: by character, then oldest `created_at` first, then id.
pub fn export_order(a: &Memory, b: &Memory) -> std::cmp::Ordering {
    (&a.pair.character_name, a.created_at, a.id).cmp(&(&b.pair.character_name, b.created_at, b.id))
}

/// Where memories and their embeddings live.
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Creates the collection if missing; errors if it exists with another dimension.
    async fn ensure_collection(&self, dimension: usize) -> PortResult<()>;
    /// Inserts or overwrites memories by id (idempotent).
    async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()>;
    /// Nearest memories of one pair, best first.
    async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>>;
    /// Marks memories of the pair as replaced by `by`; returns how many changed.
    async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64>;
    /// Counts the pair's memories (superseded ones included when asked).
    async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64>;
    /// Every memory of the pair, oldest first.
    async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>>;
    /// Every memory of a user with its vector, of one character or of all (`None`), superseded
    /// ones included, ordered by character, then oldest first (for export and for moving
    /// memories between stores).
    async fn export(
        &self,
        user: &UserId,
        character: Option<&crate::domain::CharacterName>,
    ) -> PortResult<Vec<MemoryPoint>>;
    /// Deletes the memories one batch produced; returns how many.
    async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64>;
    /// Deletes every memory of a pair; returns how many.
    async fn delete_pair(&self, pair: &Pair) -> PortResult<u64>;
    /// Deletes every memory of a user, all characters; returns how many.
    async fn delete_user(&self, user: &UserId) -> PortResult<u64>;
    /// Checks the store answers.
    async fn ping(&self) -> PortResult<()>;
    /// Housekeeping off the hot path (index building, vacuum); nothing by default.
    async fn maintain(&self) -> PortResult<()> {
        Ok(())
    }
}

/// Input of one extraction: a whole batch plus what is already remembered.
#[derive(Debug, Clone, Copy)]
pub struct ExtractionRequest<'a> {
    /// The conversation.
    pub pair: &'a Pair,
    /// The batch, oldest first.
    pub messages: &'a [Message],
    /// The pair's existing memories most relevant to the batch.
    pub existing: &'a [Memory],
}

/// Turns a batch of messages into proposed memories (one call per batch).
#[async_trait]
pub trait Extractor: Send + Sync + 'static {
    /// Extracts memories from the batch.
    async fn extract(&self, request: ExtractionRequest<'_>) -> PortResult<Extraction>;
    /// A label for logs, stats and the batch record (e.g. `offline`).
    fn name(&self) -> String;
    /// Estimated cost in US dollars of the tokens an extraction used (0 when free).
    fn estimate_cost_usd(&self, _usage: &crate::domain::TokenUsage) -> f64 {
        0.0
    }
}

/// Turns texts into unit-length vectors.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// Embeds every text in one call, in order.
    async fn embed(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>>;
    /// Length of every vector it returns.
    fn dimension(&self) -> usize;
    /// A label for logs (model name).
    fn name(&self) -> String;
    /// Input tokens the model reported over the embedder's lifetime (0 when it reports none).
    fn tokens_used(&self) -> u64 {
        0
    }
    /// Estimated cost in US dollars of `tokens` input tokens (0 when free).
    fn estimate_cost_usd(&self, _tokens: u64) -> f64 {
        0.0
    }
}

/// "A message was created" as the Cloud Function (or the HTTP API) announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageEvent {
    /// The user.
    pub user_id: UserId,
    /// The character.
    pub character_name: crate::domain::CharacterName,
    /// The message, when the sender knows it (recommended: enables de-duplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

impl MessageEvent {
    /// The pair the event belongs to.
    pub fn pair(&self) -> Pair {
        Pair::new(self.user_id.clone(), self.character_name.clone())
    }
}

/// How a consumer settles one delivery. Dropping it unsettled hands the delivery back to the
/// bus (RabbitMQ redelivers it when the channel closes).
#[async_trait]
pub trait Settle: Send + 'static {
    /// Done: the effect is durable, forget the delivery.
    async fn ack(self: Box<Self>) -> PortResult<()>;
    /// Failed for now: deliver again later (after a delay, where the bus supports it).
    async fn retry(self: Box<Self>, reason: &str) -> PortResult<()>;
    /// Never processable: move it aside with the reason, for an operator.
    async fn park(self: Box<Self>, reason: &str) -> PortResult<()>;
}

/// A settle handle that does nothing: for in-process delivery, where the store is the truth.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSettle;

#[async_trait]
impl Settle for NoSettle {
    async fn ack(self: Box<Self>) -> PortResult<()> {
        Ok(())
    }
    async fn retry(self: Box<Self>, _reason: &str) -> PortResult<()> {
        Ok(())
    }
    async fn park(self: Box<Self>, reason: &str) -> PortResult<()> {
        tracing::warn!(reason, "in-process delivery dropped");
        Ok(())
    }
}

/// One delivered item and how to settle it.
pub struct Delivery<T> {
    /// What was delivered.
    pub payload: T,
    /// How many times it was delivered before (0 = first time), where the bus knows.
    pub redeliveries: u32,
    /// How to settle it.
    pub settle: Box<dyn Settle>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("payload", &self.payload)
            .field("redeliveries", &self.redeliveries)
            .finish_non_exhaustive()
    }
}

impl<T> Delivery<T> {
    /// An in-process delivery that needs no settling.
    pub fn unsettled(payload: T) -> Self {
        Self {
            payload,
            redeliveries: 0,
            settle: Box::new(NoSettle),
        }
    }
}

/// Carries message events and batch jobs between the API and the workers.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes a message event durably; `Ok` means it will be delivered.
    async fn publish_event(&self, event: &MessageEvent) -> PortResult<()>;
    /// Publishes "this pair is due for a batch" to the competing batch workers.
    async fn publish_batch_job(&self, pair: &Pair) -> PortResult<()>;
    /// Checks the bus can accept messages.
    async fn ping(&self) -> PortResult<()>;
}
