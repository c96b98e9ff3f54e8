// jobcast.js: follow a jobcast project live from any page, and start and cancel its jobs.
//
//   import { connect } from "https://jobs.example.com/jobcast.js";
//   const project = connect({ url: "https://jobs.example.com", project: "acme", token, getToken });
//   project.on("job", (message) => console.log(message.agent, message.job.status));
//   project.on("progress", (message) => console.log(message.percent, message.message));
//   await project.refresh("financial");
//
// One standalone ES module, no dependencies and no build step; jobcast serves it at
// /jobcast.js and its types at /jobcast.d.ts. The dashboard is built on it too.
//
// A connection tries a WebSocket first, then Server-Sent Events (read with fetch, so the
// token travels as "Authorization: Bearer"), then long-poll, all resuming from one cursor
// (epoch, seq), with exponential backoff and jitter between attempts. The project's state
// (each agent's current job and last result) is rebuilt from snapshots and events by one
// pure function, apply(), so no transition is shown twice and none is missed.
//
// Tokens: the server closes a WebSocket with 1008 when its token expires, and answers 401
// token_expired on HTTP. Given getToken(), the client asks for a fresh token a minute before
// the current one expires (read from the JWT's "exp"; a fifth of its life before, for short
// tokens), and again after such a refusal, then
// carries on from its cursor: a page stays live for hours. Without getToken() a refused
// token stops the connection with status "unauthorized".

/** @typedef {"queued"|"running"|"retrying"|"completed"|"failed"|"cancelled"|"timed_out"} JobStatus */
/** @typedef {{job_id: string, project_id: string, agent: string, status: JobStatus, created_at: string,
 *   started_at: string|null, finished_at: string|null, progress: {percent: number|null, message: string|null},
 *   result: any, error: {code: string, message: string}|null, cancel_requested: boolean, [key: string]: any}} Job */
/** @typedef {{job: Job|null, last_result: any, last_result_at: string|null}} AgentState */
/** @typedef {{projectId: string, epoch: string|null, seq: number, agents: Record<string, AgentState>,
 *   progress: Record<string, {percent: number|null, message: string|null, elapsed_s: number, at: number,
 *   eta_s: number|null, overdue: boolean}>, queue: Record<string, {position: number|null, waiting_for: string,
 *   detail: string|null}>, output: Record<string, {attempt: number, text: string}>, clockOffsetMs: number,
 *   watching: number|null}} State */
/** @typedef {"connecting"|"live"|"fallback"|"offline"|"unauthorized"|"closed"} Status */

export const FINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);
export const ACTIVE = new Set(["queued", "running", "retrying"]);
/** The refusals no reconnect can cure: only a new token helps. */
export const AUTH_CODES = new Set(["auth_required", "invalid_token", "token_expired", "forbidden"]);

const TRANSPORTS = ["ws", "sse", "poll"];
const FALLBACK_AFTER_FAILURES = 2;
const RENEW_MARGIN_MS = 60000; // ask for a new token this long before the current one expires
const MAX_TIMER_MS = 2 ** 31 - 1;

// ---------------------------------------------------------------------------------------------
// State: the one pure function that changes it.

/** @param {string} projectId @returns {State} */
export function initialState(projectId) {
  return {
    projectId,
    epoch: null,
    seq: 0,
    agents: {}, // name -> {job, last_result, last_result_at}
    progress: {}, // job_id -> {percent, message, elapsed_s, at, eta_s, overdue}
    queue: {}, // job_id -> {position, waiting_for, detail}: where a queued job stands
    output: {}, // job_id -> {attempt, text}: what a running job streamed so far, applied by offset
    clockOffsetMs: 0, // server clock minus ours
    watching: null, // how many clients watch the project (presence), once the server said
  };
}

/**
 * Apply one server message. Returns {state, effects}: effects are the jobs that reached a
 * final state while we watched, once each. An ignored message returns the same state object.
 * @param {State} state @param {object} message @param {number} [receivedAtMs]
 * @returns {{state: State, effects: Array<{kind: "finished", agent: string, jobId: string, status: JobStatus, error: any}>}}
 */
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
    case "presence":
      return { state: message.watching === state.watching ? state : { ...state, watching: message.watching }, effects: [] };
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
    // An agent shows its newest job; an older one (replaced, or followed up) ends out of view.
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

