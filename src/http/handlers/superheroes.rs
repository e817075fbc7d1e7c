//! `/api/superheroes`: the JSON resource of Phoenix's `phx.gen.json` (index, create, show,
//! update, delete) over `store::superheroes`.
//!
//! Bodies are `{"superhero": {...}}`; PUT and PATCH both take a partial object.
//! Writes notify `superheroes_changes` inside their transaction (see the store), so this
//! module broadcasts nothing itself and knows nothing about channels.

use serde_json::{Map, Value};

use crate::http::api::{ApiError, ApiRequest, ApiResponse, Data};
use crate::http::handlers::Ctx;
use crate::store::superheroes::{self, Mode};
use crate::store::{PooledClient, Store};

pub fn index(_: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let heroes = superheroes::list(&mut *client(ctx)?)?;
    Ok(ApiResponse::json(200, &Data { data: heroes }))
}

pub fn show(_: &ApiRequest, ctx: &Ctx, params: &[String]) -> Result<ApiResponse, ApiError> {
    let id = id(params)?;
    let hero = superheroes::get(&mut *client(ctx)?, id)?;
    Ok(ApiResponse::json(200, &Data { data: hero }))
}

pub fn create(request: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let attrs = superhero_attrs(request)?;
    let params =
        superheroes::cast(&attrs, Mode::Create).map_err(|e| ApiError::unprocessable(&e))?;
    let max = ctx.store.as_ref().map_or(superheroes::MAX_ROWS, |s| s.config().max_superheroes);
    let hero = superheroes::create_bounded(&mut *client(ctx)?, &params, max)?;
    let location = format!("/api/superheroes/{}", hero.id);
    Ok(ApiResponse::json(201, &Data { data: hero }).with_header("Location", location))
}

pub fn update(request: &ApiRequest, ctx: &Ctx, params: &[String]) -> Result<ApiResponse, ApiError> {
    let id = id(params)?;
    let attrs = superhero_attrs(request)?;
    let params =
        superheroes::cast(&attrs, Mode::Update).map_err(|e| ApiError::unprocessable(&e))?;
    let hero = superheroes::update(&mut *client(ctx)?, id, &params)?;
    Ok(ApiResponse::json(200, &Data { data: hero }))
}

pub fn delete(_: &ApiRequest, ctx: &Ctx, params: &[String]) -> Result<ApiResponse, ApiError> {
    let id = id(params)?;
    superheroes::delete(&mut *client(ctx)?, id)?;
    Ok(ApiResponse::empty(204))
}

/// The store's pool, or 503 when the server runs without a database.
fn client(ctx: &Ctx) -> Result<PooledClient<'_>, ApiError> {
    let store: &Store = ctx.store.as_ref().ok_or_else(|| ApiError::status(503))?;
    Ok(store.client()?)
}

/// A non-numeric or out-of-range id cannot name a row: 404, as Phoenix's `Repo.get!` gives.
fn id(params: &[String]) -> Result<i64, ApiError> {
    let text = params.first().map(String::as_str).unwrap_or("");
    let all_digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !all_digits {
        return Err(ApiError::not_found());
    }
    text.parse().map_err(|_| ApiError::not_found())
}

/// Our bodies nest two levels; serde_json allows 128, and parsing recurses once per level on
/// the worker's small stack (debug builds need over 256 KiB for 127 levels). A cheap scan
/// bounds the recursion first.
const MAX_JSON_DEPTH: usize = 32;

/// Whether `[`/`{` nest deeper than `max` outside of strings. Malformed JSON is left to
/// serde_json to report.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The `superhero` object of the JSON body; anything else is a 400.
pub(crate) fn superhero_attrs(request: &ApiRequest) -> Result<Map<String, Value>, ApiError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("empty body, expected {\"superhero\": {...}}"));
    }
    if nesting_exceeds(&request.body, MAX_JSON_DEPTH) {
        let why = format!("JSON nested deeper than {MAX_JSON_DEPTH} levels");
        return Err(ApiError::bad_request(why));
    }
    let body: Value = serde_json::from_slice(&request.body).map_err(ApiError::bad_request)?;
    match body.get("superhero") {
        Some(Value::Object(attrs)) => Ok(attrs.clone()),
        Some(_) => Err(ApiError::bad_request("\"superhero\" must be an object")),
        None => Err(ApiError::bad_request("missing \"superhero\" object")),
    }
}

#[cfg(test)]
mod tests {
    use super::nesting_exceeds;

    #[test]
    fn nesting_ignores_brackets_in_strings() {
        assert!(!nesting_exceeds(br#"{"a":[{"b":"[[[[\"[["}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[{"b":[]}]}"#, 3));
        assert!(!nesting_exceeds(br#"[[[]]]"#, 3));
        assert!(nesting_exceeds(br#"[[[[]]]]"#, 3));
    }
}
