// The live page: polls the API with the token kept in sessionStorage; builds the DOM with
// textContent only (agent and stream names come from agents and are never parsed as HTML).
"use strict";
(function () {
  const KEY = "eventstore-token";
  const MAX_ROWS = 200, SAMPLES = 60;
  let lastPosition = null, samples = [];
  const $ = (id) => document.getElementById(id);

  function token() { return sessionStorage.getItem(KEY) || ""; }
  function setStatus(text, bad) { const s = $("status"); s.textContent = text; s.className = bad ? "fail" : ""; }

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers["Authorization"] = "Bearer " + token();
    const r = await fetch(path, opts);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { throw new Error(r.status + ": " + (body.detail || r.statusText)); }
    return body;
  }

  function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text == null ? "" : String(text); if (cls) td.className = cls; tr.appendChild(td); return td; }

  async function pollEvents() {
    const q = lastPosition === null ? "api/events/tail?limit=20" : "api/events/tail?limit=200&after_position=" + lastPosition;
    const data = await api(q);
    const body = $("events-body");
    for (const ev of data.events) {
      const tr = document.createElement("tr");
      tr.className = "new"; tr.dataset.position = ev.position; tr.dataset.eventId = ev.event_id;
      cell(tr, ev.position); cell(tr, ev.recorded_at.slice(11, 23)); cell(tr, ev.stream);
      cell(tr, ev.type); cell(tr, ev.agent_id); cell(tr, ev.lease_resource ? ev.lease_resource + "#" + ev.fencing_token : "");
      body.insertBefore(tr, body.firstChild);
      setTimeout(() => tr.classList.remove("new"), 1500);
      lastPosition = ev.position;
    }
    if (lastPosition === null) lastPosition = data.head;
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  }

  async function pollAgents() {
    const data = await api("api/agents");
    const body = $("agents-body");
    body.replaceChildren();
    for (const a of data.agents) {
      const tr = document.createElement("tr"); tr.dataset.agent = a.agent_id;
      cell(tr, a.agent_id); cell(tr, a.status, a.status === "killed" ? "killed" : "");
      cell(tr, (a.leases || []).join(", "));
      const td = cell(tr, "");
      const btn = document.createElement("button");
      if (a.status === "killed") {
        btn.textContent = "Revive"; btn.className = "revive";
        btn.onclick = () => act("api/agents/" + encodeURIComponent(a.agent_id) + "/revive", null);
      } else {
        btn.textContent = "Kill"; btn.className = "kill";
        btn.onclick = () => act("api/agents/" + encodeURIComponent(a.agent_id) + "/kill", { reason: $("kill-reason").value });
      }
      td.appendChild(btn); body.appendChild(tr);
    }
  }

  async function act(path, payload) {
    try {
      await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                        body: payload === null ? undefined : JSON.stringify(payload) });
      setStatus("done: " + path);
      await pollAgents();
    } catch (e) { setStatus(e.message, true); }
  }

  async function pollLeases() {
    const data = await api("api/leases");
    const body = $("leases-body");
    body.replaceChildren();
    for (const h of data.holders) {
      const tr = document.createElement("tr");
      cell(tr, h.resource); cell(tr, h.agent_id); cell(tr, h.mode); cell(tr, h.token); cell(tr, h.expires_at.slice(11, 19));
      body.appendChild(tr);
    }
    for (const w of data.waiters) {
      const tr = document.createElement("tr");
      cell(tr, w.resource); cell(tr, w.agent_id + " (waiting)"); cell(tr, w.mode); cell(tr, ""); cell(tr, w.waiting_seconds.toFixed(1) + " s");
      body.appendChild(tr);
    }
    return [data.waiters.length, data.holders.length];
  }

  async function pollLag() {
    const data = await api("api/lag");
    const intake = data.projector ? Object.values(data.projector).reduce((a, b) => a + b, 0) : 0;
    const pub = data.publishers.reduce((a, p) => Math.max(a, p.events_behind), 0);
    return [intake, pub];
  }

  function chart(svg, series, colors) {
    const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
    const max = Math.max(1, ...series.flat());
    svg.replaceChildren();
    series.forEach((values, i) => {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      const pts = values.map((v, x) => (x * w / (SAMPLES - 1)).toFixed(1) + "," + (h - 4 - v * (h - 8) / max).toFixed(1));
      line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
      line.setAttribute("stroke", colors[i]); line.setAttribute("stroke-width", "2");
      svg.appendChild(line);
    });
    const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
    label.setAttribute("x", "4"); label.setAttribute("y", "12"); label.setAttribute("font-size", "10");
    label.textContent = "max " + max; svg.appendChild(label);
  }

  async function pollCheck() {
    const data = await api("api/check");
    const ul = $("check");
    ul.replaceChildren();
    for (const c of data.controls) {
      const li = document.createElement("li"); li.className = c.ok ? "ok" : "fail"; li.textContent = c.line; ul.appendChild(li);
    }
    const li = document.createElement("li"); li.textContent = data.summary; ul.appendChild(li);
  }

  let ticks = 0;
  async function tick() {
    if (!token()) return;
    try {
      await pollEvents();
      await pollAgents();
      const [waiters, holders] = await pollLeases();
      const [intake, pub] = await pollLag();
      samples.push([waiters, holders, intake, pub]);
      if (samples.length > SAMPLES) samples.shift();
      chart($("chart-contention"), [samples.map((s) => s[0]), samples.map((s) => s[1])], ["#b3261e", "#1f5fbf"]);
      chart($("chart-lag"), [samples.map((s) => s[2]), samples.map((s) => s[3])], ["#8a5a00", "#176c2a"]);
      if (ticks++ % 10 === 0) await pollCheck();
      setStatus("live, head at " + lastPosition);
    } catch (e) { setStatus(e.message, true); }
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    lastPosition = null; $("events-body").replaceChildren(); ticks = 0;
    tick();
  });
  setInterval(tick, 1000);
  tick();
})();
