// REST client for /api/superheroes. `baseUrl` is config.api_url ("" = same origin).
//   POST   /api/superheroes      {"superhero": {...}} -> 201 {"data": hero}
//   PUT    /api/superheroes/:id  {"superhero": {...}} -> 200 {"data": hero}
//   DELETE /api/superheroes/:id                       -> 204
//   422 {"errors": {"name": ["can't be blank"], ...}}
//   503 {"errors": {"detail": "Service Unavailable"}}

export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, fieldErrors?: Record<string, string[]>}} [details]
   */
  constructor(message, { status = 0, fieldErrors = {} } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    /** Field -> messages, only for 422 responses. */
    this.fieldErrors = fieldErrors;
  }
}

async function readJson(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function normaliseFieldErrors(errors) {
  const out = {};
  if (!errors || typeof errors !== "object") return out;
  for (const [field, value] of Object.entries(errors)) {
    if (Array.isArray(value)) out[field] = value.map(String);
    else if (value != null) out[field] = [String(value)];
  }
  return out;
}

async function toError(res) {
  const body = await readJson(res);
  const errors = body && body.errors;
  if (res.status === 422) {
    return new ApiError("Please fix the highlighted fields.", {
      status: 422,
      fieldErrors: normaliseFieldErrors(errors),
    });
  }
  const detail = errors && typeof errors.detail === "string" ? errors.detail : null;
  if (res.status === 503) {
    return new ApiError(`The server cannot reach its database right now (${detail || "Service Unavailable"}). Try again shortly.`, { status: 503 });
  }
  if (res.status === 404) {
    return new ApiError("That superhero no longer exists.", { status: 404 });
  }
  return new ApiError(detail || `Request failed (HTTP ${res.status}).`, { status: res.status });
}

/**
 * @param {string} baseUrl
 * @param {{fetch?: typeof fetch}} [opts]
 */
export function createApi(baseUrl, { fetch: doFetch = (...args) => globalThis.fetch(...args) } = {}) {
  const root = `${baseUrl.replace(/\/+$/, "")}/api/superheroes`;

  async function request(method, url, body) {
    let res;
    try {
      res = await doFetch(url, {
        method,
        headers: body === undefined ? { accept: "application/json" } : { accept: "application/json", "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError("Cannot reach the server. Check your connection and try again.");
    }
    if (!res.ok) throw await toError(res);
    if (res.status === 204) return null;
    const json = await readJson(res);
    return json ? json.data : null;
  }

  return {
    /** @param {{name?: string, location?: string, power?: string}} fields */
    create: (fields) => request("POST", root, { superhero: fields }),
    /** @param {number} id @param {{name?: string, location?: string, power?: string}} fields */
    update: (id, fields) => request("PUT", `${root}/${encodeURIComponent(id)}`, { superhero: fields }),
    /** @param {number} id */
    remove: (id) => request("DELETE", `${root}/${encodeURIComponent(id)}`),
  };
}
