//! What passes between the network side (the netcode [`ServerSession`]) and the tick side
//! ([`crate::TickCore`]): [`NetEvent`]s in, [`NetCommand`]s out, and the two functions that move
//! them in and out of a session. The same functions serve the single-threaded
//! [`crate::ServerCore`] and the threaded runtime, where the two sides are joined by channels.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use orrery_netcode::Identity;
use orrery_netcode::{
    ClientMessage, ConnectionId, DisconnectReason, PrivateKey, SendError, ServerEvent,
    ServerMessage, ServerSession,
};
use serde::Serialize;

use crate::config::ServerConfig;
use crate::metrics::{Metrics, NetWorkerSample};

/// Something that happened on the network, for the tick side.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// A client completed the handshake.
    Connected {
        /// The connection.
        client: ConnectionId,
        /// Its identity (from the connect token).
        identity: Identity,
        /// Its address.
        addr: SocketAddr,
    },
    /// A message from a connected client.
    Message {
        /// The sender.
        client: ConnectionId,
        /// The message.
        msg: ClientMessage,
    },
    /// A connected client is gone.
    Disconnected {
        /// The connection.
        client: ConnectionId,
        /// Why.
        reason: DisconnectReason,
    },
    /// The session resent reliable bytes to a client (charged to its publish budget, so a
    /// lossy or lagging client's downstream stays within the budget, resends included).
    Resent {
        /// The connection.
        client: ConnectionId,
        /// Message bytes sent again since the last report.
        bytes: u64,
    },
}

/// Something the tick side wants done on the network.
#[derive(Debug, Clone, PartialEq)]
pub enum NetCommand {
    /// Queue a message on the client's reliable channel.
    Send {
        /// The client.
        client: ConnectionId,
        /// The message.
        msg: ServerMessage,
    },
    /// Disconnect the client with a reason (it receives `Disconnecting { reason }`).
    Disconnect {
        /// The client.
        client: ConnectionId,
        /// Why.
        reason: String,
    },
}

/// A connected client as the admin API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClientInfo {
    /// The connection id (the connect token's client id).
    pub client_id: ConnectionId,
    /// Identity, 64 hex characters.
    pub identity: String,
    /// The client's address.
    pub address: String,
    /// Authenticated datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Unacknowledged reliable bytes.
    pub backlog_bytes: usize,
    /// Round-trip time estimate, milliseconds.
    pub rtt_ms: f64,
    /// Packet loss estimate, 0..1.
    pub packet_loss: f64,
}

/// The netcode session configuration for `config`.
pub fn session_config(
    config: &ServerConfig,
    key: PrivateKey,
    public_addresses: Vec<SocketAddr>,
) -> orrery_netcode::ServerSessionConfig {
    let mut c = orrery_netcode::ServerSessionConfig::new(
        key,
        orrery_netcode::DEFAULT_PROTOCOL_ID,
        public_addresses,
    );
    c.max_clients = config.max_clients;
    c.max_pending = config.max_pending;
    c.max_pending_per_ip = config.max_pending_per_ip;
    c.max_client_message = config.max_client_message;
    c.max_server_message = config.max_server_message;
    c.max_backlog = config.max_backlog;
    c
}

/// Moves the session's events into `out`, then its resend reports (and counts backlog
/// disconnects and resent bytes).
pub fn drain_events(session: &mut ServerSession, out: &mut Vec<NetEvent>, metrics: &Metrics) {
    let mut resent = Vec::new();
    session.drain_resent(&mut resent);
    for (client, bytes) in resent {
        metrics.resent_bytes.fetch_add(bytes, Relaxed);
        out.push(NetEvent::Resent { client, bytes });
    }
    while let Some(event) = session.poll_event() {
        match event {
            ServerEvent::Connected {
                client,
                identity,
                addr,
            } => out.push(NetEvent::Connected {
                client,
                identity,
                addr,
            }),
            ServerEvent::Message { client, msg, .. } => out.push(NetEvent::Message { client, msg }),
            ServerEvent::Disconnected { client, reason } => {
                if matches!(reason, DisconnectReason::BacklogExceeded { .. }) {
                    metrics.backlog_disconnects.fetch_add(1, Relaxed);
                }
                out.push(NetEvent::Disconnected { client, reason });
            }
            ServerEvent::Rejected {
                addr,
                client,
                reason,
            } => {
                tracing::debug!(%addr, ?client, %reason, "netcode rejected a peer");
            }
        }
    }
}

/// The session's counters as network worker counters, with `busy_us` of work.
pub fn worker_sample(session: &ServerSession, busy_us: u64) -> NetWorkerSample {
    let s = session.stats();
    NetWorkerSample {
        datagrams_in: s.datagrams_in,
        datagrams_out: s.datagrams_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        datagrams_dropped: s.dropped_malformed + s.dropped_unauthenticated + s.dropped_unknown_addr,
        rejections: s.rejections,
        // From the counters: `connected_clients` scans every slot, too slow per wake-up.
        clients: s.connects.saturating_sub(s.disconnects),
        busy_us,
    }
}

/// The network worker (shard) that owns `client`: connection ids are assigned to workers
/// round-robin by the token issuer, `client_id % workers`.
pub fn shard_of(client: ConnectionId, workers: usize) -> usize {
    (client.0 % workers.max(1) as u64) as usize
}

/// Carries out the tick side's commands on the session. A send to a client whose backlog is
/// full disconnects that client (the session reports it as a `Disconnected` event); a send to
/// a client that has left is dropped.
pub fn apply_commands(session: &mut ServerSession, commands: impl IntoIterator<Item = NetCommand>) {
    for command in commands {
        match command {
            NetCommand::Send { client, msg } => match session.send(client, &msg) {
                Ok(()) | Err(SendError::UnknownClient(_)) => {}
                Err(error) => tracing::debug!(%client, %error, "send failed"),
            },
            NetCommand::Disconnect { client, reason } => {
                session.disconnect(client, &reason);
            }
        }
    }
}

/// The connected clients with their counters.
pub fn list_clients(session: &ServerSession) -> Vec<ClientInfo> {
    let mut ids: Vec<ConnectionId> = session.clients().collect();
    ids.sort();
    ids.into_iter()
        .filter_map(|client| {
            let stats = session.client_stats(client)?;
            let identity = session.identity(client)?;
            let addr = session.client_addr(client)?;
            Some(ClientInfo {
                client_id: client,
                identity: identity.to_hex(),
                address: addr.to_string(),
                datagrams_in: stats.datagrams_in,
                datagrams_out: stats.datagrams_out,
                bytes_in: stats.bytes_in,
                bytes_out: stats.bytes_out,
                backlog_bytes: stats.backlog_bytes,
                rtt_ms: stats.rtt.as_secs_f64() * 1000.0,
                packet_loss: stats.packet_loss,
            })
        })
        .collect()
}
