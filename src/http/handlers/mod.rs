//! Request handlers, one file per resource. Each is
//! `fn(&ApiRequest, &Ctx, &[String]) -> Result<ApiResponse, ApiError>`.
//!
//! Threads: run on the HTTP worker thread, inside its `catch_unwind`.

pub mod assets;
pub mod cluster;
pub mod meta;
pub mod metrics;
pub mod superheroes;

use crate::cluster::ClusterView;
use crate::http::HttpConfig;
use crate::store::Store;

/// What handlers share: the configuration, the store (absent with `--no-database`) and the
/// per-address budget of writes (absent when `rest_write_rate` is 0).
pub struct Ctx {
    pub config: HttpConfig,
    pub store: Option<Store>,
    pub cluster: Option<ClusterView>,
    pub writes: Option<crate::limits::RateLimiter>,
}
