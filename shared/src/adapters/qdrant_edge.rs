//! [`MemoryStore`] on Qdrant Edge: Qdrant's own engine running in process, one data folder,
//! no server (the embedded adapter of standalone mode).
//!
//! Layout of the data folder: `recall.lock` (held with an exclusive `flock` while the store is
//! open: one process per folder) and `shard/` (the engine's WAL, segments and config). The
//! collection is one unnamed dense vector with cosine distance; every memory field is payload,
//! the point id is the memory's UUID. The engine is synchronous, so every call runs on tokio's
//! blocking pool. Reads run concurrently with everything; writes run one at a time and flush
//! the shard before they return (Qdrant Edge 0.7.2 does not replay its WAL on load: what is not
//! flushed is lost on a crash). The engine builds no index in the background: call
//! [`QdrantEdgeStore::optimize`] off the hot path (reads keep working, writes wait for it).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard,
    EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, HasIdCondition,
    IsEmptyCondition, JsonPath, Match, NamedQuery, OperationError, Payload, PayloadFieldSchema,
    PayloadOps, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, QueryRequest, Record, ScoringQuery, ScrollRequest,
    SetPayloadOp, UpdateOperation, VectorInternal, VectorStructInternal, VectorStructPersisted,
    WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use super::memory_payload::{self, BATCH_ID, CHARACTER_NAME, SUPERSEDED_BY, USER_ID};
use crate::domain::{CharacterName, Memory, Pair, ScoredMemory, UserId};
use crate::error::{PortError, PortResult};
use crate::ports::{MemoryPoint, MemoryStore, SearchQuery, export_order};

/// The dependency name in errors.
const DEP: &str = "qdrant-edge";
/// The lock file that keeps a second process (or store) out of the folder.
const LOCK_FILE: &str = "recall.lock";
/// The engine's folder inside the data folder.
const SHARD_DIR: &str = "shard";
/// The file the engine keeps its configuration in (written by `EdgeShard::new`).
const EDGE_CONFIG_FILE: &str = "edge_config.json";
/// Points per scroll page when listing.
const SCROLL_PAGE: usize = 256;
/// Most results one search asks the engine for (it allocates by `limit`).
const MAX_SEARCH_LIMIT: usize = 10_000;

/// Payload fields that get a keyword index.
const KEYWORD_INDEXES: [&str; 3] = [USER_ID, CHARACTER_NAME, BATCH_ID];

/// Memories in a Qdrant Edge shard in a local folder.
pub struct QdrantEdgeStore {
    inner: Arc<Inner>,
}

/// What the blocking tasks share. Field order matters: the shard is dropped (and flushed)
/// before the folder lock is released.
struct Inner {
    /// `None` until the collection exists (first `ensure_collection` on an empty folder).
    /// Locked only to take or install the `Arc`, never while the engine works.
    collection: RwLock<Option<Arc<Collection>>>,
    /// Held by every write (update + flush) and by `optimize`: the engine's `flush` panics if
    /// an update or an optimizer holds its locks, so those never overlap. Reads don't take it.
    exclusive: Mutex<()>,
    /// Where the engine keeps its files.
    shard_dir: PathBuf,
    /// Held open (and `flock`ed) for the store's lifetime.
    _lock: File,
}

/// An open shard and its vector dimension.
struct Collection {
    shard: EdgeShard,
    dimension: usize,
}

impl std::fmt::Debug for QdrantEdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantEdgeStore")
            .field("shard_dir", &self.inner.shard_dir)
            .finish_non_exhaustive()
    }
}

