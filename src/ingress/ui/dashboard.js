// The dashboard's script (served as /ui/dashboard.js; the page's Content-Security-Policy
// allows no inline script). Every value from the server is set as text or as a plain
// attribute, never parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, digits) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
const SVG = "http://www.w3.org/2000/svg";

// An element `tag` with `attributes` and, as text, `text`.
function element(tag, attributes, text) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

// A table cell holding `text` (or the nodes of an array).
function cell(content, attributes) {
  const td = element("td", attributes);
  if (Array.isArray(content)) td.append(...content);
  else td.textContent = String(content);
  return td;
}

function line(svg, series, colours) {
  const all = series.flat().filter((v) => Number.isFinite(v));
  const max = Math.max(1e-9, ...all) * 1.1;
  const n = Math.max(2, series[0].length);
  svg.replaceChildren();
  series.forEach((values, i) => {
    const points = values.map((v, x) => `${(x * 600 / (n - 1)).toFixed(1)},${(140 - (v / max) * 135).toFixed(1)}`).join(" ");
    const polyline = document.createElementNS(SVG, "polyline");
    for (const [name, value] of [["fill", "none"], ["stroke", colours[i]], ["stroke-width", "2"], ["points", points]]) {
      polyline.setAttribute(name, value);
    }
    svg.appendChild(polyline);
  });
  const label = document.createElementNS(SVG, "text");
  for (const [name, value] of [["x", "4"], ["y", "12"], ["font-size", "11"], ["fill", "#667"]]) {
    label.setAttribute(name, value);
  }
  label.textContent = max.toFixed(max < 10 ? 2 : 0);
  svg.appendChild(label);
}

function instanceRow(i, own) {
  const tr = element("tr");
  tr.append(cell(`${i.instance}${i.instance === own ? " (this one)" : ""}`), cell(i.partitions));
  return tr;
}

function subscriptionRow(s) {
  const breakers = [];
  s.breakers.forEach((b, n) => {
    if (n > 0) breakers.push(document.createTextNode(" "));
    breakers.push(element("span", {class: b.open ? "open" : "closed", title: b.endpoint}, b.open ? "open" : "closed"));
  });
  const dlq = element("a", {href: `/v1/dlq/${encodeURIComponent(s.name)}`}, fmt(s.dead_letters, 0));
  const tr = element("tr", {"data-subscription": s.name, "data-delivered": s.delivered});
  tr.append(
    cell(s.name),
    cell(s.delivered, {class: "delivered"}),
    cell(fmt(s.lag_events, 0)),
    cell(fmt(s.lag_seconds, 1)),
    cell(s.in_flight),
    cell(s.retried),
    cell(s.dead_lettered),
    cell([dlq]),
    cell(breakers),
  );
  return tr;
}

function draw(data) {
  $("instance").textContent = data.instance;
  $("owned").textContent = data.owned_partitions;
  const redis = data.redis;
  $("redis").textContent = !redis.up ? "down" :
    (redis.max_bytes ? `${(100 * redis.used_bytes / redis.max_bytes).toFixed(1)}% of ${(redis.max_bytes / 1048576).toFixed(0)} MiB`
                     : `${(redis.used_bytes / 1048576).toFixed(1)} MiB (no maxmemory)`);
  $("updated").textContent = new Date(data.at_ms).toLocaleTimeString();
  $("updated").dataset.atMs = data.at_ms;
  const t = data.timeline;
  const last = t.length ? t[t.length - 1] : null;
  $("published-rate").textContent = last ? fmt(last.published_per_s, 0) : "–";
  $("delivered-rate").textContent = last ? fmt(last.delivered_per_s, 0) : "–";
  ["p50", "p95", "p99"].forEach((q, i) => {
    $(`publish-${q}`).textContent = last ? fmt(last.publish_ms[i], 2) : "–";
    $(`e2e-${q}`).textContent = last ? fmt(last.end_to_end_ms[i], 2) : "–";
  });
  line($("rates-chart"), [t.map((p) => p.published_per_s), t.map((p) => p.delivered_per_s)], ["#1565c0", "#2e7d32"]);
  line($("publish-chart"), [0, 1, 2].map((i) => t.map((p) => p.publish_ms[i])), ["#90a4ae", "#1565c0", "#c62828"]);
  line($("e2e-chart"), [0, 1, 2].map((i) => t.map((p) => p.end_to_end_ms[i])), ["#90a4ae", "#1565c0", "#c62828"]);
  $("instances").replaceChildren(...data.instances.map((i) => instanceRow(i, data.instance)));
  $("subscriptions").replaceChildren(...data.subscriptions.map(subscriptionRow));
}

async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem("evrouter-token");
  if (token) headers.authorization = `Bearer ${token}`;
  try {
    const response = await fetch("/v1/dashboard", {headers});
    if (response.status === 401 || response.status === 403) {
      $("auth").hidden = false;
      return;
    }
    if (response.ok) {
      $("auth").hidden = true;
      draw(await response.json());
    }
  } catch (e) {
    $("updated").textContent = `unreachable (${e})`;
  }
}

$("save").addEventListener("click", () => {
  sessionStorage.setItem("evrouter-token", $("token").value);
  refresh();
});
refresh();
setInterval(refresh, 1000);
