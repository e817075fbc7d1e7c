import { useEffect, useReducer, useState } from "react";
import { initialState, reduce } from "./heroes.js";
import { connectionReducer, initialConnection } from "./connection.js";
import { viewerId, watchViewers } from "./viewers.js";

export const TOPIC = "superheroes:lobby";
const EVENTS = ["hydrate", "create", "update", "delete"];

function browserOffline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

/**
 * Join "superheroes:lobby" on `socket` for as long as the calling component
 * is mounted, feeding pushes into the pure reducer in heroes.js and socket /
 * channel lifecycle events into the connection badge reducer.
 * @param {import("phoenix").Socket | null} socket
 */
export function useSuperheroes(socket) {
  const [heroes, dispatch] = useReducer(reduce, initialState);
  const [connection, dispatchConnection] = useReducer(connectionReducer, undefined, () =>
    initialConnection({ browserOffline: browserOffline() }),
  );
  const [viewers, setViewers] = useState(null);

  useEffect(() => {
    if (!socket) return undefined;
    const signal = (type) => () => dispatchConnection({ type });

    const socketRefs = [
      socket.onOpen(signal("socket_open")),
      socket.onClose(signal("socket_close")),
      socket.onError(signal("socket_error")),
    ];
    if (socket.isConnected()) dispatchConnection({ type: "socket_open" });

    const channel = socket.channel(TOPIC, { viewer_id: viewerId() });
    watchViewers(channel, setViewers);
    for (const event of EVENTS) {
      channel.on(event, (payload) => dispatch({ type: event, payload }));
    }
    channel.onError(signal("channel_error"));
    // The join push is re-sent on every rejoin, so these fire after each one.
    channel
      .join()
      .receive("ok", signal("join_ok"))
      .receive("error", signal("join_error"))
      .receive("timeout", signal("join_timeout"));

    const online = signal("browser_online");
    const offline = signal("browser_offline");
    window.addEventListener("online", online);
    window.addEventListener("offline", offline);

    return () => {
      window.removeEventListener("online", online);
      window.removeEventListener("offline", offline);
      socket.off(socketRefs);
      channel.leave();
    };
  }, [socket]);

  return { heroes, dispatch, connection: connection.status, viewers };
}
