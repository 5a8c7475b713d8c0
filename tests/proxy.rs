//! The proxy core end to end: the real `ringgate` binary between a real client socket and
//! the mock provider, each case under both I/O drivers (io_uring and epoll).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::{request, Conn, Driver, Gateway, DRIVERS};
use ringgate_mock::{MockOptions, MockProvider};

fn config(mock: &MockProvider, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2
max_header_bytes = 8192
max_request_line_bytes = 2048
max_body_bytes = 1048576
header_read_timeout_ms = 1500
trusted_proxies = ["127.0.0.2"]

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"
keepalive = 8

[upstreams.dead]
url = "http://127.0.0.1:1"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
upstream = "mock"
read_timeout_ms = 5000

[[routes]]
name = "slow"
prefix = "/slow/"
rewrite = "/"
upstream = "mock"
read_timeout_ms = 300

[[routes]]
name = "dead"
prefix = "/dead/"
upstream = "dead"

[[routes]]
name = "models"
exact = "/v1/models"
methods = ["GET", "HEAD"]
rewrite = "/models"
upstream = "mock"

[[routes]]
name = "fallback"
prefix = "/v1/"
rewrite = "/"
upstream = "mock"
{extra}
"#,
        mock = mock.addr()
    )
}

const CHAT: &str = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn post(path: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn each_driver(f: impl Fn(Driver)) {
    for d in DRIVERS {
        f(d);
    }
}

#[test]
fn chat_is_forwarded_with_rewritten_path_and_forwarding_headers() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let r = request(
            gw.addr,
            &post(
                "/v1/chat/completions?x=1",
                CHAT,
                "x-forwarded-for: 6.6.6.6\r\nconnection: close\r\n",
            ),
        )
        .expect("request");
        assert_eq!(r.status, 200, "{d:?}: {}", r.text());
        assert_eq!(r.json()["object"], "chat.completion", "{d:?}");
        let rid = r
            .header("x-request-id")
            .expect("x-request-id on the response")
            .to_string();
        let seen = mock.requests();
        let last = seen.last().expect("upstream saw the request");
        assert_eq!(last.path, "/v1/chat/completions?x=1", "{d:?}");
        assert_eq!(last.header("host"), Some(mock.addr().to_string().as_str()));
        assert_eq!(last.header("x-request-id"), Some(rid.as_str()));
        assert_eq!(
            last.header("x-real-ip"),
            Some("127.0.0.1"),
            "an untrusted peer's X-Forwarded-For is not believed"
        );
        assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            last.header("connection"),
            None,
            "hop-by-hop headers are stripped"
        );
        assert_eq!(last.body_len, CHAT.len() as u64);
    });
}

#[test]
fn client_request_id_is_kept_and_trusted_proxy_xff_is_believed() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let cfg = config(&mock, "").replace(
        "trusted_proxies = [\"127.0.0.2\"]",
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let r = request(
        gw.addr,
        &post(
            "/v1/chat/completions",
            CHAT,
            "x-request-id: abc-123\r\nx-forwarded-for: 203.0.113.7\r\nconnection: close\r\n",
        ),
    )
    .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let last = mock.requests().pop().expect("request");
    assert_eq!(last.header("x-request-id"), Some("abc-123"));
    assert_eq!(last.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(
        last.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
}

#[test]
fn sse_chunks_reach_the_client_before_the_upstream_sends_the_next() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let mut c = Conn::connect(gw.addr);
        c.send(post("/v1/chat/completions", CHAT_STREAM, "x-mock-gate: 1\r\n").as_bytes())
            .expect("send");
        let (status, headers) = c.read_head().expect("head");
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")));
        // The mock holds every event after the first until the gate opens: if the gateway
        // buffered, this read would time out.
        let first = c.read_chunk().expect("first chunk").expect("data");
        assert!(
            String::from_utf8_lossy(&first).starts_with("data: "),
            "{d:?}"
        );
        mock.release_gate();
        let mut rest = Vec::new();
        while let Some(chunk) = c.read_chunk().expect("chunk") {
            rest.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&rest);
        assert!(text.trim_end().ends_with("data: [DONE]"), "{d:?}: {text}");
    });
}

