//! Settings from flags and environment (clap); `--help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::batching::BatchRules;
use crate::pipeline::{EngineConfig, RetryPolicy};
use crate::runtime::WorkerConfig;

/// Batching and worker-pool settings, shared by every worker mode.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Unsynced messages that make a pair due for a batch.
    #[arg(long, env = "BATCH_THRESHOLD", default_value_t = 25)]
    pub batch_threshold: usize,
    /// Largest batch, in messages.
    #[arg(long, env = "BATCH_MAX_MESSAGES", default_value_t = 50)]
    pub batch_max_messages: usize,
    /// Seconds of silence after which a pair below the threshold gets a partial batch.
    #[arg(long, env = "BATCH_IDLE_SECONDS", default_value_t = 1800)]
    pub batch_idle_seconds: u64,
    /// Fewest messages a partial (idle) batch may have.
    #[arg(long, env = "BATCH_IDLE_MIN_MESSAGES", default_value_t = 5)]
    pub batch_idle_min_messages: usize,
    /// Batches run at once by this process.
    #[arg(long, env = "BATCH_CONCURRENCY", default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Seconds a batch claim is held before another worker may take it over.
    #[arg(long, env = "BATCH_LEASE_SECONDS", default_value_t = 300)]
    pub batch_lease_seconds: u64,
    /// Retries of a failing dependency call within one batch attempt.
    #[arg(long, env = "BATCH_RETRIES", default_value_t = 4)]
    pub batch_retries: usize,
    /// Seconds between sweeps for unsynced pairs that no event announced.
    #[arg(long, env = "RECALL_SWEEP_SECONDS", default_value_t = 60)]
    pub sweep_seconds: u64,
    /// Seconds in-flight batches may take to finish on shutdown.
    #[arg(long, env = "RECALL_GRACE_SECONDS", default_value_t = 25)]
    pub grace_seconds: u64,
    /// Seconds between housekeeping runs of the memory store (index building, vacuum).
    #[arg(long, env = "RECALL_MAINTENANCE_SECONDS", default_value_t = 600)]
    pub maintenance_seconds: u64,
}

impl BatchArgs {
    /// The batching rules, validated.
    pub fn rules(&self) -> Result<BatchRules, String> {
        let rules = BatchRules {
            threshold: self.batch_threshold,
            max_messages: self.batch_max_messages,
            idle_after: Duration::from_secs(self.batch_idle_seconds),
            idle_min_messages: self.batch_idle_min_messages.min(self.batch_threshold),
        };
        rules.validate()?;
        Ok(rules)
    }

    /// The engine settings.
    pub fn engine(&self, worker_id: Option<String>) -> Result<EngineConfig, String> {
        let mut cfg = EngineConfig {
            rules: self.rules()?,
            lease: Duration::from_secs(self.batch_lease_seconds.max(1)),
            retry: RetryPolicy {
                retries: self.batch_retries,
                ..RetryPolicy::default()
            },
            ..EngineConfig::default()
        };
        if let Some(id) = worker_id {
            cfg.worker_id = id;
        }
        Ok(cfg)
    }

    /// The worker-loop settings.
    pub fn workers(&self) -> WorkerConfig {
        WorkerConfig {
            concurrency: self.batch_concurrency.max(1),
            sweep_interval: Duration::from_secs(self.sweep_seconds.max(1)),
            grace: Duration::from_secs(self.grace_seconds),
            maintenance_interval: Duration::from_secs(self.maintenance_seconds.max(1)),
        }
    }
}

/// Which message store to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageStoreKind {
    /// SQLite file (`RECALL_SQLITE_PATH`).
    Sqlite,
    /// Google Firestore.
    Firestore,
}

/// Which memory store to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryStoreKind {
    /// Qdrant Edge in `RECALL_DATA_DIR` (one process per folder).
    Embedded,
    /// A Qdrant server or cluster (`QDRANT_URL`).
    Qdrant,
}

/// Which embedder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 in process (384 dimensions; `RECALL_MODEL_DIR`).
    Local,
    /// The OpenAI-compatible embeddings endpoint (`OPENAI_EMBEDDING_MODEL`, 1536 by default).
    Openai,
}

