//! Rate limits end to end, compared with the GCRA formula nginx `limit_req` follows: over a
//! window W of back-to-back requests, `burst + 1 + floor(W × rate)` are admitted. The
//! gateway's window (first decision to last) is not seen by the client, only bounded: it is
//! at most first send to last answer, and at least first answer to last send; the count is
//! checked against the formula at both bounds, so a slow machine widens the check instead of
//! failing it. Other cases use rates slow enough that no scheduling delay reaches a slot.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gateway::{request, wait_until, Conn, Driver, Gateway};
use ringgate_mock::MockProvider;

fn config(mock: &MockProvider, workers: u32, limit: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = {workers}
trusted_proxies = ["127.0.0.1"]

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}"

[limits.main]
{limit}

[[routes]]
name = "limited"
prefix = "/v1/"
upstream = "mock"
limit = "main"

[[routes]]
name = "open"
prefix = "/open/"
upstream = "mock"
"#,
        mock = mock.addr()
    )
}

fn get(gw: &Gateway, headers: &str) -> common::gateway::Response {
    request(
        gw.addr,
        &format!("GET /v1/echo HTTP/1.1\r\nhost: gw\r\n{headers}connection: close\r\n\r\n"),
    )
    .expect("request")
}

/// The gateway's window over a burst, bounded from the client's side.
#[derive(Debug)]
struct Window {
    /// First answer received to last request sent: the gateway decided both within it.
    inner: Duration,
    /// First request sent to last answer received.
    outer: Duration,
}

