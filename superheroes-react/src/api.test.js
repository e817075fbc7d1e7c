import { describe, expect, it } from "vitest";
import { ApiError, createApi } from "./api.js";

function fakeFetch(status, body) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, method: init.method, body: init.body && JSON.parse(init.body), headers: init.headers });
    const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
    return { ok: status >= 200 && status < 300, status, text: async () => text };
  };
  f.calls = calls;
  return f;
}

const hero = { id: 3, name: "Storm", location: "Kenya", power: "weather", inserted_at: "x", updated_at: "y" };

describe("createApi", () => {
  it("POSTs {superhero} to the same origin when api_url is empty", async () => {
    const f = fakeFetch(201, { data: hero });
    const api = createApi("", { fetch: f });
    expect(await api.create({ name: "Storm", location: "Kenya", power: "weather" })).toEqual(hero);
    expect(f.calls[0]).toMatchObject({
      url: "/api/superheroes",
      method: "POST",
      body: { superhero: { name: "Storm", location: "Kenya", power: "weather" } },
    });
    expect(f.calls[0].headers["content-type"]).toBe("application/json");
  });

  it("PUTs partial updates to an absolute api_url", async () => {
    const f = fakeFetch(200, { data: hero });
    await createApi("http://127.0.0.1:4001/", { fetch: f }).update(3, { power: "lightning" });
    expect(f.calls[0]).toMatchObject({
      url: "http://127.0.0.1:4001/api/superheroes/3",
      method: "PUT",
      body: { superhero: { power: "lightning" } },
    });
  });

  it("DELETE resolves to null on 204", async () => {
    const f = fakeFetch(204);
    expect(await createApi("", { fetch: f }).remove(3)).toBeNull();
    expect(f.calls[0]).toMatchObject({ url: "/api/superheroes/3", method: "DELETE" });
  });

  it("turns 422 into field errors", async () => {
    const f = fakeFetch(422, { errors: { name: ["can't be blank"], power: ["is too long", "is odd"] } });
    const err = await createApi("", { fetch: f }).create({}).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(422);
    expect(err.fieldErrors).toEqual({ name: ["can't be blank"], power: ["is too long", "is odd"] });
  });

  it("explains 503, 404, other statuses and network failures", async () => {
    const e503 = await createApi("", { fetch: fakeFetch(503, { errors: { detail: "Service Unavailable" } }) })
      .create({}).catch((e) => e);
    expect(e503.status).toBe(503);
    expect(e503.message).toMatch(/Service Unavailable/);

    const e404 = await createApi("", { fetch: fakeFetch(404, "not json") }).remove(1).catch((e) => e);
    expect(e404.status).toBe(404);

    const e500 = await createApi("", { fetch: fakeFetch(500) }).remove(1).catch((e) => e);
    expect(e500.message).toMatch(/500/);

    const offline = await createApi("", { fetch: async () => { throw new TypeError("Failed to fetch"); } })
      .remove(1).catch((e) => e);
    expect(offline).toBeInstanceOf(ApiError);
    expect(offline.status).toBe(0);
  });
});
