//! The LongPoll transport's HTTP semantics (issue #14, phoenix-protocol.md §1.8) over real
//! loopback sockets: 410 with a token opens a session, a poll answers 200 as soon as there is
//! something and 204 after the window, connect refusals are 403, sessions expire, a client
//! that stops polling is evicted, and tokens cannot be forged or used from another address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, WsClient, eventually, test_config, unique_topic};
use phx_threads::Config;

/// One LongPoll client: the token of its session and the address it connects from.
struct Lp {
    addr: SocketAddr,
    vsn: &'static str,
    token: String,
    from: Option<&'static str>,
}

/// One request; the answer's HTTP status and JSON body.
pub(crate) fn request(
    addr: SocketAddr,
    from: Option<&str>,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, Value) {
    let mut tcp = connect_from(addr, from);
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).expect("a complete response");
    let status = response[9..12].parse().expect("a status code");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Connects from a chosen loopback address (127.0.0.2 is another client for the token rule).
fn connect_from(addr: SocketAddr, from: Option<&str>) -> TcpStream {
    let Some(from) = from else { return TcpStream::connect(addr).expect("connect") };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).expect("bind a loopback source address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

impl Lp {
    fn open(addr: SocketAddr, vsn: &'static str) -> Lp {
        Lp::open_with(addr, vsn, "")
    }

    /// Opens a session with extra connect params (`&name=value`).
    fn open_with(addr: SocketAddr, vsn: &'static str, params: &str) -> Lp {
        let target = format!("/socket/longpoll?vsn={vsn}{params}&token=");
        let (status, body) = request(addr, None, "GET", &target, "");
        assert_eq!((status, &body["status"]), (200, &json!(410)), "{body}");
        let token = body["token"].as_str().expect("a token").to_string();
        Lp { addr, vsn, token, from: None }
    }

    fn target(&self) -> String {
        format!("/socket/longpoll?vsn={}&token={}", self.vsn, self.token)
    }

    fn poll(&self) -> Value {
        request(self.addr, self.from, "GET", &self.target(), "").1
    }

    fn post(&self, messages: &[Value]) -> Value {
        let lines: Vec<String> = messages.iter().map(Value::to_string).collect();
        request(self.addr, self.from, "POST", &self.target(), &lines.join("\n")).1
    }

    /// Polls until a message matching `pred` arrives (each poll returns at once when there is
    /// something); panics after `WAIT`.
    fn expect(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let answer = self.poll();
            assert!(answer["status"] == 200 || answer["status"] == 204, "{answer}");
            let messages = answer["messages"].as_array().cloned().unwrap_or_default();
            let decoded = messages.iter().map(|m| serde_json::from_str(m.as_str().unwrap()));
            if let Some(found) = decoded.map(Result::unwrap).find(&pred) {
                return found;
            }
        }
        panic!("no matching message within {WAIT:?}");
    }
}

/// The chat application with its own connect callback (`user_id` from the params).
fn server_with(config: Config) -> TestServer {
    TestServer::with(config, phx_threads::app::router(None), phx_threads::app::connect(None))
}

fn short_window() -> Config {
    Config { longpoll_window: Duration::from_millis(300), ..test_config() }
}

#[test]
fn a_session_opens_with_410_and_a_poll_without_messages_answers_204_after_the_window() {
    let server = server_with(short_window());
    let lp = Lp::open(server.addr(), "2.0.0");
    let started = Instant::now();
    let answer = lp.poll();
    assert_eq!(answer, json!({"status": 204, "token": lp.token, "messages": []}));
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
}

#[test]
fn join_push_and_broadcasts_flow_between_longpoll_and_websocket_clients() {
    let server = TestServer::start();
    let topic = unique_topic("room");
    let lp = Lp::open(server.addr(), "2.0.0");
    let mut ws = server.client();
    let ws_jr = ws.join_ok(&topic);
    let join = json!(["1", "1", topic, "phx_join", {}]);
    let push = json!(["1", "2", topic, "new_msg", {"body": "from longpoll"}]);
    assert_eq!(lp.post(&[join, push]), json!({"status": 200}));
    let started = Instant::now();
    let reply = lp.expect(|m| m[1] == "2");
    assert!(started.elapsed() < Duration::from_secs(2), "a poll answers as soon as it can");
    assert_eq!(reply[4], json!({"status": "ok", "response": {}}));
    ws.expect(|m| m[3] == "new_msg" && m[4]["body"] == "from longpoll");
    ws.push(Some(&ws_jr), &topic, "new_msg", json!({"body": "from websocket"}));
    lp.expect(|m| m[3] == "new_msg" && m[4]["body"] == "from websocket");
}

#[test]
fn v1_json_works_over_longpoll() {
    let server = TestServer::start();
    let lp = Lp::open(server.addr(), "1.0.0");
    let heartbeat = json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "9"});
    assert_eq!(lp.post(&[heartbeat]), json!({"status": 200}));
    let reply = lp.expect(|m| m["ref"] == "9");
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {}}));
}

#[test]
fn a_refused_connect_answers_403_and_opens_no_session() {
    let refuse: phx_threads::ConnectFn = Arc::new(|_| Err(Default::default()));
    let server = TestServer::with(test_config(), phx_threads::app::router(None), refuse);
    let (status, body) = request(server.addr(), None, "GET", "/socket/longpoll?vsn=2.0.0", "");
    assert_eq!((status, body), (200, json!({"status": 403})));
    assert!(eventually(WAIT, || server.handle().connection_count() == 0));
}

