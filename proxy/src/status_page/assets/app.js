// DirkDB status page: polls /cluster/status and /status/history once a second (same origin,
// so the browser's admin credentials apply) and redraws the page without reloading it.
// Plain JavaScript, no library: the charts and the topology are inline SVG.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
const COLORS = ["#2f5bea", "#e8590c", "#12a150", "#9c36b5", "#0c8599", "#c2255c", "#5c940d", "#364fc7"];
const HEALTH_COLOR = { Up: "#1f9d55", Lagging: "#d98b00", Down: "#d6333a" };

const state = {
  status: null,     // last /cluster/status
  meta: null,       // last /status/history without its samples
  samples: [],      // samples of the last WINDOW_MS, oldest first
  lastAt: 0,        // the newest sample's time (Unix ms), for ?since=
  clockSkew: 0,     // proxy clock - browser clock, ms
  error: null,      // why the last poll failed
  lastOk: 0,        // browser time of the last successful poll
  lagUnit: "ms",    // what the lag chart shows: "ms" or "ops"
  rateKind: "all",  // what the rate chart shows: "all", "reads" or "writes"
};

// ---------- formatting (every number with its unit) ----------

const $ = (id) => document.getElementById(id);
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmtInt(n) { return Math.round(n).toLocaleString("en-US"); }
function fmtOps(n) { return fmtInt(n) + (Math.round(n) === 1 ? " op" : " ops"); }
function fmtMs(ms) {
  if (ms >= 60000) return (ms / 60000).toFixed(1) + " min";
  if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
  return fmtInt(ms) + " ms";
}
function fmtRate(r) { return (r >= 100 ? fmtInt(r) : r.toFixed(1)) + " /s"; }
function fmtPct(x) { return x == null ? "–" : (x * 100).toFixed(1) + " %"; }
function fmtBytes(b) {
  if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + " GiB";
  if (b >= 1 << 20) return (b / (1 << 20)).toFixed(1) + " MiB";
  if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + " KiB";
  return fmtInt(b) + " B";
}
function fmtClock(ms) { return new Date(ms).toLocaleTimeString("en-GB", { hour12: false }); }
function fmtAgo(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function proxyNow() { return Date.now() + state.clockSkew; }

// ---------- MULTI_PRIMARY ----------

// Under routing.writes.mode MULTI_PRIMARY every master takes writes for the objects it owns;
// /cluster/status reports masters with role PRIMARY and the page calls them MASTER, as
// DirkDB's config.json does.
function isMultiPrimary() { return !!(state.meta && state.meta.writeMode === "MULTI_PRIMARY"); }
function displayRole(inst) { return isMultiPrimary() && inst.role === "PRIMARY" ? "MASTER" : inst.role; }
function masters() { return state.status.instances.filter((i) => displayRole(i) === "MASTER"); }
function objectLabel(o) { return o.kind === "DATABASE" ? "database " + o.database : o.database + "." + o.name; }

// The objects each master owns, as the proxy routes their writes (multiPrimary.objects).
function ownedBy() {
  const mp = state.status.multiPrimary;
  const map = {};
  for (const o of (mp && Array.isArray(mp.objects) ? mp.objects : [])) {
    if (o.owner == null) continue;
    (map[o.owner] = map[o.owner] || []).push(o);
  }
  return map;
}
function truncate(s, n) { s = String(s || ""); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

// ---------- polling ----------

async function getJson(path) {
  // location.origin, not a relative URL: a page opened as http://user:pass@host/ must not put
  // the credentials into fetch() URLs (browsers refuse that); the browser sends them itself.
  const r = await fetch(location.origin + path, { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) {
    const hint = r.status === 401 ? " (the admin user's credentials are needed)" : "";
    throw new Error("GET " + path + " answered HTTP " + r.status + hint);
  }
  return r.json();
}

async function poll() {
  try {
    const [status, hist] = await Promise.all([
      getJson("/cluster/status"),
      getJson("/status/history?since=" + state.lastAt),
    ]);
    state.status = status;
    state.clockSkew = hist.now - Date.now();
    const { samples, ...meta } = hist;
    state.meta = meta;
    if (samples.length) {
      state.samples.push(...samples);
      state.lastAt = samples[samples.length - 1].at;
    }
    const oldest = hist.now - WINDOW_MS;
    while (state.samples.length && state.samples[0].at < oldest) state.samples.shift();
    state.error = null;
    state.lastOk = Date.now();
  } catch (e) {
    state.error = e && e.message ? e.message : String(e);
  }
  safeRender();
  setTimeout(poll, POLL_MS);
}

function safeRender() {
  try {
    render();
  } catch (e) {
    console.error("status page render failed", e);
  }
}

// ---------- rendering ----------

function render() {
  renderConnection();
  if (!state.status || !state.meta) return;
  const colors = colorMap(state.status.instances);
  renderAlerts();
  renderTopology(colors);
  renderLag(colors);
  renderRates(colors);
  renderCache();
  renderFailovers();
  renderConflicts();
  renderOwners(colors);
  renderInstances();
}

function colorMap(instances) {
  const map = {};
  instances.forEach((inst, i) => { map[inst.id] = COLORS[i % COLORS.length]; });
  return map;
}

function renderConnection() {
  const pill = $("conn");
  if (state.error) {
    pill.className = "pill pill-error";
    pill.dataset.state = "error";
    pill.textContent = "cannot reach the proxy";
    $("updated").textContent = state.lastOk ? "last data " + fmtAgo(Date.now() - state.lastOk) : "";
  } else if (state.lastOk) {
    pill.className = "pill pill-live";
    pill.dataset.state = "live";
    pill.textContent = "live";
    $("updated").textContent = "updated " + fmtClock(state.lastOk);
  }
}

function renderAlerts() {
  const out = [];
  if (state.error) {
    out.push(alertBox("", "The page cannot reach the proxy's admin API:", state.error +
      (state.lastOk ? " — showing the data of " + fmtClock(state.lastOk) + ", retrying every second." : "")));
  }
  for (const inst of state.status.instances) {
    if (inst.health === "Down") {
      out.push(alertBox("", "The proxy cannot reach " + inst.id + " (" + inst.address + "):",
        (inst.lastError || "no answer") + ". It gets no statements until it answers again.", inst.id));
    } else if (inst.health === "Lagging") {
      out.push(alertBox("warn", inst.id + " is behind:", fmtOps(inst.lagOperations) + ", " + fmtMs(inst.lagMs) +
        " (limit routing.reads.maxReplicationLagMs = " + fmtMs(state.meta.maxReplicationLagMs) + "); reads avoid it.", inst.id));
    }
  }
  const cache = state.meta.cache;
  if (cache.state === "unreachable") {
    out.push(alertBox("", "The proxy cannot reach the cache's admin API at " + cache.admin + ":", cache.error || "no answer"));
  }
  $("alerts").innerHTML = out.join("");
}

function alertBox(kind, title, text, instance) {
  const data = instance ? ' data-alert-instance="' + esc(instance) + '"' : "";
  return '<div class="alert ' + kind + '"' + data + "><strong>" + esc(title) + "</strong>" + esc(text) + "</div>";
}

// ---------- topology picture ----------

function renderTopology(colors) {
  const box = $("topology");
  const width = Math.max(box.clientWidth || 800, 280);
  const st = state.status;
  const cache = state.meta.cache;
  const latest = state.samples[state.samples.length - 1];
  const last = latest ? latest.cache : null;
  const narrow = width < 620;

  const front = [{ kind: "clients" }];
  if (cache.state !== "absent") front.push({ kind: "cache" });
  front.push({ kind: "proxy" });

  const IW = narrow ? Math.min(width - 24, 300) : 200, IH = 104;
  const FW = narrow ? Math.min(width - 24, 300) : 200, FH = 58;
  const gapX = 28, gapY = narrow ? 26 : 56;
  const n = st.instances.length;
  let W, H;
  const pos = {};
  if (!narrow) {
    const rowW = n * IW + (n - 1) * gapX;
    const frontW = front.length * FW + (front.length - 1) * 60;
    W = Math.max(width, rowW + 40, frontW + 40);
    const fx = (W - frontW) / 2;
    front.forEach((f, i) => { pos[f.kind] = { x: fx + i * (FW + 60), y: 12, w: FW, h: FH }; });
    const ix = (W - rowW) / 2, iy = 12 + FH + gapY;
    st.instances.forEach((inst, i) => { pos[inst.id] = { x: ix + i * (IW + gapX), y: iy, w: IW, h: IH }; });
    H = iy + IH + 24 + 12 * n;
  } else {
    W = width;
    const x = (W - FW) / 2 + 10;
    front.forEach((f, i) => { pos[f.kind] = { x, y: 10 + i * (FH + 22), w: FW, h: FH }; });
    const iy0 = 10 + front.length * (FH + 22) + 8;
    st.instances.forEach((inst, i) => { pos[inst.id] = { x: (W - IW) / 2 + 10, y: iy0 + i * (IH + gapY), w: IW, h: IH }; });
    H = iy0 + n * (IH + gapY);
  }

  const parts = [];
  const marker = (id, color) => '<marker id="' + id + '" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" ' +
    'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="' + color + '"/></marker>';
  parts.push("<defs>" + marker("arrow", "#8a95a8") + marker("arrow-blue", "#2f5bea") + marker("arrow-red", "#d6333a") +
    marker("arrow-amber", "#d98b00") + "</defs>");

  // Client-side chain: clients → cache → proxy.
  for (let i = 0; i + 1 < front.length; i++) {
    const a = pos[front[i].kind], b = pos[front[i + 1].kind];
    parts.push(narrow ? line(a.x + a.w / 2, a.y + a.h, b.x + b.w / 2, b.y, "#8a95a8", false, true)
                      : line(a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2, "#8a95a8", false, true));
  }
  // The proxy routes to every instance.
  const p = pos.proxy;
  st.instances.forEach((inst) => {
    const b = pos[inst.id];
    const color = inst.health === "Down" ? "#d6333a" : "#b4bccb";
    parts.push(line(p.x + p.w / 2, p.y + p.h, b.x + b.w / 2, b.y, color, inst.health === "Down", false));
  });
  // Replication: primary → each replica, dashed, labelled with the lag; under MULTI_PRIMARY
  // every master streams to every other (one dashed line per pair, arrows both ways).
  const primary = isMultiPrimary() ? null : st.instances.find((i) => i.role === "PRIMARY");
  const ms = isMultiPrimary() ? masters() : [];
  ms.forEach((a, i) => ms.slice(i + 1).forEach((b, j) => {
    const worst = a.health === "Down" || b.health === "Down" ? "Down" : a.health === "Lagging" || b.health === "Lagging" ? "Lagging" : "Up";
    parts.push(meshEdge(pos[a.id], pos[b.id], narrow, worst, j + 1));
  }));
  if (primary) {
    const a = pos[primary.id];
    st.instances.forEach((inst) => {
      if (inst.role === "PRIMARY") return;
      const b = pos[inst.id];
      parts.push(replicationEdge(a, b, narrow, inst.health, Math.abs(st.instances.indexOf(inst) - st.instances.indexOf(primary))));
    });
  }

  front.forEach((f) => parts.push(frontNode(f.kind, pos[f.kind], st, cache, last)));
  const owners = ownedBy();
  st.instances.forEach((inst) => parts.push(instanceNode(inst, pos[inst.id], colors[inst.id], latest, owners)));

  box.innerHTML = '<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="cluster topology">' + parts.join("") + "</svg>";
  const down = st.instances.filter((i) => i.health === "Down").length;
  const mp = st.multiPrimary;
  const writes = isMultiPrimary()
    ? ms.length + " masters, MULTI_PRIMARY" + (mp ? " (" + mp.partition + ", " + mp.hash + ", ownership term " + mp.ownershipTerm + ")" : "")
    : "primary " + st.primary;
  $("topology-summary").textContent = n + " instance" + (n === 1 ? "" : "s") + ", " + writes +
    (down ? ", " + down + " unreachable" : "") + " · " + st.replication + " replication · reads " + st.strategy + ", " + st.consistency;
}

function line(x1, y1, x2, y2, color, dashed, arrow) {
  return '<line x1="' + x1 + '" y1="' + y1 + '" x2="' + x2 + '" y2="' + y2 + '" stroke="' + color +
    '" stroke-width="1.6"' + (dashed ? ' stroke-dasharray="3 4"' : "") + (arrow ? ' marker-end="url(#arrow)"' : "") + "/>";
}

// A dashed arrow from the primary to a replica (its lag is written in the replica's box), red
// when the proxy cannot reach the replica, amber while it lags.
function replicationEdge(a, b, narrow, health, distance) {
  const color = health === "Down" ? "#d6333a" : health === "Lagging" ? "#d98b00" : "#2f5bea";
  let d;
  if (!narrow) {
    const right = b.x > a.x;
    const x1 = a.x + a.w / 2 + (right ? 12 : -12), x2 = b.x + b.w / 2, y = a.y + a.h;
    const dip = 14 + 16 * distance;
    d = "M" + x1 + "," + y + " C" + x1 + "," + (y + dip) + " " + x2 + "," + (y + dip) + " " + x2 + "," + (y + 4);
  } else {
    const x = a.x, y1 = a.y + a.h / 2, y2 = b.y + b.h / 2;
    const bulge = Math.min(Math.max(a.x - 8, 4), 10 + 8 * distance);
    d = "M" + x + "," + y1 + " C" + (x - bulge) + "," + y1 + " " + (x - bulge) + "," + y2 + " " + (x - 4) + "," + y2;
  }
  return '<path d="' + d + '" fill="none" stroke="' + color + '" stroke-width="1.8" stroke-dasharray="6 4" marker-end="url(#arrow-' +
    (health === "Down" ? "red" : health === "Lagging" ? "amber" : "blue") + ')"/>';
}

// A dashed line between two masters (each streams its own writes to the other), below the
// boxes in a wide window and on their left in a narrow one; `distance` spreads the curves.
function meshEdge(a, b, narrow, health, distance) {
  const color = health === "Down" ? "#d6333a" : health === "Lagging" ? "#d98b00" : "#2f5bea";
  const marker = "url(#arrow-" + (health === "Down" ? "red" : health === "Lagging" ? "amber" : "blue") + ")";
  let d;
  if (!narrow) {
    const x1 = a.x + a.w / 2, x2 = b.x + b.w / 2, y = a.y + a.h + 4, dip = 14 + 16 * distance;
    d = "M" + x1 + "," + y + " C" + x1 + "," + (y + dip) + " " + x2 + "," + (y + dip) + " " + x2 + "," + y;
  } else {
    const x = a.x - 4, y1 = a.y + a.h / 2, y2 = b.y + b.h / 2, bulge = Math.min(Math.max(a.x - 8, 4), 10 + 8 * distance);
    d = "M" + x + "," + y1 + " C" + (x - bulge) + "," + y1 + " " + (x - bulge) + "," + y2 + " " + x + "," + y2;
  }
  return '<path class="mesh" d="' + d + '" fill="none" stroke="' + color + '" stroke-width="1.8" stroke-dasharray="6 4" marker-start="' +
    marker + '" marker-end="' + marker + '"/>';
}

function rect(b, stroke, fill, width) {
  return '<rect x="' + b.x + '" y="' + b.y + '" width="' + b.w + '" height="' + b.h + '" rx="9" fill="' + fill +
    '" stroke="' + stroke + '" stroke-width="' + (width || 1.5) + '"/>';
}

function text(x, y, s, attrs) {
  return '<text x="' + x + '" y="' + y + '" ' + (attrs || "") + ">" + esc(s) + "</text>";
}

function frontNode(kind, b, st, cache, last) {
  const x = b.x + 12;
  if (kind === "clients") {
    return '<g class="node" data-node="clients">' + rect(b, "#c9d0dc", "#f7f8fb") +
      text(x, b.y + 24, "clients", 'font-size="14" font-weight="700" fill="#1d2433"') +
      text(x, b.y + 44, "SQL, to the proxy", 'font-size="12" fill="#687385"') + "</g>";
  }
  if (kind === "cache") {
    const up = cache.state === "up";
    const detail = up ? (last ? "hit ratio " + fmtPct(last.totalHitRatio) + " · " + fmtInt(last.entries) + " entries" : "answering")
                      : "UNREACHABLE";
    return '<g class="node" data-node="cache" data-health="' + (up ? "Up" : "Down") + '">' +
      rect(b, up ? "#1f9d55" : "#d6333a", up ? "#f4fbf7" : "#fff3f3", 2) +
      text(x, b.y + 24, "cache", 'font-size="14" font-weight="700" fill="#1d2433"') +
      text(x + 52, b.y + 24, "admin " + cache.admin, 'font-size="11" fill="#687385"') +
      text(x, b.y + 44, detail, 'font-size="12" fill="' + (up ? "#1d2433" : "#d6333a") + '"' + (up ? "" : ' font-weight="700"')) + "</g>";
  }
  return '<g class="node" data-node="proxy">' + rect(b, "#18202f", "#18202f") +
    text(x, b.y + 24, "proxy", 'font-size="14" font-weight="700" fill="#ffffff"') +
    text(x + 50, b.y + 24, state.meta.proxy, 'font-size="11" fill="#aeb8c9"') +
    text(x, b.y + 44, "reads " + st.strategy + ", " + st.clientConnections + " client" + (st.clientConnections === 1 ? "" : "s"),
      'font-size="11.5" fill="#d5dbe6"') + "</g>";
}

function instanceNode(inst, b, color, latest, owners) {
  const health = inst.health;
  const stroke = HEALTH_COLOR[health] || "#8a95a8";
  const fill = health === "Down" ? "#fff3f3" : health === "Lagging" ? "#fffaf0" : "#ffffff";
  const x = b.x + 12;
  const role = displayRole(inst);
  const isPrimary = role === "PRIMARY" || role === "MASTER";
  const owned = isMultiPrimary() ? (owners[inst.id] || []) : null;
  const parts = ['<g class="node instance" data-instance="' + esc(inst.id) + '" data-role="' + esc(role) +
    '" data-health="' + esc(health) + '"' + (owned ? ' data-owns="' + owned.length + '"' : "") + ">", rect(b, stroke, fill, 2.2)];
  parts.push('<rect x="' + b.x + '" y="' + (b.y + 8) + '" width="4" height="' + (b.h - 16) + '" fill="' + color + '"/>');
  parts.push(text(x, b.y + 22, inst.id, 'font-size="15" font-weight="700" fill="#1d2433"'));
  const badgeW = role === "MASTER" ? 62 : isPrimary ? 66 : 62;
  parts.push('<rect x="' + (b.x + b.w - badgeW - 10) + '" y="' + (b.y + 8) + '" width="' + badgeW + '" height="19" rx="5" fill="' +
    (isPrimary ? "#e3eafe" : "#eceff4") + '"/>');
  parts.push(text(b.x + b.w - badgeW / 2 - 10, b.y + 22, role, 'font-size="11" font-weight="700" text-anchor="middle" class="role" fill="' +
    (isPrimary ? "#2f5bea" : "#46556b") + '"'));
  const healthWord = health === "Down" ? "UNREACHABLE" : health === "Lagging" ? "lagging" : "up";
  // Under MULTI_PRIMARY the topology's summary shows the ownership term instead.
  const term = inst.term != null && !isMultiPrimary() ? " · term " + inst.term : "";
  parts.push(text(x, b.y + 41, healthWord + term, 'font-size="12.5" font-weight="' + (health === "Up" ? 600 : 700) + '" fill="' + stroke + '" class="health"'));
  parts.push(text(x, b.y + 59, "seq " + fmtInt(inst.committedSequence), 'font-size="12" fill="#46556b"'));
  const s = latest && latest.instances.find((i) => i.id === inst.id);
  if (health === "Down") {
    parts.push(text(x, b.y + 78, truncate(inst.lastError || "no answer", Math.floor((b.w - 24) / 6.2)), 'font-size="11" fill="#d6333a"'));
  } else if (role === "PRIMARY") {
    parts.push(text(x, b.y + 78, "takes every write", 'font-size="12" fill="#46556b"'));
  } else {
    const lag = s ? lagOf(s) : { ops: inst.lagOperations, ms: inst.lagMs };
    parts.push(text(x, b.y + 78, "lag " + fmtOps(lag.ops) + " · " + fmtMs(lag.ms), 'font-size="12" fill="#46556b"'));
  }
  if (owned) {
    const names = owned.map(objectLabel).join(", ");
    parts.push(text(x, b.y + 95, "owns " + owned.length + " object" + (owned.length === 1 ? "" : "s") +
      (owned.length ? ": " + truncate(names, Math.max(8, Math.floor((b.w - 24) / 5.6) - 14)) : ""),
      'font-size="11" fill="#46556b" class="owns"'));
  } else if (s) {
    parts.push(text(x, b.y + 95, fmtRate(s.readsPerSec) + " reads · " + fmtRate(s.writesPerSec) + " writes",
      'font-size="11" fill="#687385" class="rates"'));
  }
  parts.push("</g>");
  return parts.join("");
}

// ---------- charts ----------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// The time the charts span: the samples there are, rounded up to a whole minute, at most
// WINDOW_MS, so a page opened a moment ago shows its first minute at full width.
function chartSpan(now) {
  const first = state.samples.length ? state.samples[0].at : now;
  return Math.min(WINDOW_MS, Math.max(60000, Math.ceil((now - first) / 60000) * 60000));
}

// Distance between time labels: one every ~70 px at least.
function tickStep(span, px) {
  const room = Math.max(1, Math.floor(px / 70));
  for (const s of [15000, 30000, 60000, 120000, 300000]) if (span / s <= room) return s;
  return span;
}

// series: [{ name, color, points: [[t, v|null], …] }]
function drawChart(container, series, opts) {
  const W = Math.max(container.clientWidth || 400, 240), H = 170;
  const L = 62, R = 12, T = 10, B = 24;
  const now = proxyNow(), span = chartSpan(now), t0 = now - span;
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v != null));
  if (!state.samples.length || !series.length) {
    container.innerHTML = '<div class="empty">' + esc(opts.empty || "collecting samples…") + "</div>";
    return;
  }
  const max = opts.max != null ? opts.max : niceMax(Math.max(...values, opts.minMax || 1));
  const X = (t) => L + ((t - t0) / span) * (W - L - R);
  const Y = (v) => T + (1 - v / max) * (H - T - B);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    const y = Y(max * f);
    parts.push('<line x1="' + L + '" x2="' + (W - R) + '" y1="' + y + '" y2="' + y + '" stroke="#e6e9ef"/>');
    parts.push('<text x="' + (L - 6) + '" y="' + (y + 4) + '" font-size="11" fill="#687385" text-anchor="end">' + esc(opts.fmt(max * f)) + "</text>");
  }
  const step = tickStep(span, W - L - R);
  for (let ago = 0; ago <= span + 1; ago += step) {
    const x = X(now - ago);
    const label = ago === 0 ? "now" : "−" + (step >= 60000 ? ago / 60000 + " min" : ago / 1000 + " s");
    const anchor = ago === 0 ? "end" : ago + step > span + 1 ? "start" : "middle";
    parts.push('<text x="' + x + '" y="' + (H - 6) + '" font-size="11" fill="#687385" text-anchor="' + anchor + '">' + label + "</text>");
  }
  for (const f of (opts.markers || [])) {
    if (f.at < t0) continue;
    const x = X(f.at);
    parts.push('<line x1="' + x + '" x2="' + x + '" y1="' + T + '" y2="' + (H - B) + '" stroke="#d6333a" stroke-dasharray="4 3"><title>' +
      esc("failover " + f.from + " → " + f.to + " at " + fmtClock(f.at)) + "</title></line>");
  }
  for (const s of series) {
    let d = "", pen = false;
    for (const [t, v] of s.points) {
      if (v == null || t < t0) { pen = false; continue; }
      d += (pen ? " L" : " M") + X(t).toFixed(1) + "," + Y(Math.min(v, max)).toFixed(1);
      pen = true;
    }
    if (d) parts.push('<path d="' + d + '" fill="none" stroke="' + s.color + '" stroke-width="2" stroke-linejoin="round"' + (s.dash ? ' stroke-dasharray="5 3"' : "") + "/>");
  }
  container.innerHTML = '<div class="chart-legend">' + series.map((s) =>
    '<span><i style="background:' + s.color + '"></i>' + esc(s.name) + "</span>").join("") + "</div>" +
    '<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="' + esc(opts.label) + '">' + parts.join("") + "</svg>";
}

