// The page's access token. It arrives in the URL fragment (#token=...), which browsers
// never send to the server, is kept in this tab's sessionStorage, and is removed from
// the address bar at once so it is not bookmarked, shared or left in the history.
//
// HTTP calls send it as "Authorization: Bearer"; WebSockets cannot set headers, so the
// page offers it as the subprotocol "jobcast.bearer.<token>" beside "jobcast", and the
// server answers with "jobcast" alone.

const KEY = "jobcast.token";

export function tokenFromFragment(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  return params.get("token") || null;
}

export function adoptFragmentToken() {
  const token = tokenFromFragment(location.hash);
  if (!token) return;
  sessionStorage.setItem(KEY, token);
  history.replaceState(history.state, "", location.pathname + location.search);
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function authHeaders(extra = {}) {
  const current = token();
  return current ? { ...extra, Authorization: `Bearer ${current}` } : { ...extra };
}

export function webSocketProtocols() {
  const current = token();
  return current ? ["jobcast", `jobcast.bearer.${current}`] : [];
}

// The codes of refusals no reconnect can cure: a new token is needed.
export const AUTH_CODES = new Set(["auth_required", "invalid_token", "token_expired", "forbidden"]);

export function authMessage(code) {
  if (code === "token_expired") return "Your access token has expired: open the page with a new #token=… link.";
  if (code === "forbidden") return "Your access token does not cover this project.";
  return "This server needs an access token: open the page with a #token=… link.";
}

adoptFragmentToken();
