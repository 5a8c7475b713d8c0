//! Limits that hold across replicas: request limits and client token budgets with
//! `scope = "cluster"` are kept in Redis (`[cluster]`), evaluated by one Lua script
//! ([`limits::SCRIPT`]) on Redis's clock, one round trip per admitted request.
//!
//! - [`resp`]: the sans-I/O RESP2 codec;
//! - [`conn`]: each worker's own pipelined connection on its monoio runtime, with
//!   timeouts, reconnect backoff and a circuit breaker;
//! - [`limits`]: the script, the hashed and hash-tagged keys, the per-worker refusal cache,
//!   token reservations and their settlement.
//!
//! The per-pod limiter stays the fallback: while the store is unavailable a cluster limit
//! runs locally at its rate and burst divided by `[cluster] replicas`
//! (`on_unavailable = "local"`), or refuses with 503 (`"deny"`).

pub mod conn;
pub mod limits;
pub mod resp;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use conn::{Store, StoreError};

/// Upper bounds of the call-latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// One worker's cluster-store counters: written by its worker only, read at scrape.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while the worker's connection is up.
    pub up: AtomicU8,
    /// 1 while the worker's breaker is open (or half-open, until a success).
    pub breaker_open: AtomicU8,
    /// Times the breaker opened.
    pub breaker_opens: AtomicU64,
    /// Calls answered.
    pub calls_ok: AtomicU64,
    /// Calls that failed with an I/O or protocol error.
    pub calls_error: AtomicU64,
    /// Calls not answered within `timeout_ms`.
    pub calls_timeout: AtomicU64,
    /// Calls not tried: no connection up.
    pub calls_unavailable: AtomicU64,
    /// Calls not tried: breaker open.
    pub calls_breaker_open: AtomicU64,
    /// Answered calls by latency bucket ([`LATENCY_BUCKETS`], not cumulative).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Sum of answered calls' latency, µs.
    pub latency_sum_us: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed (connect or handshake).
    pub connect_failures: AtomicU64,
    /// Requests decided by the local fallback limiter.
    pub fallback_local: AtomicU64,
    /// Requests refused because the store was unavailable (`on_unavailable = "deny"`).
    pub fallback_deny: AtomicU64,
    /// Requests refused from the worker's refusal cache, without a round trip.
    pub local_refusals: AtomicU64,
    /// Requests refused by the store.
    pub refusals: AtomicU64,
    /// EVALSHA answered NOSCRIPT (the script was sent again with EVAL).
    pub noscript: AtomicU64,
    /// Redis Cluster `MOVED` redirections followed.
    pub redirects_moved: AtomicU64,
    /// Redis Cluster `ASK` redirections followed.
    pub redirects_ask: AtomicU64,
    /// Token reservations settled in the store.
    pub settles_ok: AtomicU64,
    /// Token settlements that did not reach the store (the reservation stays charged).
    pub settles_failed: AtomicU64,
}

