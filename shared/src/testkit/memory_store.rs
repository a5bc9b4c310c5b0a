//! Contract suite for [`MemoryStore`] adapters: every adapter (Qdrant Edge, Qdrant server, ...)
//! must pass [`run_all`].
//!
//! The cases test the port's promises, not an implementation: tenant isolation by pair,
//! idempotent upserts, cosine scores, superseded memories hidden by default, exact delete counts
//! and [`PortError::Rejected`] for bad input. Every case uses fresh, unique user ids, so the
//! suite can run against a collection shared with other data (e.g. a Qdrant server).

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::domain::{Category, CharacterName, Memory, Pair, ScoredMemory, UserId};
use crate::error::{PortError, PortResult};
use crate::ports::{MemoryPoint, MemoryStore, SearchQuery, export_order};

/// Smallest vector dimension the suite can build its test geometry in.
pub const MIN_DIMENSION: usize = 4;

/// How far a score may be from the exact cosine (engines may quantize or use `f32` math).
const SCORE_TOLERANCE: f32 = 0.01;

/// Runs every case of the contract against `store`, whose vectors have `dimension` components.
pub async fn run_all(store: &dyn MemoryStore, dimension: usize) {
    assert!(
        dimension >= MIN_DIMENSION,
        "memory-store contract: dimension must be at least {MIN_DIMENSION}, got {dimension}"
    );
    ping_answers(store, dimension).await;
    ensure_collection_is_idempotent(store, dimension).await;
    upsert_then_search_round_trips(store, dimension).await;
    upsert_overwrites_by_id(store, dimension).await;
    search_is_limited_to_the_pair(store, dimension).await;
    search_respects_limit_threshold_and_order(store, dimension).await;
    superseded_hidden_unless_asked(store, dimension).await;
    count_with_and_without_superseded(store, dimension).await;
    list_returns_the_pair_oldest_first(store, dimension).await;
    delete_batch_deletes_only_that_batch(store, dimension).await;
    delete_pair_deletes_only_that_pair(store, dimension).await;
    delete_user_deletes_every_character_of_that_user(store, dimension).await;
    export_returns_the_users_points(store, dimension).await;
    wrong_dimension_is_rejected(store, dimension).await;
    tenant_isolation_under_random_searches(store, dimension).await;
}

/// `ping` answers once the collection exists.
pub async fn ping_answers(store: &dyn MemoryStore, dimension: usize) {
    ensure(store, dimension, "ping_answers").await;
    ok(store.ping().await, "ping_answers: ping");
}

/// `ensure_collection` is idempotent; another dimension afterwards is `Rejected` and harmless.
pub async fn ensure_collection_is_idempotent(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "ensure_collection_is_idempotent";
    ensure(store, dimension, CASE).await;
    ensure(store, dimension, CASE).await;

    let pair = fresh_pair(CASE, "meher");
    let m = memory(&pair, 1, "b1");
    upsert(store, &[point(&m, unit_vector(dimension, 1))], CASE).await;

    for other in [dimension + 1, dimension - 1] {
        assert_rejected(
            store.ensure_collection(other).await,
            &format!("{CASE}: ensure_collection({other}) after ensure_collection({dimension})"),
        );
    }

    ensure(store, dimension, CASE).await;
    assert_eq!(
        count(store, &pair, true, CASE).await,
        1,
        "{CASE}: a rejected ensure_collection must not touch existing memories"
    );
    cleanup(store, &pair).await;
}

/// An upserted memory comes back from search with score ~1.0 for its own vector, every field
/// intact (including `superseded_by`, `event_time` and `source_message_ids`).
pub async fn upsert_then_search_round_trips(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "upsert_then_search_round_trips";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");

    let live = memory(&pair, 1, "batch-rt");
    let mut replaced = memory(&pair, 2, "batch-rt-old");
    replaced.event_time = None;
    replaced.source_message_ids = vec![];
    replaced.category = Category::Preference;
    replaced.importance = 1;
    replaced.superseded_by = Some(live.id);
    let (v_live, v_replaced) = (unit_vector(dimension, 11), unit_vector(dimension, 12));
    upsert(
        store,
        &[
            point(&live, v_live.clone()),
            point(&replaced, v_replaced.clone()),
        ],
        CASE,
    )
    .await;

    let hits = search(store, query(&pair, v_live, 10, None, false), CASE).await;
    assert_eq!(
        ids(&hits),
        vec![live.id],
        "{CASE}: default search must return exactly the live memory"
    );
    assert_score(hits[0].score, 1.0, &format!("{CASE}: own vector"));
    assert_eq!(
        hits[0].memory, live,
        "{CASE}: every field must round-trip through upsert and search"
    );

    let hits = search(store, query(&pair, v_replaced, 10, None, true), CASE).await;
    assert_eq!(
        hits.first().map(|h| h.memory.id),
        Some(replaced.id),
        "{CASE}: its own vector must rank the superseded memory first"
    );
    assert_score(
        hits[0].score,
        1.0,
        &format!("{CASE}: own vector (superseded)"),
    );
    assert_eq!(
        hits[0].memory, replaced,
        "{CASE}: a superseded memory and its empty optional fields must round-trip"
    );
    cleanup(store, &pair).await;
}

/// Upserting the same id twice overwrites: one memory, the newer fields and vector.
pub async fn upsert_overwrites_by_id(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "upsert_overwrites_by_id";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");

    let first = memory(&pair, 1, "batch-ow");
    upsert(store, &[point(&first, unit_vector(dimension, 21))], CASE).await;
    // The same call again (a retried batch) is harmless.
    upsert(store, &[point(&first, unit_vector(dimension, 21))], CASE).await;
    ok(
        store.upsert(&[]).await,
        &format!("{CASE}: upsert of no points"),
    );

    let mut second = first.clone();
    second.text = "User now lives in Lisbon.".into();
    second.category = Category::Location;
    second.importance = 4;
    let v_second = unit_vector(dimension, 22);
    upsert(store, &[point(&second, v_second.clone())], CASE).await;

    assert_eq!(
        count(store, &pair, true, CASE).await,
        1,
        "{CASE}: count after overwrite"
    );
    assert_eq!(
        list(store, &pair, CASE).await,
        vec![second.clone()],
        "{CASE}: list after overwrite"
    );
    let hits = search(store, query(&pair, v_second, 10, None, false), CASE).await;
    assert_eq!(
        ids(&hits),
        vec![second.id],
        "{CASE}: search after overwrite"
    );
    assert_score(
        hits[0].score,
        1.0,
        &format!("{CASE}: the new vector replaced the old"),
    );
    assert_eq!(
        hits[0].memory, second,
        "{CASE}: the new fields replaced the old"
    );
    cleanup(store, &pair).await;
}

