// fedcare console: draws the page's charts as SVG from its JSON route, and keeps the
// live fields of a run in progress current. No library, no network but this app.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
const W = 640, H = 260, M = { left: 56, right: 16, top: 24, bottom: 40 };
const POLL_MS = 2000;

function node(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function fmt(v) {
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return Number(v.toPrecision(3)).toString();
}

function ticks(lo, hi, count) {
  const out = [];
  for (let i = 0; i <= count; i++) out.push(lo + (hi - lo) * i / count);
  return out;
}

// Every object with an id, a title and series is a chart, wherever it sits in the JSON.
function findCharts(value, out) {
  if (Array.isArray(value)) value.forEach(v => findCharts(v, out));
  else if (value && typeof value === "object") {
    if ("series" in value && "id" in value && "title" in value) out.push(value);
    else Object.values(value).forEach(v => findCharts(v, out));
  }
  return out;
}

function draw(slot, chart) {
  const points = chart.series.flatMap(s => s.points);
  slot.textContent = "";
  if (!points.length) {
    slot.textContent = "no data yet";
    return;
  }
  const ys = points.map(p => p[1]).concat(chart.thresholds.map(t => t.y));
  const xs = points.map(p => p[0]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const sx = x => M.left + (x - x0) / (x1 - x0) * (W - M.left - M.right);
  const sy = y => H - M.bottom - (y - y0) / (y1 - y0) * (H - M.top - M.bottom);

  const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot-svg", role: "img" });
  node("title", {}, svg).textContent = chart.title;
  const last = chart.series.filter(s => s.points.length)
    .map(s => `${s.name}: ${fmt(s.points[s.points.length - 1][1])}`).join("; ");
  node("desc", {}, svg).textContent = `last values: ${last}`;
  const axes = node("g", { class: "axes" }, svg);
  node("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }, axes);
  node("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }, axes);
  for (const y of ticks(y0 + pad, y1 - pad, 4)) {
    node("line", { class: "grid", x1: M.left, x2: W - M.right, y1: sy(y), y2: sy(y) }, axes);
    const t = node("text", { x: M.left - 6, y: sy(y) + 4, "text-anchor": "end" }, axes);
    t.textContent = fmt(y);
  }
  const labels = chart.x_ticks;
  const span = Math.round(x1 - x0);
  const step = Math.max(1, Math.ceil((labels.length || span + 1) / 8));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    const t = node("text", { x: sx(x), y: H - M.bottom + 16, "text-anchor": "middle" }, axes);
    t.textContent = labels.length ? (labels[x] || "").slice(11) : String(x); // times: HH:MM
  }
  node("text", { x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle" }, axes)
    .textContent = chart.x_label;
  // above the plot, clear of the top tick
  node("text", { x: 12, y: M.top - 10, "text-anchor": "start" }, axes).textContent = chart.y_label;

  chart.thresholds.forEach(t => {
    node("line", { class: "threshold", x1: M.left, x2: W - M.right, y1: sy(t.y), y2: sy(t.y) }, svg);
    node("text", { class: "threshold-label", x: W - M.right, y: sy(t.y) - 4, "text-anchor": "end" }, svg)
      .textContent = `${t.name} ${fmt(t.y)}`;
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  chart.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const path = s.points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    node("polyline", { points: path, fill: "none", stroke: color, "stroke-width": 2 }, svg);
    if (s.points.length <= 40) {
      s.points.forEach(p => node("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color }, svg));
    }
    const item = document.createElement("li");
    const swatch = node("svg", { width: 14, height: 14, "aria-hidden": "true" });
    node("rect", { width: 14, height: 14, fill: color }, swatch);
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(` ${s.name}`));
    legend.appendChild(item);
  });
  slot.appendChild(svg);
  slot.appendChild(legend);
}

function field(data, path) {
  return path.split(".").reduce((v, k) => (v == null ? v : v[k]), data);
}

let polled = false;

async function refresh(main) {
  const response = await fetch(main.dataset.api, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    main.querySelectorAll("[data-chart]").forEach(s => { s.textContent = `error ${response.status}`; });
    return;
  }
  const data = await response.json();
  for (const chart of findCharts(data, [])) {
    const slot = main.querySelector(`[data-chart="${CSS.escape(chart.id)}"]`);
    if (slot) draw(slot, chart);
  }
  main.querySelectorAll("[data-field]").forEach(el => {
    const value = field(data, el.dataset.field);
    if (el.tagName === "PROGRESS") el.value = value;
    else el.textContent = String(value);
  });
  const rule = main.dataset.pollWhile;
  if (!rule) return;
  const [path, value] = rule.split("=");
  if (String(field(data, path)) === value) {
    polled = true;
    setTimeout(() => refresh(main), POLL_MS);
  } else if (polled) {
    location.reload(); // the run finished: its model and final tables are on the page now
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("main");
  if (main && main.dataset.api) refresh(main);
});
