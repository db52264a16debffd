//! Every error code evrouter answers, in one place: for each, its HTTP status, the code on
//! the wire and what it means. [`ErrorCode`] is the native API's `{"error":{"code"}}`
//! (listed in `docs/http-api.md`); [`DaprCode`] is the Dapr API's `errorCode`, over HTTP
//! and, with the gRPC status it maps to, over gRPC (listed in `docs/dapr.md`). The tests
//! below fail when a code is missing from its page or a page names a code not here.

use axum::http::StatusCode;
use tonic::Code;

/// Declares a catalogue: the enum, its list and one row per code.
macro_rules! catalogue {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($variant:ident => ($status:ident, $code:literal, $meaning:literal),)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = $meaning] $variant,)*
        }

        impl $name {
            /// Every code, in the catalogue's order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The HTTP status the code is answered with.
            pub fn status(self) -> StatusCode {
                match self {
                    $($name::$variant => StatusCode::$status,)*
                }
            }

            /// The code as sent to clients (its spelling never changes).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $code,)*
                }
            }

            /// What the code means, in one line.
            pub fn meaning(self) -> &'static str {
                match self {
                    $($name::$variant => $meaning,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

catalogue! {
    /// A code of the native API's error body, `{"error":{"code":"…"}}`.
    pub enum ErrorCode {
        InvalidTopic => (BAD_REQUEST, "invalid_topic", "The topic in the path is not a valid topic name."),
        InvalidEncoding => (BAD_REQUEST, "invalid_encoding", "The body is not UTF-8."),
        TooDeep => (BAD_REQUEST, "too_deep", "The body nests deeper than `server.max_json_depth`."),
        MalformedJson => (BAD_REQUEST, "malformed_json", "The body is not JSON."),
        EmptyBatch => (BAD_REQUEST, "empty_batch", "The body is an empty array."),
        BodyReadFailed => (BAD_REQUEST, "body_read_failed", "The request body could not be read."),
        InvalidEvent => (BAD_REQUEST, "invalid_event", "One or more events are invalid; nothing was stored."),
        NoStream => (BAD_REQUEST, "no_stream", "No stream holds the topic and none can be created."),
        InvalidSubscription => (BAD_REQUEST, "invalid_subscription", "A subscription body is not valid."),
        InvalidRequest => (BAD_REQUEST, "invalid_request", "A query or a body of an admin endpoint is not valid."),
        EndpointRefused => (BAD_REQUEST, "endpoint_refused", "An endpoint is on an address webhooks may not go to."),
        Unauthenticated => (UNAUTHORIZED, "unauthenticated", "A token is required and the request has none."),
        InvalidToken => (UNAUTHORIZED, "invalid_token", "The token matches no principal."),
        Forbidden => (FORBIDDEN, "forbidden", "The principal may not do this."),
        SubscriptionLimit => (FORBIDDEN, "subscription_limit", "A new subscription would pass the caller's bound."),
        NotFound => (NOT_FOUND, "not_found", "No route for the path."),
        UnknownSubscription => (NOT_FOUND, "unknown_subscription", "No subscription of that name."),
        UnknownEvent => (NOT_FOUND, "unknown_event", "No archived event of that id this caller may see."),
        UnknownReplay => (NOT_FOUND, "unknown_replay", "No archive replay of that id."),
        EventStoreOff => (NOT_FOUND, "event_store_off", "No event store is configured."),
        UnknownApp => (NOT_FOUND, "unknown_app", "No Dapr app of that id is configured."),
        MethodNotAllowed => (METHOD_NOT_ALLOWED, "method_not_allowed", "The path exists but not for this method."),
        BodyTimeout => (REQUEST_TIMEOUT, "body_timeout", "The body did not arrive in time."),
        SubscriptionExists => (CONFLICT, "subscription_exists", "The subscription's name is taken by a different one."),
        SubscriptionLimitTotal => (CONFLICT, "subscription_limit_total", "A new subscription would pass evrouter's bound."),
        NotSigned => (CONFLICT, "not_signed", "A Dapr app's subscription has no signing secret."),
        ReplayRunning => (CONFLICT, "replay_running", "The archive replay is running or done."),
        BatchTooLarge => (PAYLOAD_TOO_LARGE, "batch_too_large", "The batch holds more than `server.max_batch` events."),
        OverQuota => (PAYLOAD_TOO_LARGE, "over_quota", "The request alone is larger than the publish quota."),
        BodyTooLarge => (PAYLOAD_TOO_LARGE, "body_too_large", "The body exceeds `server.max_body_bytes`."),
        UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "`Content-Type` is not JSON."),
        RateLimited => (TOO_MANY_REQUESTS, "rate_limited", "The principal is over its publish quota."),
        Internal => (INTERNAL_SERVER_ERROR, "internal", "evrouter failed to build the answer."),
        StoreError => (INTERNAL_SERVER_ERROR, "store_error", "Redis refused the write with an error retrying will not fix."),
        AppNotRead => (BAD_GATEWAY, "app_not_read", "A Dapr app's subscriptions could not be read."),
        Overloaded => (SERVICE_UNAVAILABLE, "overloaded", "A writer's queue is full."),
        StoreUnavailable => (SERVICE_UNAVAILABLE, "store_unavailable", "Redis is unreachable, failing or slow."),
        ShuttingDown => (SERVICE_UNAVAILABLE, "shutting_down", "evrouter is shutting down."),
        PartDown => (SERVICE_UNAVAILABLE, "part_down", "A watched part is down: not ready."),
        EventStoreUnavailable => (SERVICE_UNAVAILABLE, "event_store_unavailable", "The event store (PostgreSQL) did not answer."),
        StoreFull => (INSUFFICIENT_STORAGE, "store_full", "Redis or the stream is full; nothing was stored."),
    }
}

catalogue! {
    /// A code of the Dapr API's error body, `{"errorCode":"ERR_…"}`, as Dapr's SDKs read it.
    /// The status is the usual one; a few answers keep the status of what refused them
    /// (a body too slow, a quota).
    pub enum DaprCode {
        PubsubNotFound => (NOT_FOUND, "ERR_PUBSUB_NOT_FOUND", "No pubsub of that name."),
        TopicNameEmpty => (NOT_FOUND, "ERR_TOPIC_NAME_EMPTY", "The publish path has no topic."),
        PubsubForbidden => (FORBIDDEN, "ERR_PUBSUB_FORBIDDEN", "The topic is not allowed to the caller."),
        TopicInvalid => (BAD_REQUEST, "ERR_PUBSUB_TOPIC_INVALID", "The topic cannot be an evrouter topic."),
        CloudEventsSer => (BAD_REQUEST, "ERR_PUBSUB_CLOUD_EVENTS_SER", "The body cannot be made a CloudEvent."),
        RequestMetadata => (BAD_REQUEST, "ERR_PUBSUB_REQUEST_METADATA", "A `metadata.*` value is wrong."),
        EventsSer => (BAD_REQUEST, "ERR_PUBSUB_EVENTS_SER", "A bulk body is not a list of entries, or an event is refused."),
        RequestBody => (PAYLOAD_TOO_LARGE, "ERR_PUBSUB_REQUEST_BODY", "The body could not be read: too large, too slow or broken."),
        PublishMessage => (INTERNAL_SERVER_ERROR, "ERR_PUBSUB_PUBLISH_MESSAGE", "The event was not stored."),
    }
}

impl DaprCode {
    /// The gRPC status code of an answer with this code and HTTP `status`: the codes Dapr
    /// answers.
    pub fn grpc(self, status: StatusCode) -> Code {
        match (self, status) {
            (DaprCode::PubsubNotFound, _) => Code::NotFound,
            (_, StatusCode::FORBIDDEN) => Code::PermissionDenied,
            (_, StatusCode::UNAUTHORIZED) => Code::Unauthenticated,
            (_, StatusCode::TOO_MANY_REQUESTS) => Code::ResourceExhausted,
            (_, StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE) => {
                Code::Unavailable
            }
            (_, StatusCode::INSUFFICIENT_STORAGE | StatusCode::PAYLOAD_TOO_LARGE) => {
                Code::ResourceExhausted
            }
            _ => Code::InvalidArgument,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const HTTP_API: &str = include_str!("../../docs/http-api.md");
    const DAPR: &str = include_str!("../../docs/dapr.md");

    /// The words between backticks in `text`.
    fn quoted(text: &str) -> Vec<&str> {
        text.split('`').skip(1).step_by(2).collect()
    }

    /// The table of `## Errors`: each code with the statuses its rows give it.
    fn documented() -> BTreeMap<String, BTreeSet<u16>> {
        let section = HTTP_API
            .split("\n## Errors\n")
            .nth(1)
            .expect("docs/http-api.md has a section `## Errors`");
        let mut table = BTreeMap::<String, BTreeSet<u16>>::new();
        for row in section.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let Ok(status) = cells[1].parse::<u16>() else {
                continue; // the header
            };
            for code in quoted(cells[2]) {
                table.entry(code.to_string()).or_default().insert(status);
            }
        }
        table
    }

    #[test]
    fn every_code_is_in_the_docs_with_its_status_and_the_docs_name_no_other() {
        let documented = documented();
        for code in ErrorCode::ALL {
            let statuses = documented.get(code.as_str()).unwrap_or_else(|| {
                panic!(
                    "docs/http-api.md, ## Errors: no row for `{code}` ({})",
                    code.meaning()
                )
            });
            assert!(
                statuses.contains(&code.status().as_u16()),
                "docs/http-api.md gives `{code}` {statuses:?}, the code {}",
                code.status()
            );
        }
        let known: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for code in documented.keys() {
            assert!(
                known.contains(code.as_str()),
                "docs/http-api.md names `{code}`, which evrouter never answers"
            );
        }
    }

    #[test]
    fn every_dapr_code_is_in_the_dapr_page_and_the_page_names_no_other() {
        for code in DaprCode::ALL {
            assert!(
                DAPR.contains(code.as_str()),
                "docs/dapr.md does not name {code} ({})",
                code.meaning()
            );
        }
        let known: BTreeSet<&str> = DaprCode::ALL.iter().map(|c| c.as_str()).collect();
        for word in DAPR.split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
            if word.starts_with("ERR_") {
                assert!(
                    known.contains(word),
                    "docs/dapr.md names {word}, not answered"
                );
            }
        }
    }

    #[test]
    fn codes_are_unique_and_spelled_as_clients_expect() {
        let native: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(native.len(), ErrorCode::ALL.len());
        let dapr: BTreeSet<&str> = DaprCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(dapr.len(), DaprCode::ALL.len());
        assert!(native
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert!(dapr.iter().all(|c| c.starts_with("ERR_")));
        assert_eq!(ErrorCode::InvalidRequest.as_str(), "invalid_request");
        assert_eq!(
            ErrorCode::StoreFull.status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
    }

    #[test]
    fn dapr_codes_map_to_the_grpc_codes_dapr_answers() {
        let table = [
            (
                DaprCode::PubsubNotFound,
                StatusCode::NOT_FOUND,
                Code::NotFound,
            ),
            (
                DaprCode::TopicNameEmpty,
                StatusCode::NOT_FOUND,
                Code::InvalidArgument,
            ),
            (
                DaprCode::PubsubForbidden,
                StatusCode::FORBIDDEN,
                Code::PermissionDenied,
            ),
            (
                DaprCode::CloudEventsSer,
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
            ),
            (
                DaprCode::PublishMessage,
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Unavailable,
            ),
            (
                DaprCode::PublishMessage,
                StatusCode::TOO_MANY_REQUESTS,
                Code::ResourceExhausted,
            ),
            (
                DaprCode::PublishMessage,
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
            ),
            (
                DaprCode::RequestBody,
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
            ),
            (
                DaprCode::RequestBody,
                StatusCode::REQUEST_TIMEOUT,
                Code::InvalidArgument,
            ),
        ];
        for (code, status, grpc) in table {
            assert_eq!(code.grpc(status), grpc, "{code} with {status}");
        }
    }
}