/**
 * Output is applied by offset: text we already have is skipped, and a new attempt starts over.
 * A chunk that would leave a gap cannot happen (the server sends a joiner what it lacks from offset 0).
 * @param {{attempt: number, text: string}|undefined} have @param {{attempt: number, offset: number, text: string}} message
 */
export function appendOutput(have, message) {
  const current = have && have.attempt === message.attempt ? have : { attempt: message.attempt, text: "" };
  if (message.offset > current.text.length) return current; // a gap: never sent; ignore rather than corrupt
  const text = current.text.slice(0, message.offset) + message.text;
  return text.length >= current.text.length ? { attempt: message.attempt, text } : current;
}

function applyOutput(state, message) {
  const have = state.output[message.job_id];
  const next = appendOutput(have, message);
  if (next === have) return { state, effects: [] };
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

/** For the long-poll: "JOB.ATTEMPT.LENGTH,..." of the output we have. @param {State} state */
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

function finished(job) {
  return { kind: "finished", agent: job.agent, jobId: job.job_id, status: job.status, error: job.error };
}

function randomId() {
  return Math.random().toString(36).slice(2, 12) + Date.now().toString(36);
}

/** Where to resume from: null before the first snapshot. @param {State} state */
export function cursor(state) {
  return state.epoch === null ? null : { epoch: state.epoch, after: state.seq };
}

// ---------------------------------------------------------------------------------------------
// Wire formats of the fallbacks.

/** Backoff before reconnect attempt n: exponential to 10 s, "equal jitter" (half fixed, half random). */
export function backoffMs(attempt, random = Math.random) {
  const base = Math.min(10000, 500 * 2 ** attempt);
  return Math.round(base / 2 + random() * (base / 2));
}

/**
 * The complete frames of a text/event-stream buffer, as messages, and the incomplete rest.
 * Comments (": keep-alive"), "id:", "event:" and "retry:" lines carry nothing we need.
 * @param {string} buffer @returns {{messages: object[], rest: string}}
 */
export function sseMessages(buffer) {
  const frames = buffer.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = frames.pop();
  const messages = [];
  for (const frame of frames) {
    const data = frame
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""));
    if (data.length) messages.push(JSON.parse(data.join("\n")));
  }
  return { messages, rest };
}

/** A long-poll reply as the same messages the push transports send. @param {object} reply */
export function pollMessages(reply) {
  const messages = [];
  if (reply.recovered) {
    messages.push({ type: "welcome", epoch: reply.epoch, seq: reply.seq, recovered: true });
  } else {
    messages.push({ type: "snapshot", epoch: reply.epoch, seq: reply.seq, recovered: false, ...reply.snapshot });
  }
  messages.push(...(reply.output ?? []), ...reply.events, ...reply.progress, ...(reply.queue ?? [])); // output before an end
  if (typeof reply.watching === "number") messages.push({ type: "presence", watching: reply.watching });
  return messages;
}

// ---------------------------------------------------------------------------------------------
// Errors and tokens.

/** A refused or failed request: `code` is the server's stable error code ("unreachable" without an answer). */
export class JobcastError extends Error {
  /** @param {string} code @param {string} message @param {number} [status] */
  constructor(code, message, status = 0) {
    super(message);
    this.name = "JobcastError";
    this.code = code;
    this.status = status;
  }
}

