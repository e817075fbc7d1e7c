//! phx-threads: a Phoenix Channels server on OS threads. See ARCHITECTURE.md.

pub mod http;
pub mod store;
