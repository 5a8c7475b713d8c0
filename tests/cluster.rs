//! Cluster-scoped limits against a real Redis (Debian's `redis-server`, started here on an
//! ephemeral loopback port with no persistence): three gateway processes sharing one limit
//! admit what one gateway would (GCRA: `burst + 1 + floor(elapsed × rate)`, ± 1), token
//! budgets hold across them, a killed Redis falls back to the per-pod share and resumes
//! when it is back, and a store that never answers opens the breaker.
//!
//! Without `redis-server` these tests fail, unless `RINGGATE_SKIP_REDIS_TESTS=1` says to
//! skip them (loudly). `.ci/run` installs it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{free_port, request, temp_dir, Driver, Gateway, Response};
use ringgate_mock::MockProvider;
use sha2::{Digest, Sha256};

/// A private `redis-server` on a loopback port: no RDB, no AOF, its own temp dir.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    password: Option<String>,
}

impl Redis {
    /// Starts one, or returns None (after saying so) when `redis-server` is absent and
    /// `RINGGATE_SKIP_REDIS_TESTS=1` allows skipping.
    fn start(password: Option<&str>) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            if std::env::var("RINGGATE_SKIP_REDIS_TESTS").as_deref() == Ok("1") {
                eprintln!("\n!!! SKIPPED: redis-server is not installed (RINGGATE_SKIP_REDIS_TESTS=1) !!!\n");
                return None;
            }
            panic!("redis-server is not installed: `apt-get install -y redis-server` (or set RINGGATE_SKIP_REDIS_TESTS=1 to skip)");
        }
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: temp_dir("redis"),
            password: password.map(str::to_string),
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.cmd(&["PING"]).is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to the gateways).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command's raw reply (None when it cannot connect or answer).
    fn cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut wire = Vec::new();
        let mut push = |args: &[&str]| {
            wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                wire.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        };
        if let Some(p) = &self.password {
            push(&["AUTH", p]);
        }
        push(args);
        s.write_all(&wire).ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let want_lines = if self.password.is_some() { 2 } else { 1 };
        while out.iter().filter(|&&b| b == b'\n').count() < want_lines {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        Some(match self.password {
            Some(_) => text.split_once("\r\n").map(|x| x.1.to_string())?,
            None => text,
        })
    }

    fn dbsize(&self) -> i64 {
        self.cmd(&["DBSIZE"])
            .and_then(|r| r.trim().strip_prefix(':').and_then(|n| n.parse().ok()))
            .unwrap_or(-1)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(mock: &MockProvider, redis_url: &str, cluster: &str, limit: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}"

[cluster]
redis_url = "{redis_url}"
{cluster}

[limits.main]
key = "header:x-user"
scope = "cluster"
{limit}

[[routes]]
name = "limited"
prefix = "/v1/"
upstream = "mock"
limit = "main"
"#,
        mock = mock.addr()
    )
}

fn get(addr: SocketAddr, user: &str) -> Response {
    request(
        addr,
        &format!(
            "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-user: {user}\r\nconnection: close\r\n\r\n"
        ),
    )
    .expect("request answered")
}

/// `burst + 1 + floor(window × rate)`: what GCRA admits of back-to-back requests.
fn expected(rate: f64, burst: u32, window: Duration) -> usize {
    burst as usize + 1 + (window.as_secs_f64() * rate).floor() as usize
}

/// Waits (bounded) until every worker of `gw` is connected to the store.
fn wait_store_up(gw: &Gateway) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if gw.metric("ringgate_cluster_store_up") == Some(1.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the gateway never connected to the store:\n{}", gw.logs());
}

/// The deciding clock's window over a run of requests, bounded from the client's side: each
/// decision falls between its request's send and its answer.
#[derive(Debug)]
struct Window {
    /// First answer received to last request sent.
    inner: Duration,
    /// First request sent to last answer received.
    outer: Duration,
}

impl Window {
    /// What GCRA admits over this window: at most the formula over `outer`; at least the
    /// formula over `inner`, less one (the last slot may open just after the last request).
    fn admits(&self, rate: f64, burst: u32) -> std::ops::RangeInclusive<usize> {
        expected(rate, burst, self.inner).saturating_sub(1)..=expected(rate, burst, self.outer)
    }
}

