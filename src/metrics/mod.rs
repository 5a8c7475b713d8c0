//! Metrics: per-worker recording with no cross-core contention, merged when scraped.
//!
//! # Design
//!
//! Requests run on N single-threaded workers; recording must take no lock shared across
//! cores and allocate nothing per request in the steady state. Two kinds of state exist:
//!
//! - [`WorkerMetrics`] (one per worker, `Arc`-shared with the admin thread, `Send + Sync`):
//!   process-wide counters as relaxed atomics on the worker's own cache lines (connections,
//!   status classes, rejected heads, the I/O driver), plus `published`, a `Mutex<Stats>` slot
//!   holding that worker's cumulative route/upstream/limit stats.
//! - [`LocalStats`] (one per worker, owned by the worker thread, `!Sync`): a `RefCell<Stats>`
//!   *delta* with per-route request counts by method and status, bytes, retries by reason,
//!   and per-route latency as Prometheus bucket counters plus hdrhistograms (microseconds,
//!   3 significant digits) for total request time, upstream connect, upstream header,
//!   upstream response and stream time to first byte; per-upstream connects, reuses,
//!   responses and pool gauges; rate-limit rejections by limit. The request path
//!   ([`LocalStats::observe`] and friends) touches only this thread-local delta.
//!
//! Once a second the worker's sweeper calls [`LocalStats::publish`], which locks that
//! worker's own slot, adds the delta in and zeroes the delta (keeping its keys and histogram
//! allocations). On scrape the admin thread locks each slot in turn and merges it into an
//! aggregate ([`Registry::aggregate`]), then renders Prometheus text ([`render`]) or the
//! `/stats` JSON ([`stats_json`]). So the only lock is taken once a second by its owner and
//! at scrape by the admin thread, and the published numbers lag by at most a second.
//!
//! Route names are kept until the process restarts, so counters stay monotonic across
//! reloads; at most [`stats::MAX_ROUTES`] distinct names are kept, later ones are counted
//! under `route="(other)"`; requests that matched no route are `route="(none)"`. Percentiles
//! are over the life of the process. Each `(route, timing)` hdrhistogram is created on first
//! use and grows with the largest value seen (~16 KiB, up to ~190 KiB for an hour).
//!
//! [`access_log`] writes the one-line-per-request access log through `tracing`.

mod access;
mod render;
pub mod stats;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use access::access_log;
pub use render::{render, stats_json};
pub use stats::{LocalStats, Observation, Stats, Timing};

use stats::Merge;

/// Which I/O driver a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Driver {
    /// Not started yet.
    Unknown = 0,
    /// io_uring.
    IoUring = 1,
    /// epoll (monoio's legacy driver).
    Epoll = 2,
}

/// One worker's shared counters and published stats (see the module header).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    requests_by_class: [AtomicU64; 6],
    rejected_heads: AtomicU64,
    /// Open client connections.
    pub active_connections: AtomicI64,
    /// Requests being served (head read, response not finished), streams included: the
    /// signal to scale on, since CPU says little about long streams.
    pub requests_in_flight: AtomicI64,
    /// Client connections refused at `max_connections`.
    pub refused_connections: AtomicU64,
    upstream_connects: AtomicU64,
    upstream_reuses: AtomicU64,
    upstream_responses: AtomicU64,
    /// Idle pooled upstream connections (sampled by the worker's sweeper).
    pub pool_idle: AtomicI64,
    driver: AtomicU8,
    retries: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshake_errors: AtomicU64,
    tls_handshake_timeouts: AtomicU64,
    panics: AtomicU64,
    /// When the worker's event loop last ran its heartbeat task
    /// ([`crate::clock::monotonic_nanos`]); 0 before its first.
    heartbeat: AtomicU64,
    /// This worker's cluster-store counters (`ringgate_cluster_*`).
    pub cluster: Arc<crate::cluster::ClusterMetrics>,
    published: Mutex<Stats>,
}

/// A worker whose heartbeat is older than this is wedged: its event loop has not run a
/// task for that long (a request stuck in a loop), so its clients are not being served.
pub const WEDGED_AFTER: Duration = Duration::from_secs(10);

fn add(a: &AtomicU64, v: u64) {
    a.fetch_add(v, Ordering::Relaxed);
}

impl WorkerMetrics {
    /// Counts a finished request by status class (`ringgate_responses_total{class}`, every
    /// response including rejected heads). Per-route data comes from [`LocalStats::observe`].
    pub fn note_request(&self, status: u16, _took: Duration) {
        let class = (status / 100).min(5) as usize;
        add(&self.requests_by_class[class], 1);
    }

