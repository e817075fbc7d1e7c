//! Issue #14 part 2 over real loopback sockets: signed tokens in the connect path (Phoenix.Token
//! and JWT, from the `token` param and the `authToken` subprotocol), the origin rule, CORS is
//! in http_api.rs, and the per-address limits (WebSocket and REST connections, REST writes,
//! X-Forwarded-For). Token vectors: tests/it/vectors/tokens.json (gen_tokens.py says how
//! they were produced, independently of the Rust code).

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::Value;

use crate::support::http::TestServer as HttpServer;
use crate::support::http::read_response;
use crate::support::ws::WsClient;
use crate::support::{TestServer, eventually, test_config, unique_topic};
use phx_threads::app;
use phx_threads::auth::{AuthConfig, Verifier};
use phx_threads::http::HttpConfig;
use phx_threads::limits::{REFUSALS, TrustedProxies};

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/tokens.json")).unwrap()
}

/// The app's connect callback with both token kinds enabled. The Phoenix vectors were signed
/// on 2026-01-01, so `max_age` decides whether they are still valid today.
fn token_server(max_age: Duration) -> TestServer {
    let v = vectors();
    let auth = AuthConfig {
        secret_key_base: Some(v["secret_key_base"].as_str().unwrap().into()),
        jwt_secret: Some(v["jwt_secret"].as_str().unwrap().into()),
        token_max_age: max_age,
        ..AuthConfig::default()
    };
    let verifier = Verifier::new(&auth).unwrap().map(Arc::new);
    TestServer::with(test_config(), app::router(None), app::connect(verifier))
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Sends a raw upgrade with `query` and extra `headers`; returns the status and body.
fn upgrade(server: &TestServer, query: &str, headers: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET /socket/websocket?vsn=2.0.0&{query} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\
         upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n",
        server.addr().port()
    );
    tcp.write_all(request.as_bytes()).unwrap();
    // Half-closing makes the server end an upgraded connection too, so the answer ends at EOF.
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let response = read_response(&mut tcp, false);
    (response.status, response.text())
}

/// The presence key the room channel tracked for this connection: its `user_id` assign.
fn tracked_user(mut client: WsClient) -> String {
    client.presence = true;
    client.join_ok(&unique_topic("room"));
    // Its own presence arrives in the first diff (or a state taken after the diff window).
    let joined = |m: &Value| match m[3].as_str() {
        Some("presence_diff") => m[4]["joins"].as_object().is_some_and(|j| !j.is_empty()),
        Some("presence_state") => m[4].as_object().is_some_and(|s| !s.is_empty()),
        _ => false,
    };
    let msg = client.expect(joined);
    let entries = if msg[3] == "presence_diff" { &msg[4]["joins"] } else { &msg[4] };
    let keys: Vec<&String> = entries.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 1, "{msg}");
    keys[0].clone()
}

#[test]
fn a_phoenix_token_connects_and_its_data_becomes_the_assigns() {
    let v = vectors();
    let server = token_server(CENTURY);
    let token = v["phoenix"]["integer"]["token"].as_str().unwrap();
    // The user_id param is ignored once tokens are on: the token says who connects.
    let client =
        WsClient::connect(server.addr(), &format!("vsn=2.0.0&user_id=mallory&token={token}"))
            .unwrap();
    assert_eq!(tracked_user(client), "42");
    let map = v["phoenix"]["map"]["token"].as_str().unwrap();
    let client = WsClient::connect(server.addr(), &format!("vsn=2.0.0&token={map}")).unwrap();
    assert_eq!(tracked_user(client), "42");
}

#[test]
fn a_jwt_in_the_auth_token_subprotocol_connects() {
    let v = vectors();
    let server = token_server(CENTURY);
    let jwt = v["jwt"]["valid"]["token"].as_str().unwrap();
    // What phoenix.js sends for `new Socket(url, {authToken})`: btoa(token) without padding.
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(jwt);
    let protocols = format!("phoenix, base64url.bearer.phx.{encoded}");
    let client = WsClient::connect_with(
        server.addr(),
        "/socket/websocket?vsn=2.0.0",
        &[("sec-websocket-protocol", &protocols)],
    )
    .unwrap();
    assert_eq!(tracked_user(client), "u-9");
}

