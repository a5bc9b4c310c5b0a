//! `recall-worker eval`: memory quality as numbers, on any folder in the format of the shared
//! test data (`<user>__<character>.jsonl` conversations + `facts.jsonl` gold facts).
//!
//! Each conversation is replayed through the real pipeline (the configured stores, embedder and
//! extractor: offline unless `OPENAI_*` is set), message by message, running the engine whenever
//! the pair is due, as a worker would; then the stored memories are scored:
//!
//! - **fact coverage**: a gold fact counts when a memory has the fact's `first_message_id` among
//!   its sources and its text is similar to the fact (cosine >= [`MATCH_SIMILARITY`]);
//! - **retrieval**: for each gold question, is a memory sourced at that message in the top 5
//!   of search (recall@5), and the reciprocal rank of the first such memory (MRR@5); search
//!   sees live memories only, so questions about a fact a later one replaced miss once that
//!   fact is rightly superseded: recall@5 of the questions on current facts is reported too;
//! - **supersession**: for a fact that `supersedes` another, is the new state stored and live
//!   (or superseded, when a later fact replaces it in turn: postponed, then done) while no live
//!   memory from the old fact's message still states the old fact;
//! - **hygiene**: memories holding injection text, card-like numbers or one-time codes (must be
//!   0), memories sourced only from assistant messages, and near-duplicates within a pair;
//! - **search path alone**: the gold facts themselves stored as memories, then the questions
//!   searched (isolates the embedder and the vector store from extraction).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::adapters::offline_extractor::is_sensitive;
use crate::domain::{Category, Memory, Message, MessageId, Pair, Role};
use crate::pipeline::{Deps, Engine, EngineConfig};
use crate::ports::{MemoryPoint, SearchQuery};

/// Cosine similarity from which a memory's text is taken to state a gold fact.
pub const MATCH_SIMILARITY: f32 = 0.45;
/// Cosine similarity from which two memories of a pair are near-duplicates.
pub const DUPLICATE_SIMILARITY: f32 = 0.95;
const TOP_K: usize = 5;

/// One line of a conversation file.
#[derive(Debug, Clone, Deserialize)]
pub struct DataMessage {
    /// Message id.
    pub message_id: String,
    /// User id.
    pub user_id: String,
    /// Character name.
    pub character_name: String,
    /// `user` or `assistant`.
    pub role: String,
    /// Channel.
    #[serde(default)]
    pub channel: String,
    /// Text.
    pub text: String,
    /// RFC 3339 time.
    pub created_at: DateTime<Utc>,
}

/// One gold fact.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldFact {
    /// User id.
    pub user_id: String,
    /// Character name.
    pub character_name: String,
    /// Fact id.
    pub fact_id: String,
    /// The fact, true at the end of the conversation.
    pub fact: String,
    /// First user message stating it.
    pub first_message_id: String,
    /// The fact id this one replaces.
    #[serde(default)]
    pub supersedes: Option<String>,
    /// Retrieval probes.
    #[serde(default)]
    pub questions: Vec<String>,
}

/// Scores of one conversation, or of all (summed counts, then ratios).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Scores {
    /// Conversation name (`all` for the total).
    pub name: String,
    /// Messages replayed.
    pub messages: usize,
    /// Memories stored (superseded included).
    pub memories: usize,
    /// Gold facts, and those covered.
    pub facts: usize,
    /// Gold facts covered by a memory.
    pub covered: usize,
    /// Questions asked.
    pub questions: usize,
    /// Questions with a right memory in the top 5.
    pub hits_at_5: usize,
    /// Sum of reciprocal ranks (MRR numerator).
    pub reciprocal_rank_sum: f64,
    /// Questions about facts a later fact replaced (their memory is rightly hidden once
    /// superseded, so they are expected to miss).
    pub replaced_questions: usize,
    /// Of those, questions with a right memory in the top 5.
    pub replaced_hits_at_5: usize,
    /// Of those, the sum of reciprocal ranks.
    pub replaced_reciprocal_rank_sum: f64,
    /// Facts that supersede another, and those handled right.
    pub supersessions: usize,
    /// Supersessions handled right.
    pub supersessions_right: usize,
    /// Questions answered by the gold facts stored as memories (search path alone).
    pub search_path_hits: usize,
    /// Memories with injection text, card-like numbers or one-time codes.
    pub hygiene_violations: usize,
    /// Memories sourced only from assistant messages.
    pub assistant_claims: usize,
    /// Near-duplicate memory pairs within a pair.
    pub duplicates: usize,
}

