//! The data model behind the route-, upstream- and limit-keyed metrics, and the worker-local
//! recorder [`LocalStats`].
//!
//! One [`Stats`] value is used three ways: as a worker's *delta* (owned by the worker thread
//! inside a `RefCell`, written per request, zeroed at every publish), as a worker's
//! *published* snapshot (cumulative, behind that worker's `Mutex`, written once a second by its
//! owner), and as the *aggregate* the admin thread builds on scrape by merging every worker's
//! snapshot. Keys (route, upstream, limit and retry-reason names, as `Arc<str>`) are kept when
//! a delta is zeroed, so the request path allocates only the first time it meets a name or a
//! histogram outgrows its range.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::WorkerMetrics;

/// Most distinct route names kept; later ones are counted under [`OTHER`].
pub const MAX_ROUTES: usize = 1000;
/// Most distinct upstream names kept; later ones are counted under [`OTHER`].
pub const MAX_UPSTREAMS: usize = 1000;
/// Most distinct rate-limit names kept; later ones are counted under [`OTHER`].
pub const MAX_LIMITS: usize = 1000;
/// Most distinct retry reasons kept per route; later ones are counted under [`OTHER`].
pub const MAX_RETRY_REASONS: usize = 32;
/// The label value for names past a cap. Parentheses cannot occur in configured names.
pub const OTHER: &str = "(other)";
/// The route label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";
/// Largest latency recorded in the hdrhistograms (one hour, in microseconds); longer values
/// are clamped (the bucket counters and sums still see the real value).
pub const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// Upper bounds (`le`) of the Prometheus histogram buckets, in seconds. LLM requests range
/// from milliseconds (embeddings, cached answers) to minutes (long streams).
pub const BUCKETS_SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
const BUCKETS_MICROS: [u64; 17] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];
const NB: usize = BUCKETS_MICROS.len();

/// The timings kept per route, in the order of [`Timing::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Whole request, first byte of the head to the last byte of the response (nginx `rt`).
    Request = 0,
    /// Upstream connect, zero on a pooled connection (nginx `uct`).
    Connect = 1,
    /// Start of the upstream try to its response head (nginx `uht`).
    Header = 2,
    /// Start of the upstream try to the end of its response body (nginx `urt`).
    Response = 3,
    /// Request start to the first response byte written to a streaming client.
    Ttfb = 4,
}

impl Timing {
    /// Every timing, in storage order.
    pub const ALL: [Timing; 5] = [
        Timing::Request,
        Timing::Connect,
        Timing::Header,
        Timing::Response,
        Timing::Ttfb,
    ];

    /// The Prometheus histogram family name.
    pub fn family(self) -> &'static str {
        match self {
            Timing::Request => "ringgate_request_duration_seconds",
            Timing::Connect => "ringgate_upstream_connect_seconds",
            Timing::Header => "ringgate_upstream_header_seconds",
            Timing::Response => "ringgate_upstream_response_seconds",
            Timing::Ttfb => "ringgate_time_to_first_byte_seconds",
        }
    }

    /// The family name of the per-pod hdrhistogram quantiles (a summary).
    pub fn quantile_family(self) -> &'static str {
        match self {
            Timing::Request => "ringgate_request_duration_quantile_seconds",
            Timing::Connect => "ringgate_upstream_connect_quantile_seconds",
            Timing::Header => "ringgate_upstream_header_quantile_seconds",
            Timing::Response => "ringgate_upstream_response_quantile_seconds",
            Timing::Ttfb => "ringgate_time_to_first_byte_quantile_seconds",
        }
    }

    /// What it measures, for `# HELP` lines.
    pub fn help(self) -> &'static str {
        match self {
            Timing::Request => "Total request time, head received to response sent (nginx rt)",
            Timing::Connect => "Upstream connect time, 0 on a pooled connection (nginx uct)",
            Timing::Header => "Upstream try start to its response head (nginx uht)",
            Timing::Response => "Upstream try start to the end of its response (nginx urt)",
            Timing::Ttfb => "Request start to the first response byte of a stream",
        }
    }

    /// Short key used in `/stats`.
    pub fn key(self) -> &'static str {
        match self {
            Timing::Request => "request",
            Timing::Connect => "upstream_connect",
            Timing::Header => "upstream_header",
            Timing::Response => "upstream_response",
            Timing::Ttfb => "time_to_first_byte",
        }
    }
}

