// Server memory per superheroes:lobby client (issue #11), bounded in count and time.
//
//   PHX_THREADS_BIN=target/release/phx-threads \
//     node benches/lobby-memory/run.mjs [heroes=5000] [clients=200] [longest=0]
//
// Starts the binary with a private PostgreSQL in a temp dir, fills the table
// through the REST API (`longest=1`: every field at its maximum length, in
// multi-byte characters), joins one warm-up client and lets it leave, then
// joins `clients` lobby clients over loopback WebSockets and waits for every
// hydrate; reports the server's VmRSS before, with all joined, and after all
// left. Prints one JSON line. Needs superheroes-react's node_modules (ws).

import fs from "node:fs";
import { createRequire } from "node:module";
import { apiClient, startServer, tempDir } from "../../superheroes-react/e2e/helpers.mjs";

const require = createRequire(new URL("../../superheroes-react/package.json", import.meta.url));
const WebSocket = require("ws");

const [heroes = 5000, clients = 200, longest = 0] = process.argv.slice(2).map(Number);
const DEADLINE_MS = 120_000; // for each phase
const BATCH = 20; // clients joining at once
const PARALLEL = 8; // REST creates in flight

function fields(i) {
  if (!longest) return { name: `Hero ${i}`, location: "Gotham", power: "Money" };
  return { name: `${"🦸".repeat(90)} ${i}`, location: "🌆".repeat(100), power: "⚡".repeat(200) };
}

function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

/** Opens one lobby client; resolves with it once its hydrate (of `rows` rows) arrived. */
function lobbyClient(port) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0`, { maxPayload: 64 << 20 });
    const timer = setTimeout(() => reject(new Error("no hydrate within the deadline")), DEADLINE_MS);
    ws.on("open", () => ws.send(JSON.stringify(["1", "1", "superheroes:lobby", "phx_join", {}])));
    ws.on("message", (data) => {
      // Only the event name matters; the payload is not parsed (it can be megabytes).
      if (data.subarray(0, 80).toString().includes('"hydrate"')) {
        clearTimeout(timer);
        resolve(ws);
      }
    });
    ws.on("error", (e) => { clearTimeout(timer); reject(e); });
    ws.on("close", () => { clearTimeout(timer); reject(new Error("closed before hydrate")); });
  });
}

async function joinAll(port, n) {
  const open = [];
  for (let i = 0; i < n; i += BATCH) {
    const batch = Array.from({ length: Math.min(BATCH, n - i) }, () => lobbyClient(port));
    open.push(...(await Promise.all(batch)));
  }
  return open;
}

async function closeAll(sockets) {
  await Promise.all(sockets.map((ws) => new Promise((resolve) => {
    ws.removeAllListeners("close");
    ws.once("close", resolve);
    ws.close();
  })));
}

/** RSS once it stops moving (three equal readings 200 ms apart), bounded by the deadline. */
async function settledRss(pid) {
  const end = Date.now() + 10_000;
  let last = -1;
  let same = 0;
  while (Date.now() < end && same < 3) {
    await new Promise((r) => setTimeout(r, 200));
    const now = rssKiB(pid);
    same = Math.abs(now - last) < 64 ? same + 1 : 0;
    last = now;
  }
  return last;
}

const dataDir = tempDir("phx-lobby-mem-");
// Thousands of creates from one address: the REST write budget (issue #14) is off for the
// bench (the server inherits the environment).
process.env.PHX_REST_WRITE_RATE = "0";
const server = await startServer({ dataDir });
try {
  const api = apiClient(server.httpUrl);
  const existing = (await api.list()).length;
  for (let i = existing; i < heroes; i += PARALLEL) {
    const n = Math.min(PARALLEL, heroes - i);
    await Promise.all(Array.from({ length: n }, (_, k) => api.create(fields(i + k))));
  }
  const rows = (await api.list()).length;
  await closeAll(await joinAll(server.wsPort, 1));
  const before = await settledRss(server.pid);
  const t0 = Date.now();
  const sockets = await joinAll(server.wsPort, clients);
  const joinMs = Date.now() - t0;
  const joined = await settledRss(server.pid);
  await closeAll(sockets);
  const left = await settledRss(server.pid);
  console.log(JSON.stringify({
    rows, clients, longest: !!longest, join_ms: joinMs,
    rss_before_kib: before, rss_joined_kib: joined, rss_left_kib: left,
    per_client_kib: Math.round((joined - before) / clients),
    retained_after_leave_kib: left - before,
  }));
} finally {
  await server.stop().catch((e) => console.error(String(e)));
  fs.rmSync(dataDir, { recursive: true, force: true });
}
