//! The HTML report (`--html FILE`): one self-contained page (no network fetch, no external
//! script or style) holding the JSON report and the script that draws it as SVG: a summary
//! table, each operation's latency by percentile and over time, engine and floor side by side,
//! the scheduled against the achieved rate, and error classes over time. The page marks its
//! `<body>` with `data-plots` (plots drawn), `data-done` and, if drawing failed,
//! `data-error`, so a headless browser can check it.
//!
//! Owns the page; never measures anything (the numbers are the report's JSON).

use crate::report::Report;

/// Where the report's JSON goes in the page.
const DATA_SLOT: &str = "__MYKEY_LOAD_REPORT__";

/// The page for `report` (and its floor run, if it has one).
pub fn render(report: &Report) -> String {
    // Inside <script>, "</" would end the element: JSON allows "\/" for "/".
    let data = report.json().to_string().replace("</", "<\\/");
    PAGE.replace(DATA_SLOT, &data)
}

const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mykey-load report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure.plot { margin: 0; border: 1px solid #ddd; padding: 6px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.empty { color: #777; width: 640px; }
svg text { font-size: 11px; fill: #444; }
.note { color: #555; max-width: 900px; }
</style>
</head>
<body>
<h1>mykey-load report</h1>
<p class="note">Open loop: latency counts from each request's scheduled start. The floor is the
same schedule played against an in-process server with no engine on the same QUIC setup; the
engine's own share of a tail is what it has above the floor at the same rate.</p>
<div id="summary"></div>
<h2>Latency by percentile</h2>
<div class="plots" id="percentiles"></div>
<h2>Latency over time (by scheduled start)</h2>
<div class="plots" id="over-time"></div>
<h2>Rate and errors over time</h2>
<div class="plots" id="rates"></div>
<script type="application/json" id="report">__MYKEY_LOAD_REPORT__</script>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const ENGINE = "#c0392b", FLOOR = "#2471a3", SCHEDULED = "#888";
const CLASS_COLORS = ["#c0392b", "#d68910", "#7d3c98", "#117a65", "#2e4053", "#b03a2e", "#5d6d7e"];
let drawn = 0;

function el(name, attrs, text) {
  const e = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function sv(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmtUs(us) {
  if (us >= 1e6) return (us / 1e6).toPrecision(3) + " s";
  if (us >= 1e3) return (us / 1e3).toPrecision(3) + " ms";
  return Math.round(us) + " µs";
}
function niceTicks(lo, hi, n) {
  const span = hi - lo || 1, raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= n) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

// series: [{name, color, dash, points: [[x, y|null], ...]}]; a null y breaks the line.
// opt: {logY, xTicks: [[x, label]], xLabel, yFmt, empty}
function chart(parent, title, series, opt) {
  const W = 640, H = 300, L = 70, R = 16, T = 10, B = 46;
  const fig = el("figure", {class: "plot"});
  fig.append(el("figcaption", {}, title));
  parent.append(fig);
  const usable = p => p[1] !== null && Number.isFinite(p[1]) && (!opt.logY || p[1] > 0);
  const pts = series.flatMap(s => s.points.filter(usable));
  if (pts.length === 0) {
    fig.append(el("p", {class: "empty"}, opt.empty || "no data"));
    fig.dataset.points = "0";
    return;
  }
  const ty = v => opt.logY ? Math.log10(v) : v;
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = opt.logY ? Math.min(...pts.map(p => ty(p[1]))) : 0;
  let y1 = Math.max(...pts.map(p => ty(p[1])));
  if (opt.logY) { y0 = Math.floor(y0); y1 = Math.max(Math.ceil(y1), y0 + 1); }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = v => T + (1 - (ty(v) - y0) / (y1 - y0)) * (H - T - B);
  const svg = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  svg.append(sv("title", {}, title));
  const yTicks = opt.logY
    ? Array.from({length: y1 - y0 + 1}, (_, i) => Math.pow(10, y0 + i))
    : niceTicks(0, y1, 5);
  for (const t of yTicks) {
    const y = Y(t);
    svg.append(sv("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eee"}));
    svg.append(sv("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, (opt.yFmt || String)(t)));
  }
  const xTicks = opt.xTicks || niceTicks(x0, x1, 8).map(t => [t, String(+t.toFixed(2))]);
  for (const [t, label] of xTicks) {
    if (t < x0 - 1e-9 || t > x1 + 1e-9) continue;
    const x = X(t);
    svg.append(sv("line", {x1: x, x2: x, y1: T, y2: H - B, stroke: "#f2f2f2"}));
    svg.append(sv("text", {x: x, y: H - B + 16, "text-anchor": "middle"}, label));
  }
  svg.append(sv("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle"}, opt.xLabel || ""));
  svg.append(sv("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#999"}));
  let n = 0, legendX = L + 8;
  for (const s of series) {
    let d = "", pen = false;
    for (const p of s.points) {
      if (!usable(p)) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1);
      pen = true;
      n++;
    }
    if (d === "") continue;
    const path = sv("path", {class: "line", d: d, fill: "none", stroke: s.color, "stroke-width": 1.6});
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    path.dataset.series = s.name;
    svg.append(path);
    svg.append(sv("line", {x1: legendX, x2: legendX + 18, y1: T + 12, y2: T + 12, stroke: s.color,
      "stroke-width": 2, "stroke-dasharray": s.dash || ""}));
    svg.append(sv("text", {x: legendX + 22, y: T + 16}, s.name));
    legendX += 30 + 7 * s.name.length;
  }
  fig.append(svg);
  fig.dataset.points = String(n);
  drawn++;
}

function summary(D) {
  const div = document.getElementById("summary");
  const runs = [["engine", D]].concat(D.floor ? [["floor", D.floor]] : []);
  const t = el("table");
  t.appendChild(el("tr")).append(...["run", "mode", "scheduled", "ok", "failed", "scheduled/s",
    "achieved/s", "terminals", "connect s"].map(h => el("th", {}, h)));
  for (const [name, r] of runs) {
    const tr = t.appendChild(el("tr"));
    for (const v of [name, r.mode, r.scheduled, r.ok, r.failed, r.scheduled_rate.toFixed(0),
      r.achieved_rate.toFixed(0), r.terminals, r.connect_secs.toFixed(2)]) tr.append(el("td", {}, String(v)));
  }
  div.append(t);
  const ops = el("table");
  ops.appendChild(el("tr")).append(...["operation", "run", "count", "p50", "p90", "p99", "p99.9",
    "max", "p99 ÷ floor"].map(h => el("th", {}, h)));
  for (const op of Object.keys(D.ops)) {
    for (const [name, r] of runs) {
      const o = r.ops[op];
      if (!o) continue;
      const tr = ops.appendChild(el("tr"));
      const ratio = name === "engine" && D.p99_over_floor && D.p99_over_floor[op] !== undefined
        ? D.p99_over_floor[op].toFixed(2) + "×" : "";
      for (const v of [op, name, o.count, fmtUs(o.p50_us), fmtUs(o.p90_us), fmtUs(o.p99_us),
        fmtUs(o.p999_us), fmtUs(o.max_us), ratio]) tr.append(el("td", {}, String(v)));
    }
  }
  div.append(ops);
  const errs = runs.flatMap(([name, r]) => Object.entries(r.errors).map(([c, n]) => `${name} ${c}: ${n}`));
  div.append(el("p", {}, errs.length ? "Errors: " + errs.join(", ") : "No errors."));
}

function percentileX(q) { return q >= 1 ? 5 : Math.min(-Math.log10(1 - q), 4.5); }
const PERCENTILE_TICKS = [[0, "p0"], [Math.log10(2), "p50"], [1, "p90"], [2, "p99"],
  [3, "p99.9"], [4, "p99.99"], [5, "max"]];

function draw(D) {
  summary(D);
  const runs = [["engine", D, ENGINE]].concat(D.floor ? [["floor", D.floor, FLOOR]] : []);
  for (const op of Object.keys(D.distribution)) {
    chart(document.getElementById("percentiles"), `${op}: latency by percentile`,
      runs.filter(([, r]) => r.distribution[op]).map(([name, r, color]) => ({
        name: name, color: color,
        points: r.distribution[op].map(([q, us]) => [percentileX(q), us]),
      })),
      {logY: true, xTicks: PERCENTILE_TICKS, xLabel: "percentile", yFmt: fmtUs});
  }
  for (const op of Object.keys(D.series.ops)) {
    const lines = [];
    for (const [name, r, color] of runs) {
      const s = r.series.ops[op];
      if (!s) continue;
      const w = r.series.bucket_secs;
      lines.push({name: `${name} p99`, color: color, points: s.p99_us.map((v, i) => [i * w, v])});
      lines.push({name: `${name} p50`, color: color, dash: "4 3", points: s.p50_us.map((v, i) => [i * w, v])});
    }
    chart(document.getElementById("over-time"), `${op}: p50 and p99 over time`, lines,
      {logY: true, xLabel: "seconds into the run", yFmt: fmtUs});
  }
  const w = D.series.bucket_secs;
  const rate = (v, w) => v.map((c, i) => [i * w, c / w]);
  const rates = [{name: "scheduled", color: SCHEDULED, dash: "2 2", points: rate(D.series.scheduled, w)}];
  for (const [name, r, color] of runs) {
    rates.push({name: `${name} answered`, color: color, points: rate(r.series.answered, r.series.bucket_secs)});
  }
  chart(document.getElementById("rates"), "requests per second: scheduled and answered", rates,
    {xLabel: "seconds into the run", yFmt: v => String(+v.toFixed(1))});
  const errs = [];
  let c = 0;
  for (const [name, r] of runs) {
    for (const [cls, v] of Object.entries(r.series.errors)) {
      errs.push({name: `${name} ${cls}`, color: CLASS_COLORS[c++ % CLASS_COLORS.length],
        dash: name === "floor" ? "4 3" : undefined, points: rate(v, r.series.bucket_secs)});
    }
  }
  chart(document.getElementById("rates"), "errors per second by class", errs,
    {xLabel: "seconds into the run (by scheduled start)", yFmt: v => String(+v.toFixed(1)),
     empty: "No request failed."});
}

try {
  draw(JSON.parse(document.getElementById("report").textContent));
  document.body.dataset.plots = String(drawn);
} catch (e) {
  document.body.dataset.error = String(e && e.stack || e);
}
document.body.dataset.done = "1";
</script>
</body>
</html>
"##;
