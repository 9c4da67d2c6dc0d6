// Screenshots of every page, light and dark, into assets/screenshots/ (run: npm run screenshots).
import { mkdirSync } from "node:fs";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { startGate, launch, signIn, setupAdmin, ADMIN } from "./harness.mjs";

const out = resolve(dirname(fileURLToPath(import.meta.url)), "../../assets/screenshots");
mkdirSync(out, { recursive: true });
const gate = await startGate();
const browser = await launch();
try {
  for (const scheme of ["light", "dark"]) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: scheme });
    const page = await ctx.newPage();
    if (scheme === "light") {
      await page.goto(`${gate.base}/admin/`);
      await page.waitForURL("**/admin/setup");
      await page.screenshot({ path: `${out}/setup-${scheme}.png` });
      await setupAdmin(page, gate);
      for (const [email, role] of [["bob@example.com", "user"], ["grandma@example.com", "guest"]]) {
        await page.goto(`${gate.base}/admin/users`);
        await page.getByLabel("Email", { exact: true }).fill(email);
        await page.getByLabel("Initial password").fill("a-long-enough-password");
        await page.locator("form select[name=role]").selectOption(role);
        await page.getByRole("button", { name: "Create user" }).click();
        await page.locator(`tr[data-email="${email}"]`).waitFor();
      }
      await signIn(page, gate.base, ADMIN.email, "wrong-password-once");
      await page.getByRole("alert").waitFor();
    }
    await page.goto(`${gate.base}/admin/login`);
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    await page.screenshot({ path: `${out}/login-${scheme}.png` });
    await signIn(page, gate.base, ADMIN.email, ADMIN.password);
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    await page.getByText("Latest security events").waitFor();
    for (const [path, name, heading] of [["/admin/", "dashboard", "Dashboard"], ["/admin/users", "users", "Users"],
      ["/admin/account", "account", "My account"], ["/admin/audit", "audit", "Audit log"], ["/admin/vpn", "vpn", "VPN"],
      ["/admin/tls", "tls", "TLS"], ["/admin/routes", "routes", "Routes & limits"]]) {
      await page.goto(`${gate.base}${path}`);
      await page.getByRole("heading", { name: heading, exact: true }).waitFor();
      await page.waitForTimeout(150);
      await page.screenshot({ path: `${out}/${name}-${scheme}.png`, fullPage: true });
    }
    await ctx.close();
  }
  const mobile = await browser.newContext({ viewport: { width: 360, height: 780 } });
  const m = await mobile.newPage();
  await signIn(m, gate.base, ADMIN.email, ADMIN.password);
  await m.getByRole("heading", { name: "Dashboard" }).waitFor();
  await m.screenshot({ path: `${out}/dashboard-360px.png`, fullPage: true });
  console.log(`screenshots written to ${out}`);
} finally {
  await browser.close();
  await gate.stop();
}