function segmented(name, options, current, onPick) {
  return '<span class="seg" data-seg="' + name + '">' + options.map(([value, label]) =>
    '<button type="button" data-value="' + value + '" class="' + (value === current ? "on" : "") + '">' + esc(label) + "</button>").join("") + "</span>";
}

function wireSegmented(root, key) {
  root.querySelectorAll("button[data-value]").forEach((b) => {
    b.onclick = () => { state[key] = b.dataset.value; safeRender(); };
  });
}

function seriesOf(id, color, pick, name, dash) {
  return {
    name, color, dash,
    points: state.samples.map((s) => {
      const i = s.instances.find((x) => x.id === id);
      return [s.at, i ? pick(i) : null];
    }),
  };
}

// A replica's lag: the primary's view of its stream when the sample has it (entries not yet
// acknowledged, age of the oldest), else the proxy's health checks' view.
function lagOf(i) {
  const src = i.stream || i;
  return { ops: src.lagOperations, ms: src.lagMs, state: i.stream ? i.stream.state : null, exact: !!i.stream };
}

function latestOf(id) {
  const latest = state.samples[state.samples.length - 1];
  return latest ? latest.instances.find((x) => x.id === id) : null;
}

function streamBadge(stream, health) {
  if (health === "Down") return healthBadge("Down");
  if (!stream) return '<span class="muted small">not reported</span>';
  const cls = stream === "Connected" ? "Up" : stream === "Disconnected" ? "Down" : "Lagging";
  return '<span class="badge ' + cls + '">' + esc(stream.toLowerCase()) + "</span>";
}

