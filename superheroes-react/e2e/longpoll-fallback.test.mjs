// Browser test: the React client behind something that breaks WebSockets. An init script makes
// every WebSocket the page opens go to a path where the server refuses the upgrade (404), as a
// proxy that cannot pass WebSockets does; phoenix.js (longPollFallbackMs in src/main.jsx) then
// falls back to LongPoll, and the page must still go live and show REST changes without reload.
//   npm run test:e2e   (needs target/release/phx-threads and /usr/bin/chromium)

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import {
  apiClient,
  launchBrowser,
  openApp,
  requireDist,
  rowLocator,
  serverBinary,
  startServer,
  tempDir,
  uniqueName,
  visible,
  waitForBadge,
  waitForTable,
  within,
} from "./helpers.mjs";

const LIVE_TIMEOUT = 20_000; // includes the 2.5 s fallback delay
const PUSH_BUDGET = 2_000; // REST change -> visible in the page (one poll round trip)

// Sends every WebSocket of the page to a path the server refuses.
const BREAK_WEBSOCKETS = () => {
  const Real = window.WebSocket;
  window.__blockedWebSockets = 0;
  window.WebSocket = class extends Real {
    constructor(url, protocols) {
      window.__blockedWebSockets += 1;
      super(String(url).replace("/socket/websocket", "/blocked-by-proxy/websocket"), protocols);
    }
  };
};

describe("superheroes-react falls back to LongPoll when WebSockets are blocked", { timeout: 300_000 }, () => {
  let server;
  let dataDir;
  let api;
  let browser;
  const created = [];

  before(async () => {
    serverBinary();
    requireDist();
    dataDir = tempDir("phx-e2e-lp-data-");
    server = await startServer({ dataDir });
    api = apiClient(server.httpUrl);
    browser = await launchBrowser();
    await browser.context.addInitScript(BREAK_WEBSOCKETS);
  }, { timeout: 180_000 });

  after(async () => {
    for (const id of created) await api.remove(id).catch(() => {});
    if (browser) await browser.close();
    if (server) await server.stop().catch((err) => console.error(String(err)));
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }, { timeout: 120_000 });

  test("goes live over LongPoll and shows a REST create, update and delete", async () => {
    const existing = await api.create({ name: uniqueName("Rogue"), location: "Mississippi", power: "absorption" });
    created.push(existing.id);
    const { page, console: consoleWatch } = await openApp(browser.context, `${server.httpUrl}/`, "blocked ws");
    consoleWatch.allow(/WebSocket connection to .*blocked-by-proxy.* failed/i);
    const polls = [];
    page.on("request", (req) => req.url().includes("/socket/longpoll") && polls.push(req.url()));
    await waitForBadge(page, "live", LIVE_TIMEOUT);
    assert.ok(await page.evaluate(() => window.__blockedWebSockets) >= 1, "a WebSocket was tried first");
    assert.ok(polls.length > 0, "the page talks LongPoll");
    await waitForTable(page, visible(await api.list()), 5_000);

    const name = uniqueName("Gambit");
    let t0 = Date.now();
    const hero = await api.create({ name, location: "New Orleans", power: "kinetic charge" });
    created.push(hero.id);
    const row = rowLocator(page, hero.id);
    await within(t0, PUSH_BUDGET, "created row visible", (timeout) => row.waitFor({ timeout }));
    assert.equal(await row.getByTestId("hero-name").textContent(), name);

    t0 = Date.now();
    await api.update(hero.id, { power: "kinetic charge and cards" });
    await within(t0, PUSH_BUDGET, "updated row visible", (timeout) =>
      row.locator('[data-testid="hero-power"]:text-is("kinetic charge and cards")').waitFor({ timeout }),
    );

    t0 = Date.now();
    await api.remove(hero.id);
    await within(t0, PUSH_BUDGET, "deleted row gone", (timeout) => row.waitFor({ state: "detached", timeout }));
    consoleWatch.assertClean();
    await page.close();
  });
});
