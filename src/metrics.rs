//! Counters of each worker, written only by that worker (relaxed atomics on its own cache
//! lines, so no cross-core contention on the request path) and summed when `/metrics` is
//! scraped, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::reload::ConfigStore;

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

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    requests_by_class: [AtomicU64; 6],
    rejected_heads: AtomicU64,
    request_seconds_micros: AtomicU64,
    /// Open client connections.
    pub active_connections: AtomicI64,
    /// Client connections refused at `max_connections`.
    pub refused_connections: AtomicU64,
    upstream_connects: AtomicU64,
    upstream_reuses: AtomicU64,
    upstream_connect_micros: AtomicU64,
    upstream_header_micros: AtomicU64,
    upstream_responses: AtomicU64,
    /// Idle pooled upstream connections (sampled by the worker's sweeper).
    pub pool_idle: AtomicI64,
    driver: AtomicU8,
    retries: AtomicU64,
}

fn add(a: &AtomicU64, v: u64) {
    a.fetch_add(v, Ordering::Relaxed);
}

impl WorkerMetrics {
    /// Counts a finished request.
    pub fn note_request(&self, status: u16, took: Duration) {
        let class = (status / 100).min(5) as usize;
        add(&self.requests_by_class[class], 1);
        add(&self.request_seconds_micros, took.as_micros() as u64);
    }

    /// Counts a request head rejected before routing.
    pub fn note_rejected_head(&self) {
        add(&self.rejected_heads, 1);
        add(&self.requests_by_class[4], 1);
    }

    /// Counts a new upstream connection.
    pub fn note_connect(&self) {
        add(&self.upstream_connects, 1);
    }

    /// Counts a request sent on a pooled connection.
    pub fn note_reuse(&self) {
        add(&self.upstream_reuses, 1);
    }

    /// Records upstream connect time (zero when pooled) and time to response head.
    pub fn note_upstream_timing(&self, connect: Duration, header: Duration) {
        add(&self.upstream_connect_micros, connect.as_micros() as u64);
        add(&self.upstream_header_micros, header.as_micros() as u64);
        add(&self.upstream_responses, 1);
    }

