//! The fault suite: real `recall-worker` and `recall-publisher` processes on the real RabbitMQ,
//! the Firestore emulator and embedded Qdrant (Qdrant Edge), with a scripted OpenAI-compatible
//! server standing in for the LLM. Faults are real: SIGKILL at a batch stage (the process parks
//! at a fail point, see `recall_shared::failpoints`, and this test kills it), TCP connections cut
//! by a loopback proxy in front of RabbitMQ or Firestore, a broker restart, LLM errors and
//! timeouts, SIGTERM under load.
//!
//! Every case ends with the same invariant check ([`Stack::check`]): every accepted message is
//! `sync: true`, flipped by exactly one completed batch record that lists it; the memory store
//! holds exactly the memories the completed batches recorded (no orphan from an abandoned
//! attempt, no duplicate id, no duplicate text within a batch); nothing is parked.
//!
//! Needs `FIRESTORE_EMULATOR_HOST` (scripts/test.sh starts the emulator); skipped with a
//! message otherwise, failed when `RECALL_REQUIRE_FIRESTORE` is set. One case at a time: one of
//! them restarts the broker.

#![cfg(all(feature = "firestore", feature = "failpoints", feature = "embedded"))]

use std::time::{Duration, Instant};

use recall_shared::testkit::broker::rabbitmqctl;
use recall_shared::testkit::fake_openai::{Route, Scripted};
use recall_tests::cluster::{BATCH, KEY, Stack, emulator};
use recall_tests::wait_for;
use tokio::sync::Mutex;

