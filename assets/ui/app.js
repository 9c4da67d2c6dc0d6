// The admin UI: routing, navigation and the pages. Talks only to the gate's own API.
import { h, when, whenIso, pct, bytes, duration, api, session, strength, ApiError } from "./lib.js";

const view = () => document.getElementById("view");

const PAGES = [
  { path: "/admin/", title: "Dashboard", admin: true, render: dashboard },
  { path: "/admin/users", title: "Users", admin: true, render: users },
  { path: "/admin/audit", title: "Audit log", admin: true, render: audit },
  { path: "/admin/vpn", title: "VPN", admin: true, render: vpn },
  { path: "/admin/tls", title: "TLS", admin: true, render: tls },
  { path: "/admin/routes", title: "Routes & limits", admin: true, render: routes },
  { path: "/admin/account", title: "My account", admin: false, render: account },
];

function go(path, replace = false) {
  if (location.pathname !== path) history[replace ? "replaceState" : "pushState"]({}, "", path);
  route();
}
session.onExpired = () => go("/admin/login", true);

function isAdmin() { return session.user && session.user.role === "admin"; }

function renderNav() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.replaceChildren();
  who.replaceChildren();
  if (!session.user) return;
  for (const p of PAGES) {
    if (p.admin && !isAdmin()) continue;
    nav.append(h("a", { href: p.path, "data-link": true, "aria-current": location.pathname === p.path ? "page" : false }, p.title));
  }
  who.append(
    h("span", {}, `${session.user.email} · ${session.user.role}`),
    h("button", { class: "secondary", type: "button", onclick: logout }, "Sign out"),
  );
}

async function logout() {
  try { await api("POST", `/api/auth/logout/${encodeURIComponent(session.id)}`); } catch { /* already gone */ }
  session.id = null; session.user = null;
  go("/admin/login");
}

function page(title, ...content) {
  document.title = `${title} · miauflix-gate`;
  const main = view();
  main.replaceChildren(h("h1", {}, title), ...content);
  main.focus();
}

function errorBox() { return h("p", { class: "error", role: "alert", "aria-live": "assertive" }); }

function showError(box, e) {
  box.textContent = e instanceof ApiError ? e.message : `Something went wrong: ${e.message || e}`;
}

async function route() {
  const path = location.pathname.replace(/\/+$/, "") || "/admin";
  const norm = path === "/admin" ? "/admin/" : path;
  if (norm === "/admin/setup") return setup();
  if (norm === "/admin/login") return login();
  if (!session.user) return go("/admin/login", true);
  renderNav();
  let p = PAGES.find((x) => x.path === norm);
  if (!p) return page("Not found", h("p", {}, "There is no such page."), h("a", { href: "/admin/", "data-link": true }, "Back"));
  if (p.admin && !isAdmin()) {
    if (norm === "/admin/") return go("/admin/account", true);
    return page("Not allowed", h("p", { class: "notice" }, "This page is for administrators."));
  }
  try {
    await p.render();
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      page("Not allowed", h("p", { class: "notice" }, "Your role does not allow this page."));
    } else if (!(e instanceof ApiError && e.status === 401)) {
      page(p.title, h("p", { class: "error" }, `Could not load this page: ${e.message}`));
    }
  }
}

// ---------------------------------------------------------------- setup and sign-in

function passwordField(name, label, autocomplete) {
  const hintId = `${name}-hint`;
  const input = h("input", { type: "password", name, required: true, autocomplete, minlength: 8, maxlength: 256, "aria-describedby": hintId });
  const meter = h("meter", { min: 0, max: 4, low: 2, high: 3, optimum: 4, value: 0, "aria-label": `${label} strength` });
  const hint = h("span", { class: "muted", id: hintId }, "At least 12 characters; not a common password and not your email address.");
  input.addEventListener("input", () => meter.setAttribute("value", strength(input.value)));
  return { input, el: h("div", { class: "field" }, h("label", {}, label, input), meter, hint) };
}

