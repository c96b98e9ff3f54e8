// DOM for the project page: cards built once per agent, then updated from cardView().

import { cardView } from "./state.js";

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

export function ensureCards(container, names, handlers) {
  for (const name of names) {
    if (container.querySelector(`[data-agent="${CSS.escape(name)}"]`)) continue;
    container.append(buildCard(name, handlers));
  }
}

function buildCard(name, handlers) {
  const titleId = `title-${name}`;
  const refresh = el("button", { type: "button", "data-role": "refresh", "aria-label": `Refresh ${name}`, text: "Refresh" });
  const cancel = el("button", { type: "button", class: "secondary", "data-role": "cancel", "aria-label": `Cancel ${name}`, text: "Cancel", hidden: true });
  refresh.addEventListener("click", () => handlers.refresh(name));
  cancel.addEventListener("click", () => handlers.cancel(name));
  return el(
    "article",
    { class: "card", "data-agent": name, "data-state": "idle", "aria-labelledby": titleId },
    el("header", {}, el("h2", { id: titleId, text: name }), el("span", { class: "badge", "data-role": "badge", text: "idle" })),
    el("p", { class: "elapsed", "data-role": "elapsed" }),
    el(
      "div",
      { class: "progress", "data-role": "progress", hidden: true },
      el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": `${name} progress` }, el("span", { class: "fill" })),
      el("span", { class: "step", "data-role": "step" }),
    ),
    el("p", { class: "error", "data-role": "error", role: "alert", hidden: true }),
    el("pre", { class: "output", "data-role": "output", "aria-label": `${name} output`, tabindex: "0", hidden: true }),
    el("div", { class: "actions" }, refresh, cancel),
    el("section", { class: "result", "data-role": "result", "aria-label": `${name} result` }),
    el("p", { class: "updated", "data-role": "updated" }),
  );
}

export function updateCard(card, state, name, nowMs, link) {
  const view = cardView(state, name, nowMs, link);
  const part = (role) => card.querySelector(`[data-role="${role}"]`);
  card.dataset.state = view.status;
  card.dataset.offline = String(view.offline);
  part("badge").textContent = view.status.replace("_", " ");
  part("elapsed").textContent = [view.elapsedText, view.etaText].filter(Boolean).join(" · ");
  for (const [role, enabled] of [["refresh", view.canRefresh], ["cancel", view.canCancel]]) {
    part(role).disabled = !enabled;
    if (view.disabledReason) part(role).title = view.disabledReason;
    else part(role).removeAttribute("title");
  }
  part("cancel").hidden = !view.active;
  updateProgress(part("progress"), view);
  const error = part("error");
  error.hidden = !view.error || view.status === "completed" || view.status === "retrying"; // retrying says it itself
  error.textContent = view.error ? `${view.error.code}: ${view.error.message}` : "";
  updateOutput(part("output"), view.output);
  updateResult(part("result"), name, view);
  part("updated").textContent = view.resultAt ? `Last updated ${new Date(view.resultAt).toLocaleString()}` : "No result yet";
}

function updateProgress(node, view) {
  const show = view.active && (view.percent !== null || view.message);
  node.hidden = !show;
  const bar = node.querySelector(".bar");
  const percent = view.percent ?? 0;
  bar.setAttribute("aria-valuenow", String(Math.round(percent)));
  node.querySelector(".fill").style.width = `${percent}%`;
  node.querySelector(".step").textContent = [view.percent !== null ? `${Math.round(percent)}%` : null, view.message].filter(Boolean).join(" · ");
}

// Streamed text, as text (never HTML). It follows the end as it grows, unless the reader scrolled up.
function updateOutput(node, text) {
  node.hidden = !text;
  if (node.textContent === text) return;
  const following = node.scrollHeight - node.scrollTop - node.clientHeight < 24;
  if (text.startsWith(node.textContent) && node.textContent) node.append(text.slice(node.textContent.length));
  else node.textContent = text;
  if (following) node.scrollTop = node.scrollHeight;
}

