//! Firestore operations per message processed, on the Firestore emulator.
//!
//! An "app" client writes messages (`sync: false`) round-robin over the pairs and publishes one
//! event per message, as the Cloud Function does; the worker (counter, batch runner, Firestore
//! message store with its own client) processes them. Only the worker's document reads and
//! writes are counted (`recall_firestore_documents_total`), the app's own writes are not.
//!
//! `eval "$(scripts/services.sh)"; cargo bench --bench firestore_ops`
//! (`BENCH_PAIRS`, default 10, and `BENCH_MESSAGES` per pair, default 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use recall_shared::adapters::firestore::FirestoreMessageStore;
use recall_shared::adapters::memory_bus::in_process_bus;
use recall_shared::config::FirestoreArgs;
use recall_shared::domain::{Message, MessageId, Pair, Role};
use recall_shared::metrics::Metrics;
use recall_shared::pipeline::{Deps, Engine, EngineConfig};
use recall_shared::ports::{EventBus, MessageEvent, MessageStore};
use recall_shared::runtime::{WorkerConfig, run_workers};
use recall_shared::testkit::doubles::{EchoExtractor, HashEmbedder, InMemoryMemoryStore};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("FIRESTORE_EMULATOR_HOST").is_none() {
        anyhow::bail!("needs the Firestore emulator: eval \"$(scripts/services.sh)\" first");
    }
    recall_shared::config::init_logging(&recall_shared::config::LogArgs::default());
    let (pairs_n, per_pair) = (env("BENCH_PAIRS", 10), env("BENCH_MESSAGES", 100));
    let project = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let args = FirestoreArgs {
        firestore_project_id: Some(project),
        ..FirestoreArgs::default()
    };
    let app = FirestoreMessageStore::connect(&args, &Metrics::new()).await?;
    let metrics = Arc::new(Metrics::new());
    let worker = Arc::new(FirestoreMessageStore::connect(&args, &metrics).await?);
    let deps = Deps {
        messages: worker.clone(),
        memories: Arc::new(InMemoryMemoryStore::default()),
        extractor: Arc::new(EchoExtractor::default()),
        embedder: Arc::new(HashEmbedder::new(64)),
        metrics: metrics.clone(),
    };
    let engine = Engine::new(deps, EngineConfig::default());
    let (bus, rx) = in_process_bus(4096);
    let bus = Arc::new(bus);
    let shutdown = CancellationToken::new();
    let config = WorkerConfig {
        concurrency: 8,
        sweep_interval: Duration::from_secs(3600),
        ..WorkerConfig::default()
    };
    let runner = tokio::spawn(run_workers(
        engine,
        bus.clone(),
        rx.events,
        rx.jobs,
        config,
        shutdown.clone(),
    ));

    let pairs: Vec<Pair> = (0..pairs_n)
        .map(|i| Pair::parse(&format!("bench_user_{i}"), "meher").expect("valid ids"))
        .collect();
    let started = Instant::now();
    for i in 0..per_pair {
        for pair in &pairs {
            let m = Message {
                id: MessageId::parse(format!("m{i:06}"))?,
                pair: pair.clone(),
                role: if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                channel: "whatsapp".into(),
                text: format!("message {i} of a long chat"),
                created_at: Utc::now(),
                sync: false,
            };
            app.append(&m).await?;
            bus.publish_event(&MessageEvent {
                user_id: pair.user_id.clone(),
                character_name: pair.character_name.clone(),
                message_id: Some(m.id.clone()),
            })
            .await?;
        }
    }
    // Done when every pair is below the threshold (the tail waits for more messages) and no
    // batch is running. The app's client polls, so the worker's counter is untouched.
    loop {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("timed out after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if metrics.batches_in_flight.get() > 0 {
            continue;
        }
        let mut below = true;
        for pair in &pairs {
            below &= app.count_unsynced(pair).await? < 25;
        }
        if below && metrics.batches_in_flight.get() == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    runner.await?;
    let synced = metrics.messages_synced_total.get();
    let (reads, writes) = worker.documents();
    let batches = metrics
        .batches_total
        .with_label_values(&["succeeded"])
        .get();
    println!(
        "pairs: {pairs_n}, messages per pair: {per_pair}, synced: {synced}, batches: {batches}"
    );
    println!("worker document reads: {reads}, writes: {writes}");
    println!(
        "Firestore operations per message processed: {:.2} ({:.2} reads + {:.2} writes)",
        (reads + writes) as f64 / synced as f64,
        reads as f64 / synced as f64,
        writes as f64 / synced as f64
    );
    println!(
        "original design (count query on every save + list + flip per batch of 25): \
         >= {:.2} per message",
        1.0 + 2.0
    );
    println!("wall time: {:.1} s", elapsed.as_secs_f64());
    Ok(())
}