/// Search, count and list never cross pairs: not the same user's other character, not another
/// user's same character, even with identical vectors.
pub async fn search_is_limited_to_the_pair(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "search_is_limited_to_the_pair";
    ensure(store, dimension, CASE).await;
    let mine = fresh_pair(CASE, "meher");
    let my_other_character = Pair::new(mine.user_id.clone(), character("arjun"));
    let other_user_same_character = fresh_pair(CASE, "meher");

    let v = unit_vector(dimension, 31);
    let m_mine = memory(&mine, 1, "batch-iso");
    let m_other_char = memory(&my_other_character, 2, "batch-iso");
    let m_other_user = memory(&other_user_same_character, 3, "batch-iso");
    upsert(
        store,
        &[
            point(&m_other_char, v.clone()),
            point(&m_mine, v.clone()),
            point(&m_other_user, v.clone()),
        ],
        CASE,
    )
    .await;

    for (pair, want) in [
        (&mine, m_mine.id),
        (&my_other_character, m_other_char.id),
        (&other_user_same_character, m_other_user.id),
    ] {
        for include_superseded in [false, true] {
            let hits = search(
                store,
                query(pair, v.clone(), 100, None, include_superseded),
                CASE,
            )
            .await;
            assert_eq!(
                ids(&hits),
                vec![want],
                "{CASE}: search of {pair} (include_superseded={include_superseded}) \
                 must return only that pair's memory"
            );
            assert_eq!(&hits[0].memory.pair, pair, "{CASE}: returned memory's pair");
        }
        assert_eq!(
            count(store, pair, true, CASE).await,
            1,
            "{CASE}: count of {pair}"
        );
        let listed = list(store, pair, CASE).await;
        assert_eq!(
            listed.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![want],
            "{CASE}: list of {pair}"
        );
    }

    // Setting superseded through another pair must not reach this pair's memory.
    let changed = ok(
        store
            .set_superseded(&my_other_character, &[m_mine.id], Uuid::new_v4())
            .await,
        &format!("{CASE}: set_superseded through another pair"),
    );
    assert_eq!(changed, 0, "{CASE}: set_superseded must not cross pairs");
    assert_eq!(
        list(store, &mine, CASE).await,
        vec![m_mine.clone()],
        "{CASE}: memory untouched by another pair's set_superseded"
    );

    for pair in [&mine, &my_other_character, &other_user_same_character] {
        cleanup(store, pair).await;
    }
}

/// Results are best first, at most `limit`, none below `score_threshold`, scores are cosines.
pub async fn search_respects_limit_threshold_and_order(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "search_respects_limit_threshold_and_order";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");

    let q = unit_vector(dimension, 41);
    // Cosine to the query of each memory, upserted in a shuffled order.
    let cosines = [0.5_f32, 0.95, -0.3, 0.8, 0.2];
    let memories: Vec<Memory> = (0..cosines.len())
        .map(|i| memory(&pair, i as u64, "batch-rank"))
        .collect();
    let points: Vec<MemoryPoint> = memories
        .iter()
        .zip(cosines)
        .enumerate()
        .map(|(i, (m, c))| point(m, vector_at_cosine(&q, 100 + i as u64, c)))
        .collect();
    upsert(store, &points, CASE).await;

    let mut by_score: Vec<(Uuid, f32)> = memories.iter().map(|m| m.id).zip(cosines).collect();
    by_score.sort_by(|a, b| b.1.total_cmp(&a.1));
    let want_ids: Vec<Uuid> = by_score.iter().map(|(id, _)| *id).collect();

    let hits = search(store, query(&pair, q.clone(), 10, None, false), CASE).await;
    assert_eq!(ids(&hits), want_ids, "{CASE}: all results, best first");
    for (hit, (_, cosine)) in hits.iter().zip(&by_score) {
        assert_score(hit.score, *cosine, &format!("{CASE}: score is the cosine"));
    }
    assert!(
        hits.windows(2).all(|w| w[0].score >= w[1].score),
        "{CASE}: scores must not increase: {:?}",
        hits.iter().map(|h| h.score).collect::<Vec<_>>()
    );

    let hits = search(store, query(&pair, q.clone(), 2, None, false), CASE).await;
    assert_eq!(
        ids(&hits),
        want_ids[..2].to_vec(),
        "{CASE}: limit 2 keeps the best two"
    );

    let hits = search(store, query(&pair, q.clone(), 1, None, false), CASE).await;
    assert_eq!(
        ids(&hits),
        want_ids[..1].to_vec(),
        "{CASE}: limit 1 keeps the best"
    );

    let hits = search(store, query(&pair, q.clone(), 10, Some(0.6), false), CASE).await;
    assert_eq!(
        ids(&hits),
        want_ids[..2].to_vec(),
        "{CASE}: score_threshold 0.6 keeps the 0.95 and 0.8 memories"
    );
    assert!(
        hits.iter().all(|h| h.score >= 0.6),
        "{CASE}: no score below the threshold"
    );

    let hits = search(store, query(&pair, q.clone(), 1, Some(0.6), false), CASE).await;
    assert_eq!(
        ids(&hits),
        want_ids[..1].to_vec(),
        "{CASE}: limit and threshold together"
    );

    let hits = search(store, query(&pair, q.clone(), 10, Some(0.99), false), CASE).await;
    assert!(
        hits.is_empty(),
        "{CASE}: threshold above every score returns nothing"
    );

    let hits = search(store, query(&pair, q, 10, Some(0.0), false), CASE).await;
    assert_eq!(
        ids(&hits),
        want_ids[..4].to_vec(),
        "{CASE}: threshold 0.0 drops only the negative cosine"
    );
    cleanup(store, &pair).await;
}

