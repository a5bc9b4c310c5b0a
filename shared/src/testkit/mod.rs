//! Test support shared by unit and integration tests: contract suites and deterministic doubles.

pub mod doubles;
pub mod memory_store;
pub mod message_store;
