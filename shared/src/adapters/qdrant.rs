//! [`MemoryStore`] on a Qdrant server or cluster over gRPC (`qdrant-client`): the production
//! memory store (`RECALL_MEMORY_STORE=qdrant`).
//!
//! - **One collection** (`QDRANT_COLLECTION_NAME`, default `chat_memory`) holds every user's
//!   memories: one unnamed dense vector with cosine distance, payload on disk, and the payload of
//!   [`super::memory_payload`], the same as the embedded adapter's, so `recall-worker memories
//!   export|import` moves memories between the two unchanged.
//! - **Tenancy by payload**, as Qdrant's multitenancy guide describes: `user_id` is a keyword
//!   index marked `is_tenant` (the server keeps each user's points together), the global HNSW
//!   graph is off (`m = 0`) and graphs are built per tenant instead (`payload_m`); the other
//!   indexes (`character_name`, `batch_id`, `category`, `created_at` as a datetime) only filter.
//!   Every read, count, scroll, supersede and delete carries `user_id AND character_name`, built
//!   by [`Scope::pair`] and nowhere else (`delete_user` and a whole-user export use
//!   [`Scope::user`]); request builders take a [`Scope`], never a bare filter.
//! - **Bootstrap is idempotent** ([`MemoryStore::ensure_collection`]): the collection is created
//!   when missing (a concurrent creator is tolerated), missing payload indexes are added, and an
//!   existing collection with another vector size or distance is a start-up error: it is never
//!   recreated.
//! - **Writes wait** (`wait=true`) until the server applied them, so "stored" means durable before
//!   the pipeline flips the messages. Ids are the core's deterministic UUIDs.
//! - **Errors by gRPC status**: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` (with its
//!   `retry-after`), and `INTERNAL`/`UNKNOWN`/`CANCELLED`/`ABORTED` (qdrant-client reports a failed
//!   connection as `INTERNAL`) are [`PortError::Unavailable`], retried by the pipeline's
//!   `RetryPolicy`; `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND` and
//!   the rest are [`PortError::Rejected`] with what to fix. The adapter itself never loops.
//!
//! Every request is a plain gRPC message built by a pure function of [`Requests`], so the unit
//! tests assert the exact values sent without a server.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    CollectionExistsRequest, CollectionInfo, Condition, CountPoints, CreateCollection,
    CreateFieldIndexCollection, DatetimeIndexParams, DeletePoints, DenseVector, Distance,
    FieldCondition, FieldType, Filter, GetCollectionInfoRequest, HasIdCondition, HnswConfigDiff,
    IsEmptyCondition, KeywordIndexParams, Match, Memory as Residency, PayloadIndexParams,
    PayloadStorageParams, PointId, PointStruct, PointsSelector, Query, QueryPoints, RetrievedPoint,
    ScrollPoints, SetPayloadPoints, UpsertPoints, Value, VectorInput, VectorParams, Vectors,
    VectorsConfig, VectorsOutput, WithPayloadSelector, WithVectorsSelector,
    condition::ConditionOneOf, r#match::MatchValue, payload_index_params::IndexParams,
    point_id::PointIdOptions, points_selector::PointsSelectorOneOf, query, vector_output,
    vectors_config, vectors_output, with_payload_selector, with_vectors_selector,
};
use qdrant_client::{Qdrant, QdrantError};
use uuid::Uuid;

use self::scope::Scope;
use super::memory_payload::{
    self, BATCH_ID, CATEGORY, CHARACTER_NAME, CREATED_AT, SUPERSEDED_BY, USER_ID,
};
use crate::domain::{CharacterName, Memory, Pair, ScoredMemory, UserId};
use crate::error::{PortError, PortResult};
use crate::ports::{MemoryPoint, MemoryStore, SearchQuery, export_order};

/// The dependency name in errors.
const DEP: &str = "qdrant";
/// `QDRANT_URL` when unset: a local server's gRPC port.
pub const DEFAULT_URL: &str = "http://localhost:6334";
/// `QDRANT_COLLECTION_NAME` when unset.
pub const DEFAULT_COLLECTION: &str = "chat_memory";
/// Qdrant's gRPC port (used when `QDRANT_URL` names no port, or names the REST port).
const GRPC_PORT: u16 = 6334;
/// Qdrant's REST port, which this gRPC adapter cannot speak to.
const REST_PORT: u16 = 6333;
/// Points per scroll page.
const SCROLL_PAGE: u32 = 256;
/// Most results one search asks for.
const MAX_SEARCH_LIMIT: usize = 10_000;
/// Links per node of each tenant's HNSW graph (`payload_m`); the global graph is off (`m = 0`).
const TENANT_HNSW_M: u64 = 16;
/// Payload fields with an index, in creation order.
const INDEXED_FIELDS: [&str; 5] = [USER_ID, CHARACTER_NAME, BATCH_ID, CATEGORY, CREATED_AT];

// ---- settings ----

/// How to reach the Qdrant server, validated (from `QDRANT_URL`, `QDRANT_API_KEY`,
/// `QDRANT_COLLECTION_NAME`, `QDRANT_CONNECTION_TIMEOUT`).
#[derive(Clone, PartialEq, Eq)]
pub struct QdrantSettings {
    /// The gRPC endpoint, `http(s)://host:port`; TLS when `https`.
    pub url: String,
    /// Sent as the `api-key` header when set.
    pub api_key: Option<String>,
    /// The collection holding every memory.
    pub collection: String,
    /// Deadline of connecting and of each request.
    pub timeout: Duration,
}

impl std::fmt::Debug for QdrantSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantSettings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl QdrantSettings {
    /// Validates raw settings; the error says which setting to fix and how.
    pub fn new(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        timeout_seconds: u64,
    ) -> Result<Self, String> {
        let (url, note) = grpc_url(url)?;
        if let Some(note) = note {
            tracing::warn!("{note}");
        }
        if collection.is_empty()
            || collection.len() > 255
            || !collection
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(format!(
                "QDRANT_COLLECTION_NAME {collection:?} must be 1-255 characters of \
                 [A-Za-z0-9_.-]"
            ));
        }
        if timeout_seconds == 0 {
            return Err("QDRANT_CONNECTION_TIMEOUT must be at least 1 second".into());
        }
        let api_key = api_key.filter(|k| !k.is_empty());
        if api_key.is_some() && url.starts_with("http://") && !is_loopback_url(&url) {
            tracing::warn!(
                url = %url,
                "QDRANT_API_KEY is sent unencrypted over http://: use an https:// QDRANT_URL"
            );
        }
        Ok(Self {
            url,
            api_key,
            collection: collection.to_string(),
            timeout: Duration::from_secs(timeout_seconds),
        })
    }
}

/// Normalises `QDRANT_URL` to a gRPC endpoint `scheme://host:port`: no port means Qdrant's gRPC
/// port 6334, and the REST port 6333 is mapped to 6334 (the note says so, for a warning).
fn grpc_url(raw: &str) -> Result<(String, Option<String>), String> {
    let raw = raw.trim();
    let url = reqwest::Url::parse(raw).map_err(|e| {
        format!("QDRANT_URL {raw:?} is not a URL ({e}): expected e.g. {DEFAULT_URL}")
    })?;
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "QDRANT_URL {raw:?} must start with http:// or https:// (https uses TLS), \
             e.g. {DEFAULT_URL}"
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!(
            "QDRANT_URL {raw:?} names no host: expected e.g. {DEFAULT_URL}"
        ));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "QDRANT_URL {raw:?} carries credentials: put the API key in QDRANT_API_KEY instead"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "QDRANT_URL {raw:?} has a path or query: the gRPC endpoint is just \
             scheme://host:port, e.g. {DEFAULT_URL}"
        ));
    }
    // `Url` drops a port equal to the scheme's default, so look for one in the text.
    let authority = raw
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    let explicit_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let (port, note) = match url.port_or_known_default() {
        Some(REST_PORT) if explicit_port => (
            GRPC_PORT,
            Some(format!(
                "QDRANT_URL {raw:?} names port {REST_PORT}, Qdrant's REST port; recall speaks \
                 gRPC, so it connects to port {GRPC_PORT} (set QDRANT_URL to \
                 {scheme}://{host}:{GRPC_PORT} to silence this)"
            )),
        ),
        Some(port) if explicit_port => (port, None),
        _ => (GRPC_PORT, None),
    };
    Ok((format!("{scheme}://{host}:{port}"), note))
}

