// Shared helpers for the browser tests: start/stop the real phx-threads
// server, drive Debian's Chromium through playwright-core, watch consoles,
// and read the roster table. Every wait has an explicit deadline.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

export const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_ROOT = path.resolve(APP_DIR, "..");
export const DIST_DIR = path.join(APP_DIR, "dist");
export const ARTIFACTS_DIR = path.join(APP_DIR, "e2e", "artifacts");
export const STATUSES = ["connecting", "live", "reconnecting", "offline"];

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

// ---------------------------------------------------------------------------
// Preconditions: fail loudly (never skip) when something is missing.

export function serverBinary() {
  const bin = process.env.PHX_THREADS_BIN
    ? path.resolve(process.env.PHX_THREADS_BIN)
    : path.join(REPO_ROOT, "target", "release", "phx-threads");
  if (!fs.existsSync(bin)) {
    const message = [
      "",
      "=".repeat(78),
      `phx-threads server binary not found: ${bin}`,
      "The browser tests run against the real Rust server. Build it first:",
      `    (cd ${REPO_ROOT} && cargo build --release)`,
      "or set PHX_THREADS_BIN to the binary to test.",
      "=".repeat(78),
      "",
    ].join("\n");
    console.error(message);
    throw new Error(`phx-threads binary not found at ${bin} (run \`cargo build --release\` at the repo root)`);
  }
  return bin;
}

export function requireDist() {
  if (!fs.existsSync(path.join(DIST_DIR, "index.html"))) {
    throw new Error(`${DIST_DIR}/index.html missing: run \`npm run build\` first (npm run test:e2e does)`);
  }
}

export function requireChromium() {
  if (!fs.existsSync(CHROMIUM_PATH)) {
    throw new Error(`Chromium not found at ${CHROMIUM_PATH}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
}

export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  // As root the server's private PostgreSQL runs as the postgres user, which must reach it.
  fs.chmodSync(dir, 0o755);
  return dir;
}

// ---------------------------------------------------------------------------
// The server under test.

const READY_LINE = /^phx-threads listening ws=(\S+):(\d+) http=(\S+):(\d+)\s*$/;
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Start `phx-threads serve` and wait (with a deadline) for its ready line.
 * @param {{dataDir: string, wsPort?: number, httpPort?: number, readyTimeoutMs?: number}} opts
 */
export async function startServer({ dataDir, wsPort = 0, httpPort = 0, readyTimeoutMs = 90_000 }) {
  const bin = serverBinary();
  const args = [
    "serve",
    "--ws-addr", `127.0.0.1:${wsPort}`,
    "--http-addr", `127.0.0.1:${httpPort}`,
    "--static-dir", DIST_DIR,
    "--data-dir", dataDir,
  ];
  if (process.env.DATABASE_URL) args.push("--database-url", process.env.DATABASE_URL);

  const child = spawn(bin, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });

  const logTail = [];
  const remember = (stream) => (line) => {
    logTail.push(`[${stream}] ${line}`);
    if (logTail.length > 200) logTail.shift();
    if (process.env.E2E_SERVER_LOG) process.stderr.write(`[phx-threads ${stream}] ${line}\n`);
  };
  readline.createInterface({ input: child.stderr }).on("line", remember("stderr"));
  const stdout = readline.createInterface({ input: child.stdout });

  const tail = () => logTail.slice(-40).join("\n") || "(no output)";
  let timer;
  const ready = await Promise.race([
    new Promise((resolve) => {
      stdout.on("line", (line) => {
        const m = READY_LINE.exec(line);
        if (m) resolve({ ws: { host: m[1], port: Number(m[2]) }, http: { host: m[3], port: Number(m[4]) } });
        else remember("stdout")(line);
      });
    }),
    exited.then(({ code, signal }) => {
      throw new Error(`phx-threads exited before it was ready (code ${code}, signal ${signal}). Output:\n${tail()}`);
    }),
    new Promise((_, reject) => {
      timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`phx-threads did not print its ready line within ${readyTimeoutMs} ms. Output:\n${tail()}`));
      }, readyTimeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));

  return {
    ...ready,
    wsPort: ready.ws.port,
    httpPort: ready.http.port,
    httpUrl: `http://${ready.http.host}:${ready.http.port}`,
    pid: child.pid,
    exited,
    tail,
    /** SIGTERM, then wait for exit (SIGKILL after the deadline). Resolves to {code, signal}. */
    async stop({ timeoutMs = 30_000 } = {}) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill("SIGTERM");
      let t;
      const result = await Promise.race([
        exited,
        new Promise((resolve) => {
          t = setTimeout(() => resolve(null), timeoutMs);
        }),
      ]).finally(() => clearTimeout(t));
      if (result === null) {
        child.kill("SIGKILL");
        await exited;
        throw new Error(`phx-threads did not exit within ${timeoutMs} ms of SIGTERM. Output:\n${tail()}`);
      }
      return result;
    },
  };
}

// ---------------------------------------------------------------------------
// REST client used by the tests (independent from the app's own client).

