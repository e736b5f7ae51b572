//! The sans-IO client session: one connection to a server, from a connect token.
//!
//! Same shape as the server: [`ClientSession::handle_datagram`] for each received datagram,
//! [`ClientSession::poll_event`], [`ClientSession::send`], [`ClientSession::update`] once per
//! frame, [`ClientSession::drain_transmits`].
//!
//! Connecting: connection request (repeated every 100 ms) → challenge → response (repeated)
//! → keep-alive → the client's [`crate::protocol::ClientHello`] (queued first on the reliable
//! channel) → the server's hello and [`ServerMessage::IdentityInfo`] → [`ClientEvent::Connected`].
//! Messages sent while connecting are queued and delivered after the hello.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use renet::Bytes;

use crate::channel::{Link, LinkLimits, RELIABLE, UNRELIABLE};
use crate::error::{ConnectError, DisconnectReason, SendError};
use crate::packet::{
    self, CHALLENGE_TOKEN_BYTES, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, Packet, ReplayProtection,
};
use crate::protocol::{
    self, ClientHello, ClientMessage, DEFAULT_MAX_CLIENT_MESSAGE, DEFAULT_MAX_SERVER_MESSAGE,
    Encoded, HELLO_MAGIC, MAX_UNRELIABLE_MESSAGE, PROTOCOL_VERSION, ServerMessage,
};
use crate::token::ConnectToken;
use crate::{Channel, Transmit};
use orrery_row::{ConnectionId, Identity};

/// Configuration of a [`ClientSession`].
#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// Largest client → server message (must match the server's; default 64 KiB).
    pub max_client_message: usize,
    /// Largest server → client message accepted (default 4 MiB).
    pub max_server_message: usize,
    /// Unacknowledged reliable bytes the client holds (default 1 MiB).
    pub max_backlog: usize,
    /// Bytes sent per [`ClientSession::update`] (default 64 KiB).
    pub bytes_per_update: u64,
    /// Shortest resend interval of unacknowledged reliable packets (default 200 ms): above it
    /// the interval follows the measured round trip (1.5 round trips plus 10 ms), so a slow
    /// peer is not sent everything twice.
    pub resend: Duration,
    /// How long data from the server may wait for its acknowledgement when the client has
    /// nothing else to send (default 100 ms). A server sending every tick would otherwise
    /// get an ack-only datagram back for each of its own (20 a second at 20 Hz from every
    /// client: most of a busy server's incoming datagrams); acks also ride on every call. Keep
    /// it below the server's shortest resend interval (200 ms) so acks never arrive late
    /// enough to cause resends.
    pub ack_delay: Duration,
    /// Interval of connection requests and responses while connecting (default 100 ms).
    pub request_interval: Duration,
    /// A keep-alive goes out after this long without sending (default 250 ms).
    pub keepalive: Duration,
    /// The version announced in the hello: [`PROTOCOL_VERSION`] (other values test refusal).
    #[doc(hidden)]
    pub protocol_version: u16,
}

