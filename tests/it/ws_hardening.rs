//! Hardening of the WebSocket side (issue #11): the closing handshake of RFC 6455 §5.5.1 and
//! §7.4, slow consumers told why they are cut, topic and event length limits, half-open
//! upgrades that must not lock real clients out, and a leave that a stuck channel never
//! acknowledges. Raw frames over TCP where a well-behaved client library cannot express the
//! input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, WsClient, test_config, unique_topic};
use phx_threads::{Channel, ChannelCtx, Config, HandleIn, Payload, server};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket client made of bytes: it sends exactly the frames a test builds.
struct RawWs {
    tcp: TcpStream,
}

/// One frame as the server sent it.
#[derive(Debug, PartialEq)]
enum Frame {
    Text(String),
    Close(Option<u16>, String),
    Other(u8, Vec<u8>),
    /// The server closed the TCP stream (or reset it) without a frame.
    Eof,
}

impl RawWs {
    fn connect(server: &TestServer) -> RawWs {
        RawWs::connect_to(server.addr())
    }

    fn connect_to(addr: std::net::SocketAddr) -> RawWs {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let head = format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\n\
             connection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).expect("a complete response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        RawWs { tcp }
    }

    /// Sends one final, masked frame (clients must mask).
    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).unwrap();
    }

    fn send_json(&mut self, value: &Value) {
        self.send(0x1, value.to_string().as_bytes());
    }

    fn close_with(&mut self, payload: &[u8]) {
        self.send(0x8, payload);
    }

    /// The next frame from the server, or `Eof`.
    fn read(&mut self) -> Frame {
        let mut head = [0u8; 2];
        if self.tcp.read_exact(&mut head).is_err() {
            return Frame::Eof;
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes(self.read_array::<2>())),
            127 => u64::from_be_bytes(self.read_array::<8>()),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.tcp.read_exact(&mut payload).expect("a complete frame");
        match head[0] & 0x0f {
            0x1 => Frame::Text(String::from_utf8(payload).expect("UTF-8 text")),
            0x8 if payload.len() >= 2 => Frame::Close(
                Some(u16::from_be_bytes([payload[0], payload[1]])),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ),
            0x8 => Frame::Close(None, String::new()),
            op => Frame::Other(op, payload),
        }
    }

    fn read_array<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.tcp.read_exact(&mut bytes).expect("a complete frame header");
        bytes
    }

    /// The next close frame, skipping text frames.
    fn expect_close(&mut self) -> Frame {
        loop {
            match self.read() {
                Frame::Text(_) => continue,
                other => return other,
            }
        }
    }

    /// The reply to `ref_`, skipping other frames.
    fn reply_to(&mut self, ref_: &str) -> Value {
        loop {
            match self.read() {
                Frame::Text(text) => {
                    let m: Value = serde_json::from_str(&text).unwrap();
                    if m[3] == "phx_reply" && m[1] == ref_ {
                        return m;
                    }
                }
                other => panic!("expected the reply to {ref_}, got {other:?}"),
            }
        }
    }

    /// True once the server has closed the TCP stream.
    fn at_eof(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.tcp.read(&mut buf), Ok(0) | Err(_))
    }
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

// ---- item 14: the closing handshake ----

/// RFC 6455 §5.5.1: the server answers a client's Close with a Close, echoing the code, so the
/// client sees a clean close instead of 1006.
#[test]
fn a_client_close_is_answered_with_the_same_code() {
    let server = TestServer::start();
    for code in [1000u16, 1001, 1003, 1011, 3000, 4000, 4999] {
        let mut ws = RawWs::connect(&server);
        ws.close_with(&close_payload(code, b"bye"));
        assert_eq!(ws.expect_close(), Frame::Close(Some(code), "bye".into()), "code {code}");
        assert!(ws.at_eof(), "the server ends the TCP stream after the closing handshake");
    }
    let mut ws = RawWs::connect(&server);
    ws.close_with(&[]);
    assert_eq!(ws.expect_close(), Frame::Close(None, String::new()), "an empty close is echoed");
}

