//! Issue #11, the lobby and PubSub: nothing a subscriber cannot take is dropped silently, every
//! exit path of a channel leaves no subscriber behind, the registry stops within a deadline,
//! and the lobby survives a channel that falls behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::RwLock;
use serde_json::{Value, json};

use crate::superheroes::apply;
use crate::support::pg::TestDb;
use crate::support::ws::Event;
use crate::support::{EVENT_TIMEOUT, TestServer, WAIT, WsClient, eventually, recv, test_config};
use phx_threads::app::lobby::Lobby;
use phx_threads::app::superheroes_channel::{self, CHANGES_TOPIC};
use phx_threads::pubsub::{PubSub, PubSubProcess};
use phx_threads::store::Store;
use phx_threads::store::listener::{ListenerHandle, spawn_listener};
use phx_threads::store::superheroes::{self, Superhero, SuperheroParams};
use phx_threads::{Channel, ChannelCtx, Config, Flow, Info, Payload, Router, server};

/// Joins with `{"follow": topic}` subscribe to that topic too; every message on it waits at
/// `gate` (so a test can make the channel slow) and is then pushed as `got`.
struct Follower {
    gate: Arc<RwLock<()>>,
}

impl Channel for Follower {
    fn join(
        &mut self,
        _topic: &str,
        payload: Payload,
        ctx: &mut ChannelCtx,
    ) -> Result<Payload, Payload> {
        let follow = payload.as_json().and_then(|p| p["follow"].as_str().map(String::from));
        if let Some(follow) = follow {
            ctx.subscribe(&follow).map_err(|e| Payload::from(json!({"reason": e.to_string()})))?;
        }
        Ok(Payload::empty())
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        drop(self.gate.try_read_for(EVENT_TIMEOUT));
        if let Info::Broadcast(b) = info {
            ctx.push("got", b.payload.clone());
        }
        Flow::Continue
    }
}

fn follower_server(config: Config) -> (TestServer, Arc<RwLock<()>>) {
    let gate = Arc::new(RwLock::new(()));
    let g = gate.clone();
    let router = Router::new().channel("follow:*", move || Follower { gate: g.clone() });
    (TestServer::with(config, router, server::accept_all()), gate)
}

fn join_following(client: &mut WsClient, topic: &str, follow: &str) -> Value {
    client.join(topic, json!({ "follow": follow })).1
}

#[test]
fn a_channel_that_cannot_keep_up_with_an_extra_topic_is_stopped_with_phx_error() {
    let config = Config { channel_mailbox: 4, ..test_config() };
    let (server, gate) = follower_server(config);
    let pubsub = server.handle().pubsub();
    let mut client = server.client();
    assert_eq!(join_following(&mut client, "follow:a", "news:a")["status"], "ok");

    let held = gate.write();
    for i in 0..20 {
        pubsub.broadcast("news:a", "item", json!({ "i": i }).into()).unwrap();
    }
    // The registry has dispatched all 20 once it answers a later message.
    assert_eq!(pubsub.subscriber_count("news:a").unwrap(), 1);
    drop(held);

    // Before: the 5 that fitted arrived and the other 15 vanished without a word.
    client.expect(|m| m[2] == "follow:a" && m[3] == "phx_error");
}

#[test]
fn a_full_subscription_mailbox_tells_its_owner_how_much_it_missed() {
    let server = TestServer::start();
    let pubsub = server.handle().pubsub();
    let sub = pubsub.subscribe("events:x", 2).unwrap();
    for i in 0..5 {
        pubsub.broadcast("events:x", "e", json!({ "i": i }).into()).unwrap();
    }
    assert_eq!(pubsub.subscriber_count("events:x").unwrap(), 1);
    assert_eq!(sub.rx.try_iter().count(), 2);
    assert_eq!(sub.take_dropped(), 3);
    assert_eq!(sub.take_dropped(), 0);
}

/// A published value whose drop blocks the registry thread until released (or 30 s pass):
/// the registry holds the last reference when no channel subscribed to the topic.
struct Blocker {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = self.entered.send(());
        let _ = self.release.recv_timeout(Duration::from_secs(30));
    }
}

/// Blocks the registry; returns the release handle once it is blocked.
fn block_registry(pubsub: &PubSub) -> Sender<()> {
    let (entered_tx, entered) = bounded(1);
    let (release, release_rx) = bounded(1);
    let blocker = Blocker { entered: entered_tx, release: release_rx };
    pubsub.publish("nobody:blocker", Arc::new(blocker)).unwrap();
    recv(&entered, "the registry to block");
    release
}

