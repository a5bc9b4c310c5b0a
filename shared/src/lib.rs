//! recall: long-term memory for chat companions.
//!
//! A map of this crate, from the inside out:
//!
//! - [`domain`]: validated ids, messages, memories, batch records.
//! - [`batching`]: the pure rules: is a pair due, which messages form a batch, batch and memory ids.
//! - [`ports`]: one trait per external system (message store, memory store, extractor, embedder,
//!   event bus); [`error`] is the error they all return.
//! - [`pipeline`]: the batch engine: claim, extract, embed, upsert, flip, with retries.
//! - [`context`]: ranking memories into a context block and an enhanced system prompt.
//! - [`runtime`]: the worker loops (counting events, running batch jobs) and shutdown.
//! - [`node`]: one process: the API, and the workers when it runs them (standalone, publisher,
//!   worker).
//! - [`http`]: the axum router shared by the publisher and standalone mode, its wire types and
//!   its OpenAPI document.
//! - [`client`]: a typed Rust client of that API.
//! - [`adapters`]: the real systems behind the ports.
//! - [`config`]: settings from flags and environment.
//! - [`portability`]: export and import of a user's memories as JSON lines.
//! - [`metrics`]: Prometheus metrics; [`instrumented`]: the port decorators that feed them.
//! - [`telemetry`]: log setup and what logs may say about a pair.
//! - `testkit` (feature `testkit`): contract suites every adapter of a port must pass.

pub mod adapters;
pub mod batching;
pub mod client;
pub mod config;
pub mod context;
pub mod domain;
pub mod error;
pub mod eval;
pub mod failpoints;
pub mod http;
pub mod instrumented;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod portability;
pub mod ports;
pub mod runtime;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use error::{PortError, PortResult};
