//! Router tests with `oneshot`: auth, validation, and the shape of every answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::adapters::memory_bus::{BusReceivers, in_process_bus};
use crate::adapters::sqlite::SqliteMessageStore;
use crate::batching::BatchRules;
use crate::domain::{Category, Memory, Pair};
use crate::ports::MemoryPoint;
use crate::testkit::doubles::{HashEmbedder, InMemoryMemoryStore};

struct Rig {
    app: Router,
    messages: SqliteMessageStore,
    memories: InMemoryMemoryStore,
    embedder: HashEmbedder,
    rx: BusReceivers,
}

fn rig(api_key: Option<&str>) -> Rig {
    rig_with(api_key, None)
}

fn rig_with(api_key: Option<&str>, webhook_secret: Option<&str>) -> Rig {
    rig_limited(api_key, webhook_secret, None)
}

fn rig_limited(
    api_key: Option<&str>,
    webhook_secret: Option<&str>,
    rate_limit: Option<RateLimit>,
) -> Rig {
    let memories = InMemoryMemoryStore::default();
    let messages = SqliteMessageStore::in_memory().unwrap();
    let embedder = HashEmbedder::new(32);
    let (bus, rx) = in_process_bus(1000);
    let state = AppState {
        messages: Arc::new(messages.clone()),
        memories: Arc::new(memories.clone()),
        embedder: Arc::new(embedder.clone()),
        bus: Arc::new(bus),
        metrics: Arc::new(Metrics::new()),
        rules: BatchRules::default(),
        extractor_name: "offline".into(),
        api_key: api_key.map(Arc::from),
        webhook_secret: webhook_secret.map(Arc::from),
        checks: Vec::new(),
        rate_limiter: rate_limit.map(|l| Arc::new(RateLimiter::new(l))),
    };
    Rig {
        app: router(state),
        messages,
        memories,
        embedder,
        rx,
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    raw(app, req).await
}

async fn raw(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

fn field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn every_guarded_route_requires_the_key() {
    let r = rig(Some("s3cret"));
    let routes = [
        (
            "POST",
            "/firebase/message-created",
            Some(json!({"user_id":"u1","character_name":"meher"})),
        ),
        (
            "POST",
            "/memory/messages/u1/meher",
            Some(json!({"role":"user","text":"hi"})),
        ),
        ("POST", "/memory/check-batch/u1/meher", None),
        ("GET", "/memory/search/u1/meher?query=dog", None),
        ("GET", "/memory/stats/u1/meher", None),
        ("GET", "/memory/context/u1/meher", None),
        ("DELETE", "/memory/u1/meher", None),
        ("DELETE", "/memory/u1", None),
        (
            "POST",
            "/memory/enhance-prompt/u1/meher",
            Some(json!({"base_system_prompt":"x"})),
        ),
    ];
    for (m, uri, body) in &routes {
        for key in [None, Some("wrong"), Some("s3cret-but-longer")] {
            let (s, v) = call(&r.app, m, uri, body.clone(), key).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri} with {key:?}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        let (s, _) = call(&r.app, m, uri, body.clone(), Some("s3cret")).await;
        assert!(s.is_success(), "{m} {uri} with the key: {s}");
    }
    let (s, v) = call(&r.app, "GET", "/memory/health", None, None).await;
    assert_eq!(s, StatusCode::OK, "health needs no key");
    assert_eq!(v["status"], "ok");
    assert_eq!(
        call(&r.app, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_ids_are_rejected_naming_the_field() {
    let r = rig(None);
    let long = "a".repeat(10 * 1024);
    let cases = [
        ("/memory/stats/a%2Fb/meher", "user_id"),
        ("/memory/stats/u1/me%20her", "character_name"),
        ("/memory/stats/u1/m%D0%B5her", "character_name"), // Cyrillic look-alike
        ("/memory/stats/../meher", "<route>"),
        (&format!("/memory/stats/{long}/meher"), "user_id"),
        ("/memory/stats/__x__/meher", "user_id"),
        ("/memory/stats/%FF/meher", "user_id"), // not UTF-8 once decoded
        ("/memory/stats/u1/%C3", "character_name"),
        ("/memory/search/u1/m%00?query=x", "character_name"),
    ];
    for (uri, want) in cases {
        let (s, v) = call(&r.app, "GET", uri, None, None).await;
        if want == "<route>" {
            assert!(s.is_client_error(), "{uri}: {s}");
            continue;
        }
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(field(&v), want, "{uri}: {v}");
    }
    let (s, v) = call(
        &r.app,
        "POST",
        "/firebase/message-created",
        Some(json!({"user_id":"a/../b","character_name":"meher"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(field(&v), "user_id", "{v}");
}

#[tokio::test]
async fn bodies_are_validated() {
    let r = rig(None);
    let uri = "/memory/messages/u1/meher";
    let (s, v) = call(&r.app, "POST", uri, Some(json!({"text":"hi"})), None).await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "role"), "{v}");
    let (s, v) = call(
        &r.app,
        "POST",
        uri,
        Some(json!({"role":"bot","text":"hi"})),
        None,
    )
    .await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "role"), "{v}");
    let (s, v) = call(
        &r.app,
        "POST",
        uri,
        Some(json!({"role":"user","text":5})),
        None,
    )
    .await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "text"), "{v}");
    let (s, v) = call(
        &r.app,
        "POST",
        uri,
        Some(json!({"role":"user","text":"x","created_at":"yesterday"})),
        None,
    )
    .await;
    assert_eq!(
        (s, field(&v)),
        (StatusCode::BAD_REQUEST, "created_at"),
        "{v}"
    );
    let (s, v) = call(
        &r.app,
        "POST",
        uri,
        Some(json!({"role":"user","text":"x","channel":"a b"})),
        None,
    )
    .await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "channel"), "{v}");
    let (s, v) = call(
        &r.app,
        "POST",
        uri,
        Some(json!({"role":"user","text":"x","surprise":1})),
        None,
    )
    .await;
    assert_eq!(
        (s, field(&v)),
        (StatusCode::BAD_REQUEST, "surprise"),
        "unknown fields are rejected by name: {v}"
    );

    let req = |ct: &str, body: String| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap()
    };
    let (s, v) = raw(&r.app, req("text/plain", "{}".into())).await;
    assert_eq!(
        (s, v["error"]["code"].as_str(), field(&v)),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type"),
            "content-type"
        )
    );
    let (s, v) = raw(&r.app, req("application/json", "{not json".into())).await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "body"), "{v}");
    let big = json!({"role":"user","text":"x".repeat(BODY_LIMIT)}).to_string();
    let (s, v) = raw(&r.app, req("application/json", big)).await;
    assert_eq!(
        (s, field(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body"),
        "{v}"
    );
    // Nesting deeper than the parser's recursion limit is a 400, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, v) = raw(&r.app, req("application/json", deep)).await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "body"), "{v}");
    // A huge bad value is not echoed back whole.
    let huge = json!({"base_system_prompt":"x","max_tokens":"y".repeat(100_000)});
    let (s, v) = call(
        &r.app,
        "POST",
        "/memory/enhance-prompt/u1/meher",
        Some(huge),
        None,
    )
    .await;
    assert_eq!(
        (s, field(&v)),
        (StatusCode::BAD_REQUEST, "max_tokens"),
        "{v}"
    );
    assert!(v.to_string().len() < 1000, "{}", v.to_string().len());
}

#[tokio::test]
async fn query_parameters_are_validated() {
    let r = rig(None);
    let long = "q".repeat(2001);
    for (uri, want) in [
        ("/memory/search/u1/meher".to_owned(), "query"),
        ("/memory/search/u1/meher?query=%20".to_owned(), "query"),
        (format!("/memory/search/u1/meher?query={long}"), "query"),
        (
            "/memory/search/u1/meher?query=dog&limit=0".to_owned(),
            "limit",
        ),
        (
            "/memory/search/u1/meher?query=dog&limit=51".to_owned(),
            "limit",
        ),
        (
            "/memory/search/u1/meher?query=dog&limit=ten".to_owned(),
            "limit",
        ),
        (
            "/memory/context/u1/meher?max_tokens=10".to_owned(),
            "max_tokens",
        ),
    ] {
        let (s, v) = call(&r.app, "GET", &uri, None, None).await;
        assert_eq!(
            (s, field(&v)),
            (StatusCode::BAD_REQUEST, want),
            "{uri}: {v}"
        );
    }
}

#[tokio::test]
async fn append_is_idempotent_and_emits_one_event() {
    let mut r = rig(None);
    let body = json!({"message_id":"m1","role":"user","text":"I adopted a cat named Miso","channel":"whatsapp"});
    let (s, v) = call(
        &r.app,
        "POST",
        "/memory/messages/u1/meher",
        Some(body.clone()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v, json!({"message_id":"m1","created":true}));
    let (s, v) = call(
        &r.app,
        "POST",
        "/memory/messages/u1/meher",
        Some(body),
        None,
    )
    .await;
    assert_eq!((s, v["created"].as_bool()), (StatusCode::OK, Some(false)));
    let ev = r.rx.events.try_recv().unwrap();
    assert_eq!(ev.payload.message_id.unwrap().as_str(), "m1");
    assert!(
        r.rx.events.try_recv().is_err(),
        "a duplicate append emits no second event"
    );
    let (_, stats) = call(&r.app, "GET", "/memory/stats/u1/meher", None, None).await;
    assert_eq!(
        stats["messages"],
        json!({"total":1,"synced":0,"unsynced":1})
    );
    assert_eq!(stats["extractor"], "offline");
}

#[tokio::test]
async fn check_batch_triggers_when_due() {
    let mut r = rig(None);
    for i in 0..25 {
        let b = json!({"message_id":format!("m{i}"),"role":"user","text":"hello"});
        call(&r.app, "POST", "/memory/messages/u1/meher", Some(b), None).await;
        if i == 23 {
            let (_, v) = call(&r.app, "POST", "/memory/check-batch/u1/meher", None, None).await;
            assert_eq!(
                (v["unsynced"].as_u64(), v["triggered"].as_bool()),
                (Some(24), Some(false))
            );
        }
    }
    let (s, v) = call(&r.app, "POST", "/memory/check-batch/u1/meher", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["unsynced"], 25);
    assert_eq!(v["threshold"], 25);
    assert_eq!(v["triggered"], true);
    assert_eq!(v["reason"], "threshold");
    assert_eq!(
        r.rx.jobs.try_recv().unwrap().payload,
        Pair::parse("u1", "meher").unwrap()
    );
}

#[tokio::test]
async fn superseded_memories_leave_search_and_context_but_stay_for_history() {
    let r = rig(None);
    r.memories.ensure_collection(32).await.unwrap();
    let pair = Pair::parse("alice", "meher").unwrap();
    let memory = |text: &str| Memory {
        id: uuid::Uuid::new_v4(),
        pair: pair.clone(),
        text: text.into(),
        category: Category::Location,
        importance: 3,
        created_at: chrono::Utc::now(),
        event_time: None,
        source_message_ids: vec!["m1".into()],
        batch_id: "b1".into(),
        superseded_by: None,
    };
    let new = memory("Alice lives in Bengaluru now, HSR Layout");
    let mut old = memory("Alice lives in Baner, Pune");
    old.superseded_by = Some(new.id);
    let points: Vec<MemoryPoint> = [old, new]
        .into_iter()
        .map(|m| MemoryPoint {
            vector: r.embedder.vector(&m.text),
            memory: m,
        })
        .collect();
    r.memories.upsert(&points).await.unwrap();
    let texts = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["text"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, v) = call(
        &r.app,
        "GET",
        "/memory/search/alice/meher?query=where%20does%20alice%20live",
        None,
        None,
    )
    .await;
    assert_eq!(texts(&v), ["Alice lives in Bengaluru now, HSR Layout"]);
    let (_, v) = call(
        &r.app,
        "GET",
        "/memory/search/alice/meher?query=where%20does%20alice%20live&include_superseded=true",
        None,
        None,
    )
    .await;
    assert_eq!(texts(&v).len(), 2, "kept for history: {v}");
    let (_, v) = call(
        &r.app,
        "GET",
        "/memory/context/alice/meher?message=where%20do%20i%20live",
        None,
        None,
    )
    .await;
    let ctx = v["context"].as_str().unwrap();
    assert!(ctx.contains("Bengaluru") && !ctx.contains("Pune"), "{ctx}");
}

#[tokio::test]
async fn search_and_context_never_cross_tenants() {
    let r = rig(None);
    r.memories.ensure_collection(32).await.unwrap();
    let mut points = Vec::new();
    for (user, text) in [
        ("alice", "Alice has a dog named Bruno"),
        ("bob", "Bob has a dog named Rex"),
    ] {
        let memory = Memory {
            id: uuid::Uuid::new_v4(),
            pair: Pair::parse(user, "meher").unwrap(),
            text: text.into(),
            category: Category::Relationship,
            importance: 4,
            created_at: chrono::Utc::now(),
            event_time: None,
            source_message_ids: vec!["m1".into()],
            batch_id: "b1".into(),
            superseded_by: None,
        };
        points.push(MemoryPoint {
            vector: r.embedder.vector(text),
            memory,
        });
    }
    r.memories.upsert(&points).await.unwrap();
    let (s, v) = call(
        &r.app,
        "GET",
        "/memory/search/alice/meher?query=dog%20named&limit=50",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 1);
    assert_eq!(v["results"][0]["text"], "Alice has a dog named Bruno");
    assert_eq!(v["results"][0]["source_message_ids"], json!(["m1"]));
    let (_, v) = call(
        &r.app,
        "GET",
        "/memory/context/alice/meher?message=my%20dog",
        None,
        None,
    )
    .await;
    let ctx = v["context"].as_str().unwrap();
    assert!(ctx.contains("Bruno") && !ctx.contains("Rex"), "{ctx}");
    let (_, v) = call(
        &r.app,
        "GET",
        "/memory/search/carol/meher?query=dog",
        None,
        None,
    )
    .await;
    assert_eq!(v["count"], 0, "an unknown user sees nothing");
    let (s, v) = call(
        &r.app,
        "POST",
        "/memory/enhance-prompt/alice/meher",
        Some(json!({"message":"how is my dog?","base_system_prompt":"You are Meher."})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let p = v["system_prompt"].as_str().unwrap();
    assert!(
        p.starts_with("You are Meher.") && p.contains("Bruno") && !p.contains("Rex"),
        "{p}"
    );
    assert_eq!(v["memories_used"], 1);
}

#[tokio::test]
async fn metrics_use_route_templates_not_ids() {
    let r = rig(None);
    call(
        &r.app,
        "GET",
        "/memory/stats/secret_user_42/meher",
        None,
        None,
    )
    .await;
    let resp = r
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"recall_http_requests_total{method="GET",route="/memory/stats/{user_id}/{character_name}",status="200"} 1"#),
        "{text}"
    );
    assert!(!text.contains("secret_user_42"));
}

#[test]
fn exposure_check() {
    let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let any: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    assert!(check_exposure(lo, None).is_ok());
    assert!(
        check_exposure(any, None)
            .unwrap_err()
            .contains("RECALL_API_KEY")
    );
    assert!(check_exposure(any, Some("")).is_err());
    assert!(check_exposure(any, Some("k")).is_ok());
}

#[tokio::test]
async fn webhook_takes_its_secret_as_bearer_or_signature() {
    let mut r = rig_with(Some("api-key"), Some("hook-secret"));
    let body = json!({"user_id":"u1","character_name":"meher","message_id":"m1"}).to_string();
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut req =
            Request::post("/firebase/message-created").header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.body(Body::from(body)).unwrap()
    };
    let (s, _) = raw(&r.app, send(vec![], body.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no credentials");
    let (s, _) = raw(
        &r.app,
        send(
            vec![("authorization", "Bearer api-key".into())],
            body.clone(),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the API key is not the webhook secret"
    );
    let (s, _) = raw(
        &r.app,
        send(
            vec![("authorization", "Bearer hook-secret".into())],
            body.clone(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let good = sign(b"hook-secret", body.as_bytes());
    assert!(good.starts_with("sha256=") && good.len() == 7 + 64);
    let (s, v) = raw(
        &r.app,
        send(vec![(SIGNATURE_HEADER, good.clone())], body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let tampered = body.replace("m1", "m2");
    let (s, _) = raw(&r.app, send(vec![(SIGNATURE_HEADER, good)], tampered)).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a signature covers the exact body"
    );
    let wrong = sign(b"other", body.as_bytes());
    let (s, _) = raw(&r.app, send(vec![(SIGNATURE_HEADER, wrong)], body.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        assert_eq!(
            r.rx.events
                .try_recv()
                .unwrap()
                .payload
                .message_id
                .unwrap()
                .as_str(),
            "m1"
        );
    }
    assert!(
        r.rx.events.try_recv().is_err(),
        "only the two accepted calls published"
    );
}

#[tokio::test]
async fn erasure_deletes_one_pair_or_every_character_of_a_user() {
    let r = rig(Some("k"));
    r.memories.ensure_collection(32).await.unwrap();
    let mut points = Vec::new();
    for (user, character) in [("alice", "meher"), ("alice", "luna"), ("bob", "meher")] {
        for i in 0..3 {
            let text = format!("{user} {character} memory {i}");
            points.push(MemoryPoint {
                vector: r.embedder.vector(&text),
                memory: Memory {
                    id: uuid::Uuid::new_v4(),
                    pair: Pair::parse(user, character).unwrap(),
                    text,
                    category: Category::Other,
                    importance: 2,
                    created_at: chrono::Utc::now(),
                    event_time: None,
                    source_message_ids: vec![],
                    batch_id: "b".into(),
                    superseded_by: None,
                },
            });
        }
    }
    r.memories.upsert(&points).await.unwrap();
    // A held batch with its saved extraction (the extraction cache) for alice/meher.
    let pair = Pair::parse("alice", "meher").unwrap();
    let msgs: Vec<_> = (0..25)
        .map(|i| crate::testkit::message_store::message(&pair, i))
        .collect();
    for m in &msgs {
        r.messages.append(m).await.unwrap();
    }
    let plan = crate::ports::BatchPlan {
        batch_id: crate::batching::batch_id(&msgs),
        messages: msgs.clone(),
    };
    r.messages
        .claim_batch(&pair, &plan, "w", Duration::from_secs(60))
        .await
        .unwrap();
    let cached = crate::domain::Extraction {
        memories: Vec::new(),
        usage: crate::domain::TokenUsage::default(),
        extractor: "offline".into(),
    };
    r.messages
        .save_extraction(&pair, &plan.batch_id, "w", &cached)
        .await
        .unwrap();
    let (s, v) = call(&r.app, "DELETE", "/memory/alice/meher", None, Some("k")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["memories_deleted"], 3);
    assert_eq!(v["batches_deleted"], 1, "batch record and extraction cache");
    assert_eq!(r.messages.open_batch(&pair).await.unwrap(), None);
    let (_, v) = call(&r.app, "GET", "/memory/stats/alice/luna", None, Some("k")).await;
    assert_eq!(v["memories"]["total"], 3, "the other character is kept");
    let (s, v) = call(&r.app, "DELETE", "/memory/alice", None, Some("k")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["memories_deleted"], 3);
    let (_, v) = call(&r.app, "GET", "/memory/stats/bob/meher", None, Some("k")).await;
    assert_eq!(v["memories"]["total"], 3, "other users are untouched");
    let (s, v) = call(&r.app, "DELETE", "/memory/a%2Fb", None, Some("k")).await;
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, "user_id"));
}

#[tokio::test]
async fn openapi_json_is_served_without_the_key() {
    let r = rig(Some("k"));
    let (status, doc) = call(&r.app, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every documented operation is routed: none falls through to the 404 fallback or a 405.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let uri = path
                .replace("{user_id}", "u1")
                .replace("{character_name}", "meher");
            let (status, body) = call(&r.app, &method.to_uppercase(), &uri, None, None).await;
            assert_ne!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
}

/// A bus whose ping never answers (a broker that accepts the TCP connection and says nothing).
struct SilentBus;

#[async_trait::async_trait]
impl EventBus for SilentBus {
    async fn publish_event(&self, _: &crate::ports::MessageEvent) -> crate::PortResult<()> {
        std::future::pending().await
    }
    async fn publish_batch_job(&self, _: &Pair) -> crate::PortResult<()> {
        std::future::pending().await
    }
    async fn ping(&self) -> crate::PortResult<()> {
        std::future::pending().await
    }
}

fn state_on(
    memories: &InMemoryMemoryStore,
    bus: Arc<dyn EventBus>,
    checks: Vec<ReadinessCheck>,
) -> AppState {
    AppState {
        messages: Arc::new(SqliteMessageStore::in_memory().unwrap()),
        memories: Arc::new(memories.clone()),
        embedder: Arc::new(HashEmbedder::new(32)),
        bus,
        metrics: Arc::new(Metrics::new()),
        rules: BatchRules::default(),
        extractor_name: "openai:gpt-4o-mini".into(),
        api_key: None,
        webhook_secret: None,
        checks,
        rate_limiter: None,
    }
}

#[tokio::test]
async fn liveness_ignores_dependencies_and_readiness_names_each_one_down() {
    let memories = InMemoryMemoryStore::default();
    let (bus, rx) = in_process_bus(10);
    drop(rx); // the worker loops are gone: the bus is down
    memories.ping_faults.fail_next(
        2,
        crate::PortError::unavailable("qdrant", "connection refused"),
    );
    let app = router(state_on(&memories, Arc::new(bus), Vec::new()));

    let (s, v) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    for path in ["/readyz", "/memory/health"] {
        let (s, v) = call(&app, "GET", path, None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {v}");
        assert_eq!(v["status"], "degraded");
        let c = &v["components"];
        assert_eq!(c["message_store"]["status"], "ok", "{v}");
        assert!(c["message_store"]["latency_ms"].is_u64(), "{v}");
        assert_eq!(c["memory_store"]["status"], "down", "{v}");
        assert_eq!(c["memory_store"]["kind"], "unavailable", "{v}");
        assert_eq!(c["event_bus"]["status"], "down", "{v}");
        assert_eq!(c["extractor"]["mode"], "openai:gpt-4o-mini", "{v}");
        assert_eq!(c["embedder"]["dimension"], 32, "{v}");
        let text = v.to_string();
        assert!(
            !text.contains("connection refused"),
            "no error text: {text}"
        );
    }
    // The memory store is back; the bus is still down.
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["components"]["memory_store"]["status"], "ok", "{v}");
    assert_eq!(
        call(&app, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_dependency_that_never_answers_is_down_within_the_deadline() {
    let app = router(state_on(
        &InMemoryMemoryStore::default(),
        Arc::new(SilentBus),
        Vec::new(),
    ));
    let started = std::time::Instant::now();
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["components"]["event_bus"]["status"], "down", "{v}");
    assert_eq!(v["components"]["memory_store"]["status"], "ok", "{v}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn extra_checks_decide_readiness_too() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe_up = up.clone();
    let consumers = ReadinessCheck {
        name: "consumers",
        probe: Arc::new(move || {
            if probe_up.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err(crate::PortError::unavailable("rabbitmq", "not connected"))
            }
        }),
    };
    let (bus, _rx) = in_process_bus(10);
    let app = router(state_on(
        &InMemoryMemoryStore::default(),
        Arc::new(bus),
        vec![consumers],
    ));
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v["components"]["consumers"],
        json!({"status": "down", "kind": "unavailable"})
    );
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["components"]["consumers"]["status"], "ok");
}

#[tokio::test]
async fn ingest_events_are_counted_by_outcome_and_rejection_reason() {
    let memories = InMemoryMemoryStore::default();
    let (bus, rx) = in_process_bus(10);
    let mut state = state_on(&memories, Arc::new(bus), Vec::new());
    state.webhook_secret = Some(Arc::from("hook-secret"));
    let metrics = state.metrics.clone();
    let app = router(state);
    let event = json!({"user_id": "u_counted", "character_name": "meher"});
    let hook = |body: Option<Value>, key: Option<&'static str>| {
        let app = app.clone();
        async move { call(&app, "POST", "/firebase/message-created", body, key).await }
    };
    assert_eq!(
        hook(Some(event.clone()), Some("hook-secret")).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        hook(Some(event.clone()), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        hook(Some(json!({"user_id": "u_counted"})), Some("hook-secret"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let huge = json!({"user_id": "x".repeat(BODY_LIMIT), "character_name": "meher"});
    assert_eq!(
        hook(Some(huge), Some("hook-secret")).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let message = json!({"message_id": "m1", "role": "user", "text": "hi"});
    let append = |app: Router, body: Value| async move {
        call(
            &app,
            "POST",
            "/memory/messages/u_counted/meher",
            Some(body),
            None,
        )
        .await
    };
    assert_eq!(
        append(app.clone(), message.clone()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(append(app.clone(), message.clone()).await.0, StatusCode::OK);
    drop(rx); // the bus is down: the webhook answers 503
    assert_eq!(
        hook(Some(event), Some("hook-secret")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let text = metrics.render();
    for line in [
        r#"recall_events_total{outcome="accepted"} 2"#,
        r#"recall_events_total{outcome="duplicate"} 1"#,
        r#"recall_events_total{outcome="rejected"} 4"#,
        r#"recall_events_rejected_total{reason="unauthorized"} 1"#,
        r#"recall_events_rejected_total{reason="invalid"} 1"#,
        r#"recall_events_rejected_total{reason="too_large"} 1"#,
        r#"recall_events_rejected_total{reason="unavailable"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("u_counted"));
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, v)
}

fn get(uri: &str, key: Option<&str>, from: Option<&str>) -> Request<Body> {
    let mut req = Request::get(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    if let Some(ip) = from {
        let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    req
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_once_the_key_spent_its_burst() {
    let limit = RateLimit {
        replenish_one_per: Duration::from_millis(300),
        burst: std::num::NonZeroU32::new(2).unwrap(),
    };
    let r = rig_limited(Some("k"), None, Some(limit));
    let search = "/memory/search/u1/meher?query=dog";
    for i in 0..2 {
        let (s, _, v) = send(&r.app, get(search, Some("k"), None)).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {v}");
    }
    let (s, headers, v) = send(&r.app, get(search, Some("k"), None)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 1, "300 ms rounds up to 1 s");
    // The bucket is the key's, shared by the routes that embed a query.
    let (s, _, _) = send(&r.app, get("/memory/context/u2/luna", Some("k"), None)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let enhance = Request::post("/memory/enhance-prompt/u1/meher")
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"base_system_prompt":"x"}"#))
        .unwrap();
    assert_eq!(send(&r.app, enhance).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Other routes are not limited; a wrong key is refused before it touches a bucket.
    let (s, _, _) = send(&r.app, get("/memory/stats/u1/meher", Some("k"), None)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(&r.app, get(search, Some("wrong"), None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&r.app, get(search, None, None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let resp = r
        .app
        .clone()
        .oneshot(get("/metrics", None, None))
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        r#"recall_http_rate_limited_total{route="/memory/search/{user_id}/{character_name}"} 1"#,
        r#"recall_http_rate_limited_total{route="/memory/context/{user_id}/{character_name}"} 1"#,
        r#"recall_http_rate_limited_total{route="/memory/enhance-prompt/{user_id}/{character_name}"} 1"#,
        r#"recall_http_requests_total{method="GET",route="/memory/search/{user_id}/{character_name}",status="429"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("Bearer") && !text.contains("u1"));

    // One request is earned back per 300 ms.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (s, _, v) = send(&r.app, get(search, Some("k"), None)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = send(&r.app, get(search, Some("k"), None)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "only one was earned back");
}

#[tokio::test]
async fn without_the_key_the_rate_limit_is_per_client_address() {
    let limit = RateLimit {
        replenish_one_per: Duration::from_secs(60),
        burst: std::num::NonZeroU32::MIN,
    };
    let r = rig_limited(None, None, Some(limit));
    let uri = "/memory/context/u1/meher";
    let here = Some("127.0.0.1");
    assert_eq!(send(&r.app, get(uri, None, here)).await.0, StatusCode::OK);
    let (s, headers, _) = send(&r.app, get(uri, None, here)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "60");
    let there = Some("127.0.0.2");
    assert_eq!(
        send(&r.app, get(uri, None, there)).await.0,
        StatusCode::OK,
        "another client has its own bucket"
    );
    // Without a key, a bearer token does not pick the bucket: changing it does not help.
    assert_eq!(
        send(&r.app, get(uri, Some("any"), here)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
