import { describe, expect, it } from "vitest";
import { STATUSES, connectionReducer, initialConnection } from "./connection.js";

const run = (events, start = initialConnection()) =>
  events.reduce((s, type) => connectionReducer(s, { type }), start);

describe("connection badge", () => {
  it("starts connecting (or offline when the browser is offline)", () => {
    expect(initialConnection().status).toBe("connecting");
    expect(initialConnection({ browserOffline: true }).status).toBe("offline");
  });

  it("is live only once the channel join succeeded", () => {
    expect(run(["socket_open"]).status).toBe("connecting");
    expect(run(["socket_open", "join_ok"]).status).toBe("live");
  });

  it("is offline when the server was never reachable, then live when it is", () => {
    expect(run(["socket_error", "socket_close"]).status).toBe("offline");
    expect(run(["socket_error", "socket_close", "socket_open"]).status).toBe("connecting");
    expect(run(["socket_error", "socket_close", "socket_open", "join_ok"]).status).toBe("live");
  });

  it("goes reconnecting after losing a live connection, and live again after rejoin", () => {
    const live = run(["socket_open", "join_ok"]);
    const down = run(["socket_error", "socket_close", "socket_error", "socket_close"], live);
    expect(down.status).toBe("reconnecting");
    expect(run(["socket_open"], down).status).toBe("reconnecting");
    expect(run(["socket_open", "join_ok"], down).status).toBe("live");
  });

  it("goes reconnecting when only the channel fails (join error / timeout / channel error)", () => {
    const live = run(["socket_open", "join_ok"]);
    for (const e of ["channel_error", "join_error", "join_timeout"]) {
      expect(run([e], live).status).toBe("reconnecting");
    }
  });

  it("follows the browser's online/offline events", () => {
    const live = run(["socket_open", "join_ok"]);
    expect(run(["browser_offline"], live).status).toBe("offline");
    expect(run(["browser_offline", "socket_close"], live).status).toBe("offline");
    expect(run(["browser_offline", "browser_online"], live).status).toBe("reconnecting");
    expect(run(["browser_offline", "browser_online"]).status).toBe("connecting");
    expect(run(["browser_offline", "join_ok"], live).status).toBe("live");
  });

  it("always yields one of the four statuses and is a no-op on unknown events", () => {
    const s = initialConnection();
    expect(connectionReducer(s, { type: "whatever" })).toBe(s);
    const all = ["socket_open", "socket_close", "socket_error", "channel_error", "join_ok",
      "join_error", "join_timeout", "browser_offline", "browser_online"];
    let state = s;
    for (let i = 0; i < 500; i++) {
      state = connectionReducer(state, { type: all[(i * 7 + (i >> 3)) % all.length] });
      expect(STATUSES).toContain(state.status);
    }
  });
});
