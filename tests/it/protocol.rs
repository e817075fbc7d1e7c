//! The wire protocol frame by frame (phoenix-protocol.md §1-§4), against the chat application.
//! Bad input closes only the offending connection; every such test ends by serving a fresh client.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, WsClient, test_config, unique_topic, ws::Event};
use phx_threads::{Config, Connected, Refused, server};

/// A fresh client can still join and chat: the server survived whatever the test did.
fn assert_still_serving(server: &TestServer) {
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    let reply = c.call(Some(&jr), &topic, "ping", json!({"n": 1}));
    assert_eq!(reply, json!({"status": "ok", "response": {"n": 1}}));
}

#[test]
fn heartbeat_is_answered_with_a_null_join_ref() {
    let server = TestServer::start();
    let mut c = server.client();
    let reply = c.heartbeat();
    assert_eq!(reply, json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]));
}

#[test]
fn join_reply_carries_join_ref_and_ref() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    c.send(json!(["7", "8", topic, "phx_join", {}]));
    let reply = c.expect(|m| m[3] == "phx_reply");
    assert_eq!(reply, json!(["7", "8", topic, "phx_reply", {"status": "ok", "response": {}}]));
}

#[test]
fn new_msg_is_broadcast_to_every_member_and_acknowledged() {
    let server = TestServer::start();
    let topic = unique_topic("room");
    let (mut alice, mut bob) = (server.client(), server.client());
    let alice_jr = alice.join_ok(&topic);
    bob.join_ok(&topic);
    let r = alice.push(Some(&alice_jr), &topic, "new_msg", json!({"body": "hello"}));
    let broadcast = json!([null, null, topic, "new_msg", {"body": "hello"}]);
    assert_eq!(bob.expect(|m| m[3] == "new_msg"), broadcast);
    assert_eq!(alice.expect(|m| m[3] == "new_msg"), broadcast);
    assert_eq!(alice.reply_to(&r), json!({"status": "ok", "response": {}}));
}

#[test]
fn new_msg_without_a_string_body_is_an_error_reply() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    let reply = c.call(Some(&jr), &topic, "new_msg", json!({"body": 42}));
    assert_eq!(reply, json!({"status": "error", "response": {"reason": "body must be a string"}}));
    let reply = c.call(Some(&jr), &topic, "launch", json!({}));
    assert_eq!(reply["response"]["reason"], "unknown event \"launch\"");
    // Still joined: the channel kept running.
    assert_eq!(c.call(Some(&jr), &topic, "ping", json!({}))["status"], "ok");
}

#[test]
fn private_room_is_refused_and_stays_unjoined() {
    let server = TestServer::start();
    let mut c = server.client();
    let (jr, reply) = c.join("room:private", json!({}));
    assert_eq!(reply, json!({"status": "error", "response": {"reason": "unauthorized"}}));
    let push = c.call(Some(&jr), "room:private", "new_msg", json!({"body": "x"}));
    assert_eq!(push["response"]["reason"], "unmatched topic");
}

#[test]
fn unmatched_topics_are_refused_with_a_null_join_ref() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send(json!(["1", "1", "nowhere:1", "phx_join", {}]));
    let reply = c.expect(|m| m[3] == "phx_reply");
    let expected = json!([null, "1", "nowhere:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]);
    assert_eq!(reply, expected);
    c.send(json!(["1", "2", "room:never-joined", "new_msg", {"body": "x"}]));
    let reply = c.expect(|m| m[3] == "phx_reply");
    assert_eq!(reply[0], Value::Null);
    assert_eq!(reply[4]["response"]["reason"], "unmatched topic");
}

#[test]
fn leave_replies_ok_then_closes_the_channel() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    let r = c.push(Some(&jr), &topic, "phx_leave", json!({}));
    let reply = c.expect(|m| m[3] == "phx_reply");
    assert_eq!(reply, json!([jr, r, topic, "phx_reply", {"status": "ok", "response": {}}]));
    let close = c.expect(|m| m[3] == "phx_close");
    assert_eq!(close, json!([jr, jr, topic, "phx_close", {}]));
    // Leaving a topic that is not joined is answered ok too.
    let reply = c.call(Some("99"), "room:elsewhere", "phx_leave", json!({}));
    assert_eq!(reply["status"], "ok");
    assert_eq!(
        c.call(Some(&jr), &topic, "ping", json!({}))["response"]["reason"],
        "unmatched topic"
    );
}

