//! TLS for the HTTP control plane: loading the certificate chain and key named in
//! [`TlsFiles`], and [`TlsHandshake`], a connection whose handshake runs inside the
//! connection's own task.
//!
//! The handshake is not done in the listener's accept loop: one client that opens a socket and
//! sends nothing would stall every other accept. Instead the accepted stream is handed to the
//! HTTP server at once and the first read or write drives the handshake. The handshake reads
//! and writes through [`crate::listener::CappedStream`], so the idle timeout and the
//! connection cap cover a client that stalls mid-handshake too.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::ServerError;
use crate::listener::CappedStream;

/// The PEM files the control plane serves TLS with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub certificate_chain: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl TlsFiles {
    /// Reads both files and builds the acceptor (TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
    pub fn acceptor(&self) -> Result<TlsAcceptor, ServerError> {
        let chain = read_certificates(&self.certificate_chain)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.private_key).map_err(|e| ServerError::Tls {
                path: self.private_key.clone(),
                reason: format!("no usable private key: {e}"),
            })?;
        // ring rather than aws-lc-rs: it builds without cmake in seconds. rustls deprecates it
        // for lacking post-quantum key exchange, which the control plane can do without.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_error = |e: rustls::Error| ServerError::Tls {
            path: self.private_key.clone(),
            reason: format!("certificate and key do not make a TLS configuration: {e}"),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let error = |reason: String| ServerError::Tls {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("bad PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(error("no CERTIFICATE block in the file".to_owned()));
    }
    Ok(chain)
}

/// A server-side TLS connection whose handshake runs on first use (see the module docs).
pub struct TlsHandshake {
    state: State,
}

enum State {
    Handshaking(Box<tokio_rustls::Accept<CappedStream>>),
    Ready(Box<TlsStream<CappedStream>>),
    Failed,
}

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Handshaking(_) => "handshaking",
            State::Ready(_) => "ready",
            State::Failed => "failed",
        };
        f.debug_struct("TlsHandshake")
            .field("state", &state)
            .finish()
    }
}

impl TlsHandshake {
    /// Starts (without driving) the handshake for `stream`.
    pub fn new(acceptor: &TlsAcceptor, stream: CappedStream) -> Self {
        TlsHandshake {
            state: State::Handshaking(Box::new(acceptor.accept(stream))),
        }
    }

    /// Drives the handshake; ready with the established stream.
    fn poll_established(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut TlsStream<CappedStream>>> {
        if let State::Handshaking(accept) = &mut self.state {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(stream)) => self.state = State::Ready(Box::new(stream)),
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    self.state = State::Failed;
                    return Poll::Ready(Err(error));
                }
            }
        }
        match &mut self.state {
            State::Ready(stream) => Poll::Ready(Ok(stream)),
            State::Handshaking(_) | State::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake failed earlier on this connection",
            ))),
        }
    }
}

impl AsyncRead for TlsHandshake {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().poll_established(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TlsHandshake {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_established(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_established(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            // Nothing was said over TLS yet: there is no session to close.
            State::Handshaking(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }
}
