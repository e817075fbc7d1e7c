import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { Socket } from "phoenix";
import App from "./App.jsx";
import { loadConfig } from "./config.js";
import "./styles.css";

// The socket lives as long as the page (like the module-level socket of the
// classic Phoenix examples); components only join and leave channels on it.
// phoenix.js itself disconnects on `pagehide` and reconnects on `pageshow`.
const root = createRoot(document.getElementById("root"));
let socket = null;

function render(props) {
  root.render(
    <StrictMode>
      <App {...props} />
    </StrictMode>,
  );
}

render({ config: null, socket: null });

loadConfig({ env: import.meta.env }).then((config) => {
  // Behind a proxy that breaks WebSockets, switch to LongPoll (same channels) after 2.5 s.
  socket = new Socket(config.socket_url, { params: {}, longPollFallbackMs: 2500 });
  socket.connect();
  render({ config, socket });
});

if (import.meta.hot) {
  // Dev only: tear everything down before the module is replaced.
  import.meta.hot.dispose(() => {
    root.unmount();
    if (socket) socket.disconnect();
  });
}
