//! Standalone mode: the HTTP API and the worker loops in one process, sharing one engine.
//!
//! [`Services`] is assembled from any set of adapters (tests inject their own); with the
//! `embedded` feature, [`Services::embedded`] opens the default ones in a data folder.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::adapters::memory_bus::{BusReceivers, in_process_bus};
use crate::http::{AppState, check_exposure, router};
use crate::pipeline::{Deps, Engine, EngineConfig};
use crate::runtime::{WorkerConfig, run_workers};

/// Capacity of each in-process channel.
const BUS_CAPACITY: usize = 10_000;

/// A ready-to-run standalone process.
pub struct Services {
    engine: Engine,
    state: AppState,
    receivers: BusReceivers,
    workers: WorkerConfig,
}

impl Services {
    /// Wires the engine, the in-process bus and the API around the given adapters.
    pub fn new(
        deps: Deps,
        engine: EngineConfig,
        workers: WorkerConfig,
        api_key: Option<String>,
    ) -> Self {
        let (bus, receivers) = in_process_bus(BUS_CAPACITY);
        let state = AppState {
            messages: deps.messages.clone(),
            memories: deps.memories.clone(),
            embedder: deps.embedder.clone(),
            bus: Arc::new(bus),
            metrics: deps.metrics.clone(),
            rules: engine.rules,
            extractor_name: deps.extractor.name(),
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
        };
        Self {
            engine: Engine::new(deps, engine),
            state,
            receivers,
            workers,
        }
    }

    /// The API state (for tests that drive the router directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Opens the default embedded adapters in `args.data_dir`: SQLite, Qdrant Edge, MiniLM, and
    /// the offline extractor.
    #[cfg(feature = "embedded")]
    pub async fn embedded(args: &crate::config::StandaloneArgs) -> anyhow::Result<Self> {
        use anyhow::Context;

        use crate::adapters::{
            minilm::MiniLmEmbedder, offline_extractor::OfflineExtractor,
            qdrant_edge::QdrantEdgeStore, sqlite::SqliteMessageStore,
        };
        use crate::ports::{Embedder, MemoryStore};

        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        let messages = SqliteMessageStore::open(&args.data_dir.join("messages.sqlite3"))
            .context("opening the SQLite message store")?;
        let memories = QdrantEdgeStore::open(&args.data_dir.join("qdrant"))
            .context("opening the embedded Qdrant Edge store")?;
        let model_dir = args.model_dir.clone();
        let embedder = tokio::task::spawn_blocking(move || MiniLmEmbedder::load(&model_dir))
            .await?
            .context("loading all-MiniLM-L6-v2 (run scripts/fetch-model.sh)")?;
        memories
            .ensure_collection(embedder.dimension())
            .await
            .context("preparing the memory collection")?;
        if std::env::var_os("OPENAI_API_KEY").is_some()
            || std::env::var_os("OPENAI_BASE_URL").is_some()
        {
            tracing::warn!(
                "OPENAI_API_KEY/OPENAI_BASE_URL is set, but this build has no OpenAI extractor yet; \
                 using the offline extractor"
            );
        }
        tracing::info!(
            extractor = "offline",
            "memory extraction runs in OFFLINE mode: deterministic rules, no LLM"
        );
        let deps = Deps {
            messages: Arc::new(messages),
            memories: Arc::new(memories),
            extractor: Arc::new(OfflineExtractor::default()),
            embedder: Arc::new(embedder),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        let engine = args.batch.engine(None).map_err(anyhow::Error::msg)?;
        Ok(Self::new(
            deps,
            engine,
            args.batch.workers(),
            args.api_key.clone(),
        ))
    }

    /// Serves the API on `listener` and runs the workers until `shutdown` is cancelled; then
    /// stops accepting requests, lets in-flight batches finish within the grace period, returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        check_exposure(addr, self.state.api_key.as_deref()).map_err(anyhow::Error::msg)?;
        let workers = tokio::spawn(run_workers(
            self.engine.clone(),
            self.state.bus.clone(),
            self.receivers.events,
            self.receivers.jobs,
            self.workers,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "recall standalone listening");
        let app = router(self.state);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        workers.await?;
        served?;
        Ok(())
    }
}

/// Resolves on the first SIGTERM or Ctrl-C; cancels `token` then, and exits the process at once
/// on a second signal.
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
