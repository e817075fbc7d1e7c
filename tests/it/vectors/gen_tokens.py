#!/usr/bin/env python3
"""Generates tokens.json: Phoenix.Token and JWT HS256 test vectors, written independently of
the Rust code (Python's hashlib/hmac and a hand-written :erlang.term_to_binary).

Phoenix.Token.sign(key_base, salt, data, signed_at: s) is, per plug_crypto (Plug.Crypto.sign,
KeyGenerator, MessageVerifier):
  key   = PBKDF2-HMAC-SHA256(key_base, salt, 1000 iterations, 32 bytes)
  body  = term_to_binary({data, signed_at_ms, max_age_s})
  token = b64u("HS256") . b64u(body) . b64u(HMAC-SHA256(key, b64u("HS256") . b64u(body)))
term_to_binary follows the Erlang "External Term Format" spec as OTP 26 writes it (small
atoms as SMALL_ATOM_UTF8_EXT, integers 0..255 SMALL_INTEGER_EXT, 32-bit INTEGER_EXT, else
SMALL_BIG_EXT; binaries BINARY_EXT; maps MAP_EXT; small-integer lists STRING_EXT).
Run: python3 gen_tokens.py > tokens.json
Checked against Erlang/OTP's own term_to_binary and crypto: phoenix_token.escript mints the
same integer and binary tokens byte for byte (erlang_tokens.json; src/auth/mod.rs tests it).
"""
import base64, hashlib, hmac, json, struct

KEY_BASE = "phx-threads-test-secret-key-base-0123456789abcdef0123456789abcdef"
SALT = "user socket"
JWT_SECRET = "phx-threads-test-jwt-secret-0123456789abcdef"

class Atom(str): pass
class Tuple(tuple): pass

def etf(t):
    if isinstance(t, bool) or t is None:
        return etf(Atom({True: "true", False: "false", None: "nil"}[t]))
    if isinstance(t, Atom):
        b = t.encode(); return bytes([119, len(b)]) + b
    if isinstance(t, int):
        if 0 <= t <= 255: return bytes([97, t])
        if -2**31 <= t < 2**31: return bytes([98]) + struct.pack(">i", t)
        mag = abs(t); digits = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
        return bytes([110, len(digits), 1 if t < 0 else 0]) + digits
    if isinstance(t, float): return bytes([70]) + struct.pack(">d", t)
    if isinstance(t, (str, bytes)):
        b = t.encode() if isinstance(t, str) else t
        return bytes([109]) + struct.pack(">I", len(b)) + b
    if isinstance(t, Tuple):
        return bytes([104, len(t)]) + b"".join(etf(x) for x in t)
    if isinstance(t, list):
        if not t: return bytes([106])
        if all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in t):
            return bytes([107]) + struct.pack(">H", len(t)) + bytes(t)
        return bytes([108]) + struct.pack(">I", len(t)) + b"".join(etf(x) for x in t) + bytes([106])
    if isinstance(t, dict):
        return bytes([116]) + struct.pack(">I", len(t)) + b"".join(etf(k) + etf(v) for k, v in t.items())
    raise TypeError(t)

def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def phoenix_sign(key_base, salt, data, signed_at_ms, max_age=86400):
    key = hashlib.pbkdf2_hmac("sha256", key_base.encode(), salt.encode(), 1000, 32)
    body = b"\x83" + etf(Tuple((data, signed_at_ms, max_age)))
    signing = b64u(b"HS256") + "." + b64u(body)
    return signing + "." + b64u(hmac.new(key, signing.encode(), hashlib.sha256).digest())

def jwt_sign(secret, claims, alg="HS256"):
    signing = b64u(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64u(json.dumps(claims).encode())
    return signing + "." + b64u(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())

def tamper(token):
    h, p, s = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))); raw[-1] ^= 1
    return h + "." + b64u(bytes(raw)) + "." + s

# 2026-01-01T00:00:00Z, the signing time of every Phoenix vector; tests verify "now" relative to it.
SIGNED_AT = 1767225600000
user_map = {Atom("user_id"): 42, "name": "Zoë", Atom("roles"): [Atom("admin"), Atom("dev")],
            "pair": Tuple((1, b"\xff")), "big": 2**70, "neg": -5, "ok": True, "nothing": None, "ratio": 0.5}
vectors = {
    "secret_key_base": KEY_BASE, "salt": SALT, "jwt_secret": JWT_SECRET, "signed_at_ms": SIGNED_AT,
    "phoenix": {
        "integer": {"token": phoenix_sign(KEY_BASE, SALT, 42, SIGNED_AT), "data": 42},
        "binary": {"token": phoenix_sign(KEY_BASE, SALT, "user-7", SIGNED_AT), "data": "user-7"},
        "map": {"token": phoenix_sign(KEY_BASE, SALT, user_map, SIGNED_AT),
                "data": {"user_id": 42, "name": "Zoë", "roles": ["admin", "dev"], "pair": [1, {"base64": "/w=="}],
                         "big": str(2**70), "neg": -5, "ok": True, "nothing": None, "ratio": 0.5}},
        "wrong_salt": phoenix_sign(KEY_BASE, "other salt", 42, SIGNED_AT),
        "wrong_secret": phoenix_sign(KEY_BASE[::-1], SALT, 42, SIGNED_AT),
        "tampered": tamper(phoenix_sign(KEY_BASE, SALT, 42, SIGNED_AT)),
    },
    "jwt": {
        "valid": {"token": jwt_sign(JWT_SECRET, {"user_id": "u-9", "exp": 4102444800, "nbf": 1700000000}),
                  "claims": {"user_id": "u-9", "exp": 4102444800, "nbf": 1700000000}},
        "expired": jwt_sign(JWT_SECRET, {"user_id": "u-9", "exp": 1700000000}),
        "not_yet_valid": jwt_sign(JWT_SECRET, {"user_id": "u-9", "nbf": 4102444800}),
        "wrong_secret": jwt_sign(JWT_SECRET[::-1], {"user_id": "u-9"}),
        "tampered": tamper(jwt_sign(JWT_SECRET, {"user_id": "u-9"})),
        "alg_none": b64u(b'{"alg":"none"}') + "." + b64u(b'{"user_id":"u-9"}') + ".",
    },
}
print(json.dumps(vectors, indent=2, ensure_ascii=False))
