use serde_json::{Map, Value, json};

use super::*;

const LIMITS: Limits = Limits { max_meta_bytes: 256, max_metas_per_key: 3, max_per_topic: 5 };

fn meta(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn state(replica: &str) -> State {
    State::new(replica.into(), LIMITS)
}

fn keys(s: &State, topic: &str) -> Vec<(String, usize)> {
    s.list(topic).map(|(k, metas)| (k.to_string(), metas.len())).collect()
}

fn refs(changes: &[Presence]) -> Vec<String> {
    changes.iter().map(|p| p.phx_ref.to_string()).collect()
}

#[test]
fn track_adds_a_meta_with_a_unique_ref_and_refuses_a_second_track() {
    let mut s = state("a");
    let one = s.track(1, "room:1", "alice", meta(json!({"online_at": 1}))).unwrap();
    let two = s.track(2, "room:1", "alice", meta(json!({}))).unwrap();
    assert_ne!(one.phx_ref, two.phx_ref);
    assert_eq!(one.phx_ref.len(), 16);
    let decoded: Value = serde_json::from_str(&one.meta).unwrap();
    assert_eq!(decoded, json!({"online_at": 1, "phx_ref": &*one.phx_ref}));
    assert_eq!(keys(&s, "room:1"), [("alice".to_string(), 2)]);
    assert_eq!(s.track(1, "room:1", "alice", meta(json!({}))), Err(PresenceError::AlreadyTracked));
}

#[test]
fn untrack_and_owner_exit_remove_only_that_owners_presences() {
    let mut s = state("a");
    s.track(1, "room:1", "alice", meta(json!({}))).unwrap();
    s.track(1, "room:2", "alice", meta(json!({}))).unwrap();
    s.track(2, "room:1", "bob", meta(json!({}))).unwrap();
    assert_eq!(s.untrack(1, "room:1", "alice").leaves.len(), 1);
    assert!(s.untrack(1, "room:1", "alice").leaves.is_empty());
    let gone = s.untrack_owner(1);
    assert_eq!(gone.leaves.iter().map(|p| &*p.topic).collect::<Vec<_>>(), ["room:2"]);
    assert_eq!(keys(&s, "room:1"), [("bob".to_string(), 1)]);
    assert_eq!(keys(&s, "room:2"), []);
}

#[test]
fn update_is_a_join_with_the_previous_ref_and_a_leave() {
    let mut s = state("a");
    let old = s.track(1, "room:1", "alice", meta(json!({"status": "away"}))).unwrap();
    let changes = s.update(1, "room:1", "alice", meta(json!({"status": "here"}))).unwrap();
    assert_eq!(refs(&changes.leaves), [old.phx_ref.to_string()]);
    let new: Value = serde_json::from_str(&changes.joins[0].meta).unwrap();
    assert_eq!(new["status"], "here");
    assert_eq!(new["phx_ref_prev"], &*old.phx_ref);
    assert_ne!(new["phx_ref"], &*old.phx_ref);
    assert_eq!(s.get_by_key("room:1", "alice").len(), 1);
    assert_eq!(s.update(2, "room:1", "alice", meta(json!({}))), Err(PresenceError::NoPresence));
}

#[test]
fn limits_refuse_with_their_bound() {
    let mut s = state("a");
    let big = meta(json!({"x": "y".repeat(300)}));
    assert_eq!(s.track(1, "t", "k", big), Err(PresenceError::MetaTooLarge(256)));
    for owner in 1..=3 {
        s.track(owner, "t", "k", meta(json!({}))).unwrap();
    }
    assert_eq!(s.track(4, "t", "k", meta(json!({}))), Err(PresenceError::TooManyMetas(3)));
    s.track(4, "t", "k2", meta(json!({}))).unwrap();
    s.track(5, "t", "k3", meta(json!({}))).unwrap();
    assert_eq!(s.track(6, "t", "k4", meta(json!({}))), Err(PresenceError::TopicFull(5)));
    assert!(s.track(6, "other", "k4", meta(json!({}))).is_ok(), "limits are per topic");
}

#[test]
fn merge_adds_unseen_values_and_is_idempotent() {
    let (mut a, mut b) = (state("a"), state("b"));
    a.track(1, "t", "alice", meta(json!({}))).unwrap();
    let delta = a.take_delta();
    assert_eq!(b.merge(&delta).joins.len(), 1);
    assert_eq!(b.merge(&delta), Changes::default(), "a second merge changes nothing");
    assert_eq!(keys(&b, "t"), keys(&a, "t"));
}

#[test]
fn merge_removes_what_the_remote_saw_and_dropped_but_never_re_adds_it() {
    let (mut a, mut b) = (state("a"), state("b"));
    let p = a.track(1, "t", "alice", meta(json!({}))).unwrap();
    let added = a.take_delta();
    b.merge(&added);
    a.untrack(1, "t", "alice");
    let removed = a.take_delta();
    assert_eq!(refs(&b.merge(&removed).leaves), [p.phx_ref.to_string()]);
    assert_eq!(b.merge(&added), Changes::default(), "a late duplicate of the add is ignored");
    assert_eq!(keys(&b, "t"), []);
}

#[test]
fn merge_of_a_remove_before_its_add_leaves_nothing() {
    let (mut a, mut b) = (state("a"), state("b"));
    a.track(1, "t", "alice", meta(json!({}))).unwrap();
    let added = a.take_delta();
    a.untrack_owner(1);
    let removed = a.take_delta();
    b.merge(&removed);
    assert_eq!(b.merge(&added), Changes::default());
    assert!(b.is_empty());
}

#[test]
fn merge_commutes_and_concurrent_adds_survive() {
    let (mut a, mut b) = (state("a"), state("b"));
    a.track(1, "t", "alice", meta(json!({}))).unwrap();
    b.track(2, "t", "alice", meta(json!({}))).unwrap();
    let (da, db) = (a.take_delta(), b.take_delta());
    a.merge(&db);
    b.merge(&da);
    assert_eq!(keys(&a, "t"), [("alice".to_string(), 2)]);
    assert_eq!(keys(&a, "t"), keys(&b, "t"));
    // A remove on one side does not touch the other side's concurrent add.
    a.untrack_owner(1);
    b.merge(&a.take_delta());
    assert_eq!(keys(&b, "t"), [("alice".to_string(), 1)]);
    assert_eq!(&*b.get_by_key("t", "alice")[0].phx_ref, &*keys_ref(&a));
}

fn keys_ref(s: &State) -> String {
    s.get_by_key("t", "alice")[0].phx_ref.to_string()
}

#[test]
fn an_update_replicates_as_one_join_and_one_leave() {
    let (mut a, mut b) = (state("a"), state("b"));
    a.track(1, "t", "alice", meta(json!({"v": 1}))).unwrap();
    b.merge(&a.take_delta());
    a.update(1, "t", "alice", meta(json!({"v": 2}))).unwrap();
    let changes = b.merge(&a.take_delta());
    assert_eq!((changes.joins.len(), changes.leaves.len()), (1, 1));
    let metas = b.get_by_key("t", "alice");
    assert!(metas[0].meta.contains("\"v\":2"), "{metas:?}");
}

#[test]
fn a_snapshot_brings_an_empty_replica_up_to_date_and_drops_stale_values() {
    let (mut a, mut b) = (state("a"), state("b"));
    a.track(1, "t", "alice", meta(json!({}))).unwrap();
    a.track(2, "t", "bob", meta(json!({}))).unwrap();
    b.merge(&a.take_delta());
    a.untrack_owner(2);
    let _lost = a.take_delta();
    b.merge(&a.snapshot());
    assert_eq!(keys(&b, "t"), [("alice".to_string(), 1)]);
}

#[test]
fn context_compacts_contiguous_dots() {
    let mut c = Context::default();
    let dot = |n| Dot { replica: "a".into(), clock: n };
    c.add(dot(2));
    assert!(c.contains(&dot(2)) && !c.contains(&dot(1)));
    c.add(dot(1));
    assert_eq!((c.vv.get("a").copied(), c.cloud.len()), (Some(2), 0));
}

#[test]
fn a_snapshot_carries_only_its_own_presences_and_touches_no_third_view() {
    let (mut a, mut b, mut c) = (state("a"), state("b"), state("c"));
    a.track(1, "t", "alice", meta(json!({}))).unwrap();
    let from_a = a.take_delta();
    b.merge(&from_a);
    c.merge(&from_a);
    b.track(2, "t", "bob", meta(json!({}))).unwrap();
    let snapshot = b.snapshot();
    let replicas: Vec<&str> = snapshot.values.keys().map(|d| &*d.replica).collect();
    assert_eq!(replicas, ["b"], "b's transfer holds b's presences only");
    // c then misses alice's leave: b's transfer must neither remove nor restore her there.
    a.untrack_owner(1);
    b.merge(&a.take_delta());
    assert_eq!(c.merge(&b.snapshot()).joins.len(), 1);
    assert_eq!(keys(&c, "t"), [("alice".to_string(), 1), ("bob".to_string(), 1)]);
    assert_eq!(c.digest("a"), (1, 1), "c's view of a is a's business");
}

#[test]
fn a_transfer_covering_more_dots_than_are_held_removes_the_same_values() {
    let (mut a, mut b) = (state("a"), state("b"));
    for owner in 1..=4 {
        a.track(owner, "t", &format!("k{owner}"), meta(json!({}))).unwrap();
    }
    b.merge(&a.take_delta());
    for round in 0..20 {
        a.update(1, "t", "k1", meta(json!({ "round": round }))).unwrap();
    }
    a.untrack_owner(2);
    let _lost = a.take_delta();
    // 24 dots seen against 4 held: the merge scans what it holds instead of every dot.
    let changes = b.merge(&a.snapshot());
    assert_eq!((changes.joins.len(), changes.leaves.len()), (1, 2));
    assert_eq!(keys(&b, "t"), keys(&a, "t"));
    assert_eq!(b.digest("a"), a.digest("a"));
}

/// Remote presences are not listed under their (shared) owner: that list held every remote
/// presence, and each remote leave scanned it (quadratic in a node's `bye`).
#[test]
fn remote_presences_are_not_indexed_by_owner_and_still_leave() {
    use crate::presence::replication::WireDelta;
    let (mut a, mut b) = (state("a"), state("b"));
    for i in 0..3 {
        a.track(i + 1, "t", &format!("u{i}"), meta(json!({}))).unwrap();
    }
    let wire = WireDelta::from(&a.take_delta()).into_delta().expect("readable");
    assert_eq!(b.merge(&wire).joins.len(), 3);
    assert!(b.owners.is_empty(), "remote presences indexed by owner: {:?}", b.owners.keys());
    a.untrack(2, "t", "u1");
    let wire = WireDelta::from(&a.take_delta()).into_delta().expect("readable");
    assert_eq!(refs(&b.merge(&wire).leaves).len(), 1);
    assert_eq!(b.remove_replica("a").leaves.len(), 2);
    assert_eq!(keys(&b, "t"), []);
}

/// `add` keeps the context compact by itself: any order of adds gives what `compact` gives.
#[test]
fn adding_dots_in_any_order_gives_the_compacted_context() {
    let dot = |r: &str, clock| Dot { replica: r.into(), clock };
    let orders: [&[u64]; 4] = [&[1, 2, 3, 5], &[5, 3, 2, 1], &[2, 5, 1, 3], &[3, 1, 5, 2, 2]];
    for order in orders {
        let mut context = Context::default();
        for &c in order {
            context.add(dot("a", c));
        }
        context.add(dot("b", 7));
        let cloud = [dot("a", 5), dot("b", 7)].into_iter().collect();
        let expected = Context::from_parts([("a".into(), 3)].into_iter().collect(), cloud);
        assert_eq!(context, expected, "order {order:?}");
    }
}
