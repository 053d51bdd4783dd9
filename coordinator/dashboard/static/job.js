// A job's page: its curves and header follow /api/jobs/<id>/events (the WatchJob stream), its log follows
// /api/jobs/<id>/log. The browser's EventSource reconnects by itself and sends Last-Event-ID (the last step
// it got), so the server resumes after it and no point is lost or drawn twice. Between evaluations the header
// is polled (step, and the step rate it implies), so step, samples/s and ETA move with every progress report.
// Other jobs can be overlaid on the curves (?compare=a,b, or the form): each follows its own event stream.
"use strict";
const jobId = decodeURIComponent(location.pathname.split("/").pop());
const api = "/api/jobs/" + encodeURIComponent(jobId);
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const LOG_LIMIT = 200000;  // characters of log kept on the page
const POLL_MS = 2000;      // header refresh while the job runs
const KEYS = ["step", "epoch", "time", "train_loss", "val_loss", "val_accuracy", "lr", "samples_per_second"];

// ---------------------------------------------------------------- curves
// One series table per job: this job first, then the overlaid ones, in the order they were added.
const runs = new Map();  // job id → {cols: {key: []}, source: EventSource|null}
const PALETTE = ["#2f6fdf", "#e0662b", "#1b9e5a", "#8a4fd0", "#c23b7a", "#5b6270", "#b08a00", "#0f8f9f"];
const CHARTS = [
  {el: "chart-loss", unit: "loss", keys: [["train loss", "train_loss"], ["val loss", "val_loss"]], loss: true},
  {el: "chart-acc", unit: "accuracy (%)", keys: [["val accuracy", "val_accuracy"]], pct: true},
  {el: "chart-lr", unit: "learning rate", keys: [["lr", "lr"]]},
  {el: "chart-sps", unit: "samples / s", keys: [["samples/s", "samples_per_second"]]},
];
const X_TITLES = {step: "step", epoch: "epoch", time: "wall time since the first point (s)"};
const ui = {x: document.getElementById("x-axis"), log: document.getElementById("log-scale"),
            smooth: document.getElementById("smoothing")};
let zoomed = false;

function emptyCols() { return Object.fromEntries(KEYS.map(k => [k, []])); }
function run(id) {
  if (!runs.has(id)) runs.set(id, {cols: emptyCols(), source: null});
  return runs.get(id);
}
run(jobId);

function axisLabel(v) {  // short tick labels: 120k, 0.00125, 2.50 (a log axis leaves some ticks unlabelled: null)
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
  return +Number(v).toPrecision(3) + "";
}
function smooth(values, weight) {  // TensorBoard's debiased exponential moving average; gaps stay gaps
  if (!weight) return values;
  let last = 0, n = 0;
  return values.map(v => {
    if (v === null || v === undefined) return null;
    last = last * weight + (1 - weight) * v; n++;
    return last / (1 - Math.pow(weight, n));
  });
}
function xOf(cols, kind) {
  if (kind === "time") { const t0 = cols.time.find(t => t); return cols.time.map(t => t && t0 ? t - t0 : null); }
  if (kind === "epoch") {
    const epochs = job && job.spec && job.spec.train && job.spec.train.epochs;
    const per = epochs && job.total_steps ? job.total_steps / epochs : 0;
    return per ? cols.step.map(s => s / per) : cols.epoch.slice();
  }
  return cols.step.slice();
}
function chartTables(c) {  // [[x, y...], ...] per job, joined on x by uPlot
  const kind = ui.x.value, weight = Number(ui.smooth.value);
  const tables = [];
  for (const [, r] of runs) {
    const x = xOf(r.cols, kind);
    const keep = x.map((v, i) => v !== null && (i === 0 || v >= x[i - 1]));  // x must only grow
    const ys = c.keys.map(([, key]) => {
      let y = r.cols[key].map(v => (v === null ? null : (c.pct ? 100 * v : v)));
      if (c.loss) y = smooth(y, weight);
      if (c.loss && ui.log.checked) y = y.map(v => (v !== null && v > 0 ? v : null));
      return y.filter((_, i) => keep[i]);
    });
    tables.push([x.filter((_, i) => keep[i]), ...ys]);
  }
  return tables.length === 1 ? tables[0] : uPlot.join(tables);
}
function fmt(c) {  // legend values: 4 significant digits, whole numbers from 10,000 up (208,500 not 2.085e+5)
  return (u, v) => v === null || v === undefined ? "–" : (Math.abs(v) >= 1e4 ? Math.round(v).toLocaleString()
    : Number(v).toPrecision(c.pct ? 3 : 4)) + (c.pct ? "%" : "");
}