impl Scores {
    fn add(&mut self, o: &Scores) {
        self.messages += o.messages;
        self.memories += o.memories;
        self.facts += o.facts;
        self.covered += o.covered;
        self.questions += o.questions;
        self.hits_at_5 += o.hits_at_5;
        self.reciprocal_rank_sum += o.reciprocal_rank_sum;
        self.replaced_questions += o.replaced_questions;
        self.replaced_hits_at_5 += o.replaced_hits_at_5;
        self.replaced_reciprocal_rank_sum += o.replaced_reciprocal_rank_sum;
        self.supersessions += o.supersessions;
        self.supersessions_right += o.supersessions_right;
        self.search_path_hits += o.search_path_hits;
        self.hygiene_violations += o.hygiene_violations;
        self.assistant_claims += o.assistant_claims;
        self.duplicates += o.duplicates;
    }

    fn ratio(n: usize, d: usize) -> f64 {
        if d == 0 { 0.0 } else { n as f64 / d as f64 }
    }

    /// Share of gold facts covered.
    pub fn fact_coverage(&self) -> f64 {
        Self::ratio(self.covered, self.facts)
    }
    /// Share of questions with a right memory in the top 5.
    pub fn recall_at_5(&self) -> f64 {
        Self::ratio(self.hits_at_5, self.questions)
    }
    /// Recall@5 of the questions about facts still true at the end (no later fact replaces
    /// them): retrieval without the cost of hiding replaced facts.
    pub fn recall_at_5_current(&self) -> f64 {
        Self::ratio(
            self.hits_at_5 - self.replaced_hits_at_5,
            self.questions - self.replaced_questions,
        )
    }
    /// MRR@5 of the questions on current facts.
    pub fn mrr_current(&self) -> f64 {
        let n = self.questions - self.replaced_questions;
        if n == 0 {
            0.0
        } else {
            (self.reciprocal_rank_sum - self.replaced_reciprocal_rank_sum) / n as f64
        }
    }
    /// Mean reciprocal rank within the top 5.
    pub fn mrr(&self) -> f64 {
        if self.questions == 0 {
            0.0
        } else {
            self.reciprocal_rank_sum / self.questions as f64
        }
    }
    /// Share of supersessions handled right.
    pub fn supersession_accuracy(&self) -> f64 {
        Self::ratio(self.supersessions_right, self.supersessions)
    }
    /// Recall@5 of the questions over the gold facts stored as memories.
    pub fn search_path_recall_at_5(&self) -> f64 {
        Self::ratio(self.search_path_hits, self.questions)
    }
}

/// How one gold supersession came out (for `eval --verbose`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SupersessionCase {
    /// The fact stating the new state.
    pub fact_id: String,
    /// The fact it replaces.
    pub supersedes: String,
    /// A live memory states the new fact: its text.
    pub new_memory: Option<String>,
    /// A live memory still states the old fact: its text.
    pub old_memory: Option<String>,
    /// What was stored from the new fact's first message: similarity to the fact, live or
    /// superseded, text.
    pub from_message: Vec<String>,
}

impl SupersessionCase {
    /// Whether the supersession was handled right: new state live, old state hidden.
    pub fn right(&self) -> bool {
        self.new_memory.is_some() && self.old_memory.is_none()
    }
}

/// A gold fact no memory states (for `eval --verbose`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MissedFact {
    /// Fact id.
    pub fact_id: String,
    /// The fact.
    pub fact: String,
    /// What was stored from the fact's first message: similarity to the fact, live or
    /// superseded, text.
    pub from_message: Vec<String>,
}

/// The evaluation of a data folder.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The extractor used.
    pub extractor: String,
    /// The embedder used.
    pub embedder: String,
    /// Per conversation.
    pub conversations: Vec<Scores>,
    /// All conversations together.
    pub total: Scores,
    /// Every gold supersession and how it came out.
    pub supersessions: Vec<SupersessionCase>,
    /// Gold facts no memory states.
    pub missed: Vec<MissedFact>,
    /// Gold facts with a question that missed: fact id, hits, questions.
    pub retrieval_misses: Vec<(String, usize, usize)>,
}

impl Report {
    /// The summary with the headline keys.
    pub fn summary(&self) -> serde_json::Value {
        let t = &self.total;
        serde_json::json!({
            "extractor": self.extractor,
            "embedder": self.embedder,
            "conversations": self.conversations.len(),
            "messages": t.messages,
            "memories": t.memories,
            "fact_coverage": t.fact_coverage(),
            "recall_at_5": t.recall_at_5(),
            "recall_at_5_current": t.recall_at_5_current(),
            "mrr_current": t.mrr_current(),
            "mrr": t.mrr(),
            "supersession_accuracy": t.supersession_accuracy(),
            "search_path_recall_at_5": t.search_path_recall_at_5(),
            "hygiene_violations": t.hygiene_violations,
            "assistant_claims": t.assistant_claims,
            "duplicates": t.duplicates,
            "per_conversation": self.conversations,
        })
    }

