//! `orrery-netcode`: Orrery's wire protocol and UDP networking.
//!
//! It owns the envelopes clients and servers exchange ([`protocol`]), connect tokens
//! ([`token`]), the sans-IO server and client sessions ([`server`], [`client`]) that run
//! netcode 1.02-style secure connections with renet's reliable and unreliable channels on
//! top, a seeded loss/latency simulator with an in-memory harness ([`sim`]), and the UDP socket
//! edge ([`udp`]). Row payloads inside envelopes are opaque bytes in the Orrery row format,
//! which `orrery-row` owns (`netcode/ROW_FORMAT.md` specifies it).
//!
//! Sessions are sans-IO: they take the time (`now`, a `Duration` since the Unix epoch) and
//! received datagrams, and hand back datagrams to send ([`Transmit`]) and events. They never
//! read a clock or touch a socket, so tests drive N clients against a server on a virtual
//! clock.
//!
//! Dependency rule: this crate depends on `orrery-row` and never on `orrery-engine`, bevy,
//! the publisher or the server (`orrery-client ─► orrery-netcode ─► orrery-row`); see
//! `docs/architecture.md`. Its design is in `docs/netcode.md`.

mod channel;
pub mod client;
pub mod error;
mod packet;
pub mod protocol;
pub mod server;
pub mod sim;
pub mod token;
pub mod udp;

use std::net::SocketAddr;
use std::time::Duration;

pub use channel::{RELIABLE, UNRELIABLE};
pub use client::{ClientEvent, ClientSession, ClientSessionConfig, ClientState};
pub use error::{
    ConnectError, DisconnectReason, EnvelopeDecodeError, RejectReason, SendError, TokenError,
};
pub use protocol::{ClientMessage, Encoded, PROTOCOL_VERSION, ServerMessage};
pub use server::{ClientStats, ServerEvent, ServerSession, ServerSessionConfig, ServerStats};
pub use token::{ConnectToken, ConnectTokenIssuer, PrivateKey};

/// A connection on a server is named by the client id of its connect token, as the same
/// [`ConnectionId`] the engine hands reducers (`ctx.connection_id`); the [`Identity`] in a
/// token is the engine's `ctx.sender`.
pub use orrery_row::{ConnectionId, Identity};

/// The channel a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Reliable and ordered.
    Reliable,
    /// May be lost, duplicated-free, unordered.
    Unreliable,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The datagram (at most 1,400 bytes).
    pub bytes: Vec<u8>,
}

/// The wall clock as the sessions expect it: time since the Unix epoch.
pub fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Netcode protocol id Orrery servers use unless configured otherwise ("ORRERY" + version).
pub const DEFAULT_PROTOCOL_ID: u64 = 0x4f52_5245_5259_0000 | PROTOCOL_VERSION as u64;
