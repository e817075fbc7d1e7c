//! The HTTP upgrade over raw TCP: what a non-WebSocket or hostile client gets (the status and
//! reason Phoenix would give), that a handshake cannot be held open forever, and that a client
//! which sends its first frame without waiting for the 101 is served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::http::read_response;
use crate::support::{TestServer, test_config, unique_topic};
use phx_threads::{Config, server};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn raw(server: &TestServer) -> TcpStream {
    let tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

fn upgrade_head(method: &str, headers: &str) -> String {
    format!("{method} /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: localhost\r\n{headers}\r\n")
}

const UPGRADE: &str = "upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n";

/// Sends `request` and returns the status and body of the answer.
fn answer(server: &TestServer, request: &[u8]) -> (u16, String) {
    let mut tcp = raw(server);
    tcp.write_all(request).unwrap();
    let response = read_response(&mut tcp, false);
    (response.status, response.text())
}

/// A fresh client can still join: the server survived whatever the test did.
fn assert_still_serving(server: &TestServer) {
    let mut c = server.client();
    c.join_ok(&unique_topic("room"));
}

#[test]
fn a_valid_upgrade_gets_101_with_the_rfc_accept_key() {
    let server = TestServer::start();
    let mut tcp = raw(&server);
    let head = upgrade_head("GET", &format!("{UPGRADE}sec-websocket-key: {KEY}\r\n"));
    tcp.write_all(head.as_bytes()).unwrap();
    let (status, head) = read_head(&mut tcp);
    assert_eq!(status, 101);
    // The example of RFC 6455 §1.3.
    assert!(head.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
}

#[test]
fn requests_that_are_not_upgrades_get_400_with_the_reason() {
    let server = TestServer::start();
    let key = format!("sec-websocket-key: {KEY}\r\n");
    let cases = [
        (upgrade_head("GET", ""), "'upgrade' header must contain 'websocket'"),
        (upgrade_head("POST", &format!("{UPGRADE}{key}")), "only accepts GET"),
        (
            upgrade_head("GET", "upgrade: websocket\r\nsec-websocket-version: 13\r\n"),
            "'connection' header must contain 'upgrade'",
        ),
        (
            upgrade_head(
                "GET",
                &format!(
                    "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 8\r\n{key}"
                ),
            ),
            "'sec-websocket-version' header must be 13",
        ),
        (upgrade_head("GET", UPGRADE), "'sec-websocket-key'"),
        (upgrade_head("GET", &format!("{UPGRADE}sec-websocket-key: short\r\n")), "16 base64"),
    ];
    for (request, reason) in cases {
        let (status, body) = answer(&server, request.as_bytes());
        assert_eq!(status, 400, "{request:?}");
        assert!(body.contains(reason), "{request:?} answered {body:?}");
    }
    let http10 = format!("GET /socket/websocket?vsn=2.0.0 HTTP/1.0\r\n{UPGRADE}{key}\r\n");
    let (status, body) = answer(&server, http10.as_bytes());
    assert_eq!((status, body.contains("HTTP/1.1")), (400, true), "{body}");
    assert_still_serving(&server);
}

#[test]
fn garbage_and_oversized_heads_are_refused_without_harm() {
    let server = TestServer::start();
    let (status, _) = answer(&server, b"\x16\x03\x01\x02\x00 not http\r\n\r\n");
    assert_eq!(status, 400);
    let huge = upgrade_head("GET", &format!("x-pad: {}\r\n{UPGRADE}", "a".repeat(9000)));
    let (status, _) = answer(&server, huge.as_bytes());
    assert_eq!(status, 431);
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (status, _) = answer(&server, upgrade_head("GET", &many).as_bytes());
    assert_eq!(status, 431);
    assert_still_serving(&server);
}

#[test]
fn a_handshake_that_never_completes_is_dropped_at_the_timeout() {
    let timeout = Duration::from_millis(300);
    let config = Config { handshake_timeout: timeout, ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    let mut slow = raw(&server);
    let started = Instant::now();
    // Half a request head, then a byte at a time: trickling must not extend the deadline.
    slow.write_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\n").unwrap();
    let mut buf = [0u8; 64];
    let closed = loop {
        if slow.write_all(b"x").is_err() {
            break true;
        }
        slow.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => panic!("no answer expected to an incomplete head"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("still open after 10 s: {e}"),
        }
    };
    assert!(closed);
    assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
    assert_still_serving(&server);
}

#[test]
fn a_frame_sent_with_the_request_head_is_not_lost() {
    let server = TestServer::start();
    let mut tcp = raw(&server);
    let topic = unique_topic("room");
    let join = json!(["1", "1", topic, "phx_join", {}]).to_string();
    let mut bytes =
        upgrade_head("GET", &format!("{UPGRADE}sec-websocket-key: {KEY}\r\n")).into_bytes();
    bytes.extend_from_slice(&masked_text_frame(join.as_bytes()));
    tcp.write_all(&bytes).unwrap();
    assert_eq!(read_head(&mut tcp).0, 101);
    let reply = read_text_frame(&mut tcp);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply, json!(["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}]));
}

/// Reads a response head byte by byte, so nothing after it is consumed.
fn read_head(tcp: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).expect("a complete response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, head)
}

/// A client-to-server text frame (clients must mask).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server text frame shorter than 64 KiB.
fn read_text_frame(tcp: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81, "a final text frame");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            tcp.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}
