// The dashboard's state, and the one pure function that changes it: apply(state, message).
// No DOM and no I/O here, so the rules can be tested on their own.

export const FINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);
export const ACTIVE = new Set(["queued", "running", "retrying"]);

export function initialState(projectId) {
  return {
    projectId,
    epoch: null,
    seq: 0,
    agents: {}, // name -> {job, last_result, last_result_at}
    progress: {}, // job_id -> {percent, message, elapsed_s, at}
    queue: {}, // job_id -> {position, waiting_for, detail}: where a queued job stands
    output: {}, // job_id -> {attempt, text}: what a running job streamed so far, applied by offset
    clockOffsetMs: 0, // server clock minus ours
  };
}

// Returns {state, effects}. Effects are what the page should announce: one per job
// that reached a final state while we watched, never twice for the same job.
export function apply(state, message, receivedAtMs = Date.now()) {
  switch (message.type) {
    case "snapshot":
      return applySnapshot(state, message, receivedAtMs);
    case "welcome":
      return { state: { ...state, epoch: message.epoch }, effects: [] };
    case "job":
      return applyJob(state, message);
    case "progress":
      return applyProgress(state, message, receivedAtMs);
    case "queue":
      return applyQueue(state, message);
    case "output":
      return applyOutput(state, message);
    default:
      return { state, effects: [] };
  }
}

function applySnapshot(state, message, receivedAtMs) {
  const effects = [];
  for (const [name, next] of Object.entries(message.agents)) {
    const before = state.agents[name]?.job;
    if (before && next.job && before.job_id === next.job.job_id && ACTIVE.has(before.status) && FINAL.has(next.job.status)) {
      effects.push(finished(next.job)); // it ended while we were away
    }
  }
  const serverTime = Date.parse(message.server_time);
  return {
    state: {
      ...state,
      epoch: message.epoch,
      seq: message.seq,
      agents: structuredClone(message.agents),
      progress: {},
      queue: placesOf(message.agents),
      output: keptOutput(state.output, message.agents),
      clockOffsetMs: Number.isNaN(serverTime) ? state.clockOffsetMs : serverTime - receivedAtMs,
    },
    effects,
  };
}

function applyJob(state, message) {
  if (message.epoch === state.epoch && message.seq <= state.seq) {
    return { state, effects: [] }; // already applied: never show a transition twice
  }
  const job = message.job;
  const current = state.agents[message.agent] ?? { job: null, last_result: null, last_result_at: null };
  if (isOlder(job, current.job)) {
    // A card shows its agent's newest job; an older one (replaced, or followed up) ends out of view.
    return { state: { ...state, epoch: message.epoch, seq: message.seq }, effects: [] };
  }
  const next = { ...current, job };
  if (job.status === "completed") {
    next.last_result = job.result;
    next.last_result_at = job.finished_at;
  }
  const progress = { ...state.progress };
  if (FINAL.has(job.status)) delete progress[job.job_id];
  const wasFinal = current.job && current.job.job_id === job.job_id && FINAL.has(current.job.status);
  const effects = FINAL.has(job.status) && !wasFinal ? [finished(job)] : [];
  return {
    state: { ...state, epoch: message.epoch, seq: message.seq, agents: { ...state.agents, [message.agent]: next }, progress },
    effects,
  };
}

function applyProgress(state, message, receivedAtMs) {
  const job = state.agents[message.agent]?.job;
  if (!job || job.job_id !== message.job_id || job.status !== "running") {
    return { state, effects: [] }; // about a job we do not know as running: ignore
  }
  const entry = {
    percent: message.percent, message: message.message, elapsed_s: message.elapsed_s, at: receivedAtMs,
    eta_s: message.eta_s ?? null, overdue: Boolean(message.overdue),
  };
  return { state: { ...state, progress: { ...state.progress, [message.job_id]: entry } }, effects: [] };
}

function isOlder(job, shown) {
  return Boolean(shown) && shown.job_id !== job.job_id && String(job.created_at) < String(shown.created_at);
}

// Output is applied by offset: text the page has already is skipped, and a new attempt starts over.
// A chunk that would leave a gap cannot happen (the server sends what a joiner lacks from offset 0).
export function appendOutput(have, message) {
  const current = have && have.attempt === message.attempt ? have : { attempt: message.attempt, text: "" };
  if (message.offset > current.text.length) return current; // a gap: never sent; ignore rather than corrupt
  const text = current.text.slice(0, message.offset) + message.text;
  return text.length >= current.text.length ? { attempt: message.attempt, text } : current;
}

function applyOutput(state, message) {
  const next = appendOutput(state.output[message.job_id], message);
  return { state: { ...state, output: { ...state.output, [message.job_id]: next } }, effects: [] };
}

// After a snapshot, keep the output of jobs still active (the server resends it from offset 0 anyway).
function keptOutput(output, agents) {
  const kept = {};
  for (const entry of Object.values(agents)) {
    const job = entry.job;
    if (job && ACTIVE.has(job.status) && output?.[job.job_id]) kept[job.job_id] = output[job.job_id];
  }
  return kept;
}

// For the long-poll: "JOB.ATTEMPT.LENGTH,..." of the output the page has.
export function outputCursor(state) {
  return Object.entries(state.output ?? {}).map(([jobId, have]) => `${jobId}.${have.attempt}.${have.text.length}`).join(",");
}

function applyQueue(state, message) {
  const place = { position: message.position, waiting_for: message.waiting_for, detail: message.detail };
  return { state: { ...state, queue: { ...state.queue, [message.job_id]: place } }, effects: [] };
}

function placesOf(agents) {
  const places = {};
  for (const entry of Object.values(agents)) {
    if (entry.job && entry.job.queue) places[entry.job.job_id] = entry.job.queue;
  }
  return places;
}

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

function finished(job) {
  return { kind: "finished", agent: job.agent, jobId: job.job_id, status: job.status, error: job.error };
}

export function cursor(state) {
  return state.epoch === null ? null : { epoch: state.epoch, after: state.seq };
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
