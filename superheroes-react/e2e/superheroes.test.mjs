// Browser tests of the built app against the REAL phx-threads server.
//   npm run test:e2e           (builds the app first)
// Needs <repo>/target/release/phx-threads (cargo build --release) or
// PHX_THREADS_BIN, and Chromium at /usr/bin/chromium (or CHROMIUM_PATH).
// With DATABASE_URL set, the server uses that database instead of starting
// its own PostgreSQL in the temporary data dir.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import {
  STATUSES,
  apiClient,
  badgeHistory,
  launchBrowser,
  openApp,
  readTable,
  requireDist,
  rowLocator,
  screenshot,
  serverBinary,
  startServer,
  tempDir,
  uniqueName,
  visible,
  waitForBadge,
  waitForBadgeHistory,
  waitForTable,
  within,
} from "./helpers.mjs";

const LIVE_TIMEOUT = 20_000; // first join (server already listening)
const TABLE_TIMEOUT = 5_000;
const PUSH_BUDGET = 1_000; // REST change -> visible in the page

// Chromium reports failed WebSocket handshakes and refused requests while
// the server is down as console errors; they are expected only then.
const SERVER_DOWN_NOISE = [/WebSocket connection to .* failed/i, /ERR_CONNECTION_REFUSED/];

describe("superheroes-react against phx-threads", { timeout: 600_000 }, () => {
  let server;
  let dataDir;
  let api;
  let browser;
  let appA; // {page, console}
  let appB;
  const pages = [];
  const createdIds = new Set();

  async function createHero(fields) {
    const hero = await api.create(fields);
    createdIds.add(hero.id);
    return hero;
  }

  async function open(label) {
    const app = await openApp(browser.context, `${server.httpUrl}/`, label);
    pages.push(app);
    return app;
  }

  before(async () => {
    serverBinary(); // fails the suite with a clear message when missing
    requireDist();
    dataDir = tempDir("phx-e2e-data-");
    server = await startServer({ dataDir });
    api = apiClient(server.httpUrl);
    browser = await launchBrowser();
  }, { timeout: 180_000 });

  after(async () => {
    if (server && api) {
      // leave a shared DATABASE_URL as we found it
      for (const id of createdIds) await api.remove(id).catch(() => {});
    }
    for (const { page } of pages) await page.close().catch(() => {});
    if (browser) await browser.close();
    if (server) await server.stop().catch((err) => console.error(String(err)));
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }, { timeout: 120_000 });

  test("serves the app and /config.json from the HTTP listener", async () => {
    const res = await fetch(`${server.httpUrl}/config.json`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(res.status, 200);
    const config = await res.json();
    assert.match(config.socket_url, /^wss?:\/\/.+\/socket$/);
    assert.equal(typeof config.api_url, "string");
    const index = await fetch(`${server.httpUrl}/`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(index.status, 200);
    assert.match(await index.text(), /<div id="root">/);
  });

  test("shows the empty state or the rows when first opened", async () => {
    const existing = visible(await api.list());
    const { page, console: consoleWatch } = await open("first page");
    await waitForBadge(page, "live", LIVE_TIMEOUT);
    if (existing.length === 0) {
      await page.getByTestId("empty-state").filter({ hasText: "No superheroes yet" }).waitFor({ timeout: TABLE_TIMEOUT });
    } else {
      await waitForTable(page, existing, TABLE_TIMEOUT);
    }
    const history = await badgeHistory(page);
    assert.equal(history[0], "connecting", `history ${JSON.stringify(history)}`);
    assert.ok(history.every((s) => STATUSES.includes(s)), `history ${JSON.stringify(history)}`);
    assert.deepEqual(await page.$$eval("thead th", (ths) => ths.map((th) => th.textContent)), [
      "Name",
      "Location",
      "Power",
      "Updated",
      "Actions",
    ]);
    consoleWatch.assertClean();
    await page.close();
    pages.splice(pages.findIndex((p) => p.page === page), 1);
  });

  test("the hydrated table matches GET /api/superheroes", async () => {
    await createHero({ name: uniqueName("Storm"), location: "Kenya", power: "weather control" });
    await createHero({ name: uniqueName("Wolverine"), location: "Canada", power: "healing" });
    await createHero({ name: uniqueName("Mystique"), location: "Unknown", power: "shapeshifting" });

    appA = await open("page A");
    const { page, console: consoleWatch } = appA;
    await waitForBadge(page, "live", LIVE_TIMEOUT);
    const expected = visible(await api.list());
    assert.ok(expected.length >= 3);
    await waitForTable(page, expected, TABLE_TIMEOUT);
    await screenshot(page, "live-table.png");
    consoleWatch.assertClean();
  });

  test("REST create, update and delete appear, change and disappear without reload within 1 s", async () => {
    assert.ok(appA, "page A is open");
    const { page, console: consoleWatch } = appA;
    await waitForBadge(page, "live", LIVE_TIMEOUT);
    const marker = await page.evaluate(() => (window.__noReloadMarker = Math.random()));

    // create
    const name = uniqueName("Nightcrawler");
    let t0 = Date.now();
    const hero = await createHero({ name, location: "Bavaria", power: "teleportation" });
    const row = rowLocator(page, hero.id);
    await within(t0, PUSH_BUDGET, "created row visible", (timeout) => row.waitFor({ timeout }));
    assert.equal(await row.getByTestId("hero-name").textContent(), name);
    assert.equal(await row.getByTestId("hero-location").textContent(), "Bavaria");
    assert.equal(await row.getByTestId("hero-power").textContent(), "teleportation");
    assert.equal(await row.getAttribute("data-flash"), "created", "a created row flashes");

    // update (partial: only the power)
    t0 = Date.now();
    await api.update(hero.id, { power: "teleportation and acrobatics" });
    await within(t0, PUSH_BUDGET, "updated row visible", (timeout) =>
      row.locator('[data-testid="hero-power"]:text-is("teleportation and acrobatics")').waitFor({ timeout }),
    );
    assert.equal(await row.getByTestId("hero-name").textContent(), name);
    assert.equal(await row.getAttribute("data-flash"), "updated", "an updated row flashes");

    // delete
    t0 = Date.now();
    await api.remove(hero.id);
    createdIds.delete(hero.id);
    await within(t0, PUSH_BUDGET, "deleted row gone", (timeout) => row.waitFor({ state: "detached", timeout }));

    assert.equal(await page.evaluate(() => window.__noReloadMarker), marker, "the page was not reloaded");
    await waitForTable(page, visible(await api.list()), TABLE_TIMEOUT);
    consoleWatch.assertClean();
  });

  test("an edit made through the form in page A shows in page B", async () => {
    assert.ok(appA, "page A is open");
    const a = appA;
    const b = (appB = await open("page B"));
    await waitForBadge(a.page, "live", LIVE_TIMEOUT);
    await waitForBadge(b.page, "live", LIVE_TIMEOUT);

    const hero = await createHero({ name: uniqueName("Rogue"), location: "Mississippi", power: "absorption" });
    await rowLocator(a.page, hero.id).waitFor({ timeout: TABLE_TIMEOUT });
    await rowLocator(b.page, hero.id).waitFor({ timeout: TABLE_TIMEOUT });

    const newName = uniqueName("Rogue (Anna Marie)");
    const rowA = rowLocator(a.page, hero.id);
    await rowA.getByTestId("edit-button").click({ timeout: 5_000 });
    await rowA.getByTestId("edit-name").fill(newName, { timeout: 5_000 });
    await rowA.getByLabel(/^Location of/).fill("Caldecott", { timeout: 5_000 });
    await rowA.getByTestId("save-button").click({ timeout: 5_000 });

    const rowB = rowLocator(b.page, hero.id);
    await rowB.locator(`[data-testid="hero-name"]:text-is("${newName}")`).waitFor({ timeout: 2_000 });
    assert.equal(await rowB.getByTestId("hero-location").textContent(), "Caldecott");
    assert.equal(await rowB.getByTestId("hero-power").textContent(), "absorption");
    // page A left edit mode and shows the saved values
    await rowA.locator(`[data-testid="hero-name"]:text-is("${newName}")`).waitFor({ timeout: 2_000 });
    assert.equal(await rowA.getByTestId("edit-name").count(), 0);

    // create through the form in page B, shows in page A
    const formName = uniqueName("Gambit");
    await b.page.getByLabel("Name", { exact: true }).fill(formName);
    await b.page.getByLabel("Location", { exact: true }).fill("New Orleans");
    await b.page.getByLabel("Power", { exact: true }).fill("kinetic charge");
    await b.page.getByTestId("create-submit").click();
    await a.page.locator(`[data-testid="hero-name"]:text-is("${formName}")`).waitFor({ timeout: 2_000 });
    const created = (await api.list()).find((h) => h.name === formName);
    assert.ok(created, "the hero created through the form exists in the API");
    createdIds.add(created.id);
    assert.equal(await b.page.getByLabel("Name", { exact: true }).inputValue(), "", "form cleared after create");

    // delete through page A's button, disappears from page B
    await rowLocator(a.page, created.id).getByTestId("delete-button").click();
    await rowLocator(b.page, created.id).waitFor({ state: "detached", timeout: 2_000 });
    createdIds.delete(created.id);

    const expected = visible(await api.list());
    await waitForTable(a.page, expected, TABLE_TIMEOUT);
    await waitForTable(b.page, expected, TABLE_TIMEOUT);
    a.console.assertClean();
    b.console.assertClean();
  });

  test("422 validation errors are shown next to the fields", async () => {
    assert.ok(appB, "page B is open");
    const b = appB;
    // the browser logs the 422 response itself as a console error
    b.console.allow(/status of 422/);
    await b.page.getByLabel("Name", { exact: true }).fill("");
    await b.page.getByLabel("Location", { exact: true }).fill("Nowhere");
    await b.page.getByLabel("Power", { exact: true }).fill("none");
    const before = visible(await api.list());
    await b.page.getByTestId("create-submit").click();
    const error = b.page.getByTestId("create-name-error");
    await error.waitFor({ timeout: 5_000 });
    assert.match(await error.textContent(), /can't be blank/);
    assert.equal(await b.page.getByLabel("Name", { exact: true }).getAttribute("aria-invalid"), "true");
    assert.equal(await b.page.getByLabel("Location", { exact: true }).inputValue(), "Nowhere", "input kept");
    assert.deepEqual(visible(await api.list()), before, "nothing was created");
    // clear the form for later tests
    await b.page.getByLabel("Location", { exact: true }).fill("");
    await b.page.getByLabel("Power", { exact: true }).fill("");
    b.console.assertClean();
  });

  test("after a server restart on the same ports: reconnecting, then live, and the table matches again", async () => {
    assert.ok(appA && appB, "pages A and B are open");
    const apps = [appA, appB];
    for (const { page } of apps) await waitForBadge(page, "live", LIVE_TIMEOUT);
    const rowsBefore = visible(await api.list());
    assert.ok(rowsBefore.length > 0);
    for (const { page } of apps) await waitForTable(page, rowsBefore, TABLE_TIMEOUT);

    const { wsPort, httpPort } = server;
    for (const app of apps) for (const noise of SERVER_DOWN_NOISE) app.console.allow(noise);
    const stopped = await server.stop();
    assert.deepEqual(stopped, { code: 0, signal: null }, "SIGTERM stops the server with exit code 0");

    for (const { page } of apps) {
      await waitForBadge(page, "reconnecting", 10_000);
      // the last known rows stay on screen while reconnecting
      assert.deepEqual(await readTable(page), rowsBefore);
      await page.getByTestId("stale-note").waitFor({ timeout: 2_000 });
    }

    server = await startServer({ dataDir, wsPort, httpPort });
    assert.equal(server.wsPort, wsPort);
    assert.equal(server.httpPort, httpPort);

    for (const { page } of apps) {
      await waitForBadge(page, "live", 30_000);
      const history = await badgeHistory(page);
      const lastLive = history.lastIndexOf("live");
      const reconnecting = history.lastIndexOf("reconnecting");
      assert.ok(reconnecting >= 0 && reconnecting < lastLive, `reconnecting before live again: ${JSON.stringify(history)}`);
    }
    const expected = visible(await api.list());
    assert.deepEqual(expected, rowsBefore, "the data survived the restart");
    for (const { page } of apps) await waitForTable(page, expected, TABLE_TIMEOUT);

    // the rejoined channels receive pushes again
    const target = expected[0];
    const t0 = Date.now();
    await api.update(target.id, { power: `${target.power} (restarted)` });
    for (const { page } of apps) {
      await within(t0, PUSH_BUDGET, "update after restart visible", (timeout) =>
        rowLocator(page, target.id)
          .locator(`[data-testid="hero-power"]:text-is("${target.power} (restarted)")`)
          .waitFor({ timeout }),
      );
    }
    await screenshot(apps[0].page, "live-table-after-restart.png");
    for (const app of apps) app.console.assertClean();
  });
});
