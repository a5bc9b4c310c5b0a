//! One observed pipeline run, shared by the metrics and the logs tests: a standalone node on
//! SQLite and test doubles, fed over HTTP on loopback, whose first batch attempt fails (the model
//! rejects it) and whose retry succeeds.

use std::time::{Duration, Instant};

use recall_shared::PortError;
use recall_shared::batching::BatchRules;
use recall_shared::node::Node;
use recall_shared::pipeline::{EngineConfig, RetryPolicy};
use recall_shared::runtime::WorkerConfig;
use recall_shared::testkit::doubles::EchoExtractor;
use serde_json::{Value, json};

use crate::server::{Served, double_deps};

/// The API key of the node.
pub const KEY: &str = "observability-key-Zq81";
/// The user of the run.
pub const USER: &str = "u_obs_secret_4711";
/// The character of the run.
pub const CHARACTER: &str = "charzeta";
/// Every message text carries this word; it must never reach a log line or a metric.
pub const TEXT_MARK: &str = "Quokkafjord";
/// Messages sent: exactly one batch at the default threshold.
pub const MESSAGES: usize = 25;

/// What a run leaves to check.
pub struct Run {
    /// The `/metrics` text after the run.
    pub scrape: String,
    /// The readiness answer after the run: status code and body.
    pub ready: (u16, Value),
}

/// Starts a standalone node, sends 25 messages (one twice), two bad webhook calls, waits for the
/// batch (failed once, then retried by the sweep), scrapes `/metrics`, stops the node.
pub async fn run_pipeline() -> Run {
    let extractor = EchoExtractor::default();
    extractor.faults.fail_next(
        1,
        PortError::rejected("extractor", "401: check OPENAI_API_KEY"),
    );
    let deps = double_deps(extractor.clone());
    let engine = EngineConfig {
        rules: BatchRules::default(),
        retry: RetryPolicy {
            retries: 2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..EngineConfig::default()
    };
    let workers = WorkerConfig {
        sweep_interval: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let node = Node::standalone(deps, engine, workers, Some(KEY.into()));
    let server = Served::start(node).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();

    let append = |i: usize| {
        let body = json!({
            "message_id": format!("msg_{i:03}"),
            "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
            "text": format!("{TEXT_MARK} number {i}: my sister lives in Reykjavik"),
            "channel": "whatsapp",
        });
        http.post(format!("{base}/memory/messages/{USER}/{CHARACTER}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let gauges = async |want: [String; 2]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if want.iter().all(|w| scrape.lines().any(|l| l == w)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {want:?} in:\n{scrape}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for i in 0..MESSAGES - 1 {
        assert_eq!(append(i).await.unwrap().status(), 201, "message {i}");
    }
    // One short of the threshold: the sweep counts the backlog, nothing is due yet.
    gauges([
        format!("recall_unsynced_messages {}", MESSAGES - 1),
        "recall_due_pairs 0".into(),
    ])
    .await;
    assert_eq!(append(MESSAGES - 1).await.unwrap().status(), 201);
    assert_eq!(append(3).await.unwrap().status(), 200, "the same id again");
    let webhook = format!("{base}/firebase/message-created");
    let event = json!({"user_id": USER, "character_name": CHARACTER});
    let no_key = http.post(&webhook).json(&event).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let bad = http
        .post(&webhook)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // The first attempt fails at extraction; the sweep (every 100 ms) retries the batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats: Value = http
            .get(format!("{base}/memory/stats/{USER}/{CHARACTER}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["messages"]["unsynced"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never completed: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(extractor.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    gauges([
        "recall_unsynced_messages 0".into(),
        "recall_due_pairs 0".into(),
    ])
    .await;

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    let ready = (ready.status().as_u16(), ready.json().await.unwrap());
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "metrics need no key");
    let scrape = metrics.text().await.unwrap();
    server.stop().await;
    Run { scrape, ready }
}
