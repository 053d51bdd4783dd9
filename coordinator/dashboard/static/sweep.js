// A sweep's page: /api/sweeps/<id>, polled every 2 s until the sweep ends. The trials table sorts by any column
// (by default the sweep's metric at the highest rung each trial reached, best first); the curves of every trial's
// metric share one chart, the best trial thick; each trial's rung history is its row's values at each rung.
"use strict";
const sweepId = decodeURIComponent(location.pathname.split("/").pop());
const api = "/api/sweeps/" + encodeURIComponent(sweepId);
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const PALETTE = ["#2f6fdf", "#e0662b", "#1b9e5a", "#8a4fd0", "#c23b7a", "#5b6270", "#b08900", "#0f8b8d", "#7a5230"];
let sweep = null;
let sortKey = "value";
let sortAsc = null;  // null: the sweep's goal decides
let plot = null;

function lastValue(t) {
  for (let i = t.values.length - 1; i >= 0; i--) if (t.values[i].value !== null) return t.values[i];
  return null;
}

function better(a, b) {  // -1 when a is better, for the sweep's goal; trials without a value last
  if (a === null && b === null) return 0;
  if (a === null) return 1;
  if (b === null) return -1;
  return sweep.goal === "maximize" ? b - a : a - b;
}

function sortedTrials() {
  const rows = sweep.trials.slice();
  const asc = sortAsc === null ? 1 : (sortAsc ? 1 : -1);
  rows.sort((a, b) => {
    if (sortKey === "value") {
      const ra = lastValue(a), rb = lastValue(b);
      const byRung = (rb ? rb.rung : -1) - (ra ? ra.rung : -1);  // further rungs first, then the metric
      return asc * (byRung || better(ra && ra.value, rb && rb.value) || a.trial - b.trial);
    }
    if (sortKey.startsWith("rung")) {
      const k = +sortKey.slice(4);
      const va = a.values.find(v => v.rung === k), vb = b.values.find(v => v.rung === k);
      return asc * (better(va ? va.value : null, vb ? vb.value : null) || a.trial - b.trial);
    }
    const x = sortKey === "trial" ? a.trial : a[sortKey], y = sortKey === "trial" ? b.trial : b[sortKey];
    return asc * (x < y ? -1 : x > y ? 1 : 0);
  });
  return rows;
}

function header() {
  const cols = [["trial", "trial"], ["status", "status"], ["rung", "rung"],
    ...sweep.rungs.map((r, k) => ["rung" + k, "@" + r]), ["value", sweep.metric], ["job_id", "job"],
    ["params", "parameters"]];
  document.querySelector("#trials thead tr").replaceChildren(...cols.map(([key, label]) => {
    const th = G.el("th", {class: key.startsWith("rung") || key === "value" ? "num" : "", text: label,
                           style: "cursor:pointer"});
    if (key !== "params") th.addEventListener("click", () => {
      sortAsc = sortKey === key ? !(sortAsc === null ? true : sortAsc) : null;
      sortKey = key;
      render();
    });
    return th;
  }));
}

function render() {
  const s = sweep;
  document.title = "gradmesh · " + s.id;
  document.getElementById("title").textContent = s.id;
  document.getElementById("state").replaceChildren(G.state(s.state));
  document.getElementById("message").textContent = s.message;
  document.getElementById("metric-name").textContent = s.metric;
  const facts = [["method", s.method], ["goal", s.goal + " " + s.metric],
    ["trials", `${s.trials.length} / ${s.trials_total} started`], ["at once", s.max_concurrent],
    ["rungs", s.rungs.join(", ")], ["owner", s.owner], ["created", G.time(s.created)]];
  if (s.best_trial !== null) facts.push(["best", `trial ${s.best_trial}: ${G.num(s.best_value)}`]);
  document.getElementById("facts").replaceChildren(...facts.map(([k, v]) => G.el("div", {}, G.el("span", {text: k}), String(v))));
  header();
  document.querySelector("#trials tbody").replaceChildren(...sortedTrials().map(t => {
    const last = lastValue(t);
    const tr = G.el("tr", {class: t.trial === s.best_trial ? "best" : "", "data-trial": t.trial},
      G.el("td", {text: t.trial}), G.el("td", {text: t.status}), G.el("td", {text: t.rung}),
      ...s.rungs.map((r, k) => { const v = t.values.find(x => x.rung === k);
                                 return G.el("td", {class: "num", text: v ? G.num(v.value) : ""}); }),
      G.el("td", {class: "num", text: last ? G.num(last.value) : "–"}),
      G.el("td", {}, t.job_id ? G.el("a", {href: "/jobs/" + encodeURIComponent(t.job_id), text: t.job_id}) : "–"),
      G.el("td", {class: "mono", text: Object.entries(t.params).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ")}));
    return tr;
  }));
  document.getElementById("promotions").replaceChildren(...s.promotions.map((p, k) =>
    G.el("div", {text: `rung ${k} (step ${s.rungs[k]}) → rung ${k + 1}: ${p.length ? p.join(", ") : "none yet"}`})));
  drawCurves();
}

function drawCurves() {
  const s = sweep;
  const steps = [...new Set(s.trials.flatMap(t => t.curve.map(p => p[0])))].sort((a, b) => a - b);
  const index = new Map(steps.map((x, i) => [x, i]));
  const data = [steps, ...s.trials.map(t => {
    const ys = new Array(steps.length).fill(null);
    for (const [x, y] of t.curve) ys[index.get(x)] = y;
    return ys;
  })];
  const series = [{label: "step"}, ...s.trials.map((t, i) => ({
    label: "trial " + t.trial, spanGaps: true, value: (u, v) => v === null ? "–" : G.num(v),
    stroke: t.trial === s.best_trial ? "#111" : PALETTE[i % PALETTE.length],
    width: t.trial === s.best_trial ? 3.5 : 1.2}))];
  const el = document.getElementById("chart");
  if (plot && plot.series.length === series.length &&
      plot.series.every((x, i) => i === 0 || x.width === series[i].width)) {
    plot.setData(data);
    return;
  }
  if (plot) plot.destroy();
  plot = new uPlot({width: Math.max(320, el.clientWidth), height: 320, scales: {x: {time: false}},
                    series, legend: {show: s.trials.length <= 40},
                    hooks: {draw: [u => {  // the rungs, dashed
                      const ctx = u.ctx; ctx.save(); ctx.setLineDash([4, 4]); ctx.strokeStyle = "#bbb";
                      for (const r of s.rungs) {
                        const x = u.valToPos(r, "x", true);
                        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
                      }
                      ctx.restore();
                    }]}}, data, el);
}

async function poll() {
  try {
    const r = await fetch(api, {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    sweep = body;
    G.live(true);
    render();
    if (TERMINAL.includes(sweep.state)) { document.getElementById("live").textContent = "ended"; return; }
  } catch (err) {
    G.live(false);
    document.getElementById("message").textContent = String(err.message || err);
  }
  setTimeout(poll, 2000);
}
window.addEventListener("resize", () => { if (plot) plot.setSize({width: Math.max(320, document.getElementById("chart").clientWidth), height: 320}); });
poll();
