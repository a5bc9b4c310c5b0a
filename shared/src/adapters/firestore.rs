//! The production message store: Google Cloud Firestore, through the `firestore` crate.
//!
//! Layout, with the default `RECALL_FIRESTORE_MESSAGES_PATH`:
//!
//! | document | written by | holds |
//! |---|---|---|
//! | `users/{u}/characters/{c}/messages/{message_id}` | the app | `text`, `role`, `channel`, `created_at`, `sync` |
//! | `users/{u}/characters/{c}/memory_batches/{batch_id}` | recall | lease, saved extraction, provenance |
//! | `users/{u}/characters/{c}/memory_state/lock` | recall | the pair's open batch, a generation, totals |
//!
//! **Claiming.** The lock document names the pair's open batch. A claim reads it and creates the
//! batch document (precondition: it does not exist) in one transaction, so of two workers racing
//! for a pair exactly one commits; the other's transaction aborts, is retried, and then sees the
//! holder. A batch id is derived from its message ids, so the same messages always give the same
//! batch, and a lease that expired is taken over with the extraction saved on the batch.
//!
//! **Staleness without re-reading messages.** Every completion increments the lock's
//! `generation`. A listing remembers the generation it saw *before* it queried; if the claim
//! transaction still sees that generation, no batch completed in between, so every listed
//! message is still unsynced. Otherwise (or for a plan this process did not list) the claim
//! reads the planned messages inside the transaction.
//!
//! **Completion.** One transaction flips the messages (`sync: true`, precondition: they exist),
//! closes the batch with its provenance and clears the lock; batches over the 500-writes limit
//! flip in batched writes of at most 500 first, the lock still naming the batch.
//!
//! Document reads and writes are counted in `recall_firestore_documents_total{op}`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use firestore::gcloud_sdk::google::firestore::v1::{Document, Value, value::ValueType};
use firestore::{
    FirestoreConsistencySelector, FirestoreDb, FirestoreDbOptions, FirestoreInstant,
    FirestoreTimestamp, FirestoreTransaction, FirestoreWritePrecondition, errors::FirestoreError,
};
use futures::StreamExt;
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use crate::config::FirestoreArgs;
use crate::domain::{
    BatchOutcome, CharacterName, Extraction, MAX_MESSAGE_CHARS, Message, MessageId, MessageStats,
    Pair, Role, TokenUsage, UserId,
};
use crate::error::{PortError, PortResult};
use crate::metrics::Metrics;
use crate::ports::{BatchPlan, Claim, ClaimedBatch, MessageStore, OpenBatch};

const DEP: &str = "firestore";
/// Collection of batch documents, beside the messages collection.
pub const BATCHES: &str = "memory_batches";
/// Collection of the pair's lock document, beside the messages collection.
pub const STATE: &str = "memory_state";
const LOCK_ID: &str = "lock";
/// Firestore's limit of writes per commit.
const MAX_WRITES: usize = 500;
/// How long a lock read may stand in for a fresh one when a listing starts.
const OBSERVATION_TTL: Duration = Duration::from_secs(2);
/// Bound of the per-process caches (listings and repair notes).
const CACHE_LIMIT: usize = 10_000;

/// A messages collection path with `{user_id}` and `{character_name}` as whole document ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    User,
    Character,
}

impl PathTemplate {
    /// Parses a template such as `users/{user_id}/characters/{character_name}/messages`.
    pub fn parse(template: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "RECALL_FIRESTORE_MESSAGES_PATH {template:?}: {why}"
            ))
        };
        let raw: Vec<&str> = template.trim_matches('/').split('/').collect();
        if raw.len() < 3 || raw.len().is_multiple_of(2) {
            return bad("must be collection/document/.../collection (an odd number of segments)");
        }
        let mut segments = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let seg = match *s {
                "{user_id}" => Segment::User,
                "{character_name}" => Segment::Character,
                "" => return bad("has an empty segment"),
                s if s.contains(['{', '}']) => {
                    return bad("placeholders must be whole segments: {user_id}, {character_name}");
                }
                s => Segment::Literal(s.to_owned()),
            };
            if !matches!(seg, Segment::Literal(_)) && i % 2 == 0 {
                return bad("placeholders must be document ids, not collection ids");
            }
            segments.push(seg);
        }
        let pos = |x: &Segment| segments.iter().position(|s| s == x);
        let (Some(u), Some(c)) = (pos(&Segment::User), pos(&Segment::Character)) else {
            return bad("must contain {user_id} and {character_name}");
        };
        let count = |x: &Segment| segments.iter().filter(|s| *s == x).count();
        if count(&Segment::User) != 1 || count(&Segment::Character) != 1 || u > c {
            return bad("needs {user_id} once, then {character_name} once");
        }
        Ok(Self { segments })
    }

    fn render(&self, pair: &Pair, upto: usize) -> String {
        self.segments[..upto]
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::User => pair.user_id.as_str(),
                Segment::Character => pair.character_name.as_str(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The pair's document (parent of the messages, batches and lock), relative to the root.
    pub fn pair_document(&self, pair: &Pair) -> String {
        self.render(pair, self.segments.len() - 1)
    }

    /// The user's document, relative to the root (everything of the user is beneath it).
    pub fn user_document(&self, user: &UserId) -> String {
        let upto = self
            .segments
            .iter()
            .position(|s| *s == Segment::User)
            .expect("validated")
            + 1;
        let pair = Pair {
            user_id: user.clone(),
            character_name: CharacterName::parse("x").expect("valid"),
        };
        self.render(&pair, upto)
    }

    /// The messages collection id (the last segment).
    pub fn messages_collection(&self) -> &str {
        match self.segments.last() {
            Some(Segment::Literal(l)) => l,
            _ => unreachable!("validated: the last segment is a literal collection id"),
        }
    }

    /// The pair of a document path relative to the root, if it follows the template:
    /// `.../messages/{id}` for a message, `.../{BATCHES}/{id}` or `.../{STATE}/{id}` beside it.
    pub fn pair_of(&self, relative: &str) -> Option<Pair> {
        let parts: Vec<&str> = relative.split('/').collect();
        let parent_len = self.segments.len() - 1;
        if parts.len() != parent_len + 2 {
            return None;
        }
        let (mut user, mut character) = (None, None);
        for (seg, part) in self.segments[..parent_len].iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::User => user = Some(*part),
                Segment::Character => character = Some(*part),
            }
        }
        Pair::parse(user?, character?).ok()
    }
}

/// The pair's lock document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LockDoc {
    user_id: String,
    character_name: String,
    /// The open batch, absent when none is.
    #[serde(default)]
    open_batch_id: Option<String>,
    /// Completions (and erasures) so far.
    #[serde(default)]
    generation: i64,
    #[serde(default)]
    batches_done: i64,
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
    #[serde(default)]
    last_completed_at: Option<FirestoreTimestamp>,
}

/// A batch document: lease, saved extraction, provenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchDoc {
    user_id: String,
    character_name: String,
    batch_id: String,
    /// `open` or `done`.
    state: String,
    message_ids: Vec<String>,
    #[serde(default)]
    claimed_by: Option<String>,
    #[serde(default)]
    lease_until: Option<FirestoreTimestamp>,
    attempt: i64,
    /// The extraction as JSON, saved before the vector write.
    #[serde(default)]
    extraction: Option<String>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    failed: bool,
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
    created_at: FirestoreTimestamp,
    #[serde(default)]
    completed_at: Option<FirestoreTimestamp>,
    /// Provenance: memories produced and superseded, per-stage milliseconds.
    #[serde(default)]
    memory_ids: Vec<String>,
    #[serde(default)]
    superseded_ids: Vec<String>,
    #[serde(default)]
    stage_millis: HashMap<String, i64>,
    /// Messages that were repaired or skipped, with the reason.
    #[serde(default)]
    notes: Vec<String>,
}

/// A message as the app writes it.
#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    text: String,
    role: String,
    channel: String,
    created_at: FirestoreTimestamp,
    sync: bool,
}

