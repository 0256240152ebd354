// FaceStitch job panel: one page, no build step, no libraries.
// The list comes from /api/jobs (paged, filtered); changes arrive as server-sent
// events (/api/events) and are patched into the rows in place, so progress bars
// move without reloading anything. Text from the exchange is only ever set as
// textContent (job ids, messages and labels may hold anything).
"use strict";

const STATES = ["all", "active", "queued", "running", "done", "failed", "cancelled"];
const FINAL = new Set(["done", "failed", "cancelled"]);
const view = {
  filter: "all", page: 1, perPage: 50, q: "", version: -1, pages: 1,
  offset: 0, // server clock - our clock, in seconds
  rows: new Map(), // job id -> <tr>
  selected: null, events: null, reloadTimer: null, detailTimer: null,
};

// --- the token: from the URL's fragment, kept for this tab only ---------------
const token = (() => {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("facestitchToken", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("facestitchToken") || "";
})();

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["X-FaceStitch-Token"] = token;
  return h;
}

async function getJSON(url) {
  const r = await fetch(url, {headers: authHeaders(), credentials: "same-origin"});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
  return body;
}

async function post(url, data) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: authHeaders({"Content-Type": "application/json"}),
    body: JSON.stringify(data || {}),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body.error || {};
    throw new Error((e.code ? "[" + e.code + "] " : "") + (e.message || r.statusText));
  }
  return body;
}

// --- small DOM helpers ----------------------------------------------------------
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = "toast" + (bad ? " bad" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 9000 : 5000);
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s) || s < 0) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return h + "h " + String(m).padStart(2, "0") + "m";
  if (m) return m + "m " + String(sec).padStart(2, "0") + "s";
  return sec + "s";
}

const now = () => Date.now() / 1000 + view.offset;

function times(s) {
  // elapsed and estimated time left, from the summary's POSIX times
  if (s.state === "running" && s.started) {
    const elapsed = now() - s.started;
    const eta = s.fraction > 0.01 ? elapsed * (1 - s.fraction) / s.fraction : null;
    return [duration(elapsed), eta === null ? "…" : duration(eta)];
  }
  if (s.state === "queued") return [s.created ? "waiting " + duration(now() - s.created) : "", ""];
  if (s.started && s.finished) return [duration(s.finished - s.started), ""];
  return ["", ""];
}

function matches(s) {
  if (view.filter === "active" && !(s.state === "queued" || s.state === "running")) return false;
  if (view.filter !== "all" && view.filter !== "active" && s.state !== view.filter) return false;
  const q = view.q.trim().toLowerCase();
  if (!q) return true;
  return [s.id, s.label, s.kind || "", s.edits].some((x) => String(x).toLowerCase().includes(q));
}

// --- actions --------------------------------------------------------------------
const jobURL = (id) => "/api/jobs/" + encodeURIComponent(id);

async function act(id, what, data, button) {
  if (button) button.disabled = true;
  try {
    const out = await post(jobURL(id) + "/" + what, data);
    const words = {cancel: "cancel requested for ", retry: "retried ", archive: "removed ",
                   pick: "submitted the full job from "};
    toast(words[what] + id + (out.new_job ? " as " + out.new_job : "")
          + (out.archived ? " (moved to " + out.archived + ")" : ""));
    if (what === "archive" && view.selected === id) closeDetail();
    return out;
  } catch (e) {
    toast(e.message, true);
    if (button) button.disabled = false;
    return null;
  }
}

function actionButtons(s) {
  const box = el("span");
  if (s.state === "queued" || s.state === "running") {
    box.append(el("button", {class: "danger", "data-action": "cancel", type: "button",
      text: "Cancel", onclick: (ev) => { ev.stopPropagation(); act(s.id, "cancel", {}, ev.target); }}));
  }
  if ((s.state === "failed" || s.state === "cancelled") && s.readable) {
    box.append(el("button", {"data-action": "retry", type: "button", text: "Retry",
      onclick: (ev) => { ev.stopPropagation(); act(s.id, "retry", {}, ev.target); }}));
  }
  if (FINAL.has(s.state)) {
    box.append(el("button", {"data-action": "archive", type: "button", text: "Remove",
      title: "move the job folder to the archive (nothing is deleted)",
      onclick: (ev) => { ev.stopPropagation(); act(s.id, "archive", {}, ev.target); }}));
  }
  return box;
}