function lastIndex(u) {  // the newest x with a value: what the legend shows when the cursor is elsewhere
  const xs = u.data[0];
  for (let i = xs.length - 1; i >= 0; i--) if (u.data.slice(1).some(s => s[i] !== null && s[i] !== undefined)) return i;
  return null;
}

function buildCharts() {
  for (const c of CHARTS) {
    const el = document.getElementById(c.el);
    if (c.plot) c.plot.destroy();
    el.replaceChildren();
    const series = [{label: X_TITLES[ui.x.value], value: (u, v) => v === null ? "–" : axisLabel(v)}];
    let i = 0;
    for (const [id] of runs) {
      for (const [label] of c.keys) {
        const color = PALETTE[i % PALETTE.length]; i++;
        series.push({label: runs.size > 1 ? `${id} · ${label}` : label, stroke: color, width: 1.5, spanGaps: true,
                     dash: id === jobId ? undefined : [6, 3], value: fmt(c)});
      }
    }
    const yScale = c.loss && ui.log.checked ? {distr: 3} : {};
    c.plot = new uPlot({
      width: Math.max(200, el.clientWidth), height: 220,
      scales: {x: {time: false}, y: yScale},
      cursor: {sync: {key: "gradmesh"}, drag: {x: true, y: false}},
      legend: {live: true},
      series,
      axes: [{label: X_TITLES[ui.x.value], labelSize: 18, values: (u, vals) => vals.map(axisLabel)},
             {label: c.unit, labelSize: 18, size: 64, values: (u, vals) => vals.map(axisLabel)}],
      hooks: {
        setSelect: [u => {
          if (u.select.width <= 0) return;
          const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
          zoomed = true;
          for (const other of CHARTS) if (other.plot !== u) other.plot.setScale("x", {min: lo, max: hi});
        }],
        setCursor: [u => { if (u.cursor.idx === null || u.cursor.idx === undefined) showLatest(u); }],
      },
    }, chartTables(c), el);
    const empty = G.el("div", {class: "empty", text: "no data yet"});
    el.append(empty);
    c.empty = empty;
    el.ondblclick = () => { zoomed = false; draw(); };
  }
  draw();
}
function showLatest(u) {
  const idx = lastIndex(u);
  if (idx !== null) u.setLegend({idx});
}

let drawPending = false;
function draw() {
  drawPending = false;
  for (const c of CHARTS) {
    const data = chartTables(c);
    c.plot.setData(data, !zoomed);
    c.empty.hidden = data[0].length > 0;
    showLatest(c.plot);
  }
}
function scheduleDraw() {  // at most one redraw per 50 ms, however many points arrive
  if (!drawPending) { drawPending = true; setTimeout(draw, 50); }
}
function addPoint(id, p) {
  const cols = run(id).cols;
  const n = cols.step.length;
  if (n && p.step <= cols.step[n - 1]) return;  // steps only grow; a resent point is drawn once
  for (const k of KEYS) cols[k].push(p[k] === undefined ? null : p[k]);
  if (id === jobId) {
    document.getElementById("points").textContent = cols.step.length;
    document.getElementById("last-step").textContent = p.step;
  }
}
window.addEventListener("resize", () => {
  for (const c of CHARTS) c.plot.setSize({width: Math.max(200, document.getElementById(c.el).clientWidth), height: 220});
});
for (const input of [ui.x, ui.log]) input.addEventListener("change", buildCharts);
ui.smooth.addEventListener("input", () => {
  document.getElementById("smoothing-value").textContent = Number(ui.smooth.value).toFixed(2);
  scheduleDraw();
});

