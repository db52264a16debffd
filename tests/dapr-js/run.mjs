// evrouter as a Dapr sidecar, driven by the real Dapr JavaScript SDK over HTTP.
//
// A subscriber app (DaprServer) declares its subscriptions — a plain one, routing rules,
// RETRY then SUCCESS, DROP, a dead-letter topic, a bulk subscription — and a publisher
// (DaprClient) publishes objects, text, a CloudEvent and a bulk publish through evrouter.
// Exits 0 when every callback got what it should, else prints what is missing and
// exits 1.
//
// Env: DAPR_HTTP_PORT (evrouter's port), APP_PORT (this app's port), APP_ID (the id
// evrouter knows this app by, for POST /v1/dapr/apps/{id}/refresh); PROTOCOL=grpc runs
// the client and the server in the SDK's gRPC mode, against DAPR_GRPC_PORT.
import {
  CommunicationProtocolEnum,
  DaprClient,
  DaprPubSubStatusEnum,
  DaprServer,
} from "@dapr/dapr";

const daprHost = "127.0.0.1";
const httpPort = process.env.DAPR_HTTP_PORT ?? "3500";
const grpc = process.env.PROTOCOL === "grpc";
const daprPort = grpc ? (process.env.DAPR_GRPC_PORT ?? "50001") : httpPort;
const protocol = grpc ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP;
const appPort = process.env.APP_PORT ?? "3000";
const appId = process.env.APP_ID ?? "js-app";
const pubsub = "pubsub";
const within = Number(process.env.WITHIN_MS ?? 30000);

const got = {
  orders: [],
  express: [],
  standard: [],
  other: [],
  flaky: [],
  poison: [],
  doomed: [],
  dead: [],
  bulk: [],
};

const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: appPort,
  communicationProtocol: protocol,
  clientOptions: { daprHost, daprPort, communicationProtocol: protocol },
});

await server.pubsub.subscribe(pubsub, "orders", async (data) => {
  got.orders.push(data);
  return DaprPubSubStatusEnum.SUCCESS;
});

// Routing rules: one handler per route.
await server.pubsub.subscribeWithOptions(pubsub, "shipments", {
  route: {
    rules: [
      { match: 'event.type == "shipment.express"', path: "express" },
      { match: 'event.type == "shipment.standard" && event.data.weight < 10', path: "standard" },
    ],
    default: "other",
  },
});
server.pubsub.subscribeToRoute(pubsub, "shipments", "express", async (data) => {
  got.express.push(data);
});
server.pubsub.subscribeToRoute(pubsub, "shipments", "standard", async (data) => {
  got.standard.push(data);
});
server.pubsub.subscribeToRoute(pubsub, "shipments", "other", async (data) => {
  got.other.push(data);
});

// RETRY the first time, then SUCCESS.
await server.pubsub.subscribe(pubsub, "flaky", async (data) => {
  got.flaky.push(data);
  return got.flaky.length === 1 ? DaprPubSubStatusEnum.RETRY : DaprPubSubStatusEnum.SUCCESS;
});

// DROP: never delivered again.
await server.pubsub.subscribe(pubsub, "poison", async (data) => {
  got.poison.push(data);
  return DaprPubSubStatusEnum.DROP;
});

// Always RETRY: after its attempts the event goes to the dead-letter topic.
await server.pubsub.subscribeWithOptions(pubsub, "doomed", {
  deadLetterTopic: "doomed-dead",
  callback: async (data) => {
    got.doomed.push(data);
    return DaprPubSubStatusEnum.RETRY;
  },
});
await server.pubsub.subscribe(pubsub, "doomed-dead", async (data) => {
  got.dead.push(data);
});

await server.pubsub.subscribeBulk(
  pubsub,
  "bulk-orders",
  async (data) => {
    got.bulk.push(data);
    return DaprPubSubStatusEnum.SUCCESS;
  },
  { maxMessagesCount: 10, maxAwaitDurationMs: 100 },
);

// Listens, then waits for the sidecar (GET /v1.0/metadata).
await server.start();

