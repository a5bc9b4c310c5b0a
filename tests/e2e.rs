//! End to end on the embedded default: a conversation from `../shared/data/` replayed through the
//! HTTP API of a standalone server (SQLite, Qdrant Edge, MiniLM, offline extractor) on a random
//! loopback port, with a restart on the same data folder half-way through.

#![cfg(feature = "embedded")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use recall_shared::config::{BatchArgs, StoreArgs};
use recall_shared::metrics::Metrics;
use recall_shared::node::Node;
use recall_tests::{DataMessage, conversation, facts, model_dir};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KEY: &str = "e2e-test-key";

struct Server {
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
}

async fn start(data_dir: &std::path::Path) -> Server {
    let batch = BatchArgs {
        batch_threshold: 25,
        batch_max_messages: 50,
        batch_idle_seconds: 1800,
        batch_idle_min_messages: 5,
        batch_concurrency: 2,
        batch_lease_seconds: 60,
        batch_retries: 2,
        sweep_seconds: 1,
        grace_seconds: 25,
        maintenance_seconds: 1,
    };
    let deps = StoreArgs::in_dir(data_dir, model_dir())
        .open()
        .await
        .expect("embedded adapters");
    let engine = batch.engine(None).unwrap();
    let services = Node::standalone(deps, engine, batch.workers(), Some(KEY.into()));
    let metrics = services.state().metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(services.run(listener, shutdown.clone()));
    Server {
        base,
        shutdown,
        task,
        metrics,
    }
}

