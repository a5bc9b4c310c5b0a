//! Support for the integration tests: the shared test data, a started standalone server, and a
//! small HTTP client.

use std::path::PathBuf;

pub mod observed;

use serde::Deserialize;

/// One line of a conversation file in `../shared/data/`.
#[derive(Debug, Clone, Deserialize)]
pub struct DataMessage {
    /// Message id.
    pub message_id: String,
    /// User id.
    pub user_id: String,
    /// Character name.
    pub character_name: String,
    /// `user` or `assistant`.
    pub role: String,
    /// `voice` or `whatsapp`.
    pub channel: String,
    /// The text.
    pub text: String,
    /// RFC 3339 time.
    pub created_at: String,
}

/// One gold fact of `facts.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fact {
    /// User id.
    pub user_id: String,
    /// Character name.
    pub character_name: String,
    /// Fact id.
    pub fact_id: String,
    /// The fact, as true at the end of the conversation.
    pub fact: String,
    /// First user message stating it.
    pub first_message_id: String,
    /// Retrieval probes.
    pub questions: Vec<String>,
}

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
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
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
