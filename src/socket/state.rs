//! The socket's decision table as pure state: which topics are joined (and by which channel
//! process), which leaves are in flight, and the client's rate budget. `SocketState` takes a
//! decoded message (or an outcome the driver observed) and returns the `Effect`s to perform;
//! it never touches a thread, a mailbox or a stream, so every rule is tested as a table here
//! and the transports only perform effects (`super::Socket`).
//!
//! The rules follow `socket.ex`'s `handle_in/4`, first match wins: field lengths, rate limits,
//! heartbeat, join (duplicate join, channel limit, unmatched topic), leave (not joined, stale
//! `join_ref`, asked twice), any other event (unmatched topic, stale `join_ref`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::logger::shown;
use crate::protocol::{self, EVENT_HEARTBEAT, EVENT_JOIN, EVENT_LEAVE, HEARTBEAT_TOPIC, Message};
use crate::protocol::{DecodeError, Payload};

use super::rate::{RateLimits, Rates, Verdict};

/// Close codes the state machine decides.
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_POLICY: u16 = 1008;
pub(crate) const CLOSE_INTERNAL: u16 = 1011;

/// What the driver must do, in order.
#[derive(Debug, PartialEq)]
pub(crate) enum Effect {
    /// Send a `phx_reply`.
    Reply(Reply),
    /// Send `phx_close` for a join the client should forget.
    PhxClose { join_ref: String, topic: String },
    /// Stop the channel a duplicate join replaces and wait (bounded) until it has left PubSub.
    ReplaceChannel { id: u64 },
    /// Wait (bounded) until an abandoned channel of this topic has left PubSub.
    AwaitExit { id: u64 },
    /// Route the topic, start channel `id` and wait for its join; report with `join_outcome`.
    StartChannel {
        id: u64,
        topic: String,
        join_ref: String,
        ref_: Option<String>,
        payload: Payload,
    },
    /// Hand an event to channel `id`; report failure with `undeliverable`.
    Push { id: u64, topic: String, event: String, payload: Payload, ref_: Option<String> },
    /// Ask channel `id` to leave; report failure with `leave_undeliverable`.
    Leave { id: u64, topic: String, ref_: Option<String> },
    /// Tell channel `id` to stop whenever it returns; its exit is awaited in the background.
    StopChannel { id: u64 },
    /// End the connection with this code and reason.
    Close(u16, String),
}

#[derive(Debug, PartialEq)]
pub(crate) struct Reply {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub status: &'static str,
    pub payload: Payload,
}

/// How a started join ended, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinResult {
    Joined,
    /// The channel replied itself (refusal or crash in `join`).
    Answered,
    Unmatched,
    /// No thread could be started.
    AtCapacity,
    TimedOut,
}

/// Why an event could not be handed to its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undeliverable {
    /// The channel just exited (its exit notice is on the way).
    Gone,
    /// Its mailbox stayed full (for `Push`: the send timeout).
    Busy,
}

/// A joined (or leaving) topic.
#[derive(Debug)]
struct Route {
    id: u64,
    join_ref: String,
    /// A `phx_leave` the channel has not acknowledged (by exiting) yet.
    leaving: Option<Leaving>,
}

#[derive(Debug)]
struct Leaving {
    ref_: Option<String>,
    deadline: Instant,
}

/// A join being started: what the reply to its outcome needs.
struct Pending {
    topic: String,
    join_ref: String,
    ref_: Option<String>,
    /// The join_ref of the channel it replaced, for the `phx_close` after the reply.
    replaced: Option<String>,
}

/// The limits the decision table applies (from `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_channels: usize,
    /// How long a leave may wait for its channel before the socket completes it itself.
    pub leave_timeout: Duration,
    pub rates: RateLimits,
}

pub(crate) struct SocketState {
    /// The connection's id, for log lines only.
    conn: u64,
    limits: Limits,
    routes: HashMap<String, Route>,
    pending: HashMap<u64, Pending>,
    /// Topics whose channel did not acknowledge a leave in time, with that channel's id, while
    /// it still runs: a rejoin waits (bounded) for it to leave PubSub first.
    abandoned: HashMap<String, u64>,
    rates: Rates,
    next_id: u64,
}

type Effects = Vec<Effect>;

impl SocketState {
    pub fn new(conn: u64, limits: Limits, now: Instant) -> SocketState {
        SocketState {
            conn,
            limits,
            routes: HashMap::new(),
            pending: HashMap::new(),
            abandoned: HashMap::new(),
            rates: Rates::new(limits.rates, now),
            next_id: 1,
        }
    }

    /// A frame the serializer could not decode: the connection cannot be trusted further.
    pub fn undecodable(&self, e: &DecodeError) -> Effects {
        vec![Effect::Close(CLOSE_INVALID_DATA, e.to_string())]
    }

