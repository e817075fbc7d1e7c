//! Signed tokens for the connect callback: Phoenix.Token (`phoenix_token.rs`, over the Erlang
//! term decoder `etf.rs`) and JWT HS256 (`jwt.rs`). Pure: a `Verifier` is built once from the
//! configuration and turns a token into the data it carries, or into a `TokenError` whose
//! text is the refusal's reason (logged, and the body of the 403).
//!
//! A token is tried as a JWT when its first part is a JSON header (`eyJ...`), else as a
//! Phoenix.Token; only the kinds whose secret is configured are accepted.

pub mod etf;
pub mod jwt;
pub mod phoenix_token;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;

/// Token settings (flags `--secret-key-base`, `--token-salt`, `--token-max-age`,
/// `--jwt-secret`). No secret: no verification, and the app accepts anonymous connects.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The Phoenix app's `secret_key_base` (at least 20 bytes, as Phoenix.Token requires).
    pub secret_key_base: Option<String>,
    /// `Phoenix.Token.sign(endpoint, salt, data)`'s salt.
    pub token_salt: String,
    /// Phoenix tokens older than this are expired (`Phoenix.Token.verify`'s `max_age`).
    pub token_max_age: Duration,
    /// The HS256 key of JWTs (at least 32 bytes: RFC 7518 §3.2).
    pub jwt_secret: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            secret_key_base: None,
            token_salt: "user socket".to_string(),
            token_max_age: Duration::from_secs(86_400),
            jwt_secret: None,
        }
    }
}

impl fmt::Debug for AuthConfig {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("AuthConfig")
            .field("secret_key_base", &set(&self.secret_key_base))
            .field("token_salt", &self.token_salt)
            .field("token_max_age", &self.token_max_age)
            .field("jwt_secret", &set(&self.jwt_secret))
            .finish()
    }
}

/// The key LongPoll session tokens are signed with (`socket::longpoll`). Every node of a
/// cluster must hold the same one, so that a poll any node receives can be verified there and
/// routed to the session's node. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct LongPollKey(pub [u8; 32]);

impl fmt::Debug for LongPollKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongPollKey(<set>)")
    }
}

/// Shortest `--longpoll-secret`: HMAC-SHA256's own key size.
pub const MIN_LONGPOLL_SECRET: usize = 32;

/// The LongPoll key: from `--longpoll-secret` if set, else from `--secret-key-base`; `None`
/// when neither is configured (then a cluster's nodes take the secret their database holds,
/// `longpoll_key_from_shared`, and a single node draws a random key of its own).
pub fn longpoll_key(longpoll_secret: Option<&str>, config: &AuthConfig) -> Option<LongPollKey> {
    let secret = longpoll_secret.or(config.secret_key_base.as_deref())?;
    Some(longpoll_key_from_shared(secret.as_bytes()))
}

/// The LongPoll key derived from any shared secret, as HMAC(secret, label) rather than the
/// secret itself, so that a token of one kind can never pass for another (a LongPoll
/// signature is no Phoenix.Token signature).
pub fn longpoll_key_from_shared(secret: &[u8]) -> LongPollKey {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"phx-threads longpoll session token v1");
    LongPollKey(mac.finalize().into_bytes().into())
}

/// Why a token was refused; the text is what the client and the log see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    UnsupportedAlg,
    BadSignature,
    Expired,
    NotYetValid,
    SignedInFuture,
    /// No secret is configured for this kind of token.
    KindNotEnabled(&'static str),
    BadData(&'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Missing => f.write_str("token missing"),
            TokenError::Malformed => f.write_str("token malformed"),
            TokenError::UnsupportedAlg => f.write_str("token algorithm not accepted (HS256 only)"),
            TokenError::BadSignature => f.write_str("token signature invalid"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not yet valid (nbf)"),
            TokenError::SignedInFuture => f.write_str("token signed in the future"),
            TokenError::KindNotEnabled(kind) => write!(f, "{kind} tokens are not accepted here"),
            TokenError::BadData(why) => write!(f, "token data invalid: {why}"),
        }
    }
}

