// One connection to a project's events: WebSocket first, then Server-Sent Events, then
// long-poll, all resuming from the same cursor. Reconnects with exponential backoff and
// jitter. While a push transport is live, it never polls.
//
// The page's token (auth.js) goes with every transport: as a WebSocket subprotocol, and
// as "Authorization: Bearer" on the SSE stream and the long-poll, which is why the stream
// is read with fetch rather than EventSource (EventSource cannot send headers). A refusal
// of the token, or a WebSocket closed with 1008 when it expires, stops the connection:
// only a new token can help, so the page says so instead of retrying.

import { AUTH_CODES, authHeaders, webSocketProtocols } from "./auth.js";

const FALLBACK_AFTER_FAILURES = 2;
const CHAIN = ["ws", "sse", "poll"];

export function backoffMs(attempt, random = Math.random) {
  const base = Math.min(10000, 500 * 2 ** attempt);
  return Math.round(base / 2 + random() * (base / 2)); // "equal jitter": half fixed, half random
}

export class Connection {
  constructor({ projectId, getCursor, getOutputCursor = () => "", onMessage, onStatus, onAuthFailure = () => {}, base = "" }) {
    this.projectId = projectId;
    this.getCursor = getCursor;
    this.getOutputCursor = getOutputCursor; // long-poll: how much of each running job's output we have
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onAuthFailure = onAuthFailure;
    this.base = base;
    this.transportIndex = 0;
    this.failures = 0; // consecutive failures of the current transport
    this.attempt = 0; // for backoff
    this.current = null;
    this.stopped = false;
    this.worked = new Set(); // transports that have delivered on this page: a later failure is an outage, not a block
  }

  get transport() {
    return CHAIN[this.transportIndex];
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.current?.close();
  }

  connect() {
    if (this.stopped) return;
    this.onStatus("connecting", this.transport);
    const open = { ws: () => this.openWebSocket(), sse: () => this.openEventStream(), poll: () => this.openLongPoll() };
    this.current = open[this.transport]();
  }

  // A transport that delivered at least one message was working: reset the counters.
  delivered() {
    this.worked.add(this.transport);
    this.failures = 0;
    this.attempt = 0;
    this.onStatus(this.transport === "ws" ? "live" : "fallback", this.transport);
  }

  // The server refused the token: stop, and let the page ask for a new one.
  refused(code) {
    if (this.stopped) return;
    this.stopped = true;
    this.onStatus("unauthorized", this.transport);
    this.onAuthFailure(code);
  }

  lost(everDelivered) {
    if (this.stopped) return;
    if (!everDelivered && !this.worked.has(this.transport)) {
      this.failures += 1;
      if (this.failures >= FALLBACK_AFTER_FAILURES && this.transportIndex < CHAIN.length - 1) {
        this.transportIndex += 1;
        this.failures = 0;
      }
    }
    this.onStatus("offline", this.transport);
    const delay = backoffMs(this.attempt);
    this.attempt += 1;
    setTimeout(() => this.connect(), delay);
  }

  query() {
    const cursor = this.getCursor();
    return cursor ? `?epoch=${encodeURIComponent(cursor.epoch)}&after=${cursor.after}` : "";
  }

  openWebSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${this.base}/ws/projects/${encodeURIComponent(this.projectId)}${this.query()}`;
    const socket = new WebSocket(url, webSocketProtocols());
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

  // A refused request: true if it was the token (and the connection has stopped).
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
      const url = `${this.base}/api/projects/${encodeURIComponent(this.projectId)}/events/stream${this.query()}`;
      const response = await fetch(url, { headers: authHeaders({ Accept: "text/event-stream" }), signal: controller.signal, cache: "no-store" });
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
        const cursor = this.getCursor();
        const params = new URLSearchParams({ wait: "25" });
        if (cursor) {
          params.set("epoch", cursor.epoch);
          params.set("after", String(cursor.after));
        }
        const output = this.getOutputCursor();
        if (output) {
          params.set("output", output);
        }
        const response = await fetch(`${this.base}/api/projects/${encodeURIComponent(this.projectId)}/events?${params}`, {
          headers: authHeaders(),
          signal: controller.signal,
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

// The complete frames of a text/event-stream buffer, as messages, and the incomplete rest.
// Comments (": keep-alive"), "id:", "event:" and "retry:" lines carry nothing the page needs.
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

// A long-poll reply as the same messages the push transports send.
export function pollMessages(reply) {
  const messages = [];
  if (reply.recovered) {
    messages.push({ type: "welcome", epoch: reply.epoch, seq: reply.seq, recovered: true });
  } else {
    messages.push({ type: "snapshot", epoch: reply.epoch, seq: reply.seq, recovered: false, ...reply.snapshot });
  }
  messages.push(...(reply.output ?? []), ...reply.events, ...reply.progress, ...(reply.queue ?? [])); // output before an end
  return messages;
}
