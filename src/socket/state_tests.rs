//! The decision table, one row per rule: a state, a message, the effects expected.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::socket::rate::RateLimits;

const RATES_OFF: RateLimits = RateLimits {
    messages_per_sec: 0,
    message_burst: 0,
    joins_per_sec: 0,
    join_burst: 0,
    max_refusals: 0,
};
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

fn state_with(max_channels: usize, rates: RateLimits, now: Instant) -> SocketState {
    SocketState::new(1, Limits { max_channels, leave_timeout: LEAVE_TIMEOUT, rates }, now)
}

fn msg(join_ref: Option<&str>, ref_: &str, topic: &str, event: &str) -> Message {
    Message {
        join_ref: join_ref.map(str::to_string),
        ref_: Some(ref_.to_string()),
        topic: topic.to_string(),
        event: event.to_string(),
        payload: Payload::empty(),
    }
}

/// One effect as a short line, so a table row reads like the protocol.
fn show(e: &Effect) -> String {
    match e {
        Effect::Reply(r) => {
            let body = match &r.payload {
                Payload::Json(v) if v == &json!({}) => String::new(),
                Payload::Json(v) => format!(" {v}"),
                other => format!(" {other:?}"),
            };
            let jr = r.join_ref.as_deref().unwrap_or("-");
            let rf = r.ref_.as_deref().unwrap_or("-");
            format!("reply {jr} {rf} {} {}{body}", r.topic, r.status)
        }
        Effect::PhxClose { join_ref, topic } => format!("phx_close {join_ref} {topic}"),
        Effect::ReplaceChannel { id } => format!("replace {id}"),
        Effect::AwaitExit { id } => format!("await {id}"),
        Effect::StartChannel { id, topic, join_ref, .. } => {
            format!("start {id} {topic} {join_ref}")
        }
        Effect::Push { id, event, .. } => format!("push {id} {event}"),
        Effect::Leave { id, .. } => format!("leave {id}"),
        Effect::StopChannel { id } => format!("stop {id}"),
        Effect::Close(code, why) => format!("close {code} {why}"),
    }
}

fn shown(effects: &[Effect]) -> Vec<String> {
    effects.iter().map(show).collect()
}

/// A state where `room:a` is joined by channel 1 with join_ref "1".
fn joined(now: Instant) -> SocketState {
    let mut s = state_with(2, RATES_OFF, now);
    s.handle(msg(Some("1"), "1", "room:a", "phx_join"), now);
    assert!(s.join_outcome(1, JoinResult::Joined).is_empty());
    s
}

