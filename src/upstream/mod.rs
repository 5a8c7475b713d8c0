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
/// upstreams. Each resolved address gets `timeout` for its TCP connect and handshake
/// together (see [`connect`] for why per address).
pub async fn open(
    up: &Upstream,
    ep: usize,
    timeout: Duration,
) -> Result<UpstreamStream, ProxyError> {
    let (tcp, started) = connect_timed(up, ep, timeout).await?;
    let Some(tls) = &up.tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    // The handshake's budget is what is left of the attempt that connected, not of all of
    // them: measured from the first address, a dead address before a live one would leave
    // the handshake no time at all and fail a healthy endpoint.
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(ProxyError::ConnectTimeout);
    }
    match monoio::time::timeout(left, tls::handshake(tls, tcp)).await {
        Ok(res) => res,
        Err(_) => Err(ProxyError::ConnectTimeout),
    }
}

/// Opens a TCP connection to endpoint `ep` of `up`, trying each resolved address in turn.
///
/// Each address gets the whole `timeout`, so N unresponsive addresses cost up to N ×
/// `timeout`. That is nginx's `proxy_connect_timeout` semantics (per attempt at one server;
/// a name's addresses are servers of their own), and it is what lets a live address behind
/// a black-holed one (say an unreachable IPv6 address first) still be reached: a budget
/// shared by all addresses would be spent on the first. The route's `tries` and the
/// client's own patience bound the total.
pub async fn connect(up: &Upstream, ep: usize, timeout: Duration) -> Result<TcpStream, ProxyError> {
    connect_timed(up, ep, timeout).await.map(|(s, _)| s)
}

/// [`connect`], also returning when the attempt that succeeded started.
async fn connect_timed(
    up: &Upstream,
    ep: usize,
    timeout: Duration,
) -> Result<(TcpStream, Instant), ProxyError> {
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
        let started = Instant::now();
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(stream)) => {
                // Heads and SSE chunks are small writes that must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok((stream, started));
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

    /// A loopback address whose connects hang: a listener with a backlog of 0 whose one
    /// queue slot is taken, so the kernel drops further SYNs (as a black-holed address
    /// does). Returns the listener and the connection holding the slot.
    fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // SAFETY: `listen` on a socket this function owns; it only changes the backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0, "listen");
        let addr = l.local_addr().expect("addr");
        // Fill the queue until a connect hangs (bounded: the first one fills it on Linux).
        let mut held = Vec::new();
        for _ in 0..4 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (l, held, addr),
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        panic!("connects to a full backlog did not hang");
    }

    #[test]
    fn a_black_holed_first_address_leaves_the_tls_handshake_its_time() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["api.provider.test".to_string()])
            .expect("leaf params")
            .signed_by(&key, &ca)
            .expect("leaf");
        let dir = std::env::temp_dir().join(format!("ringgate-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("ca file");
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\nurl = \"https://api.provider.test:8443\"\nca_file = \"{}\"\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n",
            ca_file.display()
        );
        let cfg = crate::config::load_bytes(toml.as_bytes(), &dir)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let up = cfg.upstreams[0].clone();

        // The live address: a TLS server for the name, one handshake.
        let server_cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config"),
        );
        let live = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut sock, _) = live.accept().expect("accept");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut conn = rustls::ServerConnection::new(server_cfg).expect("server conn");
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).expect("server handshake");
            }
        });

        let (_hole, _held, hole_addr) = black_hole();
        // Long enough for a loopback handshake on a loaded machine; the black hole spends
        // all of it before the live address is tried.
        let t = Duration::from_secs(2);
        up.addrs[0].store(Arc::new(vec![hole_addr, live_addr]));
        let res = rt().block_on(async { open(&up, 0, t).await });
        assert!(
            matches!(res, Ok(UpstreamStream::Tls { .. })),
            "the live second address, with its handshake: {:?}",
            res.err()
        );
        server.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