// evrouter reads /dapr/subscribe on an interval; ask for it now so that nothing is
// published before the subscriptions exist.
const refreshed = await fetch(`http://${daprHost}:${httpPort}/v1/dapr/apps/${appId}/refresh`, {
  method: "POST",
});
if (refreshed.status !== 200) {
  console.error("refresh failed:", refreshed.status, await refreshed.text());
  process.exit(1);
}
const listed = await refreshed.json();

const client = new DaprClient({
  daprHost,
  daprPort,
  communicationProtocol: protocol,
});
await client.start();

const results = [];
results.push(await client.pubsub.publish(pubsub, "orders", { orderId: 1, item: "apple" }));
results.push(await client.pubsub.publish(pubsub, "orders", "plain text order"));
results.push(
  await client.pubsub.publish(pubsub, "shipments", {
    specversion: "1.0",
    id: "ship-1",
    source: "warehouse",
    type: "shipment.express",
    datacontenttype: "application/json",
    data: { shipmentId: "s1" },
  }),
);
results.push(
  await client.pubsub.publish(pubsub, "shipments", {
    specversion: "1.0",
    id: "ship-2",
    source: "warehouse",
    type: "shipment.standard",
    datacontenttype: "application/json",
    data: { shipmentId: "s2", weight: 3 },
  }),
);
results.push(await client.pubsub.publish(pubsub, "shipments", { shipmentId: "s3" }));
results.push(await client.pubsub.publish(pubsub, "flaky", { n: 1 }));
results.push(await client.pubsub.publish(pubsub, "poison", { n: 1 }));
results.push(await client.pubsub.publish(pubsub, "doomed", { n: 1 }));
const bulk = await client.pubsub.publishBulk(pubsub, "bulk-orders", [
  { orderId: 10 },
  { orderId: 11 },
  { entryID: "explicit-12", event: { orderId: 12 }, contentType: "application/json" },
]);
// Over HTTP the SDK answers `{error}`; over gRPC it may throw.
const unknown = await client.pubsub
  .publish("no-such-pubsub", "orders", { x: 1 })
  .catch((error) => ({ error }));

const errors = results.filter((r) => r && r.error);
const expectations = () => {
  const missing = [];
  const want = (name, ok) => {
    if (!ok) missing.push(name);
  };
  want("no publish errors", errors.length === 0);
  want("bulk publish: no failed messages", bulk.failedMessages.length === 0);
  want("publish to an unknown pubsub fails", Boolean(unknown && unknown.error));
  want("orders: object", got.orders.some((d) => d && d.orderId === 1 && d.item === "apple"));
  want("orders: text", got.orders.includes("plain text order"));
  want("shipments: express rule", got.express.length === 1 && got.express[0].shipmentId === "s1");
  want("shipments: standard rule", got.standard.length === 1 && got.standard[0].weight === 3);
  want("shipments: default route", got.other.length === 1 && got.other[0].shipmentId === "s3");
  want("flaky: RETRY then SUCCESS", got.flaky.length === 2);
  want("poison: DROP once", got.poison.length === 1);
  want("doomed: retried", got.doomed.length >= 2);
  want("doomed: dead-letter topic", got.dead.length === 1 && got.dead[0].n === 1);
  want(
    "bulk: three entries",
    [10, 11, 12].every((id) => got.bulk.some((d) => d && d.orderId === id)),
  );
  return missing;
};

const deadline = Date.now() + within;
let missing = expectations();
while (missing.length > 0 && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 100));
  missing = expectations();
}
// Nothing more may arrive for what was settled (DROP, SUCCESS after RETRY).
await new Promise((r) => setTimeout(r, 500));
missing = expectations();

console.log(
  JSON.stringify({ subscriptions: listed.subscriptions, missing, got, errors: errors.map(String) }),
);
// The gRPC server's stop waits for open HTTP/2 connections (evrouter keeps its own to
// the app): give stopping two seconds, then leave.
await Promise.race([
  Promise.all([client.stop(), server.stop()]),
  new Promise((resolve) => setTimeout(resolve, 2000)),
]);
process.exit(missing.length === 0 ? 0 : 1);
