//! LongPoll without sticky sessions: a poll or a POST that reaches a node other than its
//! session's travels there through the cluster PubSub, as Phoenix routes it (there through the
//! session's `phx:lp:<id>` topic; here through the node's, which lets the node answer 410 at
//! once for a session it no longer has).
//!
//! * The receiving node (`poll`, `send`, on the request's own thread) subscribes a one-off
//!   reply topic, broadcasts the request on `phx:lp:node:<node>` and waits for the answer until
//!   the request's own bound (the window) plus `longpoll_route_timeout`. The session's node is
//!   known from the signed token; when the cluster does not list it as live (SIGKILLed,
//!   stopped, or PostgreSQL unreachable) the answer is 410 at once, and while waiting it is
//!   checked again every `CHECK`, so a node dying mid-poll is noticed within the cluster's node
//!   timeout. No answer in time: 500 (phoenix.js reconnects and rejoins).
//! * The session's node runs the `lp-router` process: it takes the requests from its topic
//!   (a bounded subscription) and answers 410 itself when the session is not here; otherwise
//!   it starts one thread per request (like a local request's), which polls or delivers
//!   exactly as a local request does and broadcasts the answer to the reply topic.
//!
//! A routed poll's messages leave the session's buffer only when a later poll acknowledges
//! them (`longpoll.rs`, "Acknowledged delivery"), so an answer lost between the nodes costs a
//! repeat, never a message. No socket or channel thread waits here: only request threads and
//! the router's own, and none of them on the database (the cluster relay takes broadcasts
//! without waiting).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use serde_json::{Value, json};

use super::Endpoint;
use super::longpoll::{Polled, SessionId, Token, hex, unhex};
use crate::cluster::ClusterView;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, PubSub, Subscription};

/// Requests waiting for a node's router; more are counted as dropped (their senders answer 500).
const INBOX: usize = 4_096;
/// Routed requests a node serves at once (each holds a thread for up to a window); more are
/// answered 500 at once.
const MAX_IN_FLIGHT: usize = 4_096;
/// How often a waiting request checks that the session's node is still live.
const CHECK: Duration = Duration::from_millis(100);

/// What a node needs to route requests; set once it joins a cluster.
pub(crate) struct Route {
    pubsub: PubSub,
    view: ClusterView,
    /// Before this, a node not (yet) heard from may just be unknown, not down.
    settled: Instant,
    in_flight: Arc<AtomicUsize>,
}

fn node_topic(node: &str) -> String {
    format!("phx:lp:node:{node}")
}

/// Joins this node's LongPoll sessions to the cluster: subscribes the node's topic and starts
/// the `lp-router` process. It ends when the PubSub registry stops (the subscription closes).
pub(crate) fn start(
    endpoint: &Arc<Endpoint>,
    view: ClusterView,
    node_timeout: Duration,
) -> std::io::Result<()> {
    let pubsub = endpoint.pubsub.clone();
    let requests = pubsub
        .subscribe(&node_topic(endpoint.longpoll.node()), INBOX)
        .map_err(std::io::Error::other)?;
    let in_flight = Arc::default();
    let settled = Instant::now() + node_timeout;
    let route = Route { pubsub, view, settled, in_flight };
    if endpoint.longpoll.route.set(route).is_err() {
        return Err(std::io::Error::other("LongPoll routing already started"));
    }
    let weak = Arc::downgrade(endpoint);
    let stack = endpoint.config.socket_stack_bytes;
    crate::process::spawn("lp-router".into(), stack, move || serve(&weak, &requests)).map(drop)
}

/// A poll whose session lives on `token.node`.
pub(super) fn poll(endpoint: &Endpoint, token: &Token) -> Polled {
    let request = json!({"op": "poll", "id": hex(&token.id), "ack": token.ack});
    match counted("poll", call(endpoint, &token.node, request, endpoint.config.longpoll_window)) {
        Err(Failure::Gone) => Polled::Gone,
        Err(Failure::Unreachable(why)) => Polled::Unreachable(why),
        Ok(answer) => polled(&answer),
    }
}

/// A POST whose session lives on `token.node`; the answer is the POST's body.
pub(super) fn send(endpoint: &Endpoint, token: &Token, lines: Vec<String>) -> Value {
    let request = json!({"op": "send", "id": hex(&token.id), "lines": lines});
    match counted("send", call(endpoint, &token.node, request, endpoint.config.longpoll_window)) {
        Err(Failure::Gone) => json!({"status": 410}),
        Err(Failure::Unreachable(why)) => json!({"status": 500, "reason": why}),
        Ok(answer) => json!({"status": answer["status"]}),
    }
}

