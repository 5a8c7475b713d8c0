//! Upstreams at run time: resolving their hosts off the workers ([`dns`]), the per-worker
//! keep-alive pools ([`pool`]), picking an endpoint and opening connections.

pub mod balance;
pub mod dns;
pub mod pool;

use std::time::Duration;

use monoio::net::TcpStream;

use crate::config::Upstream;
use crate::error::ProxyError;

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
