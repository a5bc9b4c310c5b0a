//! The message-store contract: every [`MessageStore`] adapter (SQLite, Firestore) must pass it.
//!
//! Each case uses its own unique user id, so the suite can run against a shared backend.

use std::time::Duration;

use chrono::{TimeZone, Utc};

use crate::batching::batch_id;
use crate::domain::{
    BatchOutcome, Category, ExtractedMemory, Extraction, Message, MessageId, Pair, Role, TokenUsage,
};
use crate::ports::{BatchPlan, Claim, MessageStore};

/// A fresh pair with a unique user id.
pub fn unique_pair(tag: &str) -> Pair {
    let n = uuid::Uuid::new_v4().simple().to_string();
    Pair::parse(&format!("t_{tag}_{}", &n[..12]), "meher").expect("valid test ids")
}

/// The `i`-th test message of a pair: alternating roles, ten seconds apart.
pub fn message(pair: &Pair, i: usize) -> Message {
    let t0 = Utc.with_ymd_and_hms(2024, 11, 3, 10, 0, 0).unwrap();
    Message {
        id: MessageId::parse(format!("m{i:05}")).expect("valid id"),
        pair: pair.clone(),
        role: if i.is_multiple_of(2) {
            Role::User
        } else {
            Role::Assistant
        },
        channel: "whatsapp".into(),
        text: format!("message number {i} ✨"),
        created_at: t0 + chrono::Duration::seconds(i as i64 * 10),
        sync: false,
    }
}

async fn seed(store: &dyn MessageStore, pair: &Pair, n: usize) -> Vec<Message> {
    let mut v = Vec::new();
    for i in 0..n {
        let m = message(pair, i);
        assert!(
            store.append(&m).await.expect("append"),
            "append #{i} is new"
        );
        v.push(m);
    }
    v
}

fn plan(messages: &[Message]) -> BatchPlan {
    BatchPlan {
        batch_id: batch_id(messages),
        messages: messages.to_vec(),
    }
}

fn extraction() -> Extraction {
    Extraction {
        memories: vec![ExtractedMemory {
            text: "User has a dog named Bruno".into(),
            category: Category::Relationship,
            importance: 4,
            event_time: None,
            source_message_ids: vec!["m00000".into()],
            supersedes: vec![],
            supersedes_in_batch: vec![],
        }],
        usage: TokenUsage {
            prompt_tokens: 120,
            completion_tokens: 30,
        },
        extractor: "test".into(),
    }
}

const LEASE: Duration = Duration::from_secs(60);

/// Runs every case of the contract.
pub async fn run_all(store: &dyn MessageStore) {
    append_is_idempotent(store).await;
    lists_are_ordered_and_scoped(store).await;
    claim_is_exclusive(store).await;
    claim_refuses_stale_plans(store).await;
    extraction_survives_takeover(store).await;
    complete_flips_once(store).await;
    failure_releases_the_lease(store).await;
    stats_and_sweep(store).await;
    erasure_removes_batches_only(store).await;
    store.ping().await.expect("ping");
}

/// Appending the same id twice stores it once; text and fields round-trip exactly.
pub async fn append_is_idempotent(store: &dyn MessageStore) {
    let pair = unique_pair("append");
    let mut m = message(&pair, 0);
    m.text = "नमस्ते 👋🏽 — مرحبا, \"quoted\"\nnew line".into();
    assert!(store.append(&m).await.unwrap());
    assert!(
        !store.append(&m).await.unwrap(),
        "duplicate append reports false"
    );
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 1);
    let got = store.list_unsynced(&pair, 10).await.unwrap();
    assert_eq!(got, vec![m.clone()], "every field round-trips");
    let by_id = store
        .get_messages(&pair, &[MessageId::parse("nope").unwrap(), m.id.clone()])
        .await
        .unwrap();
    assert_eq!(by_id, vec![m], "unknown ids are skipped");
}

/// Unsynced listings are oldest first (recent: the newest, still oldest first) and per pair.
pub async fn lists_are_ordered_and_scoped(store: &dyn MessageStore) {
    let pair = unique_pair("order");
    let other = Pair::parse(pair.user_id.as_str(), "luna").unwrap();
    // Insert out of order: arrival order must not matter, created_at does.
    let all: Vec<Message> = (0..30).map(|i| message(&pair, i)).collect();
    for m in all.iter().rev() {
        store.append(m).await.unwrap();
    }
    store.append(&message(&other, 99)).await.unwrap();
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 30);
    assert_eq!(store.count_unsynced(&other).await.unwrap(), 1);
    let first = store.list_unsynced(&pair, 25).await.unwrap();
    assert_eq!(first.len(), 25);
    assert_eq!(first, all[..25].to_vec(), "oldest first");
    let recent = store.recent_unsynced(&pair, 5).await.unwrap();
    assert_eq!(recent, all[25..].to_vec(), "the five newest, oldest first");
    assert!(
        first.iter().all(|m| m.pair == pair),
        "no other pair leaks in"
    );
}

