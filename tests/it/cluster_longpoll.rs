//! Issue #13 item 4: LongPoll without sticky sessions. Three `phx-threads` binaries with
//! `--cluster` on one throwaway PostgreSQL; a session opened on one node is polled and fed
//! through the others, as a round-robin load balancer would hand its requests around. Replies
//! and broadcasts arrive in order and exactly once, an answer lost on the way is repeated (not
//! lost), a SIGKILLed session node gives 410 within the node timeout, a frozen one (SIGSTOP)
//! 500 after the route timeout with nothing lost, and tokens that are forged, signed
//! elsewhere or used from another address are refused on every node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{NODE_TIMEOUT_MS, all_see_each_other, start_node_with};
use crate::longpoll::request;
use crate::supervision::Binary;
use crate::support::pg::TestDb;
use crate::support::ws::WsClient;
use crate::support::{WAIT, unique_topic};

const WINDOW_MS: &str = "1000";
/// Given to the nodes of one test; the others share the key their database holds.
const SECRET: &str = "test-longpoll-secret-0123456789abcdef";

/// Three nodes with no secret configured: their LongPoll key comes from the database.
fn nodes(db: &TestDb) -> Vec<Binary> {
    nodes_with(db, &[])
}

fn nodes_with(db: &TestDb, extra: &[&str]) -> Vec<Binary> {
    let extra = [&["--longpoll-window-ms", WINDOW_MS], extra].concat();
    let nodes: Vec<Binary> =
        ["n1", "n2", "n3"].iter().map(|n| start_node_with(&db.url, n, &extra)).collect();
    all_see_each_other(&nodes);
    nodes
}

/// A LongPoll client that, as phoenix.js does, keeps the token of every answer.
struct Client {
    token: String,
    from: Option<&'static str>,
}

fn target(token: &str) -> String {
    format!("/socket/longpoll?vsn=2.0.0&token={token}")
}

impl Client {
    fn open(node: SocketAddr) -> Client {
        let (status, body) = request(node, None, "GET", &target(""), "");
        assert_eq!((status, &body["status"]), (200, &json!(410)), "{body}");
        Client { token: body["token"].as_str().expect("a token").to_string(), from: None }
    }

    /// One poll through `node`; a 200 or 204 answer's token replaces ours.
    fn poll(&mut self, node: SocketAddr) -> Value {
        let (_, body) = request(node, self.from, "GET", &target(&self.token), "");
        if let Some(token) = body["token"].as_str() {
            self.token = token.to_string();
        }
        body
    }

    fn post(&self, node: SocketAddr, messages: &[Value]) -> Value {
        let lines: Vec<String> = messages.iter().map(Value::to_string).collect();
        request(node, self.from, "POST", &target(&self.token), &lines.join("\n")).1
    }

    /// Polls through `nodes` in turn until `n` messages have arrived; panics after `WAIT`.
    fn collect(&mut self, nodes: &[SocketAddr], n: usize) -> Vec<Value> {
        self.collect_matching(nodes, n, |_| true)
    }

    /// `collect`, keeping only the messages that match `pred`.
    fn collect_matching(
        &mut self,
        nodes: &[SocketAddr],
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        for node in nodes.iter().cycle() {
            assert!(Instant::now() < deadline, "only {} of {n} messages: {got:?}", got.len());
            let answer = self.poll(*node);
            assert!(answer["status"] == 200 || answer["status"] == 204, "{answer}");
            got.extend(decoded(&answer).into_iter().filter(&pred));
            if got.len() >= n {
                break;
            }
        }
        got
    }
}

