import { useEffect, useState } from "react";
import { append, gauge, human, polyline, rate } from "./series.js";

const W = 320;
const H = 90;

/** One chart: the current value, and the last minutes as an SVG line. */
function Chart({ id, title, series, unit = "" }) {
  const last = series.length ? series[series.length - 1].v : 0;
  return (
    <section className="dash-chart" data-testid={`chart-${id}`}>
      <h2>{title}</h2>
      <p className="dash-value">
        <span data-testid={`${id}-value`}>{human(last)}</span> {unit}
      </p>
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label={title}>
        <polyline data-testid={`${id}-line`} points={polyline(series, W, H)} fill="none" stroke="currentColor" strokeWidth="2" />
      </svg>
    </section>
  );
}

/** Joins admin:stats on `socket` and draws what arrives. */
export default function Dashboard({ socket }) {
  const [points, setPoints] = useState([]);
  const [status, setStatus] = useState("connecting");

  useEffect(() => {
    if (!socket) return undefined;
    const channel = socket.channel("admin:stats", {});
    channel.on("stats", (point) => setPoints((ps) => append(ps, point)));
    channel
      .join()
      .receive("ok", ({ history }) => {
        setStatus("live");
        setPoints((ps) => (history || []).reduce(append, ps));
      })
      .receive("error", ({ reason }) => setStatus(`refused: ${reason}`))
      .receive("timeout", () => setStatus("timeout"));
    return () => channel.leave();
  }, [socket]);

  const mib = 1 / (1024 * 1024);
  return (
    <main className="dash">
      <header>
        <h1>phx-threads</h1>
        <span className="dash-status" data-testid="dash-status">{status}</span>
        <span className="dash-points">{points.length} s of history</span>
      </header>
      <div className="dash-grid">
        <Chart id="connections" title="Connections" series={gauge(points, "connections")} />
        <Chart id="channels" title="Joined channels" series={gauge(points, "channels")} />
        <Chart id="threads" title="Threads" series={gauge(points, "threads")} />
        <Chart id="memory" title="Memory (RSS)" series={gauge(points, "rss_bytes", mib)} unit="MiB" />
        <Chart id="frames-out" title="Frames out" series={rate(points, "frames_out")} unit="/s" />
        <Chart id="frames-in" title="Frames in" series={rate(points, "frames_in")} unit="/s" />
        <Chart id="broadcasts" title="Broadcasts" series={rate(points, "broadcasts")} unit="/s" />
        <Chart id="http" title="REST requests" series={rate(points, "http_requests")} unit="/s" />
      </div>
    </main>
  );
}