function renderLag(colors) {
  const mp = isMultiPrimary();
  const replicas = mp ? masters() : state.status.instances.filter((i) => i.role !== "PRIMARY");
  const ops = state.lagUnit === "ops";
  const head = $("lag-card").querySelector("h2");
  head.innerHTML = "Replication lag " + segmented("lag", [["ms", "ms"], ["ops", "operations"]], state.lagUnit);
  wireSegmented(head, "lagUnit");
  drawChart($("lag-chart"), replicas.map((r) => seriesOf(r.id, colors[r.id], (i) => {
    if (i.health === "Down") return null;
    const lag = lagOf(i);
    return ops ? lag.ops : lag.ms;
  }, r.id)), {
    fmt: ops ? fmtOps : fmtMs, label: "replication lag", minMax: ops ? 5 : 100,
    empty: replicas.length ? "collecting samples…" : mp ? "no master up" : "no replica in config.json", markers: state.meta.failovers,
  });
  const rows = replicas.map((r) => {
    const s = latestOf(r.id);
    const lag = s ? lagOf(s) : { ops: r.lagOperations, ms: r.lagMs, state: null, exact: false };
    const figures = r.health === "Down" ? '<td class="num">–</td><td class="num">–</td>'
      : '<td class="num">' + fmtOps(lag.ops) + '</td><td class="num">' + fmtMs(lag.ms) + (lag.exact ? "" : ' <span class="muted small" title="the primary does not report this replica; the proxy\'s health checks measure it">*</span>') + "</td>";
    const data = r.health === "Down" ? "" : ' data-lag-ops="' + lag.ops + '" data-lag-ms="' + lag.ms + '"';
    return '<tr data-lag-instance="' + esc(r.id) + '"' + data + "><td>" + esc(r.id) + "</td><td>" + streamBadge(lag.state, r.health) + "</td>" + figures + "</tr>";
  });
  $("lag-table").innerHTML = "<tr><th>" + (mp ? "Master" : "Replica") + "</th><th>Stream" + (mp ? "s in" : "") + "</th><th class=num>Behind</th><th class=num title=\"age of the oldest entry the replica has not acknowledged\">Age</th></tr>" +
    (rows.length ? rows.join("") : '<tr><td colspan="4" class="muted">' + (mp ? "no master up" : "no replica") + "</td></tr>");
  $("lag-source").textContent = mp
    ? "as each master reports the streams it applies from the other masters (the one furthest behind)"
    : "as the primary " + state.status.primary + " reports it";
}