/// HTTP methods counted by name; anything else is `OTHER`.
pub const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "OTHER",
];

fn method_index(m: &str) -> u8 {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|k| *k == m)
        .unwrap_or(METHODS.len() - 1) as u8
}

/// One latency distribution: Prometheus bucket counters (exact) and an hdrhistogram
/// (microseconds, 3 significant digits, auto-resizing, created on first use) for quantiles.
#[derive(Default, Clone)]
pub struct TimingStats {
    /// Non-cumulative counts per bucket of [`BUCKETS_SECONDS`]; values past the last bound
    /// are only in `count`.
    pub buckets: [u64; NB],
    /// Values recorded.
    pub count: u64,
    /// Sum of the values, microseconds.
    pub sum_micros: u64,
    /// The distribution, for quantiles.
    pub hdr: Option<Histogram<u64>>,
}

impl TimingStats {
    /// Records one value.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_MICROS.partition_point(|&b| b < micros);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.count += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
        if self.hdr.is_none() {
            self.hdr = Histogram::new(3).ok();
        }
        if let Some(h) = &mut self.hdr {
            // Errors (none expected with auto-resize) only lose one sample.
            let _ = h.record(micros.min(MAX_TRACKED_MICROS));
        }
    }

    fn merge(&mut self, o: &TimingStats) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.count += o.count;
        self.sum_micros = self.sum_micros.saturating_add(o.sum_micros);
        if let Some(oh) = o.hdr.as_ref().filter(|h| !h.is_empty()) {
            match &mut self.hdr {
                Some(h) => {
                    let _ = h.add(oh);
                }
                None => self.hdr = Some(oh.clone()),
            }
        }
    }

    fn clear(&mut self) {
        self.buckets = [0; NB];
        self.count = 0;
        self.sum_micros = 0;
        if let Some(h) = &mut self.hdr {
            h.reset();
        }
    }

    /// The value at quantile `q` (0..=1), in seconds; `None` when nothing was recorded.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        let h = self.hdr.as_ref().filter(|h| !h.is_empty())?;
        Some(h.value_at_quantile(q) as f64 / 1e6)
    }

    /// Cumulative bucket counts, one per bound of [`BUCKETS_SECONDS`].
    pub fn cumulative(&self) -> [u64; NB] {
        let mut out = [0; NB];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(self.buckets.iter()) {
            acc += b;
            *o = acc;
        }
        out
    }
}

/// Requests counted by method and status.
#[derive(Debug, Clone, Copy)]
pub struct RequestCount {
    /// Index into [`METHODS`].
    pub method: u8,
    /// HTTP status.
    pub status: u16,
    /// Requests.
    pub n: u64,
}

/// Everything kept per route.
#[derive(Default, Clone)]
pub struct RouteStats {
    /// Requests by method and status (a short list, searched linearly).
    pub requests: Vec<RequestCount>,
    /// Request body bytes read from clients.
    pub bytes_in: u64,
    /// Response bytes written to clients.
    pub bytes_out: u64,
    /// The latency distributions, indexed by [`Timing`].
    pub timings: [TimingStats; 5],
    /// Retries by reason.
    pub retries: BTreeMap<Arc<str>, u64>,
    /// Responses cut short, by reason.
    pub truncated: BTreeMap<Arc<str>, u64>,
}

impl RouteStats {
    /// Requests on this route.
    pub fn total(&self) -> u64 {
        self.requests.iter().map(|r| r.n).sum()
    }

    fn count(&mut self, method: u8, status: u16, n: u64) {
        match self
            .requests
            .iter_mut()
            .find(|r| r.method == method && r.status == status)
        {
            Some(r) => r.n += n,
            None => self.requests.push(RequestCount { method, status, n }),
        }
    }

    fn merge(&mut self, o: &RouteStats) {
        for r in &o.requests {
            if r.n > 0 {
                self.count(r.method, r.status, r.n);
            }
        }
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        for (a, b) in self.timings.iter_mut().zip(o.timings.iter()) {
            a.merge(b);
        }
        for (k, v) in &o.retries {
            if let Some(c) = slot_arc(&mut self.retries, k) {
                *c += v;
            }
        }
        for (k, v) in &o.truncated {
            if let Some(c) = slot_arc(&mut self.truncated, k) {
                *c += v;
            }
        }
    }

