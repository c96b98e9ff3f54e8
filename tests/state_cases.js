// Cases for the dashboard's pure logic, evaluated in the page by test_dashboard.py, which reports
// each check("name", ...) as its own test. Returns every check's {name, ok, detail}.
(async () => {
  const { apply, appendOutput, cardView, cursor, initialState, elapsedText, OFFLINE_REASON, outputCursor, queueText, etaText, retryText } = await import("/static/js/state.js");
  const { backoffMs, pollMessages, tokenExpiryMs } = await import("/jobcast.js");
  const results = [];
  const check = (name, ok, detail = "") => { results.push({ name, ok: Boolean(ok), detail: String(detail) }); };

  const job = (id, status, extra = {}) => ({
    job_id: id, project_id: "p", agent: "a", status, created_at: "2026-01-01T00:00:00.000Z",
    updated_at: "2026-01-01T00:00:01.000Z", started_at: status === "queued" ? null : "2026-01-01T00:00:01.000Z",
    finished_at: ["completed", "failed", "cancelled", "timed_out"].includes(status) ? "2026-01-01T00:00:46.000Z" : null,
    elapsed_s: null, progress: { percent: null, message: null }, cancel_requested: false, result: null, error: null, ...extra,
  });
  const snapshot = (seq, agents) => ({ type: "snapshot", epoch: "e1", seq, recovered: false, agents, server_time: "2026-01-01T00:00:10.000Z" });
  const event = (seq, j) => ({ type: "job", epoch: "e1", seq, project_id: "p", agent: "a", job: j });

  let s = initialState("p");
  check("no cursor before a snapshot", cursor(s) === null);
  s = apply(s, snapshot(3, { a: { job: null, last_result: null, last_result_at: null } }), Date.parse("2026-01-01T00:00:09.000Z")).state;
  check("snapshot sets the cursor", JSON.stringify(cursor(s)) === JSON.stringify({ epoch: "e1", after: 3 }));
  check("snapshot measures the clock offset", s.clockOffsetMs === 1000, s.clockOffsetMs);
  check("an agent with no job is idle", cardView(s, "a").status === "idle" && cardView(s, "a").canRefresh);

  s = apply(s, event(4, job("j1", "queued"))).state;
  check("queued disables refresh", !cardView(s, "a").canRefresh && cardView(s, "a").canCancel);
  s = apply(s, event(5, job("j1", "running"))).state;
  const again = apply(s, event(5, job("j1", "queued")));
  check("a repeated seq is ignored", again.state === s && again.effects.length === 0);
  check("elapsed ticks from started_at and the offset",
    elapsedText(s.agents.a.job, Date.parse("2026-01-01T00:00:45.500Z"), 1000) === "Running… 45s");

  s = apply(s, { type: "progress", project_id: "p", agent: "a", job_id: "j1", elapsed_s: 2, percent: 40, message: "asking", seq: 5 }).state;
  check("progress shows on the card", cardView(s, "a").percent === 40 && cardView(s, "a").message === "asking");
  const stray = apply(s, { type: "progress", agent: "a", job_id: "other", percent: 99, message: "x", seq: 5 });
  check("progress for an unknown job is ignored", stray.state === s);

  const done = apply(s, event(6, job("j1", "completed", { result: { revenue: 1 } })));
  check("completion notifies once", done.effects.length === 1 && done.effects[0].status === "completed");
  s = done.state;
  check("completion keeps the result", cardView(s, "a").result.revenue === 1 && cardView(s, "a").canRefresh);
  check("completion drops the job's progress", s.progress.j1 === undefined);
  const late = apply(s, event(6, job("j1", "completed")));
  check("a replayed final state does not notify again", late.effects.length === 0);

  // A reconnect that ends in a snapshot: a job that finished meanwhile is announced once.
  let t = apply(initialState("p"), snapshot(2, { a: { job: job("j2", "running"), last_result: null, last_result_at: null } })).state;
  const recovered = apply(t, snapshot(4, { a: { job: job("j2", "failed", { error: { code: "interrupted", message: "lost" } }), last_result: null, last_result_at: null } }));
  check("a snapshot announces a job that ended while away", recovered.effects.length === 1 && recovered.effects[0].status === "failed");
  const same = apply(recovered.state, snapshot(4, recovered.state.agents));
  check("the same snapshot again announces nothing", same.effects.length === 0);

  // Offline: the timer stops at what was last seen, and the actions are disabled with a reason.
  const lastHeard = Date.parse("2026-01-01T00:00:20.000Z");
  const offlineView = cardView(t, "a", lastHeard + 9400, { offline: true, offlineSinceMs: lastHeard });
  check("offline, a running job reads as last seen", offlineView.elapsedText === "Last seen running 9s ago", offlineView.elapsedText);
  check("offline, nothing can be started or cancelled", !offlineView.canRefresh && !offlineView.canCancel && offlineView.disabledReason === OFFLINE_REASON);
  const idleOffline = cardView(s, "a", lastHeard, { offline: true, offlineSinceMs: lastHeard });
  check("offline, an ended job keeps its own text", idleOffline.elapsedText === "Took 45s" && !idleOffline.canRefresh);
  const backOnline = cardView(t, "a", lastHeard + 9400, { offline: false, offlineSinceMs: lastHeard });
  check("online again, the timer ticks and actions return", backOnline.elapsedText.startsWith("Running… ") && backOnline.canCancel && backOnline.disabledReason === null);

  check("backoff grows and stays jittered within bounds",
    backoffMs(0, () => 0) === 250 && backoffMs(0, () => 1) === 500 && backoffMs(10, () => 1) === 10000);
  const b64url = (text) => btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const jwtWith = (claims) => `${b64url('{"alg":"HS256"}')}.${b64url(JSON.stringify(claims))}.sig`;
  check("a token's expiry is read from its JWT payload, in milliseconds",
    tokenExpiryMs(jwtWith({ exp: 1767225600.5, sub: "alice" })) === 1767225600500);
  check("a token without exp, or not a JWT, has no expiry to renew by",
    tokenExpiryMs(jwtWith({ sub: "alice" })) === null && tokenExpiryMs("opaque") === null);
  const fromPoll = pollMessages({ epoch: "e1", seq: 7, recovered: true, events: [event(7, job("j3", "queued"))], progress: [] });
  check("a long-poll reply becomes welcome plus events", fromPoll.length === 2 && fromPoll[0].type === "welcome" && fromPoll[1].seq === 7);
  const pollSnapshot = pollMessages({ epoch: "e1", seq: 7, recovered: false, snapshot: { project_id: "p", agents: {}, server_time: "x" }, events: [], progress: [] });
  check("a long-poll snapshot becomes a snapshot message", pollSnapshot[0].type === "snapshot" && pollSnapshot[0].seq === 7);
  const pollPlaces = pollMessages({ epoch: "e1", seq: 7, recovered: true, events: [], progress: [], queue: [{ type: "queue", job_id: "j3", position: 2 }] });
  check("a long-poll reply's queue places become queue messages", pollPlaces.some((m) => m.type === "queue" && m.position === 2));

  // Waits that explain themselves: a queued job's place, in the CLI's words.
  const place = (position, waiting_for, detail) => ({ type: "queue", project_id: "p", agent: "a", job_id: "q1", position, waiting_for, detail });
  let q = apply(initialState("p"), snapshot(1, { a: { job: job("q1", "queued"), last_result: null, last_result_at: null } })).state;
  check("a queued job with no place yet waits for a worker", cardView(q, "a").message === "waiting for a worker");
  q = apply(q, place(3, "project_limit", "project limit 2 of 2")).state;
  check("a place reads as position and limit", cardView(q, "a").message === "Queued: 3rd in line, waiting for the project limit (2 of 2)", cardView(q, "a").message);
  check("a thread wait reads as a free thread", queueText({ position: 1, waiting_for: "thread", detail: "next to start" }) === "Queued: 1st in line, waiting for a free thread");
  check("ordinals past ten", queueText({ position: 12, waiting_for: "agent_limit", detail: "agent limit 1 of 1" }) === "Queued: 12th in line, waiting for the agent limit (1 of 1)");
  check("a follow-up waits for the job before it", queueText({ position: 2, waiting_for: "previous_job", detail: "x" }) === "Queued: 2nd in line, waiting for the job before it to end");
  const early = apply(initialState("p"), place(1, "user_limit", "user limit 1 of 1")).state;
  const arrived = apply(apply(early, snapshot(1, { a: { job: null, last_result: null, last_result_at: null } })).state, event(2, job("q1", "queued"))).state;
  check("a snapshot's places replace what came before it", arrived.queue.q1 === undefined);
  const withPlace = apply(arrived, place(1, "user_limit", "user limit 1 of 1")).state;
  check("a place that arrives after its job shows", cardView(withPlace, "a").message.startsWith("Queued: 1st in line"));
  const running = apply(withPlace, event(3, job("q1", "running"))).state;
  check("a running job shows no place", !String(cardView(running, "a").message ?? "").startsWith("Queued"));

  // A follow-up or a replacement is the agent's newest job: an older job's events do not take its card.
  let r = apply(initialState("p"), snapshot(1, { a: { job: job("old", "running"), last_result: null, last_result_at: null } })).state;
  r = apply(r, event(2, job("new", "queued", { created_at: "2026-01-01T00:00:05.000Z" }))).state;
  r = apply(r, event(3, job("old", "cancelled"))).state;
  check("an older job ending leaves the newer one on the card", r.agents.a.job.job_id === "new" && cursor(r).after === 3);

  // Retries and the ETA, in the CLI's words.
  const retrying = job("r1", "retrying", { attempt: 2, max_attempts: 3, retry_at: "2026-01-01T00:00:22.000Z", error: { code: "transient_error", message: "provider overloaded" } });
  check("a retry counts down on the server's clock", retryText(retrying, Date.parse("2026-01-01T00:00:10.000Z")) === "Retrying in 12 s (attempt 2 of 3): provider overloaded");
  let e = apply(initialState("p"), snapshot(1, { a: { job: retrying, last_result: null, last_result_at: null } }), Date.parse("2026-01-01T00:00:10.000Z")).state;
  check("a retrying card shows the retry and can be cancelled", cardView(e, "a", Date.parse("2026-01-01T00:00:10.000Z")).message.startsWith("Retrying in ") && cardView(e, "a").canCancel && !cardView(e, "a").canRefresh);
  check("eta reads as seconds or minutes left", etaText(40.2, false) === "about 40 s left" && etaText(200, false) === "about 3 min left");
  check("no history, no eta; overdue says so", etaText(null, false) === "" && etaText(5, true) === "taking longer than usual");
  e = apply(e, event(2, job("r1", "running"))).state;
  e = apply(e, { type: "progress", project_id: "p", agent: "a", job_id: "r1", elapsed_s: 2, percent: 40, message: "x", seq: 2, eta_s: 12, overdue: false }).state;
  check("a running card shows its eta from progress", cardView(e, "a").etaText === "about 12 s left");

  // Output is applied by offset: overlaps are trimmed, gaps ignored, a new attempt starts over.
  const piece = (offset, text, attempt = 1) => ({ type: "output", project_id: "p", agent: "a", job_id: "r1", attempt, offset, text });
  let out = appendOutput(undefined, piece(0, "hello "));
  check("output starts at offset 0", out.text === "hello ");
  out = appendOutput(out, piece(3, "lo world"));
  check("an overlapping piece is trimmed", out.text === "hello world", out.text);
  check("a piece past the end is not applied", appendOutput(out, piece(50, "x")).text === "hello world");
  check("a new attempt starts over", appendOutput(out, piece(0, "again", 2)).text === "again");
  e = apply(e, piece(0, "<b>streamed</b>")).state;
  check("a running card shows its output as text", cardView(e, "a").output === "<b>streamed</b>" && outputCursor(e) === "r1.1.15");
  e = apply(e, event(3, job("r1", "completed", { output: "<b>streamed</b> all" }))).state;
  check("an ended card shows the job's whole output", cardView(e, "a").output === "<b>streamed</b> all");
  let seen = initialState("p");
  check("watching is unknown until the server says", seen.watching === null);
  seen = apply(seen, { type: "presence", project_id: "p", watching: 3 }).state;
  check("presence sets watching", seen.watching === 3);
  const samePresence = apply(seen, { type: "presence", project_id: "p", watching: 3 });
  check("the same presence changes nothing", samePresence.state === seen);
  const polled = pollMessages({ epoch: "e1", seq: 7, recovered: true, events: [], progress: [], watching: 2 });
  check("a long-poll reply's watching is a presence message",
    polled.some((m) => m.type === "presence" && m.watching === 2), JSON.stringify(polled));

  return results;
})()
