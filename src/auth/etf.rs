//! A decoder for the Erlang External Term Format (`:erlang.term_to_binary/1`), limited to the
//! terms a Phoenix.Token carries, into JSON. Pure; bounded in depth and in what it allocates
//! (every count is checked against the bytes left before anything is reserved).
//!
//! The JSON mapping (README, "Signed tokens"):
//! - binary → string (UTF-8), or `{"base64": "..."}` when it is not valid UTF-8;
//! - integer (small, 32-bit, big) → number; a big integer outside ±2^64 → decimal string;
//! - float → number (NaN/infinity cannot be encoded by Erlang);
//! - atom → string, except `true`/`false` → boolean and `nil` → null;
//! - list → array (a charlist stays an array of integers, as Erlang has no way to tell);
//!   an improper list's tail becomes its last element;
//! - tuple → array;
//! - map → object; keys that are not binaries or atoms are written as their JSON text.
//!
//! Refused (with a reason): compressed terms, pids, ports, references, funs, bit strings that
//! are not whole bytes, nesting deeper than `MAX_DEPTH`.

use serde_json::{Map, Number, Value};

/// Deeper terms are refused: a token's data is a user id or a small map.
pub const MAX_DEPTH: usize = 32;

const VERSION: u8 = 131;
const LATIN1: bool = true;
const UTF8: bool = false;

/// Why a term could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtfError(pub &'static str);

impl std::fmt::Display for EtfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad term: {}", self.0)
    }
}

/// Decodes a whole `term_to_binary` output (version byte first, nothing after the term).
pub fn decode(bytes: &[u8]) -> Result<Value, EtfError> {
    let mut reader = Reader { bytes, at: 0 };
    if reader.u8()? != VERSION {
        return Err(EtfError("not version 131"));
    }
    let term = reader.term(0)?;
    if reader.at != bytes.len() {
        return Err(EtfError("trailing bytes"));
    }
    Ok(term)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(EtfError("truncated"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, EtfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, EtfError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }

    fn u32(&mut self) -> Result<usize, EtfError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    /// A count of `n` items of at least `min_bytes` each must fit in what is left.
    fn count(&self, n: usize, min_bytes: usize) -> Result<usize, EtfError> {
        match n.checked_mul(min_bytes) {
            Some(need) if need <= self.bytes.len() - self.at => Ok(n),
            _ => Err(EtfError("count larger than the term")),
        }
    }

    fn term(&mut self, depth: usize) -> Result<Value, EtfError> {
        if depth > MAX_DEPTH {
            return Err(EtfError("nested too deeply"));
        }
        match self.u8()? {
            97 => Ok(Value::from(self.u8()?)),
            98 => Ok(Value::from(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))),
            110 => {
                let n = self.u8()? as usize;
                self.big(n)
            }
            111 => {
                let n = self.u32()?;
                self.big(n)
            }
            70 => self.float(),
            100 => {
                let n = self.u16()?;
                self.atom(n, LATIN1)
            }
            118 => {
                let n = self.u16()?;
                self.atom(n, UTF8)
            }
            115 => {
                let n = self.u8()? as usize;
                self.atom(n, LATIN1)
            }
            119 => {
                let n = self.u8()? as usize;
                self.atom(n, UTF8)
            }
            109 => {
                let n = self.u32()?;
                Ok(binary(self.take(n)?))
            }
            77 => self.bit_binary(),
            107 => {
                let n = self.u16()?;
                Ok(Value::Array(self.take(n)?.iter().map(|&b| Value::from(b)).collect()))
            }
            106 => Ok(Value::Array(Vec::new())),
            108 => self.list(depth),
            104 => {
                let n = self.u8()? as usize;
                self.items(n, depth)
            }
            105 => {
                let n = self.u32()?;
                self.items(n, depth)
            }
            116 => self.map(depth),
            80 => Err(EtfError("compressed terms are not accepted")),
            _ => Err(EtfError("unsupported term type")),
        }
    }

    /// `SMALL_BIG_EXT`/`LARGE_BIG_EXT`: sign byte, then `n` little-endian digit bytes.
    fn big(&mut self, n: usize) -> Result<Value, EtfError> {
        let negative = self.u8()? != 0;
        let digits = self.take(n)?;
        let significant = digits.iter().rposition(|&d| d != 0).map_or(0, |i| i + 1);
        if significant > 16 {
            return Err(EtfError("integer larger than 128 bits"));
        }
        let magnitude =
            digits[..significant].iter().rev().fold(0u128, |acc, &d| acc << 8 | d as u128);
        Ok(big_value(negative, magnitude))
    }

    fn float(&mut self) -> Result<Value, EtfError> {
        let f = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
        Number::from_f64(f).map(Value::Number).ok_or(EtfError("float is not finite"))
    }

    /// `ATOM_EXT`/`SMALL_ATOM_EXT` names are Latin-1 (each byte is a code point), the UTF-8
    /// tags' are UTF-8.
    fn atom(&mut self, n: usize, latin1: bool) -> Result<Value, EtfError> {
        let bytes = self.take(n)?;
        let name = match latin1 {
            true => bytes.iter().map(|&b| b as char).collect::<String>(),
            false => std::str::from_utf8(bytes).map_err(|_| EtfError("atom not UTF-8"))?.to_owned(),
        };
        Ok(match name.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            _ => Value::String(name),
        })
    }

    fn bit_binary(&mut self) -> Result<Value, EtfError> {
        let n = self.u32()?;
        let bits = self.u8()?;
        let bytes = self.take(n)?;
        if bits != 8 && n > 0 {
            return Err(EtfError("bit strings are not accepted"));
        }
        Ok(binary(bytes))
    }

    fn list(&mut self, depth: usize) -> Result<Value, EtfError> {
        let n = self.u32()?;
        let mut items = match self.items(n, depth)? {
            Value::Array(items) => items,
            _ => unreachable!("items returns an array"),
        };
        match self.term(depth + 1)? {
            Value::Array(tail) if tail.is_empty() => {}
            tail => items.push(tail),
        }
        Ok(Value::Array(items))
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Value, EtfError> {
        let n = self.count(n, 1)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.term(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, depth: usize) -> Result<Value, EtfError> {
        let n = self.u32()?;
        let n = self.count(n, 2)?;
        let mut map = Map::new();
        for _ in 0..n {
            let key = match self.term(depth + 1)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            map.insert(key, self.term(depth + 1)?);
        }
        Ok(Value::Object(map))
    }
}

fn binary(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            serde_json::json!({ "base64": encoded })
        }
    }
}

