//! The REST API on tiny_http: `start` binds, spawns `n_workers` named threads (`http-<i>`)
//! that each loop on `Server::recv`, and returns an `HttpHandle` whose `shutdown` wakes every
//! worker with `Server::unblock` and joins them within a bound.
//!
//! Threads: tiny_http runs its own accept thread and one thread per open connection, at most
//! `max_connections`. The connection's thread reads each request whole, head and body, each
//! within its deadline, and answers malformed or ambiguous requests itself (JSON errors,
//! then close); so our workers only ever see complete requests, and run routing, handlers
//! and store calls. Each request is handled inside `catch_unwind`, so a panicking handler
//! costs one 500, not a worker.
//!
//! **API Boundary:** `openapi.yaml` is the contract (a test checks it against `ROUTES`);
//! `ApiError` is the only error that reaches a client. CORS headers only for the origins
//! `--cors-origins` lists (`cors.rs`).
//!
//! The module does not depend on the WebSocket core: REST writes reach channels through the
//! store's NOTIFY events.

pub mod api;
pub mod cors;
pub mod handlers;
pub mod router;

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::ClusterView;
use crate::http::api::{ApiError, ApiRequest, ApiResponse, Body, Method};
use crate::http::handlers::Ctx;
use crate::http::router::Decision;
use crate::limits::{self, PerAddress, RateLimiter, TrustedProxies};
use crate::store::Store;

/// Worker stack. Measured with the integration tests (which include Postgres round trips
/// and maximally nested JSON): 64 KiB overflows and 128 KiB suffices in a debug build;
/// release builds need less. Twice the debug need, an eighth of the 2 MiB default.
const WORKER_STACK_SIZE: usize = 256 * 1024;
/// How long `shutdown` waits for workers to finish their current request.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen; port 0 picks a free port (read it back from `HttpHandle::addr`).
    pub addr: SocketAddr,
    pub n_workers: usize,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// The built React client (`superheroes-react/dist`).
    pub static_dir: Option<PathBuf>,
    /// Overrides the WebSocket URL `/config.json` hands to the client.
    pub public_ws_url: Option<String>,
    /// The WebSocket port `/config.json` combines with the request's Host name.
    pub ws_port: u16,
    /// Open connections beyond this get 503 from the accept thread (each open connection
    /// holds a thread).
    pub max_connections: usize,
    /// A request head must arrive whole within this, however slowly (408); idle keep-alive
    /// connections are closed after it too. The WebSocket port's `handshake_timeout`.
    pub head_timeout: Duration,
    /// A request body must arrive whole within this (408). Bodies are read on the
    /// connection's thread, so a slow one never holds a worker.
    pub body_timeout: Duration,
    /// Origins (`https://app.example.com`) whose pages may call the API; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Open connections from one address; more get 503 from the accept thread. Addresses in
    /// `trusted_proxies` are not limited.
    pub max_connections_per_address: usize,
    /// Writes (POST, PUT, PATCH, DELETE) per second one client address may sustain, and how
    /// many it may send at once; beyond them, 429 with `Retry-After`. A rate of 0 turns the
    /// limit off (benchmarks).
    pub write_rate_per_s: u32,
    pub write_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client (`limits::TrustedProxies`).
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 4001)),
            n_workers: 8,
            max_body_bytes: 64 * 1024,
            static_dir: None,
            public_ws_url: None,
            ws_port: 4080,
            max_connections: 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            max_connections_per_address: 256,
            write_rate_per_s: 10,
            write_burst: 100,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// What the HTTP side needs from the rest of the server.
#[derive(Clone, Default)]
pub struct HttpDeps {
    /// `None` (`--no-database`): the API answers 503.
    pub store: Option<Store>,
    /// `None` without `--cluster`: `/cluster` shows this node alone.
    pub cluster: Option<ClusterView>,
}

/// The running server. `shutdown` (or drop) stops and joins the workers.
pub struct HttpHandle {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    done_rx: Receiver<()>,
}

#[derive(Debug)]
pub enum Error {
    /// The address could not be bound (in use, no permission).
    Bind(std::io::Error),
    /// A worker thread could not be spawned (thread limit).
    Spawn(std::io::Error),
    /// Some workers were still busy after the shutdown bound and were detached.
    ShutdownTimeout { n_stuck: usize },
}

