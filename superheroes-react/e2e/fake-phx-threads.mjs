#!/usr/bin/env node
// A TEST DOUBLE of the phx-threads binary, for exercising the e2e harness
// and the app before the Rust server exists. It is NOT the server under test:
// run the e2e suite against it only explicitly, with
//   PHX_THREADS_BIN=e2e/fake-phx-threads.mjs npm run test:e2e
//
// It follows the same command-line contract:
//   fake-phx-threads.mjs serve --ws-addr HOST:PORT --http-addr HOST:PORT
//                              --static-dir DIR --data-dir DIR [--database-url URL]
// prints "phx-threads listening ws=HOST:PORT http=HOST:PORT" once ready and
// exits 0 on SIGTERM. Rows are kept in memory and saved to
// <data-dir>/fake-store.json (--database-url is accepted and ignored).
// Protocol: Phoenix Channels V2 JSON ([join_ref, ref, topic, event, payload])
// on /socket/websocket; REST under /api/superheroes with CORS.

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { WebSocketServer } from "ws";

const TOPIC = "superheroes:lobby";

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== "serve") throw new Error(`usage: fake-phx-threads serve --ws-addr A --http-addr B --static-dir D --data-dir X`);
  const opts = {};
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i];
    if (!key.startsWith("--") || rest[i + 1] === undefined) throw new Error(`bad argument ${key}`);
    opts[key.slice(2)] = rest[i + 1];
  }
  for (const k of ["ws-addr", "http-addr", "static-dir", "data-dir"]) {
    if (!opts[k]) throw new Error(`missing --${k}`);
  }
  return opts;
}

function splitAddr(addr) {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

// ---- store ---------------------------------------------------------------
let lastMicros = 0;
function nowTimestamp() {
  let micros = Date.now() * 1000;
  if (micros <= lastMicros) micros = lastMicros + 1;
  lastMicros = micros;
  const iso = new Date(Math.floor(micros / 1000)).toISOString();
  return iso.replace("Z", `${String(micros % 1000).padStart(3, "0")}Z`);
}

class Store {
  constructor(file) {
    this.file = file;
    this.nextId = 1;
    this.rows = new Map();
    if (fs.existsSync(file)) {
      const saved = JSON.parse(fs.readFileSync(file, "utf8"));
      this.nextId = saved.nextId;
      for (const row of saved.rows) this.rows.set(row.id, row);
    }
  }
  save() {
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ nextId: this.nextId, rows: [...this.rows.values()] }));
    fs.renameSync(tmp, this.file);
  }
  list() {
    return [...this.rows.values()].sort((a, b) => a.id - b.id);
  }
}

function validate(params, { partial }) {
  const errors = {};
  for (const field of ["name", "location", "power"]) {
    const v = params[field];
    if (v === undefined && partial) continue;
    if (typeof v !== "string" || v.trim() === "") errors[field] = ["can't be blank"];
  }
  return Object.keys(errors).length ? errors : null;
}

// ---- main ----------------------------------------------------------------
const opts = parseArgs(process.argv.slice(2));
fs.mkdirSync(opts["data-dir"], { recursive: true });
const store = new Store(path.join(opts["data-dir"], "fake-store.json"));
const staticDir = path.resolve(opts["static-dir"]);
const subscribers = new Set(); // {ws, joinRef}

function send(ws, msg) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
}

function broadcast(event, superhero) {
  const payload = { superhero, message_id: randomUUID() };
  for (const sub of subscribers) send(sub.ws, [sub.joinRef, null, TOPIC, event, payload]);
}

const wsAddr = splitAddr(opts["ws-addr"]);
const httpAddr = splitAddr(opts["http-addr"]);
let wsPort = 0;

