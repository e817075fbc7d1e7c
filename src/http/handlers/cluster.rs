//! `GET /cluster`: this node and the live nodes it knows of (`crate::cluster`), with the
//! relay's counters. Without `--cluster`, `enabled` is false and the list is empty.

use serde_json::json;

use crate::http::api::{ApiError, ApiRequest, ApiResponse};
use crate::http::handlers::Ctx;

pub fn show(_: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let body = match &ctx.cluster {
        Some(view) => {
            let mut body = serde_json::to_value(view.status()).expect("plain data encodes");
            body["enabled"] = json!(true);
            body
        }
        None => json!({ "enabled": false, "nodes": [] }),
    };
    Ok(ApiResponse::json(200, &body).with_header("Cache-Control", "no-store"))
}
