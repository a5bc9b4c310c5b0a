//! Engine scenarios every message store must survive (SQLite, Firestore): a crash between the
//! vector write and the flip, a takeover that reuses the saved extraction, racing workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::batching::batch_id;
use crate::domain::Pair;
use crate::error::PortError;
use crate::metrics::Metrics;
use crate::pipeline::{Deps, Engine, EngineConfig, RetryPolicy};
use crate::ports::{BatchPlan, Claim, ExtractionRequest, Extractor, MemoryStore, MessageStore};
use crate::testkit::doubles::{EchoExtractor, FlakyFlipStore, HashEmbedder, InMemoryMemoryStore};
use crate::testkit::message_store::{message, unique_pair};

/// An engine on the given stores, with a counting echo extractor and fast retries.
pub struct Rig {
    /// The engine.
    pub engine: Engine,
    /// Its extractor (counts calls).
    pub extractor: EchoExtractor,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
}

/// Builds a [`Rig`] for `worker` on shared stores.
pub fn rig(worker: &str, messages: Arc<dyn MessageStore>, memories: Arc<dyn MemoryStore>) -> Rig {
    let extractor = EchoExtractor::default();
    let metrics = Arc::new(Metrics::new());
    let deps = Deps {
        messages,
        memories,
        extractor: Arc::new(extractor.clone()),
        embedder: Arc::new(HashEmbedder::new(64)),
        metrics: metrics.clone(),
    };
    let config = EngineConfig {
        worker_id: worker.into(),
        retry: RetryPolicy {
            retries: 2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..Default::default()
    };
    Rig {
        engine: Engine::new(deps, config),
        extractor,
        metrics,
    }
}

async fn seed(store: &dyn MessageStore, pair: &Pair, n: usize) {
    for i in 0..n {
        store.append(&message(pair, i)).await.expect("append");
    }
}

/// The flip fails for good after the memories were written; another worker completes the
/// batch with the saved extraction: no second LLM call, no duplicate memory, all synced once.
pub async fn crash_before_flip<S>(store: FlakyFlipStore<S>)
where
    S: MessageStore + Clone,
{
    let memories = InMemoryMemoryStore::default();
    let first = rig("w1", Arc::new(store.clone()), Arc::new(memories.clone()));
    let pair = unique_pair("flip");
    seed(&store, &pair, 30).await;
    // More failures than retries: the flip fails for good on the first run.
    store
        .flip_faults
        .fail_next(3, PortError::unavailable("store", "connection lost"));
    let err = first.engine.run_once(&pair).await.unwrap_err();
    assert_eq!(err.stage, crate::pipeline::Stage::Flip);
    let stored = memories.count(&pair, true).await.unwrap();
    assert_eq!(stored, 15, "memories were written before the flip failed");
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 30);
    let other = rig("w2", Arc::new(store.clone()), Arc::new(memories.clone()));
    let reports = other.engine.run_until_idle(&pair).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].reused_extraction);
    assert_eq!(reports[0].messages_synced, 30, "every message flipped once");
    assert_eq!(
        other.extractor.calls.load(Ordering::SeqCst),
        0,
        "the LLM is not paid twice"
    );
    assert_eq!(
        memories.count(&pair, true).await.unwrap(),
        stored,
        "no duplicate"
    );
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 0);
    assert_eq!(store.stats(&pair).await.unwrap().batches_done, 1);
}

/// A worker claims and saves its extraction, then dies; once its lease expires another worker
/// takes the batch over and finishes it without calling the LLM.
pub async fn takeover_after_lease_expiry(store: Arc<dyn MessageStore>) {
    let memories = InMemoryMemoryStore::default();
    let pair = unique_pair("heir");
    seed(store.as_ref(), &pair, 25).await;
    let listed = store.list_unsynced(&pair, 50).await.unwrap();
    let plan = BatchPlan {
        batch_id: batch_id(&listed),
        messages: listed,
    };
    let claim = store
        .claim_batch(&pair, &plan, "dying", Duration::from_millis(400))
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    let dying_llm = EchoExtractor::default();
    let extraction = dying_llm
        .extract(ExtractionRequest {
            pair: &pair,
            messages: &plan.messages,
            existing: &[],
        })
        .await
        .unwrap();
    store
        .save_extraction(&pair, &plan.batch_id, "dying", &extraction)
        .await
        .unwrap();
    let heir = rig("heir", store.clone(), Arc::new(memories.clone()));
    assert_eq!(
        heir.engine.run_once(&pair).await.unwrap(),
        crate::pipeline::BatchResult::Busy,
        "a live lease is respected"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reports = heir.engine.run_until_idle(&pair).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].batch_id, plan.batch_id, "the same batch");
    assert_eq!(reports[0].attempt, 2);
    assert!(reports[0].reused_extraction);
    assert_eq!(
        heir.extractor.calls.load(Ordering::SeqCst),
        0,
        "no second LLM call"
    );
    assert_eq!(
        memories.count(&pair, true).await.unwrap(),
        extraction.memories.len() as u64
    );
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 0);
}

/// Four workers race over six pairs of 60 messages: every extraction belongs to exactly one
/// completed batch, every message is synced, one memory per user message.
pub async fn racing_workers(store: Arc<dyn MessageStore>) {
    let memories = InMemoryMemoryStore::default();
    let rigs: Vec<Rig> = (0..4)
        .map(|i| rig(&format!("w{i}"), store.clone(), Arc::new(memories.clone())))
        .collect();
    let pairs: Vec<Pair> = (0..6).map(|_| unique_pair("race")).collect();
    for p in &pairs {
        seed(store.as_ref(), p, 60).await;
    }
    let mut tasks = Vec::new();
    for r in &rigs {
        for p in &pairs {
            let (e, p) = (r.engine.clone(), p.clone());
            tasks.push(tokio::spawn(async move { e.run_until_idle(&p).await }));
        }
    }
    let mut batches = 0;
    for t in tasks {
        batches += t.await.unwrap().unwrap().len();
    }
    // Some racers saw the pair busy and stopped: sweep once more sequentially.
    for p in &pairs {
        batches += rigs[0].engine.run_until_idle(p).await.unwrap().len();
    }
    let calls: usize = rigs
        .iter()
        .map(|r| r.extractor.calls.load(Ordering::SeqCst))
        .sum();
    assert_eq!(
        calls, batches,
        "every extraction belongs to exactly one completed batch"
    );
    // 60 old messages per pair: a full batch of 50, then 10 stragglers idle for long enough.
    assert_eq!(batches, 12);
    for p in &pairs {
        assert_eq!(store.count_unsynced(p).await.unwrap(), 0);
        assert_eq!(
            memories.count(p, true).await.unwrap(),
            30,
            "one memory per user message"
        );
    }
}