/// The verifiers the configuration enables.
pub struct Verifier {
    phoenix: Option<phoenix_token::PhoenixToken>,
    jwt: Option<jwt::Jwt>,
}

/// What a valid token carries: a Phoenix.Token's data (any term), or a JWT's claims.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    Phoenix(Value),
    Jwt(serde_json::Map<String, Value>),
}

impl Verifier {
    /// `Ok(None)` when no secret is configured; an error for a secret too short to be safe.
    pub fn new(config: &AuthConfig) -> Result<Option<Verifier>, String> {
        let phoenix = match &config.secret_key_base {
            Some(s) if s.len() < 20 => {
                return Err("--secret-key-base must be at least 20 bytes".into());
            }
            Some(s) => Some(phoenix_token::PhoenixToken::new(
                s.as_bytes(),
                config.token_salt.as_bytes(),
                config.token_max_age.as_secs(),
            )),
            None => None,
        };
        let jwt = match &config.jwt_secret {
            Some(s) if s.len() < 32 => return Err("--jwt-secret must be at least 32 bytes".into()),
            Some(s) => Some(jwt::Jwt::new(s.as_bytes())),
            None => None,
        };
        Ok((phoenix.is_some() || jwt.is_some()).then_some(Verifier { phoenix, jwt }))
    }

    pub fn verify(&self, token: Option<&str>) -> Result<Verified, TokenError> {
        self.verify_at(token, SystemTime::now())
    }

    pub fn verify_at(&self, token: Option<&str>, now: SystemTime) -> Result<Verified, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if token.starts_with("eyJ") {
            let jwt = self.jwt.as_ref().ok_or(TokenError::KindNotEnabled("JWT"))?;
            return jwt.verify(token, now_ms / 1000).map(Verified::Jwt);
        }
        let phoenix = self.phoenix.as_ref().ok_or(TokenError::KindNotEnabled("Phoenix"))?;
        phoenix.verify(token, now_ms).map(Verified::Phoenix)
    }
}

/// Strict unpadded base64url, the encoding of every token part.
fn b64url(part: &str) -> Result<Vec<u8>, TokenError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)
}

/// The HMAC digests a signed token may name.
#[derive(Clone, Copy)]
enum Alg {
    Sha256,
    Sha384,
    Sha512,
}