function renderRates(colors) {
  const insts = state.status.instances;
  const kind = state.rateKind;
  const head = $("rate-card").querySelector("h2");
  head.innerHTML = "Statements per second " + segmented("rate", [["all", "all"], ["reads", "reads"], ["writes", "writes"]], kind);
  wireSegmented(head, "rateKind");
  const pick = kind === "reads" ? (i) => i.readsPerSec : kind === "writes" ? (i) => i.writesPerSec : (i) => i.readsPerSec + i.writesPerSec;
  drawChart($("rate-chart"), insts.map((r) => seriesOf(r.id, colors[r.id], pick, r.id)), {
    fmt: fmtRate, label: "statements per second", minMax: 10, markers: state.meta.failovers,
  });
  const latest = state.samples[state.samples.length - 1];
  $("rate-table").innerHTML = "<tr><th>Instance</th><th class=num>Reads</th><th class=num>Writes</th><th class=num>Mean latency</th></tr>" +
    insts.map((r) => {
      const s = latest && latest.instances.find((x) => x.id === r.id);
      return "<tr><td>" + esc(r.id) + ' <span class="badge ' + esc(r.role) + '">' + esc(displayRole(r)) + "</span></td>" +
        '<td class="num">' + (s ? fmtRate(s.readsPerSec) : "–") + '</td><td class="num">' + (s ? fmtRate(s.writesPerSec) : "–") +
        '</td><td class="num">' + r.meanLatencyMs.toFixed(2) + " ms</td></tr>";
    }).join("");
}

