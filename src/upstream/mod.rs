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

#[cfg(test)]
mod tests {
    //! Connecting to a resolved name: every address in turn, on real loopback sockets.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    /// An upstream whose one endpoint is a name, its addresses set by the test.
    fn named_upstream() -> Arc<Upstream> {
        let toml = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\nurl = \"http://api.provider.test:8080\"\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
        let cfg = crate::config::load_bytes(toml.as_bytes(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        cfg.upstreams[0].clone()
    }

    /// A loopback address nothing listens on: connecting is refused at once.
    fn refused() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_dead_first_address_falls_through_to_the_next() {
        let up = named_upstream();
        let live = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let dead = refused();
        let t = Duration::from_secs(5);
        rt().block_on(async {
            up.addrs[0].store(Arc::new(vec![dead, live_addr]));
            let s = connect(&up, 0, t)
                .await
                .expect("the second address answers");
            assert_eq!(s.peer_addr().ok(), Some(live_addr));

            // Every address dead: the last error, not a hang.
            up.addrs[0].store(Arc::new(vec![dead, refused()]));
            assert!(matches!(
                connect(&up, 0, t).await,
                Err(ProxyError::Connect(_))
            ));
            // No address at all (never resolved): a resolution error naming the host.
            up.addrs[0].store(Arc::new(Vec::new()));
            match connect(&up, 0, t).await {
                Err(ProxyError::Resolve(h)) => assert_eq!(h, "api.provider.test"),
                other => panic!("{:?}", other.err()),
            }
        });
        drop(live);
    }
}