    fn clear(&mut self) {
        for r in &mut self.requests {
            r.n = 0;
        }
        self.bytes_in = 0;
        self.bytes_out = 0;
        for t in &mut self.timings {
            t.clear();
        }
        for v in self.retries.values_mut() {
            *v = 0;
        }
        for v in self.truncated.values_mut() {
            *v = 0;
        }
    }
}

/// Everything kept per upstream.
#[derive(Debug, Default, Clone)]
pub struct UpstreamStats {
    /// New connections opened.
    pub connects: u64,
    /// Requests sent on a pooled connection.
    pub reuses: u64,
    /// Requests answered through this upstream, by status class (index `status / 100`, 0
    /// for out-of-range statuses).
    pub responses: [u64; 6],
    /// Idle pooled connections (gauge).
    pub idle: u64,
    /// Connections in use (gauge).
    pub busy: u64,
    /// Endpoints ejected by passive health (gauge; summed over workers, which eject on
    /// their own).
    pub ejected: u64,
    /// Whether `idle`/`busy`/`ejected` were set since the last publish.
    gauge_set: bool,
}

impl UpstreamStats {
    /// Share of upstream requests sent on a pooled connection, `None` before any.
    pub fn reuse_ratio(&self) -> Option<f64> {
        let all = self.connects + self.reuses;
        (all > 0).then(|| self.reuses as f64 / all as f64)
    }
}

/// How [`Stats::merge_from`] treats gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A worker's delta into its published snapshot: gauges are replaced (by 0 when not
    /// sampled since the last publish, e.g. an upstream a reload removed).
    Publish,
    /// Worker snapshots into the scrape aggregate: gauges are summed.
    Aggregate,
}

/// Most client names tracked per worker; more share the [`OTHER`] entry.
pub const MAX_CLIENTS: usize = 10_000;

/// Tokens and dollars of one model (or one client).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UsageStats {
    /// Requests that reached an upstream for this model (or client).
    pub requests: u64,
    /// Prompt tokens (cached ones included).
    pub prompt: u64,
    /// The part of `prompt` the provider served from its prompt cache.
    pub cached_prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// US dollars at the configured prices.
    pub cost_usd: f64,
    /// Requests that moved on to a fallback model after this one failed.
    pub fallbacks: u64,
    /// Of `prompt`, tokens estimated (a stream that ended without its usage).
    pub estimated_prompt: u64,
    /// Of `completion`, tokens estimated.
    pub estimated_completion: u64,
}

impl UsageStats {
    // Token counts come from providers' responses, which may say any u64: the sums
    // saturate (a wrapped counter would read as a reset; overflow checks would panic).
    fn merge(&mut self, o: &UsageStats) {
        self.requests += o.requests;
        self.prompt = self.prompt.saturating_add(o.prompt);
        self.cached_prompt = self.cached_prompt.saturating_add(o.cached_prompt);
        self.completion = self.completion.saturating_add(o.completion);
        self.cost_usd += o.cost_usd;
        self.fallbacks += o.fallbacks;
        self.estimated_prompt = self.estimated_prompt.saturating_add(o.estimated_prompt);
        self.estimated_completion = self
            .estimated_completion
            .saturating_add(o.estimated_completion);
    }

    fn add(&mut self, u: &crate::ai::usage::Usage, cost: f64) {
        self.prompt = self.prompt.saturating_add(u.prompt);
        self.cached_prompt = self
            .cached_prompt
            .saturating_add(u.cached_prompt.min(u.prompt));
        self.completion = self.completion.saturating_add(u.completion);
        self.cost_usd += cost;
    }
}

/// Cache lookups of one route: hits, misses, bypasses (`Cache-Control: no-cache`).
pub type CacheCounts = [u64; 3];

