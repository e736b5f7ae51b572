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
//! the session.
//!
//! By default every datagram costs one syscall. [`Endpoint::enable_batching`] (the server's
//! sockets) switches to `quinn-udp`: receives read up to [`quinn_udp::BATCH_SIZE`] datagrams
//! per `recvmmsg` (and, on Linux, coalesced same-flow datagrams via GRO), and datagrams queued
//! back to back for one destination with one size (a large reliable message split in
//! fragments) leave in one `sendmsg` with GSO where the OS offers it. Sends to different
//! clients still cost one syscall each (quinn-udp has no `sendmmsg`). Clients keep the plain
//! path (a batching endpoint holds ~2 MiB of receive buffers).

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
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
    /// Receives a batch of datagrams without blocking (`quinn-udp`).
    fn try_recv_batch(
        &self,
        state: &quinn_udp::UdpSocketState,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn_udp::RecvMeta],
    ) -> io::Result<usize>;
    /// Sends one `quinn-udp` transmit (maybe several GSO segments) without blocking.
    fn try_send_segments(
        &self,
        state: &quinn_udp::UdpSocketState,
        transmit: &quinn_udp::Transmit<'_>,
    ) -> io::Result<()>;
    /// The `quinn-udp` state for this socket (sets the socket options it needs).
    fn batch_state(&self) -> io::Result<quinn_udp::UdpSocketState>;
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
    fn try_recv_batch(
        &self,
        state: &quinn_udp::UdpSocketState,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn_udp::RecvMeta],
    ) -> io::Result<usize> {
        state.recv(self.into(), bufs, meta)
    }
    fn try_send_segments(
        &self,
        state: &quinn_udp::UdpSocketState,
        transmit: &quinn_udp::Transmit<'_>,
    ) -> io::Result<()> {
        state.try_send(self.into(), transmit)
    }
    fn batch_state(&self) -> io::Result<quinn_udp::UdpSocketState> {
        quinn_udp::UdpSocketState::new(self.into())
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
    fn try_recv_batch(
        &self,
        state: &quinn_udp::UdpSocketState,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn_udp::RecvMeta],
    ) -> io::Result<usize> {
        // Through `try_io` so that tokio clears the readiness on `WouldBlock`.
        self.try_io(tokio::io::Interest::READABLE, || {
            state.recv(self.into(), bufs, meta)
        })
    }
    fn try_send_segments(
        &self,
        state: &quinn_udp::UdpSocketState,
        transmit: &quinn_udp::Transmit<'_>,
    ) -> io::Result<()> {
        self.try_io(tokio::io::Interest::WRITABLE, || {
            state.try_send(self.into(), transmit)
        })
    }
    fn batch_state(&self) -> io::Result<quinn_udp::UdpSocketState> {
        quinn_udp::UdpSocketState::new(self.into())
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
    /// Receive syscalls that returned datagrams.
    pub recv_calls: u64,
    /// Send syscalls that succeeded (below `sent` when GSO joined datagrams).
    pub send_calls: u64,
}

/// Buffers and `quinn-udp` state of a batching endpoint.
struct Batching {
    state: quinn_udp::UdpSocketState,
    /// [`quinn_udp::BATCH_SIZE`] receive slots of `slot` bytes each, back to back.
    bufs: Vec<u8>,
    slot: usize,
    meta: Vec<quinn_udp::RecvMeta>,
    /// Segments joined for one GSO send.
    segments: Vec<u8>,
}

impl std::fmt::Debug for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batching")
            .field("slot", &self.slot)
            .field("gro_segments", &self.state.gro_segments())
            .field("max_gso_segments", &self.state.max_gso_segments())
            .finish_non_exhaustive()
    }
}