/// Where messages and memories live, and the embedding model.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Message store: `sqlite` or `firestore`.
    #[arg(
        long,
        env = "RECALL_MESSAGE_STORE",
        value_enum,
        default_value = "sqlite"
    )]
    pub message_store: MessageStoreKind,
    /// SQLite file of the message store (default: `messages.sqlite3` in the data folder).
    #[arg(long, env = "RECALL_SQLITE_PATH")]
    pub sqlite_path: Option<PathBuf>,
    /// Memory store: `embedded` (Qdrant Edge) or `qdrant` (server).
    #[arg(
        long,
        env = "RECALL_MEMORY_STORE",
        value_enum,
        default_value = "embedded"
    )]
    pub memory_store: MemoryStoreKind,
    /// Folder of the SQLite message store and the embedded vector store.
    #[arg(long, env = "RECALL_DATA_DIR", default_value = "./recall-data")]
    pub data_dir: PathBuf,
    /// Folder of the all-MiniLM-L6-v2 files, which scripts/fetch-model.sh fills and checks
    /// (default: `models/all-MiniLM-L6-v2` in the data folder).
    #[arg(long, env = "RECALL_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Embedder: `local` (MiniLM) or `openai`; a collection keeps the dimension it was made with.
    #[arg(long, env = "RECALL_EMBEDDER", value_enum, default_value = "local")]
    pub embedder: EmbedderKind,
    /// Expected vector size of the memory collection; when set, start-up fails unless the
    /// embedder produces exactly this many dimensions.
    #[arg(long, env = "QDRANT_VECTOR_SIZE")]
    pub vector_size: Option<usize>,
    /// Firestore settings (with `RECALL_MESSAGE_STORE=firestore`).
    #[command(flatten)]
    pub firestore: FirestoreArgs,
    /// The Qdrant server, when `RECALL_MEMORY_STORE=qdrant`.
    #[command(flatten)]
    pub qdrant: QdrantArgs,
}

/// Where the Firestore message store lives. Credentials come from the environment: the
/// emulator when `FIRESTORE_EMULATOR_HOST` is set, else application default credentials
/// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's, or the metadata server).
#[derive(Debug, Clone, clap::Args)]
pub struct FirestoreArgs {
    /// Google Cloud project of the Firestore database.
    #[arg(long, env = "FIRESTORE_PROJECT_ID")]
    pub firestore_project_id: Option<String>,
    /// Database id within the project.
    #[arg(long, env = "FIRESTORE_DATABASE_ID", default_value = "(default)")]
    pub firestore_database_id: String,
    /// Path template of the messages collection; `{user_id}` and `{character_name}` are whole
    /// document ids. Batch records live beside it, under the same parent document.
    #[arg(
        long,
        env = "RECALL_FIRESTORE_MESSAGES_PATH",
        default_value = DEFAULT_MESSAGES_PATH
    )]
    pub firestore_messages_path: String,
    /// Per-request timeout, in seconds.
    #[arg(long, env = "RECALL_FIRESTORE_TIMEOUT_SECONDS", default_value_t = 30)]
    pub firestore_timeout_seconds: u64,
}

/// The default Firestore layout of the companion app's messages.
pub const DEFAULT_MESSAGES_PATH: &str = "users/{user_id}/characters/{character_name}/messages";

impl Default for FirestoreArgs {
    fn default() -> Self {
        Self {
            firestore_project_id: None,
            firestore_database_id: "(default)".into(),
            firestore_messages_path: DEFAULT_MESSAGES_PATH.into(),
            firestore_timeout_seconds: 30,
        }
    }
}

/// The Qdrant server memory store (`RECALL_MEMORY_STORE=qdrant`).
#[derive(Debug, Clone, clap::Args)]
pub struct QdrantArgs {
    /// gRPC URL of the Qdrant server; `https://` uses TLS. No port, or the REST port 6333, means
    /// the gRPC port 6334.
    #[arg(long, env = "QDRANT_URL", default_value = "http://localhost:6334")]
    pub qdrant_url: String,
    /// API key of the Qdrant server (sent as the `api-key` header).
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// Collection holding every memory (created at start-up when missing, never recreated).
    #[arg(long, env = "QDRANT_COLLECTION_NAME", default_value = "chat_memory")]
    pub qdrant_collection_name: String,
    /// Seconds allowed to connect to Qdrant, and for each request.
    #[arg(long, env = "QDRANT_CONNECTION_TIMEOUT", default_value_t = 30)]
    pub qdrant_connection_timeout: u64,
}

impl Default for QdrantArgs {
    fn default() -> Self {
        Self {
            qdrant_url: "http://localhost:6334".into(),
            qdrant_api_key: None,
            qdrant_collection_name: "chat_memory".into(),
            qdrant_connection_timeout: 30,
        }
    }
}

