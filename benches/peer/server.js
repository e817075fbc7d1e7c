// Socket.IO peer for benches/load (`--peer socketio`): the same chat workload as phx-threads'
// room:* channel. A client joins a room (ack = join reply), `hb` is acked at once (heartbeat
// round trip), and `new_msg` is broadcast to the sender's room, sender included.
//
// PORT=0 node server.js  ->  prints "peer listening ws=127.0.0.1:PORT" when ready.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const io = new Server(httpServer, {
  transports: ["websocket"], // the generator speaks Engine.IO v4 over WebSocket only
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    socket.data.room = String(room);
    if (typeof ack === "function") ack({ status: "ok", response: {} });
  });
  socket.on("hb", (ack) => {
    if (typeof ack === "function") ack();
  });
  socket.on("new_msg", (msg, ack) => {
    const room = socket.data.room;
    if (room) io.to(room).emit("new_msg", { body: msg && msg.body });
    if (typeof ack === "function") ack({ status: "ok", response: {} });
  });
});

httpServer.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  const { address, port } = httpServer.address();
  console.log(`peer listening ws=${address}:${port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
