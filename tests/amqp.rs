//! The RabbitMQ transport end to end, on the real broker at 127.0.0.1:5672: a publisher node
//! and worker replicas in this process (separate broker connections), sharing one SQLite message
//! store and one Qdrant Edge memory store. Each test uses its own queue prefix; they run one at a
//! time because one of them restarts the broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use recall_shared::adapters::qdrant_edge::QdrantEdgeStore;
use recall_shared::adapters::rabbitmq::{AmqpConsumers, AmqpSettings};
use recall_shared::adapters::sqlite::SqliteMessageStore;
use recall_shared::batching::BatchRules;
use recall_shared::domain::{Message, MessageId, Pair, Role};
use recall_shared::metrics::Metrics;
use recall_shared::node::Node;
use recall_shared::pipeline::{Deps, EngineConfig, RetryPolicy};
use recall_shared::ports::{MemoryStore, MessageStore};
use recall_shared::runtime::WorkerConfig;
use recall_shared::testkit::doubles::{EchoExtractor, HashEmbedder};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One test at a time: the broker is shared and one test restarts it.
static SERIAL: Mutex<()> = Mutex::const_new(());

const DIM: usize = 64;

struct Shared {
    messages: Arc<SqliteMessageStore>,
    memories: Arc<QdrantEdgeStore>,
    prefix: String,
    /// Last: fields drop in order, and the stores must close before their folder goes.
    _dir: tempfile::TempDir,
}

impl Shared {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let messages = Arc::new(SqliteMessageStore::open(&dir.path().join("m.sqlite3")).unwrap());
        let memories = Arc::new(QdrantEdgeStore::open(&dir.path().join("qdrant")).unwrap());
        memories.ensure_collection(DIM).await.unwrap();
        let prefix = format!("it-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Self {
            messages,
            memories,
            prefix,
            _dir: dir,
        }
    }

    fn settings(&self, name: &str, batch_prefetch: u16) -> AmqpSettings {
        AmqpSettings {
            prefix: self.prefix.clone(),
            shards: 4,
            batch_prefetch,
            confirm_timeout: Duration::from_secs(3),
            retry_delays: vec![Duration::from_millis(300), Duration::from_millis(600)],
            shutdown_grace: Duration::from_secs(3),
            client_name: name.to_owned(),
            ..AmqpSettings::default()
        }
    }

    fn deps(&self, extractor: &EchoExtractor) -> Deps {
        Deps {
            messages: self.messages.clone(),
            memories: self.memories.clone(),
            extractor: Arc::new(extractor.clone()),
            embedder: Arc::new(HashEmbedder::new(DIM)),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn engine(&self, worker_id: &str, lease: Duration) -> EngineConfig {
        EngineConfig {
            rules: BatchRules::default(),
            lease,
            worker_id: worker_id.to_owned(),
            retry: RetryPolicy {
                retries: 2,
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
            },
            context_memories: 5,
        }
    }
}

struct Running {
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
    extractor: EchoExtractor,
}

impl Running {
    async fn stop(self) -> Duration {
        let t = Instant::now();
        self.shutdown.cancel();
        self.task.await.unwrap().expect("clean stop");
        t.elapsed()
    }
}

async fn serve(
    node: Node,
    after: Option<AmqpConsumers>,
    shutdown: CancellationToken,
    extractor: EchoExtractor,
) -> Running {
    let metrics = node.state().metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        node.run(listener, token).await?;
        if let Some(c) = after {
            c.stopped().await;
        }
        Ok(())
    });
    Running {
        base,
        shutdown,
        task,
        metrics,
        extractor,
    }
}

async fn start_worker(
    s: &Shared,
    name: &str,
    extractor: EchoExtractor,
    concurrency: usize,
    lease: Duration,
) -> Running {
    let shutdown = CancellationToken::new();
    let workers = WorkerConfig {
        concurrency,
        sweep_interval: Duration::from_secs(1),
        grace: Duration::from_secs(5),
    };
    let (node, consumers) = Node::amqp_worker(
        s.deps(&extractor),
        s.engine(name, lease),
        workers,
        s.settings(name, concurrency as u16),
        None,
        shutdown.clone(),
    )
    .await
    .expect("worker starts");
    serve(node, Some(consumers), shutdown, extractor).await
}

async fn start_publisher(s: &Shared) -> Running {
    let extractor = EchoExtractor::default();
    let shutdown = CancellationToken::new();
    let node = Node::amqp_publisher(
        s.deps(&extractor),
        s.engine("publisher", Duration::from_secs(60)),
        s.settings("publisher", 1),
        None,
    )
    .await
    .expect("publisher starts");
    serve(node, None, shutdown, extractor).await
}

fn message(pair: &Pair, i: usize) -> Message {
    Message {
        id: MessageId::parse(format!("m{i:04}")).unwrap(),
        pair: pair.clone(),
        role: if i.is_multiple_of(2) {
            Role::User
        } else {
            Role::Assistant
        },
        channel: "whatsapp".into(),
        text: format!("message {i} of {}", pair.user_id),
        created_at: Utc::now(),
        sync: false,
    }
}