// ---------------------------------------------------------------- jobs overlaid for comparison
function compared() { return [...runs.keys()].filter(id => id !== jobId); }
function showCompared() {
  document.getElementById("compared").replaceChildren(...compared().map(id => G.el("span", {class: "chip"},
    G.el("a", {href: "/jobs/" + encodeURIComponent(id), text: id}),
    Object.assign(G.el("button", {title: "remove", "data-remove": id, text: "×"}), {onclick: () => removeCompared(id)}))));
  const ids = compared();
  history.replaceState(null, "", location.pathname + (ids.length ? "?compare=" + ids.map(encodeURIComponent).join(",") : ""));
}
function addCompared(id) {
  id = id.trim();
  if (!id || runs.has(id)) return;
  const r = run(id);
  r.source = new EventSource("/api/jobs/" + encodeURIComponent(id) + "/events");
  r.source.addEventListener("metrics", e => { JSON.parse(e.data).forEach(p => addPoint(id, p)); scheduleDraw(); });
  r.source.addEventListener("metric", e => { addPoint(id, JSON.parse(e.data)); scheduleDraw(); });
  r.source.addEventListener("state", e => { if (TERMINAL.includes(JSON.parse(e.data).state)) r.source.close(); });
  r.source.onerror = () => { if (r.source.readyState === EventSource.CLOSED) return; };
  showCompared();
  buildCharts();
}
function removeCompared(id) {
  const r = runs.get(id);
  if (r && r.source) r.source.close();
  runs.delete(id);
  showCompared();
  buildCharts();
}
document.getElementById("compare-form").addEventListener("submit", e => {
  e.preventDefault();
  const input = document.getElementById("compare");
  addCompared(input.value);
  input.value = "";
});

// ---------------------------------------------------------------- the job
let job = null;
let detailAt = 0;
const seen = [];  // (time, step) of the header's refreshes: the live step rate

function liveRate(d) {
  const now = Date.now() / 1000;
  if (!seen.length || seen[seen.length - 1].step !== d.step) seen.push({t: now, step: d.step});
  while (seen.length > 2 && now - seen[1].t > 20) seen.shift();  // about the last 20 s
  if (d.state !== "RUNNING" || seen.length < 2) return null;
  const a = seen[0], b = seen[seen.length - 1];
  return b.t > a.t && b.step > a.step ? (b.step - a.step) / (b.t - a.t) : null;
}

