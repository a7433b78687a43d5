// Browser tests of the Cortex console in Debian's Chromium, driven by playwright-core.
// Starts a fake upstream and a real `cortex serve` (built by cargo), walks the acceptance
// flow, and fails on any CSP violation or console error. Screenshots go to
// ../artifacts/screenshots/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "..");
const target = process.env.CARGO_TARGET_DIR || join(root, "target");
const cortexBin = join(target, "debug", "cortex");
const upstreamBin = join(target, "debug", "fake-upstream");
const shots = join(root, "artifacts", "screenshots");
mkdirSync(shots, { recursive: true });

const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic"];

let upstream, server, browser, base, bootstrapPassword;
const data = mkdtempSync(join(tmpdir(), "cortex-console-"));
const children = [];

function waitForLine(child, stream, pattern, timeoutMs = 60000) {
  return new Promise((resolvePromise, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error("timed out waiting for " + pattern + "; saw: " + seen)), timeoutMs);
    child[stream].on("data", (chunk) => {
      seen += chunk.toString();
      const match = seen.match(pattern);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match);
      }
    });
    child.on("exit", (code) => reject(new Error(`process exited (${code}): ${seen}`)));
  });
}

function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0, value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, "")) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totp(secret, unixSeconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / 30)));
  const mac = createHmac("sha1", base32Decode(secret)).update(counter).digest();
  const offset = mac[19] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1000000).padStart(6, "0");
}

before(async () => {
  upstream = spawn(upstreamBin, ["127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(upstream);
  const [upstreamUrl] = await waitForLine(upstream, "stdout", /http:\/\/127\.0\.0\.1:\d+\/v1/);
  const config = join(data, "cortex.toml");
  writeFileSync(config, `[[providers]]\nname = "fake"\nbase_url = "${upstreamUrl}"\n\n[[models]]\nname = "llama"\nprovider = "fake"\ninput_price_per_mtok = 2.0\noutput_price_per_mtok = 4.0\n`);
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(data, "data"), CORTEX_CONFIG: config, CORTEX_LISTEN: "127.0.0.1:0", CORTEX_LOG_FORMAT: "text", RUST_LOG: "info" };
  // The first start creates the admin with a generated password, shown once.
  const migrate = spawnSync(cortexBin, ["migrate"], { env, encoding: "utf8" });
  assert.equal(migrate.status, 0, migrate.stderr);
  bootstrapPassword = migrate.stderr.match(/password: (\S+)/)[1];
  server = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(server);
  const [, address] = await waitForLine(server, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  base = `http://${address}`;
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  for (const child of children) child.kill("SIGTERM");
});

/// A page that records every console error and CSP violation.
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    // A 401 answer to the password step of an MFA login is the API's documented reply.
    if (/Failed to load resource: the server responded with a status of 401/.test(text) && message.location().url.endsWith("/admin/auth/login")) return;
    problems.push(text);
  });
  page.on("pageerror", (error) => problems.push("page error: " + error.message));
  page.on("dialog", (dialog) => dialog.accept());
  return { page, problems, context };
}

async function login(page, username, password, code) {
  await page.goto(base + "/ui/");
  assert.ok(page.url().endsWith("/ui/login"), "without a session /ui/ redirects to the login page: " + page.url());
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login-submit");
  if (code) {
    await page.waitForSelector("#totp", { state: "visible" });
    await page.fill("#totp", code);
    await page.click("#login-submit");
  }
}

const NEW_ADMIN_PASSWORD = "Console-Test-Passphrase-3f9a";

