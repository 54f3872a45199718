// The dashboard page: asks for the API token once, then draws every panel of the boards serve lists,
// with the time range and filters kept in the address (#range=1h&department=…, followed when edited there),
// refreshed every minute.
import * as fmt from "./format.js";
import { el, RENDERERS } from "./charts.js";
import { api, token, TOKEN_KEY, Unauthorized } from "./api.js";
import { askFor, loadCredits, readRequestLink, wireCredits } from "./credits.js";

const PRESETS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
const REFRESH_MS = 60000;
const FILTER_LABELS = { department: "Department", user: "User", model: "Model" };
const PANEL_MIN_WIDTH = 300;  // px, as dashboard.css's .panel: a narrower panel goes to a row of its own

const state = { range: "1h", from: null, to: null, filters: {}, catalog: null, values: {}, generation: 0 };

// --- the address: range and filters, so a view can be bookmarked and shared (never the token)

function readAddress() {
  // A top-up link from a refusal message (#request?budget=B&subject=S): the Credits form, filled in.
  const { link, rest } = readRequestLink(location.hash.slice(1));
  if (link) askFor(link);
  const params = new URLSearchParams(rest);
  if (params.has("token")) {  // `tokenmeter demo` prints a link with the token: keep it in the tab, drop it from the URL
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
  }
  state.range = params.get("range") || "1h";
  state.from = params.get("from") ? Number(params.get("from")) : null;
  state.to = params.get("to") ? Number(params.get("to")) : null;
  if (!(state.range in PRESETS) && !(state.range === "custom" && state.from && state.to)) state.range = "1h";
  state.filters = {};
  for (const name of Object.keys(FILTER_LABELS)) {
    const values = params.getAll(name).filter(Boolean);
    if (values.length) state.filters[name] = values;
  }
  writeAddress();
}

// The address edited by hand, or Back/Forward: the view follows it without a reload.
// (writeAddress replaces the address without a hashchange, so this only sees others' changes.)
function followAddress() {
  const before = token();
  readAddress();
  showRange();
  if (token() !== before) {  // a token link pasted into this tab: the filter values may differ too
    refresh();
    return;
  }
  renderFilters();
  loadPanels();
}

function writeAddress() {
  const params = new URLSearchParams();
  params.set("range", state.range);
  if (state.range === "custom") {
    params.set("from", String(state.from));
    params.set("to", String(state.to));
  }
  for (const [name, values] of Object.entries(state.filters)) for (const value of values) params.append(name, value);
  history.replaceState(null, "", `${location.pathname}#${params}`);
}

function rangeSeconds() {
  if (state.range === "custom") return { from: state.from, to: state.to };
  const to = Math.floor(Date.now() / 1000);
  return { from: to - PRESETS[state.range], to };
}

function query() {
  const { from, to } = rangeSeconds();
  const params = new URLSearchParams({ from: String(from), to: String(to) });
  for (const [name, values] of Object.entries(state.filters)) for (const value of values) params.append(name, value);
  return params.toString();
}

// --- the token dialog

function askForToken(message) {
  const dialog = document.getElementById("token-dialog");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  return new Promise((resolve) => {
    const form = document.getElementById("token-form");
    form.onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
      dialog.close();
      resolve();
    };
    if (!dialog.open) dialog.showModal();
    document.getElementById("token-input").focus();
  });
}

async function withToken(action) {
  if (!token()) await askForToken("");
  for (;;) {
    try {
      return await action();
    } catch (error) {
      if (!(error instanceof Unauthorized)) throw error;
      sessionStorage.removeItem(TOKEN_KEY);
      await askForToken("That token was refused. Check it and try again.");
    }
  }
}

// --- controls

function renderFilters() {
  const holder = document.getElementById("filters");
  holder.replaceChildren();
  for (const [name, label] of Object.entries(FILTER_LABELS)) {
    const chosen = new Set(state.filters[name] || []);
    const summary = el("summary", {}, el("span", { class: "filter-name", text: `${label}: ` }),
      el("span", { class: "filter-value", text: chosen.size ? [...chosen].join(", ") : "All" }));
    const options = el("div", { class: "options" });
    const known = [...new Set([...(state.values[name] || []), ...chosen])];
    if (!known.length) options.append(el("p", { class: "note", text: "no values yet" }));
    for (const value of known) {
      const box = el("input", { type: "checkbox", value, "data-filter": name });
      box.checked = chosen.has(value);
      box.addEventListener("change", () => toggleFilter(name, value, box.checked));
      options.append(el("label", { class: "option" }, box, el("span", { text: value })));
    }
    const clear = el("button", { type: "button", class: "clear", text: "All" });
    clear.addEventListener("click", () => { delete state.filters[name]; changed(); });
    options.append(clear);
    holder.append(el("details", { class: "filter", "data-filter": name }, summary, options));
  }
}