function renderDetail(d) {
  job = d;
  detailAt = Date.now();
  document.title = "gradmesh · " + d.id;
  document.getElementById("title").textContent = d.id;
  document.getElementById("state").replaceChildren(G.state(d.state));
  const summary = document.getElementById("summary");
  summary.textContent = d.summary;
  summary.className = "summary" + (["FAILED", "RESTARTING"].includes(d.state) ? " failed" : "");
  document.getElementById("progress").replaceChildren(G.progress(d, true));
  const best = d.best;
  const rate = liveRate(d);
  const batch = d.spec && d.spec.train && d.spec.train.batch_size;
  const sps = rate && batch ? rate * batch : d.samples_per_second;
  const eta = rate && d.total_steps ? (d.total_steps - d.step) / rate : d.eta_seconds;
  const end = d.ended || (d.terminal ? null : Date.now() / 1000);
  const facts = [
    ["name", d.name], ["step", `${d.step} / ${d.total_steps || "?"}`], ["epoch", d.epoch],
    ["workers", d.workers], ["samples/s", sps ? Math.round(sps).toLocaleString() : "–"],
    ["ETA", d.terminal ? "–" : G.duration(eta)],
    ["best val loss", best ? `${G.num(best.val_loss)} (acc ${G.pct(best.val_accuracy)}, step ${best.step})` : "–"],
    ["attempts", d.attempts], ["restarts", d.restarts], ["owner", d.owner], ["created", G.time(d.created)],
    ["started", G.time(d.started)], ["ended", d.ended ? G.time(d.ended) : "–"],
    ["duration", d.started && end ? G.duration(end - d.started) : "–"],
  ];
  if (Object.keys(d.labels).length) facts.push(["labels", Object.entries(d.labels).map(([k, v]) => k + "=" + v).join(" ")]);
  if (d.labels.sweep) facts.push(["sweep", G.el("a", {href: "/sweeps/" + encodeURIComponent(d.labels.sweep), text: d.labels.sweep})]);
  document.getElementById("facts").replaceChildren(...facts.map(([k, v]) =>
    G.el("div", {"data-fact": k}, G.el("span", {text: k}), v instanceof Node ? v : String(v))));
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

  const attempts = d.attempt_list.map(a => G.el("tr", {},
    G.el("td", {text: a.attempt}), G.el("td", {text: a.hosts.join(", ")}), G.el("td", {class: "num", text: a.ranks}),
    G.el("td", {text: G.time(a.started)}), G.el("td", {text: a.ended ? G.time(a.ended) : "running"}),
    G.el("td", {class: "num", text: G.duration((a.ended || Date.now() / 1000) - a.started)}),
    G.el("td", {class: "num", text: a.exit_code === null ? "–" : a.exit_code}), G.el("td", {text: a.outcome}),
    G.el("td", {}, a.failure ? G.el("b", {text: a.failure.cause + ": "}) : null,
         a.failure ? a.failure.headline : a.message.split("\nlast lines of ")[0])));
  document.querySelector("#attempts tbody").replaceChildren(...(attempts.length ? attempts : [G.emptyRow(9)]));

  const ckpts = d.checkpoints.slice().reverse().map(c => G.el("tr", {"data-step": c.step, class: c.best ? "best" : ""},
    G.el("td", {class: "num", text: c.step}), G.el("td", {class: "num", text: c.epoch}),
    G.el("td", {class: "num", text: G.bytes(c.size)}),
    G.el("td", {class: "num", text: c.evaluated ? G.num(c.val_loss) : "–",
                title: c.evaluated ? "" : "not evaluated at this step"}),
    G.el("td", {class: "num", text: c.evaluated ? G.pct(c.val_accuracy) : "–"}),
    G.el("td", {class: "marks", text: [c.best ? "★ best" : "", c.final ? "final" : ""].filter(Boolean).join(" · ")}),
    G.el("td", {class: "mono sha", title: c.sha256, text: c.sha256.slice(0, 16) + "…"}),
    G.el("td", {}, G.el("a", {href: `${api}/checkpoints/${c.step}`, download: `${d.id}-step-${c.step}.npz`, text: "download"}))));
  document.querySelector("#checkpoints tbody").replaceChildren(...(ckpts.length ? ckpts : [G.emptyRow(8)]));
  document.getElementById("spec").textContent = JSON.stringify(d.spec, null, 2);
}

async function refreshDetail() {
  detailAt = Date.now();
  const r = await fetch(api, {credentials: "same-origin"});
  if (r.ok) renderDetail(await r.json());
}
setInterval(() => { if (job && !job.terminal && Date.now() - detailAt >= POLL_MS) refreshDetail(); }, 500);

// ---------------------------------------------------------------- streams
const events = new EventSource(api + "/events");
events.onopen = () => G.live(true);
events.onerror = () => G.live(false);
events.addEventListener("metrics", e => { JSON.parse(e.data).forEach(p => addPoint(jobId, p)); scheduleDraw(); });
events.addEventListener("metric", e => { addPoint(jobId, JSON.parse(e.data)); scheduleDraw(); });
events.addEventListener("snapshot", e => { const first = !job; renderDetail(JSON.parse(e.data)); if (first) buildCharts(); });
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
logBox.textContent = "no data yet";
const logs = new EventSource(api + "/log");
let logEmpty = true;
logs.onopen = () => { logBox.textContent = "no data yet"; logEmpty = true; };  // a reconnect re-sends the log
logs.addEventListener("log", e => {
  const chunk = JSON.parse(e.data);
  const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
  document.getElementById("log-attempt").textContent = "attempt " + chunk.attempt;
  if (logEmpty) { logBox.textContent = ""; logEmpty = false; }
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

buildCharts();
for (const id of (new URLSearchParams(location.search).get("compare") || "").split(",")) if (id) addCompared(id);