async function setup() {
  renderNav();
  const status = await api("GET", "/api/auth/setup");
  if (!status.required) return go("/admin/login", true);
  const err = errorBox();
  const token = h("input", { name: "token", required: true, autocomplete: "off", spellcheck: "false", "aria-describedby": "token-hint" });
  const email = h("input", { name: "email", type: "email", required: true, autocomplete: "username" });
  const pw = passwordField("password", "Password", "new-password");
  const submit = h("button", { type: "submit" }, "Create the admin account");
  const form = h("form", {}, h("label", {}, "Setup token", token),
    h("span", { class: "muted", id: "token-hint" }, "It is in the file setup-token in the data directory; the gate's log names that file."),
    h("label", {}, "Email", email), pw.el, err, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true; err.textContent = "";
    try {
      await api("POST", "/api/auth/setup", { email: email.value, password: pw.input.value, setupToken: token.value.trim() });
      const r = await api("POST", "/api/auth/login", { email: email.value, password: pw.input.value });
      session.id = r.session; session.user = r.user;
      renderNav();
      page("Next steps", h("div", { class: "panel" },
        h("p", {}, "Your admin account is ready."),
        h("ol", { class: "steps" },
          h("li", {}, "TLS: set tls.mode = \"acme\" with your domain for a trusted certificate (see ", h("a", { href: "/admin/tls", "data-link": true }, "TLS"), ")."),
          h("li", {}, "VPN: configure [vpn] in the config file, then store the WireGuard private key on the VPN page or with miauflix-gate vpn set-key."),
          h("li", {}, "Routes: add [[routes]] for the Miauflix API and the torrent engine (see ", h("a", { href: "/admin/routes", "data-link": true }, "Routes & limits"), ")."),
          h("li", {}, "Users: invite the household from ", h("a", { href: "/admin/users", "data-link": true }, "Users"), ".")),
        h("a", { href: "/admin/", "data-link": true }, "Go to the dashboard")));
    } catch (e) { showError(err, e); submit.disabled = false; }
  });
  page("First-run setup", h("div", { class: "panel narrow" }, form));
}

let countdownTimer = null;

async function login() {
  renderNav();
  try {
    const status = await api("GET", "/api/auth/setup");
    if (status.required) return go("/admin/setup", true);
  } catch { /* show the form anyway */ }
  const err = errorBox();
  const email = h("input", { name: "email", type: "email", required: true, autocomplete: "username" });
  const pw = h("input", { name: "password", type: "password", required: true, autocomplete: "current-password" });
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h("form", {}, h("label", {}, "Email", email), h("label", {}, "Password", pw), err, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = ""; submit.disabled = true;
    try {
      const r = await api("POST", "/api/auth/login", { email: email.value, password: pw.value });
      session.id = r.session; session.user = r.user;
      go(r.user.role === "admin" ? "/admin/" : "/admin/account");
    } catch (e) {
      if (e instanceof ApiError && e.status === 429) {
        const secs = parseInt(e.headers.get("retry-after") || "60", 10);
        const what = e.type === "account-locked"
          ? "Too many failed sign-ins for this account. It is locked"
          : "Too many requests from this address. Please wait";
        let left = secs;
        const tick = () => {
          err.textContent = `${what}: try again in ${left} s.`;
          if (left-- <= 0) { clearInterval(countdownTimer); err.textContent = ""; submit.disabled = false; }
        };
        clearInterval(countdownTimer);
        tick();
        countdownTimer = setInterval(tick, 1000);
        return;
      }
      err.textContent = e instanceof ApiError && e.status === 401 ? "Wrong email or password." : e.message;
      submit.disabled = false;
    }
  });
  page("Sign in", h("div", { class: "panel narrow" }, form));
  email.focus();
}

// ---------------------------------------------------------------- dashboard