/** A JWT's expiry in milliseconds, read from its payload (not verified: the server does that); null if none. */
export function tokenExpiryMs(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

// The current token, and getting a new one: before it expires, and when the server refuses it.
class TokenKeeper {
  constructor(token, getToken) {
    this.token = token ?? null;
    this.getToken = getToken ?? null;
    this.timer = null;
    this.pending = null;
    this.schedule();
  }

  get canRenew() {
    return typeof this.getToken === "function";
  }

  // True if the token we hold has not expired (by our clock).
  fresh() {
    const expiresAt = this.token ? tokenExpiryMs(this.token) : null;
    return expiresAt !== null && expiresAt > Date.now() + 1000;
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : { ...extra };
  }

  // WebSockets cannot set headers: the token is offered as a subprotocol beside "jobcast".
  protocols() {
    return this.token ? ["jobcast", `jobcast.bearer.${this.token}`] : [];
  }

  // A fresh token from getToken(); one request at a time. True if we have a new one.
  renew() {
    if (!this.canRenew) return Promise.resolve(false);
    this.pending ??= (async () => {
      try {
        const token = await this.getToken();
        if (typeof token !== "string" || !token || token === this.token) return false;
        this.token = token;
        this.schedule();
        return true;
      } catch {
        return false;
      } finally {
        this.pending = null;
      }
    })();
    return this.pending;
  }

  schedule() {
    clearTimeout(this.timer);
    const expiresAt = this.token && this.canRenew ? tokenExpiryMs(this.token) : null;
    if (expiresAt === null) return;
    const left = expiresAt - Date.now();
    // a minute early, or a fifth of its life early for a short token; never a busy loop on an expired one
    const delay = Math.min(MAX_TIMER_MS, Math.max(1000, left - Math.min(RENEW_MARGIN_MS, left / 5)));
    this.timer = setTimeout(() => this.renew(), delay);
  }

  stop() {
    clearTimeout(this.timer);
  }
}

// ---------------------------------------------------------------------------------------------
// The connection: one transport at a time, resuming from the cursor.

class Connection {
  constructor({ server, projectId, tokens, getCursor, getOutputCursor, onMessage, onStatus, transports }) {
    this.server = server; // the server's base URL, a root path included, without a trailing "/"
    this.projectId = projectId;
    this.tokens = tokens;
    this.getCursor = getCursor;
    this.getOutputCursor = getOutputCursor; // long-poll: how much of each running job's output we have
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.clientId = randomId(); // a long-poll names itself, so the server counts it once among the watchers
    this.chain = transports;
    this.transportIndex = 0;
    this.failures = 0; // consecutive failures of the current transport
    this.attempt = 0; // for backoff
    this.current = null;
    this.retryTimer = null;
    this.stopped = false;
    this.renewedAfterRefusal = false; // one new token per refusal: a second refusal is final
    this.worked = new Set(); // transports that delivered here: a later failure is an outage, not a block
  }

  get transport() {
    return this.chain[this.transportIndex];
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.current?.close();
  }

  connect() {
    if (this.stopped) return;
    this.onStatus("connecting", this.transport);
    const open = { ws: () => this.openWebSocket(), sse: () => this.openEventStream(), poll: () => this.openLongPoll() };
    this.current = open[this.transport]();
  }

  // A transport that delivered at least one message is working: reset the counters.
  delivered() {
    this.worked.add(this.transport);
    this.failures = 0;
    this.attempt = 0;
    this.renewedAfterRefusal = false;
    this.onStatus(this.transport === "ws" ? "live" : "fallback", this.transport);
  }

  // The server refused the token. A new one (getToken) may cure it once; otherwise stop.
  async refused(code) {
    if (this.stopped) return;
    if (code !== "forbidden" && !this.renewedAfterRefusal && this.tokens.canRenew) {
      this.renewedAfterRefusal = true;
      // renewed before the old one expired (a socket lives on its handshake's token), or renewed now
      const renewed = (code === "token_expired" && this.tokens.fresh()) || (await this.tokens.renew());
      if (renewed) {
        this.connect(); // at once, from the cursor: nothing is lost
        return;
      }
    }
    if (this.stopped) return;
    this.stopped = true;
    this.onStatus("unauthorized", this.transport, code);
  }

  lost(everDelivered) {
    if (this.stopped) return;
    if (!everDelivered && !this.worked.has(this.transport)) {
      this.failures += 1;
      if (this.failures >= FALLBACK_AFTER_FAILURES && this.transportIndex < this.chain.length - 1) {
        this.transportIndex += 1;
        this.failures = 0;
      }
    }
    this.onStatus("offline", this.transport);
    const delay = backoffMs(this.attempt);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  projectPath() {
    return `/projects/${encodeURIComponent(this.projectId)}`;
  }

  query() {
    const at = this.getCursor();
    return at ? `?epoch=${encodeURIComponent(at.epoch)}&after=${at.after}` : "";
  }

  openWebSocket() {
    const url = `${this.server.replace(/^http/, "ws")}/ws${this.projectPath()}${this.query()}`;
    const socket = new WebSocket(url, this.tokens.protocols());
    let delivered = false;
    let closed = false;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "error") return; // e.g. store_unavailable before a 1013 close: not a working stream
      if (!delivered) {
        delivered = true;
        this.delivered();
      }
      this.onMessage(message);
    };
    const end = (event) => {
      if (closed) return;
      closed = true;
      if (event?.code === 1008) this.refused(/expired/.test(event.reason) ? "token_expired" : "forbidden");
      else this.lost(delivered);
    };
    socket.onclose = end;
    socket.onerror = () => socket.close();
    return { close: () => { closed = true; socket.close(); } };
  }

  // A refused request: true if it was the token (and refused() has taken over).
  async checkRefusal(response) {
    const body = await response.json().catch(() => ({}));
    const code = body.error?.code;
    if (AUTH_CODES.has(code)) {
      this.refused(code);
      return true;
    }
    return false;
  }

  openEventStream() {
    const controller = new AbortController();
    let delivered = false;
    let closed = false;
    const read = async () => {
      const url = `${this.server}/api${this.projectPath()}/events/stream${this.query()}`;
      const response = await fetch(url, {
        headers: this.tokens.headers({ Accept: "text/event-stream" }), signal: controller.signal, cache: "no-store",
      });
      if (!response.ok) {
        if (await this.checkRefusal(response)) closed = true;
        throw new Error(`the event stream answered ${response.status}`);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the event stream ended");
        const parsed = sseMessages(buffer + value);
        buffer = parsed.rest;
        for (const message of parsed.messages) {
          if (message.type === "error") throw new Error(message.message); // the server cannot serve the stream now
          if (!delivered) {
            delivered = true;
            this.delivered();
          }
          this.onMessage(message);
        }
      }
    };
    // We reconnect ourselves, so that backoff, the cursor and the transport chain stay in one place.
    read().catch(() => {
      if (closed) return;
      closed = true;
      this.lost(delivered);
    });
    return { close: () => { closed = true; controller.abort(); } };
  }

  openLongPoll() {
    const controller = new AbortController();
    let closed = false;
    let delivered = false;
    const loop = async () => {
      while (!closed) {
        const at = this.getCursor();
        const params = new URLSearchParams({ wait: "25", client: this.clientId });
        if (at) {
          params.set("epoch", at.epoch);
          params.set("after", String(at.after));
        }
        const output = this.getOutputCursor();
        if (output) params.set("output", output);
        const response = await fetch(`${this.server}/api${this.projectPath()}/events?${params}`, {
          headers: this.tokens.headers(), signal: controller.signal, cache: "no-store",
        });
        if (!response.ok) {
          if (await this.checkRefusal(response)) closed = true;
          throw new Error(`long-poll answered ${response.status}`);
        }
        const reply = await response.json();
        if (!delivered) {
          delivered = true;
          this.delivered();
        }
        for (const message of pollMessages(reply)) this.onMessage(message);
      }
    };
    loop().catch(() => {
      if (closed) return;
      closed = true;
      this.lost(delivered);
    });
    return { close: () => { closed = true; controller.abort(); } };
  }
}