/// Exactly one worker wins a claim; the loser sees who holds it; the winner may re-claim.
pub async fn claim_is_exclusive(store: &dyn MessageStore) {
    let pair = unique_pair("claim");
    let msgs = seed(store, &pair, 25).await;
    let p = plan(&msgs);
    let a = store
        .claim_batch(&pair, &p, "worker-a", LEASE)
        .await
        .unwrap();
    let Claim::Acquired(batch) = a else {
        panic!("first claim must win, got {a:?}")
    };
    assert_eq!(batch.attempt, 1);
    assert_eq!(batch.extraction, None);
    match store
        .claim_batch(&pair, &p, "worker-b", LEASE)
        .await
        .unwrap()
    {
        Claim::Held { by, until } => {
            assert_eq!(by, "worker-a");
            assert!(until > Utc::now());
        }
        other => panic!("second claim must see the holder, got {other:?}"),
    }
    let open = store
        .open_batch(&pair)
        .await
        .unwrap()
        .expect("one open batch");
    assert_eq!(open.batch_id, p.batch_id);
    assert_eq!(open.message_ids.len(), 25);
    assert_eq!(open.message_ids[0], msgs[0].id);
    assert_eq!(open.claimed_by.as_deref(), Some("worker-a"));
    // A second, overlapping plan for the same pair is stale while the first is open.
    store.append(&message(&pair, 25)).await.unwrap();
    let bigger = store.list_unsynced(&pair, 50).await.unwrap();
    assert_eq!(
        store
            .claim_batch(&pair, &plan(&bigger), "worker-b", LEASE)
            .await
            .unwrap(),
        Claim::Stale,
        "one open batch per pair"
    );
}

/// A plan containing an already-synced message is stale.
pub async fn claim_refuses_stale_plans(store: &dyn MessageStore) {
    let pair = unique_pair("stale");
    let msgs = seed(store, &pair, 26).await;
    let first = plan(&msgs[..25]);
    assert!(matches!(
        store.claim_batch(&pair, &first, "w", LEASE).await.unwrap(),
        Claim::Acquired(_)
    ));
    let ids: Vec<MessageId> = msgs[..25].iter().map(|m| m.id.clone()).collect();
    store
        .complete_batch(&pair, &first.batch_id, "w", &ids, &BatchOutcome::default())
        .await
        .unwrap();
    assert_eq!(
        store.claim_batch(&pair, &first, "w2", LEASE).await.unwrap(),
        Claim::Done
    );
    // A plan built from a stale listing (messages 1..26, of which 1..25 are synced).
    assert_eq!(
        store
            .claim_batch(&pair, &plan(&msgs[1..]), "w2", LEASE)
            .await
            .unwrap(),
        Claim::Stale
    );
    assert_eq!(
        store
            .claim_batch(&pair, &plan(&[]), "w2", LEASE)
            .await
            .unwrap(),
        Claim::Stale,
        "an empty plan is never claimable"
    );
}

/// An expired lease is taken over, and the saved extraction comes with it.
pub async fn extraction_survives_takeover(store: &dyn MessageStore) {
    let pair = unique_pair("takeover");
    let msgs = seed(store, &pair, 25).await;
    let p = plan(&msgs);
    let short = Duration::from_millis(300);
    assert!(matches!(
        store.claim_batch(&pair, &p, "dying", short).await.unwrap(),
        Claim::Acquired(_)
    ));
    store
        .save_extraction(&pair, &p.batch_id, "dying", &extraction())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let Claim::Acquired(b) = store.claim_batch(&pair, &p, "heir", LEASE).await.unwrap() else {
        panic!("an expired lease must be taken over")
    };
    assert_eq!(b.attempt, 2);
    assert_eq!(
        b.extraction,
        Some(extraction()),
        "the stored extraction is reused"
    );
    // The dead holder can no longer write.
    let err = store
        .save_extraction(&pair, &p.batch_id, "dying", &extraction())
        .await
        .unwrap_err();
    assert!(matches!(err, crate::PortError::Conflict(_)), "{err:?}");
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id.clone()).collect();
    let err = store
        .complete_batch(&pair, &p.batch_id, "dying", &ids, &BatchOutcome::default())
        .await
        .unwrap_err();
    assert!(matches!(err, crate::PortError::Conflict(_)), "{err:?}");
}

