// Types of jobcast.js, the browser client of a jobcast server. Served at /jobcast.d.ts beside it.
// See docs/browser.md and docs/protocol.md.

export type JobStatus = "queued" | "running" | "retrying" | "completed" | "failed" | "cancelled" | "timed_out";
export type Status = "connecting" | "live" | "fallback" | "offline" | "unauthorized" | "closed";
export type TransportName = "ws" | "sse" | "poll";

export interface JobError {
  code: string;
  message: string;
}

export interface Job {
  job_id: string;
  project_id: string;
  agent: string;
  status: JobStatus;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  elapsed_s: number | null;
  progress: { percent: number | null; message: string | null };
  cancel_requested: boolean;
  result: unknown;
  error: JobError | null;
  priority?: "high" | "normal" | "low";
  started_by?: string | null;
  attempt?: number;
  max_attempts?: number;
  retry_at?: string | null;
  eta_s?: number | null;
  overdue?: boolean;
  output?: string | null;
  queue?: QueuePlace | null;
  [key: string]: unknown;
}

export interface AgentState {
  job: Job | null;
  last_result: unknown;
  last_result_at: string | null;
}

export interface QueuePlace {
  position: number | null;
  waiting_for: string;
  detail: string | null;
}

export interface State {
  projectId: string;
  epoch: string | null;
  seq: number;
  agents: Record<string, AgentState>;
  progress: Record<string, { percent: number | null; message: string | null; elapsed_s: number; at: number; eta_s: number | null; overdue: boolean }>;
  queue: Record<string, QueuePlace>;
  output: Record<string, { attempt: number; text: string }>;
  clockOffsetMs: number;
  /** how many clients watch the project (presence); null until the server said */
  watching: number | null;
}

export interface SnapshotMessage {
  type: "snapshot";
  epoch: string;
  seq: number;
  recovered: boolean;
  project_id: string;
  agents: Record<string, AgentState>;
  server_time: string;
}

export interface JobMessage {
  type: "job";
  epoch: string;
  seq: number;
  project_id: string;
  agent: string;
  job: Job;
}

export interface ProgressMessage {
  type: "progress";
  project_id: string;
  agent: string;
  job_id: string;
  seq: number;
  elapsed_s: number;
  percent: number | null;
  message: string | null;
  eta_s?: number | null;
  overdue?: boolean;
}

export interface OutputMessage {
  type: "output";
  project_id: string;
  agent: string;
  job_id: string;
  attempt: number;
  offset: number;
  text: string;
}

export interface QueueMessage extends QueuePlace {
  type: "queue";
  project_id: string;
  agent: string;
  job_id: string;
}

export interface PresenceMessage {
  type: "presence";
  project_id: string;
  /** clients watching the project: every transport, every process */
  watching: number;
}

export interface SubscriptionError {
  type: "error";
  /** forbidden, invalid_project_id, too_many_subscriptions, store_unavailable, subscription_ended, ... */
  code: string;
  message: string;
  project_id?: string;
}

export interface Finished {
  kind: "finished";
  agent: string;
  jobId: string;
  status: JobStatus;
  error: JobError | null;
}

export interface StatusChange {
  status: Status;
  transport: TransportName;
  /** why the token was refused, with status "unauthorized": auth_required, invalid_token, token_expired, forbidden */
  code: string | null;
}

export interface Events {
  job: JobMessage;
  progress: ProgressMessage;
  output: OutputMessage;
  queue: QueueMessage;
  presence: PresenceMessage;
  snapshot: SnapshotMessage;
  status: StatusChange;
  finished: Finished;
  change: State;
}

export interface ConnectOptions {
  /** the jobcast server's URL, with its root path if it has one: "https://jobs.example.com" */
  url: string;
  /** the project to follow */
  project: string;
  /** a JWT your backend minted; omit on a server that runs open */
  token?: string | null;
  /** returns a fresh token: called a minute before the current one expires, and after the server refuses it */
  getToken?: () => string | Promise<string>;
  /** the transports to try, in order (default all three) */
  transports?: TransportName[];
}

export interface RefreshOptions {
  priority?: "high" | "normal" | "low";
  if_active?: "attach" | "queue" | "replace";
}

export interface Started {
  agent: string;
  job: Job;
  deduplicated: boolean;
}

export class JobcastError extends Error {
  /** the server's stable error code, or "unreachable" when no answer came */
  code: string;
  /** the HTTP status, 0 without an answer */
  status: number;
  constructor(code: string, message: string, status?: number);
}

export class Project {
  readonly url: string;
  readonly project: string;
  /** each agent's current job and last result, rebuilt from snapshots and events */
  readonly state: State;
  readonly status: Status;
  readonly transport: TransportName;
  readonly token: string | null;
  constructor(options: ConnectOptions);
  /** call handler on each event of that name; returns a function that removes it */
  on<K extends keyof Events>(name: K, handler: (payload: Events[K], project: Project) => void): () => void;
  /** start the agent's job, or join the one already queued or running */
  refresh(agent: string, options?: RefreshOptions): Promise<Started>;
  /** cancel the agent's queued or running job */
  cancel(agent: string): Promise<{ job: Job }>;
  /** stop following: no more events, reconnects or token renewals */
  close(): void;
}

export function connect(options: ConnectOptions): Project;

export interface ManyEvents {
  job: JobMessage;
  progress: ProgressMessage;
  queue: QueueMessage;
  presence: PresenceMessage;
  snapshot: SnapshotMessage;
  finished: Finished;
  change: State;
  error: SubscriptionError;
  status: StatusChange;
}

export interface ConnectManyOptions {
  /** the jobcast server's URL, with its root path if it has one */
  url: string;
  /** a JWT your backend minted; omit on a server that runs open */
  token?: string | null;
  /** returns a fresh token: called before the current one expires, and after the server refuses it */
  getToken?: () => string | Promise<string>;
  /** the projects to follow from the start */
  projects?: string[];
}

/** Many projects over one WebSocket (/ws), each with its own state and cursor. */
export class Projects {
  readonly url: string;
  readonly status: Status;
  /** "ws", or "poll" where no WebSocket got through (each project's status every 5 s) */
  readonly transport: "ws" | "poll";
  constructor(options: ConnectManyOptions);
  on<K extends keyof ManyEvents>(name: K, handler: (payload: ManyEvents[K], projectId: string | null) => void): () => void;
  subscribe(projectId: string): void;
  unsubscribe(projectId: string): void;
  state(projectId: string): State | undefined;
  close(): void;
}

export function connectMany(options: ConnectManyOptions): Projects;

export const FINAL: ReadonlySet<JobStatus>;
export const ACTIVE: ReadonlySet<JobStatus>;
export const AUTH_CODES: ReadonlySet<string>;
export function initialState(projectId: string): State;
export function apply(state: State, message: { type: string; [key: string]: unknown }, receivedAtMs?: number): { state: State; effects: Finished[] };
export function cursor(state: State): { epoch: string; after: number } | null;
export function outputCursor(state: State): string;
export function appendOutput(have: { attempt: number; text: string } | undefined, message: { attempt: number; offset: number; text: string }): { attempt: number; text: string };
export function backoffMs(attempt: number, random?: () => number): number;
export function sseMessages(buffer: string): { messages: unknown[]; rest: string };
export function pollMessages(reply: unknown): unknown[];
export function tokenExpiryMs(token: string): number | null;
