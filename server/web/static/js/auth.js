// The page's access token. It arrives in the URL fragment (#token=...), which browsers
// never send to the server, is kept in this tab's sessionStorage, and is removed from
// the address bar at once so it is not bookmarked, shared or left in the history.
//
// jobcast.js sends it with every request and socket; the home page's own fetches use
// authHeaders().

export { AUTH_CODES } from "../../jobcast.js";

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


export function authMessage(code) {
  if (code === "token_expired") return "Your access token has expired: open the page with a new #token=… link.";
  if (code === "forbidden") return "Your access token does not cover this project.";
  return "This server needs an access token: open the page with a #token=… link.";
}

adoptFragmentToken();
