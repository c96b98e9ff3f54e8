// The dashboard's view of a project: what each card shows, from the state that jobcast.js
// keeps (the same client any page can import: one client, not two). No DOM and no I/O here,
// so the rules can be tested on their own.

import { ACTIVE } from "../../jobcast.js";

export { ACTIVE, FINAL, appendOutput, apply, cursor, initialState, outputCursor } from "../../jobcast.js";

const ORDINALS = { 1: "st", 2: "nd", 3: "rd" };
const LIMITS = { project_limit: "project", agent_limit: "agent", user_limit: "user" };

export function ordinal(n) {
  const suffix = n % 100 >= 10 && n % 100 <= 20 ? "th" : (ORDINALS[n % 10] ?? "th");
  return `${n}${suffix}`;
}

// A queued job's place in words, as the CLI says it (client/render.py queue_text):
// "Queued: 3rd in line, waiting for the project limit (2 of 2)".
export function queueText(place) {
  const where = Number.isInteger(place.position) ? `${ordinal(place.position)} in line` : "in line";
  let reason = "a free thread";
  if (place.waiting_for in LIMITS) {
    const count = /([0-9]+ of [0-9]+)$/.exec(String(place.detail ?? ""));
    reason = `the ${LIMITS[place.waiting_for]} limit` + (count ? ` (${count[1]})` : "");
  } else if (place.waiting_for === "previous_job") {
    reason = "the job before it to end";
  }
  return `Queued: ${where}, waiting for ${reason}`;
}

export const ONLINE = Object.freeze({ offline: false, offlineSinceMs: null });
export const OFFLINE_REASON = "Offline: the server cannot be reached; reconnecting…";

// What one card shows, from the state and the link to the server: the DOM code only copies it over.
// While offline nothing the page knows is current: the timer stops ("Last seen running 9s ago", counted
// from the moment the connection was lost)
// and the actions are disabled with a reason, until a reconnect brings the truth.
export function cardView(state, name, nowMs = Date.now(), link = ONLINE) {
  const entry = state.agents[name] ?? { job: null, last_result: null, last_result_at: null };
  const job = entry.job;
  const status = job ? job.status : "idle";
  const progress = job ? state.progress[job.job_id] : undefined;
  const place = job && status === "queued" ? (state.queue?.[job.job_id] ?? job.queue ?? null) : null;
  const active = ACTIVE.has(status);
  const offline = link.offline;
  return {
    status,
    active,
    offline,
    canRefresh: !active && !offline,
    canCancel: active && !(job && job.cancel_requested) && !offline,
    disabledReason: offline ? OFFLINE_REASON : null,
    elapsedText: offline && active
      ? lastSeenText(status, nowMs - (link.offlineSinceMs ?? nowMs))
      : elapsedText(job, nowMs, state.clockOffsetMs),
    percent: progress?.percent ?? job?.progress?.percent ?? null,
    message: status === "retrying"
      ? retryText(job, nowMs + state.clockOffsetMs)
      : place ? queueText(place) : (progress?.message ?? job?.progress?.message ?? (status === "queued" ? "waiting for a worker" : null)),
    etaText: status === "running" && !offline
      ? etaText(progress ? progress.eta_s : job.eta_s ?? null, progress ? progress.overdue : Boolean(job.overdue))
      : "",
    error: job?.error ?? null,
    // while it runs, what it streamed so far; once ended, the job's whole output
    output: job ? (ACTIVE.has(status) ? (state.output?.[job.job_id]?.text ?? "") : (job.output ?? state.output?.[job.job_id]?.text ?? "")) : "",
    result: entry.last_result,
    resultAt: entry.last_result_at,
  };
}

export function elapsedSeconds(job, nowMs, clockOffsetMs) {
  if (!job || !job.started_at) return null;
  const start = Date.parse(job.started_at);
  const end = job.finished_at ? Date.parse(job.finished_at) : nowMs + clockOffsetMs;
  return Math.max(0, (end - start) / 1000);
}

// "about 40 s left", "about 3 min left", or "taking longer than usual"; empty without history.
// The CLI says the same (client/render.py eta_text).
export function etaText(etaSeconds, overdue) {
  if (overdue) return "taking longer than usual";
  if (etaSeconds === null || etaSeconds === undefined) return "";
  if (etaSeconds < 60) return `about ${Math.max(1, Math.round(etaSeconds))} s left`;
  return `about ${Math.round(etaSeconds / 60)} min left`;
}

// "Retrying in 12 s (attempt 2 of 3): provider overloaded", counted down on the server's clock.
export function retryText(job, serverNowMs) {
  const at = job.retry_at ? Date.parse(job.retry_at) : NaN;
  const seconds = Number.isNaN(at) ? 0 : Math.max(0, Math.ceil((at - serverNowMs) / 1000));
  const when = seconds ? `in ${seconds} s` : "now";
  const reason = job.error && job.error.message ? `: ${job.error.message}` : "";
  return `Retrying ${when} (attempt ${job.attempt} of ${job.max_attempts})${reason}`;
}

export function elapsedText(job, nowMs, clockOffsetMs) {
  if (!job) return "";
  if (job.status === "queued") return "Queued…";
  if (job.status === "retrying") return "Retrying…";
  const seconds = elapsedSeconds(job, nowMs, clockOffsetMs);
  if (seconds === null) return "";
  const shown = formatDuration(seconds);
  return job.status === "running" ? `Running… ${shown}` : `Took ${shown}`;
}

export function lastSeenText(status, agoMs) {
  return `Last seen ${status} ${formatDuration(Math.max(0, agoMs) / 1000)} ago`;
}

export function formatDuration(seconds) {
  const whole = Math.floor(seconds);
  if (whole < 60) return `${whole}s`;
  return `${Math.floor(whole / 60)}m ${String(whole % 60).padStart(2, "0")}s`;
}
