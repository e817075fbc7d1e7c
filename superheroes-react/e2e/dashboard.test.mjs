// Browser test of the live dashboard (/dashboard) against the REAL phx-threads server: the
// page joins admin:stats (allowed: Chromium connects from loopback), and its connections chart
// rises when 20 phoenix.js clients connect from Node and falls when they leave.
//
// With E2E_BASE_URL (and E2E_SOCKET_URL) set, it runs against a server that is already up,
// e.g. behind nginx over https/wss (.ci/nginx-tls.sh), and passes E2E_ADMIN_TOKEN if given.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { launchBrowser, requireDist, screenshot, serverBinary, startServer, tempDir, watchConsole } from "./helpers.mjs";

const CLIENTS = 20;
const CHART_TIMEOUT = 15_000;

async function connectionsShown(page) {
  const text = await page.getByTestId("connections-value").textContent({ timeout: 5_000 });
  return Number(text);
}

async function waitForConnections(page, predicate, what) {
  const deadline = Date.now() + CHART_TIMEOUT;
  let shown = NaN;
  while (Date.now() < deadline) {
    shown = await connectionsShown(page);
    if (predicate(shown)) return shown;
    await page.waitForTimeout(200);
  }
  throw new Error(`connections chart never showed ${what} within ${CHART_TIMEOUT} ms (shows ${shown})`);
}

/** `n` phoenix.js sockets from Node, each joined to a room; resolves once all joined. */
async function connectClients(socketUrl, n) {
  const sockets = [];
  const joins = [];
  for (let i = 0; i < n; i++) {
    const socket = new Socket(socketUrl, { transport: WebSocket, params: { user_id: `dash-${i}` } });
    socket.connect();
    sockets.push(socket);
    joins.push(
      new Promise((resolve, reject) => {
        socket.channel("room:dashboard", {}).join().receive("ok", resolve).receive("error", reject).receive("timeout", reject);
      }),
    );
  }
  await Promise.all(joins);
  return sockets;
}

describe("live dashboard", { timeout: 300_000 }, () => {
  let server;
  let dataDir;
  let browser;
  let baseUrl = process.env.E2E_BASE_URL;
  let socketUrl = process.env.E2E_SOCKET_URL;

  before(async () => {
    requireDist();
    if (!baseUrl) {
      serverBinary();
      dataDir = tempDir("phx-e2e-dashboard-");
      server = await startServer({ dataDir });
      baseUrl = server.httpUrl;
      socketUrl = `ws://127.0.0.1:${server.wsPort}/socket`;
    }
    browser = await launchBrowser();
  }, { timeout: 180_000 });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop().catch((err) => console.error(String(err)));
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }, { timeout: 120_000 });

  test("the connections chart rises when clients connect and falls when they leave", async () => {
    const page = await browser.context.newPage();
    const consoleWatch = watchConsole(page, "dashboard");
    const token = process.env.E2E_ADMIN_TOKEN ? `?token=${encodeURIComponent(process.env.E2E_ADMIN_TOKEN)}` : "";
    await page.goto(`${baseUrl}/dashboard${token}`, { waitUntil: "domcontentloaded", timeout: 15_000 });
    await page.locator('[data-testid="dash-status"]:text-is("live")').waitFor({ timeout: CHART_TIMEOUT });
    // The page's own socket is one connection.
    const before = await waitForConnections(page, (n) => n >= 1, "at least the page itself");
    const lineBefore = await page.getByTestId("connections-line").getAttribute("points");

    const sockets = await connectClients(socketUrl, CLIENTS);
    const during = await waitForConnections(page, (n) => n >= before + CLIENTS, `${before + CLIENTS} or more`);
    const lineDuring = await page.getByTestId("connections-line").getAttribute("points");
    assert.notEqual(lineDuring, lineBefore, "the chart's line moved");
    const channels = Number(await page.getByTestId("channels-value").textContent());
    assert.ok(channels >= CLIENTS, `channels chart shows ${channels}`);
    await screenshot(page, "dashboard.png");

    for (const socket of sockets) socket.disconnect();
    await waitForConnections(page, (n) => n <= during - CLIENTS, `${during - CLIENTS} or fewer`);
    consoleWatch.assertClean();
    await page.close();
  });
});