test("console end to end: bootstrap, MFA, keys, usage, audit, viewer", async () => {
  const { page, problems, context } = await newPage();
  await page.goto(base + "/ui/login");
  await page.screenshot({ path: join(shots, "01-login.png") });

  // Bootstrap password → forced change.
  await login(page, "admin", bootstrapPassword);
  await page.waitForSelector("#password-form");
  await page.screenshot({ path: join(shots, "02-forced-password-change.png") });
  await page.fill("#pw-current", bootstrapPassword);
  await page.fill("#pw-new", NEW_ADMIN_PASSWORD);
  await page.click("#pw-submit");
  await page.waitForSelector("#create-key");

  // TOTP enrolment with the QR code.
  await page.click("a[href='#/account']");
  await page.click("#mfa-enrol");
  await page.waitForSelector("#mfa-secret");
  const secret = (await page.textContent("#mfa-secret")).trim();
  const qrWidth = await page.$eval("img.qr", (img) => img.complete ? img.naturalWidth : 0);
  assert.ok(qrWidth >= 100, "the QR code image did not render");
  await page.screenshot({ path: join(shots, "03-totp-enrolment.png") });
  const now = () => Math.floor(Date.now() / 1000);
  await page.fill("#mfa-code", totp(secret, now()));
  await page.click("#mfa-confirm-submit");
  await page.waitForSelector("#recovery-codes");
  assert.equal(await page.locator("#recovery-codes li").count(), 10);
  await page.screenshot({ path: join(shots, "04-recovery-codes.png") });

  // Log out, log in again with password and TOTP (the next step's code: the first is used).
  await page.click("#logout");
  await page.waitForURL(/\/ui\/login$/);
  await login(page, "admin", NEW_ADMIN_PASSWORD, totp(secret, now() + 30));
  await page.waitForSelector("#create-key");

  // Create a key, copy it, use it.
  await page.fill("#key-name", "browser key");
  await page.click("#create-key-submit");
  await page.waitForSelector("#new-key-value");
  await page.click("#copy-key");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  assert.match(copied, /^ctx_[A-Za-z0-9]{12}_[A-Za-z0-9]{43}$/);
  assert.equal(copied, (await page.textContent("#new-key-value")).trim());
  await page.screenshot({ path: join(shots, "05-key-created.png") });
  const models = await fetch(base + "/v1/models", { headers: { Authorization: "Bearer " + copied } });
  assert.equal(models.status, 200);

  // A key with a daily budget that may be used only from 10.0.0.0/8: this browser is not there.
  await page.fill("#key-name", "office key");
  await page.fill("#key-budget", "5");
  await page.selectOption("#key-period", "daily");
  await page.fill("#key-ips", "10.1.2.3/8");
  await page.click("#create-key-submit");
  await page.waitForFunction((first) => {
    const shown = document.getElementById("new-key-value");
    return shown && shown.textContent.trim() !== first;
  }, copied);
  const office = (await page.textContent("#new-key-value")).trim();
  const outside = await fetch(base + "/v1/models", { headers: { Authorization: "Bearer " + office } });
  assert.equal(outside.status, 403);
  assert.equal((await outside.json()).error.code, "ip_not_allowed");
  const stored = await page.evaluate(async () => (await (await fetch("/admin/keys", { credentials: "same-origin" })).json()).data.find((k) => k.name === "office key"));
  assert.deepEqual(stored.allowed_ips, ["10.0.0.0/8"]);
  assert.equal(stored.limits.budget_period, "daily");
  assert.equal(stored.limits.budget_usd, 5);

  // A few requests, then the usage chart.
  for (let i = 0; i < 3; i++) {
    const chat = await fetch(base + "/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: "Bearer " + copied, "Content-Type": "application/json" },
      body: JSON.stringify({ model: "llama", messages: [{ role: "user", content: "hello" }] }),
    });
    assert.equal(chat.status, 200);
  }
  // Usage is written off the hot path, in batches: reopen the page until it shows all three.
  let total = "";
  for (let attempt = 0; attempt < 50 && !/^3 requests/.test(total); attempt++) {
    await page.click("a[href='#/keys']");
    await page.waitForSelector("#create-key");
    await page.click("a[href='#/usage']");
    await page.waitForSelector("#usage-total");
    total = (await page.textContent("#usage-total")).trim();
  }
  assert.match(total, /^3 requests/);
  await page.waitForSelector("#chart-day rect");
  await page.screenshot({ path: join(shots, "06-usage.png"), fullPage: true });

  // Revoke the key: the gateway refuses it at once.
  await page.click("a[href='#/keys']");
  await page.waitForSelector("tr[data-key='browser key'] button[data-action='revoke']");
  await page.click("tr[data-key='browser key'] button[data-action='revoke']");
  await page.waitForSelector("tr[data-key='browser key'] td[data-status='revoked']");
  const refused = await fetch(base + "/v1/models", { headers: { Authorization: "Bearer " + copied } });
  assert.equal(refused.status, 401);
  await page.screenshot({ path: join(shots, "07-key-revoked.png") });

  // Audit verify.
  await page.click("a[href='#/audit']");
  await page.click("#verify-audit");
  await page.waitForSelector("#verify-result.ok");
  assert.match(await page.textContent("#verify-result"), /Chain intact/);
  await page.screenshot({ path: join(shots, "08-audit.png"), fullPage: true });

  // Providers and models page: the file's provider is listed as openai; an Anthropic provider
  // is added with its kind and API version, and the Responses flag is not offered for it.
  await page.click("a[href='#/providers']");
  await page.waitForSelector("text=llama");
  await page.waitForSelector("tr[data-provider='fake'] td[data-kind='openai']");
  await page.fill("#p-name", "claude");
  await page.selectOption("#p-kind", "anthropic");
  assert.equal(await page.isDisabled("#p-responses"), true, "the Responses flag is for openai providers only");
  assert.equal(await page.isDisabled("#p-version"), false);
  await page.fill("#p-url", "https://api.anthropic.com/v1");
  await page.fill("#p-version", "2023-06-01");
  await page.fill("#p-weight", "3");
  await page.fill("#p-health", "v1/health");
  await page.click("form button[type=submit]:text('Add provider')");
  await page.waitForSelector("tr[data-provider='claude'] td[data-kind='anthropic']");
  assert.match(await page.textContent("tr[data-provider='claude'] td[data-kind]"), /anthropic \(2023-06-01\)/);
  // Weight and health check path: the file's provider shows the defaults.
  await page.waitForSelector("tr[data-provider='claude'] td[data-weight='3']");
  await page.waitForSelector("tr[data-provider='claude'] td[data-health-path='v1/health']");
  await page.waitForSelector("tr[data-provider='fake'] td[data-weight='1']");
  assert.match(await page.textContent("tr[data-provider='fake'] td[data-health-path]"), /models \(default\)/);
  // A model with a strategy; the file's model is round robin.
  await page.waitForSelector("tr[data-model='llama'] td[data-strategy='round_robin']");
  await page.fill("#m-name", "llama-ll");
  await page.selectOption("#m-provider", { label: "fake" });
  await page.selectOption("#m-strategy", "least_latency");
  await page.click("form button[type=submit]:text('Add model')");
  await page.waitForSelector("tr[data-model='llama-ll'] td[data-strategy='least_latency']");
  await page.screenshot({ path: join(shots, "09-providers.png"), fullPage: true });

  // A viewer, created in the console.
  await page.click("a[href='#/users']");
  await page.fill("#u-name", "vera");
  await page.fill("#u-password", "Viewer-First-Passphrase-71d");
  await page.selectOption("#u-role", "viewer");
  await page.click("#create-user-submit");
  await page.waitForSelector("text=vera");
  await page.screenshot({ path: join(shots, "10-users.png") });
  await page.click("#logout");
  await page.waitForURL(/\/ui\/login$/);
  assert.deepEqual(problems, [], "console errors or CSP violations as admin");
  await context.close();

  const viewer = await newPage();
  await login(viewer.page, "vera", "Viewer-First-Passphrase-71d");
  await viewer.page.waitForSelector("#password-form");
  await viewer.page.fill("#pw-current", "Viewer-First-Passphrase-71d");
  await viewer.page.fill("#pw-new", "Viewer-Second-Passphrase-22e");
  await viewer.page.click("#pw-submit");
  await viewer.page.waitForSelector("h1:text('API keys')");
  for (const view of ["keys", "usage", "providers", "users", "audit", "account"]) {
    await viewer.page.click(`a[href='#/${view}']`);
    await viewer.page.waitForLoadState("networkidle");
    if (view !== "account") {
      const changers = await viewer.page.locator("main button.danger, main button[data-action], #create-key, #create-user, main form button[type=submit]:not(:text('Filter'))").count();
      assert.equal(changers, 0, `a viewer sees change buttons on ${view}`);
    }
    await viewer.page.screenshot({ path: join(shots, `11-viewer-${view}.png`), fullPage: true });
  }
  assert.deepEqual(viewer.problems, [], "console errors or CSP violations as viewer");
  await viewer.context.close();
});

test("the console is served with a strict CSP and needs a session", async () => {
  const redirect = await fetch(base + "/ui/", { redirect: "manual" });
  assert.equal(redirect.status, 303);
  assert.equal(redirect.headers.get("location"), "/ui/login");
  const login = await fetch(base + "/ui/login");
  const csp = login.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const html = await login.text();
  assert.doesNotMatch(html, /<script>(?!\s*<\/script>)|\sstyle=|\son[a-z]+=/i, "no inline script, style or handlers");
});

// ---- health page ------------------------------------------------------------------------
// A gateway of its own (so the shared one's providers stay healthy for the other tests): a
// working fake upstream and a provider at a closed loopback port, on one model, plus a model
// served only by the closed port so that its breaker can be opened on purpose.

const HEALTH_ADMIN_PASSWORD = "Health-Page-Admin-Passphrase-4b8d";

/// A loopback URL nothing listens on: a port bound for a moment, then closed.
async function closedLoopbackUrl() {
  const probe = createServer();
  await new Promise((done) => probe.listen(0, "127.0.0.1", done));
  const { port } = probe.address();
  await new Promise((done) => probe.close(done));
  return `http://127.0.0.1:${port}/v1`;
}

