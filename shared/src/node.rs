//! One recall process: the HTTP API, and optionally the worker loops, around one set of adapters.
//!
//! - `recall-worker standalone`: API + workers + in-process bus ([`Node::standalone`]).
//! - `recall-publisher`: API publishing to RabbitMQ ([`Node::new`] with the AMQP bus).
//! - `recall-worker`: workers consuming RabbitMQ, API for health, metrics and reads
//!   ([`Node::new`] + [`Node::with_workers`]).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::adapters::memory_bus::in_process_bus;
use crate::adapters::rabbitmq::{AmqpBus, AmqpConsumers, AmqpSettings};
use crate::domain::Pair;
use crate::error::{PortError, PortResult};
use crate::http::{AppState, RateLimit, RateLimiter, ReadinessCheck, check_exposure, router};
use crate::instrumented::{instrument, instrument_bus};
use crate::pipeline::{Deps, Engine, EngineConfig};
use crate::ports::{Delivery, EventBus, MessageEvent};
use crate::runtime::{WorkerConfig, run_workers};

/// Capacity of each in-process channel.
const BUS_CAPACITY: usize = 10_000;

/// The worker half of a node.
struct Workers {
    config: WorkerConfig,
    events: mpsc::Receiver<Delivery<MessageEvent>>,
    jobs: mpsc::Receiver<Delivery<Pair>>,
}

/// A ready-to-run process.
pub struct Node {
    engine: Engine,
    state: AppState,
    workers: Option<Workers>,
}

impl Node {
    /// The API around the given adapters, publishing to `bus`; no workers. Every port and the
    /// bus are wrapped in their metric decorators ([`crate::instrumented`]) here, once for the
    /// API and the workers alike: pass them unwrapped.
    pub fn new(
        deps: Deps,
        bus: Arc<dyn EventBus>,
        engine: EngineConfig,
        api_key: Option<String>,
    ) -> Self {
        let deps = instrument(deps);
        let bus = instrument_bus(bus, deps.metrics.clone());
        let state = AppState {
            messages: deps.messages.clone(),
            memories: deps.memories.clone(),
            embedder: deps.embedder.clone(),
            bus,
            metrics: deps.metrics.clone(),
            rules: engine.rules,
            extractor_name: deps.extractor.name(),
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            webhook_secret: None,
            checks: Vec::new(),
            rate_limiter: None,
        };
        Self {
            engine: Engine::new(deps, engine),
            state,
            workers: None,
        }
    }

    /// Adds the worker loops, fed by `events` and `jobs`.
    pub fn with_workers(
        mut self,
        config: WorkerConfig,
        events: mpsc::Receiver<Delivery<MessageEvent>>,
        jobs: mpsc::Receiver<Delivery<Pair>>,
    ) -> Self {
        self.workers = Some(Workers {
            config,
            events,
            jobs,
        });
        self
    }

    /// Adds a readiness check (reported under its name by `/readyz`; 503 while it fails).
    pub fn with_readiness_check(mut self, check: ReadinessCheck) -> Self {
        self.state.checks.push(check);
        self
    }

    /// Requires `secret` (bearer or HMAC signature) on the Cloud Function webhook.
    pub fn with_webhook_secret(mut self, secret: Option<String>) -> Self {
        self.state.webhook_secret = secret.filter(|s| !s.is_empty()).map(Arc::from);
        self
    }

    /// Limits the routes that embed a query to `limit` per API key (per client address without
    /// a key); `None` lifts the limit.
    pub fn with_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        match limit {
            Some(l) => tracing::info!(
                replenish_one_per = ?l.replenish_one_per,
                burst = l.burst.get(),
                "rate limit per API key on search, context and enhance-prompt"
            ),
            None => tracing::info!("no rate limit on search, context and enhance-prompt"),
        }
        self.state.rate_limiter = limit.map(|l| Arc::new(RateLimiter::new(l)));
        self
    }

    /// API and workers in one process, joined by the in-process bus.
    pub fn standalone(
        deps: Deps,
        engine: EngineConfig,
        workers: WorkerConfig,
        api_key: Option<String>,
    ) -> Self {
        let (bus, rx) = in_process_bus(BUS_CAPACITY);
        Self::new(deps, Arc::new(bus), engine, api_key).with_workers(workers, rx.events, rx.jobs)
    }

    /// A RabbitMQ worker: consumes the shard and batch queues, publishes batch jobs; returns the
    /// node and the consumers to await after the node stopped.
    pub async fn amqp_worker(
        deps: Deps,
        engine: EngineConfig,
        workers: WorkerConfig,
        settings: AmqpSettings,
        api_key: Option<String>,
        shutdown: CancellationToken,
    ) -> PortResult<(Self, AmqpConsumers)> {
        let bus = AmqpBus::connect(settings.clone()).await?;
        let (consumers, events, jobs) = AmqpConsumers::start(settings, shutdown).await?;
        let connected = &deps.metrics.amqp_connected;
        bus.connection()
            .report_to(connected.with_label_values(&["publisher"]));
        let consumer = consumers.connection();
        consumer.report_to(connected.with_label_values(&["consumer"]));
        let node = Self::new(deps, Arc::new(bus), engine, api_key)
            .with_workers(workers, events, jobs)
            .with_readiness_check(ReadinessCheck {
                name: "consumers",
                probe: Arc::new(move || {
                    if consumer.is_up() {
                        Ok(())
                    } else {
                        Err(PortError::unavailable(
                            "rabbitmq",
                            "the consumers are not connected to the broker",
                        ))
                    }
                }),
            });
        Ok((node, consumers))
    }

    /// A RabbitMQ publisher: declares the topology now if the broker answers, else on the first
    /// publish (the API starts, and answers 503, while the broker is down).
    pub async fn amqp_publisher(
        deps: Deps,
        engine: EngineConfig,
        settings: AmqpSettings,
        api_key: Option<String>,
    ) -> PortResult<Self> {
        let bus = match AmqpBus::connect(settings.clone()).await {
            Ok(bus) => bus,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "broker unreachable at start-up; will connect on demand");
                AmqpBus::lazy(settings)?
            }
            Err(e) => return Err(e),
        };
        bus.connection().report_to(
            deps.metrics
                .amqp_connected
                .with_label_values(&["publisher"]),
        );
        Ok(Self::new(deps, Arc::new(bus), engine, api_key))
    }

    /// The API state (for tests that drive the router directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves the API on `listener` (and runs the workers) until `shutdown` is cancelled; then
    /// stops accepting requests, lets in-flight batches finish within the grace period, returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        check_exposure(addr, self.state.api_key.as_deref()).map_err(anyhow::Error::msg)?;
        let workers = self.workers.map(|w| {
            tokio::spawn(run_workers(
                self.engine.clone(),
                self.state.bus.clone(),
                w.events,
                w.jobs,
                w.config,
                shutdown.clone(),
            ))
        });
        tracing::info!(%addr, workers = workers.is_some(), "recall listening");
        // Connection info: without the API key, rate limits are per client address.
        let app = router(self.state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        if let Some(w) = workers {
            w.await?;
        }
        served?;
        Ok(())
    }
}

/// Resolves on the first SIGTERM or Ctrl-C and cancels `token`; a second signal exits at once.
pub async fn cancel_on_signal(token: CancellationToken) {
    let wait = || async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    wait().await;
    tracing::info!("shutdown requested; draining (signal again to exit at once)");
    token.cancel();
    tokio::spawn(async move {
        wait().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