/// Route-, upstream- and limit-keyed stats (see the module header for its three uses).
#[derive(Default, Clone)]
pub struct Stats {
    /// By route name ([`NO_ROUTE`] when none matched, [`OTHER`] past [`MAX_ROUTES`]).
    pub routes: BTreeMap<Arc<str>, RouteStats>,
    /// By upstream name.
    pub upstreams: BTreeMap<Arc<str>, UpstreamStats>,
    /// Rate-limit rejections by limit name.
    pub limits: BTreeMap<Arc<str>, u64>,
    /// Whether pool gauges were ever sampled per upstream.
    pub pool_sampled: bool,
    /// Tokens and cost by model (`[models]` name).
    pub models: BTreeMap<Arc<str>, UsageStats>,
    /// Tokens and cost by client (`[auth]` name).
    pub clients: BTreeMap<Arc<str>, UsageStats>,
    /// Response cache lookups by route.
    pub cache: BTreeMap<Arc<str>, CacheCounts>,
    /// Requests refused by `[auth]`: key missing, key unknown.
    pub auth_failures: [u64; 2],
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("upstreams", &self.upstreams)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The entry for `name`, created (allocating its key) on first use; past `cap` entries new
/// names share the [`OTHER`] entry. Two map lookups, no allocation once the name is known.
fn slot<'a, V: Default>(
    map: &'a mut BTreeMap<Arc<str>, V>,
    name: &str,
    cap: usize,
) -> Option<&'a mut V> {
    if map.contains_key(name) {
        return map.get_mut(name);
    }
    let key = if map.len() < cap { name } else { OTHER };
    if !map.contains_key(key) {
        map.insert(Arc::from(key), V::default());
    }
    map.get_mut(key)
}

/// Like [`slot`] without a cap, reusing the caller's `Arc` as the key.
fn slot_arc<'a, V: Default>(
    map: &'a mut BTreeMap<Arc<str>, V>,
    key: &Arc<str>,
) -> Option<&'a mut V> {
    if !map.contains_key(&**key) {
        map.insert(key.clone(), V::default());
    }
    map.get_mut(&**key)
}

impl Stats {
    /// Adds `o` into `self` (see [`Merge`] for gauges).
    pub fn merge_from(&mut self, o: &Stats, mode: Merge) {
        for (k, r) in &o.routes {
            if let Some(d) = slot_arc(&mut self.routes, k) {
                d.merge(r);
            }
        }
        for (k, u) in &o.upstreams {
            if let Some(d) = slot_arc(&mut self.upstreams, k) {
                d.connects += u.connects;
                d.reuses += u.reuses;
                for (a, b) in d.responses.iter_mut().zip(u.responses.iter()) {
                    *a += b;
                }
                match mode {
                    Merge::Publish => {
                        let (idle, busy, ejected) = if u.gauge_set {
                            (u.idle, u.busy, u.ejected)
                        } else {
                            (0, 0, 0)
                        };
                        d.idle = idle;
                        d.busy = busy;
                        d.ejected = ejected;
                    }
                    Merge::Aggregate => {
                        d.idle += u.idle;
                        d.busy += u.busy;
                        d.ejected += u.ejected;
                    }
                }
            }
        }
        for (k, v) in &o.limits {
            if let Some(d) = slot_arc(&mut self.limits, k) {
                *d += v;
            }
        }
        self.pool_sampled |= o.pool_sampled;
        for (dst, src) in [
            (&mut self.models, &o.models),
            (&mut self.clients, &o.clients),
        ] {
            for (k, v) in src {
                if let Some(d) = slot_arc(dst, k) {
                    d.merge(v);
                }
            }
        }
        for (k, v) in &o.cache {
            if let Some(d) = slot_arc(&mut self.cache, k) {
                for (a, b) in d.iter_mut().zip(v) {
                    *a += b;
                }
            }
        }
        for (a, b) in self.auth_failures.iter_mut().zip(o.auth_failures) {
            *a += b;
        }
    }

    /// Zeroes every count, keeping keys and histogram allocations.
    pub fn clear(&mut self) {
        for r in self.routes.values_mut() {
            r.clear();
        }
        for u in self.upstreams.values_mut() {
            u.connects = 0;
            u.reuses = 0;
            u.responses = [0; 6];
            u.gauge_set = false;
        }
        for v in self.limits.values_mut() {
            *v = 0;
        }
        for v in self.models.values_mut().chain(self.clients.values_mut()) {
            *v = UsageStats::default();
        }
        for v in self.cache.values_mut() {
            *v = [0; 3];
        }
        self.auth_failures = [0; 2];
    }