#[test]
fn a_session_nobody_polls_expires_and_its_channels_stop() {
    let server = server_with(short_window());
    let topic = unique_topic("room");
    let mut ws = server.client(); // anonymous
    ws.presence = true;
    ws.join_ok(&topic);
    let lp = Lp::open_with(server.addr(), "2.0.0", "&user_id=longpoller");
    let joined = lp.post(&[json!(["1", "1", topic, "phx_join", {}])]);
    assert_eq!(joined, json!({"status": 200}));
    let member = |m: &Value, side: &str| {
        let diff = m[4][side].as_object();
        m[3] == "presence_diff" && diff.is_some_and(|d| d.contains_key("longpoller"))
    };
    ws.expect(|m| member(m, "joins"));
    // Nobody polls: after 1.5 windows the session ends, and its channel leaves presence.
    ws.expect(|m| member(m, "leaves"));
    assert_eq!(lp.poll(), json!({"status": 410}));
    assert!(eventually(WAIT, || server.handle().connection_count() == 1), "only the websocket");
}

#[test]
fn a_client_that_stops_polling_is_evicted_when_its_buffer_is_full() {
    let config =
        Config { outbound_queue_bytes: 16 * 1024, longpoll_window: WAIT * 4, ..test_config() };
    let server = server_with(config);
    let topic = unique_topic("room");
    let lp = Lp::open(server.addr(), "2.0.0");
    lp.post(&[json!(["1", "1", topic, "phx_join", {}])]);
    let mut ws = server.client();
    let jr = ws.join_ok(&topic);
    let body = "x".repeat(1024);
    for _ in 0..32 {
        ws.call(Some(&jr), &topic, "new_msg", json!({ "body": body }));
    }
    // The broadcasts reach the session through its channel, which may still be catching up
    // when the last reply arrives: wait for the eviction before the client polls again.
    assert!(eventually(WAIT, || server.handle().connection_count() == 1), "session evicted");
    assert_eq!(lp.poll(), json!({"status": 410}), "evicted, told by 410");
}

#[test]
fn forged_tokens_and_tokens_from_another_address_are_refused() {
    let server = TestServer::start();
    let lp = Lp::open(server.addr(), "2.0.0");
    lp.post(&[json!([null, "1", "phoenix", "heartbeat", {}])]);
    let mut forged =
        Lp { token: lp.token.replacen('.', ".0", 1), ..Lp::open(server.addr(), "2.0.0") };
    forged.token.pop();
    assert_eq!(forged.poll(), json!({"status": 410}), "tampered signature");
    let unsigned = Lp { token: lp.token.split('.').next().unwrap().to_string(), ..forged };
    assert_eq!(unsigned.poll(), json!({"status": 410}), "no signature");
    let elsewhere = Lp { token: lp.token.clone(), from: Some("127.0.0.2"), ..unsigned };
    assert_eq!(elsewhere.poll(), json!({"status": 410}), "another client's address");
    assert_eq!(
        elsewhere.post(&[json!([null, "2", "phoenix", "heartbeat", {}])]),
        json!({"status": 410})
    );
    // The session itself is untouched: its own client still gets its reply.
    lp.expect(|m| m[1] == "1");
}

#[test]
fn a_longpoll_session_takes_a_connection_slot() {
    let config = Config { max_connections: 1, ..test_config() };
    let server = server_with(config);
    let _lp = Lp::open(server.addr(), "2.0.0");
    let refused = WsClient::connect(server.addr(), "vsn=2.0.0");
    assert!(refused.is_err(), "the websocket gets no slot");
    // Refused by the acceptor (plain 503, as for an upgrade); phoenix.js reads no status from
    // that body and retries with its backoff.
    let (status, _) = request(server.addr(), None, "GET", "/socket/longpoll?vsn=2.0.0", "");
    assert_eq!(status, 503);
}

#[test]
fn bad_posts_get_a_clear_error_and_the_session_keeps_working() {
    let server = server_with(test_config());
    let lp = Lp::open(server.addr(), "2.0.0");
    let heartbeats: Vec<Value> =
        (0..101).map(|i| json!([null, i.to_string(), "phoenix", "heartbeat", {}])).collect();
    let answer = lp.post(&heartbeats);
    assert_eq!(answer, json!({"status": 400, "reason": "more than 100 messages"}));
    let garbage = request(server.addr(), None, "POST", &lp.target(), "{not json");
    assert_eq!(garbage.1["status"], 200, "the session handles it: a close, like a bad frame");
    // A bad frame ends the session (as 1007 ends a WebSocket); the client sees 410.
    assert_eq!(lp.poll(), json!({"status": 410}));
}

#[test]
fn a_cross_origin_preflight_is_answered_as_phoenix_does() {
    let server = server_with(test_config());
    let mut tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let head = "OPTIONS /socket/longpoll?vsn=2.0.0 HTTP/1.1\r\nhost: localhost\r\n\
                origin: http://localhost:4001\r\naccess-control-request-method: POST\r\n\
                access-control-request-headers: content-type\r\n\r\n";
    tcp.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for header in [
        "access-control-allow-origin: *",
        "access-control-allow-headers: content-type",
        "access-control-allow-methods: get, post, options",
    ] {
        assert!(response.contains(header), "{header} missing in {response}");
    }
}

#[test]
fn an_ended_session_frees_its_connection_and_file_descriptor() {
    let server = server_with(short_window());
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_fds();
    for _ in 0..5 {
        let lp = Lp::open(server.addr(), "2.0.0");
        lp.post(&[json!(["1", "1", unique_topic("room"), "phx_join", {}])]);
    }
    // Nobody polls: every session expires after 1.5 windows.
    assert!(eventually(WAIT, || server.handle().connection_count() == 0));
    assert!(eventually(WAIT, || open_fds() <= before), "{} fds, {before} before", open_fds());
}