const wss = new WebSocketServer({ host: wsAddr.host, port: wsAddr.port, path: "/socket/websocket" });
wss.on("connection", (ws) => {
  const mine = new Map(); // topic -> subscriber
  ws.on("message", (data) => {
    let msg;
    try {
      msg = JSON.parse(String(data));
    } catch {
      return;
    }
    const [joinRef, ref, topic, event, payload] = msg;
    const reply = (status, response = {}) => send(ws, [joinRef, ref, topic, "phx_reply", { status, response }]);
    if (topic === "phoenix" && event === "heartbeat") return reply("ok");
    if (event === "phx_join") {
      if (topic !== TOPIC) return reply("error", { reason: "unmatched topic" });
      const previous = mine.get(topic);
      if (previous) {
        subscribers.delete(previous);
        send(ws, [previous.joinRef, null, topic, "phx_close", {}]);
      }
      const sub = { ws, joinRef };
      mine.set(topic, sub);
      subscribers.add(sub);
      reply("ok");
      send(ws, [joinRef, null, TOPIC, "hydrate", { superheroes: store.list(), message_id: randomUUID() }]);
      return;
    }
    if (event === "phx_leave") {
      const sub = mine.get(topic);
      if (sub) {
        subscribers.delete(sub);
        mine.delete(topic);
      }
      return reply("ok");
    }
    reply("error", { reason: "unknown event" });
  });
  ws.on("close", () => {
    for (const sub of mine.values()) subscribers.delete(sub);
  });
});

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : {};
}

const server = http.createServer(async (req, res) => {
  res.setHeader("access-control-allow-origin", "*");
  res.setHeader("access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
  res.setHeader("access-control-allow-headers", "content-type, accept");
  if (req.method === "OPTIONS") return json(res, 204);
  const url = new URL(req.url, "http://x");
  try {
    if (url.pathname === "/config.json") {
      return json(res, 200, { socket_url: `ws://${wsAddr.host}:${wsPort}/socket`, api_url: "" });
    }
    if (url.pathname === "/api/superheroes") {
      if (req.method === "GET") return json(res, 200, { data: store.list() });
      if (req.method === "POST") {
        const params = (await readBody(req)).superhero || {};
        const errors = validate(params, { partial: false });
        if (errors) return json(res, 422, { errors });
        const ts = nowTimestamp();
        const hero = { id: store.nextId++, name: params.name, location: params.location, power: params.power, inserted_at: ts, updated_at: ts };
        store.rows.set(hero.id, hero);
        store.save();
        broadcast("create", hero);
        return json(res, 201, { data: hero });
      }
    }
    const m = /^\/api\/superheroes\/(\d+)$/.exec(url.pathname);
    if (m) {
      const id = Number(m[1]);
      const hero = store.rows.get(id);
      if (!hero) return json(res, 404, { errors: { detail: "Not Found" } });
      if (req.method === "GET") return json(res, 200, { data: hero });
      if (req.method === "PUT" || req.method === "PATCH") {
        const params = (await readBody(req)).superhero || {};
        const errors = validate(params, { partial: true });
        if (errors) return json(res, 422, { errors });
        const updated = { ...hero };
        for (const f of ["name", "location", "power"]) if (params[f] !== undefined) updated[f] = params[f];
        updated.updated_at = nowTimestamp();
        store.rows.set(id, updated);
        store.save();
        broadcast("update", updated);
        return json(res, 200, { data: updated });
      }
      if (req.method === "DELETE") {
        store.rows.delete(id);
        store.save();
        broadcast("delete", hero);
        return json(res, 204);
      }
    }
    if (url.pathname.startsWith("/api/")) return json(res, 404, { errors: { detail: "Not Found" } });
    // static files, SPA fallback to index.html
    let file = path.join(staticDir, decodeURIComponent(url.pathname));
    if (!file.startsWith(staticDir)) return json(res, 404, { errors: { detail: "Not Found" } });
    if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) file = path.join(staticDir, "index.html");
    if (!fs.existsSync(file)) return json(res, 404, { errors: { detail: "Not Found" } });
    res.writeHead(200, { "content-type": MIME[path.extname(file)] || "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  } catch (err) {
    json(res, 400, { errors: { detail: String(err.message || err) } });
  }
});

await new Promise((resolve, reject) => {
  wss.once("listening", resolve);
  wss.once("error", reject);
});
wsPort = wss.address().port;
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(httpAddr.port, httpAddr.host, resolve);
});
process.stdout.write(`phx-threads listening ws=${wsAddr.host}:${wsPort} http=${httpAddr.host}:${server.address().port}\n`);

process.on("SIGTERM", () => {
  for (const client of wss.clients) client.terminate();
  wss.close();
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
