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
                truncated: None,
            };
            stats.observe(black_box(&obs));
        })
    });
}

fn head_reencode(c: &mut Criterion) {
    let raw = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway.local\r\nauthorization: Bearer sk-xxxxxxxxxxxxxxxxxxxxxxxx\r\ncontent-type: application/json\r\ncontent-length: 96\r\nuser-agent: OpenAI/Python 1.54.0\r\naccept: application/json\r\nx-stainless-lang: python\r\n\r\n";
    let limits = ringgate::http::HeadLimits {
        max_header_bytes: 65536,
        max_request_line: 16384,
    };
    let Ok(Some((head, _))) = ringgate::http::parse_request_head(raw, &limits) else {
        return;
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("http_request_head_reencode", |b| {
        b.iter(|| {
            out.clear();
            let hs: Vec<(&str, &[u8])> = head.headers.iter().map(|h| (h.name, h.value)).collect();
            ringgate::http::write_request_head(&mut out, &head.method, "/chat/completions", &hs);
            out.len()
        })
    });
}

fn config_swap(c: &mut Criterion) {
    let cfg = ringgate::config::load_bytes(many_routes(100).as_bytes(), Path::new("."))
        .expect("valid config");
    let cell = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let text = many_routes(100);
    c.bench_function("config_parse_compile_swap_100_routes", |b| {
        b.iter(|| {
            if let Ok(next) = ringgate::config::load_bytes(text.as_bytes(), Path::new(".")) {
                cell.store(std::sync::Arc::new(next));
            }
        })
    });
    // What a worker pays per request to see the current generation.
    let mut cache = arc_swap::Cache::new(cell.clone());
    c.bench_function("config_snapshot_load_per_request", |b| {
        b.iter(|| black_box(cache.load().routes.len()))
    });
}

fn histogram_record(c: &mut Criterion) {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("histogram bounds");
    let mut i = 0u64;
    c.bench_function("hdrhistogram_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            h.saturating_record(black_box(100 + i % 100_000));
        })
    });
}

/// A realistic OpenAI stream: 63 content chunks of ~200 bytes with `"usage":null`, then the
/// usage-only chunk and `[DONE]`.
fn sse_stream() -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..63 {
        s.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1732406400,\"model\":\"gpt-4.1\",\"system_fingerprint\":\"fp_1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n").as_bytes());
    }
    s.extend_from_slice(b"data: {\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":63,\"total_tokens\":183,\"prompt_tokens_details\":{\"cached_tokens\":64}}}\n\ndata: [DONE]\n\n");
    s
}

fn usage_scan(c: &mut Criterion) {
    let stream = sse_stream();
    // Fed as the upstream sends it: one event per read.
    let events: Vec<&[u8]> = stream
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|p| {
            let start = p[0].as_ptr() as usize - stream.as_ptr() as usize;
            let len: usize = p.iter().map(|l| l.len()).sum();
            &stream[start..start + len]
        })
        .collect();
    let mut out = Vec::with_capacity(stream.len());
    for strip in [false, true] {
        let name = if strip {
            "sse_usage_scan_64_chunks_strip"
        } else {
            "sse_usage_scan_64_chunks_observe"
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut sc = ringgate::ai::usage::SseScanner::new(strip);
                for e in &events {
                    sc.feed(black_box(e), &mut out);
                }
                sc.finish(&mut out);
                sc.usage()
            })
        });
    }
    let mut json = br#"{"id":"chatcmpl-abc","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":""#.to_vec();
    json.extend(std::iter::repeat_n(b'x', 8000));
    json.extend_from_slice(br#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2000,"total_tokens":2010}}"#);
    c.bench_function("json_usage_scan_8k", |b| {
        b.iter(|| {
            let mut sc = ringgate::ai::usage::JsonUsageScanner::new();
            sc.feed(black_box(&json));
            sc.usage()
        })
    });
    let body = br#"{"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Write a haiku about io_uring and thread-per-core servers."}],"model":"gpt-4","temperature":0.7,"stream":true}"#;
    let mut out = Vec::with_capacity(512);
    c.bench_function("request_body_inspect_and_rewrite", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(info) = ringgate::ai::body::inspect(black_box(body)) {
                ringgate::ai::body::rewrite(body, &info, Some("gpt-4.1"), true, &mut out);
            }
            out.len()
        })
    });
}

