"use strict";
// The server's dashboard. A "state" server-sent event from api/events every 2 s ({serverinfo, clients,
// proxies}) updates the page in place. A proxy's traffic per minute comes from
// api/proxies/{name}/traffic when the proxy is first seen (and every REFETCH_MS), and grows between
// fetches by what its byte counters grew in the state events. Everything the server sends is set as
// text, never parsed as HTML.

const REFETCH_MS = 5 * 60 * 1000;
const MAX_FETCHES = 4;
const SPARK_MINUTES = 60;
const RETRY_MS = 5000;
const TYPE_ORDER = ["tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp", "xudp"];
const SVG = "http://www.w3.org/2000/svg";

const $ = id => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0) : Math.round(n)) + " " + units[i];
}

const rate = perSecond => bytes(perSecond) + "/s";

function duration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min`;
  return `${s} s`;
}

const clock = seconds =>
  new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

/** The proxy named in the address's #fragment (a link to one proxy's chart), if any. */
function hashName() {
  try {
    return decodeURIComponent(location.hash.slice(1)) || null;
  } catch (e) {
    return null; // not percent-encoded text: ignored
  }
}

// -- state ---------------------------------------------------------------------------------------

const view = {
  /** name -> {info, row, cells, series: Map(minute -> [in, out]), last, rate, fetchedAt, fetching} */
  proxies: new Map(),
  /** type -> {section, tbody, count} */
  groups: new Map(),
  /** "user/client_id" -> {row, cells} */
  clients: new Map(),
  selected: hashName(),
  range: 180,
  /** The server's clock at the latest event, in seconds. */
  now: 0,
  fetches: 0,
};

// -- traffic history -----------------------------------------------------------------------------

function addTraffic(proxy, bytesIn, bytesOut) {
  const minute = Math.floor(view.now / 60);
  const slot = proxy.series.get(minute) || [0, 0];
  slot[0] += bytesIn; slot[1] += bytesOut;
  proxy.series.set(minute, slot);
  const oldest = minute - 24 * 60;
  for (const key of proxy.series.keys()) if (key <= oldest) proxy.series.delete(key);
}

function fetchTraffic() {
  const due = [...view.proxies.values()]
    .filter(p => !p.fetching && (p.fetchedAt === 0 || Date.now() - p.fetchedAt > REFETCH_MS))
    .sort((a, b) => (b.info.name === view.selected) - (a.info.name === view.selected) || a.fetchedAt - b.fetchedAt);
  for (const proxy of due) {
    if (view.fetches >= MAX_FETCHES) return;
    view.fetches++;
    proxy.fetching = true;
    fetch(`api/proxies/${encodeURIComponent(proxy.info.name)}/traffic`, { cache: "no-store" })
      .then(resp => (resp.ok ? resp.json() : { points: [] }))
      .then(body => {
        proxy.series = new Map(body.points.map(p => [Math.floor(p.t / 60), [p.bytes_in, p.bytes_out]]));
        proxy.fetchedAt = Date.now();
        drawProxy(proxy);
        if (proxy.info.name === view.selected) drawChart();
      })
      .catch(() => { proxy.fetchedAt = Date.now() - REFETCH_MS + RETRY_MS; })
      .finally(() => { proxy.fetching = false; view.fetches--; fetchTraffic(); });
  }
}

// -- charts --------------------------------------------------------------------------------------

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

/** Bytes per second of each minute of the last `minutes`, oldest first: [[in...], [out...]]. The
 * current minute is divided by the seconds it has had so far (at least 10, so it does not jump). */
function perSecond(series, minutes) {
  const last = Math.floor(view.now / 60);
  const ins = [], outs = [];
  for (let m = last - minutes + 1; m <= last; m++) {
    const slot = series.get(m) || [0, 0];
    const seconds = m === last ? Math.min(60, Math.max(10, view.now - m * 60)) : 60;
    ins.push(slot[0] / seconds);
    outs.push(slot[1] / seconds);
  }
  return [ins, outs];
}

/** A round top for the y axis in the unit `bytes` would print (KiB, MiB, ...), so the grid reads well. */
function niceMax(value) {
  if (value <= 0) return 1024;
  const unit = Math.pow(1024, Math.max(0, Math.floor(Math.log(value) / Math.log(1024))));
  const scaled = value / unit;
  const power = Math.pow(10, Math.floor(Math.log10(scaled)));
  const step = [1, 2, 4, 5, 8, 10].find(s => s * power >= scaled);
  return step * power * unit;
}

/** Draw in and out as lines over areas into `svg` (width x height user units). */
function plot(svg, series, minutes, width, height, pad) {
  const [ins, outs] = perSecond(series, minutes);
  const top = niceMax(Math.max(...ins, ...outs));
  const x = i => pad.left + (i / Math.max(1, minutes - 1)) * (width - pad.left - pad.right);
  const y = v => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);
  const base = y(0);
  svg.append(svgEl("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: base, y2: base }));
  for (const [name, values] of [["in", ins], ["out", outs]]) {
    if (!values.some(v => v > 0)) continue; // nothing to draw over the base line
    const line = values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)}`).join("");
    svg.append(svgEl("path", { class: `area-${name}`, d: `${line}L${x(values.length - 1).toFixed(1)} ${base}L${x(0).toFixed(1)} ${base}Z` }));
    svg.append(svgEl("path", { class: `line-${name}`, d: line }));
  }
  svg.dataset.points = String(ins.filter((v, i) => v > 0 || outs[i] > 0).length);
  svg.dataset.max = String(Math.max(...ins, ...outs));
  return { top, x, y };
}

