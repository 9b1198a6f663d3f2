// The request inspector's page: polls /api/inspect every second and lists the requests, newest first;
// a row shows its details, a Replay button sends the request again (POST .../replay).
// Recorded requests come from strangers: everything is put in the page as text, never as HTML.
"use strict";

const POLL_MS = 1000;
let selected = null; // {proxy, id}
let busy = false;

function $(id) { return document.getElementById(id); }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function say(text, ok) {
  const status = $("status");
  status.textContent = text;
  status.className = ok ? "ok" : "";
}

async function api(method, path) {
  // Against the origin, not the page's URL: a page opened as http://user:pass@host/ may not fetch
  // relative URLs (they would carry the credentials); the browser sends its remembered basic auth.
  const url = new URL(path, window.location.origin);
  const response = await fetch(url, { method, credentials: "same-origin", cache: "no-store" });
  let doc = null;
  try { doc = await response.json(); } catch (e) { doc = null; }
  if (!response.ok) {
    throw new Error((doc && doc.error) || `HTTP ${response.status}`);
  }
  return doc;
}

function rowOf(proxy, req) {
  const row = document.createElement("tr");
  row.className = "request";
  if (req.state === "pending") row.classList.add("pending");
  if (req.state === "incomplete" || (req.status !== null && req.status >= 500)) row.classList.add("error");
  if (req.replay_of !== null) row.classList.add("replayed");
  row.dataset.proxy = proxy;
  row.dataset.id = String(req.id);
  if (selected && selected.proxy === proxy && selected.id === req.id) row.classList.add("selected");
  cell(row, new Date(req.time * 1000).toLocaleTimeString(), "time");
  cell(row, proxy, "proxy");
  cell(row, req.method, "method");
  cell(row, req.path, "path");
  cell(row, req.status === null ? req.state : req.status, "status");
  cell(row, req.duration_ms === null ? "" : req.duration_ms.toFixed(1), "duration");
  cell(row, req.response_size === null ? "" : req.response_size, "size");
  cell(row, req.remote, "remote");
  const td = cell(row, "", "actions");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "replay";
  button.textContent = "Replay";
  button.disabled = !req.replayable;
  button.title = req.replayable ? "send this request again" : "its body was not recorded whole";
  button.addEventListener("click", (event) => { event.stopPropagation(); replay(proxy, req.id); });
  td.appendChild(button);
  row.addEventListener("click", () => show(proxy, req.id));
  return row;
}

function fillProxies(proxies) {
  const select = $("proxy");
  const names = proxies.map((p) => p.name);
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (names.join("\n") === have.join("\n")) return;
  const current = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const name of names) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.appendChild(option);
  }
  select.value = names.includes(current) ? current : "";
}

async function refresh() {
  const doc = await api("GET", "/api/inspect");
  fillProxies(doc.proxies);
  const only = $("proxy").value;
  const rows = [];
  for (const proxy of doc.proxies) {
    if (only && proxy.name !== only) continue;
    for (const req of proxy.requests) rows.push([proxy.name, req]);
  }
  rows.sort((a, b) => b[1].time - a[1].time);
  const body = $("requests");
  body.replaceChildren(...rows.map(([proxy, req]) => rowOf(proxy, req)));
  $("empty").hidden = rows.length > 0;
}

function showHeaders(table, headers, truncated) {
  table.replaceChildren();
  for (const [name, value] of headers) {
    const row = document.createElement("tr");
    cell(row, name);
    cell(row, value);
    table.appendChild(row);
  }
  if (truncated) {
    const row = document.createElement("tr");
    cell(row, "…");
    cell(row, "more header fields, not recorded");
    table.appendChild(row);
  }
}

function showBody(pre, body) {
  if (!body || body.size === 0) { pre.textContent = "(no body)"; return; }
  let text = body.binary ? `(binary, ${body.size} bytes; first ${body.captured} as base64)\n${body.data}` : body.data;
  if (body.truncated) text += `\n… (${body.size} bytes in all, first ${body.captured} shown)`;
  if (!body.complete) text += "\n… (body not seen to its end)";
  pre.textContent = text;
}

async function show(proxy, id) {
  selected = { proxy, id };
  for (const row of document.querySelectorAll("tr.request")) {
    row.classList.toggle("selected", row.dataset.proxy === proxy && row.dataset.id === String(id));
  }
  let doc;
  try {
    doc = await api("GET", `/api/inspect/${encodeURIComponent(proxy)}/${id}`);
  } catch (e) {
    say(e.message);
    return;
  }
  $("detail").hidden = false;
  $("detail").dataset.proxy = proxy;
  $("detail").dataset.id = String(id);
  const status = doc.status === null ? doc.state : `${doc.status} ${doc.reason}`;
  $("detail-title").textContent = `${doc.method} ${doc.host}${doc.path} → ${status}`;
  const notes = [];
  if (doc.replay_of !== null) notes.push(`replay of request ${doc.replay_of}`);
  if (doc.note) notes.push(doc.note);
  if (doc.replay_refusal) notes.push(`not replayable: ${doc.replay_refusal}`);
  $("detail-note").textContent = notes.join("; ");
  const button = $("detail-replay");
  button.disabled = !doc.replayable;
  showHeaders($("request-headers"), doc.request.headers, doc.request.headers_truncated);
  showBody($("request-body"), doc.request.body);
  if (doc.response) {
    showHeaders($("response-headers"), doc.response.headers, doc.response.headers_truncated);
    showBody($("response-body"), doc.response.body);
  } else {
    $("response-headers").replaceChildren();
    $("response-body").textContent = "(no response yet)";
  }
}

async function replay(proxy, id) {
  say(`replaying request ${id} of ${proxy} …`, true);
  try {
    const doc = await api("POST", `/api/inspect/${encodeURIComponent(proxy)}/${id}/replay`);
    say(`request ${id} replayed as ${doc.id}: ${doc.status === null ? doc.state : doc.status}`, true);
    await refresh();
    await show(proxy, doc.id);
  } catch (e) {
    say(`replay failed: ${e.message}`);
  }
}

async function tick() {
  if (!busy && $("live").checked) {
    busy = true;
    try {
      await refresh();
      if ($("status").className === "" && $("status").textContent.startsWith("cannot")) say("");
    } catch (e) {
      say(`cannot load requests: ${e.message}`);
    } finally {
      busy = false;
    }
  }
  setTimeout(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("detail-replay").addEventListener("click", () => {
    const d = $("detail").dataset;
    replay(d.proxy, Number(d.id));
  });
  $("proxy").addEventListener("change", () => refresh().catch((e) => say(e.message)));
  tick();
});
