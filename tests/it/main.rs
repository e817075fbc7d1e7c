//! The single integration-test binary (see ripgrep's tests/tests.rs and matklad's
//! "Delete Cargo Integration Tests"): one link step, shared support code, one Postgres.

// Test harness: throwaway Postgres, a tiny HTTP client, waiting helpers.
mod support;

// The REST API end to end over real sockets, and the openapi.yaml-vs-router check.
mod http_api;

// The store: migrations, queries, NOTIFY events, the listener, the pool, outages.
mod store;
