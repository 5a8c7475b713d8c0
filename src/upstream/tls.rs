//! Upstream TLS (rustls with the ring provider, via monoio-rustls): the client config each
//! https upstream compiles once, the handshake, and [`UpstreamStream`], the one stream type
//! the proxy reads and writes upstream whether the connection is plain or TLS.
//!
//! A `ClientConfig` is built per upstream when the config is compiled and shared by every
//! worker through the compiled `Upstream`; its in-memory session cache lets later
//! connections resume. Handshakes happen on the worker, within the route's connect timeout.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;

use crate::error::ProxyError;

/// The TLS settings of one https upstream, built at config compile time.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The client config: trust roots, ALPN `http/1.1`, session cache. Shared, never
    /// rebuilt per request.
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI and checked against the certificate: the URL's host.
    pub server_name: ServerName<'static>,
}

/// Builds the client config of an upstream: the webpki roots, or only the certificates of
/// `ca_pem` when given. Errors are messages for the config error list.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, String> {
    client_config_with_alpn(ca_pem, vec![b"http/1.1".to_vec()])
}

/// As [`client_config`], offering `alpn` (empty: no ALPN extension, as for Redis, which
/// negotiates none).
pub fn client_config_with_alpn(
    ca_pem: Option<&[u8]>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("certificate not usable as a trust root: {e}"))?;
                n += 1;
            }
            if n == 0 {
                return Err("holds no PEM certificate".to_string());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The SNI / verification name for an upstream host as written in its URL.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("`{host}` is not a TLS name: {e}"))
}

/// Runs the TLS handshake over a connected socket. Certificate failures say so.
pub async fn handshake(tls: &UpstreamTls, tcp: TcpStream) -> Result<UpstreamStream, ProxyError> {
    let fd = tcp.as_raw_fd();
    let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
    match connector.connect(tls.server_name.clone(), tcp).await {
        Ok(s) => Ok(UpstreamStream::Tls {
            stream: Box::new(s),
            fd,
        }),
        Err(e) => Err(tls_error(e)),
    }
}

fn tls_error(e: monoio_rustls::TlsError) -> ProxyError {
    let rustls_err = match &e {
        monoio_rustls::TlsError::Rustls(r) => Some(r.clone()),
        monoio_rustls::TlsError::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .cloned(),
    };
    match rustls_err {
        Some(
            r @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)),
        ) => ProxyError::UpstreamTls(format!("upstream certificate rejected: {r}")),
        Some(r) => ProxyError::UpstreamTls(format!("upstream TLS handshake failed: {r}")),
        None => match e {
            monoio_rustls::TlsError::Io(io) => ProxyError::UpstreamIo(io),
            monoio_rustls::TlsError::Rustls(r) => {
                ProxyError::UpstreamTls(format!("upstream TLS handshake failed: {r}"))
            }
        },
    }
}

/// A connection to an upstream: plain TCP or TLS over TCP. Both read and write through
/// monoio's owned-buffer traits, so the proxy code is the same for either.
pub enum UpstreamStream {
    /// `http://` upstreams.
    Plain(TcpStream),
    /// `https://` upstreams; `fd` is the TCP socket inside, for the pool's liveness peek.
    Tls {
        /// The TLS stream (boxed: it carries rustls' connection state and buffers).
        stream: Box<monoio_rustls::ClientTlsStream<TcpStream>>,
        /// The underlying socket's descriptor, owned by `stream`.
        fd: RawFd,
    },
}

impl AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            UpstreamStream::Plain(s) => s.as_raw_fd(),
            UpstreamStream::Tls { fd, .. } => *fd,
        }
    }
}

/// A TLS peer that closes without `close_notify` is read as EOF: HTTP framing
/// (`Content-Length`, chunked) already detects truncated bodies, as other HTTP clients do.
fn tls_eof<T>(res: BufResult<usize, T>) -> BufResult<usize, T> {
    match res {
        (Err(e), b) if e.kind() == io::ErrorKind::UnexpectedEof => (Ok(0), b),
        other => other,
    }
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls { stream, .. } => tls_eof(stream.read(buf).await),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls { stream, .. } => tls_eof(stream.readv(buf).await),
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls { stream, .. } => stream.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls { stream, .. } => stream.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_must_hold_a_certificate() {
        assert!(client_config(Some(b"not pem")).is_err());
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn names() {
        assert!(server_name("api.openai.com").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
    }
}