function renderCache() {
  const cache = state.meta.cache;
  const card = $("cache-card");
  card.hidden = cache.state === "absent";
  if (card.hidden) return;
  const latest = state.samples[state.samples.length - 1];
  const c = latest && latest.cache;
  $("cache-summary").textContent = cache.state === "up" ? "admin " + cache.admin : "unreachable at " + cache.admin;
  drawChart($("cache-chart"), [{
    name: "hits ÷ (hits + misses), per second", color: "#12a150",
    points: state.samples.map((s) => [s.at, s.cache && s.cache.hitRatio != null ? s.cache.hitRatio * 100 : null]),
  }], { fmt: (v) => v.toFixed(0) + " %", label: "cache hit ratio", max: 100 });
  $("cache-stats").innerHTML = c
    ? tile("last second", fmtPct(c.hitRatio)) + tile("since the cache started", fmtPct(c.totalHitRatio)) +
      tile("hits", fmtRate(c.hitsPerSec)) + tile("misses", fmtRate(c.missesPerSec)) +
      tile("kept", fmtInt(c.entries) + " entries · " + fmtBytes(c.bytes))
    : '<p class="none">The cache does not answer: ' + esc(cache.error || "") + "</p>";
}

function tile(label, value) {
  return '<div class="tile"><span class="tile-value">' + esc(value) + '</span><span class="tile-label">' + esc(label) + "</span></div>";
}

