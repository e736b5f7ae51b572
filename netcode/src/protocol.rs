//! Envelopes: the messages clients and servers exchange, encoded with `bitcode`.
//!
//! A connection starts with a version-stable handshake on the reliable channel: the client's
//! first message is a [`ClientHello`] carrying its [`PROTOCOL_VERSION`]; the server answers
//! with a [`ServerHello`] (accepting, or refusing with a reason) and then
//! [`ServerMessage::IdentityInfo`]. The hello types never change layout, so peers of different
//! versions still understand each other's refusal. After the handshake every message is a
//! [`ClientMessage`] or [`ServerMessage`] of the agreed version.
//!
//! Decoding is total: any byte string gives a value or a [`EnvelopeDecodeError`] (never a panic), and
//! sizes are checked before decoding. Row payloads (`rows`) are the engine's Orrery row format;
//! this crate carries them as opaque bytes.

use bitcode::{Decode, Encode};
use renet::Bytes;

use crate::error::EnvelopeDecodeError;

/// Version of the envelopes below and of the published-row records inside them. Bump on any
/// change to [`ClientMessage`], [`ServerMessage`] or the record format
/// (`netcode/ROW_FORMAT.md` §7); a client of another version is refused at connect. Version 3:
/// records name rows by per-connection handles after their first upsert. Version 4: rebase
/// records (a row's changed columns, whole, for a client too far behind for a delta).
/// Version 5: [`ServerMessage::ZoneMove`].
pub const PROTOCOL_VERSION: u16 = 5;

/// First four bytes of every hello, "ORRY" little-endian: tells an Orrery peer from noise.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"ORRY");

/// Default limit on one client → server message (64 KiB).
pub const DEFAULT_MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Default limit on one server → client message (4 MiB; a first subscription answer is large).
pub const DEFAULT_MAX_SERVER_MESSAGE: usize = 4 * 1024 * 1024;

/// Largest message the unreliable channel carries: it must fit one datagram (renet slices
/// bigger messages, and a lost slice loses the whole message, so Orrery forbids them).
pub const MAX_UNRELIABLE_MESSAGE: usize = 1150;

/// The client's first reliable message. Frozen: never change this type.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClientHello {
    /// [`HELLO_MAGIC`].
    pub magic: u32,
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
}

/// The server's first reliable message. Frozen: never change this type.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ServerHello {
    /// [`HELLO_MAGIC`].
    pub magic: u32,
    /// The server's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// `None` when the client is accepted, otherwise why not (the server then disconnects).
    pub refusal: Option<String>,
}

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ClientMessage {
    /// Call a reducer. The server answers with [`ServerMessage::ReducerReply`] carrying the
    /// same `request_id` (on the reliable channel, in call order).
    CallReducer {
        /// Chosen by the client; echoed in the reply.
        request_id: u32,
        /// Reducer name.
        reducer: String,
        /// Arguments in the Orrery row format (decoded and validated by the server).
        args: Vec<u8>,
        /// Reply only once the reducer's tick is durable on disk.
        durable: bool,
    },
    /// Subscribe to the rows matching a SQL query.
    Subscribe {
        /// Chosen by the client; echoed in the answers.
        query_id: u32,
        /// The query.
        sql: String,
    },
    /// Drop a subscription.
    Unsubscribe {
        /// The subscription's id.
        query_id: u32,
    },
    /// Confirmed reads on (`true`) or off: with them on, the server sends this connection
    /// subscription updates (and subscription answers) only once their tick is durable, so
    /// the client never shows state a crash could take back; off (the default) it sends them
    /// the tick they happen.
    ConfirmedReads {
        /// On or off.
        enabled: bool,
    },
}

/// Rows of one table inside a subscription answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TableRows {
    /// The table's id in the schema.
    pub table_id: u32,
    /// Rows in the Orrery row format (opaque here).
    pub rows: Vec<u8>,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ServerMessage {
    /// The outcome of a [`ClientMessage::CallReducer`].
    ReducerReply {
        /// The call's `request_id`.
        request_id: u32,
        /// Tick the reducer ran in.
        tick: u64,
        /// `Err` carries the reducer's (or the server's) error text.
        result: Result<(), String>,
        /// Whether `tick` was durable (on disk, per the server's fsync policy) when the reply
        /// left: always for a `durable` call, usually not for a plain one, whose reply is sent
        /// the tick the reducer ran.
        durable: bool,
    },
    /// Who the client is; sent once right after the handshake.
    IdentityInfo {
        /// The identity from the connect token.
        identity: [u8; 32],
        /// This connection's id (the token's client id).
        connection_id: u64,
    },
    /// The server is about to close the connection.
    Disconnecting {
        /// Why.
        reason: String,
    },
    /// A subscription's initial rows.
    SubscriptionApplied {
        /// The subscription's id.
        query_id: u32,
        /// Tick the rows are from.
        tick: u64,
        /// Matching rows per table.
        tables: Vec<TableRows>,
    },
    /// A subscription failed (bad SQL, unknown table, ...).
    SubscriptionError {
        /// The subscription's id.
        query_id: u32,
        /// What went wrong.
        message: String,
    },
    /// Row changes of one table in one tick.
    TableUpdate {
        /// The table's id in the schema.
        table_id: u32,
        /// The tick.
        tick: u64,
        /// Changes in the Orrery row format (opaque here).
        rows: Vec<u8>,
    },
    /// The client's character moved to another zone of the world: connect there with this
    /// token and subscribe again; this connection ends once that one is up.
    ZoneMove {
        /// The zone the character is in now.
        zone: u32,
        /// A connect token of that zone for this client's identity (netcode bytes).
        connect_token: Vec<u8>,
    },
}

