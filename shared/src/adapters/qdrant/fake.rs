//! A scripted Qdrant server on loopback, for tests of the adapter's real gRPC path (client,
//! channel, encoding, status codes) without a Qdrant server: it records every request as the
//! decoded message the server received, keeps just enough state to answer the collection calls
//! (one collection: its vector size and payload indexes), and answers point calls from a script.
//! It interprets no filter: what a filter selects is the contract suite's job, on a real engine.

use std::sync::{Arc, Mutex, PoisonError};

use ::qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use ::qdrant_client::qdrant::points_server::{Points, PointsServer};
use ::qdrant_client::qdrant::*;
use tonic::{Request, Response, Status};

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Call {
    Get(GetCollectionInfoRequest),
    Create(CreateCollection),
    Exists(CollectionExistsRequest),
    CreateIndex(CreateFieldIndexCollection),
    Upsert(UpsertPoints),
    Count(CountPoints),
    Query(QueryPoints),
    Scroll(ScrollPoints),
    SetPayload(SetPayloadPoints),
    Delete(DeletePoints),
}

/// What the fake holds and answers with.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The collection, once created.
    pub(super) collection: Option<CollectionInfo>,
    /// Answer of every count.
    pub(super) count: u64,
    /// Answer of every query.
    pub(super) hits: Vec<ScoredPoint>,
    /// Answer of every scroll (one page).
    pub(super) records: Vec<RetrievedPoint>,
    /// When set, every call fails with it.
    pub(super) fail: Option<Status>,
    /// Every request, in order.
    pub(super) calls: Vec<Call>,
    /// The `api-key` header of every request.
    pub(super) api_keys: Vec<Option<String>>,
}

/// The fake server's handle: shared state.
#[derive(Debug, Clone, Default)]
pub(super) struct Fake(pub(super) Arc<Mutex<State>>);

impl Fake {
    /// Starts serving on a free loopback port; returns the `http://` URL. The server lives as
    /// long as the test's runtime.
    pub(super) async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(CollectionsServer::new(self.clone()))
            .add_service(PointsServer::new(self.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        url
    }

    /// Locks the state.
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the calls recorded so far.
    pub(super) fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }

    /// Records a call; fails when scripted to.
    fn record<T>(&self, request: &Request<T>, call: Call) -> Result<(), Status> {
        let mut s = self.state();
        let key = request
            .metadata()
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.api_keys.push(key);
        s.calls.push(call);
        match &s.fail {
            Some(status) => Err(status.clone()),
            None => Ok(()),
        }
    }
}

fn ok_points() -> Response<PointsOperationResponse> {
    Response::new(PointsOperationResponse {
        result: Some(UpdateResult {
            status: UpdateStatus::Completed.into(),
            ..UpdateResult::default()
        }),
        ..PointsOperationResponse::default()
    })
}

