//! Port decorators that count and time every call, once for every adapter: store operations,
//! model requests and bus publishes. [`instrument`] wraps a [`Deps`] and [`instrument_bus`] a
//! bus; [`crate::node::Node::new`] applies both, so the API and the workers of a process report
//! the same way whichever adapters they run on.
//!
//! | decorator | metrics |
//! |---|---|
//! | [`InstrumentedMessageStore`] | `recall_store_operations_total{store="message",op,outcome}`, `recall_store_operation_duration_seconds{store="message",op}` |
//! | [`InstrumentedMemoryStore`] | the same with `store="memory"` |
//! | [`InstrumentedExtractor`] | `recall_llm_requests_total{kind="chat",outcome}`, `recall_llm_request_duration_seconds{kind="chat"}` |
//! | [`InstrumentedEmbedder`] | the same with `kind="embedding"`, plus `recall_llm_tokens_total{kind="embedding"}` and `recall_llm_cost_usd_total` where the embedder reports tokens |
//! | [`InstrumentedBus`] | `recall_publishes_total{kind,outcome}`, `recall_publish_duration_seconds{kind}` |
//!
//! `op` is the port method's name, `outcome` is `ok` or the error's [`crate::PortError::kind`].
//! Each call through a port is one count: the engine's retries show as several requests. Every
//! method of a port is forwarded, including those with a default body (`maintain`,
//! `estimate_cost_usd`, `tokens_used`), so wrapping never changes behaviour.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{
    BatchOutcome, CharacterName, Extraction, Memory, Message, MessageId, MessageStats, Pair,
    ScoredMemory, TokenUsage, UserId,
};
use crate::error::PortResult;
use crate::metrics::Metrics;
use crate::pipeline::Deps;
use crate::ports::{
    BatchPlan, Claim, Embedder, EventBus, ExtractionRequest, Extractor, MemoryPoint, MemoryStore,
    MessageEvent, MessageStore, OpenBatch, SearchQuery,
};

/// Wraps every port of `deps` in its decorator, reporting to `deps.metrics`. Wrap once: a
/// second wrap counts every call twice.
pub fn instrument(deps: Deps) -> Deps {
    let m = deps.metrics.clone();
    Deps {
        messages: Arc::new(InstrumentedMessageStore::new(deps.messages, m.clone())),
        memories: Arc::new(InstrumentedMemoryStore::new(deps.memories, m.clone())),
        extractor: Arc::new(InstrumentedExtractor::new(deps.extractor, m.clone())),
        embedder: Arc::new(InstrumentedEmbedder::new(deps.embedder, m.clone())),
        metrics: m,
    }
}

/// Wraps a bus in [`InstrumentedBus`].
pub fn instrument_bus(bus: Arc<dyn EventBus>, metrics: Arc<Metrics>) -> Arc<dyn EventBus> {
    Arc::new(InstrumentedBus::new(bus, metrics))
}

fn seconds(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Counts and times the operations of one store.
#[derive(Clone)]
struct StoreOps {
    metrics: Arc<Metrics>,
    store: &'static str,
}

impl StoreOps {
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = PortResult<T>>,
    ) -> PortResult<T> {
        let started = Instant::now();
        let result = call.await;
        let m = &self.metrics;
        m.store_operation_duration_seconds
            .with_label_values(&[self.store, op])
            .observe(seconds(started));
        m.store_operations_total
            .with_label_values(&[self.store, op, Metrics::outcome(&result)])
            .inc();
        result
    }
}

/// A [`MessageStore`] whose every operation is counted and timed (`store="message"`).
pub struct InstrumentedMessageStore<S: ?Sized> {
    inner: Arc<S>,
    ops: StoreOps,
}

impl<S: MessageStore + ?Sized> InstrumentedMessageStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            ops: StoreOps {
                metrics,
                store: "message",
            },
        }
    }
}

