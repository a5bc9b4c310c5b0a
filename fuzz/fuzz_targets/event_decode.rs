//! Event decoding: the bytes of an AMQP delivery (a message event or a batch job) and the body
//! of `POST /firebase/message-created`, decoded the way the worker and the HTTP API do.
//!
//! Beyond "no panic": a decoded event carries only valid ids and survives re-encoding unchanged
//! (the publisher's encoding is what the worker reads back); the HTTP decoder accepts nothing the
//! AMQP decoder would read differently; a refused body gets a 400 whose field and message stay
//! short and never carry serde's position suffix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recall_shared::adapters::rabbitmq::{decode_body, encode_body};
use recall_shared::domain::{Pair, validate_id};
use recall_shared::http::api::MessageCreated;
use recall_shared::http::decode_json_body;
use recall_shared::ports::MessageEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longest error message or field name the API may answer a bad body with.
const MAX_ERROR_CHARS: usize = 200;

/// Decoded once, re-encoded, decoded again: the same value and the same bytes.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = encode_body(value).expect("a decoded value encodes");
    let again: T = decode_body(&bytes).expect("an encoded value decodes");
    assert_eq!(&again, value);
    assert_eq!(encode_body(&again).unwrap(), bytes, "encoding is stable");
}

fn assert_valid_pair(user: &str, character: &str) {
    assert!(
        validate_id(user).is_ok(),
        "user_id {user:?} passed decoding"
    );
    assert!(
        validate_id(character).is_ok(),
        "character_name {character:?} passed decoding"
    );
}

fuzz_target!(|data: &[u8]| {
    // The worker's event queue.
    let event = decode_body::<MessageEvent>(data).ok();
    if let Some(ev) = &event {
        assert_valid_pair(ev.user_id.as_str(), ev.character_name.as_str());
        if let Some(id) = &ev.message_id {
            assert!(validate_id(id.as_str()).is_ok());
        }
        round_trip(ev);
    }
    // The worker's batch queue.
    if let Ok(pair) = decode_body::<Pair>(data) {
        assert_valid_pair(pair.user_id.as_str(), pair.character_name.as_str());
        round_trip(&pair);
    }
    // The HTTP webhook, which publishes what it accepts as a MessageEvent.
    match decode_json_body::<MessageCreated>(data) {
        Ok(body) => {
            let published = MessageEvent {
                user_id: body.user_id,
                character_name: body.character_name,
                message_id: body.message_id,
            };
            assert_eq!(
                event.as_ref(),
                Some(&published),
                "the worker reads the same bytes as the same event"
            );
            round_trip(&published);
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.code, "invalid_request");
            let field = e.field.as_deref().unwrap_or_default();
            assert!(!field.is_empty(), "a 400 names a field");
            assert!(field.chars().count() <= MAX_ERROR_CHARS, "field {field:?}");
            assert!(!e.message.is_empty());
            assert!(
                e.message.chars().count() <= MAX_ERROR_CHARS,
                "message {:?}",
                e.message
            );
            assert!(!e.message.contains(" at line "), "{:?}", e.message);
        }
    }
});
