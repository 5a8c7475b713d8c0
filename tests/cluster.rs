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
    /// A second, TLS-only port (`--tls-port`), its certificate signed by `dir/ca.pem`.
    tls_port: Option<u16>,
    /// More `redis-server` arguments (a Redis Cluster node's).
    extra: Vec<String>,
}

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 (`server.pem`,
/// `server.key`), written into `dir`.
fn write_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("server.pem"), leaf.pem()).expect("server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
}

impl Redis {
    /// Starts one, or returns None (after saying so) when `redis-server` is absent and
    /// `RINGGATE_SKIP_REDIS_TESTS=1` allows skipping.
    fn start(password: Option<&str>) -> Option<Redis> {
        Redis::start_with(password, false)
    }

    /// A Redis Cluster node (not yet part of a cluster): its bus on a port of its own.
    fn start_cluster_node() -> Option<Redis> {
        let mut r = Redis::start(None)?;
        r.kill();
        // Ports are picked free and then released (redis-server cannot report a port it
        // chose): a parallel test may take one meanwhile, so a failed start tries new ones.
        for _ in 0..3 {
            r.port = free_port();
            r.extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &free_port().to_string(),
                "--cluster-node-timeout",
                "5000",
            ]
            .map(String::from)
            .to_vec();
            if r.try_spawn() {
                return Some(r);
            }
        }
        panic!(
            "redis-server (cluster node) did not start:\n{}",
            r.log_tail()
        );
    }

    /// Keys in this node's database.
    fn keys(&self) -> String {
        self.cmd(&["KEYS", "rg:*"]).expect("KEYS")
    }

    /// As [`Redis::start`]; with `tls`, also a TLS port whose certificate a fresh CA
    /// (`ca_path()`) signed.
    fn start_with(password: Option<&str>, tls: bool) -> Option<Redis> {
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
            tls_port: None,
            extra: Vec::new(),
        };
        if tls {
            write_pki(&r.dir);
        }
        // As for cluster nodes: a port taken between its pick and the start gets new ones.
        for _ in 0..3 {
            if tls {
                r.tls_port = Some(free_port());
            }
            if r.try_spawn() {
                return Some(r);
            }
            r.port = free_port();
        }
        panic!("redis-server did not start:\n{}", r.log_tail());
    }

    /// Restarts it on the same ports (after [`Redis::kill`]).
    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server did not answer PING on port {}:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// The end of its log file.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts redis-server on its ports; false (the process stopped) when it does not
    /// answer PING within 10 s.
    fn try_spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.extra);
        if let Some(tls_port) = self.tls_port {
            let f = |name: &str| self.dir.join(name);
            cmd.args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(f("server.pem"))
                .arg("--tls-key-file")
                .arg(f("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(f("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            // Ours answering, not another test's server on a port it took first.
            let pid = self.child.as_ref().map_or(0, Child::id);
            if self.served_by(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port's URL (a TLS-only port: a plain client gets nothing from it).
    fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("started with tls")
        )
    }

    /// The CA that signed the TLS port's certificate.
    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Kills it (SIGKILL: no goodbye to the gateways).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server on its port is the process `pid` (`INFO server` says which).
    fn served_by(&self, pid: u32) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut wire = String::new();
        if let Some(p) = &self.password {
            wire.push_str(&format!("AUTH {p}\r\n"));
        }
        wire.push_str("INFO server\r\n");
        if s.write_all(wire.as_bytes()).is_err() {
            return false;
        }
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while out.len() < 64 * 1024 {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => return false,
            }
            let text = String::from_utf8_lossy(&out);
            if let Some(rest) = text.split("process_id:").nth(1) {
                if let Some((id, _)) = rest.split_once("\r\n") {
                    return id == pid.to_string();
                }
            }
        }
        false
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
    // Metrics are published once a second: wait (bounded) for the local refusal to show.
    let local_refusals = || -> f64 {
        gws.iter()
            .map(|g| {
                g.metric("ringgate_cluster_refusals_total{source=\"local_cache\"}")
                    .unwrap_or(0.0)
            })
            .sum()
    };
    common::gateway::wait_until(Duration::from_secs(5), || local_refusals() >= 1.0);
    let local = local_refusals();
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
                    // Read the SCRIPT LOAD (ends with the script's end), answer it.
                    let script = ringgate::cluster::limits::SCRIPT.trim_end();
                    let tail = &script[script.len() - 40..];
                    while !String::from_utf8_lossy(&got).contains(tail) {
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

/// Three gateways with a model-routed chat route, `[auth]` (client `team-t`, key
/// `sk-team-t`; `auth` holds more `[auth]` keys) and `[cluster]` (`cluster` more of it).
fn ai_config(
    mock: &MockProvider,
    redis: &Redis,
    keys: &std::path::Path,
    cluster: &str,
    auth: &str,
) -> String {
    format!(
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
prompt_usd_per_mtok = 1000.0
completion_usd_per_mtok = 1000.0

[cluster]
redis_url = "{url}"
timeout_ms = 500
{cluster}

[limits.per-client]
rate_per_second = 0.01
burst = 5
key = "client"
scope = "cluster"

[auth]
keys_file = "{keys}/keys"
scope = "cluster"
{auth}

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
"#,
        mock = mock.addr(),
        url = redis.url(),
        keys = keys.display()
    )
}

fn chat(addr: SocketAddr, key: &str, stream: bool) -> Response {
    let body = format!(
        r#"{{"model":"gpt-4.1","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    request(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\n\
             x-mock-chunks: 10\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("chat answered")
}

fn keys_dir(clients: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir("cluster-keys");
    let lines: String = clients
        .iter()
        .map(|(name, key)| format!("{name} {}\n", sha_hex(key)))
        .collect();
    std::fs::write(dir.join("keys"), lines).expect("keys");
    dir
}

/// A client's daily spend budget holds across three gateways, with streamed answers: each
/// request reserves its estimate at admission and settles with its real cost, and the
/// client is stopped at its dollar limit ± one request, with OpenAI's `insufficient_quota`.
#[test]
fn three_gateways_share_one_spend_budget_with_streams() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = keys_dir(&[("team-t", "sk-team-t")]);
    // No request limit in the way: a generous one for this client.
    let cfg = ai_config(&mock, &redis, &keys, "", "budget_usd_per_day = 0.2").replace(
        "rate_per_second = 0.01\nburst = 5",
        "rate_per_second = 100\nburst = 100",
    );
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&cfg, Driver::IoUring))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    // One plain answer tells what a request costs: its tokens at $1000 per million.
    let first = chat(gws[0].addr, "sk-team-t", false);
    assert_eq!(first.status, 200, "{}", first.text());
    let used = first.json()["usage"]["total_tokens"]
        .as_u64()
        .expect("usage");
    let cost = used as f64 * 1e-3;
    let mut ok: usize = 1;
    let mut refusal = None;
    for i in 0..30 {
        let r = chat(gws[i % 3].addr, "sk-team-t", true);
        match r.status {
            200 => {
                assert!(r.text().contains("data: [DONE]"), "{}", r.text());
                ok += 1;
            }
            429 => refusal = Some(r),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    // Admitted while the spend is below the budget: ceil(budget / cost) requests.
    let want = (0.2 / cost).ceil() as usize;
    eprintln!("spend budget across three gateways: admitted {ok} of 31 at ${cost:.3} each, the budget admits {want}");
    assert!(
        ok.abs_diff(want) <= 1,
        "admitted {ok}, a $0.20 budget at ${cost:.3} a request admits {want}"
    );
    let r = refusal.expect("the budget refused");
    let e = &r.json()["error"];
    assert_eq!(e["type"], "insufficient_quota", "{}", r.text());
    assert_eq!(e["code"], "insufficient_quota");
    assert!(e["message"].as_str().unwrap_or("").contains("team-t"));
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=86_400).contains(&ra), "until the UTC day ends: {ra}");
    // The spend in Redis, under a hashed key: every admitted request, settled at its real
    // cost, in micro-dollars. Settles are off the request path: wait (bounded) for them.
    let expect_spent = ok as f64 * cost;
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / 86_400;
    let key = ringgate::cluster::limits::redis_key(&format!("spend:day:{day}"), b"team-t");
    let in_redis = || -> i64 {
        redis
            .cmd(&["GET", &key])
            .and_then(|r| r.lines().nth(1).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(-1)
    };
    let want_micros = (expect_spent * 1e6).round() as i64;
    let start = Instant::now();
    while in_redis() != want_micros {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spend in Redis {} never reached {want_micros}",
            in_redis()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ttl: i64 = redis
        .cmd(&["PTTL", &key])
        .and_then(|r| r.trim().strip_prefix(':').and_then(|v| v.parse().ok()))
        .unwrap_or(-1);
    assert!(
        (3_600_000..=90_000_000).contains(&ttl),
        "the key expires an hour after the day ends: {ttl}"
    );
    let keys_now = redis.cmd(&["KEYS", "rg:*"]).expect("KEYS");
    assert!(!keys_now.contains("team-t"), "{keys_now}");
    // The pod whose store call came last (the last settlement, or a refusal after it)
    // shows the store's figure at /budgets and in its metrics.
    let spent_of = |gw: &Gateway| -> f64 {
        let b = gw.admin_get("/budgets").json();
        b["budgets"][0]["spent_usd"].as_f64().unwrap_or(-1.0)
    };
    let mut last = None;
    while last.is_none() {
        last = gws
            .iter()
            .find(|gw| (spent_of(gw) - expect_spent).abs() <= 1e-6);
        assert!(
            start.elapsed() < Duration::from_secs(10) || last.is_some(),
            "spend at /budgets {:?} never reached {expect_spent}",
            gws.iter().map(spent_of).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = last.expect("a pod with the store's figure");
    let b = last.admin_get("/budgets").json();
    let row = &b["budgets"][0];
    assert_eq!(row["client"], "team-t");
    assert_eq!(row["window"], "day");
    assert_eq!(row["scope"], "cluster");
    assert_eq!(row["budget_usd"], 0.2);
    assert!(
        row["resets_at"]
            .as_str()
            .unwrap_or("")
            .ends_with("T00:00:00.000Z"),
        "{row}"
    );
    assert!(expect_spent <= 0.2 + cost + 1e-9);
    let metric = last
        .metric("ringgate_client_spend_usd{client=\"team-t\",window=\"day\"}")
        .expect("spend gauge");
    assert!(
        (metric - expect_spent).abs() < 1e-6,
        "{metric} vs {expect_spent}"
    );
    assert_eq!(
        last.metric("ringgate_client_budget_usd{client=\"team-t\",window=\"day\"}"),
        Some(0.2)
    );
    let _ = std::fs::remove_dir_all(keys);
}

/// `x-ratelimit-*` on the 200s of a cluster limit come from the store: the remaining count
/// falls request by request across three gateways (each pod alone would say 5, 5, 5 ...),
/// and the token budget's headers come along.
#[test]
fn rate_headers_on_every_response_come_from_the_cluster_state() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = keys_dir(&[("team-t", "sk-team-t")]);
    let cfg = ai_config(
        &mock,
        &redis,
        &keys,
        "",
        "limit = \"per-client\"\ntokens_per_minute = 100000",
    );
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&cfg, Driver::IoUring))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    let mut remaining = Vec::new();
    let mut tokens_left = Vec::new();
    for i in 0..6 {
        let r = chat(gws[i % 3].addr, "sk-team-t", i % 2 == 1);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("6"), "{r:?}");
        remaining.push(
            r.header("x-ratelimit-remaining-requests")
                .and_then(|v| v.parse::<u64>().ok())
                .expect("remaining"),
        );
        let reset = r.header("x-ratelimit-reset-requests").expect("reset");
        assert!(reset.ends_with('s') && reset != "0s", "{reset}");
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
        tokens_left.push(
            r.header("x-ratelimit-remaining-tokens")
                .and_then(|v| v.parse::<u64>().ok())
                .expect("tokens"),
        );
    }
    assert_eq!(
        remaining,
        vec![5, 4, 3, 2, 1, 0],
        "one bucket across the pods"
    );
    // Each answer reports the budget after its own reservation (the estimate: max_tokens
    // 10 + the body at 4 bytes a token, about 34), whatever refilled in between: the
    // refill rate (1667 tokens a second) makes the order of the values timing-dependent.
    assert!(
        tokens_left.iter().all(|&t| t <= 100_000 - 30),
        "tokens after each reservation: {tokens_left:?}"
    );
    let r = chat(gws[0].addr, "sk-team-t", false);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let _ = std::fs::remove_dir_all(keys);
}

