"use strict";
// Live view of /api/events (server-sent events): one "state" event = {serverinfo, clients, proxies}.
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = String(text);
    tr.appendChild(td);
  }
  return tr;
}
function render(state) {
  const info = state.serverinfo;
  document.getElementById("version").textContent = info.version;
  document.getElementById("totals").textContent =
    `${info.clients} clients, ${info.proxies} proxies, ${info.connections} connections, ` +
    `in ${bytes(info.bytes_in)}, out ${bytes(info.bytes_out)}`;
  document.getElementById("clients").replaceChildren(...state.clients.map(c => row([
    c.user, c.client_id, c.address, new Date(c.connected_since * 1000).toLocaleString(), c.proxies.join(", "),
  ])));
  document.getElementById("proxies").replaceChildren(...state.proxies.map(p => row([
    p.name, p.type, p.status, p.user, p.urls.length ? p.urls.join(" ") : p.remote_port,
    p.stats.connections, bytes(p.stats.bytes_in), bytes(p.stats.bytes_out),
  ], p.status)));
  document.getElementById("status").textContent = "live, updated " + new Date().toLocaleTimeString();
}
const events = new EventSource("api/events");
events.addEventListener("state", e => render(JSON.parse(e.data)));
events.onerror = () => { document.getElementById("status").textContent = "disconnected, retrying…"; };
