// The admin UI in a real browser against the real binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGate, launch, watchedPage, unexpected, signIn, setupAdmin, ADMIN } from "./harness.mjs";

let gate, browser;
before(async () => { gate = await startGate(); browser = await launch(); });
after(async () => { await browser?.close(); await gate?.stop(); });

test("setup, login, users, roles, sessions, audit, logout — with no CSP violation or console error", async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await watchedPage(ctx);
  await setupAdmin(page, gate);
  await page.getByRole("link", { name: "Go to the dashboard" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  await page.getByText("Sign-in success (1 h)").waitFor();
  await page.getByText("Latest security events").waitFor();

  // Create a user, then change its role.
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByRole("heading", { name: "Users" }).waitFor();
  await page.getByLabel("Email", { exact: true }).fill("bob@example.com");
  await page.getByLabel("Initial password").fill("bob-password-long");
  await page.getByRole("button", { name: "Create user" }).click();
  const bobRow = page.locator('tr[data-email="bob@example.com"]');
  await bobRow.waitFor();
  await bobRow.getByLabel("Role of bob@example.com").selectOption("guest");
  await page.locator('tr[data-email="bob@example.com"] select').waitFor();
  await assert.doesNotReject(async () => {
    await page.waitForFunction(() => document.querySelector('tr[data-email="bob@example.com"] select')?.value === "guest");
  });

  // Bob signs in elsewhere; the admin revokes his sessions; his next request fails.
  const bobCtx = await browser.newContext();
  const bob = await watchedPage(bobCtx);
  await signIn(bob, gate.base, "bob@example.com", "bob-password-long");
  await bob.getByRole("heading", { name: "My account" }).waitFor();
  await page.locator('tr[data-email="bob@example.com"]').getByRole("button", { name: "Sessions" }).click();
  await page.getByRole("heading", { name: "Sessions of bob@example.com" }).waitFor();
  await page.getByRole("button", { name: "Revoke all" }).click();
  await page.getByText("No live sessions.").waitFor();
  await bob.reload();
  await bob.waitForURL("**/admin/login");
  await bobCtx.close();

  // The audit page lists those events.
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByRole("heading", { name: "Audit log" }).waitFor();
  for (const type of ["setup_completed", "user_created", "role_changed", "session_revoked", "login_succeeded"]) {
    await page.locator(`tr[data-type="${type}"]`).first().waitFor();
  }
  await page.getByText(/verified, records/).waitFor();
  await page.locator('tr[data-type="role_changed"]').first().getByRole("button", { name: "Details" }).click();
  await page.getByRole("dialog").getByText('"to": "guest"').waitFor();
  await page.getByRole("button", { name: "Close" }).click();

  // Every other admin page renders.
  for (const [link, heading] of [["TLS", "TLS"], ["VPN", "VPN"], ["Routes & limits", "Routes & limits"], ["My account", "My account"]]) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
  }
  await page.getByText("Not available: the WireGuard supervisor").count();

  // Logout.
  await page.getByRole("button", { name: "Sign out", exact: true }).click();
  await page.waitForURL("**/admin/login");
  await page.reload();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.deepEqual(unexpected(page.problems), []);
  await ctx.close();
});

test("five wrong passwords lock the account with a live countdown", async () => {
  const ctx = await browser.newContext();
  const page = await watchedPage(ctx);
  await page.goto(`${gate.base}/admin/login`);
  for (let i = 0; i < 6; i++) {
    await page.getByLabel("Email", { exact: true }).fill("bob@example.com");
    await page.getByLabel("Password", { exact: true }).fill("definitely-wrong");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: /Wrong email or password|locked/ }).waitFor();
    if (i < 5) await page.waitForFunction(() => !document.querySelector("button[type=submit]").disabled);
  }
  const alert = page.getByRole("alert");
  await alert.filter({ hasText: /locked: try again in \d+ s/ }).waitFor();
  const first = Number((await alert.textContent()).match(/in (\d+) s/)[1]);
  await page.waitForTimeout(2100);
  const later = Number((await alert.textContent()).match(/in (\d+) s/)[1]);
  assert.ok(later < first, `countdown moves: ${first} → ${later}`);
  assert.ok(await page.getByRole("button", { name: "Sign in" }).isDisabled());
  // Wrong passwords are 401s and the lock a 429: expected; nothing else.
  assert.deepEqual(unexpected(page.problems, [401, 429]), []);
  await ctx.close();
});

