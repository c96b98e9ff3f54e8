// The home page: projects that have jobs, with each agent's current state, and a box to open one.

import { AUTH_CODES, authHeaders, authMessage } from "./auth.js";
import { el } from "./render.js";

const PROJECT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
// the server's base URL, behind a proxy's --root-path too: this module is at <base>/static/js/
const BASE = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

document.getElementById("open").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("project-id").value.trim();
  const error = document.getElementById("open-error");
  if (!PROJECT_ID.test(id)) {
    error.hidden = false;
    error.textContent = "A project id is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.";
    return;
  }
  location.href = `${BASE}/projects/${encodeURIComponent(id)}`;
});

// Every failure ends as an Error whose message the page can show: no server, an error answer, a body that is not JSON.
async function getJson(path) {
  let response;
  try {
    response = await fetch(BASE + path, { headers: authHeaders() });
  } catch (error) {
    throw new Error(`cannot reach the server (${error.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.code ?? `the server answered ${response.status}`);
  return body;
}

function describe(error) {
  return AUTH_CODES.has(error.message) ? authMessage(error.message) : `Could not load: ${error.message}.`;
}

async function load() {
  let projects;
  try {
    ({ projects } = await getJson("/api/projects"));
  } catch (error) {
    const notice = document.getElementById("empty");
    notice.hidden = false;
    notice.setAttribute("role", "alert");
    notice.textContent = describe(error);
    return;
  }
  document.getElementById("empty").hidden = projects.length > 0;
  const list = document.getElementById("projects");
  for (const id of projects.slice(0, 100)) {
    const item = el("li", {}, el("a", { href: `${BASE}/projects/${encodeURIComponent(id)}`, text: id }));
    list.append(item);
    try {
      const status = await getJson(`/api/projects/${encodeURIComponent(id)}`);
      const badges = Object.entries(status.agents).map(([name, entry]) => {
        const state = entry.job ? entry.job.status : "idle";
        return el("span", { class: "badge", "data-state": state, text: `${name}: ${state.replace("_", " ")}` });
      });
      item.append(el("span", { class: "states" }, ...badges));
    } catch (error) {
      item.append(el("span", { class: "states error", role: "alert", text: describe(error) }));
    }
  }
}

load();