/// `set_superseded` hides memories from default search; `include_superseded` shows them with
/// `superseded_by` set. Unknown ids and ids of other pairs change nothing.
pub async fn superseded_hidden_unless_asked(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "superseded_hidden_unless_asked";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let other = fresh_pair(CASE, "meher");

    let v = unit_vector(dimension, 51);
    let old_a = memory(&pair, 1, "batch-old");
    let old_b = memory(&pair, 2, "batch-old");
    let kept = memory(&pair, 3, "batch-old");
    let newer = memory(&pair, 4, "batch-new");
    let foreign = memory(&other, 5, "batch-old");
    upsert(
        store,
        &[
            point(&old_a, vector_at_cosine(&v, 52, 0.99)),
            point(&old_b, vector_at_cosine(&v, 53, 0.9)),
            point(&kept, vector_at_cosine(&v, 54, 0.7)),
            point(&newer, vector_at_cosine(&v, 55, 0.8)),
            point(&foreign, v.clone()),
        ],
        CASE,
    )
    .await;

    let changed = ok(
        store
            .set_superseded(
                &pair,
                &[old_a.id, old_b.id, foreign.id, Uuid::new_v4()],
                newer.id,
            )
            .await,
        &format!("{CASE}: set_superseded"),
    );
    assert_eq!(
        changed, 2,
        "{CASE}: only the pair's two existing memories change (not another pair's, not unknown ids)"
    );
    let none = ok(
        store.set_superseded(&pair, &[], newer.id).await,
        &format!("{CASE}: set_superseded of no ids"),
    );
    assert_eq!(none, 0, "{CASE}: set_superseded of no ids changes nothing");

    let hits = search(store, query(&pair, v.clone(), 10, None, false), CASE).await;
    assert_eq!(
        ids(&hits),
        vec![newer.id, kept.id],
        "{CASE}: default search hides superseded memories"
    );
    assert!(
        hits.iter().all(|h| h.memory.superseded_by.is_none()),
        "{CASE}: default search returns only live memories"
    );

    let hits = search(store, query(&pair, v.clone(), 10, None, true), CASE).await;
    assert_eq!(
        ids(&hits),
        vec![old_a.id, old_b.id, newer.id, kept.id],
        "{CASE}: include_superseded returns every memory of the pair, best first"
    );
    for hit in &hits {
        let want = if hit.memory.id == old_a.id || hit.memory.id == old_b.id {
            Some(newer.id)
        } else {
            None
        };
        assert_eq!(
            hit.memory.superseded_by, want,
            "{CASE}: superseded_by of {}",
            hit.memory.id
        );
    }
    let mut want_old_a = old_a.clone();
    want_old_a.superseded_by = Some(newer.id);
    assert_eq!(
        hits[0].memory, want_old_a,
        "{CASE}: set_superseded changes superseded_by only"
    );

    let foreign_now = list(store, &other, CASE).await;
    assert_eq!(
        foreign_now,
        vec![foreign.clone()],
        "{CASE}: another pair's memory is untouched"
    );
    cleanup(store, &pair).await;
    cleanup(store, &other).await;
}

/// `count` counts the pair's memories, superseded ones only when asked.
pub async fn count_with_and_without_superseded(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "count_with_and_without_superseded";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    assert_eq!(
        count(store, &pair, false, CASE).await,
        0,
        "{CASE}: empty pair"
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        0,
        "{CASE}: empty pair (all)"
    );

    let ms: Vec<Memory> = (0..3).map(|i| memory(&pair, i, "batch-count")).collect();
    let points: Vec<MemoryPoint> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| point(m, unit_vector(dimension, 60 + i as u64)))
        .collect();
    upsert(store, &points, CASE).await;
    assert_eq!(
        count(store, &pair, false, CASE).await,
        3,
        "{CASE}: before superseding"
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        3,
        "{CASE}: before superseding (all)"
    );

    let changed = ok(
        store.set_superseded(&pair, &[ms[0].id], ms[2].id).await,
        &format!("{CASE}: set_superseded"),
    );
    assert_eq!(changed, 1, "{CASE}: set_superseded count");
    assert_eq!(
        count(store, &pair, false, CASE).await,
        2,
        "{CASE}: live memories"
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        3,
        "{CASE}: all memories"
    );
    cleanup(store, &pair).await;
}

/// `list` returns every memory of the pair (superseded included), oldest `created_at` first,
/// across more than one page of results.
pub async fn list_returns_the_pair_oldest_first(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "list_returns_the_pair_oldest_first";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let neighbour = Pair::new(pair.user_id.clone(), character("arjun"));
    assert!(
        list(store, &pair, CASE).await.is_empty(),
        "{CASE}: empty pair lists nothing"
    );

    // 300 memories (more than a typical scroll page), created_at in a scrambled order that is
    // unrelated to id order or insertion order.
    const N: u64 = 300;
    let mut ms: Vec<Memory> = (0..N)
        .map(|i| {
            let mut m = memory(&pair, i, &format!("batch-list-{}", i % 7));
            m.created_at = base_time() + Duration::milliseconds(((i * 7919) % N) as i64 * 1001);
            m
        })
        .collect();
    ms[5].superseded_by = Some(ms[6].id);
    for chunk in ms.chunks(64) {
        let points: Vec<MemoryPoint> = chunk
            .iter()
            .map(|m| point(m, unit_vector(dimension, m.importance as u64 * 1000 + 7)))
            .collect();
        upsert(store, &points, CASE).await;
    }
    upsert(
        store,
        &[point(
            &memory(&neighbour, 0, "batch-list-0"),
            unit_vector(dimension, 8),
        )],
        CASE,
    )
    .await;

    let listed = list(store, &pair, CASE).await;
    let mut want = ms.clone();
    want.sort_by_key(|m| m.created_at);
    assert_eq!(
        listed.len(),
        want.len(),
        "{CASE}: list returns every memory of the pair, superseded included"
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at),
        "{CASE}: list must be oldest first"
    );
    assert_eq!(
        listed, want,
        "{CASE}: list returns the pair's memories, intact, oldest first"
    );
    cleanup(store, &pair).await;
    cleanup(store, &neighbour).await;
}

