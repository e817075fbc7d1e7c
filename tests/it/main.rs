//! The single integration-test binary (`cargo nextest run --test it`; see ripgrep's tests/tests.rs
//! and matklad's "Delete Cargo Integration Tests"): real loopback sockets, a throwaway Postgres.

// Test harness: in-process server on port 0, a phoenix.js-like WebSocket client, throwaway
// Postgres, a tiny HTTP client, waiting helpers.
mod support;

// The Phoenix wire protocol, case by case, including bad input.
mod protocol;
// The HTTP upgrade over raw TCP: refusals, limits, timeouts, a frame sent with the request.
mod handshake;
// Channel lifecycle: crashes, interception, async replies, limits, slow consumers, shutdown.
pub mod channels;
// Many connections at once: fan-out to 1,000 sockets and thread accounting.
mod scale;
// Hardening of the WebSocket side: closing handshake, limits, half-open upgrades, stuck leaves.
mod ws_hardening;
// The binary restarts its private PostgreSQL after kill -9; /healthz says 503 meanwhile.
pub mod supervision;
// The LongPoll transport: 410/200/204/403, session expiry, eviction, tokens, the slot it takes.
mod longpoll;
// Per-connection rate limits: bursts pass, refusals, and the close after sustained abuse.
mod rate_limits;
// Presence: state and diffs over real sockets, every way a member leaves, limits.
mod presence;
// Issue #13: three binaries on one PostgreSQL with --cluster.
mod cluster;
// Issue #13 item 4: LongPoll across three nodes without sticky sessions.
mod cluster_longpoll;
// Issue #14 part 2: signed tokens, the origin rule, per-address limits.
mod security;

// The REST API end to end over real sockets, and the openapi.yaml-vs-router check.
mod http_api;
// The REST port under hostile or broken clients: accept errors, deadlines, the connection
// cap, request smuggling, malformed requests (issue #11).
mod http_hardening;
// The store: migrations, queries, NOTIFY events, the listener, the pool, outages.
mod store;
// superheroes:lobby with the database, the listener and real clients.
mod superheroes;
// Issue #11: no silent drops in PubSub and the lobby, bounded waits, the shared lobby table.
mod lobby;
// Issue #15: GET /metrics moves with connections, joins, broadcasts and REST calls.
mod metrics;
// Issue #15: the doctor on this machine, JSON logs, the admin:stats channel.
mod ops;
