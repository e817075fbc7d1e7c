//! A small stderr logger for the `log` facade: `LEVEL target: message`, level from `RUST_LOG`
//! (`error`, `warn`, `info`, `debug`, `trace`; default `info`). One `write` per line so lines from
//! different threads never interleave.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let line = format!("{now} {:5} {}: {}\n", record.level(), record.target(), record.args());
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
    use super::{SHOWN_CHARS, shown};

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
