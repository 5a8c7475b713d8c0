//! Traffic policy against the mock provider: retries per condition, never after the first
//! response byte, load balancing across endpoints, passive health (ejection and return),
//! provider-quota shedding and per-route concurrency limits.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{request, wait_until, Conn, Driver, Gateway};
use ringgate_mock::MockProvider;

/// An upstream over `endpoints` (host:port), one route `/v1/` with the given retry policy.
fn config(
    endpoints: &[String],
    balance: &str,
    retry_on: &str,
    tries: u32,
    extra_upstream: &str,
    extra_route: &str,
) -> String {
    let (first, rest) = endpoints.split_first().expect("one endpoint");
    let rest: Vec<String> = rest.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.pool]
url = "http://{first}"
endpoints = [{rest}]
balance = "{balance}"
max_fails = 2
fail_timeout_ms = 400
{extra_upstream}

[[routes]]
name = "api"
prefix = "/v1/"
upstream = "pool"
retry_on = [{retry_on}]
tries = {tries}
retry_budget_ms = 5000
read_timeout_ms = 500
{extra_route}
"#,
        rest = rest.join(", ")
    )
    .replace(
        if extra_upstream.contains("max_fails") {
            "max_fails = 2\n"
        } else {
            "\u{0}"
        },
        "",
    )
}

fn get(gw: &Gateway, path: &str, headers: &str) -> common::gateway::Response {
    request(
        gw.addr,
        &format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{headers}connection: close\r\n\r\n"),
    )
    .expect("request")
}

#[test]
fn retries_follow_retry_on_per_condition() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    // (retry_on, knob headers, expected status, expected upstream attempts)
    let cases: &[(&str, &str, u16, usize)] = &[
        (
            "\"http_503\"",
            "x-mock-status: 503\r\nx-mock-fail-first: 1\r\n",
            200,
            2,
        ),
        ("\"http_503\"", "x-mock-status: 503\r\n", 503, 3),
        (
            "\"http_502\"",
            "x-mock-status: 503\r\nx-mock-fail-first: 1\r\n",
            503,
            1,
        ),
        (
            "\"http_429\"",
            "x-mock-status: 429\r\nx-mock-fail-first: 2\r\n",
            200,
            3,
        ),
        (
            "\"error\"",
            "x-mock-drop: before-response\r\nx-mock-fail-first: 1\r\n",
            200,
            2,
        ),
        (
            "\"timeout\"",
            "x-mock-delay-ms: 1500\r\nx-mock-fail-first: 1\r\n",
            200,
            2,
        ),
        (
            "\"error\"",
            "x-mock-delay-ms: 1500\r\nx-mock-fail-first: 1\r\n",
            504,
            1,
        ),
        ("", "x-mock-status: 502\r\n", 502, 1),
    ];
    for (i, (retry_on, knobs, status, attempts)) in cases.iter().enumerate() {
        let gw = Gateway::start(
            &config(&eps, "round_robin", retry_on, 3, "max_fails = 0", ""),
            Driver::IoUring,
        );
        let before = mock.request_count();
        let key = format!("x-mock-fail-key: case{i}\r\n");
        let r = get(&gw, "/v1/echo", &format!("{knobs}{key}"));
        assert_eq!(
            r.status,
            *status,
            "case {i} ({retry_on}, {knobs:?}): {}",
            r.text()
        );
        assert_eq!(
            mock.request_count() - before,
            *attempts,
            "case {i}: upstream attempts"
        );
    }
}