function renderFailovers() {
  const list = state.meta.failovers.slice().reverse();
  $("failover-mode").textContent = "failover.mode " + state.meta.failoverMode;
  const now = proxyNow();
  $("failovers").innerHTML = list.length
    ? list.map((f) => '<li data-from="' + esc(f.from) + '" data-to="' + esc(f.to) + '"><span class="when">' + fmtClock(f.at) + "</span>" +
        '<span class="muted">(' + fmtAgo(now - f.at) + ")</span> " +
        '<span class="change">' + esc(f.from) + " → " + esc(f.to) + "</span> " +
        '<span class="badge ' + (f.kind === "automatic" ? "Lagging" : "REPLICA") + '">' + esc(f.kind) + "</span>" +
        '<span class="reason">' + esc(f.reason) + "</span></li>").join("")
    : '<li class="none">No failover since the proxy started. Primary: ' + esc(state.status.primary) + ".</li>";
}

function renderConflicts() {
  const st = state.status;
  const reported = st.multiPrimary && st.multiPrimary.openConflicts != null ? st.multiPrimary.openConflicts : st.conflicts;
  let html;
  if (reported != null) {
    const open = typeof reported === "object" ? reported.open : reported;
    html = '<p class="big" data-open-conflicts="' + (open || 0) + '"><strong>' + fmtInt(open || 0) + "</strong> open" +
      (open ? ' — <code>SHOW CONFLICTS</code> lists them' : "") + "</p>";
  } else if (state.meta.writeMode === "MULTI_PRIMARY") {
    html = '<p class="none">This proxy does not report conflicts.</p>';
  } else {
    html = '<p class="none">None possible: routing.writes.mode is ' + esc(state.meta.writeMode) +
      ", one primary takes every write.</p>";
  }
  $("conflicts").innerHTML = html;
}

