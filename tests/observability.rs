//! `/metrics` after a pipeline run (`recall_tests::observed`: 25 messages over HTTP, the first
//! batch attempt rejected by the model, the sweep's retry succeeds), scraped over HTTP: every key
//! series with its value, no user id, character name or message text anywhere; and readiness.

use std::collections::HashMap;

use recall_tests::observed::{CHARACTER, KEY, MESSAGES, TEXT_MARK, USER, run_pipeline};

/// `name{labels} value` lines of a scrape, keyed by `name{labels}` as rendered.
fn series(scrape: &str) -> HashMap<String, f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_after_a_pipeline_run() {
    let run = run_pipeline().await;
    let s = series(&run.scrape);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no series {k} in the scrape:\n{}", run.scrape))
    };
    let user_messages = MESSAGES.div_ceil(2) as f64;
    let expected: &[(&str, f64)] = &[
        // Received on the ingest routes, then counted by the worker loop.
        (r#"recall_events_total{outcome="accepted"}"#, 25.0),
        (r#"recall_events_total{outcome="duplicate"}"#, 1.0),
        (r#"recall_events_total{outcome="rejected"}"#, 2.0),
        (r#"recall_events_total{outcome="counted"}"#, 25.0),
        (
            r#"recall_events_rejected_total{reason="unauthorized"}"#,
            1.0,
        ),
        (r#"recall_events_rejected_total{reason="invalid"}"#, 1.0),
        (r#"recall_publishes_total{kind="event",outcome="ok"}"#, 25.0),
        (
            r#"recall_publish_duration_seconds_count{kind="event"}"#,
            25.0,
        ),
        // One batch: failed once at extraction (the model said 401), then retried and done.
        (r#"recall_batches_total{outcome="succeeded"}"#, 1.0),
        (r#"recall_batches_total{outcome="failed"}"#, 1.0),
        (
            r#"recall_batch_failures_total{kind="rejected",stage="extract"}"#,
            1.0,
        ),
        ("recall_batches_started_total", 2.0),
        ("recall_batches_retried_total", 1.0),
        ("recall_batches_in_flight", 0.0),
        ("recall_messages_synced_total", 25.0),
        ("recall_memories_stored_total", user_messages),
        ("recall_memories_superseded_total", 0.0),
        ("recall_extractions_reused_total", 0.0),
        (
            r#"recall_batch_stage_duration_seconds_count{stage="claim"}"#,
            2.0,
        ),
        (
            r#"recall_batch_stage_duration_seconds_count{stage="flip"}"#,
            1.0,
        ),
        // Model requests: the rejected call, the good one, one embedding call for the memories.
        (
            r#"recall_llm_requests_total{kind="chat",outcome="rejected"}"#,
            1.0,
        ),
        (
            r#"recall_llm_requests_total{kind="chat",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"recall_llm_requests_total{kind="embedding",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"recall_llm_request_duration_seconds_count{kind="chat"}"#,
            2.0,
        ),
        // The echo double reports 10 prompt tokens per message and 5 completion tokens.
        (r#"recall_llm_tokens_total{kind="prompt"}"#, 250.0),
        (r#"recall_llm_tokens_total{kind="completion"}"#, 5.0),
        // Store operations, whatever the adapter.
        (
            r#"recall_store_operations_total{op="append",outcome="ok",store="message"}"#,
            26.0,
        ),
        (
            r#"recall_store_operations_total{op="claim_batch",outcome="ok",store="message"}"#,
            2.0,
        ),
        (
            r#"recall_store_operations_total{op="fail_batch",outcome="ok",store="message"}"#,
            1.0,
        ),
        (
            r#"recall_store_operations_total{op="complete_batch",outcome="ok",store="message"}"#,
            1.0,
        ),
        (
            r#"recall_store_operations_total{op="upsert",outcome="ok",store="memory"}"#,
            1.0,
        ),
        (
            r#"recall_store_operation_duration_seconds_count{op="upsert",store="memory"}"#,
            1.0,
        ),
        (
            r#"recall_http_requests_total{method="POST",route="/memory/messages/{user_id}/{character_name}",status="201"}"#,
            25.0,
        ),
        (
            r#"recall_http_requests_total{method="POST",route="/firebase/message-created",status="401"}"#,
            1.0,
        ),
    ];
    for (key, want) in expected {
        assert_eq!(get(key), *want, "{key}");
    }
    assert!(
        get(r#"recall_publishes_total{kind="batch_job",outcome="ok"}"#) >= 2.0,
        "the trigger and the sweep's retry"
    );
    assert!(get("recall_last_batch_success_timestamp_seconds") > 1.7e9);
    assert!(
        !run.scrape.contains("recall_retries_total{"),
        "a rejection is not retried"
    );
    for private in [USER, CHARACTER, TEXT_MARK, "Reykjavik", KEY, "msg_0"] {
        assert!(
            !run.scrape.contains(private),
            "{private} appears in the scrape:\n{}",
            run.scrape
        );
    }

    // Readiness after the run: every dependency reported, all up.
    let (code, body) = run.ready;
    assert_eq!(code, 200, "{body}");
    for c in ["message_store", "memory_store", "event_bus"] {
        assert_eq!(body["components"][c]["status"], "ok", "{c}: {body}");
        assert!(body["components"][c]["latency_ms"].is_u64(), "{body}");
    }
    assert_eq!(body["components"]["extractor"]["mode"], "echo");
}
