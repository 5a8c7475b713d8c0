//! Rendering of the merged stats: Prometheus text exposition format 0.0.4 for `/metrics`
//! (HELP and TYPE once per family, escaped label values, cumulative histogram buckets ending
//! in `+Inf`, counters named `_total`) and the `/stats` JSON.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::stats::{Stats, TimingStats, BUCKETS_SECONDS, METHODS};
use super::{Driver, Registry, Timing, WorkerMetrics};
use crate::reload::ConfigStore;

/// Quantiles published from the hdrhistograms, with their label values.
const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

/// Appends `v` escaped as a Prometheus label value (`\\`, `\"`, `\n`).
pub(crate) fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A Prometheus text writer: one family at a time.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
    }

    /// One sample: `name{l1="v1",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], t: &TimingStats) {
        let bucket = format!("{name}_bucket");
        let cum = t.cumulative();
        for (le, c) in BUCKETS_SECONDS.iter().zip(cum.iter()) {
            let le = le.to_string();
            let mut ls: Vec<(&str, &str)> = labels.to_vec();
            ls.push(("le", &le));
            self.sample(&bucket, &ls, c);
        }
        let mut ls: Vec<(&str, &str)> = labels.to_vec();
        ls.push(("le", "+Inf"));
        self.sample(&bucket, &ls, t.count);
        self.sample(&format!("{name}_sum"), labels, secs(t.sum_micros));
        self.sample(&format!("{name}_count"), labels, t.count);
    }
}

fn secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn sum(ws: &[std::sync::Arc<WorkerMetrics>], f: impl Fn(&WorkerMetrics) -> &AtomicU64) -> u64 {
    ws.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
}

const UNATTRIBUTED: &str = "(unattributed)";

/// Renders `/metrics`: every worker's counters and published stats, merged.
pub fn render(reg: &Registry, store: &ConfigStore) -> String {
    let mut out = render_stats(reg, &reg.aggregate());
    render_config(&mut out, store);
    if store.current().config.cluster.is_some() {
        let ms: Vec<&crate::cluster::ClusterMetrics> =
            reg.workers.iter().map(|w| &*w.cluster).collect();
        crate::cluster::render(&mut out, &ms);
    }
    out
}

/// Renders everything but the config families.
pub(crate) fn render_stats(reg: &Registry, st: &Stats) -> String {
    let ws = &reg.workers;
    let mut t = Text {
        out: String::with_capacity(16 * 1024),
    };

    render_requests(&mut t, ws, st);
    render_process(&mut t, ws);
    render_upstreams(&mut t, st, ws);

    t.family(
        "ringgate_io_driver_info",
        "gauge",
        "I/O driver of the workers (1 when at least one worker runs it)",
    );
    let uring = ws.iter().any(|w| w.driver() == Driver::IoUring);
    let epoll = ws.iter().any(|w| w.driver() == Driver::Epoll);
    t.sample(
        "ringgate_io_driver_info",
        &[("driver", "io_uring")],
        u8::from(uring),
    );
    t.sample(
        "ringgate_io_driver_info",
        &[("driver", "epoll")],
        u8::from(epoll),
    );

    render_ai(&mut t, st);
    t.out
}