/// `delete_batch` deletes the pair's memories of that batch (superseded too), nothing else.
pub async fn delete_batch_deletes_only_that_batch(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "delete_batch_deletes_only_that_batch";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let neighbour = Pair::new(pair.user_id.clone(), character("arjun"));
    let stranger = fresh_pair(CASE, "meher");

    let b1_a = memory(&pair, 1, "batch-1");
    let mut b1_b = memory(&pair, 2, "batch-1");
    let b2 = memory(&pair, 3, "batch-2");
    b1_b.superseded_by = Some(b2.id);
    // Same batch id string in other pairs: must survive.
    let n_b1 = memory(&neighbour, 4, "batch-1");
    let s_b1 = memory(&stranger, 5, "batch-1");
    upsert(
        store,
        &[
            b1_a.clone(),
            b1_b.clone(),
            b2.clone(),
            n_b1.clone(),
            s_b1.clone(),
        ]
        .iter()
        .enumerate()
        .map(|(i, m)| point(m, unit_vector(dimension, 70 + i as u64)))
        .collect::<Vec<_>>(),
        CASE,
    )
    .await;

    let deleted = ok(
        store.delete_batch(&pair, "batch-1").await,
        &format!("{CASE}: delete_batch"),
    );
    assert_eq!(
        deleted, 2,
        "{CASE}: deletes both batch-1 memories, superseded one included"
    );
    assert_eq!(
        list(store, &pair, CASE).await,
        vec![b2.clone()],
        "{CASE}: batch-2 survives"
    );
    assert_eq!(
        list(store, &neighbour, CASE).await,
        vec![n_b1],
        "{CASE}: other character"
    );
    assert_eq!(
        list(store, &stranger, CASE).await,
        vec![s_b1],
        "{CASE}: other user"
    );

    let again = ok(
        store.delete_batch(&pair, "batch-1").await,
        &format!("{CASE}: delete_batch again"),
    );
    assert_eq!(again, 0, "{CASE}: deleting a deleted batch deletes nothing");
    let unknown = ok(
        store.delete_batch(&pair, "batch-unknown").await,
        &format!("{CASE}: delete_batch of an unknown batch"),
    );
    assert_eq!(unknown, 0, "{CASE}: unknown batch");
    for p in [&pair, &neighbour, &stranger] {
        cleanup(store, p).await;
    }
}

/// `delete_pair` deletes every memory of the pair (superseded too) and nothing else.
pub async fn delete_pair_deletes_only_that_pair(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "delete_pair_deletes_only_that_pair";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let neighbour = Pair::new(pair.user_id.clone(), character("arjun"));
    let stranger = fresh_pair(CASE, "meher");

    let mut ms = [
        memory(&pair, 1, "b1"),
        memory(&pair, 2, "b1"),
        memory(&pair, 3, "b2"),
        memory(&neighbour, 4, "b1"),
        memory(&neighbour, 5, "b2"),
        memory(&stranger, 6, "b1"),
    ];
    ms[0].superseded_by = Some(ms[2].id);
    upsert(
        store,
        &ms.iter()
            .enumerate()
            .map(|(i, m)| point(m, unit_vector(dimension, 80 + i as u64)))
            .collect::<Vec<_>>(),
        CASE,
    )
    .await;

    let deleted = ok(
        store.delete_pair(&pair).await,
        &format!("{CASE}: delete_pair"),
    );
    assert_eq!(
        deleted, 3,
        "{CASE}: deletes the pair's three memories, superseded included"
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        0,
        "{CASE}: pair is empty"
    );
    assert_eq!(
        count(store, &neighbour, true, CASE).await,
        2,
        "{CASE}: other character"
    );
    assert_eq!(
        count(store, &stranger, true, CASE).await,
        1,
        "{CASE}: other user"
    );
    let hits = search(
        store,
        query(&pair, unit_vector(dimension, 80), 10, None, true),
        CASE,
    )
    .await;
    assert!(
        hits.is_empty(),
        "{CASE}: search finds nothing after delete_pair"
    );

    let again = ok(
        store.delete_pair(&pair).await,
        &format!("{CASE}: delete_pair again"),
    );
    assert_eq!(again, 0, "{CASE}: deleting an empty pair deletes nothing");
    cleanup(store, &neighbour).await;
    cleanup(store, &stranger).await;
}

/// `delete_user` deletes every memory of the user, all characters, and nothing of other users.
pub async fn delete_user_deletes_every_character_of_that_user(
    store: &dyn MemoryStore,
    dimension: usize,
) {
    const CASE: &str = "delete_user_deletes_every_character_of_that_user";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let neighbour = Pair::new(pair.user_id.clone(), character("arjun"));
    let stranger = fresh_pair(CASE, "meher");
    // A user id that merely starts with the deleted one must survive.
    let prefixed = Pair::new(user(&format!("{}x", pair.user_id)), character("meher"));

    let mut ms = [
        memory(&pair, 1, "b1"),
        memory(&pair, 2, "b2"),
        memory(&neighbour, 3, "b1"),
        memory(&stranger, 4, "b1"),
        memory(&prefixed, 5, "b1"),
    ];
    ms[0].superseded_by = Some(ms[1].id);
    upsert(
        store,
        &ms.iter()
            .enumerate()
            .map(|(i, m)| point(m, unit_vector(dimension, 90 + i as u64)))
            .collect::<Vec<_>>(),
        CASE,
    )
    .await;

    let deleted = ok(
        store.delete_user(&pair.user_id).await,
        &format!("{CASE}: delete_user"),
    );
    assert_eq!(
        deleted, 3,
        "{CASE}: deletes the user's memories with every character"
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        0,
        "{CASE}: first character"
    );
    assert_eq!(
        count(store, &neighbour, true, CASE).await,
        0,
        "{CASE}: second character"
    );
    assert_eq!(
        count(store, &stranger, true, CASE).await,
        1,
        "{CASE}: other user"
    );
    assert_eq!(
        count(store, &prefixed, true, CASE).await,
        1,
        "{CASE}: prefixed user id"
    );

    let again = ok(
        store.delete_user(&pair.user_id).await,
        &format!("{CASE}: delete_user again"),
    );
    assert_eq!(again, 0, "{CASE}: deleting a deleted user deletes nothing");
    cleanup(store, &stranger).await;
    cleanup(store, &prefixed).await;
}

