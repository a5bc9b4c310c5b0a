//! Prometheus metrics: one registry per process (per test server), names
//! `recall_<what>_<unit>[_total]`, base units, and only bounded labels (never a user or character).

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Duration buckets in seconds, from 1 ms to 2 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Every metric recall exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Message events received, by outcome (`accepted`, `rejected`, `duplicate`).
    pub events_total: IntCounterVec,
    /// Batches by outcome (`succeeded`, `failed`, `busy`, `lost_lease`).
    pub batches_total: IntCounterVec,
    /// Batch stage durations (`claim`, `extract`, `embed`, `upsert`, `flip`).
    pub batch_stage_seconds: HistogramVec,
    /// Batches currently running in this process.
    pub batches_in_flight: IntGauge,
    /// Unix time of the last successful batch.
    pub last_batch_success_timestamp_seconds: Gauge,
    /// Extractions reused from an earlier attempt (no second LLM call).
    pub extractions_reused_total: IntCounter,
    /// Memories written to the memory store.
    pub memories_stored_total: IntCounter,
    /// Memories marked superseded by a newer one.
    pub memories_superseded_total: IntCounter,
    /// Messages flipped to synced.
    pub messages_synced_total: IntCounter,
    /// Retries of calls to a dependency, by dependency.
    pub retries_total: IntCounterVec,
    /// Tokens spent on extraction, by kind (`prompt`, `completion`).
    pub llm_tokens_total: IntCounterVec,
    /// Estimated extraction cost, in US dollars, from the configured price table.
    pub llm_cost_usd_total: prometheus::Counter,
    /// HTTP requests by route template, method and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP request durations by route template and method.
    pub http_request_duration_seconds: HistogramVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let batches_in_flight = IntGauge::new(
            "recall_batches_in_flight",
            "Batches running in this process.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(batches_in_flight.clone()))
            .expect("unique metric");
        let last_batch_success_timestamp_seconds = Gauge::new(
            "recall_last_batch_success_timestamp_seconds",
            "Unix time of the last successful batch.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_batch_success_timestamp_seconds.clone()))
            .expect("unique metric");
        let llm_cost_usd_total = prometheus::Counter::new(
            "recall_llm_cost_usd_total",
            "Estimated extraction cost in US dollars, from the configured price table.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(llm_cost_usd_total.clone()))
            .expect("unique metric");
        Self {
            llm_cost_usd_total,
            events_total: counter_vec(
                "recall_events_total",
                "Message events received, by outcome.",
                &["outcome"],
            ),
            batches_total: counter_vec("recall_batches_total", "Batches by outcome.", &["outcome"]),
            batch_stage_seconds: histogram_vec(
                "recall_batch_stage_duration_seconds",
                "Duration of each batch stage.",
                &["stage"],
            ),
            batches_in_flight,
            last_batch_success_timestamp_seconds,
            extractions_reused_total: counter(
                "recall_extractions_reused_total",
                "Extractions reused from an earlier attempt instead of calling the extractor.",
            ),
            memories_stored_total: counter(
                "recall_memories_stored_total",
                "Memories written to the memory store.",
            ),
            memories_superseded_total: counter(
                "recall_memories_superseded_total",
                "Memories marked superseded by a newer one.",
            ),
            messages_synced_total: counter(
                "recall_messages_synced_total",
                "Messages flipped to synced.",
            ),
            retries_total: counter_vec(
                "recall_retries_total",
                "Retried calls to a dependency.",
                &["dependency"],
            ),
            llm_tokens_total: counter_vec(
                "recall_llm_tokens_total",
                "Tokens spent on extraction.",
                &["kind"],
            ),
            http_requests_total: counter_vec(
                "recall_http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_request_duration_seconds: histogram_vec(
                "recall_http_request_duration_seconds",
                "HTTP request duration by route template and method.",
                &["route", "method"],
            ),
            registry,
        }
    }

    /// The registry, for adapters that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series() {
        let m = Metrics::new();
        m.batches_total.with_label_values(&["succeeded"]).inc();
        m.messages_synced_total.inc_by(25);
        let text = m.render();
        assert!(
            text.contains("recall_batches_total{outcome=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(text.contains("recall_messages_synced_total 25"), "{text}");
    }
}
