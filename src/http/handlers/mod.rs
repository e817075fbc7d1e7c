//! Request handlers, one file per resource. Each is
//! `fn(&ApiRequest, &Ctx, &[String]) -> Result<ApiResponse, ApiError>`.
//!
//! Threads: run on the HTTP worker thread, inside its `catch_unwind`.

pub mod assets;
pub mod meta;
pub mod superheroes;

use crate::http::HttpConfig;
use crate::store::Store;

/// What handlers share: the configuration, the store (absent with `--no-database`) and the
/// per-address budget of writes (absent when `rest_write_rate` is 0).
pub struct Ctx {
    pub config: HttpConfig,
    pub store: Option<Store>,
    pub writes: Option<crate::limits::RateLimiter>,
}
