// The jobs list: one event stream sends the whole (filtered) list whenever it changes.
"use strict";
const filter = document.getElementById("filter");
let source = null;
let listing = {jobs: [], slots: [], more: false};

function renderSlots() {
  const box = document.getElementById("slots");
  box.replaceChildren(...listing.slots.map(s => G.el("div", {class: "slot"},
    G.el("div", {}, G.el("b", {text: s.host}), ` ${s.in_use} of ${s.slots} slot(s) in use`),
    G.el("div", {class: "muted"}, ...s.jobs.flatMap((j, i) => [i ? ", " : "",
      G.el("a", {href: "/jobs/" + encodeURIComponent(j.job), text: j.job}), ` (${j.slots})`])))));
}

function renderJobs() {
  const rows = listing.jobs.map(j => {
    const best = j.best || j.latest;
    return G.el("tr", {"data-job": j.id},
      G.el("td", {}, G.el("a", {href: "/jobs/" + encodeURIComponent(j.id), text: j.id}),
           G.el("div", {class: "muted", text: j.name})),
      G.el("td", {title: j.message}, G.state(j.state)),
      G.el("td", {}, G.progress(j)),
      G.el("td", {class: "num", text: `${j.step} / ${j.total_steps || "?"}`}),
      G.el("td", {class: "num", text: G.pct(best ? best.val_accuracy : null)}),
      G.el("td", {class: "num", text: j.workers}),
      G.el("td", {text: j.owner}),
      G.el("td", {class: "num", text: G.age(j.created)}));
  });
  document.querySelector("#jobs tbody").replaceChildren(...rows);
  document.getElementById("count").textContent =
    `${listing.jobs.length}${listing.more ? "+ (the newest shown)" : ""} job(s)`;
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

filter.value = new URLSearchParams(location.search).get("state") || "";
filter.addEventListener("change", () => {
  history.replaceState(null, "", filter.value ? "?state=" + filter.value : "/");
  connect();
});
setInterval(renderJobs, 10000);  // ages move on even when nothing else does
connect();