// --- rows -----------------------------------------------------------------------
function fillRow(tr, s) {
  tr._s = s;
  tr.dataset.state = s.state;
  tr.replaceChildren();
  const kind = s.kind ? s.kind : "unreadable job";
  tr.append(
    el("td", {class: "id"}, el("button", {type: "button", text: s.id,
      onclick: () => openDetail(s.id)}), el("div", {class: "small", text: kind})),
    el("td", {class: "shot"}, el("div", {text: s.label}), el("div", {class: "small", text: s.edits})),
    el("td", null, el("span", {class: "state " + s.state, text: s.state})),
  );
  const stage = el("td", {class: "stage"});
  let st = s.stage || "";
  if (s.state === "running" && s.stage_count) st += " (" + (s.stage_index + 1) + "/" + s.stage_count + ")";
  stage.append(el("div", {text: st}));
  if (s.error) {
    stage.append(el("div", {class: "error"}, el("code", {text: s.error.code}), " " + s.error.message));
  } else if (s.message && !FINAL.has(s.state)) {
    stage.append(el("div", {class: "small", text: s.message}));
  }
  tr.append(stage);
  const fill = el("div", {class: "fill"});
  fill.style.width = (100 * s.fraction).toFixed(1) + "%";
  const bar = el("div", {class: "bar " + s.state, role: "progressbar",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": (100 * s.fraction).toFixed(1)},
    fill, el("span", {class: "pct", text: Math.round(100 * s.fraction) + "%"}));
  tr.append(el("td", {class: "progress"}, bar));
  const [elapsed, eta] = times(s);
  tr.append(el("td", {class: "elapsed", text: elapsed}), el("td", {class: "eta", text: eta}),
            el("td", {class: "worker small", text: s.worker}),
            el("td", {class: "actions"}, actionButtons(s)));
  tr.classList.toggle("selected", view.selected === s.id);
}

function renderList(data) {
  const body = document.getElementById("rows");
  view.rows.clear();
  const rows = data.jobs.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    fillRow(tr, s);
    view.rows.set(s.id, tr);
    return tr;
  });
  body.replaceChildren(...rows);
  document.getElementById("empty").hidden = rows.length > 0;
  view.pages = data.pages;
  view.page = data.page;
  document.getElementById("page-info").textContent =
    "page " + data.page + " of " + data.pages + " (" + data.total + " jobs)";
  document.getElementById("prev").disabled = data.page <= 1;
  document.getElementById("next").disabled = data.page >= data.pages;
  renderCounts(data.counts);
  showError(data.error);
}

function renderCounts(counts) {
  const nav = document.getElementById("filters");
  if (!nav.children.length) {
    for (const st of STATES) {
      nav.append(el("button", {type: "button", "data-state": st, onclick: () => {
        view.filter = st; view.page = 1; loadPage();
      }}, st, el("span", {class: "count"})));
    }
  }
  for (const b of nav.children) {
    b.classList.toggle("active", b.dataset.state === view.filter);
    b.querySelector(".count").textContent = counts ? counts[b.dataset.state] : "";
  }
}

function showError(error) {
  const b = document.getElementById("banner");
  b.hidden = !error;
  b.textContent = error ? "The exchange cannot be read: [" + error.code + "] " + error.message : "";
}

async function loadPage() {
  const qs = new URLSearchParams({state: view.filter, page: view.page, per_page: view.perPage, q: view.q});
  try {
    const data = await getJSON("/api/jobs?" + qs);
    view.offset = data.now - Date.now() / 1000;
    if (view.version < 0) view.version = data.version;
    renderList(data);
    document.body.dataset.loaded = String(Date.now());
    listen();
  } catch (e) {
    toast("cannot load the jobs: " + e.message, true);
  }
}

function scheduleReload() {
  clearTimeout(view.reloadTimer);
  view.reloadTimer = setTimeout(loadPage, 250);
}

// --- live updates ---------------------------------------------------------------
function listen() {
  if (view.events) return;
  const live = document.getElementById("live");
  const es = new EventSource("/api/events?since=" + view.version);
  view.events = es;
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  es.addEventListener("jobs", (ev) => {
    const d = JSON.parse(ev.data);
    view.offset = d.now - Date.now() / 1000;
    view.version = d.version;
    renderCounts(d.counts);
    showError(d.error);
    let reload = d.reset;
    for (const s of d.changed) {
      const tr = view.rows.get(s.id);
      if (tr && matches(s)) fillRow(tr, s);
      else if (tr || matches(s)) reload = true; // it joins or leaves this page
      if (s.id === view.selected) scheduleDetail();
    }
    for (const id of d.removed) {
      if (view.rows.has(id)) reload = true;
      if (id === view.selected) scheduleDetail();
    }
    if (reload) scheduleReload();
  });
}

