// mqtt-fte console: the REST API (/api/v1, the cookie set from ?token=) and the live stream (EventSource).
// Units: bytes in decimal MB (10^6) and MB/s, as elsewhere in mqtt-fte.
"use strict";
const $ = (s) => document.querySelector(s);
const TERMINAL = new Set(["complete", "partial", "failed", "cancelled", "recovery_timed_out"]);
const transfers = new Map();  // transfer_id -> row
let detailId = null;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function mb(n) { return n == null ? "" : (n / 1e6).toFixed(n < 1e7 ? 2 : 1) + " MB"; }
function rate(n) { return n == null ? "" : (n / 1e6).toFixed(2) + " MB/s"; }
function when(t) { return t ? esc(String(t).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z")) : ""; }
function pill(v) { return v ? `<span class="pill ${esc(v)}">${esc(v)}</span>` : ""; }
function short(id) { return `<code title="${esc(id)}">${esc(String(id).slice(0, 12))}</code>`; }

async function api(path, opts = {}) {
  const r = await fetch("/api/v1" + path, {credentials: "same-origin", ...opts});
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function renderAgents(list) {
  const el = $("#agents");
  if (!list.length) { el.innerHTML = '<p class="muted">no agent on the broker</p>'; return; }
  el.innerHTML = list.map((a) => `<div class="card"><b>${esc(a.name)}</b> ${pill(a.status)}
    ${a.verified ? "" : '<span class="pill bad" title="' + esc(a.problem) + '">unverified</span>'}
    <div class="muted">${esc(a.host || "")} · ${Object.keys(a.source_transfers || {}).length}/${Object.keys(a.destination_transfers || {}).length} transfers</div></div>`).join("");
}
const agents = new Map();
function agentChanged(a) { agents.set(a.name, a); renderAgents([...agents.values()].sort((x, y) => x.name < y.name ? -1 : 1)); }

function progress(t) {
  const total = t.bytes_total || 0, done = t.bytes_done || 0;
  const pct = total ? Math.min(100, Math.round(100 * done / total)) : (TERMINAL.has(t.state) ? 100 : 0);
  return `<span class="bar"><span style="width:${pct}%"></span></span> ${pct}% <span class="muted">${mb(done)} / ${mb(total)}</span>`;
}
function destinationsProgress(t) {  // a fan-out's live progress: a line per destination (behind, recovering)
  const ds = (t.destinations || []).filter((d) => d.state && d.bytes_done != null);
  if (!ds.length) return "";
  const each = (t.bytes_total || 0) / ds.length;
  return ds.map((d) => `<div class="muted">${esc(d.agent)} ${pill(d.state)} ${progress({bytes_total: each,
    bytes_done: d.bytes_done, state: d.state})}${d.recoveries ? " · " + esc(d.recoveries) + " recoveries" : ""}</div>`).join("");
}
function result(t) {
  if (t.result_code == null) return "";
  return `<span class="pill ${t.result_code === 0 ? "ok" : "bad"}" title="${esc(t.message || "")}">${esc(t.result_code)}</span> ${esc(t.result || "")}`;
}
function destinationsOf(t) {  // a fan-out's every destination (its outcomes, else the list); else the one
  const names = (t.destinations || []).map((d) => d.agent);
  return names.length ? names : (t.destination_agents && t.destination_agents.length ? t.destination_agents
    : [t.destination_agent || "?"]);
}
function route(t) { return `${esc(t.source_agent || "?")} → ${destinationsOf(t).map(esc).join(", ")}`; }
function flag(t) { return t.verified === false ? ` <span class="pill bad" title="${esc(t.problem)}">unverified</span>` : ""; }

function renderLive() {
  const rows = [...transfers.values()].filter((t) => t.live !== false && (!TERMINAL.has(t.state) || t._recent))
    .sort((a, b) => String(b.created || b.updated || "").localeCompare(String(a.created || a.updated || "")));
  $("#live tbody").innerHTML = rows.map((t) => `<tr class="row" data-id="${esc(t.transfer_id)}">
    <td>${short(t.transfer_id)}${flag(t)}</td><td>${esc(t.job_name || "")}</td>
    <td>${route(t)}</td><td>${pill(t.state)}</td>
    <td>${progress(t)}${destinationsProgress(t)}</td><td>${TERMINAL.has(t.state) ? "" : rate(t.rate_bytes_per_second)}</td><td>${esc(t.recoveries ?? "")}</td>
    <td>${esc(t.last_stall || "")}</td><td>${result(t)}</td>
    <td>${TERMINAL.has(t.state) ? "" : `<button data-cancel="${esc(t.transfer_id)}">Cancel</button>`}</td></tr>`).join("");
  $("#live-empty").hidden = rows.length > 0;
}

function renderHistory(list) {
  $("#history tbody").innerHTML = list.map((t) => `<tr class="row" data-id="${esc(t.transfer_id)}">
    <td>${short(t.transfer_id)}</td><td>${esc(t.job_name || "")}</td>
    <td>${route(t)}</td><td>${pill(t.state)}</td>
    <td>${result(t)}</td><td>${when(t.started_at || t.created)}</td><td>${when(t.ended_at || (TERMINAL.has(t.state) ? t.updated : ""))}</td>
    <td>${t.verified === false ? '<span class="pill bad">no</span>' : "yes"}</td></tr>`).join("")
    || '<tr><td colspan="8" class="muted">nothing found</td></tr>';
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("#search"))) if (v) params.set(k, v);
  try { renderHistory(await api("/transfers?" + params)); } catch (e) { $("#history tbody").innerHTML = `<tr><td colspan="8" class="bad">${esc(e.message)}</td></tr>`; }
}

async function showDetail(id) {
  detailId = id;
  let t;
  try { t = await api("/transfers/" + encodeURIComponent(id)); } catch (e) { $("#detail-note").textContent = e.message; return; }
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  $("#detail-summary").innerHTML = `${pill(t.state)}${flag(t)} ${route(t)}
    ${t.job_name ? " · job " + esc(t.job_name) : ""} · ${progress(t)} · result ${result(t) || "—"}
    ${(t.destinations || []).filter((d) => d.state).map((d) => `<div>${esc(d.agent)}: ${pill(d.state)} result
      ${esc(d.result_code)} · ${esc(d.files_done)} file(s) done, ${esc(d.files_failed)} failed${d.supplement
      ? " · " + esc(d.supplement) : ""}</div>`).join("")}
    <div class="muted">${(t.files || []).map((f) => esc(f.source) + " → " + esc(f.destination)).join("<br>")}</div>`;
  $("#cancel").disabled = TERMINAL.has(t.state);
  $("#resubmit").disabled = !(t.files && t.files.length && t.source_agent && t.destination_agent);
  $("#resubmit").onclick = () => resubmit(t);
  $("#events tbody").innerHTML = (t.events || []).map((e) => `<tr><td>${when(e.time)}</td><td>${esc(e.agent)}</td>
    <td>${esc(e.action)}</td><td>${pill(e.state)}</td><td>${esc(e.message || e.result || "")}</td>
    <td>${e.verified === false ? '<span class="pill bad" title="' + esc(e.problem) + '">no</span>' : "yes"}</td></tr>`).join("");
  $("#detail").scrollIntoView({behavior: "smooth"});
}

async function cancel(id) {
  if (!confirm("Cancel transfer " + id + "?")) return;
  try { await api("/transfers/" + encodeURIComponent(id) + "/cancel", {method: "POST"}); $("#detail-note").textContent = "cancel accepted"; }
  catch (e) { alert(e.message); }
}

async function resubmit(t) {
  const dests = destinationsOf(t);
  const spec = {source_agent: t.source_agent, destination_agent: t.destination_agent,
    ...(dests.length > 1 ? {destination_agents: dests} : {}),
    items: t.files.map((f) => ({source: f.source, destination: f.destination, destination_type: "file"})),
    exist: "overwrite", job_name: t.job_name || undefined, metadata: t.metadata || undefined};
  try {
    const r = await api("/transfers", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({version: 1, spec})});
    $("#detail-note").textContent = "submitted as " + r.transfer_id;
  } catch (e) { $("#detail-note").textContent = e.message; }
}

