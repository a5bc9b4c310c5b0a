//! Load generator: real `recall-publisher` and `recall-worker` processes (release builds) on
//! RabbitMQ and the Firestore emulator, loopback only, bounded in messages and time.
//!
//! Users x characters post messages through the publisher (`POST /memory/messages/...`, which
//! stores them in Firestore and publishes their events) at a target rate; one worker replica
//! extracts with a fake OpenAI-compatible LLM of fixed latency. Two phases, each on its own pairs:
//!
//! 1. **saturation**: messages offered faster than the replica can extract, so a backlog builds;
//!    batch throughput while it drains, against the ideal `BATCH_CONCURRENCY / LLM latency`;
//! 2. **latency**: messages offered at half the replica's ideal capacity; the time from the 25th
//!    message of a batch (its newest) to `sync: true`, minus the fake LLM's own latency.
//!
//! It prints the sustained accepted events/s of each phase, batches/s and the ratio, p50/p99
//! latency, and the resident memory of both processes at idle and at peak.
//!
//! `scripts/load.sh` builds the binaries, starts the services and runs it. Settings:
//! `LOAD_USERS` (20), `LOAD_CHARACTERS` (2), `LOAD_MESSAGES` per pair (50), `LOAD_RATE` of the
//! saturation phase in messages/s (400), `LOAD_LLM_MS` (1500), `LOAD_CONCURRENCY` (8).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use recall_shared::domain::Pair;
use recall_shared::testkit::fake_openai::{Route, Scripted};
use recall_tests::cluster::{BATCH, Proc, Stack};
use tokio::sync::Semaphore;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident and peak resident memory of a process, in MiB.
fn rss(p: &Proc) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Posts `per_pair` messages to every pair at `rate` messages/s in all (at most 64 requests in
/// flight); returns the accepted events/s. Conversations are staggered like real chats: each
/// pair sends at the same pace, the pairs start one after another over one conversation's
/// length, so pairs come due spread over time rather than all at once.
async fn offer(stack: &Arc<Stack>, base: &str, pairs: &[Pair], per_pair: usize, rate: u64) -> f64 {
    let n = pairs.len();
    // Message i of pair p is due at p * per_pair / n + i (in units of one pair's period).
    let mut order: Vec<(f64, usize, usize)> = (0..n)
        .flat_map(|p| {
            (0..per_pair).map(move |i| (p as f64 * per_pair as f64 / n as f64 + i as f64, p, i))
        })
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let slots = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (_, p, i) in order {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await.expect("open");
        let (stack, base, pair) = (stack.clone(), base.to_owned(), pairs[p].clone());
        tasks.push(tokio::spawn(async move {
            stack.post(&base, &pair, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("post");
    }
    (per_pair * pairs.len()) as f64 / started.elapsed().as_secs_f64()
}

/// Completion times of the pairs' batches, and each batch's latency from its newest message.
async fn batches(stack: &Stack, pairs: &[Pair]) -> (Vec<DateTime<Utc>>, Vec<Duration>) {
    let (mut done, mut latency) = (Vec::new(), Vec::new());
    for pair in pairs {
        let audit = stack.store.audit(pair).await.expect("audit");
        for b in &audit.batches {
            let Some(completed) = b.completed_at else {
                continue;
            };
            let newest = audit
                .messages
                .iter()
                .filter(|m| b.message_ids.contains(&m.id))
                .filter_map(|m| m.created_at)
                .max()
                .expect("a batch has messages");
            done.push(completed);
            latency.push((completed - newest).to_std().unwrap_or_default());
        }
    }
    done.sort();
    latency.sort();
    (done, latency)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let Some(emulator) = recall_tests::cluster::emulator() else {
        anyhow::bail!("needs the Firestore emulator: eval \"$(scripts/services.sh)\" first");
    };
    let (users, characters) = (env("LOAD_USERS", 20), env("LOAD_CHARACTERS", 2));
    let per_pair = env("LOAD_MESSAGES", 2 * BATCH as u64) as usize;
    let rate = env("LOAD_RATE", 400);
    let llm = Duration::from_millis(env("LOAD_LLM_MS", 1500));
    let concurrency = env("LOAD_CONCURRENCY", 8);
    anyhow::ensure!(
        per_pair.is_multiple_of(BATCH),
        "LOAD_MESSAGES must be a multiple of {BATCH}"
    );

    let stack = Arc::new(Stack::new(emulator).await);
    stack.llm.set_default(
        Route::ChatCompletions,
        Scripted::default_reply().with_delay(llm),
    );
    let publisher = stack.publisher().await;
    let concurrency_env = concurrency.to_string();
    let worker = stack
        .worker_with(
            "load-worker",
            "",
            &[
                ("BATCH_CONCURRENCY", concurrency_env.as_str()),
                ("BATCH_LEASE_SECONDS", "120"),
                ("OPENAI_TIMEOUT_SECONDS", "30"),
                ("RUST_LOG", "warn"),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p_idle, _) = rss(&publisher);
    let (w_idle, _) = rss(&worker);

    let n_pairs = (users * characters) as usize;
    let all = stack.pairs(2 * n_pairs);
    let (saturate, steady) = all.split_at(n_pairs);
    // Characters of a user share its id; `Stack::pairs` gives one character per user, which is
    // the same load on the pipeline (pairs are what batches and shards key on).
    let ideal = concurrency as f64 / llm.as_secs_f64();
    let limit = Duration::from_secs(600);

    // Phase 1: saturation.
    let events_1 = offer(&stack, &publisher.base, saturate, per_pair, rate).await;
    stack.wait_synced(saturate, limit).await;
    let (done, _) = batches(&stack, saturate).await;
    let span = (*done.last().unwrap() - done[0]).to_std()?.as_secs_f64();
    let throughput = (done.len() - 1) as f64 / span;

    // Phase 2: half the ideal capacity.
    let steady_rate = ((ideal * BATCH as f64) / 2.0).max(1.0) as u64;
    let events_2 = offer(&stack, &publisher.base, steady, per_pair, steady_rate).await;
    stack.wait_synced(steady, limit).await;
    let (_, latency) = batches(&stack, steady).await;
    let beyond_llm: Vec<Duration> = latency.iter().map(|l| l.saturating_sub(llm)).collect();

    let (p_now, p_peak) = rss(&publisher);
    let (w_now, w_peak) = rss(&worker);
    let (status, _) = worker.terminate(Duration::from_secs(60)).await;
    anyhow::ensure!(status.success(), "worker exit {status:?}");
    publisher.terminate(Duration::from_secs(30)).await;

    println!(
        "load: {n_pairs} pairs x {per_pair} messages per phase, LLM {} ms, BATCH_CONCURRENCY {concurrency}, one worker replica",
        llm.as_millis()
    );
    println!(
        "saturation: offered {rate} msg/s, accepted {events_1:.0} events/s; {} batches at {throughput:.2} batches/s vs ideal {ideal:.2} (ratio {:.2})",
        done.len(),
        throughput / ideal
    );
    println!(
        "latency: offered {steady_rate} msg/s, accepted {events_2:.0} events/s; 25th message -> sync:true minus LLM: p50 {} ms, p99 {} ms ({} batches; with the LLM: p50 {} ms)",
        percentile(&beyond_llm, 0.5).as_millis(),
        percentile(&beyond_llm, 0.99).as_millis(),
        latency.len(),
        percentile(&latency, 0.5).as_millis()
    );
    println!(
        "rss: publisher idle {p_idle} MiB, peak {p_peak} MiB (now {p_now}); worker idle {w_idle} MiB, peak {w_peak} MiB (now {w_now})"
    );
    Ok(())
}
