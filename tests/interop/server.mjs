// Starts the real phx-threads binary for a test and stops it with SIGTERM.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export function binaryPath() {
  const bin = process.env.PHX_THREADS_BIN ?? resolve(root, "target/debug/phx-threads");
  if (!existsSync(bin)) {
    throw new Error(`${bin} not found: run \`cargo build\` first (or set PHX_THREADS_BIN)`);
  }
  return bin;
}

/** Starts the server with `args` and resolves once it prints its listening line. */
export function startServer(args = [], { timeoutMs = 90_000, database = false } = {}) {
  const db = database ? [] : ["--no-database"];
  const child = spawn(binaryPath(), ["serve", ...db, "--http-addr", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`server did not start in ${timeoutMs} ms:\n${stderr}`));
    }, timeoutMs);
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/phx-threads listening ws=(\S+) http=(\S+)/);
      if (m) {
        clearTimeout(timer);
        const api = `http://${m[2]}/api/superheroes`;
        resolvePromise({ child, wsAddr: m[1], url: `ws://${m[1]}/socket`, api, stop: () => stopServer(child) });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${stderr}`));
    });
  });
}

/** SIGTERM, then resolve with the exit code (SIGKILL after 15 s). */
export function stopServer(child) {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolvePromise(code);
    });
    child.kill("SIGTERM");
  });
}

/** Resolves with the first value `register(resolve)` delivers, or rejects after `ms`. */
export function waitFor(what, register, ms = 5_000) {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    register((value) => {
      clearTimeout(timer);
      resolvePromise(value);
    });
  });
}

/** Resolves once every node's `/cluster` lists all the others. */
export async function waitForPeers(nodes, ms = 10_000) {
  for (const node of nodes) {
    const cluster = node.api.replace("/api/superheroes", "/cluster");
    await waitFor(`${cluster} to list the ${nodes.length - 1} other nodes`, (done) => {
      const poll = async () => {
        const view = await (await fetch(cluster)).json();
        if (view.nodes.length === nodes.length - 1) done();
        else setTimeout(poll, 50);
      };
      poll();
    }, ms);
  }
}

/** A phoenix.js socket with `user_id` and its channel on `topic`, tracked by a Presence;
 * `new_msg` bodies collect in `messages`. */
export function member(Socket, Presence, url, topic, userId, opts = {}) {
  const socket = new Socket(url, { ...opts, params: { user_id: userId } });
  socket.connect();
  const channel = socket.channel(topic, {});
  const presence = new Presence(channel);
  const syncs = [];
  presence.onSync(() => syncs.forEach((check) => check()));
  const messages = [];
  channel.on("new_msg", (msg) => messages.push(msg.body));
  const errors = [];
  socket.onError((e) => errors.push(e));
  return { socket, channel, presence, syncs, messages, errors, userId };
}

/** Resolves once `m`'s Presence lists exactly the keys `expected`. */
export function listsExactly(m, expected) {
  const want = JSON.stringify([...expected].sort());
  return waitFor(`${m.userId} to list ${want}`, (done) => {
    const check = () => JSON.stringify(m.presence.list((k) => k).sort()) === want && done();
    m.syncs.push(check);
    check();
  }, 10_000);
}
