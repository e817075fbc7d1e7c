//! `GET /metrics`: the Prometheus scrape endpoint (`crate::metrics`).

use crate::http::api::{ApiError, ApiRequest, ApiResponse, Body};
use crate::http::handlers::Ctx;

/// The OpenMetrics text format (what `prometheus-client` writes; Prometheus reads it and
/// negotiates it first). Threads, RSS and open files are read from `/proc` now.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn scrape(_: &ApiRequest, _: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let body = Body::Bytes(crate::metrics::render().into_bytes());
    let response = ApiResponse { status: 200, headers: Vec::new(), body };
    Ok(response.with_header("Content-Type", CONTENT_TYPE).with_header("Cache-Control", "no-store"))
}