function card(label, value, sub, cls) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: `value ${cls || ""}` }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function barChart(points, a, b, label) {
  const W = 600, H = 140, n = points.length || 1, bw = W / n;
  const max = Math.max(1, ...points.map((p) => p[a] + p[b]));
  const svg = h("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
  points.forEach((p, i) => {
    const ha = (p[a] / max) * (H - 10), hb = (p[b] / max) * (H - 10);
    svg.append(h("svg:rect", { class: "bar-a", x: i * bw + 1, y: H - ha - hb, width: Math.max(bw - 2, 1), height: ha }));
    svg.append(h("svg:rect", { class: "bar-b", x: i * bw + 1, y: H - hb, width: Math.max(bw - 2, 1), height: hb }));
  });
  svg.append(h("svg:line", { class: "axis", x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }));
  return svg;
}

async function dashboard() {
  const [s, t, events] = await Promise.all([
    api("GET", "/api/system/status"),
    api("GET", "/api/tls").catch(() => null),
    api("GET", "/api/audit?limit=8"),
  ]);
  const chain = s.auditChain;
  const chainText = chain.lastVerifiedOk === undefined || chain.lastVerifiedOk === null ? "not verified yet"
    : chain.lastVerifiedOk ? "verified" : `broken at ${chain.firstBad}`;
  const vpnCls = s.vpn === "up" ? "ok" : s.vpn === "disabled" ? "" : s.vpn === "degraded" ? "warn" : "bad";
  const hasCert = t && t.expiresInSecs !== undefined && t.expiresInSecs !== null;
  const expiry = hasCert ? duration(t.expiresInSecs) : t && t.mode === "off" ? "TLS off" : "—";
  const expiryCls = !hasCert ? "" : t.expiresInSecs < 7 * 86400 ? "bad" : "ok";
  const grid = h("div", { class: "grid" },
    card("VPN", s.vpn, s.vpn === "disabled" ? "vpn.enabled is false" : "WireGuard tunnel", vpnCls),
    card("Certificate", expiry, hasCert ? `${t.source} · ${(t.names || []).join(", ")}` : t ? t.source : "", expiryCls),
    card("Sign-in success (1 h)", pct(s.loginSuccessRate1h), `${s.loginsSucceeded1h} ok · ${s.loginsFailed1h} failed`),
    card("Lockouts (1 h)", String(s.lockouts1h), "", s.lockouts1h ? "warn" : ""),
    card("Requests (5 min)", `${s.requestsPerSec5m.toFixed(2)}/s`, `${s.requests5m} requests`),
    card("Error rate (5 min)", pct(s.errorRate5m), "5xx answers", s.errorRate5m > 0.01 ? "bad" : ""),
    card("p95 latency (5 min)", s.p95LatencyMs5m == null ? "—" : `≤ ${s.p95LatencyMs5m} ms`),
    card("Store", bytes(s.storeBytes), `${s.activeSessions} active sessions`),
    card("Audit chain", chainText, `${chain.length} records`, chain.lastVerifiedOk === false ? "bad" : "ok"),
    card("Uptime", duration(s.uptimeSecs), `version ${s.version}`),
  );
  const series = s.series || [];
  const charts = h("div", { class: "grid charts" },
    h("div", { class: "panel" }, h("h2", {}, "Requests per minute (last hour)"),
      barChart(series, "requests", "errors", "Requests and errors per minute"),
      h("div", { class: "legend" }, h("span", { class: "a" }, "requests"), h("span", { class: "b" }, "5xx errors"))),
    h("div", { class: "panel" }, h("h2", {}, "Sign-ins per minute (last hour)"),
      barChart(series, "loginsSucceeded", "loginsFailed", "Sign-in results per minute"),
      h("div", { class: "legend" }, h("span", { class: "a" }, "succeeded"), h("span", { class: "b" }, "failed"))));
  page("Dashboard", grid, charts, h("div", { class: "panel" }, h("h2", {}, "Latest security events"), eventsTable(events.events, false)));
}

// ---------------------------------------------------------------- users

async function users() {
  const err = errorBox();
  const list = await api("GET", "/api/users");
  const search = h("input", { type: "search", placeholder: "Search by email or name", "aria-label": "Search users" });
  const tbody = h("tbody");
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    tbody.replaceChildren(...list.filter((u) => !q || u.email.includes(q) || u.displayName.toLowerCase().includes(q)).map((u) => userRow(u, err)));
  };
  search.addEventListener("input", draw);
  draw();
  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "off" });
  const pw = h("input", { type: "password", name: "password", required: true, autocomplete: "new-password" });
  const role = h("select", { name: "role" }, h("option", { value: "user" }, "user"), h("option", { value: "guest" }, "guest"), h("option", { value: "admin" }, "admin"));
  const create = h("form", { class: "row" }, h("label", {}, "Email", email), h("label", {}, "Initial password", pw),
    h("label", {}, "Role", role), h("button", { type: "submit" }, "Create user"));
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = "";
    try {
      await api("POST", "/api/users", { email: email.value, password: pw.value, role: role.value });
      route();
    } catch (e) { showError(err, e); }
  });
  page("Users", h("div", { class: "panel" }, h("h2", {}, "New user"), create), err,
    h("div", { class: "panel" }, search, h("div", { class: "table-wrap" },
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Email"), h("th", {}, "Name"), h("th", {}, "Role"), h("th", {}, "State"), h("th", {}, "Actions"))), tbody))),
    h("div", { id: "sessions-panel" }));
}

function userRow(u, err) {
  const act = (label, fn, cls = "secondary") => h("button", { type: "button", class: cls, onclick: async () => {
    err.textContent = "";
    try { if ((await fn()) !== false) route(); } catch (e) { showError(err, e); }
  } }, label);
  const roleSel = h("select", { "aria-label": `Role of ${u.email}` },
    ...["admin", "user", "guest"].map((r) => h("option", { value: r, selected: r === u.role }, r)));
  roleSel.addEventListener("change", async () => {
    err.textContent = "";
    try { await api("PATCH", `/api/users/${u.id}`, { role: roleSel.value }); route(); } catch (e) { showError(err, e); }
  });
  return h("tr", { "data-email": u.email },
    h("td", {}, u.email), h("td", {}, u.displayName), h("td", {}, roleSel),
    h("td", {}, u.disabled ? h("span", { class: "chip bad" }, "disabled") : h("span", { class: "chip" }, "active")),
    h("td", { class: "actions" },
      act(u.disabled ? "Enable" : "Disable", () => api("PATCH", `/api/users/${u.id}`, { disabled: !u.disabled })),
      act("Unlock", () => api("POST", `/api/users/${u.id}/unlock`)),
      act("Reset password", async () => {
        const pw = prompt(`New password for ${u.email} (at least 12 characters):`);
        if (!pw) return false;
        await api("POST", `/api/users/${u.id}/reset-password`, { newPassword: pw });
      }),
      act("Sessions", async () => { await showSessions(u, err); return false; }),
      act("Delete", async () => {
        if (!confirm(`Delete ${u.email}? Their sessions end and this cannot be undone.`)) return false;
        await api("DELETE", `/api/users/${u.id}`);
      }, "danger")));
}

async function showSessions(u, err) {
  const list = await api("GET", `/api/users/${u.id}/sessions`);
  const panel = document.getElementById("sessions-panel");
  const revokeAll = h("button", { type: "button", class: "danger", onclick: async () => {
    try { await api("DELETE", `/api/users/${u.id}/sessions`); await showSessions(u, err); } catch (e) { showError(err, e); }
  } }, "Revoke all");
  panel.replaceChildren(h("div", { class: "panel" }, h("h2", {}, `Sessions of ${u.email}`),
    list.length ? sessionsTable(list, null) : h("p", { class: "muted" }, "No live sessions."), list.length ? revokeAll : null));
}

function sessionsTable(list, onRevoke) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Kind"), h("th", {}, "Signed in"), h("th", {}, "Last used"), h("th", {}, "From"), h("th", {}, "Device"), onRevoke ? h("th", {}, "") : null)),
    h("tbody", {}, ...list.map((s) => h("tr", {},
      h("td", {}, s.kind, s.current ? h("span", { class: "chip" }, " this one") : null), h("td", {}, when(s.createdAt)), h("td", {}, when(s.lastUsedAt)),
      h("td", {}, s.ip), h("td", {}, (s.userAgent || "").slice(0, 60)),
      onRevoke ? h("td", {}, s.current ? "" : h("button", { type: "button", class: "secondary", onclick: () => onRevoke(s) }, "Sign out")) : null)))));
}

