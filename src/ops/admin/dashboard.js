"use strict";
const STATUSES = ["pending", "queued", "delivering", "retrying", "delivered", "dead", "quarantined", "waiting", "skipped"];
// What an operator may skip (DeliveryStatus::SKIPPABLE), and how a status reads.
const SKIPPABLE = ["pending", "queued", "retrying", "waiting", "dead", "quarantined"];
const LABELS = { waiting: "waiting for key" };
const label = s => LABELS[s] ?? s;
const STATES = ["closed", "open", "half_open", "paused", "disabled"];
const JOB_STATES = ["running", "done", "cancelled"];
const COLORS = Object.fromEntries([...STATUSES, ...STATES, ...JOB_STATES].map(s => [s, getComputedStyle(document.documentElement).getPropertyValue("--" + s).trim()]));
const samples = [];      // recent stats samples for the live chart
let cursor = null, nextCursor = null;

const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
const badge = (status, text) => `<span class="badge" style="background:${COLORS[status] || "#999"}">${esc(text ?? label(status))}</span>`;
const when = t => t ? new Date(t).toLocaleString() : "";

async function api(path, options = {}) {
  const response = await fetch("/admin/api" + path, {
    ...options,
    headers: { "Authorization": "Bearer " + sessionStorage.getItem("relayd-token"), "Content-Type": "application/json" },
  });
  if (response.status === 401) { logout("The token was refused."); throw new Error("unauthorized"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function logout(message) {
  sessionStorage.removeItem("relayd-token");
  $("app").style.display = "none"; $("logout").style.display = "none"; $("detail").style.display = "none";
  $("login").style.display = "block"; $("login-error").textContent = message || "";
}

async function start() {
  $("login").style.display = "none"; $("app").style.display = "block"; $("logout").style.display = "inline-block";
  await Promise.all([refreshStats(), loadEvents(), loadDestinations()]);
}

function showTab(name) {
  for (const tab of ["events", "destinations", "replays", "live"]) {
    $(tab + "-page").style.display = tab === name ? "block" : "none";
    $("tab-" + tab).classList.toggle("active", tab === name);
  }
}

const age = seconds => seconds == null ? "" : seconds < 120 ? `${Math.round(seconds)} s` : seconds < 7200 ? `${Math.round(seconds / 60)} min` : `${(seconds / 3600).toFixed(1)} h`;

async function loadDestinations() {
  const { items } = await api("/destinations");
  $("destinations").innerHTML = items.map(d => {
    const held = d.state !== "closed";
    return `<tr class="destination" data-name="${esc(d.name)}"><td><strong>${esc(d.name)}</strong></td>` +
      `<td>${badge(d.state, d.state.replace("_", "-"))}${d.reason ? `<div class="muted">${esc(d.reason)}</div>` : ""}</td>` +
      `<td>${d.in_flight_limit ?? "—"} <span class="muted">/ ${d.max_in_flight}</span></td>` +
      `<td class="undelivered">${d.undelivered}</td><td>${d.queued}</td><td>${d.due}</td><td>${age(d.oldest_undelivered_age_seconds)}</td>` +
      `<td><button class="${held ? "resume primary" : "pause danger"}" data-name="${esc(d.name)}">${held ? "Resume" : "Pause"}</button></td></tr>`;
  }).join("") || `<tr><td colspan="8" class="muted">No destination is configured.</td></tr>`;
  for (const button of document.querySelectorAll("#destinations button")) {
    button.onclick = async () => {
      const action = button.classList.contains("resume") ? "resume" : "pause";
      try {
        await api(`/destinations/${encodeURIComponent(button.dataset.name)}/${action}`, { method: "POST" });
        flash(`${button.dataset.name} ${action === "pause" ? "paused" : "resumed"}.`);
      } catch (err) { flash(err.message, true); }
      await loadDestinations();
    };
  }
}

// What a replay job's filter says, in short.
// (`contains` is left out: the match and where it came from are shown.)
const filterText = f => Object.entries(f).filter(([k, v]) => v != null && k !== "contains")
  .map(([k, v]) => k === "event_type_prefix" ? `event_type=${v}*` : `${k}=${v}`).join(" ") || "all";

async function loadReplays() {
  const { items } = await api("/replays");
  $("replays").innerHTML = items.map(j => {
    const percent = Math.round(j.progress * 100);
    return `<tr class="replay-job" data-id="${j.id}"><td>${when(j.created_at)}</td><td class="mono">${esc(filterText(j.filter))}</td>` +
      `<td>${badge(j.status)}</td>` +
      `<td><progress max="100" value="${percent}"></progress> <span class="muted">${percent} %</span></td>` +
      `<td>${j.replayed} <span class="muted">of ${j.matching}</span></td><td>${j.max_rate ? j.max_rate + "/s" : "—"}</td>` +
      `<td>${j.status === "running" ? `<button class="cancel danger" data-id="${j.id}">Cancel</button>` : ""}</td></tr>`;
  }).join("") || `<tr><td colspan="7" class="muted">No replay job yet. "Replay all dead of this destination" starts one.</td></tr>`;
  for (const button of document.querySelectorAll("#replays button.cancel")) {
    button.onclick = async () => {
      try {
        await api(`/replays/${button.dataset.id}/cancel`, { method: "POST" });
        flash("Replay job cancelled.");
      } catch (err) { flash(err.message, true); }
      await loadReplays();
    };
  }
}

async function refreshStats() {
  const stats = await api("/stats");
  samples.push({ at: Date.now(), ...stats.deliveries });
  while (samples.length > 60) samples.shift();
  const cards = STATUSES.map(s =>
    `<div class="card" data-status="${s}"><div class="label"><span class="dot" style="background:${COLORS[s]}"></span>${label(s)}</div>` +
    `<div class="value">${stats.deliveries[s] ?? 0}</div></div>`).join("");
  $("cards").innerHTML = cards +
    `<div class="card"><div class="label">due backlog ${stats.due} · oldest ${Math.round(stats.oldest_due_age_seconds)}s</div>` +
    `<canvas id="chart" width="480" height="64"></canvas></div>`;
  drawChart();
  const destinations = Object.keys(stats.destinations);
  const select = $("dead-destination"), chosen = select.value;
  select.innerHTML = destinations.map(d => `<option>${esc(d)}</option>`).join("");
  // Keep the operator's choice; otherwise offer a destination that has dead deliveries.
  const withDead = destinations.find(d => (stats.destinations[d].dead || 0) > 0);
  if (destinations.includes(chosen)) select.value = chosen; else if (withDead) select.value = withDead;
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function drawChart() {
  const canvas = $("chart"); if (!canvas) return;
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...samples.flatMap(p => STATUSES.map(s => p[s] || 0)));
  // One sample is drawn as a flat line until the next arrives.
  const points = samples.length === 1 ? [samples[0], samples[0]] : samples;
  for (const s of STATUSES) {
    g.strokeStyle = COLORS[s]; g.lineWidth = 2; g.beginPath();
    points.forEach((p, i) => {
      const x = i * w / (points.length - 1), y = h - 4 - (p[s] || 0) * (h - 8) / max;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

// The search the events page shows: the admin API's names, and the inputs they come from.
const SEARCH = [["q", "f-q"], ["source", "f-source"], ["event_type", "f-type"], ["status", "f-status"], ["match", "f-match"], ["where", "f-where"]];
function search() {
  return Object.fromEntries(SEARCH.map(([key, id]) => [key, $(id).value.trim()]).filter(([, v]) => v));
}

function filters() {
  const p = new URLSearchParams(search());
  p.set("limit", "25");
  if (cursor) p.set("before", cursor);
  return p.toString();
}

async function loadEvents() {
  let page;
  try { page = await api("/events?" + filters()); } catch (err) { $("search-note").textContent = err.message; $("search-note").className = "error"; throw err; }
  nextCursor = page.next_cursor;
  $("next").disabled = !nextCursor;
  // What a search could not look at, and where a where search stopped.
  const notes = [];
  if (page.complete === false) notes.push(`Read ${page.scanned} events without filling the page: "Older →" goes on.`);
  if (page.not_searched) notes.push(page.not_searched);
  $("search-note").textContent = notes.join(" "); $("search-note").className = "muted";
  $("events").innerHTML = page.items.map(e =>
    `<tr class="event" data-id="${e.id}"><td>${when(e.received_at)}</td><td>${esc(e.source)}</td>` +
    `<td class="mono">${esc(e.event_id)}</td><td>${esc(e.event_type)}</td>` +
    `<td>${e.deliveries.map(d => badge(d.status, d.destination + ": " + label(d.status))).join("")}` +
    `${Object.keys(e.filtered || {}).map(name => `<span class="badge filtered" title="${esc(name)}: filtered out">${esc(name)}: filtered</span>`).join("")}` +
    `${e.deliveries.length || e.filtered ? "" : '<span class="muted">none</span>'}</td></tr>`
  ).join("") || `<tr><td colspan="5" class="muted">No events.</td></tr>`;
  for (const row of document.querySelectorAll("tr.event")) row.onclick = () => openEvent(row.dataset.id);
}

function pretty(event) {
  if (event.payload_encoding !== "utf-8") return event.payload;
  try { return JSON.stringify(JSON.parse(event.payload), null, 2); } catch { return event.payload; }
}

async function openEvent(id) {
  const e = await api("/events/" + id);
  const deliveries = e.deliveries.map(d => `
    <div class="card" style="margin-bottom:10px" data-delivery="${d.id}">
      <div style="display:flex;align-items:center;gap:8px">
        <strong>${esc(d.destination)}</strong> ${badge(d.status)}
        <span class="muted">${d.attempts} attempt(s)</span>
        ${d.ordering_key ? `<span class="muted">key <span class="mono">${esc(d.ordering_key)}</span> #${d.ordering_seq}</span>` : ""}
        <span style="flex:1"></span>
        ${SKIPPABLE.includes(d.status) ? `<button class="skip" data-id="${d.id}">Skip</button>` : ""}
        <button class="replay" data-id="${d.id}">Replay</button>
      </div>
      ${d.last_error ? `<div class="error">${esc(d.last_error)}</div>` : ""}
      <table style="margin-top:8px"><thead><tr><th>#</th><th>started</th><th>result</th><th>ms</th></tr></thead><tbody>
      ${d.attempt_history.map(a => `<tr><td>${a.attempt}</td><td>${when(a.started_at)}</td>` +
        `<td>${a.status_code ?? esc(a.error)}</td><td>${a.duration_ms}</td></tr>`).join("") || '<tr><td colspan="4" class="muted">none yet</td></tr>'}
      </tbody></table>
    </div>`).join("");
  $("detail").innerHTML = `
    <div style="display:flex;align-items:center"><h2 style="margin:0">${esc(e.event_type)}</h2><span style="flex:1"></span>
      <button id="close">Close</button></div>
    <p class="muted">${esc(e.source)} · <span class="mono">${esc(e.event_id)}</span> · ${when(e.received_at)}<br>
      webhook-id <span class="mono">${esc(e.id)}</span></p>
    <h3>Deliveries</h3>${deliveries || '<p class="muted">No destination gets this event.</p>'}
    ${Object.keys(e.filtered).length ? `<h3>Filtered out</h3><table id="filtered"><tbody>${Object.entries(e.filtered).map(([name, why]) =>
      `<tr><td><strong>${esc(name)}</strong></td><td>${esc(why)}</td></tr>`).join("")}</tbody></table>` : ""}
    <h3>Payload <span class="muted">(${esc(e.content_type)})</span></h3><pre id="payload">${esc(pretty(e))}</pre>
    <h3>Headers</h3><pre>${esc(JSON.stringify(e.headers, null, 2))}</pre>`;
  $("detail").style.display = "block";
  $("close").onclick = () => { $("detail").style.display = "none"; };
  for (const [action, done] of [["replay", "Delivery replayed."], ["skip", "Delivery skipped; its key moves on."]]) {
    for (const button of document.querySelectorAll(`#detail button.${action}`)) {
      button.onclick = async () => {
        try {
          await api(`/deliveries/${button.dataset.id}/${action}`, { method: "POST" });
          flash(done);
        } catch (err) { flash(err.message, true); }
        await Promise.all([openEvent(id), refreshStats(), loadEvents()]);
      };
    }
  }
}

function flash(text, isError) { $("flash").textContent = text; $("flash").className = isError ? "error" : "muted"; }

$("f-status").innerHTML += STATUSES.map(s => `<option value="${s}">${label(s)}</option>`).join("");
$("login-form").onsubmit = async ev => {
  ev.preventDefault();
  sessionStorage.setItem("relayd-token", $("token").value);
  try { await start(); } catch (err) { if (err.message !== "unauthorized") $("login-error").textContent = err.message; }
};
$("logout").onclick = () => logout();
$("tab-events").onclick = () => showTab("events");
$("tab-destinations").onclick = () => { showTab("destinations"); loadDestinations().catch(err => flash(err.message, true)); };
$("tab-replays").onclick = () => { showTab("replays"); loadReplays().catch(err => flash(err.message, true)); };
$("apply").onclick = () => { cursor = null; loadEvents().catch(() => {}); };
// A replay job of `filter`: counted first (a dry run), asked with `question(count)`,
// then replayed in the background; the Replays tab shows it.
async function replayJob(filter, question, started) {
  try {
    const { matching } = await api("/replays", { method: "POST", body: JSON.stringify({ ...filter, dry_run: true }) });
    if (!confirm(question(matching))) return;
    await api("/replays", { method: "POST", body: JSON.stringify(filter) });
    flash(started(matching));
    showTab("replays");
    await loadReplays();
  } catch (err) { flash(err.message, true); }
}
$("replay-search").onclick = async () => {
  // A replay job of what the search finds: its event terms (a provider id prefix is not
  // one) and, when the status chosen can be replayed, that status.
  const { q, ...terms } = search();
  if (!Object.keys(terms).length) { flash("Search first: a replay of everything is not offered here.", true); return; }
  await replayJob(terms, n => `Replay ${n} deliveries of the events this search finds?`,
    n => `Replaying ${n} deliveries; progress under Replays.${q ? " (The provider id prefix is not part of a replay.)" : ""}`);
};
$("tab-live").onclick = () => showTab("live");
$("live-toggle").onclick = () => live ? stopLive() : followLive();
$("first").onclick = () => { cursor = null; loadEvents(); };
$("next").onclick = () => { if (nextCursor) { cursor = nextCursor; loadEvents(); } };
$("replay-dead").onclick = async () => {
  const destination = $("dead-destination").value;
  if (!destination) return;
  await replayJob({ status: "dead", destination }, n => `Replay ${n} dead deliveries of ${destination}?`,
    n => `Replaying ${n} dead deliveries of ${destination}; progress under Replays.`);
  await Promise.all([refreshStats(), loadEvents()]);
};
// The live view: the event stream read with fetch (EventSource cannot send the token),
// resumed with Last-Event-ID after a break; the newest 200 events shown.
let live = null, lastLiveId = null;
function stopLive() {
  if (live) live.abort();
  live = null; $("live-toggle").textContent = "Follow"; $("live-state").textContent = "stopped";
}
async function followLive() {
  const controller = new AbortController();
  live = controller; $("live-toggle").textContent = "Stop"; lastLiveId = null; $("live").innerHTML = "";
  const params = new URLSearchParams();
  if ($("l-source").value) params.set("source", $("l-source").value);
  if ($("l-type").value) params.set("event_type", $("l-type").value);
  while (live === controller) {
    try {
      const headers = { "Authorization": "Bearer " + sessionStorage.getItem("relayd-token") };
      if (lastLiveId) headers["Last-Event-ID"] = lastLiveId;
      const response = await fetch("/admin/api/events/stream?" + params, { headers, signal: controller.signal });
      if (!response.ok) { const body = await response.json().catch(() => ({})); throw new Error(body.message || response.statusText); }
      $("live-state").textContent = "following";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          liveFrame(buffer.slice(0, end)); buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (live !== controller) return;
      $("live-state").textContent = err.message;
    }
    await new Promise(resolve => setTimeout(resolve, 1000));
  }
}
function liveFrame(text) {
  const fields = {};
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields[line.slice(0, colon)] = (fields[line.slice(0, colon)] ?? "") + line.slice(colon + 1).replace(/^ /, "");
  }
  if (fields.event === "close") { $("live-state").textContent = "closed: " + JSON.parse(fields.data).reason + ", reconnecting"; return; }
  if (fields.event !== "event") return;
  const e = JSON.parse(fields.data);
  lastLiveId = fields.id;
  const row = document.createElement("tr");
  row.className = "event live-event"; row.dataset.id = e.id;
  row.innerHTML = `<td>${when(e.received_at)}</td><td>${esc(e.source)}</td><td class="mono">${esc(e.event_id)}</td>` +
    `<td>${esc(e.event_type)}</td><td>${e.destinations.map(d => `<span class="badge" style="background:${COLORS.queued}">${esc(d)}</span>`).join("") || '<span class="muted">none</span>'}</td>`;
  row.onclick = () => openEvent(e.id);
  $("live").prepend(row);
  while ($("live").children.length > 200) $("live").lastChild.remove();
}

setInterval(() => {
  if (!sessionStorage.getItem("relayd-token")) return;
  refreshStats().catch(() => {});
  if ($("destinations-page").style.display !== "none") loadDestinations().catch(() => {});
  if ($("replays-page").style.display !== "none") loadReplays().catch(() => {});
}, 3000);
if (sessionStorage.getItem("relayd-token")) start().catch(() => {});