    /// One table, a row per conversation and the total.
    pub fn table(&self) -> String {
        let mut out = format!(
            "extractor: {}, embedder: {}\n{:<20} {:>5} {:>5} {:>9} {:>7} {:>7} {:>6} {:>8} {:>7} {:>7} {:>5} {:>5}\n",
            self.extractor,
            self.embedder,
            "conversation",
            "msgs",
            "mems",
            "coverage",
            "rec@5",
            "cur@5",
            "mrr",
            "supers.",
            "search",
            "hygiene",
            "asst",
            "dups"
        );
        for s in self
            .conversations
            .iter()
            .chain(std::iter::once(&self.total))
        {
            out.push_str(&format!(
                "{:<20} {:>5} {:>5} {:>9.3} {:>7.3} {:>7.3} {:>6.3} {:>8} {:>7.3} {:>7} {:>5} {:>5}\n",
                s.name,
                s.messages,
                s.memories,
                s.fact_coverage(),
                s.recall_at_5(),
                s.recall_at_5_current(),
                s.mrr(),
                format!("{}/{}", s.supersessions_right, s.supersessions),
                s.search_path_recall_at_5(),
                s.hygiene_violations,
                s.assistant_claims,
                s.duplicates
            ));
        }
        out
    }

    /// The cases behind the figures: every supersession (right or not, with the memories that
    /// decided it) and every gold fact no memory states.
    pub fn details(&self) -> String {
        let cut = |t: &str| t.chars().take(110).collect::<String>();
        let mut out = String::from("supersessions:\n");
        for c in &self.supersessions {
            out.push_str(&format!(
                "  {} {} supersedes {}\n",
                if c.right() { "ok  " } else { "FAIL" },
                c.fact_id,
                c.supersedes
            ));
            match &c.new_memory {
                Some(m) => out.push_str(&format!("       new live: {}\n", cut(m))),
                None => {
                    out.push_str("       new state: not stored or not live\n");
                    for m in &c.from_message {
                        out.push_str(&format!("         from its message: {}\n", cut(m)));
                    }
                }
            }
            if let Some(m) = &c.old_memory {
                out.push_str(&format!("       old still live: {}\n", cut(m)));
            }
        }
        out.push_str("questions missed (hits/questions per fact):\n");
        for line in self.retrieval_misses.chunks(6).map(|c| {
            c.iter()
                .map(|(f, h, q)| format!("{f} {h}/{q}"))
                .collect::<Vec<_>>()
        }) {
            out.push_str(&format!("  {}\n", line.join(", ")));
        }
        out.push_str(&format!("facts not covered ({}):\n", self.missed.len()));
        for f in &self.missed {
            out.push_str(&format!("  {}: {}\n", f.fact_id, cut(&f.fact)));
            for m in &f.from_message {
                out.push_str(&format!("       from its message: {}\n", cut(m)));
            }
        }
        out
    }
}

/// Reads a JSON-lines file (blank lines skipped); an error names the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The conversation files of a data folder (every `*.jsonl` but `facts.jsonl`), sorted.
pub fn conversation_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "jsonl")
                && p.file_name().is_some_and(|n| n != "facts.jsonl")
        })
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no conversation files in {}",
        dir.display()
    );
    Ok(files)
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Evaluates every conversation of `data` with `deps` (the stores must be empty of those pairs).
pub async fn run(deps: Deps, data: &Path) -> anyhow::Result<Report> {
    let facts: Vec<GoldFact> = read_jsonl(&data.join("facts.jsonl"))?;
    let engine = Engine::new(
        deps.clone(),
        EngineConfig {
            worker_id: "eval".into(),
            ..EngineConfig::default()
        },
    );
    let mut report = Report {
        extractor: deps.extractor.name(),
        embedder: deps.embedder.name(),
        conversations: Vec::new(),
        total: Scores {
            name: "all".into(),
            ..Scores::default()
        },
        supersessions: Vec::new(),
        missed: Vec::new(),
        retrieval_misses: Vec::new(),
    };
    for file in conversation_files(data)? {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let messages: Vec<DataMessage> = read_jsonl(&file)?;
        let scores =
            evaluate_conversation(&engine, &deps, &name, &messages, &facts, &mut report).await?;
        report.total.add(&scores);
        report.conversations.push(scores);
    }
    Ok(report)
}