impl QdrantArgs {
    /// The Qdrant server store; it connects on first use.
    pub fn open(&self) -> anyhow::Result<std::sync::Arc<dyn crate::ports::MemoryStore>> {
        #[cfg(feature = "qdrant")]
        {
            use crate::adapters::qdrant::{QdrantSettings, QdrantStore};
            let settings = QdrantSettings::new(
                &self.qdrant_url,
                self.qdrant_api_key.clone(),
                &self.qdrant_collection_name,
                self.qdrant_connection_timeout,
            )
            .map_err(anyhow::Error::msg)?;
            tracing::info!(
                url = %settings.url,
                collection = %settings.collection,
                "memory store: Qdrant server"
            );
            Ok(std::sync::Arc::new(QdrantStore::new(settings)?))
        }
        #[cfg(not(feature = "qdrant"))]
        anyhow::bail!(
            "RECALL_MEMORY_STORE=qdrant needs a build with the `qdrant` feature \
             (cargo build --features qdrant)"
        )
    }
}

impl StoreArgs {
    /// Defaults for a data folder (used by tests and tools).
    pub fn in_dir(data_dir: impl Into<PathBuf>, model_dir: impl Into<PathBuf>) -> Self {
        Self {
            message_store: MessageStoreKind::Sqlite,
            sqlite_path: None,
            memory_store: MemoryStoreKind::Embedded,
            data_dir: data_dir.into(),
            model_dir: Some(model_dir.into()),
            embedder: EmbedderKind::Local,
            vector_size: None,
            firestore: FirestoreArgs::default(),
            qdrant: QdrantArgs::default(),
        }
    }

    /// Where the local model is read from.
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models").join("all-MiniLM-L6-v2"))
    }

    /// Opens the configured memory store, without preparing its collection (which
    /// [`StoreArgs::open`] does with the embedder's dimension).
    #[cfg(feature = "embedded")]
    pub fn open_memories(&self) -> anyhow::Result<std::sync::Arc<dyn crate::ports::MemoryStore>> {
        use anyhow::Context;
        match self.memory_store {
            MemoryStoreKind::Embedded => Ok(std::sync::Arc::new(
                crate::adapters::qdrant_edge::QdrantEdgeStore::open(&self.data_dir.join("qdrant"))
                    .context("opening the embedded Qdrant Edge store")?,
            )),
            MemoryStoreKind::Qdrant => self.qdrant.open(),
        }
    }

    /// Opens the configured adapters: message store, memory store, embedder, and the extractor
    /// (OpenAI-compatible when `OPENAI_API_KEY` or `OPENAI_BASE_URL` is set, else offline).
    #[cfg(feature = "embedded")]
    pub async fn open(&self) -> anyhow::Result<crate::pipeline::Deps> {
        use std::sync::Arc;

        use anyhow::Context;

        use crate::adapters::{
            minilm::MiniLmEmbedder,
            offline_extractor::OfflineExtractor,
            openai::{OpenAiEmbedder, OpenAiExtractor, OpenAiSettings},
            sqlite::SqliteMessageStore,
        };
        use crate::ports::{Embedder, Extractor};

        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let messages: Arc<dyn crate::ports::MessageStore> = match self.message_store {
            MessageStoreKind::Sqlite => {
                let path = self
                    .sqlite_path
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("messages.sqlite3"));
                Arc::new(SqliteMessageStore::open(&path).with_context(|| {
                    format!("opening the SQLite message store {}", path.display())
                })?)
            }
            #[cfg(feature = "firestore")]
            MessageStoreKind::Firestore => Arc::new(
                crate::adapters::firestore::FirestoreMessageStore::connect(
                    &self.firestore,
                    &metrics,
                )
                .await
                .context("connecting to Firestore")?,
            ),
            #[cfg(not(feature = "firestore"))]
            MessageStoreKind::Firestore => anyhow::bail!(
                "RECALL_MESSAGE_STORE=firestore needs a build with the `firestore` feature \
                 (cargo build --release --features firestore)"
            ),
        };
        let memories = self.open_memories()?;
        let openai = OpenAiSettings::from_env().map_err(anyhow::Error::msg)?;
        let embedder: Arc<dyn Embedder> = match self.embedder {
            EmbedderKind::Local => {
                let model_dir = self.model_dir();
                Arc::new(
                    tokio::task::spawn_blocking(move || MiniLmEmbedder::load(&model_dir))
                        .await?
                        .context("loading all-MiniLM-L6-v2 (run scripts/fetch-model.sh)")?,
                )
            }
            EmbedderKind::Openai => {
                let settings = openai.as_ref().context(
                    "RECALL_EMBEDDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)",
                )?;
                Arc::new(OpenAiEmbedder::new(settings).context("configuring OpenAI embeddings")?)
            }
        };
        if let Some(expected) = self.vector_size
            && expected != embedder.dimension()
        {
            anyhow::bail!(
                "QDRANT_VECTOR_SIZE is {expected} but the embedder {} produces {} dimensions: \
                 set QDRANT_VECTOR_SIZE={} or choose another embedder",
                embedder.name(),
                embedder.dimension(),
                embedder.dimension()
            );
        }
        memories
            .ensure_collection(embedder.dimension())
            .await
            .with_context(|| {
                format!(
                    "preparing the memory collection for {} ({} dimensions)",
                    embedder.name(),
                    embedder.dimension()
                )
            })?;
        let extractor: Arc<dyn Extractor> = match &openai {
            Some(settings) => {
                Arc::new(OpenAiExtractor::new(settings).context("configuring OpenAI extraction")?)
            }
            None => Arc::new(OfflineExtractor::new()),
        };
        if openai.is_some() {
            tracing::info!(extractor = %extractor.name(), "memory extraction uses the LLM");
        } else {
            tracing::info!(
                extractor = "offline",
                "memory extraction runs in OFFLINE mode: deterministic rules, no LLM \
                 (set OPENAI_API_KEY or OPENAI_BASE_URL to use a model)"
            );
        }
        Ok(crate::pipeline::Deps {
            messages,
            memories,
            extractor,
            embedder,
            metrics,
        })
    }
}