/// `export` returns a user's memories with their vectors (all characters, or one), superseded
/// ones included, by character then oldest first, and nothing of any other user.
pub async fn export_returns_the_users_points(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "export_returns_the_users_points";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");
    let neighbour = Pair::new(pair.user_id.clone(), character("arjun"));
    let stranger = fresh_pair(CASE, "meher");
    let prefixed = Pair::new(user(&format!("{}x", pair.user_id)), character("meher"));

    let mut ms = [
        memory(&pair, 3, "b1"),
        memory(&pair, 1, "b1"),
        memory(&neighbour, 2, "b2"),
        memory(&stranger, 4, "b1"),
        memory(&prefixed, 5, "b1"),
    ];
    ms[0].superseded_by = Some(ms[1].id);
    let points: Vec<MemoryPoint> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| point(m, unit_vector(dimension, 95 + i as u64)))
        .collect();
    upsert(store, &points, CASE).await;

    let mut want: Vec<MemoryPoint> = points[..3].to_vec();
    want.sort_by(|a, b| export_order(&a.memory, &b.memory));
    let got = ok(
        store.export(&pair.user_id, None).await,
        &format!("{CASE}: export of every character"),
    );
    assert_points_eq(&got, &want, &format!("{CASE}: export of every character"));
    assert_eq!(
        got[0].memory.pair.character_name.as_str(),
        "arjun",
        "{CASE}: ordered by character"
    );

    let got = ok(
        store
            .export(&pair.user_id, Some(&neighbour.character_name))
            .await,
        &format!("{CASE}: export of one character"),
    );
    assert_points_eq(
        &got,
        &[points[2].clone()],
        &format!("{CASE}: export of one character"),
    );

    let nobody = fresh_pair(CASE, "meher");
    let got = ok(
        store.export(&nobody.user_id, None).await,
        &format!("{CASE}: export of an unknown user"),
    );
    assert!(got.is_empty(), "{CASE}: an unknown user exports nothing");
    for p in [&pair, &neighbour, &stranger, &prefixed] {
        cleanup(store, p).await;
    }
}

/// Tenant isolation at scale: 50 users x 3 characters whose memories share a small pool of
/// vectors (so other pairs' memories are always the best matches), then random searches (random
/// pair, query, limit, threshold, superseded or not) never return another pair's memory, return
/// exactly as many as the pair has, and count, list and export see exactly the pair's (user's)
/// memories. The seed is random and printed in every failure message.
pub async fn tenant_isolation_under_random_searches(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "tenant_isolation_under_random_searches";
    const USERS: usize = 50;
    const CHARACTERS: [&str; 3] = ["meher", "arjun", "zoya"];
    const PER_PAIR: u64 = 4;
    const POOL: u64 = 6;
    const SEARCHES: usize = 600;
    ensure(store, dimension, CASE).await;
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let case = format!("{CASE} (seed {seed})");
    let pool: Vec<Vec<f32>> = (0..POOL).map(|i| unit_vector(dimension, 500 + i)).collect();

    let users: Vec<UserId> = (0..USERS)
        .map(|_| fresh_pair(CASE, "meher").user_id)
        .collect();
    let mut by_pair: HashMap<Pair, Vec<MemoryPoint>> = HashMap::new();
    let mut all = Vec::new();
    for u in &users {
        for c in CHARACTERS {
            let pair = Pair::new(u.clone(), character(c));
            let mut points: Vec<MemoryPoint> = (0..PER_PAIR)
                .map(|n| {
                    let m = memory(&pair, n, &format!("batch-{}", n % 2));
                    point(&m, pool[rng.random_range(0..POOL) as usize].clone())
                })
                .collect();
            if rng.random_bool(0.5) {
                points[0].memory.superseded_by = Some(points[1].memory.id);
            }
            all.extend(points.iter().cloned());
            by_pair.insert(pair, points);
        }
    }
    for chunk in all.chunks(100) {
        upsert(store, chunk, &case).await;
    }
    let pairs: Vec<Pair> = {
        let mut p: Vec<Pair> = by_pair.keys().cloned().collect();
        p.sort();
        p
    };

    for i in 0..SEARCHES {
        let pair = &pairs[rng.random_range(0..pairs.len())];
        let vector = if rng.random_bool(0.8) {
            pool[rng.random_range(0..POOL) as usize].clone()
        } else {
            unit_vector(dimension, rng.random())
        };
        let limit = rng.random_range(1..=PER_PAIR as usize + 3);
        let include_superseded = rng.random_bool(0.5);
        let threshold = rng.random_bool(0.3).then_some(-1.0);
        let hits = search(
            store,
            query(pair, vector, limit, threshold, include_superseded),
            &case,
        )
        .await;
        let eligible: Vec<Uuid> = by_pair[pair]
            .iter()
            .filter(|p| include_superseded || p.memory.superseded_by.is_none())
            .map(|p| p.memory.id)
            .collect();
        assert!(
            hits.iter().all(|h| eligible.contains(&h.memory.id)),
            "{case}: search {i} of {pair} returned a memory that is not the pair's"
        );
        assert_eq!(
            hits.len(),
            limit.min(eligible.len()),
            "{case}: search {i} of {pair} (limit {limit}) must return the pair's memories, \
             as many as the limit allows"
        );
    }

    for pair in &pairs {
        let want = &by_pair[pair];
        let live = want
            .iter()
            .filter(|p| p.memory.superseded_by.is_none())
            .count() as u64;
        assert_eq!(
            count(store, pair, true, &case).await,
            PER_PAIR,
            "{case}: count {pair}"
        );
        assert_eq!(
            count(store, pair, false, &case).await,
            live,
            "{case}: live {pair}"
        );
        let mut want_memories: Vec<Memory> = want.iter().map(|p| p.memory.clone()).collect();
        want_memories.sort_by_key(|m| (m.created_at, m.id));
        assert_eq!(
            list(store, pair, &case).await,
            want_memories,
            "{case}: list {pair}"
        );
    }
    for u in &users {
        let got = ok(store.export(u, None).await, &format!("{case}: export {u}"));
        let mut want: Vec<MemoryPoint> = by_pair
            .iter()
            .filter(|(p, _)| &p.user_id == u)
            .flat_map(|(_, points)| points.iter().cloned())
            .collect();
        want.sort_by(|a, b| export_order(&a.memory, &b.memory));
        assert_points_eq(&got, &want, &format!("{case}: export {u}"));
    }
    for u in &users {
        let deleted = ok(store.delete_user(u).await, &format!("{case}: delete_user"));
        assert_eq!(
            deleted,
            PER_PAIR * CHARACTERS.len() as u64,
            "{case}: delete_user {u}"
        );
    }
}

