// The Credits section: each wallet's standing this year, the top-up requests with Approve / Reject / Cancel,
// the form that asks for a top-up, and each department's monthly statement (docs/web.md, "Credits").
// The page sends no identity: the SSO proxy in front of serve adds the person to every request. Where the API
// says no (no person, not an approver, one's own request), its message is shown where the action was.
import * as fmt from "./format.js";
import { el } from "./charts.js";
import { api, request, Refused, Unauthorized } from "./api.js";

const MARKS = [0.8, 1];
const ACTION_WORDS = { degrade: "answered from retrieval only", deny: "denied", downgrade: "sent to a cheaper model" };
const STATE_ORDER = { pending: 0 };

const state = { rows: [], timezone: "UTC", link: null, requestId: null, loaded: false };

// --- the top-up link that refusal messages carry: #request?budget=B&subject=S (TOKENMETER_TOPUP_URL)

// The link's budget and subject when the fragment is one, and the fragment's other parameters (a token).
export function readRequestLink(fragment) {
  const match = /^request(?:\?(.*))?$/s.exec(fragment);
  if (!match) return { link: null, rest: fragment };
  const params = new URLSearchParams(match[1] || "");
  const link = { budget: params.get("budget") || "", subject: params.get("subject") || "" };
  const rest = new URLSearchParams();
  if (params.has("token")) rest.set("token", params.get("token"));
  return { link, rest: rest.toString() };
}

// Show the form filled from a top-up link (now, or once the wallets are loaded).
export function askFor(link) {
  state.link = link;
  if (state.loaded) applyLink();
}

function applyLink() {
  const link = state.link;
  if (!link) return;
  state.link = null;
  const section = document.getElementById("credits");
  section.hidden = false;
  const row = state.rows.find((r) => r.budget === link.budget && (!link.subject || r.subject === link.subject))
    || state.rows.find((r) => r.budget === link.budget);
  const message = document.getElementById("request-message");
  if (row) {
    document.getElementById("request-wallet").value = row.wallet;
    walletChosen();
    document.getElementById("request-subject").value = link.subject || row.subject || "";
    formChanged();
    show(message, "note", `For budget ${link.budget}: say how many ${row.unit} and why.`);
  } else {
    show(message, "error", `No wallet budget named ${JSON.stringify(link.budget)} in serve's policy: `
      + "choose the wallet yourself, or ask whoever runs tokenmeter.");
  }
  document.getElementById("request-card").scrollIntoView({ block: "start" });
  document.getElementById("request-amount").focus();
}

function show(node, kind, text) {
  node.className = kind;
  node.textContent = text;
  node.hidden = !text;
}

// --- loading

// Called inside the page's withToken: a refused token (Unauthorized) goes up; other refusals are shown.
export async function loadCredits({ quiet = false } = {}) {
  const section = document.getElementById("credits");
  let standing;
  try {
    standing = await api("/v1/credits/wallets");
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    section.hidden = false;
    show(document.getElementById("credits-error"), "error", `Credits unavailable: ${error.message}`);
    section.dataset.state = "error";
    return;
  }
  show(document.getElementById("credits-error"), "error", "");
  state.rows = standing.wallets || [];
  state.timezone = standing.timezone || "UTC";
  const month = document.getElementById("statement-month");
  if (!month.dataset.chosen) month.value = lastMonth();  // last month in the policy's time zone
  // No wallet in the policy: nothing to show, unless a top-up link asked for the form.
  section.hidden = !state.rows.length && !state.link;
  renderWallets();
  fillWalletChoices();
  renderStatements();
  state.loaded = true;
  applyLink();
  if (state.rows.length) await loadRequests({ quiet });
  section.dataset.state = "ready";
}

