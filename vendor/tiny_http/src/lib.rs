//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]
// phx-threads patch: as a path dependency this crate is not built with `--cap-lints`, so
// newer compilers' warnings about upstream code would show in our build.
#![allow(unused)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use refusal::{json_error_body, ErrorBody};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;

mod body;
mod client;
mod common;
mod connection;
mod head;
mod refusal;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// phx-threads patch: the limit for any single write on a client connection (reads have
/// the deadlines of `Limits`).
const CONNECTION_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// phx-threads patch 6: how long a connection waits for the answer to its request before it
/// reads the next one. Handlers answer well within this; past it the connection is closed.
const RESPONSE_WAIT: Duration = Duration::from_secs(120);

/// phx-threads patch 8: decides, on the accept thread, whether a peer address may open one
/// more connection: `Some(guard)` admits it (the guard is held until the connection's thread
/// ends, so dropping it frees the address's place), `None` answers 503 with the reason
/// "too many connections from this address". Unix-socket peers have no address and are not
/// asked.
pub type AddressGate =
    Arc<dyn Fn(std::net::IpAddr) -> Option<Box<dyn std::any::Any + Send>> + Send + Sync>;

/// phx-threads patches 6, 7 and 8: the bounds on every client.
#[derive(Clone)]
pub struct Limits {
    /// A request head must arrive whole within this, however slowly it trickles; an idle
    /// keep-alive connection is closed silently after this long too.
    pub head_timeout: Duration,
    /// A request body must arrive whole within this (408 past it).
    pub body_timeout: Duration,
    /// Bodies are read before a handler sees the request, up to this size; a larger
    /// `Content-Length` is not read (the handler sees it in `body_length`), a larger chunked
    /// body is 413.
    pub max_body_bytes: usize,
    /// Open connections beyond this are answered 503 by the accept thread and closed.
    pub max_connections: usize,
    /// The body of every error response the server sends itself.
    pub error_body: ErrorBody,
    /// Per-address admission (patch 8); `None` admits every address.
    pub address_gate: Option<AddressGate>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("head_timeout", &self.head_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("address_gate", &self.address_gate.is_some())
            .finish()
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
            max_connections: 1024,
            error_body: json_error_body,
            address_gate: None,
        }
    }
}

#[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
type SslContext = ();
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
type SslContext = crate::ssl::SslContextImpl;

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig { addr: ConfigListenAddr::from_socket_addrs(addr)?, ssl: None })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig { addr: ConfigListenAddr::unix_from_path(path), ssl: None })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::with_limits(listener, ssl_config, Limits::default())
    }

    /// phx-threads patch 6: `from_listener` with explicit `Limits`.
    pub fn with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let acceptor = Acceptor {
            listener: server,
            ssl,
            limits,
            close: close_trigger.clone(),
            messages: messages.clone(),
            open: Arc::new(AtomicUsize::new(0)),
        };
        thread::Builder::new().name("http-accept".into()).spawn(move || acceptor.run())?;

        // result
        Ok(Server { messages, close: close_trigger, listening_addr: local_addr })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// phx-threads patch 7: the accept thread. Upstream left its loop on the first accept error
/// (EMFILE, ECONNABORTED, ...) and handed the error to one `recv` caller, so REST stopped for
/// good and a worker ended. Errors are now logged and retried after a growing pause, and
/// connections beyond `Limits::max_connections` are answered 503 here, without a thread.
struct Acceptor {
    listener: Listener,
    ssl: Option<SslContext>,
    limits: Limits,
    close: Arc<AtomicBool>,
    messages: Arc<MessagesQueue<Message>>,
    /// Connections with a thread; each holds a `Slot`.
    open: Arc<AtomicUsize>,
}