/// Whether the URL's host is this machine.
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .rsplit_once(':')
        .map_or("", |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

// ---- the store ----

/// Memories in one collection of a Qdrant server or cluster.
pub struct QdrantStore {
    client: Qdrant,
    settings: QdrantSettings,
    requests: Requests,
    /// The collection's vector size once known (set by `ensure_collection` or the first call
    /// that needs it), to reject a wrong vector before anything is sent.
    dimension: RwLock<Option<usize>>,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl QdrantStore {
    /// A client for `settings`; connects lazily, on the first call.
    pub fn new(settings: QdrantSettings) -> PortResult<Self> {
        let mut config = Qdrant::from_url(&settings.url)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .skip_compatibility_check();
        if let Some(key) = &settings.api_key {
            config = config.api_key(key.clone());
        }
        let client = config.build().map_err(|e| {
            PortError::rejected(
                DEP,
                format!(
                    "cannot configure a Qdrant client for QDRANT_URL {}: {e}",
                    settings.url
                ),
            )
        })?;
        Ok(Self {
            client,
            requests: Requests::new(&settings.collection),
            settings,
            dimension: RwLock::new(None),
        })
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &QdrantSettings {
        &self.settings
    }

    /// Maps a client error of `action` to a port error.
    fn error(&self, action: &str, e: QdrantError) -> PortError {
        port_error(&self.settings.collection, action, e)
    }

    /// The collection's description, or `None` if it does not exist.
    async fn collection_info(&self) -> PortResult<Option<CollectionInfo>> {
        match self
            .client
            .collection_info(self.requests.collection_info())
            .await
        {
            Ok(reply) => reply
                .result
                .map(Some)
                .ok_or_else(|| PortError::invalid_output(DEP, "collection info came back empty")),
            Err(QdrantError::ResponseError { status })
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(self.error("reading the collection", e)),
        }
    }

    /// The collection's vector size, asking the server the first time.
    async fn dimension(&self) -> PortResult<usize> {
        if let Some(d) = *self
            .dimension
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Ok(d);
        }
        let info = self.collection_info().await?.ok_or_else(|| {
            PortError::rejected(
                DEP,
                format!(
                    "the Qdrant collection `{}` does not exist: check QDRANT_COLLECTION_NAME, \
                     or start a worker once to create it",
                    self.settings.collection
                ),
            )
        })?;
        let d = vector_size(&info, &self.settings.collection)?;
        *self
            .dimension
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(d);
        Ok(d)
    }

    /// Counts the points of `scope`, exactly.
    async fn count_scope(&self, scope: &Scope, action: &str) -> PortResult<u64> {
        let reply = self
            .client
            .count(self.requests.count(scope))
            .await
            .map_err(|e| self.error(action, e))?;
        Ok(reply.result.map_or(0, |r| r.count))
    }

    /// Deletes the points of `scope`; returns how many there were.
    async fn delete_scope(&self, scope: Scope, action: &str) -> PortResult<u64> {
        let n = self.count_scope(&scope, action).await?;
        if n > 0 {
            self.client
                .delete_points(self.requests.delete(&scope))
                .await
                .map_err(|e| self.error(action, e))?;
        }
        Ok(n)
    }

    /// Every point of `scope`, page by page.
    async fn scroll_all(
        &self,
        scope: &Scope,
        with_vectors: bool,
        action: &str,
    ) -> PortResult<Vec<RetrievedPoint>> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let reply = self
                .client
                .scroll(self.requests.scroll(scope, offset.take(), with_vectors))
                .await
                .map_err(|e| self.error(action, e))?;
            out.extend(reply.result);
            match reply.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Deletes the whole collection and every memory in it. For tests and benchmarks on
    /// throwaway collections: recall itself never calls it.
    #[doc(hidden)]
    pub async fn delete_collection(&self) -> PortResult<()> {
        self.client
            .delete_collection(qdrant_client::qdrant::DeleteCollection {
                collection_name: self.settings.collection.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| self.error("deleting the collection", e))?;
        *self
            .dimension
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

#[async_trait]
impl MemoryStore for QdrantStore {
    async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
        if dimension == 0 {
            return Err(PortError::rejected(
                DEP,
                "vector dimension must be positive",
            ));
        }
        let collection = &self.settings.collection;
        let info = match self.collection_info().await? {
            Some(info) => info,
            None => {
                match self
                    .client
                    .create_collection(self.requests.create_collection(dimension))
                    .await
                {
                    Ok(_) => tracing::info!(collection, dimension, "created the Qdrant collection"),
                    // Another process may have created it meanwhile: then use theirs.
                    Err(e) if self.collection_info().await?.is_some() => {
                        tracing::debug!(collection, error = %e, "collection created concurrently");
                    }
                    Err(e) => return Err(self.error("creating the collection", e)),
                }
                self.collection_info().await?.ok_or_else(|| {
                    PortError::unavailable(
                        DEP,
                        format!("collection `{collection}` is missing right after creating it"),
                    )
                })?
            }
        };
        let existing = vector_size(&info, collection)?;
        if existing != dimension {
            return Err(PortError::rejected(
                DEP,
                format!(
                    "the Qdrant collection `{collection}` holds vectors of size {existing}, the \
                     embedder produces {dimension}: configure an embedder of dimension \
                     {existing}, or set QDRANT_COLLECTION_NAME to a new collection and \
                     re-extract or import the memories there (recall never recreates an \
                     existing collection)"
                ),
            ));
        }
        for request in self.requests.missing_indexes(&info) {
            let field = request.field_name.clone();
            self.client
                .create_field_index(request)
                .await
                .map_err(|e| self.error(&format!("creating the payload index on {field}"), e))?;
            tracing::info!(collection, field, "created a Qdrant payload index");
        }
        *self
            .dimension
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(dimension);
        Ok(())
    }

    async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
        if points.is_empty() {
            return Ok(());
        }
        let dimension = self.dimension().await?;
        // Validate everything before sending anything: a rejected call stores nothing.
        for p in points {
            check_vector(
                &p.vector,
                dimension,
                &format!("the vector of memory {}", p.memory.id),
            )?;
        }
        let request = self.requests.upsert(points)?;
        self.client
            .upsert_points(request)
            .await
            .map_err(|e| self.error("upserting memories", e))?;
        Ok(())
    }

    async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
        if query.score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(PortError::rejected(DEP, "score_threshold must be finite"));
        }
        let dimension = self.dimension().await?;
        check_vector(&query.vector, dimension, "the query vector")?;
        let limit = query.limit.min(MAX_SEARCH_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self
            .client
            .query(self.requests.query(query, limit))
            .await
            .map_err(|e| self.error("searching memories", e))?;
        reply
            .result
            .into_iter()
            .map(|hit| {
                let memory = memory_from(hit.id, hit.payload)?;
                // Defence in depth: the filter already confines the search to the pair.
                if memory.pair != query.pair {
                    return Err(PortError::invalid_output(
                        DEP,
                        format!("search returned memory {} of another pair", memory.id),
                    ));
                }
                Ok(ScoredMemory {
                    memory,
                    score: hit.score,
                })
            })
            .collect()
    }

    async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let scope = Scope::pair(pair, PairOp::Supersede { ids });
        let n = self
            .count_scope(&scope, "marking memories superseded")
            .await?;
        if n > 0 {
            self.client
                .set_payload(self.requests.set_superseded(&scope, by))
                .await
                .map_err(|e| self.error("marking memories superseded", e))?;
        }
        Ok(n)
    }

    async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64> {
        let scope = Scope::pair(pair, PairOp::Count { include_superseded });
        self.count_scope(&scope, "counting memories").await
    }

    async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
        let scope = Scope::pair(pair, PairOp::List);
        let mut memories = self
            .scroll_all(&scope, false, "listing memories")
            .await?
            .into_iter()
            .map(|p| memory_from(p.id, p.payload))
            .collect::<PortResult<Vec<_>>>()?;
        memories.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(memories)
    }

    async fn export(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<Vec<MemoryPoint>> {
        let scope = match character {
            Some(c) => Scope::pair(&Pair::new(user.clone(), c.clone()), PairOp::List),
            None => Scope::user(user),
        };
        let mut points = self
            .scroll_all(&scope, true, "exporting memories")
            .await?
            .into_iter()
            .map(|p| {
                let memory = memory_from(p.id, p.payload)?;
                let vector = dense_vector(memory.id, p.vectors)?;
                Ok(MemoryPoint { memory, vector })
            })
            .collect::<PortResult<Vec<_>>>()?;
        points.sort_by(|a, b| export_order(&a.memory, &b.memory));
        Ok(points)
    }

    async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
        let scope = Scope::pair(pair, PairOp::DeleteBatch { batch_id });
        self.delete_scope(scope, "deleting a batch's memories")
            .await
    }

    async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
        let scope = Scope::pair(pair, PairOp::DeletePair);
        self.delete_scope(scope, "deleting a pair's memories").await
    }

    async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
        self.delete_scope(Scope::user(user), "deleting a user's memories")
            .await
    }

    async fn ping(&self) -> PortResult<()> {
        let exists = self
            .client
            .collection_exists(CollectionExistsRequest {
                collection_name: self.settings.collection.clone(),
            })
            .await
            .map_err(|e| self.error("checking the collection", e))?;
        if exists {
            Ok(())
        } else {
            Err(PortError::unavailable(
                DEP,
                format!(
                    "the Qdrant collection `{}` does not exist (ensure_collection was not called)",
                    self.settings.collection
                ),
            ))
        }
    }
}