#[test]
fn no_retry_once_a_response_byte_went_out_and_none_for_big_bodies() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let gw = Gateway::start(
        &config(&eps, "round_robin", "\"error\", \"timeout\"", 3, "", ""),
        Driver::Epoll,
    );
    // The upstream dies mid-stream: the client's stream is cut, nothing is retried.
    let before = mock.request_count();
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let mut c = Conn::connect(gw.addr);
    c.send(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\nx-mock-drop: mid-body\r\n\r\n{body}", body.len()).as_bytes()).expect("send");
    let (status, _) = c.read_head().expect("head");
    assert_eq!(status, 200);
    c.read_to_close()
        .expect("the cut stream's connection closes");
    assert_eq!(
        mock.request_count() - before,
        1,
        "no retry after the first byte"
    );
    // A body over max_retry_body_bytes streams and is never re-sent.
    let big = "x".repeat(100_000);
    let before = mock.request_count();
    let r = request(gw.addr, &format!("POST /v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\nx-mock-drop: before-response\r\nconnection: close\r\n\r\n{big}", big.len())).expect("upload");
    assert_eq!(r.status, 502);
    assert_eq!(
        mock.request_count() - before,
        1,
        "a streamed body is not retried"
    );
}

#[test]
fn retry_after_is_honoured_within_the_budget() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let gw = Gateway::start(
        &config(&eps, "round_robin", "\"http_429\"", 2, "max_fails = 0", ""),
        Driver::IoUring,
    );
    let start = Instant::now();
    let r = get(&gw, "/v1/echo", "x-mock-status: 429\r\nx-mock-retry-after: 1\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: ra\r\n");
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After"
    );
    // Retry-After beyond the budget: the client gets the 429 at once.
    let cfg = config(&eps, "round_robin", "\"http_429\"", 2, "max_fails = 0", "")
        .replace("retry_budget_ms = 5000", "retry_budget_ms = 500");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let r = get(
        &gw,
        "/v1/echo",
        "x-mock-status: 429\r\nx-mock-retry-after: 30\r\n",
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("30"),
        "the provider's answer is passed on"
    );
}

#[test]
fn balancers_spread_requests_over_endpoints() {
    let mocks: Vec<MockProvider> = (0..3)
        .map(|_| MockProvider::start("127.0.0.1:0").expect("mock"))
        .collect();
    let eps: Vec<String> = mocks.iter().map(|m| m.addr().to_string()).collect();
    for balance in ["round_robin", "least_request", "p2c_ewma"] {
        let before: Vec<usize> = mocks.iter().map(MockProvider::request_count).collect();
        let gw = Gateway::start(&config(&eps, balance, "", 1, "", ""), Driver::IoUring);
        for _ in 0..90 {
            assert_eq!(get(&gw, "/v1/echo", "").status, 200);
        }
        let counts: Vec<usize> = mocks
            .iter()
            .zip(&before)
            .map(|(m, b)| m.request_count() - b)
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 90, "{balance}");
        match balance {
            // One request at a time: nothing is ever in flight, so least_request breaks every
            // tie in turn and spreads like round robin.
            "round_robin" | "least_request" => assert_eq!(counts, vec![30, 30, 30], "{balance}"),
            // Latency-aware: equal endpoints share unevenly, but none is starved for good.
            _ => assert!(
                counts.iter().filter(|&&c| c > 0).count() >= 2,
                "{balance}: {counts:?}"
            ),
        }
    }
}

/// Peak-EWMA against a fast endpoint and one a second slower: once each has been tried
/// (an unmeasured endpoint costs nothing, so each is), the slow one is picked again only if
/// the fast one ever answered slower than a second. Round robin (and least request, one
/// request at a time) would split the requests evenly. A second, not a few milliseconds:
/// on a loaded machine the fast endpoint's answers can take tens of milliseconds, and a
/// peak-EWMA remembers a peak for its 10 s decay.
#[test]
fn p2c_ewma_prefers_the_fast_endpoint() {
    use ringgate_mock::MockOptions;
    let fast = MockProvider::start("127.0.0.1:0").expect("mock");
    let slow = MockProvider::start_with(
        "127.0.0.1:0",
        MockOptions {
            base_delay_ms: 1000,
            ..Default::default()
        },
    )
    .expect("mock");
    let eps = [fast.addr().to_string(), slow.addr().to_string()];
    let cfg = config(&eps, "p2c_ewma", "", 1, "", "")
        .replace("read_timeout_ms = 500", "read_timeout_ms = 10000");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    for _ in 0..30 {
        assert_eq!(get(&gw, "/v1/echo", "").status, 200);
    }
    let (f, s) = (fast.request_count(), slow.request_count());
    assert_eq!(f + s, 30);
    assert!(s <= 3, "fast {f}, slow {s}: round robin would split 15/15");
}

