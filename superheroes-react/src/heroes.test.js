import { describe, expect, it } from "vitest";
import {
  compareVersions,
  hydrate,
  initialState,
  parseTimestamp,
  reduce,
  remove,
  upsert,
} from "./heroes.js";

// RFC 3339 with microseconds, like the server sends: 2024-05-01T12:00:00.000001Z
function ts(micros) {
  const base = Date.UTC(2024, 4, 1, 12, 0, 0);
  const ms = base + Math.floor(micros / 1000);
  const iso = new Date(ms).toISOString(); // ...:00.123Z
  const us = String(micros % 1000).padStart(3, "0");
  return iso.replace("Z", `${us}Z`);
}

function hero(id, t, fields = {}) {
  return {
    id,
    name: `Hero ${id}`,
    location: "Gotham",
    power: "flight",
    inserted_at: ts(0),
    updated_at: ts(t),
    ...fields,
  };
}

const ids = (state) => state.rows.map((h) => h.id);

describe("parseTimestamp", () => {
  it("parses microseconds and orders them", () => {
    expect(parseTimestamp("2024-05-01T12:00:00.000001Z")).toBe(
      Date.UTC(2024, 4, 1, 12) * 1000 + 1,
    );
    expect(parseTimestamp(ts(2))).toBeGreaterThan(parseTimestamp(ts(1)));
  });

  it("honours offsets, short fractions and naive (offset-less) timestamps", () => {
    const utc = parseTimestamp("2024-05-01T12:00:00.5Z");
    expect(parseTimestamp("2024-05-01T14:00:00.500000+02:00")).toBe(utc);
    expect(parseTimestamp("2024-05-01T07:30:00.500-0430")).toBe(utc);
    expect(parseTimestamp("2024-05-01T12:00:00.500000")).toBe(utc);
    expect(parseTimestamp("2024-05-01 12:00:00.500000123Z")).toBe(utc);
  });

  it("returns null for garbage", () => {
    expect(parseTimestamp(undefined)).toBeNull();
    expect(parseTimestamp("yesterday")).toBeNull();
    expect(parseTimestamp(12)).toBeNull();
  });
});

describe("compareVersions", () => {
  it("orders by updated_at", () => {
    expect(compareVersions(hero(1, 1), hero(1, 2))).toBeLessThan(0);
    expect(compareVersions(hero(1, 2), hero(1, 1))).toBeGreaterThan(0);
    expect(compareVersions(hero(1, 2), hero(1, 2))).toBe(0);
  });

  it("breaks exact ties deterministically", () => {
    const a = hero(1, 5, { name: "A" });
    const b = hero(1, 5, { name: "B" });
    expect(Math.sign(compareVersions(a, b))).toBe(-Math.sign(compareVersions(b, a)));
    expect(compareVersions(a, b)).not.toBe(0);
  });
});

describe("hydrate", () => {
  it("replaces the rows, sorted by id", () => {
    let s = upsert(initialState, hero(9, 1));
    s = hydrate(s, [hero(3, 1), hero(1, 1), hero(2, 1)]);
    expect(ids(s)).toEqual([1, 2, 3]);
    expect(s.hydrated).toBe(true);
    expect(s.flash).toEqual({});
  });

  it("accepts an empty list and ignores malformed entries", () => {
    expect(hydrate(initialState, []).rows).toEqual([]);
    expect(ids(hydrate(initialState, [null, { id: "x" }, hero(4, 1)]))).toEqual([4]);
    expect(hydrate(initialState, undefined).rows).toEqual([]);
  });

  it("keeps the newest of duplicated ids", () => {
    const s = hydrate(initialState, [hero(1, 3, { name: "new" }), hero(1, 2, { name: "old" })]);
    expect(s.rows).toEqual([hero(1, 3, { name: "new" })]);
  });

  it("does not mutate the previous state", () => {
    const before = hydrate(initialState, [hero(1, 1)]);
    const snapshot = structuredClone(before);
    hydrate(before, [hero(2, 1)]);
    upsert(before, hero(1, 2));
    remove(before, hero(1, 1));
    expect(before).toEqual(snapshot);
  });
});