document.addEventListener("click", (ev) => {
  const c = ev.target.closest("[data-cancel]");
  if (c) { ev.stopPropagation(); cancel(c.dataset.cancel); return; }
  const r = ev.target.closest("tr.row");
  if (r) showDetail(r.dataset.id);
});
$("#cancel").onclick = () => detailId && cancel(detailId);
$("#detail-close").onclick = (ev) => { ev.preventDefault(); $("#detail").hidden = true; detailId = null; };
$("#search").addEventListener("submit", search);

function transferChanged(t) {
  const old = transfers.get(t.transfer_id) || {};
  const row = {...old, ...t, _recent: true};
  transfers.set(t.transfer_id, row);
  renderLive();
  if (detailId === t.transfer_id) showDetail(detailId);
  if (TERMINAL.has(t.state) && !TERMINAL.has(old.state)) search();
}

function stream() {
  const es = new EventSource("/api/v1/events");
  es.onopen = () => { $("#broker").textContent = "live"; $("#broker").className = "pill ok"; };
  es.onerror = () => { $("#broker").textContent = "reconnecting…"; $("#broker").className = "pill warn"; };
  es.addEventListener("agent", (e) => agentChanged(JSON.parse(e.data)));
  es.addEventListener("transfer", (e) => transferChanged(JSON.parse(e.data)));
  es.addEventListener("broker", (e) => { const d = JSON.parse(e.data); $("#broker").textContent = d.connected ? "live" : "broker lost"; });
}

function start() {
  // the first view comes inlined in the page (no round trip); then the stream keeps it live
  const el = document.getElementById("initial");
  const initial = el ? JSON.parse(el.textContent) : {agents: [], transfers: []};
  initial.agents.forEach(agentChanged);
  for (const t of initial.transfers) if (t.live) transfers.set(t.transfer_id, {...t, _recent: true});
  renderLive();
  renderHistory(initial.transfers);
  stream();
}
start();