impl QdrantEdgeStore {
    /// Opens (creating if needed) the data folder `dir`, loading an existing shard; blocking.
    pub fn open(dir: &Path) -> PortResult<Self> {
        fs::create_dir_all(dir).map_err(|e| {
            PortError::unavailable(
                DEP,
                format!("cannot create data folder {}: {e}", dir.display()),
            )
        })?;
        let lock = lock_folder(dir)?;
        let shard_dir = dir.join(SHARD_DIR);
        let collection = if shard_exists(&shard_dir) {
            let shard = EdgeShard::load(&shard_dir, None).map_err(|e| {
                PortError::unavailable(
                    DEP,
                    format!("cannot load the shard in {}: {e}", shard_dir.display()),
                )
            })?;
            Some(Arc::new(Collection::from_loaded(shard, &shard_dir)?))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                collection: RwLock::new(collection),
                exclusive: Mutex::new(()),
                shard_dir,
                _lock: lock,
            }),
        })
    }

    /// Runs the engine's optimizers (merge, vacuum, HNSW indexing) until idle; returns whether
    /// anything changed. Slow on big shards: call it off the hot path. Reads keep working
    /// meanwhile; writes wait until it finishes.
    pub async fn optimize(&self) -> PortResult<bool> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _exclusive = inner.lock_exclusive();
            let c = inner.current()?;
            let optimized = c.shard.optimize().map_err(engine_error)?;
            if optimized {
                // Optimized segments replace the old ones: make sure the indexes are there.
                create_payload_indexes(&c.shard)?;
            }
            c.shard.flush();
            Ok(optimized)
        })
        .await
    }

    /// Runs `f` on the blocking pool, concurrently with any other call.
    async fn read<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Collection) -> PortResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(inner.current()?.as_ref())).await
    }

    /// Runs `f` on the blocking pool, one write at a time, then flushes the shard to disk.
    async fn write<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Collection) -> PortResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _exclusive = inner.lock_exclusive();
            let c = inner.current()?;
            let out = f(&c)?;
            c.shard.flush();
            Ok(out)
        })
        .await
    }
}

impl Inner {
    /// The collection, or `Rejected` before it exists.
    fn current(&self) -> PortResult<Arc<Collection>> {
        self.collection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(not_created)
    }