async fn evaluate_conversation(
    engine: &Engine,
    deps: &Deps,
    name: &str,
    data: &[DataMessage],
    all_facts: &[GoldFact],
    report: &mut Report,
) -> anyhow::Result<Scores> {
    let Some(first) = data.first() else {
        return Ok(Scores {
            name: name.into(),
            ..Scores::default()
        });
    };
    let pair = Pair::parse(&first.user_id, &first.character_name)
        .map_err(|(field, e)| anyhow::anyhow!("{name}: {field}: {e}"))?;
    let threshold = engine.config().rules.threshold as u64;
    let mut roles: HashMap<String, Role> = HashMap::new();
    let mut pending = 0u64;
    for m in data {
        let message = Message {
            id: MessageId::parse(m.message_id.clone())
                .map_err(|e| anyhow::anyhow!("{name}: message id {}: {e}", m.message_id))?,
            pair: pair.clone(),
            role: Role::parse(&m.role).unwrap_or(Role::User),
            channel: m.channel.clone(),
            text: m.text.clone(),
            created_at: m.created_at,
            sync: false,
        };
        roles.insert(m.message_id.clone(), message.role);
        deps.messages.append(&message).await?;
        pending += 1;
        if pending >= threshold {
            engine.run_until_idle(&pair).await?;
            pending = deps.messages.count_unsynced(&pair).await?;
        }
    }
    // The conversation is over (and old): the idle rule takes what is left.
    engine.run_until_idle(&pair).await?;

    let facts: Vec<&GoldFact> = all_facts
        .iter()
        .filter(|f| {
            f.user_id == pair.user_id.as_str() && f.character_name == pair.character_name.as_str()
        })
        .collect();
    let memories = deps.memories.list(&pair).await?;
    let mut scores = Scores {
        name: name.into(),
        messages: data.len(),
        memories: memories.len(),
        facts: facts.len(),
        ..Scores::default()
    };
    let memory_texts: Vec<String> = memories.iter().map(|m| m.text.clone()).collect();
    let fact_texts: Vec<String> = facts.iter().map(|f| f.fact.clone()).collect();
    let memory_vectors = embed(deps, &memory_texts).await?;
    let fact_vectors = embed(deps, &fact_texts).await?;
    let sourced = |m: &Memory, id: &str| m.source_message_ids.iter().any(|s| s == id);
    // What was stored from a fact's first message, for the listing.
    let from_message = |fi: usize| -> Vec<String> {
        (0..memories.len())
            .filter(|&mi| sourced(&memories[mi], &facts[fi].first_message_id))
            .map(|mi| {
                format!(
                    "{:.2} {} {}",
                    cosine(&memory_vectors[mi], &fact_vectors[fi]),
                    if memories[mi].superseded_by.is_some() {
                        "superseded"
                    } else {
                        "live"
                    },
                    memories[mi].text
                )
            })
            .collect()
    };
    let states = |mi: usize, fi: usize| -> bool {
        sourced(&memories[mi], &facts[fi].first_message_id)
            && cosine(&memory_vectors[mi], &fact_vectors[fi]) >= MATCH_SIMILARITY
    };

    // Coverage.
    for (fi, f) in facts.iter().enumerate() {
        if (0..memories.len()).any(|mi| states(mi, fi)) {
            scores.covered += 1;
        } else {
            report.missed.push(MissedFact {
                fact_id: f.fact_id.clone(),
                fact: f.fact.clone(),
                from_message: from_message(fi),
            });
        }
    }

    // Retrieval through the real search (live memories only).
    let questions: Vec<(usize, String)> = facts
        .iter()
        .enumerate()
        .flat_map(|(fi, f)| f.questions.iter().map(move |q| (fi, q.clone())))
        .collect();
    let question_vectors = embed(
        deps,
        &questions.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>(),
    )
    .await?;
    // Facts a later fact replaces (their memory is rightly hidden once superseded).
    let replaced: std::collections::HashSet<&str> = facts
        .iter()
        .filter_map(|f| f.supersedes.as_deref())
        .collect();
    let mut fact_hits = vec![0usize; facts.len()];
    for ((fi, _), vector) in questions.iter().zip(&question_vectors) {
        scores.questions += 1;
        let was_replaced = replaced.contains(facts[*fi].fact_id.as_str());
        scores.replaced_questions += usize::from(was_replaced);
        let found = deps
            .memories
            .search(&SearchQuery {
                pair: pair.clone(),
                vector: vector.clone(),
                limit: TOP_K,
                score_threshold: None,
                include_superseded: false,
            })
            .await?;
        if let Some(rank) = found
            .iter()
            .position(|s| sourced(&s.memory, &facts[*fi].first_message_id))
        {
            scores.hits_at_5 += 1;
            scores.replaced_hits_at_5 += usize::from(was_replaced);
            if was_replaced {
                scores.replaced_reciprocal_rank_sum += 1.0 / (rank + 1) as f64;
            }
            scores.reciprocal_rank_sum += 1.0 / (rank + 1) as f64;
            fact_hits[*fi] += 1;
        }
    }
    for (fi, f) in facts.iter().enumerate() {
        if fact_hits[fi] < f.questions.len() {
            report
                .retrieval_misses
                .push((f.fact_id.clone(), fact_hits[fi], f.questions.len()));
        }
    }

    // Supersession: the new state is stored and live; the old state is no longer live.
    let by_id: HashMap<&str, usize> = facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.fact_id.as_str(), i))
        .collect();
    for (fi, f) in facts.iter().enumerate() {
        let Some(old) = f.supersedes.as_deref().and_then(|o| by_id.get(o)) else {
            continue;
        };
        scores.supersessions += 1;
        let live = |mi: usize| memories[mi].superseded_by.is_none();
        // A state a later fact replaces in turn (postponed, then done) is right when stored:
        // its memory is rightly superseded by then.
        let replaced_later = replaced.contains(f.fact_id.as_str());
        let new_live =
            (0..memories.len()).find(|&mi| (replaced_later || live(mi)) && states(mi, fi));
        let old_live = (0..memories.len()).find(|&mi| {
            live(mi)
                && states(mi, *old)
                && cosine(&memory_vectors[mi], &fact_vectors[*old])
                    > cosine(&memory_vectors[mi], &fact_vectors[fi])
        });
        let case = SupersessionCase {
            fact_id: f.fact_id.clone(),
            supersedes: facts[*old].fact_id.clone(),
            new_memory: new_live.map(|mi| memories[mi].text.clone()),
            old_memory: old_live.map(|mi| memories[mi].text.clone()),
            from_message: from_message(fi),
        };
        if case.right() {
            scores.supersessions_right += 1;
        }
        report.supersessions.push(case);
    }

    // Hygiene.
    for (mi, m) in memories.iter().enumerate() {
        if is_sensitive(&m.text) {
            scores.hygiene_violations += 1;
        }
        if !m.source_message_ids.is_empty()
            && m.source_message_ids
                .iter()
                .all(|s| roles.get(s) == Some(&Role::Assistant))
        {
            scores.assistant_claims += 1;
        }
        for other in mi + 1..memories.len() {
            let same = m
                .text
                .trim()
                .eq_ignore_ascii_case(memories[other].text.trim());
            if same || cosine(&memory_vectors[mi], &memory_vectors[other]) >= DUPLICATE_SIMILARITY {
                scores.duplicates += 1;
            }
        }
    }

    // The search path alone: the gold facts as memories of a pair of their own.
    let gold_pair = Pair::parse(
        &format!("gold.{}", pair.user_id),
        pair.character_name.as_str(),
    )
    .map_err(|(field, e)| anyhow::anyhow!("{field}: {e}"))?;
    let points: Vec<MemoryPoint> = facts
        .iter()
        .zip(&fact_vectors)
        .enumerate()
        .map(|(i, (f, v))| MemoryPoint {
            memory: Memory {
                id: crate::batching::memory_id(&format!("gold/{}", f.fact_id), i),
                pair: gold_pair.clone(),
                text: f.fact.clone(),
                category: Category::Other,
                importance: 3,
                created_at: Utc::now(),
                event_time: None,
                source_message_ids: vec![f.first_message_id.clone()],
                batch_id: "gold".into(),
                superseded_by: None,
            },
            vector: v.clone(),
        })
        .collect();
    if !points.is_empty() {
        deps.memories.upsert(&points).await?;
    }
    for ((fi, _), vector) in questions.iter().zip(&question_vectors) {
        let found = deps
            .memories
            .search(&SearchQuery {
                pair: gold_pair.clone(),
                vector: vector.clone(),
                limit: TOP_K,
                score_threshold: None,
                include_superseded: false,
            })
            .await?;
        if found.iter().any(|s| s.memory.id == points[*fi].memory.id) {
            scores.search_path_hits += 1;
        }
    }
    deps.memories.delete_pair(&gold_pair).await?;
    Ok(scores)
}

async fn embed(deps: &Deps, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        out.extend(deps.embedder.embed(chunk).await?);
    }
    Ok(out)
}