/// With `on_unavailable = "deny"`, a client with a spend budget is refused while Redis is
/// down (no pod can know what it spent), and served again when it is back.
#[test]
fn spend_budgets_deny_while_the_store_is_down_with_deny() {
    let Some(mut redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = keys_dir(&[("team-t", "sk-team-t")]);
    let cfg = ai_config(
        &mock,
        &redis,
        &keys,
        "on_unavailable = \"deny\"\nbreaker_open_ms = 100",
        "budget_usd_per_month = 100",
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    wait_store_up(&gw);
    assert_eq!(chat(gw.addr, "sk-team-t", true).status, 200);
    redis.kill();
    let r = chat(gw.addr, "sk-team-t", true);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "cluster_store_unavailable");
    redis.spawn();
    let start = Instant::now();
    loop {
        let r = chat(gw.addr, "sk-team-t", true);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never served again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(keys);
}

/// The official `openai` SDK across two gateways sharing one Redis: it reads the
/// `x-ratelimit-*` headers of every answer (one falling count across both pods), gets
/// `RateLimitError` with `Retry-After` once the cluster-wide limit is spent, and
/// `RateLimitError` with code `insufficient_quota` once a spend budget is, without
/// retrying it.
#[test]
fn the_openai_sdk_sees_cluster_limits_and_spend_budgets_across_pods() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = keys_dir(&[("limited", "sk-limited"), ("spender", "sk-spender")]);
    let cfg = ai_config(
        &mock,
        &redis,
        &keys,
        "",
        "limit = \"per-client\"\n[auth.clients.spender]\nlimit = \"roomy\"\nbudget_usd_per_day = 0.1",
    )
    .replace("burst = 5", "burst = 3")
        + "\n[limits.roomy]\nrate_per_second = 100\nburst = 100\nkey = \"client\"\n";
    let gws: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start(&cfg, Driver::IoUring))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_cluster.py");
    let out = Command::new("python3")
        .arg(script)
        .args(gws.iter().map(|g| format!("http://{}/v1", g.addr)))
        .output()
        .expect("python3 runs (install the SDK with `pip install openai`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stderr}\ngateway logs:\n{}\n{}",
        gws[0].logs(),
        gws[1].logs()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json line");
    eprintln!("the SDK saw: {seen}");
    let headers = seen["limited_headers"].as_array().expect("headers").clone();
    let remaining: Vec<&str> = headers
        .iter()
        .map(|h| h["remaining"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(remaining, vec!["3", "2", "1", "0"], "{seen}");
    assert!(headers.iter().all(|h| h["limit"] == "4"), "{seen}");
    assert!(
        headers
            .iter()
            .all(|h| h["reset"].as_str().is_some_and(|r| r.ends_with('s'))),
        "{seen}"
    );
    assert_eq!(seen["limited_error"], "RateLimitError", "{seen}");
    assert_eq!(seen["limited_status"], 429);
    assert_eq!(seen["limited_code"], "rate_limit_exceeded");
    assert!(
        seen["limited_retry_after"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{seen}"
    );
    assert_eq!(seen["spend_error"], "RateLimitError", "{seen}");
    assert_eq!(seen["spend_code"], "insufficient_quota");
    assert_eq!(seen["spend_type"], "insufficient_quota");
    // Each streamed answer costs 17 tokens at $1000/M: $0.1 admits ceil(0.1 / 0.017) = 6.
    let admitted = seen["spend_admitted"].as_u64().unwrap_or(0);
    assert!(admitted.abs_diff(6) <= 1, "{seen}");
    // The SDK did not retry the refusal (x-should-retry: false): one 429 for the spender in
    // the access logs of both pods (the script has ended: any retry would be logged).
    let refusals = || -> usize {
        gws.iter()
            .map(|g| {
                g.logs()
                    .lines()
                    .filter(|l| {
                        l.contains("ringgate::access")
                            && l.contains("status=429")
                            && l.contains("spender")
                    })
                    .count()
            })
            .sum()
    };
    let start = Instant::now();
    while refusals() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "refusal never logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        refusals(),
        1,
        "the SDK retried an insufficient_quota refusal"
    );
    let _ = std::fs::remove_dir_all(keys);
}

/// With `on_unavailable = "local"` (the default), a cluster spend budget falls back to the
/// pod's share while Redis is down: the budget divided by `replicas`, counted in the pod.
#[test]
fn spend_budgets_fall_back_to_the_pods_share_while_the_store_is_down() {
    let Some(mut redis) = Redis::start(None) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = keys_dir(&[("team-t", "sk-team-t")]);
    let cfg = ai_config(
        &mock,
        &redis,
        &keys,
        "replicas = 2\nbreaker_open_ms = 60000",
        "budget_usd_per_day = 0.2",
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    wait_store_up(&gw);
    let first = chat(gw.addr, "sk-team-t", false);
    assert_eq!(first.status, 200, "{}", first.text());
    let cost = first.json()["usage"]["total_tokens"]
        .as_u64()
        .expect("usage") as f64
        * 1e-3;
    redis.kill();
    let mut ok: usize = 0;
    for _ in 0..20 {
        match chat(gw.addr, "sk-team-t", true) {
            r if r.status == 200 => ok += 1,
            r => {
                assert_eq!(r.status, 429, "{}", r.text());
                assert_eq!(r.json()["error"]["code"], "insufficient_quota");
            }
        }
    }
    // The pod's share: $0.10, counted from zero in the pod.
    let want = (0.1 / cost).ceil() as usize;
    eprintln!("spend fallback: admitted {ok} with Redis down, the pod's share admits {want}");
    assert!(ok.abs_diff(want) <= 1, "admitted {ok}, want {want}");
    assert!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    let _ = std::fs::remove_dir_all(keys);
}
#[test]
fn rediss_with_a_private_ca_shares_limits_and_a_wrong_ca_falls_back_without_hanging() {
    let Some(redis) = Redis::start_with(None, true) else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let cluster = format!(
        "ca_file = \"{}\"\ntimeout_ms = 500",
        redis.ca_path().display()
    );
    let cfg = config(
        &mock,
        &redis.tls_url(),
        &cluster,
        "rate_per_second = 5\nburst = 10",
    );
    let gws: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start(&cfg, Driver::Epoll))
        .collect();
    for gw in &gws {
        wait_store_up(gw);
    }
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    let (ok, window, _) = spread(&addrs, 30, "tls-user", Duration::from_millis(20));
    let want = window.admits(5.0, 10);
    eprintln!("two gateways over rediss://: admitted {ok} of 30, one gateway would admit {want:?} over {window:?}");
    assert!(want.contains(&ok), "admitted {ok}, want {want:?}");
    for gw in &gws {
        assert_eq!(
            gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
            Some(0.0),
            "decided in the store, over TLS"
        );
    }
    assert_eq!(redis.dbsize(), 1, "the bucket is in Redis");

    // A CA that did not sign the server's certificate: the handshake fails, the store is
    // down, requests are answered by the local fallback within the timeout.
    let other = temp_dir("redis-other-ca");
    write_pki(&other);
    let cluster = format!(
        "ca_file = \"{}\"\ntimeout_ms = 200\nreplicas = 1",
        other.join("ca.pem").display()
    );
    let cfg = config(
        &mock,
        &redis.tls_url(),
        &cluster,
        "rate_per_second = 5\nburst = 10",
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    assert!(
        common::gateway::wait_until(Duration::from_secs(20), || {
            gw.metric("ringgate_cluster_connects_total{result=\"failed\"}")
                .unwrap_or(0.0)
                >= 1.0
        }),
        "a failed TLS connect is counted:\n{}",
        gw.logs()
    );
    let (ok, window, _) = spread(&[gw.addr], 15, "tls-user-2", Duration::ZERO);
    assert!(
        window.admits(5.0, 10).contains(&ok),
        "the local fallback admitted {ok}"
    );
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
        Some(15.0)
    );
    assert_eq!(gw.metric("ringgate_cluster_store_up"), Some(0.0));
    let logs = gw.logs();
    assert!(logs.contains("TLS"), "the log says why:\n{logs}");
    let _ = std::fs::remove_dir_all(other);
}

#[test]
fn an_acl_user_from_the_url_authenticates_and_a_rotated_password_file_is_used_on_reconnect() {
    let Some(redis) = Redis::start(Some("admin-pw")) else {
        return;
    };
    let acl = redis
        .cmd(&["ACL", "SETUSER", "gw", "on", ">first-pw", "~rg:*", "+@all"])
        .expect("ACL SETUSER");
    assert!(acl.starts_with("+OK"), "{acl}");
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let pw_dir = temp_dir("redis-acl-pw");
    let pw_file = pw_dir.join("password");
    std::fs::write(&pw_file, "first-pw\n").expect("password file");
    let url = redis.url().replace("redis://", "redis://gw@");
    let cluster = format!(
        "password_file = \"{}\"\ntimeout_ms = 500\nbreaker_open_ms = 200",
        pw_file.display()
    );
    let cfg = config(&mock, &url, &cluster, "rate_per_second = 1\nburst = 2");
    let gw = Gateway::start(&cfg, Driver::Epoll);
    wait_store_up(&gw);
    let clients = redis.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    assert!(clients.contains("user=gw"), "connected as gw: {clients}");
    let (ok, _, _) = spread(&[gw.addr], 5, "acl", Duration::ZERO);
    assert_eq!(ok, 3, "burst 2 + 1, decided in Redis");
    assert_eq!(redis.dbsize(), 1);

    // The password changes in Redis and the gateway's connections are cut: reconnecting
    // with the old password fails (the store is down, the fallback answers)...
    let r = redis
        .cmd(&["ACL", "SETUSER", "gw", "resetpass", ">second-pw"])
        .expect("ACL SETUSER");
    assert!(r.starts_with("+OK"), "{r}");
    let r = redis
        .cmd(&["CLIENT", "KILL", "USER", "gw"])
        .expect("CLIENT KILL");
    assert!(r.starts_with(':'), "{r}");
    assert!(
        common::gateway::wait_until(Duration::from_secs(20), || {
            gw.metric("ringgate_cluster_store_up") == Some(0.0)
                && gw
                    .metric("ringgate_cluster_connects_total{result=\"failed\"}")
                    .unwrap_or(0.0)
                    >= 1.0
        }),
        "the old password is refused:\n{}",
        gw.logs()
    );
    assert_eq!(
        get(gw.addr, "acl-2").status,
        200,
        "answered by the fallback"
    );
    // ...until the Secret is rotated: the file is re-read and the next reconnect uses it.
    let tmp = pw_dir.join(".password.tmp");
    std::fs::write(&tmp, "second-pw\n").expect("write");
    std::fs::rename(&tmp, &pw_file).expect("rename");
    wait_store_up(&gw);
    let clients = redis.cmd(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    assert!(clients.contains("user=gw"), "{clients}");
    let before = redis.dbsize();
    assert_eq!(get(gw.addr, "acl-3").status, 200);
    assert_eq!(redis.dbsize(), before + 1, "decided in Redis again");
    let logs = gw.logs();
    assert!(logs.contains("WRONGPASS"), "the refusal is logged:\n{logs}");
    for pw in ["first-pw", "second-pw", "admin-pw"] {
        assert!(!logs.contains(pw), "a password is never logged");
    }
    let _ = std::fs::remove_dir_all(pw_dir);
}

/// Three masters (no replicas) made a Redis Cluster by `redis-cli --cluster create`, all on
/// loopback; returns once every node says `cluster_state:ok`.
fn redis_cluster() -> Option<Vec<Redis>> {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| Redis::start_cluster_node())
        .collect::<Option<_>>()?;
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for n in &nodes {
        create.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs (Debian's redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli --cluster create:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::gateway::wait_until(Duration::from_secs(30), || nodes.iter().all(|n| n
            .cmd(&["CLUSTER", "INFO"])
            .is_some_and(|i| i.contains("cluster_state:ok")))),
        "the cluster never became ok"
    );
    Some(nodes)
}

/// Waits (bounded) until the published `name` reaches `want` (metrics are published once
/// a second).
fn wait_metric(gw: &Gateway, name: &str, want: f64) {
    assert!(
        common::gateway::wait_until(Duration::from_secs(10), || gw.metric(name).unwrap_or(0.0)
            >= want),
        "{name} never reached {want}: {:?}",
        gw.metric(name)
    );
}

/// Which node holds `rg:*` keys whose count changed: the node of the one key a request added.
fn node_of_new_key(nodes: &[Redis], before: &[i64]) -> usize {
    let after: Vec<i64> = nodes.iter().map(Redis::dbsize).collect();
    let grew: Vec<usize> = (0..nodes.len()).filter(|&i| after[i] > before[i]).collect();
    assert_eq!(
        grew.len(),
        1,
        "one node got the key: {before:?} -> {after:?}"
    );
    grew[0]
}

#[test]
fn redis_cluster_moved_is_followed_and_remembered_and_ask_is_followed_once() {
    let Some(nodes) = redis_cluster() else {
        return;
    };
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let cfg = config(
        &mock,
        &nodes[0].url(),
        "timeout_ms = 1000",
        "rate_per_second = 0.001\nburst = 2",
    )
    .replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    wait_store_up(&gw);
    // Twelve users' buckets spread over the three masters' slots; each is admitted burst + 1
    // times wherever its slot lives, then refused.
    let users = 12;
    for u in 0..users {
        let (ok, _, _) = spread(&[gw.addr], 4, &format!("user-{u}"), Duration::ZERO);
        assert_eq!(ok, 3, "user-{u}: burst 2 + 1 in the cluster");
    }
    let sizes: Vec<i64> = nodes.iter().map(Redis::dbsize).collect();
    eprintln!("keys per master: {sizes:?}");
    assert_eq!(
        sizes.iter().sum::<i64>(),
        users,
        "one bucket per user, in the cluster"
    );
    assert!(
        sizes.iter().filter(|&&n| n > 0).count() >= 2,
        "the buckets are spread over the masters: {sizes:?}"
    );
    // Metrics are published once a second: wait for the 48 calls (36 admitted, 12 refused).
    wait_metric(&gw, "ringgate_cluster_calls_total{result=\"ok\"}", 48.0);
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
        Some(0.0),
        "every request was decided in the cluster"
    );
    let moved = gw
        .metric("ringgate_cluster_redirects_total{kind=\"moved\"}")
        .unwrap_or(0.0);
    let elsewhere = (users - sizes[0]) as f64;
    // Four requests per user: without remembering the slot each of them would be
    // redirected; remembered, a user whose slot is elsewhere costs one MOVED.
    assert!(
        moved >= 1.0 && moved <= elsewhere,
        "{moved} MOVED for {elsewhere} users whose slot is on another master"
    );

    // ASK: the slot of a new user's bucket is being migrated to another master, and the
    // bucket is not on the source any more: the source answers ASK, the call follows it.
    let before: Vec<i64> = nodes.iter().map(Redis::dbsize).collect();
    let keys_before: Vec<String> = nodes.iter().map(Redis::keys).collect();
    assert_eq!(get(gw.addr, "asker").status, 200);
    wait_metric(&gw, "ringgate_cluster_calls_total{result=\"ok\"}", 49.0);
    let src = node_of_new_key(&nodes, &before);
    let keys = nodes[src].keys();
    let key = keys
        .lines()
        .find(|l| l.starts_with("rg:") && !keys_before[src].contains(l))
        .expect("the new key")
        .to_string();
    let slot = nodes[src]
        .cmd(&["CLUSTER", "KEYSLOT", &key])
        .expect("KEYSLOT")
        .trim()
        .trim_start_matches(':')
        .to_string();
    let dst = (src + 1) % nodes.len();
    let id = |n: &Redis| {
        let r = n.cmd(&["CLUSTER", "MYID"]).expect("MYID");
        r.lines().nth(1).expect("id").to_string()
    };
    let (src_id, dst_id) = (id(&nodes[src]), id(&nodes[dst]));
    for (node, args) in [
        (dst, ["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]),
        (src, ["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]),
    ] {
        let r = nodes[node].cmd(&args).expect("SETSLOT");
        assert!(r.starts_with("+OK"), "{args:?}: {r}");
    }
    assert!(nodes[src]
        .cmd(&["DEL", &key])
        .expect("DEL")
        .starts_with(":1"));
    let asks = |gw: &Gateway| {
        gw.metric("ringgate_cluster_redirects_total{kind=\"ask\"}")
            .unwrap_or(0.0)
    };
    assert_eq!(asks(&gw), 0.0);
    let r = get(gw.addr, "asker");
    assert_eq!(
        r.status,
        200,
        "a fresh bucket on the importing node: {}",
        r.text()
    );
    wait_metric(&gw, "ringgate_cluster_calls_total{result=\"ok\"}", 50.0);
    assert_eq!(asks(&gw), 1.0);
    assert!(
        nodes[dst].keys().contains(&key),
        "the bucket is on the importing node"
    );
    assert_eq!(get(gw.addr, "asker").status, 200);
    wait_metric(&gw, "ringgate_cluster_calls_total{result=\"ok\"}", 51.0);
    assert_eq!(
        asks(&gw),
        2.0,
        "ASK is not remembered: the slot is still the source's"
    );
    // The bucket on the importing node was fresh (the source's was deleted): burst 2 + 1.
    assert_eq!(get(gw.addr, "asker").status, 200);
    assert_eq!(
        get(gw.addr, "asker").status,
        429,
        "burst 2 + 1, counted on the importing node"
    );
    assert_eq!(
        gw.metric("ringgate_cluster_fallbacks_total{mode=\"local\"}"),
        Some(0.0)
    );
}

/// A "Redis" that answers the handshake, then answers the first call with a reply that
/// never completes (an array of 1024 bulk strings of which it sends only 1023, 64 KiB each);
/// says whether the gateway closed the connection before the 64 MiB were all written.
fn flooding_store() -> (SocketAddr, std::sync::mpsc::Receiver<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        let script = ringgate::cluster::limits::SCRIPT.trim_end();
        let tail = &script[script.len() - 40..];
        while !String::from_utf8_lossy(&got).contains(tail) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"$40\r\n0123456789012345678901234567890123456789\r\n");
        // The flood answers the first call (bytes sent with the handshake's reply would be
        // read as part of the handshake).
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        let bulk = [b"$65536\r\n".as_slice(), &[b'x'; 65536], b"\r\n"].concat();
        let mut closed = s.write_all(b"*1024\r\n").is_err();
        for _ in 0..1023 {
            if closed {
                break;
            }
            closed = s.write_all(&bulk).is_err();
        }
        let _ = tx.send(closed);
    });
    (addr, rx)
}

#[test]
fn a_store_streaming_a_reply_without_end_is_cut_off() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let (addr, closed) = flooding_store();
    let cfg = config(
        &mock,
        &format!("redis://{addr}"),
        "timeout_ms = 20000\nreplicas = 1",
        "rate_per_second = 100\nburst = 100",
    )
    .replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&cfg, Driver::IoUring);
    wait_store_up(&gw);
    // The call waits far longer than the flood takes: only a bound on the reply ends it.
    let addr = gw.addr;
    let call = std::thread::spawn(move || get(addr, "carol").status);
    let closed = closed
        .recv_timeout(Duration::from_secs(60))
        .expect("the store finished writing or was cut off");
    assert!(
        closed,
        "the gateway read 64 MiB of one unfinished reply into its buffer:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("reply too large"), "{}", gw.logs());
    assert_eq!(
        call.join().expect("request"),
        200,
        "the request went on by the local fallback"
    );
}
