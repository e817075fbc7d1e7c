import { useId, useState } from "react";
import { FIELDS, splitErrors } from "./fields.js";

const EMPTY = { name: "", location: "", power: "" };

/**
 * Create form. Validation is the server's job: its 422 errors are shown
 * next to the fields they belong to.
 * @param {{api: ReturnType<typeof import("../api.js").createApi> | null, onSaved: (hero: any) => void}} props
 */
export default function HeroForm({ api, onSaved }) {
  const uid = useId();
  const [values, setValues] = useState(EMPTY);
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    if (!api || busy) return;
    setBusy(true);
    setFormError(null);
    try {
      const hero = await api.create(values);
      setValues(EMPTY);
      setErrors({});
      if (hero) onSaved(hero);
    } catch (err) {
      const { byField, other } = splitErrors(err.fieldErrors);
      setErrors(byField);
      setFormError(other.length ? other.join("; ") : err.status === 422 ? null : err.message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="hero-form" onSubmit={submit} noValidate data-testid="create-form">
      {FIELDS.map(({ name, label }) => {
        const id = `${uid}-${name}`;
        const error = errors[name];
        return (
          <div className="field" key={name}>
            <label htmlFor={id}>{label}</label>
            <input
              id={id}
              name={name}
              type="text"
              autoComplete="off"
              aria-required="true"
              aria-invalid={error ? "true" : undefined}
              aria-describedby={error ? `${id}-error` : undefined}
              data-testid={`create-${name}`}
              value={values[name]}
              onChange={(e) => {
                const value = e.target.value;
                setValues((v) => ({ ...v, [name]: value }));
              }}
            />
            {error && (
              <span className="field-error" id={`${id}-error`} data-testid={`create-${name}-error`}>
                {error}
              </span>
            )}
          </div>
        );
      })}
      <div className="form-actions">
        <button type="submit" disabled={!api || busy} data-testid="create-submit">
          {busy ? "Adding…" : "Add superhero"}
        </button>
        {formError && (
          <p className="form-error" role="alert" data-testid="create-error">
            {formError}
          </p>
        )}
      </div>
    </form>
  );
}
