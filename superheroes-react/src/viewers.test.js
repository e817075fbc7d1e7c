import { describe, expect, test } from "vitest";
import { viewerId } from "./viewers.js";

function memoryStorage() {
  const items = new Map();
  return { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)) };
}

describe("viewerId", () => {
  test("is stable within one tab's storage and differs between tabs", () => {
    const tabA = memoryStorage();
    const tabB = memoryStorage();
    expect(viewerId(tabA)).toBe(viewerId(tabA));
    expect(viewerId(tabA)).not.toBe(viewerId(tabB));
  });

  test("still gives an id when storage throws", () => {
    const broken = { getItem: () => { throw new Error("denied"); }, setItem: () => {} };
    expect(viewerId(broken)).toMatch(/.+/);
  });
});