// MULTI_PRIMARY: every object with the master its writes go to.
function renderOwners(colors) {
  const card = $("owners-card");
  const mp = state.status.multiPrimary;
  card.hidden = !isMultiPrimary();
  if (card.hidden) return;
  const objects = mp && Array.isArray(mp.objects) ? mp.objects : null;
  const counts = ownedBy();
  $("owners-summary").textContent = masters().map((m) => m.id + " " + ((counts[m.id] || []).length)).join(" · ");
  $("owners").innerHTML = objects == null
    ? '<tr><td class="muted">No master answered GET /replication/owners.</td></tr>'
    : "<tr><th>Object</th><th>Kind</th><th>Owner</th></tr>" + (objects.length ? objects.map((o) =>
        '<tr data-object="' + esc(o.kind + ":" + objectLabel(o)) + '" data-owner="' + esc(o.owner || "") + '"><td><code>' + esc(objectLabel(o)) +
        "</code></td><td>" + esc(o.kind.toLowerCase()) + '</td><td><i class="dot" style="background:' + (colors[o.owner] || "#8a95a8") + '"></i>' +
        esc(o.owner || "no master up") + "</td></tr>").join("")
        : '<tr><td colspan="3" class="muted">no database yet</td></tr>');
}

function healthBadge(h) {
  const word = h === "Down" ? "unreachable" : h === "Lagging" ? "lagging" : "up";
  return '<span class="badge ' + esc(h) + '">' + word + "</span>";
}

