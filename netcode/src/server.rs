//! The sans-IO server session: every client connection of one server process.
//!
//! One [`ServerSession`] holds any number of clients (4,096 and more) behind one socket or
//! several. Datagrams are routed by a hash map from address to connection slot, so the cost of
//! one datagram does not depend on how many clients are connected; the once-per-tick
//! [`ServerSession::update`] visits each connection once.
//!
//! Driving it, once per tick:
//!
//! 1. [`ServerSession::handle_datagram`] for each received datagram;
//! 2. [`ServerSession::poll_event`] until `None`: `Connected`, `Message`, `Disconnected`,
//!    `Rejected`;
//! 3. [`ServerSession::send`] replies and updates (queued in each client's reliable channel);
//! 4. [`ServerSession::update`] to advance time, time out silent clients, and turn queued
//!    messages into datagrams;
//! 5. [`ServerSession::drain_transmits`] and send them.
//!
//! Security is netcode 1.02's: a client proves it holds a connect token issued with the
//! server's private key (not expired, naming one of this server's addresses, not used before),
//! answers a challenge encrypted with a key that never leaves the server, and from then on
//! every packet is encrypted and authenticated with per-token keys and checked against a
//! replay window.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use renet::Bytes;
use rustc_hash::FxHashMap;

use crate::channel::{Link, LinkLimits, RELIABLE, UNRELIABLE};
use crate::error::{DisconnectReason, RejectReason, SendError};
use crate::packet::{
    self, KEY_BYTES, Kind, MAC_BYTES, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, PRIVATE_TOKEN_BYTES,
    Packet, ReplayProtection, USER_DATA_BYTES,
};
use crate::protocol::{
    self, ClientMessage, DEFAULT_MAX_CLIENT_MESSAGE, DEFAULT_MAX_SERVER_MESSAGE, Encoded,
    HELLO_MAGIC, MAX_UNRELIABLE_MESSAGE, PROTOCOL_VERSION, ServerHello, ServerMessage,
};
use crate::token::{OpenError, PrivateKey, PrivateToken, identity_of};
use crate::{Channel, ConnectionId, Transmit};
use orrery_row::Identity;

/// Configuration of a [`ServerSession`].
#[derive(Debug, Clone)]
pub struct ServerSessionConfig {
    /// The key connect tokens are issued with.
    pub private_key: PrivateKey,
    /// Protocol id tokens and packets must carry.
    pub protocol_id: u64,
    /// Public addresses of this server; a token must name one of them.
    pub public_addresses: Vec<SocketAddr>,
    /// Live connections at most (default 16,384).
    pub max_clients: usize,
    /// Handshakes in progress at most (default 4,096). When the table is full, a new
    /// handshake evicts the oldest one, so a flood of requests cannot lock legitimate
    /// players out: a handshake completes within one round trip.
    pub max_pending: usize,
    /// Handshakes in progress from one IP address at most (default 16); one per address and
    /// port in any case.
    pub max_pending_per_ip: usize,
    /// Largest client → server message (default 64 KiB). Larger ones disconnect the client.
    pub max_client_message: usize,
    /// Largest server → client message (default 4 MiB; the client's limit).
    pub max_server_message: usize,
    /// Unacknowledged reliable bytes per client (default 1 MiB). A send beyond it disconnects
    /// the client with [`DisconnectReason::BacklogExceeded`].
    pub max_backlog: usize,
    /// Queued unreliable bytes per client (default 256 KiB; beyond it messages are dropped).
    pub max_unreliable_queue: usize,
    /// Bytes sent per client per [`ServerSession::update`] (default 64 KiB).
    pub bytes_per_update: u64,
    /// Shortest resend interval of unacknowledged reliable packets (default 200 ms): above it
    /// the interval follows the measured round trip (1.5 round trips plus 10 ms), so a slow
    /// peer is not sent everything twice.
    pub resend: Duration,
    /// A keep-alive goes out after this long without sending to a client (default 250 ms).
    pub keepalive: Duration,
    /// A client must send its hello within this time after the handshake (default 5 s).
    pub hello_timeout: Duration,
    /// `Rejected` events about connection attempts per second at most (default 64); the rest
    /// are only counted in [`ServerStats`], so a flood cannot grow the event queue.
    pub rejection_events_per_sec: u32,
    /// Live connect tokens remembered for replay protection at most (default 65,536).
    pub max_tokens: usize,
}

impl ServerSessionConfig {
    /// A configuration with the defaults above.
    pub fn new(
        private_key: PrivateKey,
        protocol_id: u64,
        public_addresses: Vec<SocketAddr>,
    ) -> Self {
        Self {
            private_key,
            protocol_id,
            public_addresses,
            max_clients: 16_384,
            max_pending: 4_096,
            max_pending_per_ip: 16,
            max_client_message: DEFAULT_MAX_CLIENT_MESSAGE,
            max_server_message: DEFAULT_MAX_SERVER_MESSAGE,
            max_backlog: 1024 * 1024,
            max_unreliable_queue: 256 * 1024,
            bytes_per_update: 64 * 1024,
            resend: Duration::from_millis(200),
            keepalive: Duration::from_millis(250),
            hello_timeout: Duration::from_secs(5),
            rejection_events_per_sec: 64,
            max_tokens: 65_536,
        }
    }
}