    /// Records one finished request.
    pub fn observe(&mut self, o: &Observation<'_>) {
        let name = o.route.unwrap_or(NO_ROUTE);
        if let Some(r) = slot(&mut self.routes, name, MAX_ROUTES) {
            r.count(method_index(o.method), o.status, 1);
            r.bytes_in += o.bytes_in;
            r.bytes_out += o.bytes_out;
            if let Some(reason) = o.truncated {
                if let Some(c) = slot(&mut r.truncated, reason, MAX_RETRY_REASONS) {
                    *c += 1;
                }
            }
            let [rt, uct, uht, urt, ttfb] = &mut r.timings;
            rt.record(o.total);
            for (t, v) in [
                (uct, o.connect),
                (uht, o.header),
                (urt, o.response),
                (ttfb, o.ttfb),
            ] {
                if let Some(v) = v {
                    t.record(v);
                }
            }
        }
        if let Some(up) = o.upstream {
            if let Some(u) = slot(&mut self.upstreams, up, MAX_UPSTREAMS) {
                let class = usize::from(o.status / 100);
                u.responses[if class < 6 { class } else { 0 }] += 1;
            }
        }
    }
}

/// One finished request, as the proxy reports it (to [`LocalStats::observe`] and
/// [`super::access_log`]).
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The matched route's name; `None` when no route matched.
    pub route: Option<&'a str>,
    /// The upstream's name, when one was chosen.
    pub upstream: Option<&'a str>,
    /// Request method.
    pub method: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response bytes (head and body) written to the client.
    pub bytes_out: u64,
    /// Whole request (nginx `rt`).
    pub total: Duration,
    /// Upstream connect time of the last try, zero when pooled (nginx `uct`).
    pub connect: Option<Duration>,
    /// Last try start to its response head (nginx `uht`).
    pub header: Option<Duration>,
    /// Last try start to the end of its response body (nginx `urt`).
    pub response: Option<Duration>,
    /// For streamed responses: request start to the first body byte sent to the client.
    pub ttfb: Option<Duration>,
    /// The `[models]` entry that answered, on model-routed routes.
    pub model: Option<&'a str>,
    /// The `[auth]` client's name (never its key).
    pub client: Option<&'a str>,
    /// The response cache's verdict (`HIT`, `MISS`, `BYPASS`).
    pub cache: Option<&'a str>,
    /// Why the response ended before its end (`upstream_closed`, `client_closed`, ...);
    /// None for a response that ended where its framing said.
    pub truncated: Option<&'static str>,
}

/// A worker's recorder: lives on the worker thread (it is `!Sync`), written per request
/// without any lock, and [`publish`](LocalStats::publish)ed once a second into the worker's
/// [`WorkerMetrics`] slot that the admin thread reads.
pub struct LocalStats {
    metrics: Arc<WorkerMetrics>,
    delta: RefCell<Stats>,
}

impl std::fmt::Debug for LocalStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStats").finish_non_exhaustive()
    }
}

impl LocalStats {
    /// A recorder publishing into `metrics` (the same `Arc` the [`super::Registry`] holds
    /// for this worker).
    pub fn new(metrics: Arc<WorkerMetrics>) -> LocalStats {
        LocalStats {
            metrics,
            delta: RefCell::new(Stats::default()),
        }
    }

    /// The worker's shared counters.
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    fn with(&self, f: impl FnOnce(&mut Stats)) {
        // Never re-entered (no method calls out while borrowed); a failed borrow would only
        // lose one sample, never panic.
        if let Ok(mut d) = self.delta.try_borrow_mut() {
            f(&mut d);
        }
    }

    /// Records one finished request (counts, bytes, the timings).
    pub fn observe(&self, o: &Observation<'_>) {
        self.with(|d| d.observe(o));
    }

    /// Counts a retry on `route` for `reason` (`error`, `timeout`, `http_502`, ...).
    pub fn note_retry(&self, route: &str, reason: &str) {
        self.with(|d| {
            if let Some(r) = slot(&mut d.routes, route, MAX_ROUTES) {
                if let Some(c) = slot(&mut r.retries, reason, MAX_RETRY_REASONS) {
                    *c += 1;
                }
            }
        });
    }

