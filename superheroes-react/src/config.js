// Runtime configuration. The Rust server's HTTP listener serves /config.json:
//   {"socket_url": "ws://127.0.0.1:4080/socket", "api_url": ""}
// where an empty api_url means "same origin as the page".
//
// Precedence:
//   dev (`npm run dev`): VITE_SOCKET_URL / VITE_API_URL  >  /config.json  >  defaults
//   production build:    /config.json  >  defaults
// (Vite proxies /config.json and /api to the Rust server in dev; see vite.config.js.)

export const DEFAULT_SOCKET_URL = "ws://127.0.0.1:4080/socket";
export const DEFAULT_API_URL = "http://127.0.0.1:4001";

const stripSlash = (url) => url.replace(/\/+$/, "");

/**
 * @param {{fetched: any, env?: Record<string, any>}} input
 *   fetched: parsed /config.json, or null if it could not be loaded
 *   env: import.meta.env (only VITE_SOCKET_URL / VITE_API_URL are read, and only when env.DEV)
 * @returns {{socket_url: string, api_url: string, source: 'config.json'|'env'|'defaults'}}
 */
export function resolveConfig({ fetched, env = {} }) {
  const dev = Boolean(env.DEV);
  const envSocket = dev && typeof env.VITE_SOCKET_URL === "string" && env.VITE_SOCKET_URL !== "" ? env.VITE_SOCKET_URL : null;
  const envApi = dev && typeof env.VITE_API_URL === "string" ? env.VITE_API_URL : null;
  const ok = fetched && typeof fetched === "object" && typeof fetched.socket_url === "string" && fetched.socket_url !== "";
  const socket_url = envSocket ?? (ok ? fetched.socket_url : DEFAULT_SOCKET_URL);
  let api_url;
  if (envApi !== null) api_url = envApi;
  else if (ok) api_url = typeof fetched.api_url === "string" ? fetched.api_url : "";
  else api_url = DEFAULT_API_URL;
  const source = envSocket !== null || envApi !== null ? "env" : ok ? "config.json" : "defaults";
  return { socket_url: stripSlash(socket_url), api_url: stripSlash(api_url), source };
}

/**
 * Fetch /config.json (never throws; falls back as described above).
 * @param {{fetch?: typeof fetch, env?: Record<string, any>, url?: string}} [opts]
 */
export async function loadConfig({ fetch: doFetch = globalThis.fetch, env = {}, url = "/config.json" } = {}) {
  let fetched = null;
  try {
    const res = await doFetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    if (res.ok) fetched = await res.json();
  } catch {
    fetched = null;
  }
  return resolveConfig({ fetched, env });
}
