//! Verifies JSON Web Tokens signed with HS256 (RFC 7519, RFC 7515 compact form), checking `exp`
//! and `nbf` (RFC 7519 §4.1.4–4.1.5, no leeway). Only HS256 is accepted, whatever the header
//! says, so a token cannot pick `none` or another key type (the "alg confusion" attacks).
//! Pure; the claims object is returned whole and becomes the socket's assigns.

use serde_json::{Map, Value};

use super::{Alg, TokenError, b64url};

pub struct Jwt {
    secret: Vec<u8>,
}

impl Jwt {
    pub fn new(secret: &[u8]) -> Jwt {
        Jwt { secret: secret.to_vec() }
    }

    /// The claims, if the signature is ours and `now_s` is within `nbf..exp`.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Map<String, Value>, TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(TokenError::Malformed);
        };
        let header: Value = json(&b64url(header)?)?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(TokenError::UnsupportedAlg);
        }
        let signed_part = &token[..header_len(token)];
        if !Alg::Sha256.verify(&self.secret, signed_part.as_bytes(), &b64url(signature)?) {
            return Err(TokenError::BadSignature);
        }
        let Value::Object(claims) = json(&b64url(claims)?)? else {
            return Err(TokenError::BadData("claims are not a JSON object"));
        };
        check_times(&claims, now_s)?;
        Ok(claims)
    }
}

/// Length of `header.claims` (everything before the last dot).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn json(bytes: &[u8]) -> Result<Value, TokenError> {
    serde_json::from_slice(bytes).map_err(|_| TokenError::BadData("not JSON"))
}

/// `exp`: valid strictly before it; `nbf`: valid from it on. Both NumericDate (seconds,
/// fractions allowed); a claim of another type is refused rather than ignored.
fn check_times(claims: &Map<String, Value>, now_s: i64) -> Result<(), TokenError> {
    let now = now_s as f64;
    let time = |name: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(TokenError::BadData(name)),
    };
    if time("exp")?.is_some_and(|exp| now >= exp) {
        return Err(TokenError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| now < nbf) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}