#[test]
fn duplicate_join_replies_then_closes_the_old_join_and_never_duplicates_broadcasts() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let old = c.join_ok(&topic);
    let new = c.next_ref();
    c.send(json!([new, new, topic, "phx_join", {}]));
    let first = c.expect(|m| m[3] == "phx_reply" || m[3] == "phx_close");
    assert_eq!(first, json!([new, new, topic, "phx_reply", {"status": "ok", "response": {}}]));
    let close = c.expect(|m| m[3] == "phx_close");
    assert_eq!(close, json!([old, old, topic, "phx_close", {}]));
    let r = c.push(Some(&new), &topic, "new_msg", json!({"body": "once"}));
    c.reply_to(&r);
    c.expect(|m| m[3] == "new_msg");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn stale_join_refs_are_dropped_but_null_is_accepted() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let old = c.join_ok(&topic);
    let new = c.next_ref();
    c.send(json!([new, "50", topic, "phx_join", {}]));
    c.expect(|m| m[3] == "phx_close" && m[0] == old.as_str());
    c.push(Some(&old), &topic, "ping", json!({"stale": true}));
    let fresh = c.call(None, &topic, "ping", json!({"null": true}));
    assert_eq!(fresh, json!({"status": "ok", "response": {"null": true}}));
    // The stale push never got an answer: the only reply seen was the null one.
}

#[test]
fn v1_clients_get_objects_without_join_ref() {
    let server = TestServer::start();
    let mut c = WsClient::connect(server.addr(), "").expect("no vsn means 1.0.0");
    c.send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}));
    let Event::Json(reply) = c.recv(crate::support::WAIT) else { panic!("no reply") };
    assert_eq!(
        reply,
        json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"})
    );
    let topic = unique_topic("room");
    c.send(json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": "2"}));
    let Event::Json(reply) = c.recv(crate::support::WAIT) else { panic!("no reply") };
    assert_eq!(reply["payload"]["status"], "ok");
    assert!(reply.get("join_ref").is_none());
}

#[test]
fn unsupported_vsn_and_wrong_path_are_refused() {
    let server = TestServer::start();
    let err = WsClient::connect(server.addr(), "vsn=3.0.0").err().expect("refused");
    assert!(err.to_string().contains("403"), "{err}");
    let err = WsClient::connect_with(server.addr(), "/other/websocket?vsn=2.0.0", &[])
        .err()
        .expect("refused");
    assert!(err.to_string().contains("404"), "{err}");
    assert_still_serving(&server);
}

#[test]
fn auth_token_subprotocol_is_decoded_and_phoenix_echoed() {
    let connect: phx_threads::ConnectFn =
        Arc::new(|info: &phx_threads::ConnectInfo| match info.auth_token.as_deref() {
            Some("s3cret") => {
                let mut assigns = serde_json::Map::new();
                assigns.insert("user".into(), json!(info.params.get("user")));
                Ok(Connected { assigns, id: None })
            }
            _ => Err(Refused::default()),
        });
    let server = TestServer::with(test_config(), phx_threads::app::router(None), connect);
    // btoa("s3cret") = "czNjcmV0", padding stripped as phoenix.js does.
    let proto = "phoenix, base64url.bearer.phx.czNjcmV0";
    let c = WsClient::connect_with(
        server.addr(),
        "/socket/websocket?vsn=2.0.0&user=ann",
        &[("sec-websocket-protocol", proto)],
    );
    assert!(c.is_ok(), "{:?}", c.err());
    let bad = "phoenix, base64url.bearer.phx.d3Jvbmc";
    let err = WsClient::connect_with(
        server.addr(),
        "/socket/websocket?vsn=2.0.0",
        &[("sec-websocket-protocol", bad)],
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("403"), "{err}");
    let err = WsClient::connect(server.addr(), "vsn=2.0.0").err().unwrap();
    assert!(err.to_string().contains("403"), "{err}");
}

