//! A hostile upstream cannot poison another client's response: bytes it sends past the end
//! of a framed response (after a `Content-Length: 0` body, a body on a HEAD or 204 answer, a
//! response split across writes with more arriving later) are never read as the answer to
//! the next request on a pooled connection. The upstream here is a raw TCP server, so it
//! can misbehave in ways a well-formed mock cannot.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::gateway::{request, Driver, Gateway};

/// What the upstream sends on its first connection: the answer to the first request, then,
/// after each pause, more bytes it had no business sending.
struct Script {
    what: &'static str,
    first_request: &'static str,
    answer: &'static [u8],
    later: &'static [&'static [u8]],
}

const CLEAN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean";
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

/// Reads one request head (the requests here have no body).
fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
        if buf.len() > 65536 {
            return false;
        }
    }
    true
}

/// Starts the upstream: its first connection follows `script` and then never answers
/// again (only the stray bytes could); every later connection answers `clean` to each
/// request.
fn hostile_upstream(script: &'static Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut s) = conn else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                if n == 0 {
                    if !read_head(&mut s) {
                        return;
                    }
                    let _ = s.write_all(script.answer);
                    for bytes in script.later {
                        thread::sleep(Duration::from_millis(40));
                        let _ = s.write_all(bytes);
                    }
                    // Hold the connection: a request sent on it gets only the stray bytes.
                    let mut sink = [0u8; 4096];
                    while matches!(s.read(&mut sink), Ok(k) if k > 0) {}
                    return;
                }
                while read_head(&mut s) {
                    if s.write_all(CLEAN).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

const SCRIPTS: &[Script] = &[
    Script {
        what: "a response after a Content-Length: 0 answer",
        first_request: "GET /a HTTP/1.1\r\nhost: gw\r\n\r\n",
        answer: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        later: &[POISON],
    },
    Script {
        what: "a body after a HEAD answer",
        first_request: "HEAD /a HTTP/1.1\r\nhost: gw\r\n\r\n",
        answer: b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
        later: &[b"POISON", POISON],
    },
    Script {
        what: "a body after a 204",
        first_request: "GET /a HTTP/1.1\r\nhost: gw\r\n\r\n",
        answer: b"HTTP/1.1 204 No Content\r\n\r\n",
        later: &[POISON],
    },
    Script {
        what: "extra bytes in the same write",
        first_request: "GET /a HTTP/1.1\r\nhost: gw\r\n\r\n",
        answer: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
        later: &[],
    },
    Script {
        what: "a response split across writes, more arriving later",
        first_request: "GET /a HTTP/1.1\r\nhost: gw\r\n\r\n",
        answer: b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
        later: &[b"cd", POISON],
    },
];

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.evil]
url = "http://{upstream}"
keepalive = 8

[[routes]]
name = "all"
prefix = "/"
upstream = "evil"
read_timeout_ms = 1000
"#
    )
}

#[test]
fn stray_upstream_bytes_never_answer_another_request() {
    for script in SCRIPTS {
        for driver in [Driver::IoUring, Driver::Epoll] {
            let (addr, connections) = hostile_upstream(script);
            let gw = Gateway::start(&config(addr), driver);
            let first = request(gw.addr, script.first_request).expect("first request");
            assert!(
                first.status < 500,
                "{}: first answer {}",
                script.what,
                first.status
            );
            // Let every stray byte arrive while the connection sits in the pool.
            thread::sleep(Duration::from_millis(40 * script.later.len() as u64 + 60));
            for i in 0..3 {
                let r = request(
                    gw.addr,
                    &format!("GET /b{i} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"),
                )
                .expect("next request");
                assert_eq!(
                    (r.status, r.text()),
                    (200, "clean".to_string()),
                    "{} ({driver:?}): request {i} got another request's bytes",
                    script.what
                );
            }
            assert!(
                connections.load(Ordering::SeqCst) >= 2,
                "{}: the poisoned connection was not dropped",
                script.what
            );
        }
    }
}
