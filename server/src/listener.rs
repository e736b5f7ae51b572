//! The HTTP listener's admission: a cap on open connections and an idle timeout, so that
//! connections a client opens and leaves idle (or feeds a byte at a time) cannot exhaust the
//! server's sockets, memory or tasks. Over the cap a new connection is closed at once rather
//! than left waiting in the kernel's backlog; a connection that neither reads nor writes for
//! the idle timeout is closed. With TLS configured, each admitted connection is wrapped in a
//! [`TlsHandshake`] that runs on the connection's own task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::tls::TlsHandshake;

/// The peer address of an HTTP connection, from the socket (never from a header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A TCP listener that admits at most `max_connections` open connections.
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for CappedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CappedListener")
            .field("listener", &self.listener)
            .field("available", &self.permits.available_permits())
            .field("idle_timeout", &self.idle_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl CappedListener {
    /// Wraps `listener`; connections speak TLS when `tls` is given.
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            idle_timeout,
            metrics,
            tls,
        }
    }
}

/// An admitted HTTP connection, in clear text or TLS.
#[derive(Debug)]
pub enum HttpStream {
    /// `http://`.
    Plain(CappedStream),
    /// `https://`.
    Tls(TlsHandshake),
}

impl Listener for CappedListener {
    type Io = HttpStream;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (HttpStream, PeerAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let stream = CappedStream {
                        stream,
                        _permit: permit,
                        idle_timeout: self.idle_timeout,
                        deadline: Box::pin(tokio::time::sleep(self.idle_timeout)),
                    };
                    let stream = match &self.tls {
                        Some(acceptor) => HttpStream::Tls(TlsHandshake::new(acceptor, stream)),
                        None => HttpStream::Plain(stream),
                    };
                    return (stream, PeerAddr(addr));
                }
                Err(_) => {
                    self.metrics.http_connections_refused.fetch_add(1, Relaxed);
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.listener.local_addr().map(PeerAddr)
    }
}

impl Connected<IncomingStream<'_, CappedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        *stream.remote_addr()
    }
}

/// An admitted connection: holds its place under the cap until dropped, and fails with
/// `TimedOut` once it has been idle (no byte read or written) for the idle timeout.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl CappedStream {
    fn touch(&mut self) {
        let next = Instant::now() + self.idle_timeout;
        self.deadline.as_mut().reset(next);
    }

    /// While the socket has nothing for us: whether the idle timeout has passed.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle for too long")
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A client that stops reading our response is idle too.
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
