// The official phoenix client (1.8.x) over LongPoll, against the real phx-threads binary:
// connect, join, push with reply, broadcasts between a LongPoll and a WebSocket client both
// ways, a burst of 30 broadcasts in order, join and connect refusals, and the automatic
// fallback (`longPollFallbackMs`) from a WebSocket that cannot connect. Node's fetch carries
// phoenix.js's LongPoll requests (its Ajax uses fetch when there is no XMLHttpRequest).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { LongPoll, Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

let server;
const sockets = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const s of sockets) s.disconnect();
  assert.equal(await server.stop(), 0, "server exits 0 on SIGTERM");
});

function connect(transport, opts = {}) {
  const socket = new Socket(server.url, { transport, ...opts });
  sockets.push(socket);
  socket.connect();
  return socket;
}

function join(channel) {
  return waitFor(`join of ${channel.topic}`, (done) => {
    channel.join().receive("ok", (r) => done({ ok: r })).receive("error", (r) => done({ error: r }));
  });
}

function push(channel, event, payload) {
  return waitFor(`reply to ${event}`, (done) => {
    channel.push(event, payload).receive("ok", (r) => done({ ok: r })).receive("error", (r) => done({ error: r }));
  });
}

const room = () => `room:${Math.random().toString(36).slice(2)}`;

test("a LongPoll socket opens, joins and gets its push replies", async () => {
  const socket = connect(LongPoll);
  await waitFor("open", (done) => socket.onOpen(done));
  assert.equal(socket.transport, LongPoll);
  const channel = socket.channel(room(), {});
  assert.deepEqual(await join(channel), { ok: {} });
  assert.deepEqual(await push(channel, "ping", { n: 7 }), { ok: { n: 7 } });
});

test("broadcasts flow between a LongPoll and a WebSocket client both ways", async () => {
  const topic = room();
  const lp = connect(LongPoll).channel(topic, {});
  const ws = connect(WebSocket).channel(topic, {});
  assert.deepEqual(await join(lp), { ok: {} });
  assert.deepEqual(await join(ws), { ok: {} });
  const atWs = waitFor("new_msg at the websocket", (done) => ws.on("new_msg", done));
  assert.deepEqual(await push(lp, "new_msg", { body: "from longpoll" }), { ok: {} });
  assert.deepEqual(await atWs, { body: "from longpoll" });
  const atLp = waitFor("new_msg at the longpoll", (done) =>
    lp.on("new_msg", (m) => m.body === "from websocket" && done(m)),
  );
  assert.deepEqual(await push(ws, "new_msg", { body: "from websocket" }), { ok: {} });
  assert.deepEqual(await atLp, { body: "from websocket" });
});

test("a burst of 30 broadcasts reaches the LongPoll client in order", async () => {
  const topic = room();
  const lp = connect(LongPoll).channel(topic, {});
  const ws = connect(WebSocket).channel(topic, {});
  await join(lp);
  await join(ws);
  const bodies = [];
  const all = waitFor("30 broadcasts", (done) =>
    lp.on("new_msg", (m) => {
      bodies.push(m.body);
      if (bodies.length === 30) done();
    }),
  );
  for (let i = 0; i < 30; i++) ws.push("new_msg", { body: `m${i}` });
  await all;
  assert.deepEqual(bodies, Array.from({ length: 30 }, (_, i) => `m${i}`));
});

test("a refused join reports the reason over LongPoll", async () => {
  const channel = connect(LongPoll).channel("room:private", {});
  assert.deepEqual(await join(channel), { error: { reason: "unauthorized" } });
  channel.leave();
});

test("a refused connect (403) is an error and never opens", async () => {
  // An unsupported vsn is refused by the connect path (403), as a refused connect callback is.
  const socket = connect(LongPoll, { vsn: "9.0.0", reconnectAfterMs: () => 60_000 });
  let opened = false;
  socket.onOpen(() => (opened = true));
  const error = await waitFor("error", (done) => socket.onError(done));
  assert.equal(error, 403, "phoenix.js reports the 403 status of the poll");
  assert.equal(opened, false);
  socket.disconnect();
});

test("a WebSocket that cannot connect falls back to LongPoll (longPollFallbackMs)", async () => {
  // The upgrade is refused (404 at another path); phoenix.js then switches to LongPoll at the
  // socket's own URL, which works.
  class RefusedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url.replace("/socket/websocket", "/nowhere/websocket"), protocols);
    }
  }
  const socket = connect(RefusedWebSocket, { longPollFallbackMs: 2_000 });
  await waitFor("open over LongPoll", (done) => socket.onOpen(done), 10_000);
  assert.equal(socket.transport, LongPoll);
  const channel = socket.channel(room(), {});
  assert.deepEqual(await join(channel), { ok: {} });
  assert.deepEqual(await push(channel, "new_msg", { body: "after fallback" }), { ok: {} });
});
