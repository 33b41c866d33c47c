/**
 * The dashboard at `/`: one static page that polls `/metrics` every second and shows
 * rates computed from counter deltas. Inline (not a .html file) so `tsc` output is
 * self-contained; no external scripts, no build step.
 */
export const DASHBOARD_REFRESH_MS = 1000;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .75rem; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .75rem 1rem; }
  .label { color: #666; font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
  .value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
  table { border-collapse: collapse; margin-top: 1.5rem; background: #fff; }
  td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
  #status { color: #888; margin-top: 1rem; font-size: .8rem; }
  .bad { color: #b00; }
</style>
</head>
<body>
<h1>sluice</h1>
<div class="grid">
  <div class="card"><div class="label">active streams</div><div class="value" id="streams">–</div></div>
  <div class="card"><div class="label">running (worker / isolate)</div><div class="value" id="running">–</div></div>
  <div class="card"><div class="label">queued</div><div class="value" id="queued">–</div></div>
  <div class="card"><div class="label">chunks produced / s</div><div class="value" id="produced">–</div></div>
  <div class="card"><div class="label">chunks sent / s</div><div class="value" id="chunks">–</div></div>
  <div class="card"><div class="label">bytes sent / s</div><div class="value" id="bytes">–</div></div>
  <div class="card"><div class="label">connections</div><div class="value" id="connections">–</div></div>
  <div class="card"><div class="label">subscriptions</div><div class="value" id="subscriptions">–</div></div>
  <div class="card"><div class="label">errors</div><div class="value" id="errors">–</div></div>
  <div class="card"><div class="label">backpressure pauses</div><div class="value" id="pauses">–</div></div>
</div>
<table><thead><tr><th>error code</th><th>count</th></tr></thead><tbody id="codes"></tbody></table>
<div id="status">loading…</div>
<script>
"use strict";
const REFRESH_MS = ${DASHBOARD_REFRESH_MS};
function parse(text) {
  const out = new Map();
  for (const line of text.split("\\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{[^}]*\\})?\\s+(\\S+)/.exec(line);
    if (m === null) continue;
    const list = out.get(m[1]) || [];
    list.push({ labels: m[2] || "", value: Number(m[3]) });
    out.set(m[1], list);
  }
  return out;
}
function sum(metrics, name) {
  return (metrics.get(name) || []).reduce((a, s) => a + s.value, 0);
}
function fmt(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["", "k", "M", "G"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? Math.round(n) : n.toFixed(1)) + units[i];
}
let last;
async function tick() {
  try {
    const res = await fetch("/metrics", { cache: "no-store" });
    const metrics = parse(await res.text());
    const now = performance.now();
    // Produced: what plugins yielded (the host's counter); sent: what went out on sockets.
    const produced = sum(metrics, "sluice_chunks_total");
    const chunks = sum(metrics, "sluice_server_chunks_out_total");
    const bytes = sum(metrics, "sluice_server_bytes_out_total");
    if (last !== undefined) {
      const dt = (now - last.t) / 1000;
      document.getElementById("produced").textContent = fmt((produced - last.produced) / dt);
      document.getElementById("chunks").textContent = fmt((chunks - last.chunks) / dt);
      document.getElementById("bytes").textContent = fmt((bytes - last.bytes) / dt);
    }
    last = { t: now, produced, chunks, bytes };
    const running = (kind) => (metrics.get("sluice_streams_running") || []).filter((s) => s.labels.includes('sandbox="' + kind + '"')).reduce((a, s) => a + s.value, 0);
    document.getElementById("running").textContent = fmt(running("worker")) + " / " + fmt(running("isolate"));
    document.getElementById("queued").textContent = fmt(sum(metrics, "sluice_streams_queued"));
    document.getElementById("streams").textContent = fmt(sum(metrics, "sluice_server_active_streams"));
    document.getElementById("connections").textContent = fmt(sum(metrics, "sluice_server_connections"));
    document.getElementById("subscriptions").textContent = fmt(sum(metrics, "sluice_server_subscriptions"));
    document.getElementById("errors").textContent = fmt(sum(metrics, "sluice_server_errors_total"));
    document.getElementById("pauses").textContent = fmt(sum(metrics, "sluice_server_backpressure_pauses_total"));
    const rows = (metrics.get("sluice_server_errors_total") || []).map((s) => {
      const code = (/code="([^"]*)"/.exec(s.labels) || [])[1] || "?";
      return "<tr><td>" + code.replace(/[^A-Z0-9_]/g, "") + "</td><td>" + s.value + "</td></tr>";
    });
    document.getElementById("codes").innerHTML = rows.join("");
    const status = document.getElementById("status");
    status.className = "";
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    const status = document.getElementById("status");
    status.className = "bad";
    status.textContent = "cannot reach /metrics: " + err;
  }
}
tick();
setInterval(tick, REFRESH_MS);
</script>
</body>
</html>
`;