/// The trait impl with the given methods, every other method answering UNIMPLEMENTED.
macro_rules! grpc_impl {
    ($trait:ident for $ty:ty { $($custom:tt)* } unimplemented { $($name:ident($req:ident) -> $resp:ident;)* }) => {
        #[async_trait::async_trait]
        impl $trait for $ty {
            $($custom)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}

grpc_impl! { Collections for Fake {
    async fn get(
        &self,
        request: Request<GetCollectionInfoRequest>,
    ) -> Result<Response<GetCollectionInfoResponse>, Status> {
        self.record(&request, Call::Get(request.get_ref().clone()))?;
        match &self.state().collection {
            Some(info) => Ok(Response::new(GetCollectionInfoResponse {
                result: Some(info.clone()),
                time: 0.0,
            })),
            None => Err(Status::not_found("Collection doesn't exist!")),
        }
    }

    async fn create(
        &self,
        request: Request<CreateCollection>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        self.record(&request, Call::Create(request.get_ref().clone()))?;
        let mut s = self.state();
        if s.collection.is_some() {
            return Err(Status::already_exists("Collection already exists!"));
        }
        let r = request.into_inner();
        s.collection = Some(CollectionInfo {
            config: Some(CollectionConfig {
                params: Some(CollectionParams {
                    vectors_config: r.vectors_config,
                    ..CollectionParams::default()
                }),
                ..CollectionConfig::default()
            }),
            ..CollectionInfo::default()
        });
        Ok(Response::new(CollectionOperationResponse {
            result: true,
            time: 0.0,
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<CollectionExistsRequest>,
    ) -> Result<Response<CollectionExistsResponse>, Status> {
        self.record(&request, Call::Exists(request.get_ref().clone()))?;
        let exists = self.state().collection.is_some();
        Ok(Response::new(CollectionExistsResponse {
            result: Some(CollectionExists { exists }),
            time: 0.0,
        }))
    }
} unimplemented {
    list(ListCollectionsRequest) -> ListCollectionsResponse;
    update(UpdateCollection) -> CollectionOperationResponse;
    delete(DeleteCollection) -> CollectionOperationResponse;
    update_aliases(ChangeAliases) -> CollectionOperationResponse;
    list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
    list_aliases(ListAliasesRequest) -> ListAliasesResponse;
    collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
    update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
    create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
    delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
    list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
} }

grpc_impl! { Points for Fake {
    async fn create_field_index(
        &self,
        request: Request<CreateFieldIndexCollection>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.record(&request, Call::CreateIndex(request.get_ref().clone()))?;
        let mut s = self.state();
        let Some(info) = s.collection.as_mut() else {
            return Err(Status::not_found("Collection doesn't exist!"));
        };
        info.payload_schema.insert(
            request.get_ref().field_name.clone(),
            PayloadSchemaInfo {
                data_type: request.get_ref().field_type.unwrap_or_default(),
                ..PayloadSchemaInfo::default()
            },
        );
        Ok(ok_points())
    }

    async fn upsert(
        &self,
        request: Request<UpsertPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.record(&request, Call::Upsert(request.get_ref().clone()))?;
        Ok(ok_points())
    }

    async fn delete(
        &self,
        request: Request<DeletePoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.record(&request, Call::Delete(request.get_ref().clone()))?;
        Ok(ok_points())
    }

    async fn set_payload(
        &self,
        request: Request<SetPayloadPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.record(&request, Call::SetPayload(request.get_ref().clone()))?;
        Ok(ok_points())
    }

    async fn count(&self, request: Request<CountPoints>) -> Result<Response<CountResponse>, Status> {
        self.record(&request, Call::Count(request.get_ref().clone()))?;
        let count = self.state().count;
        Ok(Response::new(CountResponse {
            result: Some(CountResult { count }),
            ..CountResponse::default()
        }))
    }

    async fn query(&self, request: Request<QueryPoints>) -> Result<Response<QueryResponse>, Status> {
        self.record(&request, Call::Query(request.get_ref().clone()))?;
        let result = self.state().hits.clone();
        Ok(Response::new(QueryResponse {
            result,
            ..QueryResponse::default()
        }))
    }

    async fn scroll(
        &self,
        request: Request<ScrollPoints>,
    ) -> Result<Response<ScrollResponse>, Status> {
        self.record(&request, Call::Scroll(request.get_ref().clone()))?;
        let result = self.state().records.clone();
        Ok(Response::new(ScrollResponse {
            result,
            ..ScrollResponse::default()
        }))
    }
} unimplemented {
    get(GetPoints) -> GetResponse;
    update_vectors(UpdatePointVectors) -> PointsOperationResponse;
    delete_vectors(DeletePointVectors) -> PointsOperationResponse;
    overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
    delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
    clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
    delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
    create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
    delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
    search(SearchPoints) -> SearchResponse;
    search_batch(SearchBatchPoints) -> SearchBatchResponse;
    search_groups(SearchPointGroups) -> SearchGroupsResponse;
    recommend(RecommendPoints) -> RecommendResponse;
    recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
    recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
    discover(DiscoverPoints) -> DiscoverResponse;
    discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
    update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
    query_batch(QueryBatchPoints) -> QueryBatchResponse;
    query_groups(QueryPointGroups) -> QueryGroupsResponse;
    facet(FacetCounts) -> FacetResponse;
    search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
    search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
} }
