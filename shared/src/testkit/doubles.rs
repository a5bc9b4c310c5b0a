//! Deterministic doubles for unit and plumbing tests, with fault injection.
//!
//! Retrieval quality is never measured with these: the real embedder (all-MiniLM-L6-v2) and the
//! real vector engine (Qdrant Edge) do that. These exist to drive failure paths on demand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{
    BatchOutcome, Category, CharacterName, ExtractedMemory, Extraction, Memory, Message, MessageId,
    MessageStats, Pair, Role, ScoredMemory, TokenUsage, UserId,
};
use crate::error::{PortError, PortResult};
use crate::ports::{
    BatchPlan, Claim, Embedder, ExtractionRequest, Extractor, MemoryPoint, MemoryStore,
    MessageStore, OpenBatch, SearchQuery,
};

/// A queue of errors to return from the next calls of one operation.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    queue: Arc<Mutex<Vec<PortError>>>,
}

impl Faults {
    /// Makes the next `n` calls fail with `error`.
    pub fn fail_next(&self, n: usize, error: PortError) {
        let mut q = self.queue.lock().unwrap();
        q.extend(std::iter::repeat_n(error, n));
    }

    /// Takes the next scripted error, if any.
    pub fn take(&self) -> PortResult<()> {
        match self.queue.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Bag-of-words feature hashing into a unit vector: texts sharing words are close.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimension: usize,
    /// Calls so far (one per `embed`).
    pub calls: Arc<AtomicUsize>,
    /// Scripted failures.
    pub faults: Faults,
}

impl HashEmbedder {
    /// An embedder of the given dimension.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            calls: Arc::default(),
            faults: Faults::default(),
        }
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimension];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = Sha256::digest(word.to_lowercase().as_bytes());
            let i = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize % self.dimension;
            v[i] += if h[4] & 1 == 0 { 1.0 } else { -1.0 };
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            v[0] = 1.0;
        } else {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    async fn embed(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.faults.take()?;
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn name(&self) -> String {
        format!("hash-{}", self.dimension)
    }
}

/// One memory per user message ("User said: ..."), counting calls, with scripted failures and
/// an optional delay standing in for an LLM's latency.
#[derive(Debug, Clone, Default)]
pub struct EchoExtractor {
    /// Calls so far.
    pub calls: Arc<AtomicUsize>,
    /// Scripted failures.
    pub faults: Faults,
    /// How long each call takes.
    pub delay: std::time::Duration,
}

impl EchoExtractor {
    /// An extractor whose every call takes `delay`.
    pub fn with_delay(delay: std::time::Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

#[async_trait]
impl Extractor for EchoExtractor {
    async fn extract(&self, request: ExtractionRequest<'_>) -> PortResult<Extraction> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.faults.take()?;
        let memories = request
            .messages
            .iter()
            .filter(|m| m.role == Role::User && !m.text.trim().is_empty())
            .map(|m| ExtractedMemory {
                text: format!("User said: {}", m.text.trim()),
                category: Category::Other,
                importance: 2,
                event_time: None,
                source_message_ids: vec![m.id.to_string()],
                supersedes: Vec::new(),
                supersedes_in_batch: Vec::new(),
            })
            .collect();
        Ok(Extraction {
            memories,
            usage: TokenUsage {
                prompt_tokens: 10 * request.messages.len() as u64,
                completion_tokens: 5,
            },
            extractor: "echo".into(),
        })
    }

    fn name(&self) -> String {
        "echo".into()
    }
}

/// An exact-cosine memory store in a `HashMap`, with scripted failures on writes.
#[derive(Debug, Clone, Default)]
pub struct InMemoryMemoryStore {
    points: Arc<Mutex<HashMap<Uuid, MemoryPoint>>>,
    dimension: Arc<Mutex<Option<usize>>>,
    /// Scripted failures of `upsert`.
    pub upsert_faults: Faults,
    /// Scripted failures of `ping`.
    pub ping_faults: Faults,
}

impl InMemoryMemoryStore {
    fn check_dim(&self, v: &[f32]) -> PortResult<()> {
        match *self.dimension.lock().unwrap() {
            Some(d) if d != v.len() => Err(PortError::rejected(
                "memory",
                format!("vector has {} dimensions, collection has {d}", v.len()),
            )),
            _ => Ok(()),
        }
    }

    fn remove_where(&self, f: impl Fn(&Memory) -> bool) -> u64 {
        let mut p = self.points.lock().unwrap();
        let before = p.len();
        p.retain(|_, pt| !f(&pt.memory));
        (before - p.len()) as u64
    }
}

#[async_trait]
impl MemoryStore for InMemoryMemoryStore {
    async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
        let mut d = self.dimension.lock().unwrap();
        match *d {
            Some(existing) if existing != dimension => Err(PortError::rejected(
                "memory",
                format!("collection has {existing} dimensions, not {dimension}"),
            )),
            _ => {
                *d = Some(dimension);
                Ok(())
            }
        }
    }

    async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
        self.upsert_faults.take()?;
        for p in points {
            self.check_dim(&p.vector)?;
        }
        let mut map = self.points.lock().unwrap();
        for p in points {
            map.insert(p.memory.id, p.clone());
        }
        Ok(())
    }

    async fn search(&self, q: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
        self.check_dim(&q.vector)?;
        let map = self.points.lock().unwrap();
        let mut hits: Vec<ScoredMemory> = map
            .values()
            .filter(|p| p.memory.pair == q.pair)
            .filter(|p| q.include_superseded || p.memory.superseded_by.is_none())
            .map(|p| ScoredMemory {
                memory: p.memory.clone(),
                score: p.vector.iter().zip(&q.vector).map(|(a, b)| a * b).sum(),
            })
            .filter(|s| q.score_threshold.is_none_or(|t| s.score >= t))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(q.limit);
        Ok(hits)
    }

    async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
        let mut map = self.points.lock().unwrap();
        let mut n = 0;
        for id in ids {
            if let Some(p) = map.get_mut(id).filter(|p| p.memory.pair == *pair) {
                p.memory.superseded_by = Some(by);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64> {
        let map = self.points.lock().unwrap();
        Ok(map
            .values()
            .filter(|p| p.memory.pair == *pair)
            .filter(|p| include_superseded || p.memory.superseded_by.is_none())
            .count() as u64)
    }

    async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
        let map = self.points.lock().unwrap();
        let mut v: Vec<Memory> = map
            .values()
            .filter(|p| p.memory.pair == *pair)
            .map(|p| p.memory.clone())
            .collect();
        v.sort_by_key(|m| (m.created_at, m.id));
        Ok(v)
    }

    async fn export(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<Vec<MemoryPoint>> {
        let map = self.points.lock().unwrap();
        let mut v: Vec<MemoryPoint> = map
            .values()
            .filter(|p| p.memory.pair.user_id == *user)
            .filter(|p| character.is_none_or(|c| p.memory.pair.character_name == *c))
            .cloned()
            .collect();
        v.sort_by(|a, b| crate::ports::export_order(&a.memory, &b.memory));
        Ok(v)
    }

    async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
        Ok(self.remove_where(|m| m.pair == *pair && m.batch_id == batch_id))
    }

    async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
        Ok(self.remove_where(|m| m.pair == *pair))
    }

    async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
        Ok(self.remove_where(|m| m.pair.user_id == *user))
    }

    async fn ping(&self) -> PortResult<()> {
        self.ping_faults.take()
    }
}

