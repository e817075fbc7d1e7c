import { useEffect, useRef, useState } from "react";
import { parseTimestamp } from "../heroes.js";
import { FIELDS, splitErrors } from "./fields.js";

function formatTime(value) {
  const micros = parseTimestamp(value);
  if (micros === null) return value || "";
  return new Date(Math.floor(micros / 1000)).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });
}

/**
 * One roster row with inline edit and delete, both through the REST API.
 * The row itself changes when the channel (or the API reply) delivers the
 * new version; `flash` highlights rows that were just created or updated.
 */
export default function HeroRow({ hero, flash, api, dispatch }) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(null);
  const [errors, setErrors] = useState({});
  const [rowError, setRowError] = useState(null);
  const [busy, setBusy] = useState(false);
  const firstInput = useRef(null);
  const editButton = useRef(null);
  const refocusEdit = useRef(false);

  useEffect(() => {
    if (editing && firstInput.current) firstInput.current.focus();
    if (!editing && refocusEdit.current && editButton.current) {
      refocusEdit.current = false;
      editButton.current.focus();
    }
  }, [editing]);

  function startEdit() {
    setDraft({ name: hero.name ?? "", location: hero.location ?? "", power: hero.power ?? "" });
    setErrors({});
    setRowError(null);
    setEditing(true);
  }

  function stopEdit() {
    refocusEdit.current = true;
    setEditing(false);
    setDraft(null);
    setErrors({});
  }

  async function save() {
    if (!api || busy) return;
    const changes = {};
    for (const { name } of FIELDS) if (draft[name] !== (hero[name] ?? "")) changes[name] = draft[name];
    if (Object.keys(changes).length === 0) {
      stopEdit();
      return;
    }
    setBusy(true);
    setRowError(null);
    try {
      const updated = await api.update(hero.id, changes);
      if (updated) dispatch({ type: "update", payload: { superhero: updated } });
      stopEdit();
    } catch (err) {
      if (err.status === 404) {
        dispatch({ type: "delete", payload: { superhero: { id: hero.id } } });
        return;
      }
      const { byField, other } = splitErrors(err.fieldErrors);
      setErrors(byField);
      setRowError(other.length ? other.join("; ") : err.status === 422 ? null : err.message);
    } finally {
      setBusy(false);
    }
  }

  async function destroy() {
    if (!api || busy) return;
    setBusy(true);
    setRowError(null);
    try {
      await api.remove(hero.id);
      dispatch({ type: "delete", payload: { superhero: hero } });
    } catch (err) {
      if (err.status === 404) dispatch({ type: "delete", payload: { superhero: hero } });
      else setRowError(err.message);
    } finally {
      setBusy(false);
    }
  }

  function onKeyDown(event) {
    if (event.key === "Enter") {
      event.preventDefault();
      save();
    } else if (event.key === "Escape") {
      event.preventDefault();
      stopEdit();
    }
  }

  const flashClass = flash ? `flash flash-${flash.seq % 2 ? "odd" : "even"}` : undefined;
  const label = hero.name || `#${hero.id}`;

  return (
    <tr
      data-testid={`hero-row-${hero.id}`}
      data-flash={flash ? flash.kind : undefined}
      className={flashClass}
      onAnimationEnd={(e) => {
        if (flash && e.target === e.currentTarget) dispatch({ type: "flash_done", id: hero.id, seq: flash.seq });
      }}
    >
      {FIELDS.map(({ name, label: fieldLabel }, i) => {
        const inputId = `hero-${hero.id}-${name}`;
        const error = errors[name];
        return (
          <td key={name} data-testid={`hero-${name}`} data-label={fieldLabel}>
            {editing ? (
              <>
                <label className="visually-hidden" htmlFor={inputId}>
                  {fieldLabel} of {label}
                </label>
                <input
                  id={inputId}
                  ref={i === 0 ? firstInput : undefined}
                  type="text"
                  autoComplete="off"
                  value={draft[name]}
                  disabled={busy}
                  aria-invalid={error ? "true" : undefined}
                  aria-describedby={error ? `${inputId}-error` : undefined}
                  data-testid={`edit-${name}`}
                  onKeyDown={onKeyDown}
                  onChange={(e) => {
                    const value = e.target.value;
                    setDraft((d) => ({ ...d, [name]: value }));
                  }}
                />
                {error && (
                  <span className="field-error" id={`${inputId}-error`} data-testid={`edit-${name}-error`}>
                    {error}
                  </span>
                )}
              </>
            ) : (
              hero[name]
            )}
          </td>
        );
      })}
      <td data-label="Updated">
        <time dateTime={hero.updated_at}>{formatTime(hero.updated_at)}</time>
      </td>
      <td className="actions">
        {editing ? (
          <>
            <button type="button" onClick={save} disabled={busy} data-testid="save-button">
              Save
            </button>
            <button type="button" className="secondary" onClick={stopEdit} disabled={busy} data-testid="cancel-button">
              Cancel
            </button>
          </>
        ) : (
          <>
            <button
              type="button"
              ref={editButton}
              onClick={startEdit}
              disabled={busy || !api}
              aria-label={`Edit ${label}`}
              data-testid="edit-button"
            >
              Edit
            </button>
            <button
              type="button"
              className="danger"
              onClick={destroy}
              disabled={busy || !api}
              aria-label={`Delete ${label}`}
              data-testid="delete-button"
            >
              Delete
            </button>
          </>
        )}
        {rowError && (
          <span className="row-error" role="alert" data-testid="row-error">
            {rowError}
          </span>
        )}
      </td>
    </tr>
  );
}
