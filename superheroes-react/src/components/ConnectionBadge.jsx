const DESCRIPTIONS = {
  connecting: "Connecting to the server…",
  live: "Live: changes appear as they happen",
  reconnecting: "Connection lost, reconnecting…",
  offline: "Offline: the server cannot be reached",
};

/** @param {{status: 'connecting'|'live'|'reconnecting'|'offline'}} props */
export default function ConnectionBadge({ status }) {
  return (
    <p className="connection" role="status" aria-live="polite" title={DESCRIPTIONS[status]}>
      <span className="visually-hidden">Connection: </span>
      <span className={`badge badge-${status}`} data-testid="connection-state">
        {status}
      </span>
    </p>
  );
}