function drawSpark(svg, series) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", "0 0 120 28");
  svg.setAttribute("preserveAspectRatio", "none");
  plot(svg, series, SPARK_MINUTES, 120, 28, { left: 1, right: 1, top: 2, bottom: 1 });
}

function drawChart() {
  const section = $("traffic");
  const proxy = view.proxies.get(view.selected);
  section.hidden = !proxy;
  if (!proxy) return;
  setText($("detail-name"), proxy.info.name);
  const svg = $("chart");
  const width = Math.max(280, Math.round(svg.getBoundingClientRect().width || 600));
  const height = 220;
  const pad = { left: 70, right: 12, top: 10, bottom: 24 };
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.proxy = proxy.info.name;
  const minutes = view.range;
  // Grid first, so the lines are drawn over it.
  const grid = svgEl("g", {});
  svg.append(grid);
  const { top, x, y } = plot(svg, proxy.series, minutes, width, height, pad);
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const gy = y(top * f).toFixed(1);
    grid.append(svgEl("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: gy, y2: gy }));
    const label = svgEl("text", { class: "tick", x: pad.left - 6, y: Number(gy) + 4, "text-anchor": "end" });
    label.textContent = f ? rate(top * f) : "0";
    grid.append(label);
  }
  const most = Math.max(2, Math.floor((width - pad.left - pad.right) / 70)); // labels that fit
  const every = [5, 10, 15, 30, 60, 120, 180, 240, 360, 720].find(m => minutes / m <= most) || 720;
  const first = Math.floor(view.now / 60) - minutes + 1;
  for (let i = 0; i < minutes; i++) {
    if ((first + i) % every) continue;
    const at = x(i);
    const anchor = at > width - pad.right - 20 ? "end" : at < pad.left + 20 ? "start" : "middle";
    const label = svgEl("text", { class: "tick", x: at.toFixed(1), y: height - 6, "text-anchor": anchor });
    label.textContent = clock((first + i) * 60);
    grid.append(label);
  }
}

// -- proxies -------------------------------------------------------------------------------------

function group(type) {
  let found = view.groups.get(type);
  if (found) return found;
  const tbody = el("tbody");
  const count = el("span", { class: "count" });
  const head = el("tr", {}, ...["name", "status", "reached at", "client", "connections", "in", "out", "last hour"]
    .map((text, i) => el("th", { class: i >= 4 && i <= 6 ? "num" : "", text })));
  const section = el("section", { class: "proxy-group", "data-type": type },
    el("h3", {}, type + " ", count),
    el("div", { class: "scroll" }, el("table", { class: "stack" }, el("thead", {}, head), tbody)));
  found = { section, tbody, count };
  view.groups.set(type, found);
  const rank = t => (TYPE_ORDER.includes(t) ? TYPE_ORDER.indexOf(t) : TYPE_ORDER.length);
  const after = [...view.groups.entries()]
    .filter(([t]) => t !== type && (rank(t) > rank(type) || (rank(t) === rank(type) && t > type)))
    .sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : 1))[0];
  $("proxies").insertBefore(section, after ? after[1].section : null);
  return found;
}