/// Binds `config.addr` and starts the workers.
///
/// # Errors
/// `Error::Bind` if the address is unavailable; `Error::Spawn` if threads cannot be created.
pub fn start(config: HttpConfig, deps: HttpDeps) -> Result<HttpHandle, Error> {
    let listener = TcpListener::bind(config.addr).map_err(Error::Bind)?;
    let addr = listener.local_addr().map_err(Error::Bind)?;
    let server = tiny_http::Server::with_limits(listener, None, limits(&config))
        .map_err(|e| Error::Bind(std::io::Error::other(e.to_string())))?;
    let server = Arc::new(server);
    let n_workers = config.n_workers.max(1);
    let writes = (config.write_rate_per_s > 0)
        .then(|| RateLimiter::new(f64::from(config.write_rate_per_s), config.write_burst));
    let ctx = Arc::new(Ctx { config, store: deps.store, cluster: deps.cluster, writes });
    // Nobody sends on this channel: each worker holds a sender, and disconnection means
    // every worker has exited.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let mut handle = HttpHandle { addr, server, workers: Vec::with_capacity(n_workers), done_rx };
    for i in 0..n_workers {
        let worker = Worker {
            server: Arc::clone(&handle.server),
            ctx: Arc::clone(&ctx),
            _done: done_tx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("http-{i}"))
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || worker.run());
        match spawned {
            Ok(thread) => handle.workers.push(thread),
            Err(e) => {
                drop(done_tx);
                let _ = handle.shutdown();
                return Err(Error::Spawn(e));
            }
        }
    }
    drop(done_tx);
    log::info!("http listening on {addr} with {n_workers} workers");
    Ok(handle)
}

/// What tiny_http enforces before a request reaches a worker (vendor/tiny_http/PATCHES.md).
fn limits(config: &HttpConfig) -> tiny_http::Limits {
    let per_address =
        PerAddress::new(config.max_connections_per_address, config.trusted_proxies.clone());
    let gate: tiny_http::AddressGate = Arc::new(move |addr| match per_address.admit(addr) {
        Some(place) => Some(Box::new(place) as Box<dyn std::any::Any + Send>),
        None => {
            log::warn!("refusing an http connection from {addr}: max per address reached");
            limits::count(&limits::REFUSALS.http_per_address);
            None
        }
    });
    tiny_http::Limits {
        address_gate: Some(gate),
        head_timeout: config.head_timeout,
        body_timeout: config.body_timeout,
        max_body_bytes: config.max_body_bytes,
        max_connections: config.max_connections,
        error_body: api::transport_error_body,
    }
}

impl HttpHandle {
    /// Stops accepting work and joins every worker, waiting at most 15 s for requests in
    /// flight, then drops tiny_http's server (which stops its accept thread).
    ///
    /// # Errors
    /// `ShutdownTimeout` if some worker was still busy; it is detached.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        // One unblock per worker: each wakes exactly one thread blocked in `recv`.
        for _ in &self.workers {
            self.server.unblock();
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let all_exited =
            matches!(self.done_rx.recv_deadline(deadline), Err(RecvTimeoutError::Disconnected));
        let mut n_stuck = 0;
        for worker in self.workers.drain(..) {
            if all_exited || worker.is_finished() {
                let _ = worker.join();
            } else {
                n_stuck += 1;
            }
        }
        if n_stuck == 0 { Ok(()) } else { Err(Error::ShutdownTimeout { n_stuck }) }
    }
}

impl Drop for HttpHandle {
    /// Joins the workers like `shutdown` (a no-op after it), so they never outlive the handle.
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{e}");
        }
    }
}

struct Worker {
    server: Arc<tiny_http::Server>,
    ctx: Arc<Ctx>,
    /// Dropped when the worker exits, by return or panic: how `shutdown` knows.
    _done: Sender<()>,
}

impl Worker {
    /// Serves requests until `unblock` makes `recv` fail.
    fn run(self) {
        while let Ok(request) = self.server.recv() {
            self.serve(request);
        }
    }

    fn serve(&self, mut request: tiny_http::Request) {
        let started = Instant::now();
        let method = request.method().to_string();
        let url = request.url().to_owned();
        let response = catch_unwind(AssertUnwindSafe(|| handle(&mut request, &self.ctx)))
            .unwrap_or_else(|_| {
                log::error!("{method} {url}: handler panicked");
                ApiError::status(500).into_response()
            });
        let status = response.status;
        if let Err(e) = request.respond(to_tiny(response)) {
            log::debug!("{method} {url}: writing the response failed: {e}");
        }
        let route = router::pattern_of(&method, path_of(&url));
        crate::metrics::http_request(&method, route, status, started.elapsed());
        log::info!("{method} {} {status} {:.1?}", path_of(&url), started.elapsed());
    }
}