async function startHealthGateway() {
  const fake = spawn(upstreamBin, ["127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(fake);
  const [goodUrl] = await waitForLine(fake, "stdout", /http:\/\/127\.0\.0\.1:\d+\/v1/);
  const dir = mkdtempSync(join(tmpdir(), "cortex-health-"));
  const config = join(dir, "cortex.toml");
  writeFileSync(config, [
    `[[providers]]\nname = "good"\nbase_url = "${goodUrl}"\n`,
    `[[providers]]\nname = "down"\nbase_url = "${await closedLoopbackUrl()}"\n`,
    `[[models]]\nname = "llama"\nproviders = ["down", "good"]\n`,
    `[[models]]\nname = "down-only"\nprovider = "down"\n`,
  ].join("\n"));
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(dir, "data"), CORTEX_CONFIG: config, CORTEX_LISTEN: "127.0.0.1:0",
    CORTEX_LOG_FORMAT: "text", RUST_LOG: "info", CORTEX_ADMIN_PASSWORD: HEALTH_ADMIN_PASSWORD };
  const gateway = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(gateway);
  const [, address] = await waitForLine(gateway, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  return { origin: `http://${address}`, processes: [fake, gateway] };
}

/// The admin API as `username`, with a bearer token from a password login.
async function apiAs(origin, username, password) {
  const login = await fetch(origin + "/admin/auth/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ username, password }),
  });
  assert.equal(login.status, 200);
  const { access_token: token } = await login.json();
  return async (method, path, body) => {
    const response = await fetch(origin + path, {
      method, headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  };
}

async function loginAt(page, origin, username, password) {
  await page.goto(origin + "/ui/login");
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login-submit");
}

test("health page: both providers with their state, refreshed by itself, only for roles that may list providers", async () => {
  const { origin, processes } = await startHealthGateway();
  const adminApi = await apiAs(origin, "admin", HEALTH_ADMIN_PASSWORD);
  const created = await adminApi("POST", "/admin/keys", { name: "health", scopes: ["chat"] });
  assert.equal(created.status, 201);
  const chat = (model) => fetch(origin + "/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: "Bearer " + created.body.key, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hello" }] }),
  });
  const developer = await adminApi("POST", "/admin/users", { username: "dora", password: "Developer-First-Passphrase-8c1", role: "developer" });
  assert.equal(developer.status, 201);

  const { page, problems, context } = await newPage();
  const healthRequests = [];
  page.on("request", (request) => { if (request.url().endsWith("/admin/providers/health")) healthRequests.push(Date.now()); });
  await loginAt(page, origin, "admin", HEALTH_ADMIN_PASSWORD);
  await page.waitForSelector("#create-key");
  await page.click("a[href='#/health']");
  const state = (name) => page.locator(`tr[data-provider='${name}'] td[data-col='state'] .badge`);
  await state("good").waitFor();
  assert.equal(await state("good").getAttribute("data-state"), "healthy");
  assert.equal((await state("good").textContent()).trim(), "Healthy", "the state in words, not colour alone");
  assert.notEqual(await state("down").getAttribute("data-state"), "open", "nothing has failed it five times yet");
  const firstUpdate = await page.textContent("#health-updated");
  assert.match(firstUpdate, /^Updated /);
  await page.screenshot({ path: join(shots, "13-health-before.png"), fullPage: true });

  // The page refreshes by itself: the "updated" time moves on without any action.
  await page.waitForFunction((before) => document.getElementById("health-updated").textContent !== before, firstUpdate, { timeout: 10000 });

  // Make the closed port fail five times in a row (its breaker opens), and let the good
  // provider serve the shared model. Then, without a reload, the page shows both.
  await page.evaluate(() => { window.healthPageNotReloaded = true; });
  for (let i = 0; i < 5; i++) assert.equal((await chat("down-only")).status, 502);
  for (let i = 0; i < 3; i++) assert.equal((await chat("llama")).status, 200);
  await page.waitForSelector("tr[data-provider='down'] .badge[data-state='open']", { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.healthPageNotReloaded), true, "updated in place, not reloaded");
  assert.equal((await state("down").textContent()).trim(), "Open");
  assert.equal((await page.textContent("tr[data-provider='down'] td[data-col='error-rate']")).trim(), "100.0 %");
  assert.equal((await page.textContent("tr[data-provider='down'] td[data-col='latency']")).trim(), "—", "it never answered");
  assert.equal((await state("good").textContent()).trim(), "Healthy");
  assert.match((await page.textContent("tr[data-provider='good'] td[data-col='latency']")).trim(), /^\d+ ms$/);
  assert.equal((await page.textContent("tr[data-provider='good'] td[data-col='error-rate']")).trim(), "0.0 %");
  assert.equal((await page.textContent("tr[data-provider='good'] td[data-col='in-flight']")).trim(), "0");
  assert.match((await page.textContent("tr[data-provider='good'] td[data-col='last-check']")).trim(), /^(never|.+ · (passed|failed))$/);
  await page.screenshot({ path: join(shots, "13-health.png"), fullPage: true });

  // Leaving the page stops the refresh.
  await page.click("a[href='#/keys']");
  await page.waitForSelector("#create-key");
  const left = Date.now();
  await page.waitForTimeout(4500);
  assert.deepEqual(healthRequests.filter((at) => at > left), [], "the health page kept polling after it was left");
  await page.click("#logout");
  await page.waitForURL(/\/ui\/login$/);
  assert.deepEqual(problems, [], "console errors or CSP violations on the health page");
  await context.close();

  // A developer may not list providers: no Health entry, and the address shows another page.
  const dev = await newPage();
  await loginAt(dev.page, origin, "dora", "Developer-First-Passphrase-8c1");
  await dev.page.waitForSelector("#password-form");
  await dev.page.fill("#pw-current", "Developer-First-Passphrase-8c1");
  await dev.page.fill("#pw-new", "Developer-Second-Passphrase-5e2");
  await dev.page.click("#pw-submit");
  await dev.page.waitForSelector("h1:text('API keys')");
  assert.equal(await dev.page.locator("a[href='#/health']").count(), 0, "a developer sees the Health entry");
  await dev.page.goto(origin + "/ui/#/health");
  await dev.page.waitForSelector("h1:text('Account')");
  assert.equal(await dev.page.locator("#health-list").count(), 0);
  assert.deepEqual(dev.problems, [], "console errors or CSP violations as developer");
  await dev.context.close();
  for (const child of processes) child.kill("SIGTERM");
});

test("keyboard only, on a phone-sized screen: log in and reach every page without sideways scrolling", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
  page.on("pageerror", (error) => problems.push("page error: " + error.message));
  await page.goto(base + "/ui/login");

  // Tab to the username field, type, Tab to the password, Enter submits: no mouse.
  let focused = "";
  for (let i = 0; i < 6 && focused !== "username"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.id ?? "");
  }
  assert.equal(focused, "username", "the username field is reachable with Tab");
  await page.keyboard.type("vera");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "password");
  await page.keyboard.type("Viewer-Second-Passphrase-22e");
  await page.keyboard.press("Enter");
  await page.waitForSelector("h1:text('API keys')");

  for (const view of ["keys", "usage", "providers", "users", "audit", "account"]) {
    // Navigation links are reachable by keyboard too: focus the link and press Enter.
    await page.focus(`a[href='#/${view}']`);
    await page.keyboard.press("Enter");
    await page.waitForLoadState("networkidle");
    await page.waitForFunction((v) => location.hash === `#/${v}`, view);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the ${view} page scrolls sideways by ${overflow}px on a phone`);
    // A table wider than the screen must be scrollable on its own, never cut off.
    const cut = await page.evaluate(() => [...document.querySelectorAll("main table")]
      .filter((t) => t.scrollWidth > t.parentElement.clientWidth + 1 && getComputedStyle(t.parentElement).overflowX !== "auto")
      .map((t) => t.querySelector("th")?.textContent));
    assert.deepEqual(cut, [], `tables cut off on the ${view} page`);
    await page.screenshot({ path: join(shots, `12-phone-${view}.png`), fullPage: true });
  }
  assert.deepEqual(problems, [], "console errors or CSP violations on a phone");
  await context.close();
});

// ---- organizations and teams --------------------------------------------------------------
// A gateway of its own, whose model is priced so that one request moves the spend shown
// against a budget by whole cents.

const ORGS_ADMIN_PASSWORD = "Orgs-Page-Admin-Passphrase-6d3e";

async function startOrgsGateway() {
  const fake = spawn(upstreamBin, ["127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(fake);
  const [url] = await waitForLine(fake, "stdout", /http:\/\/127\.0\.0\.1:\d+\/v1/);
  const dir = mkdtempSync(join(tmpdir(), "cortex-orgs-"));
  const config = join(dir, "cortex.toml");
  writeFileSync(config, `[[providers]]\nname = "fake"\nbase_url = "${url}"\n\n[[models]]\nname = "llama"\nprovider = "fake"\n` +
    `input_price_per_mtok = 100000.0\noutput_price_per_mtok = 100000.0\n\n[[models]]\nname = "mistral"\nprovider = "fake"\n`);
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(dir, "data"), CORTEX_CONFIG: config, CORTEX_LISTEN: "127.0.0.1:0",
    CORTEX_LOG_FORMAT: "text", RUST_LOG: "info", CORTEX_ADMIN_PASSWORD: ORGS_ADMIN_PASSWORD };
  const gateway = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(gateway);
  const [, address] = await waitForLine(gateway, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  return { origin: `http://${address}`, processes: [fake, gateway] };
}