/// One case at a time: they share the broker and one restarts it.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// One row of the README's fault table, printed for the record.
fn report(case: &str, injected: &str, events: usize, lost: usize, duplicated: usize) {
    println!("| {case} | {injected} | {events} | {lost} | {duplicated} |");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_each_batch_stage_then_restart() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    let publisher = s.publisher().await;
    let stages = [
        "batch-after-claim",
        "batch-after-extract",
        "batch-after-upsert",
        "batch-after-flip",
    ];
    let pairs = s.pairs(stages.len());
    for (n, (stage, pair)) in stages.iter().zip(&pairs).enumerate() {
        let calls_before = s.chat_calls();
        let doomed = s
            .worker(&format!("w{n}-doomed"), &format!("{stage}=return"))
            .await;
        s.load(&publisher.base, std::slice::from_ref(pair), BATCH)
            .await;
        doomed
            .wait_log("failpoint reached", Duration::from_secs(60))
            .await;
        let llm_at_kill = s.chat_calls() - calls_before;
        doomed.kill().await;

        let heir = s.worker(&format!("w{n}-heir"), "").await;
        s.wait_synced(std::slice::from_ref(pair), Duration::from_secs(60))
            .await;
        let (status, _) = heir.terminate(Duration::from_secs(15)).await;
        assert!(status.success(), "{stage}: the heir exits 0 on SIGTERM");

        let (batches, _) = s.check(std::slice::from_ref(pair), BATCH).await;
        assert_eq!(batches, 1, "{stage}: one batch");
        let llm = s.chat_calls() - calls_before;
        let expected_at_kill = usize::from(*stage != "batch-after-claim");
        assert_eq!(
            llm_at_kill, expected_at_kill,
            "{stage}: LLM calls before the kill"
        );
        assert_eq!(
            llm, 1,
            "{stage}: one LLM call in all (a saved extraction is reused)"
        );
        report(
            &format!("SIGKILL at {stage}"),
            "worker killed, restarted",
            BATCH,
            0,
            0,
        );
    }
    let (status, _) = publisher.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_drops_and_a_broker_restart_during_load() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    let publisher = s.publisher().await;
    let worker = s.worker("w-net", "").await;
    let pairs = s.pairs(6);
    let per_pair = 2 * BATCH;

    let connections_before = s.amqp.accepted();
    let load = s.load(&publisher.base, &pairs, per_pair);
    let faults = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.amqp.reset_connections();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.amqp.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.amqp.restore();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rabbitmqctl(&["stop_app"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    };
    let (refused, ()) = tokio::join!(load, faults);
    s.wait_synced(&pairs, Duration::from_secs(120)).await;
    assert!(
        s.amqp.accepted() >= connections_before + 4,
        "publisher and worker reconnected after each fault ({} -> {})",
        connections_before,
        s.amqp.accepted()
    );
    let (status, _) = worker.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "the worker exits 0 on SIGTERM");
    let (status, _) = publisher.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "the publisher exits 0 on SIGTERM");

    let (batches, _) = s.check(&pairs, per_pair).await;
    assert_eq!(batches, pairs.len() * 2);
    assert_eq!(s.chat_calls(), batches, "one LLM call per batch");
    eprintln!("503s answered during the outages (retried by the caller): {refused}");
    report(
        "RabbitMQ: connections reset, 3 s outage, broker restart",
        "proxy reset + cut, rabbitmqctl stop_app/start_app",
        pairs.len() * per_pair,
        0,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn firestore_unreachable_for_20_seconds_during_load() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    let publisher = s.publisher().await;
    let worker = s.worker("w-fs", "").await;
    let pairs = s.pairs(6);
    let per_pair = 2 * BATCH;

    let load = s.load(&publisher.base, &pairs, per_pair);
    let outage = async {
        // Once the first batch has started, the worker loses Firestore for 20 s.
        wait_for("a batch to start", Duration::from_secs(60), async || {
            s.chat_calls() > 0
        })
        .await;
        s.firestore.cut();
        tokio::time::sleep(Duration::from_secs(20)).await;
        s.firestore.restore();
    };
    tokio::join!(load, outage);
    s.wait_synced(&pairs, Duration::from_secs(120)).await;
    let (status, _) = worker.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
    publisher.terminate(Duration::from_secs(15)).await;

    let (batches, _) = s.check(&pairs, per_pair).await;
    assert_eq!(batches, pairs.len() * 2);
    assert!(
        s.chat_calls() >= batches,
        "every batch extracted at least once"
    );
    report(
        "Firestore unreachable 20 s",
        "proxy cut in front of the emulator",
        pairs.len() * per_pair,
        0,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_write_failures_are_retried() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    let publisher = s.publisher().await;
    // The first eight memory-store writes fail; one batch at a time, each trying three times
    // before its job goes back to the queue: two batches fail whole and are retried from the
    // queue (reusing their saved extraction), the third succeeds on its last try.
    let worker = s
        .worker_with(
            "w-vs",
            "memory-store-upsert=8*return",
            &[("BATCH_CONCURRENCY", "1")],
        )
        .await;
    let pairs = s.pairs(4);
    s.load(&publisher.base, &pairs, BATCH).await;
    s.wait_synced(&pairs, Duration::from_secs(120)).await;
    let metrics = reqwest::get(format!("{}/metrics", worker.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed_upserts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("recall_batch_failures_total") && l.contains("stage=\"upsert\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        failed_upserts >= 2.0,
        "batches failed at upsert, then succeeded"
    );
    let (status, _) = worker.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
    publisher.terminate(Duration::from_secs(15)).await;
    let (batches, _) = s.check(&pairs, BATCH).await;
    assert_eq!(batches, pairs.len());
    assert_eq!(
        s.chat_calls(),
        batches,
        "a retried batch reuses its saved extraction"
    );
    report(
        "Memory store write fails (8 attempts)",
        "fail point `memory-store-upsert`",
        pairs.len() * BATCH,
        0,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llm_faults_back_off_and_the_api_keeps_answering() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    let chat = Route::ChatCompletions;
    s.llm.push_n(
        chat,
        3,
        Scripted::error(429, "Rate limit reached", Some("rate_limit_exceeded"))
            .with_header("retry-after", "1"),
    );
    s.llm
        .push_n(chat, 3, Scripted::error(502, "bad gateway", None));
    s.llm.push(
        chat,
        Scripted::default_reply().with_delay(Duration::from_secs(5)),
    );
    s.llm
        .push_n(chat, 2, Scripted::chat_content("{\"memories\": [{\"oops\""));
    let publisher = s.publisher().await;
    let worker = s.worker("w-llm", "").await;
    let pairs = s.pairs(3);

    // The chat-facing API answers while the LLM misbehaves.
    let load = s.load(&publisher.base, &pairs, BATCH);
    let probe = async {
        let mut answered = 0;
        let url = format!(
            "{}/memory/search/{}/{}?query=dog",
            worker.base, pairs[0].user_id, pairs[0].character_name
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = s
                .http
                .get(&url)
                .bearer_auth(KEY)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .expect("the API answers during LLM faults");
            assert_eq!(r.status(), 200, "search answers during LLM faults");
            answered += 1;
            if s.unsynced(&pairs).await == 0 && answered > 5 {
                return answered;
            }
            assert!(Instant::now() < deadline, "batches did not complete");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (_, answered) = tokio::join!(load, probe);
    s.wait_synced(&pairs, Duration::from_secs(60)).await;

    // Backoff observed: the first three calls (one per batch) got a 429 with `Retry-After: 1`,
    // so the fourth, a retry, came at least a second after the first.
    let calls = s.llm.requests_to(chat);
    assert!(
        calls.len() >= pairs.len() + 9,
        "every scripted fault was met"
    );
    let gap = calls[3].at.duration_since(calls[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After honoured: {gap:?}"
    );
    let (status, _) = worker.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
    publisher.terminate(Duration::from_secs(15)).await;
    let (batches, _) = s.check(&pairs, BATCH).await;
    assert_eq!(batches, pairs.len());
    eprintln!("search answered {answered} times during the LLM faults");
    report(
        "LLM: 3x429 (Retry-After), 3x502, a timeout, 2 malformed",
        "scripted OpenAI-compatible server",
        pairs.len() * BATCH,
        0,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_within_grace() {
    let Some(emulator) = emulator() else { return };
    let _serial = SERIAL.lock().await;
    let s = Stack::new(emulator).await;
    // A slow LLM: batches are in flight when SIGTERM comes.
    s.llm.push_n(
        Route::ChatCompletions,
        4,
        Scripted::default_reply().with_delay(Duration::from_millis(1500)),
    );
    let publisher = s.publisher().await;
    let worker = s.worker("w-term", "").await;
    let pairs = s.pairs(4);
    s.load(&publisher.base, &pairs, BATCH).await;
    wait_for("a batch to start", Duration::from_secs(60), async || {
        s.chat_calls() > 0
    })
    .await;
    let (status, took) = worker.terminate(Duration::from_secs(12)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    assert!(
        took < Duration::from_secs(11),
        "drained within the 10 s grace: {took:?}"
    );

    // What it did not finish, the next replica does; nothing twice.
    let next = s.worker("w-next", "").await;
    s.wait_synced(&pairs, Duration::from_secs(60)).await;
    next.terminate(Duration::from_secs(15)).await;
    publisher.terminate(Duration::from_secs(15)).await;
    let (batches, _) = s.check(&pairs, BATCH).await;
    assert_eq!(batches, pairs.len());
    assert_eq!(s.chat_calls(), batches, "no batch extracted twice");
    report(
        "SIGTERM under load",
        "SIGTERM with 4 batches in flight",
        pairs.len() * BATCH,
        0,
        0,
    );
}
