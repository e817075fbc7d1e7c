//! A small blocking Phoenix V2 client over tungstenite, in the spirit of Phoenix's own
//! `test/support/websocket_client.exs`: join, leave, push, heartbeat, and receive with a deadline.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub struct WsClient {
    ws: WebSocket<TcpStream>,
    next_ref: u64,
    /// Messages `expect` skipped, kept for later `expect`s: replies and broadcasts travel by
    /// different routes (channel thread vs registry), so their relative order is not fixed.
    skipped: VecDeque<Value>,
    /// Whether `presence_state`/`presence_diff` are received; off by default, so tests of other
    /// features in `room:*` (which tracks every member) see only what they are about.
    pub presence: bool,
}

/// What `recv` can observe besides a message.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Binary(Vec<u8>),
    Closed(Option<u16>, String),
    Timeout,
}

impl WsClient {
    pub fn connect(addr: SocketAddr, query: &str) -> Result<WsClient, tungstenite::Error> {
        WsClient::connect_with(addr, &format!("/socket/websocket?{query}"), &[])
    }

    pub fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}{path_and_query}").into_client_request()?;
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        let (ws, _) = tungstenite::client(req, tcp).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        Ok(WsClient { ws, next_ref: 1, skipped: VecDeque::new(), presence: false })
    }

    pub fn next_ref(&mut self) -> String {
        let r = self.next_ref;
        self.next_ref += 1;
        r.to_string()
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).expect("send");
    }

    pub fn send(&mut self, msg: Value) {
        self.send_text(&msg.to_string());
    }

    /// Sends a join and returns `(join_ref, reply payload)`.
    pub fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let join_ref = self.next_ref();
        self.send(json!([join_ref, join_ref, topic, "phx_join", payload]));
        let reply = self.reply_to(&join_ref);
        (join_ref, reply)
    }

    /// Joins and asserts the reply is ok.
    pub fn join_ok(&mut self, topic: &str) -> String {
        let (join_ref, reply) = self.join(topic, json!({}));
        assert_eq!(reply["status"], "ok", "join {topic}: {reply}");
        join_ref
    }

    pub fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref();
        self.send(json!([join_ref, r, topic, event, payload]));
        r
    }

    /// Pushes and waits for the reply payload `{"status":..,"response":..}`.
    pub fn call(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Value {
        let r = self.push(join_ref, topic, event, payload);
        self.reply_to(&r)
    }

    pub fn heartbeat(&mut self) -> Value {
        let r = self.next_ref();
        self.send(json!([null, r, "phoenix", "heartbeat", {}]));
        self.expect(|m| m[1] == r.as_str())
    }

    /// Waits for the `phx_reply` to `ref` and returns its payload.
    pub fn reply_to(&mut self, r: &str) -> Value {
        let msg = self.expect(|m| m[3] == "phx_reply" && m[1] == r);
        msg[4].clone()
    }

    /// The next message matching `pred`, skipping others; panics after the deadline.
    pub fn expect(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.skipped.iter().position(&pred) {
            return self.skipped.remove(i).expect("index is valid");
        }
        let deadline = Instant::now() + super::WAIT;
        loop {
            match self.recv_until(deadline) {
                Event::Json(v) if pred(&v) => return v,
                Event::Json(v) => self.skipped.push_back(v),
                Event::Binary(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next event of any kind within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Event {
        self.recv_until(Instant::now() + timeout)
    }

    pub fn recv_until(&mut self, deadline: Instant) -> Event {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let msg: Value = serde_json::from_str(&t).expect("server sent JSON");
                    let event = msg[3].as_str().unwrap_or_default();
                    if !self.presence && event.starts_with("presence_") {
                        continue;
                    }
                    return Event::Json(msg);
                }
                Ok(Message::Binary(b)) => return Event::Binary(b.to_vec()),
                Ok(Message::Close(frame)) => return closed(frame),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Event::Timeout;
                }
                Err(e) => return Event::Closed(None, e.to_string()),
            }
        }
    }

    /// Waits for the server to close the connection, skipping messages; returns the code.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline) {
                Event::Closed(code, why) => {
                    if code.is_none() {
                        eprintln!("closed without a close frame: {why}");
                    }
                    return code;
                }
                Event::Timeout => panic!("connection not closed within {timeout:?}"),
                _ => continue,
            }
        }
    }

    /// Asserts nothing arrives for `quiet` (used only to prove an absence).
    pub fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.skipped.is_empty(), "unexpected messages: {:?}", self.skipped);
        match self.recv(quiet) {
            Event::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }

    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }
}

fn closed(frame: Option<CloseFrame>) -> Event {
    match frame {
        Some(f) => Event::Closed(Some(f.code.into()), f.reason.to_string()),
        None => Event::Closed(None, String::new()),
    }
}