#[async_trait]
impl<S: MessageStore + ?Sized> MessageStore for InstrumentedMessageStore<S> {
    async fn append(&self, message: &Message) -> PortResult<bool> {
        self.ops.run("append", self.inner.append(message)).await
    }
    async fn count_unsynced(&self, pair: &Pair) -> PortResult<u64> {
        self.ops
            .run("count_unsynced", self.inner.count_unsynced(pair))
            .await
    }
    async fn list_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        self.ops
            .run("list_unsynced", self.inner.list_unsynced(pair, limit))
            .await
    }
    async fn recent_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        self.ops
            .run("recent_unsynced", self.inner.recent_unsynced(pair, limit))
            .await
    }
    async fn get_messages(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<Message>> {
        self.ops
            .run("get_messages", self.inner.get_messages(pair, ids))
            .await
    }
    async fn open_batch(&self, pair: &Pair) -> PortResult<Option<OpenBatch>> {
        self.ops
            .run("open_batch", self.inner.open_batch(pair))
            .await
    }
    async fn claim_batch(
        &self,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: Duration,
    ) -> PortResult<Claim> {
        self.ops
            .run(
                "claim_batch",
                self.inner.claim_batch(pair, plan, worker, lease),
            )
            .await
    }
    async fn save_extraction(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        extraction: &Extraction,
    ) -> PortResult<()> {
        self.ops
            .run(
                "save_extraction",
                self.inner
                    .save_extraction(pair, batch_id, worker, extraction),
            )
            .await
    }
    async fn complete_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        message_ids: &[MessageId],
        outcome: &BatchOutcome,
    ) -> PortResult<u64> {
        self.ops
            .run(
                "complete_batch",
                self.inner
                    .complete_batch(pair, batch_id, worker, message_ids, outcome),
            )
            .await
    }
    async fn fail_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        reason: &str,
    ) -> PortResult<()> {
        self.ops
            .run(
                "fail_batch",
                self.inner.fail_batch(pair, batch_id, worker, reason),
            )
            .await
    }
    async fn stats(&self, pair: &Pair) -> PortResult<MessageStats> {
        self.ops.run("stats", self.inner.stats(pair)).await
    }
    async fn unsynced_pairs(&self, min_unsynced: u64) -> PortResult<Vec<(Pair, u64)>> {
        self.ops
            .run("unsynced_pairs", self.inner.unsynced_pairs(min_unsynced))
            .await
    }
    async fn erase_batches(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<u64> {
        self.ops
            .run("erase_batches", self.inner.erase_batches(user, character))
            .await
    }
    async fn ping(&self) -> PortResult<()> {
        self.ops.run("ping", self.inner.ping()).await
    }
}

/// A [`MemoryStore`] whose every operation is counted and timed (`store="memory"`).
pub struct InstrumentedMemoryStore<S: ?Sized> {
    inner: Arc<S>,
    ops: StoreOps,
}

impl<S: MemoryStore + ?Sized> InstrumentedMemoryStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            ops: StoreOps {
                metrics,
                store: "memory",
            },
        }
    }
}

#[async_trait]
impl<S: MemoryStore + ?Sized> MemoryStore for InstrumentedMemoryStore<S> {
    async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
        self.ops
            .run("ensure_collection", self.inner.ensure_collection(dimension))
            .await
    }
    async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
        self.ops.run("upsert", self.inner.upsert(points)).await
    }
    async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
        self.ops.run("search", self.inner.search(query)).await
    }
    async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
        self.ops
            .run("set_superseded", self.inner.set_superseded(pair, ids, by))
            .await
    }
    async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64> {
        self.ops
            .run("count", self.inner.count(pair, include_superseded))
            .await
    }
    async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
        self.ops.run("list", self.inner.list(pair)).await
    }
    async fn export(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<Vec<MemoryPoint>> {
        self.ops
            .run("export", self.inner.export(user, character))
            .await
    }
    async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
        self.ops
            .run("delete_batch", self.inner.delete_batch(pair, batch_id))
            .await
    }
    async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
        self.ops
            .run("delete_pair", self.inner.delete_pair(pair))
            .await
    }
    async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
        self.ops
            .run("delete_user", self.inner.delete_user(user))
            .await
    }
    async fn ping(&self) -> PortResult<()> {
        self.ops.run("ping", self.inner.ping()).await
    }
    async fn maintain(&self) -> PortResult<()> {
        self.ops.run("maintain", self.inner.maintain()).await
    }
}

