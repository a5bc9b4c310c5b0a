//! The payload of a memory point, shared by the embedded (Qdrant Edge) and the server (Qdrant)
//! adapters: a memory reads and writes the same JSON object on both, so an export from one
//! imports into the other unchanged, and a filter on a payload key means the same thing on both.
//!
//! The point id is the memory's UUID; the payload is every other field: `user_id`,
//! `character_name`, `text`, `category`, `importance`, `created_at` and `event_time` (RFC 3339
//! strings, `null` when unknown), `source_message_ids`, `batch_id`, and `superseded_by` (`null`
//! while the memory is live).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Category, CharacterName, Memory, Pair, UserId};

/// Payload key of the user (the tenant).
pub(crate) const USER_ID: &str = "user_id";
/// Payload key of the character.
pub(crate) const CHARACTER_NAME: &str = "character_name";
/// Payload key of the batch that produced the memory.
pub(crate) const BATCH_ID: &str = "batch_id";
/// Payload key of the memory's category.
#[cfg_attr(not(feature = "qdrant"), allow(dead_code))]
pub(crate) const CATEGORY: &str = "category";
/// Payload key of the creation time (RFC 3339 string).
#[cfg_attr(not(feature = "qdrant"), allow(dead_code))]
pub(crate) const CREATED_AT: &str = "created_at";
/// Payload key of the newer memory that replaced this one (`null` while live).
pub(crate) const SUPERSEDED_BY: &str = "superseded_by";

/// A memory's payload: every field but the id (the point id).
#[derive(Debug, Serialize, Deserialize)]
struct StoredMemory {
    user_id: UserId,
    character_name: CharacterName,
    text: String,
    category: Category,
    importance: u8,
    created_at: DateTime<Utc>,
    event_time: Option<DateTime<Utc>>,
    source_message_ids: Vec<String>,
    batch_id: String,
    superseded_by: Option<Uuid>,
}

/// The payload object of `memory`.
pub(crate) fn to_payload(memory: &Memory) -> Result<Map<String, Value>, String> {
    let stored = StoredMemory {
        user_id: memory.pair.user_id.clone(),
        character_name: memory.pair.character_name.clone(),
        text: memory.text.clone(),
        category: memory.category,
        importance: memory.importance,
        created_at: memory.created_at,
        event_time: memory.event_time,
        source_message_ids: memory.source_message_ids.clone(),
        batch_id: memory.batch_id.clone(),
        superseded_by: memory.superseded_by,
    };
    match serde_json::to_value(&stored) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "memory {} did not serialize to an object: {other}",
            memory.id
        )),
        Err(e) => Err(format!("memory {} cannot be serialized: {e}", memory.id)),
    }
}

/// Rebuilds the memory `id` from its payload object.
pub(crate) fn from_payload(id: Uuid, payload: Map<String, Value>) -> Result<Memory, String> {
    let stored: StoredMemory = serde_json::from_value(Value::Object(payload))
        .map_err(|e| format!("point {id} has a bad payload: {e}"))?;
    Ok(Memory {
        id,
        pair: Pair::new(stored.user_id, stored.character_name),
        text: stored.text,
        category: stored.category,
        importance: stored.importance,
        created_at: stored.created_at,
        event_time: stored.event_time,
        source_message_ids: stored.source_message_ids,
        batch_id: stored.batch_id,
        superseded_by: stored.superseded_by,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn payload_shape_is_stable_and_round_trips() {
        let live = Memory {
            id: Uuid::from_u128(7),
            pair: Pair::parse("u_1", "meher").unwrap(),
            text: "User has a beagle called Pepper.".into(),
            category: Category::Relationship,
            importance: 4,
            created_at: Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53).unwrap(),
            event_time: None,
            source_message_ids: vec!["m1".into(), "m2".into()],
            batch_id: "b1".into(),
            superseded_by: None,
        };
        let payload = to_payload(&live).unwrap();
        // The exact JSON both adapters store (and export/import relies on).
        assert_eq!(
            Value::Object(payload.clone()),
            json!({
                "user_id": "u_1",
                "character_name": "meher",
                "text": "User has a beagle called Pepper.",
                "category": "relationship",
                "importance": 4,
                "created_at": "2025-03-14T09:26:53Z",
                "event_time": null,
                "source_message_ids": ["m1", "m2"],
                "batch_id": "b1",
                "superseded_by": null,
            })
        );
        assert_eq!(from_payload(live.id, payload).unwrap(), live);
        for key in [
            USER_ID,
            CHARACTER_NAME,
            BATCH_ID,
            CATEGORY,
            CREATED_AT,
            SUPERSEDED_BY,
        ] {
            assert!(to_payload(&live).unwrap().contains_key(key), "{key}");
        }
        let bad = json!({"user_id": "../x"}).as_object().unwrap().clone();
        assert!(from_payload(live.id, bad).is_err());
    }
}