    /// Counts a request sent to `model` (and, when authenticated, by `client`).
    pub fn note_model_request(&self, model: &str, client: Option<&str>) {
        self.with(|d| {
            if let Some(m) = slot(&mut d.models, model, MAX_ROUTES) {
                m.requests += 1;
            }
            if let Some(c) = client.and_then(|c| slot(&mut d.clients, c, MAX_CLIENTS)) {
                c.requests += 1;
            }
        });
    }

    /// Counts a fallback away from `model` after it failed.
    pub fn note_fallback(&self, model: &str) {
        self.with(|d| {
            if let Some(m) = slot(&mut d.models, model, MAX_ROUTES) {
                m.fallbacks += 1;
            }
        });
    }

    /// Adds one response's token usage and cost to `model` and `client`.
    pub fn note_usage(
        &self,
        model: &str,
        client: Option<&str>,
        usage: &crate::ai::usage::Usage,
        cost: f64,
        estimated: bool,
    ) {
        self.with(|d| {
            if let Some(m) = slot(&mut d.models, model, MAX_ROUTES) {
                m.add(usage, cost);
                if estimated {
                    m.estimated_prompt = m.estimated_prompt.saturating_add(usage.prompt);
                    m.estimated_completion =
                        m.estimated_completion.saturating_add(usage.completion);
                }
            }
            if let Some(c) = client.and_then(|c| slot(&mut d.clients, c, MAX_CLIENTS)) {
                c.add(usage, cost);
            }
        });
    }

    /// Counts a response cache verdict on `route`.
    pub fn note_cache(&self, route: &str, result: crate::ai::cache::CacheStatus) {
        self.with(|d| {
            if let Some(c) = slot(&mut d.cache, route, MAX_ROUTES) {
                if let Some(n) = c.get_mut(result as usize) {
                    *n += 1;
                }
            }
        });
    }

    /// Counts a request refused by `[auth]`: `unknown` key, or none given.
    pub fn note_auth_failure(&self, unknown: bool) {
        self.with(|d| d.auth_failures[usize::from(unknown)] += 1);
    }

    /// Counts a request rejected by rate limit `limit`.
    pub fn note_ratelimit_rejection(&self, limit: &str) {
        self.with(|d| {
            if let Some(c) = slot(&mut d.limits, limit, MAX_LIMITS) {
                *c += 1;
            }
        });
    }

    /// Counts an upstream connection taken for a try: `reused` from the pool, else new.
    pub fn note_upstream_connection(&self, upstream: &str, reused: bool) {
        self.with(|d| {
            if let Some(u) = slot(&mut d.upstreams, upstream, MAX_UPSTREAMS) {
                if reused {
                    u.reuses += 1;
                } else {
                    u.connects += 1;
                }
            }
        });
    }

    /// Samples `upstream`'s pool on this worker: `idle` pooled connections, `busy` in use.
    /// Call it for every upstream of the current config before each [`publish`](Self::publish);
    /// an upstream not sampled since the last publish reads 0.
    pub fn set_pool(&self, upstream: &str, idle: u64, busy: u64) {
        self.set_upstream_gauges(upstream, idle, busy, 0);
    }

    /// Samples `upstream` on this worker: pooled and busy connections, ejected endpoints.
    pub fn set_upstream_gauges(&self, upstream: &str, idle: u64, busy: u64, ejected: u64) {
        self.with(|d| {
            d.pool_sampled = true;
            if let Some(u) = slot(&mut d.upstreams, upstream, MAX_UPSTREAMS) {
                u.idle = idle;
                u.busy = busy;
                u.ejected = ejected;
                u.gauge_set = true;
            }
        });
    }

    /// Merges what was recorded since the last call into the worker's published snapshot
    /// (one short lock of that worker's own mutex) and zeroes the local delta.
    pub fn publish(&self) {
        self.with(|d| {
            self.metrics.published().merge_from(d, Merge::Publish);
            d.clear();
        });
    }
}

/// Locks a mutex, ignoring poisoning (the stats stay usable after a panic elsewhere).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
