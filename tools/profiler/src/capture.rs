//! [`capture`]: connects to a Tracy-instrumented process over TCP, performs the handshake,
//! feeds what it sends into a [`Session`] while answering with the session's queries, and after
//! the capture time asks the client to disconnect, waits for its `Terminate` and the last
//! answers, and returns the [`Summary`]. Optionally every byte received is written to a raw
//! file, which [`replay`] decodes again offline (the answers to the queries are in the stream,
//! so names resolve the same way).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::protocol::{PROTOCOL_VERSION, Query, SHIBBOLETH, ServerQuery};
use crate::session::{DecodeError, Limits, Session};
use crate::summary::Summary;

/// How to capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// The instrumented process's Tracy port (`127.0.0.1:8086` unless it set `TRACY_PORT`).
    pub addr: SocketAddr,
    /// How long to record, from the welcome on.
    pub duration: Duration,
    /// How long to keep trying to connect (the process may still be starting).
    pub connect_timeout: Duration,
    /// How long to wait, after asking the client to disconnect, for its last data.
    pub drain_timeout: Duration,
    /// Where to write the raw stream, if anywhere.
    pub raw: Option<PathBuf>,
    /// The session's bounds.
    pub limits: Limits,
}

impl CaptureOptions {
    /// Capture `duration` from `addr`, with default timeouts and limits.
    pub fn new(addr: SocketAddr, duration: Duration) -> Self {
        CaptureOptions {
            addr,
            duration,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            raw: None,
            limits: Limits::default(),
        }
    }
}

/// Why a capture failed.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// Nothing accepted the connection in time.
    #[error("no Tracy client accepted a connection at {addr} within {waited:?}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// How long it was tried.
        waited: Duration,
        /// The last error.
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("connection to {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The client closed the connection before welcoming the profiler.
    #[error("{addr} closed the connection before the welcome message")]
    ClosedEarly {
        /// The address.
        addr: SocketAddr,
    },
    /// The stream could not be decoded.
    #[error("decoding the stream from {addr}: {source}")]
    Decode {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: DecodeError,
    },
    /// The raw file could not be written or read.
    #[error("raw stream file {path}: {source}")]
    Raw {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Connects, retrying until `timeout`.
fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, CaptureError> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(source) if start.elapsed() >= timeout => {
                return Err(CaptureError::Connect {
                    addr,
                    waited: start.elapsed(),
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn send(stream: &mut TcpStream, addr: SocketAddr, queries: &[Query]) -> Result<(), CaptureError> {
    if queries.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(queries.len() * crate::protocol::QUERY_SIZE);
    for q in queries {
        bytes.extend_from_slice(&q.encode());
    }
    stream
        .write_all(&bytes)
        .map_err(|source| CaptureError::Io { addr, source })
}

/// Captures from a live process (see the module docs).
pub fn capture(options: &CaptureOptions) -> Result<Summary, CaptureError> {
    let addr = options.addr;
    let io = |source| CaptureError::Io { addr, source };
    let mut raw = match &options.raw {
        Some(path) => Some((
            path.clone(),
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|source| {
                CaptureError::Raw {
                    path: path.clone(),
                    source,
                }
            })?),
        )),
        None => None,
    };
    let mut stream = connect(addr, options.connect_timeout)?;
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut hello = SHIBBOLETH.to_vec();
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    stream.write_all(&hello).map_err(io)?;
    tracing::info!(%addr, "connected; handshake sent");

    let mut session = Session::new(options.limits.clone());
    let mut buf = vec![0u8; 256 * 1024];
    // Set once the welcome arrived: when the capture time ends.
    let mut until: Option<Instant> = None;
    // Set once the disconnect was asked for: when to give up waiting for the rest.
    let mut drain_until: Option<Instant> = None;
    let handshake_until = Instant::now() + options.connect_timeout;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                if session.welcome().is_none() {
                    return Err(CaptureError::ClosedEarly { addr });
                }
                tracing::info!("the client closed the connection");
                break;
            }
            Ok(n) => {
                if let Some((path, file)) = raw.as_mut() {
                    file.write_all(&buf[..n])
                        .map_err(|source| CaptureError::Raw {
                            path: path.clone(),
                            source,
                        })?;
                }
                session
                    .feed(&buf[..n])
                    .map_err(|source| CaptureError::Decode { addr, source })?;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(CaptureError::Io { addr, source }),
        }
        let now = Instant::now();
        if session.welcome().is_some() && until.is_none() {
            until = Some(now + options.duration);
            tracing::info!(
                seconds = options.duration.as_secs_f64(),
                "welcomed; recording"
            );
        } else if session.welcome().is_none() && now >= handshake_until {
            return Err(CaptureError::ClosedEarly { addr });
        }
        let queries = session.take_queries();
        send(&mut stream, addr, &queries)?;
        match (until, drain_until) {
            (Some(end), None) if now >= end => {
                send(&mut stream, addr, &[Query::new(ServerQuery::Disconnect, 0)])?;
                drain_until = Some(now + options.drain_timeout);
                tracing::info!("capture time over; asked the client to disconnect");
            }
            (_, Some(limit)) => {
                let settled = session.terminated() && session.outstanding_queries() == 0;
                if settled || now >= limit {
                    if !settled {
                        tracing::warn!(
                            terminated = session.terminated(),
                            outstanding = session.outstanding_queries(),
                            "stopped waiting for the client's last data"
                        );
                    }
                    // Tell the client to stop answering; it then waits for the next profiler.
                    let _ = send(&mut stream, addr, &[Query::new(ServerQuery::Terminate, 0)]);
                    break;
                }
            }
            _ => {}
        }
    }
    if let Some((path, mut file)) = raw {
        file.flush()
            .map_err(|source| CaptureError::Raw { path, source })?;
    }
    Ok(session.summary())
}

/// Decodes a raw stream written by [`capture`] (`--raw`).
pub fn replay(path: &Path, limits: Limits) -> Result<Summary, ReplayError> {
    let bytes = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut session = Session::new(limits);
    session.feed(&bytes).map_err(|source| ReplayError::Decode {
        path: path.to_owned(),
        source,
    })?;
    Ok(session.summary())
}

/// Why a replay failed.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Its bytes are not a Tracy stream.
    #[error("decoding {path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The error.
        source: DecodeError,
    },
}