#[test]
fn keepalive_and_pipelining_reuse_one_upstream_connection() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let cfg = config(&mock, "").replace("workers = 2", "workers = 1");
        let gw = Gateway::start(&cfg, d);
        let mut c = Conn::connect(gw.addr);
        for _ in 0..3 {
            c.send(post("/v1/chat/completions", CHAT, "").as_bytes())
                .expect("send");
            let r = c.read_response(false).expect("response");
            assert_eq!(r.status, 200);
        }
        // Three pipelined requests in one write come back in order.
        let mut batch = Vec::new();
        for i in 0..3 {
            batch.extend_from_slice(
                format!("GET /v1/echo?i={i} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes(),
            );
        }
        c.send(&batch).expect("send");
        for i in 0..3 {
            let r = c.read_response(false).expect("pipelined response");
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["path"], format!("/v1/echo?i={i}"), "{d:?}");
        }
        assert_eq!(
            mock.connections_accepted(),
            1,
            "{d:?}: one pooled upstream connection served all"
        );
    });
}

#[test]
fn health_and_no_route() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let r = request(
            gw.addr,
            "GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("health");
        assert_eq!((r.status, r.text().as_str()), (200, "OK"));
        let r = request(
            gw.addr,
            "GET /nope HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("404");
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["code"], "route_not_found", "{}", r.text());
        assert!(r.json()["error"]["message"].is_string());
        assert!(r.json()["error"]["type"].is_string());
        assert!(r.header("x-request-id").is_some());
        let r = request(gw.addr, "POST /v1/models HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").expect("method");
        // POST /v1/models is not the models route (GET/HEAD only) but the /v1/ fallback,
        // which keeps the path under the upstream's /v1; the mock answers it with 405.
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(
            mock.requests().last().map(|r| r.path.clone()),
            Some("/v1/models".to_string())
        );
    });
}

/// Malformed and oversize requests: each gets its status, the connection is closed, the
/// upstream never sees them, and the worker keeps serving.
#[test]
fn hardening_list() {
    let long_line = format!("GET /v1/{} HTTP/1.1\r\nhost: gw\r\n\r\n", "a".repeat(3000));
    let big_headers = format!(
        "GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("CL and TE", "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("two CLs", "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".into(), 400),
        ("TE not chunked", "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip\r\n\r\n".into(), 400),
        ("space before colon", "GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-a : b\r\n\r\n".into(), 400),
        ("obs-fold", "GET /v1/models HTTP/1.1\r\nhost: gw\r\nx-a: b\r\n c\r\n\r\n".into(), 400),
        ("bad request line", "GARBAGE\r\n\r\n".into(), 400),
        ("no host", "GET /v1/models HTTP/1.1\r\n\r\n".into(), 400),
        ("request line too long", long_line, 414),
        ("headers too large", big_headers, 431),
        ("body too large", "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 2000000\r\n\r\n".into(), 413),
        ("bad chunk size", "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(), 400),
        ("escaped dot segments", "GET /v1/%2e%2e/admin HTTP/1.1\r\nhost: gw\r\n\r\n".into(), 400),
    ];
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        for (name, raw, want) in &cases {
            let mut c = Conn::connect(gw.addr);
            c.send(raw.as_bytes()).expect("send");
            let r = c
                .read_response(false)
                .unwrap_or_else(|e| panic!("{d:?} {name}: no response: {e}"));
            assert_eq!(r.status, *want, "{d:?} {name}: {}", r.text());
            assert!(
                r.json()["error"]["message"].is_string(),
                "{d:?} {name}: OpenAI error shape"
            );
            assert_eq!(r.header("connection"), Some("close"), "{d:?} {name}");
            // The gateway closes the connection after a rejected request (a read timeout
            // is an error here, not a close).
            let rest = c
                .read_to_close()
                .unwrap_or_else(|e| panic!("{d:?} {name}: the connection stays open: {e}"));
            assert!(rest.is_empty(), "{d:?} {name}: nothing after the error");
        }
        assert!(
            mock.requests().iter().all(|r| !r.path.contains("admin")),
            "{d:?}"
        );
        let r = request(
            gw.addr,
            "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("still serving");
        assert_eq!(r.status, 200);
    });
}

#[test]
fn slowloris_is_cut_at_header_read_timeout() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let start = Instant::now();
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n")
            .expect("partial head");
        let mut c = Conn::new(s);
        // Keep dribbling a byte at a time; the gateway must cut us anyway.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if c.stream.write_all(b"x").is_err() {
                break;
            }
        }
        let rest = c
            .read_to_close()
            .expect("the gateway closes the slow connection");
        let rest = String::from_utf8_lossy(&rest).into_owned();
        assert!(rest.starts_with("HTTP/1.1 408"), "{d:?}: {rest}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{d:?}: cut by the deadline, not the client timeout"
        );
    });
}

