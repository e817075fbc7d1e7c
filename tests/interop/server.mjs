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
export function startServer(args = [], { timeoutMs = 30_000 } = {}) {
  const child = spawn(binaryPath(), ["serve", "--no-database", "--http-addr", "127.0.0.1:0", ...args], {
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
        resolvePromise({ child, wsAddr: m[1], url: `ws://${m[1]}/socket`, stop: () => stopServer(child) });
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
