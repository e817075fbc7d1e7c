// The roster page through the deploy/ nginx site: https:// for the page and the REST API,
// wss:// for its socket (the URL follows from the page's origin through /config.json).
// Runs only against a server that is already up behind the proxy: .ci/nginx-tls.sh sets
// E2E_BASE_URL (and NODE_TLS_REJECT_UNAUTHORIZED=0 for its self-signed certificate).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  apiClient,
  launchBrowser,
  openApp,
  requireDist,
  uniqueName,
  visible,
  waitForBadge,
  waitForTable,
} from "./helpers.mjs";

const BASE = process.env.E2E_BASE_URL;
const LIVE_TIMEOUT = 20_000;
const PUSH_BUDGET = 5_000;

describe("the roster behind nginx over TLS", { skip: !BASE && "needs E2E_BASE_URL (.ci/nginx-tls.sh)", timeout: 120_000 }, () => {
  let browser;
  let api;
  const created = [];

  before(async () => {
    requireDist();
    api = apiClient(BASE);
    browser = await launchBrowser();
  });

  after(async () => {
    for (const id of created) await api.remove(id).catch(() => {});
    if (browser) await browser.close();
  });

  test("goes live over wss:// and shows a REST create made over https://", async () => {
    const { page, console: consoleWatch } = await openApp(browser.context, `${BASE}/`, "tls page");
    await waitForBadge(page, "live", LIVE_TIMEOUT);
    assert.match(page.url(), /^https:\/\//);
    const socketUrl = await page.evaluate(async () => (await (await fetch("/config.json")).json()).socket_url);
    assert.equal(socketUrl, "/socket", "the socket URL follows from the page's origin");
    await waitForTable(page, visible(await api.list()), LIVE_TIMEOUT);

    const hero = await api.create({ name: uniqueName("Tls"), location: "Proxy", power: "encryption" });
    created.push(hero.id);
    await waitForTable(page, visible(await api.list()), PUSH_BUDGET);
    consoleWatch.assertClean();
    await page.close();
  });
});
