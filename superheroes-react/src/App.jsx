import { useMemo } from "react";
import { createApi } from "./api.js";
import { useSuperheroes } from "./useSuperheroes.js";
import ConnectionBadge from "./components/ConnectionBadge.jsx";
import ViewerCount from "./components/ViewerCount.jsx";
import HeroForm from "./components/HeroForm.jsx";
import HeroTable from "./components/HeroTable.jsx";

/**
 * @param {{config: {socket_url: string, api_url: string} | null, socket: import("phoenix").Socket | null}} props
 */
export default function App({ config, socket }) {
  const { heroes, dispatch, connection, viewers } = useSuperheroes(socket);
  const api = useMemo(() => (config ? createApi(config.api_url) : null), [config]);

  return (
    <div className="app">
      <header className="app-header">
        <h1>Superheroes</h1>
        <ConnectionBadge status={connection} />
        <ViewerCount count={viewers} />
      </header>
      <main>
        <section className="panel" aria-labelledby="create-heading">
          <h2 id="create-heading">Add a superhero</h2>
          <HeroForm api={api} onSaved={(hero) => dispatch({ type: "create", payload: { superhero: hero } })} />
        </section>
        <section className="panel" aria-labelledby="roster-heading">
          <h2 id="roster-heading">
            Roster{" "}
            {heroes.hydrated && (
              <span className="count" data-testid="hero-count">
                ({heroes.rows.length})
              </span>
            )}
          </h2>
          {connection !== "live" && heroes.hydrated && (
            <p className="stale-note" data-testid="stale-note">
              Showing the last known roster. It will refresh when the connection is back.
            </p>
          )}
          <HeroTable
            rows={heroes.rows}
            flash={heroes.flash}
            hydrated={heroes.hydrated}
            connection={connection}
            api={api}
            dispatch={dispatch}
          />
        </section>
      </main>
    </div>
  );
}
