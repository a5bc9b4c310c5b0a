//! A fake OpenAI-compatible server for offline tests: a real HTTP server on `127.0.0.1:0` (axum)
//! speaking the wire format of `POST /v1/chat/completions` and `POST /v1/embeddings`.
//!
//! - **Scriptable**: each route has a queue of [`Scripted`] replies (status, headers, body,
//!   delay); when its queue is empty, the route falls back to its default behaviour.
//! - **Default chat reply**: one memory per non-blank user message found in the request, as the
//!   structured JSON `adapters::openai` asks for. The fake reads the conversation format of that
//!   adapter: one JSON object per line with `id`, `role` and `text`.
//! - **Default embeddings reply**: a deterministic unit vector per input, derived from a hash of
//!   the text, of the requested `dimensions` (1536 when absent).
//! - **Recorded**: every request (route, path, headers, JSON body, arrival time), for assertions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// Dimension of a default embedding when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 1536;

/// The two endpoints the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

/// The body of a scripted reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedBody {
    /// What the route answers when nothing is scripted.
    Default,
    /// A JSON document.
    Json(Value),
    /// Raw text, sent as is (for malformed replies).
    Raw(String),
}

/// One scripted reply: status, extra headers, body, and a delay before answering.
#[derive(Debug, Clone, PartialEq)]
pub struct Scripted {
    /// HTTP status code.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: ScriptedBody,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Scripted {
    /// The route's default behaviour (useful with a delay or a header).
    pub fn default_reply() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: ScriptedBody::Default,
            delay: Duration::ZERO,
        }
    }

    /// A JSON body with this status.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: ScriptedBody::Json(body),
            ..Self::default_reply()
        }
    }

    /// A raw body with this status.
    pub fn raw(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: ScriptedBody::Raw(body.into()),
            ..Self::default_reply()
        }
    }

    /// An OpenAI error envelope (`{"error": {...}}`) with this status.
    pub fn error(status: u16, message: &str, code: Option<&str>) -> Self {
        Self::json(
            status,
            json!({"error": {"message": message, "type": "invalid_request_error",
                             "param": null, "code": code}}),
        )
    }

    /// A successful chat completion whose message content is exactly `content`.
    pub fn chat_content(content: &str) -> Self {
        Self::json(200, chat_envelope("gpt-4o-mini", content, 100, 20))
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Waits this long before answering.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Which endpoint.
    pub route: Route,
    /// The request path (e.g. `/v1/embeddings`).
    pub path: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<Route, VecDeque<Scripted>>,
    defaults: HashMap<Route, Scripted>,
    requests: Vec<RecordedRequest>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake server; it stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    inner: Shared,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeOpenAi {
    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(
                    |State(s): State<Shared>, headers: HeaderMap, body: Bytes| async move {
                        handle(s, Route::ChatCompletions, headers, body).await
                    },
                ),
            )
            .route(
                "/v1/embeddings",
                post(
                    |State(s): State<Shared>, headers: HeaderMap, body: Bytes| async move {
                        handle(s, Route::Embeddings, headers, body).await
                    },
                ),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            inner,
            shutdown: Some(tx),
        }
    }

    /// The base URL to configure a client with (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply for the next request to `route`.
    pub fn push(&self, route: Route, reply: Scripted) {
        self.lock()
            .queues
            .entry(route)
            .or_default()
            .push_back(reply);
    }

    /// Queues the same reply `n` times.
    pub fn push_n(&self, route: Route, n: usize, reply: Scripted) {
        for _ in 0..n {
            self.push(route, reply.clone());
        }
    }

    /// The reply of `route` once its queue is empty (default: [`Scripted::default_reply`]).
    pub fn set_default(&self, route: Route, reply: Scripted) {
        self.lock().defaults.insert(route, reply);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests received by one route, in arrival order.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }

    /// How many requests one route received.
    pub fn calls(&self, route: Route) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(inner: Shared, route: Route, headers: HeaderMap, body: Bytes) -> Response {
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let recorded = RecordedRequest {
        route,
        path: match route {
            Route::ChatCompletions => "/v1/chat/completions".into(),
            Route::Embeddings => "/v1/embeddings".into(),
        },
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json_body.clone(),
        at: Instant::now(),
    };
    let scripted = {
        let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.requests.push(recorded);
        let queued = inner.queues.get_mut(&route).and_then(VecDeque::pop_front);
        queued
            .or_else(|| inner.defaults.get(&route).cloned())
            .unwrap_or_else(Scripted::default_reply)
    };
    if !scripted.delay.is_zero() {
        tokio::time::sleep(scripted.delay).await;
    }
    let body = match scripted.body {
        ScriptedBody::Default => match route {
            Route::ChatCompletions => default_chat_reply(&json_body).to_string(),
            Route::Embeddings => default_embeddings_reply(&json_body).to_string(),
        },
        ScriptedBody::Json(v) => v.to_string(),
        ScriptedBody::Raw(s) => s,
    };
    let mut response = (
        StatusCode::from_u16(scripted.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in scripted.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// A chat completion envelope around `content`, as OpenAI returns it.
pub fn chat_envelope(model: &str, content: &str, prompt_tokens: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_730_656_800u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion
        }
    })
}

/// The default chat reply: one memory per non-blank user message of the request's conversation
/// (lines that are JSON objects with `id`, `role: "user"` and `text`), category `other`,
/// importance 3, sourced from that message. Token counts are a quarter of the characters.
pub fn default_chat_reply(request: &Value) -> Value {
    let mut memories = Vec::new();
    let mut prompt_chars = 0usize;
    for message in request["messages"].as_array().into_iter().flatten() {
        let Some(content) = message["content"].as_str() else {
            continue;
        };
        prompt_chars += content.chars().count();
        for line in content.lines() {
            let line = line.trim();
            if !line.starts_with('{') {
                continue;
            }
            let Ok(obj) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(id), Some("user"), Some(text)) = (
                obj["id"].as_str(),
                obj["role"].as_str(),
                obj["text"].as_str(),
            ) else {
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            let short: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let short: String = short.chars().take(200).collect();
            memories.push(json!({
                "text": format!("User said: {short}"),
                "category": "other",
                "importance": 3,
                "event_time": null,
                "source_message_ids": [id],
                "supersedes": []
            }));
        }
    }
    let content = json!({ "memories": memories }).to_string();
    let model = request["model"].as_str().unwrap_or("gpt-4o-mini");
    let completion = content.chars().count() / 4;
    chat_envelope(
        model,
        &content,
        (prompt_chars / 4) as u64,
        completion as u64,
    )
}

/// The default embeddings reply: one [`fake_embedding`] per input, in order.
pub fn default_embeddings_reply(request: &Value) -> Value {
    let dims = request["dimensions"]
        .as_u64()
        .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => Vec::new(),
    };
    let tokens: usize = inputs.iter().map(|t| t.chars().count() / 4 + 1).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": fake_embedding(t, dims)}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": request["model"].as_str().unwrap_or("text-embedding-3-small"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    })
}

/// A deterministic unit vector of `dims` values derived from a SHA-256 of `text`.
pub fn fake_embedding(text: &str, dims: usize) -> Vec<f32> {
    if dims == 0 {
        return Vec::new();
    }
    let digest = Sha256::digest(text.as_bytes());
    let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    crate::testkit::memory_store::unit_vector(dims, seed)
}
