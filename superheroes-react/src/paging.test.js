import { describe, expect, test } from "vitest";
import { PAGE_SIZE, clampPage, pageCount, pageOf } from "./paging.js";

const rows = (n) => Array.from({ length: n }, (_, i) => ({ id: i + 1 }));

describe("paging", () => {
  test("page count rounds up and is at least one", () => {
    expect(pageCount(0)).toBe(1);
    expect(pageCount(PAGE_SIZE)).toBe(1);
    expect(pageCount(PAGE_SIZE + 1)).toBe(2);
    expect(pageCount(10_000)).toBe(100);
  });

  test("pages are clamped into range", () => {
    expect(clampPage(-3, 250, 100)).toBe(0);
    expect(clampPage(7, 250, 100)).toBe(2);
    expect(clampPage(Number.NaN, 250, 100)).toBe(0);
  });

  test("a page holds at most `size` rows, the last one the rest", () => {
    expect(pageOf(rows(250), 0, 100).rows.map((r) => r.id).slice(0, 2)).toEqual([1, 2]);
    expect(pageOf(rows(250), 2, 100).rows.map((r) => r.id)).toEqual(rows(50).map((r) => r.id + 200));
    // the table shrank under the page being viewed: show its new last page
    expect(pageOf(rows(120), 4, 100)).toEqual({ page: 1, rows: rows(20).map((r) => ({ id: r.id + 100 })) });
  });
});