// ---- filters ----

/// Every operation that reads, changes or deletes within one pair.
#[derive(Debug, Clone, Copy)]
enum PairOp<'a> {
    /// Nearest memories.
    Search { include_superseded: bool },
    /// Counting.
    Count { include_superseded: bool },
    /// Listing and export (superseded included).
    List,
    /// Marking `ids` as superseded.
    Supersede { ids: &'a [Uuid] },
    /// Deleting one batch's memories (superseded included).
    DeleteBatch { batch_id: &'a str },
    /// Deleting the pair (superseded included).
    DeletePair,
}

mod scope {
    //! The tenant filter, in a module of its own so that nothing else can build a [`Scope`]
    //! from an arbitrary [`Filter`].

    use super::*;

    /// A filter confining a request to one tenant. Its field is private to this module: the
    /// only ways to get one are [`Scope::pair`] (`user_id` AND `character_name`, the one place
    /// the pair filter is built) and [`Scope::user`] (every character of one user: forgetting a
    /// user, exporting them). Every request builder that reads or writes points takes a
    /// `Scope`, so no request can be built without the tenant.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) struct Scope(Filter);

    impl Scope {
        /// `user_id = pair.user_id AND character_name = pair.character_name`, plus what `op`
        /// adds (never anything that could widen the conjunction).
        pub(super) fn pair(pair: &Pair, op: PairOp<'_>) -> Self {
            let mut must = vec![
                keyword(USER_ID, pair.user_id.as_str()),
                keyword(CHARACTER_NAME, pair.character_name.as_str()),
            ];
            match op {
                PairOp::Search { include_superseded } | PairOp::Count { include_superseded } => {
                    if !include_superseded {
                        // Matches a missing field, `null` and `[]`: live memories store `null`.
                        must.push(Condition {
                            condition_one_of: Some(ConditionOneOf::IsEmpty(IsEmptyCondition {
                                key: SUPERSEDED_BY.to_string(),
                            })),
                        });
                    }
                }
                PairOp::Supersede { ids } => must.push(Condition {
                    condition_one_of: Some(ConditionOneOf::HasId(HasIdCondition {
                        has_id: ids.iter().map(|id| point_id(*id)).collect(),
                    })),
                }),
                PairOp::DeleteBatch { batch_id } => must.push(keyword(BATCH_ID, batch_id)),
                PairOp::List | PairOp::DeletePair => {}
            }
            Self(Filter {
                must,
                ..Filter::default()
            })
        }

        /// `user_id = user`: every memory of one user, all characters.
        pub(super) fn user(user: &UserId) -> Self {
            Self(Filter {
                must: vec![keyword(USER_ID, user.as_str())],
                ..Filter::default()
            })
        }

        /// The gRPC filter.
        pub(super) fn filter(&self) -> Filter {
            self.0.clone()
        }
    }

    /// `key == value` on a keyword payload field.
    fn keyword(key: &str, value: &str) -> Condition {
        Condition {
            condition_one_of: Some(ConditionOneOf::Field(FieldCondition {
                key: key.to_string(),
                r#match: Some(Match {
                    match_value: Some(MatchValue::Keyword(value.to_string())),
                }),
                ..FieldCondition::default()
            })),
        }
    }
}

// ---- requests ----

/// Builds every gRPC request the store sends, for one collection: pure, so the tests can check
/// each value without a server.
#[derive(Debug, Clone)]
struct Requests {
    collection: String,
}

impl Requests {
    fn new(collection: &str) -> Self {
        Self {
            collection: collection.to_string(),
        }
    }

    fn collection_info(&self) -> GetCollectionInfoRequest {
        GetCollectionInfoRequest {
            collection_name: self.collection.clone(),
        }
    }

    /// One unnamed cosine vector; payload on disk (the deprecated flag for older servers, the
    /// `payload.memory` setting for newer ones, which wins when both are set); no global HNSW
    /// graph, one per tenant instead.
    #[allow(deprecated)]
    fn create_collection(&self, dimension: usize) -> CreateCollection {
        CreateCollection {
            collection_name: self.collection.clone(),
            vectors_config: Some(VectorsConfig {
                config: Some(vectors_config::Config::Params(VectorParams {
                    size: dimension as u64,
                    distance: Distance::Cosine.into(),
                    ..VectorParams::default()
                })),
            }),
            hnsw_config: Some(HnswConfigDiff {
                m: Some(0),
                payload_m: Some(TENANT_HNSW_M),
                ..HnswConfigDiff::default()
            }),
            on_disk_payload: Some(true),
            payload: Some(PayloadStorageParams {
                memory: Some(Residency::Cold.into()),
            }),
            ..CreateCollection::default()
        }
    }

    /// The payload index on `field`: keyword (`user_id` is the tenant key), or datetime for
    /// `created_at` (stored as an RFC 3339 string). Only the tenant key gets HNSW graphs.
    fn field_index(&self, field: &str) -> CreateFieldIndexCollection {
        let (field_type, params) = match field {
            USER_ID => (
                FieldType::Keyword,
                IndexParams::KeywordIndexParams(KeywordIndexParams {
                    is_tenant: Some(true),
                    ..KeywordIndexParams::default()
                }),
            ),
            CREATED_AT => (
                FieldType::Datetime,
                IndexParams::DatetimeIndexParams(DatetimeIndexParams {
                    enable_hnsw: Some(false),
                    ..DatetimeIndexParams::default()
                }),
            ),
            _ => (
                FieldType::Keyword,
                IndexParams::KeywordIndexParams(KeywordIndexParams {
                    enable_hnsw: Some(false),
                    ..KeywordIndexParams::default()
                }),
            ),
        };
        CreateFieldIndexCollection {
            collection_name: self.collection.clone(),
            wait: Some(true),
            field_name: field.to_string(),
            field_type: Some(field_type.into()),
            field_index_params: Some(PayloadIndexParams {
                index_params: Some(params),
            }),
            ..CreateFieldIndexCollection::default()
        }
    }

    /// The indexes `info` lacks (existing ones are left alone, whatever their type).
    fn missing_indexes(&self, info: &CollectionInfo) -> Vec<CreateFieldIndexCollection> {
        INDEXED_FIELDS
            .iter()
            .filter(|f| !info.payload_schema.contains_key(**f))
            .map(|f| self.field_index(f))
            .collect()
    }

    /// Inserts or overwrites `points` by id, waiting until applied.
    fn upsert(&self, points: &[MemoryPoint]) -> PortResult<UpsertPoints> {
        Ok(UpsertPoints {
            collection_name: self.collection.clone(),
            wait: Some(true),
            points: points.iter().map(point_struct).collect::<PortResult<_>>()?,
            ..UpsertPoints::default()
        })
    }

    /// The `limit` nearest memories of the query's pair.
    fn query(&self, q: &SearchQuery, limit: usize) -> QueryPoints {
        let scope = Scope::pair(
            &q.pair,
            PairOp::Search {
                include_superseded: q.include_superseded,
            },
        );
        QueryPoints {
            collection_name: self.collection.clone(),
            query: Some(Query {
                variant: Some(query::Variant::Nearest(VectorInput::new_dense(
                    q.vector.clone(),
                ))),
            }),
            filter: Some(scope.filter()),
            score_threshold: q.score_threshold,
            limit: Some(limit as u64),
            with_payload: Some(with_payload(true)),
            with_vectors: Some(with_vectors(false)),
            ..QueryPoints::default()
        }
    }