/// The rate limit per API key of the routes that embed a query (search, context, enhance-prompt);
/// without the API key, per client address. Counted per process.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RateLimitArgs {
    /// Requests per second each API key may make to search, context and enhance-prompt together
    /// (0: no limit). Over it the answer is 429 with `Retry-After`.
    #[arg(long, env = "RECALL_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// Requests a key may make at once above that rate (the bucket's size, at least 1).
    #[arg(
        long,
        env = "RECALL_RATE_LIMIT_BURST",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub rate_limit_burst: u32,
}

impl RateLimitArgs {
    /// The limit, or `None` when it is off.
    pub fn limit(&self) -> Option<crate::http::RateLimit> {
        crate::http::RateLimit::per_second(self.rate_limit_per_second, self.rate_limit_burst)
    }
}

impl Default for RateLimitArgs {
    /// 50 requests per second, bursts of 100.
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
        }
    }
}

/// `recall-worker standalone`: the API and the workers in one process, on embedded stores.
#[derive(Debug, Clone, clap::Args)]
pub struct StandaloneArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "RECALL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token required by every endpoint but health, metrics and /openapi.json.
    #[arg(long, env = "RECALL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Rate limit per API key.
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    /// Stores and model.
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Batching and worker settings.
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// RabbitMQ settings, shared by the publisher and the workers (they must agree).
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// Broker URL (`amqp://` or `amqps://`; vhost percent-encoded, `%2f` is `/`).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    /// Name prefix of every exchange and queue.
    #[arg(long, env = "RECALL_AMQP_PREFIX", default_value = "recall")]
    pub amqp_prefix: String,
    /// Event shard queues; a pair always maps to the same one.
    #[arg(long, env = "RECALL_SHARDS", default_value_t = 8)]
    pub shards: u16,
    /// Prefetch of each event shard consumer.
    #[arg(long, env = "RECALL_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Milliseconds a publish may wait for the broker's confirm before it fails (503).
    #[arg(long, env = "RECALL_CONFIRM_TIMEOUT_MS", default_value_t = 5000)]
    pub confirm_timeout_ms: u64,
    /// `x-delivery-limit` of the quorum queues: deliveries returned more often are parked.
    #[arg(long, env = "RECALL_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Delays of the batch retry tiers, in seconds, comma-separated; then the job is parked.
    #[arg(
        long,
        env = "RECALL_RETRY_DELAYS",
        default_value = "5,30,300",
        value_delimiter = ','
    )]
    pub retry_delays: Vec<u64>,
}

