//! HTTPS upstreams: a tiny rustls server in the test (certificates generated with rcgen at
//! test time) behind the gateway. Checks trust via `ca_file`, connection reuse, the 502 on a
//! certificate from an unknown CA, and the SNI the server sees. Both I/O drivers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{temp_dir, Conn, Gateway, DRIVERS};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA (PEM) and a leaf it signed for `localhost` and 127.0.0.1 (DER cert, DER key).
struct Pki {
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key: Vec<u8>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    Pki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_key: leaf_key.serialize_der(),
    }
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    sni: Mutex<Vec<String>>,
    /// Handshakes that resumed an earlier session.
    resumed: AtomicUsize,
}

const BODY: &str = r#"{"object":"chat.completion","id":"tls-1"}"#;

/// A blocking rustls HTTP/1.1 server on loopback answering every request with a fixed
/// keep-alive JSON response. Serves at most 32 connections, each on its own thread.
fn tls_server(pki: &Pki) -> (SocketAddr, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.leaf_der.clone().into()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key.clone())),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(32) {
            let Ok(tcp) = tcp else { continue };
            s.connections.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            let s = s.clone();
            std::thread::spawn(move || serve(tcp, config, &s));
        }
    });
    (addr, seen)
}

fn serve(tcp: std::net::TcpStream, config: Arc<rustls::ServerConfig>, seen: &Seen) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut recorded = false;
    for _ in 0..100 {
        // One request: head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if !recorded && !tls.conn.is_handshaking() {
                recorded = true;
                let sni = tls.conn.server_name().unwrap_or("").to_string();
                seen.sni.lock().expect("sni").push(sni);
                if tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    seen.resumed.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        if tls
            .write_all(resp.as_bytes())
            .and_then(|_| tls.flush())
            .is_err()
        {
            return;
        }
    }
}

fn config(url: &str, ca_file: &Path) -> String {
    config_with(url, ca_file, 8)
}

fn config_with(url: &str, ca_file: &Path, keepalive: usize) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.tls]
url = "{url}"
ca_file = "{ca}"
keepalive = {keepalive}

[[routes]]
name = "chat"
prefix = "/v1/"
rewrite = "/"
upstream = "tls"
"#,
        ca = ca_file.display()
    )
}

const CHAT: &str = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;

fn post() -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
}

#[test]
fn https_upstream_is_trusted_via_ca_file_and_its_connection_reused() {
    for d in DRIVERS {
        let pki = pki();
        let (addr, seen) = tls_server(&pki);
        let dir = temp_dir("tls-ca");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).expect("write ca");
        let url = format!("https://localhost:{}/v1", addr.port());
        let gw = Gateway::start(&config(&url, &ca), d);
        let mut conn = Conn::connect(gw.addr);
        for i in 0..2 {
            conn.send(post().as_bytes()).expect("send");
            let r = conn.read_response(false).expect("response");
            assert_eq!(r.status, 200, "{d:?} #{i}: {}\n{}", r.text(), gw.logs());
            assert_eq!(r.json()["id"], "tls-1", "{d:?}");
        }
        // Idle past the pool's peek threshold: the liveness peek on the TLS connection's
        // socket must not mistake it for closed.
        std::thread::sleep(Duration::from_millis(700));
        conn.send(post().as_bytes()).expect("send");
        let r = conn.read_response(false).expect("response");
        assert_eq!(r.status, 200, "{d:?} after idle: {}", r.text());
        assert_eq!(seen.requests.load(Ordering::SeqCst), 3, "{d:?}");
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            1,
            "{d:?}: all requests on one upstream TLS connection"
        );
        // SNI is the URL's host.
        assert_eq!(
            seen.sni.lock().expect("sni").as_slice(),
            ["localhost".to_string()],
            "{d:?}"
        );
    }
}

#[test]
fn new_upstream_connections_resume_the_tls_session() {
    for d in DRIVERS {
        let pki = pki();
        let (addr, seen) = tls_server(&pki);
        let dir = temp_dir("tls-resume");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).expect("write ca");
        let url = format!("https://localhost:{}/v1", addr.port());
        // No pooling: every request opens a new upstream connection.
        let gw = Gateway::start(&config_with(&url, &ca, 0), d);
        let mut conn = Conn::connect(gw.addr);
        for i in 0..3 {
            conn.send(post().as_bytes()).expect("send");
            let r = conn.read_response(false).expect("response");
            assert_eq!(r.status, 200, "{d:?} #{i}: {}", r.text());
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3, "{d:?}");
        assert!(
            seen.resumed.load(Ordering::SeqCst) >= 1,
            "{d:?}: later handshakes resume the session"
        );
    }
}

#[test]
fn certificate_from_an_unknown_ca_is_a_502_naming_the_certificate() {
    for d in DRIVERS {
        let server_pki = pki();
        let other = pki();
        let (addr, seen) = tls_server(&server_pki);
        let dir = temp_dir("tls-bad");
        let ca = dir.join("other-ca.pem");
        std::fs::write(&ca, &other.ca_pem).expect("write ca");
        let url = format!("https://localhost:{}/v1", addr.port());
        let gw = Gateway::start(&config(&url, &ca), d);
        let mut conn = Conn::connect(gw.addr);
        conn.send(post().as_bytes()).expect("send");
        let r = conn.read_response(false).expect("response");
        assert_eq!(r.status, 502, "{d:?}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"]["code"], "upstream_tls_error", "{d:?}: {j}");
        let msg = j["error"]["message"].as_str().unwrap_or("").to_string();
        assert!(msg.contains("certificate"), "{d:?}: {msg}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), 0, "{d:?}");
    }
}

#[test]
fn ca_file_that_is_not_pem_is_a_config_error() {
    let dir = temp_dir("tls-cfg");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not a certificate").expect("write");
    let toml = config("https://localhost:8443/v1", &ca)
        .replace("{listen}", "127.0.0.1:0")
        .replace("{admin}", "127.0.0.1:0");
    let err = ringgate::config::load_bytes(toml.as_bytes(), &dir).expect_err("must fail");
    assert!(err.to_string().contains("ca_file"), "{err}");
}
