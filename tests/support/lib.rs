//! Support for the integration tests: the shared test data, a node served on loopback
//! ([`server`]), and one observed pipeline run ([`observed`]).

use std::path::PathBuf;

#[cfg(all(feature = "firestore", feature = "embedded"))]
pub mod cluster;
pub mod observed;
pub mod server;

pub use recall_shared::eval::{DataMessage, GoldFact as Fact};

/// The shared test data folder: `RECALL_TEST_DATA`, else `../shared/data` beside the repository.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("RECALL_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    assert!(
        dir.join("facts.jsonl").is_file(),
        "test data not found at {} (set RECALL_TEST_DATA)",
        dir.display()
    );
    dir
}

/// The model folder: `RECALL_MODEL_DIR`, else `models/all-MiniLM-L6-v2` in the repository.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("RECALL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/all-MiniLM-L6-v2"
            ))
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "model not found at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: PathBuf) -> Vec<T> {
    recall_shared::eval::read_jsonl(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The messages of one conversation file, e.g. `u_0f6c3d__meher`.
pub fn conversation(name: &str) -> Vec<DataMessage> {
    read_jsonl(data_dir().join(format!("{name}.jsonl")))
}

/// The gold facts of one pair.
pub fn facts(user_id: &str, character_name: &str) -> Vec<Fact> {
    read_jsonl::<Fact>(data_dir().join("facts.jsonl"))
        .into_iter()
        .filter(|f| f.user_id == user_id && f.character_name == character_name)
        .collect()
}

/// Polls `ok` every 100 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_for(what: &str, limit: std::time::Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
