//! Transport benchmark, in one run on the local broker (127.0.0.1:5672):
//!
//! 1. the broker ceiling: lapin publishing with confirms into a quorum queue while a consumer
//!    acks every message (the best any pipeline on this broker can do);
//! 2. the pipeline: HTTP `POST /firebase/message-created` on a publisher node -> RabbitMQ ->
//!    a worker node's counter (batches disabled, so only the event path is measured);
//!
//! then prints both rates, their ratio, and the peak RSS of this process.
//!
//! `cargo bench --bench transport` (`BENCH_EVENTS` sets the count, default 20 000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use recall_shared::adapters::rabbitmq::AmqpSettings;
use recall_shared::adapters::sqlite::SqliteMessageStore;
use recall_shared::batching::BatchRules;
use recall_shared::metrics::Metrics;
use recall_shared::node::Node;
use recall_shared::pipeline::{Deps, EngineConfig};
use recall_shared::runtime::WorkerConfig;
use recall_shared::testkit::doubles::{EchoExtractor, HashEmbedder, InMemoryMemoryStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const CONCURRENCY: usize = 64;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ceiling = broker_ceiling(n).await?;
    let pipeline = pipeline(n).await?;
    println!("events: {n}");
    println!("broker ceiling (publish+confirm, consume+ack, quorum queue): {ceiling:.0} msg/s");
    println!("pipeline (HTTP publisher -> RabbitMQ -> worker counter):     {pipeline:.0} events/s");
    println!("ratio pipeline / ceiling: {:.2}", pipeline / ceiling);
    println!(
        "peak RSS of this process (publisher + worker + load generator): {} MiB",
        peak_rss_kib() / 1024
    );
    Ok(())
}

async fn broker_ceiling(n: usize) -> anyhow::Result<f64> {
    let queue = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let setup = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let consumer_ch = conn.create_channel().await?;
    consumer_ch
        .basic_qos(256, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = json!({"user_id": "bench_user", "character_name": "meher", "message_id": "m00001"})
        .to_string();
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let d = consumer.next().await.expect("consumer open")?;
            d.ack(BasicAckOptions::default()).await?;
            got += 1;
        }
        anyhow::Ok(())
    });
    // A window of outstanding confirms, as a real publisher with concurrent callers has.
    let mut pending = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= CONCURRENCY {
            pending.next().await.expect("pending")?;
        }
    }
    while let Some(c) = pending.next().await {
        c?;
    }
    consume.await??;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(rate)
}

async fn pipeline(n: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let settings = AmqpSettings {
        prefix: prefix.clone(),
        ..AmqpSettings::default()
    };
    let messages = Arc::new(SqliteMessageStore::open(&dir.path().join("m.sqlite3"))?);
    let deps = || Deps {
        messages: messages.clone(),
        memories: Arc::new(InMemoryMemoryStore::default()),
        extractor: Arc::new(EchoExtractor::default()),
        embedder: Arc::new(HashEmbedder::new(8)),
        metrics: Arc::new(Metrics::new()),
    };
    // Batches never come due: only the event path is measured.
    let engine = EngineConfig {
        rules: BatchRules {
            threshold: usize::MAX / 2,
            max_messages: usize::MAX / 2,
            ..BatchRules::default()
        },
        ..EngineConfig::default()
    };
    let shutdown = CancellationToken::new();
    let workers = WorkerConfig {
        sweep_interval: Duration::from_secs(3600),
        ..WorkerConfig::default()
    };
    let (worker, consumers) = Node::amqp_worker(
        deps(),
        engine.clone(),
        workers,
        settings.clone(),
        None,
        shutdown.clone(),
    )
    .await?;
    let counted = worker.state().metrics.clone();
    let publisher = Node::amqp_publisher(deps(), engine, settings, None).await?;
    let wl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let pl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", pl.local_addr()?);
    let w = tokio::spawn(worker.run(wl, shutdown.clone()));
    let p = tokio::spawn(publisher.run(pl, shutdown.clone()));

    let client = reqwest::Client::new();
    let started = Instant::now();
    let accepted: usize = futures::stream::iter(0..n)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let body = json!({"user_id": format!("u{}", i % 200), "character_name": "meher", "message_id": format!("m{i}")});
                let r = client.post(format!("{base}/firebase/message-created")).json(&body).send().await;
                usize::from(r.is_ok_and(|r| r.status() == 202))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |a, b| async move { a + b })
        .await;
    anyhow::ensure!(accepted == n, "only {accepted} of {n} events accepted");
    let seen = || {
        counted.events_total.with_label_values(&["counted"]).get()
            + counted.events_total.with_label_values(&["duplicate"]).get()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen() < n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} events counted",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    w.await??;
    p.await??;
    consumers.stopped().await;
    for q in std::iter::once(format!("{prefix}.batches"))
        .chain((0..settings_shards()).map(|i| format!("{prefix}.events.{i}")))
        .chain(
            [
                "parking",
                "batches.retry.0",
                "batches.retry.1",
                "batches.retry.2",
            ]
            .map(|s| format!("{prefix}.{s}")),
        )
    {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_queue", &q])
            .output();
    }
    Ok(rate)
}

fn settings_shards() -> u16 {
    AmqpSettings::default().shards
}

/// Peak resident set size of this process, from /proc.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
