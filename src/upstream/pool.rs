//! The keep-alive pool of one worker: idle upstream connections by (upstream fingerprint,
//! endpoint). Owned by the worker thread alone, so taking and returning a connection takes
//! no lock. A reload keeps the pools of upstreams whose definition did not change (same
//! fingerprint); the pools of changed or removed upstreams are dropped by [`Pool::retain`],
//! while connections still in use by old requests are simply not returned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::UpstreamStream;

use crate::bufio::idle_socket_is_alive;
use crate::config::Upstream;

/// An upstream connection, pooled or in use.
pub struct UpConn {
    /// The connection, plain or TLS.
    pub stream: UpstreamStream,
    /// Requests already sent on it.
    pub requests: u64,
    /// Whether it came from the pool (a failure on it before any response byte may be a
    /// close race, worth one retry on a new connection).
    pub reused: bool,
}

struct Idle {
    stream: UpstreamStream,
    since: Instant,
    requests: u64,
}

/// Counters of one worker's pool, read by metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStats {
    /// New connections opened.
    pub connects: u64,
    /// Requests sent on a pooled connection.
    pub reuses: u64,
    /// Idle connections found dead or expired and dropped.
    pub discarded: u64,
}

/// One worker's idle connections.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<(u64, usize), VecDeque<Idle>>,
    /// Counters for metrics.
    pub stats: PoolStats,
}

impl Pool {
    /// A live idle connection to endpoint `ep` of `up`, most recently used first. Expired,
    /// closed or over-used connections met on the way are dropped.
    ///
    /// Every connection is checked with a non-blocking peek before it is handed out, however
    /// recently it was used: bytes waiting on an idle connection are bytes the upstream sent
    /// past the end of its last response (a body on a HEAD/204/304 answer, a response split
    /// across writes), and read as the next response they would answer another client's
    /// request. Such a connection is dropped, as is one the upstream closed. The peek is one
    /// `recv` per reuse; the race it cannot see (a close between peek and write) is retried
    /// once on a new connection when the request's body is in hand.
    pub fn take(&mut self, up: &Upstream, ep: usize) -> Option<UpConn> {
        self.take_at(up, ep, Instant::now())
    }

    /// [`Pool::take`] at `now` (tests pass synthetic instants).
    pub fn take_at(&mut self, up: &Upstream, ep: usize, now: Instant) -> Option<UpConn> {
        let list = self.idle.get_mut(&(up.fingerprint, ep))?;
        while let Some(idle) = list.pop_back() {
            let idle_for = now.saturating_duration_since(idle.since);
            if idle_for < up.keepalive_timeout
                && idle.requests < up.keepalive_requests
                && idle_socket_is_alive(idle.stream.as_raw_fd())
            {
                self.stats.reuses += 1;
                return Some(UpConn {
                    stream: idle.stream,
                    requests: idle.requests,
                    reused: true,
                });
            }
            self.stats.discarded += 1;
        }
        None
    }

    /// Returns a connection after a complete response, unless the pool is full or the
    /// connection has served `keepalive_requests`.
    pub fn put(&mut self, up: &Upstream, ep: usize, conn: UpConn) {
        self.put_at(up, ep, conn, Instant::now());
    }

    /// [`Pool::put`] at `now` (tests pass synthetic instants).
    pub fn put_at(&mut self, up: &Upstream, ep: usize, conn: UpConn, now: Instant) {
        if up.keepalive == 0 || conn.requests >= up.keepalive_requests {
            return;
        }
        let list = self.idle.entry((up.fingerprint, ep)).or_default();
        if list.len() >= up.keepalive {
            list.pop_front();
        }
        list.push_back(Idle {
            stream: conn.stream,
            since: now,
            requests: conn.requests,
        });
    }

    /// Counts a new connection.
    pub fn note_connect(&mut self) {
        self.stats.connects += 1;
    }

    /// Drops pools of upstreams not in `live` and idle connections past their timeout.
    pub fn retain(
        &mut self,
        live: &HashSet<u64>,
        timeout_of: impl Fn(u64) -> Option<std::time::Duration>,
    ) {
        self.idle.retain(|(fp, _), list| {
            if !live.contains(fp) {
                return false;
            }
            if let Some(t) = timeout_of(*fp) {
                list.retain(|i| i.since.elapsed() < t);
            }
            !list.is_empty()
        });
    }

    /// Idle connections held for the upstream with this fingerprint.
    pub fn idle_for(&self, fingerprint: u64) -> usize {
        self.idle
            .iter()
            .filter(|((fp, _), _)| *fp == fingerprint)
            .map(|(_, l)| l.len())
            .sum()
    }