    /// Counts a request head rejected before routing.
    pub fn note_rejected_head(&self) {
        add(&self.rejected_heads, 1);
        add(&self.requests_by_class[4], 1);
    }

    /// Counts a new upstream connection not attributed to an upstream (rendered as
    /// `upstream="(unattributed)"`); superseded by [`LocalStats::note_upstream_connection`].
    pub fn note_connect(&self) {
        add(&self.upstream_connects, 1);
    }

    /// Counts a reuse not attributed to an upstream; superseded by
    /// [`LocalStats::note_upstream_connection`].
    pub fn note_reuse(&self) {
        add(&self.upstream_reuses, 1);
    }

    /// Counts an upstream response head (`ringgate_upstream_responses_total`). The timings
    /// themselves are recorded per route by [`LocalStats::observe`].
    pub fn note_upstream_timing(&self, _connect: Duration, _header: Duration) {
        add(&self.upstream_responses, 1);
    }

    /// Counts a retry not attributed to a route (rendered as `route="(unattributed)"`);
    /// superseded by [`LocalStats::note_retry`].
    pub fn note_retry(&self, _route: &str, _reason: &str) {
        add(&self.retries, 1);
    }

    /// Counts a completed TLS handshake on the client listener.
    pub fn note_tls_handshake(&self) {
        add(&self.tls_handshakes, 1);
    }

    /// Counts a failed client TLS handshake (`timeout`: it did not finish in time).
    pub fn note_tls_handshake_failure(&self, timeout: bool) {
        if timeout {
            add(&self.tls_handshake_timeouts, 1);
        } else {
            add(&self.tls_handshake_errors, 1);
        }
    }

    /// (completed handshakes, failed ones, timed-out ones) on the TLS listener.
    pub fn tls_handshakes(&self) -> (u64, u64, u64) {
        (
            self.tls_handshakes.load(Ordering::Relaxed),
            self.tls_handshake_errors.load(Ordering::Relaxed),
            self.tls_handshake_timeouts.load(Ordering::Relaxed),
        )
    }

    /// Counts a panic: caught while serving a connection, or one that ended the worker thread.
    pub fn note_panic(&self) {
        add(&self.panics, 1);
    }

    /// Records that the worker's event loop is turning (its heartbeat task ran).
    pub fn beat(&self) {
        self.heartbeat
            .store(crate::clock::monotonic_nanos(), Ordering::Relaxed);
    }

    /// Time since the last heartbeat at `now_nanos`; None before the first.
    pub fn heartbeat_age(&self, now_nanos: u64) -> Option<Duration> {
        match self.heartbeat.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_nanos(now_nanos.saturating_sub(t))),
        }
    }

    /// Panics counted by [`WorkerMetrics::note_panic`].
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Records the driver this worker runs.
    pub fn set_driver(&self, d: Driver) {
        self.driver.store(d as u8, Ordering::Relaxed);
    }

    /// The driver this worker runs.
    pub fn driver(&self) -> Driver {
        match self.driver.load(Ordering::Relaxed) {
            1 => Driver::IoUring,
            2 => Driver::Epoll,
            _ => Driver::Unknown,
        }
    }

    /// This worker's published stats, locked (by its owner once a second, by the admin
    /// thread at scrape).
    pub fn published(&self) -> MutexGuard<'_, Stats> {
        stats::lock(&self.published)
    }
}

/// All workers' counters.
#[derive(Debug, Default)]
pub struct Registry {
    /// One entry per worker.
    pub workers: Vec<Arc<WorkerMetrics>>,
}

impl Registry {
    /// Merges every worker's published [`Stats`] (scrape time, admin thread): each worker's
    /// mutex is held only while its snapshot is added in.
    pub fn aggregate(&self) -> Stats {
        let mut total = Stats::default();
        for w in &self.workers {
            total.merge_from(&w.published(), Merge::Aggregate);
        }
        total
    }

    /// Workers whose heartbeat is older than [`WEDGED_AFTER`].
    pub fn wedged_workers(&self) -> usize {
        self.wedged_workers_at(crate::clock::monotonic_nanos())
    }

    /// Workers whose heartbeat is older than [`WEDGED_AFTER`] at `now` (monotonic ns).
    pub fn wedged_workers_at(&self, now: u64) -> usize {
        self.workers
            .iter()
            .filter(|w| w.heartbeat_age(now).is_some_and(|a| a > WEDGED_AFTER))
            .count()
    }

    /// Whether every worker has started its runtime (and so its listener).
    pub fn workers_started(&self) -> bool {
        self.workers.iter().all(|w| w.driver() != Driver::Unknown)
    }
}

#[cfg(test)]
mod tests;
