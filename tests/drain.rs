//! The drain on SIGTERM, case by case, on the plain and the TLS listener under both I/O
//! drivers. A stream held by the mock provider's gate keeps the drain open for as long as
//! the test needs, so every step is ordered by the test, not by timing:
//! - an idle keep-alive connection is closed at once (long before any timeout could close it);
//! - `/ready` answers 503 (strictly) while the stream runs, and the process stays up;
//! - new connections are refused meanwhile;
//! - a response finished during the drain (proxied, or the gateway's own `/health`) carries
//!   `connection: close`, then the connection closes;
//! - the held stream, released, runs to its end and the process exits 0;
//! - a stream still running when `shutdown_grace_ms` ends is cut, and the exit code is 1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::gateway::{request, temp_dir, wait_until, Conn, Driver, Gateway, DRIVERS};
use common::tls;
use ringgate_mock::MockProvider;

const CHAT_STREAM: &str =
    r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// The SNI (and certificate name) of the TLS listener.
const NAME: &str = "gw.test";

/// One worker, so every connection sees the same worker's drain; timeouts far longer than
/// any step, so only the drain can close a connection.
fn config(mock: &MockProvider, grace_ms: u64, tls_files: Option<(&Path, &Path)>) -> String {
    let tls = tls_files.map_or(String::new(), |(cert, key)| {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1
header_read_timeout_ms = 60000
idle_timeout_ms = 60000
shutdown_grace_ms = {grace_ms}
{tls}
[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"
keepalive = 8

[[routes]]
name = "all"
prefix = "/v1/"
rewrite = "/"
upstream = "mock"
read_timeout_ms = 30000
"#,
        mock = mock.addr()
    )
}

/// Which client listener a case runs on.
#[derive(Clone, Copy, Debug)]
enum Listener {
    Plain,
    Tls,
}

/// A started case: the gateway, its mock, and how to open a client connection.
struct Case {
    mock: MockProvider,
    gw: Gateway,
    listener: Listener,
    client: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A client connection on either listener.
type Client = Conn<Box<dyn ReadWrite>>;

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Case {
    fn start(listener: Listener, driver: Driver, grace_ms: u64) -> Case {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let (gw, client) = match listener {
            Listener::Plain => (Gateway::start(&config(&mock, grace_ms, None), driver), None),
            Listener::Tls => {
                let ca = tls::ca();
                let dir = temp_dir("drain-tls");
                let (cert, key) = tls::write_leaf(&dir, &tls::leaf(&ca, &[NAME]));
                let gw = Gateway::start(&config(&mock, grace_ms, Some((&cert, &key))), driver);
                (gw, Some(tls::client_config(&ca.pem)))
            }
        };
        Case {
            mock,
            gw,
            listener,
            client,
        }
    }

    /// The address new connections go to.
    fn addr(&self) -> SocketAddr {
        match self.listener {
            Listener::Plain => self.gw.addr,
            Listener::Tls => self.gw.tls.expect("TLS listener reported"),
        }
    }

    /// A new client connection (for TLS, handshaken).
    fn connect(&self) -> Client {
        match &self.client {
            None => {
                let c = Conn::connect(self.addr());
                Conn::new(Box::new(c.stream) as Box<dyn ReadWrite>)
            }
            Some(cfg) => {
                let c = tls::connect(self.addr(), NAME, cfg).expect("TLS connect");
                Conn::new(Box::new(c.stream) as Box<dyn ReadWrite>)
            }
        }
    }

    /// `ringgate_requests_in_flight` reaches `n`: requests whose heads the gateway parsed.
    fn wait_in_flight(&self, n: f64) {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(10), || {
            last = self.gw.metric("ringgate_requests_in_flight");
            last == Some(n)
        });
        assert!(ok, "requests in flight never reached {n}: last {last:?}");
    }

    /// Opens a stream held by the mock's gate and reads its head and first event.
    fn held_stream(&self) -> Client {
        let mut s = self.connect();
        s.send(post("/v1/chat/completions", CHAT_STREAM, "x-mock-gate: 1\r\n").as_bytes())
            .expect("send stream");
        let (status, _) = s.read_head().expect("stream head");
        assert_eq!(status, 200);
        assert!(s.read_chunk().expect("first event").is_some());
        s
    }

    /// SIGTERM, then waits until `/ready` answers 503 (a refused or failed admin request
    /// is not a 503).
    fn terminate_and_wait_not_ready(&self) {
        self.gw.terminate();
        let mut last = None;
        let drained = wait_until(Duration::from_secs(10), || {
            let r = request(
                self.gw.admin,
                "GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
            );
            last = Some(r.as_ref().map(|r| r.status).map_err(|e| e.kind()));
            last == Some(Ok(503))
        });
        assert!(
            drained,
            "/ready never answered 503 while draining: {last:?}"
        );
    }
}

fn post(path: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

/// The whole matrix with a grace period longer than the test: see the module doc.
fn drain_matrix(listener: Listener, driver: Driver) {
    let what = format!("{listener:?}/{driver:?}");
    let mut case = Case::start(listener, driver, 60_000);
    assert_eq!(case.gw.admin_get("/ready").status, 200, "{what}");

    // A health probe whose head is cut short: its first bytes are read while the worker is
    // idle (the request on the next connection takes several turns of the same
    // single-threaded event loop), so the connection is no longer idle when the drain
    // begins; the head ends during the drain.
    // One whole request first: the connection is served (for TLS, past the handshake).
    let mut probe = case.connect();
    probe
        .send(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        .expect("probe");
    assert_eq!(probe.read_response(false).expect("probe").status, 200);
    probe
        .send(b"GET /health HTTP/1.1\r\nhost: gw\r\n")
        .expect("probe head");

    // An idle keep-alive connection: one answered request, then nothing.
    let mut idle = case.connect();
    idle.send(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
        .expect("send");
    let r = idle.read_response(false).expect("models");
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.header("connection"), None, "{what}: kept alive");

    // Two requests in flight when the drain begins, each answered only when the test says:
    // an upload with half its body sent, and a held stream.
    // The stream first, then only it in flight (a finished request's slot may be released
    // a moment after its answer was read), so that two in flight means the upload's head
    // was read.
    let mut stream = case.held_stream();
    case.wait_in_flight(1.0);
    let mut upload = case.connect();
    upload
        .send(b"POST /v1/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 8\r\n\r\nhalf")
        .expect("upload head");
    case.wait_in_flight(2.0);

    case.terminate_and_wait_not_ready();

    // New connections are refused, for as long as the stream holds the process up.
    let addr = case.addr();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr)
            .is_err()),
        "{what}: the listener still accepts while draining"
    );
    assert!(case.gw.is_running(), "{what}: the held stream keeps it up");
    assert_eq!(case.gw.admin_get("/ready").status, 503, "{what}");

    // The idle connection is closed by the drain (its idle timeout is a minute away; a
    // read that times out is an error, not a close).
    let rest = idle
        .read_to_close()
        .unwrap_or_else(|e| panic!("{what}: the idle connection was not closed: {e}"));
    assert!(rest.is_empty(), "{what}: {rest:?}");

    // The upload's answer is written during the drain: it says the connection closes, and
    // it does.
    upload.send(b"full").expect("rest of upload");
    let r = upload.read_response(false).expect("upload answer");
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.json()["bytes"], 8, "{what}");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "{what}: {:?}",
        r.headers
    );
    let after = upload
        .read_to_close()
        .unwrap_or_else(|e| panic!("{what}: the upload's connection stayed open: {e}"));
    assert!(after.is_empty(), "{what}");

    // So is the gateway's own answer to the probe.
    probe
        .send(b"\r\n")
        .unwrap_or_else(|e| panic!("{what}: end of the probe's head: {e}"));
    let r = probe.read_response(false).expect("probe answer");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "{what}: /health during the drain: {:?}",
        r.headers
    );
    probe
        .read_to_close()
        .unwrap_or_else(|e| panic!("{what}: the probe's connection stayed open: {e}"));

    // Still draining: the stream runs to its end once released, then the process exits 0.
    assert_eq!(case.gw.admin_get("/ready").status, 503, "{what}");
    case.mock.release_gate();
    let mut body = Vec::new();
    while let Some(c) = stream.read_chunk().expect("the stream runs to its end") {
        body.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8_lossy(&body).contains("[DONE]"),
        "{what}: {}",
        String::from_utf8_lossy(&body)
    );
    stream
        .read_to_close()
        .unwrap_or_else(|e| panic!("{what}: the stream's connection stayed open: {e}"));
    assert_eq!(
        case.gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{what}: {}",
        case.gw.logs()
    );
}

