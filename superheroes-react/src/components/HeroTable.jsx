import HeroRow from "./HeroRow.jsx";

/**
 * @param {{rows: any[], flash: Record<number, {kind: string, seq: number}>, hydrated: boolean,
 *          connection: string, api: any, dispatch: (action: any) => void}} props
 */
export default function HeroTable({ rows, flash, hydrated, connection, api, dispatch }) {
  let placeholder = null;
  if (rows.length === 0) {
    if (hydrated) placeholder = "No superheroes yet";
    else if (connection === "offline") placeholder = "Waiting for the server…";
    else placeholder = "Loading superheroes…";
  }
  return (
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
          rows.map((hero) => (
            <HeroRow key={hero.id} hero={hero} flash={flash[hero.id]} api={api} dispatch={dispatch} />
          ))
        )}
      </tbody>
    </table>
  );
}
