//! The worker loops: count message events per pair, run batch jobs with bounded concurrency, and
//! sweep the message store for pairs no event announced. Stops on a cancellation token.
//!
//! The counter is a cache in front of the message store: it is seeded from the store's count the
//! first time a pair is seen, de-duplicates by message id, and only *triggers* batch jobs. The
//! engine re-reads the store before it decides anything, so an over-count costs one read and an
//! under-count is caught by the sweep.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{MessageId, Pair};
use crate::pipeline::Engine;
use crate::ports::{Delivery, EventBus, MessageEvent};

/// How many recent message ids per pair the counter remembers for de-duplication.
const DEDUP_WINDOW: usize = 1024;

/// Settings of the worker loops.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Batches run at once by this process.
    pub concurrency: usize,
    /// How often the sweep looks for unsynced pairs.
    pub sweep_interval: Duration,
    /// How long in-flight batches may take to finish after shutdown is requested.
    pub grace: Duration,
    /// How often the memory store gets its housekeeping (index building, vacuum).
    pub maintenance_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            sweep_interval: Duration::from_secs(60),
            grace: Duration::from_secs(25),
            maintenance_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
struct PairCount {
    /// `None` until seeded from the store, and again after each batch trigger.
    count: Option<u64>,
    recent: VecDeque<MessageId>,
    recent_set: HashSet<MessageId>,
}

impl PairCount {
    /// Remembers `id`; false if it was already seen.
    fn remember(&mut self, id: &MessageId) -> bool {
        if !self.recent_set.insert(id.clone()) {
            return false;
        }
        self.recent.push_back(id.clone());
        if self.recent.len() > DEDUP_WINDOW
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        true
    }
}

/// Per-pair counters of unsynced messages, fed by message events.
#[derive(Debug, Default)]
pub struct Counter {
    pairs: HashMap<Pair, PairCount>,
}

/// What the counter decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The message id was seen before.
    Duplicate,
    /// Counted; the pair is below the threshold.
    Below(u64),
    /// Counted; the pair reached the threshold.
    Due(u64),
}

impl Counter {
    /// Whether the pair's count is known (if not, seed it with [`Counter::seed`] first).
    pub fn knows(&self, pair: &Pair) -> bool {
        self.pairs.get(pair).is_some_and(|p| p.count.is_some())
    }

    /// Starts the pair's counter at the store's unsynced count, which includes `event`'s message.
    pub fn seed(&mut self, event: &MessageEvent, store_count: u64, threshold: u64) -> Counted {
        let entry = self.pairs.entry(event.pair()).or_default();
        entry.count = Some(store_count);
        if let Some(id) = &event.message_id
            && !entry.remember(id)
        {
            return Counted::Duplicate;
        }
        Self::verdict(store_count, threshold)
    }

    /// Counts one event of a known pair.
    pub fn count(&mut self, event: &MessageEvent, threshold: u64) -> Counted {
        let entry = self.pairs.entry(event.pair()).or_default();
        if let Some(id) = &event.message_id
            && !entry.remember(id)
        {
            return Counted::Duplicate;
        }
        let count = entry.count.unwrap_or(0) + 1;
        entry.count = Some(count);
        Self::verdict(count, threshold)
    }

    /// Forgets the pair's count (after a batch trigger), keeping its recent ids for
    /// de-duplication; the next event re-seeds it from the store.
    pub fn reset(&mut self, pair: &Pair) {
        if let Some(p) = self.pairs.get_mut(pair) {
            p.count = None;
        }
    }

    fn verdict(count: u64, threshold: u64) -> Counted {
        if count >= threshold {
            Counted::Due(count)
        } else {
            Counted::Below(count)
        }
    }
}