/// RFC 6455 §7.4: codes that must never appear on the wire, and malformed close payloads
/// (one byte, a reason that is not UTF-8), are protocol errors: close 1002.
#[test]
fn invalid_close_frames_are_answered_with_1002() {
    let server = TestServer::start();
    let mut cases: Vec<Vec<u8>> = [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
        .iter()
        .map(|code| close_payload(*code, b""))
        .collect();
    cases.push(vec![0x03]);
    for payload in cases {
        let mut ws = RawWs::connect(&server);
        ws.close_with(&payload);
        match ws.expect_close() {
            Frame::Close(Some(1002), _) => {}
            other => panic!("close payload {payload:?} answered with {other:?}"),
        }
    }
    // A reason that is not UTF-8 is invalid data, 1007 (RFC 6455 §7.4.1; tungstenite reports
    // it as the same UTF-8 error as a bad text frame, and Autobahn 7.5.1 accepts 1002 or 1007).
    let mut ws = RawWs::connect(&server);
    ws.close_with(&close_payload(1000, b"\xff\xfe not UTF-8"));
    assert!(matches!(ws.expect_close(), Frame::Close(Some(1007), _)));
}

/// `hard:*`: replies of a requested size, and a callback that blocks until the test releases
/// it (a channel stuck in application code).
struct HardChannel {
    release: Receiver<()>,
}

impl Channel for HardChannel {
    fn join(&mut self, _: &str, _: Payload, _: &mut ChannelCtx) -> Result<Payload, Payload> {
        Ok(Payload::empty())
    }

    fn handle_in(&mut self, event: &str, payload: Payload, _: &mut ChannelCtx) -> HandleIn {
        let payload = payload.as_json().cloned().unwrap_or(Value::Null);
        match event {
            "big" => {
                let bytes = payload["bytes"].as_u64().unwrap_or(0) as usize;
                HandleIn::ok(json!({ "blob": "x".repeat(bytes) }))
            }
            "block" => {
                // Bounded so a failing test cannot leave the thread behind for long.
                let _ = self.release.recv_timeout(Duration::from_secs(30));
                HandleIn::ok(Payload::empty())
            }
            _ => HandleIn::error(json!({"reason": "unknown"})),
        }
    }
}

/// A server with `hard:*` mounted; dropping the returned sender releases blocked callbacks.
fn hard_server(config: Config) -> (TestServer, Sender<()>) {
    let (release_tx, release_rx) = unbounded();
    let router = phx_threads::app::router(None)
        .channel("hard:*", move || HardChannel { release: release_rx.clone() });
    (TestServer::with(config, router, server::accept_all()), release_tx)
}

/// A slow consumer is told why it is cut (close 1008) when its socket can still take the
/// small close frame: here one reply is over the outbound budget while the client reads.
#[test]
fn a_slow_consumer_gets_close_1008_when_the_socket_has_room() {
    let config = Config { outbound_queue_bytes: 16 * 1024, ..test_config() };
    let (server, _release) = hard_server(config);
    let mut ws = RawWs::connect(&server);
    let topic = unique_topic("hard");
    ws.send_json(&json!(["1", "1", topic, "phx_join", {}]));
    assert_eq!(ws.reply_to("1")[4]["status"], "ok");
    ws.send_json(&json!(["1", "2", topic, "big", {"bytes": 64 * 1024}]));
    assert_eq!(ws.expect_close(), Frame::Close(Some(1008), "slow consumer".into()));
    assert!(ws.at_eof());
}

// ---- item 15: topic and event length limits ----

/// A topic longer than 255 bytes cannot be answered without echoing it: the frame is invalid
/// data (close 1007, with the reason). 255 bytes is still a topic.
#[test]
fn an_oversized_topic_closes_with_1007() {
    let (server, _release) = hard_server(test_config());
    let mut ws = RawWs::connect(&server);
    let longest = format!("hard:{}", "x".repeat(250));
    ws.send_json(&json!(["1", "1", longest, "phx_join", {}]));
    assert_eq!(ws.reply_to("1")[4]["status"], "ok", "a 255-byte topic joins");
    let huge = format!("hard:{}", "x".repeat(1_000_000));
    ws.send_json(&json!(["2", "2", huge, "phx_join", {}]));
    let expected = Frame::Close(Some(1007), "topic is longer than 255 bytes".into());
    assert_eq!(ws.expect_close(), expected);
    let mut ws = RawWs::connect(&server);
    ws.send_json(&json!(["1", "1", format!("hard:{}", "x".repeat(251)), "phx_join", {}]));
    assert_eq!(ws.expect_close(), expected, "256 bytes is one too many");
}

/// An oversized event on a ref is refused on that ref; the connection carries on. Without a ref
/// there is nothing to answer: 1007.
#[test]
fn an_oversized_event_is_refused_on_its_ref() {
    let (server, _release) = hard_server(test_config());
    let mut ws = RawWs::connect(&server);
    let topic = unique_topic("hard");
    ws.send_json(&json!(["1", "1", topic, "phx_join", {}]));
    assert_eq!(ws.reply_to("1")[4]["status"], "ok");
    ws.send_json(&json!(["1", "2", topic, "e".repeat(256), {}]));
    let reply = ws.reply_to("2");
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "event is longer than 255 bytes"}})
    );
    ws.send_json(&json!(["1", "3", topic, "big", {"bytes": 3}]));
    assert_eq!(ws.reply_to("3")[4]["status"], "ok", "the channel still serves");
    ws.send_json(&json!(["1", null, topic, "e".repeat(100_000), {}]));
    let expected = Frame::Close(Some(1007), "event is longer than 255 bytes".into());
    assert_eq!(ws.expect_close(), expected);
}