// ---------------------------------------------------------------------------------------------
// The public face: connect().

const EVENTS = ["job", "progress", "output", "queue", "presence", "snapshot", "status", "finished", "change"];

/**
 * Follow one project live. Returns at once; the connection opens in the background.
 * @param {{url: string, project: string, token?: string|null, getToken?: () => Promise<string>|string,
 *   transports?: Array<"ws"|"sse"|"poll">}} options
 * @returns {Project}
 */
export function connect(options) {
  return new Project(options);
}

export class Project {
  constructor({ url, project, token = null, getToken = null, transports = TRANSPORTS }) {
    if (!url) throw new TypeError("connect() needs the jobcast server's url, like https://jobs.example.com");
    if (!project) throw new TypeError("connect() needs a project id");
    const server = new URL(url, globalThis.location?.href);
    if (!/^https?:$/.test(server.protocol)) throw new TypeError(`the url must be http(s), not ${server.protocol}`);
    const chain = transports.filter((name) => TRANSPORTS.includes(name));
    if (!chain.length) throw new TypeError(`transports are some of ${TRANSPORTS.join(", ")}`);
    /** The server's base URL: origin and root path, without a trailing "/". */
    this.url = (server.origin + server.pathname).replace(/\/+$/, "");
    this.project = project;
    /** @type {State} */
    this.state = initialState(project);
    /** @type {Status} */
    this.status = "connecting";
    this.transport = chain[0];
    this.handlers = new Map(EVENTS.map((name) => [name, new Set()]));
    this.tokens = new TokenKeeper(token, getToken);
    this.connection = new Connection({
      server: this.url,
      projectId: project,
      tokens: this.tokens,
      getCursor: () => cursor(this.state),
      getOutputCursor: () => outputCursor(this.state),
      onMessage: (message) => this.receive(message),
      onStatus: (status, transport, code) => this.setStatus(status, transport, code),
      transports: chain,
    });
    queueMicrotask(() => this.connection.start()); // after the caller's on(...) calls: no event is missed
  }