/// Answers a request, with the CORS headers its origin may get.
fn handle(request: &mut tiny_http::Request, ctx: &Ctx) -> ApiResponse {
    let api = ApiRequest {
        method: Method::parse(request.method().as_str()),
        path: path_of(request.url()).to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_owned()))
            .collect(),
        body: Vec::new(),
    };
    let origin = api.header("origin").map(str::to_owned);
    let response = match throttle(request, &api, ctx) {
        Some(refused) => refused,
        None => route_and_run(request, api, ctx),
    };
    cors::decorate(response, origin.as_deref(), &ctx.config.cors_origins)
}

/// 429 with `Retry-After` (whole seconds, rounded up) when the client's address has spent
/// its budget of writes; reads are not limited.
fn throttle(request: &tiny_http::Request, api: &ApiRequest, ctx: &Ctx) -> Option<ApiResponse> {
    let writes = ctx.writes.as_ref()?;
    if !matches!(api.method, Method::Post | Method::Put | Method::Patch | Method::Delete) {
        return None;
    }
    let peer = request.remote_addr()?.ip();
    let client = ctx.config.trusted_proxies.client(peer, api.header("x-forwarded-for"));
    let wait = writes.take(client, Instant::now()).err()?;
    limits::count(&limits::REFUSALS.rest_writes);
    log::warn!("{} {}: 429 for {client}", api.method.as_str(), api.path);
    let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let why = format!("at most {} writes per second per client", ctx.config.write_rate_per_s);
    let error = ApiError::detailed(429, why).with_header("Retry-After", retry_after.to_string());
    Some(error.into_response())
}

/// Routes, reads the body if the route takes one, and runs the handler.
fn route_and_run(request: &mut tiny_http::Request, mut api: ApiRequest, ctx: &Ctx) -> ApiResponse {
    let (route, params) = match router::decide(&api, ctx) {
        Decision::Respond(response) => return response,
        Decision::Handle { route, params } => (route, params),
    };
    let result = if route.takes_body {
        read_body(request, &api, ctx.config.max_body_bytes).and_then(|body| {
            api.body = body;
            (route.handler)(&api, ctx, &params)
        })
    } else {
        (route.handler)(&api, ctx, &params)
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Checks the media type (415) and size (413) of the body tiny_http has already read whole
/// (or left unread, when its Content-Length was over `max`).
fn read_body(
    request: &mut tiny_http::Request,
    api: &ApiRequest,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    if let Some(content_type) = api.header("content-type") {
        if !is_json(content_type) {
            return Err(ApiError::status(415));
        }
    }
    if request.body_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    request
        .as_reader()
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
    if body.len() > max { Err(too_large()) } else { Ok(body) }
}

/// 413, asking the client to close: the rest of its body is not worth reading.
fn too_large() -> ApiError {
    ApiError::status(413).with_header("Connection", "close".to_owned())
}

/// `application/json`, any `+json` type, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn path_of(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Converts to tiny_http, adding the headers every response carries.
fn to_tiny(response: ApiResponse) -> tiny_http::Response<Box<dyn Read + Send>> {
    let mut headers: Vec<tiny_http::Header> = response
        .headers
        .iter()
        .filter_map(|(name, value)| {
            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
        })
        .collect();
    headers.push(tiny_http::Header::from_bytes("Server", "phx-threads").expect("static header"));
    let (reader, len): (Box<dyn Read + Send>, usize) = match response.body {
        Body::Empty => (Box::new(std::io::empty()), 0),
        Body::Bytes(bytes) => {
            let len = bytes.len();
            (Box::new(std::io::Cursor::new(bytes)), len)
        }
        Body::File { file, len } => (Box::new(file), len),
    };
    tiny_http::Response::new(
        tiny_http::StatusCode(response.status),
        headers,
        reader,
        Some(len),
        None,
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind(e) => write!(f, "cannot listen for http: {e}"),
            Error::Spawn(e) => write!(f, "cannot spawn an http worker: {e}"),
            Error::ShutdownTimeout { n_stuck } => {
                write!(f, "{n_stuck} http workers did not stop in time")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind(e) | Error::Spawn(e) => Some(e),
            Error::ShutdownTimeout { .. } => None,
        }
    }
}