#[test]
fn a_join_refused_after_subscribing_leaves_no_subscriber_behind() {
    let config =
        Config { registry_mailbox: 4, join_timeout: Duration::from_secs(30), ..test_config() };
    let (server, _gate) = follower_server(config);
    let pubsub = server.handle().pubsub();
    let mut client = server.client();
    let release = block_registry(&pubsub);
    // Three of the four slots: the join's own subscribe takes the fourth, and the channel's
    // subscription to its own topic then finds the registry congested.
    for _ in 0..3 {
        pubsub.broadcast("nobody:filler", "x", Payload::empty()).unwrap();
    }
    // The join's answer takes PubSub's send timeout (5 s), longer than `expect` waits.
    let join_ref = client.next_ref();
    client.send(json!([join_ref, join_ref, "follow:b", "phx_join", {"follow": "news:b"}]));
    let reply = reply_within(&mut client, &join_ref, Duration::from_secs(15));
    assert_eq!(reply["status"], "error", "{reply}");
    release.send(()).unwrap();

    pubsub.broadcast("news:b", "item", Payload::empty()).unwrap();
    // Before: the refused channel stayed subscribed to news:b for ever.
    assert!(
        eventually(WAIT, || pubsub.subscriber_count("news:b").unwrap() == 0),
        "a refused join left a subscriber on news:b"
    );
}

fn reply_within(client: &mut WsClient, r: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        match client.recv_until(deadline) {
            Event::Json(m) if m[3] == "phx_reply" && m[1] == r => return m[4].clone(),
            Event::Json(_) | Event::Binary(_) => {}
            other => panic!("no reply to {r}: {other:?}"),
        }
    }
}

#[test]
fn stopping_a_congested_registry_returns_within_its_deadline() {
    let process = PubSubProcess::start(4, 512).unwrap();
    let release = block_registry(&process.pubsub);
    let started = Instant::now();
    assert!(!process.stop_within(Duration::from_millis(300)));
    assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
    release.send(()).unwrap();
}

// ---- the superheroes lobby ----

fn rows(store: &Store) -> BTreeMap<i64, Value> {
    let list = superheroes::list(&mut *store.client().unwrap()).unwrap();
    list.into_iter().map(|h| (h.id, serde_json::to_value(&h).unwrap())).collect()
}

fn params(name: &str) -> SuperheroParams {
    SuperheroParams { name: Some(name.into()), location: Some("L".into()), power: Some("P".into()) }
}

fn create(store: &Store, name: &str) -> Superhero {
    superheroes::create(&mut *store.client().unwrap(), &params(name)).unwrap()
}

/// Applies pushes until the client's table equals `expected`; panics at the deadline.
fn converge(
    client: &mut WsClient,
    state: &mut BTreeMap<i64, Value>,
    expected: &BTreeMap<i64, Value>,
) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while *state != *expected {
        match client.recv_until(deadline) {
            Event::Json(msg) => apply(state, &msg),
            Event::Binary(_) => {}
            other => panic!(
                "client has {} rows, the database {}; then {other:?}",
                state.len(),
                expected.len()
            ),
        }
    }
}

/// A lobby server whose listener reports how many store events it has handled.
struct LobbyRig {
    _db: TestDb,
    store: Store,
    lobby: Lobby,
    server: TestServer,
    handled: Receiver<()>,
    _listener: ListenerHandle,
}

fn lobby_rig(config: Config) -> LobbyRig {
    let db = TestDb::new();
    let store = db.store();
    let lobby = Lobby::new(store.clone());
    let app = phx_threads::app::router(Some(lobby.clone()));
    let server = TestServer::with(config, app, server::accept_all());
    let (pubsub, l) = (server.handle().pubsub(), lobby.clone());
    let (tx, handled) = bounded(100_000);
    let _listener = spawn_listener(&store.config().url, move |e| {
        superheroes_channel::publish_store_event(&l, &pubsub, e);
        let _ = tx.try_send(());
    })
    .unwrap();
    LobbyRig { _db: db, store, lobby, server, handled, _listener }
}

/// Joins the lobby and waits until the client has seen a write committed after the join,
/// which proves the listener is listening.
fn joined_client(rig: &LobbyRig) -> (WsClient, BTreeMap<i64, Value>) {
    let mut client = rig.server.client();
    client.join_ok("superheroes:lobby");
    let mut state = BTreeMap::new();
    apply(&mut state, &client.expect(|m| m[3] == "hydrate"));
    let ready = create(&rig.store, "Ready");
    let expected = rows(&rig.store);
    converge(&mut client, &mut state, &expected);
    assert!(state.contains_key(&ready.id));
    while rig.handled.try_recv().is_ok() {}
    (client, state)
}