#[test]
fn a_failing_endpoint_is_ejected_and_comes_back() {
    let good = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [good.addr().to_string(), "127.0.0.1:1".to_string()];
    let gw = Gateway::start(
        &config(&eps, "round_robin", "\"error\"", 2, "", ""),
        Driver::IoUring,
    );
    for _ in 0..20 {
        assert_eq!(
            get(&gw, "/v1/echo", "").status,
            200,
            "retried onto the good endpoint"
        );
    }
    // Retries alone would also answer 200 every time, trying the dead endpoint first on
    // every other request (10 retries). Ejected after `max_fails = 2`, it is tried only
    // again each time its (doubling) fail_timeout ends.
    assert!(
        common::gateway::wait_until(Duration::from_secs(10), || gw
            .metric("ringgate_requests_total{route=\"api\",method=\"GET\",status=\"200\"}")
            == Some(20.0)),
        "stats published"
    );
    let retries = gw
        .metric("ringgate_retries_total{route=\"api\",reason=\"error\"}")
        .unwrap_or(0.0);
    assert!(
        (2.0..10.0).contains(&retries),
        "the dead endpoint was ejected: {retries} retries for 20 requests"
    );
    // All endpoints dead: fail fast with 503 once both are ejected, not a hang.
    let gw = Gateway::start(
        &config(
            &["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()],
            "round_robin",
            "\"error\"",
            2,
            "",
            "",
        ),
        Driver::IoUring,
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&gw, "/v1/echo", "").status);
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let r = get(&gw, "/v1/echo", "");
    assert_eq!(r.json()["error"]["code"], "no_healthy_upstream");
    // After fail_timeout they are tried again (and fail again with 502).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        get(&gw, "/v1/echo", "").status,
        502,
        "tried again after the ejection"
    );
}

#[test]
fn provider_quota_floor_sheds_until_reset() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let gw = Gateway::start(
        &config(
            &eps,
            "round_robin",
            "",
            1,
            "shed_below_remaining_requests = 5",
            "",
        ),
        Driver::IoUring,
    );
    let r = get(
        &gw,
        "/v1/echo",
        "x-mock-header: x-ratelimit-remaining-requests=10\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&gw, "/v1/echo", "").status,
        200,
        "above the floor: no shedding"
    );
    // The provider says 2 left, reset in 1s: the gateway sheds instead of letting it reject.
    let r = get(
        &gw,
        "/v1/echo",
        "x-mock-header: x-ratelimit-remaining-requests=2\r\n",
    );
    assert_eq!(r.status, 200);
    let r2 = request(
        gw.addr,
        "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("shed");
    assert_eq!(r2.status, 429, "{}", r2.text());
    assert!(r2.header("retry-after").is_some());
    let before = mock.request_count();
    assert_eq!(get(&gw, "/v1/echo", "").status, 429);
    assert_eq!(
        mock.request_count(),
        before,
        "shed requests never reach the provider"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&gw, "/v1/echo", "").status, 200, "after the reset");
}

#[test]
fn route_concurrency_limit_answers_503_beyond_it() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let gw = Gateway::start(
        &config(&eps, "round_robin", "", 1, "", "max_in_flight = 2"),
        Driver::IoUring,
    );
    // Two streams held open by the mock's gate fill the route: no timing window.
    let mut held: Vec<Conn> = (0..2).map(|_| open_gated_stream(&gw)).collect();
    let r = get(&gw, "/v1/echo", "");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "route_at_capacity");
    mock.release_gate();
    for c in &mut held {
        finish_stream(c);
    }
    assert_eq!(get(&gw, "/v1/echo", "").status, 200, "capacity is back");
}

