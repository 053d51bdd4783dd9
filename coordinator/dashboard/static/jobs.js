// The jobs list: one event stream sends the whole (state-filtered) list whenever it changes; searching, sorting
// and paging happen here, on that list (the server sends at most the newest 500).
"use strict";
const filter = document.getElementById("filter");
const search = document.getElementById("search");
const PAGE = 25;
let source = null;
let listing = {jobs: [], slots: [], more: false};
const view = {sort: "created", desc: true, page: 0};

function renderSlots() {
  const box = document.getElementById("slots");
  const slots = listing.slots.map(s => G.el("div", {class: "slot"},
    G.el("div", {}, G.el("b", {text: s.host}), ` ${s.in_use} of ${s.slots} slot(s) in use`),
    G.el("div", {class: "muted"}, ...s.jobs.flatMap((j, i) => [i ? ", " : "",
      G.el("a", {href: "/jobs/" + encodeURIComponent(j.job), text: j.job}), ` (${j.slots})`]))));
  box.replaceChildren(...(slots.length ? slots : [G.el("div", {class: "muted", text: "no data yet"})]));
}

const now = () => Date.now() / 1000;
function duration(j) { return j.started ? (j.ended || now()) - j.started : null; }
function loss(j) { return j.latest ? j.latest.train_loss : null; }
function acc(j) { const b = j.best || j.latest; return b ? b.val_accuracy : null; }
const SORT = {
  id: j => j.id, state: j => j.state, step: j => j.step, loss, acc, workers: j => j.workers, owner: j => j.owner || null,
  duration,
  ended: j => j.ended || null, created: j => j.created,
};

function matches(j, words) {
  const text = [j.id, j.name, j.state, j.owner || "", ...Object.entries(j.labels).map(([k, v]) => `${k}=${v}`),
                ...Object.values(j.labels)].join(" ").toLowerCase();
  return words.every(w => text.includes(w));
}

function reason(j) {  // the failure or queue reason, inline
  if (!j.summary || j.state === "RUNNING" || j.state === "SUCCEEDED") return null;
  return G.el("div", {class: "reason" + (j.state === "FAILED" ? " failed" : ""), text: j.summary, title: j.summary});
}

function renderJobs() {
  const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
  const key = SORT[view.sort];
  const found = listing.jobs.filter(j => matches(j, words)).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;   // unknown values last, whichever the direction
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * (view.desc ? -1 : 1);
  });
  const pages = Math.max(1, Math.ceil(found.length / PAGE));
  view.page = Math.min(view.page, pages - 1);
  const shown = found.slice(view.page * PAGE, (view.page + 1) * PAGE);
  const rows = shown.map(j => G.el("tr", {"data-job": j.id},
    G.el("td", {}, G.el("a", {href: "/jobs/" + encodeURIComponent(j.id), text: j.id}),
         G.el("div", {class: "muted", text: [j.name, ...Object.entries(j.labels).map(([k, v]) => `${k}=${v}`)].join(" · ")})),
    G.el("td", {title: j.message}, G.state(j.state), reason(j)),
    G.el("td", {}, G.progress(j)),
    G.el("td", {class: "num", text: `${j.step} / ${j.total_steps || "?"}`}),
    G.el("td", {class: "num", text: G.num(loss(j))}),
    G.el("td", {class: "num", text: G.pct(acc(j))}),
    G.el("td", {class: "num", text: j.workers}),
    G.el("td", {text: j.owner || "–"}),
    G.el("td", {class: "num", text: G.duration(duration(j))}),
    G.el("td", {text: j.ended ? G.time(j.ended) : "–"}),
    G.el("td", {class: "num", text: G.age(j.created)})));
  document.querySelector("#jobs tbody").replaceChildren(...(rows.length ? rows : [G.emptyRow(11)]));
  document.getElementById("count").textContent = `${found.length}` + (found.length !== listing.jobs.length ?
    ` of ${listing.jobs.length}` : "") + `${listing.more ? "+ (the newest shown)" : ""} job(s)`;
  document.getElementById("page").textContent = `page ${view.page + 1} of ${pages}`;
  document.getElementById("prev").disabled = view.page === 0;
  document.getElementById("next").disabled = view.page >= pages - 1;
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === view.sort);
    th.dataset.dir = th.dataset.sort === view.sort ? (view.desc ? "↓" : "↑") : "";
  }
}

function connect() {
  if (source) source.close();
  const state = filter.value;
  source = new EventSource("/api/jobs/stream" + (state ? "?state=" + state : ""));
  source.addEventListener("jobs", e => {
    listing = JSON.parse(e.data);
    if (listing.user) document.getElementById("user").textContent = `${listing.user.name} (${listing.user.role})`;
    renderSlots(); renderJobs();
  });
  source.onopen = () => G.live(true);
  source.onerror = () => G.live(false);
}

function remember() {
  const q = new URLSearchParams();
  if (filter.value) q.set("state", filter.value);
  if (search.value) q.set("q", search.value);
  if (view.sort !== "created" || !view.desc) q.set("sort", (view.desc ? "-" : "") + view.sort);
  history.replaceState(null, "", q.toString() ? "?" + q : "/");
}

const params = new URLSearchParams(location.search);
filter.value = params.get("state") || "";
search.value = params.get("q") || "";
if (params.get("sort")) { view.desc = params.get("sort").startsWith("-"); view.sort = params.get("sort").replace(/^-/, ""); }
filter.addEventListener("change", () => { remember(); connect(); });
search.addEventListener("input", () => { view.page = 0; remember(); renderJobs(); });
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    view.desc = view.sort === th.dataset.sort ? !view.desc : !["id", "state"].includes(th.dataset.sort);
    view.sort = th.dataset.sort;
    view.page = 0;
    remember();
    renderJobs();
  });
}
document.getElementById("prev").addEventListener("click", () => { view.page--; renderJobs(); });
document.getElementById("next").addEventListener("click", () => { view.page++; renderJobs(); });
setInterval(renderJobs, 10000);  // ages and durations move on even when nothing else does
connect();
