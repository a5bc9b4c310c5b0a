//! Memory search latency: p50 and p99 of one `MemoryStore::search` (the query vector given, so
//! embedding is excluded; limit 5, live memories only) at 10k, 100k and 1M memories spread
//! evenly over 10k pairs (5 000 users x 2 characters), one search at a time from one client.
//!
//! The embedded engine (Qdrant Edge) is measured right after loading (as written: appendable
//! segments) and again after `optimize` (what the worker's housekeeping leaves: merged segments,
//! HNSW). The Qdrant server is measured too when `QDRANT_URL` (default `http://localhost:6334`)
//! answers, in a throwaway collection.
//!
//! ```sh
//! cargo bench -p recall-shared --features qdrant-edge,qdrant --bench memory_search
//! ```
//!
//! `BENCH_SIZES` (default `10000,100000,1000000`), `BENCH_DIM` (default 384, all-MiniLM-L6-v2's),
//! `BENCH_QUERIES` (searches per measurement, default 2000).

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recall_shared::adapters::qdrant::{DEFAULT_URL, QdrantSettings, QdrantStore};
use recall_shared::adapters::qdrant_edge::QdrantEdgeStore;
use recall_shared::domain::{Category, Memory, Pair};
use recall_shared::ports::{MemoryPoint, MemoryStore, SearchQuery};
use uuid::Uuid;

/// Pairs the memories are spread over.
const PAIRS: usize = 10_000;
/// Points per upsert call while loading.
const CHUNK: usize = 1_000;
/// Results per search.
const LIMIT: usize = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let dim: usize = env_or("BENCH_DIM", 384);
    let queries: usize = env_or("BENCH_QUERIES", 2000);
    println!(
        "search latency, {dim}-dim vectors, {PAIRS} pairs, limit {LIMIT}, {queries} sequential \
         searches per row"
    );
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "store", "memories", "per pair", "load s", "p50 ms", "p99 ms"
    );
    for &n in &sizes {
        let dir = tempfile::tempdir()?;
        let store = QdrantEdgeStore::open(dir.path())?;
        store.ensure_collection(dim).await?;
        let load = fill(&store, n, dim).await?;
        let (p50, p99) = measure(&store, dim, queries).await?;
        row("embedded, as loaded", n, load, p50, p99);
        let started = Instant::now();
        store.optimize().await?;
        let optimize = started.elapsed();
        let (p50, p99) = measure(&store, dim, queries).await?;
        row(
            &format!("embedded, optimized ({:.0} s)", optimize.as_secs_f64()),
            n,
            load,
            p50,
            p99,
        );
        drop(store);
        println!("  peak RSS so far: {} MiB", peak_rss_kib() / 1024);
    }
    server(&sizes, dim, queries).await?;
    Ok(())
}

/// The same measurement on the Qdrant server at `QDRANT_URL`, if one answers.
async fn server(sizes: &[usize], dim: usize, queries: usize) -> anyhow::Result<()> {
    let url = std::env::var("QDRANT_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    for &n in sizes {
        let collection = format!("recall_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let settings =
            QdrantSettings::new(&url, std::env::var("QDRANT_API_KEY").ok(), &collection, 60)
                .map_err(anyhow::Error::msg)?;
        let store = QdrantStore::new(settings)?;
        if let Err(e) = store.ensure_collection(dim).await {
            println!("server: skipped: no Qdrant server at {url} ({e})");
            return Ok(());
        }
        let result = async {
            let load = fill(&store, n, dim).await?;
            let (p50, p99) = measure(&store, dim, queries).await?;
            row("server", n, load, p50, p99);
            anyhow::Ok(())
        }
        .await;
        store.delete_collection().await?;
        result?;
    }
    Ok(())
}

fn row(store: &str, n: usize, load: Duration, p50: Duration, p99: Duration) {
    println!(
        "{store:<28} {n:>10} {:>9} {:>9.1} {:>9.3} {:>9.3}",
        n / PAIRS,
        load.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

/// The `i`-th of the 10k pairs.
fn pair(i: usize) -> Pair {
    let character = ["meher", "arjun"][i % 2];
    Pair::parse(&format!("bench-u{}", i / 2), character).expect("valid ids")
}

/// A random unit vector.
fn random_unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

/// Loads `n` memories, round-robin over the pairs; returns how long it took.
async fn fill(store: &dyn MemoryStore, n: usize, dim: usize) -> anyhow::Result<Duration> {
    let mut rng = StdRng::seed_from_u64(7);
    let created = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let pairs: Vec<Pair> = (0..PAIRS).map(pair).collect();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(CHUNK);
    for i in 0..n {
        batch.push(MemoryPoint {
            memory: Memory {
                id: Uuid::new_v4(),
                pair: pairs[i % PAIRS].clone(),
                text: format!("Benchmark memory number {i} about the user's week."),
                category: Category::ALL[i % Category::ALL.len()],
                importance: (i % 5) as u8 + 1,
                created_at: created + chrono::Duration::seconds(i as i64),
                event_time: None,
                source_message_ids: vec![format!("m{i}")],
                batch_id: format!("batch-{}", i / 7),
                superseded_by: None,
            },
            vector: random_unit(&mut rng, dim),
        });
        if batch.len() == CHUNK || i + 1 == n {
            store.upsert(&batch).await?;
            batch.clear();
        }
    }
    Ok(started.elapsed())
}

/// p50 and p99 of `queries` searches of random pairs with random query vectors.
async fn measure(
    store: &dyn MemoryStore,
    dim: usize,
    queries: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut rng = StdRng::seed_from_u64(11);
    // Warm up (first touches load pages and indexes).
    for i in 0..50 {
        search(store, pair(i * 97 % PAIRS), random_unit(&mut rng, dim)).await?;
    }
    let mut took = Vec::with_capacity(queries);
    for _ in 0..queries {
        let p = pair(rng.random_range(0..PAIRS));
        let v = random_unit(&mut rng, dim);
        let started = Instant::now();
        search(store, p, v).await?;
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

async fn search(store: &dyn MemoryStore, pair: Pair, vector: Vec<f32>) -> anyhow::Result<()> {
    let hits = store
        .search(&SearchQuery {
            pair: pair.clone(),
            vector,
            limit: LIMIT,
            score_threshold: None,
            include_superseded: false,
        })
        .await?;
    anyhow::ensure!(
        !hits.is_empty() && hits.iter().all(|h| h.memory.pair == pair),
        "search of {pair} returned {} hits, or another pair's",
        hits.len()
    );
    Ok(())
}

/// Peak resident set of this process, in KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