function updateResult(node, name, view) {
  const key = view.resultAt ?? "";
  if (node.dataset.shown === key) return; // results change rarely; rebuild only then
  node.dataset.shown = key;
  node.replaceChildren(...(view.result ? renderResult(name, view.result) : []));
}

export function renderResult(name, result) {
  if (name === "financial" && Array.isArray(result.series)) return renderFinancial(result);
  if (name === "performance" && Array.isArray(result.kpis)) return renderPerformance(result);
  return [renderKeyValues(result)];
}

const money = (value, currency = "USD") =>
  typeof value === "number" ? value.toLocaleString(undefined, { style: "currency", currency, maximumFractionDigits: 0 }) : "—";

function renderFinancial(result) {
  const figures = el(
    "dl",
    { class: "figures" },
    ...[
      ["Revenue", money(result.revenue, result.currency)],
      ["Costs", money(result.costs, result.currency)],
      ["Burn", money(result.burn, result.currency)],
      ["Runway", result.runway_months == null ? "∞" : `${result.runway_months} months`],
    ].flatMap(([label, value]) => [el("dt", { text: label }), el("dd", { text: value })]),
  );
  return [figures, seriesChart(result.series), el("p", { class: "summary", text: result.summary ?? "" })];
}

export function seriesChart(series) {
  const width = 320;
  const height = 120;
  const pad = 6;
  const values = series.flatMap((point) => [point.revenue, point.costs]);
  const max = Math.max(...values, 1);
  const min = Math.min(...values, 0);
  const x = (index) => pad + (index * (width - 2 * pad)) / Math.max(1, series.length - 1);
  const y = (value) => height - pad - ((value - min) * (height - 2 * pad)) / (max - min || 1);
  const path = (key) => series.map((point, index) => `${index ? "L" : "M"}${x(index).toFixed(1)},${y(point[key]).toFixed(1)}`).join(" ");
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Revenue and costs over ${series.length} months`);
  for (const [key, cls] of [["costs", "line-costs"], ["revenue", "line-revenue"]]) {
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("d", path(key));
    line.setAttribute("class", cls);
    svg.append(line);
  }
  const legend = el("p", { class: "legend" }, el("span", { class: "key-revenue", text: "revenue" }), " ", el("span", { class: "key-costs", text: "costs" }));
  const wrapper = el("figure", { class: "chart-box" }, legend);
  wrapper.prepend(svg);
  return wrapper;
}

const TREND = { up: "↑", down: "↓", flat: "→" };

function renderPerformance(result) {
  const rows = result.kpis.map((kpi) =>
    el(
      "tr",
      { class: kpi.met ? "met" : "missed" },
      el("th", { scope: "row", text: kpi.name.replaceAll("_", " ") }),
      el("td", { text: `${kpi.value} ${kpi.unit}` }),
      el("td", { text: `${kpi.higher_is_better ? "≥" : "≤"} ${kpi.target}` }),
      el("td", { text: kpi.met ? "✓ met" : "✗ missed" }),
      el("td", { "aria-label": `trend ${kpi.trend}`, text: TREND[kpi.trend] ?? kpi.trend }),
    ),
  );
  const head = el("tr", {}, ...["KPI", "Value", "Target", "", "Trend"].map((text) => el("th", { scope: "col", text })));
  return [el("table", { class: "kpis" }, el("thead", {}, head), el("tbody", {}, ...rows)), el("p", { class: "summary", text: result.summary ?? "" })];
}

export function renderKeyValues(result) {
  return el(
    "dl",
    { class: "figures" },
    ...Object.entries(result).flatMap(([key, value]) => [
      el("dt", { text: key }),
      el("dd", { text: typeof value === "object" && value !== null ? JSON.stringify(value) : String(value) }),
    ]),
  );
}