/// Opens a gated SSE stream through the gateway and reads its head and first event: the
/// stream then stays open (in flight) until the mock's gate is released.
fn open_gated_stream(gw: &Gateway) -> Conn {
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut c = Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-gate: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let (status, _) = c.read_head().expect("stream head");
    assert_eq!(status, 200);
    assert!(c.read_chunk().expect("first event").is_some());
    c
}

/// Reads a stream to its last chunk.
fn finish_stream(c: &mut Conn) {
    for _ in 0..10_000 {
        match c.read_chunk().expect("stream chunk") {
            Some(_) => {}
            None => return,
        }
    }
    panic!("stream did not end");
}

#[test]
fn least_request_counts_a_stream_until_its_body_ends() {
    let mocks = [
        MockProvider::start("127.0.0.1:0").expect("mock"),
        MockProvider::start("127.0.0.1:0").expect("mock"),
    ];
    let eps: Vec<String> = mocks.iter().map(|m| m.addr().to_string()).collect();
    let gw = Gateway::start(
        &config(&eps, "least_request", "", 1, "", ""),
        Driver::IoUring,
    );
    let mut stream = open_gated_stream(&gw);
    let busy = mocks
        .iter()
        .position(|m| m.request_count() == 1)
        .expect("one mock carries the stream");
    let idle = 1 - busy;
    for _ in 0..10 {
        assert_eq!(get(&gw, "/v1/echo", "").status, 200);
    }
    // The stream's head arrived long ago, but its body is still running: every new request
    // goes to the endpoint with nothing in flight (alternating would be 5 and 5).
    assert_eq!(
        mocks[busy].request_count(),
        1,
        "requests sent beside a live stream"
    );
    assert_eq!(mocks[idle].request_count(), 10);
    mocks[busy].release_gate();
    finish_stream(&mut stream);
    drop(stream);
    for _ in 0..10 {
        assert_eq!(get(&gw, "/v1/echo", "").status, 200);
    }
    // Once the stream ended its endpoint counts as idle again: ties alternate.
    assert_eq!(mocks[busy].request_count(), 1 + 5);
    assert_eq!(mocks[idle].request_count(), 10 + 5);
}

/// Waits (bounded) until the gateway has applied config generation `generation`.
fn wait_generation(gw: &Gateway, generation: f64) {
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .metric("ringgate_config_generation")
            == Some(generation)),
        "generation {generation} never applied; log:\n{}",
        gw.logs()
    );
}

#[test]
fn max_in_flight_holds_across_a_reload() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let before = config(&eps, "round_robin", "", 1, "", "max_in_flight = 4");
    let gw = Gateway::start(&before, Driver::IoUring);
    let mut streams: Vec<Conn> = (0..4).map(|_| open_gated_stream(&gw)).collect();
    let r = get(&gw, "/v1/echo", "");
    assert_eq!(r.status, 503, "four streams fill the route: {}", r.text());
    // A reload that changes the route but not its name or limit.
    assert!(gw.project(&before.replace("read_timeout_ms = 500", "read_timeout_ms = 600")));
    wait_generation(&gw, 2.0);
    let r = get(&gw, "/v1/echo", "");
    assert_eq!(
        r.status,
        503,
        "the four streams of the old generation still count: {}",
        r.text()
    );
    mock.release_gate();
    for s in &mut streams {
        finish_stream(s);
    }
    drop(streams);
    assert_eq!(get(&gw, "/v1/echo", "").status, 200, "capacity is back");
}