test("organizations and teams: create an organization, a team and a member, budgets, and see spend move", async () => {
  const { origin, processes } = await startOrgsGateway();
  const { page, problems, context } = await newPage();
  await loginAt(page, origin, "admin", ORGS_ADMIN_PASSWORD);
  await page.waitForSelector("#create-key");

  // An organization with a monthly budget and a model allow-list.
  await page.click("a[href='#/orgs']");
  await page.waitForSelector("tr[data-org='default']");
  await page.fill("#o-name", "Research");
  await page.fill("#o-budget", "25");
  await page.selectOption("#o-period", "monthly");
  await page.fill("#o-models", "llama");
  await page.click("#o-submit");
  await page.waitForSelector("tr[data-org='Research'] td[data-col='budget']:text('$25 monthly')");
  assert.equal((await page.textContent("tr[data-org='Research'] td[data-col='models']")).trim(), "llama");
  assert.match(await page.textContent("tr[data-org='Research'] td[data-col='spend']"), /^\$0\.0000 of \$25$/);

  // A member of it, created on the Users page.
  await page.click("a[href='#/users']");
  await page.fill("#u-name", "rita");
  await page.fill("#u-password", "Member-First-Passphrase-19b");
  await page.selectOption("#u-role", "developer");
  await page.selectOption("#u-org", { label: "Research" });
  await page.click("#create-user-submit");
  await page.waitForSelector("text=rita");

  // A team in it with a daily budget, and rita as its member.
  await page.click("a[href='#/teams']");
  await page.fill("#t-name", "nlp");
  await page.selectOption("#t-org", { label: "Research" });
  await page.fill("#t-budget", "5");
  await page.selectOption("#t-period", "daily");
  await page.click("#t-submit");
  await page.waitForSelector("tr[data-team='nlp'] td[data-col='budget']:text('$5 daily')");
  await page.click("tr[data-team='nlp'] button[data-action='members']");
  await page.check("#team-members input[data-username='rita']");
  await page.click("#members-submit");
  await page.waitForSelector("tr[data-team='nlp'] td[data-col='members']:text('rita')");
  await page.screenshot({ path: join(shots, "14-teams.png"), fullPage: true });

  // rita's key is charged to the team; her organization allows llama only.
  const adminApi = await apiAs(origin, "admin", ORGS_ADMIN_PASSWORD);
  const team = (await adminApi("GET", "/admin/teams")).body.data.find((t) => t.name === "nlp");
  assert.equal(team.members.length, 1);
  const rita = await apiAs(origin, "rita", "Member-First-Passphrase-19b");
  assert.equal((await rita("POST", "/admin/auth/password", { current_password: "Member-First-Passphrase-19b", new_password: "Member-Second-Passphrase-4c7" })).status, 200);
  const key = await rita("POST", "/admin/keys", { name: "rita's key", scopes: ["chat"], team_id: team.id });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  const chat = (model) => fetch(origin + "/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: "Bearer " + key.body.key, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hello" }] }),
  });
  assert.equal((await chat("llama")).status, 200);
  assert.equal((await chat("mistral")).status, 403, "the organization allows llama only");

  // The spend moves against both budgets (usage is written off the hot path: reopen the page
  // until it shows).
  const spendOf = async (view, row) => {
    let text = "";
    for (let attempt = 0; attempt < 50 && /^\$0\.0000/.test(text || "$0.0000"); attempt++) {
      await page.click("a[href='#/keys']");
      await page.waitForSelector("#create-key");
      await page.click(`a[href='#/${view}']`);
      await page.waitForSelector(row + " td[data-col='spend']");
      text = (await page.textContent(row + " td[data-col='spend']")).trim();
    }
    return text;
  };
  assert.match(await spendOf("teams", "tr[data-team='nlp']"), /^\$[1-9]\d*\.\d{4} of \$5$/);
  assert.match(await spendOf("orgs", "tr[data-org='Research']"), /^\$[1-9]\d*\.\d{4} of \$25$/);
  await page.screenshot({ path: join(shots, "15-organizations.png"), fullPage: true });

  // Editing the organization's budget; a second organization is created and deleted.
  await page.click("tr[data-org='Research'] button[data-action='edit']");
  await page.fill("#oe-budget", "30");
  await page.click("#oe-submit");
  await page.waitForSelector("tr[data-org='Research'] td[data-col='budget']:text('$30 monthly')");
  await page.fill("#o-name", "Temporary");
  await page.click("#o-submit");
  await page.waitForSelector("tr[data-org='Temporary']");
  await page.click("tr[data-org='Temporary'] button[data-action='delete']");
  await page.waitForSelector("tr[data-org='Temporary']", { state: "detached" });
  assert.equal(await page.locator("tr[data-org='default'] button[data-action='delete']").count(), 0, "the default organization cannot be deleted");

  // rita sees her organization's team but neither the Organizations page nor others' objects.
  const member = await newPage();
  await loginAt(member.page, origin, "rita", "Member-Second-Passphrase-4c7");
  await member.page.waitForSelector("h1:text('API keys')");
  assert.equal(await member.page.locator("a[href='#/orgs']").count(), 0, "a member of another organization sees Organizations");
  await member.page.waitForSelector("tr[data-key=\"rita's key\"]");
  assert.equal(await member.page.locator("tbody tr").count(), 1, "only her own key");
  assert.deepEqual(member.problems, [], "console errors or CSP violations as a member");
  await member.context.close();

  await page.click("#logout");
  await page.waitForURL(/\/ui\/login$/);
  assert.deepEqual(problems, [], "console errors or CSP violations on the organization pages");
  await context.close();
  for (const child of processes) child.kill("SIGTERM");
});

const ENGINES_ADMIN_PASSWORD = "Engines-Page-Admin-Passphrase-2b7f";
const fakeEngineBin = join(target, "debug", "cortex-fake-engine");

// A gateway whose llama-server is the fake engine (cortex-engines' test binary), with a models
// directory holding a stand-in GGUF file.
async function startEnginesGateway() {
  const dir = mkdtempSync(join(tmpdir(), "cortex-engines-"));
  const models = join(dir, "models");
  mkdirSync(models);
  writeFileSync(join(models, "tiny.gguf"), "GGUF not really");
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(dir, "data"), CORTEX_LISTEN: "127.0.0.1:0",
    CORTEX_LOG_FORMAT: "text", RUST_LOG: "info", CORTEX_ADMIN_PASSWORD: ENGINES_ADMIN_PASSWORD,
    CORTEX_MODELS_DIR: models, CORTEX_LLAMA_SERVER_BIN: fakeEngineBin };
  const gateway = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(gateway);
  const [, address] = await waitForLine(gateway, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  return { origin: `http://${address}`, processes: [gateway] };
}

