"""A Dapr app built with dapr-ext-grpc, receiving through evrouter's gRPC delivery: a plain
subscription, a routing rule, RETRY then SUCCESS, DROP, always RETRY with a dead-letter
topic, and a handler of any topic (no topic validation) that a declarative bulk
subscription reaches through OnBulkTopicEvent, answering each entry for itself; with
HEALTH_FILE, a health check. Writes what it got to RESULTS (a JSON file) after every event.

Env: APP_PORT (this app's gRPC port), RESULTS (the file), HEALTH_FILE (optional)."""

import inspect
import json
import os
import threading

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, Rule

app = App()
lock = threading.Lock()
got = {
    "orders": [],
    "express": [],
    "flaky": [],
    "poison": [],
    "doomed": [],
    "dead": [],
    "bulk": [],
}
results = os.environ["RESULTS"]


def record(name, event: v1.Event, **extra):
    data = event.data
    if isinstance(data, bytes):
        data = data.decode()
    try:
        data = json.loads(data)
    except (TypeError, ValueError):
        pass
    with lock:
        got[name].append({"id": event.id, "type": event.type, "data": data, **extra})
        dump()


def dump():
    """Writes what was got to RESULTS; called with the lock held."""
    with open(results + ".tmp", "w") as f:
        json.dump(got, f)
    os.replace(results + ".tmp", results)


@app.subscribe(pubsub_name="pubsub", topic="orders")
def orders(event: v1.Event) -> TopicEventResponse:
    record("orders", event)
    return TopicEventResponse("success")


@app.subscribe(pubsub_name="pubsub", topic="orders", rule=Rule('event.type == "order.express"', 1))
def express(event: v1.Event) -> TopicEventResponse:
    record("express", event)
    return TopicEventResponse("success")


@app.subscribe(pubsub_name="pubsub", topic="flaky")
def flaky(event: v1.Event) -> TopicEventResponse:
    record("flaky", event)
    with lock:
        tries = len(got["flaky"])
    return TopicEventResponse("retry" if tries < 3 else "success")


@app.subscribe(pubsub_name="pubsub", topic="poison")
def poison(event: v1.Event) -> TopicEventResponse:
    record("poison", event)
    return TopicEventResponse("drop")


@app.subscribe(pubsub_name="pubsub", topic="doomed", dead_letter_topic="doomed-dead")
def doomed(event: v1.Event) -> TopicEventResponse:
    record("doomed", event)
    return TopicEventResponse("retry")


@app.subscribe(pubsub_name="pubsub", topic="doomed-dead")
def dead(event: v1.Event) -> TopicEventResponse:
    record("dead", event)
    return TopicEventResponse("success")


# Any topic of the pubsub delivered with the empty path: here, the declarative bulk
# subscription's. Each entry is answered by its data: RETRY the first time, DROP, or SUCCESS.
@app.subscribe(pubsub_name="pubsub", topic="any", disable_topic_validation=True)
def any_topic(event: v1.Event) -> TopicEventResponse:
    calls = [f.function for f in inspect.stack()]
    via = next((c for c in calls if c.startswith("On")), "?")
    record("bulk", event, via=via, topic=event.subject)
    data = json.loads(event.data) if isinstance(event.data, (bytes, str)) else event.data
    with lock:
        seen = sum(1 for e in got["bulk"] if e["id"] == event.id)
    if data.get("answer") == "retry" and seen == 1:
        return TopicEventResponse("retry")
    if data.get("answer") == "drop":
        return TopicEventResponse("drop")
    return TopicEventResponse("success")


# With HEALTH_FILE set, AppCallbackHealthCheck answers OK while that file exists (and
# fails otherwise); the probes are counted in RESULTS.
health_file = os.environ.get("HEALTH_FILE")
if health_file:

    def health():
        with lock:
            got["probes"] = got.get("probes", 0) + 1
            dump()
        if not os.path.exists(health_file):
            raise RuntimeError("not ready")

    app.register_health_check(health)


app.run(int(os.environ["APP_PORT"]))