/// What happened on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client completed the handshake and its hello; it can be sent to.
    Connected {
        /// The connection.
        client: ConnectionId,
        /// The identity from its connect token.
        identity: Identity,
        /// Its address.
        addr: SocketAddr,
    },
    /// A connected client is gone. Exactly one per `Connected`.
    Disconnected {
        /// The connection.
        client: ConnectionId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A message from a connected client.
    Message {
        /// The sender.
        client: ConnectionId,
        /// The message.
        msg: ClientMessage,
        /// The channel it arrived on.
        channel: Channel,
    },
    /// A connection attempt was refused, or a client broke the protocol (it is then
    /// disconnected, with a `Disconnected` event if it had connected).
    Rejected {
        /// The peer's address.
        addr: SocketAddr,
        /// The connection, if the peer had completed the handshake.
        client: Option<ConnectionId>,
        /// Why.
        reason: RejectReason,
    },
}

/// Per-client counters (for metrics and per-client rate limits: take differences per tick).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStats {
    /// Datagrams received that authenticated.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received (authenticated datagrams).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Messages received (both channels).
    pub messages_in: u64,
    /// Messages queued for sending (both channels).
    pub messages_out: u64,
    /// Unacknowledged reliable bytes.
    pub backlog_bytes: usize,
    /// Reliable message bytes sent again (resends).
    pub resent_bytes: u64,
    /// Round-trip time estimate.
    pub rtt: Duration,
    /// How long an unacknowledged reliable packet waits before it is sent again (follows
    /// `rtt`, never below `ServerSessionConfig::resend`).
    pub resend: Duration,
    /// Packet loss estimate (0..1).
    pub packet_loss: f64,
}

/// Whole-server counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_in: u64,
    /// Bytes handed to `handle_datagram`.
    pub bytes_in: u64,
    /// Datagrams produced.
    pub datagrams_out: u64,
    /// Bytes produced.
    pub bytes_out: u64,
    /// Datagrams that were not valid packets (size, type, framing).
    pub dropped_malformed: u64,
    /// Datagrams from known addresses that failed authentication or were replays.
    pub dropped_unauthenticated: u64,
    /// Non-request datagrams from unknown addresses.
    pub dropped_unknown_addr: u64,
    /// Connection requests seen.
    pub connection_requests: u64,
    /// Connection attempts refused and protocol violations (all of them).
    pub rejections: u64,
    /// Rejections not reported as events because of `rejection_events_per_sec`.
    pub rejection_events_suppressed: u64,
    /// Clients that completed the hello, ever.
    pub connects: u64,
    /// Clients that left, ever.
    pub disconnects: u64,
    /// Handshakes evicted, oldest first, to make room in a full table.
    pub pending_evicted: u64,
}

#[derive(Debug)]
struct Pending {
    /// Position in arrival order (matches its entry in `pending_order`).
    order: u64,
    client_id: u64,
    send_key: [u8; KEY_BYTES],
    recv_key: [u8; KEY_BYTES],
    timeout: Option<Duration>,
    expire_timestamp: u64,
    mac: [u8; MAC_BYTES],
    sequence: u64,
    replay: ReplayProtection,
    last_recv: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    AwaitHello { since: Duration },
    Ready,
}

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    addr: SocketAddr,
    identity: Identity,
    send_key: [u8; KEY_BYTES],
    recv_key: [u8; KEY_BYTES],
    sequence: u64,
    replay: ReplayProtection,
    last_recv: Duration,
    last_send: Duration,
    timeout: Option<Duration>,
    state: ConnState,
    link: Link,
    stats: ClientStats,
    /// The link's resent bytes last reported by [`ServerSession::drain_resent`].
    resent_reported: u64,
    /// Listed in `ServerSession::resent` (once per connection until drained).
    resent_listed: bool,
}

#[derive(Debug)]
struct TokenUse {
    addr: SocketAddr,
    expire_timestamp: u64,
    connected: bool,
}

