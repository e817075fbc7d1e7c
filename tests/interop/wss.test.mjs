// The official phoenix client through a TLS proxy (.ci/nginx-tls.sh sets PHX_WSS_URL to the
// deploy/ nginx site in front of the binary): join, push, broadcast back, over wss://.
// Skipped when PHX_WSS_URL is not set (the plain interop run).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
import WebSocket from "ws";

const url = process.env.PHX_WSS_URL;

test("phoenix.js joins and chats over wss:// through nginx", { skip: !url && "PHX_WSS_URL not set", timeout: 30_000 }, async () => {
  const socket = new Socket(url, { transport: WebSocket, params: { user_id: "wss-client" } });
  socket.connect();
  try {
    const channel = socket.channel("room:wss", {});
    const joined = new Promise((resolve, reject) => {
      channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", () => reject(new Error("join timeout")));
    });
    await joined;
    const heard = new Promise((resolve) => channel.on("new_msg", resolve));
    const acked = new Promise((resolve, reject) => {
      channel.push("new_msg", { body: "over TLS" }).receive("ok", resolve).receive("error", reject);
    });
    await acked;
    assert.deepEqual(await heard, { body: "over TLS" });
    assert.ok(socket.isConnected(), "still connected");
  } finally {
    socket.disconnect();
  }
});