fn big_value(negative: bool, magnitude: u128) -> Value {
    match (negative, u64::try_from(magnitude), i64::try_from(magnitude)) {
        (false, Ok(n), _) => Value::from(n),
        (true, _, Ok(n)) => Value::from(-n),
        (true, _, _) if magnitude == 1u128 << 63 => Value::from(i64::MIN),
        (true, _, _) => Value::String(format!("-{magnitude}")),
        (false, Err(_), _) => Value::String(magnitude.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Bytes below are what `:erlang.term_to_binary/1` produces for the term in the comment
    /// (ETF tags from the Erlang/OTP "External Term Format" documentation).
    #[test]
    fn scalars() {
        assert_eq!(decode(&[131, 97, 42]).unwrap(), json!(42)); // 42
        assert_eq!(decode(&[131, 98, 255, 255, 255, 255]).unwrap(), json!(-1)); // -1
        // 2^64 - 1 (SMALL_BIG_EXT, 8 digits)
        let max = [131, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255];
        assert_eq!(decode(&max).unwrap(), json!(u64::MAX));
        // -2^64 does not fit: decimal string
        let big = [131, 110, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode(&big).unwrap(), json!("-18446744073709551616"));
        let mut float = vec![131, 70];
        float.extend_from_slice(&1.5f64.to_be_bytes());
        assert_eq!(decode(&float).unwrap(), json!(1.5)); // 1.5
        assert_eq!(decode(&[131, 119, 2, b'o', b'k']).unwrap(), json!("ok")); // :ok
        assert_eq!(decode(&[131, 119, 4, b't', b'r', b'u', b'e']).unwrap(), json!(true));
        assert_eq!(decode(&[131, 119, 3, b'n', b'i', b'l']).unwrap(), json!(null));
        assert_eq!(decode(&[131, 115, 2, b'o', 0xe9]).unwrap(), json!("oé")); // Latin-1 :"oé"
        assert_eq!(decode(&[131, 100, 0, 2, b'o', b'k']).unwrap(), json!("ok"));
        assert_eq!(decode(&[131, 109, 0, 0, 0, 2, b'h', b'i']).unwrap(), json!("hi"));
        assert_eq!(decode(&[131, 109, 0, 0, 0, 1, 0xff]).unwrap(), json!({"base64": "/w=="}));
    }

    #[test]
    fn containers() {
        // %{"id" => 7, role: :admin}
        let map = [
            131, 116, 0, 0, 0, 2, 109, 0, 0, 0, 2, b'i', b'd', 97, 7, 119, 4, b'r', b'o', b'l',
            b'e', 119, 5, b'a', b'd', b'm', b'i', b'n',
        ];
        assert_eq!(decode(&map).unwrap(), json!({"id": 7, "role": "admin"}));
        // {1, [2, 3]} — [2, 3] is STRING_EXT, as Erlang writes small-integer lists
        let tuple = [131, 104, 2, 97, 1, 107, 0, 2, 2, 3];
        assert_eq!(decode(&tuple).unwrap(), json!([1, [2, 3]]));
        // [1 | 2], an improper list
        assert_eq!(decode(&[131, 108, 0, 0, 0, 1, 97, 1, 97, 2]).unwrap(), json!([1, 2]));
        // %{1 => []}
        assert_eq!(decode(&[131, 116, 0, 0, 0, 1, 97, 1, 106]).unwrap(), json!({"1": []}));
    }

    #[test]
    fn bad_terms_are_refused_cheaply() {
        assert_eq!(decode(&[]), Err(EtfError("truncated")));
        assert_eq!(decode(&[130, 97, 1]), Err(EtfError("not version 131")));
        assert_eq!(decode(&[131, 97, 1, 0]), Err(EtfError("trailing bytes")));
        assert_eq!(
            decode(&[131, 80, 0, 0, 0, 1]).unwrap_err().0,
            "compressed terms are not accepted"
        );
        // a list claiming 4 billion elements in 10 bytes allocates nothing
        let huge = [131, 108, 255, 255, 255, 255, 97, 1, 106];
        assert_eq!(decode(&huge), Err(EtfError("count larger than the term")));
        let mut deep = vec![131];
        deep.extend(std::iter::repeat_n([104, 1], 100).flatten());
        deep.extend([97, 1]);
        assert_eq!(decode(&deep), Err(EtfError("nested too deeply")));
        // a fun (NEW_FUN_EXT)
        assert_eq!(decode(&[131, 112, 0, 0, 0, 0]), Err(EtfError("unsupported term type")));
    }
}
