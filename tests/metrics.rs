//! The admin listener's observability endpoints on the real binary: `/metrics` accepted by
//! `promtool check metrics`, `/stats` JSON, `/ready` and `/health`.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{request, Driver, Gateway};
use ringgate_mock::MockProvider;

fn config(mock: &MockProvider) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"
keepalive = 8

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
upstream = "mock"

[[routes]]
name = "models"
exact = "/v1/models"
methods = ["GET"]
rewrite = "/models"
upstream = "mock"
"#,
        mock = mock.addr()
    )
}

const CHAT: &str = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nauthorization: Bearer sk-secret-test-key\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Some traffic: plain and streamed chat, a GET, an unrouted 404.
fn traffic(gw: &Gateway) {
    for _ in 0..5 {
        let r = request(gw.addr, &post("/v1/chat/completions", CHAT)).expect("chat");
        assert_eq!(r.status, 200);
    }
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT_STREAM)).expect("stream");
    assert_eq!(r.status, 200);
    let r = request(
        gw.addr,
        "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("models");
    assert_eq!(r.status, 200);
    let r = request(
        gw.addr,
        "GET /nowhere HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("404");
    assert_eq!(r.status, 404);
}

/// Waits (bounded) until the workers published the stats of [`traffic`]: they publish
/// once a second, so a fixed sleep would be a guess.
fn wait_published(gw: &Gateway) {
    let published = common::gateway::wait_until(Duration::from_secs(10), || {
        gw.metric("ringgate_request_duration_seconds_count{route=\"chat\"}") == Some(6.0)
            && gw.metric("ringgate_request_duration_seconds_count{route=\"models\"}") == Some(1.0)
            && gw.metric("ringgate_requests_total{route=\"(none)\",method=\"GET\",status=\"404\"}")
                == Some(1.0)
    });
    assert!(
        published,
        "stats of the traffic never published:\n{}",
        gw.admin_get("/metrics").text()
    );
}

#[test]
fn metrics_pass_promtool_check() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock), Driver::IoUring);
    traffic(&gw);
    wait_published(&gw);
    let r = gw.admin_get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = r.text();
    for family in [
        "# TYPE ringgate_requests_total counter",
        "# TYPE ringgate_request_duration_seconds histogram",
        "# TYPE ringgate_upstream_connect_seconds histogram",
        "# TYPE ringgate_upstream_header_seconds histogram",
        "# TYPE ringgate_upstream_response_seconds histogram",
        "# TYPE ringgate_time_to_first_byte_seconds histogram",
        "# TYPE ringgate_request_duration_quantile_seconds summary",
        "# TYPE ringgate_retries_total counter",
        "# TYPE ringgate_panics_total counter",
        "# TYPE ringgate_ratelimit_rejections_total counter",
        "# TYPE ringgate_upstream_pool_idle gauge",
        "# TYPE ringgate_upstream_reuse_ratio gauge",
        "# TYPE ringgate_request_bytes_total counter",
        "# TYPE ringgate_response_bytes_total counter",
        "ringgate_build_info{version=\"",
        "ringgate_io_driver_info{driver=\"io_uring\"} 1",
        "ringgate_config_generation 1",
        "ringgate_config_last_reload_successful 1",
        "ringgate_config_reloads_total{result=\"applied\"}",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    assert_eq!(
        gw.metric("ringgate_responses_total{class=\"2xx\"}"),
        Some(7.0)
    );
    assert!(!text.contains("sk-secret"), "a key leaked into /metrics");
    if let Some((ok, msg)) = common::gateway::promtool_check_metrics(&text) {
        assert!(ok, "promtool check metrics failed:\n{msg}\n---\n{text}");
    }
}

#[test]
fn ready_health_and_stats_json() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock), Driver::IoUring);
    // Workers start right after the admin listener; /ready turns 200 once they run.
    let start = Instant::now();
    let mut ready = gw.admin_get("/ready");
    while ready.status != 200 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        ready = gw.admin_get("/ready");
    }
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(gw.admin_get("/health").status, 200);
    traffic(&gw);
    let r = gw.admin_get("/stats");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["workers"], 2);
    assert!(v["routes"].is_object(), "{v}");
    assert!(v["upstreams"].is_object(), "{v}");
    assert!(v["ratelimit_rejections"].is_object(), "{v}");
    assert!(v["active_connections"].is_i64(), "{v}");
    // /config keeps its fields.
    let c = gw.admin_get("/config").json();
    assert_eq!(c["generation"], 1);
    assert!(c["sha256"].is_string());
}

