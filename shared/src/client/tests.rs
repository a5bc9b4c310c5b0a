//! The client against a standalone node on a loopback port (SQLite in memory, test doubles for
//! the embedder, extractor and memory store, so a batch takes milliseconds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::adapters::sqlite::SqliteMessageStore;
use crate::config::BatchArgs;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::pipeline::Deps;
use crate::testkit::doubles::{EchoExtractor, HashEmbedder, InMemoryMemoryStore};

const KEY: &str = "client-test-key";

struct Server {
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Server {
    let batch = BatchArgs {
        batch_threshold: 25,
        batch_max_messages: 50,
        batch_idle_seconds: 1800,
        batch_idle_min_messages: 5,
        batch_concurrency: 2,
        batch_lease_seconds: 60,
        batch_retries: 2,
        sweep_seconds: 1,
        grace_seconds: 5,
        maintenance_seconds: 1,
    };
    let deps = Deps {
        messages: Arc::new(SqliteMessageStore::in_memory().unwrap()),
        memories: Arc::new(InMemoryMemoryStore::default()),
        extractor: Arc::new(EchoExtractor::default()),
        embedder: Arc::new(HashEmbedder::new(64)),
        metrics: Arc::new(Metrics::new()),
    };
    let node = Node::standalone(
        deps,
        batch.engine(None).unwrap(),
        batch.workers(),
        Some(KEY.into()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(node.run(listener, shutdown.clone()));
    Server {
        base,
        shutdown,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

#[tokio::test]
async fn the_client_drives_a_running_server() {
    let server = start().await;
    let recall = RecallClient::new(&server.base, Some(KEY.into())).unwrap();

    let health = recall.health().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.components.embedder.dimension, Some(64));

    let first = recall
        .append_message(
            "kabir",
            "meher",
            &NewMessage {
                message_id: Some(crate::domain::MessageId::parse("m00").unwrap()),
                channel: Some("whatsapp".into()),
                ..NewMessage::new("user", "My dog Pepper is a beagle who steals socks")
            },
        )
        .await
        .unwrap();
    assert!(first.created);
    for i in 1..25 {
        let text = if i % 2 == 0 {
            format!("I went jogging by the lake, lap {i}")
        } else {
            format!("That sounds lovely ({i})")
        };
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        recall
            .append_message("kabir", "meher", &NewMessage::new(role, text))
            .await
            .unwrap();
    }
    // The same id again: stored once.
    let again = recall
        .append_message(
            "kabir",
            "meher",
            &NewMessage {
                message_id: Some(crate::domain::MessageId::parse("m00").unwrap()),
                ..NewMessage::new("user", "My dog Pepper is a beagle who steals socks")
            },
        )
        .await
        .unwrap();
    assert!(!again.created);

    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = recall.stats("kabir", "meher").await.unwrap();
        if stats.batches.done >= 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "no batch completed: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats.messages.total, 25);
    assert_eq!(stats.messages.synced, 25);
    assert!(stats.memories.current >= 1);
    assert_eq!(stats.extractor, "echo");

    let found = recall
        .search("kabir", "meher", "what is my dog Pepper called", Some(3))
        .await
        .unwrap();
    assert!(found.count >= 1 && found.count <= 3, "{found:?}");
    assert!(found.results[0].text.contains("Pepper"), "{found:?}");
    assert_eq!(found.results[0].source_message_ids, ["m00"]);

    let context = recall
        .get_conversation_context("kabir", "meher", Some("how is my dog Pepper"), Some(300))
        .await
        .unwrap();
    assert!(context.context.contains("Pepper"), "{}", context.context);
    assert_eq!(context.max_tokens, 300);
    assert_eq!(context.memories[0].user_id.as_str(), "kabir");

    let prompt = recall
        .enhance_system_prompt(
            "kabir",
            "meher",
            "You are Meher, warm and witty.",
            Some("does my dog Pepper still steal socks?"),
            None,
        )
        .await
        .unwrap();
    assert!(prompt.system_prompt.starts_with("You are Meher"));
    assert!(prompt.system_prompt.contains("Pepper"));
    assert!(prompt.memories_used >= 1);

    let check = recall.check_batch("kabir", "meher").await.unwrap();
    assert_eq!(check.unsynced, 0);
    assert!(!check.triggered);

    let doc = recall.openapi().await.unwrap();
    assert!(doc["paths"]["/memory/context/{user_id}/{character_name}"].is_object());

    // Errors carry the server's code, message and field.
    let err = recall
        .search("kabir", "meher", "x", Some(99))
        .await
        .unwrap_err();
    match &err {
        ClientError::Api {
            status,
            code,
            field,
            message,
            ..
        } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(code, "invalid_request");
            assert_eq!(field.as_deref(), Some("limit"));
            assert!(message.contains("from 1 to 50"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    let err = recall
        .append_message("bad id!", "meher", &NewMessage::new("user", "hi"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { field: Some(f), .. } if f == "user_id"),
        "{err:?}"
    );
    let wrong = RecallClient::new(&server.base, Some("wrong".into())).unwrap();
    let err = wrong.stats("kabir", "meher").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status, code, .. }
            if *status == StatusCode::UNAUTHORIZED && code == "unauthorized"),
        "{err:?}"
    );
    assert!(err.to_string().contains("RECALL_API_KEY"), "{err}");

    let erased = recall.erase_pair("kabir", "meher").await.unwrap();
    assert!(erased.memories_deleted >= 1);
    assert_eq!(erased.character_name.unwrap().as_str(), "meher");
    let erased = recall.erase_user("kabir").await.unwrap();
    assert_eq!(erased.memories_deleted, 0);

    server.stop().await;
    // A stopped server is a transport error, and worth retrying.
    let err = recall.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[test]
fn urls_encode_each_segment_under_the_base() {
    let c = RecallClient::new("http://127.0.0.1:1/prefix/", None).unwrap();
    assert_eq!(
        c.url(&["memory", "stats", "a/b", "m e"]).as_str(),
        "http://127.0.0.1:1/prefix/memory/stats/a%2Fb/m%20e"
    );
    let c = RecallClient::new("http://127.0.0.1:1", None).unwrap();
    assert_eq!(
        c.url(&["memory", "health"]).as_str(),
        "http://127.0.0.1:1/memory/health"
    );
    assert!(matches!(
        RecallClient::new("not a url", None),
        Err(ClientError::BaseUrl(_))
    ));
}
