//! Prometheus metrics: one registry per process (per test server), names
//! `recall_<what>_<unit>[_total]`, base units, and only bounded labels (never a user or character).
//!
//! Who updates what, so each series has one home:
//!
//! - the HTTP layer ([`crate::http`]): requests, requests refused by the rate limit, and events
//!   received on the ingest routes;
//! - the worker loops ([`crate::runtime`]): events counted or de-duplicated;
//! - the batch engine ([`crate::pipeline`]): batches, stages, memories, messages, tokens, retries;
//! - the port decorators ([`crate::instrumented`]): every store operation, model request and bus
//!   publish, whatever the adapter;
//! - the RabbitMQ adapter: whether its connections are up.
//!
//! Label values are closed sets: outcomes are `ok` or a [`crate::PortError::kind`], stages and
//! operations are names from the source, routes are templates.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Duration buckets in seconds, from 1 ms to 2 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Every metric recall exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Message events, by outcome: on the ingest routes `accepted`, `duplicate` (a message id
    /// stored before) or `rejected`; in the worker loops `counted` or `duplicate`.
    pub events_total: IntCounterVec,
    /// Events the ingest routes refused, by reason (`unauthorized`, `invalid`, `too_large`,
    /// `unavailable`, `error`).
    pub events_rejected_total: IntCounterVec,
    /// Publishes to the event bus by kind (`event`, `batch_job`) and outcome (`ok` or an error
    /// kind).
    pub publishes_total: IntCounterVec,
    /// Publish durations by kind; on RabbitMQ, until the broker's confirm.
    pub publish_duration_seconds: HistogramVec,
    /// Batches by outcome (`succeeded`, `failed`, `busy`, `lost_lease`).
    pub batches_total: IntCounterVec,
    /// Batches claimed and started in this process (every attempt).
    pub batches_started_total: IntCounter,
    /// Started batches that are a later attempt of a batch (after a failure or a lost lease).
    pub batches_retried_total: IntCounter,
    /// Failed batch attempts by stage and error kind (`unavailable`, `invalid_output`,
    /// `rejected`); sums to `recall_batches_total{outcome="failed"}`.
    pub batch_failures_total: IntCounterVec,
    /// Batch stage durations (`claim`, `extract`, `embed`, `upsert`, `flip`).
    pub batch_stage_seconds: HistogramVec,
    /// Batches currently running in this process.
    pub batches_in_flight: IntGauge,
    /// Unix time of the last successful batch.
    pub last_batch_success_timestamp_seconds: Gauge,
    /// Unsynced messages of the pairs with at least `BATCH_IDLE_MIN_MESSAGES` of them, as the
    /// last sweep of this worker counted them (every worker sees the whole store: take the max).
    pub unsynced_messages: IntGauge,
    /// Pairs with at least `BATCH_THRESHOLD` unsynced messages at the last sweep: due now and
    /// not yet batched.
    pub due_pairs: IntGauge,
    /// Extractions reused from an earlier attempt (no second LLM call).
    pub extractions_reused_total: IntCounter,
    /// Memories written to the memory store.
    pub memories_stored_total: IntCounter,
    /// Memories marked superseded by a newer one.
    pub memories_superseded_total: IntCounter,
    /// Proposed memories the pipeline's screen dropped before anything was written, by reason.
    pub memories_dropped_total: IntCounterVec,
    /// Messages flipped to synced.
    pub messages_synced_total: IntCounter,
    /// Retries of calls to a dependency, by dependency.
    pub retries_total: IntCounterVec,
    /// Tokens spent on the model, by kind (`prompt`, `completion` of extractions; `embedding`
    /// input tokens, where the embedder reports them).
    pub llm_tokens_total: IntCounterVec,
    /// Estimated model cost (extraction and embeddings), in US dollars, from the price table.
    pub llm_cost_usd_total: prometheus::Counter,
    /// Model requests by kind (`chat`: the extractor, `embedding`: the embedder) and outcome
    /// (`ok` or an error kind); each retry is a request.
    pub llm_requests_total: IntCounterVec,
    /// Model request durations by kind.
    pub llm_request_duration_seconds: HistogramVec,
    /// Store operations by store (`message`, `memory`), operation (the port method) and outcome
    /// (`ok` or an error kind).
    pub store_operations_total: IntCounterVec,
    /// Store operation durations by store and operation.
    pub store_operation_duration_seconds: HistogramVec,
    /// Whether this process's broker connections are up (1) or down (0), by role (`publisher`:
    /// the publishing connection, `consumer`: the worker's consuming connection).
    pub amqp_connected: IntGaugeVec,
    /// HTTP requests by route template, method and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP request durations by route template and method.
    pub http_request_duration_seconds: HistogramVec,
    /// Requests refused with 429 by the rate limit per API key, by route template.
    pub http_rate_limited_total: IntCounterVec,
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
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
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
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let llm_cost_usd_total = prometheus::Counter::new(
            "recall_llm_cost_usd_total",
            "Estimated model cost (extraction and embeddings) in US dollars, from the price table.",
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
            events_rejected_total: counter_vec(
                "recall_events_rejected_total",
                "Message events the ingest routes refused, by reason.",
                &["reason"],
            ),
            publishes_total: counter_vec(
                "recall_publishes_total",
                "Publishes to the event bus by kind and outcome.",
                &["kind", "outcome"],
            ),
            publish_duration_seconds: histogram_vec(
                "recall_publish_duration_seconds",
                "Publish duration by kind (on RabbitMQ, until the broker confirmed).",
                &["kind"],
            ),
            batches_total: counter_vec("recall_batches_total", "Batches by outcome.", &["outcome"]),
            batches_started_total: counter(
                "recall_batches_started_total",
                "Batches claimed and started (every attempt).",
            ),
            batches_retried_total: counter(
                "recall_batches_retried_total",
                "Started batches that are a later attempt of an earlier failed or abandoned one.",
            ),
            batch_failures_total: counter_vec(
                "recall_batch_failures_total",
                "Failed batch attempts by stage and error kind.",
                &["stage", "kind"],
            ),
            batch_stage_seconds: histogram_vec(
                "recall_batch_stage_duration_seconds",
                "Duration of each batch stage.",
                &["stage"],
            ),
            batches_in_flight,
            last_batch_success_timestamp_seconds,
            unsynced_messages: gauge(
                "recall_unsynced_messages",
                "Unsynced messages of pairs with at least BATCH_IDLE_MIN_MESSAGES, at the last sweep.",
            ),
            due_pairs: gauge(
                "recall_due_pairs",
                "Pairs with at least BATCH_THRESHOLD unsynced messages at the last sweep.",
            ),
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
            memories_dropped_total: counter_vec(
                "recall_memories_dropped_total",
                "Proposed memories dropped before writing, by reason.",
                &["reason"],
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
                "Tokens spent on the model, by kind.",
                &["kind"],
            ),
            llm_requests_total: counter_vec(
                "recall_llm_requests_total",
                "Model requests (chat: extraction, embedding) by kind and outcome.",
                &["kind", "outcome"],
            ),
            llm_request_duration_seconds: histogram_vec(
                "recall_llm_request_duration_seconds",
                "Model request duration by kind.",
                &["kind"],
            ),
            store_operations_total: counter_vec(
                "recall_store_operations_total",
                "Message and memory store operations by store, operation and outcome.",
                &["store", "op", "outcome"],
            ),
            store_operation_duration_seconds: histogram_vec(
                "recall_store_operation_duration_seconds",
                "Message and memory store operation duration by store and operation.",
                &["store", "op"],
            ),
            amqp_connected: gauge_vec(
                "recall_amqp_connected",
                "Whether the broker connection of a role (publisher, consumer) is up.",
                &["role"],
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
            http_rate_limited_total: counter_vec(
                "recall_http_rate_limited_total",
                "HTTP requests refused by the rate limit per API key (429), by route template.",
                &["route"],
            ),
            registry,
        }
    }

    /// The outcome label of a port call: `ok`, or the error's kind.
    pub fn outcome<T>(result: &crate::PortResult<T>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
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
