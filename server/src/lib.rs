//! `orrery-server`: runs an Orrery module as a game server.
//!
//! This crate owns the joining of the engine and the netcode: the engine steps on its own
//! thread at a fixed tick; client messages received by the UDP sessions become reducer calls,
//! lifecycle reducers and subscriptions; replies and subscription deltas go back through the
//! sessions. It also owns the tokio runtime pieces (the UDP edge task and the HTTP control
//! plane, axum, optionally over TLS with rustls) and the server's secrets (bearer tokens, the admin token).
//!
//! Layers, from the inside out:
//!
//! - [`TickCore`] (module `tick`): the engine, the subscription [`Publisher`], and the
//!   per-client state (identity, rate limit, deferred messages, replies held until durable).
//!   Sans-IO: one call per tick with the tick's network events in and network commands out.
//! - [`ServerCore`] (module `core`): a `TickCore` plus a netcode `ServerSession` and a fixed
//!   clock, driven with explicit times; datagrams in, datagrams out. Tests run it on a virtual
//!   clock with simulated networks.
//! - [`start`] (module `runtime`): the real server. The `TickCore` on a thread of its own, the
//!   session and its UDP socket in a tokio task, the HTTP control plane ([`http`]) in others,
//!   linked by bounded channels. The caller provides the tokio runtime.
//!
//! It must not depend on `orrery-client` (clients depend on the netcode crate, not on the
//! server) nor reach into bevy beyond the engine's public API. Library code never prints: it
//! logs with `tracing`. See `docs/server.md` for the threading, the tick loop, the HTTP API,
//! limits and metrics.
//!
//! [`Publisher`]: orrery_subscription::Publisher

#[cfg(feature = "agones")]
pub mod agones;
pub mod auth;
pub mod config;
pub mod core;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod profiling;
pub mod rate;
pub mod replay;
pub mod runtime;
pub mod tick;
pub mod tls;
pub mod zone;

pub use crate::core::ServerCore;
pub use auth::{AuthError, BearerClaims, Secrets};
pub use config::{RateLimit, ServerArgs, ServerConfig, Storage};
pub use error::ServerError;
pub use metrics::Metrics;
pub use replay::ReplayArgs;
pub use runtime::{ServerHandle, shutdown_signal, start};
pub use tick::{CallOutcome, ClientMove, HttpCall, HttpRequest, SqlOutcome, SqlRead, TickCore};
pub use tls::TlsFiles;
