use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::body::{self, Body, Framing};
use crate::common::{HTTPVersion, Method};
use crate::head::{self, Head, HeadError};
use crate::refusal::Refusal;
use crate::util::{DeadlineStream, RefinedTcpStream, SequentialWriter, SequentialWriterBuilder};
use crate::{Limits, Request};

/// phx-threads patch 6: after a refusal, how long and how much of the rest of the request is
/// read and dropped before closing. Closing with unread data makes the kernel send a reset,
/// which can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

type Writer = SequentialWriter<BufWriter<RefinedTcpStream>>;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
///
/// phx-threads patch 6: it reads each request whole (head and body, each under its own total
/// deadline and size limit) before handing it on, so handler threads never wait for a
/// client, and it closes the connection after any error in a request's head or framing.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // the request heads and bodies, read on this connection's thread
    reader: BufReader<DeadlineStream>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    limits: Limits,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // the last request's body was too large to read: it is still arriving
    unread_body: bool,

    // true if the connection goes through SSL
    secure: bool,
}

/// A request as read, before it becomes a `Request`.
struct Parsed {
    head: Head,
    body: Body,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        ClientConnection {
            remote_addr,
            reader: BufReader::with_capacity(8 * 1024, DeadlineStream::new(read_socket)),
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            limits,
            no_more_requests: false,
            unread_body: false,
            secure,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next request, head then body, each within its deadline. An idle
    /// keep-alive connection gets the head deadline too.
    fn read(&mut self, writer: &mut Writer) -> Result<Parsed, HeadError> {
        self.set_deadline(self.limits.head_timeout);
        let head = head::read_head(&mut self.reader)?;
        let framing = body::framing(&head.headers)?;
        let oversized =
            matches!(framing, Framing::Length(n) if n > self.limits.max_body_bytes as u64);
        if framing != Framing::None && !oversized {
            expect_continue(&head, writer)?;
        }
        self.set_deadline(self.limits.body_timeout);
        let body = body::read_body(&mut self.reader, framing, self.limits.max_body_bytes)?;
        Ok(Parsed { head, body })
    }

    fn set_deadline(&mut self, timeout: Duration) {
        self.reader.get_mut().set_deadline(Instant::now() + timeout);
    }

    /// Answers `refusal` after any responses still due, then closes: FIN first, then the
    /// rest of what the client sends is read and dropped, within bounds.
    fn refuse(&mut self, refusal: &Refusal, writer: Writer) {
        log::debug!("refusing a request: {} {}", refusal.status, refusal.detail);
        if refusal.write_to(writer, self.limits.error_body).is_err() {
            return;
        }
        self.linger();
    }

    /// Closes after a last answer: FIN first, then what the client still sends is dropped,
    /// within bounds, so that the close does not reset the connection and the answer with it.
    fn linger(&mut self) {
        let _ = self.reader.get_mut().get_mut().shutdown_write();
        self.set_deadline(LINGER);
        let _ =
            std::io::copy(&mut (&mut self.reader).take(LINGER_BYTES as u64), &mut std::io::sink());
    }

    fn into_request(&mut self, parsed: Parsed, writer: Writer) -> Request {
        let (body, declared) = match parsed.body {
            Body::Complete(body) => {
                let len = body.len();
                (body, len)
            }
            // The rest of the stream is the unread body: no further request can be read.
            Body::Oversized(n) => {
                self.no_more_requests = true;
                self.unread_body = true;
                (Vec::new(), std::convert::TryFrom::try_from(n).unwrap_or(usize::MAX))
            }
        };
        let head = parsed.head;
        crate::request::complete_request(
            self.secure,
            head.method,
            head.target,
            head.version,
            head.headers,
            *self.remote_addr.as_ref().unwrap_or(&None),
            body,
            declared,
            writer,
        )
    }

    /// Whether the client's `Connection` header or HTTP version ends the connection after
    /// this request.
    fn note_connection(&mut self, rq: &Request) {
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str().to_ascii_lowercase());
        let http_1_0 = *rq.http_version() == HTTPVersion(1, 0);
        match connection_header {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val) if !val.contains("keep-alive") && http_1_0 => {
                self.no_more_requests = true
            }
            None if http_1_0 => self.no_more_requests = true,
            _ => (),
        };
    }
}

/// `Expect: 100-continue` gets its interim response before the body is read (curl waits a
/// second for it); any other expectation is 417.
fn expect_continue(head: &Head, writer: &mut Writer) -> Result<(), HeadError> {
    let expect = head.headers.iter().find(|h| h.field.equiv("Expect"));
    match expect.map(|h| h.value.as_str()) {
        None => Ok(()),
        Some(v) if v.eq_ignore_ascii_case("100-continue") => {
            let sent =
                writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|()| writer.flush());
            sent.map_err(|_| HeadError::Closed)
        }
        Some(_) => Err(Refusal::new(417, "only 100-continue is supported").into()),
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // Called again only once the last request was answered (see `serve` in lib.rs).
            if self.unread_body {
                self.linger();
            }
            return None;
        }
        // Taken first, so that a refusal is written after every earlier response.
        let mut writer = self.sink.next().unwrap();
        match self.read(&mut writer) {
            Ok(parsed) => {
                let rq = self.into_request(parsed, writer);
                self.note_connection(&rq);
                Some(rq)
            }
            Err(HeadError::Refused(refusal)) => {
                self.refuse(&refusal, writer);
                None
            }
            Err(HeadError::Closed) => None,
        }
    }
}