async function loadRequests({ quiet = false } = {}) {
  const holder = document.getElementById("requests");
  if (quiet && holder.contains(document.activeElement)) return;  // someone is typing a comment: not now
  try {
    const answer = await api("/v1/credits/requests");
    renderRequests(answer.requests || []);
    holder.dataset.state = "ready";
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    holder.replaceChildren(el("p", { class: "error", "data-role": error.status === 401 ? "no-person" : "refusal",
      text: refusalText(error) }));
    holder.dataset.state = "error";
  }
}

function refusalText(error) {
  if (error.status === 401) return `serve does not know who you are (open this page through your SSO proxy): ${error.message}`;
  return error.status ? `${error.status}: ${error.message}` : error.message;
}

// --- the wallets' standing

function amount(value, unit) {
  const number = Number(value);
  return unit === "credits" || !unit ? `${fmt.number(number)} credits` : fmt.money(number, unit);
}

function outlook(row) {
  if (Number(row.available) <= 0) {
    return `nothing left: calls are ${ACTION_WORDS[row.action] || row.action} until a top-up is approved`;
  }
  if (Number(row.daily_rate) > 0 && row.runs_out_on) {
    return `${amount(row.daily_rate, row.unit)} a day; runs out around ${row.runs_out_on} at the last 30 days' rate`;
  }
  return "no usage yet";
}

function renderWallets() {
  const list = el("ol", { class: "gauges wallets" });
  const scale = Math.max(1.2, ...state.rows.map((row) => Number(row.ratio) || 0));
  for (const row of state.rows) {
    const ratio = Number(row.ratio) || 0;
    const level = ratio >= MARKS[1] ? "over" : ratio >= MARKS[0] ? "warn" : "ok";
    const track = el("div", { class: "track" },
      el("div", { class: `fill ${level}`, style: { width: `${Math.min(100, (ratio / scale) * 100)}%` } }));
    MARKS.forEach((mark, index) => track.append(el("div", { class: index ? "mark limit" : "mark warning",
      style: { left: `${(mark / scale) * 100}%` }, title: `${fmt.percent(mark)} ${index ? "limit" : "warning"}` })));
    const label = row.subject ? `${row.wallet} · ${row.subject}` : row.wallet;
    list.append(el("li", { "data-account": row.account, "data-budget": row.budget, "data-level": level },
      el("span", { class: "gauge-label", text: label, title: `budget ${row.budget}` }), track,
      el("span", { class: "value", "data-value": String(ratio), text: fmt.percent(ratio) }),
      el("span", { class: "wallet-figures" },
        el("span", { "data-figure": "used", "data-value": row.used, text: `${amount(row.used, row.unit)} used` }),
        el("span", { text: ` of ${amount(row.credits, row.unit)} this year · ` }),
        el("span", { "data-figure": "available", "data-value": row.available,
          text: `${amount(row.available, row.unit)} available` }),
        el("span", { class: "muted", "data-figure": "outlook", text: ` · ${outlook(row)}` }))));
  }
  if (!state.rows.length) list.append(el("li", { class: "empty", text: "no wallets in serve's policy" }));
  document.getElementById("wallets").replaceChildren(list, el("p", { class: "note",
    text: "Used (charged and not yet charged) and reserved, of this year's credits; marks at 80 % and 100 %." }));
}

// --- the request form

function wallets() {
  return [...new Set(state.rows.map((row) => row.wallet))];
}

function fillWalletChoices() {
  const select = document.getElementById("request-wallet");
  const chosen = select.value;
  select.replaceChildren(...wallets().map((name) => el("option", { value: name, text: name })));
  if (wallets().includes(chosen)) select.value = chosen;
  walletChosen();
}

// The subjects the chosen wallet has (suggested), and its unit.
function walletChosen() {
  const wallet = document.getElementById("request-wallet").value;
  const rows = state.rows.filter((row) => row.wallet === wallet);
  const subjects = [...new Set(rows.map((row) => row.subject).filter(Boolean))];
  document.getElementById("request-subjects").replaceChildren(...subjects.map((s) => el("option", { value: s })));
  const subject = document.getElementById("request-subject");
  if (subjects.length === 1 && !subject.value) subject.value = subjects[0];
  document.getElementById("request-unit").textContent = rows[0] ? rows[0].unit : "";
}

