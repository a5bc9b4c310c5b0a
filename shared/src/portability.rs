//! Moving memories out of and into a memory store as JSON lines (`recall-worker memories
//! export|import`): one memory per line, every field of [`Memory`] plus its `vector`.
//!
//! Vectors travel with the memories, so an import is exact and needs no embedding model: no
//! model to load, no embedding bill, no change in what a search finds, and it works on any
//! store (the embedded engine, a server, a test double). The price: both sides must use the
//! same embedder; the vector size is checked against the target collection before anything is
//! written. To change embedder, re-extract the memories instead. Ids are kept, so an import is
//! idempotent (running it twice overwrites, never duplicates).

use std::io::{BufRead, Write};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::domain::{CharacterName, Memory, UserId};
use crate::ports::{MemoryPoint, MemoryStore};

/// Points per upsert call when importing.
const IMPORT_CHUNK: usize = 256;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedMemory {
    /// The memory, its fields at the top level of the line.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its embedding.
    pub vector: Vec<f32>,
}

/// Writes the memories of `user` (one character, or all) to `out` as JSON lines, by character
/// then oldest first; returns how many.
pub async fn export_jsonl(
    store: &dyn MemoryStore,
    user: &UserId,
    character: Option<&CharacterName>,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let points = store
        .export(user, character)
        .await
        .with_context(|| format!("reading the memories of {user}"))?;
    for p in &points {
        let line = ExportedMemory {
            memory: p.memory.clone(),
            vector: p.vector.clone(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(points.len() as u64)
}

/// Reads JSON lines as [`export_jsonl`] writes them and upserts them by id; returns how many.
/// Every line is parsed and checked first: a bad line (named by number) writes nothing.
pub async fn import_jsonl(store: &dyn MemoryStore, input: impl BufRead) -> anyhow::Result<u64> {
    let mut points: Vec<MemoryPoint> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("reading line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: ExportedMemory = serde_json::from_str(&line)
            .with_context(|| format!("line {n} is not an exported memory"))?;
        if let Some(first) = points.first()
            && first.vector.len() != e.vector.len()
        {
            anyhow::bail!(
                "line {n}: vector of size {}, earlier lines have size {}",
                e.vector.len(),
                first.vector.len()
            );
        }
        if e.vector.is_empty() {
            anyhow::bail!("line {n}: the memory has no vector");
        }
        points.push(MemoryPoint {
            memory: e.memory,
            vector: e.vector,
        });
    }
    let Some(first) = points.first() else {
        return Ok(0);
    };
    let dimension = first.vector.len();
    store.ensure_collection(dimension).await.with_context(|| {
        format!(
            "the imported memories have vectors of size {dimension}, which the target memory \
             store must accept (same embedder on both sides)"
        )
    })?;
    for chunk in points.chunks(IMPORT_CHUNK) {
        store
            .upsert(chunk)
            .await
            .context("writing the imported memories")?;
    }
    Ok(points.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Pair;
    use crate::testkit::doubles::InMemoryMemoryStore;
    use crate::testkit::memory_store::{memory, unit_vector};

    const DIM: usize = 8;

    /// Two characters of one user (one memory superseded) and another user.
    async fn seed(store: &dyn MemoryStore) -> (UserId, Vec<MemoryPoint>) {
        store.ensure_collection(DIM).await.unwrap();
        let a = Pair::parse("u_exp", "meher").unwrap();
        let b = Pair::parse("u_exp", "arjun").unwrap();
        let other = Pair::parse("u_other", "meher").unwrap();
        let mut ms = vec![
            memory(&a, 1, "b1"),
            memory(&a, 2, "b1"),
            memory(&b, 3, "b2"),
            memory(&other, 4, "b3"),
        ];
        ms[0].superseded_by = Some(ms[1].id);
        ms[1].event_time = None;
        let points: Vec<MemoryPoint> = ms
            .into_iter()
            .enumerate()
            .map(|(i, memory)| MemoryPoint {
                memory,
                vector: unit_vector(DIM, i as u64),
            })
            .collect();
        store.upsert(&points).await.unwrap();
        (a.user_id, points)
    }

    #[tokio::test]
    async fn export_then_import_moves_the_same_memories() {
        let from = InMemoryMemoryStore::default();
        let (user, _) = seed(&from).await;
        let mut out = Vec::new();
        assert_eq!(export_jsonl(&from, &user, None, &mut out).await.unwrap(), 3);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), 3);
        // A line is the memory's fields at the top level plus its vector.
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for key in [
            "id",
            "user_id",
            "character_name",
            "text",
            "batch_id",
            "vector",
        ] {
            assert!(first.get(key).is_some(), "{key} in {first}");
        }

        let to = InMemoryMemoryStore::default();
        assert_eq!(import_jsonl(&to, out.as_slice()).await.unwrap(), 3);
        assert_eq!(
            to.export(&user, None).await.unwrap(),
            from.export(&user, None).await.unwrap()
        );
        // Idempotent: a second import overwrites by id.
        assert_eq!(import_jsonl(&to, out.as_slice()).await.unwrap(), 3);
        assert_eq!(to.export(&user, None).await.unwrap().len(), 3);

        let mut one = Vec::new();
        let arjun = CharacterName::parse("arjun").unwrap();
        assert_eq!(
            export_jsonl(&from, &user, Some(&arjun), &mut one)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_bad_line_imports_nothing_and_says_where() {
        let from = InMemoryMemoryStore::default();
        let (user, _) = seed(&from).await;
        let mut out = Vec::new();
        export_jsonl(&from, &user, None, &mut out).await.unwrap();
        let mut text = String::from_utf8(out).unwrap();
        text.push_str("{\"id\": \"nope\"}\n");
        let to = InMemoryMemoryStore::default();
        let e = import_jsonl(&to, text.as_bytes()).await.unwrap_err();
        assert!(format!("{e:#}").contains("line 4"), "{e:#}");
        assert!(to.export(&user, None).await.unwrap().is_empty());
        // A store of another dimension refuses the import before writing.
        to.ensure_collection(DIM + 1).await.unwrap();
        let good: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        let e = import_jsonl(&to, good.as_bytes()).await.unwrap_err();
        assert!(format!("{e:#}").contains("size 8"), "{e:#}");
        assert_eq!(import_jsonl(&to, &b"\n\n"[..]).await.unwrap(), 0);
    }

    #[cfg(feature = "qdrant-edge")]
    #[tokio::test]
    async fn embedded_export_imports_into_another_data_dir() {
        use crate::adapters::qdrant_edge::QdrantEdgeStore;
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from = QdrantEdgeStore::open(dir_a.path()).unwrap();
        let (user, points) = seed(&from).await;
        let mut out = Vec::new();
        assert_eq!(export_jsonl(&from, &user, None, &mut out).await.unwrap(), 3);
        drop(from);

        let to = QdrantEdgeStore::open(dir_b.path()).unwrap();
        assert_eq!(import_jsonl(&to, out.as_slice()).await.unwrap(), 3);
        let mut want: Vec<MemoryPoint> = points
            .into_iter()
            .filter(|p| p.memory.pair.user_id == user)
            .collect();
        want.sort_by(|a, b| crate::ports::export_order(&a.memory, &b.memory));
        let got = to.export(&user, None).await.unwrap();
        assert_eq!(
            got.iter().map(|p| &p.memory).collect::<Vec<_>>(),
            want.iter().map(|p| &p.memory).collect::<Vec<_>>()
        );
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.vector
                    .iter()
                    .zip(&w.vector)
                    .all(|(a, b)| (a - b).abs() < 1e-5)
            );
        }
        // Searches find the same memory with the same score on the other side.
        let q = crate::ports::SearchQuery {
            pair: want[0].memory.pair.clone(),
            vector: want[0].vector.clone(),
            limit: 1,
            score_threshold: None,
            include_superseded: true,
        };
        let hit = &to.search(&q).await.unwrap()[0];
        assert_eq!(hit.memory, want[0].memory);
        assert!((hit.score - 1.0).abs() < 1e-3);
    }
}
