//! Real `recall-worker` and `recall-publisher` processes around RabbitMQ and the Firestore
//! emulator, for the fault suite (`tests/faults.rs`) and the load generator
//! (`benches/load.rs`): each stack has its own queue prefix and Firestore project, proxies in
//! front of RabbitMQ and Firestore that can cut connections, and a scripted OpenAI-compatible
//! server; [`Stack::check`] is the invariant every fault case ends with.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use recall_shared::adapters::firestore::FirestoreMessageStore;
use recall_shared::adapters::qdrant_edge::QdrantEdgeStore;
use recall_shared::config::FirestoreArgs;
use recall_shared::domain::Pair;
use recall_shared::metrics::Metrics;
use recall_shared::ports::{MemoryStore, MessageStore};
use recall_shared::testkit::broker::{delete_queues, queue_len};
use recall_shared::testkit::fake_openai::{FakeOpenAi, Route};
use recall_shared::testkit::proxy::Proxy;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The API key of every process.
pub const KEY: &str = "fault-suite-key";
/// Embedding dimensions of the fake LLM's vectors.
pub const DIMS: usize = 64;
/// Batch threshold and size of the stacks.
pub const BATCH: usize = 25;

/// The emulator's address, or `None` (with a message) when the suite cannot run here.
pub fn emulator() -> Option<SocketAddr> {
    match std::env::var("FIRESTORE_EMULATOR_HOST") {
        Ok(host) => Some(host.parse().expect("FIRESTORE_EMULATOR_HOST is host:port")),
        Err(_) => {
            assert!(
                std::env::var_os("RECALL_REQUIRE_FIRESTORE").is_none(),
                "RECALL_REQUIRE_FIRESTORE is set but FIRESTORE_EMULATOR_HOST is not"
            );
            eprintln!("skipped: FIRESTORE_EMULATOR_HOST is not set (scripts/test.sh starts it)");
            None
        }
    }
}