/// The server side of every connection of one server (see the module docs).
#[derive(Debug)]
pub struct ServerSession {
    config: ServerSessionConfig,
    last_update: Duration,
    now: Duration,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    by_addr: HashMap<SocketAddr, usize>,
    by_id: FxHashMap<u64, usize>,
    pending: HashMap<SocketAddr, Pending>,
    /// Handshakes in progress per IP address.
    pending_per_ip: HashMap<IpAddr, usize>,
    /// Pending handshakes in arrival order, oldest first; entries of handshakes already gone
    /// are skipped when met and compacted away when they outnumber the live ones.
    pending_order: VecDeque<(SocketAddr, u64)>,
    next_pending_order: u64,
    tokens: HashMap<[u8; MAC_BYTES], TokenUse>,
    challenge_key: [u8; KEY_BYTES],
    challenge_sequence: u64,
    denied_sequence: u64,
    events: VecDeque<ServerEvent>,
    transmits: Vec<Transmit>,
    /// Connections that resent since the last [`ServerSession::drain_resent`] (each once, so
    /// the list stays within the connections even if nobody drains it).
    resent: Vec<ConnectionId>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    stats: ServerStats,
    rejection_budget: u32,
    budget_second: u64,
    received: Vec<(Channel, Bytes)>,
}

