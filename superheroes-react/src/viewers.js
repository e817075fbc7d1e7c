// Who is viewing the roster: every tab joins "superheroes:lobby" with its own viewer_id, the
// server tracks it in Phoenix Presence, and the official phoenix `Presence` class keeps the
// list in sync (presence_state after each join, presence_diff afterwards).
import { Presence } from "phoenix";

const STORAGE_KEY = "superheroes.viewer_id";

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * This tab's viewer id: kept in sessionStorage, which is per tab, so a reload stays the same
 * viewer and a second tab is another one.
 * @param {Storage | undefined} storage
 */
export function viewerId(storage = globalThis.sessionStorage) {
  try {
    let id = storage.getItem(STORAGE_KEY);
    if (!id) {
      id = randomId();
      storage.setItem(STORAGE_KEY, id);
    }
    return id;
  } catch {
    // Storage disabled (privacy settings): one id per page load.
    return randomId();
  }
}

/**
 * Calls `onCount(n)` with the number of distinct viewers after every presence sync. Must be
 * called before `channel.join()`, so the first presence_state is not missed.
 * @param {import("phoenix").Channel} channel
 * @param {(n: number) => void} onCount
 */
export function watchViewers(channel, onCount) {
  const presence = new Presence(channel);
  presence.onSync(() => onCount(presence.list().length));
  return presence;
}