/// Build, request, byte, timing, retry, truncation and rate-limit families.
fn render_requests(t: &mut Text, ws: &[std::sync::Arc<WorkerMetrics>], st: &Stats) {
    t.family(
        "ringgate_build_info",
        "gauge",
        "Build information, always 1",
    );
    t.sample(
        "ringgate_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    t.family("ringgate_workers", "gauge", "Worker threads");
    t.sample("ringgate_workers", &[], ws.len());

    t.family(
        "ringgate_requests_total",
        "counter",
        "Requests answered, by route, method and status",
    );
    for (route, r) in &st.routes {
        for c in &r.requests {
            let m = METHODS
                .get(usize::from(c.method))
                .copied()
                .unwrap_or("OTHER");
            let status = c.status.to_string();
            t.sample(
                "ringgate_requests_total",
                &[("route", route), ("method", m), ("status", &status)],
                c.n,
            );
        }
    }
    t.family(
        "ringgate_responses_total",
        "counter",
        "Responses by status class, including request heads rejected before routing",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        t.sample(
            "ringgate_responses_total",
            &[("class", class)],
            sum(ws, |w| &w.requests_by_class[i + 1]),
        );
    }
    t.family(
        "ringgate_rejected_request_heads_total",
        "counter",
        "Malformed or oversize request heads",
    );
    t.sample(
        "ringgate_rejected_request_heads_total",
        &[],
        sum(ws, |w| &w.rejected_heads),
    );

    t.family(
        "ringgate_request_bytes_total",
        "counter",
        "Request body bytes read from clients, by route",
    );
    for (route, r) in &st.routes {
        t.sample(
            "ringgate_request_bytes_total",
            &[("route", route)],
            r.bytes_in,
        );
    }
    t.family(
        "ringgate_response_bytes_total",
        "counter",
        "Response bytes written to clients, by route",
    );
    for (route, r) in &st.routes {
        t.sample(
            "ringgate_response_bytes_total",
            &[("route", route)],
            r.bytes_out,
        );
    }

    for timing in Timing::ALL {
        let i = timing as usize;
        t.family(timing.family(), "histogram", timing.help());
        for (route, r) in &st.routes {
            if r.timings[i].count > 0 {
                t.histogram(timing.family(), &[("route", route)], &r.timings[i]);
            }
        }
    }
    // Exact per-pod quantiles from hdrhistogram. Typed `summary` (what precomputed
    // quantiles are in Prometheus; promtool rejects a `quantile` label on a gauge), with
    // `_sum` and `_count` like any summary. They do not aggregate across pods: use the
    // histograms above with histogram_quantile for that.
    for timing in Timing::ALL {
        let i = timing as usize;
        let name = timing.quantile_family();
        let help = format!(
            "{} (seconds): exact quantiles of this pod since start, from hdrhistogram",
            timing.help()
        );
        t.family(name, "summary", &help);
        for (route, r) in &st.routes {
            let ts = &r.timings[i];
            if ts.count == 0 {
                continue;
            }
            for (q, ql) in QUANTILES {
                if let Some(v) = ts.quantile_seconds(q) {
                    t.sample(name, &[("route", route), ("quantile", ql)], v);
                }
            }
            t.sample(
                &format!("{name}_sum"),
                &[("route", route)],
                secs(ts.sum_micros),
            );
            t.sample(&format!("{name}_count"), &[("route", route)], ts.count);
        }
    }

    t.family(
        "ringgate_retries_total",
        "counter",
        "Upstream tries retried, by route and reason",
    );
    for (route, r) in &st.routes {
        for (reason, n) in &r.retries {
            t.sample(
                "ringgate_retries_total",
                &[("route", route), ("reason", reason)],
                n,
            );
        }
    }
    let legacy_retries = sum(ws, |w| &w.retries);
    if legacy_retries > 0 {
        t.sample(
            "ringgate_retries_total",
            &[("route", UNATTRIBUTED), ("reason", UNATTRIBUTED)],
            legacy_retries,
        );
    }
    t.family(
        "ringgate_responses_truncated_total",
        "counter",
        "Responses that ended before their framing said (the head had gone out), by route and reason",
    );
    for (route, r) in &st.routes {
        for (reason, n) in &r.truncated {
            t.sample(
                "ringgate_responses_truncated_total",
                &[("route", route), ("reason", reason)],
                n,
            );
        }
    }
    t.family(
        "ringgate_ratelimit_rejections_total",
        "counter",
        "Requests rejected by a rate limit, by limit",
    );
    for (limit, n) in &st.limits {
        t.sample(
            "ringgate_ratelimit_rejections_total",
            &[("limit", limit)],
            n,
        );
    }
}

/// Connection, in-flight, worker-health, panic and TLS-handshake families.
fn render_process(t: &mut Text, ws: &[std::sync::Arc<WorkerMetrics>]) {
    t.family(
        "ringgate_active_connections",
        "gauge",
        "Open client connections",
    );
    let active: i64 = ws
        .iter()
        .map(|w| w.active_connections.load(Ordering::Relaxed))
        .sum();
    t.sample("ringgate_active_connections", &[], active);
    t.family(
        "ringgate_requests_in_flight",
        "gauge",
        "Requests being served, streams included (scale on this: CPU says little about long streams)",
    );
    let in_flight: i64 = ws
        .iter()
        .map(|w| w.requests_in_flight.load(Ordering::Relaxed))
        .sum();
    t.sample("ringgate_requests_in_flight", &[], in_flight);
    t.family(
        "ringgate_refused_connections_total",
        "counter",
        "Client connections closed at once: over max_connections, or waiting while the process was out of descriptors",
    );
    t.sample(
        "ringgate_refused_connections_total",
        &[],
        sum(ws, |w| &w.refused_connections),
    );

    t.family(
        "ringgate_worker_heartbeat_age_seconds",
        "gauge",
        "Time since each worker's event loop last ran its once-a-second heartbeat (over 10 s: wedged, /health answers 503)",
    );
    let now = crate::clock::monotonic_nanos();
    for (i, w) in ws.iter().enumerate() {
        if let Some(age) = w.heartbeat_age(now) {
            let worker = i.to_string();
            t.sample(
                "ringgate_worker_heartbeat_age_seconds",
                &[("worker", worker.as_str())],
                age.as_secs_f64(),
            );
        }
    }

    t.family(
        "ringgate_panics_total",
        "counter",
        "Panics: caught while serving a client connection (only that connection was closed), or one that ended a worker thread",
    );
    t.sample(
        "ringgate_panics_total",
        &[],
        ws.iter().map(|w| w.panics()).sum::<u64>(),
    );

    t.family(
        "ringgate_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes on the client TLS listener",
    );
    let tls: Vec<(u64, u64, u64)> = ws.iter().map(|w| w.tls_handshakes()).collect();
    t.sample(
        "ringgate_tls_handshakes_total",
        &[],
        tls.iter().map(|x| x.0).sum::<u64>(),
    );
    t.family(
        "ringgate_tls_handshake_failures_total",
        "counter",
        "Client TLS handshakes that failed (error) or did not finish within handshake_timeout_ms (timeout); each closed only its connection",
    );
    t.sample(
        "ringgate_tls_handshake_failures_total",
        &[("reason", "error")],
        tls.iter().map(|x| x.1).sum::<u64>(),
    );
    t.sample(
        "ringgate_tls_handshake_failures_total",
        &[("reason", "timeout")],
        tls.iter().map(|x| x.2).sum::<u64>(),
    );
}

/// Upstream connection, pool, ejection and response families.
fn render_upstreams(t: &mut Text, st: &Stats, ws: &[std::sync::Arc<WorkerMetrics>]) {
    // Upstreams.
    t.family(
        "ringgate_upstream_connects_total",
        "counter",
        "New upstream connections, by upstream",
    );
    for (up, u) in &st.upstreams {
        t.sample(
            "ringgate_upstream_connects_total",
            &[("upstream", up)],
            u.connects,
        );
    }
    let legacy_connects = sum(ws, |w| &w.upstream_connects);
    if legacy_connects > 0 {
        t.sample(
            "ringgate_upstream_connects_total",
            &[("upstream", UNATTRIBUTED)],
            legacy_connects,
        );
    }
    t.family(
        "ringgate_upstream_reuses_total",
        "counter",
        "Upstream tries sent on a pooled connection, by upstream",
    );
    for (up, u) in &st.upstreams {
        t.sample(
            "ringgate_upstream_reuses_total",
            &[("upstream", up)],
            u.reuses,
        );
    }
    let legacy_reuses = sum(ws, |w| &w.upstream_reuses);
    if legacy_reuses > 0 {
        t.sample(
            "ringgate_upstream_reuses_total",
            &[("upstream", UNATTRIBUTED)],
            legacy_reuses,
        );
    }
    t.family(
        "ringgate_upstream_reuse_ratio",
        "gauge",
        "Share of upstream tries sent on a pooled connection since start, by upstream",
    );
    for (up, u) in &st.upstreams {
        if let Some(r) = u.reuse_ratio() {
            t.sample("ringgate_upstream_reuse_ratio", &[("upstream", up)], r);
        }
    }
    t.family(
        "ringgate_upstream_pool_idle",
        "gauge",
        "Idle pooled upstream connections, by upstream",
    );
    if st.pool_sampled {
        for (up, u) in &st.upstreams {
            t.sample("ringgate_upstream_pool_idle", &[("upstream", up)], u.idle);
        }
    } else {
        let idle: i64 = ws.iter().map(|w| w.pool_idle.load(Ordering::Relaxed)).sum();
        t.sample(
            "ringgate_upstream_pool_idle",
            &[("upstream", UNATTRIBUTED)],
            idle,
        );
    }
    t.family(
        "ringgate_upstream_pool_busy",
        "gauge",
        "Upstream connections in use, by upstream",
    );
    if st.pool_sampled {
        for (up, u) in &st.upstreams {
            t.sample("ringgate_upstream_pool_busy", &[("upstream", up)], u.busy);
        }
    }
    t.family(
        "ringgate_upstream_endpoints_ejected",
        "gauge",
        "Endpoints ejected by passive health, by upstream (summed over workers: each worker ejects on its own)",
    );
    if st.pool_sampled {
        for (up, u) in &st.upstreams {
            t.sample(
                "ringgate_upstream_endpoints_ejected",
                &[("upstream", up)],
                u.ejected,
            );
        }
    }
    t.family(
        "ringgate_upstream_requests_total",
        "counter",
        "Requests answered through an upstream, by upstream and status class of the answer",
    );
    for (up, u) in &st.upstreams {
        for (i, n) in u.responses.iter().enumerate() {
            if *n > 0 {
                let class = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"][i];
                t.sample(
                    "ringgate_upstream_requests_total",
                    &[("upstream", up), ("class", class)],
                    n,
                );
            }
        }
    }
    t.family(
        "ringgate_upstream_responses_total",
        "counter",
        "Upstream response heads received",
    );
    t.sample(
        "ringgate_upstream_responses_total",
        &[],
        sum(ws, |w| &w.upstream_responses),
    );
}

/// Token, cost, client, auth and cache families of the AI layer.
fn render_ai(t: &mut Text, st: &Stats) {
    t.family(
        "ringgate_tokens_total",
        "counter",
        "Tokens by model and kind (cached_prompt is a part of prompt), from responses' usage",
    );
    for (model, m) in &st.models {
        for (kind, n) in [
            ("prompt", m.prompt),
            ("completion", m.completion),
            ("cached_prompt", m.cached_prompt),
        ] {
            t.sample(
                "ringgate_tokens_total",
                &[("model", model), ("kind", kind)],
                n,
            );
        }
    }
    t.family(
        "ringgate_tokens_estimated_total",
        "counter",
        "Of ringgate_tokens_total, tokens estimated because an answer ended or broke without its usage (prompt: body bytes / 4; completion: one per stream data event)",
    );
    for (model, m) in &st.models {
        for (kind, n) in [
            ("prompt", m.estimated_prompt),
            ("completion", m.estimated_completion),
        ] {
            t.sample(
                "ringgate_tokens_estimated_total",
                &[("model", model), ("kind", kind)],
                n,
            );
        }
    }
    t.family(
        "ringgate_cost_usd_total",
        "counter",
        "US dollars spent by model, at the configured prices",
    );
    for (model, m) in &st.models {
        t.sample("ringgate_cost_usd_total", &[("model", model)], m.cost_usd);
    }
    t.family(
        "ringgate_model_requests_total",
        "counter",
        "Requests sent to an upstream by model (each fallback try counts for its model)",
    );
    for (model, m) in &st.models {
        t.sample(
            "ringgate_model_requests_total",
            &[("model", model)],
            m.requests,
        );
    }
    t.family(
        "ringgate_model_fallbacks_total",
        "counter",
        "Requests that left a model for its next fallback after a retryable failure",
    );
    for (model, m) in &st.models {
        t.sample(
            "ringgate_model_fallbacks_total",
            &[("model", model)],
            m.fallbacks,
        );
    }
    t.family(
        "ringgate_client_requests_total",
        "counter",
        "Requests sent upstream by authenticated client name",
    );
    for (client, c) in &st.clients {
        t.sample(
            "ringgate_client_requests_total",
            &[("client", client)],
            c.requests,
        );
    }
    t.family(
        "ringgate_client_tokens_total",
        "counter",
        "Tokens by authenticated client name and kind",
    );
    for (client, c) in &st.clients {
        for (kind, n) in [
            ("prompt", c.prompt),
            ("completion", c.completion),
            ("cached_prompt", c.cached_prompt),
        ] {
            t.sample(
                "ringgate_client_tokens_total",
                &[("client", client), ("kind", kind)],
                n,
            );
        }
    }
    t.family(
        "ringgate_client_cost_usd_total",
        "counter",
        "US dollars by authenticated client name",
    );
    for (client, c) in &st.clients {
        t.sample(
            "ringgate_client_cost_usd_total",
            &[("client", client)],
            c.cost_usd,
        );
    }
    t.family(
        "ringgate_auth_failures_total",
        "counter",
        "Requests refused with 401 by reason (missing or unknown key)",
    );
    t.sample(
        "ringgate_auth_failures_total",
        &[("reason", "missing")],
        st.auth_failures[0],
    );
    t.sample(
        "ringgate_auth_failures_total",
        &[("reason", "unknown")],
        st.auth_failures[1],
    );
    t.family(
        "ringgate_cache_requests_total",
        "counter",
        "Response cache lookups by route and result",
    );
    for (route, c) in &st.cache {
        for (result, n) in ["hit", "miss", "bypass"].iter().zip(c) {
            t.sample(
                "ringgate_cache_requests_total",
                &[("route", route), ("result", result)],
                n,
            );
        }
    }
}

fn render_config(out: &mut String, store: &ConfigStore) {
    let mut t = Text {
        out: std::mem::take(out),
    };
    let cur = store.current();
    if let Some(auth) = &cur.config.auth {
        let rows = crate::limit::spend::rows(&auth.clients, &cur.spend);
        if !rows.is_empty() {
            t.family(
                "ringgate_client_budget_usd",
                "gauge",
                "A client's spend budget per window (day, month; UTC), US dollars",
            );
            for r in &rows {
                t.sample(
                    "ringgate_client_budget_usd",
                    &[("client", &r.client), ("window", r.window.label())],
                    r.budget_usd,
                );
            }
            t.family(
                "ringgate_client_spend_usd",
                "gauge",
                "What a client spent in the current window, US dollars, reservations of running requests included (cluster budgets: the latest the store reported to this pod)",
            );
            for r in &rows {
                t.sample(
                    "ringgate_client_spend_usd",
                    &[("client", &r.client), ("window", r.window.label())],
                    r.spent_usd,
                );
            }
        }
    }
    t.family(
        "ringgate_config_generation",
        "gauge",
        "Applied config generation (+1 per applied reload)",
    );
    t.sample("ringgate_config_generation", &[], cur.generation);
    t.family(
        "ringgate_config_last_reload_successful",
        "gauge",
        "Whether the last reload attempt succeeded",
    );
    t.sample(
        "ringgate_config_last_reload_successful",
        &[],
        u8::from(store.last_successful.load(Ordering::Relaxed)),
    );
    t.family(
        "ringgate_config_reloads_total",
        "counter",
        "Reload attempts by result",
    );
    t.sample(
        "ringgate_config_reloads_total",
        &[("result", "applied")],
        store.applied.load(Ordering::Relaxed),
    );
    t.sample(
        "ringgate_config_reloads_total",
        &[("result", "rejected")],
        store.rejected.load(Ordering::Relaxed),
    );
    t.family(
        "ringgate_tls_certificate_reloads_total",
        "counter",
        "Reloads that changed the [server.tls] certificates, by result (rejected: the old certificates keep serving)",
    );
    t.sample(
        "ringgate_tls_certificate_reloads_total",
        &[("result", "applied")],
        store.tls_applied.load(Ordering::Relaxed),
    );
    t.sample(
        "ringgate_tls_certificate_reloads_total",
        &[("result", "rejected")],
        store.tls_rejected.load(Ordering::Relaxed),
    );
    if let Some(tls) = &cur.config.server.tls {
        t.family(
            "ringgate_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of each served certificate's leaf, by SNI name ((default) for the default certificate)",
        );
        for c in &tls.certificates {
            let Some(na) = c.not_after else { continue };
            for name in &c.server_names {
                t.sample(
                    "ringgate_tls_certificate_expiry_timestamp_seconds",
                    &[("server_name", name)],
                    na,
                );
            }
        }
    }
    t.family(
        "ringgate_cache_entries",
        "gauge",
        "Responses held by the response cache",
    );
    t.sample("ringgate_cache_entries", &[], cur.cache.len());
    t.family(
        "ringgate_cache_bytes",
        "gauge",
        "Bytes held by the response cache (bounded by cache.max_bytes)",
    );
    t.sample("ringgate_cache_bytes", &[], cur.cache.bytes());
    t.family(
        "ringgate_ratelimit_untracked_total",
        "counter",
        "New keys admitted without being tracked because a limit's key table was full",
    );
    for (spec, l) in cur.config.limits.iter().zip(cur.limiters.iter()) {
        t.sample(
            "ringgate_ratelimit_untracked_total",
            &[("limit", &spec.name)],
            l.overflowed(),
        );
    }
    *out = t.out;
}

fn ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |s| json!((s * 1e6).round() / 1e3))
}