impl ServerSession {
    /// A server with no clients at `now` (time since the Unix epoch).
    ///
    /// Fails only if the operating system's random source fails (for the challenge key).
    pub fn new(config: ServerSessionConfig, now: Duration) -> Result<Self, crate::TokenError> {
        let challenge_key =
            packet::random_bytes().map_err(|e| crate::TokenError::Random(e.to_string()))?;
        let rejection_budget = config.rejection_events_per_sec;
        Ok(Self {
            config,
            last_update: now,
            now,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_addr: HashMap::new(),
            by_id: FxHashMap::default(),
            pending: HashMap::new(),
            pending_per_ip: HashMap::new(),
            pending_order: VecDeque::new(),
            next_pending_order: 0,
            tokens: HashMap::new(),
            challenge_key,
            challenge_sequence: 0,
            denied_sequence: 1 << 62,
            events: VecDeque::new(),
            transmits: Vec::new(),
            resent: Vec::new(),
            scratch: Vec::with_capacity(MAX_PACKET_BYTES),
            out: Vec::with_capacity(MAX_PACKET_BYTES),
            stats: ServerStats::default(),
            rejection_budget,
            budget_second: now.as_secs(),
            received: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerSessionConfig {
        &self.config
    }

    /// The latest time the session was given.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Processes one received datagram. Never panics; invalid datagrams are counted in
    /// [`ServerStats`] and dropped.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.now = self.now.max(now);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if bytes.is_empty() || bytes.len() > MAX_PACKET_BYTES {
            self.stats.dropped_malformed += 1;
            return;
        }
        if let Some(&slot) = self.by_addr.get(&from) {
            match packet::kind_of(bytes) {
                // A new handshake from an address that has a connection: the client there
                // started a new session (it came back after a zone move whose disconnect
                // packets were lost, or restarted on the same port). The handshake runs
                // beside the connection and replaces it once complete (`accept`): only who
                // receives at the address can answer the challenge, so a spoofed request ends
                // nothing.
                Ok(Kind::Request) => self.handle_request(from, bytes),
                Ok(Kind::Response) if self.pending.contains_key(&from) => {
                    self.handle_pending(from, bytes);
                }
                _ => self.handle_connected(slot, bytes),
            }
            return;
        }
        match packet::kind_of(bytes) {
            Ok(Kind::Request) => self.handle_request(from, bytes),
            Ok(_) if self.pending.contains_key(&from) => self.handle_pending(from, bytes),
            Ok(_) => self.stats.dropped_unknown_addr += 1,
            Err(_) => self.stats.dropped_malformed += 1,
        }
    }

    fn handle_connected(&mut self, slot: usize, bytes: &[u8]) {
        let protocol_id = self.config.protocol_id;
        let now = self.now;
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let packet = match packet::decode(
            &mut self.scratch,
            protocol_id,
            &conn.recv_key,
            Some(&mut conn.replay),
        ) {
            Ok((_, p)) => p,
            Err(packet::PacketError::Crypto | packet::PacketError::Replayed(_)) => {
                self.stats.dropped_unauthenticated += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        conn.last_recv = now;
        conn.stats.datagrams_in += 1;
        conn.stats.bytes_in += bytes.len() as u64;
        match packet {
            Packet::Payload(p) => {
                if let Err(reason) = conn.link.process_bundle(p) {
                    self.violation(slot, reason);
                    return;
                }
                self.drain_messages(slot);
            }
            Packet::Disconnect => self.remove(slot, DisconnectReason::ByClient, false),
            _ => {}
        }
    }

    /// Moves received messages of one client into events.
    fn drain_messages(&mut self, slot: usize) {
        let mut received = std::mem::take(&mut self.received);
        if let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            while let Some(m) = conn.link.receive(RELIABLE) {
                received.push((Channel::Reliable, m));
            }
            while let Some(m) = conn.link.receive(UNRELIABLE) {
                received.push((Channel::Unreliable, m));
            }
            conn.stats.messages_in += received.len() as u64;
        }
        for (channel, bytes) in received.drain(..) {
            if !self.handle_message(slot, channel, &bytes) {
                break;
            }
        }
        self.received = received;
    }

    /// Handles one message; `false` if the client was disconnected.
    fn handle_message(&mut self, slot: usize, channel: Channel, bytes: &[u8]) -> bool {
        let max = self.config.max_client_message;
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let client = conn.id;
        if let ConnState::AwaitHello { .. } = conn.state {
            if channel == Channel::Unreliable {
                return true; // nothing may precede the hello; unreliable noise is dropped
            }
            let hello = match protocol::decode_client_hello(bytes) {
                Ok(h) => h,
                Err(e) => {
                    self.violation(slot, DisconnectReason::Rejected(RejectReason::BadHello(e)));
                    return false;
                }
            };
            if hello.protocol_version != PROTOCOL_VERSION {
                let reason = RejectReason::VersionMismatch {
                    client: hello.protocol_version,
                    server: PROTOCOL_VERSION,
                };
                let reply = ServerHello {
                    magic: HELLO_MAGIC,
                    protocol_version: PROTOCOL_VERSION,
                    refusal: Some(reason.to_string()),
                };
                let _ = conn
                    .link
                    .send_reliable(Bytes::from(bitcode::encode(&reply)));
                self.violation(slot, DisconnectReason::Rejected(reason));
                return false;
            }
            let reply = ServerHello {
                magic: HELLO_MAGIC,
                protocol_version: PROTOCOL_VERSION,
                refusal: None,
            };
            let info = ServerMessage::IdentityInfo {
                identity: conn.identity.0,
                connection_id: client.0,
            };
            let _ = conn
                .link
                .send_reliable(Bytes::from(bitcode::encode(&reply)));
            let _ = conn.link.send_reliable(Encoded::server(&info).0);
            conn.stats.messages_out += 2;
            conn.state = ConnState::Ready;
            self.stats.connects += 1;
            let (identity, addr) = (conn.identity, conn.addr);
            self.events.push_back(ServerEvent::Connected {
                client,
                identity,
                addr,
            });
            return true;
        }
        match protocol::decode_client(bytes, max) {
            Ok(msg) => {
                self.events.push_back(ServerEvent::Message {
                    client,
                    msg,
                    channel,
                });
                true
            }
            Err(crate::EnvelopeDecodeError::TooLarge { size, max }) => {
                self.violation(
                    slot,
                    DisconnectReason::Rejected(RejectReason::MessageTooLarge { size, max }),
                );
                false
            }
            Err(e) => {
                self.violation(slot, DisconnectReason::Rejected(RejectReason::Malformed(e)));
                false
            }
        }
    }

    /// A connected client broke the protocol: report and disconnect it.
    fn violation(&mut self, slot: usize, reason: DisconnectReason) {
        if let DisconnectReason::Rejected(r) = &reason
            && let Some(conn) = self.slots.get(slot).and_then(Option::as_ref)
        {
            self.stats.rejections += 1;
            tracing::debug!(client = %conn.id, addr = %conn.addr, reason = %r, "client rejected");
            self.events.push_back(ServerEvent::Rejected {
                addr: conn.addr,
                client: Some(conn.id),
                reason: r.clone(),
            });
        }
        self.remove(slot, reason, true);
    }

    fn handle_request(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.stats.connection_requests += 1;
        let Ok(req) = packet::decode_request(bytes) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if req.protocol_id != self.config.protocol_id {
            let reason = RejectReason::ProtocolId {
                got: req.protocol_id,
                expected: self.config.protocol_id,
            };
            return self.reject(from, reason);
        }
        let now_secs = self.now.as_secs();
        if now_secs >= req.expire_timestamp {
            return self.reject(
                from,
                RejectReason::TokenExpired {
                    expire_timestamp: req.expire_timestamp,
                    now: now_secs,
                },
            );
        }
        let private = match PrivateToken::open(
            req.private,
            req.protocol_id,
            req.expire_timestamp,
            req.xnonce,
            &self.config.private_key,
        ) {
            Ok(p) => p,
            Err(OpenError::Forged) => return self.reject(from, RejectReason::TokenForged),
            Err(OpenError::Malformed(e)) => {
                return self.reject(from, RejectReason::TokenMalformed(e));
            }
        };
        if !private
            .server_addresses
            .iter()
            .any(|a| self.config.public_addresses.contains(a))
        {
            let reason = RejectReason::WrongServer {
                token_addresses: private.server_addresses.clone(),
                server_addresses: self.config.public_addresses.clone(),
            };
            return self.reject(from, reason);
        }
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&req.private[PRIVATE_TOKEN_BYTES - MAC_BYTES..]);
        let expire_timestamp = req.expire_timestamp;
        // One token, one address, one connection.
        match self.tokens.get(&mac) {
            // A late copy of the request that made this address's connection.
            Some(u) if u.connected && u.addr == from && self.by_addr.contains_key(&from) => {
                return;
            }
            Some(u) if u.addr != from || u.connected => {
                let first_addr = u.addr;
                return self.reject(from, RejectReason::TokenReplayed { first_addr });
            }
            Some(_) => {}
            None => {
                if self.tokens.len() >= self.config.max_tokens {
                    self.prune_tokens();
                    if self.tokens.len() >= self.config.max_tokens {
                        return self.reject(
                            from,
                            RejectReason::TokenTableFull {
                                capacity: self.config.max_tokens,
                            },
                        );
                    }
                }
                self.tokens.insert(
                    mac,
                    TokenUse {
                        addr: from,
                        expire_timestamp,
                        connected: false,
                    },
                );
            }
        }
        if self.by_id.contains_key(&private.client_id) {
            return self.reject(
                from,
                RejectReason::ClientIdInUse(ConnectionId(private.client_id)),
            );
        }
        if self.is_full_for(from) {
            self.denied_sequence += 1;
            if packet::encode(
                &mut self.out,
                &Packet::Denied,
                self.denied_sequence,
                self.config.protocol_id,
                &private.server_to_client_key,
            )
            .is_ok()
            {
                self.push_transmit(from);
            }
            return self.reject(
                from,
                RejectReason::ServerFull {
                    max_clients: self.config.max_clients,
                },
            );
        }
        if !self.pending.contains_key(&from) {
            let from_ip = self.pending_per_ip.get(&from.ip()).copied().unwrap_or(0);
            if from_ip >= self.config.max_pending_per_ip {
                return self.reject(
                    from,
                    RejectReason::TooManyPendingFromAddress {
                        max_per_address: self.config.max_pending_per_ip,
                    },
                );
            }
            if self.pending.len() >= self.config.max_pending && !self.evict_oldest_pending() {
                return self.reject(
                    from,
                    RejectReason::TooManyPending {
                        max_pending: self.config.max_pending,
                    },
                );
            }
        }
        self.challenge_sequence += 1;
        let Ok(token) = packet::seal_challenge(
            private.client_id,
            &private.user_data,
            self.challenge_sequence,
            &self.challenge_key,
        ) else {
            return;
        };
        let now = self.now;
        if !self.pending.contains_key(&from) {
            *self.pending_per_ip.entry(from.ip()).or_insert(0) += 1;
            self.next_pending_order += 1;
            self.pending_order
                .push_back((from, self.next_pending_order));
        }
        let order = self.next_pending_order;
        let pending = self.pending.entry(from).or_insert_with(|| Pending {
            order,
            client_id: private.client_id,
            send_key: private.server_to_client_key,
            recv_key: private.client_to_server_key,
            timeout: timeout_of(private.timeout_seconds),
            expire_timestamp,
            mac,
            sequence: 0,
            replay: ReplayProtection::new(),
            last_recv: now,
        });
        pending.last_recv = now;
        let challenge = Packet::Challenge {
            token_sequence: self.challenge_sequence,
            token: &token,
        };
        let sequence = pending.sequence;
        pending.sequence += 1;
        let key = pending.send_key;
        if packet::encode(
            &mut self.out,
            &challenge,
            sequence,
            self.config.protocol_id,
            &key,
        )
        .is_ok()
        {
            self.push_transmit(from);
        }
    }

    fn handle_pending(&mut self, from: SocketAddr, bytes: &[u8]) {
        let protocol_id = self.config.protocol_id;
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        let Some(pending) = self.pending.get_mut(&from) else {
            return;
        };
        let (token_sequence, token) = match packet::decode(
            &mut self.scratch,
            protocol_id,
            &pending.recv_key,
            Some(&mut pending.replay),
        ) {
            Ok((
                _,
                Packet::Response {
                    token_sequence,
                    token,
                },
            )) => (token_sequence, *token),
            Ok(_) => return,
            Err(packet::PacketError::Crypto | packet::PacketError::Replayed(_)) => {
                self.stats.dropped_unauthenticated += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        pending.last_recv = self.now;
        let Ok((client_id, user_data)) =
            packet::open_challenge(&token, token_sequence, &self.challenge_key)
        else {
            self.stats.dropped_unauthenticated += 1;
            return;
        };
        if client_id != pending.client_id {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        let Some(pending) = self.remove_pending(from) else {
            return;
        };
        if self.by_id.contains_key(&client_id) {
            return self.reject(from, RejectReason::ClientIdInUse(ConnectionId(client_id)));
        }
        if self.is_full_for(from) {
            if packet::encode(
                &mut self.out,
                &Packet::Denied,
                pending.sequence,
                protocol_id,
                &pending.send_key,
            )
            .is_ok()
            {
                self.push_transmit(from);
            }
            return self.reject(
                from,
                RejectReason::ServerFull {
                    max_clients: self.config.max_clients,
                },
            );
        }
        if let Some(u) = self.tokens.get_mut(&pending.mac) {
            u.connected = true;
        }
        self.accept(from, pending, &user_data);
    }

    /// Whether a connection from `from` would exceed `max_clients` (one that replaces the
    /// address's connection does not add to the count).
    fn is_full_for(&self, from: SocketAddr) -> bool {
        let replacing = usize::from(self.by_addr.contains_key(&from));
        self.live - replacing >= self.config.max_clients
    }

    fn accept(&mut self, addr: SocketAddr, pending: Pending, user_data: &[u8; USER_DATA_BYTES]) {
        if let Some(&replaced) = self.by_addr.get(&addr) {
            self.remove(replaced, DisconnectReason::Replaced, false);
        }
        let limits = LinkLimits {
            send_backlog: self.config.max_backlog,
            send_unreliable: self.config.max_unreliable_queue,
            max_incoming: self.config.max_client_message,
            bytes_per_update: self.config.bytes_per_update,
            // The server sends every tick, so its acks ride on that data anyway; an immediate
            // ack for what a client sends keeps that client's round-trip estimate honest.
            ack_delay: Duration::ZERO,
            resend: self.config.resend,
        };
        let now = self.now;
        let conn = Conn {
            id: ConnectionId(pending.client_id),
            addr,
            identity: Identity(identity_of(user_data)),
            send_key: pending.send_key,
            recv_key: pending.recv_key,
            sequence: pending.sequence,
            replay: pending.replay,
            last_recv: now,
            last_send: now,
            timeout: pending.timeout,
            state: ConnState::AwaitHello { since: now },
            link: Link::new(limits),
            stats: ClientStats::default(),
            resent_reported: 0,
            resent_listed: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(conn);
                s
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        self.by_addr.insert(addr, slot);
        self.by_id.insert(pending.client_id, slot);
        tracing::debug!(client = pending.client_id, %addr, "client linked, awaiting hello");
        // The first keep-alive completes the client's handshake.
        self.send_packet(
            slot,
            &Packet::KeepAlive {
                client_index: slot as u32,
                max_clients: self.config.max_clients as u32,
            },
        );
    }

    /// Reports a refused connection attempt (rate-limited events, exact counters).
    /// Removes the handshake from `addr`, keeping the per-IP counts.
    fn remove_pending(&mut self, addr: SocketAddr) -> Option<Pending> {
        let pending = self.pending.remove(&addr)?;
        forget_pending_ip(&mut self.pending_per_ip, addr.ip());
        Some(pending)
    }

    /// Evicts the oldest handshake in progress; false if there is none.
    fn evict_oldest_pending(&mut self) -> bool {
        while let Some((addr, order)) = self.pending_order.pop_front() {
            if self.pending.get(&addr).is_some_and(|p| p.order == order) {
                self.remove_pending(addr);
                self.stats.pending_evicted += 1;
                tracing::debug!(%addr, "oldest pending handshake evicted for a new one");
                return true;
            }
        }
        false
    }

    /// Drops arrival-order entries of handshakes that are gone once they are the majority,
    /// so the queue stays within twice the table (amortised O(1) per handshake).
    fn compact_pending_order(&mut self) {
        if self.pending_order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.pending_order
                .retain(|(addr, order)| pending.get(addr).is_some_and(|p| p.order == *order));
        }
    }

    fn reject(&mut self, addr: SocketAddr, reason: RejectReason) {
        self.stats.rejections += 1;
        tracing::debug!(%addr, %reason, "connection attempt rejected");
        let second = self.now.as_secs();
        if second != self.budget_second {
            self.budget_second = second;
            self.rejection_budget = self.config.rejection_events_per_sec;
        }
        if self.rejection_budget > 0 {
            self.rejection_budget -= 1;
            self.events.push_back(ServerEvent::Rejected {
                addr,
                client: None,
                reason,
            });
        } else {
            self.stats.rejection_events_suppressed += 1;
        }
    }

    fn push_transmit(&mut self, to: SocketAddr) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += self.out.len() as u64;
        self.transmits.push(Transmit {
            to,
            bytes: self.out.clone(),
        });
    }

    /// Encrypts and queues a packet for a connection.
    fn send_packet(&mut self, slot: usize, packet: &Packet<'_>) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if packet::encode(
            &mut self.out,
            packet,
            conn.sequence,
            self.config.protocol_id,
            &conn.send_key,
        )
        .is_err()
        {
            return;
        }
        conn.sequence += 1;
        conn.last_send = self.now;
        conn.stats.datagrams_out += 1;
        conn.stats.bytes_out += self.out.len() as u64;
        let to = conn.addr;
        self.push_transmit(to);
    }

    /// Turns a connection's queued renet packets into datagrams.
    fn flush_conn(&mut self, slot: usize) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let bundles = conn.link.bundles(MAX_PAYLOAD_BYTES);
        for b in &bundles {
            self.send_packet(slot, &Packet::Payload(b));
        }
    }

    /// Removes a connection; `notify` sends it disconnect packets.
    fn remove(&mut self, slot: usize, reason: DisconnectReason, notify: bool) {
        if notify {
            self.flush_conn(slot);
            for _ in 0..3 {
                self.send_packet(slot, &Packet::Disconnect);
            }
        }
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.live -= 1;
        self.free.push(slot);
        self.by_addr.remove(&conn.addr);
        self.by_id.remove(&conn.id.0);
        tracing::debug!(client = %conn.id, addr = %conn.addr, %reason, "client disconnected");
        if conn.state == ConnState::Ready {
            self.stats.disconnects += 1;
            self.events.push_back(ServerEvent::Disconnected {
                client: conn.id,
                reason,
            });
        }
    }

    fn prune_tokens(&mut self) {
        let now_secs = self.now.as_secs();
        self.tokens.retain(|_, u| u.expire_timestamp > now_secs);
    }

    /// Advances time to `now`: times out silent clients and stale handshakes, and turns every
    /// client's queued messages into datagrams (call once per tick, after sending).
    pub fn update(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let dt = self.now.saturating_sub(self.last_update);
        self.last_update = self.now;
        let now = self.now;
        let now_secs = now.as_secs();

        let per_ip = &mut self.pending_per_ip;
        self.pending.retain(|addr, p| {
            let keep = now_secs < p.expire_timestamp
                && p.timeout
                    .is_none_or(|t| now.saturating_sub(p.last_recv) <= t);
            if !keep {
                forget_pending_ip(per_ip, addr.ip());
            }
            keep
        });
        self.compact_pending_order();
        if dt > Duration::ZERO && now_secs != (now - dt).as_secs() {
            self.prune_tokens();
        }

        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].as_mut() else {
                continue;
            };
            if conn
                .timeout
                .is_some_and(|t| now.saturating_sub(conn.last_recv) > t)
            {
                self.remove(slot, DisconnectReason::TimedOut, true);
                continue;
            }
            if let ConnState::AwaitHello { since } = conn.state
                && now.saturating_sub(since) > self.config.hello_timeout
            {
                let reason = RejectReason::HelloTimeout(self.config.hello_timeout);
                self.violation(slot, DisconnectReason::Rejected(reason));
                continue;
            }
            if let Err(reason) = conn.link.update(dt) {
                self.remove(slot, reason, true);
                continue;
            }
            let before = conn.stats.datagrams_out;
            let keepalive_due = now.saturating_sub(conn.last_send) >= self.config.keepalive;
            self.flush_conn(slot);
            let Some(conn) = self.slots[slot].as_mut() else {
                continue;
            };
            if !conn.resent_listed && conn.link.resent_bytes() > conn.resent_reported {
                conn.resent_listed = true;
                self.resent.push(conn.id);
            }
            if conn.stats.datagrams_out == before && keepalive_due {
                let ka = Packet::KeepAlive {
                    client_index: slot as u32,
                    max_clients: self.config.max_clients as u32,
                };
                self.send_packet(slot, &ka);
            }
        }
    }

    /// Moves the datagrams to send into `out` (appending).
    pub fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        out.append(&mut self.transmits);
    }

    /// Moves into `out` (appending) the reliable message bytes each connection sent again
    /// since the last call, one entry per connection that resent anything: what a sender with
    /// a per-client bandwidth budget charges to it, so a lossy or slow client's downstream
    /// stays within its budget resends included.
    pub fn drain_resent(&mut self, out: &mut Vec<(ConnectionId, u64)>) {
        for client in self.resent.drain(..) {
            let Some(conn) = self
                .by_id
                .get(&client.0)
                .and_then(|&slot| self.slots.get_mut(slot))
                .and_then(Option::as_mut)
            else {
                continue;
            };
            let resent = conn.link.resent_bytes();
            out.push((client, resent.saturating_sub(conn.resent_reported)));
            conn.resent_reported = resent;
            conn.resent_listed = false;
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn ready_slot(&self, client: ConnectionId) -> Result<usize, SendError> {
        match self.by_id.get(&client.0) {
            Some(&slot)
                if self
                    .slots
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.state == ConnState::Ready) =>
            {
                Ok(slot)
            }
            _ => Err(SendError::UnknownClient(client)),
        }
    }

    /// Queues a message on the client's reliable channel.
    pub fn send(&mut self, client: ConnectionId, msg: &ServerMessage) -> Result<(), SendError> {
        self.send_encoded(client, &Encoded::server(msg))
    }

    /// Queues already-encoded bytes on the client's reliable channel (encode a broadcast once
    /// with [`Encoded::server`] and send it to many clients).
    ///
    /// If the client's reliable backlog would exceed `max_backlog`, the client is disconnected
    /// ([`DisconnectReason::BacklogExceeded`]) and the error says so.
    pub fn send_encoded(&mut self, client: ConnectionId, msg: &Encoded) -> Result<(), SendError> {
        let slot = self.ready_slot(client)?;
        if msg.len() > self.config.max_server_message {
            return Err(SendError::MessageTooLarge {
                size: msg.len(),
                max: self.config.max_server_message,
            });
        }
        let Some(conn) = self.slots[slot].as_mut() else {
            return Err(SendError::UnknownClient(client));
        };
        match conn.link.send_reliable(msg.0.clone()) {
            Ok(()) => {
                conn.stats.messages_out += 1;
                Ok(())
            }
            Err(backlog) => {
                let limit = conn.link.backlog_limit();
                tracing::warn!(%client, backlog, limit, "reliable backlog exceeded; disconnecting");
                self.remove(
                    slot,
                    DisconnectReason::BacklogExceeded { backlog, limit },
                    true,
                );
                Err(SendError::BacklogExceeded { backlog, limit })
            }
        }
    }

    /// Queues a message on the client's unreliable channel (it may be lost; at most
    /// [`MAX_UNRELIABLE_MESSAGE`] bytes encoded).
    pub fn send_unreliable(
        &mut self,
        client: ConnectionId,
        msg: &ServerMessage,
    ) -> Result<(), SendError> {
        self.send_unreliable_encoded(client, &Encoded::server(msg))
    }

    /// [`ServerSession::send_unreliable`] for already-encoded bytes.
    pub fn send_unreliable_encoded(
        &mut self,
        client: ConnectionId,
        msg: &Encoded,
    ) -> Result<(), SendError> {
        let slot = self.ready_slot(client)?;
        if msg.len() > MAX_UNRELIABLE_MESSAGE {
            return Err(SendError::MessageTooLarge {
                size: msg.len(),
                max: MAX_UNRELIABLE_MESSAGE,
            });
        }
        let Some(conn) = self.slots[slot].as_mut() else {
            return Err(SendError::UnknownClient(client));
        };
        conn.link.send_unreliable(msg.0.clone());
        conn.stats.messages_out += 1;
        Ok(())
    }

    /// Disconnects a client: sends [`ServerMessage::Disconnecting`] with `reason` (best
    /// effort) and disconnect packets, and emits `Disconnected`. `false` if no such client.
    pub fn disconnect(&mut self, client: ConnectionId, reason: &str) -> bool {
        let Some(&slot) = self.by_id.get(&client.0) else {
            return false;
        };
        if let Some(conn) = self.slots[slot].as_mut() {
            let msg = Encoded::server(&ServerMessage::Disconnecting {
                reason: reason.to_string(),
            });
            let _ = conn.link.send_reliable(msg.0);
        }
        self.remove(slot, DisconnectReason::ByServer(reason.to_string()), true);
        true
    }

    /// Disconnects every client (server shutdown).
    pub fn disconnect_all(&mut self, reason: &str) {
        let ids: Vec<ConnectionId> = self.slots.iter().flatten().map(|c| c.id).collect();
        for id in ids {
            self.disconnect(id, reason);
        }
    }

    /// Counters of one connected client.
    pub fn client_stats(&self, client: ConnectionId) -> Option<ClientStats> {
        let conn = self.slots.get(*self.by_id.get(&client.0)?)?.as_ref()?;
        let mut s = conn.stats.clone();
        s.backlog_bytes = conn.link.backlog();
        s.resent_bytes = conn.link.resent_bytes();
        s.rtt = Duration::from_secs_f64(conn.link.rtt().clamp(0.0, 3600.0));
        s.resend = conn.link.resend_interval();
        s.packet_loss = conn.link.packet_loss();
        Some(s)
    }

    /// Whole-server counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The identity of a connected client.
    pub fn identity(&self, client: ConnectionId) -> Option<Identity> {
        Some(
            self.slots
                .get(*self.by_id.get(&client.0)?)?
                .as_ref()?
                .identity,
        )
    }

    /// The address of a connected client.
    pub fn client_addr(&self, client: ConnectionId) -> Option<SocketAddr> {
        Some(self.slots.get(*self.by_id.get(&client.0)?)?.as_ref()?.addr)
    }

    /// Clients that completed their hello.
    pub fn connected_clients(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|c| c.state == ConnState::Ready)
            .count()
    }

    /// Ids of the clients that completed their hello.
    pub fn clients(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(|c| c.state == ConnState::Ready)
            .map(|c| c.id)
    }

    /// Handshakes in progress.
    pub fn pending_clients(&self) -> usize {
        self.pending.len()
    }
}

fn timeout_of(seconds: i32) -> Option<Duration> {
    u64::try_from(seconds).ok().map(Duration::from_secs)
}

fn forget_pending_ip(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = per_ip.get_mut(&ip) {
        *count -= 1;
        if *count == 0 {
            per_ip.remove(&ip);
        }
    }
}
