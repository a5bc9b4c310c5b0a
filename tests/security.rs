//! Security and bad input over real HTTP (issue 9), against a standalone node on loopback
//! (SQLite, the in-memory memory store, the hash embedder, the echo extractor):
//!
//! - every route of `recall_shared::http::route_table()` refuses a missing or wrong credential
//!   with 401, but the open ones (probes, metrics, the OpenAPI document);
//! - search, stats, context and enhance-prompt for one user never show another user's (or another
//!   character's) memories, whatever the id looks like: `a/../b` raw and percent-encoded, `a%2Fb`,
//!   look-alikes in Cyrillic and full-width letters, NUL, spaces, case, 10 KB ids;
//! - every route with a body answers 413, 415 and 400 naming the field; out-of-range limits and
//!   too-long queries are 400 naming the parameter;
//! - the routes that embed a query are rate limited per API key (and per client address without
//!   a key): 429 with `Retry-After`, counted in `recall_http_rate_limited_total`.

use std::io::{Read, Write};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use recall_shared::batching::BatchRules;
use recall_shared::http::{Access, BODY_LIMIT, RateLimit, RouteInfo, route_table};
use recall_shared::node::Node;
use recall_shared::pipeline::EngineConfig;
use recall_shared::runtime::WorkerConfig;
use recall_shared::testkit::doubles::EchoExtractor;
use recall_tests::server::{Served, double_deps};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "security-test-key-7Hq2pX";

/// The tenants: (user, character, a word only their memories contain).
const ALICE: (&str, &str, &str) = ("alice", "meher", "Zephyrcat");
const ALICE_LUNA: (&str, &str, &str) = ("alice", "luna", "Lunagarnet");
const BOB: (&str, &str, &str) = ("bob", "meher", "Quillfox");
/// Messages per pair: a batch is due at this many.
const PER_PAIR: usize = 4;