fn timing_json(t: &TimingStats) -> Value {
    let mean = t
        .hdr
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.mean() / 1e6);
    let max = t
        .hdr
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.max() as f64 / 1e6);
    json!({
        "count": t.count,
        "mean_ms": ms(mean),
        "p50_ms": ms(t.quantile_seconds(0.5)),
        "p90_ms": ms(t.quantile_seconds(0.9)),
        "p95_ms": ms(t.quantile_seconds(0.95)),
        "p99_ms": ms(t.quantile_seconds(0.99)),
        "p999_ms": ms(t.quantile_seconds(0.999)),
        "max_ms": ms(max),
    })
}

/// The `/stats` JSON: per-route counts, bytes, retries and hdrhistogram percentiles (in
/// milliseconds, over the life of the process), per-upstream pool numbers, rate-limit
/// rejections.
pub fn stats_json(reg: &Registry) -> Value {
    let st = reg.aggregate();
    let mut routes = Map::new();
    for (name, r) in &st.routes {
        let mut by_status = Map::new();
        let mut by_method = Map::new();
        for c in &r.requests {
            let s = c.status.to_string();
            let e = by_status.entry(s).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + c.n);
            let m = METHODS
                .get(usize::from(c.method))
                .copied()
                .unwrap_or("OTHER");
            let e = by_method.entry(m).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + c.n);
        }
        let mut timings = Map::new();
        for timing in Timing::ALL {
            timings.insert(
                timing.key().into(),
                timing_json(&r.timings[timing as usize]),
            );
        }
        routes.insert(
            name.to_string(),
            json!({
                "requests": r.total(),
                "by_status": by_status,
                "by_method": by_method,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
                "retries": r.retries.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>(),
                "timings": timings,
            }),
        );
    }
    let upstreams: Map<String, Value> = st
        .upstreams
        .iter()
        .map(|(name, u)| {
            (
                name.to_string(),
                json!({
                    "connects": u.connects,
                    "reuses": u.reuses,
                    "reuse_ratio": u.reuse_ratio(),
                    "idle": u.idle,
                    "busy": u.busy,
                }),
            )
        })
        .collect();
    let limits: Map<String, Value> = st
        .limits
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let active: i64 = reg
        .workers
        .iter()
        .map(|w| w.active_connections.load(Ordering::Relaxed))
        .sum();
    json!({
        "workers": reg.workers.len(),
        "active_connections": active,
        "routes": routes,
        "upstreams": upstreams,
        "ratelimit_rejections": limits,
    })
}