function newProxyRow(info) {
  const cells = {
    name: el("td", { class: "name", "data-label": "name" }),
    status: el("td", { class: "status", "data-label": "status" }),
    urls: el("td", { class: "urls", "data-label": "reached at" }),
    client: el("td", { class: "client", "data-label": "client" }),
    connections: el("td", { class: "connections num", "data-label": "connections" }),
    bytesIn: el("td", { class: "bytes-in num", "data-label": "in" }),
    bytesOut: el("td", { class: "bytes-out num", "data-label": "out" }),
    spark: el("td", { class: "spark", "data-label": "last hour" }),
  };
  cells.sparkSvg = svgEl("svg", { class: "spark", "aria-hidden": "true" });
  cells.spark.append(cells.sparkSvg);
  const row = el("tr", { class: "proxy", "data-proxy": info.name, tabindex: "0" }, ...Object.values(cells).filter(c => c.tagName === "TD"));
  const select = () => {
    view.selected = info.name;
    history.replaceState(null, "", "#" + encodeURIComponent(info.name));
    for (const p of view.proxies.values()) p.row.setAttribute("aria-selected", String(p.info.name === view.selected));
    drawChart();
  };
  row.addEventListener("click", select);
  row.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(); } });
  return { row, cells };
}

function reachedAt(info) {
  const found = publicAt(info);
  // A port mapping on the client's router (direct = "auto"): visitors may skip the server.
  if (info.direct) found.push(el("div", { class: "mono muted", text: "direct " + info.direct }));
  return found;
}

function publicAt(info) {
  if (info.urls.length) {
    return info.urls.map(url => (/^https?:\/\//.test(url)
      ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: url })
      : el("span", { text: url })));
  }
  if (info.remote_port) return [el("span", { class: "mono", text: "port " + info.remote_port })];
  return [el("span", { class: "muted", text: "visitors only" })];
}

function drawProxy(proxy) {
  const { info, cells } = proxy;
  proxy.row.dataset.status = info.status;
  const group = info.group ? `group ${info.group} · ${info.group_members} members` : "";
  if (cells.name.dataset.shown !== info.name + group) {
    cells.name.dataset.shown = info.name + group;
    cells.name.replaceChildren(info.name, ...(group ? [el("div", { class: "group muted", text: group })] : []));
  }
  const badge = el("span", { class: `badge ${info.status}`, text: info.status });
  if (info.status === "offline") badge.title = "last seen " + new Date(info.last_seen * 1000).toLocaleString();
  const path = info.path !== "relay" ? [" ", el("span", { class: "badge direct", text: info.path })] : [];
  cells.status.replaceChildren(badge, ...path);
  const urls = reachedAt(info);
  if (cells.urls.textContent !== urls.map(u => u.textContent).join("")) cells.urls.replaceChildren(...urls);
  setText(cells.client, info.user === "default" ? info.client_id : `${info.client_id} (${info.user})`);
  setText(cells.connections, String(info.stats.connections));
  cells.connections.dataset.value = info.stats.connections;
  for (const [cell, total, perSec, dir] of [
    [cells.bytesIn, info.stats.bytes_in, proxy.rate[0], "in"],
    [cells.bytesOut, info.stats.bytes_out, proxy.rate[1], "out"],
  ]) {
    cell.dataset.value = total;
    cell.replaceChildren(el("div", {}, el("span", { class: "total", text: bytes(total) }),
      el("div", { class: "rate" }, el("span", { class: dir, text: perSec > 0 ? rate(perSec) : "" }))));
  }
  drawSpark(cells.sparkSvg, proxy.series);
}

function renderProxies(list) {
  const seen = new Set();
  const counts = new Map();
  for (const info of list) {
    seen.add(info.name);
    let proxy = view.proxies.get(info.name);
    if (proxy && proxy.info.type !== info.type) { proxy.row.remove(); proxy = undefined; }
    if (!proxy) {
      proxy = { info, series: new Map(), rate: [0, 0], fetchedAt: 0, fetching: false,
        last: [info.stats.bytes_in, info.stats.bytes_out], ...newProxyRow(info) };
      view.proxies.set(info.name, proxy);
    } else {
      let dIn = info.stats.bytes_in - proxy.last[0], dOut = info.stats.bytes_out - proxy.last[1];
      if (dIn < 0 || dOut < 0) { dIn = info.stats.bytes_in; dOut = info.stats.bytes_out; } // reopened
      const seconds = Math.max(0.001, view.now - proxy.at);
      proxy.rate = [dIn / seconds, dOut / seconds];
      if (dIn || dOut) addTraffic(proxy, dIn, dOut);
      proxy.info = info;
      proxy.last = [info.stats.bytes_in, info.stats.bytes_out];
    }
    proxy.at = view.now;
    const g = group(info.type);
    counts.set(info.type, (counts.get(info.type) || 0) + 1);
    g.tbody.append(proxy.row); // in the server's order (by name); a no-op move when already there
    drawProxy(proxy);
  }
  for (const [name, proxy] of view.proxies) {
    if (!seen.has(name)) { proxy.row.remove(); view.proxies.delete(name); }
  }
  for (const [type, g] of view.groups) {
    const n = counts.get(type) || 0;
    setText(g.count, String(n));
    g.section.hidden = n === 0;
  }
  if (!view.proxies.has(view.selected)) {
    const first = list.find(p => p.status === "online") || list[0];
    view.selected = first ? first.name : null;
  }
  for (const p of view.proxies.values()) p.row.setAttribute("aria-selected", String(p.info.name === view.selected));
  $("empty-proxies").hidden = list.length > 0;
}

