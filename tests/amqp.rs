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
use recall_shared::domain::{Message, MessageId, Pair};
use recall_shared::metrics::Metrics;
use recall_shared::node::Node;
use recall_shared::pipeline::{Deps, EngineConfig, RetryPolicy};
use recall_shared::ports::{MemoryStore, MessageStore};
use recall_shared::runtime::WorkerConfig;
use recall_shared::testkit::broker::{close_connections, delete_queues, queue_len, rabbitmqctl};
use recall_shared::testkit::doubles::{EchoExtractor, HashEmbedder};
use recall_tests::wait_for;
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
    start_worker_with(
        s,
        name,
        extractor,
        concurrency,
        lease,
        Duration::from_secs(1),
    )
    .await
}

async fn start_worker_with(
    s: &Shared,
    name: &str,
    extractor: EchoExtractor,
    concurrency: usize,
    lease: Duration,
    sweep: Duration,
) -> Running {
    let shutdown = CancellationToken::new();
    let workers = WorkerConfig {
        concurrency,
        sweep_interval: sweep,
        grace: Duration::from_secs(5),
        ..WorkerConfig::default()
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

/// The `i`-th test message of a pair, written now (so no pair looks idle).
fn message(pair: &Pair, i: usize) -> Message {
    Message {
        created_at: Utc::now(),
        ..recall_shared::testkit::message_store::message(pair, i)
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

/// Across the replicas, `synced` flips in all (each message flipped exactly once) and exactly the
/// memories the store holds for `pairs` written (none twice).
async fn assert_flipped_and_written_once(
    s: &Shared,
    pairs: &[Pair],
    replicas: &[&Running],
    synced: u64,
) {
    let flips: u64 = replicas
        .iter()
        .map(|r| r.metrics.messages_synced_total.get())
        .sum();
    assert_eq!(flips, synced, "every message synced exactly once");
    let stored: u64 = replicas
        .iter()
        .map(|r| r.metrics.memories_stored_total.get())
        .sum();
    let mut in_store = 0;
    for p in pairs {
        in_store += s.memories.count(p, true).await.unwrap();
    }
    assert_eq!(stored, in_store, "no memory written twice");
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
    assert_flipped_and_written_once(&s, &ps, &refs, synced).await;
    eprintln!("200 pairs x 50: {batches} batches, per replica {calls:?}");
    publisher.stop().await;
    for r in replicas {
        r.stop().await;
    }
}

async fn announce(base: &str, pair: &Pair, id: &MessageId) -> reqwest::StatusCode {
    let body =
        json!({"user_id": pair.user_id, "character_name": pair.character_name, "message_id": id});
    reqwest::Client::new()
        .post(format!("{base}/firebase/message-created"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_reordered_events_count_once() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    // No sweep: only events may trigger batches here.
    let w = start_worker_with(
        &s,
        "dup",
        EchoExtractor::default(),
        2,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .await;
    let publisher = start_publisher(&s).await;
    let pair = Pair::parse("dup_user", "meher").unwrap();
    let msgs: Vec<Message> = (0..24).map(|i| message(&pair, i)).collect();
    for m in &msgs {
        s.messages.append(m).await.unwrap();
    }
    // Newest first, each twice: at-least-once, out-of-order triggers.
    for m in msgs.iter().rev() {
        for _ in 0..2 {
            assert_eq!(announce(&publisher.base, &pair, &m.id).await, 202);
        }
    }
    let ws = [&w];
    wait_for("48 events", Duration::from_secs(30), async || {
        events_seen(&ws) >= 48
    })
    .await;
    let ev = |o: &str| w.metrics.events_total.with_label_values(&[o]).get();
    assert_eq!(
        (ev("counted"), ev("duplicate")),
        (24, 24),
        "each message counted once"
    );
    assert_eq!(
        s.messages.stats(&pair).await.unwrap().batches_done,
        0,
        "24 < 25: no batch"
    );
    assert_eq!(w.extractor.calls.load(Ordering::SeqCst), 0);
    // The 25th message makes the pair due.
    let last = message(&pair, 24);
    s.messages.append(&last).await.unwrap();
    assert_eq!(announce(&publisher.base, &pair, &last.id).await, 202);
    wait_for("the batch", Duration::from_secs(30), async || {
        s.messages.count_unsynced(&pair).await.unwrap() == 0
    })
    .await;
    assert_eq!(w.extractor.calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.messages.stats(&pair).await.unwrap().synced, 25);

    // What the two processes report: 49 events accepted and confirmed by the broker, both
    // connections of the worker up, readiness naming the consumers.
    let p = &publisher.metrics;
    assert_eq!(p.events_total.with_label_values(&["accepted"]).get(), 49);
    assert_eq!(
        p.publishes_total.with_label_values(&["event", "ok"]).get(),
        49
    );
    assert_eq!(
        p.publish_duration_seconds
            .with_label_values(&["event"])
            .get_sample_count(),
        49
    );
    assert_eq!(p.amqp_connected.with_label_values(&["publisher"]).get(), 1);
    let wm = w.metrics.clone();
    for role in ["publisher", "consumer"] {
        assert_eq!(
            wm.amqp_connected.with_label_values(&[role]).get(),
            1,
            "{role}"
        );
    }
    assert!(
        wm.publishes_total
            .with_label_values(&["batch_job", "ok"])
            .get()
            >= 1
    );
    let ready = reqwest::get(format!("{}/readyz", w.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["components"]["consumers"]["status"], "ok", "{ready}");
    assert_eq!(ready["components"]["event_bus"]["status"], "ok", "{ready}");

    publisher.stop().await;
    w.stop().await;
    assert_eq!(
        wm.amqp_connected.with_label_values(&["consumer"]).get(),
        0,
        "the consumers disconnected at shutdown"
    );
    delete_queues(&s.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_are_parked_and_the_queue_drains() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let w = start_worker_with(
        &s,
        "poison",
        EchoExtractor::default(),
        2,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .await;
    let conn = lapin::Connection::connect(
        &s.settings("raw", 1).url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for (queue, body) in [
        (format!("{}.events.0", s.prefix), &b"{not json"[..]),
        (
            format!("{}.events.1", s.prefix),
            &br#"{"user_id":"a/../b","character_name":"meher"}"#[..],
        ),
        (format!("{}.batches", s.prefix), &b"\xff\xfe"[..]),
    ] {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let parking = format!("{}.parking", s.prefix);
    wait_for("3 parked", Duration::from_secs(30), async || {
        queue_len(&parking) == 3
    })
    .await;
    let reasons = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
    ]);
    assert!(reasons.contains(&parking));
    // The rest still flows.
    let publisher = start_publisher(&s).await;
    let pair = Pair::parse("after_poison", "meher").unwrap();
    let m = message(&pair, 0);
    s.messages.append(&m).await.unwrap();
    assert_eq!(announce(&publisher.base, &pair, &m.id).await, 202);
    let ws = [&w];
    wait_for("the valid event", Duration::from_secs(30), async || {
        events_seen(&ws) == 1
    })
    .await;
    for i in 0..4 {
        assert_eq!(
            queue_len(&format!("{}.events.{i}", s.prefix)),
            0,
            "shard {i} drained"
        );
    }
    assert_eq!(queue_len(&parking), 3, "nothing else parked");
    let _ = conn.close(200, "bye".into()).await;
    publisher.stop().await;
    w.stop().await;
    delete_queues(&s.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replicas_batch_is_redone_by_another() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let lease = Duration::from_secs(2);
    // Replica A stalls in extraction far past its lease (a process that died mid-batch, as far
    // as anyone can tell); it wakes up at the end of the test and must find it lost the batch.
    let a = start_worker(
        &s,
        "replica-a",
        EchoExtractor::with_delay(Duration::from_secs(8)),
        1,
        lease,
    )
    .await;
    let publisher = start_publisher(&s).await;
    let pair = Pair::parse("killed", "meher").unwrap();
    for i in 0..25 {
        let m = message(&pair, i);
        s.messages.append(&m).await.unwrap();
        assert_eq!(announce(&publisher.base, &pair, &m.id).await, 202);
    }
    wait_for(
        "A to be stuck in the batch",
        Duration::from_secs(30),
        async || a.extractor.calls.load(Ordering::SeqCst) == 1,
    )
    .await;
    let b = start_worker(&s, "replica-b", EchoExtractor::default(), 2, lease).await;
    // Kill A: its connections drop without an ack, and it takes no more work.
    a.shutdown.cancel();
    assert!(close_connections("replica-a") >= 1);
    wait_for(
        "B to finish A's batch",
        Duration::from_secs(60),
        async || s.messages.count_unsynced(&pair).await.unwrap() == 0,
    )
    .await;
    let stats = s.messages.stats(&pair).await.unwrap();
    assert_eq!((stats.synced, stats.batches_done), (25, 1));
    assert_eq!(
        b.extractor.calls.load(Ordering::SeqCst),
        1,
        "redone once, by B"
    );
    // A wakes up, finds its lease taken over, and writes nothing.
    wait_for("A to give up", Duration::from_secs(20), async || {
        a.metrics.batches_in_flight.get() == 0
    })
    .await;
    assert_eq!(a.extractor.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        a.metrics
            .batches_total
            .with_label_values(&["lost_lease"])
            .get(),
        1
    );
    assert_eq!(a.metrics.memories_stored_total.get(), 0);
    assert_eq!(
        s.memories.count(&pair, true).await.unwrap(),
        13,
        "one memory per user message, no duplicate"
    );
    assert_eq!(s.messages.stats(&pair).await.unwrap().synced, 25);
    a.task.await.unwrap().expect("A stops");
    publisher.stop().await;
    b.stop().await;
    delete_queues(&s.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_batch_drains_within_grace() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let w = start_worker(
        &s,
        "drain",
        EchoExtractor::with_delay(Duration::from_millis(1500)),
        1,
        Duration::from_secs(60),
    )
    .await;
    let publisher = start_publisher(&s).await;
    let pair = Pair::parse("drain", "meher").unwrap();
    for i in 0..25 {
        let m = message(&pair, i);
        s.messages.append(&m).await.unwrap();
        assert_eq!(announce(&publisher.base, &pair, &m.id).await, 202);
    }
    wait_for("the batch to start", Duration::from_secs(30), async || {
        w.metrics.batches_in_flight.get() == 1
    })
    .await;
    let took = w.stop().await; // what SIGTERM does: cancel, drain, return
    assert!(
        took < Duration::from_secs(5 + 3),
        "stopped in {took:?}, grace is 5 s"
    );
    let stats = s.messages.stats(&pair).await.unwrap();
    assert_eq!(
        (stats.synced, stats.batches_done),
        (25, 1),
        "the in-flight batch completed, whole"
    );
    publisher.stop().await;
    delete_queues(&s.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_during_a_publish_flood_loses_no_accepted_event() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let shutdown = CancellationToken::new();
    let (consumers, mut events, _jobs) =
        AmqpConsumers::start(s.settings("collector", 1), shutdown.clone())
            .await
            .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(d) = events.recv().await {
                let id = d.payload.message_id.clone().unwrap();
                // A failed ack means redelivery, which the set absorbs.
                if d.settle.ack().await.is_ok() {
                    seen.lock().unwrap().insert(id);
                }
            }
        })
    };
    let publisher = start_publisher(&s).await;
    let ps = pairs(50, "flood");
    let base = publisher.base.clone();
    let flood_task = {
        let prefix = s.prefix.clone();
        let messages = s.messages.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut accepted = Vec::new();
            let mut refused = 0;
            for i in 0..60 {
                for p in &ps {
                    let m = message(p, i);
                    messages.append(&m).await.unwrap();
                    let body = json!({"user_id": p.user_id, "character_name": p.character_name, "message_id": m.id});
                    match client
                        .post(format!("{base}/firebase/message-created"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => accepted.push(m.id.clone()),
                        Ok(r) => {
                            assert_eq!(r.status(), 503, "{prefix}: only 503 may refuse");
                            refused += 1;
                        }
                        Err(e) => panic!("the publisher itself must keep answering: {e}"),
                    }
                }
            }
            (accepted, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await
    .unwrap();
    let (accepted, refused) = flood_task.await.unwrap();
    assert_eq!(accepted.len() + refused, 3000);
    eprintln!(
        "broker restart: {} accepted, {refused} refused with 503",
        accepted.len()
    );
    wait_for(
        "every accepted event to arrive",
        Duration::from_secs(90),
        async || {
            let seen = seen.lock().unwrap();
            accepted.iter().all(|id| seen.contains(id))
        },
    )
    .await;
    shutdown.cancel();
    collector.abort();
    consumers.stopped().await;
    publisher.stop().await;
    delete_queues(&s.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_killed_one_added_during_load() {
    let _serial = SERIAL.lock().await;
    let s = Shared::new().await;
    let lease = Duration::from_secs(2);
    let slow = || EchoExtractor::with_delay(Duration::from_millis(150));
    let mut replicas = Vec::new();
    for name in ["k1", "k2", "k3"] {
        replicas.push(start_worker(&s, name, slow(), 2, lease).await);
    }
    let publisher = start_publisher(&s).await;
    let ps = pairs(60, "scale");
    let total = 60 * 50;

    let flooding = flood(&s, &publisher.base, &ps[..30], 50, 16);
    let churn = async {
        wait_for("batches to start", Duration::from_secs(60), async || {
            replicas
                .iter()
                .map(|r| r.extractor.calls.load(Ordering::SeqCst))
                .sum::<usize>()
                >= 6
        })
        .await;
        // Kill k1: its connections drop (unacked deliveries go back to the queues), then it
        // stops taking work.
        assert!(close_connections("k1") >= 1);
        replicas[0].shutdown.cancel();
        let added = start_worker(&s, "k4", slow(), 2, lease).await;
        let killed_calls = replicas[0].extractor.calls.load(Ordering::SeqCst);
        (added, killed_calls)
    };
    let (accepted, (added, killed_calls)) = tokio::join!(flooding, churn);
    assert_eq!(accepted.len(), total / 2, "every event accepted");
    // A second wave once the new replica is consuming: the queues hand it its share.
    let wave = flood(&s, &publisher.base, &ps[30..], 50, 16).await;
    assert_eq!(wave.len(), total / 2, "every event accepted");
    let live: Vec<&Running> = replicas[1..].iter().chain([&added]).collect();
    settle(&s, &ps, &live, 0, Duration::from_secs(240)).await;

    let (synced, unsynced, batches) = totals(&s, &ps).await;
    // Batches take up to 50 messages, so a pair may keep a remainder below the threshold
    // (settle checked every pair is below it); none is lost.
    assert_eq!(synced + unsynced, total as u64, "no message lost");
    assert!(synced >= total as u64 - 24 * ps.len() as u64);
    let all: Vec<&Running> = replicas.iter().chain([&added]).collect();
    assert_flipped_and_written_once(&s, &ps, &all, synced).await;
    let added_calls = added.extractor.calls.load(Ordering::SeqCst);
    assert!(added_calls > 0, "the added replica took batches");
    let per: Vec<usize> = all
        .iter()
        .map(|r| r.extractor.calls.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "{batches} batches; calls per replica {per:?} (k1 killed after {killed_calls}, k4 added)"
    );
    publisher.stop().await;
    let mut replicas = replicas.into_iter();
    let killed = replicas.next().unwrap();
    killed.task.await.unwrap().expect("k1 stops");
    for r in replicas.chain([added]) {
        r.stop().await;
    }
    delete_queues(&s.prefix);
}
