//! `orrery-client`: the Rust client SDK of Orrery.
//!
//! It owns the client side of a game connection: the HTTP control-plane calls (identity,
//! schema, connect token: [`http`]), the UDP connection driven on a tokio task ([`Client`]),
//! reducer calls with request ids and awaited replies, SQL subscriptions, and the mirror cache
//! of subscribed rows with insert/update/delete callbacks and typed (serde) access
//! ([`mirror`]), and an optional simulated bad network on the client's own datagrams
//! ([`link`]: loss, latency, jitter, for load and soak tests). [`ClientCore`] is the same client without I/O, for deterministic tests on a
//! virtual clock and for embedding (the FFI layer).
//!
//! Dependency rule: this crate depends on `orrery-netcode` (sessions, envelopes, the
//! schema-driven row codec) and must not depend on `orrery-engine` or `orrery-server`;
//! everything it knows about a module comes from the schema JSON the server serves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use orrery_client::{Client, ClientOptions};
//! use serde_json::json;
//!
//! #[derive(serde::Deserialize)]
//! struct Npc { id: u64, name: String, hp: i32 }
//!
//! let client = Client::connect("http://127.0.0.1:3000", ClientOptions::default()).await?;
//! client.on_insert("npc", |row| tracing::info!(npc = %row.to_json(), "npc appeared"))?;
//! client.subscribe("SELECT * FROM npc WHERE hp > 0").await?;
//! match client.call("attack", json!({"target": 7})).await {
//!     Ok(reply) => tracing::info!(tick = reply.tick, "attacked"),
//!     Err(e) if e.reducer_error().is_some() => tracing::warn!("refused: {e}"),
//!     Err(e) => return Err(e.into()),
//! }
//! let npcs: Vec<Npc> = client.rows("npc")?;
//! # let _ = npcs;
//! # Ok(()) }
//! ```
//!
//! Design notes: `docs/client.md`.

mod client;
mod core;
mod error;
pub mod http;
pub mod link;
pub mod metrics;
pub mod mirror;

pub use client::{Client, ClientOptions, ClientStats, QueryHandle, Reply};
pub use core::{ClientCore, DEFAULT_ZONE_MOVE_SETTLE, Event};
pub use error::{CallError, ClientError, MirrorError};
pub use mirror::{CallbackId, Callbacks, Mirror, MirrorChange, MirrorStats, Row};

/// The netcode crate this client speaks (sessions, envelopes).
pub use orrery_netcode as netcode;
/// The data model and row codec (schema types, [`row::Value`], JSON mapping, wire records).
pub use orrery_row as row;
