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

/// Longest error message taken from the JSON parser.
const MAX_MESSAGE_CHARS: usize = 200;

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
        // Every body is an object: anything else (an array standing in for a struct, deep nesting)
        // is refused before the parser walks into it.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::invalid("body", "the body must be a JSON object"));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let text = inner.to_string();
                let named = missing_field(&text).or_else(|| unknown_field(&text));
                let field = match (path.as_str(), named) {
                    _ if inner.is_syntax() || inner.is_eof() => "body".to_owned(),
                    (_, Some(name)) => name,
                    (".", None) | ("", None) | ("?", None) => "body".to_owned(),
                    (p, None) => p.to_owned(),
                };
                // serde's message says what was wrong; it may quote a value of the client's own,
                // so it is cut short: a huge bad value is not sent back whole.
                let message = text.split(" at line ").next().unwrap_or_default();
                let mut message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
                if message.len() < text.len() && !text[message.len()..].starts_with(" at line ") {
                    message.push_str("...");
                }
                ApiError::invalid(field, message)
            })
    }
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
