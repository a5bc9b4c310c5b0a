//! Domain types: validated identifiers, chat messages, memories and batch records.
//!
//! Identifiers are validated once, at the edge, and carried as newtypes afterwards so that no
//! adapter ever sees an id that could escape a Firestore path segment or a Qdrant filter value.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest accepted `user_id`, `character_name` or `message_id`.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] characters.
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    /// The id contains a character outside `[A-Za-z0-9_.-]`.
    #[error("may only contain A-Z, a-z, 0-9, '_', '.' and '-'")]
    InvalidCharacter,
    /// The id is reserved (`.`, `..`, or `__name__`), as Firestore forbids those segments.
    #[error("is a reserved name")]
    Reserved,
}

/// Checks the id rules shared by users, characters and messages.
pub fn validate_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(IdError::InvalidCharacter);
    }
    if raw == "." || raw == ".." || (raw.len() >= 4 && raw.starts_with("__") && raw.ends_with("__"))
    {
        return Err(IdError::Reserved);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a raw id.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                validate_id(&raw)?;
                Ok(Self(raw))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A validated user id.
    UserId
);
id_type!(
    /// A validated character name (e.g. `meher`).
    CharacterName
);
id_type!(
    /// A validated message id, unique within a pair.
    MessageId
);

/// One (user, character) conversation: the unit of counting, batching and memory isolation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    /// The user.
    pub user_id: UserId,
    /// The character the user talks to.
    pub character_name: CharacterName,
}

impl Pair {
    /// Builds a pair from validated ids.
    pub fn new(user_id: UserId, character_name: CharacterName) -> Self {
        Self {
            user_id,
            character_name,
        }
    }

    /// Validates raw ids into a pair, naming the offending field on error.
    pub fn parse(user_id: &str, character_name: &str) -> Result<Self, (&'static str, IdError)> {
        Ok(Self {
            user_id: UserId::parse(user_id).map_err(|e| ("user_id", e))?,
            character_name: CharacterName::parse(character_name)
                .map_err(|e| ("character_name", e))?,
        })
    }

    /// SHA-256 of `user_id`, a zero byte and `character_name`: stable across processes.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.user_id.as_str());
        h.update([0u8]);
        h.update(self.character_name.as_str());
        h.finalize().into()
    }

    /// A short, stable, non-reversible hash of the pair for logs.
    pub fn hash_hex(&self) -> String {
        hex::encode(&self.digest()[..6])
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user_id, self.character_name)
    }
}

/// Who spoke a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The human user.
    User,
    /// The character (the bot).
    Assistant,
}

impl Role {
    /// The wire name, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses the wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// A chat message as the companion app stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The message id, unique within its pair.
    pub id: MessageId,
    /// The conversation it belongs to.
    #[serde(flatten)]
    pub pair: Pair,
    /// Who spoke.
    pub role: Role,
    /// Where it was said (`voice`, `whatsapp`, ...).
    pub channel: String,
    /// What was said.
    pub text: String,
    /// When it was said.
    pub created_at: DateTime<Utc>,
    /// Whether its memories are already extracted.
    pub sync: bool,
}

/// What a memory is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Name, age, pronouns, background.
    Identity,
    /// Likes and dislikes.
    Preference,
    /// People and pets in the user's life, and the relationship with the character.
    Relationship,
    /// Something that happened.
    Event,
    /// Something the user intends to do.
    Plan,
    /// Physical or mental health.
    Health,
    /// Job, studies, career.
    Work,
    /// Emotional context worth remembering.
    Emotion,
    /// Where the user lives or is.
    Location,
    /// Anything else worth keeping.
    Other,
}

impl Category {
    /// Every category, in wire order.
    pub const ALL: [Category; 10] = [
        Category::Identity,
        Category::Preference,
        Category::Relationship,
        Category::Event,
        Category::Plan,
        Category::Health,
        Category::Work,
        Category::Emotion,
        Category::Location,
        Category::Other,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::Preference => "preference",
            Category::Relationship => "relationship",
            Category::Event => "event",
            Category::Plan => "plan",
            Category::Health => "health",
            Category::Work => "work",
            Category::Emotion => "emotion",
            Category::Location => "location",
            Category::Other => "other",
        }
    }

    /// Parses the wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