/// The fields a flip writes.
#[derive(Debug, Serialize, Deserialize)]
struct FlipDoc {
    sync: bool,
    memory_batch_id: String,
}

impl FlipDoc {
    fn of(batch_id: &str) -> Self {
        Self {
            sync: true,
            memory_batch_id: batch_id.to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct CountRow {
    #[serde(default)]
    n: i64,
}

/// What a completion closes.
#[derive(Clone, Copy)]
struct Completion<'a> {
    pair: &'a Pair,
    batch_id: &'a str,
    worker: &'a str,
    outcome: &'a BatchOutcome,
    /// Whether the flips go in the closing transaction (else they were written before).
    flip_here: bool,
}

/// What a listing saw: the lock generation read before it, and the ids it returned.
#[derive(Debug, Clone)]
struct Observation {
    generation: i64,
    at: Instant,
    listed: HashSet<MessageId>,
}

/// [`MessageStore`] on Google Cloud Firestore (or its emulator). Clones share the client and
/// the caches.
#[derive(Clone)]
pub struct FirestoreMessageStore {
    db: FirestoreDb,
    template: PathTemplate,
    documents: IntCounterVec,
    observed: Arc<Mutex<HashMap<Pair, Observation>>>,
    notes: Arc<Mutex<HashMap<(Pair, MessageId), String>>>,
}

impl std::fmt::Debug for FirestoreMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreMessageStore")
            .field("database", self.db.get_database_path())
            .finish_non_exhaustive()
    }
}

/// Why a transaction body stopped.
enum TxFail {
    Store(FirestoreError),
    Port(PortError),
}

impl From<FirestoreError> for TxFail {
    fn from(e: FirestoreError) -> Self {
        Self::Store(e)
    }
}

fn code_of(e: &FirestoreError) -> Option<&str> {
    match e {
        FirestoreError::DatabaseError(d) => Some(d.public.code.as_str()),
        FirestoreError::DataConflictError(d) => Some(d.public.code.as_str()),
        FirestoreError::DataNotFoundError(d) => Some(d.public.code.as_str()),
        FirestoreError::NetworkError(d) => Some(d.public.code.as_str()),
        _ => None,
    }
}

/// Contention: the transaction lost a race and may simply run again.
fn is_aborted(e: &FirestoreError) -> bool {
    code_of(e) == Some("Aborted")
}

/// A write's precondition failed (the document exists, or does not).
fn is_precondition(e: &FirestoreError) -> bool {
    matches!(code_of(e), Some("AlreadyExists" | "FailedPrecondition"))
}

/// Maps a Firestore error to the port's: transient codes are retryable, permanent ones say what
/// to fix.
fn port_err(e: FirestoreError) -> PortError {
    let text = e.to_string();
    match (&e, code_of(&e)) {
        (FirestoreError::NetworkError(_), _) => PortError::unavailable(DEP, text),
        (
            _,
            Some(
                "Unavailable" | "Aborted" | "DeadlineExceeded" | "ResourceExhausted" | "Cancelled"
                | "Internal" | "CONNECTION_CLOSED" | "CONNECTION_TIMEOUT",
            ),
        ) => PortError::unavailable(DEP, text),
        (_, Some("PermissionDenied")) => PortError::rejected(
            DEP,
            format!(
                "permission denied: give the service account the Cloud Datastore User role on \
                 FIRESTORE_PROJECT_ID ({text})"
            ),
        ),
        (_, Some("Unauthenticated")) => PortError::rejected(
            DEP,
            format!(
                "not authenticated: set GOOGLE_APPLICATION_CREDENTIALS to a service account key \
                 or run where application default credentials exist ({text})"
            ),
        ),
        (_, Some("InvalidArgument")) => PortError::rejected(
            DEP,
            format!(
                "invalid request: check FIRESTORE_PROJECT_ID, FIRESTORE_DATABASE_ID and \
                 RECALL_FIRESTORE_MESSAGES_PATH ({text})"
            ),
        ),
        (_, Some("AlreadyExists" | "FailedPrecondition")) => PortError::Conflict(text),
        (FirestoreError::DatabaseError(d), _) if d.retry_possible => {
            PortError::unavailable(DEP, text)
        }
        _ => PortError::rejected(DEP, text),
    }
}

fn tx_port_err(e: TxFail) -> PortError {
    match e {
        TxFail::Store(e) => port_err(e),
        TxFail::Port(e) => e,
    }
}

fn to_ts(t: DateTime<Utc>) -> FirestoreTimestamp {
    FirestoreTimestamp(
        FirestoreInstant::from_microsecond(t.timestamp_micros())
            .unwrap_or(FirestoreInstant::UNIX_EPOCH),
    )
}

fn from_ts(t: &FirestoreTimestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

fn from_proto_ts(t: &firestore::gcloud_sdk::prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).unwrap_or_default()
}

/// A message decoded from whatever the app wrote; `notes` say what had to be repaired.
#[derive(Debug)]
struct Decoded {
    message: Message,
    notes: Vec<String>,
}

