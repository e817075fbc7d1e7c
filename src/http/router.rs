//! The route table and dispatch: (method, path) → handler, or 404/405, or the static-file
//! fallback. Pure except for what handlers do.
//!
//! Threads: runs on the HTTP worker thread that received the request.
//!
//! `ROUTES` is the single source of truth for what is routed; a test compares it with
//! `openapi.yaml` in both directions. Cross-cutting behaviour is not in the table: `HEAD` is
//! answered like `GET` without a body, `OPTIONS` is the CORS preflight for any routed path (`cors.rs`),
//! and unknown non-`/api` paths fall back to the static client (`index.html`).

use crate::http::api::{ApiError, ApiRequest, ApiResponse, Method};
use crate::http::cors;
use crate::http::handlers::{self, Ctx};

/// A handler gets the request, the shared context and the `{param}` values of its pattern.
pub type Handler = fn(&ApiRequest, &Ctx, &[String]) -> Result<ApiResponse, ApiError>;

pub struct Route {
    pub method: Method,
    /// Path with `{name}` placeholders, exactly as in openapi.yaml.
    pub pattern: &'static str,
    /// Whether the body is read and size/type-checked before the handler runs.
    pub takes_body: bool,
    pub handler: Handler,
}

const fn route(method: Method, pattern: &'static str, handler: Handler) -> Route {
    let takes_body = matches!(method, Method::Post | Method::Put | Method::Patch);
    Route { method, pattern, takes_body, handler }
}

pub const ROUTES: &[Route] = &[
    route(Method::Get, "/api/superheroes", handlers::superheroes::index),
    route(Method::Post, "/api/superheroes", handlers::superheroes::create),
    route(Method::Get, "/api/superheroes/{id}", handlers::superheroes::show),
    route(Method::Put, "/api/superheroes/{id}", handlers::superheroes::update),
    route(Method::Patch, "/api/superheroes/{id}", handlers::superheroes::update),
    route(Method::Delete, "/api/superheroes/{id}", handlers::superheroes::delete),
    route(Method::Get, "/healthz", handlers::meta::healthz),
    route(Method::Get, "/cluster", handlers::cluster::show),
    route(Method::Get, "/config.json", handlers::meta::config_json),
    route(Method::Get, "/", handlers::assets::index),
    route(Method::Get, "/metrics", handlers::metrics::scrape),
    route(Method::Get, "/dashboard", handlers::assets::dashboard),
];

/// Every routed (method, pattern) pair, for the openapi.yaml check.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.method.as_str(), r.pattern)).collect()
}

/// The route pattern a request matched, for metrics labels (`other` for the rest: bounded).
pub fn pattern_of(method: &str, path: &str) -> &'static str {
    let segments = segments(path);
    let wanted = if method == "HEAD" { "GET" } else { method };
    let route = ROUTES
        .iter()
        .find(|r| r.method.as_str() == wanted && matches(r.pattern, &segments).is_some());
    route.map_or("other", |r| r.pattern)
}

/// What to do with a request, decided from its method and path alone.
pub enum Decision {
    /// Call `route.handler` with these parameters.
    Handle { route: &'static Route, params: Vec<String> },
    /// Answer directly (404, 405, preflight, static file).
    Respond(ApiResponse),
}

/// Routes a request. HEAD matches GET routes.
pub fn decide(request: &ApiRequest, ctx: &Ctx) -> Decision {
    let segments = segments(&request.path);
    let matching: Vec<(&'static Route, Vec<String>)> =
        ROUTES.iter().filter_map(|r| Some((r, matches(r.pattern, &segments)?))).collect();
    if matching.is_empty() {
        return fallback(request, ctx);
    }
    let allow = allow(&matching);
    if request.method == Method::Options {
        let origin = request.header("origin");
        return Decision::Respond(cors::preflight(origin, &ctx.config.cors_origins, &allow));
    }
    let wanted = if request.method == Method::Head { Method::Get } else { request.method };
    match matching.into_iter().find(|(r, _)| r.method == wanted) {
        Some((route, params)) => Decision::Handle { route, params },
        None => Decision::Respond(ApiError::method_not_allowed(allow).into_response()),
    }
}

/// Unknown paths: 404 under `/api`, else the static client for GET/HEAD.
fn fallback(request: &ApiRequest, ctx: &Ctx) -> Decision {
    let is_api = request.path == "/api" || request.path.starts_with("/api/");
    let is_read = matches!(request.method, Method::Get | Method::Head);
    if is_api || !is_read {
        return Decision::Respond(ApiError::not_found().into_response());
    }
    Decision::Respond(handlers::assets::fallback(request, ctx))
}

/// The `Allow` value for the routes matching a path: their methods, HEAD with GET, and
/// OPTIONS, in a stable order.
fn allow(matching: &[(&'static Route, Vec<String>)]) -> String {
    let order =
        [Method::Get, Method::Head, Method::Post, Method::Put, Method::Patch, Method::Delete];
    let has = |m: Method| {
        let m = if m == Method::Head { Method::Get } else { m };
        matching.iter().any(|(r, _)| r.method == m)
    };
    let mut names: Vec<&str> = order.into_iter().filter(|m| has(*m)).map(Method::as_str).collect();
    names.push("OPTIONS");
    names.join(", ")
}

/// Non-empty path segments; `/api/superheroes/` and `/api/superheroes` route alike, as in
/// Phoenix.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// The placeholder values if `segments` fit `pattern`.
fn matches(pattern: &str, segments: &[&str]) -> Option<Vec<String>> {
    let parts = self::segments(pattern);
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if part.starts_with('{') && part.ends_with('}') {
            params.push((*segment).to_owned());
        } else if part != segment {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        assert_eq!(
            matches("/api/superheroes/{id}", &["api", "superheroes", "7"]),
            Some(vec!["7".to_owned()])
        );
        assert_eq!(matches("/api/superheroes", &["api", "superheroes", "7"]), None);
        assert_eq!(matches("/", &[]), Some(vec![]));
        assert_eq!(segments("/api//superheroes/"), vec!["api", "superheroes"]);
    }

    #[test]
    fn allow_lists_methods_of_the_path() {
        let m: Vec<_> = ROUTES
            .iter()
            .filter_map(|r| Some((r, matches(r.pattern, &["api", "superheroes", "1"])?)))
            .collect();
        assert_eq!(allow(&m), "GET, HEAD, PUT, PATCH, DELETE, OPTIONS");
    }
}
