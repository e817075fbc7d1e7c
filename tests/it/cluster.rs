//! Issue #13: three `phx-threads` binaries (child processes, own ports) on one throwaway
//! PostgreSQL with `--cluster`: broadcasts reach every node exactly once and in order, big
//! ones through `cluster_messages`, membership follows starts, `bye` and SIGKILL, and the
//! superheroes lobby hears a REST write once on every node without the cluster relaying it.
//! `broadcast_from` and socket-id `disconnect` need a test channel and connect callback, so
//! those run on two in-process servers, each joined to the cluster by the same
//! `Cluster::start` the binary calls.

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use serde_json::{Value, json};

use crate::presence::Member;
use crate::supervision::Binary;
use crate::support::pg::TestDb;
use crate::support::ws::{Event, WsClient};
use crate::support::{EVENT_TIMEOUT, TestServer, eventually, test_config, unique_topic};
use phx_threads::cluster::{Cluster, ClusterConfig};
use std::sync::Arc;

pub(crate) const HEARTBEAT_MS: u64 = 500;
pub(crate) const NODE_TIMEOUT_MS: u64 = 750;

pub(crate) fn start_node(url: &str, name: &str) -> Binary {
    start_node_with(url, name, &[])
}

/// A node with extra command-line arguments.
pub(crate) fn start_node_with(url: &str, name: &str, extra: &[&str]) -> Binary {
    start_node_logging(url, name, extra, false)
}

/// A node whose log `Binary::stop` returns when `capture` is set.
fn start_node_logging(url: &str, name: &str, extra: &[&str], capture: bool) -> Binary {
    let (heartbeat, timeout) = (HEARTBEAT_MS.to_string(), NODE_TIMEOUT_MS.to_string());
    let args = [
        "--database-url",
        url,
        "--cluster",
        "--node-name",
        name,
        "--cluster-heartbeat-ms",
        &heartbeat,
        "--cluster-node-timeout-ms",
        &timeout,
    ];
    Binary::start_with(&[&args[..], extra].concat(), capture)
}