test("a user sees no admin navigation and the API refuses admin URLs", async () => {
  const adminCtx = await browser.newContext();
  const admin = await watchedPage(adminCtx);
  await signIn(admin, gate.base, ADMIN.email, ADMIN.password);
  await admin.getByRole("heading", { name: "Dashboard" }).waitFor();
  await admin.getByRole("link", { name: "Users" }).click();
  await admin.getByLabel("Email", { exact: true }).fill("carol@example.com");
  await admin.getByLabel("Initial password").fill("carol-password-long");
  await admin.getByRole("button", { name: "Create user" }).click();
  await admin.locator('tr[data-email="carol@example.com"]').waitFor();
  await adminCtx.close();

  const ctx = await browser.newContext();
  const page = await watchedPage(ctx);
  await signIn(page, gate.base, "carol@example.com", "carol-password-long");
  await page.getByRole("heading", { name: "My account" }).waitFor();
  const links = await page.locator("#nav a").allTextContents();
  assert.deepEqual(links, ["My account"]);
  await page.goto(`${gate.base}/admin/users`);
  await page.getByRole("heading", { name: "Not allowed" }).waitFor();
  // Not only hidden: the API answers 403 to this session.
  const sid = (await ctx.cookies()).find((c) => c.name.startsWith("__miauflix_at_")).name.slice("__miauflix_at_".length);
  const r = await ctx.request.get(`${gate.base}/api/users`, { headers: { "x-session-id": sid } });
  assert.equal(r.status(), 403);
  const own = await ctx.request.get(`${gate.base}/api/me`, { headers: { "x-session-id": sid } });
  assert.equal(own.status(), 200);
  assert.deepEqual(unexpected(page.problems), []);
  await ctx.close();
});

test("the dashboard fits 360 px and 1280 px without horizontal scrolling", async () => {
  for (const width of [360, 1280]) {
    const ctx = await browser.newContext({ viewport: { width, height: 800 } });
    const page = await watchedPage(ctx);
    await signIn(page, gate.base, ADMIN.email, ADMIN.password);
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    await page.getByText("Requests per minute (last hour)").waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${width} px: ${overflow} px of horizontal overflow`);
    assert.deepEqual(unexpected(page.problems), []);
    await ctx.close();
  }
});

test("assets come with ETags, and unknown admin paths get the app", async () => {
  const r = await fetch(`${gate.base}/admin/app.js`);
  const etag = r.headers.get("etag");
  assert.ok(etag);
  assert.equal((await fetch(`${gate.base}/admin/app.js`, { headers: { "if-none-match": etag } })).status, 304);
  const spa = await fetch(`${gate.base}/admin/some/deep/link`);
  assert.equal(spa.status, 200);
  assert.match(await spa.text(), /<main id="view"/);
  assert.match(spa.headers.get("content-security-policy"), /script-src 'self'/);
});

test("the harness itself sees a CSP violation (so zero means zero)", async () => {
  const ctx = await browser.newContext();
  const page = await watchedPage(ctx);
  await page.goto(`${gate.base}/admin/login`);
  await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.__inline = 1";
    document.body.append(s);
  });
  await page.waitForTimeout(200);
  assert.equal(await page.evaluate(() => window.__inline), undefined, "inline script blocked");
  assert.ok(page.problems.some((p) => p.includes("CSP violation") || p.includes("Content Security Policy")), page.problems.join("\n"));
  await ctx.close();
});
