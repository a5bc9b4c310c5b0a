//! A typed Rust client of the HTTP API (for bots written in Rust, and for tests).
//!
//! The request and answer types are the server's own ([`crate::http::api`]), so the client and
//! the OpenAPI document cannot disagree with the handlers. An error answer becomes
//! [`ClientError::Api`] with the server's `code`, `message` and `field`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), recall_shared::client::ClientError> {
//! use recall_shared::client::RecallClient;
//! let recall = RecallClient::new("http://127.0.0.1:8080", Some("secret".into()))?;
//! let prompt = recall
//!     .enhance_system_prompt("kabir", "meher", "You are Meher.", Some("how is my dog?"), None)
//!     .await?;
//! println!("{}", prompt.system_prompt);
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::api::{
    AppendResponse, CheckBatchResponse, ContextParams, ContextResponse, EnhanceRequest,
    EnhanceResponse, EraseResponse, ErrorBody, HealthResponse, NewMessage, SearchParams,
    SearchResponse, StatsResponse,
};

/// Default time limit of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's stable code (`invalid_request`, `unauthorized`, `unavailable`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// The request field at fault, if any.
        field: Option<String>,
        /// Seconds to wait before retrying (`Retry-After`), on a 503 or a 429.
        retry_after: Option<u64>,
    },
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer ({status}): {detail}")]
    Unexpected {
        /// HTTP status.
        status: StatusCode,
        /// What could not be read.
        detail: String,
    },
    /// The request did not get an answer (connection, timeout, bad base URL).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The base URL cannot carry paths.
    #[error("invalid base URL: {0}")]
    BaseUrl(String),
}

impl ClientError {
    /// True when the same call may succeed later (503, 429, 5xx other than 500, transport).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } | Self::Unexpected { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || (status.is_server_error() && *status != StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::Transport(e) => e.is_timeout() || e.is_connect(),
            Self::BaseUrl(_) => false,
        }
    }
}

/// A client of one recall server.
#[derive(Debug, Clone)]
pub struct RecallClient {
    base: Url,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl RecallClient {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`), sending `api_key`
    /// as a bearer token when given.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .build()?;
        Self::with_http(base_url, api_key, http)
    }

    /// The same over a `reqwest::Client` of your own (timeouts, pooling, proxies).
    pub fn with_http(
        base_url: &str,
        api_key: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, ClientError> {
        let base = Url::parse(base_url).map_err(|e| ClientError::BaseUrl(e.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BaseUrl(format!(
                "{base_url} cannot carry paths"
            )));
        }
        Ok(Self {
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            http,
        })
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let req = self.http.request(method, self.url(segments));
        match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, ClientError> {
        let resp = req.send().await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status,
                detail: e.to_string(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                field: body.error.field,
                retry_after,
            }),
            Err(_) => Err(ClientError::Unexpected {
                status,
                detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        Self::send(self.request(Method::POST, segments).json(body)).await
    }

    /// Stores a chat message (`POST /memory/messages/{user_id}/{character_name}`).
    pub async fn append_message(
        &self,
        user_id: &str,
        character_name: &str,
        message: &NewMessage,
    ) -> Result<AppendResponse, ClientError> {
        self.post(&["memory", "messages", user_id, character_name], message)
            .await
    }

    /// The unsynced count; queues a batch when one is due.
    pub async fn check_batch(
        &self,
        user_id: &str,
        character_name: &str,
    ) -> Result<CheckBatchResponse, ClientError> {
        let req = self.request(
            Method::POST,
            &["memory", "check-batch", user_id, character_name],
        );
        Self::send(req).await
    }

    /// Semantic search of the pair's memories (`limit`: 1-50, 5 when `None`).
    pub async fn search(
        &self,
        user_id: &str,
        character_name: &str,
        query: &str,
        limit: Option<usize>,
    ) -> Result<SearchResponse, ClientError> {
        let params = SearchParams {
            query: query.to_owned(),
            limit,
            include_superseded: None,
        };
        let req = self
            .request(Method::GET, &["memory", "search", user_id, character_name])
            .query(&params);
        Self::send(req).await
    }

    /// A context block for the bot, ranked against `message` (or the user's recent messages),
    /// within `max_tokens` (800 when `None`).
    pub async fn get_conversation_context(
        &self,
        user_id: &str,
        character_name: &str,
        message: Option<&str>,
        max_tokens: Option<usize>,
    ) -> Result<ContextResponse, ClientError> {
        let params = ContextParams {
            message: message.map(str::to_owned),
            max_tokens,
        };
        let req = self
            .request(Method::GET, &["memory", "context", user_id, character_name])
            .query(&params);
        Self::send(req).await
    }

    /// `base_system_prompt` with the pair's context appended, fenced as data.
    pub async fn enhance_system_prompt(
        &self,
        user_id: &str,
        character_name: &str,
        base_system_prompt: &str,
        message: Option<&str>,
        max_tokens: Option<usize>,
    ) -> Result<EnhanceResponse, ClientError> {
        let body = EnhanceRequest {
            message: message.map(str::to_owned),
            base_system_prompt: base_system_prompt.to_owned(),
            max_tokens,
        };
        self.post(
            &["memory", "enhance-prompt", user_id, character_name],
            &body,
        )
        .await
    }

    /// Message, memory, batch and token counts of the pair.
    pub async fn stats(
        &self,
        user_id: &str,
        character_name: &str,
    ) -> Result<StatsResponse, ClientError> {
        let req = self.request(Method::GET, &["memory", "stats", user_id, character_name]);
        Self::send(req).await
    }

    /// Erases the pair's memories and batch records.
    pub async fn erase_pair(
        &self,
        user_id: &str,
        character_name: &str,
    ) -> Result<EraseResponse, ClientError> {
        Self::send(self.request(Method::DELETE, &["memory", user_id, character_name])).await
    }

    /// Erases a user's memories and batch records for every character.
    pub async fn erase_user(&self, user_id: &str) -> Result<EraseResponse, ClientError> {
        Self::send(self.request(Method::DELETE, &["memory", user_id])).await
    }

    /// Each component's state. A degraded server (503) is an answer here, not an error.
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        let resp = self
            .request(Method::GET, &["memory", "health"])
            .send()
            .await?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE {
            let bytes = resp.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status,
                detail: e.to_string(),
            })
        } else {
            Err(ClientError::Unexpected {
                status,
                detail: "not a health answer".into(),
            })
        }
    }

    /// The server's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        Self::send(self.request(Method::GET, &["openapi.json"])).await
    }
}

#[cfg(test)]
mod tests;
