// The closing handshake as phoenix.js sees it: a client that disconnects with a code gets the
// server's Close echoing it (RFC 6455 §5.5.1), a clean close, instead of 1006.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  assert.equal(await server.stop(), 0, "server exits 0 on SIGTERM");
});

test("socket.disconnect with 1000 is answered with a clean close 1000", async () => {
  const socket = new Socket(server.url, { transport: WebSocket });
  const opened = waitFor("open", (done) => socket.onOpen(done));
  socket.connect();
  await opened;
  const closed = waitFor("close", (done) => socket.onClose(done));
  socket.disconnect(null, 1000, "bye");
  const event = await closed;
  assert.equal(event.code, 1000, `close code ${event.code}`);
  assert.equal(event.wasClean, true);
});