#[test]
fn provider_shedding_survives_a_reload() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let before = config(
        &eps,
        "round_robin",
        "",
        1,
        "shed_below_remaining_requests = 5",
        "",
    );
    let gw = Gateway::start(&before, Driver::IoUring);
    let r = get(
        &gw,
        "/v1/echo",
        "x-mock-header: x-ratelimit-remaining-requests=0\r\nx-mock-header: x-ratelimit-reset-requests=1m0s\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(&gw, "/v1/echo", "").status, 429, "shed");
    // An unrelated change: the route's timeout (the upstream is the same provider).
    assert!(gw.project(&before.replace("read_timeout_ms = 500", "read_timeout_ms = 600")));
    wait_generation(&gw, 2.0);
    let served = mock.request_count();
    let r = get(&gw, "/v1/echo", "");
    assert_eq!(r.status, 429, "the provider said a minute: {}", r.text());
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((2..=60).contains(&secs), "retry-after {secs}");
    assert_eq!(mock.request_count(), served, "nothing reached the provider");
}

/// A provider answering with an absurd reset must not take the worker down: the shed is
/// capped and the gateway keeps serving.
#[test]
fn a_hostile_reset_header_is_capped() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    // Each value sheds the upstream: one gateway per value.
    for reset in ["99999999999999999999999999999s", "18446744073709551616h"] {
        let gw = Gateway::start(
            &config(
                &eps,
                "round_robin",
                "",
                1,
                "shed_below_remaining_requests = 5",
                "",
            ),
            Driver::IoUring,
        );
        let r = get(
            &gw,
            "/v1/echo",
            &format!("x-mock-header: x-ratelimit-remaining-requests=0\r\nx-mock-header: x-ratelimit-reset-requests={reset}\r\n"),
        );
        assert_eq!(r.status, 200, "{reset}");
        let r = get(&gw, "/v1/echo", "");
        assert_eq!(r.status, 429, "{reset}: shed, worker alive: {}", r.text());
        let secs: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after");
        assert!(
            (3000..=3600).contains(&secs),
            "{reset}: shed capped at an hour, got {secs}"
        );
        let health = request(
            gw.addr,
            "GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("health");
        assert_eq!(health.status, 200);
    }
}

/// `ringgate_requests_in_flight` counts a stream until its body ends: the gauge to scale on.
#[test]
fn the_in_flight_gauge_counts_streams_until_they_end() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [mock.addr().to_string()];
    let gw = Gateway::start(&config(&eps, "round_robin", "", 1, "", ""), Driver::IoUring);
    let gauge = || gw.metric("ringgate_requests_in_flight");
    let settled = |want: f64| wait_until(Duration::from_secs(5), || gauge() == Some(want));
    assert!(settled(0.0), "{:?}", gauge());
    let mut streams: Vec<Conn> = (0..3).map(|_| open_gated_stream(&gw)).collect();
    assert!(settled(3.0), "three live streams: {:?}", gauge());
    mock.release_gate();
    for s in &mut streams {
        finish_stream(s);
    }
    assert!(settled(0.0), "all done: {:?}", gauge());
}

/// An ejected endpoint shows in `ringgate_upstream_endpoints_ejected` while it is out (the
/// gauge is sampled once a second, so this test ejects for longer than that).
#[test]
fn ejected_endpoints_are_visible_in_a_gauge() {
    let good = MockProvider::start("127.0.0.1:0").expect("mock");
    let eps = [good.addr().to_string(), "127.0.0.1:1".to_string()];
    let cfg = config(&eps, "round_robin", "\"error\"", 2, "", "")
        .replace("fail_timeout_ms = 400", "fail_timeout_ms = 10000");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let gauge = || gw.metric("ringgate_upstream_endpoints_ejected{upstream=\"pool\"}");
    assert!(
        common::gateway::wait_until(Duration::from_secs(5), || gauge() == Some(0.0)),
        "nothing ejected yet: {:?}",
        gauge()
    );
    for _ in 0..6 {
        assert_eq!(get(&gw, "/v1/echo", "").status, 200);
    }
    assert!(
        common::gateway::wait_until(Duration::from_secs(5), || gauge() == Some(1.0)),
        "the dead endpoint is not in the gauge: {:?}",
        gauge()
    );
}
