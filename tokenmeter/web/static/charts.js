// The panel renderers: stacked bars per interval (time series), bar gauge with marks, table, pie.
// Everything is built with DOM calls and textContent: names from the store are never parsed as HTML.
import * as fmt from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#3274d9", "#e0752d", "#56a64b", "#a352cc", "#f2cc0c", "#1f9e9e", "#e02f44", "#8f6f4f",
  "#6e9fff", "#ff9830", "#96d98d", "#ca95e5"];

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "style") Object.assign(node.style, value);  // CSSOM: allowed by the page's CSP
    else if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function tooltip(node, text) {
  const title = svg("title");
  title.textContent = text;
  node.append(title);
  return node;
}

export function colour(index) {
  return PALETTE[index % PALETTE.length];
}

function valueCell(value, unit, currency) {
  const text = fmt.withUnit(value, unit, currency);
  return el("span", { class: "value", "data-value": String(value), text });
}

// Long rows (time, label, value) -> series {label, points: Map(bucket ms -> value), total}, largest first.
export function pivot(columns, rows) {
  const series = new Map();
  const labelAt = columns.findIndex((c, i) => i > 0 && !/Int|Float|Decimal/.test(c.type));
  const valueAt = columns.findIndex((c, i) => i > 0 && /Int|Float|Decimal/.test(c.type));
  for (const row of rows) {
    const label = labelAt >= 0 ? String(row[labelAt]) : columns[valueAt].name;
    if (!series.has(label)) series.set(label, { label, points: new Map(), total: 0 });
    const entry = series.get(label);
    const value = Number(row[valueAt]) || 0;
    entry.points.set(row[0], (entry.points.get(row[0]) || 0) + value);
    entry.total += value;
  }
  return [...series.values()].sort((a, b) => b.total - a.total);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= value);
  return step * power;
}

function timeLabel(ms, spanMs) {
  const date = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  return spanMs > 2 * 86400000 ? `${pad(date.getMonth() + 1)}-${pad(date.getDate())}` : clock;
}

// Stacked bars: one bar per interval, one colour per series; a legend with each series' total.
export function timeSeries(container, data, panel) {
  const series = pivot(data.columns, data.rows);
  const { from, to, interval_seconds: interval } = data.range;
  const step = interval * 1000;
  const first = Math.floor((from * 1000) / step) * step;
  const buckets = [];
  for (let t = first; t <= to * 1000; t += step) buckets.push(t);
  const stacks = buckets.map((t) => series.reduce((sum, s) => sum + (s.points.get(t) || 0), 0));
  const top = niceMax(Math.max(0, ...stacks));
  const width = Math.max(300, 50 * panel.grid.w), height = 200, left = 52, right = 8, topPad = 8, bottom = 22;
  const plotW = width - left - right, plotH = height - topPad - bottom;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": panel.title });
  for (let i = 0; i <= 4; i += 1) {
    const y = topPad + plotH - (plotH * i) / 4;
    chart.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
    const label = svg("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" });
    label.textContent = fmt.axisTick((top * i) / 4, panel.unit);
    chart.append(label);
  }
  const slot = plotW / buckets.length;
  const barW = Math.max(1, slot * 0.8);
  buckets.forEach((t, index) => {
    let base = 0;
    series.forEach((s, seriesIndex) => {
      const value = s.points.get(t) || 0;
      if (!value) return;
      const h = (plotH * value) / top;
      const y = topPad + plotH - ((plotH * base) / top) - h;
      const bar = svg("rect", { x: left + index * slot + (slot - barW) / 2, y, width: barW, height: Math.max(h, 0.5),
        fill: colour(seriesIndex) });
      const currency = panel.unit === "cost" ? fmt.currencyOfLabel(s.label) : undefined;
      chart.append(tooltip(bar, `${fmt.time(t)} · ${s.label}: ${fmt.withUnit(value, panel.unit, currency)}`));
      base += value;
    });
  });
  const spanMs = (to - from) * 1000;
  const ticks = Math.min(6, buckets.length);
  for (let i = 0; i < ticks; i += 1) {
    const index = Math.round((i * (buckets.length - 1)) / Math.max(1, ticks - 1));
    // (the outermost labels are anchored inward so they are not clipped)
    const anchor = ticks > 1 && i === 0 ? "start" : ticks > 1 && i === ticks - 1 ? "end" : "middle";
    const label = svg("text", { x: left + index * slot + slot / 2, y: height - 6, class: "tick",
      "text-anchor": anchor });
    label.textContent = timeLabel(buckets[index], spanMs);
    chart.append(label);
  }
  container.append(chart);
  container.append(legend(series.map((s, index) => ({ label: s.label, value: s.total, colour: colour(index) })),
    panel.unit, `per ${interval >= 3600 ? `${interval / 3600} h` : `${interval / 60} min`}; totals for the range`));
}

function legend(entries, unit, note) {
  const list = el("ul", { class: "legend" });
  if (!entries.length) list.append(el("li", { class: "empty", text: "no data in this range" }));
  for (const entry of entries) {
    const currency = unit === "cost" ? fmt.currencyOfLabel(entry.label) : undefined;
    list.append(el("li", { "data-series": entry.label },
      el("span", { class: "swatch", style: { background: entry.colour } }),
      el("span", { class: "series-name", text: entry.label }),
      valueCell(entry.value, unit, currency),
      entry.share !== undefined ? el("span", { class: "share", text: fmt.percent(entry.share) }) : null));
  }
  const wrapper = el("div", { class: "legend-wrap" }, list);
  if (note) wrapper.append(el("p", { class: "note", text: note }));
  return wrapper;
}