    fn count(&self, scope: &Scope) -> CountPoints {
        CountPoints {
            collection_name: self.collection.clone(),
            filter: Some(scope.filter()),
            exact: Some(true),
            ..CountPoints::default()
        }
    }

    fn scroll(&self, scope: &Scope, offset: Option<PointId>, with_vector: bool) -> ScrollPoints {
        ScrollPoints {
            collection_name: self.collection.clone(),
            filter: Some(scope.filter()),
            offset,
            limit: Some(SCROLL_PAGE),
            with_payload: Some(with_payload(true)),
            with_vectors: Some(with_vectors(with_vector)),
            ..ScrollPoints::default()
        }
    }

    /// Sets `superseded_by = by` on the points of `scope`, waiting until applied.
    fn set_superseded(&self, scope: &Scope, by: Uuid) -> SetPayloadPoints {
        SetPayloadPoints {
            collection_name: self.collection.clone(),
            wait: Some(true),
            payload: HashMap::from([(SUPERSEDED_BY.to_string(), Value::from(by.to_string()))]),
            points_selector: Some(PointsSelector {
                points_selector_one_of: Some(PointsSelectorOneOf::Filter(scope.filter())),
            }),
            ..SetPayloadPoints::default()
        }
    }

    /// Deletes the points of `scope`, waiting until applied.
    fn delete(&self, scope: &Scope) -> DeletePoints {
        DeletePoints {
            collection_name: self.collection.clone(),
            wait: Some(true),
            points: Some(PointsSelector {
                points_selector_one_of: Some(PointsSelectorOneOf::Filter(scope.filter())),
            }),
            ..DeletePoints::default()
        }
    }
}

fn with_payload(enable: bool) -> WithPayloadSelector {
    WithPayloadSelector {
        selector_options: Some(with_payload_selector::SelectorOptions::Enable(enable)),
    }
}

fn with_vectors(enable: bool) -> WithVectorsSelector {
    WithVectorsSelector {
        selector_options: Some(with_vectors_selector::SelectorOptions::Enable(enable)),
    }
}

// ---- points and payload ----

/// The gRPC id of a memory (the UUID as a string).
fn point_id(id: Uuid) -> PointId {
    PointId {
        point_id_options: Some(PointIdOptions::Uuid(id.to_string())),
    }
}

/// The gRPC point of a memory: its UUID, its vector, the shared payload shape.
fn point_struct(point: &MemoryPoint) -> PortResult<PointStruct> {
    let payload =
        memory_payload::to_payload(&point.memory).map_err(|e| PortError::rejected(DEP, e))?;
    Ok(PointStruct {
        id: Some(point_id(point.memory.id)),
        payload: payload
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect(),
        vectors: Some(Vectors::from(point.vector.clone())),
    })
}

/// Rebuilds a memory from a returned point id and payload.
fn memory_from(id: Option<PointId>, payload: HashMap<String, Value>) -> PortResult<Memory> {
    let uuid = match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(raw)) => Uuid::parse_str(&raw).map_err(|e| {
            PortError::invalid_output(DEP, format!("point id {raw:?} is not a UUID: {e}"))
        })?,
        Some(PointIdOptions::Num(n)) => {
            return Err(PortError::invalid_output(
                DEP,
                format!("point {n} has a numeric id, recall only stores UUIDs"),
            ));
        }
        None => {
            return Err(PortError::invalid_output(
                DEP,
                "a point came back without id",
            ));
        }
    };
    let json = payload
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .collect();
    memory_payload::from_payload(uuid, json).map_err(|e| PortError::invalid_output(DEP, e))
}

/// The unnamed dense vector of a returned point (new servers fill `vector`, older ones `data`).
fn dense_vector(id: Uuid, vectors: Option<VectorsOutput>) -> PortResult<Vec<f32>> {
    let missing =
        || PortError::invalid_output(DEP, format!("point {id} came back without its vector"));
    match vectors.and_then(|v| v.vectors_options) {
        Some(vectors_output::VectorsOptions::Vector(out)) => match out.vector {
            Some(vector_output::Vector::Dense(DenseVector { data })) => Ok(data),
            Some(_) => Err(PortError::invalid_output(
                DEP,
                format!("point {id} has a sparse or multi-vector, recall stores dense vectors"),
            )),
            #[allow(deprecated)]
            None if !out.data.is_empty() => Ok(out.data),
            None => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// The size of the collection's unnamed cosine vector, or what is wrong with it.
fn vector_size(info: &CollectionInfo, collection: &str) -> PortResult<usize> {
    let config = info
        .config
        .as_ref()
        .and_then(|c| c.params.as_ref())
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref());
    match config {
        Some(vectors_config::Config::Params(p)) if p.distance == i32::from(Distance::Cosine) => {
            Ok(p.size as usize)
        }
        Some(vectors_config::Config::Params(p)) => Err(PortError::rejected(
            DEP,
            format!(
                "the Qdrant collection `{collection}` uses {:?} distance, recall needs Cosine: \
                 set QDRANT_COLLECTION_NAME to another collection",
                Distance::try_from(p.distance).unwrap_or(Distance::UnknownDistance)
            ),
        )),
        _ => Err(PortError::rejected(
            DEP,
            format!(
                "the Qdrant collection `{collection}` was not created by recall (it has no \
                 single unnamed vector): set QDRANT_COLLECTION_NAME to another collection"
            ),
        )),
    }
}

/// `Rejected` unless `vector` has `dimension` finite components.
fn check_vector(vector: &[f32], dimension: usize, what: &str) -> PortResult<()> {
    if vector.len() != dimension {
        return Err(PortError::rejected(
            DEP,
            format!(
                "{what} has {} components, the collection has dimension {dimension}",
                vector.len()
            ),
        ));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(PortError::rejected(
            DEP,
            format!("{what} contains a NaN or infinite component"),
        ));
    }
    Ok(())
}

// ---- errors ----

/// Maps a client error of `action` (e.g. `searching memories`) on `collection`.
fn port_error(collection: &str, action: &str, e: QdrantError) -> PortError {
    match e {
        QdrantError::ResponseError { status } => status_error(collection, action, &status, None),
        QdrantError::ResourceExhaustedError {
            status,
            retry_after_seconds,
        } => status_error(
            collection,
            action,
            &status,
            Some(Duration::from_secs(retry_after_seconds)),
        ),
        QdrantError::Io(e) => PortError::unavailable(DEP, format!("{action}: {e}")),
        QdrantError::InvalidUri(e) => PortError::rejected(
            DEP,
            format!("{action}: QDRANT_URL is not a valid gRPC URI ({e}), e.g. {DEFAULT_URL}"),
        ),
        QdrantError::ConversionError(m) => PortError::rejected(DEP, format!("{action}: {m}")),
        other => PortError::invalid_output(DEP, format!("{action}: {other}")),
    }
}

/// Classifies a gRPC status: transient ones are `Unavailable` (retried), the rest `Rejected`
/// with what to fix.
fn status_error(
    collection: &str,
    action: &str,
    status: &tonic::Status,
    retry_after: Option<Duration>,
) -> PortError {
    use tonic::Code;
    let code = status.code();
    let detail = status.message();
    let rejected = |fix: String| PortError::rejected(DEP, format!("{action}: {fix}"));
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => PortError::Unavailable {
            dependency: DEP,
            message: format!("{action}: {code:?}: {detail}"),
            retry_after: retry_after.or_else(|| {
                status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.trim().parse().ok())
                    .map(Duration::from_secs)
            }),
        },
        Code::Unauthenticated => rejected(format!(
            "Qdrant refused the API key ({detail}): set QDRANT_API_KEY to a valid key for \
             this server"
        )),
        Code::PermissionDenied => rejected(format!(
            "the API key may not do this on collection `{collection}` ({detail}): set \
             QDRANT_API_KEY to a key with read-write access to it"
        )),
        Code::NotFound => rejected(format!(
            "collection `{collection}` not found ({detail}): check QDRANT_COLLECTION_NAME; \
             recall creates the collection at start-up"
        )),
        Code::InvalidArgument => rejected(format!(
            "Qdrant rejected the request as invalid ({detail}): check that QDRANT_VECTOR_SIZE \
             and the embedder match collection `{collection}`"
        )),
        Code::Unimplemented => rejected(format!(
            "the server does not know this call ({detail}): recall needs Qdrant 1.16 or newer"
        )),
        other => rejected(format!("{other:?}: {detail}")),
    }
}