impl Alg {
    /// Constant-time comparison of `signature` with the MAC of `input` (hmac's `verify_slice`).
    fn verify(self, key: &[u8], input: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8], sig: &[u8]) -> bool {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("any key size");
            mac.update(input);
            mac.verify_slice(sig).is_ok()
        }
        match self {
            Alg::Sha256 => check::<Hmac<sha2::Sha256>>(key, input, signature),
            Alg::Sha384 => check::<Hmac<sha2::Sha384>>(key, input, signature),
            Alg::Sha512 => check::<Hmac<sha2::Sha512>>(key, input, signature),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against tests/it/vectors/tokens.json, produced by an independent implementation of
    //! Phoenix.Token and JWT (tests/it/vectors/gen_tokens.py documents how).
    use super::*;
    use serde_json::json;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/it/vectors/tokens.json")).unwrap()
    }

    fn verifier(v: &Value) -> Verifier {
        let config = AuthConfig {
            secret_key_base: Some(v["secret_key_base"].as_str().unwrap().into()),
            jwt_secret: Some(v["jwt_secret"].as_str().unwrap().into()),
            ..AuthConfig::default()
        };
        Verifier::new(&config).unwrap().unwrap()
    }

    /// `signed_at` of the Phoenix vectors plus `secs`.
    fn at(v: &Value, secs: i64) -> SystemTime {
        let ms = v["signed_at_ms"].as_i64().unwrap() + secs * 1000;
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    }

    #[test]
    fn phoenix_tokens_verify_with_their_data() {
        let v = vectors();
        let verifier = verifier(&v);
        for kind in ["integer", "binary", "map"] {
            let token = v["phoenix"][kind]["token"].as_str();
            let data = verifier.verify_at(token, at(&v, 3600)).unwrap();
            assert_eq!(data, Verified::Phoenix(v["phoenix"][kind]["data"].clone()), "{kind}");
        }
    }

    /// tests/it/vectors/erlang_tokens.json was minted by Erlang/OTP 25 itself
    /// (`phoenix_token.escript`: the real `term_to_binary`, `crypto:pbkdf2_hmac`, `crypto:mac`).
    #[test]
    fn tokens_minted_by_erlang_verify() {
        let v = vectors();
        let erlang: Value =
            serde_json::from_str(include_str!("../../tests/it/vectors/erlang_tokens.json"))
                .unwrap();
        // The independent Python encoder wrote exactly what Erlang writes.
        assert_eq!(erlang["integer"], v["phoenix"]["integer"]["token"]);
        assert_eq!(erlang["binary"], v["phoenix"]["binary"]["token"]);
        let data = verifier(&v).verify_at(erlang["map_erlang"].as_str(), at(&v, 60)).unwrap();
        assert_eq!(data, Verified::Phoenix(v["phoenix"]["map"]["data"].clone()));
    }

    #[test]
    fn phoenix_tokens_refused() {
        let v = vectors();
        let verifier = verifier(&v);
        let token = v["phoenix"]["integer"]["token"].as_str();
        assert_eq!(verifier.verify_at(token, at(&v, 86_401)), Err(TokenError::Expired));
        assert!(verifier.verify_at(token, at(&v, 86_399)).is_ok());
        assert_eq!(verifier.verify_at(token, at(&v, -60)), Err(TokenError::SignedInFuture));
        for bad in ["wrong_salt", "wrong_secret", "tampered"] {
            let token = v["phoenix"][bad].as_str();
            assert_eq!(
                verifier.verify_at(token, at(&v, 1)),
                Err(TokenError::BadSignature),
                "{bad}"
            );
        }
        assert_eq!(verifier.verify_at(Some("SFMyNTY.x"), at(&v, 1)), Err(TokenError::Malformed));
        assert_eq!(verifier.verify_at(None, at(&v, 1)), Err(TokenError::Missing));
    }

    #[test]
    fn jwt_tokens() {
        let v = vectors();
        let verifier = verifier(&v);
        let now = SystemTime::now();
        let valid = verifier.verify_at(v["jwt"]["valid"]["token"].as_str(), now).unwrap();
        let Verified::Jwt(claims) = valid else { panic!("a JWT") };
        assert_eq!(Value::Object(claims), v["jwt"]["valid"]["claims"]);
        let refused = |name: &str| verifier.verify_at(v["jwt"][name].as_str(), now).unwrap_err();
        assert_eq!(refused("expired"), TokenError::Expired);
        assert_eq!(refused("not_yet_valid"), TokenError::NotYetValid);
        assert_eq!(refused("wrong_secret"), TokenError::BadSignature);
        assert_eq!(refused("tampered"), TokenError::BadSignature);
        assert_eq!(refused("alg_none"), TokenError::UnsupportedAlg);
    }

    #[test]
    fn only_configured_kinds_and_safe_secrets() {
        let v = vectors();
        let jwt_only = AuthConfig { jwt_secret: Some("k".repeat(32)), ..AuthConfig::default() };
        let verifier = Verifier::new(&jwt_only).unwrap().unwrap();
        let token = v["phoenix"]["integer"]["token"].as_str();
        assert_eq!(verifier.verify(token), Err(TokenError::KindNotEnabled("Phoenix")));
        assert!(Verifier::new(&AuthConfig::default()).unwrap().is_none());
        let short = AuthConfig { secret_key_base: Some("short".into()), ..AuthConfig::default() };
        assert!(Verifier::new(&short).is_err());
        assert_eq!(json!(TokenError::Expired.to_string()), json!("token expired"));
    }
}
