//! `--api dapr-grpc`: publishing through evrouter's Dapr runtime API over gRPC, as the
//! Python, Go, .NET and Java SDKs do: `PublishEvent` for single events (the key as
//! `partitionKey`), `BulkPublishEvent` for batches. Answers are told as the HTTP statuses
//! the rest of the load generator counts.

use std::collections::HashMap;

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as pb;
use pb::dapr_client::DaprClient;
use serde::Deserialize;
use tonic::transport::Channel;

/// One connection (an HTTP/2 channel) to evrouter's gRPC API.
pub struct GrpcSender {
    client: DaprClient<Channel>,
    token: Option<String>,
}

/// An entry of the Dapr HTTP bulk body the bodies are made as.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    entry_id: String,
    content_type: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

impl GrpcSender {
    /// Connects to `authority` (`host:port`).
    pub async fn connect(authority: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(format!("http://{authority}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Self {
            client: DaprClient::new(channel),
            token: token.map(str::to_string),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = token.parse() {
                request.metadata_mut().insert("dapr-api-token", value);
            }
        }
        request
    }

    /// Publishes `body` (one event, or a bulk body when `bulk`) to `topic`; the answer as
    /// an HTTP status (204 stored), or what went wrong with the connection.
    pub async fn send(
        &mut self,
        topic: &str,
        body: Bytes,
        key: &str,
        bulk: bool,
    ) -> Result<u16, String> {
        let answer = if bulk {
            let entries: Vec<Entry> =
                serde_json::from_slice(&body).map_err(|e| format!("bulk body: {e}"))?;
            let request = pb::BulkPublishRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                entries: entries
                    .into_iter()
                    .map(|e| pb::BulkPublishRequestEntry {
                        entry_id: e.entry_id,
                        event: e.event.get().as_bytes().to_vec(),
                        content_type: e.content_type,
                        metadata: e.metadata,
                    })
                    .collect(),
                metadata: HashMap::new(),
            };
            let request = self.request(request);
            self.client.bulk_publish_event(request).await.map(|r| {
                if r.get_ref().failed_entries.is_empty() {
                    204
                } else {
                    500
                }
            })
        } else {
            let request = pb::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                data: body.to_vec(),
                data_content_type: "application/json".into(),
                metadata: HashMap::from([("partitionKey".to_string(), key.to_string())]),
            };
            let request = self.request(request);
            self.client.publish_event(request).await.map(|_| 204)
        };
        answer.or_else(|status| match status.code() {
            tonic::Code::InvalidArgument => Ok(400),
            tonic::Code::Unauthenticated => Ok(401),
            tonic::Code::PermissionDenied => Ok(403),
            tonic::Code::NotFound => Ok(404),
            tonic::Code::ResourceExhausted => Ok(429),
            tonic::Code::Unavailable => Err(format!("grpc unavailable: {}", status.message())),
            code => Err(format!("grpc {code:?}")),
        })
    }
}
