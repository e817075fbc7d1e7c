//! Issue #15: `GET /metrics` over a real socket; its values move when clients connect, join,
//! broadcast and call the REST API. The registry is process-wide, so every check compares
//! against a scrape taken before (other tests of this binary may run in the same process).

use serde_json::json;

use crate::support::http::TestServer as HttpServer;
use crate::support::{TestServer, WAIT, eventually, unique_topic};

/// The value of the sample `series` (name with its labels, as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    let line = text.lines().find(|l| l.split(' ').next() == Some(series));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

fn scrape(http: &HttpServer) -> String {
    let response = http.get("/metrics");
    assert_eq!(response.status, 200);
    response.text()
}

/// Waits until `series` has moved by at least `by` from `before`.
fn moves(http: &HttpServer, series: &str, before: &str, by: f64) {
    let start = sample(before, series);
    let mut now = start;
    let moved = eventually(WAIT, || {
        now = sample(&scrape(http), series);
        now >= start + by
    });
    assert!(moved, "{series}: {start} -> {now}, expected +{by}");
}

const CONNECTIONS: &str = "phx_connections{transport=\"websocket\"}";
const ROOMS: &str = "phx_channels{pattern=\"room:*\"}";

#[test]
fn connections_joins_and_broadcasts_move_the_metrics() {
    let ws = TestServer::start();
    let http = HttpServer::start(None);
    let before = scrape(&http);
    let topic = unique_topic("room:metrics");
    let (mut a, mut b) = (ws.client(), ws.client());
    let join_ref = a.join_ok(&topic);
    b.join_ok(&topic);
    moves(&http, CONNECTIONS, &before, 2.0);
    moves(&http, ROOMS, &before, 2.0);
    moves(&http, "phx_joins_total{pattern=\"room:*\"}", &before, 2.0);

    let sent = scrape(&http);
    a.push(Some(&join_ref), &topic, "new_msg", json!({"body": "hi"}));
    b.expect(|m| m[3] == "new_msg");
    moves(&http, "phx_broadcasts_total", &sent, 1.0);
    moves(&http, "phx_deliveries_total", &sent, 2.0);
    moves(&http, "phx_frames_in_total", &sent, 1.0);
    let bytes =
        sample(&scrape(&http), "phx_out_bytes_total") - sample(&sent, "phx_out_bytes_total");
    assert!(bytes >= 2.0 * "new_msg".len() as f64, "bytes out moved by {bytes}");

    let (_, unmatched) = a.join("nowhere:1", json!({}));
    assert_eq!(unmatched["status"], "error");
    let (_, private) = b.join("room:private", json!({}));
    assert_eq!(private["status"], "error");
    moves(&http, "phx_refused_joins_total{reason=\"unmatched_topic\"}", &sent, 1.0);
    moves(&http, "phx_refused_joins_total{reason=\"refused\"}", &sent, 1.0);

    let joined = scrape(&http);
    a.close();
    let gone = eventually(WAIT, || {
        let now = scrape(&http);
        sample(&now, CONNECTIONS) <= sample(&joined, CONNECTIONS) - 1.0
            && sample(&now, ROOMS) <= sample(&joined, ROOMS) - 1.0
    });
    assert!(gone, "a closed connection and its channel are still counted");
}

#[test]
fn refused_connects_are_counted_by_reason() {
    let ws = TestServer::start();
    let http = HttpServer::start(None);
    let before = scrape(&http);
    let refused = crate::support::ws::WsClient::connect_with(ws.addr(), "/nope/websocket", &[]);
    assert!(refused.is_err(), "an upgrade of an unknown path is refused");
    moves(&http, "phx_refused_connects_total{reason=\"not_found\"}", &before, 1.0);
}

#[test]
fn rest_requests_are_counted_by_route_pattern_and_status() {
    let http = HttpServer::start(None);
    let before = scrape(&http);
    for id in ["1", "2", "3"] {
        assert_eq!(http.get(&format!("/api/superheroes/{id}")).status, 503);
    }
    assert_eq!(http.get("/api/nothing-here").status, 404);
    let series =
        "phx_http_requests_total{method=\"GET\",route=\"/api/superheroes/{id}\",status=\"503\"}";
    moves(&http, series, &before, 3.0);
    let other = "phx_http_requests_total{method=\"GET\",route=\"other\",status=\"404\"}";
    moves(&http, other, &before, 1.0);
    let timed = "phx_http_request_seconds_count{method=\"GET\",route=\"/api/superheroes/{id}\"}";
    moves(&http, timed, &before, 3.0);

    let response = http.get("/metrics");
    assert!(response.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = response.text();
    assert!(sample(&text, "phx_threads") >= 4.0, "the HTTP workers are threads");
    assert!(sample(&text, "phx_resident_bytes") > 1e6, "RSS is read from /proc");
    assert!(sample(&text, "phx_open_fds") >= 1.0);
    assert!(text.trim_end().ends_with("# EOF"), "a complete exposition");
}

#[test]
fn postgres_pool_use_waits_and_timeouts_are_counted() {
    use phx_threads::store::{Store, StoreConfig};
    let db = crate::support::pg::TestDb::new();
    let config = StoreConfig {
        pool_size: 1,
        checkout_timeout: std::time::Duration::from_millis(100),
        ..StoreConfig::new(&db.url)
    };
    let store = Store::connect(config).unwrap();
    let http = HttpServer::start(None);
    let before = scrape(&http);
    let held = store.client().unwrap();
    moves(&http, "phx_pg_pool_in_use", &before, 1.0);
    assert!(store.client().is_err(), "the one connection is taken");
    moves(&http, "phx_pg_pool_waits_total", &before, 1.0);
    moves(&http, "phx_pg_pool_timeouts_total", &before, 1.0);
    moves(&http, "phx_pg_pool_wait_seconds_count", &before, 1.0);
    drop(held);
    let now = sample(&scrape(&http), "phx_pg_pool_in_use");
    assert_eq!(now, sample(&before, "phx_pg_pool_in_use"), "the connection went back");
}
