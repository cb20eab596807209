"""The viewer page's stylesheet and script, inlined by `sage.study.view.build_html` (no network assets).

Game and model text is only ever inserted with `textContent`, never parsed as HTML. Turns are built
when their episode is first expanded. URL flags for scripted checks: `?open=I` expands episode I,
`?all=1` every episode, `?hover=E,T,K` shows the tooltip of token K of turn T of episode E. `<body>`
carries `data-rendered-turns` and the timings `data-open-ms` (navigation start to list drawn),
`data-parse-ms`, `data-render-one-ms`, `data-render-all-ms`.
"""

CSS = r"""
:root { --ink:#1d232b; --mute:#66707c; --line:#dde2e8; --bg:#f5f7f9; --card:#fff; --accent:#2f6fb5; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink);
  background:var(--bg); }
header { background:#1f2d3d; color:#fff; padding:12px 20px 14px; }
header h1 { font-size:17px; margin:0 0 2px; font-weight:600; }
header .sub { color:#b9c4d0; font-size:12px; }
table.summary { border-collapse:collapse; margin-top:10px; font-size:12px; background:#fff; color:var(--ink);
  border-radius:4px; overflow:hidden; }
table.summary th, table.summary td { padding:4px 10px; text-align:right; border-bottom:1px solid var(--line); }
table.summary th { background:#eef2f6; font-weight:600; color:#3a4654; }
table.summary td.left, table.summary th.left { text-align:left; }
.bar { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
  padding:8px 20px; display:flex; flex-wrap:wrap; gap:14px; align-items:center; }
.bar label { color:var(--mute); font-size:12px; }
.bar select, .bar input { font:inherit; padding:3px 6px; border:1px solid #c5ccd4; border-radius:4px; margin-left:4px; }
.bar button { font:inherit; padding:3px 10px; border:1px solid #c5ccd4; border-radius:4px; background:#f4f6f8;
  cursor:pointer; }
.bar .count { margin-left:auto; color:var(--mute); }
.legend { padding:6px 20px; display:flex; flex-wrap:wrap; gap:18px; align-items:center; color:var(--mute);
  font-size:12px; border-bottom:1px solid var(--line); background:#fbfcfd; }
.ramp { display:inline-block; width:140px; height:12px; vertical-align:middle; border:1px solid #ccc;
  background:linear-gradient(to right, rgb(230,60,60), #fff); margin:0 6px; }
main { padding:10px 20px 40px; }
.ep { background:var(--card); border:1px solid var(--line); border-radius:6px; margin:0 0 6px; }
.ep-head { display:flex; gap:12px; align-items:center; padding:7px 10px; cursor:pointer; user-select:none; }
.ep-head:hover { background:#f2f6fb; }
.ep-head .caret { width:10px; color:var(--mute); }
.ep-head .idx { color:var(--mute); width:54px; }
.ep-head .tt { width:250px; color:#3a4654; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.ep-head .task { flex:1; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.ep-head .len { width:64px; text-align:right; color:var(--mute); }
.ep-head .kap { width:60px; text-align:right; color:var(--mute); }
.strip { height:12px; border-radius:2px; border:1px solid #d4d9df; }
.badge { display:inline-block; padding:1px 7px; border-radius:10px; font-size:11px; font-weight:600; color:#fff; }
.won { background:#2e8b57; } .lost { background:#9aa3ad; } .trunc { background:#b5651d; }
.turns { border-top:1px solid var(--line); padding:6px 10px 10px; }
.turn { border:1px solid var(--line); border-radius:5px; margin:8px 0 0; }
.turn-head { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:5px 10px; background:#f6f8fa;
  border-bottom:1px solid var(--line); font-size:12px; }
.turn-head .step { font-weight:600; }
.turn-head .probs { color:var(--mute); }
.cols { display:grid; grid-template-columns:minmax(0,2fr) minmax(0,3fr); }
.cols > div { padding:6px 10px; min-width:0; }
.cols > div + div { border-left:1px solid var(--line); }
.lbl { font-size:11px; text-transform:uppercase; letter-spacing:.04em; color:var(--mute); margin:4px 0 2px; }
pre { margin:0; white-space:pre-wrap; word-break:break-word; font:12px/1.5 ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace; }
.tokens { padding:3px 4px; border:1px solid #eceff2; border-radius:3px; background:#fff; }
.tok { border-radius:2px; }
.tok:hover { outline:1px solid #333; }
.tok.special { color:#8a94a0; font-style:italic; }
.note { color:var(--mute); font-style:italic; font-size:12px; }
.action code { font:12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:#eef2f6; padding:1px 5px;
  border-radius:3px; }
.ok { color:#2e8b57; } .warn { color:#b5651d; } .bad { color:#c0392b; }
details summary { cursor:pointer; color:var(--mute); font-size:12px; margin-top:4px; }
.adm { display:flex; flex-wrap:wrap; gap:4px; margin-top:4px; }
.adm span { background:#eef2f6; border-radius:3px; padding:0 5px; font:11px ui-monospace, Menlo, Consolas, monospace; }
.adm span.chosen { background:#d6ecdf; outline:1px solid #2e8b57; }
#tip { position:fixed; z-index:10; pointer-events:none; background:#1f2d3d; color:#fff; padding:5px 8px;
  border-radius:4px; font:12px/1.4 ui-monospace, Menlo, Consolas, monospace; white-space:pre; display:none; }
.empty { color:var(--mute); padding:20px; }
"""

