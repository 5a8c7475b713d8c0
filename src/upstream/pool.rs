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
        let list = self.idle.get_mut(&(up.fingerprint, ep))?;
        while let Some(idle) = list.pop_back() {
            let idle_for = idle.since.elapsed();
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
        if up.keepalive == 0 || conn.requests >= up.keepalive_requests {
            return;
        }
        let list = self.idle.entry((up.fingerprint, ep)).or_default();
        if list.len() >= up.keepalive {
            list.pop_front();
        }
        list.push_back(Idle {
            stream: conn.stream,
            since: Instant::now(),
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