/// A standalone node with `key` and `rate_limit`, batching every `PER_PAIR` messages.
async fn start(key: Option<&str>, rate_limit: Option<RateLimit>) -> Served {
    let rules = BatchRules {
        threshold: PER_PAIR,
        idle_min_messages: PER_PAIR,
        ..BatchRules::default()
    };
    let engine = EngineConfig {
        rules,
        ..EngineConfig::default()
    };
    let workers = WorkerConfig {
        sweep_interval: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let node = Node::standalone(
        double_deps(EchoExtractor::default()),
        engine,
        workers,
        key.map(str::to_owned),
    )
    .with_rate_limit(rate_limit);
    Served::start(node).await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A route's path template filled with `user` and `character`, which are sent as given
/// (already percent-encoded where they need to be).
fn fill(path: &str, user: &str, character: &str) -> String {
    path.replace("{user_id}", user)
        .replace("{character_name}", character)
}

fn method(route: &RouteInfo) -> Method {
    Method::from_bytes(route.method.as_str().as_bytes()).unwrap()
}

/// Status and JSON body (`Null` when the body is not JSON).
async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The first 90 characters of `s`, for messages.
fn short(s: &str) -> String {
    s.chars().take(90).collect()
}

fn field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("<none>")
}

async fn store_memories(server: &Served) {
    let http = http();
    for (user, character, mark) in [ALICE, ALICE_LUNA, BOB] {
        for i in 0..PER_PAIR {
            let body = json!({
                "message_id": format!("{user}_{character}_{i}"),
                "role": "user",
                "text": format!("My secret {mark} number {i} is about my dog"),
            });
            let resp = http
                .post(server.url(&format!("/memory/messages/{user}/{character}")))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{user}/{character} message {i}");
        }
    }
    // The batches run in the background; wait until each pair's memories are stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (user, character, _) in [ALICE, ALICE_LUNA, BOB] {
        loop {
            let (_, stats) = answer(
                http.get(server.url(&format!("/memory/stats/{user}/{character}")))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            if stats["memories"]["current"] == PER_PAIR && stats["messages"]["unsynced"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user}/{character} never got its memories: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_wrong_credential() {
    let server = start(Some(KEY), None).await;
    let http = http();
    let short = &KEY[..KEY.len() - 1];
    let wrong: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("a wrong key", Some("Bearer not-the-key".into())),
        ("the key plus a character", Some(format!("Bearer {KEY}x"))),
        ("the key minus a character", Some(format!("Bearer {short}"))),
        ("the key without the scheme", Some(KEY.into())),
        ("the key as Basic", Some(format!("Basic {KEY}"))),
        ("an empty bearer", Some("Bearer ".into())),
    ];
    let routes = route_table();
    assert!(routes.len() >= 14, "{routes:?}");
    for route in &routes {
        let url = server.url(&fill(route.path, "u_auth", "meher"));
        let request = |authorization: Option<&str>| {
            let mut req = http.request(method(route), &url);
            if route.method == axum::http::Method::POST {
                req = req.json(&json!({}));
            }
            if let Some(a) = authorization {
                req = req.header("authorization", a);
            }
            req.send()
        };
        let what = format!("{} {}", route.method, route.path);
        if route.access == Access::Open {
            let (s, _) = answer(request(None).await.unwrap()).await;
            assert_eq!(s, StatusCode::OK, "{what} is open");
            continue;
        }
        for (how, authorization) in &wrong {
            let (s, v) = answer(request(authorization.as_deref()).await.unwrap()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} with {how}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized", "{what} with {how}");
        }
        // The key in the query string is not a credential either.
        let resp = http
            .request(method(route), format!("{url}?api_key={KEY}&token={KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let (s, v) = answer(request(Some(&format!("Bearer {KEY}"))).await.unwrap()).await;
        assert!(
            s != StatusCode::UNAUTHORIZED && !s.is_server_error(),
            "{what} with the key: {s} {v}"
        );
    }
    server.stop().await;
}

/// An id sent in place of a user or a character, as it goes on the wire.
struct Crafted {
    what: &'static str,
    segment: String,
}

fn crafted(own: &str, target: &str) -> Vec<Crafted> {
    let cyrillic_o = |s: &str| s.replacen('o', "%D0%BE", 1).replacen('a', "%D0%B0", 1);
    let full_width: String = target
        .chars()
        .map(|c| {
            let wide = char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap();
            let mut buf = [0; 4];
            wide.encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        })
        .collect();
    let mut out = vec![
        ("a/../b percent-encoded", format!("{own}%2F..%2F{target}")),
        (
            "a/../b with encoded dots",
            format!("{own}%2F%2E%2E%2F{target}"),
        ),
        ("a%2Fb", format!("{own}%2F{target}")),
        ("a%252Fb (double-encoded)", format!("{own}%252F{target}")),
        ("a Cyrillic look-alike", cyrillic_o(target)),
        ("a full-width look-alike", full_width),
        ("a NUL after the id", format!("{target}%00")),
        ("a space after the id", format!("{target}%20")),
        ("a backslash path", format!("{own}%5C..%5C{target}")),
        ("a wildcard", "*".to_owned()),
        ("a 10 KB id", target.repeat(10 * 1024 / target.len() + 1)),
        ("the id in upper case", target.to_uppercase()),
        ("the id with a dot", format!("{target}.")),
        (
            "the id with a query",
            format!("{target}%3Fquery%3D{target}"),
        ),
    ];
    out.retain(|(_, s)| !s.is_empty());
    out.into_iter()
        .map(|(what, segment)| Crafted { what, segment })
        .collect()
}

/// What each tenant-facing route is asked, with `user` and `character` in the path.
async fn ask(
    http: &reqwest::Client,
    server: &Served,
    route: &str,
    user: &str,
    character: &str,
) -> (StatusCode, Value) {
    let path = fill(route, user, character);
    let req = match route {
        r if r.starts_with("/memory/search/") => http
            .get(server.url(&format!("{path}?query=secret%20number%20dog&limit=50&include_superseded=true"))),
        r if r.starts_with("/memory/context/") => http.get(server.url(&format!(
            "{path}?message=secret%20number%20dog&max_tokens=8000"
        ))),
        r if r.starts_with("/memory/enhance-prompt/") => http.post(server.url(&path)).json(
            &json!({"message": "secret number dog", "base_system_prompt": "You are Meher.", "max_tokens": 8000}),
        ),
        _ => http.get(server.url(&path)),
    };
    answer(req.bearer_auth(KEY).send().await.unwrap()).await
}

/// The routes that show a pair's data.
const TENANT_ROUTES: [&str; 4] = [
    "/memory/search/{user_id}/{character_name}",
    "/memory/stats/{user_id}/{character_name}",
    "/memory/context/{user_id}/{character_name}",
    "/memory/enhance-prompt/{user_id}/{character_name}",
];

/// `body` holds no memory of another tenant and, for stats, no count of anything.
fn assert_nothing_of(others: &[&str], route: &str, body: &Value, what: &str) {
    let text = body.to_string();
    for mark in others {
        assert!(
            !text.contains(mark),
            "{route} as {what} leaked {mark}: {text}"
        );
    }
    if route.starts_with("/memory/stats/") {
        assert_eq!(body["messages"]["total"], 0, "{route} as {what}: {body}");
        assert_eq!(body["memories"]["total"], 0, "{route} as {what}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_shows_another_tenants_memories() {
    let server = start(Some(KEY), None).await;
    store_memories(&server).await;
    let http = http();
    let routes: Vec<&str> = route_table().iter().map(|r| r.path).collect();
    for route in TENANT_ROUTES {
        assert!(routes.contains(&route), "{route} is no longer served");
        // Each tenant sees its own memories (the checks below are not vacuous), and only those.
        for (user, character, mark) in [ALICE, ALICE_LUNA, BOB] {
            let (s, v) = ask(&http, &server, route, user, character).await;
            assert_eq!(s, StatusCode::OK, "{route} {user}/{character}: {v}");
            let text = v.to_string();
            if !route.starts_with("/memory/stats/") {
                assert!(text.contains(mark), "{route} {user}/{character}: {text}");
            }
            let others: Vec<&str> = [ALICE, ALICE_LUNA, BOB]
                .iter()
                .map(|t| t.2)
                .filter(|m| *m != mark)
                .collect();
            for other in others {
                assert!(!text.contains(other), "{route} {user}/{character}: {text}");
            }
        }
        // Crafted user ids aimed at bob from alice, and crafted characters aimed at luna.
        let attacks = crafted(ALICE.0, BOB.0)
            .into_iter()
            .map(|c| (c, "user_id"))
            .chain(
                crafted(ALICE.1, ALICE_LUNA.1)
                    .into_iter()
                    .map(|c| (c, "character_name")),
            );
        for (c, segment) in attacks {
            let (user, character) = match segment {
                "user_id" => (c.segment.as_str(), ALICE.1),
                _ => (ALICE.0, c.segment.as_str()),
            };
            let (s, v) = ask(&http, &server, route, user, character).await;
            let what = format!("{segment} = {} ({})", c.what, short(&c.segment));
            match s {
                StatusCode::BAD_REQUEST => {
                    assert_eq!(field(&v), segment, "{route} as {what}: {v}")
                }
                StatusCode::OK => {
                    assert_nothing_of(&[BOB.2, ALICE_LUNA.2, ALICE.2], route, &v, &what)
                }
                StatusCode::NOT_FOUND => {
                    assert_nothing_of(&[BOB.2, ALICE_LUNA.2, ALICE.2], route, &v, &what)
                }
                other => panic!("{route} as {what}: {other} {v}"),
            }
        }
    }
    // `a/../b` as raw path segments (reqwest would normalise them away): no route matches.
    for path in [
        "/memory/search/alice/../bob/meher?query=secret",
        "/memory/stats/alice/../bob/meher",
        "/memory/context/alice/meher/../luna",
        "/memory/search/alice/%2E%2E/bob/meher?query=secret",
    ] {
        let (status, body) = raw_get(&server, path);
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
        for mark in [BOB.2, ALICE_LUNA.2, ALICE.2] {
            assert!(!body.contains(mark), "{path} leaked {mark}: {body}");
        }
    }
    server.stop().await;
}

/// A GET with exactly `path` on the request line, over a plain TCP connection.
fn raw_get(server: &Served, path: &str) -> (u16, String) {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// How a body is wrong, its content type, the body, and the answer: status and field.
type BodyCase = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_naming_the_field() {
    let server = start(Some(KEY), None).await;
    let http = http();
    let doc: Value = http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut with_body = 0;
    for route in route_table() {
        let method_name = route.method.as_str().to_lowercase();
        if doc["paths"][route.path][&method_name]["requestBody"].is_null() {
            continue;
        }
        with_body += 1;
        let url = server.url(&fill(route.path, "u_body", "meher"));
        let what = format!("{} {}", route.method, route.path);
        let send = |content_type: Option<&'static str>, body: Vec<u8>| {
            let mut req = http.request(method(&route), &url).bearer_auth(KEY);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req.body(body).send()
        };
        let json = Some("application/json");
        let cases: Vec<BodyCase> = vec![
            (
                "an oversized body",
                json,
                format!("{{\"pad\":\"{}\"}}", "x".repeat(BODY_LIMIT)).into_bytes(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
            ),
            (
                "text/plain",
                Some("text/plain"),
                b"{}".to_vec(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
            ),
            (
                "a form",
                Some("application/x-www-form-urlencoded"),
                b"a=b".to_vec(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
            ),
            (
                "no content type",
                None,
                b"{}".to_vec(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
            ),
            (
                "JSON that does not parse",
                json,
                b"{,}".to_vec(),
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (
                "an array instead of an object",
                json,
                b"[]".to_vec(),
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (
                "JSON nested 10 000 deep",
                json,
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (
                "not UTF-8",
                json,
                vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (
                "an unknown field",
                json,
                b"{\"zz_unknown\": 1}".to_vec(),
                StatusCode::BAD_REQUEST,
                "zz_unknown",
            ),
        ];
        for (how, content_type, body, want, want_field) in cases {
            let (s, v) = answer(send(content_type, body).await.unwrap()).await;
            assert_eq!(s, want, "{what} with {how}: {v}");
            assert_eq!(field(&v), want_field, "{what} with {how}: {v}");
        }
    }
    assert!(
        with_body >= 3,
        "the webhook, append and enhance-prompt take a body"
    );

    // Fields of each body, by name.
    let post = |path: &str, body: Value| {
        http.post(server.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let long = "q".repeat(2001);
    let cases = [
        (
            "/memory/messages/u_body/meher",
            json!({"text": "hi"}),
            "role",
        ),
        (
            "/memory/messages/u_body/meher",
            json!({"role": "user", "text": 5}),
            "text",
        ),
        (
            "/memory/messages/u_body/meher",
            json!({"role": "user", "text": "hi", "message_id": "a/../b"}),
            "message_id",
        ),
        (
            "/memory/messages/u_body/meher",
            json!({"role": "user", "text": "hi", "created_at": "yesterday"}),
            "created_at",
        ),
        (
            "/firebase/message-created",
            json!({"user_id": "a/../b", "character_name": "meher"}),
            "user_id",
        ),
        (
            "/firebase/message-created",
            json!({"user_id": "b\u{043e}b", "character_name": "meher"}),
            "user_id",
        ),
        (
            "/firebase/message-created",
            json!({"user_id": "bob", "character_name": "m".repeat(10 * 1024)}),
            "character_name",
        ),
        (
            "/memory/enhance-prompt/u_body/meher",
            json!({"base_system_prompt": "x", "max_tokens": 49}),
            "max_tokens",
        ),
        (
            "/memory/enhance-prompt/u_body/meher",
            json!({"base_system_prompt": "x", "max_tokens": 8001}),
            "max_tokens",
        ),
        (
            "/memory/enhance-prompt/u_body/meher",
            json!({"base_system_prompt": "x", "max_tokens": -1}),
            "max_tokens",
        ),
        (
            "/memory/enhance-prompt/u_body/meher",
            json!({"base_system_prompt": "x", "message": long}),
            "message",
        ),
        (
            "/memory/enhance-prompt/u_body/meher",
            json!({"message": "hi"}),
            "base_system_prompt",
        ),
    ];
    for (path, body, want) in cases {
        let (s, v) = answer(post(path, body.clone()).await.unwrap()).await;
        assert_eq!(
            (s, field(&v)),
            (StatusCode::BAD_REQUEST, want),
            "{path} {}: {v}",
            short(&body.to_string())
        );
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_refused_naming_the_parameter() {
    let server = start(Some(KEY), None).await;
    let http = http();
    let search = "/memory/search/u_query/meher";
    let context = "/memory/context/u_query/meher";
    let long = "q".repeat(2001);
    let long_multibyte = "\u{00e9}".repeat(2001);
    let cases = [
        (search.to_owned(), "query"),
        (format!("{search}?query="), "query"),
        (format!("{search}?query=%20%20"), "query"),
        (format!("{search}?query={long}"), "query"),
        (format!("{search}?query={long_multibyte}"), "query"),
        (format!("{search}?query=dog&limit=0"), "limit"),
        (format!("{search}?query=dog&limit=51"), "limit"),
        (format!("{search}?query=dog&limit=-1"), "limit"),
        (format!("{search}?query=dog&limit=ten"), "limit"),
        (
            format!("{search}?query=dog&limit=99999999999999999999999"),
            "limit",
        ),
        (
            format!("{search}?query=dog&include_superseded=yes"),
            "include_superseded",
        ),
        (format!("{context}?max_tokens=49"), "max_tokens"),
        (format!("{context}?max_tokens=8001"), "max_tokens"),
        (format!("{context}?message={long}"), "message"),
        (format!("{context}?message="), "message"),
    ];
    for (path, want) in &cases {
        let (s, v) = answer(
            http.get(server.url(path))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let shown = short(path);
        assert_eq!(
            (s, field(&v)),
            (StatusCode::BAD_REQUEST, *want),
            "{shown}: {v}"
        );
        assert_eq!(v["error"]["code"], "invalid_request", "{shown}");
    }
    // At the edges, the answer is a 200.
    let ok = "\u{00e9}".repeat(2000);
    for path in [
        format!("{search}?query={ok}&limit=50"),
        format!("{search}?query=dog&limit=1"),
        format!("{context}?max_tokens=50&message=hi"),
        format!("{context}?max_tokens=8000"),
    ] {
        let resp = http.get(server.url(&path)).bearer_auth(KEY).send().await;
        assert_eq!(resp.unwrap().status(), StatusCode::OK, "{}", short(&path));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_per_api_key_with_retry_after() {
    const BURST: u32 = 3;
    let limit = RateLimit {
        replenish_one_per: Duration::from_secs(30),
        burst: NonZeroU32::new(BURST).unwrap(),
    };
    let server = start(Some(KEY), Some(limit)).await;
    let http = http();
    let routes = route_table();
    let limited: Vec<&RouteInfo> = routes.iter().filter(|r| r.rate_limited).collect();
    let paths: Vec<&str> = limited.iter().map(|r| r.path).collect();
    for must in [
        "/memory/search/{user_id}/{character_name}",
        "/memory/context/{user_id}/{character_name}",
    ] {
        assert!(paths.contains(&must), "{must} is not rate limited");
    }
    let search = server.url("/memory/search/u_rate/meher?query=dog");
    for i in 0..BURST {
        let resp = http.get(&search).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i} of the burst");
    }
    // The key's bucket is empty: every limited route answers 429, valid request or not.
    for route in &limited {
        let url = server.url(&fill(route.path, "u_rate", "meher"));
        let mut req = http.request(method(route), &url).bearer_auth(KEY);
        if route.method == axum::http::Method::POST {
            req = req.json(&json!({"base_system_prompt": "x"}));
        }
        let resp = req.send().await.unwrap();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let (s, v) = answer(resp).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{}: {v}", route.path);
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
        let seconds: u64 = retry_after
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=30).contains(&seconds), "{seconds}");
    }
    // The other guarded routes are not limited; a wrong key is still a 401.
    for route in routes.iter().filter(|r| {
        r.access == Access::ApiKey && !r.rate_limited && r.method == axum::http::Method::GET
    }) {
        let url = server.url(&fill(route.path, "u_rate", "meher"));
        let resp = http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", route.path);
    }
    let resp = http.get(&search).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let scrape = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for route in &limited {
        let line = format!(
            "recall_http_rate_limited_total{{route=\"{}\"}} 1",
            route.path
        );
        assert!(
            scrape.lines().any(|l| l == line),
            "{line} missing:\n{scrape}"
        );
    }
    assert!(!scrape.contains(KEY) && !scrape.contains("u_rate"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_rate_limit_is_per_client_address() {
    let limit = RateLimit {
        replenish_one_per: Duration::from_secs(30),
        burst: NonZeroU32::MIN,
    };
    let server = start(None, Some(limit)).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let url = server.url("/memory/context/u_ip/meher");
    let here = from("127.0.0.1");
    assert_eq!(here.get(&url).send().await.unwrap().status(), 200);
    let resp = here.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    // Another address of the loopback network: its own bucket.
    let there = from("127.0.0.2");
    assert_eq!(there.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        there.get(&url).send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    server.stop().await;
}