// -- clients -------------------------------------------------------------------------------------

function renderClients(list) {
  const seen = new Set();
  const tbody = $("clients");
  for (const c of list) {
    const key = `${c.user}/${c.client_id}`;
    seen.add(key);
    let entry = view.clients.get(key);
    if (!entry) {
      const cells = Object.fromEntries(["user", "name", "version", "address", "since", "path", "proxies"]
        .map(name => [name, el("td", { class: name, "data-label": name === "since" ? "connected since" : name })]));
      entry = { cells, row: el("tr", { class: "client", "data-client-id": c.client_id, "data-user": c.user }, ...Object.values(cells)) };
      view.clients.set(key, entry);
    }
    const { cells } = entry;
    setText(cells.user, c.user);
    setText(cells.name, c.client_id);
    setText(cells.version, c.version || "–");
    setText(cells.address, c.address);
    setText(cells.since, `${clock(c.connected_since)} (${duration(view.now - c.connected_since)})`);
    cells.since.title = new Date(c.connected_since * 1000).toLocaleString() + `, last heard ${duration(c.idle_s)} ago`;
    const path = c.path || "relay";
    if (cells.path.textContent !== path) {
      cells.path.replaceChildren(el("span", { class: `badge ${path === "relay" ? "relay" : "direct"}`, text: path }));
    }
    setText(cells.proxies, c.proxies.length ? [...c.proxies].sort().join(", ") : "–");
    tbody.append(entry.row);
  }
  for (const [key, entry] of view.clients) {
    if (!seen.has(key)) { entry.row.remove(); view.clients.delete(key); }
  }
  $("clients-panel").hidden = list.length === 0;
  $("empty-clients").hidden = list.length > 0;
}

// -- the whole page ------------------------------------------------------------------------------

function renderSummary(info) {
  setText($("version"), info.version);
  setText($("server-address"), info.address);
  setText($("uptime"), duration(info.uptime_s));
  const fp = $("fingerprint");
  setText(fp, info.fingerprint ? info.fingerprint.slice(0, 23) + "…" : "");
  fp.title = "certificate fingerprint " + info.fingerprint;
  const totals = { "total-clients": info.clients, "total-proxies": info.proxies, "total-connections": info.connections };
  for (const [id, value] of Object.entries(totals)) {
    setText($(id), String(value));
    $(id).dataset.value = value;
  }
  setText($("proxies-by-type"), Object.entries(info.proxies_by_type).filter(([, n]) => n).map(([t, n]) => `${n} ${t}`).join(" · "));
  for (const [id, value] of [["total-in", info.bytes_in], ["total-out", info.bytes_out]]) {
    setText($(id), bytes(value));
    $(id).dataset.value = value;
  }
  let rateIn = 0, rateOut = 0;
  for (const p of view.proxies.values()) if (p.info.status === "online") { rateIn += p.rate[0]; rateOut += p.rate[1]; }
  setText($("rate-in"), rateIn > 0 ? rate(rateIn) : "");
  setText($("rate-out"), rateOut > 0 ? rate(rateOut) : "");
}

function render(state) {
  const info = state.serverinfo;
  view.now = info.started_at + info.uptime_s;
  renderProxies(state.proxies);
  renderClients(state.clients);
  renderSummary(info);
  drawChart();
  fetchTraffic();
  const status = $("status");
  status.dataset.state = "live";
  setText($("status-text"), "live · " + new Date().toLocaleTimeString());
}

function connect() {
  const events = new EventSource("api/events");
  events.addEventListener("state", e => render(JSON.parse(e.data)));
  events.onerror = () => {
    $("status").dataset.state = "down";
    setText($("status-text"), "disconnected, reconnecting…");
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, RETRY_MS); // refused: try again later
  };
}

for (const button of $("chart-range").querySelectorAll("button")) {
  button.addEventListener("click", () => {
    view.range = Number(button.dataset.range);
    for (const b of $("chart-range").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
    drawChart();
  });
}
window.addEventListener("resize", () => drawChart());
connect();