/// Counts a routed request's outcome (`phx_longpoll_routed_total`).
fn counted(op: &'static str, result: Result<Value, Failure>) -> Result<Value, Failure> {
    let outcome = match &result {
        Ok(_) => "answered",
        Err(Failure::Gone) => "gone",
        Err(Failure::Unreachable(_)) => "unreachable",
    };
    crate::metrics::longpoll_routed(op, outcome);
    result
}

/// A routed poll's answer: `{"status":200|204,"messages":[..],"ack":n}` or `{"status":410}`.
fn polled(answer: &Value) -> Polled {
    let messages = answer["messages"].as_array().map(|m| m.iter().filter_map(Value::as_str));
    match (&answer["status"], answer["ack"].as_u64(), messages) {
        (status, Some(ack), Some(m)) if status == 200 || status == 204 => {
            Polled::Messages(m.map(str::to_string).collect(), ack)
        }
        (status, _, _) if status == 410 => Polled::Gone,
        _ => Polled::Unreachable(format!("session's node answered {answer}")),
    }
}

enum Failure {
    /// The session's node is not in the cluster (410: phoenix.js opens a new session).
    Gone,
    /// No answer in time, or the request could not be sent (500: phoenix.js reconnects).
    Unreachable(String),
}

/// Sends `request` to `node`'s router and waits for its answer, at most `bound` plus the route
/// timeout, while the node stays live.
fn call(
    endpoint: &Endpoint,
    node: &str,
    mut request: Value,
    bound: Duration,
) -> Result<Value, Failure> {
    let route = endpoint.longpoll.route.get().ok_or(Failure::Gone)?;
    if !route.live(node) {
        return Err(Failure::Gone);
    }
    let unreachable = |e: crate::pubsub::PubSubError| Failure::Unreachable(e.to_string());
    let reply = format!("phx:lp:reply:{}", uuid::Uuid::new_v4().simple());
    // Subscribed before the request leaves, so the answer cannot arrive before it.
    let answers = route.pubsub.subscribe(&reply, 1).map_err(unreachable)?;
    request["reply"] = Value::String(reply);
    route
        .pubsub
        .broadcast(&node_topic(node), "request", Payload::Json(request))
        .map_err(unreachable)?;
    let deadline = Instant::now() + bound + endpoint.config.longpoll_route_timeout;
    wait(route, node, &answers, deadline)
}

fn wait(
    route: &Route,
    node: &str,
    answers: &Subscription,
    deadline: Instant,
) -> Result<Value, Failure> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            log::warn!("LongPoll: node {} did not answer in time", crate::logger::shown(node));
            return Err(Failure::Unreachable("the session's node did not answer in time".into()));
        }
        match answers.rx.recv_timeout(CHECK.min(deadline - now)) {
            Ok(broadcast) => return Ok(payload_json(&broadcast)),
            Err(RecvTimeoutError::Timeout) if !route.live(node) => return Err(Failure::Gone),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::Unreachable("server shutting down".into()));
            }
        }
    }
}

impl Route {
    /// Whether `node` can answer: listed live by the cluster, or not yet known to be down.
    fn live(&self, node: &str) -> bool {
        Instant::now() < self.settled || self.view.status().nodes.iter().any(|n| n.name == node)
    }
}

fn payload_json(broadcast: &Broadcast) -> Value {
    match &broadcast.payload {
        Payload::Json(value) => value.clone(),
        Payload::JsonText(text) => serde_json::from_str(text.as_str()).unwrap_or(Value::Null),
        Payload::Binary(_) => Value::Null,
    }
}

/// The `lp-router` process: every request for this node's sessions, until the registry stops.
fn serve(endpoint: &Weak<Endpoint>, requests: &Subscription) {
    loop {
        let request = match requests.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(endpoint) = endpoint.upgrade() else { return };
        let dropped = requests.take_dropped();
        if dropped > 0 {
            log::error!(
                "LongPoll router: {dropped} requests found the inbox full (senders answer 500)"
            );
        }
        handle(&endpoint, &payload_json(&request));
    }
}

