// Connection badge state machine (pure). Exactly one of:
//   connecting   - first connection/join in progress, never been live yet
//   live         - socket open and "superheroes:lobby" joined
//   reconnecting - we were live, lost the socket or the channel, and the
//                  phoenix client is retrying (it always does, with backoff)
//   offline      - the server was never reachable, or the browser is offline
//
// Events come from socket.onOpen/onClose/onError, the channel's join push
// ("ok" / "error" / "timeout"), channel.onError, and window online/offline.

export const STATUSES = Object.freeze(["connecting", "live", "reconnecting", "offline"]);

/** @typedef {{status: 'connecting'|'live'|'reconnecting'|'offline', everLive: boolean, browserOffline: boolean}} ConnectionState */

/** @param {{browserOffline?: boolean}} [opts] @returns {ConnectionState} */
export function initialConnection({ browserOffline = false } = {}) {
  return { status: browserOffline ? "offline" : "connecting", everLive: false, browserOffline };
}

function lost(state) {
  if (state.browserOffline) return "offline";
  return state.everLive ? "reconnecting" : "offline";
}

/**
 * @param {ConnectionState} state
 * @param {{type: string}} event
 * @returns {ConnectionState}
 */
export function connectionReducer(state, event) {
  let next;
  switch (event.type) {
    case "join_ok":
      next = { ...state, status: "live", everLive: true, browserOffline: false };
      break;
    case "socket_open":
      // The socket is back; the channel still has to (re)join before we are live.
      next = state.status === "live" ? state : { ...state, status: state.everLive ? "reconnecting" : "connecting" };
      break;
    case "socket_close":
    case "socket_error":
    case "channel_error":
    case "join_error":
    case "join_timeout":
      next = { ...state, status: lost(state) };
      break;
    case "browser_offline":
      next = { ...state, browserOffline: true, status: "offline" };
      break;
    case "browser_online":
      next =
        state.status === "live"
          ? { ...state, browserOffline: false }
          : { ...state, browserOffline: false, status: state.everLive ? "reconnecting" : "connecting" };
      break;
    default:
      return state;
  }
  return next.status === state.status &&
    next.everLive === state.everLive &&
    next.browserOffline === state.browserOffline
    ? state
    : next;
}
