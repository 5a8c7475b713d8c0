//! Criterion micro-benchmarks of the request path's hot pieces. They guard regressions;
//! they are not tests. Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

/// A config with `n` prefix routes plus a fallback, like a busy multi-provider gateway.
fn many_routes(n: usize) -> String {
    let mut s = String::from("[upstreams.u]\nurl = \"http://127.0.0.1:9000/v1\"\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nprefix = \"/v1/tenant-{i}/chat/completions\"\nrewrite = \"/chat/completions\"\nupstream = \"u\"\nmethods = [\"POST\"]\n"
        ));
    }
    s.push_str("[[routes]]\nname = \"fallback\"\nprefix = \"/v1/\"\nupstream = \"u\"\n");
    s
}

fn route_match(c: &mut Criterion) {
    let cfg = ringgate::config::load_bytes(many_routes(100).as_bytes(), Path::new("."))
        .expect("valid config");
    c.bench_function("route_match_100_routes_worst_case", |b| {
        b.iter(|| {
            cfg.routes.find(
                black_box("POST"),
                None,
                black_box("/v1/tenant-99/chat/completions"),
            )
        })
    });
    c.bench_function("route_match_100_routes_fallback", |b| {
        b.iter(|| {
            cfg.routes
                .find(black_box("GET"), None, black_box("/v1/files"))
        })
    });
}

fn config_compile(c: &mut Criterion) {
    let text = many_routes(100);
    c.bench_function("config_parse_compile_100_routes", |b| {
        b.iter(|| ringgate::config::load_bytes(black_box(text.as_bytes()), Path::new(".")).is_ok())
    });
}

fn head_parse(c: &mut Criterion) {
    let raw = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway.local\r\nauthorization: Bearer sk-xxxxxxxxxxxxxxxxxxxxxxxx\r\ncontent-type: application/json\r\ncontent-length: 96\r\nuser-agent: OpenAI/Python 1.54.0\r\naccept: application/json\r\nx-stainless-lang: python\r\n\r\n";
    let limits = ringgate::http::HeadLimits {
        max_header_bytes: 65536,
        max_request_line: 16384,
    };
    c.bench_function("http_request_head_parse", |b| {
        b.iter(|| {
            ringgate::http::parse_request_head(black_box(raw), &limits)
                .ok()
                .flatten()
                .map(|(h, n)| (h.headers.len(), n))
        })
    });
}

fn rate_limit_check(c: &mut Criterion) {
    let limiter = ringgate::limit::KeyedLimiter::new(
        ringgate::limit::LimitParams {
            rate_per_second: 1e6,
            burst: 1000,
            nodelay: true,
        },
        100_000,
    );
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let mut i = 0usize;
    c.bench_function("rate_limit_check_1000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            limiter.check(
                black_box(keys[i].as_bytes()),
                ringgate::clock::monotonic_nanos(),
            )
        })
    });
}

fn metrics_observe(c: &mut Criterion) {
    use std::time::Duration;
    let stats = ringgate::metrics::LocalStats::new(std::sync::Arc::new(
        ringgate::metrics::WorkerMetrics::default(),
    ));
    let routes = ["chat", "embeddings", "models", "fallback"];
    let mut i = 0usize;
    c.bench_function("metrics_observe_one_request", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let obs = ringgate::metrics::Observation {
                route: Some(routes[i % routes.len()]),
                upstream: Some("holysheep"),
                method: "POST",
                status: 200,
                bytes_in: 96,
                bytes_out: 512,
                total: Duration::from_micros(300 + (i % 1000) as u64),
                connect: Some(Duration::ZERO),
                header: Some(Duration::from_micros(250)),
                response: Some(Duration::from_micros(280)),
                ttfb: None,
                model: None,
                client: None,
                cache: None,
            };
            stats.observe(black_box(&obs));
        })
    });
}

criterion_group!(
    benches,
    metrics_observe,
    route_match,
    config_compile,
    head_parse,
    rate_limit_check
);
criterion_main!(benches);
