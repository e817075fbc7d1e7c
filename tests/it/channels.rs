//! Channel lifecycle through the `Channel` trait, with a test channel mounted at `test:*`:
//! crashes stay inside one channel, interception, asynchronous replies, stops, limits,
//! slow consumers and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, WsClient, eventually, test_config, unique_topic};
use phx_threads::{Channel, ChannelCtx, Config, Flow, HandleIn, Info, Payload, StopReason, server};

/// Records `(topic, reason)` of every `terminate`.
struct TestChannel {
    terminated: Sender<(String, StopReason)>,
}

impl Channel for TestChannel {
    fn join(
        &mut self,
        _topic: &str,
        payload: Payload,
        ctx: &mut ChannelCtx,
    ) -> Result<Payload, Payload> {
        let payload = payload.as_json().cloned().unwrap_or(Value::Null);
        if payload["crash"] == true {
            panic!("join crash requested");
        }
        if payload["refuse"] == true {
            return Err(json!({"reason": "refused"}).into());
        }
        if let Some(follow) = payload["follow"].as_str() {
            ctx.subscribe(follow).unwrap();
        }
        ctx.push("welcome", json!({"topic": ctx.topic()}));
        Ok(json!({"joined": true}).into())
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
        match event {
            "crash" => panic!("crash requested"),
            "stop" => HandleIn::Stop {
                reason: StopReason::Normal,
                reply: Some(("ok".into(), Payload::empty())),
            },
            "fail" => HandleIn::Stop { reason: StopReason::Error("failed".into()), reply: None },
            "later" => {
                let socket_ref = ctx.socket_ref().expect("message has a ref");
                std::thread::spawn(move || socket_ref.reply("ok", json!({"late": true})));
                HandleIn::NoReply
            }
            "shout" => {
                ctx.broadcast_from("shout", payload).unwrap();
                HandleIn::ok(Payload::empty())
            }
            "plain" | "secret" => {
                ctx.broadcast(event, payload).unwrap();
                HandleIn::ok(Payload::empty())
            }
            _ => HandleIn::error(json!({"reason": "unknown"})),
        }
    }

    fn intercepts(&self) -> Vec<String> {
        vec!["secret".into()]
    }

    fn handle_out(&mut self, event: &str, _payload: Payload, ctx: &mut ChannelCtx) -> Flow {
        let join_ref = ctx.join_ref().to_string();
        ctx.push(event, json!({"redacted": true, "for": join_ref}));
        Flow::Continue
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        if let Info::Shared(value) = info {
            let text = value.downcast_ref::<String>().cloned().unwrap_or_default();
            ctx.push("shared", json!({ "text": text }));
        }
        Flow::Continue
    }

    fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelCtx) {
        let _ = self.terminated.send((ctx.topic().to_string(), reason.clone()));
    }
}

fn start_with(config: Config) -> (TestServer, Receiver<(String, StopReason)>) {
    let (router, rx) = test_router();
    (TestServer::with(config, router, server::accept_all()), rx)
}

/// The app's router plus the test channel at `test:*` (`shout` is `broadcast_from`), and
/// what its channels' `terminate` reports.
pub(crate) fn test_router() -> (phx_threads::Router, Receiver<(String, StopReason)>) {
    let (tx, rx) = unbounded();
    let router = phx_threads::app::router(None)
        .channel("test:*", move || TestChannel { terminated: tx.clone() });
    (router, rx)
}

fn start() -> (TestServer, Receiver<(String, StopReason)>) {
    start_with(test_config())
}

fn terminated(rx: &Receiver<(String, StopReason)>, topic: &str) -> StopReason {
    loop {
        let (t, reason) = rx.recv_timeout(WAIT).expect("terminate was called");
        if t == topic {
            return reason;
        }
    }
}

#[test]
fn a_crash_sends_phx_error_and_nothing_else_notices() {
    let (server, _) = start();
    let topic = unique_topic("test");
    let room = unique_topic("room");
    let (mut a, mut b) = (server.client(), server.client());
    let a_jr = a.join_ok(&topic);
    let a_room = a.join_ok(&room);
    let b_jr = b.join_ok(&topic);
    a.push(Some(&a_jr), &topic, "crash", json!({}));
    let error = a.expect(|m| m[3] == "phx_error");
    assert_eq!(error, json!([a_jr, a_jr, topic, "phx_error", {"reason": "channel_crash"}]));
    // The same connection's other channel and the other connection are untouched.
    assert_eq!(a.call(Some(&a_room), &room, "ping", json!({}))["status"], "ok");
    assert_eq!(b.call(Some(&b_jr), &topic, "plain", json!({}))["status"], "ok");
    // The client can rejoin, as phoenix.js does after phx_error.
    let again = a.join_ok(&topic);
    assert_eq!(a.call(Some(&again), &topic, "plain", json!({}))["status"], "ok");
}