/// Wraps a message store so that `complete_batch` (the flip) can be made to fail on demand:
/// the "crashed between the vector write and the flip" case; `claim_batch` too.
#[derive(Clone)]
pub struct FlakyFlipStore<S> {
    inner: S,
    /// Scripted failures of `complete_batch`.
    pub flip_faults: Faults,
    /// Scripted failures of `claim_batch`.
    pub claim_faults: Faults,
}

impl<S> FlakyFlipStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            flip_faults: Faults::default(),
            claim_faults: Faults::default(),
        }
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for FlakyFlipStore<S> {
    async fn append(&self, m: &Message) -> PortResult<bool> {
        self.inner.append(m).await
    }
    async fn count_unsynced(&self, pair: &Pair) -> PortResult<u64> {
        self.inner.count_unsynced(pair).await
    }
    async fn list_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        self.inner.list_unsynced(pair, limit).await
    }
    async fn recent_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        self.inner.recent_unsynced(pair, limit).await
    }
    async fn get_messages(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<Message>> {
        self.inner.get_messages(pair, ids).await
    }
    async fn open_batch(&self, pair: &Pair) -> PortResult<Option<OpenBatch>> {
        self.inner.open_batch(pair).await
    }
    async fn claim_batch(
        &self,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: std::time::Duration,
    ) -> PortResult<Claim> {
        self.claim_faults.take()?;
        self.inner.claim_batch(pair, plan, worker, lease).await
    }
    async fn save_extraction(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        extraction: &Extraction,
    ) -> PortResult<()> {
        self.inner
            .save_extraction(pair, batch_id, worker, extraction)
            .await
    }
    async fn complete_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        ids: &[MessageId],
        outcome: &BatchOutcome,
    ) -> PortResult<u64> {
        self.flip_faults.take()?;
        self.inner
            .complete_batch(pair, batch_id, worker, ids, outcome)
            .await
    }
    async fn fail_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        reason: &str,
    ) -> PortResult<()> {
        self.inner.fail_batch(pair, batch_id, worker, reason).await
    }
    async fn stats(&self, pair: &Pair) -> PortResult<MessageStats> {
        self.inner.stats(pair).await
    }
    async fn unsynced_pairs(&self, min: u64) -> PortResult<Vec<(Pair, u64)>> {
        self.inner.unsynced_pairs(min).await
    }
    async fn erase_batches(
        &self,
        user: &UserId,
        character: Option<&crate::domain::CharacterName>,
    ) -> PortResult<u64> {
        self.inner.erase_batches(user, character).await
    }
    async fn ping(&self) -> PortResult<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn doubles_pass_their_contracts() {
        crate::testkit::embedder::run_all(&HashEmbedder::new(48)).await;
        crate::testkit::extractor::run_all(&EchoExtractor::default()).await;
        crate::testkit::memory_store::run_all(&InMemoryMemoryStore::default(), 16).await;
    }
}