// ---------------------------------------------------------------- my account

async function account() {
  const err = errorBox();
  const [sessions, events] = await Promise.all([api("GET", "/api/me/sessions"), api("GET", "/api/me/events?limit=20")]);
  const cur = h("input", { type: "password", required: true, autocomplete: "current-password" });
  const next = passwordField("new", "New password", "new-password");
  const done = h("p", { class: "ok", role: "status" });
  const form = h("form", {}, h("label", {}, "Current password", cur), next.el, h("button", { type: "submit" }, "Change password"), done);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = ""; done.textContent = "";
    try {
      await api("POST", "/api/me/password", { currentPassword: cur.value, newPassword: next.input.value });
      done.textContent = "Password changed. Your other sessions were signed out.";
      cur.value = ""; next.input.value = "";
    } catch (e) { showError(err, e); }
  });
  const others = h("button", { type: "button", class: "secondary", onclick: async () => {
    try {
      for (const s of sessions.filter((x) => !x.current)) await api("DELETE", `/api/me/sessions/${s.id}`);
      route();
    } catch (e) { showError(err, e); }
  } }, "Sign out all other sessions");
  page("My account",
    h("div", { class: "panel" }, h("h2", {}, "Profile"), h("p", {}, `${session.user.displayName} · ${session.user.email} · ${session.user.role}`)),
    h("div", { class: "panel narrow" }, h("h2", {}, "Change password"), form), err,
    h("div", { class: "panel" }, h("h2", {}, "My sessions"),
      sessionsTable(sessions, async (s) => { try { await api("DELETE", `/api/me/sessions/${s.id}`); route(); } catch (e) { showError(err, e); } }), others),
    h("div", { class: "panel" }, h("h2", {}, "My recent sign-ins and account events"), eventsTable(events.events, false)));
}

