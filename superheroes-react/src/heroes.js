// All superhero state logic lives here, as pure functions (no React, no I/O).
//
// The server pushes on the "superheroes:lobby" channel:
//   hydrate  {superheroes: [hero...], message_id}  -> replaces the rows
//   create   {superhero: hero, message_id}         -> upsert
//   update   {superhero: hero, message_id}         -> upsert
//   delete   {superhero: hero, message_id}         -> remove by superhero.id
// hero = {id: integer, name, location, power, inserted_at, updated_at}
// with RFC 3339 timestamps carrying microseconds.
//
// Neither WebSockets nor the server guarantee that create/update/delete
// arrive in the order they happened, so every upsert is last-write-wins:
// a version of a row only replaces the one we hold when its `updated_at`
// is later (ties are broken deterministically, see compareVersions).
// Deletes leave a tombstone (id -> updated_at of the deleted row) so a late
// create/update of a row that is already gone cannot resurrect it.
//
// Rows are kept sorted by id, which is the display order.

/** @typedef {{id:number,name:string,location:string,power:string,inserted_at?:string,updated_at?:string}} Hero */

/**
 * @typedef {object} HeroesState
 * @property {Hero[]} rows          sorted by id
 * @property {Record<number, number>} tombstones  id -> updated_at (µs) of the deleted version (Infinity if unknown)
 * @property {boolean} hydrated     true once a hydrate has been applied
 * @property {Record<number, {kind: 'created'|'updated', seq: number}>} flash  rows to highlight
 * @property {number} seq           counter used to restart the flash animation
 */

/** @type {HeroesState} */
export const initialState = Object.freeze({
  rows: Object.freeze([]),
  tombstones: Object.freeze({}),
  hydrated: false,
  flash: Object.freeze({}),
  seq: 0,
});

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})?$/;

/**
 * Parse an RFC 3339 timestamp into microseconds since the Unix epoch.
 * A missing offset is read as UTC (Ecto's NaiveDateTime is serialised that way).
 * Digits beyond microseconds are ignored. Returns null when unparseable.
 * @param {unknown} value
 * @returns {number|null}
 */
export function parseTimestamp(value) {
  if (typeof value !== "string") return null;
  const m = RFC3339.exec(value.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac = "", offset = "Z"] = m;
  const ms = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
  if (Number.isNaN(ms)) return null;
  let offsetMinutes = 0;
  if (offset !== "Z" && offset !== "z") {
    const sign = offset[0] === "-" ? -1 : 1;
    const digits = offset.slice(1).replace(":", "");
    offsetMinutes = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4)));
  }
  const micros = Number((frac + "000000").slice(0, 6));
  return (ms - offsetMinutes * 60_000) * 1000 + micros;
}

function versionKey(hero) {
  return parseTimestamp(hero && hero.updated_at);
}

// Canonical text of a hero, used only to break exact timestamp ties so that
// every delivery order converges on the same row.
function canonical(hero) {
  return JSON.stringify(Object.keys(hero).sort().map((k) => [k, hero[k]]));
}

/**
 * Order two versions of the SAME row: negative if `a` is older than `b`,
 * positive if newer, 0 if identical. By `updated_at` first; a version without
 * a parseable `updated_at` is treated as newer than any timestamped one (we
 * cannot prove it is stale); exact ties are broken by canonical content.
 * @param {Hero} a
 * @param {Hero} b
 */
export function compareVersions(a, b) {
  const ka = versionKey(a);
  const kb = versionKey(b);
  if (ka !== kb) {
    if (ka === null) return 1;
    if (kb === null) return -1;
    return ka < kb ? -1 : 1;
  }
  const ca = canonical(a);
  const cb = canonical(b);
  return ca === cb ? 0 : ca < cb ? -1 : 1;
}

function isHero(hero) {
  return hero !== null && typeof hero === "object" && Number.isInteger(hero.id);
}

function byId(a, b) {
  return a.id - b.id;
}

