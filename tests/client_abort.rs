//! A client that leaves stops the spend: when the client closes while the gateway waits on a
//! slow upstream — for the response head, between stream events, after the head of a stream
//! — the upstream connection is closed promptly (the provider stops generating), and the
//! request is recorded as 499. A response that breaks after its head went out is counted as
//! truncated, and one that breaks before any byte reached the client is a 502.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{wait_until, Conn, Driver, Gateway};

/// What the slow upstream does after reading a request head.
#[derive(Clone, Copy, Debug)]
enum Upstream {
    /// Sends nothing (a long time to first token, or a slow non-streaming answer).
    Silent,
    /// Sends an SSE head and one event, then pauses.
    StreamThenPause,
    /// Sends an SSE head and one event, then closes (a provider that died midway).
    StreamThenDie,
    /// Sends a head and a malformed first chunk in one write, then closes.
    MalformedFirstChunk,
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
/// One SSE event as one chunk (27 bytes of payload).
const EVENT: &[u8] = b"1b\r\ndata: {\"choices\":[\"tok\"]}\n\n\r\n";

/// A one-connection upstream. The channel reports how long after the request arrived the
/// gateway closed the connection (None: still open after `patience`).
fn slow_upstream(
    mode: Upstream,
    patience: Duration,
) -> (SocketAddr, mpsc::Receiver<Option<Duration>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let arrived = Instant::now();
        match mode {
            Upstream::Silent => {}
            Upstream::StreamThenPause => {
                let _ = s.write_all(SSE_HEAD);
                let _ = s.write_all(EVENT);
            }
            Upstream::StreamThenDie => {
                let _ = s.write_all(SSE_HEAD);
                let _ = s.write_all(EVENT);
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
            Upstream::MalformedFirstChunk => {
                let mut all = SSE_HEAD.to_vec();
                all.extend_from_slice(b"zz\r\nnot hex\r\n");
                let _ = s.write_all(&all);
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
        }
        s.set_read_timeout(Some(patience)).expect("timeout");
        let mut sink = [0u8; 1024];
        let closed = loop {
            match s.read(&mut sink) {
                Ok(0) => break Some(arrived.elapsed()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    break Some(arrived.elapsed())
                }
                Err(_) => break None,
            }
        };
        let _ = tx.send(closed);
    });
    (addr, rx)
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.slow]
url = "http://{upstream}"

[[routes]]
name = "chat"
prefix = "/v1/"
upstream = "slow"
read_timeout_ms = 30000
"#
    )
}

fn send_request(gw: &Gateway) -> Conn {
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let mut c = Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    c
}

