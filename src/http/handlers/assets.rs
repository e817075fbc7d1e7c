//! The React client's files from `static_dir`: `/` is `index.html`, known files are served
//! with a content type from their extension, and unknown non-`/api` paths get `index.html`
//! (client-side routing). Without a built client, `/` explains how to build it.
//!
//! Path safety: only plain segments are accepted (no `..`, no dot-files, no backslashes),
//! and the canonical file path must stay under the canonical `static_dir`, which also
//! defeats symlinks pointing outside.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::http::api::{ApiError, ApiRequest, ApiResponse, Body};
use crate::http::handlers::Ctx;

const BUILD_HINT: &str = "<!doctype html>
<html><head><meta charset=\"utf-8\"><title>phx-threads</title></head>
<body>
<h1>phx-threads</h1>
<p>The REST API is at <a href=\"/api/superheroes\">/api/superheroes</a>
and the WebSocket endpoint is described by <a href=\"/config.json\">/config.json</a>.</p>
<p>The React client is not built. Build it with
<code>npm --prefix superheroes-react install &amp;&amp; npm --prefix superheroes-react run build</code>
and start the server with <code>--static-dir superheroes-react/dist</code>.</p>
</body></html>
";

/// `GET /`: `index.html`, or the build hint.
pub fn index(_: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    Ok(serve_index(ctx))
}

/// `GET /dashboard`: the live dashboard page of the React build (`dashboard.html`), or 404
/// when the client is not built.
pub fn dashboard(_: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let page = root(ctx).map(|r| r.join("dashboard.html")).and_then(|p| serve_file(&p));
    let page = page.ok_or_else(ApiError::not_found)?;
    Ok(page.with_header("Cache-Control", "no-cache"))
}

/// `GET` of a path no route matched (never under `/api`).
pub fn fallback(request: &ApiRequest, ctx: &Ctx) -> ApiResponse {
    let Some(root) = root(ctx) else {
        return ApiError::not_found().into_response();
    };
    match resolve(&root, &request.path) {
        Some(path) => serve_file(&path).unwrap_or_else(|| ApiError::not_found().into_response()),
        None => serve_index(ctx),
    }
}

/// The canonical static directory, if configured and present.
fn root(ctx: &Ctx) -> Option<PathBuf> {
    let dir = ctx.config.static_dir.as_ref()?;
    std::fs::canonicalize(dir).ok().filter(|d| d.is_dir())
}

fn serve_index(ctx: &Ctx) -> ApiResponse {
    let index = root(ctx).map(|r| r.join("index.html")).and_then(|p| serve_file(&p));
    let response = index.unwrap_or_else(|| ApiResponse::html(200, BUILD_HINT.to_owned()));
    response.with_header("Cache-Control", "no-cache")
}

/// The file a URL path names under `root`, if it is a safe path to an existing file.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for segment in url_path.split('/').filter(|s| !s.is_empty()) {
        let unsafe_segment = segment.starts_with('.') || segment.contains(['\\', '\0', '%']);
        if unsafe_segment {
            return None;
        }
        path.push(segment);
    }
    let canonical = std::fs::canonicalize(&path).ok()?;
    (canonical.starts_with(root) && canonical.is_file()).then_some(canonical)
}

fn serve_file(path: &Path) -> Option<ApiResponse> {
    let file = File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let mut response =
        ApiResponse { status: 200, headers: Vec::new(), body: Body::File { file, len } };
    response.headers.push(("Content-Type", content_type(path).to_owned()));
    // Vite puts content-hashed files under assets/: they never change under the same name.
    if path.components().any(|c| c.as_os_str() == "assets") {
        response.headers.push(("Cache-Control", "public, max-age=31536000, immutable".to_owned()));
    }
    Some(response)
}

fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}