    /// Waits for the writes-and-optimizer lock (a panic while it was held does not wedge it).
    fn lock_exclusive(&self) -> MutexGuard<'_, ()> {
        self.exclusive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collection {
    /// Checks a loaded shard is one this adapter created (one unnamed cosine vector).
    fn from_loaded(shard: EdgeShard, shard_dir: &Path) -> PortResult<Self> {
        let params = shard.config().vectors.get(DEFAULT_VECTOR_NAME).cloned();
        match params {
            Some(p) if p.distance == Distance::Cosine && p.size > 0 => Ok(Self {
                shard,
                dimension: p.size,
            }),
            Some(p) => Err(PortError::rejected(
                DEP,
                format!(
                    "the shard in {} uses {:?} distance, recall needs Cosine: \
                     move that folder away to start an empty memory store",
                    shard_dir.display(),
                    p.distance
                ),
            )),
            None => Err(PortError::rejected(
                DEP,
                format!(
                    "the shard in {} was not created by recall (no unnamed dense vector): \
                     move that folder away to start an empty memory store",
                    shard_dir.display()
                ),
            )),
        }
    }

    /// `Rejected` unless `vector` has the collection's dimension and only finite values.
    fn check_vector(&self, vector: &[f32], what: &str) -> PortResult<()> {
        if vector.len() != self.dimension {
            return Err(PortError::rejected(
                DEP,
                format!(
                    "{what} has {} components, the collection has dimension {}",
                    vector.len(),
                    self.dimension
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

    /// Counts points matching `filter`, exactly.
    fn count(&self, filter: Filter) -> PortResult<u64> {
        let n = self
            .shard
            .count(CountRequest {
                filter: Some(filter),
                exact: true,
            })
            .map_err(engine_error)?;
        Ok(n as u64)
    }

    /// Every point matching `filter`, page by page, with payload (and vector when asked).
    fn scroll_all(&self, filter: Filter, with_vector: bool) -> PortResult<Vec<Record>> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (records, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(SCROLL_PAGE),
                    filter: Some(filter.clone()),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(with_vector),
                    order_by: None,
                })
                .map_err(engine_error)?;
            out.extend(records);
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Deletes points matching `filter`; returns how many there were.
    fn delete(&self, filter: Filter) -> PortResult<u64> {
        let n = self.count(filter.clone())?;
        if n > 0 {
            self.shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
                .map_err(engine_error)?;
        }
        Ok(n)
    }
}

#[async_trait]
impl MemoryStore for QdrantEdgeStore {
    async fn ensure_collection(&self, dimension: usize) -> PortResult<()> {
        if dimension == 0 {
            return Err(PortError::rejected(
                DEP,
                "vector dimension must be positive",
            ));
        }
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _exclusive = inner.lock_exclusive();
            let existing = inner
                .collection
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match existing {
                Some(c) if c.dimension != dimension => Err(PortError::rejected(
                    DEP,
                    format!(
                        "the memories in {} have dimension {}, the embedder produces {dimension}: \
                         configure an embedder of dimension {}, or move that folder away and \
                         re-extract the memories with the new embedder",
                        inner.shard_dir.display(),
                        c.dimension,
                        c.dimension
                    ),
                )),
                Some(c) => {
                    create_payload_indexes(&c.shard)?;
                    c.shard.flush();
                    Ok(())
                }
                None => {
                    fs::create_dir_all(&inner.shard_dir).map_err(|e| {
                        PortError::unavailable(
                            DEP,
                            format!("cannot create {}: {e}", inner.shard_dir.display()),
                        )
                    })?;
                    let shard =
                        EdgeShard::new(&inner.shard_dir, edge_config(dimension)).map_err(|e| {
                            PortError::unavailable(
                                DEP,
                                format!(
                                    "cannot create a shard in {}: {e}",
                                    inner.shard_dir.display()
                                ),
                            )
                        })?;
                    create_payload_indexes(&shard)?;
                    shard.flush();
                    *inner
                        .collection
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Some(Arc::new(Collection { shard, dimension }));
                    Ok(())
                }
            }
        })
        .await
    }

    async fn upsert(&self, points: &[MemoryPoint]) -> PortResult<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut vectors = Vec::with_capacity(points.len());
        let mut records = Vec::with_capacity(points.len());
        for p in points {
            vectors.push((p.memory.id, p.vector.clone()));
            records.push(point_struct(p)?);
        }
        self.write(move |c| {
            // Validate everything before writing anything: a rejected call stores nothing.
            for (id, vector) in &vectors {
                c.check_vector(vector, &format!("the vector of memory {id}"))?;
            }
            c.shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(records)),
                ))
                .map_err(engine_error)
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> PortResult<Vec<ScoredMemory>> {
        if query.score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(PortError::rejected(DEP, "score_threshold must be finite"));
        }
        let vector = query.vector.clone();
        let limit = query.limit.min(MAX_SEARCH_LIMIT);
        let threshold = query.score_threshold.map(OrderedFloat);
        let filter = pair_filter(
            &query.pair,
            PairOp::Search {
                include_superseded: query.include_superseded,
            },
        );
        self.read(move |c| {
            c.check_vector(&vector, "the query vector")?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let hits = c
                .shard
                .query(QueryRequest {
                    prefetches: Vec::new(),
                    query: Some(ScoringQuery::Vector(QueryEnum::Nearest(
                        NamedQuery::default_dense(vector),
                    ))),
                    filter: Some(filter),
                    score_threshold: threshold,
                    limit,
                    offset: 0,
                    params: None,
                    with_vector: WithVector::Bool(false),
                    with_payload: WithPayloadInterface::Bool(true),
                })
                .map_err(engine_error)?;
            hits.into_iter()
                .map(|hit| {
                    Ok(ScoredMemory {
                        memory: memory_from(&hit.id, hit.payload)?,
                        score: hit.score,
                    })
                })
                .collect()
        })
        .await
    }

    async fn set_superseded(&self, pair: &Pair, ids: &[Uuid], by: Uuid) -> PortResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let filter = pair_filter(pair, PairOp::Supersede { ids });
        self.write(move |c| {
            let n = c.count(filter.clone())?;
            if n > 0 {
                let payload = Payload(
                    [(SUPERSEDED_BY.to_string(), by.to_string().into())]
                        .into_iter()
                        .collect(),
                );
                c.shard
                    .update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
                        SetPayloadOp {
                            payload,
                            points: None,
                            filter: Some(filter),
                            key: None,
                        },
                    )))
                    .map_err(engine_error)?;
            }
            Ok(n)
        })
        .await
    }

    async fn count(&self, pair: &Pair, include_superseded: bool) -> PortResult<u64> {
        let filter = pair_filter(pair, PairOp::Count { include_superseded });
        self.read(move |c| c.count(filter)).await
    }

    async fn list(&self, pair: &Pair) -> PortResult<Vec<Memory>> {
        let filter = pair_filter(pair, PairOp::List);
        let mut memories = self
            .read(move |c| {
                c.scroll_all(filter, false)?
                    .into_iter()
                    .map(|record| memory_from(&record.id, record.payload))
                    .collect::<PortResult<Vec<_>>>()
            })
            .await?;
        memories.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(memories)
    }

    async fn export(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<Vec<MemoryPoint>> {
        let filter = match character {
            Some(c) => pair_filter(&Pair::new(user.clone(), c.clone()), PairOp::List),
            None => user_filter(user),
        };
        let mut points = self
            .read(move |c| {
                c.scroll_all(filter, true)?
                    .into_iter()
                    .map(|record| {
                        let vector = dense_vector(&record.id, record.vector)?;
                        Ok(MemoryPoint {
                            memory: memory_from(&record.id, record.payload)?,
                            vector,
                        })
                    })
                    .collect::<PortResult<Vec<_>>>()
            })
            .await?;
        points.sort_by(|a, b| export_order(&a.memory, &b.memory));
        Ok(points)
    }

    async fn delete_batch(&self, pair: &Pair, batch_id: &str) -> PortResult<u64> {
        let filter = pair_filter(pair, PairOp::DeleteBatch { batch_id });
        self.write(move |c| c.delete(filter)).await
    }

    async fn delete_pair(&self, pair: &Pair) -> PortResult<u64> {
        let filter = pair_filter(pair, PairOp::DeletePair);
        self.write(move |c| c.delete(filter)).await
    }

    async fn delete_user(&self, user: &UserId) -> PortResult<u64> {
        let filter = user_filter(user);
        self.write(move |c| c.delete(filter)).await
    }

    async fn maintain(&self) -> PortResult<()> {
        if self.inner.current().is_ok() {
            self.optimize().await?;
        }
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        let inner = Arc::clone(&self.inner);
        blocking(move || match inner.current() {
            Ok(c) => {
                let _ = c.shard.info();
                Ok(())
            }
            Err(_) => Err(PortError::unavailable(
                DEP,
                "the collection does not exist yet (ensure_collection was not called)",
            )),
        })
        .await
    }
}