/// Same memories in the same order, and vectors equal up to float rounding (a cosine store may
/// re-normalise them).
fn assert_points_eq(got: &[MemoryPoint], want: &[MemoryPoint], what: &str) {
    let memories = |ps: &[MemoryPoint]| ps.iter().map(|p| p.memory.clone()).collect::<Vec<_>>();
    assert_eq!(
        memories(got),
        memories(want),
        "memory-store contract: {what}: memories"
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.vector.len(),
            w.vector.len(),
            "memory-store contract: {what}: vector length of {}",
            w.memory.id
        );
        assert!(
            g.vector
                .iter()
                .zip(&w.vector)
                .all(|(a, b)| (a - b).abs() < 1e-4),
            "memory-store contract: {what}: vector of {} changed",
            w.memory.id
        );
    }
}

/// A vector of the wrong length is `Rejected` (not a panic), in upsert and in search, and a
/// rejected upsert stores nothing.
pub async fn wrong_dimension_is_rejected(store: &dyn MemoryStore, dimension: usize) {
    const CASE: &str = "wrong_dimension_is_rejected";
    ensure(store, dimension, CASE).await;
    let pair = fresh_pair(CASE, "meher");

    for bad in [dimension + 1, dimension - 1, 0] {
        let m = memory(&pair, 1, "batch-dim");
        assert_rejected(
            store.upsert(&[point(&m, unit_vector_any(bad, 1))]).await,
            &format!("{CASE}: upsert of a {bad}-component vector into dimension {dimension}"),
        );
        assert_rejected(
            store
                .search(&query(&pair, unit_vector_any(bad, 2), 10, None, false))
                .await,
            &format!("{CASE}: search with a {bad}-component vector in dimension {dimension}"),
        );
    }

    // One bad point spoils the whole call: nothing of it is stored.
    let good = memory(&pair, 2, "batch-dim");
    let bad = memory(&pair, 3, "batch-dim");
    assert_rejected(
        store
            .upsert(&[
                point(&good, unit_vector(dimension, 3)),
                point(&bad, unit_vector_any(dimension + 1, 4)),
            ])
            .await,
        &format!("{CASE}: upsert with one wrong-dimension point"),
    );
    assert_eq!(
        count(store, &pair, true, CASE).await,
        0,
        "{CASE}: a rejected upsert must store nothing"
    );

    // The store still works afterwards.
    upsert(store, &[point(&good, unit_vector(dimension, 3))], CASE).await;
    assert_eq!(
        count(store, &pair, true, CASE).await,
        1,
        "{CASE}: store usable afterwards"
    );
    cleanup(store, &pair).await;
}

// ---- test data ----

/// A deterministic unit vector of `dimension` components from `seed` (splitmix64 noise).
pub fn unit_vector(dimension: usize, seed: u64) -> Vec<f32> {
    assert!(dimension > 0, "unit_vector: dimension must be positive");
    unit_vector_any(dimension, seed)
}

/// Like [`unit_vector`] but allows `dimension == 0` (an empty vector, for rejection tests).
fn unit_vector_any(dimension: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let raw: Vec<f64> = (0..dimension)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // Uniform in [-1, 1).
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    normalize(raw)
}

/// A deterministic unit vector whose cosine similarity to the unit vector `base` is `cosine`.
pub fn vector_at_cosine(base: &[f32], seed: u64, cosine: f32) -> Vec<f32> {
    assert!(
        base.len() >= 2,
        "vector_at_cosine: need at least 2 dimensions"
    );
    assert!(
        (-1.0..=1.0).contains(&cosine),
        "vector_at_cosine: cosine {cosine} out of range"
    );
    let base: Vec<f64> = base.iter().map(|&x| f64::from(x)).collect();
    // Gram-Schmidt: a unit vector orthogonal to `base`, from deterministic noise.
    let mut seed = seed;
    let orthogonal = loop {
        let noise: Vec<f64> = unit_vector(base.len(), seed)
            .into_iter()
            .map(f64::from)
            .collect();
        let along: f64 = noise.iter().zip(&base).map(|(n, b)| n * b).sum();
        let rest: Vec<f64> = noise
            .iter()
            .zip(&base)
            .map(|(n, b)| n - along * b)
            .collect();
        if rest.iter().map(|x| x * x).sum::<f64>() > 1e-6 {
            break normalize(rest)
                .into_iter()
                .map(f64::from)
                .collect::<Vec<f64>>();
        }
        seed = seed.wrapping_add(1);
    };
    let cosine = f64::from(cosine);
    let sine = (1.0 - cosine * cosine).max(0.0).sqrt();
    normalize(
        base.iter()
            .zip(&orthogonal)
            .map(|(b, o)| cosine * b + sine * o)
            .collect(),
    )
}