setInterval(() => {
  for (const tr of view.rows.values()) {
    const s = tr._s;
    if (!s || !(s.state === "running" || s.state === "queued")) continue;
    const [elapsed, eta] = times(s);
    tr.querySelector(".elapsed").textContent = elapsed;
    tr.querySelector(".eta").textContent = eta;
  }
}, 1000);

// --- one job's details ----------------------------------------------------------
function closeDetail() {
  view.selected = null;
  document.getElementById("detail").hidden = true;
  for (const tr of view.rows.values()) tr.classList.remove("selected");
}

function scheduleDetail() {
  clearTimeout(view.detailTimer);
  view.detailTimer = setTimeout(() => { if (view.selected) openDetail(view.selected, true); }, 400);
}

function fact(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(el("dt", {text: name}), el("dd", {text: String(value)}));
}

function table(cls, rows) {
  return el("table", {class: cls}, ...rows.map((r) => el("tr", null,
    ...r.map((c, i) => el("td", {class: i === r.length - 1 ? "value" : "", text: c})))));
}

async function openDetail(id, quiet) {
  view.selected = id;
  for (const [k, tr] of view.rows) tr.classList.toggle("selected", k === id);
  const box = document.getElementById("detail");
  let d;
  try {
    d = await getJSON(jobURL(id));
  } catch (e) {
    if (!quiet) toast(e.message, true);
    if (view.selected === id) closeDetail();
    return;
  }
  if (view.selected !== id) return;
  box.replaceChildren();
  box.hidden = false;
  box.dataset.job = id;
  box.append(el("button", {class: "close", type: "button", text: "\u00d7", "aria-label": "close",
    onclick: closeDetail}), el("h2", {text: d.id}));
  box.append(el("div", null, el("span", {class: "state " + d.state, text: d.state}),
    " ", el("span", {class: "small", text: d.message})));
  if (d.error) {
    box.append(el("div", {class: "error"}, el("code", {text: d.error.code}), " " + d.error.message));
  }
  const dl = el("dl");
  if (d.job) {
    fact(dl, "kind", d.job.kind);
    fact(dl, "source", d.job.source);
    fact(dl, "frames", d.job.range[0] + "\u2013" + (d.job.range[1] - 1) + " at "
         + d.job.rate[0] + "/" + d.job.rate[1] + " fps");
    fact(dl, "edits", d.job.edits);
    fact(dl, "format", d.job.format);
  }
  fact(dl, "worker", d.worker);
  box.append(dl, el("div", {class: "actions"}, actionButtons(d)));

  if (d.links) {
    const links = el("div", {class: "links"});
    if (d.links.report) links.append(el("a", {href: d.links.report, target: "_blank", rel: "noopener", text: "report.html"}));
    if (d.links.preview) links.append(el("a", {href: d.links.preview, target: "_blank", rel: "noopener", text: "preview movie"}));
    if (d.links.movie) links.append(el("a", {href: d.links.movie, target: "_blank", rel: "noopener", text: "result movie"}));
    if (d.links.contact_sheet) links.append(el("a", {href: d.links.contact_sheet, target: "_blank", rel: "noopener", text: "contact sheet"}));
    if (links.children.length) box.append(el("h3", {text: "Results"}), links);
    if (d.links.preview) box.append(el("video", {src: d.links.preview, controls: "", preload: "metadata", muted: ""}));
  }
  const r = d.result;
  if (r && r.filmstrip.length) {
    box.append(el("h3", {text: "Result frames"}), el("div", {class: "filmstrip"},
      ...r.filmstrip.map((f) => el("figure", null,
        el("a", {href: f.url, target: "_blank", rel: "noopener"},
          el("img", {src: f.url, alt: "frame " + f.frame, loading: "lazy"})),
        el("figcaption", {text: String(f.frame)})))));
  }
  if (d.variants) renderDraft(box, d);
  if (r && r.metrics.length) {
    const t = table("metrics", r.metrics.map((m) => [m.name, Number(m.value).toPrecision(5)]));
    r.metrics.forEach((m, i) => { if (m.definition) t.rows[i].title = m.definition; });
    box.append(el("h3", {text: "Temporal metrics"}), t);
  }
  if (r && r.stages.length) {
    box.append(el("h3", {text: "Stages"}), table("stages", r.stages.map((s) =>
      [s.name + (s.resumed ? " (resumed)" : ""), s.seconds.toFixed(1) + " s"])));
  }
  if (r && r.warnings.length) {
    box.append(el("h3", {text: "Warnings"}), el("ul", {class: "warnings"},
      ...r.warnings.map((w) => el("li", {text: w}))));
  }
  if (r) {
    const files = el("details", {class: "folder"}, el("summary", {text:
      "Output folder (" + (r.outputs.length + r.frame_count) + " files)"}));
    files.append(el("div", {class: "path", text: d.folder_path}),
      el("button", {type: "button", text: "Copy folder path", onclick: () => {
        navigator.clipboard && navigator.clipboard.writeText(d.folder_path);
        toast("copied " + d.folder_path);
      }}));
    const ul = el("ul");
    for (const o of r.outputs) ul.append(el("li", null, el("a", {href: o.url, target: "_blank", rel: "noopener", text: o.name}), " (" + o.key + ")"));
    for (const f of r.frames) ul.append(el("li", null, el("a", {href: f.url, target: "_blank", rel: "noopener", text: f.name})));
    if (r.frame_count > r.frames.length) ul.append(el("li", {text: "and " + (r.frame_count - r.frames.length) + " more frames"}));
    files.append(ul);
    box.append(files);
  } else if (d.folder_path) {
    box.append(el("div", {class: "path", text: d.folder_path}));
  }
}

