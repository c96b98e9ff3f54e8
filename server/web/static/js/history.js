// Rows of past jobs, for the Jobs page and each project page's history: built once per job,
// then updated in place as its transitions arrive, newest (by creation) first.

import { tokenExpiryMs } from "../../jobcast.js";
import { el } from "./render.js";

const RUN_AGAIN = new Set(["failed", "cancelled", "timed_out"]);

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function duration(job) {
  if (!job.started_at) return "—";
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  const seconds = Math.max(0, (end - Date.parse(job.started_at)) / 1000);
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/**
 * Put the job's row in `body` (a <tbody>): update it if present, else insert it where its creation time
 * puts it. `columns` lists the cells; `runAgain(job)`, if given, backs a Run again button on rows that ended
 * failed, cancelled or timed out.
 */
export function showJob(body, job, { columns, base, runAgain = null }) {
  let row = body.querySelector(`tr[data-job="${CSS.escape(job.job_id)}"]`);
  if (!row) {
    row = el("tr", { "data-job": job.job_id, "data-created": job.created_at });
    const later = [...body.rows].find((other) => other.dataset.created < job.created_at);
    body.insertBefore(row, later ?? null);
  }
  row.dataset.status = job.status;
  row.dataset.jobAgent = job.agent;
  row.dataset.jobProject = job.project_id;
  row.replaceChildren(...columns.map((column) => el("td", { "data-column": column }, ...cell(column, job, base, runAgain))));
  return row;
}

function cell(column, job, base, runAgain) {
  switch (column) {
    case "project":
      return [el("a", { href: `${base}/projects/${encodeURIComponent(job.project_id)}`, text: job.project_id })];
    case "agent":
      return [job.agent];
    case "status":
      return [el("span", { class: "badge", "data-state": job.status, text: job.status.replace("_", " ") })];
    case "started":
      return [when(job.started_at ?? job.created_at)];
    case "duration":
      return [duration(job)];
    case "attempts":
      return [String(job.attempt ?? 1) + (job.max_attempts > 1 ? ` of ${job.max_attempts}` : "")];
    case "by":
      return [job.started_by ?? "—"];
    case "error":
      return job.error ? [el("span", { class: "error", title: job.error.code, text: job.error.message })] : [];
    case "action":
      if (!runAgain || !RUN_AGAIN.has(job.status)) return [];
      return [actionButton(job, runAgain)];
    default:
      return [];
  }
}

function actionButton(job, runAgain) {
  const button = el("button", { type: "button", class: "secondary", "data-role": "run-again", "aria-label": `Run ${job.agent} again`, text: "Run again" });
  button.addEventListener("click", () => {
    button.disabled = true;
    Promise.resolve(runAgain(job)).finally(() => { button.disabled = false; });
  });
  return button;
}

/** Keep at most `limit` rows (the newest). */
export function trim(body, limit) {
  while (body.rows.length > limit) body.deleteRow(body.rows.length - 1);
}

/** Whether the page's token may start jobs on the project: open servers (no token) say so themselves. */
export function mayRun(token, projectId) {
  if (!token) return true;
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4))).jobcast ?? {};
    const projects = claims.projects;
    const covered = projects === "*" || (Array.isArray(projects) && projects.includes(projectId));
    return covered && Array.isArray(claims.rights) && claims.rights.includes("run") && (tokenExpiryMs(token) ?? Infinity) > Date.now();
  } catch {
    return false;
  }
}