// ---- filters ----

/// Every operation that reads or deletes within one pair.
#[derive(Debug, Clone, Copy)]
enum PairOp<'a> {
    /// Nearest memories.
    Search { include_superseded: bool },
    /// Counting.
    Count { include_superseded: bool },
    /// Export (superseded included).
    List,
    /// Marking `ids` as superseded.
    Supersede { ids: &'a [Uuid] },
    /// Deleting one batch's memories (superseded included).
    DeleteBatch { batch_id: &'a str },
    /// Deleting the pair (superseded included).
    DeletePair,
}

/// The one place a pair's filter is built: `user_id` AND `character_name` always, plus what the
/// operation adds. Every pair path goes through here, so none can forget the tenant.
fn pair_filter(pair: &Pair, op: PairOp<'_>) -> Filter {
    let mut must = vec![
        keyword(USER_ID, pair.user_id.as_str()),
        keyword(CHARACTER_NAME, pair.character_name.as_str()),
    ];
    match op {
        PairOp::Search { include_superseded } | PairOp::Count { include_superseded } => {
            if !include_superseded {
                // Matches a missing field, `null` and `[]`: live memories store `null`.
                must.push(Condition::IsEmpty(IsEmptyCondition::from(path(
                    SUPERSEDED_BY,
                ))));
            }
        }
        PairOp::Supersede { ids } => must.push(Condition::HasId(
            ids.iter()
                .map(|id| PointId::Uuid(*id))
                .collect::<HasIdCondition>(),
        )),
        PairOp::DeleteBatch { batch_id } => must.push(keyword(BATCH_ID, batch_id)),
        PairOp::List | PairOp::DeletePair => {}
    }
    Filter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }
}

