//! Error and reason types of the netcode crate.
//!
//! Every variant carries the offending value (sizes, limits, versions, addresses), so a log line
//! or a client-facing message says what was wrong without a debugger.

use std::net::SocketAddr;

use crate::ConnectionId;

/// A connect token could not be issued or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token names between 1 and 32 server addresses.
    #[error("a connect token needs 1 to 32 server addresses, got {0}")]
    ServerAddressCount(usize),
    /// The byte string is shorter than a token.
    #[error("connect token truncated: {len} bytes, a token needs at least {needed}")]
    Truncated {
        /// Bytes given.
        len: usize,
        /// Bytes needed so far.
        needed: usize,
    },
    /// The version info is not "NETCODE 1.02".
    #[error("connect token has version info {0:?}, expected \"NETCODE 1.02\\0\"")]
    Version(Vec<u8>),
    /// An address entry has an unknown type byte.
    #[error("connect token address {index} has unknown type {kind}")]
    AddressType {
        /// Position in the address list.
        index: usize,
        /// The type byte found.
        kind: u8,
    },
    /// The expiry is not after the creation time.
    #[error("connect token expires at {expire} s, not after its creation at {create} s")]
    Timestamps {
        /// Creation time, seconds since the Unix epoch.
        create: u64,
        /// Expiry time, seconds since the Unix epoch.
        expire: u64,
    },
    /// The connection timeout does not fit netcode's `i32` seconds.
    #[error("connection timeout of {0} s does not fit in i32 seconds")]
    Timeout(u64),
    /// The operating system's random source failed.
    #[error("operating system randomness failed: {0}")]
    Random(String),
    /// Encryption failed (cannot happen with valid sizes; reported rather than panicking).
    #[error("connect token encryption failed")]
    Crypto,
}