    /// Counts a retry on `route` for `reason`.
    pub fn note_retry(&self, _route: &str, _reason: &str) {
        add(&self.retries, 1);
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
}

/// All workers' counters.
#[derive(Debug, Default)]
pub struct Registry {
    /// One entry per worker.
    pub workers: Vec<Arc<WorkerMetrics>>,
}

fn sum(ws: &[Arc<WorkerMetrics>], f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    ws.iter().map(|w| f(w)).sum()
}

/// Renders `/metrics`.
pub fn render(reg: &Registry, store: &ConfigStore) -> String {
    let ws = &reg.workers;
    let mut o = String::with_capacity(4096);
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let _ = writeln!(
        o,
        "# HELP ringgate_build_info Build information.\n# TYPE ringgate_build_info gauge"
    );
    let _ = writeln!(
        o,
        "ringgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    let _ = writeln!(o, "# HELP ringgate_requests_total Requests answered, by status class.\n# TYPE ringgate_requests_total counter");
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let v = sum(ws, |w| ld(&w.requests_by_class[i + 1]));
        let _ = writeln!(o, "ringgate_requests_total{{code=\"{class}\"}} {v}");
    }
    let _ = writeln!(o, "# HELP ringgate_request_duration_seconds_total Time spent on requests.\n# TYPE ringgate_request_duration_seconds_total counter");
    let micros = sum(ws, |w| ld(&w.request_seconds_micros));
    let _ = writeln!(
        o,
        "ringgate_request_duration_seconds_total {}",
        micros as f64 / 1e6
    );
    let _ = writeln!(o, "# HELP ringgate_rejected_request_heads_total Malformed or oversize request heads.\n# TYPE ringgate_rejected_request_heads_total counter");
    let _ = writeln!(
        o,
        "ringgate_rejected_request_heads_total {}",
        sum(ws, |w| ld(&w.rejected_heads))
    );
    let _ = writeln!(o, "# HELP ringgate_active_connections Open client connections.\n# TYPE ringgate_active_connections gauge");
    let active: i64 = ws
        .iter()
        .map(|w| w.active_connections.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(o, "ringgate_active_connections {active}");
    let _ = writeln!(o, "# HELP ringgate_refused_connections_total Connections closed at max_connections.\n# TYPE ringgate_refused_connections_total counter");
    let _ = writeln!(
        o,
        "ringgate_refused_connections_total {}",
        sum(ws, |w| ld(&w.refused_connections))
    );
    let _ = writeln!(o, "# HELP ringgate_upstream_connects_total New upstream connections.\n# TYPE ringgate_upstream_connects_total counter");
    let _ = writeln!(
        o,
        "ringgate_upstream_connects_total {}",
        sum(ws, |w| ld(&w.upstream_connects))
    );
    let _ = writeln!(o, "# HELP ringgate_upstream_reuses_total Requests sent on pooled upstream connections.\n# TYPE ringgate_upstream_reuses_total counter");
    let _ = writeln!(
        o,
        "ringgate_upstream_reuses_total {}",
        sum(ws, |w| ld(&w.upstream_reuses))
    );
    let _ = writeln!(o, "# HELP ringgate_upstream_pool_idle Idle pooled upstream connections.\n# TYPE ringgate_upstream_pool_idle gauge");
    let idle: i64 = ws.iter().map(|w| w.pool_idle.load(Ordering::Relaxed)).sum();
    let _ = writeln!(o, "ringgate_upstream_pool_idle {idle}");
    let _ = writeln!(o, "# HELP ringgate_upstream_header_seconds_total Time from first try to upstream response head.\n# TYPE ringgate_upstream_header_seconds_total counter");
    let _ = writeln!(
        o,
        "ringgate_upstream_header_seconds_total {}",
        sum(ws, |w| ld(&w.upstream_header_micros)) as f64 / 1e6
    );
    let _ = writeln!(o, "# HELP ringgate_upstream_connect_seconds_total Time spent connecting upstream.\n# TYPE ringgate_upstream_connect_seconds_total counter");
    let _ = writeln!(
        o,
        "ringgate_upstream_connect_seconds_total {}",
        sum(ws, |w| ld(&w.upstream_connect_micros)) as f64 / 1e6
    );
    let _ = writeln!(o, "# HELP ringgate_upstream_responses_total Upstream response heads received.\n# TYPE ringgate_upstream_responses_total counter");
    let _ = writeln!(
        o,
        "ringgate_upstream_responses_total {}",
        sum(ws, |w| ld(&w.upstream_responses))
    );

    let _ = writeln!(o, "# HELP ringgate_retries_total Retries of upstream tries.\n# TYPE ringgate_retries_total counter");
    let _ = writeln!(o, "ringgate_retries_total {}", sum(ws, |w| ld(&w.retries)));
    let _ = writeln!(o, "# HELP ringgate_io_driver_info I/O driver of the workers.\n# TYPE ringgate_io_driver_info gauge");
    let uring = ws.iter().filter(|w| w.driver() == Driver::IoUring).count();
    let epoll = ws.iter().filter(|w| w.driver() == Driver::Epoll).count();
    let _ = writeln!(
        o,
        "ringgate_io_driver_info{{driver=\"io_uring\"}} {}",
        u8::from(uring > 0)
    );
    let _ = writeln!(
        o,
        "ringgate_io_driver_info{{driver=\"epoll\"}} {}",
        u8::from(epoll > 0)
    );

    let cur = store.current();
    let _ = writeln!(o, "# HELP ringgate_config_generation Applied config generation (+1 per applied reload).\n# TYPE ringgate_config_generation gauge");
    let _ = writeln!(o, "ringgate_config_generation {}", cur.generation);
    let _ = writeln!(o, "# HELP ringgate_config_last_reload_successful Whether the last reload attempt succeeded.\n# TYPE ringgate_config_last_reload_successful gauge");
    let _ = writeln!(
        o,
        "ringgate_config_last_reload_successful {}",
        u8::from(store.last_successful.load(Ordering::Relaxed))
    );
    let _ = writeln!(o, "# HELP ringgate_config_reloads_total Reload attempts by result.\n# TYPE ringgate_config_reloads_total counter");
    let _ = writeln!(
        o,
        "ringgate_config_reloads_total{{result=\"applied\"}} {}",
        store.applied.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "ringgate_config_reloads_total{{result=\"rejected\"}} {}",
        store.rejected.load(Ordering::Relaxed)
    );
    o
}