/// Stores every message (as the app does) and announces it through the publisher's webhook,
/// `concurrency` requests at a time; returns the ids that got a 202.
async fn flood(
    s: &Shared,
    base: &str,
    pairs: &[Pair],
    per_pair: usize,
    concurrency: usize,
) -> Vec<(Pair, MessageId)> {
    let client = reqwest::Client::new();
    let mut work = Vec::new();
    for i in 0..per_pair {
        for p in pairs {
            work.push(message(p, i));
        }
    }
    for m in &work {
        s.messages.append(m).await.unwrap();
    }
    futures::stream::iter(work)
        .map(|m| {
            let client = client.clone();
            let url = format!("{base}/firebase/message-created");
            async move {
                let body = json!({"user_id": m.pair.user_id, "character_name": m.pair.character_name, "message_id": m.id});
                let r = client.post(url).json(&body).send().await;
                match r {
                    Ok(r) if r.status() == 202 => Some((m.pair, m.id)),
                    Ok(r) => {
                        assert_eq!(r.status(), 503, "only 503 may refuse an event");
                        assert!(r.headers().contains_key("retry-after"));
                        None
                    }
                    Err(_) => None,
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

fn events_seen(workers: &[&Running]) -> u64 {
    workers
        .iter()
        .map(|w| {
            w.metrics.events_total.with_label_values(&["counted"]).get()
                + w.metrics
                    .events_total
                    .with_label_values(&["duplicate"])
                    .get()
        })
        .sum()
}

/// Waits until the workers saw `events` events, every pair is below the threshold and nothing
/// is in flight, three polls in a row.
async fn settle(s: &Shared, pairs: &[Pair], workers: &[&Running], events: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut calm = 0;
    loop {
        let mut worst = 0;
        for p in pairs {
            worst = worst.max(s.messages.count_unsynced(p).await.unwrap());
        }
        let busy: i64 = workers
            .iter()
            .map(|w| w.metrics.batches_in_flight.get())
            .sum();
        let seen = events_seen(workers);
        calm = if worst < 25 && busy == 0 && seen >= events {
            calm + 1
        } else {
            0
        };
        if calm >= 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "did not settle: worst pair has {worst} unsynced, {busy} in flight, {seen}/{events} events"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pairs(n: usize, tag: &str) -> Vec<Pair> {
    (0..n)
        .map(|i| Pair::parse(&format!("{tag}{i:03}"), "meher").unwrap())
        .collect()
}

async fn totals(s: &Shared, pairs: &[Pair]) -> (u64, u64, u64) {
    let (mut synced, mut batches, mut unsynced) = (0, 0, 0);
    for p in pairs {
        let st = s.messages.stats(p).await.unwrap();
        synced += st.synced;
        unsynced += st.unsynced;
        batches += st.batches_done;
    }
    (synced, unsynced, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_three_replicas() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let replicas = vec![
        start_worker(
            &s,
            "r1",
            EchoExtractor::with_delay(Duration::from_millis(30)),
            2,
            Duration::from_secs(60),
        )
        .await,
        start_worker(
            &s,
            "r2",
            EchoExtractor::with_delay(Duration::from_millis(30)),
            2,
            Duration::from_secs(60),
        )
        .await,
        start_worker(
            &s,
            "r3",
            EchoExtractor::with_delay(Duration::from_millis(30)),
            2,
            Duration::from_secs(60),
        )
        .await,
    ];
    let publisher = start_publisher(&s).await;
    let ps = pairs(200, "load");
    let accepted = flood(&s, &publisher.base, &ps, 50, 32).await;
    assert_eq!(
        accepted.len(),
        10_000,
        "the broker was up: every event is accepted"
    );
    let refs: Vec<&Running> = replicas.iter().collect();
    settle(&s, &ps, &refs, 10_000, Duration::from_secs(240)).await;

    let (synced, unsynced, batches) = totals(&s, &ps).await;
    assert_eq!(synced + unsynced, 10_000);
    let flips: u64 = replicas
        .iter()
        .map(|r| r.metrics.messages_synced_total.get())
        .sum();
    assert_eq!(flips, synced, "every message synced exactly once");
    let calls: Vec<usize> = replicas
        .iter()
        .map(|r| r.extractor.calls.load(Ordering::SeqCst))
        .collect();
    let total_calls: usize = calls.iter().sum();
    assert_eq!(total_calls as u64, batches, "no batch extracted twice");
    let counted: u64 = replicas
        .iter()
        .map(|r| r.metrics.events_total.with_label_values(&["counted"]).get())
        .sum();
    assert_eq!(counted, 10_000, "every event counted once");
    for (i, c) in calls.iter().enumerate() {
        assert!(
            (*c as f64) <= 0.6 * total_calls as f64,
            "replica {i} did {c} of {total_calls} batches: {calls:?}"
        );
    }
    let stored: u64 = replicas
        .iter()
        .map(|r| r.metrics.memories_stored_total.get())
        .sum();
    let mut in_store = 0;
    for p in &ps {
        in_store += s.memories.count(p, true).await.unwrap();
    }
    assert_eq!(stored, in_store, "no memory written twice");
    eprintln!("200 pairs x 50: {batches} batches, per replica {calls:?}");
    publisher.stop().await;
    for r in replicas {
        r.stop().await;
    }
}