/// Counts and times one model request of `kind` (`chat`, `embedding`).
async fn model_request<T>(
    metrics: &Metrics,
    kind: &'static str,
    call: impl Future<Output = PortResult<T>>,
) -> PortResult<T> {
    let started = Instant::now();
    let result = call.await;
    metrics
        .llm_request_duration_seconds
        .with_label_values(&[kind])
        .observe(seconds(started));
    metrics
        .llm_requests_total
        .with_label_values(&[kind, Metrics::outcome(&result)])
        .inc();
    result
}

/// An [`Extractor`] whose every call is a counted, timed `chat` request. Its tokens and cost are
/// counted by the engine, from the extraction it returns.
pub struct InstrumentedExtractor<E: ?Sized> {
    inner: Arc<E>,
    metrics: Arc<Metrics>,
}

impl<E: Extractor + ?Sized> InstrumentedExtractor<E> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<E>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl<E: Extractor + ?Sized> Extractor for InstrumentedExtractor<E> {
    async fn extract(&self, request: ExtractionRequest<'_>) -> PortResult<Extraction> {
        model_request(&self.metrics, "chat", self.inner.extract(request)).await
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn estimate_cost_usd(&self, usage: &TokenUsage) -> f64 {
        self.inner.estimate_cost_usd(usage)
    }
}

/// An [`Embedder`] whose every call is a counted, timed `embedding` request; the input tokens
/// the embedder reports (OpenAI's `usage`) go to `recall_llm_tokens_total{kind="embedding"}`
/// and their estimated price to `recall_llm_cost_usd_total`.
pub struct InstrumentedEmbedder<E: ?Sized> {
    inner: Arc<E>,
    metrics: Arc<Metrics>,
    /// The inner embedder's token total already counted.
    counted_tokens: AtomicU64,
}

impl<E: Embedder + ?Sized> InstrumentedEmbedder<E> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<E>, metrics: Arc<Metrics>) -> Self {
        let counted_tokens = AtomicU64::new(inner.tokens_used());
        Self {
            inner,
            metrics,
            counted_tokens,
        }
    }

    /// Counts the tokens reported since the last call (concurrent calls each count their share
    /// once: the counted total only moves up).
    fn count_tokens(&self) {
        let total = self.inner.tokens_used();
        let before = self.counted_tokens.fetch_max(total, Ordering::Relaxed);
        if total > before {
            let new = total - before;
            self.metrics
                .llm_tokens_total
                .with_label_values(&["embedding"])
                .inc_by(new);
            self.metrics
                .llm_cost_usd_total
                .inc_by(self.inner.estimate_cost_usd(new));
        }
    }
}

#[async_trait]
impl<E: Embedder + ?Sized> Embedder for InstrumentedEmbedder<E> {
    async fn embed(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
        let result = model_request(&self.metrics, "embedding", self.inner.embed(texts)).await;
        self.count_tokens();
        result
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn tokens_used(&self) -> u64 {
        self.inner.tokens_used()
    }
    fn estimate_cost_usd(&self, tokens: u64) -> f64 {
        self.inner.estimate_cost_usd(tokens)
    }
}

/// An [`EventBus`] whose publishes are counted and timed by kind (`event`, `batch_job`); on
/// RabbitMQ a publish lasts until the broker confirmed it.
pub struct InstrumentedBus<B: ?Sized> {
    inner: Arc<B>,
    metrics: Arc<Metrics>,
}

impl<B: EventBus + ?Sized> InstrumentedBus<B> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<B>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn publish(
        &self,
        kind: &'static str,
        call: impl Future<Output = PortResult<()>>,
    ) -> PortResult<()> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .publish_duration_seconds
            .with_label_values(&[kind])
            .observe(seconds(started));
        self.metrics
            .publishes_total
            .with_label_values(&[kind, Metrics::outcome(&result)])
            .inc();
        result
    }
}

