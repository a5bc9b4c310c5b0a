//! The offline extractor's input path: a batch of chat messages (any text) and existing memories.
//!
//! Input layout: the first byte moves the batch's day (0-255 x 11 days from 2024-01-01, so every
//! weekday and month is reached); the rest, read as UTF-8 (lossy), is one item per line: `A:` an
//! assistant message, `M:` an existing memory, anything else a user message.
//!
//! Beyond "no panic": the same batch gives the same memories; every memory has non-empty text of
//! at most `MAX_MEMORY_CHARS` characters that the sensitive-content screen lets through,
//! importance 1-5, sources that are user messages of the batch, `supersedes` naming only
//! existing memories, and no text twice.
#![no_main]

use std::collections::HashSet;

use chrono::{Duration, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use recall_shared::adapters::offline_extractor::{
    MAX_MEMORY_CHARS, OfflineExtractor, is_sensitive,
};
use recall_shared::domain::{Category, Memory, Message, MessageId, Pair, Role};
use recall_shared::ports::ExtractionRequest;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Some((day, text)) = data.split_first() else {
        return;
    };
    let pair = Pair::parse("u_priya", "meher").unwrap();
    let start =
        Utc.with_ymd_and_hms(2024, 1, 1, 9, 30, 0).unwrap() + Duration::days(11 * i64::from(*day));
    let text = String::from_utf8_lossy(text);
    let mut messages = Vec::new();
    let mut existing = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = start + Duration::minutes(i as i64);
        if let Some(memory) = line.strip_prefix("M:") {
            existing.push(Memory {
                id: Uuid::from_u128(i as u128 + 1),
                pair: pair.clone(),
                text: memory.to_string(),
                category: Category::ALL[i % Category::ALL.len()],
                importance: 3,
                created_at: at - Duration::days(30),
                event_time: (i % 2 == 0).then_some(at + Duration::days(3)),
                source_message_ids: vec!["old".into()],
                batch_id: "b_old".into(),
                superseded_by: None,
            });
            continue;
        }
        let (role, said) = match line.strip_prefix("A:") {
            Some(rest) => (Role::Assistant, rest),
            None => (Role::User, line),
        };
        messages.push(Message {
            id: MessageId::parse(format!("msg-{i}")).unwrap(),
            pair: pair.clone(),
            role,
            channel: "whatsapp".into(),
            text: said.to_string(),
            created_at: at,
            sync: false,
        });
    }
    let request = ExtractionRequest {
        pair: &pair,
        messages: &messages,
        existing: &existing,
    };
    let extraction = OfflineExtractor::new().extract_batch(request);
    assert_eq!(
        extraction,
        OfflineExtractor::new().extract_batch(request),
        "deterministic"
    );
    let user_ids: HashSet<&str> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.id.as_str())
        .collect();
    let existing_ids: HashSet<Uuid> = existing.iter().map(|m| m.id).collect();
    let mut texts = HashSet::new();
    for m in &extraction.memories {
        assert!(!m.text.trim().is_empty(), "empty text");
        assert!(m.text.chars().count() <= MAX_MEMORY_CHARS, "{:?}", m.text);
        assert!(!is_sensitive(&m.text), "sensitive text kept: {:?}", m.text);
        assert!(
            (1..=5).contains(&m.importance),
            "importance {}",
            m.importance
        );
        assert!(!m.source_message_ids.is_empty(), "no source");
        for s in &m.source_message_ids {
            assert!(
                user_ids.contains(s.as_str()),
                "source {s:?} is not a user message"
            );
        }
        for s in &m.supersedes {
            assert!(
                existing_ids.contains(s),
                "supersedes {s} which is not an existing memory"
            );
        }
        assert!(texts.insert(m.text.as_str()), "text twice: {:?}", m.text);
    }
});
