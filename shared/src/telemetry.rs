//! Logs: the subscriber both binaries install, and what a log line may say about a pair.
//!
//! - Text lines by default, JSON lines (with the current span's fields) when asked; `RUST_LOG`
//!   filters, `info` by default.
//! - A pair appears as a short hash of its ids ([`crate::domain::Pair::hash_hex`]), never the raw
//!   user id or character name, unless the operator opted in with `RECALL_LOG_IDS=true`
//!   ([`set_log_ids`]). Message texts and memory texts are never logged at `info` or above.
//! - Each batch runs in a `batch` span carrying `batch_id`, `pair`, `attempt`, `messages` and the
//!   stage timings in milliseconds (`claim_ms`, `extract_ms`, `embed_ms`, `upsert_ms`,
//!   `flip_ms`); every line logged during the batch (retries, failures, the final `batch
//!   completed`) carries them.
//!
//! OpenTelemetry export is not built in: the spans are ordinary `tracing` spans, so an OTLP layer
//! (`tracing-opentelemetry`) can be added to [`subscriber`] without touching the pipeline.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::domain::Pair;

/// Whether logs may carry raw user ids and character names (`RECALL_LOG_IDS`).
static LOG_IDS: AtomicBool = AtomicBool::new(false);

/// Lets logs carry raw ids instead of pair hashes (process-wide; off by default).
pub fn set_log_ids(raw: bool) {
    LOG_IDS.store(raw, Ordering::Relaxed);
}

/// Whether logs carry raw ids.
pub fn log_ids() -> bool {
    LOG_IDS.load(Ordering::Relaxed)
}

/// How a pair appears in logs: its hash, or `user/character` when [`log_ids`] is on.
pub fn pair_label(pair: &Pair) -> String {
    pair_label_with(pair, log_ids())
}

/// [`pair_label`] with the setting given.
pub fn pair_label_with(pair: &Pair, raw_ids: bool) -> String {
    if raw_ids {
        pair.to_string()
    } else {
        pair.hash_hex()
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the current span and its parents.
    Json,
}

impl LogFormat {
    /// `json` (any case) is JSON; anything else is text.
    pub fn parse(s: &str) -> Self {
        if s.trim().eq_ignore_ascii_case("json") {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// The `RUST_LOG` filter, `info` when unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber of a process: `filter` decides what is logged, `writer` where; `ansi` colours
/// text lines (only for a terminal).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

/// A [`MakeWriter`] into a shared buffer, for tests that read what was logged.
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_hashed_unless_raw_ids_are_allowed() {
        let pair = Pair::parse("u_4711", "meher").unwrap();
        let hashed = pair_label_with(&pair, false);
        assert_eq!(hashed, pair.hash_hex());
        assert!(!hashed.contains("u_4711") && !hashed.contains("meher"));
        assert_eq!(pair_label_with(&pair, true), "u_4711/meher");
        assert!(!log_ids(), "off unless the operator sets RECALL_LOG_IDS");
    }

    #[test]
    fn formats_parse() {
        assert_eq!(LogFormat::parse("JSON"), LogFormat::Json);
        assert_eq!(LogFormat::parse("text"), LogFormat::Text);
        assert_eq!(LogFormat::parse(""), LogFormat::Text);
    }

    #[test]
    fn text_and_json_lines_carry_span_fields() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let logs = CapturedLogs::default();
            let sub = subscriber(format, EnvFilter::new("info"), logs.clone(), false);
            tracing::subscriber::with_default(sub, || {
                let span = tracing::info_span!(
                    "batch",
                    batch_id = "b1",
                    extract_ms = tracing::field::Empty
                );
                let _e = span.enter();
                span.record("extract_ms", 12u64);
                tracing::info!(messages = 3, "batch completed");
                tracing::debug!("not at info");
            });
            let text = logs.text();
            assert!(text.contains("batch completed"), "{text}");
            assert!(
                text.contains("b1") && text.contains("12"),
                "{format:?}: {text}"
            );
            assert!(!text.contains("not at info"), "{text}");
            if format == LogFormat::Json {
                let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                assert_eq!(line["span"]["batch_id"], "b1", "{line}");
                assert_eq!(line["fields"]["messages"], 3, "{line}");
            }
        }
    }
}