// Horizontal bars of a ratio, coloured by the marks (warning, limit), with the marks drawn.
export function barGauge(container, data, panel) {
  const labelAt = data.columns.findIndex((c) => !/Int|Float|Decimal/.test(c.type));
  const valueAt = data.columns.findIndex((c) => /Int|Float|Decimal/.test(c.type));
  const marks = panel.marks.length ? panel.marks : [0.8, 1];
  const scale = Math.max(1.2, ...data.rows.map((row) => Number(row[valueAt]) || 0));
  const list = el("ol", { class: "gauges" });
  if (!data.rows.length) list.append(el("li", { class: "empty", text: "no budgets in this period (no policy, or no usage yet)" }));
  for (const row of data.rows) {
    const ratio = Number(row[valueAt]) || 0;
    const level = ratio >= marks[marks.length - 1] ? "over" : ratio >= marks[0] ? "warn" : "ok";
    const track = el("div", { class: "track" },
      el("div", { class: `fill ${level}`, style: { width: `${Math.min(100, (ratio / scale) * 100)}%` } }));
    marks.forEach((mark, index) => {
      track.append(el("div", { class: index === marks.length - 1 ? "mark limit" : "mark warning",
        style: { left: `${(mark / scale) * 100}%` }, title: `${fmt.percent(mark)} ${index === marks.length - 1 ? "limit" : "warning"}` }));
    });
    list.append(el("li", { "data-series": String(row[labelAt]), "data-level": level },
      el("span", { class: "gauge-label", text: String(row[labelAt]), title: String(row[labelAt]) }), track,
      valueCell(ratio, "percentunit")));
  }
  container.append(list);
  const scaleNote = el("p", { class: "note" });
  scaleNote.textContent = `Marks: ${marks.map((m, i) => `${fmt.percent(m)} ${i === marks.length - 1 ? "limit" : "warning"}`).join(", ")}. `
    + "Used plus in-flight reservations, as the enforcer last wrote them.";
  container.append(scaleNote);
}

function heading(name) {
  return name.replaceAll("_", " ");
}

export function table(container, data, panel) {
  const units = panel.columns || {};
  // Money in a row's currency: a `currency` column ("CNY") or a `currency_kind` one ("CNY (virtual)", "unpriced").
  const currencyAt = data.columns.findIndex((c) => c.name === "currency" || c.name === "currency_kind");
  const head = el("tr", {}, ...data.columns.map((c) => el("th", {
    class: /Int|Float|Decimal/.test(c.type) ? "num" : "", text: heading(c.name) })));
  const body = el("tbody");
  for (const row of data.rows) {
    const currency = currencyAt >= 0 && row[currencyAt] ? fmt.currencyOfLabel(row[currencyAt]) : undefined;
    body.append(el("tr", {}, ...data.columns.map((c, index) => {
      const numeric = /Int|Float|Decimal/.test(c.type) && units[c.name] !== "datetime";
      const td = el("td", { class: numeric ? "num" : "", "data-column": c.name, text: fmt.cell(row[index], units[c.name], currency) });
      if (row[index] !== null && row[index] !== undefined) td.dataset.value = String(row[index]);
      return td;
    })));
  }
  if (!data.rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: String(data.columns.length), text: "no data in this range" })));
  }
  container.append(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), body)));
}

// A donut of shares, with the values and percentages in the legend.
export function pie(container, data, panel) {
  const labelAt = data.columns.findIndex((c) => !/Int|Float|Decimal/.test(c.type));
  const valueAt = data.columns.findIndex((c) => /Int|Float|Decimal/.test(c.type));
  const entries = data.rows.map((row, index) => ({ label: String(row[labelAt]), value: Number(row[valueAt]) || 0,
    colour: colour(index) }));
  const total = entries.reduce((sum, e) => sum + e.value, 0);
  const chart = svg("svg", { viewBox: "0 0 120 120", class: "donut", role: "img", "aria-label": panel.title });
  let angle = -Math.PI / 2;
  for (const entry of entries) {
    entry.share = total ? entry.value / total : 0;
    if (!entry.value) continue;
    const sweep = entry.share * Math.PI * 2;
    const large = sweep > Math.PI ? 1 : 0;
    const end = angle + Math.min(sweep, Math.PI * 2 - 1e-6);
    const [x1, y1, x2, y2] = [60 + 50 * Math.cos(angle), 60 + 50 * Math.sin(angle), 60 + 50 * Math.cos(end), 60 + 50 * Math.sin(end)];
    const arc = svg("path", { d: `M ${x1} ${y1} A 50 50 0 ${large} 1 ${x2} ${y2}`, stroke: entry.colour,
      "stroke-width": 18, fill: "none" });
    chart.append(tooltip(arc, `${entry.label}: ${fmt.withUnit(entry.value, panel.unit)} (${fmt.percent(entry.share)})`));
    angle = end;
  }
  const middle = svg("text", { x: 60, y: 64, "text-anchor": "middle", class: "donut-total" });
  middle.textContent = fmt.compactNumber(total);
  chart.append(middle);
  container.append(el("div", { class: "pie" }, chart, legend(entries, panel.unit)));
}

export const RENDERERS = { timeseries: timeSeries, bargauge: barGauge, table, piechart: pie };
