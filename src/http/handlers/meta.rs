//! Small operational endpoints: `/healthz` and `/config.json` (what the React client needs to
//! find the WebSocket).

use serde_json::json;

use crate::http::api::{ApiError, ApiRequest, ApiResponse};
use crate::http::handlers::Ctx;

/// 200 while the server can do its work; 503 while its database does not answer, so that a
/// load balancer or systemd notices (the private cluster is restarted by its supervisor, an
/// external one by its operator). Without a database (`--no-database`) there is nothing to
/// wait for: 200, `database` says `down`.
pub fn healthz(_: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let (mut status, mut body) = match &ctx.store {
        Some(store) if store.is_up() => (200, json!({ "status": "ok", "database": "up" })),
        Some(_) => (503, json!({ "status": "unavailable", "database": "down" })),
        None => (200, json!({ "status": "ok", "database": "down" })),
    };
    if let Some(conflict) = ctx.cluster.as_ref().and_then(|c| c.name_conflict()) {
        (status, body["status"], body["cluster"]) = (503, "unavailable".into(), conflict.into());
    }
    Ok(ApiResponse::json(status, &body).with_header("Cache-Control", "no-store"))
}

/// `socket_url` is `public_ws_url` if configured, else `ws://<host the browser used>:<ws_port>
/// /socket`, so a client loaded from another machine does not try its own localhost.
/// `api_url` is empty: the API is on the same origin as this file.
pub fn config_json(request: &ApiRequest, ctx: &Ctx, _: &[String]) -> Result<ApiResponse, ApiError> {
    let socket_url = match &ctx.config.public_ws_url {
        Some(url) => url.clone(),
        None => {
            let host = request.header("host").and_then(hostname).unwrap_or("localhost");
            format!("ws://{host}:{}/socket", ctx.config.ws_port)
        }
    };
    Ok(ApiResponse::json(200, &json!({ "socket_url": socket_url, "api_url": "" }))
        .with_header("Cache-Control", "no-store"))
}

/// The hostname part of a Host header (`name`, `name:port`, `[v6]`, `[v6]:port`), if it is
/// made of characters a hostname or IP literal can contain.
pub fn hostname(host: &str) -> Option<&str> {
    let name =
        if host.starts_with('[') { &host[..=host.find(']')?] } else { host.split(':').next()? };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b);
    let ok = !name.is_empty() && name.len() <= 253 && name.bytes().all(allowed);
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::hostname;

    #[test]
    fn hostnames_drop_the_port_and_reject_junk() {
        assert_eq!(hostname("example.com:4001"), Some("example.com"));
        assert_eq!(hostname("localhost"), Some("localhost"));
        assert_eq!(hostname("[::1]:4001"), Some("[::1]"));
        assert_eq!(hostname("evil\"host"), None);
        assert_eq!(hostname(""), None);
    }
}