/// Per-route series, which need the proxy to call `LocalStats::observe` and friends.
#[test]
fn per_route_metrics_and_stats_after_traffic() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock), Driver::IoUring);
    traffic(&gw);
    wait_published(&gw);
    let text = gw.admin_get("/metrics").text();
    let m = |k: &str| gw.metric(k);
    assert_eq!(
        m("ringgate_requests_total{route=\"chat\",method=\"POST\",status=\"200\"}"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        m("ringgate_requests_total{route=\"models\",method=\"GET\",status=\"200\"}"),
        Some(1.0)
    );
    assert_eq!(
        m("ringgate_requests_total{route=\"(none)\",method=\"GET\",status=\"404\"}"),
        Some(1.0)
    );
    assert_eq!(
        m("ringgate_request_duration_seconds_count{route=\"chat\"}"),
        Some(6.0)
    );
    assert_eq!(
        m("ringgate_request_duration_seconds_bucket{route=\"chat\",le=\"+Inf\"}"),
        Some(6.0)
    );
    assert_eq!(
        m("ringgate_upstream_header_seconds_count{route=\"chat\"}"),
        Some(6.0)
    );
    assert_eq!(
        m("ringgate_upstream_response_seconds_count{route=\"chat\"}"),
        Some(6.0)
    );
    assert_eq!(
        m("ringgate_time_to_first_byte_seconds_count{route=\"chat\"}"),
        Some(1.0)
    );
    let p99 = m("ringgate_request_duration_quantile_seconds{route=\"chat\",quantile=\"0.99\"}")
        .expect("p99");
    assert!(p99 > 0.0 && p99 < 5.0, "p99 {p99}");
    assert!(m("ringgate_request_bytes_total{route=\"chat\"}").unwrap_or(0.0) > 0.0);
    assert!(m("ringgate_response_bytes_total{route=\"chat\"}").unwrap_or(0.0) > 0.0);
    let connects = m("ringgate_upstream_connects_total{upstream=\"mock\"}").unwrap_or(0.0);
    let reuses = m("ringgate_upstream_reuses_total{upstream=\"mock\"}").unwrap_or(0.0);
    assert!(connects >= 1.0 && connects + reuses >= 7.0, "{text}");
    assert!(
        m("ringgate_upstream_pool_idle{upstream=\"mock\"}").is_some(),
        "{text}"
    );
    assert!(
        m("ringgate_upstream_pool_busy{upstream=\"mock\"}").is_some(),
        "{text}"
    );
    assert!(
        !text.contains("(unattributed)"),
        "legacy calls still in use:\n{text}"
    );
    if let Some((ok, msg)) = common::gateway::promtool_check_metrics(&text) {
        assert!(ok, "{msg}");
    }

    let v = gw.admin_get("/stats").json();
    let chat = &v["routes"]["chat"];
    assert_eq!(chat["requests"], 6, "{v}");
    assert_eq!(chat["by_status"]["200"], 6);
    assert_eq!(chat["by_method"]["POST"], 6);
    assert_eq!(chat["timings"]["request"]["count"], 6);
    for p in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"] {
        assert!(chat["timings"]["request"][p].as_f64().is_some(), "{p}: {v}");
    }
    assert_eq!(chat["timings"]["time_to_first_byte"]["count"], 1);
    assert!(v["upstreams"]["mock"]["reuse_ratio"].is_number(), "{v}");

    // The access log: one line per request, no credentials.
    let logs = gw.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ringgate::access"))
        .collect();
    assert_eq!(lines.len(), 8, "{logs}");
    assert!(lines
        .iter()
        .any(|l| l.contains("route=\"chat\"") || l.contains("route=chat")));
    assert!(
        !logs.contains("sk-secret-test-key"),
        "a key reached the log"
    );
}

/// Draining with a stream in flight: the process stays up until the stream ends, and
/// `/ready` answers 503 (strictly: a refused or failed admin request is not "drained").
#[test]
fn ready_is_503_while_draining_a_stream() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let mut gw = Gateway::start(&config(&mock), Driver::IoUring);
    assert_eq!(gw.admin_get("/ready").status, 200);
    let mut c = common::gateway::Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nx-mock-gate: 1\r\ncontent-length: {}\r\n\r\n{CHAT_STREAM}",
            CHAT_STREAM.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let (status, _) = c.read_head().expect("stream head");
    assert_eq!(status, 200);
    // The first event is out: the stream is in flight, held by the mock's gate.
    assert!(c.read_chunk().expect("first event").is_some());
    gw.terminate();
    let mut last = None;
    let drained = common::gateway::wait_until(Duration::from_secs(10), || {
        let r = request(
            gw.admin,
            "GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
        );
        let s = r.as_ref().map(|r| r.status).map_err(|e| e.kind());
        last = Some(s);
        s == Ok(503)
    });
    assert!(
        drained,
        "/ready never answered 503 while draining: last {last:?}"
    );
    assert!(gw.is_running(), "the in-flight stream holds the process up");
    mock.release_gate();
    let mut rest = Vec::new();
    while let Some(chunk) = c.read_chunk().expect("the stream runs to its end") {
        rest.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("[DONE]"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gw.logs()
    );
}
