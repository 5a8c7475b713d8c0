//! Upstreams at run time: resolving their hosts off the workers ([`dns`]), the per-worker
//! keep-alive pools ([`pool`]), picking an endpoint and opening connections, plain or TLS
//! ([`tls`]).

pub mod balance;
pub mod dns;
pub mod pool;
pub mod tls;

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::config::Upstream;
use crate::error::ProxyError;
pub use tls::UpstreamStream;

/// Opens a connection to endpoint `ep` of `up`: TCP, then the TLS handshake for https
/// upstreams, both within `timeout`.
pub async fn open(
    up: &Upstream,
    ep: usize,
    timeout: Duration,
) -> Result<UpstreamStream, ProxyError> {
    let t0 = Instant::now();
    let tcp = connect(up, ep, timeout).await?;
    let Some(tls) = &up.tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let left = timeout.saturating_sub(t0.elapsed());
    if left.is_zero() {
        return Err(ProxyError::ConnectTimeout);
    }
    match monoio::time::timeout(left, tls::handshake(tls, tcp)).await {
        Ok(res) => res,
        Err(_) => Err(ProxyError::ConnectTimeout),
    }
}

/// Opens a TCP connection to endpoint `ep` of `up`, trying each resolved address in turn.
pub async fn connect(up: &Upstream, ep: usize, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let host = up.endpoints.get(ep).map(|e| e.host.as_str()).unwrap_or("");
    let addrs = match up.addrs.get(ep) {
        Some(a) => a.load_full(),
        None => return Err(ProxyError::Resolve(host.to_string())),
    };
    if addrs.is_empty() {
        return Err(ProxyError::Resolve(host.to_string()));
    }
    let mut last = ProxyError::ConnectTimeout;
    for addr in addrs.iter() {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(stream)) => {
                // Heads and SSE chunks are small writes that must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = ProxyError::Connect(e),
            Err(_) => last = ProxyError::ConnectTimeout,
        }
    }
    Err(last)
}
