//! Listening on port 0: the gateway binds the port the kernel gives its first worker, every
//! other worker joins that one port, and `--print-ports` reports it. The harness relies on
//! it, so a test can only ever talk to the gateway it started.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::gateway::{Gateway, DRIVERS};
use ringgate_mock::MockProvider;

fn config(mock: &MockProvider, workers: usize, max_connections: usize) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = {workers}
max_connections = {max_connections}

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}"

[[routes]]
name = "all"
prefix = "/"
upstream = "mock"
"#,
        mock = mock.addr()
    )
}

/// Sends one keep-alive `/health` on a new connection: true when the gateway answered 200
/// (admitted), false when it closed the connection first (over the worker's share).
fn admitted(c: &mut TcpStream) -> bool {
    if c.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 512];
    match c.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

/// `max_connections = 2` over two workers admits one connection per worker. Were each
/// worker to bind port 0 on its own, only the first worker would sit on the reported port,
/// and never more than one connection to it would be admitted at a time.
#[test]
fn port_zero_is_one_port_every_worker_serves() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    for driver in DRIVERS {
        let gw = Gateway::start(&config(&mock, 2, 2), driver);
        assert_ne!(gw.addr.port(), 0, "{driver:?}: the bound port is reported");
        assert_ne!(gw.admin.port(), 0, "{driver:?}");
        assert_ne!(gw.addr, gw.admin, "{driver:?}");
        let mut held = Vec::new();
        // SO_REUSEPORT hashes each new connection to one of the two listeners: a refused
        // one is retried on a new connection. 200 tries all landing on one worker: 2^-199.
        for _ in 0..200 {
            if held.len() == 2 {
                break;
            }
            let mut c = TcpStream::connect(gw.addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            if admitted(&mut c) {
                held.push(c);
            }
        }
        assert_eq!(
            held.len(),
            2,
            "{driver:?}: both workers admit on the one reported port; log:\n{}",
            gw.logs()
        );
        assert!(gw.logs().contains("ringgate serving"), "{driver:?}");
    }
}

/// A gateway that cannot start is reported at once with its log, instead of the harness
/// polling a port another process may own.
#[test]
fn a_gateway_that_exits_at_start_fails_the_harness_at_once() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    // The admin port is taken by this test: the gateway must exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let cfg = config(&mock, 1, 100).replace("{admin}", &format!("127.0.0.1:{port}"));
    let err = std::panic::catch_unwind(|| Gateway::start(&cfg, DRIVERS[1]))
        .err()
        .expect("the harness refuses a gateway that exited");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("exited before reporting its ports"), "{msg}");
    assert!(msg.contains("cannot listen on admin address"), "{msg}");
}

/// The ports line, with the TLS listener's address and without.
#[test]
fn the_ports_line_parses_with_and_without_tls() {
    let line = "ringgate ports listen=127.0.0.1:1 admin=127.0.0.1:2 tls=127.0.0.1:3";
    let p = common::gateway::parse_ports(line).expect("parsed");
    assert_eq!(p.listen.port(), 1);
    assert_eq!(p.admin.port(), 2);
    assert_eq!(p.tls.map(|a| a.port()), Some(3));
    let plain = common::gateway::parse_ports("ringgate ports listen=127.0.0.1:1 admin=127.0.0.1:2")
        .expect("parsed");
    assert_eq!(plain.tls, None);
    assert!(common::gateway::parse_ports("ringgate serving").is_none());
}
