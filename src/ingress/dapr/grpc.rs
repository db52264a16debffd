//! The Dapr runtime API over gRPC (`dapr.proto.runtime.v1.Dapr` on `[dapr] grpc_listen`),
//! the one the Python, Go, .NET and Java SDKs use by default: `PublishEvent`,
//! `BulkPublishEvent` (and `BulkPublishEventAlpha1`) and `GetMetadata`, with the behaviour
//! of the HTTP API — the same CloudEvents, metadata, checks, rights and quotas. Every
//! other method of the service answers UNIMPLEMENTED. The messages are the `dapr` crate's
//! generated types, decoded and encoded by tonic.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::StatusCode;
use dapr::dapr::proto::runtime::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};

use super::error::DaprError;
use crate::auth::Principal;
use crate::ingress::codes::DaprCode;
use crate::ingress::refusals::{self, Refused};
use crate::ingress::{AppState, ClientAddr};
use crate::model::cloudevent::{self, Body};
use crate::publish::dapr::{Caller, Depth, Metadata, Route};

/// The service's full name.
pub const SERVICE: &str = "dapr.proto.runtime.v1.Dapr";

/// What every method evrouter does not serve answers.
const PUBSUB_ONLY: &str =
    "evrouter serves the Dapr pub/sub API only (PublishEvent, BulkPublishEvent, GetMetadata)";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service.
#[derive(Clone)]
pub struct DaprGrpc {
    app: Arc<AppState>,
}

impl DaprGrpc {
    /// Serves `app`'s publishers.
    pub fn new(app: Arc<AppState>) -> Self {
        Self { app }
    }