/// Idle keep-alive connections are closed at `idle_timeout_ms` — one that never sent a
/// byte and one after its request — while the worker keeps their deadlines in its idle
/// list (no timer, no buffer of their own), and pipelined requests on a kept-alive
/// connection are still answered in order, the second read from the socket after waiting
/// for readability.
#[test]
fn idle_keepalive_connections_are_closed_at_the_idle_timeout() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let cfg = config(&mock, "").replace(
            "header_read_timeout_ms = 1500",
            "header_read_timeout_ms = 1500\nidle_timeout_ms = 300",
        );
        let gw = Gateway::start(&cfg, d);
        let mut silent = Conn::connect(gw.addr);
        let mut used = Conn::connect(gw.addr);
        used.send(
            b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\nGET /health HTTP/1.1\r\nhost: gw\r\n\r\n",
        )
        .expect("send");
        for _ in 0..2 {
            let r = used.read_response(false).expect("pipelined answer");
            assert_eq!((r.status, r.text().as_str()), (200, "OK"), "{d:?}");
        }
        // Both are closed by the gateway (a 10 s read timeout would be an error here).
        for (name, c) in [("silent", &mut silent), ("used", &mut used)] {
            let rest = c
                .read_to_close()
                .unwrap_or_else(|e| panic!("{d:?}: {name} connection not closed: {e}"));
            assert!(rest.is_empty(), "{d:?}: {name}: {rest:?}");
        }
        // And the worker still serves.
        let r = request(
            gw.addr,
            "GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("health");
        assert_eq!(r.status, 200, "{d:?}");
    });
}

#[test]
fn upstream_failures_map_to_502_and_504() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let r = request(
            gw.addr,
            "GET /dead/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("dead");
        assert_eq!(r.status, 502, "{d:?}");
        assert_eq!(r.json()["error"]["type"], "upstream_error");
        let r = request(gw.addr, "GET /slow/echo HTTP/1.1\r\nhost: gw\r\nx-mock-delay-ms: 2000\r\nconnection: close\r\n\r\n").expect("slow");
        assert_eq!(r.status, 504, "{d:?}");
        let r = request(
            gw.addr,
            "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-mock-garbage: 1\r\nconnection: close\r\n\r\n",
        )
        .expect("garbage");
        assert_eq!(r.status, 502, "{d:?}");
        let r = request(gw.addr, "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-mock-drop: before-response\r\nconnection: close\r\n\r\n").expect("drop");
        assert_eq!(r.status, 502, "{d:?}");
        // An upstream that dies mid-body: the client sees a cut stream, never a clean end.
        let mut c = Conn::connect(gw.addr);
        c.send(
            post(
                "/v1/chat/completions",
                CHAT_STREAM,
                "x-mock-drop: mid-body\r\n",
            )
            .as_bytes(),
        )
        .expect("send");
        let (status, _) = c.read_head().expect("head");
        assert_eq!(status, 200);
        // Bounded: the mock sends a few events before it drops.
        let end = (0..10_000)
            .map(|_| c.read_chunk())
            .find(|r| !matches!(r, Ok(Some(_))));
        // A cut is the connection closing (or reset) before the last chunk; a clean end or
        // a read timeout (the gateway holding the connection open) is not.
        match end {
            Some(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) => {}
            other => panic!("{d:?}: a truncated upstream body must be cut, got {other:?}"),
        }
        // The worker still serves.
        let r = request(
            gw.addr,
            "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("after");
        assert_eq!(r.status, 200);
    });
}

#[test]
fn stale_pooled_connection_is_never_used_for_a_failing_request() {
    each_driver(|d| {
        let mock = MockProvider::start_with(
            "127.0.0.1:0",
            MockOptions {
                idle_close_ms: Some(100),
                ..Default::default()
            },
        )
        .expect("mock");
        let cfg = config(&mock, "").replace("workers = 2", "workers = 1");
        let gw = Gateway::start(&cfg, d);
        let chat = || {
            request(
                gw.addr,
                &post("/v1/chat/completions", CHAT, "connection: close\r\n"),
            )
            .expect("request")
        };
        // Back to back: the second request reuses the pooled connection (pooling is on, so
        // what follows tests the liveness check, not a pool that never hands one out).
        for i in 0..2 {
            assert_eq!(chat().status, 200, "{d:?} request {i}");
        }
        assert_eq!(mock.connections_accepted(), 1, "{d:?}: pooled");
        for i in 0..3 {
            // Past the mock's 100 ms idle close: the pooled connection is dead by now.
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(chat().status, 200, "{d:?} request after idle {i}");
            assert_eq!(
                mock.connections_accepted(),
                2 + i,
                "{d:?}: each request after the upstream's idle close needed a new connection"
            );
        }
        // Nothing was sent on a dead connection: every request reached the mock once.
        assert_eq!(mock.request_count(), 5, "{d:?}");
    });
}