fn decoded(answer: &Value) -> Vec<Value> {
    let messages = answer["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().map(|m| serde_json::from_str(m.as_str().unwrap()).unwrap()).collect()
}

#[test]
fn a_session_is_polled_and_fed_through_every_node_in_order_and_exactly_once() {
    let db = TestDb::new();
    let nodes = nodes(&db);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.ws).collect();
    let topic = unique_topic("room:lp");
    let mut lp = Client::open(addrs[0]);
    // The join goes through n2, the first poll through n3: neither holds the session.
    let join = json!(["1", "1", topic, "phx_join", {}]);
    assert_eq!(lp.post(addrs[1], &[join]), json!({"status": 200}));
    let joined = lp.collect(&addrs[2..], 1);
    assert_eq!(joined[0][1], "1");
    assert_eq!(joined[0][4]["status"], "ok", "{joined:?}");
    // A WebSocket client on n3 broadcasts too: its messages cross the cluster to n1.
    let mut ws = WsClient::connect(addrs[2], "vsn=2.0.0").expect("connect");
    let ws_join = ws.join_ok(&topic);
    const PUSHES: usize = 12;
    for k in 0..PUSHES {
        let push = json!(["1", format!("p{k}"), topic, "new_msg", {"body": format!("lp-{k}")}]);
        // POSTs alternate between the two nodes that do not hold the session.
        assert_eq!(lp.post(addrs[1 + k % 2], &[push]), json!({"status": 200}));
        ws.push(Some(&ws_join), &topic, "new_msg", json!({"body": format!("ws-{k}")}));
    }
    // Every reply and every broadcast, polled through n1, n2, n3 in turn.
    // (Presence messages come too; they are not counted.)
    let counted = |m: &Value| m[3] == "new_msg" || m[3] == "phx_reply";
    let got = lp.collect_matching(&addrs, 3 * PUSHES, counted);
    let replies: Vec<&str> =
        got.iter().filter(|m| m[3] == "phx_reply").map(|m| m[1].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..PUSHES).map(|k| format!("p{k}")).collect();
    assert_eq!(replies, expected, "every reply once, in order");
    for from in ["lp", "ws"] {
        let bodies: Vec<&str> = got
            .iter()
            .filter(|m| m[3] == "new_msg")
            .map(|m| m[4]["body"].as_str().unwrap())
            .filter(|b| b.starts_with(from))
            .collect();
        let expected: Vec<String> = (0..PUSHES).map(|k| format!("{from}-{k}")).collect();
        assert_eq!(bodies, expected, "{from}'s broadcasts once each and in order");
    }
    // Nothing more: a further poll through each node brings no reply or broadcast again.
    for node in &addrs {
        let answer = lp.poll(*node);
        assert!(decoded(&answer).iter().all(|m| !counted(m)), "{answer}");
    }
}

#[test]
fn an_answer_lost_on_the_way_is_repeated_and_never_lost() {
    let db = TestDb::new();
    let nodes = nodes(&db);
    let (home, other) = (nodes[0].ws, nodes[1].ws);
    let mut lp = Client::open(home);
    let beats: Vec<Value> =
        (0..3).map(|i| json!([null, format!("h{i}"), "phoenix", "heartbeat", {}])).collect();
    assert_eq!(lp.post(other, &beats), json!({"status": 200}));
    let before = lp.token.clone();
    let started = Instant::now();
    let first = lp.collect(&[other], 3);
    eprintln!("a routed poll with messages waiting answered in {:?}", started.elapsed());
    // The client never saw that answer (it keeps its old token): the same messages again.
    let lost = || Client { token: before.clone(), from: None };
    assert_eq!(lost().collect(&[other], 3), first, "repeated through another node");
    assert_eq!(lost().collect(&[home], 3), first, "and through the session's own");
    // With the token of the answer it did see, they are gone: nothing twice.
    assert_eq!(lp.poll(other)["status"], 204);
    // A POST's bounds hold on the node that receives it, before anything is routed.
    let too_many: Vec<Value> =
        (0..101).map(|i| json!([null, i.to_string(), "phoenix", "heartbeat", {}])).collect();
    let refused = lp.post(other, &too_many);
    assert_eq!(refused, json!({"status": 400, "reason": "more than 100 messages"}));
    assert_eq!(lp.poll(other)["status"], 204, "and the session got none of them");
}