#[test]
fn join_crash_and_refusal_are_error_replies() {
    let (server, _) = start();
    let mut c = server.client();
    let (_, reply) = c.join(&unique_topic("test"), json!({"crash": true}));
    assert_eq!(reply, json!({"status": "error", "response": {"reason": "join crashed"}}));
    let (_, reply) = c.join(&unique_topic("test"), json!({"refuse": true}));
    assert_eq!(reply, json!({"status": "error", "response": {"reason": "refused"}}));
    c.heartbeat();
}

#[test]
fn pushes_made_in_join_follow_the_join_reply() {
    let (server, _) = start();
    let mut c = server.client();
    let topic = unique_topic("test");
    let jr = c.next_ref();
    c.send(json!([jr, jr, topic, "phx_join", {}]));
    let first = c.expect(|_| true);
    assert_eq!(
        first,
        json!([jr, jr, topic, "phx_reply", {"status": "ok", "response": {"joined": true}}])
    );
    let second = c.expect(|_| true);
    assert_eq!(second, json!([jr, null, topic, "welcome", {"topic": topic}]));
}

#[test]
fn intercepted_events_go_through_handle_out_per_subscriber() {
    let (server, _) = start();
    let topic = unique_topic("test");
    let (mut a, mut b) = (server.client(), server.client());
    let a_jr = a.join_ok(&topic);
    let b_jr = b.join_ok(&topic);
    a.call(Some(&a_jr), &topic, "secret", json!({"pin": 1234}));
    assert_eq!(
        a.expect(|m| m[3] == "secret"),
        json!([a_jr, null, topic, "secret", {"redacted": true, "for": a_jr}])
    );
    assert_eq!(
        b.expect(|m| m[3] == "secret"),
        json!([b_jr, null, topic, "secret", {"redacted": true, "for": b_jr}])
    );
    a.call(Some(&a_jr), &topic, "plain", json!({"x": 1}));
    assert_eq!(b.expect(|m| m[3] == "plain"), json!([null, null, topic, "plain", {"x": 1}]));
}

#[test]
fn broadcast_from_skips_the_sender() {
    let (server, _) = start();
    let topic = unique_topic("test");
    let (mut a, mut b) = (server.client(), server.client());
    let a_jr = a.join_ok(&topic);
    b.join_ok(&topic);
    assert_eq!(a.call(Some(&a_jr), &topic, "shout", json!({"n": 1}))["status"], "ok");
    assert_eq!(b.expect(|m| m[3] == "shout")[4], json!({"n": 1}));
    a.expect(|m| m[3] == "welcome");
    a.expect_silence(Duration::from_millis(200));
}

#[test]
fn replies_can_come_later_from_another_thread() {
    let (server, _) = start();
    let topic = unique_topic("test");
    let mut c = server.client();
    let jr = c.join_ok(&topic);
    assert_eq!(
        c.call(Some(&jr), &topic, "later", json!({})),
        json!({"status": "ok", "response": {"late": true}})
    );
}

#[test]
fn stop_replies_then_closes_and_terminates() {
    let (server, terminations) = start();
    let topic = unique_topic("test");
    let mut c = server.client();
    let jr = c.join_ok(&topic);
    assert_eq!(c.call(Some(&jr), &topic, "stop", json!({}))["status"], "ok");
    assert_eq!(c.expect(|m| m[3] == "phx_close"), json!([jr, jr, topic, "phx_close", {}]));
    assert_eq!(terminated(&terminations, &topic), StopReason::Normal);
    let topic = unique_topic("test");
    let jr = c.join_ok(&topic);
    c.push(Some(&jr), &topic, "fail", json!({}));
    assert_eq!(c.expect(|m| m[3] == "phx_error")[0], jr.as_str());
    assert_eq!(terminated(&terminations, &topic), StopReason::Error("failed".into()));
}

#[test]
fn channels_terminate_when_the_connection_closes() {
    let (server, terminations) = start();
    let topic = unique_topic("test");
    let mut c = server.client();
    c.join_ok(&topic);
    c.close();
    assert_eq!(terminated(&terminations, &topic), StopReason::Closed);
}

#[test]
fn the_channel_limit_refuses_further_joins() {
    let config = Config { max_channels_per_connection: 2, ..test_config() };
    let (server, _) = start_with(config);
    let mut c = server.client();
    let first = unique_topic("test");
    c.join_ok(&first);
    c.join_ok(&unique_topic("test"));
    let (_, reply) = c.join(&unique_topic("test"), json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "too many channels joined"}})
    );
    // Rejoining an already joined topic replaces it and is not refused.
    c.join_ok(&first);
}