#[test]
fn head_204_304_1xx_and_close_delimited_responses() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let mut c = Conn::connect(gw.addr);
        c.send(b"HEAD /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
            .expect("send");
        let r = c.read_response(true).expect("head");
        assert_eq!(r.status, 200);
        for status in [204u16, 304] {
            c.send(
                format!("GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-mock-status: {status}\r\n\r\n")
                    .as_bytes(),
            )
            .expect("send");
            let r = c.read_response(false).expect("response");
            assert_eq!(r.status, status, "{d:?}");
            assert!(r.body.is_empty());
        }
        c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-mock-early-100: 1\r\n\r\n")
            .expect("send");
        let r = c.read_response(false).expect("after 100");
        assert_eq!(r.status, 200, "{d:?}: the interim 100 is skipped");
        // Close-delimited upstream body re-framed as chunked: the client connection survives.
        c.send(b"GET /v1/download?bytes=100000&framing=close HTTP/1.1\r\nhost: gw\r\n\r\n")
            .expect("send");
        let r = c.read_response(false).expect("download");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 100_000, "{d:?}");
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
        c.send(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
            .expect("send");
        assert_eq!(
            c.read_response(false).expect("still open").status,
            200,
            "{d:?}"
        );
    });
}

#[test]
fn chunked_request_bodies_and_expect_continue() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock, ""), d);
        let mut c = Conn::connect(gw.addr);
        c.send(b"POST /v1/upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n").expect("send");
        let r = c.read_response(false).expect("upload");
        assert_eq!(r.status, 200, "{d:?}: {}", r.text());
        assert_eq!(r.json()["bytes"], 11);
        c.send(b"POST /v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n").expect("send");
        let (status, _) = c.read_head().expect("100");
        assert_eq!(status, 100, "{d:?}");
        c.send(b"hello").expect("body");
        let r = c.read_response(false).expect("upload");
        assert_eq!(r.json()["bytes"], 5, "{d:?}");
    });
}