  /**
   * Call `handler` on each event of `name`; returns a function that removes it.
   * "job", "progress", "output", "queue", "presence" and "snapshot" get the server's message (once it
   * changed the state; "presence" is {type, project_id, watching}); "finished" gets {agent, jobId, status,
   * error} once per job that ended while we watched; "status" gets {status, transport, code}; "change"
   * gets the new state after any of them.
   * @param {"job"|"progress"|"output"|"queue"|"presence"|"snapshot"|"status"|"finished"|"change"} name
   * @param {(payload: any, project: Project) => void} handler
   */
  on(name, handler) {
    const handlers = this.handlers.get(name);
    if (!handlers) throw new TypeError(`unknown event ${JSON.stringify(name)}; events are ${EVENTS.join(", ")}`);
    handlers.add(handler);
    return () => handlers.delete(handler);
  }

  /**
   * Start `agent`'s job (or join the one already queued or running).
   * @param {string} agent @param {{priority?: "high"|"normal"|"low", if_active?: "attach"|"queue"|"replace"}} [options]
   * @returns {Promise<{agent: string, job: Job, deduplicated: boolean}>}
   */
  refresh(agent, options = {}) {
    const body = Object.keys(options).length ? JSON.stringify(options) : undefined;
    return this.post(agent, "refresh", body);
  }

  /** Cancel `agent`'s queued or running job. @param {string} agent @returns {Promise<object>} */
  cancel(agent) {
    return this.post(agent, "cancel");
  }

  /** Stop following: no more events, no reconnects, no token renewals. */
  close() {
    this.connection.stop();
    this.tokens.stop();
    this.setStatus("closed", this.transport);
  }

  /** The token in use (renewed by getToken). */
  get token() {
    return this.tokens.token;
  }

