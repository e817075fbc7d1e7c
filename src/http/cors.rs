//! CORS, off unless `--cors-origins` lists origins. The bundled React client is served by this
//! listener (same origin) and needs none; a page from another origin may call the API only
//! when its exact origin (scheme, host and port, as the browser sends it) is listed. Pure.
//!
//! For a listed origin: `Access-Control-Allow-Origin: <that origin>` (never `*`), `Vary:
//! Origin`, `Location` exposed (read after a create); a preflight allows the methods the path
//! has and only the request header the API reads (`content-type`), cached `MAX_AGE_S`. For any
//! other origin nothing is added, so the browser blocks the call.

use crate::http::api::ApiResponse;

/// How long a browser may cache a preflight (Chromium caps it at 2 hours anyway).
pub const MAX_AGE_S: u32 = 600;

/// The headers the API reads from a cross-origin request, beyond the CORS-safelisted ones.
const ALLOWED_HEADERS: &str = "content-type";

/// `origin`, if it is listed (compared ASCII case-insensitively, a trailing `/` ignored).
pub fn allowed<'o>(origin: Option<&'o str>, listed: &[String]) -> Option<&'o str> {
    let origin = origin?;
    let bare = origin.trim_end_matches('/');
    listed.iter().any(|l| l.trim_end_matches('/').eq_ignore_ascii_case(bare)).then_some(origin)
}

/// Adds the response headers for a request from `origin`.
pub fn decorate(response: ApiResponse, origin: Option<&str>, listed: &[String]) -> ApiResponse {
    match allowed(origin, listed) {
        Some(origin) => response
            .with_header("Access-Control-Allow-Origin", origin.to_owned())
            .with_header("Access-Control-Expose-Headers", "Location")
            .with_header("Vary", "Origin"),
        None => response,
    }
}

/// The preflight answer for a path whose methods are `allow` (the CORS headers only when the
/// origin is listed; `decorate` adds the origin).
pub fn preflight(origin: Option<&str>, listed: &[String], allow: &str) -> ApiResponse {
    let response = ApiResponse::empty(204).with_header("Allow", allow);
    match allowed(origin, listed) {
        Some(_) => response
            .with_header("Access-Control-Allow-Methods", allow)
            .with_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            .with_header("Access-Control-Max-Age", MAX_AGE_S.to_string()),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_exactly() {
        let listed = vec!["https://app.example.com".to_string(), "http://localhost:5173/".into()];
        assert_eq!(
            allowed(Some("https://app.example.com"), &listed),
            Some("https://app.example.com")
        );
        assert_eq!(allowed(Some("http://localhost:5173"), &listed), Some("http://localhost:5173"));
        assert_eq!(allowed(Some("http://app.example.com"), &listed), None);
        assert_eq!(allowed(Some("https://app.example.com:444"), &listed), None);
        assert_eq!(allowed(Some("null"), &listed), None);
        assert_eq!(allowed(None, &listed), None);
        assert_eq!(allowed(Some("https://app.example.com"), &[]), None);
    }
}
