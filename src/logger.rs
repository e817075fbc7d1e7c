//! A small stderr logger for the `log` facade, level from `RUST_LOG` (`error`, `warn`, `info`,
//! `debug`, `trace`; default `info`). Two formats (`--log-format`): `text`, `TS LEVEL target:
//! message key=value…`, and `json`, one object per line with `ts`, `level`, `target`, `msg` and
//! the record's key-value fields. One `write` per line so lines from different threads never
//! interleave.
//!
//! What reaches a line: never a payload, a token or a query string at info level or above
//! (REST lines show the path only; connect params and `authToken` are never logged); client
//! text only through `shown`.

use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("not a log format: {s} (text or json)")),
        }
    }
}

static FORMAT: AtomicU8 = AtomicU8::new(0);
/// The level of the per-connection close summary (`--log-closes`), as `Level as usize`.
static CLOSES: AtomicUsize = AtomicUsize::new(Level::Debug as usize);

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let line = match format() {
            Format::Text => text_line(&now, record),
            Format::Json => json_line(&now, record),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger once; later calls are ignored (tests call it from many places).
pub fn init() {
    let level =
        std::env::var("RUST_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(LevelFilter::Info);
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

/// Switches every later line to `format`.
pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

fn format() -> Format {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 { Format::Json } else { Format::Text }
}

/// The level of the one-line summary per closed connection (default debug: a restart at 19k
/// connections must not write 19k info lines unless the operator asks for them).
pub fn set_close_level(level: Level) {
    CLOSES.store(level as usize, Ordering::Relaxed);
}

/// The one-line summary of a closed connection: its id and why it ended.
pub fn conn_closed(conn: u64, reason: std::fmt::Arguments<'_>) {
    let level = match CLOSES.load(Ordering::Relaxed) {
        1 => Level::Error,
        2 => Level::Warn,
        3 => Level::Info,
        5 => Level::Trace,
        _ => Level::Debug,
    };
    log::log!(target: "phx_threads::conn", level, conn = conn, reason:% = reason; "connection closed");
}

/// `TS LEVEL target: message key=value…`
pub fn text_line(ts: &str, record: &Record<'_>) -> String {
    let mut line = format!("{ts} {:5} {}: {}", record.level(), record.target(), record.args());
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in fields.0 {
        line.push_str(&format!(" {key}={value}"));
    }
    line.push('\n');
    line
}

/// `{"ts":…,"level":…,"target":…,"msg":…,<fields>}`; numbers and booleans stay JSON numbers
/// and booleans.
pub fn json_line(ts: &str, record: &Record<'_>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), ts.into());
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("msg".into(), record.args().to_string().into());
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in fields.0 {
        object.entry(key).or_insert(value);
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

/// A record's key-value pairs, as JSON values.
struct Fields(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.push((key.as_str().to_owned(), json));
        Ok(())
    }
}

/// Most characters of one client-supplied string that a log line shows.
pub const SHOWN_CHARS: usize = 64;

/// Shows client-supplied text (a topic, an event, a header) in a log line: quoted, control
/// characters escaped (a client must not forge or split log lines), at most `SHOWN_CHARS`
/// characters and then an ellipsis with the full length (one join of a 1 MB topic must not
/// write a 1 MB line).
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// See `shown`.
pub struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars().take(SHOWN_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str("\"")?;
        if self.0.chars().nth(SHOWN_CHARS).is_some() {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{SHOWN_CHARS, json_line, shown, text_line};

    #[test]
    fn json_lines_are_one_object_with_fields() {
        let reason = "idle \"timeout\"\n";
        let args = format_args!("connection closed");
        let kvs: [(&str, log::kv::Value<'_>); 2] =
            [("conn", log::kv::Value::from(42u64)), ("reason", log::kv::Value::from(reason))];
        let record = log::Record::builder()
            .level(log::Level::Info)
            .target("phx_threads::conn")
            .args(args)
            .key_values(&kvs)
            .build();
        let line = json_line("2026-01-01T00:00:00.000Z", &record);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "phx_threads::conn");
        assert_eq!(v["msg"], "connection closed");
        assert_eq!(v["conn"], 42);
        assert_eq!(v["reason"], reason);
        let text = text_line("T", &record);
        assert!(text.starts_with("T INFO  phx_threads::conn: connection closed conn=42"), "{text}");
    }

    #[test]
    fn shown_text_is_escaped_and_bounded() {
        assert_eq!(shown("room:lobby").to_string(), "\"room:lobby\"");
        assert_eq!(shown("a\nb\u{1b}[31m\"").to_string(), "\"a\\nb\\u{1b}[31m\\\"\"");
        let long = "é".repeat(1 << 20);
        let line = shown(&long).to_string();
        assert!(line.chars().count() < SHOWN_CHARS + 30, "{line}");
        assert!(line.ends_with("\"… (2097152 bytes)"), "{line}");
    }
}