    /// The caller's principal: `dapr-api-token` (as the SDKs send `DAPR_API_TOKEN`) or a
    /// bearer token.
    fn principal(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, Status> {
        let get = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let token = get("dapr-api-token").or_else(|| {
            get("authorization").and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
        });
        self.app
            .auth
            .authenticate(token)
            .map_err(|why| Status::unauthenticated(why.to_string()))
    }

    /// The caller's principal, or the refusal (counted in the audit log).
    async fn admit<T>(&self, request: &Request<T>, method: &str) -> Result<Arc<Principal>, Status> {
        match self.principal(request.metadata()) {
            Ok(principal) => Ok(principal),
            Err(status) => {
                let target = format!("/{SERVICE}/{method}");
                self.refused(request, None, 401, method, &target).await;
                Err(status)
            }
        }
    }

    /// Records a refused call of `method` on `target` in the audit log.
    async fn refused<T>(
        &self,
        request: &Request<T>,
        principal: Option<&str>,
        status: u16,
        method: &str,
        target: &str,
    ) {
        let address = request
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0)
            .or_else(|| request.remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let action = format!("gRPC {SERVICE}/{method}");
        let refused = Refused {
            principal,
            action: &action,
            target,
            address: &address,
            status,
        };
        refusals::refused(&self.app, refused, "grpc").await;
    }

    /// Records `answer` in the audit log when it refuses `principal` a right.
    async fn audit_answer<T, R>(
        &self,
        request: &Request<T>,
        principal: &Principal,
        method: &str,
        target: &str,
        answer: &Result<R, DaprError>,
    ) {
        if let Err(err) = answer {
            if err.status == StatusCode::FORBIDDEN {
                self.refused(request, Some(&principal.name), 403, method, target)
                    .await;
            }
        }
    }

    async fn publish_event(
        self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        let started = Instant::now();
        let principal = self.admit(&request, "PublishEvent").await?;
        let caller = caller(request.metadata());
        let target = format!(
            "{}/{}",
            request.get_ref().pubsub_name,
            request.get_ref().topic
        );
        let (head, message) = split(request);
        let answer = self.publish_one(&principal, &caller, message).await;
        self.audit_answer(&head, &principal, "PublishEvent", &target, &answer)
            .await;
        self.counted(started, answer)
    }

    /// Counts a publish in the metrics (the events stored, or the refusal) and gives its
    /// answer.
    fn counted<T>(
        &self,
        started: Instant,
        answer: Result<(String, usize, T), DaprError>,
    ) -> Result<Response<T>, Status> {
        match &answer {
            Ok((target, stored, _)) => self.app.metrics.published("dapr", target, started, *stored),
            Err(err) => self.app.metrics.rejected("dapr", err.code.as_str()),
        }
        answer.map(|(_, _, t)| Response::new(t)).map_err(status)
    }

    async fn publish_one(
        &self,
        principal: &Principal,
        caller: &Caller,
        request: pb::PublishEventRequest,
    ) -> Result<(String, usize, ()), DaprError> {
        let app = &self.app;
        let target = self.target(principal, &request.pubsub_name, &request.topic)?;
        too_large(request.data.len(), app.max_body_bytes)?;
        let mut metadata = Metadata::default();
        Metadata::read(
            request
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            "",
            &mut metadata,
        )?;
        principal
            .quota
            .admit(&principal.name, 1, request.data.len())?;
        let route = Route {
            pubsub: &request.pubsub_name,
            topic: &request.topic,
            target: &target,
        };
        let envelope = app.dapr.envelope(
            route,
            Body::Bytes(&request.data),
            &cloudevent::essence(&request.data_content_type),
            &metadata,
            caller,
            Depth::Limit(app.publisher.limits().max_depth),
        )?;
        app.publisher
            .publish_envelopes(&target, vec![envelope])
            .await
            .map_err(DaprError::from_publish)?;
        Ok((target, 1, ()))
    }

    /// The evrouter topic of a Dapr pubsub and topic, if the caller may publish to it.
    fn target(
        &self,
        principal: &Principal,
        pubsub: &str,
        topic: &str,
    ) -> Result<String, DaprError> {
        let target = self.app.dapr.target(pubsub, topic)?;
        principal
            .may_publish(&target)
            .map_err(|denied| DaprError::new(DaprCode::PubsubForbidden, denied.0))?;
        Ok(target)
    }

    async fn bulk_publish(
        self,
        request: Request<pb::BulkPublishRequest>,
    ) -> Result<Response<pb::BulkPublishResponse>, Status> {
        let started = Instant::now();
        let principal = self.admit(&request, "BulkPublishEvent").await?;
        let caller = caller(request.metadata());
        let target = format!(
            "{}/{}",
            request.get_ref().pubsub_name,
            request.get_ref().topic
        );
        let (head, message) = split(request);
        let answer = self.publish_many(&principal, &caller, message).await;
        self.audit_answer(&head, &principal, "BulkPublishEvent", &target, &answer)
            .await;
        self.counted(started, answer)
    }

    /// Stores a bulk publish: the evrouter topic, how many were stored, and the entries
    /// that were not (an entry that cannot be made an event fails alone, as in Dapr; a
    /// store that takes none is an error of the whole call, never an OK).
    async fn publish_many(
        &self,
        principal: &Principal,
        caller: &Caller,
        request: pb::BulkPublishRequest,
    ) -> Result<(String, usize, pb::BulkPublishResponse), DaprError> {
        let app = &self.app;
        let (pubsub, topic) = (&request.pubsub_name, &request.topic);
        let target = self.target(principal, pubsub, topic)?;
        let mut shared = Metadata::default();
        Metadata::read(
            request
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            "",
            &mut shared,
        )?;
        too_large(
            request.entries.iter().map(|e| e.event.len()).sum(),
            app.max_body_bytes,
        )?;
        let limits = app.publisher.limits();
        if request.entries.len() > limits.max_batch {
            return Err(DaprError::bad_bulk(format!(
                "{} entries exceed the limit of {}",
                request.entries.len(),
                limits.max_batch
            )));
        }
        let bytes = request.entries.iter().map(|e| e.event.len()).sum();
        principal
            .quota
            .admit(&principal.name, request.entries.len(), bytes)?;
        let mut seen = HashSet::new();
        for (i, entry) in request.entries.iter().enumerate() {
            if entry.entry_id.is_empty() || !seen.insert(entry.entry_id.as_str()) {
                return Err(DaprError::bad_bulk(format!(
                    "entries[{i}].entry_id `{}` is empty or used twice",
                    entry.entry_id
                )));
            }
        }
        let mut failed = Vec::new();
        let mut envelopes = Vec::with_capacity(request.entries.len());
        let mut stored_ids = Vec::with_capacity(request.entries.len());
        for entry in &request.entries {
            let mut metadata = shared.clone();
            let made = Metadata::read(
                entry.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                "",
                &mut metadata,
            )
            .map_err(DaprError::from)
            .and_then(|()| {
                let route = Route {
                    pubsub,
                    topic,
                    target: &target,
                };
                Ok(app.dapr.envelope(
                    route,
                    Body::Bytes(&entry.event),
                    &cloudevent::essence(&entry.content_type),
                    &metadata,
                    caller,
                    Depth::Limit(limits.max_depth),
                )?)
            });
            match made {
                Ok(envelope) => {
                    envelopes.push(envelope);
                    stored_ids.push(entry.entry_id.clone());
                }
                Err(err) => failed.push(pb::BulkPublishResponseFailedEntry {
                    entry_id: entry.entry_id.clone(),
                    error: err.message,
                }),
            }
        }
        let stored = stored_ids.len();
        if stored > 0 {
            app.publisher
                .publish_envelopes(&target, envelopes)
                .await
                .map_err(DaprError::from_publish)?;
        }
        Ok((
            target,
            stored,
            pb::BulkPublishResponse {
                failed_entries: failed,
            },
        ))
    }

    async fn get_metadata(
        self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        self.admit(&request, "GetMetadata").await?;
        let registered_components = self
            .app
            .dapr
            .pubsub_names()
            .into_iter()
            .map(|name| pb::RegisteredComponents {
                name,
                r#type: "pubsub.evrouter".into(),
                version: "v1".into(),
                capabilities: vec!["BULK_PUBLISH".into()],
            })
            .collect();
        Ok(Response::new(pb::GetMetadataResponse {
            id: "evrouter".into(),
            runtime_version: format!("evrouter/{}", env!("CARGO_PKG_VERSION")),
            registered_components,
            ..Default::default()
        }))
    }
}

/// A request's message, and the request without it (its metadata and extensions, for the
/// audit log).
fn split<T>(request: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}

/// Who publishes, from the call's metadata (read as the HTTP API reads its headers).
fn caller(metadata: &MetadataMap) -> Caller {
    super::publish::caller(&metadata.clone().into_headers())
}

/// The gRPC status of an error of the Dapr API: the code the catalogue maps it to, with
/// Dapr's error code in front of the message.
fn status(err: DaprError) -> Status {
    Status::new(
        err.code.grpc(err.status),
        format!("{}: {}", err.code, err.message),
    )
}

/// One unary method: decodes the request, calls `handle`, encodes its answer.
async fn unary<Req, Res, B, F, Fut>(
    max_bytes: usize,
    request: axum::http::Request<B>,
    handle: F,
) -> axum::http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    F: FnOnce(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Res>, Status>> + Send + 'static,
{
    let mut handle = Some(handle);
    let service = tower::service_fn(move |request: Request<Req>| {
        let handle = handle.take();
        async move {
            match handle {
                Some(handle) => handle(request).await,
                None => Err(Status::internal("called twice")),
            }
        }
    });
    let mut grpc = Grpc::new(tonic_prost::ProstCodec::<Res, Req>::default())
        .max_decoding_message_size(max_bytes);
    grpc.unary(service, request).await
}

impl<B> tower::Service<axum::http::Request<B>> for DaprGrpc
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let this = self.clone();
        // What the HTTP API takes in one body (`server.max_body_bytes`), with room for the
        // message's own fields (names, metadata, entry ids).
        let max = self.app.max_body_bytes.saturating_add(GRPC_FRAMING_BYTES);
        let method = request
            .uri()
            .path()
            .rsplit_once('/')
            .map_or("", |(_, m)| m)
            .to_string();
        Box::pin(async move {
            Ok(match method.as_str() {
                "PublishEvent" => unary(max, request, |r| this.publish_event(r)).await,
                "BulkPublishEvent" | "BulkPublishEventAlpha1" => {
                    unary(max, request, |r| this.bulk_publish(r)).await
                }
                "GetMetadata" => unary(max, request, |r| this.get_metadata(r)).await,
                _ => Status::unimplemented(PUBSUB_ONLY).into_http(),
            })
        })
    }
}

impl NamedService for DaprGrpc {
    const NAME: &'static str = SERVICE;
}

/// Refuses events larger than the HTTP API takes in one body.
fn too_large(bytes: usize, max: usize) -> Result<(), DaprError> {
    if bytes <= max {
        return Ok(());
    }
    Err(DaprError::new(
        DaprCode::RequestBody,
        format!("{bytes} bytes of events exceed server.max_body_bytes ({max})"),
    ))
}

/// Bytes a gRPC publish may carry beyond `server.max_body_bytes` of data: its topic,
/// metadata and entry ids.
const GRPC_FRAMING_BYTES: usize = 64 * 1024;
