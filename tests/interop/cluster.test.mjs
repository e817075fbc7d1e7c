// Issue #13: two phx-threads nodes with --cluster on one PostgreSQL; two official phoenix
// clients, one on each node, chat in the same room and see each other in Presence.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import { listsExactly, member as memberOf, startServer, waitFor, waitForPeers } from "./server.mjs";

let nodes = [];
let dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "phx-interop-cluster-"));
  // As root the private cluster runs as the postgres user, which must reach the directory.
  chmodSync(dataDir, 0o755);
  // Without DATABASE_URL the first node starts a private PostgreSQL in dataDir and the second
  // adopts the running one.
  const db = process.env.DATABASE_URL ? ["--database-url", process.env.DATABASE_URL] : ["--data-dir", dataDir];
  for (const name of ["left", "right"]) {
    const args = ["--ws-addr", "127.0.0.1:0", ...db, "--cluster", "--node-name", name, "--cluster-heartbeat-ms", "300", "--cluster-node-timeout-ms", "450"];
    nodes.push(await startServer(args, { database: true }));
  }
  // Both nodes hear each other before the clients join.
  await waitForPeers(nodes);
});

after(async () => {
  // The adopting node first: the first one owns the private PostgreSQL.
  for (const node of [...nodes].reverse()) await node.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

const member = (url, topic, userId) => memberOf(Socket, Presence, url, topic, userId, { transport: WebSocket });

test("two clients on different nodes chat and see each other in Presence", async () => {
  const topic = `room:cluster-${Date.now()}`;
  const ada = member(nodes[0].url, topic, "ada");
  const bob = member(nodes[1].url, topic, "bob");
  try {
    await Promise.all([ada, bob].map((m) => waitFor(`${m.userId} joined`, (done) => m.channel.join().receive("ok", done))));
    await Promise.all([listsExactly(ada, ["ada", "bob"]), listsExactly(bob, ["ada", "bob"])]);

    const heard = (m, body) => waitFor(`${m.userId} to hear ${body}`, (done) => {
      const poll = () => (m.messages.includes(body) ? done() : setTimeout(poll, 10));
      poll();
    });
    ada.channel.push("new_msg", { body: "hello from the left" });
    bob.channel.push("new_msg", { body: "hello from the right" });
    await Promise.all([heard(bob, "hello from the left"), heard(ada, "hello from the right")]);
    await Promise.all([heard(ada, "hello from the left"), heard(bob, "hello from the right")]);
    assert.deepEqual([...ada.messages].sort(), [...bob.messages].sort(), "both saw the same chat, once each");
    assert.equal(ada.messages.length, 2);

    bob.socket.disconnect();
    await listsExactly(ada, ["ada"]);
  } finally {
    ada.socket.disconnect();
    bob.socket.disconnect();
  }
});
