import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { Socket } from "phoenix";
import Dashboard from "./Dashboard.jsx";
import { loadConfig } from "../config.js";
import "./dashboard.css";

// The admin token, if the page was opened as /dashboard?token=...: sent as the connect param
// admin_token (loopback clients not behind a proxy need none).
const token = new URLSearchParams(window.location.search).get("token");
// Out of the address bar (and of bookmarks and screenshots) once read.
if (token) window.history.replaceState(null, "", window.location.pathname);
const root = createRoot(document.getElementById("root"));

loadConfig({ env: import.meta.env }).then((config) => {
  const socket = new Socket(config.socket_url, { params: token ? { admin_token: token } : {} });
  socket.connect();
  root.render(
    <StrictMode>
      <Dashboard socket={socket} />
    </StrictMode>,
  );
});
