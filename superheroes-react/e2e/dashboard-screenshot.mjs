// Takes docs/dashboard.png for the README: starts the release binary (no database), opens
// /dashboard in Chromium, ramps phoenix.js clients from Node (10 more each second, up to 300,
// each joined to a room, one chat message per 100 ms), then screenshots after ~40 s.
// Bounded: at most 300 sockets, 60 s in all.  Run: node e2e/dashboard-screenshot.mjs
import path from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { REPO_ROOT, launchBrowser, requireDist, startServer, tempDir } from "./helpers.mjs";

const MAX_CLIENTS = 300;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

requireDist();
const server = await startServer({ dataDir: tempDir("phx-shot-") });
const browser = await launchBrowser();
const sockets = [];
try {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1100, height: 660 });
  await page.goto(`${server.httpUrl}/dashboard`, { waitUntil: "domcontentloaded" });
  const url = `ws://127.0.0.1:${server.wsPort}/socket`;
  let chatter = null;
  for (let second = 0; second < 40; second++) {
    for (let i = 0; i < 10 && sockets.length < MAX_CLIENTS && second < 30; i++) {
      const socket = new Socket(url, { transport: WebSocket, params: { user_id: `shot-${sockets.length}` } });
      socket.connect();
      const channel = socket.channel(`room:shot-${sockets.length % 4}`, {});
      channel.join();
      chatter ??= channel;
      sockets.push(socket);
    }
    for (let k = 0; k < 10; k++) {
      chatter?.push("new_msg", { body: "hello" });
      await sleep(100);
    }
  }
  const file = path.join(REPO_ROOT, "docs", "dashboard.png");
  await page.screenshot({ path: file });
  console.log(`wrote ${file}`);
} finally {
  for (const s of sockets) s.disconnect();
  await browser.close();
  await server.stop();
}