#[test]
fn shutdown_closes_every_socket_with_1012_without_phx_close() {
    let (server, terminations) = start();
    let topic = unique_topic("test");
    let mut clients: Vec<WsClient> = (0..3).map(|_| server.client()).collect();
    for c in &mut clients {
        c.join_ok(&topic);
    }
    let report = server.shutdown();
    assert!(report.clean, "{report:?}");
    assert_eq!(report.connections, 3);
    for c in &mut clients {
        loop {
            match c.recv(WAIT) {
                crate::support::ws::Event::Closed(code, _) => {
                    assert_eq!(code, Some(1012));
                    break;
                }
                crate::support::ws::Event::Json(m) => assert_ne!(m[3], "phx_close", "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
    for _ in 0..3 {
        assert_eq!(terminated(&terminations, &topic), StopReason::Shutdown);
    }
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_others_get_everything() {
    let config = Config { outbound_queue_bytes: 512 * 1024, ..test_config() };
    let (server, _) = start_with(config);
    let topic = unique_topic("room");
    let mut slow = server.client();
    slow.join_ok(&topic);
    let mut fast = server.client();
    fast.join_ok(&topic);
    let pubsub = server.handle().pubsub();
    let body = "x".repeat(16 * 1024);
    let rounds = 400; // 6.4 MB: far beyond the socket buffers and 512 KiB queued
    let (progress, read) = unbounded::<u64>();
    let fast_reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..rounds {
            got.push(fast.expect(|m| m[3] == "new_msg")[4]["n"].as_u64().unwrap());
            let _ = progress.send(got.len() as u64);
        }
        got
    });
    // Paced by the reader: the reading client is never more than 16 broadcasts (256 KiB) behind,
    // however late this test's threads get the CPU, so only the one that stopped reading may
    // overflow. (Unpaced, a reader descheduled on a busy machine was evicted too.)
    let mut done = 0;
    for n in 0..rounds {
        pubsub.broadcast(&topic, "new_msg", json!({"n": n, "body": body}).into()).unwrap();
        while done + 16 <= n {
            done = read.recv_timeout(WAIT).expect("the reading client stopped getting broadcasts");
        }
    }
    assert!(
        eventually(WAIT, || server.handle().connection_count() == 1),
        "slow client still connected"
    );
    let received = fast_reader.join().unwrap();
    assert_eq!(received, (0..rounds).collect::<Vec<_>>());
    // The slow client finds its connection cut once it reads again.
    let _ = slow.tcp().set_nonblocking(false);
    let closed =
        (0..rounds + 10).any(|_| matches!(slow.recv(WAIT), crate::support::ws::Event::Closed(..)));
    assert!(closed);
}

#[test]
fn external_subscribers_receive_broadcasts() {
    let (server, _) = start();
    let pubsub = server.handle().pubsub();
    let topic = unique_topic("test");
    let sub = pubsub.subscribe(&topic, 8).unwrap();
    let mut c = server.client();
    let jr = c.join_ok(&topic);
    c.call(Some(&jr), &topic, "plain", json!({"k": "v"}));
    let got = sub.rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (got.event.as_str(), got.payload.clone()),
        ("plain", Payload::Json(json!({"k": "v"})))
    );
    let _ = Arc::clone(&got);
}

/// `PubSub::publish` hands one value to every channel subscribed to the topic (its own topic or
/// an extra one), in `handle_info`; the clients hear of it only through what the channel pushes.
#[test]
fn published_values_reach_each_subscribed_channel_once() {
    let (server, _) = start();
    let pubsub = server.handle().pubsub();
    let news = unique_topic("news");
    let (mut a, mut b) = (server.client(), server.client());
    let topic_a = unique_topic("test");
    let topic_b = unique_topic("test");
    let (jr_a, reply) = a.join(&topic_a, json!({ "follow": news }));
    assert_eq!(reply["status"], "ok");
    let (jr_b, reply) = b.join(&topic_b, json!({ "follow": news }));
    assert_eq!(reply["status"], "ok");

    pubsub.publish(&news, Arc::new("first".to_string())).unwrap();
    pubsub.publish(&topic_a, Arc::new("own topic".to_string())).unwrap();
    pubsub.publish(&news, Arc::new("second".to_string())).unwrap();

    let texts = |c: &mut WsClient, topic: &str, jr: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let m = c.expect(|m| m[3] == "shared");
                assert_eq!(
                    (m[0].as_str(), m[1].is_null(), m[2].as_str()),
                    (Some(jr), true, Some(topic))
                );
                m[4]["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(texts(&mut a, &topic_a, &jr_a, 3), ["first", "own topic", "second"]);
    assert_eq!(texts(&mut b, &topic_b, &jr_b, 2), ["first", "second"]);
}

/// Broadcasts to big topics are sent by the writers, to small ones by the registry itself; a
/// client on both still receives every frame in the order the broadcasts were made.
#[test]
fn broadcasts_keep_their_order_across_big_and_small_topics() {
    let mut config = test_config();
    config.spread_fanout = 2;
    let (server, _) = start_with(config);
    let (big, small) = (unique_topic("test"), unique_topic("test"));
    let mut c = server.client();
    let mut other = server.client();
    c.join_ok(&big);
    c.join_ok(&small);
    other.join_ok(&big);
    let pubsub = server.handle().pubsub();
    for n in 0..300 {
        let topic = if n % 3 == 0 { &small } else { &big };
        pubsub.broadcast(topic, "seq", json!({ "n": n }).into()).unwrap();
    }
    let got: Vec<u64> =
        (0..300).map(|_| c.expect(|m| m[3] == "seq")[4]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    let got: Vec<u64> =
        (0..200).map(|_| other.expect(|m| m[3] == "seq")[4]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, (0..300).filter(|n| n % 3 != 0).collect::<Vec<_>>());
}
