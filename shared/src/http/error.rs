//! HTTP errors: a stable `code`, a message safe to show, and the offending `field` when known.
//! Internal error text never reaches a client.

use super::api::{ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::PortError;

/// An error answer of the API: `{"error":{"code","message","field"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, if any.
    pub field: Option<String>,
    /// Seconds after which a retry makes sense (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 for a bad field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
            field: Some(field.into()),
            retry_after: None,
        }
    }

    /// Any status with a code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials: send Authorization: Bearer <RECALL_API_KEY>",
        )
    }

    /// 413: the body is over [`super::BODY_LIMIT`]; names the `body`.
    pub fn too_large() -> Self {
        Self {
            field: Some("body".into()),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", super::BODY_LIMIT),
            )
        }
    }

    /// 415: the body is not JSON; names the `content-type` header.
    pub fn not_json() -> Self {
        Self {
            field: Some("content-type".into()),
            ..Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            )
        }
    }

    /// 429: the caller's rate limit is spent; `Retry-After` says when it may call again.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this API key: retry after {retry_after} s"),
            )
        }
    }

    /// 503 telling the caller to retry later; the dependency's details are only logged.
    pub fn unavailable(what: &str, error: &PortError) -> Self {
        tracing::warn!(error = %error, what, "dependency unavailable");
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{what} is temporarily unavailable, retry later"),
            )
        }
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        if e.is_retryable() {
            Self::unavailable("a dependency", &e)
        } else {
            tracing::error!(error = %e, "dependency rejected a request");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server logs",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