function renderInstances() {
  const insts = state.status.instances;
  const hasTerm = insts.some((i) => i.term != null);
  $("instances").innerHTML = "<tr><th>Instance</th><th>Address</th><th>Role</th><th>Health</th>" + (hasTerm ? "<th class=num>Term</th>" : "") +
    "<th class=num>Sequence</th><th class=num>Lag (proxy's checks)</th><th class=num>Reads, total</th><th class=num>Writes, total</th><th class=num>Errors</th><th class=num>In flight</th><th class=num>Mean latency</th><th>Last error</th></tr>" +
    insts.map((i) => '<tr data-row-instance="' + esc(i.id) + '"><td><strong>' + esc(i.id) + "</strong></td><td><code>" + esc(i.address) + "</code></td>" +
      '<td><span class="badge ' + esc(i.role) + '">' + esc(displayRole(i)) + "</span>" +
      (i.reportedRole && i.reportedRole !== i.role ? ' <span class="muted small">reports ' + esc(i.reportedRole) + "</span>" : "") + "</td>" +
      "<td>" + healthBadge(i.health) + "</td>" + (hasTerm ? '<td class="num">' + (i.term != null ? esc(i.term) : "–") + "</td>" : "") +
      '<td class="num">' + fmtInt(i.committedSequence) + '</td><td class="num">' + (i.role === "PRIMARY" ? "–" : fmtOps(i.lagOperations) + ", " + fmtMs(i.lagMs)) +
      '</td><td class="num">' + fmtInt(i.reads) + '</td><td class="num">' + fmtInt(i.writes) + '</td><td class="num">' + fmtInt(i.errors) +
      '</td><td class="num">' + fmtInt(i.inFlight) + '</td><td class="num">' + i.meanLatencyMs.toFixed(2) + ' ms</td><td class="error">' + esc(i.lastError || "") + "</td></tr>").join("");
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(safeRender, 120);
});
poll();