// A new request id whenever the ask changes; the same ask sent twice (a double click, a retry) keeps its id,
// so serve records it once.
function formChanged() {
  state.requestId = null;
}

function requestId() {
  if (!state.requestId) {
    state.requestId = globalThis.crypto.randomUUID ? crypto.randomUUID()  // secure contexts (https, loopback)
      : [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
  }
  return state.requestId;
}

async function submitRequest(event, withToken) {
  event.preventDefault();
  const form = document.getElementById("request-form");
  const message = document.getElementById("request-message");
  const button = form.querySelector("button[type=submit]");
  const body = { wallet: form.elements.wallet.value, subject: form.elements.subject.value.trim(),
    amount: form.elements.amount.value.trim(), reason: form.elements.reason.value.trim(), request_id: requestId() };
  button.disabled = true;
  try {
    const asked = await withToken(() => api("/v1/credits/requests", { method: "POST", body }));
    show(message, "ok", `Asked (request ${asked.id}): ${asked.state}, waiting for ${
      asked.next_approvers.join(" or ") || "nobody"}.`);
    message.dataset.request = asked.id;
    form.elements.amount.value = "";
    form.elements.reason.value = "";
    formChanged();
    await withToken(() => loadRequests());
  } catch (error) {
    show(message, "error", refusalText(error));
  } finally {
    button.disabled = false;
  }
}

export function wireCredits(withToken) {
  const form = document.getElementById("request-form");
  form.addEventListener("submit", (event) => submitRequest(event, withToken));
  form.addEventListener("input", () => formChanged());
  document.getElementById("request-wallet").addEventListener("change", () => walletChosen());
  document.getElementById("statement-month").value = lastMonth();
  document.getElementById("statement-month").addEventListener("change", (event) => {
    event.target.dataset.chosen = "yes";
    renderStatements();
  });
  document.getElementById("requests").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) act(button, withToken);
  });
}

// --- the requests

function byPendingFirst(a, b) {
  return (STATE_ORDER[a.state] ?? 1) - (STATE_ORDER[b.state] ?? 1);  // stable: newest first within each
}

function approvalsText(item) {
  return item.approvals.map((given) => `${given.by} (level ${given.level}${given.comment ? `: ${given.comment}` : ""})`)
    .join(", ") || "–";
}

function stateText(item) {
  if (!item.ended || item.state === "approved") return item.state;  // the approvers have their own column
  return `${item.state} by ${item.ended.by}${item.ended.comment ? `: ${item.ended.comment}` : ""}`;
}

function renderRequests(items) {
  const holder = document.getElementById("requests");
  const drafts = new Map([...holder.querySelectorAll("tr[data-request]")].map((tr) =>
    [tr.dataset.request, tr.querySelector("input[name=comment]")?.value || ""]));
  const head = el("tr", {}, ...["state", "wallet", "amount", "reason", "requester", "asked", "levels", "approved by",
    "may approve next", ""].map((name) => el("th", { text: name, class: name === "amount" ? "num" : "" })));
  const body = el("tbody");
  for (const item of [...items].sort(byPendingFirst)) body.append(requestRow(item, drafts.get(item.id) || ""));
  if (!items.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: "10", text: "no top-up requests" })));
  holder.replaceChildren(el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), body)));
}

