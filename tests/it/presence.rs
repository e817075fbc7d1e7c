//! Presence over real sockets: `presence_state` after join, `presence_diff` on every way a member
//! goes away, one user on two sockets, topic isolation, `update`, limits, and convergence when
//! members join while a diff window is open. Members apply the frames as phoenix.js's
//! `Presence` does (`View`), so the assertions are about the list a user would see.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, WsClient, eventually, test_config, unique_topic};
use phx_threads::presence::{Presence, PresenceConfig};
use phx_threads::{Channel, ChannelCtx, Config, HandleIn, Payload, Router, app};

/// Presence as phoenix.js keeps it: a state per join_ref, diffs queued until that state arrives.
#[derive(Default)]
struct View {
    synced: bool,
    keys: BTreeMap<String, Vec<Value>>,
    pending: Vec<Value>,
}

impl View {
    fn apply(&mut self, msg: &Value, join_ref: &str) {
        match msg[3].as_str() {
            Some("presence_state") if msg[0] == join_ref => {
                self.keys = entries(&msg[4]);
                self.synced = true;
                for diff in std::mem::take(&mut self.pending) {
                    self.diff(&diff);
                }
            }
            Some("presence_diff") if !self.synced => self.pending.push(msg[4].clone()),
            Some("presence_diff") => self.diff(&msg[4]),
            _ => {}
        }
    }