// ---------------------------------------------------------------- audit

/** Long hex ids and session ids shortened for tables; the full value stays in the tooltip. */
function short(v) {
  if (!v) return "—";
  return /^[0-9a-f]{32}$/.test(v) || /^[A-Za-z0-9_-]{22}$/.test(v) ? h("span", { title: v }, `${v.slice(0, 8)}…`) : v;
}

function eventsTable(events, withDetail) {
  if (!events.length) return h("p", { class: "muted" }, "No events.");
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Time"), h("th", {}, "Type"), h("th", {}, "Severity"), h("th", {}, "Actor"), h("th", {}, "Target"), h("th", {}, "IP"), withDetail ? h("th", {}, "") : null)),
    h("tbody", {}, ...events.map((e) => h("tr", { "data-type": e.type },
      h("td", {}, String(e.seq)), h("td", {}, whenIso(e.time)), h("td", {}, e.type),
      h("td", {}, h("span", { class: `chip ${e.severity === "critical" ? "bad" : e.severity === "warning" ? "warn" : ""}` }, e.severity)),
      h("td", {}, short(e.actor)), h("td", {}, short(e.target)), h("td", {}, e.ip),
      withDetail ? h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => detailDialog(e) }, "Details")) : null)))));
}

function detailDialog(e) {
  const dlg = h("dialog", { "aria-label": `Event ${e.seq}` }, h("h2", {}, `${e.type} #${e.seq}`),
    h("pre", {}, JSON.stringify(e, null, 2)), h("form", { method: "dialog" }, h("button", {}, "Close")));
  document.body.append(dlg);
  dlg.addEventListener("close", () => dlg.remove());
  dlg.showModal();
}