/// The metric `name{...labels...}` summed over every sample whose labels contain `needle`.
fn metric_with(gw: &Gateway, name: &str, needle: &str) -> f64 {
    gw.admin_get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_departed_client_closes_the_upstream() {
    // The upstream would wait 10 s for the gateway to close; a gateway that only notices at
    // its next write to the client never closes it in that time.
    let patience = Duration::from_secs(10);
    for driver in [Driver::IoUring, Driver::Epoll] {
        for (mode, how) in [
            (Upstream::Silent, "close"),
            (Upstream::Silent, "reset"),
            (Upstream::StreamThenPause, "close"),
            (Upstream::Silent, "half-close"),
        ] {
            let (addr, closed) = slow_upstream(mode, patience);
            let gw = Gateway::start(&config(addr), driver);
            let mut c = send_request(&gw);
            if matches!(mode, Upstream::StreamThenPause) {
                let (status, _) = c.read_head().expect("stream head");
                assert_eq!(status, 200);
                assert!(c.read_chunk().expect("first event").is_some());
            } else {
                thread::sleep(Duration::from_millis(200));
            }
            let left = Instant::now();
            match how {
                "reset" => {
                    socket2::SockRef::from(&c.stream)
                        .set_linger(Some(Duration::ZERO))
                        .expect("linger");
                    drop(c);
                }
                "half-close" => c.stream.shutdown(Shutdown::Write).expect("half-close"),
                _ => drop(c),
            }
            let after = closed
                .recv_timeout(patience + Duration::from_secs(5))
                .expect("upstream reported");
            assert!(
                after.is_some(),
                "{driver:?} {mode:?} {how}: the upstream connection stayed open"
            );
            eprintln!(
                "{driver:?} {mode:?} {how}: upstream closed {} ms after the client left",
                left.elapsed().as_millis()
            );
            assert!(
                wait_until(Duration::from_secs(5), || metric_with(
                    &gw,
                    "ringgate_requests_total",
                    "status=\"499\""
                ) >= 1.0),
                "{driver:?} {mode:?} {how}: no 499 recorded"
            );
            if matches!(mode, Upstream::StreamThenPause) {
                assert!(
                    wait_until(Duration::from_secs(5), || metric_with(
                        &gw,
                        "ringgate_responses_truncated_total",
                        "reason=\"client_closed\""
                    ) >= 1.0),
                    "{driver:?}: truncation not counted"
                );
            }
        }
    }
}

#[test]
fn broken_responses_are_counted_as_broken() {
    for driver in [Driver::IoUring, Driver::Epoll] {
        // The provider dies after the head and an event: the client's connection is cut (no
        // clean end), and the response is counted as truncated, not as a clean 200.
        let (addr, _) = slow_upstream(Upstream::StreamThenDie, Duration::from_secs(1));
        let gw = Gateway::start(&config(addr), driver);
        let mut c = send_request(&gw);
        let (status, _) = c.read_head().expect("head");
        assert_eq!(status, 200);
        let mut events = 0;
        let ended_cleanly = loop {
            match c.read_chunk() {
                Ok(Some(_)) => events += 1,
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        assert!(events >= 1);
        assert!(
            !ended_cleanly,
            "{driver:?}: a cut stream must not end with a last chunk"
        );
        assert!(
            wait_until(Duration::from_secs(5), || metric_with(
                &gw,
                "ringgate_responses_truncated_total",
                "reason=\"upstream_closed\""
            ) >= 1.0),
            "{driver:?}: truncation not counted"
        );
        let logs = gw.logs();
        assert!(
            logs.contains("truncated=\"upstream_closed\"")
                || logs.contains("truncated=upstream_closed"),
            "{driver:?}: the access log does not say the response was cut:\n{logs}"
        );

        // A malformed first chunk, before any byte reached the client: a 502 answer.
        let (addr, _) = slow_upstream(Upstream::MalformedFirstChunk, Duration::from_secs(1));
        let gw = Gateway::start(&config(addr), driver);
        let mut c = send_request(&gw);
        let r = c
            .read_response(false)
            .expect("an answer, not an empty reply");
        assert_eq!(r.status, 502, "{driver:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "upstream_bad_response");
    }
}

/// Tokens generated before the client left are still counted: the stream never reached its
/// usage chunk, so they are estimated, and the estimate says so.
#[test]
fn tokens_of_an_abandoned_stream_are_estimated_and_counted() {
    let mock = ringgate_mock::MockProvider::start("127.0.0.1:0").expect("mock");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{}/v1"

[models.m]
upstream = "mock"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
route_by_model = true
"#,
        mock.addr()
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let body =
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hello there"}]}"#;
    let mut c = Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-gate: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let (status, _) = c.read_head().expect("head");
    assert_eq!(status, 200);
    assert!(c.read_chunk().expect("first event").is_some());
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || metric_with(
            &gw,
            "ringgate_tokens_estimated_total",
            "kind=\"completion\""
        ) >= 1.0),
        "no estimate recorded:\n{}",
        gw.admin_get("/metrics").text()
    );
    let total = metric_with(&gw, "ringgate_tokens_total", "kind=\"prompt\"");
    assert!(
        total >= (body.len() / 4) as f64,
        "prompt estimate counted: {total}"
    );
    assert!(wait_until(Duration::from_secs(5), || metric_with(
        &gw,
        "ringgate_requests_total",
        "status=\"499\""
    ) >= 1.0));
    mock.release_gate();
}