/// Runs the counter loop, the batch runners and the sweep until `shutdown` is cancelled and the
/// in-flight batches finished (or the grace period ran out).
pub async fn run_workers(
    engine: Engine,
    bus: Arc<dyn EventBus>,
    mut events: mpsc::Receiver<Delivery<MessageEvent>>,
    mut jobs: mpsc::Receiver<Delivery<Pair>>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let threshold = engine.config().rules.threshold as u64;
    let maintenance_interval = config.maintenance_interval.max(Duration::from_secs(1));
    let counter = Arc::new(Mutex::new(Counter::default()));
    let tracker = TaskTracker::new();

    // Counting: cheap, one task.
    let count_loop = {
        let (engine, bus, counter, shutdown) = (
            engine.clone(),
            bus.clone(),
            counter.clone(),
            shutdown.clone(),
        );
        async move {
            loop {
                let Delivery {
                    payload: event,
                    settle,
                    ..
                } = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = events.recv() => match e { Some(e) => e, None => break },
                };
                let pair = event.pair();
                let m = &engine.deps().metrics;
                let known = counter.lock().expect("counter lock").knows(&pair);
                let verdict = if known {
                    counter
                        .lock()
                        .expect("counter lock")
                        .count(&event, threshold)
                } else {
                    // While the store is unavailable the event waits here (and the rest in the
                    // queue): an outage must not burn the delivery limit and park events.
                    let seeding = (|| engine.deps().messages.count_unsynced(&pair))
                        .retry(
                            ExponentialBuilder::default()
                                .with_min_delay(Duration::from_millis(100))
                                .with_max_delay(Duration::from_secs(5))
                                .with_jitter()
                                .without_max_times(),
                        )
                        .when(|e| e.is_retryable())
                        .notify(|e, wait| {
                            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot seed counter; waiting for the message store");
                        });
                    let seeded = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = seeding => r,
                    };
                    match seeded {
                        Ok(n) => counter
                            .lock()
                            .expect("counter lock")
                            .seed(&event, n, threshold),
                        Err(e) => {
                            tracing::warn!(pair = %crate::telemetry::pair_label(&pair), error = %e, "cannot seed counter");
                            if let Err(e) = settle.retry(&format!("seeding the counter: {e}")).await
                            {
                                tracing::warn!(error = %e, "cannot hand the event back");
                            }
                            continue;
                        }
                    }
                };
                match verdict {
                    Counted::Duplicate => m.events_total.with_label_values(&["duplicate"]).inc(),
                    Counted::Below(_) => m.events_total.with_label_values(&["counted"]).inc(),
                    Counted::Due(_) => {
                        m.events_total.with_label_values(&["counted"]).inc();
                        counter.lock().expect("counter lock").reset(&pair);
                        if let Err(e) = bus.publish_batch_job(&pair).await {
                            tracing::warn!(error = %e, "cannot publish batch job; the sweep will retry");
                        }
                    }
                }
                // Counted (or known duplicate): never hold events while a batch fills.
                if let Err(e) = settle.ack().await {
                    tracing::warn!(error = %e, "event ack failed; it will be redelivered and de-duplicated");
                }
            }
        }
    };

    // Batches: expensive, bounded per process; one runner per pair at a time.
    let batch_loop = {
        let (engine, counter, shutdown, tracker) = (
            engine.clone(),
            counter.clone(),
            shutdown.clone(),
            tracker.clone(),
        );
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        // Pairs with a runner, and whether another job arrived for them meanwhile.
        let running: Arc<Mutex<HashMap<Pair, bool>>> = Arc::default();
        async move {
            loop {
                let Delivery {
                    payload: pair,
                    settle,
                    ..
                } = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    j = jobs.recv() => match j { Some(p) => p, None => break },
                };
                let already = running
                    .lock()
                    .expect("running lock")
                    .get_mut(&pair)
                    .map(|again| *again = true) // its runner goes round once more
                    .is_some();
                if already {
                    if let Err(e) = settle.ack().await {
                        tracing::warn!(error = %e, "batch job ack failed");
                    }
                    continue;
                }
                running
                    .lock()
                    .expect("running lock")
                    .insert(pair.clone(), false);
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                };
                let (engine, counter, running) = (engine.clone(), counter.clone(), running.clone());
                tracker.spawn(async move {
                    let mut failure = None;
                    loop {
                        if let Err(e) = engine.run_until_idle(&pair).await {
                            // The engine logged the failure with its batch span.
                            tracing::debug!(error = %e, "batch job failed; it will be retried");
                            failure = Some(e.to_string());
                        }
                        counter.lock().expect("counter lock").reset(&pair);
                        let mut r = running.lock().expect("running lock");
                        if r.get(&pair) == Some(&true) {
                            r.insert(pair.clone(), false);
                        } else {
                            r.remove(&pair);
                            break;
                        }
                    }
                    // Settle only after the effect is durable (or the failure recorded).
                    let settled = match failure {
                        None => settle.ack().await,
                        Some(reason) => settle.retry(&reason).await,
                    };
                    if let Err(e) = settled {
                        tracing::warn!(error = %e, "batch job settle failed; it will be redelivered");
                    }
                    drop(permit);
                });
            }
        }
    };

    // Sweep: finds pairs that are due but were never announced (crash, lost event, failure), and
    // measures the backlog while at it.
    let sweep_loop = {
        let (engine, bus, shutdown) = (engine.clone(), bus.clone(), shutdown.clone());
        async move {
            let min = engine.config().rules.idle_min_messages as u64;
            let mut tick = tokio::time::interval(config.sweep_interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match engine.deps().messages.unsynced_pairs(min).await {
                    Ok(pairs) => {
                        let m = &engine.deps().metrics;
                        let threshold = engine.config().rules.threshold as u64;
                        m.unsynced_messages
                            .set(pairs.iter().map(|(_, n)| *n as i64).sum());
                        m.due_pairs
                            .set(pairs.iter().filter(|(_, n)| *n >= threshold).count() as i64);
                        for (pair, _) in pairs {
                            if bus.publish_batch_job(&pair).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sweep could not list unsynced pairs"),
                }
            }
        }
    };

    // Housekeeping of the memory store, off the hot path.
    let maintenance_loop = {
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(maintenance_interval);
            tick.tick().await; // not at start-up
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(e) = engine.deps().memories.maintain().await {
                    tracing::warn!(error = %e, "memory store housekeeping failed");
                }
            }
        }
    };

    tokio::join!(count_loop, batch_loop, sweep_loop, maintenance_loop);
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.grace,
            "in-flight batches did not finish within the grace period; their leases will expire"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CharacterName, UserId};

    fn ev(user: &str, id: Option<&str>) -> MessageEvent {
        MessageEvent {
            user_id: UserId::parse(user).unwrap(),
            character_name: CharacterName::parse("meher").unwrap(),
            message_id: id.map(|i| MessageId::parse(i).unwrap()),
        }
    }

    #[test]
    fn counter_seeds_dedups_and_triggers() {
        let mut c = Counter::default();
        let first = ev("u1", Some("m1"));
        assert!(!c.knows(&first.pair()));
        assert_eq!(c.seed(&first, 23, 25), Counted::Below(23));
        assert_eq!(
            c.count(&first, 25),
            Counted::Duplicate,
            "the seeding event is remembered"
        );
        assert_eq!(c.count(&ev("u1", Some("m2")), 25), Counted::Below(24));
        assert_eq!(c.count(&ev("u1", Some("m2")), 25), Counted::Duplicate);
        assert_eq!(c.count(&ev("u1", Some("m3")), 25), Counted::Due(25));
        assert_eq!(
            c.count(&ev("u2", None), 25),
            Counted::Below(1),
            "pairs are separate"
        );
        assert_eq!(
            c.count(&ev("u2", None), 25),
            Counted::Below(2),
            "no id: no de-duplication"
        );
        c.reset(&first.pair());
        assert_eq!(
            c.count(&ev("u1", Some("m3")), 25),
            Counted::Duplicate,
            "ids outlive a reset"
        );
        assert_eq!(c.count(&ev("u1", Some("m4")), 25), Counted::Below(1));
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut c = Counter::default();
        c.seed(&ev("u1", None), 0, 25);
        for i in 0..(DEDUP_WINDOW + 10) {
            c.count(&ev("u1", Some(&format!("m{i}"))), usize::MAX as u64);
        }
        let p = &c.pairs[&ev("u1", None).pair()];
        assert_eq!(p.recent.len(), DEDUP_WINDOW);
        assert_eq!(p.recent_set.len(), DEDUP_WINDOW);
    }
}