async function audit() {
  const err = errorBox();
  const f = {
    type: h("input", { name: "type", placeholder: "e.g. login_failed" }),
    severity: h("select", { name: "severity" }, h("option", { value: "" }, "any"), ...["info", "warning", "critical"].map((s) => h("option", { value: s }, s))),
    user: h("input", { name: "user", placeholder: "email or id" }),
    ip: h("input", { name: "ip" }),
    since: h("input", { name: "since", type: "datetime-local" }),
    until: h("input", { name: "until", type: "datetime-local" }),
  };
  const params = () => {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(f)) {
      const v = el.value.trim();
      if (!v) continue;
      q.set(k, k === "since" || k === "until" ? new Date(v).toISOString() : v);
    }
    return q;
  };
  const results = h("div");
  const verify = h("span", { class: "muted" }, "…");
  const cursors = [];
  const load = async (cursor) => {
    err.textContent = "";
    const q = params(); q.set("limit", "50");
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await api("GET", `/api/audit?${q}`);
      const next = page.nextCursor ? h("button", { type: "button", class: "secondary", onclick: () => { cursors.push(cursor); load(page.nextCursor); } }, "Older →") : null;
      const prev = cursors.length ? h("button", { type: "button", class: "secondary", onclick: () => load(cursors.pop()) }, "← Newer") : null;
      results.replaceChildren(eventsTable(page.events, true), h("div", { class: "row" }, prev, next));
    } catch (e) { showError(err, e); }
  };
  const form = h("form", { class: "row" }, ...Object.entries(f).map(([k, el]) => h("label", {}, k, el)), h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); cursors.length = 0; load(null); });
  const exportBtn = h("button", { type: "button", class: "secondary", onclick: async () => {
    try {
      const q = params(); const qs = new URLSearchParams();
      if (q.get("since")) qs.set("since", q.get("since"));
      if (q.get("until")) qs.set("until", q.get("until"));
      const r = await api("GET", `/api/audit/export?${qs}`, undefined, { raw: true });
      const url = URL.createObjectURL(await r.blob());
      const a = h("a", { href: url, download: "audit.jsonl" });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { showError(err, e); }
  } }, "Export JSON Lines");
  page("Audit log", h("div", { class: "panel" }, h("p", {}, "Chain: ", verify), form, h("div", { class: "row" }, exportBtn)), err, h("div", { class: "panel" }, results));
  await load(null);
  api("GET", "/api/audit/verify").then((v) => {
    verify.textContent = v.ok ? `verified, records ${v.first}–${v.last}` : `BROKEN at record ${v.firstBad} (${v.reason})`;
    verify.setAttribute("class", v.ok ? "ok" : "bad");
  }).catch((e) => { verify.textContent = e.message; });
}

// ---------------------------------------------------------------- VPN, TLS, routes

async function vpn() {
  const [v, list] = await Promise.all([api("GET", "/api/vpn"), api("GET", "/api/vpn/servers")]);
  const box = errorBox();
  const done = h("p", { class: "muted", role: "status" });
  const cls = v.state === "up" ? "ok" : v.state === "degraded" || v.state === "connecting" ? "warn" : v.state === "disabled" ? "" : "bad";
  const row = (k, val) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, val ?? "—"));
  const ks = v.killswitch;
  const live = v.state !== "disabled" && v.state !== "unavailable";
  const act = (label, path) => h("button", { type: "button", class: "secondary", disabled: !live, onclick: async () => {
    box.textContent = "";
    try { const r = await api("POST", path); done.textContent = r.message; setTimeout(vpn, 1500); } catch (e) { showError(box, e); }
  } }, label);
  const key = h("input", { type: "password", autocomplete: "off", spellcheck: "false", required: true, minlength: 40, maxlength: 64 });
  const keyForm = h("form", { class: "row" }, h("label", {}, "WireGuard private key (write-only)", key), h("button", { type: "submit" }, "Store key"));
  keyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault(); box.textContent = "";
    try { const r = await api("PUT", "/api/vpn/key", { privateKey: key.value.trim() }); key.value = ""; done.textContent = r.message; }
    catch (e) { showError(box, e); }
  });
  page("VPN",
    h("div", { class: "panel" }, h("div", { class: "table-wrap" }, h("table", {}, h("tbody", {},
      row("State", h("strong", { class: cls }, v.state)), row("Since", when(v.since)),
      row(v.state === "unavailable" || v.state === "disabled" ? "Reason" : "Last error", v.reason || v.lastError),
      row("Server", v.server ? `${v.server} (${v.endpoint})` : null), row("Interface", `${v.interface} · ${v.backend}`),
      row("Latest handshake", v.handshakeAgeSecs == null ? null : `${duration(v.handshakeAgeSecs)} ago`),
      row("Traffic", `${bytes(v.rxBytes)} received · ${bytes(v.txBytes)} sent`), row("Reconnects", String(v.reconnects)),
      row("Up (24 h)", pct(v.uptimeRatio24h)), row("Public key", v.publicKey ? h("code", {}, v.publicKey) : "no private key stored"),
      row("Kill switch", ks.installed ? h("span", { class: "ok" }, `on (${ks.scope}) · ${ks.rules} rules · ${ks.droppedPackets} packets dropped`)
        : v.state === "disabled" ? "off (the VPN is disabled)"
        : h("span", { class: ks.enabled ? "bad" : "" }, ks.enabled ? "not installed" : "disabled in the configuration")))))),
    h("div", { class: "panel" }, h("div", { class: "row" }, act("Reconnect", "/api/vpn/reconnect"), act("Next server", "/api/vpn/rotate")), keyForm, box, done),
    h("h2", {}, "Servers"),
    list.servers.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Endpoint"), h("th", {}, "Public key"), h("th", {}, "Allowed IPs"))),
      h("tbody", {}, list.servers.map((s) => h("tr", {}, h("td", {}, s.name === v.server ? h("strong", {}, s.name) : s.name),
        h("td", {}, s.endpoint), h("td", {}, h("code", {}, s.publicKey)), h("td", {}, (s.allowedIps || []).join(", ")))))))
      : h("p", { class: "muted" }, "No servers configured."),
  );
}