// ---- item 3: a leave the channel never acknowledges ----

/// A channel stuck in a callback cannot acknowledge `phx_leave`. Within the leave timeout the
/// client still gets Phoenix's answer (ok, then `phx_close`), the socket keeps serving, the
/// route is gone (no zombie: a push is an unmatched topic), and the topic can be joined again
/// once the stuck channel has returned.
#[test]
fn a_leave_a_stuck_channel_never_acknowledges_still_completes() {
    let timeout = Duration::from_millis(300);
    let config = Config { channel_send_timeout: timeout, ..test_config() };
    let (server, release) = hard_server(config);
    let mut ws = RawWs::connect(&server);
    let topic = unique_topic("hard");
    ws.send_json(&json!(["1", "1", topic, "phx_join", {}]));
    assert_eq!(ws.reply_to("1")[4]["status"], "ok");
    ws.send_json(&json!(["1", "2", topic, "block", {}]));
    let started = Instant::now();
    ws.send_json(&json!(["1", "3", topic, "phx_leave", {}]));
    assert_eq!(
        ws.reply_to("3"),
        json!(["1", "3", topic, "phx_reply", {"status": "ok", "response": {}}])
    );
    assert!(started.elapsed() >= timeout, "the channel had its chance to answer");
    assert_eq!(ws.read(), Frame::Text(json!(["1", "1", topic, "phx_close", {}]).to_string()));
    ws.send_json(&json!([null, "4", "phoenix", "heartbeat", {}]));
    assert_eq!(ws.reply_to("4")[4]["status"], "ok");
    ws.send_json(&json!(["1", "5", topic, "big", {"bytes": 1}]));
    assert_eq!(ws.reply_to("5")[4]["response"]["reason"], "unmatched topic");
    release.send(()).unwrap();
    ws.send_json(&json!(["6", "6", topic, "phx_join", {}]));
    assert_eq!(ws.reply_to("6")[4]["status"], "ok", "the topic can be joined again");
    ws.send_json(&json!(["6", "7", topic, "big", {"bytes": 1}]));
    assert_eq!(ws.reply_to("7")[4]["status"], "ok");
}

// ---- item 7: half-sent upgrades ----

/// Half-sent upgrade requests (slowloris) count against `max_handshakes`, not
/// `max_connections`, and a new connection drops the oldest pending handshake: twenty of them,
/// with room for four connections, do not keep real clients out, and only completed upgrades
/// are counted (the fifth real client gets 503).
#[test]
fn half_sent_upgrades_do_not_lock_real_clients_out() {
    let config = Config { max_connections: 4, max_handshakes: 8, ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    let mut half_open: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut tcp = TcpStream::connect(server.addr()).expect("connect");
            tcp.write_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\n").unwrap();
            tcp
        })
        .collect();
    let mut clients: Vec<WsClient> = (0..4).map(|_| server.client()).collect();
    for client in &mut clients {
        client.join_ok(&unique_topic("room"));
    }
    // The twelve oldest were dropped to make room for newer handshakes: each is told why
    // (503 with the reason), then its stream ends.
    for (n, tcp) in half_open[..12].iter_mut().enumerate() {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = Vec::new();
        match tcp.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("half-open upgrade {n} still open: {e:?}"),
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "half-open upgrade {n}: {answer:?}");
        assert!(answer.contains("too many handshakes"), "{answer}");
    }
    let err = WsClient::connect(server.addr(), "vsn=2.0.0").err().expect("over max_connections");
    assert!(err.to_string().contains("503"), "{err}");
}

/// An upgrade request head without its final empty line (`UNFINISHED_HEAD` + "\r\n" ends it).
const UNFINISHED_HEAD: &str = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\n\
    upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Two raw connections that have sent `head`, then a third, real client connecting in a thread
/// (it waits for a handshake slot: the tests give the server two).
fn two_heads_then_a_client(
    server: &TestServer,
    head: &str,
) -> (Vec<TcpStream>, std::thread::JoinHandle<Result<(), tungstenite::Error>>) {
    let connect = |_| {
        let mut tcp = TcpStream::connect(server.addr()).expect("connect");
        tcp.write_all(head.as_bytes()).unwrap();
        tcp
    };
    let first_two = (0..2).map(connect).collect();
    let addr = server.addr();
    (first_two, std::thread::spawn(move || WsClient::connect(addr, "vsn=2.0.0").map(|_| ())))
}

