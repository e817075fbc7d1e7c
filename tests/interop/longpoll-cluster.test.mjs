// Issue #13 item 4: the official phoenix client over LongPoll through a real nginx that
// round-robins every request over three phx-threads nodes (no sticky sessions). Two clients
// join the same room, push, hear each other's broadcasts once each and see each other in
// Presence, while nginx's access log shows their requests spread over all three nodes. No
// secret is configured: the nodes share the LongPoll key their database holds.
// nginx is required in CI (.ci/run installs it first); without CI a missing nginx skips.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LongPoll, Presence, Socket } from "phoenix";

import { listsExactly, member as memberOf, startServer, waitFor, waitForPeers } from "./server.mjs";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync);
if (!NGINX && process.env.CI) throw new Error("nginx is required in CI (.ci/run installs it)");
const skip = NGINX ? false : "nginx is not installed (apt-get install nginx-light); skipped";

let nodes = [];
let work;
let nginx;
let base;

function freePort() {
  return new Promise((resolvePort) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** The upstream block of deploy/nginx/phx-threads-cluster.conf, for these test ports. */
function nginxConf(port, wsAddrs) {
  const servers = wsAddrs.map((a) => `server ${a};`).join(" ");
  return `worker_processes 1;
pid ${work}/nginx.pid;
error_log ${work}/error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  client_body_temp_path ${work}/body;
  proxy_temp_path ${work}/proxy;
  log_format upstream '$request_method $uri $upstream_addr $status';
  access_log ${work}/access.log upstream;
  upstream phx_ws_nodes { ${servers} }
  server {
    listen 127.0.0.1:${port};
    proxy_http_version 1.1;
    location /socket {
      proxy_pass http://phx_ws_nodes;
      proxy_set_header Host $host;
      proxy_read_timeout 120s;
      proxy_buffering off;
    }
  }
}
`;
}

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), "phx-interop-lp-cluster-"));
  chmodSync(work, 0o755);
  mkdirSync(join(work, "pg"));
  chmodSync(join(work, "pg"), 0o755);
  const db = process.env.DATABASE_URL ? ["--database-url", process.env.DATABASE_URL] : ["--data-dir", join(work, "pg")];
  for (const name of ["lp1", "lp2", "lp3"]) {
    const args = ["--ws-addr", "127.0.0.1:0", ...db, "--cluster", "--node-name", name,
      "--cluster-heartbeat-ms", "300", "--cluster-node-timeout-ms", "450",
      "--longpoll-window-ms", "2000"];
    nodes.push(await startServer(args, { database: true }));
  }
  await waitForPeers(nodes);
  const port = await freePort();
  writeFileSync(join(work, "nginx.conf"), nginxConf(port, nodes.map((n) => n.wsAddr)));
  const check = spawnSync(NGINX, ["-t", "-c", join(work, "nginx.conf"), "-p", `${work}/`], { encoding: "utf8", timeout: 10_000 });
  assert.equal(check.status, 0, `nginx -t: ${check.stderr}`);
  nginx = spawn(NGINX, ["-c", join(work, "nginx.conf"), "-p", `${work}/`], { stdio: "ignore" });
  base = `http://127.0.0.1:${port}`;
  await waitFor("nginx to answer", (done) => {
    const poll = () => fetch(`${base}/socket/longpoll?vsn=2.0.0`, { method: "OPTIONS" }).then(done, () => setTimeout(poll, 50));
    poll();
  }, 10_000);
});

after(async () => {
  if (skip) return;
  if (nginx) nginx.kill("SIGTERM");
  // The node owning the private PostgreSQL (the first) stops last.
  for (const node of [...nodes].reverse()) await node.stop();
  rmSync(work, { recursive: true, force: true });
});

const member = (topic, userId) => memberOf(Socket, Presence, `${base}/socket`, topic, userId, { transport: LongPoll });

const heard = (m, bodies) => waitFor(`${m.userId} to hear ${bodies.length} messages`, (done) => {
  const poll = () => (bodies.every((b) => m.messages.includes(b)) ? done() : setTimeout(poll, 10));
  poll();
}, 10_000);

test("phoenix.js over LongPoll through round-robin nginx: join, push, broadcasts, Presence", { skip }, async () => {
  const topic = `room:lp-cluster-${Date.now()}`;
  const ada = member(topic, "ada");
  const bob = member(topic, "bob");
  try {
    for (const m of [ada, bob]) {
      await waitFor(`${m.userId} joined`, (done) => m.channel.join().receive("ok", done), 10_000);
    }
    await Promise.all([listsExactly(ada, ["ada", "bob"]), listsExactly(bob, ["ada", "bob"])]);

    const sent = { ada: [], bob: [] };
    for (let i = 0; i < 5; i++) {
      for (const m of [ada, bob]) {
        const body = `${m.userId}-${i}`;
        sent[m.userId].push(body);
        const reply = await waitFor(`reply to ${body}`, (done) => m.channel.push("new_msg", { body }).receive("ok", () => done("ok")).receive("error", done), 10_000);
        assert.equal(reply, "ok");
      }
    }
    const all = [...sent.ada, ...sent.bob];
    await Promise.all([heard(ada, all), heard(bob, all)]);
    for (const m of [ada, bob]) {
      assert.equal(m.messages.length, all.length, `${m.userId} heard each message once: ${m.messages}`);
      for (const from of ["ada", "bob"]) {
        assert.deepEqual(m.messages.filter((b) => b.startsWith(from)), sent[from], `${from}'s messages in order`);
      }
      assert.deepEqual(m.errors, [], `${m.userId}'s transport never failed (no reconnect)`);
    }

    // The requests really went to every node: nginx logged all three upstreams.
    const upstreams = new Set(readFileSync(join(work, "access.log"), "utf8").split("\n")
      .filter((l) => l.includes("/socket/longpoll")).map((l) => l.split(" ")[2]));
    assert.equal(upstreams.size, 3, `upstreams used: ${[...upstreams]}`);

    bob.socket.disconnect();
    await listsExactly(ada, ["ada"]);
  } finally {
    ada.socket.disconnect();
    bob.socket.disconnect();
  }
});