/// Decodes a message document leniently: a missing or mistyped field gets a safe value and a
/// note, an oversized text is truncated, control characters are dropped. `None` when the
/// document id is not a valid message id (it cannot be represented at all).
fn decode_message(pair: &Pair, doc: &Document) -> Option<Decoded> {
    let id = doc.name.rsplit('/').next().unwrap_or_default();
    let id = MessageId::parse(id).ok()?;
    let mut notes = Vec::new();
    let field = |name: &str| {
        doc.fields
            .get(name)
            .and_then(|v: &Value| v.value_type.as_ref())
    };
    let mut text = match field("text") {
        Some(ValueType::StringValue(s)) => s.clone(),
        Some(ValueType::BytesValue(b)) => {
            notes.push("text was bytes, decoded lossily".to_owned());
            String::from_utf8_lossy(b).into_owned()
        }
        Some(ValueType::IntegerValue(i)) => {
            notes.push("text was a number".to_owned());
            i.to_string()
        }
        Some(_) => {
            notes.push("text had a wrong type, left empty".to_owned());
            String::new()
        }
        None => {
            notes.push("text missing, left empty".to_owned());
            String::new()
        }
    };
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        text.retain(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'));
        notes.push("control characters removed from text".to_owned());
    }
    if text.contains('\u{FFFD}') {
        notes.push("text contains replacement characters (was not valid UTF-8 upstream)".into());
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        let cut = text
            .char_indices()
            .nth(MAX_MESSAGE_CHARS)
            .map(|(i, _)| i)
            .unwrap_or(text.len());
        notes.push(format!(
            "text truncated from {} bytes to {MAX_MESSAGE_CHARS} characters",
            text.len()
        ));
        text.truncate(cut);
    }
    let role = match field("role") {
        Some(ValueType::StringValue(s)) => Role::parse(s).unwrap_or_else(|| {
            notes.push(format!("unknown role {:?}, taken as user", truncate(s, 32)));
            Role::User
        }),
        _ => {
            notes.push("role missing or mistyped, taken as user".to_owned());
            Role::User
        }
    };
    let channel = match field("channel") {
        Some(ValueType::StringValue(s)) => truncate(s, 64).to_owned(),
        _ => String::new(),
    };
    let created_at = match field("created_at") {
        Some(ValueType::TimestampValue(t)) => from_proto_ts(t),
        Some(ValueType::StringValue(s)) if DateTime::parse_from_rfc3339(s).is_ok() => {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default()
        }
        _ => {
            notes.push("created_at missing or mistyped, the document's create time used".into());
            doc.create_time
                .as_ref()
                .map(from_proto_ts)
                .unwrap_or_default()
        }
    };
    let sync = matches!(field("sync"), Some(ValueType::BooleanValue(true)));
    Some(Decoded {
        message: Message {
            id,
            pair: pair.clone(),
            role,
            channel,
            text,
            created_at,
            sync,
        },
        notes,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(12)
        .with_jitter()
}

impl FirestoreMessageStore {
    /// Connects with the settings (emulator when `FIRESTORE_EMULATOR_HOST` is set) and registers
    /// the document counter in `metrics`.
    pub async fn connect(args: &FirestoreArgs, metrics: &Metrics) -> anyhow::Result<Self> {
        let project = args.firestore_project_id.clone().ok_or_else(|| {
            anyhow::anyhow!("RECALL_MESSAGE_STORE=firestore needs FIRESTORE_PROJECT_ID")
        })?;
        let template =
            PathTemplate::parse(&args.firestore_messages_path).map_err(anyhow::Error::msg)?;
        let options = FirestoreDbOptions::new(project)
            .with_database_id(args.firestore_database_id.clone())
            .with_request_timeout(Duration::from_secs(args.firestore_timeout_seconds.max(1)));
        let db = FirestoreDb::with_options(options).await?;
        let documents = IntCounterVec::new(
            prometheus::Opts::new(
                "recall_firestore_documents_total",
                "Firestore documents read and written by the message store (billed operations).",
            ),
            &["op"],
        )?;
        // A second store in the same process (tests) keeps its own, unexported counter.
        let _ = metrics.registry().register(Box::new(documents.clone()));
        Ok(Self {
            db,
            template,
            documents,
            observed: Arc::default(),
            notes: Arc::default(),
        })
    }

    /// Documents read and written so far by this store.
    pub fn documents(&self) -> (u64, u64) {
        (
            self.documents.with_label_values(&["read"]).get(),
            self.documents.with_label_values(&["write"]).get(),
        )
    }

    fn read(&self, n: usize) {
        self.documents
            .with_label_values(&["read"])
            .inc_by(n.max(1) as u64);
    }

    fn wrote(&self, n: usize) {
        self.documents
            .with_label_values(&["write"])
            .inc_by(n as u64);
    }

    fn parent(&self, pair: &Pair) -> String {
        format!(
            "{}/{}",
            self.db.get_documents_path(),
            self.template.pair_document(pair)
        )
    }

    fn messages(&self) -> &str {
        self.template.messages_collection()
    }

    fn remember_notes(&self, pair: &Pair, decoded: &Decoded) {
        if decoded.notes.is_empty() {
            return;
        }
        tracing::warn!(
            pair = %crate::telemetry::pair_label(pair),
            message_id = %decoded.message.id,
            notes = %decoded.notes.join("; "),
            "a Firestore message needed repair"
        );
        let mut notes = self.notes.lock().expect("notes lock");
        if notes.len() >= CACHE_LIMIT {
            notes.clear();
        }
        notes.insert(
            (pair.clone(), decoded.message.id.clone()),
            decoded.notes.join("; "),
        );
    }

    /// Decodes query results; documents whose id cannot be a message id are marked synced with
    /// the reason (they could never be processed, and must not block the pair).
    async fn decode_all(&self, pair: &Pair, docs: Vec<Document>) -> PortResult<Vec<Message>> {
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            match decode_message(pair, &doc) {
                Some(d) => {
                    self.remember_notes(pair, &d);
                    out.push(d.message);
                }
                None => self.skip_unusable(pair, &doc).await?,
            }
        }
        Ok(out)
    }

    async fn skip_unusable(&self, pair: &Pair, doc: &Document) -> PortResult<()> {
        #[derive(Serialize, Deserialize)]
        struct Skip {
            sync: bool,
            memory_skip_reason: String,
        }
        let reason = "document id is not a valid message id ([A-Za-z0-9_.-], 1-128)";
        let (parent, rest) = doc.name.rsplit_once('/').unwrap_or_default();
        // The document path holds the user id: the pair appears as its label.
        tracing::warn!(
            pair = %crate::telemetry::pair_label(pair),
            document_id = %rest.chars().take(64).collect::<String>(),
            reason,
            "skipping a Firestore message"
        );
        let (parent, collection) = parent.rsplit_once('/').unwrap_or_default();
        self.db
            .fluent()
            .update()
            .fields(["sync", "memory_skip_reason"])
            .in_col(collection)
            .precondition(FirestoreWritePrecondition::Exists(true))
            .document_id(rest)
            .parent(parent)
            .object(&Skip {
                sync: true,
                memory_skip_reason: reason.to_owned(),
            })
            .execute::<()>()
            .await
            .map_err(port_err)?;
        self.wrote(1);
        Ok(())
    }

    async fn read_lock(&self, db: &FirestoreDb, pair: &Pair) -> Result<LockDoc, FirestoreError> {
        self.read(1);
        let lock: Option<LockDoc> = db
            .fluent()
            .select()
            .by_id_in(STATE)
            .parent(self.parent(pair))
            .obj()
            .one(LOCK_ID)
            .await?;
        Ok(lock.unwrap_or_else(|| LockDoc {
            user_id: pair.user_id.as_str().to_owned(),
            character_name: pair.character_name.as_str().to_owned(),
            ..LockDoc::default()
        }))
    }

    async fn read_batch(
        &self,
        db: &FirestoreDb,
        pair: &Pair,
        batch_id: &str,
    ) -> Result<Option<BatchDoc>, FirestoreError> {
        self.read(1);
        db.fluent()
            .select()
            .by_id_in(BATCHES)
            .parent(self.parent(pair))
            .obj()
            .one(batch_id)
            .await
    }

    /// Remembers a lock generation read now, and the ids a listing pinned to it returned.
    fn observe(&self, pair: &Pair, generation: i64, listed: HashSet<MessageId>) {
        let mut seen = self.observed.lock().expect("observed lock");
        if seen.len() >= CACHE_LIMIT {
            seen.clear();
        }
        seen.insert(
            pair.clone(),
            Observation {
                generation,
                at: Instant::now(),
                listed,
            },
        );
    }

    /// The generation to pin a listing to: a recent lock read, else a fresh one.
    async fn generation_before_listing(&self, pair: &Pair) -> PortResult<i64> {
        let recent = self
            .observed
            .lock()
            .expect("observed lock")
            .get(pair)
            .filter(|o| o.at.elapsed() < OBSERVATION_TTL)
            .map(|o| o.generation);
        match recent {
            Some(g) => Ok(g),
            None => {
                let lock = self.read_lock(&self.db, pair).await.map_err(port_err)?;
                self.observe(pair, lock.generation, HashSet::new());
                Ok(lock.generation)
            }
        }
    }

    /// Runs `attempt` (one whole transaction) until it does not lose a race (ABORTED).
    async fn retrying<T, F, Fut>(&self, attempt: F) -> PortResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TxFail>>,
    {
        attempt
            .retry(retry_policy())
            .when(|e: &TxFail| matches!(e, TxFail::Store(s) if is_aborted(s)))
            .await
            .map_err(tx_port_err)
    }

    /// Begins a transaction and the client that reads inside it.
    async fn begin(&self) -> Result<(FirestoreTransaction<'_>, FirestoreDb), TxFail> {
        let tx = self.db.begin_transaction().await?;
        let tdb =
            self.db
                .clone_with_consistency_selector(FirestoreConsistencySelector::Transaction(
                    tx.transaction_id().clone(),
                ));
        Ok((tx, tdb))
    }
}

/// Commits `tx` when the body succeeded (counting its writes), rolls it back otherwise.
async fn finish<T>(
    store: &FirestoreMessageStore,
    tx: FirestoreTransaction<'_>,
    result: Result<T, TxFail>,
) -> Result<T, TxFail> {
    match result {
        Ok(v) => {
            let writes = tx.transaction_data().writes().len();
            tx.commit().await?;
            store.wrote(writes);
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rollback failed (the transaction expires)");
            }
            Err(e)
        }
    }
}

impl FirestoreMessageStore {
    async fn count(&self, pair: &Pair, only_unsynced: bool) -> PortResult<u64> {
        let query = self
            .db
            .fluent()
            .select()
            .from(self.messages())
            .parent(self.parent(pair));
        let query = if only_unsynced {
            query.filter(|q| q.for_all([q.field("sync").eq(false)]))
        } else {
            query
        };
        let rows: Vec<CountRow> = query
            .aggregate(|a| a.fields([a.field("n").count()]))
            .obj()
            .query()
            .await
            .map_err(port_err)?;
        let n = rows.first().map(|r| r.n.max(0) as u64).unwrap_or(0);
        // Billed as one read per 1000 index entries (at least one).
        self.read(n.div_ceil(1000) as usize);
        Ok(n)
    }

