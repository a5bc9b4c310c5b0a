//! `recall-worker eval` on two conversations of the shared data: the hygiene numbers are 0 and
//! the search path alone finds the right fact for at least 80% of the questions.

use recall_shared::config::StoreArgs;
use recall_tests::{data_dir, model_dir};

#[tokio::test(flavor = "multi_thread")]
async fn eval_scores_two_conversations() {
    let data = tempfile::tempdir().unwrap();
    for name in [
        "u_0f6c3d__meher.jsonl",
        "u_4d27ee__luna.jsonl",
        "facts.jsonl",
    ] {
        std::fs::copy(data_dir().join(name), data.path().join(name)).unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let deps = StoreArgs::in_dir(scratch.path(), model_dir())
        .open()
        .await
        .unwrap();
    let report = recall_shared::eval::run(deps, data.path()).await.unwrap();
    eprint!("{}", report.table());
    let t = &report.total;
    assert_eq!(report.conversations.len(), 2);
    assert_eq!(t.messages, 89 + 70, "every message replayed");
    assert!(t.memories > 0 && t.facts > 0 && t.questions == 3 * t.facts);
    assert_eq!(t.hygiene_violations, 0, "no sensitive text stored");
    assert_eq!(t.assistant_claims, 0, "no memory from the assistant alone");
    assert_eq!(t.duplicates, 0, "no near-duplicate memories");
    assert!(
        t.search_path_recall_at_5() >= 0.8,
        "search path recall@5 {}",
        t.search_path_recall_at_5()
    );
    assert!(t.fact_coverage() > 0.5, "coverage {}", t.fact_coverage());
    let summary = report.summary();
    for key in [
        "fact_coverage",
        "recall_at_5",
        "mrr",
        "supersession_accuracy",
        "search_path_recall_at_5",
        "hygiene_violations",
        "duplicates",
    ] {
        assert!(summary.get(key).is_some(), "summary has {key}");
    }
}