/// An encoded message, cheap to clone (reference-counted): encode a broadcast once and send the
/// same bytes to many clients with [`crate::server::ServerSession::send_encoded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(pub(crate) Bytes);

impl Encoded {
    /// Encodes a server message.
    pub fn server(msg: &ServerMessage) -> Self {
        Self(Bytes::from(bitcode::encode(msg)))
    }

    /// Encodes a client message.
    pub fn client(msg: &ClientMessage) -> Self {
        Self(Bytes::from(bitcode::encode(msg)))
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the encoding is empty (never, for a real message).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Wraps raw bytes without checking them (for tests that send malformed envelopes).
    #[doc(hidden)]
    pub fn from_raw(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

fn decode_limited<'a, T: Decode<'a>>(
    bytes: &'a [u8],
    max: usize,
    what: &'static str,
) -> Result<T, EnvelopeDecodeError> {
    if bytes.len() > max {
        return Err(EnvelopeDecodeError::TooLarge {
            size: bytes.len(),
            max,
        });
    }
    bitcode::decode(bytes).map_err(|e| EnvelopeDecodeError::Invalid {
        what,
        error: e.to_string(),
        len: bytes.len(),
    })
}

/// Decodes a client message of at most `max` bytes.
pub fn decode_client(bytes: &[u8], max: usize) -> Result<ClientMessage, EnvelopeDecodeError> {
    decode_limited(bytes, max, "ClientMessage")
}

/// Decodes a server message of at most `max` bytes.
pub fn decode_server(bytes: &[u8], max: usize) -> Result<ServerMessage, EnvelopeDecodeError> {
    decode_limited(bytes, max, "ServerMessage")
}

/// Decodes and checks a client hello (magic only; the version is the caller's to judge).
pub fn decode_client_hello(bytes: &[u8]) -> Result<ClientHello, EnvelopeDecodeError> {
    let hello: ClientHello = decode_limited(bytes, 64, "ClientHello")?;
    if hello.magic != HELLO_MAGIC {
        return Err(EnvelopeDecodeError::BadMagic(hello.magic));
    }
    Ok(hello)
}

/// Decodes and checks a server hello (magic only).
pub fn decode_server_hello(bytes: &[u8]) -> Result<ServerHello, EnvelopeDecodeError> {
    let hello: ServerHello = decode_limited(bytes, 4096, "ServerHello")?;
    if hello.magic != HELLO_MAGIC {
        return Err(EnvelopeDecodeError::BadMagic(hello.magic));
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let msgs = [
            ClientMessage::CallReducer {
                request_id: 7,
                reducer: "move".into(),
                args: vec![1, 2, 3],
                durable: true,
            },
            ClientMessage::Subscribe {
                query_id: 1,
                sql: "SELECT * FROM player".into(),
            },
            ClientMessage::Unsubscribe { query_id: 1 },
            ClientMessage::ConfirmedReads { enabled: true },
        ];
        for m in msgs {
            let e = Encoded::client(&m);
            assert_eq!(
                decode_client(e.as_bytes(), DEFAULT_MAX_CLIENT_MESSAGE).unwrap(),
                m
            );
        }
        let s = ServerMessage::ReducerReply {
            request_id: 3,
            tick: 9,
            result: Err("no".into()),
            durable: false,
        };
        let e = Encoded::server(&s);
        assert_eq!(
            decode_server(e.as_bytes(), DEFAULT_MAX_SERVER_MESSAGE).unwrap(),
            s
        );
    }

    #[test]
    fn oversized_and_garbage_are_errors() {
        let big = vec![0u8; 100];
        assert_eq!(
            decode_client(&big, 50),
            Err(EnvelopeDecodeError::TooLarge { size: 100, max: 50 })
        );
        assert!(matches!(
            decode_client(&[0xff; 9], 50),
            Err(EnvelopeDecodeError::Invalid { .. })
        ));
        let hello = bitcode::encode(&ClientHello {
            magic: 1,
            protocol_version: 1,
        });
        assert_eq!(
            decode_client_hello(&hello),
            Err(EnvelopeDecodeError::BadMagic(1))
        );
    }
}