    /// `syncDiff`: a join replaces the key's metas, keeping known ones it does not carry; a
    /// leave drops the metas with the listed refs; a key without metas is gone.
    fn diff(&mut self, diff: &Value) {
        for (key, mut joined) in entries(&diff["joins"]) {
            let metas = self.keys.entry(key).or_default();
            let new_refs: Vec<&Value> = joined.iter().map(|m| &m["phx_ref"]).collect();
            let kept: Vec<Value> =
                metas.iter().filter(|m| !new_refs.contains(&&m["phx_ref"])).cloned().collect();
            joined.splice(0..0, kept);
            *metas = joined;
        }
        for (key, left) in entries(&diff["leaves"]) {
            let refs: Vec<&Value> = left.iter().map(|m| &m["phx_ref"]).collect();
            if let Some(metas) = self.keys.get_mut(&key) {
                metas.retain(|m| !refs.contains(&&m["phx_ref"]));
                if metas.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    fn key_names(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }
}

fn entries(v: &Value) -> BTreeMap<String, Vec<Value>> {
    let obj = v.as_object().expect("presence payload is an object");
    obj.iter().map(|(k, e)| (k.clone(), e["metas"].as_array().expect("metas").clone())).collect()
}

/// A client joined to one topic, with its presence view.
pub(crate) struct Member {
    c: WsClient,
    topic: String,
    join_ref: String,
    view: View,
}

impl Member {
    fn join(server: &TestServer, user: &str, topic: &str) -> Member {
        Member::join_with(server, user, topic, json!({}))
    }

    fn join_with(server: &TestServer, user: &str, topic: &str, payload: Value) -> Member {
        Member::join_at(server.addr(), user, topic, payload)
    }

    /// Joins on the server at `addr` (the cluster tests' nodes).
    pub(crate) fn join_at(addr: SocketAddr, user: &str, topic: &str, payload: Value) -> Member {
        let mut c = connect(addr, user);
        let (join_ref, reply) = c.join(topic, payload);
        assert_eq!(reply["status"], "ok", "{reply}");
        Member { c, topic: topic.to_string(), join_ref, view: View::default() }
    }

    /// Applies presence frames until the view satisfies `done`; returns the frames applied.
    fn until(&mut self, done: impl Fn(&View) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        while !(self.view.synced && done(&self.view)) {
            let topic = self.topic.clone();
            let msg = self.c.expect(|m| m[2] == topic.as_str() && is_presence(m));
            self.view.apply(&msg, &self.join_ref);
            seen.push(msg);
        }
        seen
    }

    pub(crate) fn until_keys(&mut self, keys: &[&str]) -> Vec<Value> {
        self.until(|v| v.key_names() == keys)
    }

    /// The first `presence_diff` of the topic that arrives before `deadline`, if any.
    pub(crate) fn diff_before(&mut self, deadline: std::time::Instant) -> Option<Value> {
        use crate::support::ws::Event;
        loop {
            match self.c.recv_until(deadline) {
                Event::Json(m) if m[2] == self.topic.as_str() && m[3] == "presence_diff" => {
                    return Some(m);
                }
                Event::Json(_) | Event::Binary(_) => {}
                Event::Timeout => return None,
                other => panic!("the connection ended: {other:?}"),
            }
        }
    }
}

fn is_presence(m: &Value) -> bool {
    m[3] == "presence_state" || m[3] == "presence_diff"
}

fn connect(addr: SocketAddr, user: &str) -> WsClient {
    let query = format!("vsn=2.0.0&user_id={user}");
    let mut c = WsClient::connect(addr, &query).expect("websocket connects");
    c.presence = true;
    c
}

fn config(window_ms: u64) -> Config {
    let presence =
        PresenceConfig { window: Duration::from_millis(window_ms), ..PresenceConfig::default() };
    Config { presence, ..test_config() }
}

/// The app's router plus `ptest:*`, a channel that exposes the whole presence API.
fn start(window_ms: u64) -> TestServer {
    start_with(config(window_ms))
}

fn start_with(config: Config) -> TestServer {
    TestServer::with(config, router(), app::connect(None))
}

fn router() -> Router {
    let router = app::router(None);
    let presence = router.presence_handle().expect("the app mounts presence").clone();
    router.channel("ptest:*", move || ApiChannel { presence: presence.clone(), key: String::new() })
}

struct ApiChannel {
    presence: Presence,
    key: String,
}

impl Channel for ApiChannel {
    fn join(
        &mut self,
        _topic: &str,
        payload: Payload,
        ctx: &mut ChannelCtx,
    ) -> Result<Payload, Payload> {
        let payload = payload.as_json().cloned().unwrap_or_default();
        self.key = payload["key"].as_str().unwrap_or("k").to_string();
        let meta = payload.get("meta").cloned().unwrap_or(json!({}));
        let refused = |e: phx_threads::presence::PresenceError| {
            Payload::from(json!({"reason": e.to_string()}))
        };
        let phx_ref = self.presence.track(ctx, &self.key, meta).map_err(refused)?;
        self.presence.push_state(ctx).map_err(refused)?;
        Ok(json!({ "phx_ref": phx_ref }).into())
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
        let meta = payload.as_json().cloned().unwrap_or_default();
        let answer = match event {
            "crash" => panic!("crash requested"),
            "update" => self.presence.update(ctx, &self.key, meta).map(|r| json!({ "phx_ref": r })),
            "untrack" => self.presence.untrack(ctx, &self.key).map(|()| json!({})),
            "list" => self.presence.list(ctx.topic()).map(Value::Object),
            "get" => {
                self.presence.get_by_key(ctx.topic(), &self.key).map(|v| json!({ "entry": v }))
            }
            _ => return HandleIn::error(json!({"reason": "unknown"})),
        };
        match answer {
            Ok(v) => HandleIn::ok(v),
            Err(e) => HandleIn::error(json!({"reason": e.to_string()})),
        }
    }
}

#[test]
fn state_after_join_carries_the_join_ref_and_a_diff_announces_the_next_member() {
    let server = start(20);
    let topic = unique_topic("room");
    let mut alice = Member::join(&server, "alice", &topic);
    alice.until_keys(&["alice"]);
    let mut bob = Member::join(&server, "bob", &topic);
    let first = bob.c.expect(|m| is_presence(m) && m[3] == "presence_state");
    assert_eq!(first[0], bob.join_ref.as_str(), "the state carries the join's join_ref");
    assert!(first[4].get("alice").is_some(), "bob's state lists alice: {first}");
    bob.view.apply(&first, &bob.join_ref.clone());
    bob.until_keys(&["alice", "bob"]);
    let frames = alice.until_keys(&["alice", "bob"]);
    let diff = frames.last().unwrap();
    assert_eq!((diff[0].clone(), diff[3].clone()), (Value::Null, json!("presence_diff")));
    let meta = &diff[4]["joins"]["bob"]["metas"][0];
    assert!(meta["online_at"].as_u64().unwrap() > 1_700_000_000, "{meta}");
    assert_eq!(meta["phx_ref"].as_str().unwrap().len(), 16);
}

#[test]
fn leaving_closing_the_socket_and_rejoining_each_send_a_leave() {
    let server = start(20);
    let topic = unique_topic("room");
    let mut watcher = Member::join(&server, "watcher", &topic);
    let mut left = Member::join(&server, "left", &topic);
    let closed = Member::join(&server, "closed", &topic);
    watcher.until_keys(&["closed", "left", "watcher"]);
    left.c.call(Some(&left.join_ref.clone()), &topic, "phx_leave", json!({}));
    watcher.until_keys(&["closed", "watcher"]);
    closed.c.close();
    watcher.until_keys(&["watcher"]);
    // A duplicate join replaces the channel: its old presence leaves, the new one stays.
    let (rejoin, reply) = left.c.join(&topic, json!({}));
    assert_eq!(reply["status"], "ok");
    let (rejoin2, _) = left.c.join(&topic, json!({}));
    assert_ne!(rejoin, rejoin2);
    watcher.until(|v| v.key_names() == ["left", "watcher"] && v.keys["left"].len() == 1);
}

#[test]
fn a_crashed_channel_and_an_evicted_connection_leave() {
    let config = Config { outbound_queue_bytes: 256 * 1024, ..config(20) };
    let server = start_with(config);
    let topic = unique_topic("ptest");
    let mut watcher = Member::join_with(&server, "w", &topic, json!({"key": "watcher"}));
    let mut crashy = Member::join_with(&server, "c", &topic, json!({"key": "crashy"}));
    let slow = Member::join_with(&server, "s", &topic, json!({"key": "slow"}));
    watcher.until_keys(&["crashy", "slow", "watcher"]);
    crashy.c.push(Some(&crashy.join_ref.clone()), &topic, "crash", json!({}));
    crashy.c.expect(|m| m[3] == "phx_error");
    watcher.until_keys(&["slow", "watcher"]);
    // `slow` stops reading: broadcasts pile up until the registry evicts it.
    let pubsub = server.handle().pubsub();
    let body = "x".repeat(16 * 1024);
    let reader = std::thread::spawn(move || {
        watcher.until_keys(&["watcher"]);
    });
    // 6.4 MB: far beyond the socket buffers and the 256 KiB queue.
    for _ in 0..400 {
        pubsub.broadcast(&topic, "noise", json!({ "body": body }).into()).unwrap();
    }
    assert!(eventually(WAIT, || server.handle().connection_count() == 2), "slow not evicted");
    reader.join().expect("the watcher saw the evicted member leave");
    drop(slow);
}

#[test]
fn one_user_on_two_sockets_is_one_key_with_two_metas_and_topics_are_isolated() {
    let server = start(20);
    let (topic, other) = (unique_topic("room"), unique_topic("room"));
    let mut tab1 = Member::join(&server, "ann", &topic);
    let mut tab2 = Member::join(&server, "ann", &topic);
    let mut elsewhere = Member::join(&server, "zed", &other);
    tab1.until(|v| v.key_names() == ["ann"] && v.keys["ann"].len() == 2);
    tab2.until(|v| v.keys.get("ann").is_some_and(|m| m.len() == 2));
    let refs: Vec<&Value> = tab2.view.keys["ann"].iter().map(|m| &m["phx_ref"]).collect();
    assert_ne!(refs[0], refs[1], "each socket has its own phx_ref");
    elsewhere.until_keys(&["zed"]);
    tab2.c.close();
    tab1.until(|v| v.keys["ann"].len() == 1);
    // Nothing of `topic` ever reached the member of `other`.
    let topic_frames = elsewhere.c.recv(Duration::from_millis(100));
    assert!(matches!(topic_frames, crate::support::ws::Event::Timeout), "{topic_frames:?}");
}

#[test]
fn update_sends_one_diff_with_the_new_meta_and_the_old_one_leaving() {
    let server = start(20);
    let topic = unique_topic("ptest");
    let mut m = Member::join_with(&server, "u", &topic, json!({"key": "u", "meta": {"s": "away"}}));
    m.until_keys(&["u"]);
    let old = m.view.keys["u"][0]["phx_ref"].clone();
    let reply = m.c.call(Some(&m.join_ref.clone()), &topic, "update", json!({"s": "here"}));
    let new_ref = reply["response"]["phx_ref"].clone();
    let frames = m.until(|v| v.keys["u"][0]["s"] == "here");
    let diff = &frames.last().unwrap()[4];
    assert_eq!(
        diff["joins"]["u"]["metas"],
        json!([{"s": "here", "phx_ref": new_ref, "phx_ref_prev": old}])
    );
    assert_eq!(diff["leaves"]["u"]["metas"], json!([{"s": "away", "phx_ref": old}]));
    let got = m.c.call(Some(&m.join_ref.clone()), &topic, "get", json!({}));
    assert_eq!(got["response"]["entry"]["metas"][0]["phx_ref"], new_ref);
    let listed = m.c.call(Some(&m.join_ref.clone()), &topic, "list", json!({}));
    assert_eq!(listed["response"]["u"]["metas"][0]["s"], "here");
    m.c.call(Some(&m.join_ref.clone()), &topic, "untrack", json!({}));
    m.until(|v| v.keys.is_empty());
    let again = m.c.call(Some(&m.join_ref.clone()), &topic, "update", json!({}));
    assert_eq!(again["response"]["reason"], "no presence to update");
}

#[test]
fn limits_refuse_the_join_with_a_clear_reason() {
    let mut config = config(20);
    config.presence.max_meta_bytes = 64;
    config.presence.max_metas_per_key = 2;
    config.presence.max_per_topic = 4;
    let server = start_with(config);
    let topic = unique_topic("ptest");
    let mut c = connect(server.addr(), "x");
    let reason =
        |c: &mut WsClient, payload: Value| c.join(&topic, payload).1["response"]["reason"].clone();
    let big = json!({"key": "k", "meta": {"bio": "b".repeat(100)}});
    assert_eq!(reason(&mut c, big), "presence meta is over 64 bytes");
    assert_eq!(
        reason(&mut c, json!({"key": "k", "meta": "nope"})),
        "presence meta must be a JSON object"
    );
    let mut members: Vec<WsClient> = Vec::new();
    for key in ["a", "a", "b", "c"] {
        let mut m = connect(server.addr(), key);
        assert_eq!(m.join(&topic, json!({"key": key})).1["status"], "ok");
        members.push(m);
    }
    assert_eq!(reason(&mut c, json!({"key": "a"})), "presence key has 2 metas already");
    assert_eq!(reason(&mut c, json!({"key": "d"})), "topic has 4 presences already");
}

#[test]
fn a_tracker_that_cannot_take_more_calls_refuses_the_join_clearly() {
    let mut config = config(20);
    config.presence.mailbox = 0;
    let server = start_with(config);
    let mut c = connect(server.addr(), "late");
    let (_, reply) = c.join(&unique_topic("room"), json!({}));
    assert_eq!(reply["response"], json!({"reason": "presence tracker is overloaded"}));
}

/// Members join while a window is open (a long window makes sure of it) and leave during the
/// next: every member's list, built from its state plus the diffs after it, ends up exact.
#[test]
fn members_joining_while_a_diff_window_is_open_converge_to_the_same_list() {
    let server = start(150);
    let topic = unique_topic("room");
    let names: Vec<String> = (0..12).map(|i| format!("user{i:02}")).collect();
    let mut members: Vec<Member> = Vec::new();
    for name in &names {
        members.push(Member::join(&server, name, &topic));
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    for m in &mut members {
        m.until_keys(&all);
    }
    let leavers: Vec<Member> = members.drain(..4).collect();
    let late = Member::join(&server, "zlate", &topic);
    drop(leavers);
    members.push(late);
    let mut remaining: Vec<&str> = all[4..].to_vec();
    remaining.push("zlate");
    for m in &mut members {
        m.until_keys(&remaining);
        assert!(m.view.keys.values().all(|metas| metas.len() == 1), "{:?}", m.view.keys);
    }
}

#[test]
fn join_storm_costs_each_member_a_frame_per_window_not_per_join() {
    let server = start(400);
    let topic = unique_topic("room");
    let names: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
    let mut members: Vec<Member> = names.iter().map(|n| Member::join(&server, n, &topic)).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = members[0].until_keys(&all);
    assert!(
        first.len() < names.len() / 2,
        "{} presence frames for {} joins",
        first.len(),
        names.len()
    );
    for m in &mut members[1..] {
        m.until_keys(&all);
    }
}

/// A storm that lasts (members joining one by one for 1.5 s, as after a node restart) is not
/// one diff per 50 ms window for its whole length: windows double while changes keep coming.
/// Before, the `reconnect` bench's rooms sent their members a frame every 50 ms for the whole
/// storm, and the servers' and clients' CPU went to presence frames.
#[test]
fn a_lasting_join_storm_sends_each_member_fewer_diffs_as_it_goes_on() {
    let server = start(50);
    let topic = unique_topic("room");
    let mut watcher = Member::join(&server, "a-watcher", &topic);
    watcher.until_keys(&["a-watcher"]);
    let names: Vec<String> = (0..60).map(|i| format!("s{i:02}")).collect();
    let mut joined = Vec::new();
    for name in &names {
        joined.push(Member::join(&server, name, &topic));
        // The storm's shape, not a synchronisation: one join every 25 ms, half a base window.
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.insert(0, "a-watcher");
    let frames = watcher.until_keys(&all);
    // 1.5 s of 50 ms windows would be about 30 diffs; doubling windows make about 6.
    assert!(frames.len() < 15, "{} diffs for a 1.5 s storm of {} joins", frames.len(), names.len());
}

#[test]
fn shutdown_with_tracked_members_is_clean() {
    let server = start(20);
    let topic = unique_topic("room");
    let mut a = Member::join(&server, "a", &topic);
    a.until_keys(&["a"]);
    let report = server.shutdown();
    assert!(report.clean, "{report:?}");
}

#[test]
fn a_room_member_joining_with_presence_false_listens_without_being_listed() {
    let server = start(20);
    let topic = unique_topic("room");
    let mut alice = Member::join(&server, "alice", &topic);
    alice.until_keys(&["alice"]);
    let mut carol = Member::join_with(&server, "carol", &topic, json!({"presence": false}));
    let mut bob = Member::join(&server, "bob", &topic);
    bob.until_keys(&["alice", "bob"]);
    // Every key alice's view ever held: carol never appears.
    let frames = alice.until_keys(&["alice", "bob"]);
    assert!(frames.iter().all(|f| !f.to_string().contains("carol")), "{frames:?}");
    // Carol gets no member list of her own, only the room's diffs.
    let first = carol.c.expect(is_presence);
    assert_eq!(first[3], "presence_diff", "{first}");
    assert!(first[4]["joins"].get("bob").is_some(), "{first}");
}