impl Server {
    async fn stop(self) -> Arc<Metrics> {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("clean shutdown");
        self.metrics
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(base: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn post_message(base: &str, m: &DataMessage) {
    let body = json!({
        "message_id": m.message_id, "role": m.role, "text": m.text,
        "created_at": m.created_at, "channel": m.channel,
    });
    let url = format!("{base}/memory/messages/{}/{}", m.user_id, m.character_name);
    let r = client()
        .post(url)
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "message {} was not created", m.message_id);
}

/// Waits until no batch is due: fewer unsynced than the idle minimum (these messages are old, so
/// stragglers are batched too) and nothing in flight.
async fn settle(server: &Server, pair: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = get(&server.base, &format!("/memory/stats/{pair}")).await;
        let unsynced = stats["messages"]["unsynced"].as_u64().unwrap();
        if unsynced < 5 && server.metrics.batches_in_flight.get() == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "batches did not settle: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_replay_with_restart() {
    let (user, character) = ("u_0f6c3d", "meher");
    let pair = format!("{user}/{character}");
    let messages = conversation(&format!("{user}__{character}"));
    let dir = tempfile::tempdir().unwrap();
    let half = messages.len() / 2;

    let server = start(dir.path()).await;
    for m in &messages[..half] {
        post_message(&server.base, m).await;
    }
    let mid = settle(&server, &pair).await;
    assert!(mid["batches"]["done"].as_u64().unwrap() >= 1, "{mid}");
    let first_metrics = server.stop().await;

    // Same data folder, new process state: nothing lost, nothing redone.
    let server = start(dir.path()).await;
    let again = get(&server.base, &format!("/memory/stats/{pair}")).await;
    assert_eq!(
        again["messages"], mid["messages"],
        "state survives the restart"
    );
    assert_eq!(again["memories"], mid["memories"]);
    for m in &messages[half..] {
        post_message(&server.base, m).await;
    }
    let stats = settle(&server, &pair).await;

    let total = messages.len() as u64;
    assert_eq!(stats["messages"]["total"], total, "{stats}");
    let synced = stats["messages"]["synced"].as_u64().unwrap();
    assert_eq!(
        synced + stats["messages"]["unsynced"].as_u64().unwrap(),
        total
    );
    let flips =
        first_metrics.messages_synced_total.get() + server.metrics.messages_synced_total.get();
    assert_eq!(flips, synced, "every message was flipped exactly once");
    let stored =
        first_metrics.memories_stored_total.get() + server.metrics.memories_stored_total.get();
    let memories = stats["memories"]["total"].as_u64().unwrap();
    assert!(memories > 0, "{stats}");
    assert_eq!(stored, memories, "no batch wrote its memories twice");
    assert_eq!(stats["extractor"], "offline");

    // Gold questions: the memory from the right message is in the top 5 for some of them.
    let gold = facts(user, character);
    let mut hits = 0;
    let mut asked = 0;
    for f in &gold {
        for q in &f.questions {
            asked += 1;
            let path = format!("/memory/search/{pair}?limit=5&query={}", urlencode(q));
            let found = get(&server.base, &path).await;
            let results = found["results"].as_array().unwrap();
            assert!(results.len() <= 5);
            if results.iter().any(|r| {
                r["source_message_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == &json!(f.first_message_id))
            }) {
                hits += 1;
            }
            // Another tenant never sees these memories.
            let other = get(
                &server.base,
                &format!(
                    "/memory/search/u_other/{character}?limit=50&query={}",
                    urlencode(q)
                ),
            )
            .await;
            assert_eq!(other["count"], 0, "tenant leak: {other}");
            let other = get(
                &server.base,
                &format!("/memory/search/{user}/luna?limit=50&query={}", urlencode(q)),
            )
            .await;
            assert_eq!(other["count"], 0, "character leak: {other}");
        }
    }
    eprintln!("gold questions answered from the right message in the top 5: {hits}/{asked}");
    assert!(
        hits >= 1,
        "no gold question found its source memory in the top 5"
    );

    // The context block and enhanced prompt use the memories.
    let ctx = get(
        &server.base,
        &format!(
            "/memory/context/{pair}?message={}&max_tokens=400",
            urlencode(&gold[0].questions[0])
        ),
    )
    .await;
    assert!(ctx["estimated_tokens"].as_u64().unwrap() <= 400);
    assert!(!ctx["memories"].as_array().unwrap().is_empty(), "{ctx}");
    server.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The OpenAI-compatible extractor and embedder in the same pipeline, against a local fake that
/// speaks OpenAI's wire format: one chat call and one embeddings call per batch, tokens recorded
/// on the batch, and a failing model leaves the messages unsynced until it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_extractor_through_the_pipeline() {
    use recall_shared::adapters::openai::{OpenAiEmbedder, OpenAiExtractor, OpenAiSettings};
    use recall_shared::adapters::qdrant_edge::QdrantEdgeStore;
    use recall_shared::adapters::sqlite::SqliteMessageStore;
    use recall_shared::pipeline::{Deps, EngineConfig, RetryPolicy};
    use recall_shared::ports::{Embedder, MemoryStore};
    use recall_shared::testkit::fake_openai::{FakeOpenAi, Route, Scripted};

    let fake = FakeOpenAi::start().await;
    let mut settings = OpenAiSettings::new("sk-test-not-a-real-key");
    settings.base_url = Some(fake.base_url());
    let dir = tempfile::tempdir().unwrap();
    let embedder = OpenAiEmbedder::new(&settings).unwrap();
    let memories = QdrantEdgeStore::open(&dir.path().join("qdrant")).unwrap();
    memories
        .ensure_collection(embedder.dimension())
        .await
        .unwrap();
    let deps = Deps {
        messages: Arc::new(SqliteMessageStore::open(&dir.path().join("m.sqlite3")).unwrap()),
        memories: Arc::new(memories),
        extractor: Arc::new(OpenAiExtractor::new(&settings).unwrap()),
        embedder: Arc::new(embedder),
        metrics: Arc::new(Metrics::new()),
    };
    let engine = EngineConfig {
        retry: RetryPolicy {
            retries: 1,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..EngineConfig::default()
    };
    let workers = BatchArgs {
        batch_threshold: 25,
        batch_max_messages: 50,
        batch_idle_seconds: 1800,
        batch_idle_min_messages: 5,
        batch_concurrency: 1,
        batch_lease_seconds: 60,
        batch_retries: 1,
        sweep_seconds: 1,
        grace_seconds: 10,
        maintenance_seconds: 600,
    }
    .workers();
    let node = Node::standalone(deps, engine, workers, Some(KEY.into()));
    let metrics = node.state().metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(node.run(listener, shutdown.clone()));
    let server = Server {
        base,
        shutdown,
        task,
        metrics,
    };

    // The model is down for the first attempts: the batch fails, nothing is lost.
    fake.push_n(
        Route::ChatCompletions,
        2,
        Scripted::error(503, "overloaded", None),
    );
    let messages = conversation("u_d3f8a2__arjun");
    for m in &messages[..30] {
        post_message(&server.base, m).await;
    }
    let pair = "u_d3f8a2/arjun";
    let stats = settle(&server, pair).await;
    let synced = stats["messages"]["synced"].as_u64().unwrap();
    assert!(synced >= 25, "{stats}");
    assert_eq!(synced + stats["messages"]["unsynced"].as_u64().unwrap(), 30);
    assert_eq!(
        server.metrics.messages_synced_total.get(),
        synced,
        "each flipped once"
    );
    assert_eq!(stats["extractor"], "openai:gpt-4o-mini");
    assert!(stats["batches"]["done"].as_u64().unwrap() >= 1);
    assert!(
        stats["tokens"]["prompt"].as_u64().unwrap() > 0,
        "usage recorded: {stats}"
    );
    let batches = stats["batches"]["done"].as_u64().unwrap() as usize;
    assert_eq!(
        fake.calls(Route::ChatCompletions),
        2 + batches,
        "two refused, then one per batch"
    );
    let chat = fake.requests_to(Route::ChatCompletions);
    let last = &chat.last().unwrap().body;
    assert_eq!(last["model"], "gpt-4o-mini");
    assert_eq!(last["response_format"]["type"], "json_schema");
    let found = get(
        &server.base,
        &format!("/memory/search/{pair}?query=training&limit=5"),
    )
    .await;
    assert!(found["count"].as_u64().unwrap() > 0, "{found}");
    assert!(
        server
            .metrics
            .retries_total
            .with_label_values(&["extractor"])
            .get()
            >= 1,
        "the 503s were retried by the one retry policy"
    );
    server.stop().await;
}