  async post(agent, action, body) {
    const path = `/api/projects/${encodeURIComponent(this.project)}/agents/${encodeURIComponent(agent)}/${action}`;
    let response = await this.send(path, body);
    if (response.status === 401 && (await this.tokens.renew())) response = await this.send(path, body);
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const error = answer?.error;
      throw new JobcastError(error?.code ?? "http_error", error?.message ?? `the server answered ${response.status}`, response.status);
    }
    return answer;
  }

  async send(path, body) {
    const headers = this.tokens.headers(body ? { "Content-Type": "application/json" } : {});
    try {
      return await fetch(this.url + path, { method: "POST", headers, body });
    } catch (error) {
      throw new JobcastError("unreachable", `could not reach the server (${error.message})`);
    }
  }

  receive(message) {
    const { state: next, effects } = apply(this.state, message);
    if (next === this.state && !effects.length) return;
    this.state = next;
    if (this.handlers.has(message.type)) this.emit(message.type, message);
    for (const effect of effects) this.emit("finished", effect);
    this.emit("change", next);
  }

  setStatus(status, transport, code = null) {
    if (this.status === "closed") return;
    this.status = status;
    this.transport = transport;
    this.emit("status", { status, transport, code });
  }

  emit(name, payload) {
    for (const handler of this.handlers.get(name)) {
      try {
        handler(payload, this);
      } catch (error) {
        setTimeout(() => { throw error; }); // a handler's bug is reported, and never breaks the connection
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Many projects over one socket: connectMany().

const MANY_EVENTS = ["job", "progress", "queue", "presence", "snapshot", "finished", "change", "error", "status"];
const POLL_EVERY_MS = 5000;
const RESUBSCRIBE_MS = 500;

/**
 * Follow many projects over one WebSocket (`/ws`): a home page, a list of jobs. Each project keeps its
 * own state and cursor, built by apply() as connect() builds it, and resumes from it after a reconnect.
 * Where no WebSocket gets through (twice in a row, before any opened), it reads each project's status
 * over HTTP every 5 s instead (status "fallback").
 * @param {{url: string, token?: string|null, getToken?: () => Promise<string>|string, projects?: string[]}} options
 * @returns {Projects}
 */
export function connectMany(options) {
  return new Projects(options);
}

export class Projects {
  constructor({ url, token = null, getToken = null, projects = [] }) {
    if (!url) throw new TypeError("connectMany() needs the jobcast server's url, like https://jobs.example.com");
    const server = new URL(url, globalThis.location?.href);
    if (!/^https?:$/.test(server.protocol)) throw new TypeError(`the url must be http(s), not ${server.protocol}`);
    this.url = (server.origin + server.pathname).replace(/\/+$/, "");
    /** @type {Map<string, State>} each followed project's state */
    this.states = new Map(projects.map((id) => [id, initialState(id)]));
    /** @type {Status} */
    this.status = "connecting";
    this.transport = "ws";
    this.handlers = new Map(MANY_EVENTS.map((name) => [name, new Set()]));
    this.tokens = new TokenKeeper(token, getToken);
    this.socket = null;
    this.attempt = 0;
    this.failures = 0; // sockets in a row that never opened
    this.renewedAfterRefusal = false;
    this.timer = null;
    this.stopped = false;
    queueMicrotask(() => this.open());
  }

  /**
   * Call `handler(payload, projectId)` on each event of `name`: the server's messages by type, "finished"
   * ({agent, jobId, status, error}), "change" (the project's new state), "error" ({code, message,
   * project_id}: a subscription refused, like "forbidden"), "status" ({status, transport, code}).
   * @param {"job"|"progress"|"queue"|"presence"|"snapshot"|"finished"|"change"|"error"|"status"} name
   * @param {(payload: any, projectId: string|null) => void} handler
   */
  on(name, handler) {
    const handlers = this.handlers.get(name);
    if (!handlers) throw new TypeError(`unknown event ${JSON.stringify(name)}; events are ${MANY_EVENTS.join(", ")}`);
    handlers.add(handler);
    return () => handlers.delete(handler);
  }

  /** Follow one more project (its opening snapshot arrives as "snapshot" and "change"). @param {string} projectId */
  subscribe(projectId) {
    if (this.states.has(projectId)) return;
    this.states.set(projectId, initialState(projectId));
    if (this.transport === "poll") this.pollOnce([projectId]);
    else this.sendSubscribe(projectId);
  }

  /** Stop following one project. @param {string} projectId */
  unsubscribe(projectId) {
    if (!this.states.delete(projectId)) return;
    this.send({ type: "unsubscribe", project_id: projectId });
  }

  /** A followed project's state, or undefined. @param {string} projectId @returns {State|undefined} */
  state(projectId) {
    return this.states.get(projectId);
  }

  /** Stop: no more events, reconnects or token renewals. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.tokens.stop();
    this.socket?.close();
    this.setStatus("closed");
  }

  open() {
    if (this.stopped) return;
    if (this.transport === "poll") {
      this.pollLoop();
      return;
    }
    const socket = new WebSocket(`${this.url.replace(/^http/, "ws")}/ws`, this.tokens.protocols());
    this.socket = socket;
    let opened = false;
    let ended = false;
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.failures = 0;
      this.renewedAfterRefusal = false;
      this.setStatus("live");
      for (const projectId of this.states.keys()) this.sendSubscribe(projectId);
    };
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (ended) return;
      ended = true;
      this.socket = null;
      if (event.code === 1008) this.refused(/expired/.test(event.reason) ? "token_expired" : "forbidden");
      else this.lost(opened);
    };
    socket.onerror = () => socket.close();
  }

  sendSubscribe(projectId) {
    const at = cursor(this.states.get(projectId));
    this.send({ type: "subscribe", project_id: projectId, ...(at ? { epoch: at.epoch, after: at.after } : {}) });
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  receive(message) {
    if (message.type === "error") {
      this.emit("error", message, message.project_id ?? null);
      const projectId = message.project_id;
      if (message.code === "subscription_ended" && this.states.has(projectId)) {
        setTimeout(() => this.states.has(projectId) && this.sendSubscribe(projectId), RESUBSCRIBE_MS);
      }
      return;
    }
    const state = this.states.get(message.project_id);
    if (!state) return; // pong, unsubscribed, or the tail of a project just unsubscribed
    const { state: next, effects } = apply(state, message);
    if (next === state && !effects.length) return;
    this.states.set(message.project_id, next);
    if (this.handlers.has(message.type)) this.emit(message.type, message, message.project_id);
    for (const effect of effects) this.emit("finished", effect, message.project_id);
    this.emit("change", next, message.project_id);
  }

  lost(opened) {
    if (this.stopped) return;
    if (!opened) this.failures += 1;
    if (this.failures >= FALLBACK_AFTER_FAILURES) {
      this.transport = "poll";
      this.open();
      return;
    }
    this.setStatus("offline");
    this.timer = setTimeout(() => this.open(), backoffMs(this.attempt));
    this.attempt += 1;
  }

  async refused(code) {
    if (this.stopped) return;
    if (!this.renewedAfterRefusal && this.tokens.canRenew) {
      this.renewedAfterRefusal = true;
      if ((code === "token_expired" && this.tokens.fresh()) || (await this.tokens.renew())) {
        if (this.transport !== "poll") this.open(); // a poll loop carries on with the new token
        return;
      }
    }
    this.stopped = true;
    this.setStatus("unauthorized", code);
  }

  async pollLoop() {
    while (!this.stopped) {
      const ok = await this.pollOnce([...this.states.keys()]);
      if (this.stopped) return;
      this.setStatus(ok ? "fallback" : "offline");
      await new Promise((resolve) => { this.timer = setTimeout(resolve, POLL_EVERY_MS); });
    }
  }

  // Each project's status over HTTP, applied as a snapshot. False if the server could not be reached.
  async pollOnce(projectIds) {
    let reached = true;
    await Promise.all(projectIds.map(async (projectId) => {
      let response;
      try {
        response = await fetch(`${this.url}/api/projects/${encodeURIComponent(projectId)}`, {
          headers: this.tokens.headers(), cache: "no-store",
        });
      } catch {
        reached = false;
        return;
      }
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        const code = body?.error?.code ?? "http_error";
        if (code === "forbidden") this.emit("error", { type: "error", code, message: body.error.message, project_id: projectId }, projectId);
        else if (AUTH_CODES.has(code)) await this.refused(code);
        return;
      }
      this.receive({ type: "snapshot", recovered: false, ...body });
      if (typeof body.watching === "number") this.receive({ type: "presence", project_id: projectId, watching: body.watching });
    }));
    return reached;
  }

  setStatus(status, code = null) {
    if (this.status === "closed") return;
    this.status = status;
    this.emit("status", { status, transport: this.transport, code }, null);
  }

  emit(name, payload, projectId) {
    for (const handler of this.handlers.get(name)) {
      try {
        handler(payload, projectId);
      } catch (error) {
        setTimeout(() => { throw error; }); // a handler's bug is reported, and never breaks the connection
      }
    }
  }
}