describe("upsert", () => {
  it("inserts unknown rows in id order and flags them as created", () => {
    let s = hydrate(initialState, [hero(1, 1), hero(5, 1)]);
    s = upsert(s, hero(3, 2));
    expect(ids(s)).toEqual([1, 3, 5]);
    expect(s.flash[3].kind).toBe("created");
  });

  it("replaces a row with a newer version and flags it as updated", () => {
    let s = hydrate(initialState, [hero(1, 1)]);
    s = upsert(s, hero(1, 2, { name: "Renamed" }));
    expect(s.rows[0].name).toBe("Renamed");
    expect(s.flash[1].kind).toBe("updated");
  });

  it("ignores stale and duplicate versions (returns the same state object)", () => {
    const s = hydrate(initialState, [hero(1, 5, { name: "current" })]);
    expect(upsert(s, hero(1, 4, { name: "stale" }))).toBe(s);
    expect(upsert(s, hero(1, 5, { name: "current" }))).toBe(s);
  });

  it("treats an update for an unknown row as an insert", () => {
    const s = reduce(hydrate(initialState, []), {
      type: "update",
      payload: { superhero: hero(7, 1), message_id: "m" },
    });
    expect(ids(s)).toEqual([7]);
  });
});

describe("remove", () => {
  it("removes by id using the full hero from the delete payload", () => {
    let s = hydrate(initialState, [hero(1, 1), hero(2, 1)]);
    s = reduce(s, { type: "delete", payload: { superhero: hero(1, 1), message_id: "m" } });
    expect(ids(s)).toEqual([2]);
  });

  it("does not let a late create/update resurrect a deleted row", () => {
    let s = hydrate(initialState, [hero(1, 1)]);
    s = remove(s, hero(1, 3));
    expect(upsert(s, hero(1, 2))).toBe(s);
    expect(upsert(s, hero(1, 3))).toBe(s);
    expect(ids(s)).toEqual([]);
  });

  it("records a delete that arrives before its create", () => {
    let s = hydrate(initialState, []);
    s = remove(s, hero(4, 2));
    s = upsert(s, hero(4, 1));
    s = upsert(s, hero(4, 2));
    expect(ids(s)).toEqual([]);
  });

  it("without a timestamp, blocks every later upsert of that id", () => {
    let s = remove(hydrate(initialState, [hero(1, 1)]), { id: 1 });
    expect(upsert(s, hero(1, 99))).toBe(s);
  });

  it("lets a snapshot that contains the id bring it back", () => {
    let s = remove(hydrate(initialState, [hero(1, 1)]), hero(1, 1));
    s = hydrate(s, [hero(1, 1)]);
    expect(ids(s)).toEqual([1]);
    expect(ids(upsert(s, hero(1, 2)))).toEqual([1]);
  });
});

describe("reduce", () => {
  it("accepts channel payloads as they come off the wire", () => {
    let s = reduce(initialState, {
      type: "hydrate",
      payload: { superheroes: [hero(1, 1)], message_id: "a" },
    });
    s = reduce(s, { type: "create", payload: { superhero: hero(2, 2), message_id: "b" } });
    s = reduce(s, { type: "update", payload: { superhero: hero(2, 3, { power: "x" }), message_id: "c" } });
    expect(s.rows).toEqual([hero(1, 1), hero(2, 3, { power: "x" })]);
    const seq = s.flash[2].seq;
    expect(reduce(s, { type: "flash_done", id: 2, seq: seq - 1 })).toBe(s);
    expect(reduce(s, { type: "flash_done", id: 2, seq }).flash[2]).toBeUndefined();
    expect(reduce(s, { type: "nonsense" })).toBe(s);
  });
});

