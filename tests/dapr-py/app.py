"""A Dapr app built with dapr-ext-grpc, receiving through evrouter's gRPC delivery: a plain
subscription, a routing rule, RETRY then SUCCESS, DROP, and always RETRY with a dead-letter
topic. Writes what it got to RESULTS (a JSON file) after every event.

Env: APP_PORT (this app's gRPC port), RESULTS (the file)."""

import json
import os
import threading

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, Rule

app = App()
lock = threading.Lock()
got = {"orders": [], "express": [], "flaky": [], "poison": [], "doomed": [], "dead": []}
results = os.environ["RESULTS"]


def record(name, event: v1.Event):
    data = event.data
    if isinstance(data, bytes):
        data = data.decode()
    try:
        data = json.loads(data)
    except (TypeError, ValueError):
        pass
    with lock:
        got[name].append({"id": event.id, "type": event.type, "data": data})
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


app.run(int(os.environ["APP_PORT"]))