#[test]
fn a_session_whose_node_is_killed_answers_410_through_the_others() {
    let db = TestDb::new();
    let mut nodes = nodes(&db);
    let (survivor, doomed) = (nodes[0].ws, nodes[2].ws);
    let mut lp = Client::open(doomed);
    assert_eq!(lp.poll(survivor)["status"], 204, "routed while its node lives");
    let mut waiting = Client { token: lp.token.clone(), from: None };
    let in_flight = std::thread::spawn(move || waiting.poll(survivor));
    // Whether the poll reaches n3 before or after the kill, the answer must be 410 in time.
    nodes[2].kill();
    let killed = Instant::now();
    let answer = in_flight.join().unwrap();
    assert_eq!(answer, json!({"status": 410}), "the poll in flight");
    let bound = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(2);
    assert!(killed.elapsed() < bound, "410 {:?} after the kill", killed.elapsed());
    for node in &nodes[..2] {
        let started = Instant::now();
        assert_eq!(lp.poll(node.ws), json!({"status": 410}));
        assert!(started.elapsed() < Duration::from_millis(500), "at once: the node is down");
        let beat = json!([null, "1", "phoenix", "heartbeat", {}]);
        assert_eq!(lp.post(node.ws, &[beat]), json!({"status": 410}));
    }
    // The operator sees it: the survivor counted the routed poll answered, then the 410s.
    let metrics = nodes[0].request("GET", "/metrics", "").text();
    let count = |labels: &str| -> u64 {
        let line = format!("phx_longpoll_routed_total{{{labels}}} ");
        let found = metrics.lines().find_map(|l| l.strip_prefix(line.as_str()));
        found.map_or(0, |n| n.trim().parse().unwrap())
    };
    assert_eq!(count(r#"op="poll",outcome="answered""#), 1, "{metrics}");
    assert!(count(r#"op="poll",outcome="gone""#) >= 2, "{metrics}");
    assert_eq!(count(r#"op="send",outcome="gone""#), 1, "{metrics}");
}

/// Continues a node frozen with SIGSTOP, whatever happens to the test meanwhile.
struct Frozen<'a>(&'a Binary);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

#[test]
fn a_session_node_that_does_not_answer_in_time_gives_500_and_loses_nothing() {
    let db = TestDb::new();
    let home = start_node_with(&db.url, "n1", &["--longpoll-window-ms", WINDOW_MS]);
    // Its own bound (window + route timeout, 200 ms) ends well before the node timeout
    // (750 ms): the session's node still counts as live, it just does not answer.
    let quick = ["--longpoll-window-ms", "100", "--longpoll-route-timeout-ms", "100"];
    let impatient = start_node_with(&db.url, "n2", &quick);
    let nodes = [home, impatient];
    all_see_each_other(&nodes);
    let mut lp = Client::open(nodes[0].ws);
    let beat = json!([null, "h", "phoenix", "heartbeat", {}]);
    assert_eq!(lp.post(nodes[0].ws, &[beat]), json!({"status": 200}));
    let frozen = Frozen(&nodes[0]);
    frozen.0.signal("STOP");
    let (http, answer) = request(nodes[1].ws, None, "GET", &target(&lp.token), "");
    drop(frozen);
    let expected = json!({"status": 500, "reason": "the session's node did not answer in time"});
    assert_eq!((http, answer), (503, expected), "phoenix.js reconnects on 500");
    // Nothing was taken from the session: the reply is still there for a poll that arrives.
    let got = lp.collect(&[nodes[0].ws], 1);
    assert_eq!(got[0][1], "h");
}

#[test]
fn forged_foreign_and_misplaced_tokens_are_refused_on_every_node() {
    let db = TestDb::new();
    // With a configured secret this time (the other tests: the database's).
    let nodes = nodes_with(&db, &["--longpoll-secret", SECRET]);
    let mut lp = Client::open(nodes[0].ws);
    let beat = json!([null, "b", "phoenix", "heartbeat", {}]);
    assert_eq!(lp.post(nodes[1].ws, std::slice::from_ref(&beat)), json!({"status": 200}));
    // Another server with its own key (another deployment): its tokens name a node too.
    let foreign_secret = "another-deployment-secret-0123456789";
    let stranger =
        Binary::start_with(&["--no-database", "--longpoll-secret", foreign_secret], false);
    let foreign = Client::open(stranger.ws).token;
    let (id, rest) = lp.token.split_once('.').unwrap();
    let (ack_node, _sig) = rest.rsplit_once('.').unwrap();
    let tampered = [
        format!("{id}.{}", rest.replacen("0.", "1.", 1)),
        format!("{}{}.{rest}", &id[..31], if id.ends_with('0') { '1' } else { '0' }),
        format!("{id}.{ack_node}.{}", "0".repeat(64)),
        format!("{id}.{ack_node}"),
        foreign,
    ];
    for node in &nodes {
        for token in &tampered {
            let mut forged = Client { token: token.clone(), from: None };
            assert_eq!(forged.poll(node.ws), json!({"status": 410}), "{token} on {}", node.ws);
            assert_eq!(forged.post(node.ws, std::slice::from_ref(&beat)), json!({"status": 410}));
        }
        let mut elsewhere = Client { token: lp.token.clone(), from: Some("127.0.0.2") };
        assert_eq!(elsewhere.poll(node.ws), json!({"status": 410}), "another address");
        assert_eq!(elsewhere.post(node.ws, std::slice::from_ref(&beat)), json!({"status": 410}));
    }
    // The session itself is untouched: its reply is there, through any node.
    let got = lp.collect(&[nodes[2].ws], 1);
    assert_eq!(got[0][1], "b");
}