/// Sends `n` requests for `user` round robin over `addrs`, `gap` apart; returns (admitted,
/// window, slowest answer). Anything but 200 and 429 fails the test.
fn spread(addrs: &[SocketAddr], n: usize, user: &str, gap: Duration) -> (usize, Window, Duration) {
    let start = Instant::now();
    let mut first_answer = None;
    let mut last_send = start;
    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        last_send = t;
        let r = get(addrs[i % addrs.len()], user);
        first_answer.get_or_insert_with(Instant::now);
        slowest = slowest.max(t.elapsed());
        match r.status {
            200 => ok += 1,
            429 => {}
            other => panic!("request {i}: unexpected {other}: {}", r.text()),
        }
    }
    let inner = last_send.saturating_duration_since(first_answer.unwrap_or(start));
    let window = Window {
        inner,
        outer: start.elapsed(),
    };
    (ok, window, slowest)
}

#[test]
fn three_gateways_share_one_request_limit() {
    let Some(redis) = Redis::start(Some("s3cret-redis-pw")) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let pw_dir = temp_dir("redis-pw");
    std::fs::write(pw_dir.join("password"), "s3cret-redis-pw\n").expect("password file");
    let cluster = format!(
        "password_file = \"{}/password\"\ntimeout_ms = 500",
        pw_dir.display()
    );
    let cfg = config(
        &mock,
        &redis.url(),
        &cluster,
        "rate_per_second = 5\nburst = 10",
    );
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&cfg, Driver::IoUring))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    let (ok, window, slowest) = spread(&addrs, 45, "alice", Duration::from_millis(30));
    let want = window.admits(5.0, 10);
    eprintln!("three gateways: admitted {ok} of 45, GCRA for one gateway says {want:?} over {window:?} (slowest answer {slowest:?})");
    assert!(
        want.contains(&ok),
        "admitted {ok} across three gateways, one gateway would admit {want:?} over {window:?}"
    );
    let (sum, count) = (
        gws[0]
            .metric("ringgate_cluster_call_duration_seconds_sum")
            .unwrap_or(0.0),
        gws[0]
            .metric("ringgate_cluster_call_duration_seconds_count")
            .unwrap_or(0.0),
    );
    eprintln!(
        "store call latency (debug build, loopback): mean {:.0} µs over {count} calls",
        sum / count.max(1.0) * 1e6
    );
    // Each gateway decided in the store, none fell back.
    for gw in &gws {
        assert_eq!(
            gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
            Some(0.0)
        );
        assert!(
            gw.metric("ringgate_cluster_calls_total{result=\"ok\"}")
                .unwrap_or(0.0)
                >= 1.0
        );
        let logs = gw.logs();
        assert!(
            !logs.contains("s3cret-redis-pw"),
            "the password is never logged"
        );
    }
    // Keys in Redis are hashed: neither the header value nor the limit name in clear.
    let keys = redis.cmd(&["KEYS", "*"]).expect("KEYS");
    assert!(keys.contains("rg:{"), "{keys}");
    assert!(!keys.contains("alice") && !keys.contains("main"), "{keys}");
    // A refused key is refused locally until its retry time: another burst right away
    // is answered 429 without more store refusals than one per worker.
    let refused_before: f64 = gws
        .iter()
        .map(|g| {
            g.metric("ringgate_cluster_refusals_total{source=\"store\"}")
                .unwrap_or(0.0)
        })
        .sum();
    // Time passes on a loaded machine (rate 5/s): spend what refilled, then the next one
    // is refused, and the one after it without asking the store.
    // A slot may open between the two (a refusal's retry time is anything up to 200 ms),
    // so a few pairs are tried, bounded.
    let mut pair = None;
    for _ in 0..20 {
        let mut r = get(addrs[0], "alice");
        for _ in 0..20 {
            if r.status == 429 {
                break;
            }
            r = get(addrs[0], "alice");
        }
        let r2 = get(addrs[0], "alice");
        if (r.status, r2.status) == (429, 429) {
            pair = Some(r);
            break;
        }
    }
    let r = pair.expect("never two refusals in a row");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
    let local: f64 = gws
        .iter()
        .map(|g| {
            g.metric("ringgate_cluster_refusals_total{source=\"local_cache\"}")
                .unwrap_or(0.0)
        })
        .sum();
    let refused_after: f64 = gws
        .iter()
        .map(|g| {
            g.metric("ringgate_cluster_refusals_total{source=\"store\"}")
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        local >= 1.0,
        "a refused key is refused again without a round trip (store refusals {refused_before} -> {refused_after})"
    );
    // The cluster families pass promtool (when it is installed; CI installs it).
    let text = gws[0].admin_get("/metrics").text();
    assert!(text.contains("ringgate_cluster_call_duration_seconds_bucket{le=\"+Inf\"}"));
    if let Some((ok, msg)) = common::gateway::promtool_check_metrics(&text) {
        assert!(ok && msg.trim().is_empty(), "promtool:\n{msg}");
    }
    let _ = std::fs::remove_dir_all(pw_dir);
}