JS = r"""
(function () {
  "use strict";
  var T0 = performance.now();
  var DATA = JSON.parse(document.getElementById("sage-data").textContent);
  var PARSE_MS = performance.now() - T0;
  var EPS = DATA.episodes || [];
  var GATE = { SKIP: "#9e9e9e", WEAK: "#f0a030", STRONG: "#6a3fb5", INTERVENE: "#6a3fb5", ALWAYS: "#4a78c0" };
  var body = document.body, app = document.getElementById("app");
  var rendered = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(x, d) { return x === null || x === undefined || isNaN(x) ? "–" : Number(x).toFixed(d); }
  function pct(x) { return x === null || x === undefined || isNaN(x) ? "–" : (100 * x).toFixed(1) + "%"; }
  function gateColor(label) { return GATE[label] || "#4a78c0"; }
  function shade(k) {  // kappa 1 -> white, 0 -> red
    var u = 1 - Math.max(0, Math.min(1, k));
    return "rgb(" + Math.round(255 - 25 * u) + "," + Math.round(255 - 195 * u) + "," + Math.round(255 - 195 * u) + ")";
  }
  function mean(xs) { if (!xs || !xs.length) return null; var s = 0; for (var i = 0; i < xs.length; i++) s += xs[i]; return s / xs.length; }
  function epConf(ep) {
    var xs = [];
    ep.turns.forEach(function (t) { if (t.confidence_mean !== null && t.confidence_mean !== undefined) xs.push(t.confidence_mean); });
    return mean(xs);
  }
  function gateBadge(label, gate) {
    var b = el("span", "badge", (label || "no gate") + (gate !== undefined && gate !== null ? "  g=" + num(gate, 2) : ""));
    b.style.background = gateColor(label);
    return b;
  }
  function markRendered() { body.setAttribute("data-rendered-turns", String(rendered)); }

  // ---- header: title and per-epoch summary ----
  function header() {
    var h = el("header");
    h.appendChild(el("h1", null, DATA.title || "episodes"));
    var nTurns = 0; EPS.forEach(function (e) { nTurns += e.turns.length; });
    h.appendChild(el("div", "sub", EPS.length + " episodes · " + nTurns + " turns · training episodes"));
    var epochs = Object.keys(DATA.summary || {}).sort(function (a, b) { return a - b; });
    if (!epochs.length) return h;
    var tab = el("table", "summary"), tr = el("tr");
    ["epoch", "episodes", "turns", "success", "mean length", "invalid format", "gate rates", "mean g", "mean κ",
     "val seen", "val unseen", "source"].forEach(function (c, i) { tr.appendChild(el("th", i === 6 || i === 11 ? "left" : null, c)); });
    tab.appendChild(tr);
    epochs.forEach(function (k) {
      var s = DATA.summary[k], row = el("tr");
      var cells = [k, s.episodes, s.turns, pct(s.success), num(s.length, 1), pct(s.invalid_format_rate)];
      cells.forEach(function (c) { row.appendChild(el("td", null, c === undefined ? "–" : c)); });
      var g = el("td", "left");
      Object.keys(s.gate_rates || {}).forEach(function (lab) {
        if (!s.gate_rates[lab]) return;
        var b = gateBadge(lab); b.textContent = lab + " " + pct(s.gate_rates[lab]); b.style.marginRight = "4px";
        g.appendChild(b);
      });
      if (!g.childNodes.length) g.textContent = "–";
      row.appendChild(g);
      [num(s.gate_mean, 3), num(s.confidence_mean, 3), pct(s.val_seen_success), pct(s.val_unseen_success)]
        .forEach(function (c) { row.appendChild(el("td", null, c)); });
      row.appendChild(el("td", "left", s.source || ""));
      tab.appendChild(row);
    });
    h.appendChild(tab);
    return h;
  }

  // ---- filter bar ----
  function options(values) {
    var seen = {}; values.forEach(function (v) { if (v !== null && v !== undefined) seen[v] = 1; });
    return Object.keys(seen).sort();
  }
  function select(label, name, values, fmt) {
    var l = el("label", null, label), s = el("select");
    s.name = name;
    var o = el("option", null, "all"); o.value = ""; s.appendChild(o);
    values.forEach(function (v) { var x = el("option", null, fmt ? fmt(v) : v); x.value = v; s.appendChild(x); });
    l.appendChild(s);
    return l;
  }
  var filters = { epoch: "", task_type: "", outcome: "", gate: "", q: "" };
  function filterBar() {
    var bar = el("div", "bar");
    var epochs = options(EPS.map(function (e) { return String(e.epoch); })).sort(function (a, b) { return a - b; });
    if (epochs.length > 1) bar.appendChild(select("Epoch", "epoch", epochs));
    bar.appendChild(select("Task type", "task_type", options(EPS.map(function (e) { return e.task_type; }))));
    bar.appendChild(select("Outcome", "outcome", ["won", "lost", "truncated"]));
    var labels = [];
    EPS.forEach(function (e) { e.turns.forEach(function (t) { labels.push(t.gate_label); }); });
    bar.appendChild(select("Has gate label", "gate", options(labels)));
    var ql = el("label", null, "Search"), q = el("input");
    q.type = "search"; q.name = "q"; q.placeholder = "game id, task, action"; ql.appendChild(q);
    bar.appendChild(ql);
    bar.addEventListener("change", onFilter);
    bar.addEventListener("input", onFilter);
    var ex = el("button", null, "Expand shown"), co = el("button", null, "Collapse all");
    ex.title = "renders every turn of the shown episodes (a paper-scale epoch takes seconds)";
    ex.addEventListener("click", function () { rows.forEach(function (r, i) { if (r.style.display !== "none") expand(i, true); }); });
    co.addEventListener("click", function () { rows.forEach(function (r, i) { expand(i, false); }); });
    bar.appendChild(ex); bar.appendChild(co);
    bar.appendChild(countEl);
    return bar;
  }
  function onFilter(ev) {
    var t = ev.target;
    if (!t.name) return;
    filters[t.name] = t.value.trim().toLowerCase();
    applyFilters();
  }
  function matches(ep) {
    if (filters.epoch && String(ep.epoch) !== filters.epoch) return false;
    if (filters.task_type && String(ep.task_type).toLowerCase() !== filters.task_type) return false;
    if (filters.outcome === "won" && !ep.won) return false;
    if (filters.outcome === "lost" && ep.won) return false;
    if (filters.outcome === "truncated" && !ep.truncated) return false;
    if (filters.gate && !ep.turns.some(function (t) { return String(t.gate_label).toLowerCase() === filters.gate; })) return false;
    if (filters.q) {
      var hay = (ep.game_id + " " + ep.task + " " + ep.turns.map(function (t) { return t.action; }).join(" ")).toLowerCase();
      if (hay.indexOf(filters.q) < 0) return false;
    }
    return true;
  }
  var countEl = el("span", "count");
  function applyFilters() {
    var n = 0;
    EPS.forEach(function (ep, i) { var ok = matches(ep); rows[i].style.display = ok ? "" : "none"; n += ok; });
    countEl.textContent = "showing " + n + " of " + EPS.length + " episodes";
  }

  function legend() {
    var lg = el("div", "legend");
    var a = el("span", null, "token background: teacher confidence κ  0"); a.appendChild(el("span", "ramp"));
    a.appendChild(document.createTextNode("1"));
    lg.appendChild(a);
    lg.appendChild(el("span", null, "hover a token for κ, log πs(y), log πT(y) and log πs − log πT"));
    var g = el("span", null, "gate: ");
    ["SKIP", "WEAK", "STRONG", "ALWAYS"].forEach(function (lab) { var b = gateBadge(lab); b.style.marginRight = "4px"; g.appendChild(b); });
    lg.appendChild(g);
    lg.appendChild(el("span", null, "episode strip: one cell per turn"));
    return lg;
  }

  // ---- episode list (drawn at open) ----
  var rows = [], turnBoxes = [];
  function stripStyle(ep) {
    var n = ep.turns.length; if (!n) return "#eee";
    var stops = ep.turns.map(function (t, i) {
      var c = gateColor(t.gate_label);
      return c + " " + (100 * i / n).toFixed(2) + "% " + (100 * (i + 1) / n).toFixed(2) + "%";
    });
    return "linear-gradient(to right," + stops.join(",") + ")";
  }
  function episodeRow(ep, i) {
    var box = el("div", "ep"), head = el("div", "ep-head");
    head.appendChild(el("span", "caret", "▸"));
    head.appendChild(el("span", "idx", "#" + i + " · e" + ep.epoch));
    head.appendChild(el("span", ep.won ? "badge won" : ep.truncated ? "badge trunc" : "badge lost",
      ep.won ? "won" : ep.truncated ? "truncated" : "lost"));
    var tt = el("span", "tt", ep.task_type); tt.title = ep.game_id; head.appendChild(tt);
    head.appendChild(el("span", "task", ep.task));
    var strip = el("span", "strip"); strip.style.width = Math.max(6, 3 * ep.turns.length) + "px";
    strip.style.background = stripStyle(ep); head.appendChild(strip);
    head.appendChild(el("span", "len", ep.turns.length + " turns"));
    head.appendChild(el("span", "kap", "κ̄ " + num(epConf(ep), 2)));
    head.addEventListener("click", function () { expand(i, !turnBoxes[i] || turnBoxes[i].style.display === "none"); });
    box.appendChild(head);
    return box;
  }
  function expand(i, open) {
    var box = turnBoxes[i];
    if (open && !box) {
      box = turnBoxes[i] = el("div", "turns");
      var frag = document.createDocumentFragment();
      EPS[i].turns.forEach(function (t, k) { frag.appendChild(turnCard(EPS[i], i, t, k)); });
      box.appendChild(frag);
      rows[i].appendChild(box);
      rendered += EPS[i].turns.length;
      markRendered();
    }
    if (box) box.style.display = open ? "" : "none";
    rows[i].querySelector(".caret").textContent = open ? "▾" : "▸";
  }

  // ---- one turn ----
  function tokenView(t, i, k) {
    var pre = el("pre", "tokens");
    var toks = t.tokens, conf = t.confidence;
    if (!toks || !toks.length) {
      pre.textContent = t.response;
      return [pre, el("div", "note", "per-token data not recorded in this file: text only")];
    }
    pre.setAttribute("data-e", i); pre.setAttribute("data-t", k);
    for (var j = 0; j < toks.length; j++) {
      var s = el("span", /^<\|.*\|>$/.test(toks[j]) ? "tok special" : "tok", toks[j]);
      s.setAttribute("data-k", j);
      if (conf && j < conf.length && conf[j] !== null) {
        s.style.background = shade(conf[j]);
        if (conf[j] < 0.3) s.style.color = "#fff";
      }
      pre.appendChild(s);
    }
    var notes = [pre];
    if (!conf) notes.push(el("div", "note", "not scored by the teacher (κ n/a): shown unshaded"));
    return notes;
  }
  function logRatio(t) {
    if (!t.logprob || !t.teacher_logprob || !t.teacher_logprob.length) return null;
    var n = Math.min(t.logprob.length, t.teacher_logprob.length), s = 0;
    for (var j = 0; j < n; j++) s += t.logprob[j] - t.teacher_logprob[j];
    return n ? s / n : null;
  }
  function turnCard(ep, i, t, k) {
    var card = el("div", "turn"), head = el("div", "turn-head");
    head.appendChild(el("span", "step", "Turn " + (t.index !== undefined ? t.index : k)));
    head.appendChild(gateBadge(t.gate_label, t.gate));
    if (t.gate_probs) {
      head.appendChild(el("span", "probs", "judge p: " + Object.keys(t.gate_probs).map(function (l) {
        return l + " " + num(t.gate_probs[l], 3); }).join(" · ")));
    }
    head.appendChild(el("span", "probs", "κ̄ " + num(t.confidence_mean, 3)));
    var lr = logRatio(t);
    if (lr !== null) head.appendChild(el("span", "probs", "mean log πs − log πT " + num(lr, 3)));
    card.appendChild(head);
    var cols = el("div", "cols"), left = el("div"), right = el("div");
    left.appendChild(el("div", "lbl", "Observation"));
    left.appendChild(el("pre", null, t.observation !== undefined ? t.observation : "(not recorded)"));
    if (t.admissible && t.admissible.length) {
      var d = el("details"), list = el("div", "adm");
      d.appendChild(el("summary", null, "admissible commands (" + t.admissible.length + ")"));
      t.admissible.forEach(function (a) { list.appendChild(el("span", a === t.action ? "chosen" : null, a)); });
      d.appendChild(list);
      left.appendChild(d);
    }
    right.appendChild(el("div", "lbl", "Response"));
    tokenView(t, i, k).forEach(function (n) { right.appendChild(n); });
    var act = el("div", "action");
    act.appendChild(el("span", "lbl", "Action "));
    act.appendChild(t.action ? el("code", null, t.action) : el("span", "note", "(none)"));
    var status;
    if (t.valid_format === false) status = el("span", "bad", "  no <action> parsed");
    else if (t.admissible && t.admissible.length) {
      status = t.admissible.indexOf(t.action) >= 0 ? el("span", "ok", "  admissible") : el("span", "warn", "  not admissible");
    }
    if (status) act.appendChild(status);
    right.appendChild(act);
    right.appendChild(el("div", "lbl", "Feedback"));
    right.appendChild(el("pre", null, t.feedback));
    cols.appendChild(left); cols.appendChild(right);
    card.appendChild(cols);
    return card;
  }

  // ---- hover tooltip: one element, event delegation ----
  var tip = el("div"); tip.id = "tip";
  function onHover(ev) {
    var s = ev.target;
    if (!s.classList || !s.classList.contains("tok")) { tip.style.display = "none"; return; }
    var pre = s.parentNode, t = EPS[+pre.getAttribute("data-e")].turns[+pre.getAttribute("data-t")];
    var j = +s.getAttribute("data-k");
    var lp = t.logprob ? t.logprob[j] : null, tl = t.teacher_logprob ? t.teacher_logprob[j] : null;
    tip.textContent = "token " + JSON.stringify(t.tokens[j]) +
      "\nκ              " + num(t.confidence ? t.confidence[j] : null, 4) +
      "\nlog πs(y)      " + num(lp, 4) +
      "\nlog πT(y)      " + num(tl, 4) +
      "\nlog πs − log πT " + (lp !== null && lp !== undefined && tl !== null && tl !== undefined ? num(lp - tl, 4) : "–");
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 260) + "px";
    tip.style.top = (ev.clientY + 16) + "px";
  }

  // ---- build ----
  app.appendChild(header());
  app.appendChild(filterBar());
  app.appendChild(legend());
  var main = el("main"), frag = document.createDocumentFragment();
  EPS.forEach(function (ep, i) { var r = episodeRow(ep, i); rows.push(r); frag.appendChild(r); });
  if (!EPS.length) main.appendChild(el("div", "empty", "no episodes in this file"));
  main.appendChild(frag);
  app.appendChild(main);
  body.appendChild(tip);
  main.addEventListener("mouseover", onHover);
  main.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  applyFilters();
  markRendered();
  void body.offsetHeight;  // force layout so the timing includes it
  body.setAttribute("data-parse-ms", PARSE_MS.toFixed(1));
  body.setAttribute("data-open-ms", performance.now().toFixed(1));

  var params = new URLSearchParams(location.search);
  if (params.has("open") && EPS[+params.get("open")]) {
    var t1 = performance.now();
    expand(+params.get("open"), true);
    void body.offsetHeight;
    body.setAttribute("data-render-one-ms", (performance.now() - t1).toFixed(1));
  }
  if (params.get("all") === "1" || location.hash === "#expand-all") {
    var t2 = performance.now();
    EPS.forEach(function (ep, i) { expand(i, true); });
    void body.offsetHeight;
    body.setAttribute("data-render-all-ms", (performance.now() - t2).toFixed(1));
  }
  if (params.has("hover")) {  // ?hover=E,T,K: the tooltip of token K of turn T of episode E
    var h = params.get("hover").split(",");
    var span = document.querySelector('pre[data-e="' + (+h[0]) + '"][data-t="' + (+h[1]) + '"] > span[data-k="' + (+h[2]) + '"]');
    if (span) {
      var r = span.getBoundingClientRect();
      span.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, clientX: r.left + r.width / 2, clientY: r.bottom - 4 }));
    }
  }
})();
"""