/// Nothing arrives on `tcp` within half a second: no 503 for it.
fn assert_not_answered(tcp: &mut TcpStream, what: &str) {
    tcp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    match tcp.read(&mut [0u8; 1]) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what} was answered early: {other:?}"),
    }
}

fn assert_upgraded(tcp: &mut TcpStream) {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101", "{}", String::from_utf8_lossy(&answer));
}

/// A herd of real clients (a restarted node's, reconnecting at once) fills the handshake
/// budget with young upgrades; a newer one must wait for a slot rather than have the oldest
/// dropped (each dropped client retried after its backoff: 20,000 times at 19,000 clients).
#[test]
fn young_handshakes_are_not_dropped_for_newer_ones() {
    let config =
        Config { max_handshakes: 2, handshake_grace: Duration::from_secs(5), ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    // The third arrives while both are still sending their heads.
    let (mut herd, third) = two_heads_then_a_client(&server, UNFINISHED_HEAD);
    assert_not_answered(&mut herd[0], "the oldest young handshake");
    for tcp in &mut herd {
        tcp.write_all(b"\r\n").unwrap();
        assert_upgraded(tcp);
    }
    third.join().unwrap().expect("the third upgrades once a slot is free");
}

/// A handshake whose client has sent its whole request head waits on the server (its CPU, or
/// as here a slow `connect` callback), not on a slow client: a newer connection waits for a
/// slot rather than have it dropped with 503, as a half-sent one would be.
#[test]
fn handshakes_whose_head_is_in_are_not_dropped_as_slow_clients() {
    let config =
        Config { max_handshakes: 2, handshake_grace: Duration::from_millis(50), ..test_config() };
    let (release, gate) = unbounded::<()>();
    let connect: phx_threads::ConnectFn = std::sync::Arc::new(move |_| {
        let _ = gate.recv_timeout(WAIT); // until the test drops `release`
        Ok(phx_threads::Connected::default())
    });
    let server = TestServer::with(config, phx_threads::app::router(None), connect);
    let (mut waiting, third) = two_heads_then_a_client(&server, &format!("{UNFINISHED_HEAD}\r\n"));
    // Both are well past the grace while the third waits.
    assert_not_answered(&mut waiting[0], "a handshake with its head in");
    drop(release);
    for tcp in &mut waiting {
        assert_upgraded(tcp);
    }
    third.join().unwrap().expect("the third upgrades once a slot is free");
}

/// A shutdown that times out says how many connections had not ended, not how many there were
/// (the binary's exit message used to read "timed out with 19000 connections" when all but a
/// few had closed). Here one connection is held in its `connect` callback past the timeout.
#[test]
fn a_shutdown_that_times_out_counts_the_connections_left() {
    let config = Config { shutdown_timeout: Duration::from_millis(1500), ..test_config() };
    let (entered, inside) = unbounded::<()>();
    let (release, gate) = unbounded::<()>();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let connect: phx_threads::ConnectFn = std::sync::Arc::new(move |_| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let _ = entered.send(());
            let _ = gate.recv_timeout(WAIT); // the first is held until the test drops `release`
        }
        Ok(phx_threads::Connected::default())
    });
    let server = TestServer::with(config, phx_threads::app::router(None), connect);
    let mut held = TcpStream::connect(server.addr()).expect("connect");
    held.write_all(format!("{UNFINISHED_HEAD}\r\n").as_bytes()).unwrap();
    inside.recv_timeout(WAIT).expect("the connect callback runs");
    let _upgraded = server.client(); // ends within the timeout
    let report = server.shutdown();
    drop(release);
    assert!(!report.clean, "{report:?}");
    assert_eq!((report.connections, report.unfinished), (2, 1), "{report:?}");
}

/// One join of a 1 MB topic used to write a 1 MB log line. The binary's whole log stays made of
/// short lines: the topic is refused before anything logs it, and client text that is logged
/// goes through `logger::shown`.
#[test]
fn a_huge_topic_never_reaches_the_log() {
    let binary = crate::supervision::Binary::start_with(&["--no-database"], true);
    let mut ws = RawWs::connect_to(binary.ws);
    let huge = format!("nomatch:{}", "x".repeat(1_000_000));
    ws.send_json(&json!(["1", "1", huge, "phx_join", {}]));
    let answered = ws.read();
    assert!(!matches!(answered, Frame::Eof), "the server answers");
    let log = binary.stop();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1024, "a {longest}-byte log line");
}
