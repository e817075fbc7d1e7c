//! phx-threads: a Phoenix Channels server on OS threads, no async.
//!
//! Every WebSocket connection is a socket thread, every joined channel is a thread, and a
//! registry thread routes PubSub broadcasts straight onto the connections' sockets. ARCHITECTURE.md has the map; the
//! modules below are listed in reading order, framework first, application last.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod doctor;
pub mod limits;
pub mod logger;
pub mod metrics;
pub mod origin;
pub mod process;
pub mod protocol;

pub mod auth;
pub mod channel;
pub mod cluster;
pub mod http;
pub mod presence;
pub mod pubsub;
pub mod server;
pub mod socket;
pub mod store;

pub mod app;

#[doc(hidden)]
pub mod fuzzing;

pub use channel::{Channel, ChannelCtx, Flow, HandleIn, Info, Router, StopReason};
pub use config::Config;
pub use presence::Presence;
pub use protocol::Payload;
pub use pubsub::PubSub;
pub use server::{ServerHandle, ShutdownReport, start};
pub use socket::transport::{ConnectFn, ConnectInfo, Connected, Refused};