fn normalize(v: Vec<f64>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.into_iter().map(|x| x as f32).collect();
    }
    v.into_iter().map(|x| (x / norm) as f32).collect()
}

/// A pair with a fresh, unique user id (`ct-<case>-<uuid>`), so cases never see each other's data.
pub fn fresh_pair(case: &str, character_name: &str) -> Pair {
    let tag: String = case
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    Pair::new(
        user(&format!("ct-{tag}-{}", Uuid::new_v4().simple())),
        character(character_name),
    )
}

fn user(raw: &str) -> UserId {
    UserId::parse(raw).unwrap_or_else(|e| panic!("memory-store contract: bad user id {raw:?}: {e}"))
}

fn character(raw: &str) -> CharacterName {
    CharacterName::parse(raw)
        .unwrap_or_else(|e| panic!("memory-store contract: bad character {raw:?}: {e}"))
}

/// A fixed, millisecond-precise instant the test data is dated from.
fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53).unwrap() + Duration::milliseconds(589)
}

/// A memory of `pair` with every field set (a fresh random id; `n` varies the content).
pub fn memory(pair: &Pair, n: u64, batch_id: &str) -> Memory {
    let category = Category::ALL[(n % Category::ALL.len() as u64) as usize];
    Memory {
        id: Uuid::new_v4(),
        pair: pair.clone(),
        text: format!("User's fact number {n}: likes \"quoted\" things, ünïcödé and emoji 🌧."),
        category,
        importance: (n % 5) as u8 + 1,
        created_at: base_time() + Duration::milliseconds(n as i64 * 60_001),
        event_time: Some(base_time() + Duration::days(30) + Duration::milliseconds(n as i64)),
        source_message_ids: vec![format!("msg-{n}-a"), format!("msg-{n}-b")],
        batch_id: batch_id.to_string(),
        superseded_by: None,
    }
}

fn point(memory: &Memory, vector: Vec<f32>) -> MemoryPoint {
    MemoryPoint {
        memory: memory.clone(),
        vector,
    }
}

fn query(
    pair: &Pair,
    vector: Vec<f32>,
    limit: usize,
    score_threshold: Option<f32>,
    include_superseded: bool,
) -> SearchQuery {
    SearchQuery {
        pair: pair.clone(),
        vector,
        limit,
        score_threshold,
        include_superseded,
    }
}

// ---- assertions and call wrappers ----

fn ok<T>(result: PortResult<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("memory-store contract: {what} failed: {e}"))
}

fn assert_rejected<T: std::fmt::Debug>(result: PortResult<T>, what: &str) {
    match result {
        Err(PortError::Rejected { .. }) => {}
        Err(other) => panic!(
            "memory-store contract: {what}: expected a Rejected error, got {} error: {other}",
            other.kind()
        ),
        Ok(value) => {
            panic!("memory-store contract: {what}: expected a Rejected error, got Ok({value:?})")
        }
    }
}

fn assert_score(got: f32, want: f32, what: &str) {
    assert!(
        (got - want).abs() <= SCORE_TOLERANCE,
        "memory-store contract: {what}: score {got}, expected {want} ± {SCORE_TOLERANCE}"
    );
}

fn ids(hits: &[ScoredMemory]) -> Vec<Uuid> {
    hits.iter().map(|h| h.memory.id).collect()
}

async fn ensure(store: &dyn MemoryStore, dimension: usize, case: &str) {
    ok(
        store.ensure_collection(dimension).await,
        &format!("{case}: ensure_collection({dimension})"),
    );
}

async fn upsert(store: &dyn MemoryStore, points: &[MemoryPoint], case: &str) {
    ok(
        store.upsert(points).await,
        &format!("{case}: upsert of {} points", points.len()),
    );
}

async fn search(store: &dyn MemoryStore, query: SearchQuery, case: &str) -> Vec<ScoredMemory> {
    let hits = ok(store.search(&query).await, &format!("{case}: search"));
    assert!(
        hits.len() <= query.limit,
        "memory-store contract: {case}: search returned {} results for limit {}",
        hits.len(),
        query.limit
    );
    for hit in &hits {
        assert_eq!(
            hit.memory.pair, query.pair,
            "memory-store contract: {case}: search returned a memory of another pair"
        );
        if !query.include_superseded {
            assert_eq!(
                hit.memory.superseded_by, None,
                "memory-store contract: {case}: default search returned a superseded memory"
            );
        }
        if let Some(threshold) = query.score_threshold {
            assert!(
                hit.score >= threshold,
                "memory-store contract: {case}: score {} below threshold {threshold}",
                hit.score
            );
        }
    }
    hits
}

async fn count(store: &dyn MemoryStore, pair: &Pair, include_superseded: bool, case: &str) -> u64 {
    ok(
        store.count(pair, include_superseded).await,
        &format!("{case}: count({pair}, include_superseded={include_superseded})"),
    )
}

async fn list(store: &dyn MemoryStore, pair: &Pair, case: &str) -> Vec<Memory> {
    let listed = ok(store.list(pair).await, &format!("{case}: list({pair})"));
    assert!(
        listed.iter().all(|m| &m.pair == pair),
        "memory-store contract: {case}: list({pair}) returned a memory of another pair"
    );
    listed
}

/// Removes what a case left behind (best effort: matters only on shared collections).
async fn cleanup(store: &dyn MemoryStore, pair: &Pair) {
    let _ = store.delete_pair(pair).await;
}

#[cfg(test)]
mod tests {
    //! Checks the suite itself against a naive in-memory reference store.

    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// A deliberately simple, obviously-correct store: a vector of (memory, vector).
    #[derive(Default)]
    struct Reference {
        dimension: Mutex<Option<usize>>,
        points: Mutex<Vec<MemoryPoint>>,
    }

