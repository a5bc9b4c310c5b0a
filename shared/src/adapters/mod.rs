//! Adapters: each real system behind its port, one module per adapter.

#[cfg(feature = "firestore")]
pub mod firestore;
pub mod memory_bus;
#[cfg(any(feature = "qdrant-edge", feature = "qdrant"))]
mod memory_payload;
#[cfg(feature = "local-embedder")]
pub mod minilm;
pub mod offline_extractor;
pub mod openai;
#[cfg(feature = "qdrant")]
pub mod qdrant;
#[cfg(feature = "qdrant-edge")]
pub mod qdrant_edge;
pub mod rabbitmq;
pub mod sqlite;
