import { describe, expect, it } from "vitest";
import { DEFAULT_API_URL, DEFAULT_SOCKET_URL, loadConfig, resolveConfig } from "./config.js";

const served = { socket_url: "ws://127.0.0.1:4080/socket", api_url: "" };

describe("resolveConfig", () => {
  it("uses /config.json in production, empty api_url = same origin", () => {
    expect(resolveConfig({ fetched: served, env: { DEV: false } })).toEqual({
      socket_url: "ws://127.0.0.1:4080/socket",
      api_url: "",
      source: "config.json",
    });
  });

  it("ignores VITE_* variables in production builds", () => {
    const env = { DEV: false, VITE_SOCKET_URL: "ws://elsewhere/socket", VITE_API_URL: "http://elsewhere" };
    expect(resolveConfig({ fetched: served, env }).socket_url).toBe(served.socket_url);
  });

  it("lets VITE_* variables win in dev", () => {
    const env = { DEV: true, VITE_SOCKET_URL: "ws://10.0.0.2:4080/socket/", VITE_API_URL: "http://10.0.0.2:4001/" };
    expect(resolveConfig({ fetched: served, env })).toEqual({
      socket_url: "ws://10.0.0.2:4080/socket",
      api_url: "http://10.0.0.2:4001",
      source: "env",
    });
  });

  it("falls back to defaults when /config.json is missing or malformed", () => {
    for (const fetched of [null, {}, { socket_url: "" }, "nope", []]) {
      expect(resolveConfig({ fetched, env: { DEV: true } })).toEqual({
        socket_url: DEFAULT_SOCKET_URL,
        api_url: DEFAULT_API_URL,
        source: "defaults",
      });
    }
  });

  it("defaults a missing api_url in config.json to same origin", () => {
    expect(resolveConfig({ fetched: { socket_url: "ws://h/socket" } }).api_url).toBe("");
  });
});

describe("loadConfig", () => {
  const response = (status, body) => ({ ok: status < 300, status, json: async () => body });

  it("fetches /config.json without caching", async () => {
    const calls = [];
    const cfg = await loadConfig({
      fetch: async (url, init) => {
        calls.push([url, init.cache]);
        return response(200, served);
      },
    });
    expect(calls).toEqual([["/config.json", "no-store"]]);
    expect(cfg.source).toBe("config.json");
  });

  it("never throws: network errors, 404s and bad JSON fall back", async () => {
    const failing = [
      async () => { throw new TypeError("Failed to fetch"); },
      async () => response(404, null),
      async () => ({ ok: true, status: 200, json: async () => { throw new SyntaxError("bad"); } }),
    ];
    for (const f of failing) {
      expect((await loadConfig({ fetch: f })).source).toBe("defaults");
    }
  });
});