    async fn list(&self, pair: &Pair, limit: usize, newest: bool) -> PortResult<Vec<Message>> {
        let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
        let docs = self
            .db
            .fluent()
            .select()
            .from(self.messages())
            .parent(self.parent(pair))
            .filter(|q| q.for_all([q.field("sync").eq(false)]))
            .order(|o| {
                let created = o.field("created_at");
                o.fields([if newest {
                    created.desc()
                } else {
                    created.asc()
                }])
            })
            .limit(limit)
            .query()
            .await
            .map_err(port_err)?;
        self.read(docs.len());
        let mut messages = self.decode_all(pair, docs).await?;
        if newest {
            messages.reverse();
        }
        Ok(messages)
    }

    /// Reads the planned messages inside the claim transaction: are they all there and unsynced?
    async fn all_unsynced(
        &self,
        tdb: &FirestoreDb,
        pair: &Pair,
        plan: &BatchPlan,
    ) -> Result<bool, TxFail> {
        let ids: Vec<&str> = plan.messages.iter().map(|m| m.id.as_str()).collect();
        self.read(ids.len());
        let found: Vec<(String, Option<Document>)> = tdb
            .fluent()
            .select()
            .by_id_in(self.messages())
            .parent(self.parent(pair))
            .batch(ids)
            .await?
            .collect()
            .await;
        Ok(found.len() == plan.messages.len()
            && found.iter().all(|(_, doc)| {
                doc.as_ref().is_some_and(|d| {
                    !matches!(
                        d.fields.get("sync").and_then(|v| v.value_type.as_ref()),
                        Some(ValueType::BooleanValue(true))
                    )
                })
            }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn claim_body(
        &self,
        tx: &mut FirestoreTransaction<'_>,
        tdb: &FirestoreDb,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: Duration,
        observed: Option<&Observation>,
    ) -> Result<Claim, TxFail> {
        let lock = self.read_lock(tdb, pair).await?;
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let parent = self.parent(pair);
        match lock.open_batch_id.as_deref() {
            Some(open) if open == plan.batch_id => {
                let Some(mut b) = self.read_batch(tdb, pair, open).await? else {
                    return Ok(Claim::Stale);
                };
                if b.state == "done" {
                    return Ok(Claim::Done);
                }
                if let (Some(by), Some(lease_until)) = (&b.claimed_by, &b.lease_until)
                    && by != worker
                    && from_ts(lease_until) > now
                {
                    return Ok(Claim::Held {
                        by: by.clone(),
                        until: from_ts(lease_until),
                    });
                }
                b.claimed_by = Some(worker.to_owned());
                b.lease_until = Some(to_ts(until));
                b.attempt += 1;
                let extraction = b
                    .extraction
                    .as_deref()
                    .map(serde_json::from_str::<Extraction>)
                    .transpose()
                    .map_err(|e| {
                        TxFail::Port(PortError::invalid_output(
                            DEP,
                            format!("saved extraction of batch {open} is unreadable: {e}"),
                        ))
                    })?;
                self.put_batch(tx, &parent, &b, None)?;
                Ok(Claim::Acquired(ClaimedBatch {
                    batch_id: open.to_owned(),
                    attempt: b.attempt as u32,
                    extraction,
                }))
            }
            Some(_) => Ok(Claim::Stale),
            None => {
                let fresh = observed.is_some_and(|o| {
                    o.generation == lock.generation
                        && plan.messages.iter().all(|m| o.listed.contains(&m.id))
                });
                if !fresh {
                    // Not a plan of ours that is known fresh: check it the long way.
                    tracing::debug!(
                        pair = %crate::telemetry::pair_label(pair),
                        observed = ?observed.map(|o| (o.generation, o.listed.len())),
                        generation = lock.generation,
                        "claim reads the planned messages"
                    );
                    if let Some(b) = self.read_batch(tdb, pair, &plan.batch_id).await?
                        && b.state == "done"
                    {
                        return Ok(Claim::Done);
                    }
                    if !self.all_unsynced(tdb, pair, plan).await? {
                        return Ok(Claim::Stale);
                    }
                }
                let notes: Vec<String> = {
                    let mut cached = self.notes.lock().expect("notes lock");
                    plan.messages
                        .iter()
                        .filter_map(|m| {
                            cached
                                .remove(&(pair.clone(), m.id.clone()))
                                .map(|n| format!("{}: {n}", m.id))
                        })
                        .collect()
                };
                let batch = BatchDoc {
                    user_id: pair.user_id.as_str().to_owned(),
                    character_name: pair.character_name.as_str().to_owned(),
                    batch_id: plan.batch_id.clone(),
                    state: "open".into(),
                    message_ids: plan.messages.iter().map(|m| m.id.to_string()).collect(),
                    claimed_by: Some(worker.to_owned()),
                    lease_until: Some(to_ts(until)),
                    attempt: 1,
                    extraction: None,
                    last_error: None,
                    failed: false,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    created_at: to_ts(now),
                    completed_at: None,
                    memory_ids: Vec::new(),
                    superseded_ids: Vec::new(),
                    stage_millis: HashMap::new(),
                    notes,
                };
                let create = FirestoreWritePrecondition::Exists(false);
                self.put_batch(tx, &parent, &batch, Some(create))?;
                let lock = LockDoc {
                    user_id: pair.user_id.as_str().to_owned(),
                    character_name: pair.character_name.as_str().to_owned(),
                    open_batch_id: Some(plan.batch_id.clone()),
                    ..LockDoc::default()
                };
                self.db
                    .fluent()
                    .update()
                    .fields(["user_id", "character_name", "open_batch_id"])
                    .in_col(STATE)
                    .document_id(LOCK_ID)
                    .parent(&parent)
                    .object(&lock)
                    .add_to_transaction(tx)?;
                Ok(Claim::Acquired(ClaimedBatch {
                    batch_id: plan.batch_id.clone(),
                    attempt: 1,
                    extraction: None,
                }))
            }
        }
    }

    /// Reads the batch inside a transaction and checks `worker` holds it.
    async fn held_batch(
        &self,
        tdb: &FirestoreDb,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
    ) -> Result<BatchDoc, TxFail> {
        match self.read_batch(tdb, pair, batch_id).await? {
            Some(b) if b.state == "open" && b.claimed_by.as_deref() == Some(worker) => Ok(b),
            _ => Err(TxFail::Port(PortError::Conflict(format!(
                "batch {batch_id} is no longer held by {worker}"
            )))),
        }
    }

    /// Adds the write of a whole batch document to `tx`.
    fn put_batch(
        &self,
        tx: &mut FirestoreTransaction<'_>,
        parent: &str,
        b: &BatchDoc,
        precondition: Option<FirestoreWritePrecondition>,
    ) -> Result<(), FirestoreError> {
        let write = self.db.fluent().update().in_col(BATCHES);
        let write = match precondition {
            Some(p) => write.precondition(p),
            None => write,
        };
        write
            .document_id(&b.batch_id)
            .parent(parent)
            .object(b)
            .add_to_transaction(tx)?;
        Ok(())
    }

    /// The write flipping one message to synced; it fails if the message no longer exists.
    fn flip<'a>(
        &'a self,
        parent: &str,
        id: &MessageId,
        flip: &'a FlipDoc,
    ) -> firestore::update_builder::FirestoreUpdateObjExecuteBuilder<'a, FirestoreDb, FlipDoc> {
        self.db
            .fluent()
            .update()
            .fields(["sync", "memory_batch_id"])
            .in_col(self.messages())
            .precondition(FirestoreWritePrecondition::Exists(true))
            .document_id(id.as_str())
            .parent(parent)
            .object(flip)
    }

    /// Changes the batch `worker` holds, in a transaction; when it no longer holds it, a
    /// [`PortError::Conflict`] if `must_hold`, else nothing.
    async fn update_held(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        must_hold: bool,
        change: impl Fn(&mut BatchDoc),
    ) -> PortResult<()> {
        self.retrying(|| async {
            let (mut tx, tdb) = self.begin().await?;
            let body = async {
                let mut b = match self.held_batch(&tdb, pair, batch_id, worker).await {
                    Ok(b) => b,
                    Err(TxFail::Port(_)) if !must_hold => return Ok(()),
                    Err(e) => return Err(e),
                };
                change(&mut b);
                self.put_batch(&mut tx, &self.parent(pair), &b, None)?;
                Ok(())
            }
            .await;
            finish(self, tx, body).await
        })
        .await
    }

    /// Flips `ids` (unless already flipped), closes the batch and clears the lock, in one
    /// transaction.
    async fn complete_attempt(
        &self,
        c: &Completion<'_>,
        ids: &[MessageId],
        missing: &[MessageId],
    ) -> Result<u64, TxFail> {
        let Completion {
            pair,
            batch_id,
            worker,
            outcome,
            flip_here,
        } = *c;
        let (mut tx, tdb) = self.begin().await?;
        let body = async {
            let mut b = self.held_batch(&tdb, pair, batch_id, worker).await?;
            let parent = self.parent(pair);
            if flip_here {
                let flip = FlipDoc::of(batch_id);
                for id in ids {
                    self.flip(&parent, id, &flip).add_to_transaction(&mut tx)?;
                }
            }
            let now = Utc::now();
            b.state = "done".into();
            b.completed_at = Some(to_ts(now));
            b.lease_until = None;
            b.last_error = None;
            b.failed = false;
            b.memory_ids = outcome.memory_ids.iter().map(|u| u.to_string()).collect();
            b.superseded_ids = outcome
                .superseded_ids
                .iter()
                .map(|u| u.to_string())
                .collect();
            b.stage_millis = outcome
                .stage_millis
                .iter()
                .map(|(k, v)| (k.clone(), *v as i64))
                .collect();
            b.prompt_tokens = outcome.usage.prompt_tokens as i64;
            b.completion_tokens = outcome.usage.completion_tokens as i64;
            b.notes.extend(
                missing
                    .iter()
                    .map(|m| format!("{m}: deleted before the flip")),
            );
            self.put_batch(&mut tx, &parent, &b, None)?;
            let lock = LockDoc {
                user_id: pair.user_id.as_str().to_owned(),
                character_name: pair.character_name.as_str().to_owned(),
                open_batch_id: None,
                last_completed_at: Some(to_ts(now)),
                ..LockDoc::default()
            };
            let (prompt, completion) = (
                outcome.usage.prompt_tokens as i64,
                outcome.usage.completion_tokens as i64,
            );
            self.db
                .fluent()
                .update()
                .fields([
                    "user_id",
                    "character_name",
                    "open_batch_id",
                    "last_completed_at",
                ])
                .in_col(STATE)
                .document_id(LOCK_ID)
                .parent(&parent)
                .object(&lock)
                .transforms(|t| {
                    t.fields([
                        t.field("generation").increment(1),
                        t.field("batches_done").increment(1),
                        t.field("prompt_tokens").increment(prompt),
                        t.field("completion_tokens").increment(completion),
                    ])
                })
                .add_to_transaction(&mut tx)?;
            Ok(ids.len() as u64)
        }
        .await;
        finish(self, tx, body).await
    }

    /// Which of `ids` still exist (a message the app deleted cannot be flipped).
    async fn existing(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<MessageId>> {
        Ok(self
            .get_messages(pair, ids)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// Flips messages outside a transaction, in batched writes of at most 500.
    async fn flip_in_batches(
        &self,
        pair: &Pair,
        batch_id: &str,
        ids: &[MessageId],
    ) -> PortResult<()> {
        let parent = self.parent(pair);
        let writer = self
            .db
            .create_simple_batch_writer()
            .await
            .map_err(port_err)?;
        let flip = FlipDoc::of(batch_id);
        for chunk in ids.chunks(MAX_WRITES) {
            let mut batch = writer.new_batch();
            for id in chunk {
                self.flip(&parent, id, &flip)
                    .add_to_batch(&mut batch)
                    .map_err(port_err)?;
            }
            // A batched write applies each write on its own: a deleted message fails alone.
            batch.write().await.map_err(port_err)?;
            self.wrote(chunk.len());
        }
        Ok(())
    }

    /// Deletes documents by full name, at most 500 per batched write; returns how many.
    async fn delete_all(&self, names: &[String]) -> PortResult<u64> {
        let writer = self
            .db
            .create_simple_batch_writer()
            .await
            .map_err(port_err)?;
        for chunk in names.chunks(MAX_WRITES) {
            let mut batch = writer.new_batch();
            for name in chunk {
                let (parent, id) = name.rsplit_once('/').unwrap_or_default();
                let (parent, collection) = parent.rsplit_once('/').unwrap_or_default();
                self.db
                    .fluent()
                    .delete()
                    .from(collection)
                    .document_id(id)
                    .parent(parent)
                    .add_to_batch(&mut batch)
                    .map_err(port_err)?;
            }
            batch.write().await.map_err(port_err)?;
            self.wrote(chunk.len());
        }
        Ok(names.len() as u64)
    }

    /// Names of the documents of `collection` under `parent` (all descendants), whose path
    /// follows the template for `pair_filter`.
    async fn names_under(
        &self,
        parent: &str,
        collection: &str,
        keep: impl Fn(&Pair) -> bool,
    ) -> PortResult<Vec<String>> {
        let docs = self
            .db
            .fluent()
            .select()
            .fields(["user_id"])
            .from(collection)
            .parent(parent)
            .all_descendants()
            .query()
            .await
            .map_err(port_err)?;
        self.read(docs.len());
        let root = format!("{}/", self.db.get_documents_path());
        Ok(docs
            .into_iter()
            .filter(|d| {
                d.name
                    .strip_prefix(&root)
                    .and_then(|rel| self.template.pair_of(rel))
                    .is_some_and(|p| keep(&p))
            })
            .map(|d| d.name)
            .collect())
    }
}

/// What [`FirestoreMessageStore::audit`] read of one pair: every message and batch record.
#[cfg(feature = "testkit")]
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Every message document.
    pub messages: Vec<AuditedMessage>,
    /// Every batch record.
    pub batches: Vec<AuditedBatch>,
}

/// One message document, as the fault suite checks it.
#[cfg(feature = "testkit")]
#[derive(Debug, Clone)]
pub struct AuditedMessage {
    /// Its id.
    pub id: String,
    /// Its `sync` flag.
    pub sync: bool,
    /// The batch that flipped it (`memory_batch_id`), if any.
    pub batch_id: Option<String>,
    /// Its `created_at`, if it is a timestamp.
    pub created_at: Option<DateTime<Utc>>,
}

/// One batch record, as the fault suite checks it.
#[cfg(feature = "testkit")]
#[derive(Debug, Clone)]
pub struct AuditedBatch {
    /// Its id.
    pub batch_id: String,
    /// `open` or `done`.
    pub state: String,
    /// The messages it covers.
    pub message_ids: Vec<String>,
    /// The memories it produced.
    pub memory_ids: Vec<String>,
    /// Claims so far.
    pub attempt: i64,
    /// Whether an extraction is saved on it.
    pub has_extraction: bool,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
}

#[cfg(feature = "testkit")]
impl FirestoreMessageStore {
    /// Reads every message (synced or not) and batch record of a pair, for invariant checks.
    pub async fn audit(&self, pair: &Pair) -> PortResult<Audit> {
        let docs = self
            .db
            .fluent()
            .select()
            .from(self.messages())
            .parent(self.parent(pair))
            .query()
            .await
            .map_err(port_err)?;
        let messages = docs
            .iter()
            .map(|d| {
                let id = d.name.rsplit('/').next().unwrap_or_default().to_owned();
                let sync = matches!(
                    d.fields.get("sync").and_then(|v| v.value_type.as_ref()),
                    Some(ValueType::BooleanValue(true))
                );
                let batch_id = match d
                    .fields
                    .get("memory_batch_id")
                    .and_then(|v| v.value_type.as_ref())
                {
                    Some(ValueType::StringValue(b)) => Some(b.clone()),
                    _ => None,
                };
                let created_at = match d
                    .fields
                    .get("created_at")
                    .and_then(|v| v.value_type.as_ref())
                {
                    Some(ValueType::TimestampValue(t)) => Some(from_proto_ts(t)),
                    _ => None,
                };
                AuditedMessage {
                    id,
                    sync,
                    batch_id,
                    created_at,
                }
            })
            .collect();
        let batches: Vec<BatchDoc> = self
            .db
            .fluent()
            .select()
            .from(BATCHES)
            .parent(self.parent(pair))
            .obj()
            .query()
            .await
            .map_err(port_err)?;
        let batches = batches
            .into_iter()
            .map(|b| AuditedBatch {
                batch_id: b.batch_id,
                state: b.state,
                message_ids: b.message_ids,
                memory_ids: b.memory_ids,
                attempt: b.attempt,
                has_extraction: b.extraction.is_some(),
                completed_at: b.completed_at.as_ref().map(from_ts),
            })
            .collect();
        Ok(Audit { messages, batches })
    }
}

#[async_trait]
impl MessageStore for FirestoreMessageStore {
    async fn append(&self, m: &Message) -> PortResult<bool> {
        let doc = MessageDoc {
            text: m.text.clone(),
            role: m.role.as_str().to_owned(),
            channel: m.channel.clone(),
            created_at: to_ts(m.created_at),
            sync: m.sync,
        };
        let result = self
            .db
            .fluent()
            .insert()
            .into(self.messages())
            .document_id(m.id.as_str())
            .parent(self.parent(&m.pair))
            .object(&doc)
            .execute::<()>()
            .await;
        match result {
            Ok(()) => {
                self.wrote(1);
                Ok(true)
            }
            Err(e) if is_precondition(&e) => Ok(false),
            Err(e) => Err(port_err(e)),
        }
    }

    async fn count_unsynced(&self, pair: &Pair) -> PortResult<u64> {
        self.count(pair, true).await
    }

    async fn list_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        let generation = self.generation_before_listing(pair).await?;
        let messages = self.list(pair, limit, false).await?;
        self.observe(
            pair,
            generation,
            messages.iter().map(|m| m.id.clone()).collect(),
        );
        Ok(messages)
    }

    async fn recent_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        self.list(pair, limit, true).await
    }

    async fn get_messages(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<Message>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read(ids.len());
        let found: Vec<(String, Option<Document>)> = self
            .db
            .fluent()
            .select()
            .by_id_in(self.messages())
            .parent(self.parent(pair))
            .batch(ids.iter().map(|i| i.as_str()))
            .await
            .map_err(port_err)?
            .collect()
            .await;
        let mut by_id: HashMap<String, Message> = HashMap::new();
        for (id, doc) in found {
            if let Some(d) = doc.as_ref().and_then(|d| decode_message(pair, d)) {
                by_id.insert(id, d.message);
            }
        }
        Ok(ids
            .iter()
            .filter_map(|i| by_id.remove(i.as_str()))
            .collect())
    }

    async fn open_batch(&self, pair: &Pair) -> PortResult<Option<OpenBatch>> {
        let lock = self.read_lock(&self.db, pair).await.map_err(port_err)?;
        self.observe(pair, lock.generation, HashSet::new());
        let Some(open) = lock.open_batch_id else {
            return Ok(None);
        };
        let Some(b) = self
            .read_batch(&self.db, pair, &open)
            .await
            .map_err(port_err)?
        else {
            return Ok(None);
        };
        Ok(Some(OpenBatch {
            batch_id: b.batch_id,
            message_ids: b
                .message_ids
                .iter()
                .filter_map(|i| MessageId::parse(i.as_str()).ok())
                .collect(),
            claimed_by: b.claimed_by,
            lease_until: b.lease_until.as_ref().map(from_ts),
            attempt: b.attempt.max(0) as u32,
            last_error: b.last_error,
        }))
    }

    async fn claim_batch(
        &self,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: Duration,
    ) -> PortResult<Claim> {
        if plan.messages.is_empty() {
            return Ok(Claim::Stale);
        }
        let observed = self
            .observed
            .lock()
            .expect("observed lock")
            .get(pair)
            .cloned();
        let result = self
            .retrying(|| async {
                let (mut tx, tdb) = self.begin().await?;
                let body = self
                    .claim_body(&mut tx, &tdb, pair, plan, worker, lease, observed.as_ref())
                    .await;
                finish(self, tx, body).await
            })
            .await;
        match result {
            // The batch document already exists while the lock names no open batch: done.
            Err(PortError::Conflict(_)) => {
                let b = self
                    .read_batch(&self.db, pair, &plan.batch_id)
                    .await
                    .map_err(port_err)?;
                Ok(match b {
                    Some(b) if b.state == "done" => Claim::Done,
                    _ => Claim::Stale,
                })
            }
            other => other,
        }
    }

    async fn save_extraction(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        extraction: &Extraction,
    ) -> PortResult<()> {
        let json = serde_json::to_string(extraction)
            .map_err(|e| PortError::invalid_output(DEP, format!("extraction to JSON: {e}")))?;
        self.update_held(pair, batch_id, worker, true, |b| {
            b.extraction = Some(json.clone());
            b.prompt_tokens = extraction.usage.prompt_tokens as i64;
            b.completion_tokens = extraction.usage.completion_tokens as i64;
        })
        .await
    }

    async fn complete_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        message_ids: &[MessageId],
        outcome: &BatchOutcome,
    ) -> PortResult<u64> {
        // Messages, batch and lock in one commit when they fit; else flip first (the lock
        // still names the batch, so nobody plans over it), then close.
        let flip_here = message_ids.len() + 2 <= MAX_WRITES;
        if !flip_here {
            self.retrying(|| async {
                let (tx, tdb) = self.begin().await?;
                let held = self
                    .held_batch(&tdb, pair, batch_id, worker)
                    .await
                    .map(|_| ());
                finish(self, tx, held).await
            })
            .await?;
            self.flip_in_batches(pair, batch_id, message_ids).await?;
        }
        let completion = Completion {
            pair,
            batch_id,
            worker,
            outcome,
            flip_here,
        };
        let attempt = |ids: Vec<MessageId>, missing: Vec<MessageId>| {
            let completion = &completion;
            async move { self.complete_attempt(completion, &ids, &missing).await }
        };
        let result = self
            .retrying(|| attempt(message_ids.to_vec(), Vec::new()))
            .await;
        match result {
            // A message the app deleted meanwhile fails its `exists` precondition: flip the rest.
            Err(PortError::Conflict(e)) if flip_here && !e.contains("no longer held") => {
                let present = self.existing(pair, message_ids).await?;
                let missing: Vec<MessageId> = message_ids
                    .iter()
                    .filter(|m| !present.contains(m))
                    .cloned()
                    .collect();
                tracing::warn!(
                    pair = %crate::telemetry::pair_label(pair),
                    batch_id,
                    missing = missing.len(),
                    "messages deleted before the flip; flipping the others"
                );
                self.retrying(|| attempt(present.clone(), missing.clone()))
                    .await
            }
            other => other,
        }
    }

