"""evrouter as a Dapr sidecar for the real Dapr Python SDK over gRPC: DaprClient publishes
single events (JSON, text, with metadata, raw payloads) and bulk, and meets evrouter's
refusals. Prints one JSON line of what it saw; the Rust test checks it and Redis.

Env: DAPR_HTTP_PORT (health check), DAPR_GRPC_PORT, and DAPR_API_TOKEN when the test sets
one (the SDK reads them itself)."""

import json
import sys

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError

seen = {"published": 0, "refused": {}, "bulk_failed": [], "first_error": None}


def refused(name, call):
    try:
        call()
        seen["refused"][name] = "OK"
    except DaprGrpcError as err:
        seen["refused"][name] = err.code().name
    except grpc.RpcError as err:
        seen["refused"][name] = err.code().name


def main(client):
    client.publish_event(
        pubsub_name="pubsub",
        topic_name="orders",
        data=json.dumps({"order_id": "ord-py-1", "total": 12.5}),
        data_content_type="application/json",
    )
    client.publish_event(
        pubsub_name="pubsub",
        topic_name="orders",
        data="hello from python",
        data_content_type="text/plain",
        publish_metadata={
            "partitionKey": "ord-py-2",
            "ttlInSeconds": "120",
            "cloudevent.type": "order.noted",
            "cloudevent.id": "py-fixed-id",
        },
    )
    client.publish_event(
        pubsub_name="pubsub",
        topic_name="raw",
        data=bytes([9, 8, 7]),
        data_content_type="application/octet-stream",
        publish_metadata={"rawPayload": "true"},
    )
    seen["published"] = 3
    response = client.publish_events(
        pubsub_name="pubsub",
        topic_name="bulk",
        data=[json.dumps({"order_id": f"ord-b{i}", "n": i}) for i in range(5)],
        data_content_type="application/json",
        publish_metadata={"partitionKey": "bulk-key"},
    )
    seen["bulk_failed"] = [e.entry_id for e in response.failed_entries]

    refused(
        "unknown_pubsub",
        lambda: client.publish_event("nosuch", "orders", data="{}", data_content_type="application/json"),
    )
    refused(
        "empty_topic",
        lambda: client.publish_event("pubsub", "", data="{}", data_content_type="application/json"),
    )
    refused(
        "bad_ttl",
        lambda: client.publish_event(
            "pubsub",
            "orders",
            data="{}",
            data_content_type="application/json",
            publish_metadata={"ttlInSeconds": "soon"},
        ),
    )
    refused(
        "forbidden_topic",
        lambda: client.publish_event("pubsub", "secret", data="{}", data_content_type="application/json"),
    )
    refused("get_state", lambda: client.get_state("statestore", "k"))

with DaprClient() as client:
    try:
        main(client)
    except (DaprGrpcError, grpc.RpcError) as err:
        # A call refused where none should be (or every call, without a token).
        seen["first_error"] = err.code().name

print(json.dumps(seen))
sys.stdout.flush()
