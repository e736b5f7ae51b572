//! The server's error type. Every variant carries the offending value (path, address, limit).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file in the data directory could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("binding {what} to {addr}: {source}")]
    Bind {
        /// Which listener (`"udp"`, `"http"`, `"metrics"`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret file exists but does not hold a valid secret.
    #[error("secret file {path} is invalid: {reason}")]
    BadSecret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The control plane's TLS certificate or key could not be used.
    #[error("TLS: {path}: {reason}")]
    Tls {
        /// The certificate or key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random source failed.
    #[error("operating system randomness failed: {0}")]
    Random(String),
    /// The engine could not start or recover.
    #[error(transparent)]
    Engine(#[from] orrery_engine::EngineError),
    /// The engine's `init` reducer failed on a fresh database.
    #[error("init reducer failed: {0}")]
    Init(orrery_engine::ReducerError),
    /// The commit log failed; reported at shutdown.
    #[error(transparent)]
    Durability(#[from] orrery_engine::DurabilityError),
    /// The netcode session could not be created.
    #[error("netcode: {0}")]
    Netcode(#[from] orrery_netcode::TokenError),
    /// The tick clock rejected the tick length.
    #[error("tick clock: {0}")]
    Clock(orrery_tick::ClockError),
    /// A server thread could not be started or ended abnormally.
    #[error("server thread {name}: {reason}")]
    Thread {
        /// The thread.
        name: &'static str,
        /// What happened.
        reason: String,
    },
}
