import { describe, expect, it } from "vitest";
import { append, gauge, human, polyline, rate } from "./series.js";

const p = (t, extra) => ({ t, connections: 0, frames_out: 0, ...extra });

describe("dashboard series", () => {
  it("keeps the newest points, in order, bounded", () => {
    let points = [];
    for (let t = 1; t <= 5; t++) points = append(points, p(t * 1000), 3);
    expect(points.map((x) => x.t)).toEqual([3000, 4000, 5000]);
    expect(append(points, p(4000), 3)).toBe(points); // stale or duplicate point
    expect(append(points, null, 3)).toBe(points);
  });

  it("derives per-second rates from counter totals, skipping resets", () => {
    const points = [p(0, { frames_out: 0 }), p(2000, { frames_out: 100 }), p(3000, { frames_out: 5 }), p(4000, { frames_out: 15 })];
    expect(rate(points, "frames_out")).toEqual([{ t: 2000, v: 50 }, { t: 4000, v: 10 }]);
  });

  it("draws a series into the box, highest value at the top", () => {
    const series = gauge([p(0, { connections: 0 }), p(1000, { connections: 10 })], "connections");
    expect(polyline(series, 100, 50)).toBe("0.0,50.0 100.0,0.0");
    expect(polyline([], 100, 50)).toBe("");
  });

  it("formats numbers for humans", () => {
    expect(human(12)).toBe("12");
    expect(human(12345)).toBe("12.3k");
    expect(human(5300000)).toBe("5.3M");
    expect(human(2.25)).toBe("2.3");
  });
});