/// A memory as an extractor proposes it, before it gets an id and a vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractedMemory {
    /// A self-contained statement about the user.
    pub text: String,
    /// What it is about.
    pub category: Category,
    /// 1 (trivia) to 5 (core identity).
    pub importance: u8,
    /// When the event or plan happens, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// The batch messages it was drawn from.
    pub source_message_ids: Vec<String>,
    /// Ids of existing memories this one replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Uuid>,
    /// Earlier memories of the same extraction this one replaces, by their position in it (a
    /// change said within one batch: "booked Goa" ... "the Goa trip is off"). They are stored
    /// already superseded, kept for history like any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes_in_batch: Vec<usize>,
}

/// Token counts of one LLM call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
}

/// What an extractor returned for one batch; stored on the batch so a retry reuses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// The proposed memories, in order (their index feeds the memory id).
    pub memories: Vec<ExtractedMemory>,
    /// Tokens spent.
    #[serde(default)]
    pub usage: TokenUsage,
    /// Which extractor produced it (e.g. `offline` or `openai:gpt-4o-mini`).
    pub extractor: String,
}

/// A stored memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Deterministic id: UUIDv5 of batch id and index.
    pub id: Uuid,
    /// The conversation it belongs to.
    #[serde(flatten)]
    pub pair: Pair,
    /// A self-contained statement about the user.
    pub text: String,
    /// What it is about.
    pub category: Category,
    /// 1 (trivia) to 5 (core identity).
    pub importance: u8,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the event or plan happens, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// The messages it was drawn from.
    pub source_message_ids: Vec<String>,
    /// The batch that produced it.
    pub batch_id: String,
    /// The newer memory that replaced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Uuid>,
}

/// A memory with its search score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredMemory {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Cosine similarity to the query, higher is closer.
    pub score: f32,
}

/// Counts and timings recorded on a finished batch (provenance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Memories the batch produced.
    pub memory_ids: Vec<Uuid>,
    /// Existing memories it superseded.
    pub superseded_ids: Vec<Uuid>,
    /// Tokens spent on extraction.
    pub usage: TokenUsage,
    /// Milliseconds per stage (`extract`, `embed`, `upsert`, ...).
    pub stage_millis: Vec<(String, u64)>,
}

/// Longest message text kept, in characters (longer texts are refused or truncated).
pub const MAX_MESSAGE_CHARS: usize = 64 * 1024;

/// Per-pair statistics served by `/memory/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    /// Messages stored.
    pub total: u64,
    /// Messages whose memories are extracted.
    pub synced: u64,
    /// Messages waiting for a batch.
    pub unsynced: u64,
    /// Batches completed.
    pub batches_done: u64,
    /// Batches whose last attempt failed and that are not done yet.
    pub batches_failed: u64,
    /// When the last batch completed.
    pub last_batch_at: Option<DateTime<Utc>>,
    /// Tokens spent on this pair's batches.
    pub tokens: TokenUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        let cases: &[(&str, Result<(), IdError>)] = &[
            ("u_0f6c3d", Ok(())),
            ("meher", Ok(())),
            ("a.b-c_D9", Ok(())),
            ("", Err(IdError::Empty)),
            (&"x".repeat(128), Ok(())),
            (&"x".repeat(129), Err(IdError::TooLong)),
            ("a/b", Err(IdError::InvalidCharacter)),
            ("a/../b", Err(IdError::InvalidCharacter)),
            ("a%2Fb", Err(IdError::InvalidCharacter)),
            ("mehеr", Err(IdError::InvalidCharacter)), // Cyrillic 'е'
            ("a b", Err(IdError::InvalidCharacter)),
            (".", Err(IdError::Reserved)),
            ("..", Err(IdError::Reserved)),
            ("__name__", Err(IdError::Reserved)),
            ("__", Ok(())),
        ];
        for (raw, want) in cases {
            assert_eq!(validate_id(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn pair_parse_names_the_field() {
        assert_eq!(Pair::parse("ok", "bad/").unwrap_err().0, "character_name");
        assert_eq!(Pair::parse("", "ok").unwrap_err().0, "user_id");
        let p = Pair::parse("u1", "meher").unwrap();
        assert_eq!(p.hash_hex().len(), 12);
        assert_ne!(p.hash_hex(), Pair::parse("u2", "meher").unwrap().hash_hex());
    }

    #[test]
    fn ids_deserialize_with_validation() {
        assert!(serde_json::from_str::<UserId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"no way\"").is_err());
    }
}
