// A job's page: its curves and header follow /api/jobs/<id>/events (the WatchJob stream), its log follows
// /api/jobs/<id>/log. The browser's EventSource reconnects by itself and sends Last-Event-ID (the last step
// it got), so the server resumes after it and no point is lost or drawn twice.
"use strict";
const jobId = decodeURIComponent(location.pathname.split("/").pop());
const api = "/api/jobs/" + encodeURIComponent(jobId);
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const LOG_LIMIT = 200000;  // characters of log kept on the page

// ---------------------------------------------------------------- curves
const cols = {step: [], train_loss: [], val_loss: [], val_accuracy: [], lr: [], samples_per_second: []};
const fmt = (digits) => (u, v) => v === null || v === undefined ? "–" : Number(v).toPrecision(digits);
const charts = [
  {el: "chart-loss", series: [["train loss", "train_loss", "#2f6fdf"], ["val loss", "val_loss", "#e0662b"]]},
  {el: "chart-acc", series: [["val accuracy", "val_accuracy", "#1b9e5a"]]},
  {el: "chart-lr", series: [["lr", "lr", "#8a4fd0"]]},
  {el: "chart-sps", series: [["samples/s", "samples_per_second", "#5b6270"]]},
];
let zoomed = false;
function axisLabel(v) {  // short tick labels: 120k, 0.00125, 2.50
  const a = Math.abs(v);
  if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
  return +Number(v).toPrecision(3) + "";
}

function chartData(c) { return [cols.step, ...c.series.map(s => cols[s[1]])]; }

for (const c of charts) {
  const el = document.getElementById(c.el);
  c.plot = new uPlot({
    width: Math.max(300, el.clientWidth), height: 220,
    scales: {x: {time: false}},
    cursor: {sync: {key: "gradmesh"}, drag: {x: true, y: false}},
    series: [{label: "step", value: (u, v) => v === null ? "–" : v},
             ...c.series.map(([label, , color]) => ({label, stroke: color, width: 1.5, spanGaps: true, value: fmt(4)}))],
    axes: [{}, {size: 64, values: (u, vals) => vals.map(axisLabel)}],
    hooks: {setSelect: [u => {
      if (u.select.width <= 0) return;
      const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
      zoomed = true;
      for (const other of charts) if (other.plot !== u) other.plot.setScale("x", {min: lo, max: hi});
    }]},
  }, chartData(c), el);
  el.addEventListener("dblclick", () => { zoomed = false; draw(); });
}
window.addEventListener("resize", () => {
  for (const c of charts) c.plot.setSize({width: Math.max(300, document.getElementById(c.el).clientWidth), height: 220});
});

let drawPending = false;
function draw() {
  drawPending = false;
  for (const c of charts) c.plot.setData(chartData(c), !zoomed);
}
function scheduleDraw() {  // at most one redraw per 50 ms, however many points arrive
  if (!drawPending) { drawPending = true; setTimeout(draw, 50); }
}
function addPoint(p) {
  const n = cols.step.length;
  if (n && p.step <= cols.step[n - 1]) return;  // steps only grow; a resent point is drawn once
  for (const k of Object.keys(cols)) cols[k].push(p[k]);
  document.getElementById("points").textContent = cols.step.length;
  document.getElementById("last-step").textContent = p.step;
}

// ---------------------------------------------------------------- the job
let job = null;
let detailAt = 0;