/// The only cross-character filter: every memory of one user (for `delete_user`).
fn user_filter(user: &UserId) -> Filter {
    Filter::new_must(keyword(USER_ID, user.as_str()))
}

/// The JSON path of a payload key (only ever called with this file's constant keys, which
/// `payload_keys_are_valid_paths` checks).
fn path(key: &str) -> JsonPath {
    key.parse()
        .unwrap_or_else(|_| unreachable!("payload key {key:?} is not a valid JSON path"))
}

/// `key == value` on a keyword payload field.
fn keyword(key: &str, value: &str) -> Condition {
    Condition::Field(FieldCondition::new_match(
        path(key),
        Match::from(value.to_string()),
    ))
}

// ---- payload ----

/// The engine's point for a memory (payload shape: [`memory_payload`]).
fn point_struct(point: &MemoryPoint) -> PortResult<PointStructPersisted> {
    let payload =
        memory_payload::to_payload(&point.memory).map_err(|e| PortError::rejected(DEP, e))?;
    Ok(PointStructPersisted {
        id: PointId::Uuid(point.memory.id),
        vector: VectorStructPersisted::Single(point.vector.clone()),
        payload: Some(Payload(payload)),
    })
}

/// Rebuilds a memory from a point id and its payload.
fn memory_from(id: &PointId, payload: Option<Payload>) -> PortResult<Memory> {
    let PointId::Uuid(uuid) = id else {
        return Err(PortError::invalid_output(
            DEP,
            format!("point {id} has a numeric id, recall only stores UUIDs"),
        ));
    };
    let Some(payload) = payload else {
        return Err(PortError::invalid_output(
            DEP,
            format!("point {id} came back without payload"),
        ));
    };
    memory_payload::from_payload(*uuid, payload.0).map_err(|e| PortError::invalid_output(DEP, e))
}

/// The unnamed dense vector of an exported point.
fn dense_vector(id: &PointId, vector: Option<VectorStructInternal>) -> PortResult<Vec<f32>> {
    match vector {
        Some(VectorStructInternal::Single(v)) => Ok(v),
        Some(VectorStructInternal::Named(mut named)) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Ok(v),
            _ => Err(PortError::invalid_output(
                DEP,
                format!("point {id} has no unnamed dense vector"),
            )),
        },
        _ => Err(PortError::invalid_output(
            DEP,
            format!("point {id} came back without its dense vector"),
        )),
    }
}

// ---- engine plumbing ----

/// A new shard's configuration: one unnamed dense vector, cosine distance.
fn edge_config(dimension: usize) -> EdgeConfig {
    EdgeConfig {
        vectors: HashMap::from([(
            DEFAULT_VECTOR_NAME.to_string(),
            EdgeVectorParams::builder(dimension, Distance::Cosine).build(),
        )]),
        ..EdgeConfig::default()
    }
}

/// Creates the keyword payload indexes that are missing (existing ones are left alone).
fn create_payload_indexes(shard: &EdgeShard) -> PortResult<()> {
    let existing = shard.info().payload_schema;
    for field in KEYWORD_INDEXES {
        let field_name = path(field);
        if existing.contains_key(&field_name) {
            continue;
        }
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name,
                    field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
                }),
            ))
            .map_err(engine_error)?;
    }
    Ok(())
}