export function apiClient(baseUrl) {
  async function call(method, url, body, expectStatus) {
    const res = await fetch(`${baseUrl}${url}`, {
      method,
      headers: { accept: "application/json", ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    assert.equal(res.status, expectStatus, `${method} ${url} -> ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }
  return {
    list: async () => (await call("GET", "/api/superheroes", null, 200)).data,
    create: async (superhero) => (await call("POST", "/api/superheroes", { superhero }, 201)).data,
    update: async (id, superhero) => (await call("PUT", `/api/superheroes/${id}`, { superhero }, 200)).data,
    remove: async (id) => call("DELETE", `/api/superheroes/${id}`, null, 204),
  };
}

/** The part of a hero that the table shows, sorted by id. */
export function visible(heroes) {
  return heroes
    .map(({ id, name, location, power }) => ({ id, name, location, power }))
    .sort((a, b) => a.id - b.id);
}

// ---------------------------------------------------------------------------
// Browser.

export async function launchBrowser() {
  requireChromium();
  const userDataDir = tempDir("phx-e2e-chromium-");
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 800 },
    timeout: 60_000,
    // A self-signed certificate in the TLS run behind nginx (.ci/nginx-tls.sh).
    ignoreHTTPSErrors: Boolean(process.env.E2E_BASE_URL),
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

// Records every text the connection badge shows, so a short-lived state
// cannot be missed by polling.
const BADGE_RECORDER = () => {
  window.__badgeHistory = [];
  const record = () => {
    const el = document.querySelector('[data-testid="connection-state"]');
    const text = el ? el.textContent : null;
    const h = window.__badgeHistory;
    if (text !== null && h[h.length - 1] !== text) h.push(text);
  };
  new MutationObserver(record).observe(document, { subtree: true, childList: true, characterData: true });
};

/**
 * Collect console errors/warnings and uncaught exceptions of a page.
 * Tests may declare expected ones (e.g. WebSocket failures while the server
 * is down) with allow(regex).
 */
export function watchConsole(page, label) {
  const seen = [];
  const allowed = [];
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      const loc = msg.location();
      seen.push({ type: msg.type(), text: msg.text(), where: loc && loc.url ? `${loc.url}:${loc.lineNumber}` : "" });
    }
  });
  page.on("pageerror", (err) => seen.push({ type: "pageerror", text: String(err && err.stack ? err.stack : err) }));
  return {
    allow(regex) {
      allowed.push(regex);
    },
    all: () => seen.slice(),
    unexpected: () => seen.filter((m) => !allowed.some((r) => r.test(m.text))),
    assertClean() {
      const bad = this.unexpected();
      assert.deepEqual(bad, [], `${label}: unexpected console errors/warnings:\n${bad.map((m) => `  [${m.type}] ${m.text} ${m.where || ""}`).join("\n")}`);
    },
  };
}

export async function openApp(context, url, label) {
  const page = await context.newPage();
  const consoleWatch = watchConsole(page, label);
  await page.addInitScript(BADGE_RECORDER);
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 15_000 });
  return { page, console: consoleWatch };
}

export async function badgeHistory(page) {
  return page.evaluate(() => window.__badgeHistory.slice());
}

export async function waitForBadge(page, status, timeout) {
  try {
    await page.locator(`[data-testid="connection-state"]:text-is("${status}")`).waitFor({ timeout });
  } catch (err) {
    const current = await page.getByTestId("connection-state").textContent().catch(() => "?");
    throw new Error(`badge did not show "${status}" within ${timeout} ms (shows "${current}", history ${JSON.stringify(await badgeHistory(page).catch(() => []))})`, { cause: err });
  }
}

/** Wait until the badge has shown `status` at some point (recorded history). */
export async function waitForBadgeHistory(page, status, timeout) {
  try {
    await page.waitForFunction((s) => window.__badgeHistory.includes(s), status, { timeout });
  } catch (err) {
    throw new Error(`badge never showed "${status}" within ${timeout} ms (history ${JSON.stringify(await badgeHistory(page).catch(() => []))})`, { cause: err });
  }
}

export async function readTable(page) {
  return page.$$eval('tbody [data-testid^="hero-row-"]', (rows) =>
    rows.map((row) => ({
      id: Number(row.dataset.testid.slice("hero-row-".length)),
      name: row.querySelector('[data-testid="hero-name"]').textContent,
      location: row.querySelector('[data-testid="hero-location"]').textContent,
      power: row.querySelector('[data-testid="hero-power"]').textContent,
    })),
  );
}

/** Wait until the table shows exactly `expected` (in id order). */
export async function waitForTable(page, expected, timeout) {
  try {
    await page.waitForFunction(
      (want) => {
        const rows = [...document.querySelectorAll('tbody [data-testid^="hero-row-"]')].map((row) => ({
          id: Number(row.dataset.testid.slice("hero-row-".length)),
          name: row.querySelector('[data-testid="hero-name"]')?.textContent,
          location: row.querySelector('[data-testid="hero-location"]')?.textContent,
          power: row.querySelector('[data-testid="hero-power"]')?.textContent,
        }));
        return JSON.stringify(rows) === JSON.stringify(want);
      },
      expected,
      { timeout },
    );
  } catch (err) {
    const actual = await readTable(page).catch(() => "(unreadable)");
    assert.deepEqual(actual, expected, `table did not match within ${timeout} ms`);
    throw err;
  }
}

export function rowLocator(page, id) {
  return page.getByTestId(`hero-row-${id}`);
}

/** Wait for a locator state with a deadline measured from `startedAt`. */
export async function within(startedAt, budgetMs, what, fn) {
  const remaining = Math.max(1, startedAt + budgetMs - Date.now());
  try {
    await fn(remaining);
  } catch (err) {
    throw new Error(`${what}: not within ${budgetMs} ms (${Date.now() - startedAt} ms elapsed)`, { cause: err });
  }
}

export function uniqueName(prefix) {
  return `${prefix} ${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}

export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const file = path.join(ARTIFACTS_DIR, name);
  await page.screenshot({ path: file, fullPage: true, timeout: 15_000 });
  return file;
}
