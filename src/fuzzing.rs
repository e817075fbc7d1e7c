//! Entry points for the cargo-fuzz targets in `fuzz/` (one function per target): every parser
//! that reads bytes a client controls, called the way the server calls it. Not an API; hidden
//! from the docs. Each function must never panic, whatever `data` is: a panic is a bug the
//! fuzzer reports, and then a regression test (tests/it or the module's unit tests).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::auth::{AuthConfig, Verifier, etf};
use crate::config::Config;
use crate::http::api::{ApiRequest, Method};
use crate::protocol::{Inbound, Vsn};
use crate::socket::transport::{ConnectFn, Connected};
use crate::store::superheroes::{self, Mode};

/// The Phoenix message decoders (V1 and V2, text and binary frames) and the size checks the
/// socket applies next.
pub fn protocol(data: &[u8]) {
    for vsn in [Vsn::V1, Vsn::V2] {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(msg) = vsn.decode(Inbound::Text(text)) {
                let _ = msg.oversized();
            }
        }
        if let Ok(msg) = vsn.decode(Inbound::Binary(data)) {
            let _ = msg.oversized();
        }
    }
}

/// The upgrade request head parser and the whole upgrade decision after it (path, origin,
/// query, vsn, subprotocols and the auth token, the RFC 6455 headers), with the app's
/// connect callback verifying tokens.
pub fn upgrade_head(data: &[u8]) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| Config {
        check_origin: vec!["//*.example.com".into()],
        ..Config::default()
    });
    let Ok(head) = crate::socket::http1::parse(data) else { return };
    let peer: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let _ = crate::socket::transport::upgrade(&head, peer, config, connect());
}

fn connect() -> &'static ConnectFn {
    static CONNECT: OnceLock<ConnectFn> = OnceLock::new();
    CONNECT.get_or_init(|| match verifier() {
        Some(v) => crate::app::connect(Some(v.clone())),
        None => Arc::new(|_| Ok(Connected::default())),
    })
}

fn verifier() -> &'static Option<Arc<Verifier>> {
    static VERIFIER: OnceLock<Option<Arc<Verifier>>> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = AuthConfig {
            secret_key_base: Some("fuzz-secret-key-base-0123456789".into()),
            jwt_secret: Some("fuzz-jwt-secret-0123456789abcdef0123".into()),
            ..AuthConfig::default()
        };
        Verifier::new(&config).expect("valid secrets").map(Arc::new)
    })
}

/// A REST body as the superheroes handlers read it: JSON, the `superhero` object, then cast
/// and validation for create and update.
pub fn rest_body(data: &[u8]) {
    let request = ApiRequest {
        method: Method::Post,
        path: "/api/superheroes".into(),
        headers: Vec::new(),
        body: data.to_vec(),
    };
    let Ok(attrs) = crate::http::handlers::superheroes::superhero_attrs(&request) else { return };
    for mode in [Mode::Create, Mode::Update] {
        if let Ok(params) = superheroes::cast(&attrs, mode) {
            let _ = superheroes::validate(&params, mode);
        }
    }
}

/// A LongPoll request: head, session token against a table of sessions, POSTed lines.
pub fn longpoll(data: &[u8]) {
    static SESSIONS: OnceLock<crate::socket::longpoll::Sessions> = OnceLock::new();
    let sessions = SESSIONS.get_or_init(Default::default);
    crate::socket::longpoll::parse_request(data, sessions, &Config::default());
}

/// The token verifiers (Phoenix.Token, JWT) and the Erlang term decoder on its own (a forged
/// signature never reaches it through the verifier).
pub fn tokens(data: &[u8]) {
    let _ = etf::decode(data);
    if let (Ok(token), Some(verifier)) = (std::str::from_utf8(data), verifier()) {
        let _ = verifier.verify(Some(token));
    }
}

#[cfg(test)]
mod tests {
    /// Replays every committed input of `fuzz/corpus/<target>/` (the seeds, and each input a
    /// fuzzer ever crashed on, kept there as a regression test) without the fuzzer.
    #[test]
    fn the_corpus_replays_without_panics() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 5] = [
            ("protocol", super::protocol),
            ("upgrade_head", super::upgrade_head),
            ("rest_body", super::rest_body),
            ("tokens", super::tokens),
            ("longpoll", super::longpoll),
        ];
        for (name, target) in targets {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            let mut replayed = 0;
            for entry in entries {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                replayed += 1;
            }
            assert!(replayed > 0, "{name} has no corpus");
        }
    }
}
