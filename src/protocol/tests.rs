//! Wire-format cases, one line each: what the client sends or the server writes, as on the wire.

use serde_json::json;

use super::*;

/// `(join_ref, ref, topic, event)` of a decoded message, or a fragment of the error text.
type Expected<'a> = Result<(Option<&'a str>, Option<&'a str>, &'a str, &'a str), &'a str>;

fn check_v2_decode(text: &str, expected: Expected<'_>) {
    let got = Vsn::V2.decode(Inbound::Text(text));
    match (got, expected) {
        (Ok(m), Ok((jr, r, topic, event))) => {
            assert_eq!(
                (m.join_ref.as_deref(), m.ref_.as_deref(), m.topic.as_str(), m.event.as_str()),
                (jr, r, topic, event),
                "{text}"
            );
        }
        (Err(e), Err(expected)) => assert!(e.to_string().contains(expected), "{text}: {e}"),
        (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
    }
}

#[test]
fn v2_decode() {
    check_v2_decode(
        r#"["1","1","room:1","phx_join",{}]"#,
        Ok((Some("1"), Some("1"), "room:1", "phx_join")),
    );
    check_v2_decode(
        r#"[null,"5","phoenix","heartbeat",{}]"#,
        Ok((None, Some("5"), "phoenix", "heartbeat")),
    );
    check_v2_decode(r#"["1","2","t","e",{},"extra"]"#, Ok((Some("1"), Some("2"), "t", "e")));
    check_v2_decode(r#"[1,2,"t","e",{}]"#, Ok((Some("1"), Some("2"), "t", "e")));
    check_v2_decode("not json", Err("invalid JSON"));
    check_v2_decode(r#"{"topic":"t"}"#, Err("expected [join_ref, ref, topic, event, payload]"));
    check_v2_decode(r#"["1","1","t","e"]"#, Err("expected [join_ref"));
    check_v2_decode(r#"["1","1",7,"e",{}]"#, Err("topic must be a string"));
    check_v2_decode(r#"["1","1","t",null,{}]"#, Err("event must be a string"));
    check_v2_decode(r#"[{},"1","t","e",{}]"#, Err("join_ref must be a string or null"));
}

#[test]
fn v1_decode() {
    let m = Vsn::V1
        .decode(Inbound::Text(r#"{"topic":"t","event":"e","payload":{"a":1},"ref":"3"}"#))
        .unwrap();
    assert_eq!(
        (m.join_ref, m.ref_.as_deref(), m.payload),
        (None, Some("3"), Payload::Json(json!({"a":1})))
    );
    assert_eq!(
        Vsn::V1.decode(Inbound::Text(r#"{"topic":"t","event":"e","ref":"3"}"#)),
        Err(DecodeError::NotObject)
    );
    assert_eq!(
        Vsn::V1.decode(Inbound::Binary(&[0, 0, 0, 0, 0])),
        Err(DecodeError::BinaryUnsupported)
    );
}

fn check_encode(vsn: Vsn, out: Outgoing<'_>, expected: serde_json::Value) {
    let Some(Encoded::Text(text)) = vsn.encode(&out) else { panic!("expected text") };
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn v2_encode() {
    let p = Payload::Json(json!({"body": "hi"}));
    let empty = Payload::empty();
    check_encode(
        Vsn::V2,
        Outgoing::broadcast("room:1", "new_msg", &p),
        json!([null, null, "room:1", "new_msg", {"body": "hi"}]),
    );
    check_encode(
        Vsn::V2,
        Outgoing::push(Some("3"), "room:1", "hydrate", &p),
        json!(["3", null, "room:1", "hydrate", {"body": "hi"}]),
    );
    check_encode(
        Vsn::V2,
        Outgoing::reply(None, Some("7"), "phoenix", "ok", &empty),
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
    );
    check_encode(
        Vsn::V2,
        Outgoing::control("3", "room:1", EVENT_CLOSE, &empty),
        json!(["3", "3", "room:1", "phx_close", {}]),
    );
    check_encode(
        Vsn::V2,
        Outgoing::push(Some("3"), "t\"q", "e", &empty),
        json!(["3", null, "t\"q", "e", {}]),
    );
}

#[test]
fn v1_encode_has_no_join_ref() {
    let empty = Payload::empty();
    check_encode(
        Vsn::V1,
        Outgoing::reply(Some("1"), Some("1"), "room:1", "ok", &empty),
        json!({"topic": "room:1", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "1"}),
    );
    assert_eq!(Vsn::V1.encode(&Outgoing::broadcast("t", "e", &Payload::Binary(vec![1]))), None);
}

/// A pre-encoded payload is written verbatim, and gives the same bytes as the value it encodes,
/// in pushes, broadcasts and replies, over both serializers.
#[test]
fn json_text_payload_is_spliced_verbatim() {
    let value = json!({"superhero": {"id": 1, "name": "Ann \"Q\" Lee"}, "message_id": "m"});
    let json = Payload::Json(value.clone());
    let text = Payload::from(JsonText::encode(&value).unwrap());
    assert_eq!(text.as_json(), None);
    let outs = |p| {
        [
            Outgoing::push(Some("3"), "superheroes:lobby", "update", p),
            Outgoing::broadcast("room:1", "e", p),
            Outgoing::reply(Some("3"), Some("4"), "room:1", "ok", p),
        ]
    };
    for vsn in Vsn::ALL {
        for (a, b) in outs(&json).iter().zip(outs(&text).iter()) {
            assert_eq!(vsn.encode(a), vsn.encode(b), "{vsn:?}");
        }
    }
    check_encode(
        Vsn::V2,
        Outgoing::push(Some("3"), "superheroes:lobby", "update", &text),
        json!(["3", null, "superheroes:lobby", "update", value]),
    );
    check_encode(
        Vsn::V1,
        Outgoing::reply(None, Some("4"), "room:1", "error", &text),
        json!({"topic": "room:1", "event": "phx_reply", "ref": "4",
               "payload": {"status": "error", "response": value}}),
    );
}

/// Both serializers write keys in a fixed order, byte for byte, as clients and captures expect.
#[test]
fn encodings_are_byte_exact() {
    let p = Payload::Json(json!({"b": 1, "a": "x"}));
    let text = |e: Option<Encoded>| match e {
        Some(Encoded::Text(t)) => t,
        other => panic!("expected text, got {other:?}"),
    };
    assert_eq!(
        text(Vsn::V2.encode(&Outgoing::reply(Some("1"), Some("2"), "r:1", "ok", &p))),
        r#"["1","2","r:1","phx_reply",{"response":{"a":"x","b":1},"status":"ok"}]"#
    );
    assert_eq!(
        text(Vsn::V1.encode(&Outgoing::push(Some("1"), "r:1", "e\n", &p))),
        r#"{"event":"e\n","payload":{"a":"x","b":1},"ref":null,"topic":"r:1"}"#
    );
}

#[test]
fn v2_binary_round_trip() {
    let frame = [&[0u8, 1, 1, 4, 3][..], b"12room", b"evt", &[9, 9]].concat();
    let m = Vsn::V2.decode(Inbound::Binary(&frame)).unwrap();
    assert_eq!(
        (m.join_ref.as_deref(), m.ref_.as_deref(), m.topic.as_str(), m.event.as_str()),
        (Some("1"), Some("2"), "room", "evt")
    );
    assert_eq!(m.payload, Payload::Binary(vec![9, 9]));
    assert!(Vsn::V2.decode(Inbound::Binary(&[0, 5, 0, 0, 0, b'x'])).is_err());
    assert!(Vsn::V2.decode(Inbound::Binary(&[1, 0, 0, 0, 0])).is_err());

    let bin = Payload::Binary(vec![7]);
    assert_eq!(
        Vsn::V2.encode(&Outgoing::broadcast("t", "e", &bin)),
        Some(Encoded::Binary(vec![2, 1, 1, b't', b'e', 7]))
    );
    assert_eq!(
        Vsn::V2.encode(&Outgoing::push(Some("1"), "t", "e", &bin)),
        Some(Encoded::Binary(vec![0, 1, 1, 1, b'1', b't', b'e', 7]))
    );
    assert_eq!(
        Vsn::V2.encode(&Outgoing::reply(Some("1"), Some("2"), "t", "ok", &bin)),
        Some(Encoded::Binary([&[1u8, 1, 1, 1, 2][..], b"12tok", &[7]].concat()))
    );
}

#[test]
fn vsn_negotiation() {
    for (vsn, expected) in [
        (None, Some(Vsn::V1)),
        (Some("1.0.0"), Some(Vsn::V1)),
        (Some("2.0.0"), Some(Vsn::V2)),
        (Some("2.0.7"), Some(Vsn::V2)),
        (Some("2.1.0"), None),
        (Some("3.0.0"), None),
        (Some("two"), None),
        (Some("2.0"), None),
    ] {
        assert_eq!(Vsn::negotiate(vsn), expected, "{vsn:?}");
    }
}

#[test]
fn frames() {
    assert_eq!(frame::encode(frame::OpCode::Text, b"hi"), vec![0x81, 2, b'h', b'i']);
    let big = frame::encode(frame::OpCode::Binary, &[0; 300]);
    assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
    let huge = frame::encode(frame::OpCode::Text, &vec![0; 70_000]);
    assert_eq!(&huge[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    let close = frame::close(1012, &"é".repeat(100));
    assert_eq!(close[1] as usize, close.len() - 2);
    assert!(close.len() - 2 <= 125);
    assert!(std::str::from_utf8(&close[4..]).is_ok());
}
