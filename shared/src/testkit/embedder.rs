//! The embedder contract: every [`Embedder`] adapter (MiniLM, OpenAI-compatible) must pass it.

use crate::ports::Embedder;

/// Runs every case of the contract.
pub async fn run_all(embedder: &dyn Embedder) {
    let dim = embedder.dimension();
    assert!(dim > 0, "dimension must be positive");
    assert!(!embedder.name().is_empty(), "an embedder has a name");

    let none = embedder.embed(&[]).await.expect("empty input");
    assert!(none.is_empty(), "no texts, no vectors");

    let texts: Vec<String> = [
        "My dog's name is Bruno",
        "",
        "   ",
        "Mujhe filter coffee bahut pasand hai ☕",
        "میں کراچی میں رہتا ہوں",
        "🎉🎉🎉",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once("long ".repeat(3000)))
    .collect();
    let vectors = embedder.embed(&texts).await.expect("embed");
    assert_eq!(vectors.len(), texts.len(), "one vector per text, in order");
    for (t, v) in texts.iter().zip(&vectors) {
        assert_eq!(v.len(), dim, "dimension of {t:?}");
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit norm for {t:?}, got {norm}");
        assert!(v.iter().all(|x| x.is_finite()), "finite values for {t:?}");
    }

    let again = embedder.embed(&texts[..1]).await.expect("embed one");
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    assert!(
        close(&again[0], &vectors[0]),
        "deterministic, and batching does not change a vector"
    );
}