    /// Idle connections held, all upstreams.
    pub fn idle_count(&self) -> usize {
        self.idle.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    //! The pool over real loopback sockets, with synthetic instants for its clock.

    use std::io::Write;
    use std::net::{SocketAddr, TcpListener};
    use std::time::Duration;

    use super::*;

    /// An upstream with `keepalive = 2`, a 1 s keep-alive timeout and 3 requests per
    /// connection.
    fn upstream() -> std::sync::Arc<Upstream> {
        let toml = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\nurl = \"http://127.0.0.1:1\"\nkeepalive = 2\n\
             keepalive_timeout_ms = 1000\nkeepalive_requests = 3\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
        let cfg = crate::config::load_bytes(toml.as_bytes(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        cfg.upstreams[0].clone()
    }

    /// Loopback pairs: the client ends as pool connections, the server ends kept by the
    /// test (dropping one closes that connection from the upstream's side).
    struct Pairs {
        listener: TcpListener,
    }

    impl Pairs {
        fn new() -> Pairs {
            Pairs {
                listener: TcpListener::bind("127.0.0.1:0").expect("bind"),
            }
        }

        /// A connection (as the pool holds it, `requests` sent) and its server end.
        fn conn(&self, requests: u64) -> (UpConn, std::net::TcpStream, SocketAddr) {
            let addr = self.listener.local_addr().expect("addr");
            let client = std::net::TcpStream::connect(addr).expect("connect");
            let local = client.local_addr().expect("local");
            let (server, _) = self.listener.accept().expect("accept");
            let stream = monoio::net::TcpStream::from_std(client).expect("monoio stream");
            let conn = UpConn {
                stream: UpstreamStream::Plain(stream),
                requests,
                reused: false,
            };
            (conn, server, local)
        }
    }

    fn local(c: &UpConn) -> Option<SocketAddr> {
        match &c.stream {
            UpstreamStream::Plain(s) => s.local_addr().ok(),
            UpstreamStream::Tls { .. } => None,
        }
    }

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn most_recently_returned_first_and_the_oldest_evicted_past_keepalive() {
        rt().block_on(async {
            let up = upstream();
            let pairs = Pairs::new();
            let mut pool = Pool::default();
            let t0 = Instant::now();
            let mut servers = Vec::new();
            let mut order = Vec::new();
            for _ in 0..3 {
                let (c, s, a) = pairs.conn(1);
                pool.put_at(&up, 0, c, t0);
                servers.push(s);
                order.push(a);
            }
            // keepalive = 2: the first one returned was evicted.
            assert_eq!(pool.idle_count(), 2);
            let a = pool.take_at(&up, 0, t0).expect("pooled");
            assert!(a.reused);
            assert_eq!(local(&a), Some(order[2]), "last in, first out");
            let b = pool.take_at(&up, 0, t0).expect("pooled");
            assert_eq!(local(&b), Some(order[1]));
            assert!(pool.take_at(&up, 0, t0).is_none(), "the oldest was evicted");
            // Other endpoints have pools of their own.
            pool.put_at(&up, 1, a, t0);
            assert!(pool.take_at(&up, 0, t0).is_none());
            assert!(pool.take_at(&up, 1, t0).is_some());
            assert_eq!(pool.stats.reuses, 3);
        });
    }

    #[test]
    fn an_idle_connection_expires_at_keepalive_timeout() {
        rt().block_on(async {
            let up = upstream();
            let pairs = Pairs::new();
            let mut pool = Pool::default();
            let t0 = Instant::now();
            let (c, _s1, _) = pairs.conn(1);
            pool.put_at(&up, 0, c, t0);
            let just_before = t0 + Duration::from_millis(999);
            let c = pool.take_at(&up, 0, just_before).expect("not yet expired");
            pool.put_at(&up, 0, c, t0);
            assert!(pool.take_at(&up, 0, t0 + Duration::from_secs(1)).is_none());
            assert_eq!(pool.stats.discarded, 1);
            assert_eq!(pool.idle_count(), 0);
        });
    }

    #[test]
    fn a_connection_is_not_kept_past_keepalive_requests() {
        rt().block_on(async {
            let up = upstream();
            let pairs = Pairs::new();
            let mut pool = Pool::default();
            let t0 = Instant::now();
            let (c, _s1, _) = pairs.conn(3);
            pool.put_at(&up, 0, c, t0);
            assert_eq!(pool.idle_count(), 0, "3 requests served: not pooled");
            let (c, _s2, _) = pairs.conn(2);
            pool.put_at(&up, 0, c, t0);
            assert_eq!(pool.take_at(&up, 0, t0).map(|c| c.requests), Some(2));
        });
    }

    #[test]
    fn a_connection_closed_or_with_bytes_waiting_is_never_handed_out() {
        rt().block_on(async {
            let up = upstream();
            let pairs = Pairs::new();
            let mut pool = Pool::default();
            let t0 = Instant::now();
            let (closed, s_closed, _) = pairs.conn(1);
            let (chatty, mut s_chatty, _) = pairs.conn(1);
            let fds = [closed.stream.as_raw_fd(), chatty.stream.as_raw_fd()];
            pool.put_at(&up, 0, closed, t0);
            pool.put_at(&up, 0, chatty, t0);
            drop(s_closed);
            s_chatty
                .write_all(b"HTTP/1.1 200 OK\r\n")
                .expect("stray bytes");
            // Loopback delivers the FIN and the bytes at once; bounded in case it does not.
            let arrived = (0..200).any(|_| {
                let gone = fds.iter().all(|&fd| !idle_socket_is_alive(fd));
                if !gone {
                    std::thread::sleep(Duration::from_millis(5));
                }
                gone
            });
            assert!(arrived, "the close and the bytes reached the sockets");
            assert!(pool.take_at(&up, 0, t0).is_none(), "both dropped");
            assert_eq!(pool.stats.discarded, 2);
            // A quiet live connection passes the same check.
            let (good, _s_good, addr) = pairs.conn(1);
            pool.put_at(&up, 0, good, t0);
            let got = pool.take_at(&up, 0, t0).expect("live");
            assert_eq!(local(&got), Some(addr));
        });
    }
}
