//! phx-threads patch 6: the answer to a request the connection thread refuses before any
//! handler sees it (a malformed head, ambiguous framing, a deadline, the connection cap).
//! The connection is always closed afterwards: after a framing error nobody knows where the
//! next request would start, and reading on would let a smuggled request through.

use std::io::{Result as IoResult, Write};

/// Why a request was refused: the status and a detail for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub detail: String,
}

/// Builds the body of an error response from its status and detail; the embedding server
/// chooses the shape (phx-threads: its JSON `{"errors":{"detail": ...}}`).
pub type ErrorBody = fn(u16, &str) -> Vec<u8>;

/// The body `Limits::default()` uses: the same JSON shape, for servers that set none.
pub fn json_error_body(status: u16, detail: &str) -> Vec<u8> {
    let escaped: String = detail.chars().filter(|c| *c != '"' && *c != '\\').collect();
    let _ = status;
    format!(r#"{{"errors":{{"detail":"{escaped}"}}}}"#).into_bytes()
}

impl Refusal {
    pub(crate) fn new(status: u16, detail: impl Into<String>) -> Refusal {
        Refusal { status, detail: detail.into() }
    }

    /// The whole response: JSON, its length, and `Connection: close`.
    pub(crate) fn to_bytes(&self, error_body: ErrorBody) -> Vec<u8> {
        let body = error_body(self.status, &self.detail);
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\nServer: phx-threads\r\n\r\n",
            self.status,
            reason(self.status),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    pub(crate) fn write_to(&self, mut out: impl Write, error_body: ErrorBody) -> IoResult<()> {
        out.write_all(&self.to_bytes(error_body))?;
        out.flush()
    }
}

/// Reason phrases of the statuses the transport itself sends.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}
