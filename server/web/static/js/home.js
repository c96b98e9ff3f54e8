// The home page: projects that have jobs, each agent's state kept live over one WebSocket (/ws),
// and a box to open a project.

import { connectMany } from "../../jobcast.js";
import { AUTH_CODES, authMessage, token } from "./auth.js";
import { el } from "./render.js";
import { BASE, CONNECTION_TEXT, getJson } from "./server.js";

const PROJECT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
// the most projects one socket follows (the server's --max-subscriptions default)
const SHOWN = 100;

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

function describe(code) {
  return AUTH_CODES.has(code) ? authMessage(code) : `Could not load: ${code}.`;
}

function itemOf(projectId) {
  return document.querySelector(`#projects li[data-project="${CSS.escape(projectId)}"]`);
}

function renderProject(state, projectId) {
  const item = itemOf(projectId);
  if (!item) return;
  const badges = Object.entries(state.agents).map(([name, entry]) => {
    const status = entry.job ? entry.job.status : "idle";
    return el("span", { class: "badge", "data-agent": name, "data-state": status, text: `${name}: ${status.replace("_", " ")}` });
  });
  item.querySelector(".states").replaceChildren(...badges);
  item.querySelector(".states").classList.remove("error");
  item.querySelector(".states").removeAttribute("role");
  const watching = item.querySelector(".watching");
  watching.textContent = state.watching ? `${state.watching} watching` : "";
}

async function load() {
  let projects;
  try {
    ({ projects } = await getJson("/api/projects"));
  } catch (error) {
    const notice = document.getElementById("empty");
    notice.hidden = false;
    notice.setAttribute("role", "alert");
    notice.textContent = describe(error.message);
    return;
  }
  document.getElementById("empty").hidden = projects.length > 0;
  const shown = projects.slice(0, SHOWN);
  const list = document.getElementById("projects");
  for (const id of shown) {
    list.append(el(
      "li",
      { "data-project": id },
      el("a", { href: `${BASE}/projects/${encodeURIComponent(id)}`, text: id }),
      el("span", { class: "states" }),
      el("span", { class: "watching muted" }),
    ));
  }
  if (projects.length > SHOWN) {
    list.after(el("p", { class: "muted", text: `Showing ${SHOWN} of ${projects.length} projects; open another by id above.` }));
  }
  const many = connectMany({ url: new URL(`${BASE}/`, location.href).href, token: token(), projects: shown });
  many.on("change", renderProject);
  many.on("error", (error, projectId) => {
    const states = projectId && itemOf(projectId)?.querySelector(".states");
    if (!states) return;
    states.classList.add("error");
    states.setAttribute("role", "alert");
    states.textContent = describe(error.code);
  });
  many.on("status", ({ status, code }) => {
    document.body.dataset.connection = status;
    document.getElementById("connection").textContent = CONNECTION_TEXT[status];
    if (status === "unauthorized") {
      const notice = document.getElementById("empty");
      notice.hidden = false;
      notice.setAttribute("role", "alert");
      notice.textContent = describe(code);
    }
  });
  window.jobcast = many; // for a developer's console
}

load();