#[test]
fn decision_table() {
    type Row = (&'static str, fn(Instant) -> SocketState, Message, &'static [&'static str]);
    let long = "x".repeat(protocol::MAX_FIELD_BYTES + 1);
    let fresh = |now| state_with(2, RATES_OFF, now);
    let rows: Vec<Row> = vec![
        ("heartbeat", fresh, msg(None, "7", "phoenix", "heartbeat"), &["reply - 7 phoenix ok"]),
        (
            "join starts a channel",
            fresh,
            msg(Some("1"), "1", "room:a", "phx_join"),
            &["start 1 room:a 1"],
        ),
        (
            "duplicate join replaces",
            joined,
            msg(Some("5"), "5", "room:a", "phx_join"),
            &["replace 1", "start 2 room:a 5"],
        ),
        ("leave", joined, msg(Some("1"), "2", "room:a", "phx_leave"), &["leave 1"]),
        (
            "leave when not joined",
            fresh,
            msg(Some("1"), "2", "room:a", "phx_leave"),
            &["reply 1 2 room:a ok"],
        ),
        ("leave with a stale join_ref", joined, msg(Some("0"), "2", "room:a", "phx_leave"), &[]),
        ("push", joined, msg(Some("1"), "3", "room:a", "new_msg"), &["push 1 new_msg"]),
        (
            "push with a null join_ref",
            joined,
            msg(None, "3", "room:a", "new_msg"),
            &["push 1 new_msg"],
        ),
        ("push with a stale join_ref", joined, msg(Some("0"), "3", "room:a", "new_msg"), &[]),
        (
            "push to an unjoined topic",
            fresh,
            msg(Some("1"), "3", "room:b", "new_msg"),
            &[r#"reply - 3 room:b error {"reason":"unmatched topic"}"#],
        ),
        (
            "oversized event is answered",
            fresh,
            msg(None, "3", "room:a", &long),
            &[r#"reply - 3 room:a error {"reason":"event is longer than 255 bytes"}"#],
        ),
        (
            "oversized topic closes",
            fresh,
            msg(None, "3", &long, "e"),
            &["close 1007 topic is longer than 255 bytes"],
        ),
    ];
    for (name, state, message, expected) in rows {
        let now = Instant::now();
        let mut s = state(now);
        assert_eq!(shown(&s.handle(message, now)), expected.to_vec(), "{name}");
    }
}

#[test]
fn join_outcomes() {
    let rows: [(JoinResult, &[&str]); 5] = [
        (JoinResult::Joined, &[]),
        (JoinResult::Answered, &[]),
        (JoinResult::Unmatched, &[r#"reply - 1 nope:x error {"reason":"unmatched topic"}"#]),
        (JoinResult::TimedOut, &[r#"reply 1 1 nope:x error {"reason":"join timeout"}"#]),
        (JoinResult::AtCapacity, &[r#"reply 1 1 nope:x error {"reason":"server at capacity"}"#]),
    ];
    for (result, expected) in rows {
        let now = Instant::now();
        let mut s = state_with(2, RATES_OFF, now);
        s.handle(msg(Some("1"), "1", "nope:x", "phx_join"), now);
        assert_eq!(shown(&s.join_outcome(1, result)), expected.to_vec(), "{result:?}");
        let pushed = shown(&s.handle(msg(Some("1"), "2", "nope:x", "e"), now));
        let routed = pushed == ["push 1 e"];
        assert_eq!(routed, result == JoinResult::Joined, "{result:?} routes: {pushed:?}");
    }
}

#[test]
fn a_replaced_join_closes_the_old_join_ref_after_the_new_reply() {
    let now = Instant::now();
    let mut s = joined(now);
    s.handle(msg(Some("5"), "5", "room:a", "phx_join"), now);
    assert_eq!(shown(&s.join_outcome(2, JoinResult::Joined)), ["phx_close 1 room:a"]);
    assert_eq!(shown(&s.handle(msg(Some("5"), "6", "room:a", "e"), now)), ["push 2 e"]);
}

#[test]
fn the_channel_limit_counts_joined_topics() {
    let now = Instant::now();
    let mut s = state_with(1, RATES_OFF, now);
    s.handle(msg(Some("1"), "1", "room:a", "phx_join"), now);
    s.join_outcome(1, JoinResult::Joined);
    let refused = s.handle(msg(Some("2"), "2", "room:b", "phx_join"), now);
    assert_eq!(
        shown(&refused),
        [r#"reply 2 2 room:b error {"reason":"too many channels joined"}"#]
    );
    // Rejoining the joined topic replaces it, so it is not over the limit.
    let rejoin = s.handle(msg(Some("3"), "3", "room:a", "phx_join"), now);
    assert_eq!(shown(&rejoin), ["replace 1", "start 2 room:a 3"]);
}

#[test]
fn a_leave_not_acknowledged_in_time_is_completed_by_the_socket() {
    let now = Instant::now();
    let mut s = joined(now);
    s.handle(msg(Some("1"), "2", "room:a", "phx_leave"), now);
    assert_eq!(s.next_deadline(), Some(now + LEAVE_TIMEOUT));
    assert!(s.expire_leaves(now).is_empty(), "not yet");
    let pushed = s.handle(msg(Some("1"), "3", "room:a", "e"), now);
    assert_eq!(shown(&pushed), [r#"reply - 3 room:a error {"reason":"unmatched topic"}"#]);
    let expired = s.expire_leaves(now + LEAVE_TIMEOUT);
    assert_eq!(shown(&expired), ["stop 1", "reply 1 2 room:a ok", "phx_close 1 room:a"]);
    assert_eq!(s.next_deadline(), None);
    // A rejoin waits for the abandoned channel to leave PubSub first.
    let rejoin = s.handle(msg(Some("4"), "4", "room:a", "phx_join"), now);
    assert_eq!(shown(&rejoin), ["await 1", "start 2 room:a 4"]);
}

#[test]
fn a_second_leave_abandons_at_once() {
    let now = Instant::now();
    let mut s = joined(now);
    s.handle(msg(Some("1"), "2", "room:a", "phx_leave"), now);
    let again = s.handle(msg(Some("1"), "3", "room:a", "phx_leave"), now);
    assert_eq!(shown(&again), ["stop 1", "reply 1 3 room:a ok", "phx_close 1 room:a"]);
}

#[test]
fn undeliverable_leaves_and_pushes() {
    let now = Instant::now();
    let mut s = joined(now);
    s.handle(msg(Some("1"), "2", "room:a", "phx_leave"), now);
    let busy = s.leave_undeliverable("room:a", Undeliverable::Busy);
    assert_eq!(shown(&busy), ["stop 1", "reply 1 2 room:a ok", "phx_close 1 room:a"]);

    let mut s = joined(now);
    s.handle(msg(Some("1"), "2", "room:a", "phx_leave"), now);
    let gone = s.leave_undeliverable("room:a", Undeliverable::Gone);
    assert_eq!(shown(&gone), ["reply 1 2 room:a ok"]);

    let ref_ = Some("9".to_string());
    let gone = s.undeliverable("room:a", ref_.clone(), Undeliverable::Gone);
    assert_eq!(shown(&gone), [r#"reply - 9 room:a error {"reason":"unmatched topic"}"#]);
    let busy = s.undeliverable("room:a", ref_, Undeliverable::Busy);
    assert_eq!(shown(&busy), ["close 1011 channel room:a overloaded"]);
}

#[test]
fn an_exited_channel_is_no_longer_routed() {
    let now = Instant::now();
    let mut s = joined(now);
    s.exited(1);
    let pushed = s.handle(msg(Some("1"), "3", "room:a", "e"), now);
    assert_eq!(shown(&pushed), [r#"reply - 3 room:a error {"reason":"unmatched topic"}"#]);
    assert!(s.drain().is_empty());
}

#[test]
fn rate_limited_messages_are_refused_then_the_client_is_closed() {
    let now = Instant::now();
    let rates = RateLimits {
        messages_per_sec: 1,
        message_burst: 30,
        joins_per_sec: 1,
        join_burst: 1,
        max_refusals: 1,
    };
    let mut s = state_with(10, rates, now);
    s.handle(msg(Some("1"), "1", "room:a", "phx_join"), now);
    s.join_outcome(1, JoinResult::Joined);
    let joins = shown(&s.handle(msg(Some("2"), "2", "room:b", "phx_join"), now));
    assert_eq!(joins, [r#"reply 2 2 room:b error {"reason":"rate limited"}"#]);
    // The join's refusal used the one refusal allowed; 29 messages are left in the burst.
    for i in 0..29 {
        let pushed = shown(&s.handle(msg(Some("1"), &i.to_string(), "room:a", "e"), now));
        assert_eq!(pushed, ["push 1 e"], "message {i} of the burst");
    }
    let over = shown(&s.handle(msg(Some("1"), "x", "room:a", "e"), now));
    assert_eq!(over, ["close 1008 rate limit exceeded"]);
}

#[test]
fn an_undecodable_frame_closes_with_1007() {
    let s = state_with(1, RATES_OFF, Instant::now());
    let effects = s.undecodable(&DecodeError::NotObject);
    assert!(matches!(effects.as_slice(), [Effect::Close(1007, _)]), "{effects:?}");
}
