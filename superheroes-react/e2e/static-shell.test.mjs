// Server-less smoke test: `vite preview` of dist/ plus a /config.json that
// points at a port where nothing listens. Checks that Chromium starts through
// playwright-core, the app shell renders accessibly, the badge reports the
// unreachable server, and screenshots work. Does not need phx-threads.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { preview } from "vite";
import {
  APP_DIR,
  STATUSES,
  badgeHistory,
  launchBrowser,
  openApp,
  requireDist,
  screenshot,
  waitForBadge,
} from "./helpers.mjs";

async function unusedPort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

let server;
let browser;

before(async () => {
  requireDist();
  const deadPort = await unusedPort();
  server = await preview({
    root: APP_DIR,
    configFile: false,
    logLevel: "warn",
    preview: { host: "127.0.0.1", port: 0, strictPort: false, open: false },
    plugins: [
      {
        name: "e2e-config-json",
        configurePreviewServer(s) {
          s.middlewares.use("/config.json", (_req, res) => {
            res.setHeader("content-type", "application/json");
            res.end(JSON.stringify({ socket_url: `ws://127.0.0.1:${deadPort}/socket`, api_url: "" }));
          });
        },
      },
    ],
  });
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await new Promise((resolve) => server.httpServer.close(resolve));
});

test("the built app renders its shell and reports an unreachable server as offline", { timeout: 60_000 }, async () => {
  const url = server.resolvedUrls.local[0];
  const { page, console: consoleWatch } = await openApp(browser.context, url, "static shell");
  consoleWatch.allow(/WebSocket connection to .* failed/i);
  // The WebSocket fails, so phoenix.js falls back to LongPoll (longPollFallbackMs), which fails too.
  consoleWatch.allow(/ERR_CONNECTION_REFUSED/);

  await page.getByRole("heading", { name: "Superheroes", level: 1 }).waitFor({ timeout: 10_000 });
  await waitForBadge(page, "offline", 10_000);
  const history = await badgeHistory(page);
  assert.equal(history[0], "connecting");
  assert.ok(history.every((s) => STATUSES.includes(s)), JSON.stringify(history));

  await page.getByTestId("loading-state").filter({ hasText: "Waiting for the server…" }).waitFor({ timeout: 5_000 });
  assert.equal(await page.getByTestId("empty-state").count(), 0, "not claiming the roster is empty before hydrate");
  assert.deepEqual(await page.$$eval("thead th", (ths) => ths.map((th) => th.textContent)), [
    "Name", "Location", "Power", "Updated", "Actions",
  ]);
  for (const label of ["Name", "Location", "Power"]) {
    assert.equal(await page.getByLabel(label, { exact: true }).count(), 1, `input labelled ${label}`);
  }
  assert.equal(await page.getByRole("status").getByTestId("connection-state").textContent(), "offline");

  const file = await screenshot(page, "static-shell.png");
  assert.ok(file.endsWith("static-shell.png"));
  consoleWatch.assertClean();
  // The browser really tried the configured socket URL.
  assert.ok(consoleWatch.all().some((m) => /WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/socket\/websocket/.test(m.text)),
    JSON.stringify(consoleWatch.all()));
});
