export const FIELDS = Object.freeze([
  { name: "name", label: "Name" },
  { name: "location", label: "Location" },
  { name: "power", label: "Power" },
]);

const FIELD_NAMES = new Set(FIELDS.map((f) => f.name));

/**
 * Split API field errors into those shown next to an input and the rest
 * (shown as a general message).
 * @param {Record<string, string[]>} fieldErrors
 */
export function splitErrors(fieldErrors) {
  const byField = {};
  const other = [];
  for (const [field, messages] of Object.entries(fieldErrors || {})) {
    if (FIELD_NAMES.has(field)) byField[field] = messages.join(", ");
    else other.push(`${field} ${messages.join(", ")}`);
  }
  return { byField, other };
}