function requestRow(item, draft) {
  const cell = (column, text, extra = {}) => el("td", { "data-column": column, text, ...extra });
  const actions = el("div", { class: "actions" });
  if (item.state === "pending") {
    const comment = el("input", { name: "comment", type: "text", placeholder: "comment (needed to reject)",
      "aria-label": `comment on request ${item.id}` });
    comment.value = draft;
    actions.append(comment,
      el("button", { type: "button", "data-action": "approve", text: "Approve" }),
      el("button", { type: "button", "data-action": "reject", text: "Reject" }),
      el("button", { type: "button", "data-action": "cancel", text: "Cancel", title: "the requester only" }),
      el("p", { class: "error", "data-role": "refusal", hidden: "" }));
  }
  const wallet = item.subject ? `${item.wallet} · ${item.subject}` : item.wallet;
  return el("tr", { "data-request": item.id, "data-state": item.state },
    cell("state", stateText(item)), cell("wallet", wallet),
    cell("amount", amount(item.amount, item.unit), { class: "num", "data-value": item.amount }),
    cell("reason", item.reason), cell("requester", item.requester), cell("asked", fmt.time(Date.parse(item.created_at))),
    cell("levels", `${item.approvals.length} of ${item.levels_needed}`), cell("approved_by", approvalsText(item)),
    cell("next", item.state === "pending" ? item.next_approvers.join(", ") || "nobody (no approvals in the policy)" : "–"),
    el("td", { "data-column": "actions" }, actions));
}

async function act(button, withToken) {
  const row = button.closest("tr[data-request]");
  const refusal = row.querySelector("[data-role=refusal]");
  const comment = row.querySelector("input[name=comment]").value.trim();
  if (button.dataset.action === "reject" && !comment) {
    show(refusal, "error", "Say why in the comment to reject.");
    return;
  }
  const buttons = row.querySelectorAll("button[data-action]");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await withToken(() => api(`/v1/credits/requests/${encodeURIComponent(row.dataset.request)}/${button.dataset.action}`,
      { method: "POST", body: comment ? { comment } : {} }));
    await withToken(() => loadCredits());  // an approval adds credits: the standing changes too
    // The enforcer counts a top-up on the refresh the approval wakes: read the standing once more after it.
    if (button.dataset.action === "approve") setTimeout(() => withToken(() => loadCredits({ quiet: true })).catch(() => {}), 2000);
  } catch (error) {
    show(refusal, "error", refusalText(error));
    refusal.dataset.status = String(error.status || "");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// --- monthly statements: fetched with the token in the header, handed over as a file (never a URL with the token)

function lastMonth() {
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone: state.timezone, year: "numeric", month: "numeric" })
    .formatToParts(new Date());
  const year = Number(parts.find((p) => p.type === "year").value);
  const month = Number(parts.find((p) => p.type === "month").value);
  const [y, m] = month === 1 ? [year - 1, 12] : [year, month - 1];
  return `${y}-${String(m).padStart(2, "0")}`;
}

function renderStatements() {
  const month = document.getElementById("statement-month").value || lastMonth();
  const departments = [...new Set(state.rows.filter((r) => r.scope === "department").map((r) => r.subject))].sort();
  const list = el("ul", { class: "statements" });
  for (const department of departments) {
    const links = ["html", "csv"].map((format) => {
      const link = el("button", { type: "button", class: "link", "data-department": department, "data-format": format,
        text: format.toUpperCase() });
      link.addEventListener("click", () => download(department, month, format, link));
      return link;
    });
    list.append(el("li", {}, el("span", { text: `${department} · ${month}: ` }), links[0], el("span", { text: " · " }),
      links[1], el("span", { class: "error", "data-role": "refusal", hidden: "" })));
  }
  if (!departments.length) list.append(el("li", { class: "empty", text: "no department wallets" }));
  document.getElementById("statements").replaceChildren(list);
}

async function download(department, month, format, link) {
  const refusal = link.parentElement.querySelector("[data-role=refusal]");
  const params = new URLSearchParams({ department, month, format });
  try {
    const response = await request(`/v1/credits/statement?${params}`);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Refused(response.status, body.error || `HTTP ${response.status}`);
    }
    const file = URL.createObjectURL(await response.blob());
    const save = el("a", { href: file, download: `statement-${department}-${month}.${format}` });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(file), 60000);
    show(refusal, "error", "");
  } catch (error) {
    show(refusal, "error", ` ${refusalText(error)}`);
  }
}
