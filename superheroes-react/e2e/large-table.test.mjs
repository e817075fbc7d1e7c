// A roster of several megabytes (issue #11): the hydrate used to count as a
// slow consumer on the server, so the page looped join -> cut -> reconnect and
// never showed a row. Now it must arrive on a normal connection, the page must
// render one page of rows rather than thousands, and stay live.

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
  waitForBadge,
  within,
} from "./helpers.mjs";

const HEROES = 2_000; // about 1.4 KB of JSON each at the longest the API allows
const PARALLEL = 8;
const PAGE_SIZE = 100; // src/paging.js

/** The longest fields the API accepts, in multi-byte characters. */
function longest(i) {
  return { name: `${"🦸".repeat(90)} ${i}`, location: "🌆".repeat(100), power: "⚡".repeat(200) };
}

describe("a roster of several megabytes", { timeout: 600_000 }, () => {
  let server;
  let dataDir;
  let api;
  let browser;

  before(async () => {
    serverBinary();
    requireDist();
    dataDir = tempDir("phx-e2e-large-");
    // 2,000 creates from one address: over the default REST write budget (issue #14), which
    // this test is not about. The server inherits the environment.
    process.env.PHX_REST_WRITE_RATE = "0";
    server = await startServer({ dataDir });
    api = apiClient(server.httpUrl);
    browser = await launchBrowser();
    for (let i = 0; i < HEROES; i += PARALLEL) {
      await Promise.all(Array.from({ length: PARALLEL }, (_, k) => api.create(longest(i + k))));
    }
  }, { timeout: 300_000 });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop().catch((err) => console.error(String(err)));
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }, { timeout: 120_000 });

  test("hydrates, shows one page at a time, and stays live", async () => {
    const all = await api.list();
    assert.ok(all.length >= HEROES, `${all.length} heroes`);
    const { page, console: consoleWatch } = await openApp(browser.context, `${server.httpUrl}/`, "large");
    await waitForBadge(page, "live", 20_000);
    await page.locator(`[data-testid="hero-count"]:text-is("(${all.length})")`).waitFor({ timeout: 15_000 });
    assert.equal(await page.locator('tbody [data-testid^="hero-row-"]').count(), PAGE_SIZE);
    await rowLocator(page, all[0].id).waitFor({ timeout: 5_000 });

    await page.getByTestId("pager-next").click();
    await rowLocator(page, all[PAGE_SIZE].id).waitFor({ timeout: 5_000 });
    assert.match(await page.getByTestId("pager-status").textContent(), /^Page 2 of \d+/);

    // Still live: a change made now shows up, on the page it belongs to.
    const t0 = Date.now();
    const edited = await api.update(all[PAGE_SIZE + 1].id, { location: "Moved" });
    await within(t0, 2_000, "update visible", (timeout) =>
      rowLocator(page, edited.id).locator('[data-testid="hero-location"]:text-is("Moved")').waitFor({ timeout }),
    );
    await page.locator(`[data-testid="hero-count"]:text-is("(${all.length})")`).waitFor({ timeout: 5_000 });
    const history = await page.evaluate(() => window.__badgeHistory.slice());
    assert.equal(history.filter((s) => s === "live").length, 1, `never reconnected: ${JSON.stringify(history)}`);
    consoleWatch.assertClean();
  });
});
