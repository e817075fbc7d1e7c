// Issue #14 part 2 with the official phoenix client: signed tokens in `params` and in the
// `authToken` option (the Sec-WebSocket-Protocol bearer), a refused token, and the origin rule.
// Token vectors: ../it/vectors/tokens.json (gen_tokens.py there says how they were made,
// independently of the server's code).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

const vectors = JSON.parse(readFileSync(new URL("../it/vectors/tokens.json", import.meta.url)));
// The Phoenix vectors were signed on 2026-01-01: a century of max age keeps them valid.
const tokenArgs = [
  "--secret-key-base", vectors.secret_key_base,
  "--jwt-secret", vectors.jwt_secret,
  "--token-max-age-s", String(100 * 365 * 86400),
];

/** Connects with `opts`, joins a room with a Presence, resolves with the listed keys. */
async function presenceKeys(url, opts) {
  const socket = new Socket(url, { transport: WebSocket, ...opts });
  socket.connect();
  const channel = socket.channel(`room:${Math.random().toString(36).slice(2)}`, {});
  const presence = new Presence(channel);
  try {
    return await waitFor("our own presence", (done) => {
      presence.onSync(() => {
        const keys = presence.list((key) => key);
        if (keys.length > 0) done(keys);
      });
      channel.join();
    }, 10_000);
  } finally {
    socket.disconnect();
  }
}

/** Resolves with "open" or "error", whichever the socket reports first. */
function firstOutcome(url, opts) {
  const socket = new Socket(url, { transport: WebSocket, reconnectAfterMs: () => 60_000, ...opts });
  return waitFor("open or error", (done) => {
    socket.onOpen(() => done("open"));
    socket.onError(() => done("error"));
    socket.connect();
  }, 10_000).finally(() => socket.disconnect());
}

test("a Phoenix.Token in params and a JWT as authToken connect as their user; bad tokens do not", async () => {
  const server = await startServer(tokenArgs);
  try {
    const phoenix = vectors.phoenix.integer.token;
    assert.deepEqual(await presenceKeys(server.url, { params: { token: phoenix, user_id: "mallory" } }), ["42"]);
    assert.deepEqual(await presenceKeys(server.url, { authToken: vectors.jwt.valid.token }), ["u-9"]);
    assert.equal(await firstOutcome(server.url, { params: { token: vectors.phoenix.tampered } }), "error");
    assert.equal(await firstOutcome(server.url, { authToken: vectors.jwt.expired }), "error");
    assert.equal(await firstOutcome(server.url, { params: { user_id: "anonymous" } }), "error");
  } finally {
    await server.stop();
  }
});

/** The `ws` transport sending `origin`, as a browser page on that origin would. */
const fromOrigin = (origin) =>
  class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { origin });
    }
  };

test("the origin rule: same host passes, another site and null are refused", async () => {
  const server = await startServer();
  try {
    const outcome = (origin) => firstOutcome(server.url, { transport: fromOrigin(origin) });
    assert.equal(await outcome("http://127.0.0.1:4001"), "open", "same host, another port");
    assert.equal(await outcome("https://evil.example"), "error");
    assert.equal(await outcome("null"), "error");
  } finally {
    await server.stop();
  }
});