/// A stream still held when the grace period ends is cut, and the exit code says so.
fn grace_cuts_a_stream(listener: Listener, driver: Driver) {
    let what = format!("{listener:?}/{driver:?}");
    let mut case = Case::start(listener, driver, 300);
    let mut stream = case.held_stream();
    case.gw.terminate();
    assert_eq!(
        case.gw.wait_exit(Duration::from_secs(10)),
        Some(1),
        "{what}: a drain that cut a stream is not a clean stop: {}",
        case.gw.logs()
    );
    // The gate was never released: the stream cannot have ended, it was cut.
    let mut got = Vec::new();
    let cut = loop {
        match stream.read_chunk() {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break false,
            // A read timeout means the connection stayed open: not a cut.
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    };
    assert!(
        cut,
        "{what}: the stream ended normally: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("[DONE]"),
        "{what}: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        case.gw.logs().contains("cut_connections=1"),
        "{what}: {}",
        case.gw.logs()
    );
    case.mock.release_gate();
}

#[test]
fn drain_matrix_plain() {
    for d in DRIVERS {
        drain_matrix(Listener::Plain, d);
    }
}

#[test]
fn drain_matrix_tls() {
    for d in DRIVERS {
        drain_matrix(Listener::Tls, d);
    }
}

#[test]
fn grace_cuts_a_stream_plain_and_tls() {
    for d in DRIVERS {
        grace_cuts_a_stream(Listener::Plain, d);
        grace_cuts_a_stream(Listener::Tls, d);
    }
}