/// The cluster limit's wire work per request: an EVALSHA encoded, its reply decoded, and the
/// refusal-cache lookup that precedes it.
fn cluster_resp(c: &mut Criterion) {
    use ringgate::cluster::resp;
    let key = ringgate::cluster::limits::redis_key("per-client", b"10.1.2.3");
    let sha = [b'a'; 40];
    let mut out = Vec::with_capacity(512);
    c.bench_function("cluster_evalsha_encode", |b| {
        b.iter(|| {
            out.clear();
            resp::encode(
                &mut out,
                &[
                    b"EVALSHA",
                    &sha,
                    b"1",
                    key.as_bytes(),
                    b"admit",
                    b"200000.000",
                    b"2000000.000",
                    b"1",
                    b"0",
                ],
            );
            out.len()
        })
    });
    // An admission of one key: {admitted, index, wait, 0, the key's state}.
    // The refusal cache a worker checks before any round trip: a hit (a key refused a
    // moment ago, so no call) and a miss, among 1,000 remembered keys.
    {
        use ringgate::cluster::limits::{Entry, Kind, RefusalCache};
        use std::time::{Duration, Instant};
        let spec = ringgate::config::LimitSpec {
            name: "per-client".into(),
            rate_per_second: 5.0,
            burst: 10,
            key: ringgate::config::LimitKey::ClientIp,
            nodelay: true,
            scope: ringgate::config::LimitScope::Cluster { replicas: 1 },
        };
        let cache = RefusalCache::default();
        let now = Instant::now();
        for i in 0..1000u32 {
            let ip = format!("10.0.{}.{}", i / 256, i % 256);
            let e = Entry::new(0, &spec, Kind::Requests, ip.as_bytes(), 1);
            cache.remember(&e, now + Duration::from_secs(60), now);
        }
        let hit = Entry::new(0, &spec, Kind::Requests, b"10.0.1.7", 1);
        let miss = Entry::new(0, &spec, Kind::Requests, b"192.168.9.9", 1);
        c.bench_function("cluster_refusal_cache_hit", |b| {
            b.iter(|| cache.refused(black_box(&hit), now))
        });
        c.bench_function("cluster_refusal_cache_miss", |b| {
            b.iter(|| cache.refused(black_box(&miss), now))
        });
    }
    let reply = b"*5\r\n:1\r\n:0\r\n:0\r\n:0\r\n:200000\r\n";
    c.bench_function("cluster_reply_decode", |b| {
        b.iter(|| {
            resp::decode(black_box(reply))
                .ok()
                .flatten()
                .map(|(_, n)| n)
        })
    });
}

/// The `x-ratelimit-*` headers every response of a limited route carries: six lines
/// written into the response head, without `fmt`.
fn rate_headers(c: &mut Criterion) {
    use ringgate::proxy::limit_headers::{BucketState, RateHeaders};
    use std::time::Duration;
    let h = RateHeaders {
        requests: Some(BucketState {
            limit: 11,
            remaining: 7,
            reset: Duration::from_millis(1250),
        }),
        tokens: Some(BucketState {
            limit: 100_000,
            remaining: 99_966,
            reset: Duration::from_millis(361_500),
        }),
    };
    let mut out = Vec::with_capacity(512);
    c.bench_function("rate_headers_write", |b| {
        b.iter(|| {
            out.clear();
            black_box(&h).write(&mut out);
            out.len()
        })
    });
}

criterion_group!(
    benches,
    rate_headers,
    cluster_resp,
    head_reencode,
    config_swap,
    histogram_record,
    usage_scan,
    metrics_observe,
    route_match,
    config_compile,
    head_parse,
    rate_limit_check
);
criterion_main!(benches);
