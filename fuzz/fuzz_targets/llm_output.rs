//! The LLM-output parser: what the OpenAI-compatible extractor keeps from a chat completion.
//!
//! Each input is tried twice: as the whole HTTP body of the chat completion, and (when it is
//! UTF-8) as the model's message content inside a well-formed completion, which is where a model
//! that ignores the schema or follows injected instructions would put anything.
//!
//! Beyond "no panic", every kept memory has whitespace-collapsed, non-empty text that the
//! sensitive-content screen lets through, importance 1-5, at least one source, all of them
//! messages of the batch and none twice, `supersedes` naming only existing memories, and no text
//! that duplicates another kept memory or an existing one. Parsing is deterministic.
#![no_main]

use std::collections::HashSet;

use chrono::{Duration, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use recall_shared::adapters::offline_extractor::is_sensitive;
use recall_shared::adapters::openai::parse_chat_completion;
use recall_shared::domain::{Category, Memory, Message, MessageId, Pair, Role};
use recall_shared::ports::ExtractionRequest;
use serde_json::json;
use uuid::Uuid;

fn pair() -> Pair {
    Pair::parse("u_priya", "meher").unwrap()
}

/// The batch the answer must refer to (the adapter's own test batch: `msg-0` .. `msg-3`).
fn batch() -> Vec<Message> {
    let texts = [
        (Role::User, "I moved to Bengaluru last week!"),
        (Role::Assistant, "Wow, how is the new flat?"),
        (Role::User, "Tiny, but Pepper loves the balcony"),
        (Role::User, "Job interview at Infosys next Friday"),
    ];
    let start = Utc.with_ymd_and_hms(2024, 11, 3, 18, 0, 0).unwrap();
    texts
        .iter()
        .enumerate()
        .map(|(i, (role, text))| Message {
            id: MessageId::parse(format!("msg-{i}")).unwrap(),
            pair: pair(),
            role: *role,
            channel: "whatsapp".into(),
            text: (*text).into(),
            created_at: start + Duration::minutes(i as i64),
            sync: false,
        })
        .collect()
}

/// Existing memories, shown to the model as `m1` and `m2`.
fn existing() -> Vec<Memory> {
    let memory = |n: u128, text: &str, category| Memory {
        id: Uuid::from_u128(n),
        pair: pair(),
        text: text.into(),
        category,
        importance: 3,
        created_at: Utc.with_ymd_and_hms(2024, 10, 1, 0, 0, 0).unwrap(),
        event_time: None,
        source_message_ids: vec!["old".into()],
        batch_id: "b_old".into(),
        superseded_by: None,
    };
    vec![
        memory(
            0xAAAA_0001,
            "The user's dog is called Pepper",
            Category::Relationship,
        ),
        memory(0xBBBB_0002, "The user lives in Pune", Category::Location),
    ]
}

/// Lower-case letters and digits: what the parser compares for duplicates.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn check(body: &[u8], request: &ExtractionRequest<'_>) {
    let first = parse_chat_completion(body, request);
    let again = parse_chat_completion(body, request);
    assert_eq!(
        format!("{first:?}"),
        format!("{again:?}"),
        "parsing is deterministic"
    );
    let Ok((memories, _usage)) = first else {
        return;
    };
    let batch_ids: HashSet<&str> = request.messages.iter().map(|m| m.id.as_str()).collect();
    let existing_ids: HashSet<Uuid> = request.existing.iter().map(|m| m.id).collect();
    let mut seen: HashSet<String> = request
        .existing
        .iter()
        .map(|m| normalise(&m.text))
        .collect();
    for m in &memories {
        assert!(!m.text.is_empty(), "empty text kept");
        assert_eq!(
            m.text,
            m.text.split_whitespace().collect::<Vec<_>>().join(" "),
            "whitespace is collapsed"
        );
        assert!(!is_sensitive(&m.text), "sensitive text kept: {:?}", m.text);
        assert!(
            (1..=5).contains(&m.importance),
            "importance {}",
            m.importance
        );
        assert!(Category::parse(m.category.as_str()) == Some(m.category));
        assert!(!m.source_message_ids.is_empty(), "no source");
        let sources: HashSet<&str> = m.source_message_ids.iter().map(String::as_str).collect();
        assert_eq!(sources.len(), m.source_message_ids.len(), "a source twice");
        assert!(sources.is_subset(&batch_ids), "{:?}", m.source_message_ids);
        let replaced: HashSet<Uuid> = m.supersedes.iter().copied().collect();
        assert_eq!(replaced.len(), m.supersedes.len(), "a superseded id twice");
        assert!(replaced.is_subset(&existing_ids), "{:?}", m.supersedes);
        assert!(
            seen.insert(normalise(&m.text)),
            "duplicate kept: {:?}",
            m.text
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let pair = pair();
    let messages = batch();
    let existing = existing();
    let request = ExtractionRequest {
        pair: &pair,
        messages: &messages,
        existing: &existing,
    };
    check(data, &request);
    if let Ok(content) = std::str::from_utf8(data) {
        let body = json!({
            "choices": [{
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
        });
        check(body.to_string().as_bytes(), &request);
    }
});
