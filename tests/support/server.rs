//! A node served over HTTP on a random loopback port, and the test doubles it usually runs on
//! (SQLite in memory, the in-memory memory store, the hash embedder, the echo extractor).

use std::sync::Arc;

use recall_shared::adapters::sqlite::SqliteMessageStore;
use recall_shared::metrics::Metrics;
use recall_shared::node::Node;
use recall_shared::pipeline::Deps;
use recall_shared::testkit::doubles::{EchoExtractor, HashEmbedder, InMemoryMemoryStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Adapters made of test doubles: SQLite in memory, an in-memory memory store, a 32-dimension
/// hash embedder and `extractor`.
pub fn double_deps(extractor: EchoExtractor) -> Deps {
    Deps {
        messages: Arc::new(SqliteMessageStore::in_memory().expect("SQLite in memory")),
        memories: Arc::new(InMemoryMemoryStore::default()),
        extractor: Arc::new(extractor),
        embedder: Arc::new(HashEmbedder::new(32)),
        metrics: Arc::new(Metrics::new()),
    }
}

/// A running node.
pub struct Served {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Serves `node` on a free port of 127.0.0.1.
    pub async fn start(node: Node) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.run(listener, shutdown.clone()));
        Self {
            base,
            shutdown,
            task,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the node and waits for a clean shutdown.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the node task")
            .expect("clean shutdown");
    }
}
