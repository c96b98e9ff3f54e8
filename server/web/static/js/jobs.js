// The Jobs page: recent jobs across projects, filtered by project, agent and status (kept in the URL),
// older pages by cursor, and live: new jobs and transitions arrive over one WebSocket (/ws).

import { connectMany } from "../../jobcast.js";
import { AUTH_CODES, authMessage, token } from "./auth.js";
import { showJob } from "./history.js";
import { el } from "./render.js";
import { BASE, CONNECTION_TEXT, getJson } from "./server.js";

const COLUMNS = ["project", "agent", "status", "started", "duration", "attempts", "by", "error"];
const PAGE = 50;
const FOLLOWED = 100; // the server's --max-subscriptions default
const NEW_PROJECTS_EVERY_MS = 30000;

const params = new URLSearchParams(location.search);
const filters = { project: params.get("project") ?? "", agent: params.get("agent") ?? "", status: params.get("status") ?? "" };
const body = document.getElementById("jobs");
const notice = document.getElementById("notice");
const more = document.getElementById("more");
let next = null;

const form = document.getElementById("filters");
for (const [name, value] of Object.entries(filters)) form.elements[name].value = value;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const chosen = new URLSearchParams();
  for (const name of Object.keys(filters)) {
    const value = form.elements[name].value.trim();
    if (value) chosen.set(name, value);
  }
  location.search = chosen.toString();
});

function describe(code) {
  return AUTH_CODES.has(code) ? authMessage(code) : `Could not load the jobs: ${code}.`;
}

function matches(job) {
  return (!filters.project || job.project_id === filters.project)
    && (!filters.agent || job.agent === filters.agent)
    && (!filters.status || job.status === filters.status);
}

function show(job) {
  showJob(body, job, { columns: COLUMNS, base: BASE });
}

async function loadPage() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  if (next) query.set("before", next);
  const page = await getJson(`/api/jobs?${query}`);
  for (const job of page.jobs) show(job);
  next = page.next;
  more.hidden = !next;
  notice.textContent = body.rows.length ? "" : "No jobs match.";
}

more.addEventListener("click", () => loadPage().catch((error) => { notice.textContent = describe(error.message); }));

async function agentOptions() {
  const { agents } = await getJson("/api/agents");
  const select = form.elements.agent;
  for (const { name } of agents) select.append(el("option", { value: name, text: name }));
  select.value = filters.agent;
}

async function projectsToFollow() {
  if (filters.project) return [filters.project];
  const { projects } = await getJson("/api/projects");
  return projects.slice(0, FOLLOWED);
}

async function follow() {
  const many = connectMany({ url: new URL(`${BASE}/`, location.href).href, token: token(), projects: await projectsToFollow() });
  many.on("snapshot", (message) => {
    // each agent's current job: one that started between the page's load and the subscription included
    const oldest = body.rows.length >= PAGE ? body.rows[body.rows.length - 1].dataset.created : "";
    for (const { job } of Object.values(message.agents)) {
      if (job && matches(job) && job.created_at >= oldest) show(job);
    }
  });
  many.on("job", (message) => {
    if (matches(message.job)) show(message.job);
    notice.textContent = body.rows.length ? "" : notice.textContent;
  });
  many.on("status", ({ status }) => {
    document.body.dataset.connection = status;
    document.getElementById("connection").textContent = CONNECTION_TEXT[status];
  });
  if (!filters.project) {
    // A project's first job comes from a project the socket does not follow yet: look for new ones now and then.
    setInterval(async () => {
      const projects = await projectsToFollow().catch(() => []);
      for (const id of projects) many.subscribe(id);
    }, NEW_PROJECTS_EVERY_MS);
  }
  window.jobcast = many; // for a developer's console
}

async function start() {
  try {
    await agentOptions();
    await loadPage();
    await follow();
  } catch (error) {
    notice.setAttribute("role", "alert");
    notice.textContent = describe(error.message);
  }
}

start();