#[async_trait]
impl<B: EventBus + ?Sized> EventBus for InstrumentedBus<B> {
    async fn publish_event(&self, event: &MessageEvent) -> PortResult<()> {
        self.publish("event", self.inner.publish_event(event)).await
    }
    async fn publish_batch_job(&self, pair: &Pair) -> PortResult<()> {
        self.publish("batch_job", self.inner.publish_batch_job(pair))
            .await
    }
    async fn ping(&self) -> PortResult<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::adapters::memory_bus::in_process_bus;
    use crate::adapters::sqlite::SqliteMessageStore;
    use crate::error::PortError;
    use crate::testkit::doubles::{EchoExtractor, HashEmbedder, InMemoryMemoryStore};
    use crate::testkit::message_store::{message, unique_pair};

    fn series(metrics: &Metrics, line_start: &str) -> Option<f64> {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn store_operations_are_counted_by_store_op_and_outcome() {
        let metrics = Arc::new(Metrics::new());
        let sqlite: Arc<dyn MessageStore> = Arc::new(SqliteMessageStore::in_memory().unwrap());
        let store = InstrumentedMessageStore::new(sqlite, metrics.clone());
        let pair = unique_pair("ops");
        for i in 0..3 {
            assert!(store.append(&message(&pair, i)).await.unwrap());
        }
        assert_eq!(store.count_unsynced(&pair).await.unwrap(), 3);
        store.ping().await.unwrap();

        let memories = InMemoryMemoryStore::default();
        let mem = InstrumentedMemoryStore::new(Arc::new(memories.clone()), metrics.clone());
        memories
            .upsert_faults
            .fail_next(1, PortError::unavailable("memory", "down"));
        assert!(mem.upsert(&[]).await.is_err());
        mem.upsert(&[]).await.unwrap();

        let m = &metrics;
        let ok = |store: &str, op: &str| {
            series(
                m,
                &format!(
                    "recall_store_operations_total{{op=\"{op}\",outcome=\"ok\",store=\"{store}\"}}"
                ),
            )
        };
        assert_eq!(ok("message", "append"), Some(3.0));
        assert_eq!(ok("message", "count_unsynced"), Some(1.0));
        assert_eq!(ok("message", "ping"), Some(1.0));
        assert_eq!(ok("memory", "upsert"), Some(1.0));
        assert_eq!(
            series(
                m,
                "recall_store_operations_total{op=\"upsert\",outcome=\"unavailable\",store=\"memory\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            series(
                m,
                "recall_store_operation_duration_seconds_count{op=\"append\",store=\"message\"}"
            ),
            Some(3.0)
        );
    }

    /// An embedder that reports 7 tokens per call, priced at $1 per token, and counts
    /// housekeeping calls.
    struct Metered {
        tokens: AtomicU64,
    }

    #[async_trait]
    impl Embedder for Metered {
        async fn embed(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
            self.tokens.fetch_add(7, Ordering::SeqCst);
            Ok(texts.iter().map(|_| vec![1.0]).collect())
        }
        fn dimension(&self) -> usize {
            1
        }
        fn name(&self) -> String {
            "metered".into()
        }
        fn tokens_used(&self) -> u64 {
            self.tokens.load(Ordering::SeqCst)
        }
        fn estimate_cost_usd(&self, tokens: u64) -> f64 {
            tokens as f64
        }
    }

    #[tokio::test]
    async fn model_requests_tokens_and_cost_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let echo = EchoExtractor::default();
        echo.faults
            .fail_next(1, PortError::rejected("extractor", "401"));
        let extractor = InstrumentedExtractor::new(Arc::new(echo.clone()), metrics.clone());
        let pair = unique_pair("llm");
        let messages = vec![message(&pair, 0)];
        let request = ExtractionRequest {
            pair: &pair,
            messages: &messages,
            existing: &[],
        };
        assert!(extractor.extract(request).await.is_err());
        extractor.extract(request).await.unwrap();
        assert_eq!(extractor.name(), "echo");

        let embedder = InstrumentedEmbedder::new(
            Arc::new(Metered {
                tokens: AtomicU64::new(100),
            }),
            metrics.clone(),
        );
        embedder.embed(&["a".into()]).await.unwrap();
        embedder.embed(&["b".into(), "c".into()]).await.unwrap();
        assert_eq!(embedder.tokens_used(), 114, "forwarded");

        let m = &metrics;
        assert_eq!(
            series(
                m,
                "recall_llm_requests_total{kind=\"chat\",outcome=\"rejected\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            series(m, "recall_llm_requests_total{kind=\"chat\",outcome=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            series(
                m,
                "recall_llm_requests_total{kind=\"embedding\",outcome=\"ok\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            series(
                m,
                "recall_llm_request_duration_seconds_count{kind=\"embedding\"}"
            ),
            Some(2.0)
        );
        // Only what was used through the decorator: not the 100 from before it was wrapped.
        assert_eq!(
            series(m, "recall_llm_tokens_total{kind=\"embedding\"}"),
            Some(14.0)
        );
        assert_eq!(series(m, "recall_llm_cost_usd_total"), Some(14.0));
    }

    #[tokio::test]
    async fn publishes_are_counted_and_timed() {
        let metrics = Arc::new(Metrics::new());
        let (bus, rx) = in_process_bus(4);
        let bus = InstrumentedBus::new(Arc::new(bus), metrics.clone());
        let pair = unique_pair("bus");
        bus.publish_batch_job(&pair).await.unwrap();
        drop(rx);
        assert!(
            bus.publish_batch_job(&pair).await.is_err(),
            "receivers gone"
        );
        bus.ping().await.unwrap_err();
        let m = &metrics;
        assert_eq!(
            series(
                m,
                "recall_publishes_total{kind=\"batch_job\",outcome=\"ok\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            series(
                m,
                "recall_publishes_total{kind=\"batch_job\",outcome=\"unavailable\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            series(
                m,
                "recall_publish_duration_seconds_count{kind=\"batch_job\"}"
            ),
            Some(2.0)
        );
    }

    /// A memory store that only counts `maintain` calls, to prove the decorator forwards it.
    #[derive(Default)]
    struct Maintained {
        inner: InMemoryMemoryStore,
        maintained: AtomicUsize,
    }

    #[async_trait]
    impl MemoryStore for Maintained {
        async fn ensure_collection(&self, d: usize) -> PortResult<()> {
            self.inner.ensure_collection(d).await
        }
        async fn upsert(&self, p: &[MemoryPoint]) -> PortResult<()> {
            self.inner.upsert(p).await
        }
        async fn search(&self, q: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
            self.inner.search(q).await
        }
        async fn set_superseded(&self, p: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
            self.inner.set_superseded(p, ids, by).await
        }
        async fn count(&self, p: &Pair, s: bool) -> PortResult<u64> {
            self.inner.count(p, s).await
        }
        async fn list(&self, p: &Pair) -> PortResult<Vec<Memory>> {
            self.inner.list(p).await
        }
        async fn export(
            &self,
            u: &UserId,
            c: Option<&CharacterName>,
        ) -> PortResult<Vec<MemoryPoint>> {
            self.inner.export(u, c).await
        }
        async fn delete_batch(&self, p: &Pair, b: &str) -> PortResult<u64> {
            self.inner.delete_batch(p, b).await
        }
        async fn delete_pair(&self, p: &Pair) -> PortResult<u64> {
            self.inner.delete_pair(p).await
        }
        async fn delete_user(&self, u: &UserId) -> PortResult<u64> {
            self.inner.delete_user(u).await
        }
        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
        async fn maintain(&self) -> PortResult<()> {
            self.maintained.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn default_methods_are_forwarded() {
        let metrics = Arc::new(Metrics::new());
        let inner = Arc::new(Maintained::default());
        let store = InstrumentedMemoryStore::new(inner.clone(), metrics.clone());
        store.maintain().await.unwrap();
        assert_eq!(inner.maintained.load(Ordering::SeqCst), 1);
        let embedder = InstrumentedEmbedder::new(Arc::new(HashEmbedder::new(8)), metrics);
        assert_eq!(embedder.dimension(), 8);
        assert_eq!(embedder.estimate_cost_usd(1000), 0.0);
    }
}