impl AmqpArgs {
    /// The adapter settings; `batch_prefetch` is the worker's batch concurrency.
    pub fn settings(
        &self,
        batch_prefetch: usize,
        grace: Duration,
    ) -> crate::adapters::rabbitmq::AmqpSettings {
        crate::adapters::rabbitmq::AmqpSettings {
            url: self.amqp_url.clone(),
            prefix: self.amqp_prefix.clone(),
            shards: self.shards,
            prefetch: self.prefetch,
            batch_prefetch: batch_prefetch.clamp(1, usize::from(u16::MAX)) as u16,
            confirm_timeout: Duration::from_millis(self.confirm_timeout_ms.max(1)),
            delivery_limit: self.delivery_limit,
            retry_delays: self
                .retry_delays
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            shutdown_grace: grace,
            client_name: std::env::var("HOSTNAME").unwrap_or_default(),
        }
    }
}

/// `recall-worker`: consumes RabbitMQ, runs batches; serves the API (health, metrics, reads).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Address of the worker's HTTP API (health, metrics, reads).
    #[arg(long, env = "RECALL_WORKER_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Bearer token required by every endpoint but health, metrics and /openapi.json.
    #[arg(long, env = "RECALL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Rate limit per API key.
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    /// This worker's id on batch claims (default: a random one).
    #[arg(long, env = "RECALL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Stores and model.
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Batching and worker settings.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// RabbitMQ.
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

/// `recall-publisher`: the HTTP API, publishing events to RabbitMQ.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "recall-publisher",
    version,
    about = "recall HTTP API in front of RabbitMQ"
)]
pub struct PublisherArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "RECALL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token required by every endpoint but health, metrics and /openapi.json.
    #[arg(long, env = "RECALL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Rate limit per API key.
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    /// Secret of the Cloud Function webhook: `Authorization: Bearer <secret>` or
    /// `X-Recall-Signature: sha256=<HMAC-SHA256 of the body>`.
    #[arg(long, env = "RECALL_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Stores and model.
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Batching settings (the threshold reported by check-batch).
    #[command(flatten)]
    pub batch: BatchArgs,
    /// RabbitMQ.
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Logs.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Log output settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `text` (default) or `json`.
    #[arg(long, env = "RECALL_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    /// Write raw user ids and character names in logs instead of pair hashes (`true`/`false`).
    #[arg(
        long,
        env = "RECALL_LOG_IDS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub log_ids: bool,
}

impl Default for LogArgs {
    /// Text lines, pair hashes.
    fn default() -> Self {
        Self {
            log_format: "text".into(),
            log_ids: false,
        }
    }
}

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), text or JSON lines on
/// stderr (see [`crate::telemetry`]), pair hashes unless `RECALL_LOG_IDS` is true.
pub fn init_logging(args: &LogArgs) {
    use std::io::IsTerminal;

    use crate::telemetry::{LogFormat, env_filter, set_log_ids, subscriber};
    set_log_ids(args.log_ids);
    let subscriber = subscriber(
        LogFormat::parse(&args.log_format),
        env_filter(),
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!("a tracing subscriber was already installed; keeping it");
    }
    if args.log_ids {
        tracing::warn!("RECALL_LOG_IDS is on: logs carry raw user ids and character names");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{LogArgs, RateLimitArgs};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        rate: RateLimitArgs,
    }

    #[test]
    fn log_ids_default_off_and_take_a_boolish_value() {
        let off = Cli::try_parse_from(["t"]).unwrap();
        assert!(!off.log.log_ids);
        assert_eq!(off.log.log_format, "text");
        for (v, want) in [("true", true), ("1", true), ("false", false), ("no", false)] {
            let cli = Cli::try_parse_from(["t", "--log-ids", v]).unwrap();
            assert_eq!(cli.log.log_ids, want, "{v}");
        }
        assert!(Cli::try_parse_from(["t", "--log-ids", "maybe"]).is_err());
    }

    #[test]
    fn rate_limit_defaults_and_zero_turns_it_off() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        assert_eq!(cli.rate.rate_limit_per_second, 50);
        assert_eq!(cli.rate.rate_limit_burst, 100);
        let limit = cli.rate.limit().unwrap();
        assert_eq!(limit.burst.get(), 100);
        assert_eq!(
            limit.replenish_one_per,
            std::time::Duration::from_millis(20)
        );
        let off = Cli::try_parse_from(["t", "--rate-limit-per-second", "0"]).unwrap();
        assert_eq!(off.rate.limit(), None);
        assert!(Cli::try_parse_from(["t", "--rate-limit-burst", "0"]).is_err());
        let d = RateLimitArgs::default();
        assert_eq!(
            (d.rate_limit_per_second, d.rate_limit_burst),
            (cli.rate.rate_limit_per_second, cli.rate.rate_limit_burst)
        );
    }
}