function renderDraft(box, d) {
  box.append(el("h3", {text: "Strengths"}));
  const buttons = el("div", {class: "strengths"});
  const pickButtons = [];
  for (const v of d.variants) {
    const b = el("button", {type: "button", class: "primary", "data-row": String(v.row),
      text: "Full job at " + v.label, disabled: d.actions.pick ? null : "",
      title: "submit the whole shot as a stitch job at this strength",
      onclick: async (ev) => {
        const out = await act(d.id, "pick", {row: v.row}, ev.target);
        if (out) ev.target.textContent = v.label + ": submitted as " + out.new_job;
      }});
    pickButtons.push(b);
    buttons.append(b);
  }
  if (d.sheet) {
    const sheet = el("div", {class: "sheet"}, el("img", {src: d.sheet.url, alt: "strength sweep sheet"}));
    if (d.sheet.height > 0) {
      for (const row of d.sheet.rows) {
        const hit = el("button", {type: "button", class: "row-hit", title: row.label,
          "data-row": String(row.row), "aria-label": "choose " + row.label,
          onclick: () => {
            for (const h of sheet.querySelectorAll(".row-hit")) h.classList.toggle("chosen", h === hit);
            for (const b of pickButtons) b.classList.toggle("chosen", b.dataset.row === String(row.row));
            const b = pickButtons.find((x) => x.dataset.row === String(row.row));
            if (b) b.focus();
          }});
        hit.style.top = (100 * row.y0 / d.sheet.height) + "%";
        hit.style.height = (100 * (row.y1 - row.y0) / d.sheet.height) + "%";
        sheet.append(hit);
      }
    }
    box.append(sheet);
  }
  box.append(buttons);
}

// --- start ----------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", async () => {
  renderCounts(null);
  document.getElementById("prev").onclick = () => { view.page -= 1; loadPage(); };
  document.getElementById("next").onclick = () => { view.page += 1; loadPage(); };
  document.getElementById("per-page").onchange = (ev) => {
    view.perPage = Number(ev.target.value); view.page = 1; loadPage();
  };
  let typing = null;
  document.getElementById("search").oninput = (ev) => {
    clearTimeout(typing);
    typing = setTimeout(() => { view.q = ev.target.value; view.page = 1; loadPage(); }, 250);
  };
  if (token) {
    // the cookie lets images and links read where the panel needs the token
    try { await getJSON("/api/session"); } catch (e) { toast(e.message, true); }
  }
  try {
    const h = await getJSON("/api/health");
    document.getElementById("exchange").textContent = h.exchange;
  } catch (e) { /* the list says why */ }
  await loadPage();
});
