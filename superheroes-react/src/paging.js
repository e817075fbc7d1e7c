// Which slice of the roster the table shows. Pure functions, no React.
//
// The lobby hydrates the whole table at once (up to the server's bound,
// 10,000 heroes by default); rendering thousands of rows with inline editors
// makes the page sluggish, so the table shows one page at a time.

export const PAGE_SIZE = 100;

/** Number of pages for `total` rows; an empty table still has one (empty) page. */
export function pageCount(total, size = PAGE_SIZE) {
  return Math.max(1, Math.ceil(total / size));
}

/** `page` moved into range, e.g. after deletes shrank the table under it. */
export function clampPage(page, total, size = PAGE_SIZE) {
  return Math.min(Math.max(0, Math.trunc(page) || 0), pageCount(total, size) - 1);
}

/** The rows of page `page` (clamped) and the clamped page number. */
export function pageOf(rows, page, size = PAGE_SIZE) {
  const current = clampPage(page, rows.length, size);
  return { page: current, rows: rows.slice(current * size, (current + 1) * size) };
}