    /// `socket.ex` `handle_in/4`, first match wins.
    pub fn handle(&mut self, m: Message, now: Instant) -> Effects {
        if let Some(field) = m.oversized() {
            return oversized(&m, field);
        }
        if let Some(refused) = self.rate_limit(&m, now) {
            return refused;
        }
        if m.topic == HEARTBEAT_TOPIC && m.event == EVENT_HEARTBEAT {
            return vec![reply(None, m.ref_, m.topic, "ok", Payload::empty())];
        }
        match m.event.as_str() {
            EVENT_JOIN => self.join(m),
            EVENT_LEAVE => self.leave(m, now),
            _ => self.push(m),
        }
    }

    /// Charges the message (and a join) to the client's budget; an error reply when it is
    /// spent, and a close when the client keeps going regardless.
    fn rate_limit(&mut self, m: &Message, now: Instant) -> Option<Effects> {
        match self.rates.charge(m.event == EVENT_JOIN, now) {
            Verdict::Pass => None,
            Verdict::Refuse => {
                log::debug!("conn {}: rate limited {}", self.conn, shown(&m.event));
                crate::limits::count(&crate::limits::REFUSALS.rate_limited);
                let reason = json!({ "reason": "rate limited" }).into();
                let (jr, r, t) = (m.join_ref.clone(), m.ref_.clone(), m.topic.clone());
                Some(vec![reply(jr, r, t, "error", reason)])
            }
            Verdict::Evict => {
                log::info!("conn {}: closing, it kept sending over its rate limit", self.conn);
                crate::limits::count(&crate::limits::REFUSALS.rate_limit_closes);
                Some(vec![Effect::Close(CLOSE_POLICY, "rate limit exceeded".into())])
            }
        }
    }

    fn join(&mut self, m: Message) -> Effects {
        let join_ref = m.join_ref.clone().or_else(|| m.ref_.clone()).unwrap_or_default();
        let mut effects = Vec::new();
        let replaced = self.routes.remove(&m.topic).and_then(|old| {
            effects.push(Effect::ReplaceChannel { id: old.id });
            // A channel that was leaving already sent its own `phx_close`.
            old.leaving.is_none().then_some(old.join_ref)
        });
        if let Some(id) = self.abandoned.remove(&m.topic) {
            effects.push(Effect::AwaitExit { id });
        }
        if self.routes.len() >= self.limits.max_channels {
            crate::metrics::refused_join("too_many_channels");
            let reason = json!({"reason": "too many channels joined"}).into();
            effects.push(reply(Some(join_ref), m.ref_, m.topic, "error", reason));
            return effects;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (topic, ref_) = (m.topic.clone(), m.ref_.clone());
        self.pending.insert(id, Pending { topic, join_ref: join_ref.clone(), ref_, replaced });
        let Message { topic, ref_, payload, .. } = m;
        effects.push(Effect::StartChannel { id, topic, join_ref, ref_, payload });
        effects
    }

    /// What the client hears about join `id` (channel replies aside).
    pub fn join_outcome(&mut self, id: u64, result: JoinResult) -> Effects {
        let Some(p) = self.pending.remove(&id) else { return Vec::new() };
        let mut effects = Vec::new();
        let error = |why: &str| json!({ "reason": why }).into();
        match result {
            JoinResult::Joined => {
                let route = Route { id, join_ref: p.join_ref.clone(), leaving: None };
                self.routes.insert(p.topic.clone(), route);
            }
            JoinResult::Answered => {}
            JoinResult::Unmatched => {
                log::warn!("conn {}: join of unmatched topic {}", self.conn, shown(&p.topic));
                crate::metrics::refused_join("unmatched_topic");
                let reply = reply(None, p.ref_, p.topic, "error", error("unmatched topic"));
                return vec![reply];
            }
            JoinResult::AtCapacity | JoinResult::TimedOut => {
                let why = if result == JoinResult::TimedOut {
                    "join timeout"
                } else {
                    "server at capacity"
                };
                let jr = Some(p.join_ref.clone());
                effects.push(reply(jr, p.ref_, p.topic.clone(), "error", error(why)));
            }
        }
        if let Some(join_ref) = p.replaced {
            effects.push(Effect::PhxClose { join_ref, topic: p.topic });
        }
        effects
    }

    /// `phx_leave`: the channel replies ok and exits; the socket waits for that (without
    /// blocking its reads) until `leave_timeout`, then completes the leave itself.
    fn leave(&mut self, m: Message, now: Instant) -> Effects {
        let Some(route) = self.routes.get_mut(&m.topic) else {
            // Not joined: Phoenix answers ok so the client's leave completes.
            return vec![reply(m.join_ref, m.ref_, m.topic, "ok", Payload::empty())];
        };
        if m.join_ref.as_ref().is_some_and(|jr| *jr != route.join_ref) {
            return Vec::new(); // stale: the client raced a server-side close
        }
        if route.leaving.is_some() {
            return self.abandon(&m.topic, m.ref_); // asked twice: the client is done waiting
        }
        let deadline = now + self.limits.leave_timeout;
        route.leaving = Some(Leaving { ref_: m.ref_.clone(), deadline });
        vec![Effect::Leave { id: route.id, topic: m.topic, ref_: m.ref_ }]
    }

    /// The `Leave` effect could not be delivered.
    pub fn leave_undeliverable(&mut self, topic: &str, why: Undeliverable) -> Effects {
        let Some(route) = self.routes.get_mut(topic) else { return Vec::new() };
        let ref_ = route.leaving.take().and_then(|l| l.ref_);
        match why {
            // Its inbox is full: the channel is far behind, so do not wait for it at all.
            Undeliverable::Busy => self.abandon(topic, ref_),
            // It just exited: nothing left to leave.
            Undeliverable::Gone => {
                let jr = Some(route.join_ref.clone());
                vec![reply(jr, ref_, topic.to_string(), "ok", Payload::empty())]
            }
        }
    }

    /// Completes a leave the channel did not acknowledge in time (it is stuck in a callback):
    /// the client gets what Phoenix sends, an `ok` reply and `phx_close`, the route is
    /// forgotten so the topic can be joined again, and the channel is told to stop whenever
    /// it returns. If it then also handles the leave, the client sees a second reply and
    /// `phx_close` for the old join_ref, which phoenix.js ignores.
    fn abandon(&mut self, topic: &str, ref_: Option<String>) -> Effects {
        let Some(route) = self.routes.remove(topic) else { return Vec::new() };
        log::warn!(
            "conn {}: channel {} did not leave in time; forgetting it",
            self.conn,
            shown(topic)
        );
        self.abandoned.insert(topic.to_string(), route.id);
        let (jr, topic) = (route.join_ref, topic.to_string());
        vec![
            Effect::StopChannel { id: route.id },
            reply(Some(jr.clone()), ref_, topic.clone(), "ok", Payload::empty()),
            Effect::PhxClose { join_ref: jr, topic },
        ]
    }

    /// Any other event goes to the topic's channel.
    fn push(&mut self, m: Message) -> Effects {
        // A channel that was asked to leave handles nothing more: it exits right after the
        // leave, and an event queued behind it would be dropped without an answer.
        let route = self.routes.get(&m.topic).filter(|r| r.leaving.is_none());
        let Some(route) = route else { return vec![unmatched(m.ref_, m.topic)] };
        if m.join_ref.as_ref().is_some_and(|jr| *jr != route.join_ref) {
            return Vec::new(); // stale join_ref: dropped (Phoenix 1.8.3+); null is accepted
        }
        let Message { topic, event, payload, ref_, .. } = m;
        vec![Effect::Push { id: route.id, topic, event, payload, ref_ }]
    }

    /// The `Push` effect could not be delivered.
    pub fn undeliverable(&self, topic: &str, ref_: Option<String>, why: Undeliverable) -> Effects {
        match why {
            Undeliverable::Gone => vec![unmatched(ref_, topic.to_string())],
            Undeliverable::Busy => {
                log::warn!("conn {}: channel {} is not keeping up", self.conn, shown(topic));
                vec![Effect::Close(CLOSE_INTERNAL, format!("channel {topic} overloaded"))]
            }
        }
    }

    /// Gives up on every leave whose deadline has passed.
    pub fn expire_leaves(&mut self, now: Instant) -> Effects {
        let expired: Vec<(String, Option<String>)> = self
            .routes
            .iter_mut()
            .filter(|(_, r)| r.leaving.as_ref().is_some_and(|l| l.deadline <= now))
            .map(|(topic, r)| (topic.clone(), r.leaving.take().and_then(|l| l.ref_)))
            .collect();
        expired.into_iter().flat_map(|(topic, ref_)| self.abandon(&topic, ref_)).collect()
    }

    /// The earliest deadline of a leave in flight: the driver must wake then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.routes.values().filter_map(|r| r.leaving.as_ref().map(|l| l.deadline)).min()
    }