test("engines: preview and create from the form, start, see it running and routed, read its logs, stop", async () => {
  const { origin, processes } = await startEnginesGateway();
  const { page, problems, context } = await newPage();
  await loginAt(page, origin, "admin", ENGINES_ADMIN_PASSWORD);
  await page.waitForSelector("#create-key");
  await page.click("a[href='#/engines']");
  await page.waitForSelector("#engine-form");

  await page.fill("#engine-name", "tiny");
  await page.fill("#engine-model", "tiny.gguf");
  await page.fill("#engine-served_model_name", "tiny-chat");
  await page.fill("#engine-settings", '{"ctx_size": 256}');
  await page.fill("#engine-hf_token", "hf_consoleSecretToken42");
  // A denied flag is refused with the flag named; the preview shows the command, redacted.
  await page.fill("#engine-extra_args", "--host=0.0.0.0");
  await page.click("#engine-dry-run");
  await page.waitForSelector("#engine-form .error:text('--host')");
  // The browser logs the refused request (400); that one is the point of this step.
  assert.deepEqual(problems.splice(0), ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]);
  await page.fill("#engine-extra_args", "");
  await page.click("#engine-dry-run");
  await page.waitForSelector("#engine-preview:text('tiny.gguf')");
  const preview = await page.textContent("#engine-preview");
  assert.ok(!preview.includes("hf_consoleSecretToken42"), "the preview shows the token: " + preview);
  assert.match(preview, /\[REDACTED\]/);
  await page.screenshot({ path: join(shots, "engines-preview.png"), fullPage: true });

  await page.click("#engine-form button[type=submit]");
  await page.waitForSelector("tr[data-engine='tiny'] [data-state='stopped']");
  await page.click("tr[data-engine='tiny'] [data-action='start']");
  // Live state: the page refreshes itself until the engine is running.
  await page.waitForSelector("tr[data-engine='tiny'] [data-state='running']", { timeout: 30000 });
  await page.screenshot({ path: join(shots, "engines-running.png"), fullPage: true });

  // A normal key reaches it through the gateway.
  const adminApi = await apiAs(origin, "admin", ENGINES_ADMIN_PASSWORD);
  const created = await adminApi("POST", "/admin/keys", { name: "engine", scopes: ["chat"] });
  const chat = await fetch(origin + "/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: "Bearer " + created.body.key, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "tiny-chat", messages: [{ role: "user", content: "hello" }] }),
  });
  assert.equal(chat.status, 200);

  await page.click("tr[data-engine='tiny'] [data-action='logs']");
  await page.waitForFunction(() => document.getElementById("engine-logs").textContent.length > 0);
  assert.ok(!(await page.textContent("#engine-logs")).includes("hf_consoleSecretToken42"));

  await page.click("tr[data-engine='tiny'] [data-action='stop']");
  await page.waitForSelector("tr[data-engine='tiny'] [data-state='stopped']", { timeout: 30000 });
  assert.deepEqual(problems, [], "console errors or CSP violations on the engines page");
  await context.close();
  for (const child of processes) child.kill("SIGTERM");
});

// ---- sign-in and machine identities (SPEC §19) ---------------------------------------------
// Each test starts a gateway of its own with the settings it needs; `host` is the name the
// browser uses (passkeys need a domain name, so `localhost`, never an address).

const SSO_ADMIN_PASSWORD = "Sign-In-Admin-Passphrase-6e2c";

/// A free loopback port: bound for a moment, then closed (the gateway must know its own origin
/// before it starts, for the OpenID redirect URL and the WebAuthn origin).
async function freePort() {
  const probe = createServer();
  await new Promise((done) => probe.listen(0, "127.0.0.1", done));
  const { port } = probe.address();
  await new Promise((done) => probe.close(done));
  return port;
}

async function startGateway({ env: extra = {}, config = "", host = "127.0.0.1", port: chosen } = {}) {
  const port = chosen || await freePort();
  const dir = mkdtempSync(join(tmpdir(), "cortex-signin-"));
  const file = join(dir, "cortex.toml");
  writeFileSync(file, config);
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(dir, "data"), CORTEX_CONFIG: file, CORTEX_LISTEN: `127.0.0.1:${port}`,
    CORTEX_LOG_FORMAT: "text", RUST_LOG: "info", CORTEX_ADMIN_PASSWORD: SSO_ADMIN_PASSWORD, ...extra };
  const gateway = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(gateway);
  await waitForLine(gateway, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  return { origin: `http://${host}:${port}`, gateway };
}

test("service accounts: create one, get a token with its secret, rotate it, disable it", async () => {
  const { origin, gateway } = await startGateway();
  const { page, problems, context } = await newPage();
  await loginAt(page, origin, "admin", SSO_ADMIN_PASSWORD);
  await page.waitForSelector("#create-key");
  await page.click("a[href='#/serviceAccounts']");
  await page.waitForSelector("#create-service-account");
  await page.fill("#sa-name", "ci-deploy");
  await page.selectOption("#sa-role", "operator");
  await page.fill("#sa-description", "pipeline");
  await page.click("#create-service-account-submit");
  await page.waitForSelector("#new-key-value");
  await page.waitForSelector("tr[data-account='ci-deploy'] td[data-status='active']");
  const secret = (await page.textContent("#new-key-value")).trim();
  const clientId = (await page.textContent("#new-client-id")).trim();
  assert.match(secret, /^ctxsa_[A-Za-z0-9]{43}$/);
  await page.screenshot({ path: join(shots, "16-service-account.png"), fullPage: true });

  const tokenFor = (id, key) => fetch(origin + "/oauth/token", {
    method: "POST",
    headers: { Authorization: "Basic " + Buffer.from(id + ":" + key).toString("base64"), "Content-Type": "application/x-www-form-urlencoded" },
    body: "grant_type=client_credentials",
  });
  const issued = await tokenFor(clientId, secret);
  assert.equal(issued.status, 200);
  const { access_token: token } = await issued.json();
  const providers = await fetch(origin + "/admin/providers", { headers: { Authorization: "Bearer " + token } });
  assert.equal(providers.status, 200, "an operator account reads providers");
  const users = await fetch(origin + "/admin/users", {
    method: "POST", headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: JSON.stringify({ username: "x", password: "Some-Long-Passphrase-77", role: "admin" }),
  });
  assert.equal(users.status, 403, "but does not manage users");

  // Rotation shows a new secret; the old one and its token stop working.
  await page.click("tr[data-account='ci-deploy'] button[data-action='rotate']");
  await page.waitForFunction((old) => {
    const shown = document.getElementById("new-key-value");
    return shown && shown.textContent.trim() !== old;
  }, secret);
  const rotated = (await page.textContent("#new-key-value")).trim();
  assert.equal((await tokenFor(clientId, secret)).status, 401);
  assert.equal((await fetch(origin + "/admin/providers", { headers: { Authorization: "Bearer " + token } })).status, 401);
  assert.equal((await tokenFor(clientId, rotated)).status, 200);

  await page.click("tr[data-account='ci-deploy'] button[data-action='disable']");
  await page.waitForSelector("tr[data-account='ci-deploy'] td[data-status='disabled']");
  assert.equal((await tokenFor(clientId, rotated)).status, 401);
  assert.deepEqual(problems, [], "console errors or CSP violations on the service accounts page");
  await context.close();
  gateway.kill("SIGTERM");
});