#[test]
fn bad_tokens_are_refused_with_403_and_the_reason() {
    let v = vectors();
    let server = token_server(CENTURY);
    let cases = [
        (v["phoenix"]["tampered"].as_str().unwrap(), "token signature invalid"),
        (v["phoenix"]["wrong_salt"].as_str().unwrap(), "token signature invalid"),
        (v["phoenix"]["wrong_secret"].as_str().unwrap(), "token signature invalid"),
        (v["jwt"]["expired"].as_str().unwrap(), "token expired"),
        (v["jwt"]["not_yet_valid"].as_str().unwrap(), "token not yet valid (nbf)"),
        (v["jwt"]["wrong_secret"].as_str().unwrap(), "token signature invalid"),
        (v["jwt"]["tampered"].as_str().unwrap(), "token signature invalid"),
        (v["jwt"]["alg_none"].as_str().unwrap(), "token algorithm not accepted (HS256 only)"),
        ("garbage", "token malformed"),
    ];
    for (token, reason) in cases {
        assert_eq!(upgrade(&server, &format!("token={token}"), ""), (403, reason.to_string()));
    }
    assert_eq!(upgrade(&server, "user_id=anyone", ""), (403, "token missing".to_string()));
    // A day-old limit: the vectors signed on 2026-01-01 have expired.
    let strict = token_server(Duration::from_secs(86_400));
    let token = v["phoenix"]["integer"]["token"].as_str().unwrap();
    assert_eq!(upgrade(&strict, &format!("token={token}"), ""), (403, "token expired".into()));
}

#[test]
fn without_a_secret_anyone_connects_with_their_user_id() {
    let server = TestServer::with(test_config(), app::router(None), app::connect(None));
    let client = WsClient::connect(server.addr(), "vsn=2.0.0&user_id=alice").unwrap();
    assert_eq!(tracked_user(client), "alice");
}

#[test]
fn the_origin_rule() {
    let mut config = test_config();
    config.check_origin = vec!["//*.example.com".into()];
    let server = TestServer::with(config, app::router(None), app::connect(None));
    let port = server.addr().port();
    let origin = |o: &str| upgrade(&server, "", &format!("origin: {o}\r\n")).0;
    assert_eq!(upgrade(&server, "", "").0, 101, "no Origin: not a browser");
    assert_eq!(origin(&format!("http://127.0.0.1:{port}")), 101, "same host");
    assert_eq!(origin("http://127.0.0.1:4001"), 101, "same host, the page's port");
    assert_eq!(origin("https://app.example.com"), 101, "listed");
    assert_eq!(origin("https://evil.test"), 403, "another site");
    assert_eq!(origin("null"), 403, "null");
    let (status, body) = upgrade(&server, "", "origin: https://evil.test\r\n");
    assert_eq!(status, 403);
    assert_eq!(body, "origin https://evil.test is not this host or a --check-origin entry");
    let mut any = test_config();
    any.check_origin = vec!["any".into()];
    let open = TestServer::with(any, app::router(None), app::connect(None));
    assert_eq!(upgrade(&open, "", "origin: null\r\n").0, 101, "--check-origin any");
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours).
fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

fn ws_upgrade(tcp: &mut TcpStream) -> (u16, String) {
    let request = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: 127.0.0.1\r\n\
        upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
        sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(request.as_bytes()).unwrap();
    let response = read_response(tcp, true);
    (response.status, response.text())
}

