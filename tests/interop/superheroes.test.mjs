// superheroes:lobby with the official phoenix client: hydrate on join, then create / update /
// delete caused by REST calls, each within a second, against the binary with its own PostgreSQL.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";

import { startServer, waitFor } from "./server.mjs";

let server;
let dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "phx-interop-"));
  // As root the private cluster runs as the postgres user, which must reach the directory.
  chmodSync(dataDir, 0o755);
  const dbArgs = process.env.DATABASE_URL ? ["--database-url", process.env.DATABASE_URL] : [];
  server = await startServer(["--ws-addr", "127.0.0.1:0", "--data-dir", dataDir, ...dbArgs], { database: true });
});

after(async () => {
  assert.equal(await server.stop(), 0);
  rmSync(dataDir, { recursive: true, force: true });
});

async function rest(method, path, body) {
  const res = await fetch(server.api + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return { status: res.status, body: res.status === 204 ? null : await res.json() };
}

test("hydrate on join, then live create, update and delete from REST calls", async () => {
  const socket = new Socket(server.url, { transport: WebSocket });
  socket.connect();
  const channel = socket.channel("superheroes:lobby", {});
  const events = [];
  const waiters = [];
  for (const event of ["hydrate", "create", "update", "delete"]) {
    channel.on(event, (payload) => {
      events.push({ event, payload });
      waiters.splice(0).forEach((w) => w());
    });
  }
  const next = (event) =>
    waitFor(`${event} push`, (done) => {
      const check = () => {
        const i = events.findIndex((e) => e.event === event);
        if (i >= 0) return done(events.splice(i, 1)[0].payload);
        waiters.push(check);
      };
      check();
    }, 1_000);

  await waitFor("join", (done) => channel.join().receive("ok", done), 10_000);
  const hydrate = await next("hydrate");
  const listed = (await rest("GET", "")).body.data;
  assert.deepEqual(hydrate.superheroes.map((h) => h.id), listed.map((h) => h.id));
  assert.match(hydrate.message_id, /^[0-9a-f-]{36}$/);

  const created = await rest("POST", "", { superhero: { name: "Storm", location: "Harlem", power: "Weather" } });
  assert.equal(created.status, 201);
  const create = await next("create");
  assert.deepEqual(create.superhero, created.body.data);

  const updated = await rest("PATCH", `/${created.body.data.id}`, { superhero: { location: "Wakanda" } });
  const update = await next("update");
  assert.deepEqual(update.superhero, updated.body.data);
  assert.notEqual(update.message_id, create.message_id);

  assert.equal((await rest("DELETE", `/${created.body.data.id}`)).status, 204);
  const del = await next("delete");
  assert.equal(del.superhero.id, created.body.data.id);

  // A refused write (validation error) broadcasts nothing.
  assert.equal((await rest("POST", "", { superhero: { name: "" } })).status, 422);
  socket.disconnect();
});