async function tls() {
  const t = await api("GET", "/api/tls");
  const row = (k, v) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v ?? "—"));
  page("TLS", h("div", { class: "panel" }, h("div", { class: "table-wrap" }, h("table", {}, h("tbody", {},
    row("Mode", t.mode), row("Serving", t.source), row("Names", (t.names || []).join(", ")), row("Issuer", t.issuer),
    row("Valid from", whenIso(t.notBefore)), row("Valid until", whenIso(t.notAfter)), row("Expires in", duration(t.expiresInSecs)),
    row("SHA-256", t.fingerprintSha256), row("Serial", t.serial), row("Renewal due", whenIso(t.renewAt)),
    row("Last attempt", whenIso(t.lastAttempt)), row("Last error", t.lastError ? h("span", { class: "bad" }, t.lastError) : "none"))))));
}

async function routes() {
  const c = await api("GET", "/api/system/config");
  page("Routes & limits",
    h("div", { class: "panel" }, h("h2", {}, "Routes"), c.routes.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Prefix"), h("th", {}, "Upstream"), h("th", {}, "Role"), h("th", {}, "Rate class"), h("th", {}, "VPN"), h("th", {}, "Stream keys"))),
      h("tbody", {}, ...c.routes.map((r) => h("tr", {}, h("td", {}, r.prefix), h("td", {}, r.upstream), h("td", {}, r.minRole), h("td", {}, r.rateClass),
        h("td", {}, r.requiresVpn ? "required" : "—"), h("td", {}, r.streamKeys ? "yes" : "—")))))) : h("p", { class: "muted" }, "No routes configured.")),
    h("div", { class: "panel" }, h("h2", {}, "Rate limits"), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Class"), h("th", {}, "Per minute"), h("th", {}, "Burst"))),
      h("tbody", {}, ...c.rateLimits.map((l) => h("tr", {}, h("td", {}, l.class), h("td", {}, String(l.perMinute)), h("td", {}, String(l.burst))))))),
      h("p", {}, `Lockout: ${c.lockoutMaxFailures} failures within ${c.lockoutWindowSecs / 60} minutes lock an account.`)),
    h("div", { class: "panel" }, h("h2", {}, "Origins"),
      h("p", {}, "CORS: ", c.corsOrigins.length ? c.corsOrigins.join(", ") : "none"),
      h("p", {}, "Public origins: ", c.publicOrigins.length ? c.publicOrigins.join(", ") : "none"),
      h("p", {}, "Trusted proxies: ", c.trustedProxies.length ? c.trustedProxies.join(", ") : "none")));
}

// ---------------------------------------------------------------- start

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-link]");
  if (!a || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  go(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

async function boot() {
  try {
    const status = await api("GET", "/api/auth/setup");
    if (status.required) return go("/admin/setup", true);
    const held = await api("GET", "/api/auth/sessions");
    // A bare array, one entry per session this browser holds a refresh cookie for.
    if (Array.isArray(held) && held.length) { session.id = held[0].session; session.user = held[0].user; }
  } catch { /* fall through to sign-in */ }
  route();
}
boot();
