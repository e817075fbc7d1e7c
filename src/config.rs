//! Server configuration: plain fields with units in their names or as `Duration`s, sane
//! defaults, and every limit of the server in one place (ARCHITECTURE.md lists them all).

use std::net::SocketAddr;
use std::time::Duration;

/// WebSocket side of the server. `Default` gives the documented production defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the WebSocket listener binds. Port 0 picks a free port (see `ServerHandle::ws_addr`).
    pub ws_addr: SocketAddr,
    /// Mount path of the socket; phoenix.js appends `/websocket` to the endpoint it is given.
    pub ws_path: String,
    /// Connects the kernel queues before the acceptor takes them (capped by `somaxconn`).
    pub listen_backlog: i32,
    /// Upgraded connections beyond this get HTTP 503 (only a completed upgrade takes a slot).
    pub max_connections: usize,
    /// Open connections (upgraded or in their handshake) from one remote address; more get
    /// 503 from the acceptor. Addresses in `trusted_proxies` are not limited.
    pub max_connections_per_address: usize,
    /// Proxies (addresses, CIDR blocks) whose `X-Forwarded-For` is believed, and which the
    /// per-address cap does not limit (`--trusted-proxies`).
    pub trusted_proxies: crate::limits::TrustedProxies,
    /// Connections in their upgrade (accepted, not yet answered 101). When a new one arrives
    /// with the budget full, the oldest still sending its request head is dropped: real clients
    /// send theirs within a round trip, so only a slow or hostile one is ever the oldest, and
    /// half-open upgrades cannot lock real clients out. One whose head is all in is waiting on
    /// this server (its CPU, a `connect` callback that checks a token against a busy database),
    /// not on its client: it is dropped only once `handshake_timeout` old. The log line of a
    /// drop says how much of its head the client had sent.
    pub max_handshakes: usize,
    /// A handshake younger than this is never dropped for a newer one. With the budget full
    /// of young handshakes (the herd of a restarted node's clients reconnecting at once), the
    /// acceptor waits, at most this long, for one to finish, and the kernel's listen backlog
    /// holds the rest; dropping them made each retry, after its backoff, at 19,000 clients
    /// 20,000 times. A hostile half-sent upgrade is still dropped once it is this old.
    pub handshake_grace: Duration,
    /// Joins beyond this are refused with `{"reason":"too many channels joined"}` (Phoenix: 100).
    pub max_channels_per_connection: usize,
    /// Per-connection token buckets (`socket/rate.rs`): client messages a second, and the burst
    /// allowed above that rate; a message over budget gets `{"reason":"rate limited"}` on its
    /// ref. 0 turns a limit off. The official client sends one heartbeat per 30 s.
    pub messages_per_sec: u32,
    pub message_burst: u32,
    /// The same for `phx_join` (on top of the message budget); phoenix.js rejoins every channel
    /// at once after a reconnect, so the burst defaults to `max_channels_per_connection`.
    pub joins_per_sec: u32,
    pub join_burst: u32,
    /// Rate-limited messages within 10 s beyond which the connection is closed with 1008
    /// "rate limit exceeded": a client that ignores its refusals is abusive, not busy.
    pub max_rate_refusals: u32,
    /// Largest accepted client frame and message; bigger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Bytes queued for one connection beyond what the kernel's socket buffer holds. A client
    /// that falls further behind is a slow consumer and is disconnected, so it cannot slow or
    /// bloat the server. Nothing is allocated while a client keeps up.
    pub outbound_queue_bytes: usize,
    /// Messages queued for one channel process before the sender waits (socket) or the
    /// connection is treated as a slow consumer (registry).
    pub channel_mailbox: usize,
    /// Messages queued for the PubSub registry before broadcasters wait.
    pub registry_mailbox: usize,
    /// A LongPoll poll answers 204 after this long without messages; a session nobody polls
    /// for 1.5 times this ends and its channels stop (Phoenix: 10 s).
    pub longpoll_window: Duration,
    /// The key LongPoll session tokens are signed with; `None`: a random key per process
    /// (`auth::longpoll_key`; a cluster needs one shared key, `cli` requires it).
    pub longpoll_key: Option<crate::auth::LongPollKey>,
    /// This node's name in a cluster (`--node-name`), written into LongPoll tokens so any node
    /// can route a poll to the session's node; empty on a single node.
    pub node_name: String,
    /// How long a LongPoll request routed to another node may take beyond its own bound (the
    /// window for a poll and for a POST's messages) before it is answered 500 (phoenix.js then
    /// reconnects).
    pub longpoll_route_timeout: Duration,
    /// Close with 1002 after this long without any data from the client (Phoenix: 60 s).
    pub idle_timeout: Duration,
    /// The HTTP upgrade must complete within this.
    pub handshake_timeout: Duration,
    /// A channel's `join` callback must answer within this, else `{"reason":"join timeout"}`.
    pub join_timeout: Duration,
    /// A write to a client socket that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    /// How long the socket waits for a busy channel's mailbox before closing the connection.
    pub channel_send_timeout: Duration,
    /// Graceful shutdown: every connection closed and every thread joined within this.
    pub shutdown_timeout: Duration,
    /// Once every client has its 1012, the process's threads drop to `nice` 10 for their
    /// teardown (`process::yield_cpu`), so that the nodes and clients taking over its clients
    /// get the CPU first on a shared machine. The binary sets it; an embedding program's
    /// threads are its own business, so the library default is off.
    pub shutdown_yields_cpu: bool,
    /// Origins allowed besides the request's own host (`crate::origin`); `any` allows all.
    pub check_origin: Vec<String>,
    /// Stack sizes of the per-connection thread kinds (bytes of address space; only the
    /// touched pages cost memory). The flusher runs only while a client is behind.
    pub socket_stack_bytes: usize,
    pub flusher_stack_bytes: usize,
    pub channel_stack_bytes: usize,
    /// tungstenite's per-connection read buffer (its default is 128 KiB).
    pub read_buffer_bytes: usize,
    /// Threads that send the frames connections' own threads produce (`socket/writer.rs`).
    pub writer_threads: usize,
    /// A broadcast to at least this many subscribers is handed to the writers, which send it
    /// on every core; smaller ones the registry writes itself, waking no thread.
    pub spread_fanout: usize,
    /// Presence: the diff window and the bounds on what clients put in (`PresenceConfig`).
    pub presence: crate::presence::PresenceConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ws_addr: "127.0.0.1:4080".parse().expect("valid address"),
            ws_path: "/socket".to_string(),
            listen_backlog: 4096,
            max_connections: 16_000,
            max_handshakes: 1024,
            handshake_grace: Duration::from_secs(1),
            max_connections_per_address: 1024,
            trusted_proxies: crate::limits::TrustedProxies::default(),
            max_channels_per_connection: 100,
            messages_per_sec: 100,
            message_burst: 200,
            joins_per_sec: 10,
            join_burst: 100,
            max_rate_refusals: 50,
            max_frame_bytes: 1 << 20,
            outbound_queue_bytes: 1 << 20,
            channel_mailbox: 1024,
            registry_mailbox: 65_536,
            idle_timeout: Duration::from_secs(60),
            longpoll_window: Duration::from_secs(10),
            longpoll_key: None,
            node_name: String::new(),
            longpoll_route_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            channel_send_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_yields_cpu: false,
            check_origin: Vec::new(),
            socket_stack_bytes: 128 * 1024,
            flusher_stack_bytes: 64 * 1024,
            channel_stack_bytes: 256 * 1024,
            read_buffer_bytes: 1024,
            writer_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            spread_fanout: 512,
            presence: crate::presence::PresenceConfig::default(),
        }
    }
}
