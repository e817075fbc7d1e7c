import { defineConfig, loadEnv } from "vite";
import react from "@vitejs/plugin-react";

// In production the Rust server serves this app and /config.json from its
// HTTP listener. In `npm run dev` / `npm run preview`, Vite proxies
// /config.json and /api to that same listener, so the app code is identical
// in both cases. Point the proxy elsewhere with PHX_HTTP_URL (see README).
export default defineConfig(({ mode }) => {
  const env = loadEnv(mode, process.cwd(), "");
  const target = env.PHX_HTTP_URL || "http://127.0.0.1:4001";
  const proxy = {
    "/config.json": { target, changeOrigin: true },
    "/api": { target, changeOrigin: true },
  };
  return {
    plugins: [react()],
    server: { host: "127.0.0.1", port: 5173, strictPort: true, proxy },
    preview: { host: "127.0.0.1", port: 4173, strictPort: true, proxy },
    // Two pages: the roster (index.html) and the live dashboard (dashboard.html, served at
    // /dashboard by the Rust server).
    build: {
      sourcemap: true,
      rollupOptions: { input: { main: "index.html", dashboard: "dashboard.html" } },
    },
    test: {
      include: ["src/**/*.test.{js,jsx}"],
      environment: "node",
    },
  };
});
