//! Verifies tokens minted by `Phoenix.Token.sign(endpoint, salt, data)` (phoenix-protocol.md §8;
//! plug_crypto's `Plug.Crypto.sign/4`, `MessageVerifier` and `KeyGenerator`):
//!
//! `base64url("HS256") . base64url(payload) . base64url(HMAC(key, first two parts))`, where
//! `key = PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000 iterations, 32 bytes)` and `payload`
//! is `:erlang.term_to_binary({data, signed_at_ms, max_age_s})` (or the legacy `{data, signed}`
//! and `%{data: _, signed: _}`). Pure; the key is derived once, when the verifier is built.

use serde_json::Value;

use super::{Alg, TokenError, b64url, etf};

/// PBKDF2 parameters of `Plug.Crypto.KeyGenerator` as `Plug.Crypto.sign` calls it.
const ITERATIONS: u32 = 1000;
const KEY_BYTES: usize = 32;

pub struct PhoenixToken {
    key: [u8; KEY_BYTES],
    /// The verifier's `max_age` (Phoenix.Token.verify's option): overrides the token's own.
    max_age_s: u64,
}

impl PhoenixToken {
    pub fn new(secret_key_base: &[u8], salt: &[u8], max_age_s: u64) -> PhoenixToken {
        let mut key = [0u8; KEY_BYTES];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(secret_key_base, salt, ITERATIONS, &mut key);
        PhoenixToken { key, max_age_s }
    }

    /// The token's data, if the signature is ours and it is not older than `max_age`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Value, TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(protected), Some(payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let alg = match b64url(protected)?.as_slice() {
            b"HS256" => Alg::Sha256,
            b"HS384" => Alg::Sha384,
            b"HS512" => Alg::Sha512,
            _ => return Err(TokenError::Malformed),
        };
        let signed_part = &token[..protected.len() + 1 + payload.len()];
        if !alg.verify(&self.key, signed_part.as_bytes(), &b64url(signature)?) {
            return Err(TokenError::BadSignature);
        }
        let (data, signed_at_ms) = unpack(&b64url(payload)?)?;
        self.check_age(signed_at_ms, now_ms)?;
        Ok(data)
    }

    fn check_age(&self, signed_at_ms: i64, now_ms: i64) -> Result<(), TokenError> {
        if signed_at_ms > now_ms {
            return Err(TokenError::SignedInFuture);
        }
        let max_age_ms = i64::try_from(self.max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if max_age_ms == 0 || signed_at_ms.saturating_add(max_age_ms) < now_ms {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// `{data, signed_at_ms, max_age}`, `{data, signed_at_ms}` or `%{data: _, signed: _}` →
/// (data, signed_at_ms). The tag is checked on the bytes: a list and a tuple both decode to a
/// JSON array, and only the tuple is a token.
fn unpack(payload: &[u8]) -> Result<(Value, i64), TokenError> {
    let term = etf::decode(payload).map_err(|e| TokenError::BadData(e.0))?;
    let (data, signed) = match (payload.get(1), term) {
        (Some(104), Value::Array(items)) if (2..=3).contains(&items.len()) => {
            let mut items = items.into_iter();
            (items.next().expect("len checked"), items.next().expect("len checked"))
        }
        (Some(116), Value::Object(mut map)) if map.len() == 2 => {
            let signed = map.remove("signed").ok_or(TokenError::BadData("no signed key"))?;
            (map.remove("data").ok_or(TokenError::BadData("no data key"))?, signed)
        }
        _ => return Err(TokenError::BadData("not a token tuple")),
    };
    let signed = signed.as_i64().ok_or(TokenError::BadData("signed_at is not an integer"))?;
    Ok((data, signed))
}