#[cfg(test)]
mod fake;

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::{
        CollectionConfig, CollectionParams, PayloadSchemaInfo, value::Kind, vector,
    };
    use serde_json::json;

    use super::*;
    use crate::domain::Category;
    use crate::testkit::memory_store::{self as contract, memory, unit_vector};

    const DIM: usize = 8;

    fn pair(user: &str, character: &str) -> Pair {
        Pair::parse(user, character).unwrap()
    }

    fn requests() -> Requests {
        Requests::new("chat_memory")
    }

    fn keyword_condition(key: &str, value: &str) -> Condition {
        Condition {
            condition_one_of: Some(ConditionOneOf::Field(FieldCondition {
                key: key.into(),
                r#match: Some(Match {
                    match_value: Some(MatchValue::Keyword(value.into())),
                }),
                ..FieldCondition::default()
            })),
        }
    }

    fn live_only() -> Condition {
        Condition {
            condition_one_of: Some(ConditionOneOf::IsEmpty(IsEmptyCondition {
                key: "superseded_by".into(),
            })),
        }
    }

    fn must(conditions: Vec<Condition>) -> Filter {
        Filter {
            must: conditions,
            ..Filter::default()
        }
    }

    /// The filter every pair request must carry, plus `extra`.
    fn pair_filter(user: &str, character: &str, extra: Vec<Condition>) -> Filter {
        let mut conditions = vec![
            keyword_condition("user_id", user),
            keyword_condition("character_name", character),
        ];
        conditions.extend(extra);
        must(conditions)
    }

    /// Whether `filter` confines to `user`/`character` and cannot be widened.
    fn confined_to(filter: &Filter, user: &str, character: &str) -> bool {
        filter.should.is_empty()
            && filter.min_should.is_none()
            && filter.must_not.is_empty()
            && filter.must.contains(&keyword_condition("user_id", user))
            && filter
                .must
                .contains(&keyword_condition("character_name", character))
    }

    fn selector_filter(s: &Option<PointsSelector>) -> &Filter {
        match s.as_ref().and_then(|s| s.points_selector_one_of.as_ref()) {
            Some(PointsSelectorOneOf::Filter(f)) => f,
            other => panic!("expected a filter selector, got {other:?}"),
        }
    }

    #[test]
    fn every_pair_request_carries_user_and_character() {
        let r = requests();
        let p = pair("u_1", "meher");
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let ops = [
            PairOp::Search {
                include_superseded: false,
            },
            PairOp::Search {
                include_superseded: true,
            },
            PairOp::Count {
                include_superseded: false,
            },
            PairOp::Count {
                include_superseded: true,
            },
            PairOp::List,
            PairOp::Supersede { ids: &ids },
            PairOp::DeleteBatch { batch_id: "b1" },
            PairOp::DeletePair,
        ];
        for op in ops {
            // Exhaustive on purpose: a new operation must be added to `ops` above.
            let extra = match op {
                PairOp::Search { include_superseded } | PairOp::Count { include_superseded } => {
                    if include_superseded {
                        vec![]
                    } else {
                        vec![live_only()]
                    }
                }
                PairOp::Supersede { ids } => vec![Condition {
                    condition_one_of: Some(ConditionOneOf::HasId(HasIdCondition {
                        has_id: ids.iter().map(|id| point_id(*id)).collect(),
                    })),
                }],
                PairOp::DeleteBatch { batch_id } => vec![keyword_condition("batch_id", batch_id)],
                PairOp::List | PairOp::DeletePair => vec![],
            };
            let scope = Scope::pair(&p, op);
            let want = pair_filter("u_1", "meher", extra);
            assert_eq!(scope.filter(), want, "{op:?}");
            // Every builder that takes a scope puts exactly that filter in its request.
            assert_eq!(r.count(&scope).filter.as_ref(), Some(&want), "{op:?}");
            assert_eq!(r.scroll(&scope, None, true).filter.as_ref(), Some(&want));
            assert_eq!(selector_filter(&r.delete(&scope).points), &want, "{op:?}");
            assert_eq!(
                selector_filter(&r.set_superseded(&scope, Uuid::nil()).points_selector),
                &want,
                "{op:?}"
            );
            assert!(confined_to(&scope.filter(), "u_1", "meher"), "{op:?}");
        }
        // The search request builds its own scope from the query's pair.
        for include_superseded in [false, true] {
            let q = SearchQuery {
                pair: p.clone(),
                vector: vec![0.5; DIM],
                limit: 3,
                score_threshold: None,
                include_superseded,
            };
            let filter = r.query(&q, 3).filter.unwrap();
            assert!(confined_to(&filter, "u_1", "meher"));
            assert_eq!(filter.must.contains(&live_only()), !include_superseded);
        }
        // The only cross-character scope: one user, nothing that widens it.
        let u = Scope::user(&p.user_id);
        assert_eq!(u.filter(), must(vec![keyword_condition("user_id", "u_1")]));
        // And the check above does catch a filter without the character.
        assert!(!confined_to(&u.filter(), "u_1", "meher"));
    }

    #[test]
    fn search_request_is_exact() {
        let q = SearchQuery {
            pair: pair("u_1", "meher"),
            vector: vec![0.25, -0.5, 1.0],
            limit: 7,
            score_threshold: Some(0.4),
            include_superseded: false,
        };
        let got = requests().query(&q, 7);
        let want = QueryPoints {
            collection_name: "chat_memory".into(),
            query: Some(Query {
                variant: Some(query::Variant::Nearest(VectorInput {
                    variant: Some(qdrant_client::qdrant::vector_input::Variant::Dense(
                        DenseVector {
                            data: vec![0.25, -0.5, 1.0],
                        },
                    )),
                })),
            }),
            filter: Some(pair_filter("u_1", "meher", vec![live_only()])),
            score_threshold: Some(0.4),
            limit: Some(7),
            with_payload: Some(WithPayloadSelector {
                selector_options: Some(with_payload_selector::SelectorOptions::Enable(true)),
            }),
            with_vectors: Some(WithVectorsSelector {
                selector_options: Some(with_vectors_selector::SelectorOptions::Enable(false)),
            }),
            ..QueryPoints::default()
        };
        assert_eq!(got, want);
        assert!(got.using.is_none() && got.offset.is_none() && got.params.is_none());
    }

    #[test]
    fn upsert_request_is_exact_and_waits() {
        let p = pair("u_1", "meher");
        let mut m = memory(&p, 3, "batch-9");
        m.id = Uuid::parse_str("6f1c2b1e-4a4b-5c3d-9e2f-0123456789ab").unwrap();
        m.superseded_by = Some(Uuid::from_u128(5));
        m.category = Category::Health;
        let vector = vec![0.6, 0.8];
        let got = requests()
            .upsert(&[MemoryPoint {
                memory: m.clone(),
                vector: vector.clone(),
            }])
            .unwrap();
        assert_eq!(got.collection_name, "chat_memory");
        assert_eq!(got.wait, Some(true));
        assert!(got.ordering.is_none() && got.update_filter.is_none());
        assert_eq!(got.points.len(), 1);
        let point = &got.points[0];
        assert_eq!(
            point.id,
            Some(PointId {
                point_id_options: Some(PointIdOptions::Uuid(
                    "6f1c2b1e-4a4b-5c3d-9e2f-0123456789ab".into()
                )),
            })
        );
        match point
            .vectors
            .as_ref()
            .and_then(|v| v.vectors_options.as_ref())
        {
            Some(qdrant_client::qdrant::vectors::VectorsOptions::Vector(v)) => {
                assert_eq!(
                    v.vector,
                    Some(vector::Vector::Dense(DenseVector { data: vector }))
                );
            }
            other => panic!("expected one unnamed dense vector, got {other:?}"),
        }
        // The payload: every field, in the same JSON shape as the embedded adapter's.
        let payload: serde_json::Map<String, serde_json::Value> = point
            .payload
            .clone()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        assert_eq!(
            serde_json::Value::Object(payload),
            json!({
                "user_id": "u_1",
                "character_name": "meher",
                "text": m.text,
                "category": "health",
                "importance": 4,
                "created_at": m.created_at,
                "event_time": m.event_time,
                "source_message_ids": ["msg-3-a", "msg-3-b"],
                "batch_id": "batch-9",
                "superseded_by": "00000000-0000-0000-0000-000000000005",
            })
        );
        // The gRPC types: integer importance, null for a missing time, a list of strings.
        assert_eq!(
            point.payload["importance"].kind,
            Some(Kind::IntegerValue(4))
        );
        let mut live = m.clone();
        live.event_time = None;
        live.superseded_by = None;
        let got = requests()
            .upsert(&[MemoryPoint {
                memory: live.clone(),
                vector: vec![1.0],
            }])
            .unwrap();
        for key in ["event_time", "superseded_by"] {
            assert_eq!(
                got.points[0].payload[key].kind,
                Some(Kind::NullValue(0)),
                "{key}"
            );
        }
        // And it reads back into the same memory.
        let back = memory_from(got.points[0].id.clone(), got.points[0].payload.clone()).unwrap();
        assert_eq!(back, live);
    }

    #[test]
    #[allow(deprecated)]
    fn create_collection_request_is_exact() {
        let got = requests().create_collection(384);
        let want = CreateCollection {
            collection_name: "chat_memory".into(),
            vectors_config: Some(VectorsConfig {
                config: Some(vectors_config::Config::Params(VectorParams {
                    size: 384,
                    distance: Distance::Cosine as i32,
                    ..VectorParams::default()
                })),
            }),
            hnsw_config: Some(HnswConfigDiff {
                m: Some(0),
                payload_m: Some(16),
                ..HnswConfigDiff::default()
            }),
            on_disk_payload: Some(true),
            payload: Some(PayloadStorageParams {
                memory: Some(Residency::Cold as i32),
            }),
            ..CreateCollection::default()
        };
        assert_eq!(got, want);
        assert!(got.shard_number.is_none() && got.sharding_method.is_none());
        assert!(got.quantization_config.is_none() && got.sparse_vectors_config.is_none());
    }

    #[test]
    fn payload_index_requests_are_exact() {
        let r = requests();
        let index =
            |field: &str, field_type: FieldType, params: IndexParams| CreateFieldIndexCollection {
                collection_name: "chat_memory".into(),
                wait: Some(true),
                field_name: field.into(),
                field_type: Some(field_type as i32),
                field_index_params: Some(PayloadIndexParams {
                    index_params: Some(params),
                }),
                ..CreateFieldIndexCollection::default()
            };
        let filter_only = || {
            IndexParams::KeywordIndexParams(KeywordIndexParams {
                enable_hnsw: Some(false),
                ..KeywordIndexParams::default()
            })
        };
        let want = vec![
            index(
                "user_id",
                FieldType::Keyword,
                IndexParams::KeywordIndexParams(KeywordIndexParams {
                    is_tenant: Some(true),
                    ..KeywordIndexParams::default()
                }),
            ),
            index("character_name", FieldType::Keyword, filter_only()),
            index("batch_id", FieldType::Keyword, filter_only()),
            index("category", FieldType::Keyword, filter_only()),
            index(
                "created_at",
                FieldType::Datetime,
                IndexParams::DatetimeIndexParams(DatetimeIndexParams {
                    enable_hnsw: Some(false),
                    ..DatetimeIndexParams::default()
                }),
            ),
        ];
        // A new collection gets all five; an existing one only what it lacks.
        assert_eq!(r.missing_indexes(&CollectionInfo::default()), want);
        let mut info = CollectionInfo::default();
        for field in ["user_id", "batch_id", "created_at"] {
            info.payload_schema
                .insert(field.into(), PayloadSchemaInfo::default());
        }
        assert_eq!(
            r.missing_indexes(&info),
            vec![want[1].clone(), want[3].clone()]
        );
        for field in INDEXED_FIELDS {
            info.payload_schema
                .insert(field.into(), PayloadSchemaInfo::default());
        }
        assert!(r.missing_indexes(&info).is_empty());
    }

    #[test]
    fn count_scroll_set_and_delete_requests_are_exact() {
        let r = requests();
        let p = pair("u_1", "meher");
        let count = r.count(&Scope::pair(
            &p,
            PairOp::Count {
                include_superseded: true,
            },
        ));
        assert_eq!(
            count,
            CountPoints {
                collection_name: "chat_memory".into(),
                filter: Some(pair_filter("u_1", "meher", vec![])),
                exact: Some(true),
                ..CountPoints::default()
            }
        );
        let offset = point_id(Uuid::from_u128(9));
        let scroll = r.scroll(&Scope::user(&p.user_id), Some(offset.clone()), true);
        assert_eq!(
            scroll,
            ScrollPoints {
                collection_name: "chat_memory".into(),
                filter: Some(must(vec![keyword_condition("user_id", "u_1")])),
                offset: Some(offset),
                limit: Some(256),
                with_payload: Some(with_payload(true)),
                with_vectors: Some(WithVectorsSelector {
                    selector_options: Some(with_vectors_selector::SelectorOptions::Enable(true)),
                }),
                ..ScrollPoints::default()
            }
        );
        let ids = [Uuid::from_u128(1)];
        let scope = Scope::pair(&p, PairOp::Supersede { ids: &ids });
        let by = Uuid::from_u128(2);
        let set = r.set_superseded(&scope, by);
        assert_eq!(set.wait, Some(true));
        assert_eq!(set.collection_name, "chat_memory");
        assert!(set.key.is_none());
        assert_eq!(
            set.payload,
            HashMap::from([(
                "superseded_by".to_string(),
                Value {
                    kind: Some(Kind::StringValue(
                        "00000000-0000-0000-0000-000000000002".into()
                    )),
                }
            )])
        );
        let delete = r.delete(&Scope::pair(&p, PairOp::DeleteBatch { batch_id: "b7" }));
        assert_eq!(
            delete,
            DeletePoints {
                collection_name: "chat_memory".into(),
                wait: Some(true),
                points: Some(PointsSelector {
                    points_selector_one_of: Some(PointsSelectorOneOf::Filter(pair_filter(
                        "u_1",
                        "meher",
                        vec![keyword_condition("batch_id", "b7")]
                    ))),
                }),
                ..DeletePoints::default()
            }
        );
    }

    fn info_with(vectors: Option<vectors_config::Config>) -> CollectionInfo {
        CollectionInfo {
            config: Some(CollectionConfig {
                params: Some(CollectionParams {
                    vectors_config: Some(VectorsConfig { config: vectors }),
                    ..CollectionParams::default()
                }),
                ..CollectionConfig::default()
            }),
            ..CollectionInfo::default()
        }
    }

    #[test]
    fn existing_collections_are_checked_never_recreated() {
        let params = |size, distance: Distance| {
            Some(vectors_config::Config::Params(VectorParams {
                size,
                distance: distance as i32,
                ..VectorParams::default()
            }))
        };
        assert_eq!(
            vector_size(&info_with(params(1536, Distance::Cosine)), "c").unwrap(),
            1536
        );
        match vector_size(&info_with(params(384, Distance::Dot)), "c") {
            Err(PortError::Rejected { message, .. }) => {
                assert!(
                    message.contains("Dot") && message.contains("Cosine"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let named = Some(vectors_config::Config::ParamsMap(Default::default()));
        match vector_size(&info_with(named), "c") {
            Err(PortError::Rejected { message, .. }) => {
                assert!(message.contains("QDRANT_COLLECTION_NAME"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            vector_size(&CollectionInfo::default(), "c"),
            Err(PortError::Rejected { .. })
        ));
    }

    #[test]
    fn grpc_status_codes_map_to_retryable_or_permanent_errors() {
        use tonic::{Code, Status};
        let map = |code: Code| {
            port_error(
                "chat_memory",
                "searching memories",
                QdrantError::ResponseError {
                    status: Status::new(code, "detail"),
                },
            )
        };
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
            Code::Aborted,
        ] {
            let e = map(code);
            assert!(
                matches!(e, PortError::Unavailable { .. }) && e.is_retryable(),
                "{code:?}: {e}"
            );
        }
        for (code, hint) in [
            (Code::InvalidArgument, "QDRANT_VECTOR_SIZE"),
            (Code::Unauthenticated, "QDRANT_API_KEY"),
            (Code::PermissionDenied, "QDRANT_API_KEY"),
            (Code::NotFound, "QDRANT_COLLECTION_NAME"),
            (Code::Unimplemented, "1.16"),
            (Code::AlreadyExists, "AlreadyExists"),
            (Code::FailedPrecondition, "FailedPrecondition"),
        ] {
            match map(code) {
                e @ PortError::Rejected { .. } => {
                    assert!(!e.is_retryable());
                    let text = e.to_string();
                    assert!(text.contains(hint), "{code:?}: {text}");
                    assert!(text.contains("searching memories: "), "{text}");
                    assert!(text.contains("detail"), "{text}");
                }
                other => panic!("{code:?}: expected Rejected, got {other:?}"),
            }
        }
        // Rate limiting with the server's Retry-After, as the client reports it...
        let e = port_error(
            "c",
            "upserting memories",
            QdrantError::ResourceExhaustedError {
                status: Status::resource_exhausted("slow down"),
                retry_after_seconds: 7,
            },
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        // ...and from the status metadata directly.
        let mut status = Status::unavailable("busy");
        status
            .metadata_mut()
            .insert("retry-after", "3".parse().unwrap());
        let e = port_error("c", "x", QdrantError::ResponseError { status });
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn url_settings_are_validated_and_the_rest_port_is_mapped() {
        let url = |raw: &str| grpc_url(raw).map(|(u, _)| u);
        assert_eq!(
            url("http://localhost:6334").unwrap(),
            "http://localhost:6334"
        );
        assert_eq!(url(" http://qdrant:6334/ ").unwrap(), "http://qdrant:6334");
        assert_eq!(url("http://qdrant").unwrap(), "http://qdrant:6334");
        assert_eq!(
            url("https://x.cloud.example").unwrap(),
            "https://x.cloud.example:6334"
        );
        assert_eq!(
            url("https://x.example:443").unwrap(),
            "https://x.example:443"
        );
        assert_eq!(url("http://[::1]:7000").unwrap(), "http://[::1]:7000");
        let (mapped, note) = grpc_url("https://x.cloud.example:6333").unwrap();
        assert_eq!(mapped, "https://x.cloud.example:6334");
        assert!(note.unwrap().contains("REST port"));
        assert!(grpc_url("http://localhost:6334").unwrap().1.is_none());
        for (bad, hint) in [
            ("localhost:6334", "http://"),
            ("grpc://localhost:6334", "http://"),
            ("not a url", "not a URL"),
            ("http://user:pw@localhost:6334", "QDRANT_API_KEY"),
            ("http://localhost:6334/collections", "path"),
        ] {
            let e = grpc_url(bad).unwrap_err();
            assert!(e.contains("QDRANT_URL") && e.contains(hint), "{bad}: {e}");
        }
        let s =
            QdrantSettings::new(DEFAULT_URL, Some(String::new()), DEFAULT_COLLECTION, 30).unwrap();
        assert_eq!(s.api_key, None);
        assert_eq!(s.timeout, Duration::from_secs(30));
        let s = QdrantSettings::new(DEFAULT_URL, Some("secret".into()), "c", 1).unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        assert!(QdrantSettings::new(DEFAULT_URL, None, "", 30).is_err());
        assert!(QdrantSettings::new(DEFAULT_URL, None, "a/b", 30).is_err());
        assert!(QdrantSettings::new(DEFAULT_URL, None, "c", 0).is_err());
    }

    #[test]
    fn returned_points_are_decoded_or_refused() {
        let id = Uuid::from_u128(3);
        assert!(matches!(
            memory_from(
                Some(PointId {
                    point_id_options: Some(PointIdOptions::Num(3))
                }),
                HashMap::new()
            ),
            Err(PortError::InvalidOutput { .. })
        ));
        assert!(matches!(
            memory_from(Some(point_id(id)), HashMap::new()),
            Err(PortError::InvalidOutput { .. })
        ));
        let dense = |v: Vec<f32>| VectorsOutput {
            vectors_options: Some(vectors_output::VectorsOptions::Vector(
                qdrant_client::qdrant::VectorOutput {
                    vector: Some(vector_output::Vector::Dense(DenseVector { data: v })),
                    ..Default::default()
                },
            )),
        };
        assert_eq!(
            dense_vector(id, Some(dense(vec![1.0, 2.0]))).unwrap(),
            vec![1.0, 2.0]
        );
        #[allow(deprecated)]
        let legacy = VectorsOutput {
            vectors_options: Some(vectors_output::VectorsOptions::Vector(
                qdrant_client::qdrant::VectorOutput {
                    data: vec![0.5],
                    ..Default::default()
                },
            )),
        };
        assert_eq!(dense_vector(id, Some(legacy)).unwrap(), vec![0.5]);
        assert!(dense_vector(id, None).is_err());
    }

    /// A store on a server that is certainly not there (a closed loopback port).
    fn unreachable_store() -> QdrantStore {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let settings =
            QdrantSettings::new(&format!("http://127.0.0.1:{port}"), None, "chat_memory", 2)
                .unwrap();
        QdrantStore::new(settings).unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_not_rejected() {
        let store = unreachable_store();
        let p = pair("u_1", "meher");
        for (what, result) in [
            (
                "ensure_collection",
                store.ensure_collection(DIM).await.map(|_| 0),
            ),
            ("count", store.count(&p, true).await),
            ("delete_pair", store.delete_pair(&p).await),
            ("ping", store.ping().await.map(|_| 0)),
        ] {
            match result {
                Err(e @ PortError::Unavailable { .. }) => assert!(e.is_retryable(), "{what}"),
                other => panic!("{what}: expected Unavailable, got {other:?}"),
            }
        }
        // Bad input is refused before anything is sent, whatever the server's state.
        assert!(matches!(
            store.ensure_collection(0).await,
            Err(PortError::Rejected { .. })
        ));
        let q = SearchQuery {
            pair: p,
            vector: unit_vector(DIM, 1),
            limit: 3,
            score_threshold: Some(f32::NAN),
            include_superseded: false,
        };
        assert!(matches!(
            store.search(&q).await,
            Err(PortError::Rejected { .. })
        ));
    }

    /// A store on a fresh scripted fake server (with API key `k`).
    async fn fake_store() -> (super::fake::Fake, QdrantStore) {
        let fake = super::fake::Fake::default();
        let url = fake.start().await;
        let settings = QdrantSettings::new(&url, Some("k".into()), "chat_memory", 5).unwrap();
        (fake, QdrantStore::new(settings).unwrap())
    }

    #[tokio::test]
    async fn bootstrap_over_grpc_creates_once_then_only_checks() {
        use super::fake::Call;
        let (fake, store) = fake_store().await;
        let r = requests();
        store.ensure_collection(DIM).await.unwrap();
        let mut want = vec![
            Call::Get(r.collection_info()),
            Call::Create(r.create_collection(DIM)),
            Call::Get(r.collection_info()),
        ];
        want.extend(
            INDEXED_FIELDS
                .iter()
                .map(|f| Call::CreateIndex(r.field_index(f))),
        );
        assert_eq!(fake.take_calls(), want, "what the server received");
        assert!(
            fake.state()
                .api_keys
                .iter()
                .all(|k| k.as_deref() == Some("k")),
            "the API key goes with every request"
        );

        // Another process starting later: one read, nothing created.
        let again = QdrantStore::new(store.settings().clone()).unwrap();
        again.ensure_collection(DIM).await.unwrap();
        assert_eq!(fake.take_calls(), vec![Call::Get(r.collection_info())]);
        // Another embedder: a clear error, and the collection is left alone.
        match again.ensure_collection(DIM * 2).await {
            Err(PortError::Rejected { message, .. }) => {
                assert!(message.contains("size 8"), "{message}");
                assert!(message.contains("produces 16"), "{message}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(fake.take_calls(), vec![Call::Get(r.collection_info())]);
        // A collection that lost an index gets it back, and only it.
        fake.state()
            .collection
            .as_mut()
            .unwrap()
            .payload_schema
            .remove("category");
        again.ensure_collection(DIM).await.unwrap();
        assert_eq!(
            fake.take_calls(),
            vec![
                Call::Get(r.collection_info()),
                Call::CreateIndex(r.field_index("category"))
            ]
        );
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn calls_go_over_grpc_exactly_as_built() {
        use super::fake::Call;
        let (fake, store) = fake_store().await;
        store.ensure_collection(DIM).await.unwrap();
        fake.take_calls();
        let r = requests();
        let p = pair("u_1", "meher");
        let point = MemoryPoint {
            memory: memory(&p, 1, "b1"),
            vector: unit_vector(DIM, 1),
        };
        store.upsert(std::slice::from_ref(&point)).await.unwrap();
        assert_eq!(
            fake.take_calls(),
            vec![Call::Upsert(
                r.upsert(std::slice::from_ref(&point)).unwrap()
            )]
        );

        // Deletes count first, and send nothing when there is nothing to delete.
        fake.state().count = 0;
        assert_eq!(store.delete_pair(&p).await.unwrap(), 0);
        let scope = Scope::pair(&p, PairOp::DeletePair);
        assert_eq!(fake.take_calls(), vec![Call::Count(r.count(&scope))]);
        fake.state().count = 3;
        assert_eq!(store.delete_pair(&p).await.unwrap(), 3);
        assert_eq!(
            fake.take_calls(),
            vec![Call::Count(r.count(&scope)), Call::Delete(r.delete(&scope))]
        );
        let ids = [point.memory.id];
        let by = Uuid::from_u128(9);
        assert_eq!(store.set_superseded(&p, &ids, by).await.unwrap(), 3);
        let scope = Scope::pair(&p, PairOp::Supersede { ids: &ids });
        assert_eq!(
            fake.take_calls(),
            vec![
                Call::Count(r.count(&scope)),
                Call::SetPayload(r.set_superseded(&scope, by))
            ]
        );

        // Search: the request as built, the hit decoded back into the memory.
        let stored = point_struct(&point).unwrap();
        fake.state().hits = vec![qdrant_client::qdrant::ScoredPoint {
            id: stored.id.clone(),
            payload: stored.payload.clone(),
            score: 0.75,
            ..Default::default()
        }];
        let q = SearchQuery {
            pair: p.clone(),
            vector: unit_vector(DIM, 2),
            limit: 5,
            score_threshold: None,
            include_superseded: false,
        };
        let hits = store.search(&q).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].memory, point.memory);
        assert_eq!(hits[0].score, 0.75);
        assert_eq!(fake.take_calls(), vec![Call::Query(r.query(&q, 5))]);
        // A server that answered with another pair's memory is caught, not passed on.
        let q_other = SearchQuery {
            pair: pair("u_2", "meher"),
            ..q.clone()
        };
        assert!(matches!(
            store.search(&q_other).await,
            Err(PortError::InvalidOutput { .. })
        ));

        // Export scrolls with vectors and rebuilds the points.
        fake.state().records = vec![qdrant_client::qdrant::RetrievedPoint {
            id: stored.id,
            payload: stored.payload,
            vectors: Some(VectorsOutput {
                vectors_options: Some(vectors_output::VectorsOptions::Vector(
                    qdrant_client::qdrant::VectorOutput {
                        vector: Some(vector_output::Vector::Dense(DenseVector {
                            data: point.vector.clone(),
                        })),
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        }];
        fake.take_calls();
        assert_eq!(store.export(&p.user_id, None).await.unwrap(), vec![point]);
        assert_eq!(
            fake.take_calls(),
            vec![Call::Scroll(r.scroll(&Scope::user(&p.user_id), None, true))]
        );
    }

    #[tokio::test]
    async fn server_statuses_reach_the_pipeline_classified() {
        use tonic::{Code, Status};
        let (fake, store) = fake_store().await;
        store.ensure_collection(DIM).await.unwrap();
        let p = pair("u_1", "meher");
        fake.state().fail = Some(Status::unauthenticated("Invalid api-key"));
        match store.count(&p, true).await {
            Err(e @ PortError::Rejected { .. }) => {
                assert!(e.to_string().contains("QDRANT_API_KEY"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        fake.state().fail = Some(Status::not_found("Collection `chat_memory` doesn't exist!"));
        match store.delete_pair(&p).await {
            Err(e @ PortError::Rejected { .. }) => {
                assert!(e.to_string().contains("QDRANT_COLLECTION_NAME"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let mut busy = Status::new(Code::ResourceExhausted, "rate limited");
        busy.metadata_mut()
            .insert("retry-after", "2".parse().unwrap());
        fake.state().fail = Some(busy);
        let e = store.count(&p, true).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        fake.state().fail = Some(Status::unavailable("shutting down"));
        assert!(matches!(
            store
                .upsert(&[MemoryPoint {
                    memory: memory(&p, 1, "b"),
                    vector: unit_vector(DIM, 1),
                }])
                .await,
            Err(PortError::Unavailable { .. })
        ));
    }

    /// The store on the server at `QDRANT_URL` (default: a local one) in a fresh collection, or
    /// `None` after printing why the test is skipped.
    async fn server_store(tag: &str) -> Option<QdrantStore> {
        let url = std::env::var("QDRANT_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let collection = format!(
            "recall_test_{tag}_{}",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let settings =
            QdrantSettings::new(&url, std::env::var("QDRANT_API_KEY").ok(), &collection, 10)
                .unwrap_or_else(|e| panic!("QDRANT_URL: {e}"));
        let store = QdrantStore::new(settings).unwrap();
        let probe = tokio::time::timeout(Duration::from_secs(5), store.client.health_check()).await;
        match probe {
            Ok(Ok(_)) => Some(store),
            _ => {
                println!("skipped: no Qdrant server at {url}");
                None
            }
        }
    }

    #[tokio::test]
    async fn passes_the_memory_store_contract_on_a_server() {
        let Some(store) = server_store("contract").await else {
            return;
        };
        contract::run_all(&store, DIM).await;
        // A second store on the same collection finds it and checks it, never recreates it.
        let again = QdrantStore::new(store.settings().clone()).unwrap();
        again.ensure_collection(DIM).await.unwrap();
        assert!(matches!(
            again.ensure_collection(DIM + 1).await,
            Err(PortError::Rejected { .. })
        ));
        store.delete_collection().await.unwrap();
    }

    #[cfg(feature = "qdrant-edge")]
    #[tokio::test]
    async fn embedded_export_imports_into_the_server() {
        use crate::portability::{export_jsonl, import_jsonl};
        let Some(server) = server_store("import").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let edge = crate::adapters::qdrant_edge::QdrantEdgeStore::open(dir.path()).unwrap();
        edge.ensure_collection(DIM).await.unwrap();
        let a = contract::fresh_pair("import", "meher");
        let b = Pair::new(a.user_id.clone(), CharacterName::parse("arjun").unwrap());
        let mut points: Vec<MemoryPoint> = (0..40_u64)
            .map(|i| MemoryPoint {
                memory: memory(if i % 2 == 0 { &a } else { &b }, i, "b1"),
                vector: unit_vector(DIM, i),
            })
            .collect();
        points[0].memory.superseded_by = Some(points[2].memory.id);
        edge.upsert(&points).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(
            export_jsonl(&edge, &a.user_id, None, &mut out)
                .await
                .unwrap(),
            40
        );
        assert_eq!(import_jsonl(&server, out.as_slice()).await.unwrap(), 40);
        let (from, to) = (
            edge.export(&a.user_id, None).await.unwrap(),
            server.export(&a.user_id, None).await.unwrap(),
        );
        assert_eq!(
            from.iter().map(|p| &p.memory).collect::<Vec<_>>(),
            to.iter().map(|p| &p.memory).collect::<Vec<_>>()
        );
        for (f, t) in from.iter().zip(&to) {
            assert!(
                f.vector
                    .iter()
                    .zip(&t.vector)
                    .all(|(x, y)| (x - y).abs() < 1e-4)
            );
        }
        server.delete_collection().await.unwrap();
    }

    #[tokio::test]
    async fn server_collection_has_the_configured_indexes() {
        let Some(store) = server_store("indexes").await else {
            return;
        };
        store.ensure_collection(DIM).await.unwrap();
        let info = store.collection_info().await.unwrap().unwrap();
        for field in INDEXED_FIELDS {
            assert!(info.payload_schema.contains_key(field), "index on {field}");
        }
        assert_eq!(
            info.payload_schema["created_at"].data_type,
            i32::from(qdrant_client::qdrant::PayloadSchemaType::Datetime)
        );
        assert_eq!(vector_size(&info, "c").unwrap(), DIM);
        store.delete_collection().await.unwrap();
    }
}