    /// Channel `id` exited: forget its route (a server-side close or crash) and its abandonment.
    pub fn exited(&mut self, id: u64) {
        self.abandoned.retain(|_, abandoned| *abandoned != id);
        self.routes.retain(|_, r| r.id != id);
    }

    /// The connection ends: the channels still routed, all to be stopped.
    pub fn drain(&mut self) -> Vec<u64> {
        self.routes.drain().map(|(_, r)| r.id).collect()
    }
}

/// A field over `MAX_FIELD_BYTES`. An oversized event on a ref is answered there, like any
/// refused message; anything else cannot be answered without echoing the oversized topic or
/// ref (which a binary reply could not even carry), so the frame is invalid data: 1007.
fn oversized(m: &Message, field: &str) -> Effects {
    let why = format!("{field} is longer than {} bytes", protocol::MAX_FIELD_BYTES);
    if field == "event" && m.ref_.is_some() {
        let (jr, r, t) = (m.join_ref.clone(), m.ref_.clone(), m.topic.clone());
        return vec![reply(jr, r, t, "error", json!({ "reason": why }).into())];
    }
    vec![Effect::Close(CLOSE_INVALID_DATA, why)]
}

fn unmatched(ref_: Option<String>, topic: String) -> Effect {
    reply(None, ref_, topic, "error", json!({"reason": "unmatched topic"}).into())
}

fn reply(
    join_ref: Option<String>,
    ref_: Option<String>,
    topic: String,
    status: &'static str,
    payload: Payload,
) -> Effect {
    Effect::Reply(Reply { join_ref, ref_, topic, status, payload })
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
