// Presence with the official phoenix `Presence` class: several clients converge to the same
// list through presence_state and presence_diff (joins, a leave, a socket closed), and after a
// server restart they converge again.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

/** A client of `topic` as user `userId`, with a `Presence` and its onJoin/onLeave log. */
function member(url, topic, userId) {
  const socket = new Socket(url, { transport: WebSocket, params: { user_id: userId }, reconnectAfterMs: () => 100 });
  socket.connect();
  const channel = socket.channel(topic, {});
  const presence = new Presence(channel);
  const events = [];
  presence.onJoin((key, current) => !current && events.push(`+${key}`));
  presence.onLeave((key, current) => current.metas.length === 0 && events.push(`-${key}`));
  const syncs = [];
  presence.onSync(() => syncs.forEach((check) => check()));
  channel.join();
  return { socket, channel, presence, events, syncs, userId };
}

const keys = (m) => m.presence.list((key) => key).sort();

/** Resolves once `m`'s list is exactly `expected` (checked on every sync). */
function converged(m, expected, ms = 10_000) {
  const want = [...expected].sort();
  return waitFor(`${m.userId} to list ${want}`, (done) => {
    const check = () => {
      if (JSON.stringify(keys(m)) === JSON.stringify(want)) done();
    };
    m.syncs.push(check);
    check();
  }, ms);
}

test("clients converge to the same list through joins, a leave and a closed socket", async () => {
  const server = await startServer();
  const topic = `room:presence-${Date.now()}`;
  const members = ["ada", "bob", "cy", "dee"].map((u) => member(server.url, topic, u));
  try {
    await Promise.all(members.map((m) => converged(m, ["ada", "bob", "cy", "dee"])));
    const [ada, bob, cy, dee] = members;
    for (const m of members) {
      const [meta] = m.presence.list((key, p) => (key === "ada" ? p.metas : null)).filter(Boolean);
      assert.equal(meta.length, 1);
      assert.equal(typeof meta[0].phx_ref, "string");
      assert.equal(typeof meta[0].online_at, "number");
    }
    cy.channel.leave();
    dee.socket.disconnect();
    await Promise.all([ada, bob].map((m) => converged(m, ["ada", "bob"])));
    assert.ok(ada.events.includes("+bob") && ada.events.includes("-cy") && ada.events.includes("-dee"), ada.events.join(" "));
  } finally {
    members.forEach((m) => m.socket.disconnect());
    assert.equal(await server.stop(), 0);
  }
});

test("a second socket of the same user adds a meta, not a key", async () => {
  const server = await startServer();
  const topic = `room:presence-tabs-${Date.now()}`;
  const tab1 = member(server.url, topic, "eve");
  const tab2 = member(server.url, topic, "eve");
  try {
    await converged(tab1, ["eve"]);
    await waitFor("two metas for eve", (done) => {
      const check = () => tab1.presence.list((k, p) => p.metas.length)[0] === 2 && done();
      tab1.syncs.push(check);
      check();
    });
    tab2.socket.disconnect();
    await waitFor("one meta left", (done) => {
      const check = () => tab1.presence.list((k, p) => p.metas.length)[0] === 1 && done();
      tab1.syncs.push(check);
      check();
    });
    assert.deepEqual(keys(tab1), ["eve"]);
  } finally {
    tab1.socket.disconnect();
    tab2.socket.disconnect();
    assert.equal(await server.stop(), 0);
  }
});

test("after a server restart every client re-syncs to the same list", async () => {
  const first = await startServer();
  const topic = `room:presence-restart-${Date.now()}`;
  const members = ["fay", "gus", "hal"].map((u) => member(first.url, topic, u));
  let second;
  try {
    await Promise.all(members.map((m) => converged(m, ["fay", "gus", "hal"])));
    const refsBefore = members[0].presence.list((k, p) => p.metas[0].phx_ref);
    assert.equal(await first.stop(), 0);
    second = await startServer(["--ws-addr", first.wsAddr]);
    // The rejoin's presence_state replaces the old refs with new ones; the keys stay the same.
    await Promise.all(members.map((m) => waitFor(`${m.userId} re-synced`, (done) => {
      const check = () => {
        const refs = m.presence.list((k, p) => p.metas.map((x) => x.phx_ref)).flat();
        if (refs.length === 3 && refs.every((r) => !refsBefore.includes(r))) done();
      };
      m.syncs.push(check);
      check();
    }, 15_000)));
    members[2].channel.leave();
    await Promise.all(members.slice(0, 2).map((m) => converged(m, ["fay", "gus"])));
  } finally {
    members.forEach((m) => m.socket.disconnect());
    if (second) assert.equal(await second.stop(), 0);
  }
});