/// The test OpenID Provider (node-oidc-provider, see oidc-provider.mjs) for a gateway at
/// `origin`, with `accounts`; answers its issuer and process.
async function startIdentityProvider(origin, accounts) {
  const dir = mkdtempSync(join(tmpdir(), "cortex-idp-"));
  const file = join(dir, "provider.json");
  writeFileSync(file, JSON.stringify({
    client_id: "cortex-console", client_secret: "console-client-secret-8d2e",
    redirect_uris: [origin + "/admin/auth/oidc/callback"], post_logout_redirect_uris: [origin + "/ui/login"], accounts,
  }));
  const idp = spawn(process.execPath, [join(import.meta.dirname, "oidc-provider.mjs"), file], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(idp);
  idp.stderr.on("data", () => {});
  const [, issuer] = await waitForLine(idp, "stdout", /issuer=(http:\/\/127\.0\.0\.1:\d+)/);
  idp.stdout.on("data", () => {});
  return { issuer, idp };
}

test("single sign-on: Sign in with the provider as a new user, refused claims, and logging out at the provider", async () => {
  const port = await freePort();
  // The console on `localhost`, the provider on 127.0.0.1: two sites, as in production.
  const origin = `http://localhost:${port}`;
  const { issuer, idp } = await startIdentityProvider(origin, {
    zoe: { preferred_username: "zoe", email: "zoe@example.test", groups: ["cortex-admins"] },
    bob: { preferred_username: "bob", cortex_role: "superuser" },
  });
  const { gateway } = await startGateway({
    port, host: "localhost",
    env: {
      CORTEX_OIDC_ISSUER: issuer, CORTEX_OIDC_CLIENT_ID: "cortex-console", CORTEX_OIDC_CLIENT_SECRET: "console-client-secret-8d2e",
      CORTEX_OIDC_REDIRECT_URL: origin + "/admin/auth/oidc/callback", CORTEX_OIDC_POST_LOGOUT_REDIRECT_URL: origin + "/ui/login",
    },
    config: `[oidc]\ndisplay_name = "Test IdP"\nscopes = ["openid", "profile", "email", "groups", "cortex"]\nrole_claim = "cortex_role"\n\n` +
      `[[oidc.rules]]\nclaim = "groups"\nvalue = "cortex-admins"\nrole = "admin"\n`,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // Only the console's own pages count: the provider's are not ours to judge.
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error" && message.location().url.startsWith(origin)) problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push("page error: " + error.message));

  await page.goto(origin + "/ui/");
  await page.waitForSelector("#sso-login:text('Sign in with Test IdP')");
  await page.screenshot({ path: join(shots, "17-sso-login.png") });
  await page.click("#sso-login");
  await page.waitForURL((url) => url.href.startsWith(issuer + "/interaction/"));
  await page.fill("#login", "zoe");
  await page.click("#idp-submit");
  await page.waitForURL(origin + "/ui/");
  await page.waitForSelector("#create-key");
  assert.equal((await page.textContent("#whoami")).trim(), "zoe (admin)");
  await page.click("a[href='#/account']");
  await page.waitForSelector("#sso-account");
  assert.equal(await page.locator("#mfa-card").count(), 0, "no local second factor for a single sign-on user");
  await page.click("a[href='#/users']");
  await page.waitForSelector("tr[data-user='zoe'] td[data-col='kind']:text('single sign-on')");
  await page.screenshot({ path: join(shots, "18-sso-user.png"), fullPage: true });

  // Logging out ends the session here and, after the provider's confirmation, there.
  await page.click("#logout");
  await page.waitForSelector("#idp-logout");
  await page.click("#idp-logout");
  await page.waitForURL(origin + "/ui/login");
  await page.goto(origin + "/ui/");
  assert.equal(page.url(), origin + "/ui/login", "the session ended: the console sends the browser to the login page");

  // Claims that name a role Cortex does not have: back on the login page, with the reason.
  await page.click("#sso-login");
  await page.waitForSelector("#login");
  await page.fill("#login", "bob");
  await page.click("#idp-submit");
  await page.waitForURL(origin + "/ui/login?sso_error=unknown_role");
  assert.match(await page.textContent("#sso-error"), /names a role that does not exist here/);
  await page.screenshot({ path: join(shots, "19-sso-refused.png") });
  assert.deepEqual(problems, [], "console errors or CSP violations around single sign-on");
  await context.close();
  gateway.kill("SIGTERM");
  idp.kill("SIGTERM");
});

/// A virtual authenticator on `page` through the DevTools protocol: a platform authenticator
/// with user verification that always says yes.
async function virtualAuthenticator(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  return { cdp, authenticatorId };
}

test("passkeys: enrol one, sign in with it alone, a cloned one is refused, remove it", async () => {
  // Passkeys are bound to a domain name: the console is reached as localhost.
  const port = await freePort();
  const origin = `http://localhost:${port}`;
  const { gateway } = await startGateway({ port, host: "localhost", env: { CORTEX_WEBAUTHN_ORIGIN: origin } });
  const { page, problems, context } = await newPage();
  const { cdp, authenticatorId } = await virtualAuthenticator(context, page);
  await loginAt(page, origin, "admin", SSO_ADMIN_PASSWORD);
  await page.waitForSelector("#create-key");

  // Enrol: a named passkey, then "passkey alone".
  await page.click("a[href='#/account']");
  await page.waitForSelector("#passkeys-card #no-passkeys");
  await page.fill("#passkey-name", "laptop");
  await page.click("#passkey-add-submit");
  await page.waitForSelector("tr[data-passkey='laptop']");
  const [stored] = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;
  assert.equal(stored.rpId, "localhost");
  await page.check("#passkey-only");
  await page.waitForFunction(async () => (await (await fetch("/admin/me", { credentials: "same-origin" })).json()).passkey_only === true);
  await page.screenshot({ path: join(shots, "20-passkeys.png"), fullPage: true });

  // Log out; the password is refused now, the passkey alone signs in.
  await page.click("#logout");
  await page.waitForURL(/\/ui\/login$/);
  await page.fill("#username", "admin");
  await page.fill("#password", SSO_ADMIN_PASSWORD);
  await page.click("#login-submit");
  await page.waitForSelector("#login-error:text('signs in with a passkey')");
  await page.fill("#username", "admin");
  await page.click("#passkey-submit");
  await page.waitForURL(origin + "/ui/");
  await page.waitForSelector("#create-key");
  assert.equal((await page.textContent("#whoami")).trim(), "admin (admin)");
  const used = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0];
  assert.ok(used.signCount > stored.signCount, `the counter moved: ${stored.signCount} → ${used.signCount}`);

  // A copy of the key made before that sign-in (its counter behind) in another browser: refused.
  const thief = await browser.newContext();
  const thiefPage = await thief.newPage();
  const stolen = await virtualAuthenticator(thief, thiefPage);
  await stolen.cdp.send("WebAuthn.addCredential", { authenticatorId: stolen.authenticatorId, credential: { ...stored, signCount: stored.signCount } });
  await thiefPage.goto(origin + "/ui/login");
  await thiefPage.waitForSelector("#passkey-submit:not([hidden])");
  await thiefPage.fill("#username", "admin");
  await thiefPage.click("#passkey-submit");
  await thiefPage.waitForSelector("#login-error:text('The passkey was not accepted.')");
  assert.ok(thiefPage.url().endsWith("/ui/login"), "the clone did not sign in");
  await thief.close();
  const refused = await page.evaluate(async () => (await (await fetch("/admin/audit?action=auth.passkey_failed", { credentials: "same-origin" })).json()).data);
  assert.equal(refused[0].details.reason, "counter_replayed");

  // Remove it: "passkey alone" first, since it is the last one.
  await page.click("a[href='#/account']");
  await page.waitForSelector("tr[data-passkey='laptop']");
  await page.uncheck("#passkey-only");
  await page.waitForFunction(async () => (await (await fetch("/admin/me", { credentials: "same-origin" })).json()).passkey_only === false);
  await page.click("tr[data-passkey='laptop'] button[data-action='remove']");
  await page.waitForSelector("#no-passkeys");
  assert.deepEqual(problems, [], "console errors or CSP violations around passkeys");
  await context.close();
  gateway.kill("SIGTERM");
});

// ---- usage analytics and the chat playground (issue 31) -----------------------------------
// A gateway of its own whose fake upstream streams six tokens 150 ms apart, so that an answer
// visibly grows in the playground.

const OBS_ADMIN_PASSWORD = "Observability-Admin-Passphrase-4b7c";

async function startObservabilityGateway() {
  const fake = spawn(upstreamBin, ["127.0.0.1:0", "--chunks", "6", "--chunk-delay-ms", "150"], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(fake);
  const [url] = await waitForLine(fake, "stdout", /http:\/\/127\.0\.0\.1:\d+\/v1/);
  const dir = mkdtempSync(join(tmpdir(), "cortex-observability-"));
  const config = join(dir, "cortex.toml");
  writeFileSync(config, `[[providers]]\nname = "fake"\nbase_url = "${url}"\n\n[[models]]\nname = "llama"\nprovider = "fake"\n` +
    `input_price_per_mtok = 2.0\noutput_price_per_mtok = 4.0\n`);
  const env = { PATH: process.env.PATH, CORTEX_DATA_DIR: join(dir, "data"), CORTEX_CONFIG: config, CORTEX_LISTEN: "127.0.0.1:0",
    CORTEX_LOG_FORMAT: "text", RUST_LOG: "info", CORTEX_ADMIN_PASSWORD: OBS_ADMIN_PASSWORD };
  const gateway = spawn(cortexBin, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(gateway);
  const [, address] = await waitForLine(gateway, "stderr", /cortex listening address=(127\.0\.0\.1:\d+)/);
  return { origin: `http://${address}`, processes: [fake, gateway] };
}

/// A chat key made through the admin API, usable once the gateway's key cache has it.
async function chatKey(origin, as) {
  const created = await as("POST", "/admin/keys", { name: "console-observability", scopes: ["chat"] });
  assert.equal(created.status, 201);
  const key = created.body.key;
  for (let i = 0; i < 100; i++) {
    const probe = await fetch(origin + "/v1/models", { headers: { Authorization: "Bearer " + key } });
    if (probe.status === 200) return key;
    await new Promise((done) => setTimeout(done, 50));
  }
  throw new Error("the new key never worked");
}

async function chat(origin, key, stream) {
  const response = await fetch(origin + "/v1/chat/completions", {
    method: "POST", headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "llama", stream, messages: [{ role: "user", content: "hello" }] }),
  });
  assert.equal(response.status, 200);
  await response.text();
}

test("analytics dashboard: charts of requests, tokens, cost, latency and TTFT from real traffic, filters, CSV download", async () => {
  const gateway = await startObservabilityGateway();
  const as = await apiAs(gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  const key = await chatKey(gateway.origin, as);
  for (const stream of [false, false, false, true, true]) await chat(gateway.origin, key, stream);
  // Usage rows are written off the hot path: wait for all five.
  let series;
  for (let i = 0; i < 100; i++) {
    series = await as("GET", "/admin/usage/series?bucket=hour&group_by=none");
    if (series.body.data.reduce((n, p) => n + p.requests, 0) === 5) break;
    await new Promise((done) => setTimeout(done, 100));
  }
  const expected = series.body.data.reduce((t, p) => ({
    requests: t.requests + p.requests, tokens: t.tokens + p.prompt_tokens + p.completion_tokens,
  }), { requests: 0, tokens: 0 });
  assert.equal(expected.requests, 5);

  const { page, problems, context } = await newPage();
  await loginAt(page, gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  await page.waitForSelector("h1:text('API keys')");
  await page.click("a[href='#/analytics']");
  await page.waitForSelector("#an-chart-requests");
  assert.equal(await page.textContent("#an-total-requests"), "5");
  assert.equal(await page.textContent("#an-total-tokens"), expected.tokens.toLocaleString("en-US"));
  assert.match(await page.textContent("#an-worst-latency"), /^\d+ ms$/);
  assert.match(await page.textContent("#an-worst-ttft"), /^\d+ ms$/, "two streams give a time to first token");
  // Every chart has its line and points: requests, tokens, cost, latency, and TTFT (streams).
  for (const id of ["requests", "tokens", "cost", "latency", "ttft"]) {
    const chart = `#an-chart-${id}`;
    const points = Number(await page.getAttribute(chart, "data-points"));
    assert.ok(points >= 1, `${chart} draws its data (${points} points)`);
    assert.equal(await page.locator(`${chart} path.series[data-series='llama']`).count(), 1, `${chart} has the llama line`);
  }
  // The request chart's line peaks at the five requests: its highest point sits on the top axis.
  assert.equal(await page.textContent("#an-chart-requests text.axis >> nth=2"), "5");
  await page.screenshot({ path: join(shots, "16-analytics.png"), fullPage: true });

  // Split by provider: the legend names it.
  await page.selectOption("#an-group", "provider");
  await page.click("#an-apply");
  await page.waitForSelector("#an-chart-requests path.series[data-series='fake']");
  // A model filter that matches nothing empties the period.
  await page.fill("#an-model", "no-such-model");
  await page.click("#an-apply");
  await page.waitForSelector("#an-empty");
  assert.equal(await page.textContent("#an-total-requests"), "0");
  await page.fill("#an-model", "");
  await page.click("#an-apply");
  await page.waitForSelector("#an-chart-requests");

  // The CSV download: the header and one line per request.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#an-csv")]);
  assert.equal(download.suggestedFilename(), "cortex-usage.csv");
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  assert.ok(csv[0].startsWith("created_at,request_id,org_id,team_id,key_id,user_id,model,provider"), csv[0]);
  assert.equal(csv.length, 6, csv.join("\n"));
  assert.ok(csv.slice(1).every((line) => line.includes(",llama,fake,chat,200,")), csv.join("\n"));
  assert.deepEqual(problems, [], "console errors or CSP violations");
  await context.close();
  for (const child of gateway.processes) child.kill("SIGTERM");
});

test("playground: a streamed answer appears token by token through the gateway, with TTFT and tokens per second", async () => {
  const gateway = await startObservabilityGateway();
  const as = await apiAs(gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  const key = await chatKey(gateway.origin, as);
  const { page, problems, context } = await newPage();
  await loginAt(page, gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  await page.waitForSelector("h1:text('API keys')");
  await page.click("a[href='#/playground']");
  await page.waitForSelector("#pg-form");
  await page.fill("#pg-key", key);
  await page.fill("#pg-model", "llama");
  await page.fill("#pg-input", "Tell me something in six tokens");
  await page.click("#pg-send");
  // Watch the answer grow: six tokens 150 ms apart are seen one after another.
  const seen = await page.evaluate(async () => {
    const lengths = [];
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      const answer = document.getElementById("pg-answer-1");
      if (answer) {
        const length = answer.textContent.length;
        if (lengths[lengths.length - 1] !== length) lengths.push(length);
        if (answer.dataset.state === "done") break;
      }
      await new Promise((done) => setTimeout(done, 20));
    }
    return lengths;
  });
  assert.ok(seen.length >= 4, `the answer grew in steps: ${seen}`);
  assert.ok(seen.every((n, i) => i === 0 || n > seen[i - 1]), `only ever grew: ${seen}`);
  assert.equal((await page.textContent("#pg-answer-1")).trim(), "tok0 tok1 tok2 tok3 tok4 tok5");
  assert.match(await page.textContent("#pg-ttft"), /^\d+ ms$/);
  assert.match(await page.textContent("#pg-tps"), /^\d+(\.\d)?$/);
  assert.equal(await page.textContent("#pg-tokens"), "6");
  // The first token came before the answer ended: TTFT is below the six tokens' 900 ms.
  assert.ok(Number((await page.textContent("#pg-ttft")).split(" ")[0]) < 900);
  // The key is used, never shown: it is in no text of the page.
  assert.ok(!(await page.evaluate(() => document.body.innerText)).includes(key));
  await page.screenshot({ path: join(shots, "17-playground.png"), fullPage: true });
  // The request went through the gateway's pipeline: one streamed usage row with its TTFT.
  let rows = [];
  for (let i = 0; i < 100 && rows.length === 0; i++) {
    rows = (await as("GET", "/admin/usage")).body.data;
    if (!rows.length) await new Promise((done) => setTimeout(done, 100));
  }
  assert.equal(rows.length, 1);
  assert.equal(rows[0].completion_tokens, 6);
  assert.ok(rows[0].ttft_ms >= 0, JSON.stringify(rows[0]));
  // A wrong key is refused by the gateway and said so.
  await page.fill("#pg-key", "ctx_wrong_key");
  await page.fill("#pg-input", "again");
  await page.click("#pg-send");
  await page.waitForSelector("p.error:text('The API key is not valid')");
  assert.deepEqual(problems.filter((p) => !/status of 401/.test(p)), [], "console errors or CSP violations");
  await context.close();
  for (const child of gateway.processes) child.kill("SIGTERM");
});

// ---- gateway policies (SPEC §21, issue 32) -------------------------------------------------

test("policies: create a secrets→block policy from the form, a bad pattern refused by name, a leaked key refused, the event listed", async () => {
  const gateway = await startObservabilityGateway();
  const as = await apiAs(gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  const key = await chatKey(gateway.origin, as);
  const { page, problems, context } = await newPage();
  await loginAt(page, gateway.origin, "admin", OBS_ADMIN_PASSWORD);
  await page.waitForSelector("h1:text('API keys')");
  await page.click("a[href='#/policies']");
  await page.waitForSelector("#policy-form");
  await page.waitForSelector("#no-policies");

  // A custom pattern that does not compile: the API's message names the field, shown as is.
  await page.click("#policy-add-rule");
  await page.selectOption("fieldset.rule select[name=detector]", "regex");
  await page.fill("fieldset.rule input[name=name]", "ticket");
  await page.fill("fieldset.rule input[name=pattern]", "(");
  await page.click("#policy-submit");
  await page.waitForSelector("#policy-form .error:text('guardrails.rules[0].detector.pattern does not compile')");
  assert.deepEqual(problems.splice(0), ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]);
  assert.equal((await as("GET", "/admin/policies")).body.data.length, 0, "the refused policy was stored");

  // The same rule row switched to secrets→block, and a second rule (personal data, two kinds).
  await page.selectOption("fieldset.rule select[name=detector]", "secrets");
  assert.equal(await page.locator("fieldset.rule input[name=pattern]").count(), 0, "the pattern field stays after switching");
  await page.selectOption("fieldset.rule select[name=action]", "block");
  await page.click("#policy-add-rule");
  const second = page.locator("fieldset.rule").nth(1);
  await second.locator("select[name=detector]").selectOption("pii");
  await second.locator("input[name=kind][value=email]").check();
  await second.locator("input[name=kind][value=us_ssn]").check();
  await second.locator("select[name=action]").selectOption("redact");
  await page.fill("#policy-ttl", "300");
  await page.click("#policy-submit");
  await page.waitForSelector("tr[data-scope='organization'] td[data-col='rules']");
  assert.equal(await page.textContent("tr[data-scope='organization'] td[data-col='rules']"), "secrets→block, pii (email, us_ssn)→redact");
  assert.equal(await page.textContent("tr[data-scope='organization'] td[data-col='cache']"), "300 s");
  const stored = (await as("GET", "/admin/policies")).body.data;
  assert.equal(stored.length, 1);
  assert.deepEqual(stored[0].guardrails, { rules: [
    { detector: { type: "secrets" }, action: "block" },
    { detector: { type: "pii", kinds: ["email", "us_ssn"] }, action: "redact" },
  ], scan_responses: true });

  // A request carrying a cloud key (assembled here, so no scanner flags this file) is refused
  // before it reaches the provider, naming the detector and never the key.
  const leaked = "AKIA" + "IOSFODNN7" + "EXAMPLE";
  const refused = await fetch(gateway.origin + "/v1/chat/completions", {
    method: "POST", headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "llama", messages: [{ role: "user", content: "deploy with " + leaked } ] }),
  });
  assert.equal(refused.status, 400);
  const answer = await refused.text();
  assert.equal(JSON.parse(answer).error.code, "guardrail_blocked");
  assert.ok(!answer.includes(leaked), "the refusal echoes the key: " + answer);

  // The event is in the table: action, detector and label, with no text of the request. Events
  // are written through a queue, off the request path: reopen the page until it is there.
  for (let i = 0; i < 50; i++) {
    await page.reload();
    await page.waitForSelector("#guardrail-events > *");
    if (await page.locator("#guardrail-events tr[data-event]").count()) break;
    await new Promise((done) => setTimeout(done, 100));
  }
  const row = page.locator("#guardrail-events tr[data-event]").first();
  assert.equal(await row.locator("td[data-col='action']").textContent(), "block");
  assert.equal(await row.locator("td[data-col='detector']").textContent(), "secrets");
  assert.equal(await row.locator("td[data-col='label']").textContent(), "aws_access_key");
  assert.match(await row.textContent(), /request/);
  assert.match(await row.textContent(), /llama/);
  assert.ok(!(await page.evaluate(() => document.body.innerText)).includes("IOSFODNN7"), "the page shows the matched text");
  await page.screenshot({ path: join(shots, "18-policies.png"), fullPage: true });

  // The policy caches for 300 s: a clean request twice is a miss, then a hit; the cache card
  // counts it, and a purge from the page empties the organization's entries.
  const ask = async () => (await fetch(gateway.origin + "/v1/chat/completions", {
    method: "POST", headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "llama", messages: [{ role: "user", content: "hello cache" }] }),
  })).headers.get("x-cortex-cache");
  assert.equal(await ask(), "miss");
  assert.equal(await ask(), "hit");
  await page.reload();
  await page.waitForSelector("#cache-stats [data-stat='hits']");
  assert.equal(await page.textContent("#cache-stats [data-stat='entries']"), "1");
  assert.ok(Number(await page.textContent("#cache-stats [data-stat='hits']")) >= 1);
  await page.click("#cache-purge");
  await page.waitForSelector("#cache-stats [data-stat='entries']:text('0')");
  assert.equal(await ask(), "miss");

  // Delete: the list is empty again and the same request goes through.
  await page.click("tr[data-scope='organization'] [data-action='delete']");
  await page.waitForSelector("#no-policies");
  assert.equal((await as("GET", "/admin/policies")).body.data.length, 0);
  assert.deepEqual(problems, [], "console errors or CSP violations on the policies page");
  await context.close();
  for (const child of gateway.processes) child.kill("SIGTERM");
});
