// The trace page's script (served as /ui/trace.js; the page's Content-Security-Policy
// allows no inline script). Event ids, types, keys, subscriptions and error strings come
// from publishers and subscribers: each is set as text or as a plain attribute, never
// parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const kind = (fate) => fate === "delivered" ? "delivered" : fate === "retried" ? "retried" : "failed";

function mark(parent, tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  parent.appendChild(el);
  return el;
}

// What an outcome says in one line: subscription, fate, status and error.
function said(o) {
  return `${o.subscription}: ${o.fate}${o.status ? " " + o.status : ""}${o.error ? ` (${o.error})` : ""}`;
}

function draw(trace) {
  const events = trace.events || [];
  const svg = $("timeline");
  svg.replaceChildren();
  const rowH = 22, left = 170, width = svg.clientWidth || 1000;
  svg.setAttribute("height", Math.max(60, events.length * rowH + 30));
  const times = [];
  for (const e of events) {
    times.push(Date.parse(e.received_at), Date.parse(e.stored_at));
    for (const o of e.outcomes) times.push(Date.parse(o.at));
  }
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const x = (t) => left + (width - left - 20) * (t - t0) / (t1 - t0);
  mark(svg, "text", {x: left, y: 14, "font-size": 11}).textContent = "0 ms";
  mark(svg, "text", {x: width - 80, y: 14, "font-size": 11}).textContent = `${(t1 - t0).toFixed(0)} ms`;
  events.forEach((e, i) => {
    const y = 30 + i * rowH;
    const row = mark(svg, "g", {"data-event": e.event_id});
    mark(row, "text", {x: 4, y: y + 4, "font-size": 11}).textContent = e.event_id;
    mark(svg, "line", {x1: left, x2: width - 20, y1: y, y2: y, stroke: "#eee"});
    mark(svg, "circle", {cx: x(Date.parse(e.received_at)), cy: y, r: 4, fill: "#1d2330", class: "publish"});
    const s = x(Date.parse(e.stored_at));
    mark(svg, "rect", {x: s - 4, y: y - 4, width: 8, height: 8, fill: "#5c6bc0", transform: `rotate(45 ${s} ${y})`, class: "stored"});
    for (const o of e.outcomes) {
      const m = mark(svg, "rect", {x: x(Date.parse(o.at)) - 4, y: y - 6, width: 8, height: 12,
        class: `outcome ${kind(o.fate)}`, "data-subscription": o.subscription, "data-fate": o.fate});
      mark(m, "title", {}).textContent = `${said(o)}, attempt ${o.attempt}, ${o.latency_ms} ms`;
    }
  });
  const rows = events.map((e) => {
    const tr = document.createElement("tr");
    for (const text of [e.event_id, e.event_type, e.key, e.stored_at, e.trace_id || ""]) {
      const td = document.createElement("td");
      td.textContent = text === null || text === undefined ? "" : String(text);
      tr.appendChild(td);
    }
    const outcomes = document.createElement("td");
    e.outcomes.forEach((o, n) => {
      if (n > 0) outcomes.appendChild(document.createTextNode(", "));
      const span = document.createElement("span");
      span.className = kind(o.fate);
      span.textContent = said(o);
      outcomes.appendChild(span);
    });
    tr.appendChild(outcomes);
    return tr;
  });
  $("events").replaceChildren(...rows);
  $("status").textContent = `${events.length} events, ${events.reduce((n, e) => n + e.outcomes.length, 0)} outcomes`;
}

async function load(cid) {
  if (!cid) return;
  const headers = {};
  const token = sessionStorage.getItem("evrouter-token");
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`/v1/traces/${encodeURIComponent(cid)}`, {headers});
  if (response.status === 401 || response.status === 403) { $("auth").hidden = false; return; }
  if (!response.ok) { $("status").textContent = `${response.status}: ${await response.text()}`; return; }
  $("auth").hidden = true;
  draw(await response.json());
}

$("pick").addEventListener("submit", (ev) => {
  ev.preventDefault();
  history.replaceState(null, "", `?correlation_id=${encodeURIComponent($("cid").value)}`);
  load($("cid").value);
});
$("save").addEventListener("click", () => {
  sessionStorage.setItem("evrouter-token", $("token").value);
  load($("cid").value);
});
const asked = new URLSearchParams(location.search).get("correlation_id");
if (asked) { $("cid").value = asked; load(asked); }
