//! The socket edge: non-blocking UDP sockets driving a sans-IO session.
//!
//! [`UdpEndpoint`] owns one non-blocking `std::net::UdpSocket` and moves datagrams between it
//! and a [`ServerSession`] or [`ClientSession`]:
//!
//! ```no_run
//! # use orrery_netcode::{udp::UdpEndpoint, ServerSession, unix_now};
//! # fn run(mut session: ServerSession) -> std::io::Result<()> {
//! let mut udp = UdpEndpoint::bind("0.0.0.0:7777".parse().unwrap())?;
//! loop {
//!     udp.recv(&mut session, unix_now())?; // drains the socket (non-blocking)
//!     while let Some(_event) = session.poll_event() { /* ... */ }
//!     session.update(unix_now());
//!     udp.flush(&mut session)?; // sends; keeps what the kernel refused for the next flush
//!     # break;
//! }
//! # Ok(()) }
//! ```
//!
//! With the `tokio` feature, `TokioUdpEndpoint` does the same on a `tokio::net::UdpSocket`
//! and adds `readable().await` to wait for incoming datagrams, for a network task that owns
//! the session. Every datagram costs one syscall and one hash lookup in the session, whatever
//! the number of clients (`docs/reference-numbers.md`: `recv_from` ~1 M/s, `send_to` ~300 k/s per core;
//! batching syscalls gains nothing there).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Transmit;
use crate::client::ClientSession;
use crate::server::ServerSession;

/// A sans-IO session the endpoint can drive.
pub trait Session {
    /// Processes one received datagram.
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]);
    /// Moves queued datagrams into `out`.
    fn drain_transmits(&mut self, out: &mut Vec<Transmit>);
}

impl Session for ServerSession {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        ServerSession::handle_datagram(self, now, from, bytes);
    }
    fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        ServerSession::drain_transmits(self, out);
    }
}

impl Session for ClientSession {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        ClientSession::handle_datagram(self, now, from, bytes);
    }
    fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        ClientSession::drain_transmits(self, out);
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A non-blocking datagram socket (`std` or, with the `tokio` feature, tokio's).
pub trait DatagramSocket: sealed::Sealed {
    /// Receives one datagram without blocking.
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Sends one datagram without blocking.
    fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl sealed::Sealed for std::net::UdpSocket {}
impl DatagramSocket for std::net::UdpSocket {
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.recv_from(buf)
    }
    fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_to(buf, to)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::UdpSocket::local_addr(self)
    }
}

#[cfg(feature = "tokio")]
impl sealed::Sealed for tokio::net::UdpSocket {}
#[cfg(feature = "tokio")]
impl DatagramSocket for tokio::net::UdpSocket {
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::try_recv_from(self, buf)
    }
    fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::try_send_to(self, buf, to)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// Counters of an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams dropped because the unsent queue was full or the kernel refused them.
    pub send_dropped: u64,
    /// Receive errors skipped (ICMP-induced resets and the like).
    pub recv_errors: u64,
}

/// A socket driving one session (see the module docs).
#[derive(Debug)]
pub struct Endpoint<S> {
    socket: S,
    local: SocketAddr,
    buf: Vec<u8>,
    out: Vec<Transmit>,
    unsent: VecDeque<Transmit>,
    max_unsent: usize,
    max_recv_batch: usize,
    stats: EndpointStats,
}

/// An endpoint on a `std` socket.
pub type UdpEndpoint = Endpoint<std::net::UdpSocket>;

/// An endpoint on a tokio socket.
#[cfg(feature = "tokio")]
pub type TokioUdpEndpoint = Endpoint<tokio::net::UdpSocket>;

/// Kernel buffer size `UdpEndpoint::bind` asks for (the kernel caps it at `rmem_max`/`wmem_max`):
/// a burst of connection requests (1,078 bytes each) from thousands of clients must not
/// overflow the default ~200 KiB while the server is busy with a tick.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

impl UdpEndpoint {
    /// Binds a non-blocking socket with [`SOCKET_BUFFER_BYTES`] kernel buffers (best effort).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with_buffers(addr, SOCKET_BUFFER_BYTES)
    }

    /// Binds a non-blocking socket asking for `buffer_bytes` receive and send buffers.
    pub fn bind_with_buffers(addr: SocketAddr, buffer_bytes: usize) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
            tracing::warn!(error = %e, buffer_bytes, "could not set the UDP receive buffer");
        }
        if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
            tracing::warn!(error = %e, buffer_bytes, "could not set the UDP send buffer");
        }
        socket.bind(&addr.into())?;
        Self::from_std(socket.into())
    }

    /// Takes a socket (made non-blocking).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Self::new(socket)
    }

    /// Blocks until a datagram is waiting or `timeout` passes; `Ok(true)` if one is waiting.
    /// For a dedicated network thread that sleeps between ticks instead of spinning (costs
    /// three extra syscalls per wait, none per datagram).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        if timeout.is_zero() {
            return Ok(false);
        }
        self.socket.set_nonblocking(false)?;
        self.socket.set_read_timeout(Some(timeout))?;
        let mut probe = [0u8; 1];
        let result = self.socket.peek_from(&mut probe);
        self.socket.set_nonblocking(true)?;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            // A pending ICMP error (reset/refused) is consumed by `recv`; report "readable".
            Err(_) => Ok(true),
        }
    }
}

#[cfg(feature = "tokio")]
impl TokioUdpEndpoint {
    /// Binds a tokio socket (call inside a tokio runtime).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::new(tokio::net::UdpSocket::bind(addr).await?)
    }

    /// Waits until the socket has a datagram to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Waits until the socket can send (after a flush left datagrams unsent).
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }
}

impl<S: DatagramSocket> Endpoint<S> {
    /// Wraps a non-blocking socket.
    pub fn new(socket: S) -> io::Result<Self> {
        let local = socket.local_addr()?;
        Ok(Self {
            socket,
            local,
            buf: vec![0u8; 2048],
            out: Vec::new(),
            unsent: VecDeque::new(),
            max_unsent: 65_536,
            max_recv_batch: 65_536,
            stats: EndpointStats::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket.
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Datagrams the kernel has not taken yet.
    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    /// Receives every datagram waiting on the socket (up to a batch limit) into `session`.
    /// Returns how many; `Ok(0)` when none was waiting.
    pub fn recv(&mut self, session: &mut impl Session, now: Duration) -> io::Result<usize> {
        let mut n = 0;
        while n < self.max_recv_batch {
            match self.socket.try_recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    n += 1;
                    session.handle_datagram(now, from, &self.buf[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    self.stats.recv_errors += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.stats.received += n as u64;
        Ok(n)
    }

    /// Sends the session's queued datagrams (and any left from the last flush). Datagrams the
    /// kernel refuses with `WouldBlock` wait for the next flush (bounded queue); others that
    /// fail (unreachable peer, ...) are dropped and counted. Returns how many were sent.
    pub fn flush(&mut self, session: &mut impl Session) -> io::Result<usize> {
        session.drain_transmits(&mut self.out);
        self.unsent.extend(self.out.drain(..));
        while self.unsent.len() > self.max_unsent {
            self.unsent.pop_front();
            self.stats.send_dropped += 1;
        }
        let mut sent = 0;
        while let Some(t) = self.unsent.front() {
            match self.socket.try_send_to(&t.bytes, t.to) {
                Ok(_) => {
                    sent += 1;
                    self.unsent.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(to = %t.to, error = %e, "send failed; datagram dropped");
                    self.stats.send_dropped += 1;
                    self.unsent.pop_front();
                }
            }
        }
        self.stats.sent += sent as u64;
        Ok(sent)
    }
}
