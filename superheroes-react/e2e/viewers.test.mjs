// Browser test of the live viewer count (Phoenix Presence through the official phoenix
// `Presence` class) against the REAL phx-threads server: two pages each show "2 viewing",
// and the one left shows "1 viewing" once the other closes.

import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import { launchBrowser, openApp, requireDist, serverBinary, startServer, tempDir, waitForBadge } from "./helpers.mjs";

const LIVE_TIMEOUT = 20_000;
const PRESENCE_TIMEOUT = 5_000;

async function waitForViewers(page, text) {
  try {
    await page.locator(`[data-testid="viewer-count"]:text-is("${text}")`).waitFor({ timeout: PRESENCE_TIMEOUT });
  } catch (err) {
    const shown = await page.getByTestId("viewer-count").textContent({ timeout: 500 }).catch(() => "(nothing)");
    throw new Error(`viewer count did not show "${text}" within ${PRESENCE_TIMEOUT} ms (shows ${shown})`, { cause: err });
  }
}

describe("viewer count", { timeout: 300_000 }, () => {
  let server;
  let dataDir;
  let browser;

  before(async () => {
    serverBinary();
    requireDist();
    dataDir = tempDir("phx-e2e-viewers-");
    server = await startServer({ dataDir });
    browser = await launchBrowser();
  }, { timeout: 180_000 });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop().catch((err) => console.error(String(err)));
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }, { timeout: 120_000 });

  test("two pages each show 2 viewing, then 1 viewing after one closes", async () => {
    const a = await openApp(browser.context, `${server.httpUrl}/`, "viewer A");
    await waitForBadge(a.page, "live", LIVE_TIMEOUT);
    await waitForViewers(a.page, "1 viewing");
    const b = await openApp(browser.context, `${server.httpUrl}/`, "viewer B");
    await waitForBadge(b.page, "live", LIVE_TIMEOUT);
    await waitForViewers(b.page, "2 viewing");
    await waitForViewers(a.page, "2 viewing");
    await b.page.close();
    await waitForViewers(a.page, "1 viewing");
    a.console.assertClean();
    b.console.assertClean();
    await a.page.close();
  });
});
