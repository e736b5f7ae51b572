//! Errors. Transport and usage failures are [`ClientError`]; a reducer call adds
//! [`CallError::Reducer`] for a reducer that ran and returned `Err` (or that the server
//! refused), so `client.call(..).await?` propagates both while callers that care can tell
//! them apart.

use std::time::Duration;

use orrery_netcode::{ConnectError, DisconnectReason, SendError};
use orrery_row::{ReducerKind, RowDecodeError, ValueError};

/// A failure of the client itself: the control plane, the connection, bad input, a timeout.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control-plane base URL could not be used.
    #[error("invalid control-plane URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Root certificates given for `https://` could not be used.
    #[error("TLS root certificates: {reason}")]
    InvalidCertificate {
        /// What is wrong with them.
        reason: String,
    },
    /// An HTTP request could not be made or its answer not read.
    #[error("HTTP {method} {url} failed: {error}")]
    Http {
        /// Request method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// The transport error.
        error: String,
    },
    /// The control plane answered with an error status.
    #[error("HTTP {method} {url} answered {status}: {message}")]
    Status {
        /// Request method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// HTTP status code (401: bad or unknown identity token).
        status: u16,
        /// The `error` field of the JSON answer, or the body text.
        message: String,
    },
    /// The control plane answered 2xx with a body this client cannot read.
    #[error("unexpected answer from {url}: {error}")]
    BadResponse {
        /// Request URL.
        url: String,
        /// What did not parse.
        error: String,
    },
    /// The connect token could not be used.
    #[error("connect token: {0}")]
    Token(#[from] ConnectError),
    /// The connect token was not valid base64.
    #[error("connect token is not valid base64 ({len} characters): {error}")]
    TokenEncoding {
        /// Length of the text received.
        len: usize,
        /// The decoder's error.
        error: String,
    },
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The schema has no reducer of this name.
    #[error("unknown reducer `{0}`")]
    UnknownReducer(String),
    /// The reducer exists but clients may not call it.
    #[error("reducer `{reducer}` is a {kind:?} reducer; clients may only call user reducers")]
    NotCallable {
        /// The reducer.
        reducer: String,
        /// Its kind.
        kind: ReducerKind,
    },
    /// Reducer arguments did not match the reducer's parameters.
    #[error("arguments of `{reducer}`: {error}")]
    Args {
        /// The reducer.
        reducer: String,
        /// What did not match.
        error: ValueError,
    },
    /// A message could not be queued on the connection.
    #[error("send failed: {0}")]
    Send(#[from] SendError),
    /// The connection is closed (or closed while waiting).
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// No answer in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The server refused a subscription.
    #[error("subscription {query_id} ({sql:?}) failed: {message}")]
    Subscription {
        /// The query id.
        query_id: u32,
        /// The query.
        sql: String,
        /// The server's message.
        message: String,
    },
    /// No active subscription has this id.
    #[error("no subscription with query id {0}")]
    UnknownQuery(u32),
    /// A mirror (cache) operation failed.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

/// A failed reducer call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered the call with an error: the reducer returned `Err` (its
    /// transaction rolled back), panicked, or the server refused the call (unknown reducer,
    /// undecodable arguments).
    #[error("reducer `{reducer}` failed: {message}")]
    Reducer {
        /// The reducer.
        reducer: String,
        /// The error text from the server.
        message: String,
    },
    /// The call was not made or its reply not received.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CallError {
    /// The reducer's error text, if the reducer (not the transport) failed.
    pub fn reducer_error(&self) -> Option<&str> {
        match self {
            CallError::Reducer { message, .. } => Some(message),
            CallError::Client(_) => None,
        }
    }
}

/// A mirror (cache) operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MirrorError {
    /// No table of this name in the schema.
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    /// No table with this id in the schema.
    #[error("unknown table id {0}")]
    UnknownTableId(u32),
    /// A table update payload did not decode; nothing of it was applied.
    #[error("table `{table}` (id {table_id}): undecodable update of {len} bytes: {error}")]
    Decode {
        /// The table.
        table: String,
        /// Its id.
        table_id: u32,
        /// Payload length.
        len: usize,
        /// The decoder's error.
        error: RowDecodeError,
    },
    /// A primary key given as JSON did not match the key column's type.
    #[error("primary key of `{table}`: {error}")]
    Key {
        /// The table.
        table: String,
        /// What did not match.
        error: ValueError,
    },
    /// A row did not deserialize into the requested Rust type.
    #[error("row of `{table}` does not deserialize: {error}")]
    Deserialize {
        /// The table.
        table: String,
        /// serde's error.
        error: String,
    },
}