// ---------------------------------------------------------------------------
// Convergence: whatever order the events of a history arrive in (after the
// hydrate of the initial snapshot), the client ends with exactly the final rows.

// Small deterministic PRNG so failures are reproducible.
function mulberry32(seed) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Simulate the server: a table plus the events it pushes.
function simulate(rand, { initialRows, operations }) {
  let clock = 0;
  let nextId = 1;
  const db = new Map();
  for (let i = 0; i < initialRows; i++) {
    const h = hero(nextId++, ++clock, { name: `initial ${i}` });
    db.set(h.id, h);
  }
  const snapshot = [...db.values()];
  const events = [];
  for (let i = 0; i < operations; i++) {
    const existing = [...db.keys()];
    const r = rand();
    if (existing.length === 0 || r < 0.35) {
      const h = hero(nextId++, ++clock, { name: `created ${i}` });
      db.set(h.id, h);
      events.push({ type: "create", payload: { superhero: h, message_id: `m${i}` } });
    } else if (r < 0.75) {
      const id = existing[Math.floor(rand() * existing.length)];
      const h = { ...db.get(id), updated_at: ts(++clock), power: `power ${i}` };
      db.set(id, h);
      events.push({ type: "update", payload: { superhero: h, message_id: `m${i}` } });
    } else {
      const id = existing[Math.floor(rand() * existing.length)];
      const h = db.get(id);
      db.delete(id);
      events.push({ type: "delete", payload: { superhero: h, message_id: `m${i}` } });
    }
  }
  const final = [...db.values()].sort((a, b) => a.id - b.id);
  return { snapshot, events, final };
}

function shuffle(rand, list) {
  const a = list.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

function applyAll(snapshot, events) {
  let s = reduce(initialState, { type: "hydrate", payload: { superheroes: snapshot } });
  for (const e of events) s = reduce(s, e);
  return s.rows;
}

function* permutations(list) {
  if (list.length <= 1) {
    yield list;
    return;
  }
  for (let i = 0; i < list.length; i++) {
    const rest = [...list.slice(0, i), ...list.slice(i + 1)];
    for (const p of permutations(rest)) yield [list[i], ...p];
  }
}

describe("any interleaving of create/update/delete converges", () => {
  it("every permutation of a small history ends with the final rows", () => {
    const h1 = hero(1, 1);
    const h1b = { ...h1, updated_at: ts(2), name: "one-b" };
    const h1c = { ...h1, updated_at: ts(3), name: "one-c" };
    const h2 = hero(2, 4);
    const h2b = { ...h2, updated_at: ts(5), power: "two-b" };
    const h3 = hero(3, 6);
    const events = [
      { type: "create", payload: { superhero: h1 } },
      { type: "update", payload: { superhero: h1b } },
      { type: "update", payload: { superhero: h1c } },
      { type: "create", payload: { superhero: h2 } },
      { type: "update", payload: { superhero: h2b } },
      { type: "delete", payload: { superhero: h2b } },
      { type: "create", payload: { superhero: h3 } },
    ];
    let count = 0;
    for (const order of permutations(events)) {
      expect(applyAll([], order)).toEqual([h1c, h3]);
      count++;
    }
    expect(count).toBe(5040);
  });

  it("random histories, random delivery orders, with duplicated deliveries", () => {
    const rand = mulberry32(20240501);
    for (let round = 0; round < 400; round++) {
      const history = simulate(rand, {
        initialRows: Math.floor(rand() * 5),
        operations: 1 + Math.floor(rand() * 30),
      });
      const duplicated = history.events.filter(() => rand() < 0.2);
      for (let k = 0; k < 5; k++) {
        const order = shuffle(rand, [...history.events, ...duplicated]);
        expect(applyAll(history.snapshot, order), `round ${round}, order ${k}`).toEqual(history.final);
      }
      // in-order delivery is of course fine too
      expect(applyAll(history.snapshot, history.events)).toEqual(history.final);
    }
  });
});