#[test]
fn one_address_cannot_take_every_websocket_connection() {
    let mut config = test_config();
    config.max_connections_per_address = 2;
    let server = TestServer::with(config, app::router(None), app::connect(None));
    let before = REFUSALS.ws_per_address.load(Relaxed);
    let mut first = connect_from("127.0.0.1", server.addr());
    assert_eq!(ws_upgrade(&mut first).0, 101);
    let mut second = connect_from("127.0.0.1", server.addr());
    assert_eq!(ws_upgrade(&mut second).0, 101);
    let mut third = connect_from("127.0.0.1", server.addr());
    third.write_all(b"GET /socket/websocket HTTP/1.1\r\n\r\n").unwrap();
    let refused = read_response(&mut third, false);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.text(), "too many connections from this address");
    assert!(REFUSALS.ws_per_address.load(Relaxed) > before, "the refusal is counted");
    // Another host is served, and the address gets its place back when a connection ends.
    let mut other = connect_from("127.0.0.2", server.addr());
    assert_eq!(ws_upgrade(&mut other).0, 101);
    drop(first);
    let freed = eventually(Duration::from_secs(5), || {
        let mut again = connect_from("127.0.0.1", server.addr());
        again.write_all(b"").is_ok() && ws_upgrade(&mut again).0 == 101
    });
    assert!(freed, "a closed connection frees its address's place");
}

fn http_server(config: HttpConfig) -> HttpServer {
    HttpServer::with_config(config, None)
}

#[test]
fn one_address_cannot_take_every_rest_connection() {
    let server =
        http_server(HttpConfig { max_connections_per_address: 2, ..HttpConfig::default() });
    let before = REFUSALS.http_per_address.load(Relaxed);
    let held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1", server.addr)).collect();
    // The accept thread has given both a thread once a request on a third is refused.
    let mut third = connect_from("127.0.0.1", server.addr);
    third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let refused = read_response(&mut third, false);
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.json(),
        serde_json::json!({"errors": {"detail": "Service Unavailable: too many connections from this address"}})
    );
    assert!(REFUSALS.http_per_address.load(Relaxed) > before);
    let mut other = connect_from("127.0.0.2", server.addr);
    other.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    assert_ne!(read_response(&mut other, false).status, 503);
    drop(held);
    let freed = eventually(Duration::from_secs(5), || server.get("/healthz").status != 503);
    assert!(freed, "closed connections free their places");
}

/// A POST of an invalid hero: cheap, and answered 422/503 unless throttled.
fn write(server: &HttpServer, forwarded_for: Option<&str>) -> crate::support::http::Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(xff) = forwarded_for {
        headers.push(("X-Forwarded-For", xff));
    }
    server.request("POST", "/api/superheroes", &headers, Some(b"{}"))
}

#[test]
fn rest_writes_beyond_the_budget_get_429_with_retry_after() {
    let config = HttpConfig { write_rate_per_s: 1, write_burst: 3, ..HttpConfig::default() };
    let server = http_server(config);
    for _ in 0..3 {
        assert_ne!(write(&server, None).status, 429);
    }
    let throttled = write(&server, None);
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("1"));
    assert_eq!(
        throttled.json(),
        serde_json::json!({"errors": {"detail": "Too Many Requests: at most 1 writes per second per client"}})
    );
    assert_eq!(server.request("DELETE", "/api/superheroes/1", &[], None).status, 429);
    assert_ne!(server.get("/healthz").status, 429, "reads are not limited");
    // The budget comes back at the advertised pace.
    let refilled = eventually(Duration::from_secs(3), || write(&server, None).status != 429);
    assert!(refilled);
}

#[test]
fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let budget = |trusted: &str| HttpConfig {
        write_rate_per_s: 1,
        write_burst: 1,
        trusted_proxies: TrustedProxies::parse(trusted).unwrap(),
        ..HttpConfig::default()
    };
    // Behind a proxy on 127.0.0.1, each client has its own budget.
    let proxied = http_server(budget("127.0.0.1"));
    assert_ne!(write(&proxied, Some("203.0.113.1")).status, 429);
    assert_eq!(write(&proxied, Some("203.0.113.1")).status, 429);
    assert_ne!(write(&proxied, Some("203.0.113.2")).status, 429);
    // Without trust, a forged header changes nothing: the peer address is the client.
    let direct = http_server(budget("10.0.0.0/8"));
    assert_ne!(write(&direct, Some("203.0.113.1")).status, 429);
    assert_eq!(write(&direct, Some("203.0.113.2")).status, 429);
}
