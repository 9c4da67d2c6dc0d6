// Starts the real gate binary on a free loopback port with a fresh data dir, and Debian's
// Chromium through playwright-core. Every page records console errors and CSP violations.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.GATE_BIN || resolve(here, "../../target/debug/miauflix-gate");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ADMIN = { email: "admin@example.com", password: "correct-horse-battery" };

function freePort() {
  return new Promise((ok, fail) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => ok(port)); });
    srv.on("error", fail);
  });
}

export async function startGate(extraEnv = {}) {
  if (!existsSync(BIN)) throw new Error(`gate binary ${BIN} not found; run cargo build first`);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found; apt-get install -y chromium`);
  const data = mkdtempSync(join(tmpdir(), "gate-ui-"));
  const port = await freePort();
  const child = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      MIAUFLIX_DATA_DIR: join(data, "data"),
      MIAUFLIX_LISTEN: `127.0.0.1:${port}`,
      MIAUFLIX_TLS: "off",
      MIAUFLIX_LOG: "warn",
      MIAUFLIX_RATE_LIMITS__AUTH: "{per_minute = 10000, burst = 1000}",
      ...extraEnv,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (d) => { log += d; });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(`${base}/healthz`)).ok) break; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
    if (i === 99) throw new Error(`gate did not start:\n${log}`);
  }
  return {
    base,
    dataDir: join(data, "data"),
    setupToken: () => readFileSync(join(data, "data", "setup-token"), "utf8").trim(),
    stop: () => new Promise((r) => { child.once("exit", r); child.kill("SIGTERM"); }),
    log: () => log,
  };
}

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--no-first-run", "--disable-sync", "--disable-quic"],
  });
}

/** A page that records console errors and CSP violations; `allow` filters expected ones. */
export async function watchedPage(context) {
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.problems = problems;
  return page;
}

/** Problems other than the expected HTTP failures (e.g. a 401 for a wrong password). */
export function unexpected(problems, allowedStatuses = []) {
  return problems.filter((p) => !allowedStatuses.some((s) => p.includes(`status of ${s}`)));
}

export async function signIn(page, base, email, password) {
  await page.goto(`${base}/admin/login`);
  await page.getByLabel("Email", { exact: true }).fill(email);
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** Creates the first admin through the setup page. */
export async function setupAdmin(page, gate) {
  await page.goto(`${gate.base}/admin/`);
  await page.waitForURL("**/admin/setup");
  await page.getByLabel("Setup token").fill(gate.setupToken());
  await page.getByLabel("Email", { exact: true }).fill(ADMIN.email);
  await page.getByLabel("Password", { exact: true }).fill(ADMIN.password);
  await page.getByRole("button", { name: "Create the admin account" }).click();
  await page.getByRole("heading", { name: "Next steps" }).waitFor();
}