function renderDetail(d) {
  job = d;
  detailAt = Date.now();
  document.title = "gradmesh · " + d.id;
  document.getElementById("title").textContent = d.id;
  document.getElementById("state").replaceChildren(G.state(d.state));
  document.getElementById("message").textContent = d.message;
  document.getElementById("progress").replaceChildren(G.progress(d, true));
  const best = d.best;
  const facts = [
    ["name", d.name], ["step", `${d.step} / ${d.total_steps || "?"}`], ["epoch", d.epoch],
    ["workers", d.workers], ["samples/s", d.samples_per_second ? Math.round(d.samples_per_second) : "–"],
    ["ETA", d.terminal ? "–" : G.duration(d.eta_seconds)],
    ["best val loss", best ? `${G.num(best.val_loss)} (acc ${G.pct(best.val_accuracy)}, step ${best.step})` : "–"],
    ["attempts", d.attempts], ["restarts", d.restarts], ["owner", d.owner], ["created", G.time(d.created)],
  ];
  if (Object.keys(d.labels).length) facts.push(["labels", Object.entries(d.labels).map(([k, v]) => k + "=" + v).join(" ")]);
  if (d.labels.sweep) facts.push(["sweep", G.el("a", {href: "/sweeps/" + encodeURIComponent(d.labels.sweep), text: d.labels.sweep})]);
  document.getElementById("facts").replaceChildren(...facts.map(([k, v]) => G.el("div", {}, G.el("span", {text: k}), v instanceof Node ? v : String(v))));
  const cancellable = !d.terminal && !d.cancel_requested;
  document.getElementById("cancel").disabled = !cancellable;
  document.getElementById("cancel-checkpoint").disabled = !cancellable || d.state !== "RUNNING";
  document.getElementById("resume").disabled = !["FAILED", "CANCELLED"].includes(d.state) || !d.checkpoints.length;
  document.getElementById("delete").disabled = !d.terminal;
  // only the actions this user may take on this job are offered (the server refuses the others anyway)
  const may = new Set(d.actions || []);
  for (const [id, action] of [["cancel", "cancel"], ["cancel-checkpoint", "cancel"], ["resume", "resume"],
                              ["delete", "delete"]]) {
    document.getElementById(id).hidden = !may.has(action);
  }

  document.querySelector("#attempts tbody").replaceChildren(...d.attempt_list.map(a => G.el("tr", {},
    G.el("td", {text: a.attempt}), G.el("td", {text: a.hosts.join(", ")}), G.el("td", {class: "num", text: a.ranks}),
    G.el("td", {text: G.time(a.started)}), G.el("td", {text: a.ended ? G.time(a.ended) : "running"}),
    G.el("td", {class: "num", text: a.exit_code === null ? "–" : a.exit_code}), G.el("td", {text: a.outcome}),
    G.el("td", {}, a.failure ? G.el("b", {text: a.failure.cause + ": "}) : null,
         a.failure ? a.failure.headline : a.message))));

  document.querySelector("#checkpoints tbody").replaceChildren(...d.checkpoints.slice().reverse().map(c => G.el("tr", {"data-step": c.step},
    G.el("td", {class: "num", text: c.step}), G.el("td", {class: "num", text: c.epoch}),
    G.el("td", {class: "num", text: G.bytes(c.size)}), G.el("td", {class: "num", text: G.num(c.val_loss)}),
    G.el("td", {class: "num", text: G.pct(c.val_accuracy)}), G.el("td", {text: c.final ? "final" : ""}),
    G.el("td", {class: "mono sha", title: c.sha256, text: c.sha256.slice(0, 16) + "…"}),
    G.el("td", {}, G.el("a", {href: `${api}/checkpoints/${c.step}`, download: `${d.id}-step-${c.step}.npz`, text: "download"})))));
  document.getElementById("spec").textContent = JSON.stringify(d.spec, null, 2);
}

async function refreshDetail() {
  detailAt = Date.now();
  const r = await fetch(api, {credentials: "same-origin"});
  if (r.ok) renderDetail(await r.json());
}

// ---------------------------------------------------------------- streams
const events = new EventSource(api + "/events");
events.onopen = () => G.live(true);
events.onerror = () => G.live(false);
events.addEventListener("metrics", e => { JSON.parse(e.data).forEach(addPoint); scheduleDraw(); });
events.addEventListener("metric", e => {
  addPoint(JSON.parse(e.data));
  scheduleDraw();
  // checkpoints and attempts change without a state change: look again now and then while it trains
  if (Date.now() - detailAt > 2000) refreshDetail();
});
events.addEventListener("snapshot", e => renderDetail(JSON.parse(e.data)));
events.addEventListener("state", e => {
  const change = JSON.parse(e.data);
  renderDetail(change.job);
  if (TERMINAL.includes(change.state)) {  // the stream ends with the job: no reconnect
    events.close();
    document.getElementById("live").textContent = "ended";
    setTimeout(refreshDetail, 1500);  // the final checkpoint may land just after the state
  }
});

const logBox = document.getElementById("log");
const logs = new EventSource(api + "/log");
logs.onopen = () => { logBox.textContent = ""; };  // a reconnect re-sends the log from its start
logs.addEventListener("log", e => {
  const chunk = JSON.parse(e.data);
  const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
  document.getElementById("log-attempt").textContent = "attempt " + chunk.attempt;
  logBox.textContent = (logBox.textContent + chunk.text).slice(-LOG_LIMIT);
  if (atBottom) logBox.scrollTop = logBox.scrollHeight;
});
logs.addEventListener("end", () => logs.close());

// ---------------------------------------------------------------- actions (the API's rules: the server decides)
async function act(path, body, question) {
  if (question && !confirm(question)) return;
  document.getElementById("error").textContent = "";
  try {
    const result = await G.post(api + path, body);
    if (path === "/resume") location.href = "/jobs/" + encodeURIComponent(result.id);
    else if (path === "/delete") location.href = "/";
    else refreshDetail();
  } catch (err) {
    document.getElementById("error").textContent = err.message;
  }
}
document.getElementById("cancel").addEventListener("click", () =>
  act("/cancel", {checkpoint: false}, `Cancel ${jobId} now? Steps since its last checkpoint are lost.`));
document.getElementById("cancel-checkpoint").addEventListener("click", () =>
  act("/cancel", {checkpoint: true}, `Cancel ${jobId} after writing a final checkpoint?`));
document.getElementById("resume").addEventListener("click", () =>
  act("/resume", {}, `Resume ${jobId} from its newest checkpoint, as a new job?`));
document.getElementById("delete").addEventListener("click", () =>
  act("/delete", {}, `Delete ${jobId} with its metrics, logs and checkpoints? This cannot be undone.`));