/// Sends requests back to back (a new connection each, so they spread over workers) for
/// `span` or `n` requests, whichever ends first; returns how many were admitted and the
/// window's bounds.
fn burst(gw: &Gateway, n: usize, span: Duration, headers: &str) -> (usize, Window) {
    let start = Instant::now();
    let mut first_answer = None;
    let mut last_send = start;
    let mut ok = 0;
    for _ in 0..n {
        if start.elapsed() >= span {
            break;
        }
        last_send = Instant::now();
        let r = get(gw, headers);
        first_answer.get_or_insert_with(Instant::now);
        match r.status {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let outer = start.elapsed();
    let inner = last_send.saturating_duration_since(first_answer.unwrap_or(start));
    (ok, Window { inner, outer })
}

fn expected(rate: f64, burst: u32, window: Duration) -> usize {
    burst as usize + 1 + (window.as_secs_f64() * rate).floor() as usize
}

#[test]
fn admitted_count_matches_gcra_across_workers() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    for workers in [1, 2] {
        let gw = Gateway::start(
            &config(
                &mock,
                workers,
                "rate_per_second = 20\nburst = 5\nkey = \"client_ip\"",
            ),
            Driver::IoUring,
        );
        // Long enough for several slots to open at 20/s beyond the burst.
        let (ok, window) = burst(&gw, 2000, Duration::from_millis(600), "");
        eprintln!("workers={workers}: admitted {ok} over {window:?}");
        // GCRA admits at most the formula over the longest window the gateway could have
        // seen; and, requests coming faster than the rate, it fills every slot that opens
        // over the shortest (the last may open just after the last request: one less).
        let most = expected(20.0, 5, window.outer);
        let least = expected(20.0, 5, window.inner) - 1;
        assert!(
            (least..=most).contains(&ok),
            "workers={workers}: admitted {ok}, GCRA says {least}..={most} over {window:?}"
        );
    }
}

#[test]
fn rejection_is_429_in_openai_shape_with_rate_headers() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(
        &config(&mock, 1, "rate_per_second = 0.1\nburst = 2"),
        Driver::Epoll,
    );
    let start = Instant::now();
    let statuses: Vec<u16> = (0..4).map(|_| get(&gw, "").status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let r = get(&gw, "");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {r:?}"));
    // Three admitted at 10 s a slot with a 20 s tolerance: the next slot opens 10 s after
    // the first request, whenever this one came.
    let left = 10.0 - start.elapsed().as_secs_f64();
    assert!(
        ra <= 10 && ra as f64 >= left.floor(),
        "Retry-After {ra}, the slot opens in {left:.3} s"
    );
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(r.header("x-ratelimit-limit-requests").is_some());
    assert!(r
        .header("x-ratelimit-reset-requests")
        .is_some_and(|v| v.ends_with('s')));
    // Another route without the limit is untouched.
    let r = request(
        gw.addr,
        "GET /open/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("open");
    assert_eq!(r.status, 200);
    // Workers publish their statistics once a second.
    let counted = wait_until(Duration::from_secs(10), || {
        gw.metric("ringgate_ratelimit_rejections_total{limit=\"main\"}")
            .is_some_and(|v| v >= 2.0)
    });
    assert!(counted, "rejections counted by limit");
}

/// Seconds of an OpenAI-style reset (`20ms`, `1.5s`, `1m40s`, `1h0m0s`).
fn reset_secs(v: &str) -> f64 {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap_or_else(|_| panic!("reset {v:?}")) / 1000.0;
    }
    let mut total = 0.0;
    let mut num = String::new();
    for c in v.chars() {
        match c {
            'h' | 'm' | 's' => {
                let n: f64 = num.parse().unwrap_or_else(|_| panic!("reset {v:?}"));
                total += n * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                num.clear();
            }
            _ => num.push(c),
        }
    }
    assert!(num.is_empty(), "reset {v:?} ends in a unit");
    total
}

/// OpenAI sends `x-ratelimit-*` on every response, not only on 429: so does a limited route,
/// from the local limiter (the upstream's own headers of those names are replaced).
#[test]
fn every_response_of_a_limited_route_carries_the_rate_headers() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(
        &config(&mock, 2, "rate_per_second = 0.01\nburst = 4"),
        Driver::IoUring,
    );
    let mut remaining = Vec::new();
    let mut resets = Vec::new();
    for _ in 0..5 {
        let r = get(&gw, "x-mock-header: x-ratelimit-remaining-requests=999\r\n");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5"), "{r:?}");
        let all: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-ratelimit-remaining-requests")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(all.len(), 1, "the provider's header is replaced: {all:?}");
        remaining.push(all[0].parse::<u64>().expect("a number"));
        resets.push(reset_secs(
            r.header("x-ratelimit-reset-requests").expect("reset"),
        ));
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    // One request is 100 s of the rate: the bucket is full again 100 s after each one.
    for (i, r) in resets.iter().enumerate() {
        let want = 100.0 * (i + 1) as f64;
        assert!(
            (want - 1.0..=want).contains(r),
            "reset {r} for request {i}: {resets:?}"
        );
    }
    let r = get(&gw, "");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5"));
    // A route without a limit sends none.
    let r = request(
        gw.addr,
        "GET /open/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("open");
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit-requests").is_none(), "{r:?}");
}

#[test]
fn keys_are_the_real_client_ip_api_key_or_header() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    // client_ip: X-Forwarded-For is believed from the trusted 127.0.0.1, so two clients
    // behind it get a bucket each.
    let gw = Gateway::start(
        &config(&mock, 1, "rate_per_second = 0.01\nburst = 1"),
        Driver::IoUring,
    );
    for client in ["198.51.100.1", "198.51.100.2"] {
        let h = format!("x-forwarded-for: {client}\r\n");
        let s: Vec<u16> = (0..3).map(|_| get(&gw, &h).status).collect();
        assert_eq!(s, vec![200, 200, 429], "{client}");
    }
    let gw = Gateway::start(
        &config(
            &mock,
            1,
            "rate_per_second = 0.01\nburst = 1\nkey = \"api_key\"",
        ),
        Driver::IoUring,
    );
    for key in ["sk-a", "sk-b"] {
        let h = format!("authorization: Bearer {key}\r\n");
        let s: Vec<u16> = (0..3).map(|_| get(&gw, &h).status).collect();
        assert_eq!(s, vec![200, 200, 429], "{key}");
    }
    let gw = Gateway::start(
        &config(
            &mock,
            1,
            "rate_per_second = 0.01\nburst = 1\nkey = \"header:x-tenant\"",
        ),
        Driver::IoUring,
    );
    for t in ["t1", "t2"] {
        let h = format!("x-tenant: {t}\r\n");
        let s: Vec<u16> = (0..3).map(|_| get(&gw, &h).status).collect();
        assert_eq!(s, vec![200, 200, 429], "{t}");
    }
}

/// Delay mode: five requests at once (connected first, sent together through a barrier)
/// against rate 2/s, burst 3: four admitted, spaced 500 ms apart, the fifth refused. The
/// fifth is refused only if it comes within one slot (500 ms) of the first; the barrier keeps
/// the five far closer than that.
#[test]
fn without_nodelay_the_burst_waits_to_the_rate() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(
        &config(&mock, 1, "rate_per_second = 2\nburst = 3\nnodelay = false"),
        Driver::IoUring,
    );
    let addr = gw.addr;
    let gate = Arc::new(std::sync::Barrier::new(5));
    let done = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let (gate, done) = (gate.clone(), done.clone());
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr);
                gate.wait();
                c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
                    .expect("send");
                let r = c.read_response(false).expect("response");
                done.lock().expect("lock").push((r.status, start.elapsed()));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut results = done.lock().expect("lock").clone();
    results.sort_by_key(|(_, t)| *t);
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        4,
        "1 + burst admitted: {results:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        1,
        "{results:?}"
    );
    // The admitted ones were spaced to the rate: the last waited three slots (1.5 s) after
    // the first decision, which came after `start`. A lower bound only: load can only add.
    let last_ok = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .max()
        .expect("ok");
    assert!(
        last_ok >= Duration::from_millis(1450),
        "burst requests were delayed, not passed at once: {results:?}"
    );
}

#[test]
fn limit_state_survives_a_reload_that_leaves_the_limit_alone() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let limit = "rate_per_second = 0.01\nburst = 1";
    let gw = Gateway::start(&config(&mock, 1, limit), Driver::IoUring);
    let s: Vec<u16> = (0..3).map(|_| get(&gw, "").status).collect();
    assert_eq!(s, vec![200, 200, 429]);
    // A route changes, the limit does not: the client stays limited.
    gw.project(&config(&mock, 1, limit).replace("prefix = \"/open/\"", "prefix = \"/open2/\""));
    let mut c = Conn::connect(gw.addr);
    let changed = wait_until(Duration::from_secs(20), || {
        gw.metric("ringgate_config_generation") == Some(2.0)
    });
    assert!(changed);
    c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\n\r\n")
        .expect("send");
    assert_eq!(c.read_response(false).expect("r").status, 429, "state kept");
    // The limit itself changes: a fresh limiter admits again.
    gw.project(&config(&mock, 1, "rate_per_second = 0.01\nburst = 2"));
    let changed = wait_until(Duration::from_secs(20), || {
        gw.metric("ringgate_config_generation") == Some(3.0)
    });
    assert!(changed);
    assert_eq!(get(&gw, "").status, 200, "a changed limit starts afresh");
}
