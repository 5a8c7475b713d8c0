//! Probes cannot be starved: idle, silent and half-sent connections to the admin listener
//! must not delay `/health` and `/ready` behind them (the kubelet's liveness probe times out
//! after a couple of seconds and restarts the pod).

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::gateway::{Driver, Gateway};
use ringgate_mock::MockProvider;

#[test]
fn slow_admin_clients_do_not_delay_the_probes() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{}"

[[routes]]
name = "all"
prefix = "/"
upstream = "mock"
"#,
        mock.addr()
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    // A dozen connections that never send a byte, and one that sends half a request.
    let mut hogs: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(gw.admin).expect("connect"))
        .collect();
    let mut half = TcpStream::connect(gw.admin).expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\n")
        .expect("half a head");
    hogs.push(half);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Before: served one at a time with a 5 s read timeout each, these probes waited about a
    // minute (the harness gives up after 10 s).
    for path in ["/health", "/ready", "/health"] {
        let r = gw.admin_get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    drop(hogs);
}