impl Default for ClientSessionConfig {
    fn default() -> Self {
        Self {
            max_client_message: DEFAULT_MAX_CLIENT_MESSAGE,
            max_server_message: DEFAULT_MAX_SERVER_MESSAGE,
            max_backlog: 1024 * 1024,
            bytes_per_update: 64 * 1024,
            resend: Duration::from_millis(200),
            ack_delay: Duration::from_millis(100),
            request_interval: Duration::from_millis(100),
            keepalive: Duration::from_millis(250),
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

/// What happened on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server accepted the client.
    Connected {
        /// The client's identity (from its token).
        identity: Identity,
        /// This connection's id.
        connection_id: ConnectionId,
    },
    /// A message from the server.
    Message {
        /// The message.
        msg: ServerMessage,
        /// The channel it arrived on.
        channel: Channel,
    },
    /// The connection ended (or never came up); the session is finished.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

/// Where the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Handshaking.
    Connecting,
    /// Accepted by the server.
    Connected,
    /// Finished.
    Disconnected(DisconnectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SendingRequest,
    SendingResponse,
    /// Netcode connected; waiting for the server's hello and identity.
    Linked,
    Ready,
    Closed,
}

/// Client counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSessionStats {
    /// Datagrams received that authenticated.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received (authenticated).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams dropped (not from the server, malformed, unauthenticated, replayed).
    pub dropped: u64,
}

/// One client connection (see the module docs).
#[derive(Debug)]
pub struct ClientSession {
    token: ConnectToken,
    config: ClientSessionConfig,
    phase: Phase,
    state: ClientState,
    server_index: usize,
    server_addr: SocketAddr,
    sequence: u64,
    replay: ReplayProtection,
    connect_start: Duration,
    last_recv: Duration,
    last_send: Option<Duration>,
    last_update: Duration,
    now: Duration,
    challenge: Option<(u64, [u8; CHALLENGE_TOKEN_BYTES])>,
    link: Link,
    hello_done: bool,
    server_reason: Option<String>,
    identity: Option<(Identity, ConnectionId)>,
    events: VecDeque<ClientEvent>,
    transmits: Vec<Transmit>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    stats: ClientSessionStats,
}

impl ClientSession {
    /// A session that connects with `token` (starting at `now`, time since the Unix epoch).
    pub fn new(
        config: ClientSessionConfig,
        token: ConnectToken,
        now: Duration,
    ) -> Result<Self, ConnectError> {
        if now.as_secs() >= token.expire_timestamp {
            return Err(ConnectError::Expired {
                expire_timestamp: token.expire_timestamp,
                now: now.as_secs(),
            });
        }
        let Some(&server_addr) = token.server_addresses.first() else {
            return Err(ConnectError::Token(crate::TokenError::ServerAddressCount(
                0,
            )));
        };
        let limits = LinkLimits {
            send_backlog: config.max_backlog,
            send_unreliable: 256 * 1024,
            max_incoming: config.max_server_message,
            bytes_per_update: config.bytes_per_update,
            ack_delay: config.ack_delay,
            resend: config.resend,
        };
        let mut link = Link::new(limits);
        let hello = ClientHello {
            magic: HELLO_MAGIC,
            protocol_version: config.protocol_version,
        };
        let _ = link.send_reliable(Bytes::from(bitcode::encode(&hello)));
        Ok(Self {
            token,
            config,
            phase: Phase::SendingRequest,
            state: ClientState::Connecting,
            server_index: 0,
            server_addr,
            sequence: 0,
            replay: ReplayProtection::new(),
            connect_start: now,
            last_recv: now,
            last_send: None,
            last_update: now,
            now,
            challenge: None,
            link,
            hello_done: false,
            server_reason: None,
            identity: None,
            events: VecDeque::new(),
            transmits: Vec::new(),
            scratch: Vec::with_capacity(MAX_PACKET_BYTES),
            out: Vec::with_capacity(MAX_PACKET_BYTES),
            stats: ClientSessionStats::default(),
        })
    }

    /// [`ClientSession::new`] from the token's bytes (as served by the control plane).
    pub fn from_token_bytes(
        config: ClientSessionConfig,
        token: &[u8],
        now: Duration,
    ) -> Result<Self, ConnectError> {
        Self::new(config, ConnectToken::from_bytes(token)?, now)
    }

    /// Where the client is.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// Whether the server accepted the client (and it is still connected).
    pub fn is_connected(&self) -> bool {
        self.state == ClientState::Connected
    }

    /// The identity and connection id, once connected.
    pub fn identity(&self) -> Option<(Identity, ConnectionId)> {
        self.identity
    }

    /// The server address in use.
    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    /// Counters.
    pub fn stats(&self) -> &ClientSessionStats {
        &self.stats
    }

    /// Unacknowledged reliable bytes.
    pub fn backlog_bytes(&self) -> usize {
        self.link.backlog()
    }

    /// Round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        Duration::from_secs_f64(self.link.rtt().clamp(0.0, 3600.0))
    }

    /// Processes one received datagram. Never panics; anything not from the server or not
    /// authentic is dropped.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.now = self.now.max(now);
        if from != self.server_addr || self.phase == Phase::Closed || bytes.len() > MAX_PACKET_BYTES
        {
            self.stats.dropped += 1;
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        let key = self.token.server_to_client_key;
        let packet = match packet::decode(
            &mut self.scratch,
            self.token.protocol_id,
            &key,
            Some(&mut self.replay),
        ) {
            Ok((_, p)) => p,
            Err(_) => {
                self.stats.dropped += 1;
                return;
            }
        };
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        match (packet, self.phase) {
            (Packet::Denied, Phase::SendingRequest | Phase::SendingResponse) => {
                self.close(DisconnectReason::ConnectionDenied, false);
            }
            (
                Packet::Challenge {
                    token_sequence,
                    token,
                },
                Phase::SendingRequest,
            ) => {
                self.challenge = Some((token_sequence, *token));
                self.phase = Phase::SendingResponse;
                self.last_recv = self.now;
                self.last_send = None;
            }
            (Packet::KeepAlive { .. }, Phase::SendingResponse) => {
                self.phase = Phase::Linked;
                self.last_recv = self.now;
            }
            (Packet::KeepAlive { .. }, Phase::Linked | Phase::Ready) => self.last_recv = self.now,
            (Packet::Payload(p), Phase::SendingResponse | Phase::Linked | Phase::Ready) => {
                if self.phase == Phase::SendingResponse {
                    self.phase = Phase::Linked;
                }
                self.last_recv = self.now;
                let result = self.link.process_bundle(p);
                if let Err(reason) = result {
                    self.close(reason, true);
                    return;
                }
                self.drain_messages();
            }
            (Packet::Disconnect, Phase::Linked | Phase::Ready) => {
                let reason = self
                    .server_reason
                    .take()
                    .unwrap_or_else(|| "disconnected by the server".to_string());
                self.close(DisconnectReason::ByServer(reason), false);
            }
            _ => {}
        }
    }

    fn drain_messages(&mut self) {
        while self.phase != Phase::Closed {
            let Some(bytes) = self.link.receive(RELIABLE) else {
                break;
            };
            self.handle_message(Channel::Reliable, &bytes);
        }
        while self.phase == Phase::Ready {
            let Some(bytes) = self.link.receive(UNRELIABLE) else {
                break;
            };
            self.handle_message(Channel::Unreliable, &bytes);
        }
    }

    fn handle_message(&mut self, channel: Channel, bytes: &[u8]) {
        if !self.hello_done {
            match protocol::decode_server_hello(bytes) {
                Ok(h) if h.refusal.is_none() && h.protocol_version == PROTOCOL_VERSION => {
                    self.hello_done = true
                }
                Ok(h) => {
                    let why = h.refusal.unwrap_or_else(|| {
                        format!(
                            "server protocol version {}, client {}",
                            h.protocol_version, PROTOCOL_VERSION
                        )
                    });
                    self.close(DisconnectReason::HelloRefused(why), true);
                }
                Err(e) => self.close(
                    DisconnectReason::HelloRefused(format!("invalid server hello: {e}")),
                    true,
                ),
            }
            return;
        }
        let msg = match protocol::decode_server(bytes, self.config.max_server_message) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable message from the server");
                let reason = DisconnectReason::Rejected(crate::RejectReason::Malformed(e));
                self.close(reason, true);
                return;
            }
        };
        match msg {
            ServerMessage::IdentityInfo {
                identity,
                connection_id,
            } if self.phase == Phase::Linked => {
                self.phase = Phase::Ready;
                self.state = ClientState::Connected;
                let (identity, connection_id) = (Identity(identity), ConnectionId(connection_id));
                self.identity = Some((identity, connection_id));
                self.events.push_back(ClientEvent::Connected {
                    identity,
                    connection_id,
                });
            }
            ServerMessage::Disconnecting { reason } => {
                self.server_reason = Some(reason.clone());
                self.events.push_back(ClientEvent::Message {
                    msg: ServerMessage::Disconnecting { reason },
                    channel,
                });
            }
            msg => self.events.push_back(ClientEvent::Message { msg, channel }),
        }
    }

    /// Ends the session; `notify` tells the server.
    fn close(&mut self, reason: DisconnectReason, notify: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        if notify && matches!(self.phase, Phase::Linked | Phase::Ready) {
            for _ in 0..3 {
                self.send_packet(&Packet::Disconnect);
            }
        }
        tracing::debug!(%reason, server = %self.server_addr, "client session closed");
        self.phase = Phase::Closed;
        self.state = ClientState::Disconnected(reason.clone());
        self.events.push_back(ClientEvent::Disconnected { reason });
    }

    fn send_packet(&mut self, packet: &Packet<'_>) {
        let key = self.token.client_to_server_key;
        if packet::encode(
            &mut self.out,
            packet,
            self.sequence,
            self.token.protocol_id,
            &key,
        )
        .is_err()
        {
            return;
        }
        self.sequence += 1;
        self.last_send = Some(self.now);
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += self.out.len() as u64;
        self.transmits.push(Transmit {
            to: self.server_addr,
            bytes: self.out.clone(),
        });
    }

    /// Advances time: handshake retries, timeouts, keep-alives, and queued messages become
    /// datagrams.
    pub fn update(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let dt = self.now.saturating_sub(self.last_update);
        self.last_update = self.now;
        let now = self.now;
        let timeout = u64::try_from(self.token.timeout_seconds)
            .ok()
            .map(Duration::from_secs);
        let timed_out = timeout.is_some_and(|t| now.saturating_sub(self.last_recv) > t);
        match self.phase {
            Phase::Closed => {}
            Phase::SendingRequest | Phase::SendingResponse => {
                let lifetime = Duration::from_secs(
                    self.token
                        .expire_timestamp
                        .saturating_sub(self.token.create_timestamp),
                );
                if now.saturating_sub(self.connect_start) >= lifetime {
                    self.close(DisconnectReason::TokenExpired, false);
                    return;
                }
                if timed_out {
                    // Try the token's next server address.
                    self.server_index += 1;
                    match self.token.server_addresses.get(self.server_index) {
                        Some(&addr) => {
                            self.server_addr = addr;
                            self.phase = Phase::SendingRequest;
                            self.challenge = None;
                            self.last_recv = now;
                            self.last_send = None;
                        }
                        None => {
                            let tried = self.token.server_addresses.clone();
                            self.close(DisconnectReason::ConnectTimedOut(tried), false);
                            return;
                        }
                    }
                }
                if self
                    .last_send
                    .is_some_and(|t| now.saturating_sub(t) < self.config.request_interval)
                {
                    return;
                }
                if self.phase == Phase::SendingRequest {
                    let t = &self.token;
                    packet::encode_request(
                        &mut self.out,
                        t.protocol_id,
                        t.expire_timestamp,
                        &t.xnonce,
                        &t.private_data,
                    );
                    self.sequence += 1;
                    self.last_send = Some(now);
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += self.out.len() as u64;
                    self.transmits.push(Transmit {
                        to: self.server_addr,
                        bytes: self.out.clone(),
                    });
                } else if let Some((token_sequence, token)) = self.challenge {
                    self.send_packet(&Packet::Response {
                        token_sequence,
                        token: &token,
                    });
                }
            }
            Phase::Linked | Phase::Ready => {
                if timed_out {
                    self.close(DisconnectReason::TimedOut, true);
                    return;
                }
                if let Err(reason) = self.link.update(dt) {
                    self.close(reason, true);
                    return;
                }
                let bundles = self.link.bundles(MAX_PAYLOAD_BYTES);
                for b in &bundles {
                    self.send_packet(&Packet::Payload(b));
                }
                if bundles.is_empty()
                    && self
                        .last_send
                        .is_none_or(|t| now.saturating_sub(t) >= self.config.keepalive)
                {
                    self.send_packet(&Packet::KeepAlive {
                        client_index: 0,
                        max_clients: 0,
                    });
                }
            }
        }
    }

    /// Moves the datagrams to send into `out` (appending).
    pub fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        out.append(&mut self.transmits);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues a message on the reliable channel (allowed while connecting).
    pub fn send(&mut self, msg: &ClientMessage) -> Result<(), SendError> {
        self.send_encoded(&Encoded::client(msg))
    }

    /// Queues already-encoded bytes on the reliable channel.
    pub fn send_encoded(&mut self, msg: &Encoded) -> Result<(), SendError> {
        if self.phase == Phase::Closed {
            return Err(SendError::NotConnected);
        }
        if msg.len() > self.config.max_client_message {
            return Err(SendError::MessageTooLarge {
                size: msg.len(),
                max: self.config.max_client_message,
            });
        }
        self.link
            .send_reliable(msg.0.clone())
            .map_err(|backlog| SendError::BacklogExceeded {
                backlog,
                limit: self.link.backlog_limit(),
            })
    }

    /// Queues a message on the unreliable channel (only once connected; may be lost).
    pub fn send_unreliable(&mut self, msg: &ClientMessage) -> Result<(), SendError> {
        if self.phase != Phase::Ready {
            return Err(SendError::NotConnected);
        }
        let e = Encoded::client(msg);
        if e.len() > MAX_UNRELIABLE_MESSAGE {
            return Err(SendError::MessageTooLarge {
                size: e.len(),
                max: MAX_UNRELIABLE_MESSAGE,
            });
        }
        self.link.send_unreliable(e.0);
        Ok(())
    }

    /// Sends raw bytes on the reliable channel with no size check (tests of server limits).
    #[doc(hidden)]
    pub fn send_raw_unchecked(&mut self, bytes: Vec<u8>) {
        let _ = self.link.send_reliable(Bytes::from(bytes));
    }

    /// Sends `payload` as one encrypted netcode payload packet, bypassing renet (fuzz tests
    /// throw arbitrary reliability-layer bytes at the server through an authenticated client).
    #[doc(hidden)]
    pub fn send_raw_payload(&mut self, payload: &[u8]) {
        if matches!(self.phase, Phase::Linked | Phase::Ready) {
            self.send_packet(&Packet::Payload(payload));
        }
    }

    /// Disconnects (tells the server) and finishes the session.
    pub fn disconnect(&mut self) {
        self.close(DisconnectReason::ByClient, true);
    }
}
