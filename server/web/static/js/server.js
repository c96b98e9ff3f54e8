// What the home page and the Jobs page share about the server: where it is, reading its JSON, and how
// a connectMany() status reads in the header.

import { authHeaders } from "./auth.js";

// the server's base URL, behind a proxy's --root-path too: this module is at <base>/static/js/
export const BASE = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

// Every failure ends as an Error whose message the page can show: no server, an error answer, a body that is
// not JSON. An error answer's message is its stable code.
export async function getJson(path) {
  let response;
  try {
    response = await fetch(BASE + path, { headers: authHeaders(), cache: "no-store" });
  } catch (error) {
    throw new Error(`cannot reach the server (${error.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.code ?? `the server answered ${response.status}`);
  return body;
}

export const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  fallback: "Live over HTTP polling",
  offline: "Offline, reconnecting…",
  unauthorized: "Not authorised",
  closed: "Closed",
};
