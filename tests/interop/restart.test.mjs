// A server restart (SIGTERM → close 1012) makes phoenix.js reconnect and rejoin by itself.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

test("after a server restart the client reconnects, rejoins and receives broadcasts", async () => {
  const first = await startServer();
  const socket = new Socket(first.url, { transport: WebSocket, reconnectAfterMs: () => 100 });
  const closes = [];
  socket.onClose((e) => closes.push(e.code));
  socket.connect();
  const topic = `room:restart-${Date.now()}`;
  const channel = socket.channel(topic, {});
  await waitFor("first join", (done) => channel.join().receive("ok", done));

  assert.equal(await first.stop(), 0);
  await waitFor("close", (done) => (closes.length ? done() : socket.onClose(() => done())));
  assert.equal(closes[0], 1012, "drain closes with 1012 so clients reconnect");

  const second = await startServer(["--ws-addr", first.wsAddr]);
  try {
    const rejoined = waitFor("rejoin", (done) => channel.on("new_msg", done), 10_000);
    // Ask through a second client, once the first has rejoined (it retries every 100 ms).
    const other = new Socket(second.url, { transport: WebSocket });
    other.connect();
    const otherChannel = other.channel(topic, {});
    await waitFor("other join", (done) => otherChannel.join().receive("ok", done));
    await waitFor("first client rejoined", (done) => {
      const check = () => (channel.state === "joined" ? done() : setTimeout(check, 20));
      check();
    }, 10_000);
    otherChannel.push("new_msg", { body: "welcome back" });
    assert.deepEqual(await rejoined, { body: "welcome back" });
    other.disconnect();
    socket.disconnect();
  } finally {
    assert.equal(await second.stop(), 0);
  }
});