#[test]
fn a_lobby_channel_that_falls_behind_ends_with_exactly_the_database_rows() {
    let rig = lobby_rig(Config { channel_mailbox: 8, ..test_config() });
    let (mut client, mut state) = joined_client(&rig);
    let held = rig.lobby.hold_channels();
    let mut made = Vec::new();
    for i in 0..30 {
        made.push(create(&rig.store, &format!("Flood {i}")));
    }
    let update = SuperheroParams { power: Some("Updated".into()), ..Default::default() };
    superheroes::update(&mut *rig.store.client().unwrap(), made[3].id, &update).unwrap();
    superheroes::delete(&mut *rig.store.client().unwrap(), made[5].id).unwrap();
    for _ in 0..32 {
        recv(&rig.handled, "the listener to publish every change");
    }
    // Every change has been dispatched once the registry answers a later message.
    rig.server.handle().pubsub().subscriber_count(CHANGES_TOPIC).unwrap();
    drop(held);

    let expected = rows(&rig.store);
    converge(&mut client, &mut state, &expected);
    // And it stays connected: later changes still arrive.
    let last = create(&rig.store, "After");
    let expected = rows(&rig.store);
    converge(&mut client, &mut state, &expected);
    assert!(state.contains_key(&last.id));
}

/// `n` rows of the longest the API allows, in 4-byte characters: about 1.6 KB of JSON each.
fn insert_longest_rows(store: &Store, n: i64) {
    let sql = "INSERT INTO superheroes (name, location, power)
               SELECT repeat('🦸', 94) || ' ' || lpad(i::text, 5, '0'), repeat('🌆', 100),
                      repeat('⚡', 200)
               FROM generate_series(1, $1::bigint) AS i";
    store.client().unwrap().execute(sql, &[&n]).unwrap();
}

#[test]
fn a_hydrate_of_several_megabytes_reaches_the_client_and_it_stays_connected() {
    let rig = lobby_rig(test_config());
    insert_longest_rows(&rig.store, 2_000);
    let mut client = rig.server.client();
    client.join_ok("superheroes:lobby");
    // Before: over 1 MiB, the hydrate made the client a slow consumer: cut after the reply.
    let hydrate = client.expect(|m| m[3] == "hydrate");
    let bytes = hydrate.to_string().len();
    assert!(bytes > 2 << 20, "hydrate of {bytes} bytes");
    let mut state = BTreeMap::new();
    apply(&mut state, &hydrate);
    assert_eq!(state, rows(&rig.store));
    let after = create(&rig.store, "After");
    converge(&mut client, &mut state, &rows(&rig.store));
    assert!(state.contains_key(&after.id));
}

#[test]
fn after_the_listener_reconnects_the_table_is_reloaded_once_for_every_client() {
    let rig = lobby_rig(test_config());
    let mut clients = vec![joined_client(&rig)];
    for _ in 0..19 {
        let mut client = rig.server.client();
        client.join_ok("superheroes:lobby");
        let mut state = BTreeMap::new();
        apply(&mut state, &client.expect(|m| m[3] == "hydrate"));
        clients.push((client, state));
    }
    // A write nobody is notified of, as if made while the listener was away.
    crate::superheroes::insert_rows(&rig.store, 1, "Unannounced", "P");
    let kill = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'phx-threads-listener'";
    assert_eq!(rig.store.client().unwrap().query(kill, &[]).unwrap().len(), 1);

    let expected = rows(&rig.store);
    let mut message_ids = std::collections::BTreeSet::new();
    for (client, state) in &mut clients {
        let hydrate = client.expect(|m| m[3] == "hydrate");
        message_ids.insert(hydrate[4]["message_id"].as_str().unwrap().to_string());
        apply(state, &hydrate);
        assert_eq!(*state, expected);
    }
    // Before: each of the 20 channels queried the whole table itself, at the same moment.
    assert_eq!(message_ids.len(), 1, "one load and one encoding, shared");
}

#[test]
fn a_client_that_leaves_a_big_hydrate_unread_is_still_cut_when_another_one_queues() {
    let rig = lobby_rig(test_config());
    insert_longest_rows(&rig.store, 10_000); // a 15 MB hydrate: more than the socket buffers
    let mut client = rig.server.client();
    client.join_ok("superheroes:lobby");
    // The client reads nothing more. A resync queues a second hydrate behind the first.
    let kill = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'phx-threads-listener'";
    assert!(eventually(WAIT, || rig.store.client().unwrap().query(kill, &[]).unwrap().len() == 1));
    assert!(
        eventually(EVENT_TIMEOUT, || rig.server.handle().connection_count() == 0),
        "a client 30 MB behind was not cut"
    );
}