function findIndex(rows, id) {
  // rows are sorted by id: binary search
  let lo = 0;
  let hi = rows.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const midId = rows[mid].id;
    if (midId === id) return mid;
    if (midId < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return -(lo + 1);
}

/**
 * Replace all rows with the server's snapshot. Duplicated ids in the
 * snapshot are resolved last-write-wins. Tombstones for ids that the
 * snapshot contains are dropped (the server says the row exists).
 * @param {HeroesState} state
 * @param {Hero[]} superheroes
 * @returns {HeroesState}
 */
export function hydrate(state, superheroes) {
  const latest = new Map();
  for (const hero of Array.isArray(superheroes) ? superheroes : []) {
    if (!isHero(hero)) continue;
    const held = latest.get(hero.id);
    if (!held || compareVersions(hero, held) > 0) latest.set(hero.id, hero);
  }
  const rows = [...latest.values()].sort(byId);
  let tombstones = state.tombstones;
  if (rows.some((h) => h.id in tombstones)) {
    tombstones = { ...tombstones };
    for (const h of rows) delete tombstones[h.id];
  }
  return { ...state, rows, tombstones, hydrated: true, flash: {} };
}

/**
 * Insert or replace one row, last-write-wins. Returns `state` itself
 * (same object) when the event is stale or a duplicate.
 * @param {HeroesState} state
 * @param {Hero} hero
 * @returns {HeroesState}
 */
export function upsert(state, hero) {
  if (!isHero(hero)) return state;
  if (hero.id in state.tombstones) {
    const deletedAt = state.tombstones[hero.id];
    const key = versionKey(hero);
    // A version no newer than the deleted one is a late, stale event.
    if (key === null || key <= deletedAt) return state;
  }
  const idx = findIndex(state.rows, hero.id);
  const rows = state.rows.slice();
  let kind;
  if (idx >= 0) {
    if (compareVersions(hero, rows[idx]) <= 0) return state;
    rows[idx] = hero;
    kind = "updated";
  } else {
    rows.splice(-(idx + 1), 0, hero);
    kind = "created";
  }
  let tombstones = state.tombstones;
  if (hero.id in tombstones) {
    tombstones = { ...tombstones };
    delete tombstones[hero.id];
  }
  const seq = state.seq + 1;
  return { ...state, rows, tombstones, seq, flash: { ...state.flash, [hero.id]: { kind, seq } } };
}

/**
 * Remove a row by id and remember it as deleted. Accepts the full hero of the
 * delete payload (or just `{id}`).
 * @param {HeroesState} state
 * @param {Hero|{id:number}} hero
 * @returns {HeroesState}
 */
export function remove(state, hero) {
  if (!isHero(hero)) return state;
  const key = versionKey(hero);
  const deletedAt = key === null ? Infinity : key;
  const previous = state.tombstones[hero.id];
  const idx = findIndex(state.rows, hero.id);
  if (idx < 0 && previous !== undefined && previous >= deletedAt) return state;
  const tombstones = {
    ...state.tombstones,
    [hero.id]: previous === undefined ? deletedAt : Math.max(previous, deletedAt),
  };
  if (idx < 0) return { ...state, tombstones };
  const rows = state.rows.slice();
  rows.splice(idx, 1);
  let flash = state.flash;
  if (hero.id in flash) {
    flash = { ...flash };
    delete flash[hero.id];
  }
  return { ...state, rows, tombstones, flash };
}

/**
 * Forget the highlight of a row once its animation ended (only if no newer
 * change re-highlighted it in the meantime).
 * @param {HeroesState} state
 * @param {number} id
 * @param {number} seq
 */
export function clearFlash(state, id, seq) {
  const f = state.flash[id];
  if (!f || f.seq !== seq) return state;
  const flash = { ...state.flash };
  delete flash[id];
  return { ...state, flash };
}

/**
 * Reducer for useReducer. Actions:
 *   {type: "hydrate", payload: {superheroes}}
 *   {type: "create" | "update" | "delete", payload: {superhero}}
 *   {type: "flash_done", id, seq}
 * Channel payloads can be dispatched unchanged (`message_id` is ignored:
 * duplicates are already idempotent under last-write-wins).
 * @param {HeroesState} state
 * @param {{type: string, payload?: any, id?: number, seq?: number}} action
 * @returns {HeroesState}
 */
export function reduce(state, action) {
  switch (action.type) {
    case "hydrate":
      return hydrate(state, action.payload && action.payload.superheroes);
    case "create":
    case "update":
      return upsert(state, action.payload && action.payload.superhero);
    case "delete":
      return remove(state, action.payload && action.payload.superhero);
    case "flash_done":
      return clearFlash(state, action.id, action.seq);
    default:
      return state;
  }
}