/// A binary of this workspace: in `RECALL_BIN_DIR`, else where `cargo test --workspace` built it
/// (next to the test executable's folder).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("RECALL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable");
            exe.parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --workspace`) first",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose output lines are kept for [`Proc::wait_log`].
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<StdMutex<Vec<String>>>,
    /// Where its HTTP API listens.
    pub base: String,
}

impl Proc {
    /// Starts `cmd`, keeping its output; `port` is where its HTTP API will listen.
    pub fn spawn(name: &str, mut cmd: Command, port: u16) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("process starts");
        let log = Arc::new(StdMutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::pin(s) as std::pin::Pin<Box<_>>),
            child
                .stderr
                .take()
                .map(|s| Box::pin(s) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let tag = name.to_owned();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("RECALL_FAULTS_VERBOSE").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Whether a line containing `needle` was printed.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The last lines printed.
    pub fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .take(15)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a line containing `needle` is printed.
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.logged(needle) {
            assert!(
                Instant::now() < deadline,
                "{} did not log `{needle}` within {limit:?}; last lines:\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.base)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up; last lines:\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// SIGTERM; the exit status and how long it took.
    pub async fn terminate(mut self, limit: Duration) -> (ExitStatus, Duration) {
        let pid = self.child.id().expect("running").to_string();
        let t = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => (status.expect("wait"), t.elapsed()),
            Err(_) => panic!(
                "{} did not exit within {limit:?} of SIGTERM; last lines:\n{}",
                self.name,
                self.tail()
            ),
        }
    }
}

/// RabbitMQ and Firestore behind proxies, a scripted LLM, a queue prefix and a Firestore project
/// of its own, and the folders of the processes' embedded stores.
pub struct Stack {
    /// Queue prefix.
    pub prefix: String,
    project: String,
    emulator: SocketAddr,
    /// In front of RabbitMQ, for every process.
    pub amqp: Proxy,
    /// In front of the emulator, for the workers.
    pub firestore: Proxy,
    /// The LLM and embeddings endpoint.
    pub llm: FakeOpenAi,
    /// The stack's Firestore project, read directly.
    pub store: FirestoreMessageStore,
    dir: tempfile::TempDir,
    /// A client for the processes' APIs.
    pub http: reqwest::Client,
}

impl Stack {
    /// A new stack on the emulator at `emulator`.
    pub async fn new(emulator: SocketAddr) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let project = format!("faults-{tag}");
        let store = FirestoreMessageStore::connect(
            &FirestoreArgs {
                firestore_project_id: Some(project.clone()),
                ..FirestoreArgs::default()
            },
            &Metrics::new(),
        )
        .await
        .expect("emulator reachable");
        Self {
            prefix: format!("faults-{tag}"),
            project,
            emulator,
            amqp: Proxy::start("127.0.0.1:5672".parse().unwrap())
                .await
                .unwrap(),
            firestore: Proxy::start(emulator).await.unwrap(),
            llm: FakeOpenAi::start().await,
            store,
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// Settings both binaries share; `firestore` is the emulator address this process uses.
    fn command(&self, bin: &str, firestore: SocketAddr, data: &str) -> Command {
        let mut cmd = Command::new(binary(bin));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("RECALL_API_KEY", KEY)
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@{}/%2f", self.amqp.addr()),
            )
            .env("RECALL_AMQP_PREFIX", &self.prefix)
            .env("RECALL_SHARDS", "2")
            .env("RECALL_RETRY_DELAYS", "1,2,4,8,16")
            .env("RECALL_CONFIRM_TIMEOUT_MS", "3000")
            .env("RECALL_MESSAGE_STORE", "firestore")
            .env("FIRESTORE_PROJECT_ID", &self.project)
            .env("FIRESTORE_EMULATOR_HOST", firestore.to_string())
            .env("RECALL_FIRESTORE_TIMEOUT_SECONDS", "5")
            .env("RECALL_MEMORY_STORE", "embedded")
            .env("RECALL_DATA_DIR", self.dir.path().join(data))
            .env("RECALL_EMBEDDER", "openai")
            .env("OPENAI_BASE_URL", self.llm.base_url())
            .env("OPENAI_API_KEY", "sk-fault-suite")
            .env("OPENAI_EMBEDDING_DIMENSIONS", DIMS.to_string())
            .env("OPENAI_TIMEOUT_SECONDS", "3")
            .env("BATCH_THRESHOLD", BATCH.to_string())
            .env("BATCH_MAX_MESSAGES", BATCH.to_string())
            .env("BATCH_LEASE_SECONDS", "3")
            .env("BATCH_RETRIES", "2")
            .env("BATCH_CONCURRENCY", "4")
            .env("RECALL_SWEEP_SECONDS", "2")
            .env("RECALL_GRACE_SECONDS", "10");
        cmd
    }

    /// A worker named `name` (its worker id), on the one worker data folder, reaching Firestore
    /// through the proxy; `failpoints` as `FAILPOINTS` takes it.
    pub async fn worker(&self, name: &str, failpoints: &str) -> Proc {
        self.worker_with(name, failpoints, &[]).await
    }

    /// [`Stack::worker`] with more environment variables.
    pub async fn worker_with(&self, name: &str, failpoints: &str, env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let mut cmd = self.command("recall-worker", self.firestore.addr(), "worker");
        cmd.env("RECALL_WORKER_ID", name)
            .env("RECALL_WORKER_LISTEN", format!("127.0.0.1:{port}"));
        if !failpoints.is_empty() {
            cmd.env("FAILPOINTS", failpoints);
        }
        cmd.envs(env.iter().copied());
        let p = Proc::spawn(name, cmd, port);
        p.wait_up().await;
        p
    }

    /// The publisher; it writes messages as the app does (straight to Firestore).
    pub async fn publisher(&self) -> Proc {
        let port = free_port();
        let mut cmd = self.command("recall-publisher", self.emulator, "publisher");
        cmd.env("RECALL_LISTEN", format!("127.0.0.1:{port}"));
        let p = Proc::spawn("publisher", cmd, port);
        p.wait_up().await;
        p
    }

    /// `n` pairs of users of this stack.
    pub fn pairs(&self, n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| Pair::parse(&format!("u_{}_{i}", &self.prefix[7..]), "meher").unwrap())
            .collect()
    }

    /// Posts message `i` of `pair` through the publisher, retrying 503s (as the Cloud Function
    /// does) with the same id; panics on anything else. Returns the 503s seen.
    pub async fn post(&self, publisher: &str, pair: &Pair, i: usize) -> u32 {
        let url = format!(
            "{publisher}/memory/messages/{}/{}",
            pair.user_id, pair.character_name
        );
        let body = json!({
            "message_id": format!("m{i:04}"),
            "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
            "text": format!("message {i}: I moved to city number {i} and my dog is called Rex{i}"),
            "channel": "whatsapp",
            "created_at": chrono::Utc::now(),
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut refused = 0;
        loop {
            let r = self
                .http
                .post(&url)
                .bearer_auth(KEY)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200 | 201) => return refused,
                Ok(503) | Err(_) => refused += 1,
                Ok(other) => panic!("message {i} of {pair:?}: unexpected {other}"),
            }
            assert!(Instant::now() < deadline, "message {i} never accepted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Posts `n` messages to each pair, pairs in parallel; returns the 503s seen.
    pub async fn load(&self, publisher: &str, pairs: &[Pair], n: usize) -> u32 {
        let tasks = pairs.iter().map(|p| async move {
            let mut refused = 0;
            for i in 0..n {
                refused += self.post(publisher, p, i).await;
            }
            refused
        });
        futures::future::join_all(tasks).await.into_iter().sum()
    }

    /// Waits until no message of `pairs` is unsynced.
    pub async fn wait_synced(&self, pairs: &[Pair], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.unsynced(pairs).await;
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} messages still unsynced after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Unsynced messages of `pairs`, read from Firestore.
    pub async fn unsynced(&self, pairs: &[Pair]) -> u64 {
        let mut left = 0;
        for p in pairs {
            left += self.store.count_unsynced(p).await.unwrap();
        }
        left
    }

    /// LLM (chat) calls so far.
    pub fn chat_calls(&self) -> usize {
        self.llm.calls(Route::ChatCompletions)
    }

    /// The invariant every case ends with (the worker must have exited: the memory store is
    /// opened here). `expected` messages per pair. Returns (batches, memories).
    pub async fn check(&self, pairs: &[Pair], expected: usize) -> (usize, usize) {
        let memories = QdrantEdgeStore::open(&self.dir.path().join("worker").join("qdrant"))
            .expect("the worker's memory store opens after it exited");
        let (mut batches, mut stored) = (0, 0);
        for pair in pairs {
            let audit = self.store.audit(pair).await.unwrap();
            assert_eq!(audit.messages.len(), expected, "{pair:?}: messages stored");
            let done: HashMap<&str, _> = audit
                .batches
                .iter()
                .filter(|b| b.state == "done")
                .map(|b| (b.batch_id.as_str(), b))
                .collect();
            assert_eq!(
                done.len(),
                audit.batches.len(),
                "{pair:?}: a batch record is still open: {:?}",
                audit.batches
            );
            // Every message synced, by exactly one completed batch that lists it.
            let mut covered: HashMap<&str, usize> = HashMap::new();
            for b in done.values() {
                for m in &b.message_ids {
                    *covered.entry(m.as_str()).or_default() += 1;
                }
            }
            for m in &audit.messages {
                let id = &m.id;
                assert!(m.sync, "{pair:?}: message {id} is not synced");
                let by = m
                    .batch_id
                    .as_deref()
                    .expect("a flipped message names its batch");
                assert!(
                    done.get(by).is_some_and(|b| b.message_ids.contains(id)),
                    "{pair:?}: message {id} names batch {by}, which does not list it"
                );
                assert_eq!(covered.get(id.as_str()), Some(&1), "{pair:?}: message {id}");
            }
            // The memory store holds exactly what the completed batches recorded.
            let listed = memories.list(pair).await.unwrap();
            let ids: Vec<String> = listed.iter().map(|m| m.id.to_string()).collect();
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{pair:?}: duplicate memory ids");
            let recorded: HashSet<&String> =
                done.values().flat_map(|b| b.memory_ids.iter()).collect();
            assert_eq!(unique, recorded, "{pair:?}: memories vs batch records");
            let mut texts = HashSet::new();
            for m in &listed {
                assert!(
                    texts.insert((m.batch_id.clone(), m.text.clone())),
                    "{pair:?}: duplicate text in batch {}: {}",
                    m.batch_id,
                    m.text
                );
            }
            batches += done.len();
            stored += listed.len();
        }
        assert_eq!(
            queue_len(&format!("{}.parking", self.prefix)),
            0,
            "nothing is parked"
        );
        (batches, stored)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}
