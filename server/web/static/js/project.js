// The project page: jobcast.js follows the project; this page draws its state as cards.

import { connect } from "../../jobcast.js";
import { authMessage, token } from "./auth.js";
import { mayRun, showJob, trim } from "./history.js";
import { ONLINE, OFFLINE_REASON } from "./state.js";
import { el, ensureCards, updateCard } from "./render.js";

const projectId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
// the server's base URL, behind a proxy's --root-path too: this module is at <base>/static/js/
const server = new URL("../..", import.meta.url).href;
let link = ONLINE; // {offline, offlineSinceMs}: whether what the page shows is current

const cards = document.getElementById("cards");
const live = document.getElementById("announcer");
const toasts = document.getElementById("toasts");

document.title = `${projectId} · jobcast`;
document.getElementById("project-name").textContent = projectId;

const project = connect({ url: server, project: projectId, token: token() });

project.on("status", ({ status, transport, code }) => {
  document.body.dataset.connection = status;
  document.body.dataset.transport = transport;
  document.getElementById("connection").textContent = CONNECTION_TEXT[status](transport);
  if (status === "offline") setOffline(true);
  else if (status === "live" || status === "fallback") setOffline(false);
  else if (status === "unauthorized") {
    toasts.append(el("div", { class: "toast bad", role: "alert", "data-auth": code, text: authMessage(code) }));
  }
});
project.on("change", onChange);
project.on("finished", notify);
project.on("presence", ({ watching }) => {
  document.getElementById("watching").textContent = `${watching} watching`;
});
project.on("job", (message) => showInHistory(message.job));
project.on("snapshot", (message) => {
  for (const { job } of Object.values(message.agents)) if (job) showInHistory(job);
});

// -- the project's last jobs, under the cards -----------------------------------------------------

const HISTORY = 20;
const HISTORY_COLUMNS = ["agent", "status", "started", "duration", "attempts", "by", "error", "action"];
const history = document.getElementById("history");

function showInHistory(job) {
  const runAgain = mayRun(project.token, projectId) ? runAgainFor : null;
  showJob(history, job, { columns: HISTORY_COLUMNS, base: server.replace(/\/$/, ""), runAgain });
  trim(history, HISTORY);
  document.getElementById("history-notice").textContent = "";
}

async function runAgainFor(job) {
  try {
    await project.refresh(job.agent);
  } catch (error) {
    failed(job.agent, "run again", error.message);
  }
}

async function loadHistory() {
  const notice = document.getElementById("history-notice");
  try {
    const response = await fetch(`${project.url}/api/projects/${encodeURIComponent(projectId)}/jobs?limit=${HISTORY}`, {
      headers: project.tokens.headers(), cache: "no-store",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error?.code ?? `the server answered ${response.status}`);
    for (const job of answer.jobs) showInHistory(job);
    notice.textContent = history.rows.length ? "" : "No jobs yet.";
  } catch (error) {
    notice.textContent = `Could not load the recent jobs: ${error.message}.`;
  }
}

loadHistory();

function setOffline(offline) {
  if (link.offline === offline) return;
  link = { offline, offlineSinceMs: offline ? Date.now() : null }; // contact ended when the connection did
  const banner = document.getElementById("offline");
  banner.hidden = !offline;
  banner.textContent = offline ? `${OFFLINE_REASON} Refresh and Cancel come back with the server.` : "";
  render();
}

const CONNECTION_TEXT = {
  connecting: (transport) => `Connecting (${transport})…`,
  live: () => "Live",
  fallback: (transport) => `Live over ${transport === "sse" ? "Server-Sent Events" : "long-poll"}`,
  offline: () => "Offline, reconnecting…",
  unauthorized: () => "Not authorised",
  closed: () => "Closed",
};

let shown = project.state; // what the cards last showed, to announce what changed

function onChange(state) {
  ensureCards(cards, Object.keys(state.agents), { refresh, cancel });
  render();
  announceChanges(shown, state);
  shown = state;
}

function render(nowMs = Date.now()) {
  const state = project.state;
  for (const name of Object.keys(state.agents)) {
    const card = cards.querySelector(`[data-agent="${CSS.escape(name)}"]`);
    if (card) updateCard(card, state, name, nowMs, link);
  }
}

function announceChanges(before, after) {
  for (const [name, entry] of Object.entries(after.agents)) {
    const was = before.agents[name]?.job?.status;
    const now = entry.job?.status;
    if (now && was !== now && before.epoch !== null) live.textContent = `${name}: ${now.replace("_", " ")}`;
  }
}

function notify(effect) {
  const good = effect.status === "completed";
  const text = good
    ? `${effect.agent} finished`
    : `${effect.agent} ${effect.status.replace("_", " ")}${effect.error ? `: ${effect.error.message}` : ""}`;
  const toast = el("div", { class: `toast ${good ? "ok" : "bad"}`, role: "status", "data-job": effect.jobId, "data-status": effect.status, text });
  toasts.append(toast);
  setTimeout(() => toast.remove(), 8000);
}

// Every failure a click can meet (no server, an error answer, a body that is not JSON) ends as a
// visible message, never as an uncaught rejection.
async function post(name, action) {
  try {
    await project[action](name);
  } catch (error) {
    const hint = error.code === "unreachable" ? "; try again once it is back" : "";
    failed(name, action, `${error.message}${hint}`);
  }
}

function failed(name, action, message) {
  toasts.append(el("div", { class: "toast bad", role: "alert", "data-failed": action, text: `${name}: ${message}` }));
}

function refresh(name) {
  // Disable at once, so a double click cannot start a duplicate; the pushed state re-enables it.
  cards.querySelector(`[data-agent="${CSS.escape(name)}"] [data-role="refresh"]`).disabled = true;
  post(name, "refresh").finally(() => render());
}

function cancel(name) {
  post(name, "cancel");
}

setInterval(render, 250); // elapsed time ticks from started_at and the server clock offset
window.jobcast = project; // for a developer's console