/// Completion flips every message once, records tokens, closes the batch.
pub async fn complete_flips_once(store: &dyn MessageStore) {
    let pair = unique_pair("flip");
    let msgs = seed(store, &pair, 27).await;
    let p = plan(&msgs[..25]);
    assert!(matches!(
        store.claim_batch(&pair, &p, "w", LEASE).await.unwrap(),
        Claim::Acquired(_)
    ));
    store
        .save_extraction(&pair, &p.batch_id, "w", &extraction())
        .await
        .unwrap();
    let ids: Vec<MessageId> = p.messages.iter().map(|m| m.id.clone()).collect();
    let outcome = BatchOutcome {
        memory_ids: vec![crate::batching::memory_id(&p.batch_id, 0)],
        usage: extraction().usage,
        ..Default::default()
    };
    let flipped = store
        .complete_batch(&pair, &p.batch_id, "w", &ids, &outcome)
        .await
        .unwrap();
    assert_eq!(flipped, 25);
    assert_eq!(store.count_unsynced(&pair).await.unwrap(), 2);
    assert_eq!(store.open_batch(&pair).await.unwrap(), None);
    let again = store
        .complete_batch(&pair, &p.batch_id, "w", &ids, &outcome)
        .await;
    assert!(again.is_err(), "a done batch cannot complete twice");
    let left = store.list_unsynced(&pair, 50).await.unwrap();
    assert_eq!(left, msgs[25..].to_vec());
    let stats = store.stats(&pair).await.unwrap();
    assert_eq!((stats.total, stats.synced, stats.unsynced), (27, 25, 2));
    assert_eq!(stats.batches_done, 1);
    assert_eq!(stats.tokens, extraction().usage);
    assert!(stats.last_batch_at.is_some());
}

/// A failed attempt releases the lease at once and is visible in the stats until it succeeds.
pub async fn failure_releases_the_lease(store: &dyn MessageStore) {
    let pair = unique_pair("fail");
    let msgs = seed(store, &pair, 25).await;
    let p = plan(&msgs);
    assert!(matches!(
        store.claim_batch(&pair, &p, "a", LEASE).await.unwrap(),
        Claim::Acquired(_)
    ));
    store
        .fail_batch(&pair, &p.batch_id, "a", "llm: 500")
        .await
        .unwrap();
    let open = store.open_batch(&pair).await.unwrap().expect("still open");
    assert_eq!(open.last_error.as_deref(), Some("llm: 500"));
    assert_eq!(store.stats(&pair).await.unwrap().batches_failed, 1);
    let Claim::Acquired(b) = store.claim_batch(&pair, &p, "b", LEASE).await.unwrap() else {
        panic!("a failed batch is claimable at once by another worker")
    };
    assert_eq!(b.attempt, 2);
    assert_eq!(
        store.count_unsynced(&pair).await.unwrap(),
        25,
        "nothing lost"
    );
}

/// Statistics count per pair; the sweep finds pairs with enough unsynced messages.
pub async fn stats_and_sweep(store: &dyn MessageStore) {
    let pair = unique_pair("sweep");
    seed(store, &pair, 7).await;
    let stats = store.stats(&pair).await.unwrap();
    assert_eq!((stats.total, stats.synced, stats.unsynced), (7, 0, 7));
    assert_eq!(stats.batches_done, 0);
    assert_eq!(stats.last_batch_at, None);
    let found = store.unsynced_pairs(7).await.unwrap();
    assert!(found.contains(&(pair.clone(), 7)), "sweep finds the pair");
    let none = store.unsynced_pairs(8).await.unwrap();
    assert!(
        !none.iter().any(|(p, _)| *p == pair),
        "min_unsynced is respected"
    );
}

/// Erasure removes the user's batch records and extraction caches (one character or all) and
/// nobody else's; the app's messages stay.
pub async fn erasure_removes_batches_only(store: &dyn MessageStore) {
    let pair = unique_pair("erase");
    let other_char = Pair::parse(pair.user_id.as_str(), "luna").unwrap();
    let other_user = unique_pair("keep");
    for p in [&pair, &other_char, &other_user] {
        let msgs = seed(store, p, 25).await;
        let plan = plan(&msgs);
        assert!(matches!(
            store.claim_batch(p, &plan, "w", LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
        store
            .save_extraction(p, &plan.batch_id, "w", &extraction())
            .await
            .unwrap();
    }
    let one = store
        .erase_batches(&pair.user_id, Some(&pair.character_name))
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert_eq!(
        store.open_batch(&pair).await.unwrap(),
        None,
        "batch and its extraction gone"
    );
    assert!(
        store.open_batch(&other_char).await.unwrap().is_some(),
        "other character kept"
    );
    let all = store.erase_batches(&pair.user_id, None).await.unwrap();
    assert_eq!(all, 1, "the remaining character");
    assert!(store.open_batch(&other_char).await.unwrap().is_none());
    assert!(
        store.open_batch(&other_user).await.unwrap().is_some(),
        "other users untouched"
    );
    assert_eq!(
        store.count_unsynced(&pair).await.unwrap(),
        25,
        "messages are the app's"
    );
    assert_eq!(store.erase_batches(&pair.user_id, None).await.unwrap(), 0);
}