    async fn fail_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        reason: &str,
    ) -> PortResult<()> {
        // No longer ours: nothing to release.
        self.update_held(pair, batch_id, worker, false, |b| {
            b.lease_until = None;
            b.last_error = Some(truncate(reason, 2000).to_owned());
            b.failed = true;
        })
        .await
    }

    async fn stats(&self, pair: &Pair) -> PortResult<MessageStats> {
        let total = self.count(pair, false).await?;
        let unsynced = self.count(pair, true).await?;
        let lock = self.read_lock(&self.db, pair).await.map_err(port_err)?;
        let failed = match &lock.open_batch_id {
            Some(open) => self
                .read_batch(&self.db, pair, open)
                .await
                .map_err(port_err)?
                .is_some_and(|b| b.failed),
            None => false,
        };
        Ok(MessageStats {
            total,
            synced: total.saturating_sub(unsynced),
            unsynced,
            batches_done: lock.batches_done.max(0) as u64,
            batches_failed: failed as u64,
            last_batch_at: lock.last_completed_at.as_ref().map(from_ts),
            tokens: TokenUsage {
                prompt_tokens: lock.prompt_tokens.max(0) as u64,
                completion_tokens: lock.completion_tokens.max(0) as u64,
            },
        })
    }

    async fn unsynced_pairs(&self, min_unsynced: u64) -> PortResult<Vec<(Pair, u64)>> {
        let docs = self
            .db
            .fluent()
            .select()
            .fields(["sync"])
            .from(self.messages())
            .all_descendants()
            .filter(|q| q.for_all([q.field("sync").eq(false)]))
            .query()
            .await
            .map_err(port_err)?;
        self.read(docs.len());
        let root = format!("{}/", self.db.get_documents_path());
        let mut counts: HashMap<Pair, u64> = HashMap::new();
        for d in &docs {
            if let Some(pair) = d
                .name
                .strip_prefix(&root)
                .and_then(|rel| self.template.pair_of(rel))
            {
                *counts.entry(pair).or_default() += 1;
            }
        }
        let mut out: Vec<(Pair, u64)> = counts
            .into_iter()
            .filter(|(_, n)| *n >= min_unsynced)
            .collect();
        out.sort_by(|a, b| {
            (a.0.user_id.as_str(), a.0.character_name.as_str())
                .cmp(&(b.0.user_id.as_str(), b.0.character_name.as_str()))
        });
        Ok(out)
    }

    async fn erase_batches(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<u64> {
        let root = self.db.get_documents_path();
        let (parent, keep): (String, Box<dyn Fn(&Pair) -> bool + Send + Sync>) = match character {
            Some(c) => {
                let pair = Pair {
                    user_id: user.clone(),
                    character_name: c.clone(),
                };
                let wanted = pair.clone();
                (self.parent(&pair), Box::new(move |p: &Pair| *p == wanted))
            }
            None => {
                let wanted = user.clone();
                (
                    format!("{root}/{}", self.template.user_document(user)),
                    Box::new(move |p: &Pair| p.user_id == wanted),
                )
            }
        };
        let batches = self.names_under(&parent, BATCHES, &keep).await?;
        let locks = self.names_under(&parent, STATE, &keep).await?;
        let erased = self.delete_all(&batches).await?;
        self.delete_all(&locks).await?;
        self.observed
            .lock()
            .expect("observed lock")
            .retain(|p, _| !keep(p));
        Ok(erased)
    }

    async fn ping(&self) -> PortResult<()> {
        self.db.ping().await.map_err(port_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::doubles::FlakyFlipStore;
    use crate::testkit::message_store::{message, unique_pair};

    /// A store on the emulator in a project of its own, or `None` (with a line saying so) when
    /// no emulator is configured. `RECALL_REQUIRE_FIRESTORE` (set by scripts/test.sh) turns the
    /// skip into a failure.
    async fn emulator() -> Option<FirestoreMessageStore> {
        if std::env::var_os("FIRESTORE_EMULATOR_HOST").is_none() {
            assert!(
                std::env::var_os("RECALL_REQUIRE_FIRESTORE").is_none(),
                "RECALL_REQUIRE_FIRESTORE is set but FIRESTORE_EMULATOR_HOST is not"
            );
            eprintln!(
                "skipped: no Firestore emulator (FIRESTORE_EMULATOR_HOST is unset; \
                 scripts/test.sh starts one)"
            );
            return None;
        }
        let project = format!(
            "recall-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Some(connect(&project).await)
    }

    async fn connect(project: &str) -> FirestoreMessageStore {
        let args = FirestoreArgs {
            firestore_project_id: Some(project.to_owned()),
            ..FirestoreArgs::default()
        };
        FirestoreMessageStore::connect(&args, &Metrics::new())
            .await
            .expect("the emulator answers")
    }

    fn string(s: &str) -> Value {
        Value {
            value_type: Some(ValueType::StringValue(s.to_owned())),
        }
    }

    fn doc(name: &str, fields: Vec<(&str, ValueType)>) -> Document {
        Document {
            name: name.to_owned(),
            fields: fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        Value {
                            value_type: Some(v),
                        },
                    )
                })
                .collect(),
            create_time: Some(firestore::gcloud_sdk::prost_types::Timestamp {
                seconds: 1_730_628_000,
                nanos: 0,
            }),
            update_time: None,
        }
    }

    #[test]
    fn templates_are_validated_and_reversible() {
        let t = PathTemplate::parse(crate::config::DEFAULT_MESSAGES_PATH).unwrap();
        let pair = Pair::parse("u_1", "meher").unwrap();
        assert_eq!(t.pair_document(&pair), "users/u_1/characters/meher");
        assert_eq!(t.user_document(&pair.user_id), "users/u_1");
        assert_eq!(t.messages_collection(), "messages");
        assert_eq!(
            t.pair_of("users/u_1/characters/meher/messages/m1"),
            Some(pair.clone())
        );
        assert_eq!(
            t.pair_of("users/u_1/characters/meher/memory_batches/b1"),
            Some(pair)
        );
        assert_eq!(t.pair_of("users/u_1/other/meher/messages/m1"), None);
        assert_eq!(t.pair_of("users/u_1/characters/meher/messages"), None);
        assert_eq!(t.pair_of("users/a b/characters/meher/messages/m1"), None);
        let nested =
            PathTemplate::parse("apps/chat/users/{user_id}/bots/{character_name}/log").unwrap();
        assert_eq!(
            nested.pair_document(&Pair::parse("u", "c").unwrap()),
            "apps/chat/users/u/bots/c"
        );
        for bad in [
            "messages",
            "users/{user_id}/messages",
            "users/{user_id}/characters/{character_name}",
            "users/{user_id}/characters/x{character_name}/messages",
            "{user_id}/x/characters/{character_name}/messages",
            "users/{character_name}/characters/{user_id}/messages",
            "users//characters/{character_name}/messages",
            "users/{user_id}/characters/{user_id}/messages",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn bad_documents_are_repaired_with_a_note() {
        let pair = Pair::parse("u", "meher").unwrap();
        let name = |id: &str| {
            format!(
                "projects/p/databases/(default)/documents/users/u/characters/meher/messages/{id}"
            )
        };
        let good = decode_message(
            &pair,
            &doc(
                &name("m1"),
                vec![
                    ("text", ValueType::StringValue("hi".into())),
                    ("role", ValueType::StringValue("assistant".into())),
                    ("channel", ValueType::StringValue("voice".into())),
                    (
                        "created_at",
                        ValueType::TimestampValue(firestore::gcloud_sdk::prost_types::Timestamp {
                            seconds: 1_730_628_001,
                            nanos: 5_000,
                        }),
                    ),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
        )
        .unwrap();
        assert!(good.notes.is_empty(), "{:?}", good.notes);
        assert_eq!(good.message.role, Role::Assistant);
        assert_eq!(
            good.message.created_at.timestamp_micros(),
            1_730_628_001_000_005
        );

        let missing = decode_message(&pair, &doc(&name("m2"), vec![])).unwrap();
        assert_eq!(missing.message.text, "");
        assert_eq!(missing.message.role, Role::User);
        assert_eq!(
            missing.message.created_at.timestamp(),
            1_730_628_000,
            "create time"
        );
        assert_eq!(missing.notes.len(), 3, "{:?}", missing.notes);

        let typed = decode_message(
            &pair,
            &doc(
                &name("m3"),
                vec![
                    ("text", ValueType::IntegerValue(42)),
                    ("role", ValueType::StringValue("system-admin".into())),
                    ("created_at", ValueType::StringValue("yesterday".into())),
                ],
            ),
        )
        .unwrap();
        assert_eq!(typed.message.text, "42");
        assert!(typed.notes.iter().any(|n| n.contains("unknown role")));

        let huge = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let big = decode_message(
            &pair,
            &doc(&name("m4"), vec![("text", ValueType::StringValue(huge))]),
        )
        .unwrap();
        assert_eq!(big.message.text.chars().count(), MAX_MESSAGE_CHARS);
        assert!(big.notes.iter().any(|n| n.contains("truncated")));

        let bytes = decode_message(
            &pair,
            &doc(
                &name("m5"),
                vec![("text", ValueType::BytesValue(vec![0xff, b'h', b'i', 0]))],
            ),
        )
        .unwrap();
        assert_eq!(bytes.message.text, "\u{FFFD}hi");
        assert!(bytes.notes.iter().any(|n| n.contains("bytes")));
        assert!(bytes.notes.iter().any(|n| n.contains("control")));

        assert!(
            decode_message(&pair, &doc(&name("not an id"), vec![])).is_none(),
            "an id the domain cannot represent"
        );
        assert_eq!(
            string("x").value_type,
            Some(ValueType::StringValue("x".into()))
        );
    }

    #[test]
    fn errors_map_to_retryable_or_permanent() {
        use firestore::errors::{FirestoreDatabaseError, FirestoreErrorPublicGenericDetails};
        let db = |code: &str| {
            FirestoreError::DatabaseError(FirestoreDatabaseError::new(
                FirestoreErrorPublicGenericDetails::new(code.into()),
                "details".into(),
                false,
            ))
        };
        for code in [
            "Unavailable",
            "Aborted",
            "DeadlineExceeded",
            "ResourceExhausted",
        ] {
            assert!(port_err(db(code)).is_retryable(), "{code} is transient");
        }
        for (code, hint) in [
            ("PermissionDenied", "Cloud Datastore User"),
            ("InvalidArgument", "FIRESTORE_PROJECT_ID"),
            ("Unauthenticated", "GOOGLE_APPLICATION_CREDENTIALS"),
        ] {
            let e = port_err(db(code));
            assert!(!e.is_retryable(), "{code} is permanent");
            assert!(e.to_string().contains(hint), "{e}");
        }
    }

    #[tokio::test]
    async fn contract_on_the_emulator() {
        let Some(store) = emulator().await else {
            return;
        };
        crate::testkit::message_store::run_all(&store).await;
        let (reads, writes) = store.documents();
        assert!(reads > 0 && writes > 0, "operations are counted");
    }

    #[tokio::test]
    async fn engine_scenarios_on_the_emulator() {
        let Some(store) = emulator().await else {
            return;
        };
        crate::testkit::scenarios::crash_before_flip(FlakyFlipStore::new(store.clone())).await;
        crate::testkit::scenarios::takeover_after_lease_expiry(Arc::new(store.clone())).await;
        crate::testkit::scenarios::racing_workers(Arc::new(store)).await;
    }

    /// Two workers with their own clients race for the same batch 100 times: exactly one wins
    /// each time and the other sees it held. Half the rounds claim from a listing (the cached
    /// generation path), half without (messages read in the transaction).
    #[tokio::test]
    async fn two_workers_race_one_claim_wins_each_time() {
        let Some(a) = emulator().await else { return };
        let project = a.db.get_options().google_project_id.clone();
        let b = connect(&project).await;
        let mut wins = 0;
        for wave in 0..10 {
            let mut rounds = Vec::new();
            for k in 0..10 {
                let (a, b) = (a.clone(), b.clone());
                rounds.push(tokio::spawn(async move {
                    let pair = unique_pair("race");
                    let msgs: Vec<Message> = (0..5).map(|i| message(&pair, i)).collect();
                    for m in &msgs {
                        a.append(m).await.unwrap();
                    }
                    let plan = BatchPlan {
                        batch_id: crate::batching::batch_id(&msgs),
                        messages: msgs,
                    };
                    if (wave + k) % 2 == 0 {
                        a.list_unsynced(&pair, 50).await.unwrap();
                        b.list_unsynced(&pair, 50).await.unwrap();
                    }
                    let lease = Duration::from_secs(60);
                    let (x, y) = tokio::join!(
                        a.claim_batch(&pair, &plan, "worker-a", lease),
                        b.claim_batch(&pair, &plan, "worker-b", lease)
                    );
                    (x.unwrap(), y.unwrap())
                }));
            }
            for r in rounds {
                match r.await.unwrap() {
                    (Claim::Acquired(_), Claim::Held { by, .. }) => {
                        assert_eq!(by, "worker-a");
                        wins += 1;
                    }
                    (Claim::Held { by, .. }, Claim::Acquired(_)) => {
                        assert_eq!(by, "worker-b");
                        wins += 1;
                    }
                    other => panic!("exactly one claim must win, got {other:?}"),
                }
            }
        }
        assert_eq!(wins, 100);
    }

    /// Bad documents in Firestore: repaired (with a note on the batch) or, when the id itself
    /// is unusable, marked synced with the reason; the rest of the batch proceeds.
    #[tokio::test]
    async fn bad_data_does_not_stop_the_batch() {
        let Some(store) = emulator().await else {
            return;
        };
        let pair = unique_pair("bad");
        for i in 0..22 {
            store.append(&message(&pair, i)).await.unwrap();
        }
        let parent = store.parent(&pair);
        let t = |s: i64| {
            ValueType::TimestampValue(firestore::gcloud_sdk::prost_types::Timestamp {
                seconds: 1_730_628_000 + s,
                nanos: 0,
            })
        };
        let raw: Vec<(&str, Vec<(&str, ValueType)>)> = vec![
            (
                "bad_missing_text",
                vec![
                    ("created_at", t(300)),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
            (
                "bad_types",
                vec![
                    ("text", ValueType::IntegerValue(7)),
                    ("role", ValueType::IntegerValue(1)),
                    ("created_at", ValueType::StringValue("soon".into())),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
            (
                "bad_huge",
                vec![
                    ("text", ValueType::StringValue("a".repeat(1_000_000))),
                    ("role", ValueType::StringValue("user".into())),
                    ("created_at", t(302)),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
            (
                "bad_bytes",
                vec![
                    ("text", ValueType::BytesValue(vec![0xc3, 0x28, b'o', b'k'])),
                    ("created_at", t(303)),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
            (
                "bad id",
                vec![
                    ("text", ValueType::StringValue("unusable id".into())),
                    ("created_at", t(1)),
                    ("sync", ValueType::BooleanValue(false)),
                ],
            ),
        ];
        for (id, fields) in raw {
            let d = doc("", fields);
            store
                .db
                .fluent()
                .insert()
                .into("messages")
                .document_id(id)
                .parent(&parent)
                .document(d)
                .execute()
                .await
                .unwrap();
        }
        let memories = crate::testkit::doubles::InMemoryMemoryStore::default();
        let rig = crate::testkit::scenarios::rig(
            "w",
            Arc::new(store.clone()),
            Arc::new(memories.clone()),
        );
        let reports = rig.engine.run_until_idle(&pair).await.unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].messages_synced, 26, "22 good and 4 repaired");
        assert_eq!(
            store.count_unsynced(&pair).await.unwrap(),
            0,
            "nothing left behind"
        );
        let batch = store
            .read_batch(&store.db, &pair, &reports[0].batch_id)
            .await
            .unwrap()
            .unwrap();
        for id in ["bad_missing_text", "bad_types", "bad_huge", "bad_bytes"] {
            assert!(
                batch.notes.iter().any(|n| n.starts_with(id)),
                "{id} has a note: {:?}",
                batch.notes
            );
        }
        let skipped = store
            .db
            .fluent()
            .select()
            .by_id_in("messages")
            .parent(&parent)
            .one("bad id")
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            skipped
                .fields
                .get("sync")
                .and_then(|v| v.value_type.as_ref()),
            Some(ValueType::BooleanValue(true))
        ));
        assert!(skipped.fields.contains_key("memory_skip_reason"));
    }
}