/// Why the server refused a connection attempt or a message from a connected client.
///
/// Connection attempts are refused before any client state exists: the client only sees its
/// attempt time out (or `ConnectionDenied` when the server is full), so the reason is for the
/// server's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The connect token's expiry time has passed.
    #[error("connect token expired at {expire_timestamp} s (now {now} s)")]
    TokenExpired {
        /// Expiry, seconds since the Unix epoch.
        expire_timestamp: u64,
        /// The server's time, seconds since the Unix epoch.
        now: u64,
    },
    /// The connection request names another protocol id.
    #[error("connect token for protocol id {got:#x}, this server speaks {expected:#x}")]
    ProtocolId {
        /// Protocol id in the request.
        got: u64,
        /// This server's protocol id.
        expected: u64,
    },
    /// The token's private part did not decrypt: issued with another key, or tampered with.
    #[error("connect token did not authenticate (forged, wrong key or tampered)")]
    TokenForged,
    /// The token's private part decrypted but is malformed.
    #[error("connect token private data is malformed: {0}")]
    TokenMalformed(TokenError),
    /// The token does not name any of this server's public addresses.
    #[error("connect token is for {token_addresses:?}, not for this server {server_addresses:?}")]
    WrongServer {
        /// Addresses in the token.
        token_addresses: Vec<SocketAddr>,
        /// This server's public addresses.
        server_addresses: Vec<SocketAddr>,
    },
    /// The token was already used (from another address, or by a connection that completed).
    #[error("connect token already used by {first_addr}")]
    TokenReplayed {
        /// Address that used it first.
        first_addr: SocketAddr,
    },
    /// A connection with this client id is live.
    #[error("client id {0} is already connected")]
    ClientIdInUse(ConnectionId),
    /// `max_clients` connections are live.
    #[error("server full ({max_clients} clients)")]
    ServerFull {
        /// The configured limit.
        max_clients: usize,
    },
    /// Too many handshakes from this IP address are in progress.
    #[error("too many pending connections from this address ({max_per_address})")]
    TooManyPendingFromAddress {
        /// The configured limit.
        max_per_address: usize,
    },
    /// Too many handshakes are in progress.
    #[error("too many pending connections ({max_pending})")]
    TooManyPending {
        /// The configured limit.
        max_pending: usize,
    },
    /// The token-replay table is full of live tokens.
    #[error("connect token table full ({capacity} live tokens)")]
    TokenTableFull {
        /// The configured limit.
        capacity: usize,
    },
    /// The client speaks another Orrery protocol version.
    #[error("client protocol version {client}, server speaks {server}")]
    VersionMismatch {
        /// The client's `PROTOCOL_VERSION`.
        client: u16,
        /// The server's `PROTOCOL_VERSION`.
        server: u16,
    },
    /// The first reliable message was not a valid hello.
    #[error("invalid hello: {0}")]
    BadHello(EnvelopeDecodeError),
    /// No hello arrived within the configured time.
    #[error("no hello within {0:?}")]
    HelloTimeout(std::time::Duration),
    /// A message was larger than the configured maximum.
    #[error("message of at least {size} bytes exceeds the {max} byte limit")]
    MessageTooLarge {
        /// Size (or lower bound, while still sliced).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A message did not decode.
    #[error("undecodable message: {0}")]
    Malformed(EnvelopeDecodeError),
    /// The reliability layer's packets broke the protocol (bad slices, channel, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why a connection ended, as reported to the server or the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// Nothing was received for the token's timeout.
    #[error("connection timed out")]
    TimedOut,
    /// The client disconnected.
    #[error("disconnected by the client")]
    ByClient,
    /// The server disconnected the client, with its reason when it arrived.
    #[error("disconnected by the server: {0}")]
    ByServer(String),
    /// The client's reliable backlog (sent, unacknowledged bytes) went over the limit: the
    /// client stopped reading or cannot keep up.
    #[error("reliable backlog of {backlog} bytes would exceed the {limit} byte limit")]
    BacklogExceeded {
        /// Backlog bytes including the message that did not fit.
        backlog: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The client broke the protocol; the server also emitted a `Rejected` event.
    #[error("rejected: {0}")]
    Rejected(RejectReason),
    /// Server side: a new connection from the same address took its place (the client
    /// there started a new session without this one's disconnect reaching the server).
    #[error("replaced by a new connection from the same address")]
    Replaced,
    /// The reliability layer failed (a receive channel overflowed, ...).
    #[error("transport error: {0}")]
    Transport(String),
    /// Client side: the server answered the connection request with "denied" (full).
    #[error("the server denied the connection (full)")]
    ConnectionDenied,
    /// Client side: no server answered before the token expired or the timeout elapsed.
    #[error("connecting timed out (no answer from {0:?})")]
    ConnectTimedOut(Vec<SocketAddr>),
    /// Client side: the connect token expired before the connection completed.
    #[error("connect token expired before the connection completed")]
    TokenExpired,
    /// Client side: the server refused this client's protocol version.
    #[error("server refused the hello: {0}")]
    HelloRefused(String),
}

/// A message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeDecodeError {
    /// The message is larger than the configured maximum.
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Message size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("invalid {what}: {error} ({len} bytes)")]
    Invalid {
        /// The expected type.
        what: &'static str,
        /// bitcode's error text.
        error: String,
        /// Message size.
        len: usize,
    },
    /// A hello with a wrong magic number (not an Orrery peer).
    #[error("hello magic {0:#010x} is not Orrery's")]
    BadMagic(u32),
}

/// A message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connected client has this id.
    #[error("no connected client {0}")]
    UnknownClient(ConnectionId),
    /// The session is not connected (client side) or the client is not ready yet.
    #[error("not connected")]
    NotConnected,
    /// The message is larger than the peer accepts.
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    MessageTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The client's reliable backlog would exceed the limit; the client was disconnected.
    #[error(
        "reliable backlog of {backlog} bytes would exceed the {limit} byte limit; client disconnected"
    )]
    BacklogExceeded {
        /// Backlog bytes including this message.
        backlog: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// A client session could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The token bytes did not parse.
    #[error("invalid connect token: {0}")]
    Token(#[from] TokenError),
    /// The token has already expired.
    #[error("connect token expired at {expire_timestamp} s (now {now} s)")]
    Expired {
        /// Expiry, seconds since the Unix epoch.
        expire_timestamp: u64,
        /// The client's time, seconds since the Unix epoch.
        now: u64,
    },
}