#[test]
fn non_json_text_closes_with_1007_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send_text("this is not json");
    assert_eq!(c.expect_close(crate::support::WAIT), Some(1007));
    assert_still_serving(&server);
}

#[test]
fn json_of_the_wrong_shape_closes_with_1007() {
    let server = TestServer::start();
    for bad in
        [r#"{"topic":"room:1"}"#, r#"["1","1","room:1"]"#, r#"["1","1",5,"phx_join",{}]"#, "42"]
    {
        let mut c = server.client();
        c.send_text(bad);
        assert_eq!(c.expect_close(crate::support::WAIT), Some(1007), "{bad}");
    }
    assert_still_serving(&server);
}

#[test]
fn oversize_frames_close_with_1009() {
    let config = Config { max_frame_bytes: 4096, ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    c.push(Some(&jr), &topic, "new_msg", json!({"body": "x".repeat(10_000)}));
    assert_eq!(c.expect_close(crate::support::WAIT), Some(1009));
    assert_still_serving(&server);
}

#[test]
fn binary_payloads_round_trip_as_binary_frames() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    let frame = [
        &[0u8, jr.len() as u8, 2, topic.len() as u8, 4][..],
        jr.as_bytes(),
        b"99",
        topic.as_bytes(),
        b"ping",
        &[1, 2, 3],
    ]
    .concat();
    c.send_binary(frame);
    let Event::Binary(reply) = c.recv(crate::support::WAIT) else {
        panic!("expected a binary reply")
    };
    let expected = [
        &[1u8, jr.len() as u8, 2, topic.len() as u8, 2][..],
        jr.as_bytes(),
        b"99",
        topic.as_bytes(),
        b"ok",
        &[1, 2, 3],
    ]
    .concat();
    assert_eq!(reply, expected);
}

#[test]
fn idle_connections_are_closed_with_1002() {
    let config = Config { idle_timeout: Duration::from_millis(300), ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    let mut c = server.client();
    assert_eq!(c.expect_close(crate::support::WAIT), Some(1002));
}

#[test]
fn websocket_pings_are_answered() {
    let server = TestServer::start();
    let addr = server.addr();
    let req = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (mut ws, _) = tungstenite::connect(req).expect("connects");
    ws.send(tungstenite::Message::Ping(b"hi".to_vec().into())).unwrap();
    match ws.get_mut() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => {
            s.set_read_timeout(Some(crate::support::WAIT)).unwrap()
        }
        _ => unreachable!(),
    }
    loop {
        match ws.read().expect("pong arrives") {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            _ => continue,
        }
    }
}

#[test]
fn disconnect_broadcast_on_the_socket_id_closes_with_1001() {
    let connect: phx_threads::ConnectFn = Arc::new(|info: &phx_threads::ConnectInfo| {
        let id = info.params.get("user").map(|u| format!("users_socket:{u}"));
        Ok(Connected { assigns: Default::default(), id })
    });
    let server = TestServer::with(test_config(), phx_threads::app::router(None), connect);
    let mut ann = WsClient::connect(server.addr(), "vsn=2.0.0&user=ann").unwrap();
    let mut bob = WsClient::connect(server.addr(), "vsn=2.0.0&user=bob").unwrap();
    ann.heartbeat();
    bob.heartbeat();
    let pubsub = server.handle().pubsub();
    pubsub.broadcast("users_socket:ann", "not_disconnect", json!({}).into()).unwrap();
    pubsub.broadcast("users_socket:ann", "disconnect", json!({}).into()).unwrap();
    assert_eq!(ann.expect_close(crate::support::WAIT), Some(1001));
    bob.heartbeat();
}

#[test]
fn connections_over_the_limit_get_503() {
    let config = Config { max_connections: 2, ..test_config() };
    let server = TestServer::with(config, phx_threads::app::router(None), server::accept_all());
    let mut a = server.client();
    let _b = server.client();
    let err = WsClient::connect(server.addr(), "vsn=2.0.0").err().expect("third is refused");
    assert!(err.to_string().contains("503"), "{err}");
    a.heartbeat();
    drop(a);
    assert!(crate::support::eventually(crate::support::WAIT, || WsClient::connect(
        server.addr(),
        "vsn=2.0.0"
    )
    .is_ok()));
}

#[test]
fn broadcasts_from_outside_any_channel_reach_members() {
    let server = TestServer::start();
    let topic = unique_topic("room");
    let mut c = server.client();
    c.join_ok(&topic);
    server
        .handle()
        .pubsub()
        .broadcast(&topic, "announcement", json!({"text": "hi"}).into())
        .unwrap();
    assert_eq!(
        c.expect(|m| m[3] == "announcement"),
        json!([null, null, topic, "announcement", {"text": "hi"}])
    );
}

/// `bin:*`: `bin` replies with a binary payload and broadcasts one (`blob`).
struct BinaryChannel;

impl phx_threads::channel::Channel for BinaryChannel {
    fn join(
        &mut self,
        _topic: &str,
        _payload: phx_threads::protocol::Payload,
        _ctx: &mut phx_threads::channel::ChannelCtx,
    ) -> phx_threads::channel::JoinResult {
        Ok(phx_threads::protocol::Payload::empty())
    }

    fn handle_in(
        &mut self,
        _event: &str,
        _payload: phx_threads::protocol::Payload,
        ctx: &mut phx_threads::channel::ChannelCtx,
    ) -> phx_threads::channel::HandleIn {
        let blob = || phx_threads::protocol::Payload::Binary(vec![1, 2, 3]);
        ctx.broadcast("blob", blob()).expect("broadcasts");
        phx_threads::channel::HandleIn::ok(blob())
    }
}

#[test]
fn binary_messages_a_v1_client_cannot_carry_are_refused_visibly_not_dropped() {
    use phx_threads::limits::REFUSALS;
    use std::sync::atomic::Ordering::Relaxed;
    let router = phx_threads::app::router(None).channel("bin:*", || BinaryChannel);
    let server = TestServer::with(test_config(), router, server::accept_all());
    let mut v1 = WsClient::connect(server.addr(), "vsn=1.0.0").expect("connects");
    v1.send(json!({"topic": "bin:1", "event": "phx_join", "payload": {}, "ref": "1"}));
    let joined = v1.expect(|m| m["ref"] == "1");
    assert_eq!(joined["payload"]["status"], "ok", "{joined}");
    let mut v2 = server.client();
    let jr = v2.join_ok("bin:1");
    // A V2 member makes the channel broadcast a binary blob: V2 gets it, V1 cannot.
    v2.send(json!([jr, "2", "bin:1", "bin", {}]));
    assert!(matches!(v2.recv(crate::support::WAIT), Event::Binary(_)));
    // V1's own push: the binary reply becomes an error reply saying why.
    v1.send(json!({"topic": "bin:1", "event": "bin", "payload": {}, "ref": "3"}));
    let reply = v1.expect(|m| m["ref"] == "3");
    assert_eq!(reply["payload"]["status"], "error", "{reply}");
    let reason = reply["payload"]["response"]["reason"].as_str().unwrap();
    assert!(reason.contains("binary"), "{reason}");
    // Two broadcasts (dispatched by the registry, maybe after the reply) and one reply were
    // refused, each counted.
    let counted = || REFUSALS.binary_to_text.load(Relaxed);
    assert!(crate::support::eventually(crate::support::WAIT, || counted() == 3), "{}", counted());
}
