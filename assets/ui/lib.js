// Small helpers: DOM building (text only, never HTML strings), formatting, the API client.

/** Builds an element. `attrs` keys: class, on<event>, data-*, aria-*, anything else as attribute. */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function when(unixSecs) {
  if (unixSecs === undefined || unixSecs === null) return "—";
  return new Date(unixSecs * 1000).toLocaleString();
}

export function whenIso(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function pct(x) {
  return x === undefined || x === null ? "—" : `${(x * 100).toFixed(1)} %`;
}

export function bytes(n) {
  if (n === undefined || n === null) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function duration(secs) {
  if (secs === undefined || secs === null) return "—";
  const neg = secs < 0; secs = Math.abs(secs);
  const d = Math.floor(secs / 86400), hrs = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
  const s = d ? `${d} d ${hrs} h` : hrs ? `${hrs} h ${m} min` : m ? `${m} min` : `${Math.floor(secs)} s`;
  return neg ? `expired ${s} ago` : s;
}

/** An API failure: status, the problem document, and the response headers. */
export class ApiError extends Error {
  constructor(status, problem, headers) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.headers = headers;
  }
  get type() { return (this.problem.type || "").split("/").pop(); }
}

/** The browser session: its id lives in memory only; the tokens are HttpOnly cookies. */
export const session = { id: null, user: null, onExpired: () => {} };

async function refresh() {
  if (!session.id) return false;
  const r = await fetch(`/api/auth/refresh/${encodeURIComponent(session.id)}`, {
    method: "POST", credentials: "same-origin", headers: { accept: "application/json" },
  });
  if (!r.ok) return false;
  const body = await r.json();
  session.user = body.user;
  return true;
}

/** Calls the API; on 401 refreshes once and retries, else returns to sign-in. */
export async function api(method, path, body, { retry = true, raw = false } = {}) {
  const headers = { accept: "application/json" };
  if (session.id) headers["x-session-id"] = session.id;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && session.id && retry) {
    if (await refresh()) return api(method, path, body, { retry: false, raw });
    session.id = null; session.user = null;
    session.onExpired();
  }
  if (!r.ok) {
    let problem = {};
    try { problem = await r.json(); } catch { /* not JSON */ }
    throw new ApiError(r.status, problem, r.headers);
  }
  if (raw) return r;
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** A rough strength estimate (0–4) for the meter; the server's policy is what decides. */
export function strength(pw) {
  if (!pw) return 0;
  let score = 0;
  if (pw.length >= 12) score++;
  if (pw.length >= 16) score++;
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^A-Za-z0-9]/].filter((re) => re.test(pw)).length;
  if (classes >= 2) score++;
  if (classes >= 3 && pw.length >= 12) score++;
  if (/^(.)\1+$/.test(pw) || /^(password|123456|qwerty)/i.test(pw)) score = 0;
  return Math.min(score, 4);
}