function toggleFilter(name, value, on) {
  const values = new Set(state.filters[name] || []);
  if (on) values.add(value); else values.delete(value);
  if (values.size) state.filters[name] = [...values]; else delete state.filters[name];
  changed();
}

function changed() {
  writeAddress();
  const open = [...document.querySelectorAll("details.filter[open]")].map((d) => d.dataset.filter);
  renderFilters();
  for (const name of open) document.querySelector(`details.filter[data-filter="${name}"]`).open = true;
  loadPanels();
}

function toLocalInput(seconds) {
  const date = new Date(seconds * 1000);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

// The range picker as the state has it (at start, and when the address changes).
function showRange() {
  document.getElementById("range").value = state.range;
  document.getElementById("custom-range").hidden = state.range !== "custom";
  if (state.range === "custom") {
    document.getElementById("range-from").value = toLocalInput(state.from);
    document.getElementById("range-to").value = toLocalInput(state.to);
  }
}

function wireControls() {
  const select = document.getElementById("range");
  const custom = document.getElementById("custom-range");
  showRange();
  select.addEventListener("change", () => {
    if (select.value === "custom") {
      const { from, to } = rangeSeconds();
      document.getElementById("range-from").value = toLocalInput(state.from || from || Date.now() / 1000 - 3600);
      document.getElementById("range-to").value = toLocalInput(state.to || to || Date.now() / 1000);
      custom.hidden = false;
      return;
    }
    custom.hidden = true;
    state.range = select.value;
    changed();
  });
  document.getElementById("range-apply").addEventListener("click", () => {
    const from = Date.parse(document.getElementById("range-from").value) / 1000;
    const to = Date.parse(document.getElementById("range-to").value) / 1000;
    if (!(from < to)) {
      document.getElementById("range-to").setCustomValidity("must be after the start");
      document.getElementById("range-to").reportValidity();
      return;
    }
    document.getElementById("range-to").setCustomValidity("");
    Object.assign(state, { range: "custom", from: Math.floor(from), to: Math.floor(to) });
    changed();
  });
  document.getElementById("refresh").addEventListener("click", () => refresh());
  document.addEventListener("click", (event) => {  // one filter list open at a time; a click elsewhere closes it
    for (const details of document.querySelectorAll("details.filter[open]")) {
      if (!details.contains(event.target)) details.open = false;
    }
  });
}

// --- boards and panels

// Grafana's layout as rows (panels with the same y), each panel as wide as its share of the 24 columns;
// a table panel takes at least the width its table needs (fitTable), and a row that cannot give it wraps.
function renderBoards() {
  const main = document.getElementById("boards");
  main.replaceChildren();
  for (const board of state.catalog.boards) {
    const rows = new Map();
    for (const panel of [...board.panels].sort((a, b) => a.grid.y - b.grid.y || a.grid.x - b.grid.x)) {
      if (!rows.has(panel.grid.y)) rows.set(panel.grid.y, el("div", { class: "row" }));
      const body = el("div", { class: "panel-body" });
      const section = el("section", { class: `panel kind-${panel.kind}`, "data-board": board.name,
        "data-panel": String(panel.id), "data-state": "loading" },
      el("h3", { text: panel.title, title: panel.description || "" }), body);
      section.style.flexGrow = String(panel.grid.w);
      section.style.minHeight = `${panel.grid.h * 34}px`;
      rows.get(panel.grid.y).append(section);
    }
    for (const row of rows.values()) {  // a row narrower than the 24 columns keeps its empty part
      const used = [...row.children].reduce((sum, section) => sum + Number(section.style.flexGrow), 0);
      if (used < 24) row.append(el("div", { class: "row-rest", style: { flexGrow: String(24 - used) } }));
    }
    main.append(el("section", { class: "board", "data-board": board.name },
      el("h2", { text: board.title.replace(/^tokenmeter \/ /, "") }), el("div", { class: "rows" }, ...rows.values())));
  }
}

// A table panel at least as wide as its table at its narrowest (headings and names wrapped between
// words, numbers on one line), or the whole row when even that is wider: no column is scrolled out of
// sight while the page has the room.
function fitTable(section) {
  const table = section.querySelector(".table-wrap > table");
  if (!table) return;
  table.style.width = "min-content";
  const need = Math.ceil(table.getBoundingClientRect().width);
  table.style.width = "";
  const frame = section.getBoundingClientRect().width - section.querySelector(".panel-body").getBoundingClientRect().width;
  section.style.minWidth = `min(${Math.max(need + Math.ceil(frame), PANEL_MIN_WIDTH)}px, 100%)`;
}

async function loadPanel(board, panel, generation, params) {
  const section = document.querySelector(`section.panel[data-board="${board.name}"][data-panel="${panel.id}"]`);
  const body = section.querySelector(".panel-body");
  section.dataset.state = "loading";
  try {
    const data = await api(`/v1/dashboard/panels/${board.name}/${panel.id}?${params}`);
    if (generation !== state.generation) return;  // a newer range or filter was chosen meanwhile
    body.replaceChildren();
    (RENDERERS[panel.kind] || RENDERERS.table)(body, data, panel);
    fitTable(section);
    section.dataset.state = "ready";
    section.dataset.query = params;
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    if (generation !== state.generation) return;
    body.replaceChildren(el("p", { class: "error", text: `Could not load: ${error.message}` }));
    section.dataset.state = "error";
  }
}

async function loadPanels() {
  state.generation += 1;
  const generation = state.generation;
  const params = query();
  document.body.dataset.query = params;
  await withToken(() => {
    const jobs = [loadHealth()];
    for (const board of state.catalog.boards) {
      for (const panel of board.panels) jobs.push(loadPanel(board, panel, generation, params));
    }
    return Promise.all(jobs);
  });
}

async function loadHealth() {
  const strip = document.getElementById("health");
  try {
    const health = await api("/v1/dashboard/health");
    const receiver = health.receiver || {};
    const lastReceived = [receiver.last_accepted_at ? receiver.last_accepted_at * 1000 : null, health.store_last_usage_ms]
      .filter(fmt.isNumber);
    const last = lastReceived.length ? Math.max(...lastReceived) : null;
    const stale = !last || health.now_ms - last > 15 * 60000;
    const failOpen = (health.fail_open.enforcer || 0) + (health.fail_open.client || 0);
    const problems = [health.quotas.policy_error, health.quotas.store_error].filter(Boolean);
    strip.replaceChildren(
      el("span", { class: `health-item ${stale ? "bad" : "good"}`, "data-health": "last",
        "data-value": String(last), title: last ? fmt.time(last) : "" }, el("b", { text: "Last data received " }),
      el("span", { text: fmt.ago(last, health.now_ms) })),
      el("span", { class: "health-item", "data-health": "rate", "data-value": String(receiver.items_per_second) },
        el("b", { text: "Ingest " }), el("span", { text: `${fmt.number(receiver.items_per_second)} items/s` }),
        el("span", { class: "muted", text: ` (last minute; ${fmt.number(receiver.items_accepted)} since start)` })),
      el("span", { class: `health-item ${failOpen ? "bad" : "good"}`, "data-health": "fail-open", "data-value": String(failOpen) },
        el("b", { text: "Fail-open " }), el("span", { text: `${fmt.number(failOpen)} calls` }),
        el("span", { class: "muted", text: ` unchecked since start (${fmt.number(health.fail_open.enforcer || 0)} at the enforcer, ${fmt.number(health.fail_open.client || 0)} reported by apps)` })),
      el("span", { class: `health-item ${problems.length ? "bad" : ""}`, "data-health": "quotas" },
        el("b", { text: "Quotas " }), el("span", { text: problems.length ? problems.join("; ")
          : health.budgets ? `${health.budgets} budgets, policy loaded` : "no budgets: every check is allowed" })),
    );
    strip.dataset.state = "ready";
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    strip.replaceChildren(el("span", { class: "health-item bad", text: `Pipeline health unavailable: ${error.message}` }));
    strip.dataset.state = "error";
  }
}

async function refresh({ quiet = false } = {}) {
  state.values = await withToken(() => api("/v1/dashboard/filters"));
  renderFilters();
  await loadPanels();
  await withToken(() => loadCredits({ quiet }));
}

async function start() {
  readAddress();
  wireControls();
  wireCredits(withToken);
  state.catalog = await withToken(() => api("/v1/dashboard"));
  renderBoards();
  window.addEventListener("hashchange", () => followAddress());
  await refresh();
  setInterval(() => { if (state.range !== "custom" && !document.hidden) refresh({ quiet: true }); }, REFRESH_MS);
}

start().catch((error) => {
  document.getElementById("boards").replaceChildren(el("p", { class: "error", text: `The dashboard failed: ${error.message}` }));
});
