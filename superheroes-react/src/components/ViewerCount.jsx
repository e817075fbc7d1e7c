/**
 * How many people are viewing the roster right now (Phoenix Presence); nothing until the first
 * presence sync.
 * @param {{count: number | null}} props
 */
export default function ViewerCount({ count }) {
  if (count == null) return null;
  return (
    <span className="count viewer-count" data-testid="viewer-count" aria-live="polite">
      {count} viewing
    </span>
  );
}