/// One routed request: 410 at once when the session is not here, else a thread that serves it.
fn handle(endpoint: &Arc<Endpoint>, request: &Value) {
    let Some(reply) = request["reply"].as_str().filter(|r| r.starts_with("phx:lp:reply:")) else {
        // Only our nodes publish here; its content (client messages) stays out of the log.
        log::warn!("LongPoll router: a request without a reply topic, ignored");
        return;
    };
    let id: Option<SessionId> =
        request["id"].as_str().and_then(unhex).and_then(|v| v.try_into().ok());
    let Some(lp) = id.and_then(|id| endpoint.longpoll.local(&id)) else {
        return answer(&endpoint.pubsub, reply, json!({"status": 410}));
    };
    let route = endpoint.longpoll.route.get().expect("set before the router starts");
    let Some(slot) = InFlight::take(&route.in_flight) else {
        let busy = json!({"status": 500, "reason": "node has too many routed LongPoll requests"});
        return answer(&endpoint.pubsub, reply, busy);
    };
    let (endpoint2, request, reply2) = (endpoint.clone(), request.clone(), reply.to_string());
    let run = move || {
        let _slot = slot;
        answer(&endpoint2.pubsub, &reply2, serve_request(&endpoint2, &lp, &request));
    };
    // A thread that could not start drops `run`, and with it the slot.
    let stack = endpoint.config.socket_stack_bytes;
    if let Err(e) = crate::process::spawn("lp-routed".into(), stack, run) {
        answer(&endpoint.pubsub, reply, json!({"status": 500, "reason": e.to_string()}));
    }
}

/// One of the `MAX_IN_FLIGHT` routed requests a node serves at once, released however the
/// request's thread ends.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn take(count: &Arc<AtomicUsize>) -> Option<InFlight> {
        let slot = InFlight(count.clone());
        (count.fetch_add(1, Ordering::AcqRel) < MAX_IN_FLIGHT).then_some(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a local request would do, as the answer to send back.
fn serve_request(endpoint: &Endpoint, lp: &super::longpoll::LongPoll, request: &Value) -> Value {
    let window = endpoint.config.longpoll_window;
    match request["op"].as_str() {
        Some("poll") => match lp.poll(window, request["ack"].as_u64().unwrap_or(0)) {
            Polled::Messages(messages, ack) => {
                let status = if messages.is_empty() { 204 } else { 200 };
                json!({"status": status, "messages": messages, "ack": ack})
            }
            Polled::Gone | Polled::Unreachable(_) => json!({"status": 410}),
        },
        Some("send") => {
            let lines = request["lines"].as_array().map(|l| l.iter().filter_map(Value::as_str));
            let lines = lines.map(|l| l.map(str::to_string).collect()).unwrap_or_default();
            json!({"status": lp.deliver(lines, Instant::now() + window)})
        }
        _ => json!({"status": 500, "reason": "unknown LongPoll request"}),
    }
}

fn answer(pubsub: &PubSub, reply: &str, body: Value) {
    if let Err(e) = pubsub.broadcast(reply, "reply", Payload::Json(body)) {
        log::warn!("LongPoll router: answer not sent ({e}); its sender answers 500");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_requests_are_capped_and_every_slot_comes_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let slots: Vec<InFlight> =
            (0..MAX_IN_FLIGHT).map_while(|_| InFlight::take(&count)).collect();
        assert_eq!(slots.len(), MAX_IN_FLIGHT);
        assert!(InFlight::take(&count).is_none(), "one more is refused");
        drop(slots);
        assert_eq!(count.load(Ordering::Acquire), 0);
        assert!(InFlight::take(&count).is_some());
    }

    #[test]
    fn a_routed_answer_is_read_as_a_local_poll_would_answer() {
        let answer = json!({"status": 200, "messages": ["[1]", "[2]"], "ack": 9});
        assert_eq!(polled(&answer), Polled::Messages(vec!["[1]".into(), "[2]".into()], 9));
        let empty = json!({"status": 204, "messages": [], "ack": 9});
        assert_eq!(polled(&empty), Polled::Messages(vec![], 9));
        assert_eq!(polled(&json!({"status": 410})), Polled::Gone);
        let busy = json!({"status": 500, "reason": "busy"});
        assert!(matches!(polled(&busy), Polled::Unreachable(_)));
        assert!(matches!(polled(&json!({"status": 200})), Polled::Unreachable(_)), "no ack");
    }
}
