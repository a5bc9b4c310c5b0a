//! Request extractors that turn every malformed input into a 4xx naming the field.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::Pair;

/// A JSON body: 415 without a JSON content type, 413 when too large, 400 naming the bad field.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::not_json());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large()
                } else {
                    ApiError {
                        field: Some("body".into()),
                        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "unreadable body")
                    }
                }
            })?;
        decode_json_body(&bytes).map(JsonBody)
    }
}

/// A JSON request body as the API decodes it (after the content-type and size checks): the value,
/// or a 400 naming the field at fault. Public for the fuzz target `event_decode` (`fuzz/`).
pub fn decode_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object: anything else (an array standing in for a struct, deep nesting)
    // is refused before the parser walks into it.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        let named = missing_field(&text).or_else(|| unknown_field(&text));
        let field = match (path.as_str(), named) {
            _ if inner.is_syntax() || inner.is_eof() => "body".to_owned(),
            (_, Some(name)) => name,
            (".", None) | ("", None) | ("?", None) => "body".to_owned(),
            // A path is made of names as sent, so it is cut short too.
            (p, None) => cut(p, MAX_ERROR_MESSAGE_CHARS),
        };
        // serde's message says what was wrong; it may quote the input (an unknown field's name,
        // a string of the wrong type), so it is cut short, and its position suffix dropped.
        let message = text.split(" at line ").next().unwrap_or_default();
        ApiError::invalid(field, cut(message, MAX_ERROR_MESSAGE_CHARS))
    })?;
    // As serde_json::from_slice (the AMQP consumers' decoder) does: only whitespace may follow.
    de.end()
        .map_err(|_| ApiError::invalid("body", "trailing characters after the JSON value"))?;
    Ok(value)
}

/// Longest message (and field) of a 400 for a body that does not decode, in characters.
const MAX_ERROR_MESSAGE_CHARS: usize = 200;

/// `text`, or its first `max - 3` characters and `...` when it is longer than `max`.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(3)).collect();
    short.push_str("...");
    short
}

/// Pulls the name out of serde's "missing field `x`" message.
fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Pulls the name out of serde's "unknown field `x`, expected ..." message, when it is short and
/// plain (it is the client's own input, echoed back).
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let name = rest.split('`').next()?;
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then(|| name.to_owned())
}

/// `{user_id}/{character_name}` path segments, validated.
#[derive(Debug)]
pub(crate) struct PairPath(pub(crate) Pair);

impl<S: Send + Sync> FromRequestParts<S> for PairPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((user, character)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| path_error(&e))?;
        Pair::parse(&user, &character)
            .map(PairPath)
            .map_err(|(field, e)| ApiError::invalid(field, format!("{field} {e}")))
    }
}

/// A path that could not be read: names the segment with invalid UTF-8 when that was the fault.
fn path_error(e: &PathRejection) -> ApiError {
    if let PathRejection::FailedToDeserializePathParams(e) = e
        && let ErrorKind::InvalidUtf8InPathParam { key } = e.kind()
    {
        return ApiError::invalid(key.clone(), format!("{key} must be valid UTF-8"));
    }
    ApiError::invalid("path", "user_id and character_name must be valid UTF-8")
}

/// Query parameters as strings, parsed by the handler so errors can name the parameter.
#[derive(Debug)]
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|_| ApiError::invalid("query", "malformed query string"))
    }
}

impl Params {
    /// A required, non-blank string of at most `max` characters.
    pub(crate) fn text(&self, name: &str, max: usize) -> Result<String, ApiError> {
        match self.0.get(name).map(|s| s.trim()) {
            None | Some("") => Err(ApiError::invalid(name, format!("{name} is required"))),
            Some(s) if s.chars().count() > max => Err(ApiError::invalid(
                name,
                format!("{name} must be at most {max} characters"),
            )),
            Some(s) => Ok(s.to_owned()),
        }
    }

    /// An optional string of at most `max` characters.
    pub(crate) fn opt_text(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(_) => self.text(name, max).map(Some),
        }
    }

    /// An optional integer in `min..=max`, else `default`.
    pub(crate) fn int(
        &self,
        name: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ApiError> {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format!("{name} must be an integer from {min} to {max}"),
            )),
        }
    }

    /// An optional boolean (`true`/`false`), else `false`.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be true or false"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::MessageCreated;

    /// Found by the `event_decode` fuzz target: the 400 quoted a field name of any length.
    #[test]
    fn an_unknown_field_is_not_echoed_at_any_length() {
        let body =
            b"{\"uwer_GGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGG\
            GGGGGGGGGGGGGGGGGGGGGG11111111111GGGGGGGGGGGGGGGGGGGGGid\":\r~\x00";
        let e = decode_json_body::<MessageCreated>(body).unwrap_err();
        let field = e.field.unwrap();
        assert!(
            field.starts_with("uwer_") && field.ends_with("Gid"),
            "{field}"
        );
        assert_eq!(e.message.chars().count(), MAX_ERROR_MESSAGE_CHARS);
        assert!(
            e.message.starts_with("unknown field `uwer_GGG"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with("..."));
        let long = format!("\"{}\"", "x".repeat(100_000));
        let e = decode_json_body::<MessageCreated>(long.as_bytes()).unwrap_err();
        assert!(e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS);
        let short = decode_json_body::<MessageCreated>(br#"{"user_id":"a"}"#).unwrap_err();
        assert_eq!(short.message, "missing field `character_name`");
    }

    /// Found by the `event_decode` fuzz target: the 400 named an unknown field of any length.
    #[test]
    fn an_unknown_field_is_named_within_bounds() {
        let body =
            b"{\"user_id\":\"kr\",\"characteo-00hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\
            hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\
            hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh:{\"\\/d\"\r\r\r\x1b1\"}";
        let e = decode_json_body::<MessageCreated>(body).unwrap_err();
        let field = e.field.unwrap();
        assert_eq!(field.chars().count(), MAX_ERROR_MESSAGE_CHARS, "{field}");
        assert!(
            field.starts_with("characteo-00hhh") && field.ends_with("..."),
            "{field}"
        );
        assert!(e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS);
    }

    /// Found by the `event_decode` fuzz target: the API took a body the AMQP consumers refuse.
    #[test]
    fn a_body_with_trailing_characters_is_refused() {
        let body = br#"{"user_id":"u_priya","character_name":"luna","message_id":null}lun"#;
        let e = decode_json_body::<MessageCreated>(body).unwrap_err();
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("body"))
        );
        let two = br#"{"user_id":"a","character_name":"b"} {"user_id":"c","character_name":"d"}"#;
        assert!(decode_json_body::<MessageCreated>(two).is_err());
        let padded = b" {\"user_id\":\"a\",\"character_name\":\"b\"}\n\t ";
        assert!(decode_json_body::<MessageCreated>(padded).is_ok());
    }
}