/// Whether `shard_dir` already holds a shard (its config, or any segment).
fn shard_exists(shard_dir: &Path) -> bool {
    if shard_dir.join(EDGE_CONFIG_FILE).is_file() {
        return true;
    }
    fs::read_dir(shard_dir.join("segments"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// Takes the folder's exclusive lock, or explains who holds it.
fn lock_folder(dir: &Path) -> PortResult<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            PortError::unavailable(
                DEP,
                format!("cannot open lock file {}: {e}", path.display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                String::new()
            } else {
                format!(" (process {holder})")
            };
            return Err(PortError::rejected(
                DEP,
                format!(
                    "data folder {} is already open{holder}: Qdrant Edge allows one process \
                     per folder; stop the other process or give this one another folder",
                    dir.display()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(PortError::unavailable(
                DEP,
                format!("cannot lock {}: {e}", path.display()),
            ));
        }
    }
    // Record the holder for the error message above (best effort).
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(file)
}

/// The error for calls before the collection exists.
fn not_created() -> PortError {
    PortError::rejected(
        DEP,
        "the collection does not exist yet: call ensure_collection first",
    )
}

/// Maps an engine error: bad arguments are `Rejected`, everything else `Unavailable`.
fn engine_error(e: OperationError) -> PortError {
    match e {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::PointIdError { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. }
        | OperationError::VariableTypeError { .. }
        | OperationError::NonFiniteNumber { .. } => PortError::rejected(DEP, e),
        OperationError::ServiceError { .. }
        | OperationError::InconsistentStorage { .. }
        | OperationError::OutOfMemory { .. }
        | OperationError::Cancelled { .. }
        | OperationError::Timeout { .. } => PortError::unavailable(DEP, e),
    }
}

/// Runs synchronous engine code on tokio's blocking pool; an engine panic becomes `Unavailable`.
async fn blocking<T, F>(f: F) -> PortResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> PortResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PortError::unavailable(DEP, format!("engine task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::memory_store::{self as contract, memory, unit_vector};

    const DIM: usize = 8;

    fn pair(user: &str, character: &str) -> Pair {
        Pair::parse(user, character).unwrap()
    }

    /// The values of the `key == value` keyword conditions in `must`.
    fn must_keyword(filter: &Filter, key: &str) -> Vec<String> {
        filter
            .must
            .iter()
            .flatten()
            .filter_map(|c| match c {
                Condition::Field(f) if f.key == path(key) => match &f.r#match {
                    Some(Match::Value(v)) => match &v.value {
                        qdrant_edge::ValueVariants::String(s) => Some(s.clone()),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn has_superseded_exclusion(filter: &Filter) -> bool {
        filter
            .must
            .iter()
            .flatten()
            .any(|c| matches!(c, Condition::IsEmpty(e) if e.is_empty.key == path(SUPERSEDED_BY)))
    }

    #[test]
    fn payload_keys_are_valid_paths() {
        for key in [USER_ID, CHARACTER_NAME, BATCH_ID, SUPERSEDED_BY] {
            assert_eq!(path(key).to_string(), key);
        }
    }

    #[test]
    fn every_pair_filter_has_user_and_character() {
        let p = pair("u_1", "meher");
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
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
            let excludes_superseded = match op {
                PairOp::Search { include_superseded } | PairOp::Count { include_superseded } => {
                    !include_superseded
                }
                PairOp::List
                | PairOp::Supersede { .. }
                | PairOp::DeleteBatch { .. }
                | PairOp::DeletePair => false,
            };
            let f = pair_filter(&p, op);
            assert_eq!(must_keyword(&f, USER_ID), vec!["u_1"], "{op:?}");
            assert_eq!(must_keyword(&f, CHARACTER_NAME), vec!["meher"], "{op:?}");
            // Nothing can widen the conjunction.
            assert!(f.should.is_none() && f.min_should.is_none(), "{op:?}");
            assert!(f.must_not.is_none(), "{op:?}");
            assert_eq!(has_superseded_exclusion(&f), excludes_superseded, "{op:?}");
        }
        let f = pair_filter(&p, PairOp::DeleteBatch { batch_id: "b1" });
        assert_eq!(must_keyword(&f, BATCH_ID), vec!["b1"]);
        let f = pair_filter(&p, PairOp::Supersede { ids: &ids });
        assert!(
            f.must
                .iter()
                .flatten()
                .any(|c| matches!(c, Condition::HasId(_)))
        );

        let u = user_filter(&p.user_id);
        assert_eq!(must_keyword(&u, USER_ID), vec!["u_1"]);
        assert!(u.should.is_none() && u.min_should.is_none() && u.must_not.is_none());
    }

    #[tokio::test]
    async fn passes_the_memory_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = QdrantEdgeStore::open(dir.path()).unwrap();
        contract::run_all(&store, DIM).await;
        // The optimizers run cleanly on what the suite left, and the store still works.
        store.optimize().await.unwrap();
        contract::run_all(&store, DIM).await;
    }

    #[tokio::test]
    async fn optimize_vacuums_and_keeps_everything_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = QdrantEdgeStore::open(dir.path()).unwrap();
        store.ensure_collection(DIM).await.unwrap();
        let keep = pair("u_opt", "meher");
        let drop_me = pair("u_opt", "arjun");
        // Enough points, and enough of them deleted, for the vacuum optimizer to run.
        for (p, n) in [(&keep, 700_u64), (&drop_me, 600)] {
            let points: Vec<MemoryPoint> = (0..n)
                .map(|i| MemoryPoint {
                    memory: memory(p, i, &format!("b{}", i % 3)),
                    vector: unit_vector(DIM, i),
                })
                .collect();
            store.upsert(&points).await.unwrap();
        }
        assert_eq!(store.delete_pair(&drop_me).await.unwrap(), 600);
        assert!(
            store.optimize().await.unwrap(),
            "the vacuum optimizer should have run"
        );
        assert!(
            !store.optimize().await.unwrap(),
            "a second run has nothing to do"
        );

        assert_eq!(store.count(&keep, true).await.unwrap(), 700);
        assert_eq!(store.count(&drop_me, true).await.unwrap(), 0);
        assert_eq!(store.list(&keep).await.unwrap().len(), 700);
        let hits = store
            .search(&SearchQuery {
                pair: keep.clone(),
                vector: unit_vector(DIM, 5),
                limit: 3,
                score_threshold: None,
                include_superseded: false,
            })
            .await
            .unwrap();
        assert_eq!(hits.len(), 3);
        assert!(
            (hits[0].score - 1.0).abs() < 1e-3,
            "score {}",
            hits[0].score
        );
        assert_eq!(store.delete_batch(&keep, "b0").await.unwrap(), 234);
        let schema = store.inner.current().unwrap().shard.info().payload_schema;
        for key in KEYWORD_INDEXES {
            assert!(
                schema.contains_key(&path(key)),
                "index on {key} after optimize"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reads_and_writes_run_while_optimizing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(QdrantEdgeStore::open(dir.path()).unwrap());
        store.ensure_collection(DIM).await.unwrap();
        // Give the vacuum optimizer real work: 1500 points, 500 of them deleted.
        let bulk = pair("u_bulk", "meher");
        let gone = pair("u_bulk", "arjun");
        for (p, n) in [(&bulk, 1000_u64), (&gone, 500)] {
            let points: Vec<MemoryPoint> = (0..n)
                .map(|i| MemoryPoint {
                    memory: memory(p, i, "b"),
                    vector: unit_vector(DIM, 50_000 + i),
                })
                .collect();
            store.upsert(&points).await.unwrap();
        }
        store.delete_pair(&gone).await.unwrap();

        let optimizer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.optimize().await.unwrap() })
        };
        let mut tasks = Vec::new();
        for t in 0..4_u64 {
            let store = Arc::clone(&store);
            let bulk = bulk.clone();
            tasks.push(tokio::spawn(async move {
                let p = pair(&format!("u_conc_{t}"), "meher");
                for i in 0..30_u64 {
                    let v = unit_vector(DIM, t * 1000 + i);
                    store
                        .upsert(&[MemoryPoint {
                            memory: memory(&p, i, "b"),
                            vector: v.clone(),
                        }])
                        .await
                        .unwrap();
                    let q = SearchQuery {
                        pair: p.clone(),
                        vector: v,
                        limit: 2,
                        score_threshold: None,
                        include_superseded: false,
                    };
                    let hits = store.search(&q).await.unwrap();
                    assert!((hits[0].score - 1.0).abs() < 1e-3);
                    assert_eq!(store.count(&bulk, true).await.unwrap(), 1000);
                    if i % 10 == 0 {
                        store.optimize().await.unwrap();
                    }
                }
                assert_eq!(store.count(&p, true).await.unwrap(), 30);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // Whichever optimize call ran first did the vacuum; the spawned one may have found
        // nothing left.
        optimizer.await.unwrap();
        assert!(!store.optimize().await.unwrap(), "nothing left to optimize");
        assert_eq!(store.count(&bulk, true).await.unwrap(), 1000);
        assert_eq!(store.list(&bulk).await.unwrap().len(), 1000);
        let info = {
            let c = store.inner.current().unwrap();
            c.shard.info()
        };
        assert_eq!(
            info.points_count,
            1000 + 4 * 30,
            "deleted points were vacuumed"
        );
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let p = pair("u_reopen", "meher");
        let m = memory(&p, 3, "batch-reopen");
        let v = unit_vector(DIM, 42);
        {
            let store = QdrantEdgeStore::open(dir.path()).unwrap();
            store.ensure_collection(DIM).await.unwrap();
            store
                .upsert(&[MemoryPoint {
                    memory: m.clone(),
                    vector: v.clone(),
                }])
                .await
                .unwrap();
        }

        let store = QdrantEdgeStore::open(dir.path()).unwrap();
        // Usable before ensure_collection: the shard was loaded from disk.
        assert_eq!(store.count(&p, true).await.unwrap(), 1);
        store.ensure_collection(DIM).await.unwrap();
        let hits = store
            .search(&SearchQuery {
                pair: p.clone(),
                vector: v,
                limit: 5,
                score_threshold: None,
                include_superseded: false,
            })
            .await
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].memory, m);
        assert!(
            (hits[0].score - 1.0).abs() < 1e-3,
            "score {}",
            hits[0].score
        );

        match store.ensure_collection(DIM * 2).await {
            Err(PortError::Rejected { message, .. }) => {
                assert!(message.contains("dimension 8"), "{message}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn second_open_of_a_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = QdrantEdgeStore::open(dir.path()).unwrap();
        first.ensure_collection(DIM).await.unwrap();
        match QdrantEdgeStore::open(dir.path()) {
            Err(PortError::Rejected { message, .. }) => {
                assert!(message.contains("already open"), "{message}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        drop(first);
        QdrantEdgeStore::open(dir.path()).expect("the lock is released on drop");
    }

    #[tokio::test]
    async fn calls_before_ensure_collection_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = QdrantEdgeStore::open(dir.path()).unwrap();
        let p = pair("u_early", "meher");
        assert!(matches!(
            store.count(&p, true).await,
            Err(PortError::Rejected { .. })
        ));
        assert!(matches!(
            store.ping().await,
            Err(PortError::Unavailable { .. })
        ));
        assert!(matches!(
            store.ensure_collection(0).await,
            Err(PortError::Rejected { .. })
        ));
    }

    #[tokio::test]
    async fn bad_vectors_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = QdrantEdgeStore::open(dir.path()).unwrap();
        store.ensure_collection(DIM).await.unwrap();
        let p = pair("u_nan", "meher");
        let mut v = unit_vector(DIM, 1);
        v[0] = f32::NAN;
        let m = memory(&p, 1, "b");
        assert!(matches!(
            store
                .upsert(&[MemoryPoint {
                    memory: m,
                    vector: v.clone()
                }])
                .await,
            Err(PortError::Rejected { .. })
        ));
        let q = SearchQuery {
            pair: p.clone(),
            vector: unit_vector(DIM, 1),
            limit: usize::MAX,
            score_threshold: Some(f32::NAN),
            include_superseded: false,
        };
        assert!(matches!(
            store.search(&q).await,
            Err(PortError::Rejected { .. })
        ));
        let q = SearchQuery {
            score_threshold: None,
            ..q
        };
        assert!(store.search(&q).await.unwrap().is_empty());
        let q = SearchQuery { limit: 0, ..q };
        assert!(store.search(&q).await.unwrap().is_empty());
    }
}