#[test]
fn api_key_replaces_client_authorization_and_never_reaches_logs() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let dir = common::gateway::temp_dir("key");
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, "sk-upstream-secret-123\n").expect("key");
    let extra = format!(
        "\n[upstreams.keyed]\nurl = \"http://{}\"\napi_key_file = \"{}\"\n\n[[routes]]\nname = \"keyed\"\nprefix = \"/keyed/\"\nrewrite = \"/\"\nupstream = \"keyed\"\n",
        mock.addr(),
        key_file.display()
    );
    let gw = Gateway::start(&config(&mock, &extra), Driver::IoUring);
    let r = request(gw.addr, "GET /keyed/echo HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-client-999\r\nconnection: close\r\n\r\n").expect("keyed");
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.requests()
            .pop()
            .and_then(|r| r.header("authorization").map(String::from)),
        Some("Bearer sk-upstream-secret-123".into())
    );
    let r = request(gw.addr, "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-client-999\r\nconnection: close\r\n\r\n").expect("plain");
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.requests()
            .pop()
            .and_then(|r| r.header("authorization").map(String::from)),
        Some("Bearer sk-client-999".into()),
        "without api_key_file the client's Authorization passes"
    );
    let admin = gw.admin_get("/config").text();
    let logs = gw.logs();
    for secret in ["sk-upstream-secret-123", "sk-client-999"] {
        assert!(!logs.contains(secret), "a key leaked into the logs");
        assert!(!admin.contains(secret), "a key leaked into /config");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_vanishing_mid_stream_leaves_the_worker_serving() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let cfg = config(&mock, "").replace("workers = 2", "workers = 1");
        let gw = Gateway::start(&cfg, d);
        for _ in 0..3 {
            let mut c = Conn::connect(gw.addr);
            c.send(
                post(
                    "/v1/chat/completions",
                    CHAT_STREAM,
                    "x-mock-chunks: 50\r\nx-mock-chunk-interval-ms: 20\r\n",
                )
                .as_bytes(),
            )
            .expect("send");
            let _ = c.read_head().expect("head");
            let _ = c.read_chunk();
            drop(c);
            // Mid-body upload abandoned, too.
            let mut c = Conn::connect(gw.addr);
            c.send(
                b"POST /v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 900000\r\n\r\npartial",
            )
            .expect("send");
            drop(c);
        }
        let r = request(
            gw.addr,
            "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("after");
        assert_eq!(r.status, 200, "{d:?}");
    });
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_gib_each_way_streams_with_bounded_memory() {
    const GIB: u64 = 1 << 30;
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let cfg =
            config(&mock, "").replace("max_body_bytes = 1048576", "max_body_bytes = 2147483648");
        let gw = Gateway::start(&cfg, d);
        // Upload: 1 GiB with Content-Length, written in 256 KiB slices.
        let mut c = Conn::connect(gw.addr);
        c.send(
            format!("POST /v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: {GIB}\r\n\r\n")
                .as_bytes(),
        )
        .expect("head");
        let slice: Vec<u8> = (0..262_144u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0u64;
        while sent < GIB {
            c.stream.write_all(&slice).expect("upload");
            sent += slice.len() as u64;
        }
        let r = c.read_response(false).expect("upload response");
        assert_eq!(r.status, 200, "{d:?}");
        assert_eq!(r.json()["bytes"], GIB, "{d:?}");
        // Download: 1 GiB, counted as it arrives.
        c.send(format!("GET /v1/download?bytes={GIB} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes())
            .expect("send");
        let (status, headers) = c.read_head().expect("head");
        assert_eq!(status, 200);
        assert_eq!(
            headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.as_str()),
            Some(GIB.to_string().as_str())
        );
        let got = c.count_body(GIB).expect("download");
        assert_eq!(got, GIB, "{d:?}");
        let peak = peak_rss_kib(gw.pid());
        assert!(
            peak > 0 && peak < 64 * 1024,
            "{d:?}: peak RSS {peak} KiB for 2 GiB streamed; bodies must not be buffered"
        );
    });
}

/// A drain whose grace period ends with a request still in flight cuts it, says how many
/// it cut, and exits non-zero: an orchestrator can tell it from a clean stop.
#[test]
fn a_drain_that_cuts_requests_exits_non_zero() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let cfg = config(&mock, "").replace(
            "header_read_timeout_ms = 1500",
            "header_read_timeout_ms = 1500\nshutdown_grace_ms = 300",
        );
        let mut gw = Gateway::start(&cfg, d);
        let mut c = Conn::connect(gw.addr);
        c.send(post("/v1/chat/completions", CHAT_STREAM, "x-mock-gate: 1\r\n").as_bytes())
            .expect("send");
        let (status, _) = c.read_head().expect("head");
        assert_eq!(status, 200);
        let _ = c.read_chunk().expect("first");
        gw.terminate();
        assert_eq!(
            gw.wait_exit(Duration::from_secs(10)),
            Some(1),
            "{d:?}: a drain that cut a stream is not a clean stop"
        );
        let logs = gw.logs();
        assert!(
            logs.contains("cut_connections=1"),
            "{d:?}: the log says how many were cut:\n{logs}"
        );
        mock.release_gate();
    });
}

#[test]
fn sigterm_lets_an_inflight_stream_finish_then_exits_zero() {
    each_driver(|d| {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let mut gw = Gateway::start(&config(&mock, ""), d);
        let mut c = Conn::connect(gw.addr);
        c.send(
            post(
                "/v1/chat/completions",
                CHAT_STREAM,
                "x-mock-chunks: 20\r\nx-mock-chunk-interval-ms: 50\r\n",
            )
            .as_bytes(),
        )
        .expect("send");
        let (status, _) = c.read_head().expect("head");
        assert_eq!(status, 200);
        let _ = c.read_chunk().expect("first");
        gw.terminate();
        let mut body = Vec::new();
        while let Some(chunk) = c
            .read_chunk()
            .expect("the stream finishes during the drain")
        {
            body.extend_from_slice(&chunk);
        }
        assert!(String::from_utf8_lossy(&body).contains("[DONE]"), "{d:?}");
        assert_eq!(
            gw.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{d:?}: exit 0 after draining"
        );
        assert!(
            TcpStream::connect(gw.addr).is_err(),
            "{d:?}: no longer accepting"
        );
    });
}