/// First and longest pause after an accept error: short enough that a transient error costs
/// little, long enough that a lasting one (out of file descriptors) does not spin a core.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Acceptor {
    fn run(self) {
        let tasks_pool = util::TaskPool::new();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        log::debug!("Running accept thread");
        while !self.close.load(Relaxed) {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.admit(sock, peer, &tasks_pool);
                }
                Err(e) => {
                    log::warn!("http accept failed: {e}; retrying in {backoff:?}");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        log::debug!("Terminating accept thread");
    }

    /// Gives the connection a thread of the pool, or refuses it when too many are open.
    fn admit(
        &self,
        sock: Connection,
        peer: Option<std::net::SocketAddr>,
        tasks_pool: &util::TaskPool,
    ) {
        let max = self.limits.max_connections;
        if self.open.load(Relaxed) >= max {
            log::warn!("refusing an http connection: max connections ({max}) reached");
            return refuse_busy(sock, "too many connections", self.limits.error_body);
        }
        // phx-threads patch 8: the per-address place, held as long as the slot.
        let place = match (&self.limits.address_gate, peer) {
            (Some(gate), Some(peer)) => match gate(peer.ip()) {
                Some(place) => Some(place),
                None => {
                    let why = "too many connections from this address";
                    return refuse_busy(sock, why, self.limits.error_body);
                }
            },
            _ => None,
        };
        let slot = Slot::take(&self.open, place);
        let Some(client) = self.client(sock) else { return };
        let messages = self.messages.clone();
        let mut task = Some(move || serve(client, &messages, slot));
        let spawned = tasks_pool.spawn(Box::new(move || {
            if let Some(task) = task.take() {
                task()
            }
        }));
        if let Err(e) = spawned {
            log::error!("dropping an http connection: cannot start a thread: {e}");
        }
    }

    /// The connection's reading and writing halves, or `None` after answering 503 when the
    /// process is out of descriptors for the second half.
    fn client(&self, sock: Connection) -> Option<ClientConnection> {
        let _ = sock.set_timeouts(Some(CONNECTION_IO_TIMEOUT));
        let dup = match sock.try_clone() {
            Ok(dup) => dup,
            Err(e) => {
                log::warn!("refusing an http connection: {e}");
                refuse_busy(sock, "out of file descriptors", self.limits.error_body);
                return None;
            }
        };
        match self.split(dup, sock) {
            Ok((read, write)) => Some(ClientConnection::new(write, read, self.limits.clone())),
            Err(e) => {
                log::warn!("dropping an http connection: {e}");
                None
            }
        }
    }

    /// The read and write halves, after the TLS handshake if any.
    fn split(
        &self,
        dup: Connection,
        sock: Connection,
    ) -> IoResult<(util::RefinedTcpStream, util::RefinedTcpStream)> {
        match self.ssl {
            None => Ok(util::RefinedTcpStream::from_pair(dup, sock)),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Some(ref ssl) => util::RefinedTcpStream::new(ssl.accept(sock).map_err(IoError::other)?),
            #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
            Some(ref _ssl) => unreachable!(),
        }
    }
}

/// One connection's thread: hands its requests on one at a time, each after the previous one
/// was answered, so a connection has at most one request queued for the workers (pipelined
/// requests wait in the socket) and the head deadline of the next request starts once the
/// answer is out.
fn serve(client: ClientConnection, messages: &MessagesQueue<Message>, _slot: Slot) {
    let (sender, answered) = mpsc::channel();
    for rq in client {
        messages.push(rq.with_notify_sender(sender.clone()).into());
        if answered.recv_timeout(RESPONSE_WAIT).is_err() {
            log::warn!("closing an http connection: no answer within {RESPONSE_WAIT:?}");
            return;
        }
    }
}

/// A connection's place under `Limits::max_connections` and its address's place (patch 8),
/// freed when its thread ends.
struct Slot(Arc<AtomicUsize>, #[allow(dead_code)] Option<Box<dyn std::any::Any + Send>>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, place: Option<Box<dyn std::any::Any + Send>>) -> Slot {
        open.fetch_add(1, Relaxed);
        Slot(open.clone(), place)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Answers 503 without blocking the accept thread: whatever the client already sent is read
/// (so closing does not reset the connection and destroy the answer), then the answer is
/// written into the empty send buffer, then the connection is closed.
fn refuse_busy(mut sock: Connection, why: &str, error_body: ErrorBody) {
    let refusal = refusal::Refusal::new(503, why);
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let _ = std::io::Read::read(&mut sock, &mut buf);
    let _ = refusal.write_to(&mut sock, error_body);
    let _ = sock.shutdown(Shutdown::Write);
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
