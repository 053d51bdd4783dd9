// Shared by the dashboard's pages: formatting, POSTs with the CSRF token, the header's live indicator.
"use strict";
const G = {
  csrf() {
    const m = document.cookie.match(/(?:^|; )gradmesh_csrf=([^;]*)/);
    return m ? m[1] : "";
  },
  async post(url, body) {
    const r = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": G.csrf()}, body: JSON.stringify(body || {})});
    const data = await r.json().catch(() => ({}));
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  },
  el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  },
  num(x, digits = 4) { return x === null || x === undefined ? "–" : Number(x).toPrecision(digits); },
  pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; },
  bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  },
  duration(s) {  // round once, then split: 119.6 s is "2 min 0 s", never "1 min 60 s"
    if (s === null || s === undefined || s < 0 || !isFinite(s)) return "–";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    const m = Math.round(s / 60);
    if (m < 1440) return Math.floor(m / 60) + " h " + (m % 60) + " min";
    const h = Math.round(s / 3600);
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  },
  age(t) { return t ? G.duration(Date.now() / 1000 - t) : "–"; },
  time(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; },
  emptyRow(columns) { return G.el("tr", {class: "empty-row"}, G.el("td", {colspan: columns, text: "no data yet"})); },
  state(name) { return G.el("span", {class: "state " + name, text: name}); },
  progress(job, big) {
    const frac = job.total_steps ? Math.min(1, job.step / job.total_steps) : (job.state === "SUCCEEDED" ? 1 : 0);
    const bar = G.el("span", {class: "bar" + (big ? " big" : ""), title: (100 * frac).toFixed(1) + "%"}, G.el("span"));
    bar.firstChild.style.width = (100 * frac).toFixed(1) + "%";
    return bar;
  },
  live(ok) {
    const e = document.getElementById("live");
    if (e) { e.textContent = ok ? "● live" : "○ reconnecting…"; e.className = ok ? "" : "off"; }
  },
};
document.getElementById("logout").addEventListener("click", async () => {
  await G.post("/logout").catch(() => {});
  location.href = "/login";
});
