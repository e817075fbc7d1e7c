import { useState } from "react";
import { PAGE_SIZE, pageCount, pageOf } from "../paging.js";
import HeroRow from "./HeroRow.jsx";

/** Previous / next page, shown only when the roster has more than one page. */
function Pager({ page, total, onPage }) {
  const pages = pageCount(total);
  if (pages <= 1) return null;
  const first = page * PAGE_SIZE + 1;
  const last = Math.min(total, (page + 1) * PAGE_SIZE);
  return (
    <nav className="pager" aria-label="Roster pages">
      <button type="button" className="secondary" data-testid="pager-prev" disabled={page === 0} onClick={() => onPage(page - 1)}>
        Previous
      </button>
      <span data-testid="pager-status" aria-live="polite">
        Page {page + 1} of {pages} (heroes {first}–{last} of {total})
      </span>
      <button type="button" className="secondary" data-testid="pager-next" disabled={page >= pages - 1} onClick={() => onPage(page + 1)}>
        Next
      </button>
    </nav>
  );
}

/**
 * @param {{rows: any[], flash: Record<number, {kind: string, seq: number}>, hydrated: boolean,
 *          connection: string, api: any, dispatch: (action: any) => void}} props
 */
export default function HeroTable({ rows, flash, hydrated, connection, api, dispatch }) {
  const [wanted, setWanted] = useState(0);
  const { page, rows: shown } = pageOf(rows, wanted);
  let placeholder = null;
  if (rows.length === 0) {
    if (hydrated) placeholder = "No superheroes yet";
    else if (connection === "offline") placeholder = "Waiting for the server…";
    else placeholder = "Loading superheroes…";
  }
  return (
    <>
    <table className="heroes" data-testid="heroes-table" aria-busy={!hydrated}>
      <caption className="visually-hidden">Superheroes, updated live</caption>
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Location</th>
          <th scope="col">Power</th>
          <th scope="col">Updated</th>
          <th scope="col">
            <span className="visually-hidden">Actions</span>
          </th>
        </tr>
      </thead>
      <tbody>
        {placeholder !== null ? (
          <tr>
            <td colSpan={5} className="placeholder" data-testid={hydrated ? "empty-state" : "loading-state"}>
              {placeholder}
            </td>
          </tr>
        ) : (
          shown.map((hero) => (
            <HeroRow key={hero.id} hero={hero} flash={flash[hero.id]} api={api} dispatch={dispatch} />
          ))
        )}
      </tbody>
    </table>
    <Pager page={page} total={rows.length} onPage={setWanted} />
    </>
  );
}