#[test]
fn redis_killed_mid_test_falls_back_to_the_per_pod_share_and_resumes() {
    let Some(mut redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let cfg = config(
        &mock,
        &redis.url(),
        "timeout_ms = 500\non_unavailable = \"local\"\nreplicas = 2\nbreaker_open_ms = 500",
        "rate_per_second = 4\nburst = 8",
    );
    let gw = Gateway::start(&cfg, Driver::Epoll);
    wait_store_up(&gw);
    let (ok, window, _) = spread(&[gw.addr], 20, "u1", Duration::ZERO);
    assert!(
        window.admits(4.0, 8).contains(&ok),
        "cluster: {ok} over {window:?}"
    );
    assert!(redis.dbsize() >= 1, "state is in Redis");

    redis.kill();
    // Every request is still answered, by the local limiter at rate 4/2 and burst 8/2.
    let (ok, window, slowest) = spread(&[gw.addr], 30, "u2", Duration::from_millis(20));
    let want = window.admits(2.0, 4);
    eprintln!("redis down: admitted {ok} of 30, per-pod share says {want:?} over {window:?}; slowest answer {slowest:?}");
    assert!(
        want.contains(&ok),
        "fallback admitted {ok}, the per-pod share is {want:?}"
    );
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
        Some(30.0),
        "every request of the outage went to the fallback"
    );
    assert_eq!(gw.metric("ringgate_cluster_store_up"), Some(0.0));
    assert_eq!(
        gw.admin_get("/ready").status,
        200,
        "the gateway still serves"
    );

    // Back, empty: cluster limits resume (the state of the outage is not carried over).
    redis.spawn();
    wait_store_up(&gw);
    assert_eq!(redis.dbsize(), 0);
    let (ok, _, _) = spread(&[gw.addr], 3, "u3", Duration::ZERO);
    assert_eq!(ok, 3);
    assert_eq!(redis.dbsize(), 1, "u3's bucket is in the restarted Redis");
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
        Some(30.0),
        "no fallback once the store is back"
    );
}

#[test]
fn deny_answers_503_while_the_store_is_unavailable() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    // Nothing listens there: every connection attempt is refused.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let cfg = config(
        &mock,
        &url,
        "timeout_ms = 200\non_unavailable = \"deny\"",
        "rate_per_second = 100\nburst = 100",
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    for _ in 0..3 {
        let r = get(gw.addr, "bob");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "cluster_store_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"deny\"}"),
        Some(3.0)
    );
    assert_eq!(gw.admin_get("/ready").status, 200);
    // A route without a cluster limit is not affected: `/health` is answered by the gateway.
    let r = request(
        gw.addr,
        "GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("health");
    assert_eq!(r.status, 200);
}

