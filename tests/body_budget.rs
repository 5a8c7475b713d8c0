//! Memory a client makes the gateway hold is bounded: kept request bodies (cached and
//! model-routed routes read them whole) share a per-worker budget — a request that does not
//! fit is refused before its body is read, one that never could is 413 — and a kept body must
//! arrive within `body_read_timeout_ms`, however slowly it trickles.

mod common;

use std::io::Write;
use std::time::Duration;

use common::gateway::{Conn, Driver, Gateway};
use ringgate_mock::MockProvider;

fn config(upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1
body_buffer_bytes = 1000000
body_read_timeout_ms = 1500

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{upstream}"

[[routes]]
name = "cached"
prefix = "/v1/"
upstream = "mock"
cache_ttl_ms = 60000
"#
    )
}

/// Sends a POST head for a body of `len` bytes and the first `sent` of them.
fn start_upload(gw: &Gateway, len: usize, sent: usize) -> Conn {
    let mut c = Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/echo HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("head");
    c.send(&vec![b' '; sent]).expect("body start");
    c
}

#[test]
fn kept_bodies_share_a_budget_and_a_deadline() {
    for driver in [Driver::IoUring, Driver::Epoll] {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let gw = Gateway::start(&config(&mock.addr().to_string()), driver);

        // A holds 600 kB of the 1 MB budget and trickles.
        let mut a = start_upload(&gw, 600_000, 1000);
        std::thread::sleep(Duration::from_millis(100));

        // B does not fit now: 503 before its body is read, with Retry-After.
        let mut b = start_upload(&gw, 600_000, 0);
        let r = b.read_response(false).expect("b");
        assert_eq!(r.status, 503, "{driver:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "body_buffer_full");
        assert!(r.header("retry-after").is_some());

        // C could never fit: 413.
        let mut c = start_upload(&gw, 2_000_000, 0);
        assert_eq!(c.read_response(false).expect("c").status, 413, "{driver:?}");

        // D fits beside A and is served.
        let mut d = start_upload(&gw, 300_000, 300_000);
        let r = d.read_response(false).expect("d");
        assert_eq!(r.status, 200, "{driver:?}: {}", r.text());

        // A keeps sending within the idle timeout, but its whole body is late: 408.
        let mut status = None;
        for _ in 0..50 {
            if a.stream.write_all(&[b' '; 1000]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            a.stream.set_nonblocking(true).expect("nonblocking");
            let mut probe = [0u8; 1];
            let ready = a.stream.peek(&mut probe);
            a.stream.set_nonblocking(false).expect("blocking");
            if !matches!(&ready, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                break;
            }
        }
        let _ = a.stream.set_read_timeout(Some(Duration::from_secs(10)));
        if let Ok(r) = a.read_response(false) {
            status = Some(r.status);
        }
        assert_eq!(
            status,
            Some(408),
            "{driver:?}: the trickling body was cut by its deadline"
        );

        // With A gone its share is free again.
        let mut b2 = start_upload(&gw, 600_000, 600_000);
        let r = b2.read_response(false).expect("b2");
        assert_eq!(r.status, 200, "{driver:?}: {}", r.text());
    }
}