impl ClusterMetrics {
    /// Counts an answered call and its latency.
    pub fn note_call_ok(&self, took: Duration) {
        self.calls_ok.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Appends the `ringgate_cluster_*` families (only when `[cluster]` is configured).
pub fn render(out: &mut String, workers: &[&ClusterMetrics]) {
    let sum = |f: &dyn Fn(&ClusterMetrics) -> u64| -> u64 { workers.iter().map(|m| f(m)).sum() };
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let fam = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
    };
    let all_up = !workers.is_empty() && workers.iter().all(|m| m.up.load(Ordering::Relaxed) == 1);
    fam(
        out,
        "ringgate_cluster_store_up",
        "gauge",
        "1 when every worker is connected to the cluster store",
    );
    let _ = writeln!(out, "ringgate_cluster_store_up {}", u8::from(all_up));
    fam(
        out,
        "ringgate_cluster_store_connections",
        "gauge",
        "Workers connected to the cluster store",
    );
    let conns = sum(&|m| u64::from(m.up.load(Ordering::Relaxed)));
    let _ = writeln!(out, "ringgate_cluster_store_connections {conns}");
    fam(
        out,
        "ringgate_cluster_breakers_open",
        "gauge",
        "Workers whose cluster-store circuit breaker is open",
    );
    let open = sum(&|m| u64::from(m.breaker_open.load(Ordering::Relaxed)));
    let _ = writeln!(out, "ringgate_cluster_breakers_open {open}");
    fam(
        out,
        "ringgate_cluster_breaker_opens_total",
        "counter",
        "Times a worker's cluster-store circuit breaker opened",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_breaker_opens_total {}",
        sum(&|m| ld(&m.breaker_opens))
    );
    fam(
        out,
        "ringgate_cluster_calls_total",
        "counter",
        "Calls to the cluster store by result",
    );
    for (label, v) in [
        ("ok", sum(&|m| ld(&m.calls_ok))),
        ("error", sum(&|m| ld(&m.calls_error))),
        ("timeout", sum(&|m| ld(&m.calls_timeout))),
        ("not_connected", sum(&|m| ld(&m.calls_unavailable))),
        ("breaker_open", sum(&|m| ld(&m.calls_breaker_open))),
    ] {
        let _ = writeln!(
            out,
            "ringgate_cluster_calls_total{{result=\"{label}\"}} {v}"
        );
    }
    fam(
        out,
        "ringgate_cluster_call_duration_seconds",
        "histogram",
        "Latency of answered cluster-store calls",
    );
    let mut cum = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cum += sum(&|m| ld(&m.latency_buckets[i]));
        let _ = writeln!(
            out,
            "ringgate_cluster_call_duration_seconds_bucket{{le=\"{le}\"}} {cum}"
        );
    }
    let count = sum(&|m| ld(&m.calls_ok));
    let _ = writeln!(
        out,
        "ringgate_cluster_call_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_call_duration_seconds_sum {}",
        sum(&|m| ld(&m.latency_sum_us)) as f64 / 1e6
    );
    let _ = writeln!(out, "ringgate_cluster_call_duration_seconds_count {count}");
    fam(
        out,
        "ringgate_cluster_connects_total",
        "counter",
        "Connection attempts to the cluster store by result",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_connects_total{{result=\"ok\"}} {}",
        sum(&|m| ld(&m.connects))
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_connects_total{{result=\"failed\"}} {}",
        sum(&|m| ld(&m.connect_failures))
    );
    fam(
        out,
        "ringgate_cluster_fallbacks_total",
        "counter",
        "Requests decided without the cluster store, by on_unavailable mode",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_fallbacks_total{{mode=\"local\"}} {}",
        sum(&|m| ld(&m.fallback_local))
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_fallbacks_total{{mode=\"deny\"}} {}",
        sum(&|m| ld(&m.fallback_deny))
    );
    fam(
        out,
        "ringgate_cluster_refusals_total",
        "counter",
        "Requests refused by cluster limits, by where the refusal was decided",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_refusals_total{{source=\"store\"}} {}",
        sum(&|m| ld(&m.refusals))
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_refusals_total{{source=\"local_cache\"}} {}",
        sum(&|m| ld(&m.local_refusals))
    );
    fam(
        out,
        "ringgate_cluster_noscript_total",
        "counter",
        "EVALSHA calls answered NOSCRIPT and re-sent with EVAL",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_noscript_total {}",
        sum(&|m| ld(&m.noscript))
    );
    fam(
        out,
        "ringgate_cluster_redirects_total",
        "counter",
        "Redis Cluster redirections followed, by kind",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_redirects_total{{kind=\"moved\"}} {}",
        sum(&|m| ld(&m.redirects_moved))
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_redirects_total{{kind=\"ask\"}} {}",
        sum(&|m| ld(&m.redirects_ask))
    );
    fam(
        out,
        "ringgate_cluster_token_settlements_total",
        "counter",
        "Token reservations settled with the real usage, by result",
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_token_settlements_total{{result=\"ok\"}} {}",
        sum(&|m| ld(&m.settles_ok))
    );
    let _ = writeln!(
        out,
        "ringgate_cluster_token_settlements_total{{result=\"failed\"}} {}",
        sum(&|m| ld(&m.settles_failed))
    );
}

/// Shared so the metrics struct can live in `WorkerMetrics` and the store alike.
pub type SharedMetrics = Arc<ClusterMetrics>;