/// A "Redis" that answers the handshake (`SCRIPT LOAD`) and then never answers again.
fn silent_store() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let start = Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(120)
        {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    // Read the SCRIPT LOAD (ends with the script's last line), answer it.
                    while !String::from_utf8_lossy(&got)
                        .contains("return {1, 0, math.ceil(wait), 0}")
                    {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(b"$40\r\n0123456789012345678901234567890123456789\r\n");
                    held.push(s); // never answered again, never closed
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (addr, stop)
}

#[test]
fn a_store_that_never_answers_costs_a_bounded_wait_then_opens_the_breaker() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let (addr, stop) = silent_store();
    let cfg = config(
        &mock,
        &format!("redis://{addr}"),
        "timeout_ms = 150\nbreaker_failures = 3\nbreaker_open_ms = 60000\nreplicas = 1",
        "rate_per_second = 100\nburst = 100",
    )
    .replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    wait_store_up(&gw);
    // Sequential requests: the first ones wait for the call's timeout, then fall back.
    let mut sent = 0;
    let mut slowest = Duration::ZERO;
    while gw
        .metric("ringgate_cluster_breaker_opens_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(sent < 100, "the breaker never opened:\n{}", gw.logs());
        let t = Instant::now();
        let r = get(gw.addr, "carol");
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.status, 200, "answered by the fallback: {}", r.text());
        sent += 1;
        if gw.metric("ringgate_cluster_store_up") == Some(0.0) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "breaker opened after {sent} requests; slowest answer {slowest:?} (timeout_ms = 150)"
    );
    assert!(
        gw.metric("ringgate_cluster_calls_total{result=\"timeout\"}")
            .unwrap_or(0.0)
            >= 3.0,
        "three consecutive timeouts open it"
    );
    assert_eq!(gw.metric("ringgate_cluster_breakers_open"), Some(1.0));
    // Open: no call is tried, every request goes straight to the fallback.
    let timeouts = gw.metric("ringgate_cluster_calls_total{result=\"timeout\"}");
    for _ in 0..5 {
        assert_eq!(get(gw.addr, "carol").status, 200);
    }
    assert_eq!(
        gw.metric("ringgate_cluster_calls_total{result=\"timeout\"}"),
        timeouts,
        "no call waits while the breaker is open"
    );
    assert!(
        gw.metric("ringgate_cluster_calls_total{result=\"breaker_open\"}")
            .unwrap_or(0.0)
            >= 5.0
    );
    assert_eq!(gw.admin_get("/ready").status, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn three_gateways_share_one_token_budget_with_streams() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = temp_dir("cluster-keys");
    std::fs::write(
        keys.join("keys"),
        format!("team-t {}\n", sha_hex("sk-team-t")),
    )
    .expect("keys");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"

[models."gpt-4.1"]
upstream = "mock"

[cluster]
redis_url = "{url}"
timeout_ms = 500

[auth]
keys_file = "{keys}/keys"
tokens_per_minute = 600
scope = "cluster"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
"#,
        mock = mock.addr(),
        url = redis.url(),
        keys = keys.display()
    );
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&cfg, Driver::IoUring))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    let chat = |addr: SocketAddr, stream: bool| {
        let body = format!(
            r#"{{"model":"gpt-4.1","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        request(
            addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-team-t\r\n\
                 x-mock-chunks: 10\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .expect("chat answered")
    };
    // One plain answer tells how many tokens each request uses.
    let start = Instant::now();
    let first = chat(gws[0].addr, false);
    assert_eq!(first.status, 200, "{}", first.text());
    let used = first.json()["usage"]["total_tokens"]
        .as_u64()
        .expect("usage");
    let mut ok: usize = 1;
    for i in 0..60 {
        let r = chat(gws[i % 3].addr, true);
        match r.status {
            200 => ok += 1,
            429 => assert_eq!(r.json()["error"]["type"], "tokens"),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let window = start.elapsed();
    // One gateway's budget: admitted while the debt is within a minute's worth (600
    // tokens), the rate paying 10 tokens a second off: floor((600 + 10·W) / used) + 1.
    let want = ((600.0 + 10.0 * window.as_secs_f64()) / used as f64).floor() as usize + 1;
    eprintln!("token budget across three gateways: admitted {ok} of 61 ({used} tokens each), one gateway would admit {want} over {window:?}");
    assert!(
        ok.abs_diff(want) <= 1,
        "admitted {ok}, one gateway's budget admits {want} over {window:?}"
    );
    let settled: f64 = gws
        .iter()
        .map(|g| {
            g.metric("ringgate_cluster_token_settlements_total{result=\"ok\"}")
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        settled >= (ok - 1) as f64,
        "every admitted request settled: {settled}"
    );
    let _ = std::fs::remove_dir_all(keys);
}

#[test]
fn a_reloaded_cluster_limit_applies_at_once_and_keeps_its_state() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let slow = |burst: u32| {
        config(
            &mock,
            &redis.url(),
            "timeout_ms = 500",
            &format!("rate_per_second = 0.001\nburst = {burst}"),
        )
    };
    let gw = Gateway::start(&slow(1), Driver::IoUring);
    wait_store_up(&gw);
    let statuses = |n: usize| -> Vec<u16> { (0..n).map(|_| get(gw.addr, "dave").status).collect() };
    assert_eq!(statuses(3), vec![200, 200, 429]);
    let generation = gw.metric("ringgate_config_generation").unwrap_or(0.0);
    assert!(gw.project(&slow(4)), "new config projected");
    let start = Instant::now();
    while gw.metric("ringgate_config_generation").unwrap_or(0.0) <= generation {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload never applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The bucket in Redis kept its two requests; the larger burst admits three more (the
    // worker's memory of "dave" refused for ~1000 s was for the old parameters).
    assert_eq!(statuses(4), vec![200, 200, 200, 429]);
}
