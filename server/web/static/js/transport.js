// One connection to a project's events: WebSocket first, then Server-Sent Events, then
// long-poll, all resuming from the same cursor. Reconnects with exponential backoff and
// jitter. While a push transport is live, it never polls.

const FALLBACK_AFTER_FAILURES = 2;
const CHAIN = ["ws", "sse", "poll"];

export function backoffMs(attempt, random = Math.random) {
  const base = Math.min(10000, 500 * 2 ** attempt);
  return Math.round(base / 2 + random() * (base / 2)); // "equal jitter": half fixed, half random
}

export class Connection {
  constructor({ projectId, getCursor, onMessage, onStatus, base = "" }) {
    this.projectId = projectId;
    this.getCursor = getCursor;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
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
    const open = { ws: () => this.openWebSocket(), sse: () => this.openEventSource(), poll: () => this.openLongPoll() };
    this.current = open[this.transport]();
  }

  // A transport that delivered at least one message was working: reset the counters.
  delivered() {
    this.worked.add(this.transport);
    this.failures = 0;
    this.attempt = 0;
    this.onStatus(this.transport === "ws" ? "live" : "fallback", this.transport);
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
    const socket = new WebSocket(`${scheme}//${location.host}${this.base}/ws/projects/${encodeURIComponent(this.projectId)}${this.query()}`);
    let delivered = false;
    let closed = false;
    socket.onmessage = (event) => {
      if (!delivered) {
        delivered = true;
        this.delivered();
      }
      this.onMessage(JSON.parse(event.data));
    };
    const end = () => {
      if (closed) return;
      closed = true;
      this.lost(delivered);
    };
    socket.onclose = end;
    socket.onerror = () => socket.close();
    return { close: () => { closed = true; socket.close(); } };
  }

  openEventSource() {
    const source = new EventSource(`${this.base}/api/projects/${encodeURIComponent(this.projectId)}/events/stream${this.query()}`);
    let delivered = false;
    let closed = false;
    const handle = (event) => {
      if (!delivered) {
        delivered = true;
        this.delivered();
      }
      this.onMessage(JSON.parse(event.data));
    };
    for (const type of ["snapshot", "welcome", "job", "progress"]) source.addEventListener(type, handle);
    // EventSource would reconnect by itself with Last-Event-ID; we reconnect ourselves so
    // that backoff, the cursor and the transport chain stay in one place.
    source.onerror = () => {
      if (closed) return;
      closed = true;
      source.close();
      this.lost(delivered);
    };
    return { close: () => { closed = true; source.close(); } };
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
        const response = await fetch(`${this.base}/api/projects/${encodeURIComponent(this.projectId)}/events?${params}`, {
          signal: controller.signal,
        });
        if (!response.ok) throw new Error(`long-poll answered ${response.status}`);
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

// A long-poll reply as the same messages the push transports send.
export function pollMessages(reply) {
  const messages = [];
  if (reply.recovered) {
    messages.push({ type: "welcome", epoch: reply.epoch, seq: reply.seq, recovered: true });
  } else {
    messages.push({ type: "snapshot", epoch: reply.epoch, seq: reply.seq, recovered: false, ...reply.snapshot });
  }
  messages.push(...reply.events, ...reply.progress);
  return messages;
}
