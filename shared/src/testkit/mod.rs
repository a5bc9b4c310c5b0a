//! Test support shared by unit and integration tests: contract suites (one per port, run against
//! every adapter of that port) and deterministic doubles with fault injection.

pub mod broker;
pub mod bus;
pub mod doubles;
pub mod embedder;
pub mod extractor;
pub mod fake_openai;
pub mod memory_store;
pub mod message_store;
pub mod proxy;
pub mod scenarios;
