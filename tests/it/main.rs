//! The integration tests: one binary (`cargo test --test it`), real loopback sockets.

// Test harness: in-process server on port 0, a small phoenix.js-like WebSocket client.
mod support;

// The Phoenix wire protocol, case by case, including bad input.
mod protocol;
// Channel lifecycle: crashes, interception, async replies, limits, slow consumers, shutdown.
mod channels;
// Many connections at once: fan-out to 1,000 sockets and thread accounting.
mod scale;