fn cluster_view(node: &Binary) -> Value {
    let res = node.request("GET", "/cluster", "");
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

pub(crate) fn peers(node: &Binary) -> Vec<String> {
    let view = cluster_view(node);
    let names = view["nodes"].as_array().expect("a node list").iter();
    names.map(|n| n["name"].as_str().unwrap().to_string()).collect()
}

/// Three nodes that all see the other two.
pub(crate) fn three_nodes(db: &TestDb) -> Vec<Binary> {
    three_nodes_on(&db.url)
}

fn three_nodes_on(url: &str) -> Vec<Binary> {
    let nodes: Vec<Binary> = ["n1", "n2", "n3"].iter().map(|n| start_node(url, n)).collect();
    all_see_each_other(&nodes);
    nodes
}

pub(crate) fn all_see_each_other(nodes: &[Binary]) {
    for node in nodes {
        let others = nodes.len() - 1;
        assert!(eventually(EVENT_TIMEOUT, || peers(node).len() == others), "{:?}", peers(node));
    }
}

/// A client joined to `topic` on `node`, and its join ref.
fn client(node: &Binary, topic: &str) -> (WsClient, String) {
    let mut c = WsClient::connect(node.ws, "vsn=2.0.0").expect("connect");
    let join_ref = c.join_ok(topic);
    (c, join_ref)
}

/// The bodies of the next `n` `event` broadcasts on `c`, in arrival order.
fn bodies(c: &mut WsClient, event: &str, n: usize) -> Vec<Value> {
    (0..n).map(|_| c.expect(|m| m[3] == event)[4].clone()).collect()
}

/// No further `event` within a few heartbeats: nothing arrived twice.
fn no_more(c: &mut WsClient, event: &str) {
    let deadline = Instant::now() + Duration::from_millis(4 * HEARTBEAT_MS);
    while let Event::Json(m) = c.recv_until(deadline) {
        assert_ne!(m[3], event, "arrived twice: {m}");
    }
}

#[test]
fn broadcasts_from_every_node_reach_every_node_once_and_in_order() {
    let db = TestDb::new();
    let nodes = three_nodes(&db);
    let topic = unique_topic("room:cluster");
    let mut clients: Vec<(WsClient, String)> = nodes.iter().map(|n| client(n, &topic)).collect();
    const PER_NODE: usize = 30;
    let big = "x".repeat(10_000);
    for k in 0..PER_NODE {
        for (i, (c, join_ref)) in clients.iter_mut().enumerate() {
            // One of them is over NOTIFY's 8,000 bytes: it travels through a row.
            let body = match k == PER_NODE / 2 {
                true => format!("n{i}-{k}-{big}"),
                false => format!("n{i}-{k}"),
            };
            let reply = c.call(Some(join_ref), &topic, "new_msg", json!({ "body": body }));
            assert_eq!(reply["status"], "ok", "{reply}");
        }
    }
    for (c, _) in &mut clients {
        let got: Vec<String> = bodies(c, "new_msg", 3 * PER_NODE)
            .iter()
            .map(|p| p["body"].as_str().unwrap().to_string())
            .collect();
        for i in 0..3 {
            let from_i: Vec<String> = got
                .iter()
                .filter(|b| b.starts_with(&format!("n{i}-")))
                .map(|b| b.split('-').take(2).collect::<Vec<_>>().join("-"))
                .collect();
            let expected: Vec<String> = (0..PER_NODE).map(|k| format!("n{i}-{k}")).collect();
            assert_eq!(from_i, expected, "node {i}'s broadcasts, once each and in order");
        }
        no_more(c, "new_msg");
    }
    let rows: u64 = nodes.iter().map(|n| cluster_view(n)["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 3, "each node sent its big broadcast through cluster_messages");
}

#[test]
fn membership_follows_an_orderly_stop_and_a_sigkill() {
    let db = TestDb::new();
    let mut nodes = three_nodes(&db);
    let first = cluster_view(&nodes[0]);
    assert_eq!(first["enabled"], true);
    assert_eq!(first["node"], "n1");

    // SIGTERM: the node says bye, so the others drop it well before the node timeout.
    let stopped = nodes.pop().unwrap();
    let t = Instant::now();
    stopped.stop();
    let gone = |n: &Binary, name: &str| !peers(n).iter().any(|p| p == name);
    assert!(eventually(EVENT_TIMEOUT, || nodes.iter().all(|n| gone(n, "n3"))));
    eprintln!("n3 gone {:?} after SIGTERM", t.elapsed());

    // SIGKILL: no bye; the node is down once it has been silent for the node timeout.
    nodes[1].kill();
    let t = Instant::now();
    assert!(eventually(EVENT_TIMEOUT, || gone(&nodes[0], "n2")));
    let took = t.elapsed();
    eprintln!("n2 down {took:?} after SIGKILL");
    assert!(took < Duration::from_millis(NODE_TIMEOUT_MS + 2 * HEARTBEAT_MS + 500), "{took:?}");

    // A restarted node is a new incarnation, and is seen again.
    let incarnation = |n: &Binary| cluster_view(n)["incarnation"].as_u64().unwrap();
    let back = start_node(&db.url, "n2");
    assert!(eventually(EVENT_TIMEOUT, || peers(&nodes[0]) == ["n2"]));
    assert!(incarnation(&back) > first["incarnation"].as_u64().unwrap());
}

#[test]
fn a_rest_write_reaches_the_lobby_of_every_node_once_without_the_relay() {
    let db = TestDb::new();
    let nodes = three_nodes(&db);
    let mut lobbies: Vec<WsClient> =
        nodes.iter().map(|n| client(n, "superheroes:lobby").0).collect();
    for c in &mut lobbies {
        c.expect(|m| m[3] == "hydrate");
    }
    // Everything the nodes say to each other, as PostgreSQL delivers it.
    let mut wire = db.client();
    wire.batch_execute("LISTEN phx_cluster").unwrap();
    let body = r#"{"superhero":{"name":"Storm","location":"Kenya","power":"Weather"}}"#;
    let created = nodes[1].request("POST", "/api/superheroes", body);
    assert_eq!(created.status, 201, "{}", created.text());
    for c in &mut lobbies {
        let m = c.expect(|m| m[3] == "create");
        assert_eq!(m[4]["superhero"]["name"], "Storm", "{m}");
        no_more(c, "create");
    }
    let mut heard = 0;
    {
        let mut notifications = wire.notifications();
        // Bounded: the nodes never fall silent (heartbeats), so read for a fixed span.
        let deadline = Instant::now() + Duration::from_millis(2 * HEARTBEAT_MS);
        let mut it = notifications.timeout_iter(Duration::from_millis(HEARTBEAT_MS / 4));
        while Instant::now() < deadline {
            let Some(n) = it.next().unwrap() else { continue };
            heard += 1;
            assert!(
                !n.payload().contains("Storm"),
                "relay carried a lobby change: {}",
                n.payload()
            );
        }
    }
    assert!(heard > 0, "the nodes were heard on phx_cluster (heartbeats, presence)");
    let stored: i64 = wire
        .query_one("SELECT count(*) FROM cluster_messages WHERE body LIKE '%Storm%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "lobby changes travel by each node's own listener, not the relay");
}

#[test]
fn presence_lists_agree_on_every_node_and_a_killed_node_leaves_within_two_heartbeats() {
    let db = TestDb::new();
    let mut nodes = three_nodes(&db);
    let topic = unique_topic("room:cluster-presence");
    let mut members: Vec<Member> =
        (0..3).map(|i| Member::join_at(nodes[i].ws, &format!("u{i}"), &topic, json!({}))).collect();
    for m in &mut members {
        m.until_keys(&["u0", "u1", "u2"]);
    }
    // A member that joins now gets everyone in its first state or the diffs right after.
    let mut late = Member::join_at(nodes[1].ws, "u3", &topic, json!({}));
    late.until_keys(&["u0", "u1", "u2", "u3"]);
    members[0].until_keys(&["u0", "u1", "u2", "u3"]);

    nodes[2].kill();
    let t = Instant::now();
    members[0].until_keys(&["u0", "u1", "u3"]);
    late.until_keys(&["u0", "u1", "u3"]);
    let took = t.elapsed();
    eprintln!("u2's presence left {took:?} after its node's SIGKILL");
    // Two heartbeat periods, plus the diff window and scheduling on a shared 2-core machine.
    assert!(took < Duration::from_millis(2 * HEARTBEAT_MS + 250), "{took:?}");

    // An orderly stop: its members leave at once (no timeout to wait for).
    let stopped = nodes.remove(1);
    let t = Instant::now();
    stopped.stop();
    members[0].until_keys(&["u0"]);
    eprintln!("the stopped node's members left {:?} after SIGTERM", t.elapsed());
}

/// An in-process node: the test channel at `test:*`, socket ids `users_socket:<user>`.
fn in_process_node(db: &TestDb, name: &str) -> (TestServer, Cluster) {
    let connect: phx_threads::ConnectFn = Arc::new(|info: &phx_threads::ConnectInfo| {
        let id = info.params.get("user").map(|u| format!("users_socket:{u}"));
        Ok(phx_threads::Connected { assigns: Default::default(), id })
    });
    let server = TestServer::with(test_config(), crate::channels::test_router().0, connect);
    let config = ClusterConfig {
        enabled: true,
        node_name: name.to_string(),
        heartbeat: Duration::from_millis(HEARTBEAT_MS),
        node_timeout: Duration::from_millis(NODE_TIMEOUT_MS),
        ..ClusterConfig::default()
    };
    let cluster = Cluster::start(config, &db.url, &server.handle().pubsub()).expect("joins");
    (server, cluster)
}

fn in_process_pair(db: &TestDb) -> [(TestServer, Cluster); 2] {
    let pair = [in_process_node(db, "a"), in_process_node(db, "b")];
    for (_, cluster) in &pair {
        assert!(eventually(EVENT_TIMEOUT, || cluster.view().status().nodes.len() == 1));
    }
    pair
}

#[test]
fn broadcast_from_excludes_only_the_sender_across_nodes() {
    let db = TestDb::new();
    let [(a, _ca), (b, _cb)] = in_process_pair(&db);
    let topic = unique_topic("test:cluster");
    let (mut sender, mut local, mut remote) = (a.client(), a.client(), b.client());
    let sender_jr = sender.join_ok(&topic);
    local.join_ok(&topic);
    remote.join_ok(&topic);
    let reply = sender.call(Some(&sender_jr), &topic, "shout", json!({"n": 1}));
    assert_eq!(reply["status"], "ok");
    assert_eq!(local.expect(|m| m[3] == "shout")[4], json!({"n": 1}));
    assert_eq!(remote.expect(|m| m[3] == "shout")[4], json!({"n": 1}));
    no_more(&mut sender, "shout");
}

#[test]
fn a_disconnect_on_one_node_closes_the_socket_on_another() {
    let db = TestDb::new();
    let [(a, _ca), (b, _cb)] = in_process_pair(&db);
    let mut ann = WsClient::connect(b.addr(), "vsn=2.0.0&user=ann").unwrap();
    let mut bob = WsClient::connect(b.addr(), "vsn=2.0.0&user=bob").unwrap();
    ann.heartbeat();
    let pubsub = a.handle().pubsub();
    pubsub.broadcast("users_socket:ann", "disconnect", json!({}).into()).unwrap();
    assert_eq!(ann.expect_close(EVENT_TIMEOUT), Some(1001));
    bob.heartbeat();
}

/// Pushes `new_msg` bodies `tag-k` for each `k` in `range` from `c`, each acknowledged.
fn say(c: &mut WsClient, join_ref: &str, topic: &str, tag: &str, range: std::ops::Range<usize>) {
    for k in range {
        let reply =
            c.call(Some(join_ref), topic, "new_msg", json!({ "body": format!("{tag}-{k}") }));
        assert_eq!(reply["status"], "ok", "{reply}");
    }
}

#[test]
fn a_postgres_restart_mid_loop_ends_with_every_broadcast_delivered_and_presence_agreeing() {
    let mut pg = crate::support::pg::private_cluster();
    pg.create_database("cluster_restart").unwrap();
    let nodes = three_nodes_on(&pg.url("cluster_restart"));
    let topic = unique_topic("room:cluster-restart");
    let users = ["u0", "u1", "u2"];
    let mut members: Vec<Member> =
        (0..3).map(|i| Member::join_at(nodes[i].ws, users[i], &topic, json!({}))).collect();
    for m in &mut members {
        m.until_keys(&users);
    }
    let (mut speaker, speaker_jr) = client(&nodes[0], &topic);
    let mut listeners: Vec<WsClient> = nodes[1..].iter().map(|n| client(n, &topic).0).collect();

    say(&mut speaker, &speaker_jr, &topic, "before", 0..10);
    pg.stop().unwrap();
    // Local delivery never stops, with the database down.
    say(&mut speaker, &speaker_jr, &topic, "during", 0..10);
    assert_eq!(bodies(&mut speaker, "new_msg", 20).len(), 20);
    pg.start_server().unwrap();
    // Every listener is back once each node hears the others again (a reconnected listener
    // forgets who was up).
    all_see_each_other(&nodes);
    say(&mut speaker, &speaker_jr, &topic, "after", 0..20);

    // Even those sent while PostgreSQL was down: the speaker's relay kept them, and each
    // listener fetched from the log what it missed while reconnecting.
    let tags = [("before", 10), ("during", 10), ("after", 20)];
    let expected: Vec<String> =
        tags.iter().flat_map(|(t, n)| (0..*n).map(move |k| format!("{t}-{k}"))).collect();
    for c in &mut listeners {
        assert_eq!(new_msgs(c, expected.len()), expected, "every broadcast, once and in order");
        no_more(c, "new_msg");
    }
    for m in &mut members {
        m.until_keys(&users);
    }
    let missed: u64 = nodes.iter().map(|n| cluster_view(n)["missed"].as_u64().unwrap()).sum();
    assert_eq!(missed, 0, "nothing was lost for good");
}

/// The bodies of the next `n` `new_msg` broadcasts on `c`.
fn new_msgs(c: &mut WsClient, n: usize) -> Vec<String> {
    let bodies = bodies(c, "new_msg", n);
    bodies.iter().map(|b| b["body"].as_str().unwrap().to_string()).collect()
}

#[test]
fn broadcasts_sent_while_a_listener_reconnects_are_fetched_from_the_log() {
    let db = TestDb::new();
    let nodes = three_nodes(&db);
    let topic = unique_topic("room:cluster-listener");
    let (mut speaker, speaker_jr) = client(&nodes[0], &topic);
    let mut listeners: Vec<WsClient> = nodes[1..].iter().map(|n| client(n, &topic).0).collect();
    say(&mut speaker, &speaker_jr, &topic, "before", 0..5);
    for c in &mut listeners {
        assert_eq!(new_msgs(c, 5).len(), 5);
    }
    // Every node's listener loses its connection and cannot reconnect (the database refuses
    // new connections; the relaying connections stay), so the NOTIFYs of everything said
    // meanwhile never reach it: only the log can give it back.
    let mut admin = db.client();
    let allow = |yes: bool| {
        let url = crate::support::pg::with_dbname(&db.url, "postgres");
        let mut outside = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let sql = format!("ALTER DATABASE {} ALLOW_CONNECTIONS {yes}", db.name);
        outside.batch_execute(&sql).unwrap();
    };
    allow(false);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'phx-threads-cluster-listen'",
            &[],
        )
        .unwrap();
    assert_eq!(killed.len(), 3, "one listener per node");
    say(&mut speaker, &speaker_jr, &topic, "away", 0..20);
    let logged = "SELECT count(*) FROM cluster_messages WHERE body LIKE '%away-19%'";
    assert!(eventually(EVENT_TIMEOUT, || {
        admin.query_one(logged, &[]).unwrap().get::<_, i64>(0) > 0
    }));
    allow(true);
    let expected: Vec<String> = (0..20).map(|k| format!("away-{k}")).collect();
    for c in &mut listeners {
        assert_eq!(new_msgs(c, 20), expected, "every broadcast, once and in order");
        no_more(c, "new_msg");
    }
    let fetched: u64 =
        nodes[1..].iter().map(|n| cluster_view(n)["fetched"].as_u64().unwrap()).sum();
    assert!(fetched > 0, "the listeners caught up from the log");
}

#[test]
fn two_nodes_with_one_name_are_reported_unhealthy_until_one_stops() {
    let db = TestDb::new();
    let first = start_node(&db.url, "twin");
    let second = start_node(&db.url, "twin");
    let health = |n: &Binary| n.request("GET", "/healthz", "");
    for node in [&first, &second] {
        assert!(eventually(EVENT_TIMEOUT, || health(node).status == 503));
        let body = health(node).json();
        assert!(body["cluster"].as_str().unwrap().contains("\"twin\""), "{body}");
        assert!(cluster_view(node)["name_conflicts"].as_u64().unwrap() > 0);
    }
    second.stop();
    assert!(
        eventually(EVENT_TIMEOUT, || health(&first).status == 200),
        "{}",
        health(&first).text()
    );
}

/// Found by the `reconnect` bench (10,000 clients rejoining): every local presence change went
/// to the other nodes as a replication message of its own, a join storm overflowed the other
/// trackers' mailboxes, and each drop asked every node for its whole state, which overflowed
/// them again. A storm of 200 tracks now travels as a few deltas, and the other node shows it.
#[test]
fn a_join_storm_is_replicated_in_a_few_deltas_and_the_other_node_shows_every_member() {
    let db = TestDb::new();
    let nodes = [start_node(&db.url, "storm-a"), start_node(&db.url, "storm-b")];
    all_see_each_other(&nodes);
    let topics: Vec<String> = (0..100).map(|i| unique_topic(&format!("room:storm-{i}"))).collect();
    let relayed = |n: &Binary| cluster_view(n)["relayed"].as_u64().expect("a relayed count");
    let before = relayed(&nodes[0]);
    let mut storm: Vec<WsClient> = (0..2)
        .map(|u| {
            WsClient::connect(nodes[0].ws, &format!("vsn=2.0.0&user_id=s{u}")).expect("connect")
        })
        .collect();
    for c in &mut storm {
        for topic in &topics {
            let r = c.next_ref();
            c.send(json!([r, r, topic, "phx_join", {}]));
        }
    }
    for c in &mut storm {
        for _ in &topics {
            let reply = c.expect(|m| m[3] == "phx_reply");
            assert_eq!(reply[4]["status"], "ok", "{reply}");
        }
    }
    let mut watcher = Member::join_at(nodes[1].ws, "watcher", &topics[99], json!({}));
    watcher.until_keys(&["s0", "s1", "watcher"]);
    let sent = relayed(&nodes[0]) - before;
    eprintln!("{sent} broadcasts relayed for a storm of 200 tracks");
    // 200 tracks, the node's heartbeats (500 ms) and a few deltas; one per track before.
    assert!(sent < 50, "{sent} broadcasts relayed for a storm of 200 tracks");
}

#[test]
fn a_node_frozen_past_the_node_timeout_takes_no_peer_for_dead_when_it_resumes() {
    let db = TestDb::new();
    let frozen = start_node_logging(&db.url, "n1", &[], true);
    let nodes = [frozen, start_node(&db.url, "n2"), start_node(&db.url, "n3")];
    all_see_each_other(&nodes);
    let topic = unique_topic("room:cluster-frozen");
    let mut members: Vec<Member> =
        (0..3).map(|i| Member::join_at(nodes[i].ws, &format!("u{i}"), &topic, json!({}))).collect();
    for m in &mut members {
        m.until_keys(&["u0", "u1", "u2"]);
    }
    // n1 stops (SIGSTOP) until the others have taken it for down; the heartbeats of n2 and n3
    // wait for it at PostgreSQL meanwhile. Resumed, it must read them before judging anyone.
    nodes[0].signal("STOP");
    members[1].until_keys(&["u1", "u2"]);
    nodes[0].signal("CONT");
    members[1].until_keys(&["u0", "u1", "u2"]);
    let quiet = Instant::now() + Duration::from_millis(4 * HEARTBEAT_MS);
    let diff = members[0].diff_before(quiet);
    assert!(diff.is_none(), "n1's client saw its peers' members leave: {diff:?}");
    let [n1, ..] = nodes;
    let log = n1.stop();
    assert!(!log.contains("is down"), "n1 took a peer for down:\n{log}");
    assert!(!log.contains("silent for"), "n1's tracker took a peer for silent:\n{log}");
}