    const DEP: &str = "reference";

    impl Reference {
        fn check(&self, vector: &[f32]) -> PortResult<()> {
            match *self.dimension.lock().unwrap() {
                Some(d) if d == vector.len() => Ok(()),
                Some(d) => Err(PortError::rejected(
                    DEP,
                    format!("want {d}, got {}", vector.len()),
                )),
                None => Err(PortError::rejected(DEP, "no collection")),
            }
        }

        fn delete_where(&self, keep: impl Fn(&Memory) -> bool) -> u64 {
            let mut points = self.points.lock().unwrap();
            let before = points.len();
            points.retain(|p| keep(&p.memory));
            (before - points.len()) as u64
        }
    }

    use crate::eval::cosine;

    #[async_trait]
    impl MemoryStore for Reference {
        async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
            let mut d = self.dimension.lock().unwrap();
            match *d {
                Some(existing) if existing != dimension => {
                    Err(PortError::rejected(DEP, "dimension mismatch"))
                }
                _ => {
                    *d = Some(dimension);
                    Ok(())
                }
            }
        }

        async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
            for p in points {
                self.check(&p.vector)?;
            }
            let mut stored = self.points.lock().unwrap();
            for p in points {
                stored.retain(|s| s.memory.id != p.memory.id);
                stored.push(p.clone());
            }
            Ok(())
        }

        async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
            self.check(&query.vector)?;
            let mut hits: Vec<ScoredMemory> = self
                .points
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.memory.pair == query.pair)
                .filter(|p| query.include_superseded || p.memory.superseded_by.is_none())
                .map(|p| ScoredMemory {
                    memory: p.memory.clone(),
                    score: cosine(&p.vector, &query.vector),
                })
                .filter(|h| query.score_threshold.is_none_or(|t| h.score >= t))
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(query.limit);
            Ok(hits)
        }

        async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
            let mut changed = 0;
            for p in self.points.lock().unwrap().iter_mut() {
                if &p.memory.pair == pair && ids.contains(&p.memory.id) {
                    p.memory.superseded_by = Some(by);
                    changed += 1;
                }
            }
            Ok(changed)
        }

        async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64> {
            Ok(self
                .points
                .lock()
                .unwrap()
                .iter()
                .filter(|p| &p.memory.pair == pair)
                .filter(|p| include_superseded || p.memory.superseded_by.is_none())
                .count() as u64)
        }

        async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
            let mut all: Vec<Memory> = self
                .points
                .lock()
                .unwrap()
                .iter()
                .filter(|p| &p.memory.pair == pair)
                .map(|p| p.memory.clone())
                .collect();
            all.sort_by_key(|m| m.created_at);
            Ok(all)
        }

        async fn export(
            &self,
            user: &UserId,
            character: Option<&CharacterName>,
        ) -> PortResult<Vec<MemoryPoint>> {
            let mut all: Vec<MemoryPoint> = self
                .points
                .lock()
                .unwrap()
                .iter()
                .filter(|p| &p.memory.pair.user_id == user)
                .filter(|p| character.is_none_or(|c| &p.memory.pair.character_name == c))
                .cloned()
                .collect();
            all.sort_by(|a, b| export_order(&a.memory, &b.memory));
            Ok(all)
        }

        async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
            Ok(self.delete_where(|m| !(&m.pair == pair && m.batch_id == batch_id)))
        }

        async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
            Ok(self.delete_where(|m| &m.pair != pair))
        }

        async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
            Ok(self.delete_where(|m| &m.pair.user_id != user))
        }

        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn reference_store_passes_the_suite() {
        run_all(&Reference::default(), 8).await;
    }

    #[test]
    fn test_vectors_are_deterministic_unit_vectors() {
        let a = unit_vector(16, 7);
        assert_eq!(a, unit_vector(16, 7));
        assert_ne!(a, unit_vector(16, 8));
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        for want in [0.95_f32, 0.5, 0.0, -0.3] {
            let b = vector_at_cosine(&a, 3, want);
            assert!((cosine(&a, &b) - want).abs() < 1e-4, "cosine {want}");
            assert!((b.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[tokio::test]
    #[should_panic(expected = "search of")]
    async fn suite_catches_a_leaky_store() {
        /// Forgets the character when searching: a tenant-isolation bug the suite must catch.
        struct Leaky(Reference);

        #[async_trait]
        impl MemoryStore for Leaky {
            async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
                self.0.ensure_collection(dimension).await
            }
            async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
                self.0.upsert(points).await
            }
            async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
                let mut hits = Vec::new();
                for character in ["meher", "arjun"] {
                    let mut q = query.clone();
                    q.pair.character_name = CharacterName::parse(character).unwrap();
                    hits.extend(self.0.search(&q).await?);
                }
                // Disguise the leaked memories as the queried pair's, as a buggy adapter might.
                for h in &mut hits {
                    h.memory.pair = query.pair.clone();
                }
                hits.sort_by(|a, b| b.score.total_cmp(&a.score));
                hits.truncate(query.limit);
                Ok(hits)
            }
            async fn set_superseded(&self, p: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
                self.0.set_superseded(p, ids, by).await
            }
            async fn count(&self, pair: &Pair, all: bool) -> PortResult<u64> {
                self.0.count(pair, all).await
            }
            async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
                self.0.list(pair).await
            }
            async fn export(
                &self,
                user: &UserId,
                character: Option<&CharacterName>,
            ) -> PortResult<Vec<MemoryPoint>> {
                self.0.export(user, character).await
            }
            async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
                self.0.delete_batch(pair, batch_id).await
            }
            async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
                self.0.delete_pair(pair).await
            }
            async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
                self.0.delete_user(user).await
            }
            async fn ping(&self) -> PortResult<()> {
                Ok(())
            }
        }

        let store = Leaky(Reference::default());
        search_is_limited_to_the_pair(&store, 8).await;
    }
}
