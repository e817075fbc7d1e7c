// The dashboard's data, pure: snapshots from the server's admin:stats channel (one a second,
// counters as totals) become the series the charts draw. Rates come from consecutive points.

export const MAX_POINTS = 300; // five minutes at one point a second

/** Appends `point` (ignoring one not newer than the last), keeping the last MAX_POINTS. */
export function append(points, point, max = MAX_POINTS) {
  if (!point || typeof point.t !== "number") return points;
  const last = points[points.length - 1];
  if (last && point.t <= last.t) return points;
  const next = points.concat([point]);
  return next.length > max ? next.slice(next.length - max) : next;
}

/** A gauge as [{t, v}]. */
export function gauge(points, key, scale = 1) {
  return points.filter((p) => typeof p[key] === "number").map((p) => ({ t: p.t, v: p[key] * scale }));
}

/** A counter's per-second rate between consecutive points; a reset (restart) gives no point. */
export function rate(points, key) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const [a, b] = [points[i - 1], points[i]];
    const dt = (b.t - a.t) / 1000;
    const dv = b[key] - a[key];
    if (dt > 0 && dv >= 0) out.push({ t: b.t, v: dv / dt });
  }
  return out;
}

/** The SVG polyline `points` attribute for `series` in a width × height box. */
export function polyline(series, width, height) {
  if (series.length === 0) return "";
  const t0 = series[0].t;
  const span = Math.max(series[series.length - 1].t - t0, 1);
  const top = Math.max(...series.map((p) => p.v), 1);
  return series
    .map((p) => {
      const x = series.length === 1 ? width : ((p.t - t0) / span) * width;
      const y = height - (p.v / top) * height;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

/** A number as people read it on a dashboard: 1234 → "1.2k", 5300000 → "5.3M". */
export function human(v) {
  const abs = Math.abs(v);
  if (abs >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