/// Largest datagram a batching endpoint sends as GSO segments, and the receive slot when GRO
/// is off (netcode packets are at most 1,400 bytes).
const SLOT_BYTES: usize = 2048;
/// A receive slot when GRO may coalesce datagrams (the kernel's UDP payload limit).
const GRO_SLOT_BYTES: usize = 65_535;

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
    batching: Option<Box<Batching>>,
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
            batching: None,
        })
    }

    /// Switches to batched receives and GSO sends through `quinn-udp` (see the module docs).
    /// Sets the socket options `quinn-udp` needs (GRO, packet info, no fragmentation).
    pub fn enable_batching(&mut self) -> io::Result<()> {
        let state = self.socket.batch_state()?;
        let slot = if state.gro_segments() > 1 {
            GRO_SLOT_BYTES
        } else {
            SLOT_BYTES
        };
        let meta = vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        self.batching = Some(Box::new(Batching {
            state,
            bufs: vec![0u8; slot * quinn_udp::BATCH_SIZE],
            slot,
            meta,
            segments: Vec::new(),
        }));
        Ok(())
    }

    /// Whether [`Endpoint::enable_batching`] is on.
    pub fn is_batching(&self) -> bool {
        self.batching.is_some()
    }

    /// Datagrams one send may carry as GSO segments (1: no GSO, or batching off).
    pub fn max_gso_segments(&self) -> usize {
        self.batching
            .as_ref()
            .map_or(1, |b| b.state.max_gso_segments())
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
        if self.batching.is_some() {
            return self.recv_batched(session, now);
        }
        let mut n = 0;
        while n < self.max_recv_batch {
            match self.socket.try_recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    n += 1;
                    self.stats.recv_calls += 1;
                    session.handle_datagram(now, from, &self.buf[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_peer_error(&e) => self.stats.recv_errors += 1,
                Err(e) => return Err(e),
            }
        }
        self.stats.received += n as u64;
        Ok(n)
    }

    fn recv_batched(&mut self, session: &mut impl Session, now: Duration) -> io::Result<usize> {
        let Some(b) = self.batching.as_deref_mut() else {
            return Ok(0);
        };
        let mut n = 0;
        while n < self.max_recv_batch {
            let mut slices: Vec<IoSliceMut<'_>> =
                b.bufs.chunks_mut(b.slot).map(IoSliceMut::new).collect();
            let got = match self
                .socket
                .try_recv_batch(&b.state, &mut slices, &mut b.meta)
            {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_peer_error(&e) => {
                    self.stats.recv_errors += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            drop(slices);
            self.stats.recv_calls += 1;
            for (i, meta) in b.meta.iter().take(got).enumerate() {
                let start = i * b.slot;
                let data = &b.bufs[start..start + meta.len.min(b.slot)];
                // With GRO one slot may hold several datagrams of `stride` bytes (the last
                // maybe shorter), all from `meta.addr`.
                for datagram in data.chunks(meta.stride.max(1)) {
                    n += 1;
                    session.handle_datagram(now, meta.addr, datagram);
                }
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
        if self.batching.is_some() {
            return Ok(self.flush_segmented());
        }
        let mut sent = 0;
        while let Some(t) = self.unsent.front() {
            match self.socket.try_send_to(&t.bytes, t.to) {
                Ok(_) => {
                    sent += 1;
                    self.stats.send_calls += 1;
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

    /// [`Endpoint::flush`] with `quinn-udp`: a run of queued datagrams to one destination,
    /// all of the first one's size but the last (which may be shorter), leaves as GSO
    /// segments in one `sendmsg`.
    fn flush_segmented(&mut self) -> usize {
        let Some(b) = self.batching.as_deref_mut() else {
            return 0;
        };
        let max_segments = b.state.max_gso_segments().max(1);
        let mut sent = 0;
        while let Some(first) = self.unsent.front() {
            let (to, size) = (first.to, first.bytes.len());
            let mut run = 1;
            if max_segments > 1 && size <= SLOT_BYTES {
                while run < max_segments {
                    match self.unsent.get(run) {
                        Some(t) if t.to == to && t.bytes.len() <= size => {
                            run += 1;
                            if t.bytes.len() < size {
                                break; // a shorter segment ends a GSO send
                            }
                        }
                        _ => break,
                    }
                }
            }
            let contents: &[u8] = if run == 1 {
                &first.bytes
            } else {
                b.segments.clear();
                for t in self.unsent.range(..run) {
                    b.segments.extend_from_slice(&t.bytes);
                }
                &b.segments
            };
            let transmit = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: (run > 1).then_some(size),
                src_ip: None,
            };
            match self.socket.try_send_segments(&b.state, &transmit) {
                Ok(()) => {
                    sent += run;
                    self.stats.send_calls += 1;
                    self.unsent.drain(..run);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(%to, error = %e, datagrams = run, "send failed; datagrams dropped");
                    self.stats.send_dropped += run as u64;
                    self.unsent.drain(..run);
                }
            }
        }
        self.stats.sent += sent as u64;
        sent
    }
}

/// Errors a peer causes (ICMP port unreachable and the like), skipped by receives.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}
