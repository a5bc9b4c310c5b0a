//! Logs of a pipeline run at `info`, in text and in JSON (see `recall_shared::telemetry`). Its own
//! test binary: it installs a thread-local subscriber, and tracing's interest cache is shared by
//! every thread of a process, so a test logging on another thread at the same time could hide
//! events from it.

use recall_shared::telemetry::{CapturedLogs, LogFormat, subscriber};
use recall_tests::observed::{CHARACTER, KEY, TEXT_MARK, USER, run_pipeline};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

/// The run's `info` logs, in text and in JSON: the batch span says which batch, attempt and
/// stage timings; no user id, character name, message text or key appears.
#[tokio::test(flavor = "current_thread")]
async fn info_logs_carry_the_batch_span_but_no_ids_or_text() {
    for format in [LogFormat::Text, LogFormat::Json] {
        let logs = CapturedLogs::default();
        // A current-thread runtime: the node's tasks all log through this thread's subscriber.
        let _guard = tracing::subscriber::set_default(subscriber(
            format,
            EnvFilter::new("info"),
            logs.clone(),
            false,
        ));
        run_pipeline().await;
        let text = logs.text();
        let pair_hash = recall_shared::domain::Pair::parse(USER, CHARACTER)
            .unwrap()
            .hash_hex();
        let completed: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("batch completed"))
            .collect();
        assert_eq!(completed.len(), 1, "{format:?}:\n{text}");
        let line = completed[0];
        match format {
            LogFormat::Text => {
                for want in [
                    "batch{",
                    "batch_id=",
                    &format!("pair={pair_hash}"),
                    "attempt=2",
                    "claim_ms=",
                    "extract_ms=",
                    "embed_ms=",
                    "upsert_ms=",
                    "flip_ms=",
                    "messages=25",
                ] {
                    assert!(line.contains(want), "{want} missing from: {line}");
                }
                assert!(
                    text.contains("batch failed") && text.contains("stage=\"extract\""),
                    "the failed attempt is logged with its stage:\n{text}"
                );
            }
            LogFormat::Json => {
                let v: Value = serde_json::from_str(line).unwrap();
                let span = &v["span"];
                assert_eq!(span["name"], "batch", "{v}");
                assert_eq!(span["pair"], pair_hash.as_str(), "{v}");
                assert_eq!(span["attempt"], 2, "{v}");
                for stage in ["claim_ms", "extract_ms", "embed_ms", "upsert_ms", "flip_ms"] {
                    assert!(span[stage].is_u64(), "{stage} missing: {v}");
                }
                assert_eq!(v["fields"]["messages"], 25, "{v}");
                assert!(v["fields"]["duration_ms"].is_u64(), "{v}");
                for l in text.lines() {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                }
            }
        }
        for private in [USER, CHARACTER, TEXT_MARK, "Reykjavik", KEY] {
            assert!(
                !text.contains(private),
                "{format:?}: {private} appears in the logs:\n{text}"
            );
        }
    }
}
