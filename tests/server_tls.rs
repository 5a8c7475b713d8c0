//! The client TLS listener (`[server.tls]`): HTTPS through the gateway to the mock provider
//! with keep-alive, SNI choosing among certificates, a rotated certificate (projected
//! kubelet-style, as cert-manager's Secret lands) served to new connections while an old
//! connection keeps working, broken pairs rejected with the old certificate kept, the
//! handshake timeout, garbage on the TLS port, curl, a rotated `api_key_file` reaching the
//! upstream with no config change, sessions resumed across a rotation (TLS 1.3 and 1.2), and
//! config errors. Certificates are generated here (rcgen). Loopback only; every wait is
//! bounded.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{request, temp_dir, Driver, Gateway, DRIVERS};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ringgate_mock::kubelet::ProjectedVolume;
use ringgate_mock::MockProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: String,
}

/// A leaf: PEM cert and key, and the cert's DER (what a client sees).
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: with rcgen's default DN on both, OpenSSL (curl) would take the
    // leaf for a self-signed certificate.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringgate test CA");
    let issuer =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
    let pem = issuer.pem();
    Ca { issuer, pem }
}

fn leaf(ca: &Ca, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// (status, headers with lowercase names, body).
type Reply = (u16, Vec<(String, String)>, Vec<u8>);

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A keep-alive HTTPS client connection (blocking rustls over std TCP).
struct HttpsConn {
    tls: Tls,
    buf: Vec<u8>,
}

impl HttpsConn {
    fn connect(
        addr: SocketAddr,
        sni: &str,
        cfg: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(HttpsConn {
            tls,
            buf: Vec::new(),
        })
    }

    /// The leaf certificate the server presented.
    fn peer_leaf(&self) -> Vec<u8> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = match self.tls.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Sends a GET and reads the response: (status, headers, body).
    fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n");
        self.tls.write_all(req.as_bytes())?;
        self.tls.flush()?;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(|| std::io::Error::other("response without content-length"))?;
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let body = self.buf.drain(..len).collect();
        Ok((status, headers, body))
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Projects a Secret-like volume with `tls.crt` and `tls.key` (kubelet's layout and order).
fn project_pair(vol: &ProjectedVolume, cert_pem: &str, key_pem: &str) {
    let mut files = BTreeMap::new();
    files.insert("tls.crt".to_string(), cert_pem.as_bytes().to_vec());
    files.insert("tls.key".to_string(), key_pem.as_bytes().to_vec());
    vol.project(&files).expect("project secret");
}

/// A gateway config with a TLS listener on port 0 (the gateway reports the port it got);
/// `tls_extra` goes inside `[server.tls]` (after cert/key), `sni` after it.
fn config(mock: &MockProvider, cert: &Path, key: &Path, tls_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[server.tls]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
{tls_extra}

[admin]
listen = "{{admin}}"

[reload]
debounce_ms = 50
poll_interval_ms = 1000

[upstreams.mock]
url = "http://{mock}"

[[routes]]
name = "all"
prefix = "/"
upstream = "mock"
"#,
        mock = mock.addr(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Polls `cond` for at most 15 s; fails the test naming `what` when it never held.
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        common::gateway::wait_until(Duration::from_secs(15), cond),
        "timed out waiting for {what}"
    );
}

/// `promtool check metrics` accepts `text` (a missing promtool fails, unless
/// `RINGGATE_TEST_ALLOW_SKIP=1`).
fn promtool_accepts(text: &str) {
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        common::gateway::tool_missing(
            "promtool",
            "Debian package `prometheus`; .ci/run installs it",
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn secret_volume(tag: &str) -> (PathBuf, ProjectedVolume) {
    let dir = temp_dir(tag);
    let vol = ProjectedVolume::new(&dir.join("tls")).expect("volume");
    (dir, vol)
}

#[test]
fn https_requests_keep_alive_and_sni_picks_the_certificate() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let ca = ca();
    let default = leaf(&ca, &["localhost", "other.example"]);
    let a = leaf(&ca, &["a.example"]);
    let b = leaf(&ca, &["x.b.example", "y.b.example"]);
    let (dir, vol) = secret_volume("sni");
    let mut files = BTreeMap::new();
    for (name, l) in [("default", &default), ("a", &a), ("b", &b)] {
        files.insert(format!("{name}.crt"), l.cert_pem.clone().into_bytes());
        files.insert(format!("{name}.key"), l.key_pem.clone().into_bytes());
    }
    vol.project(&files).expect("project");
    let d = vol.dir();
    let sni = format!(
        "\n[[server.tls.sni]]\nserver_names = [\"a.example\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[[server.tls.sni]]\nserver_names = [\"*.b.example\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        d.join("a.crt").display(),
        d.join("a.key").display(),
        d.join("b.crt").display(),
        d.join("b.key").display()
    );
    let client = client_config(&ca.pem);
    for driver in DRIVERS {
        let cfg = config(&mock, &d.join("default.crt"), &d.join("default.key"), &sni);
        let gw = Gateway::start(&cfg, driver);
        let tls_addr: SocketAddr = gw.tls.expect("tls listener reported");

        let mut c = HttpsConn::connect(tls_addr, "localhost", &client).expect("connect");
        assert_eq!(
            c.peer_leaf(),
            default.der,
            "{driver:?}: default certificate"
        );
        for i in 0..3 {
            let (status, headers, body) = c.get("/v1/echo").expect("https request");
            assert_eq!(status, 200, "{driver:?} request {i}");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{driver:?}");
            // keep-alive: one upstream-visible client connection, several requests
            assert!(
                headers
                    .iter()
                    .all(|(n, v)| n != "connection" || v != "close"),
                "{driver:?}: kept alive"
            );
        }
        let plain = request(
            gw.addr,
            "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        )
        .expect("plain");
        assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");

        for (sni, want, what) in [
            ("a.example", &a.der, "exact name"),
            ("x.b.example", &b.der, "wildcard"),
            (
                "other.example",
                &default.der,
                "unmatched name gets the default",
            ),
        ] {
            let mut c = HttpsConn::connect(tls_addr, sni, &client).expect("connect");
            assert_eq!(&c.peer_leaf(), want, "{driver:?}: {what}");
            assert_eq!(c.get("/v1/models").expect("request").0, 200);
        }
        assert!(gw.metric("ringgate_tls_handshakes_total").unwrap_or(0.0) >= 4.0);
        let expiry = gw
            .metric("ringgate_tls_certificate_expiry_timestamp_seconds{server_name=\"a.example\"}")
            .expect("expiry gauge");
        assert!(expiry > 1.0e9, "notAfter {expiry}");
        promtool_accepts(&gw.admin_get("/metrics").text());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rotated_certificate_reaches_new_connections_while_old_ones_keep_working() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let ca = ca();
    let client = client_config(&ca.pem);
    for driver in DRIVERS {
        let first = leaf(&ca, &["localhost"]);
        let second = leaf(&ca, &["localhost"]);
        let (dir, vol) = secret_volume("rotate");
        project_pair(&vol, &first.cert_pem, &first.key_pem);
        let cfg = config(
            &mock,
            &vol.dir().join("tls.crt"),
            &vol.dir().join("tls.key"),
            "",
        );
        let gw = Gateway::start(&cfg, driver);
        let tls_addr: SocketAddr = gw.tls.expect("tls listener reported");
        let generation = |gw: &Gateway| gw.metric("ringgate_config_generation").unwrap_or(0.0);

        let mut old = HttpsConn::connect(tls_addr, "localhost", &client).expect("conn A");
        assert_eq!(old.peer_leaf(), first.der);
        assert_eq!(old.get("/v1/echo").expect("A first").0, 200);

        // Rotate: the ConfigMap is untouched, only the Secret changes.
        project_pair(&vol, &second.cert_pem, &second.key_pem);
        wait_for("the rotated certificate on a new connection", || {
            HttpsConn::connect(tls_addr, "localhost", &client)
                .map(|c| c.peer_leaf() == second.der)
                .unwrap_or(false)
        });
        assert_eq!(generation(&gw), 2.0, "{driver:?}: one re-apply");
        let (status, _, _) = old.get("/v1/echo").expect("A after rotation");
        assert_eq!(
            status, 200,
            "{driver:?}: the old connection keeps its session"
        );
        assert_eq!(old.peer_leaf(), first.der);
        assert_eq!(
            gw.metric("ringgate_tls_certificate_reloads_total{result=\"applied\"}"),
            Some(1.0)
        );

        // Broken pairs: a key of another certificate, then garbage. Both rejected; new
        // connections keep getting the second certificate.
        let third = leaf(&ca, &["localhost"]);
        let broken: [(&str, &str); 2] = [
            (&third.cert_pem, &second.key_pem),
            ("-----BEGIN CERTIFICATE-----\ngarbage\n", &third.key_pem),
        ];
        for (n, (cert, key)) in broken.iter().enumerate() {
            project_pair(&vol, cert, key);
            let want = (n + 1) as f64;
            wait_for("the broken pair to be rejected", || {
                gw.metric("ringgate_tls_certificate_reloads_total{result=\"rejected\"}")
                    == Some(want)
            });
            let c = HttpsConn::connect(tls_addr, "localhost", &client).expect("connect");
            assert_eq!(
                c.peer_leaf(),
                second.der,
                "{driver:?}: old certificate kept"
            );
            assert!(
                gw.metric("ringgate_config_reloads_total{result=\"rejected\"}")
                    .unwrap_or(0.0)
                    >= want
            );
            assert_eq!(
                gw.metric("ringgate_config_last_reload_successful"),
                Some(0.0)
            );
        }
        assert_eq!(
            generation(&gw),
            2.0,
            "{driver:?}: rejected pairs are no generation"
        );
        assert!(
            gw.logs().contains("server.tls.key_file"),
            "error logged with its key path"
        );
        // A good pair after the broken ones applies.
        project_pair(&vol, &third.cert_pem, &third.key_pem);
        wait_for("the fixed pair", || {
            HttpsConn::connect(tls_addr, "localhost", &client)
                .map(|c| c.peer_leaf() == third.der)
                .unwrap_or(false)
        });
        assert_eq!(old.get("/v1/echo").expect("A at the end").0, 200);
        let cfg_json = gw.admin_get("/config").json();
        let watched = cfg_json["watched_files"].to_string();
        assert!(
            watched.contains("tls.crt") && watched.contains("tls.key"),
            "{watched}"
        );
        drop(gw);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn handshake_timeout_and_garbage_close_only_that_connection() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let ca = ca();
    let cert = leaf(&ca, &["localhost"]);
    let client = client_config(&ca.pem);
    let (dir, vol) = secret_volume("hs");
    project_pair(&vol, &cert.cert_pem, &cert.key_pem);
    for driver in DRIVERS {
        let cfg = config(
            &mock,
            &vol.dir().join("tls.crt"),
            &vol.dir().join("tls.key"),
            "handshake_timeout_ms = 300",
        );
        let gw = Gateway::start(&cfg, driver);
        let tls_addr: SocketAddr = gw.tls.expect("tls listener reported");
        // A good connection open the whole time.
        let mut good = HttpsConn::connect(tls_addr, "localhost", &client).expect("good");
        assert_eq!(good.get("/v1/echo").expect("good").0, 200);

        // Silent client: the server closes it (bounded wait: the 10 s read timeout).
        let mut silent = TcpStream::connect(tls_addr).expect("connect");
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut b = [0u8; 64];
        match silent.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{driver:?}: silent client not closed: {other:?}"),
        }
        wait_for("the timeout to be counted", || {
            gw.metric("ringgate_tls_handshake_failures_total{reason=\"timeout\"}") == Some(1.0)
        });

        // Plain HTTP and garbage to the TLS port: that connection is closed (after an alert).
        for junk in [
            &b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        ] {
            let mut s = TcpStream::connect(tls_addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(junk).expect("write");
            let mut all = Vec::new();
            match s.read_to_end(&mut all) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("{driver:?}: junk connection not closed: {e}"),
            }
            assert!(!all.starts_with(b"HTTP/"), "no HTTP answer on the TLS port");
        }
        wait_for("the handshake errors to be counted", || {
            gw.metric("ringgate_tls_handshake_failures_total{reason=\"error\"}") == Some(2.0)
        });
        // Only those connections were closed: the old one and a new one work.
        assert_eq!(
            good.get("/v1/echo").expect("good after").0,
            200,
            "{driver:?}"
        );
        let mut fresh = HttpsConn::connect(tls_addr, "localhost", &client).expect("fresh");
        assert_eq!(fresh.get("/v1/echo").expect("fresh").0, 200, "{driver:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn curl_with_cacert_against_the_tls_listener() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        common::gateway::tool_missing("curl", ".ci/run installs it");
        return;
    }
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let ca = ca();
    let cert = leaf(&ca, &["localhost"]);
    let (dir, vol) = secret_volume("curl");
    project_pair(&vol, &cert.cert_pem, &cert.key_pem);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("ca file");
    let cfg = config(
        &mock,
        &vol.dir().join("tls.crt"),
        &vol.dir().join("tls.key"),
        "",
    );
    let _gw = Gateway::start(&cfg, Driver::IoUring);
    let tls_addr: SocketAddr = _gw.tls.expect("tls listener reported");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", tls_addr.port()))
        .arg(format!("https://localhost:{}/v1/echo", tls_addr.port()))
        .arg(format!("https://localhost:{}/v1/models", tls_addr.port()))
        .args(["-w", "\n%{http_code}\n"])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("\n200\n").count(), 2, "{text}");
    assert!(text.contains("\"x-forwarded-proto\":\"https\""), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rotated_api_key_file_reaches_the_upstream_with_no_config_change_and_no_failed_request() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    for driver in DRIVERS {
        let dir = temp_dir("keyrot");
        let vol = ProjectedVolume::new(&dir.join("secret")).expect("volume");
        vol.project_one("api-key", b"sk-first\n").expect("project");
        let cfg = format!(
            "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n[admin]\nlisten = \"{{admin}}\"\n[reload]\ndebounce_ms = 50\n\n[upstreams.mock]\nurl = \"http://{}\"\napi_key_file = \"{}\"\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"mock\"\n",
            mock.addr(),
            vol.dir().join("api-key").display()
        );
        let gw = Gateway::start(&cfg, driver);
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicUsize::new(0));
        let addr = gw.addr;
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (stop, failed, ok) = (stop.clone(), failed.clone(), ok.clone());
                std::thread::spawn(move || {
                    let mut c = common::gateway::Conn::connect(addr);
                    // Bounded: at most 20 000 requests per client.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\n\r\n");
                        match sent.and_then(|_| c.read_response(false)) {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        wait_for("traffic with the first key", || {
            mock.requests()
                .last()
                .and_then(|r| r.header("authorization").map(String::from))
                == Some("Bearer sk-first".into())
        });
        vol.project_one("api-key", b"sk-second\n").expect("rotate");
        wait_for("the rotated key upstream", || {
            mock.requests()
                .last()
                .and_then(|r| r.header("authorization").map(String::from))
                == Some("Bearer sk-second".into())
        });
        // A few more requests on the new key, then stop.
        let seen = ok.load(Ordering::Relaxed);
        wait_for("requests after the rotation", || {
            ok.load(Ordering::Relaxed) > seen + 10
        });
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client thread");
        }
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "{driver:?}: failed requests"
        );
        assert_eq!(
            gw.metric("ringgate_config_generation"),
            Some(2.0),
            "{driver:?}"
        );
        assert!(
            !gw.logs().contains("sk-second"),
            "the key never reaches the logs"
        );
        drop(gw);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Bad `[server.tls]` configs, each with the key path its error must name.
#[test]
fn bad_tls_configs_name_their_key_paths() {
    let ca = ca();
    let good = leaf(&ca, &["localhost"]);
    let other = leaf(&ca, &["localhost"]);
    let dir = temp_dir("tlscfg");
    let w = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).expect("write");
    };
    w("good.crt", &good.cert_pem);
    w("good.key", &good.key_pem);
    w("other.key", &other.key_pem);
    w(
        "garbage.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    w("empty.crt", "just text, no PEM\n");
    let head =
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[server.tls]\nlisten = \"127.0.0.1:8443\"\n";
    let pair = "cert_file = \"good.crt\"\nkey_file = \"good.key\"\n";
    let cases: Vec<(&str, String, &str, usize)> = vec![
        (
            "mismatched pair",
            format!("{head}cert_file = \"good.crt\"\nkey_file = \"other.key\"\n"),
            "server.tls.key_file",
            7,
        ),
        (
            "missing file",
            format!("{head}cert_file = \"nope.crt\"\nkey_file = \"good.key\"\n"),
            "server.tls.cert_file",
            6,
        ),
        (
            "garbage PEM",
            format!("{head}cert_file = \"garbage.crt\"\nkey_file = \"good.key\"\n"),
            "server.tls.cert_file",
            6,
        ),
        (
            "no certificate in the file",
            format!("{head}cert_file = \"empty.crt\"\nkey_file = \"good.key\"\n"),
            "server.tls.cert_file",
            6,
        ),
        (
            "key file without a key",
            format!("{head}cert_file = \"good.crt\"\nkey_file = \"good.crt\"\n"),
            "server.tls.key_file",
            7,
        ),
        (
            "unknown key",
            format!("{head}{pair}ciphers = \"all\"\n"),
            "server.tls.ciphers",
            8,
        ),
        (
            "missing listen",
            format!("[server.tls]\n{pair}"),
            "server.tls",
            1,
        ),
        (
            "bad listen",
            format!("[server.tls]\nlisten = \"8443\"\n{pair}"),
            "server.tls.listen",
            2,
        ),
        (
            "same as server.listen",
            format!("[server]\nlisten = \"127.0.0.1:8443\"\n\n[server.tls]\nlisten = \"127.0.0.1:8443\"\n{pair}"),
            "server.tls.listen",
            5,
        ),
        (
            "handshake timeout zero",
            format!("{head}{pair}handshake_timeout_ms = 0\n"),
            "server.tls.handshake_timeout_ms",
            8,
        ),
        (
            "unknown sni key",
            format!("{head}{pair}[[server.tls.sni]]\nserver_names = [\"a.example\"]\ncert_file = \"good.crt\"\nkey_file = \"good.key\"\nname = \"x\"\n"),
            "server.tls.sni[0].name",
            12,
        ),
        (
            "bad sni name",
            format!("{head}{pair}[[server.tls.sni]]\nserver_names = [\"a.*.example\"]\ncert_file = \"good.crt\"\nkey_file = \"good.key\"\n"),
            "server.tls.sni[0].server_names[0]",
            9,
        ),
        (
            "duplicate sni name",
            format!("{head}{pair}[[server.tls.sni]]\nserver_names = [\"a.example\"]\ncert_file = \"good.crt\"\nkey_file = \"good.key\"\n[[server.tls.sni]]\nserver_names = [\"A.example\"]\ncert_file = \"good.crt\"\nkey_file = \"good.key\"\n"),
            "server.tls.sni[1].server_names[0]",
            13,
        ),
        (
            "sni without names",
            format!("{head}{pair}[[server.tls.sni]]\nserver_names = []\ncert_file = \"good.crt\"\nkey_file = \"other.key\"\n"),
            "server.tls.sni[0].server_names",
            9,
        ),
    ];
    for (name, text, path, line) in &cases {
        let errs = match ringgate::config::load_bytes(text.as_bytes(), &dir) {
            Ok(_) => panic!("{name}: accepted:\n{text}"),
            Err(e) => e.0,
        };
        let Some(e) = errs.iter().find(|e| e.path == *path) else {
            panic!("{name}: no error at {path}; got {errs:?}");
        };
        assert_eq!(e.line, Some(*line), "{name}: {e}");
    }
    // The good pair compiles; `ringgate check` (secret files skipped) accepts missing files.
    // A config without routes is rejected, so the good cases carry one.
    let routes = "[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
    let text = format!("{head}{pair}{routes}");
    let cfg = ringgate::config::load_bytes(text.as_bytes(), &dir).expect("good pair");
    let tls = cfg.server.tls.expect("tls");
    assert_eq!(
        tls.config.expect("server config").alpn_protocols,
        vec![b"http/1.1".to_vec()]
    );
    assert_eq!(
        cfg.watched_files,
        vec![dir.join("good.crt"), dir.join("good.key")]
    );
    let missing = format!("{head}cert_file = \"nope.crt\"\nkey_file = \"nope.key\"\n{routes}");
    ringgate::config::load_bytes_with(
        missing.as_bytes(),
        &dir,
        ringgate::config::SecretFiles::Skip,
    )
    .expect("check skips secret files");
    let _ = std::fs::remove_dir_all(dir);
}

/// A client config like [`client_config`] limited to one TLS version, with or without a
/// session store (rustls' default in-memory one).
fn client_config_for(
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    resume: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(cfg)
}

/// Server-side session resumption, and across a certificate rotation for the same name.
///
/// The chosen behaviour: a session resumes after the rotation. The session cache and the
/// ticket keys are process-wide, not per config generation (`config::tls`): a rotation is
/// routine (cert-manager renews every few weeks), and refusing every session it finds would
/// turn each renewal into a full-handshake storm from every client at once. A resumed
/// session was authenticated by a certificate this server held when it was made; a
/// compromised key calls for a restart, which drops the ticket keys and the cache.
/// Checked for TLS 1.3 (tickets) and TLS 1.2.
#[test]
fn sessions_resume_across_a_certificate_rotation() {
    use rustls::HandshakeKind;
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let ca = ca();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let what = format!("{:?}", version.version);
        let resuming = client_config_for(&ca.pem, version, true);
        let fresh = client_config_for(&ca.pem, version, false);
        let first = leaf(&ca, &["localhost"]);
        let second = leaf(&ca, &["localhost"]);
        let (dir, vol) = secret_volume("resume");
        project_pair(&vol, &first.cert_pem, &first.key_pem);
        let cfg = config(
            &mock,
            &vol.dir().join("tls.crt"),
            &vol.dir().join("tls.key"),
            "",
        );
        let gw = Gateway::start(&cfg, Driver::IoUring);
        let tls_addr: SocketAddr = gw.tls.expect("tls listener reported");

        // A full handshake; the request also reads the session tickets the server sends.
        let mut a = HttpsConn::connect(tls_addr, "localhost", &resuming).expect("conn A");
        assert_eq!(
            a.tls.conn.handshake_kind(),
            Some(HandshakeKind::Full),
            "{what}"
        );
        assert_eq!(a.get("/v1/echo").expect("A").0, 200, "{what}");
        drop(a);
        // The server resumes what it issued.
        let mut b = HttpsConn::connect(tls_addr, "localhost", &resuming).expect("conn B");
        assert_eq!(
            b.tls.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{what}: no resumption before any rotation"
        );
        assert_eq!(b.get("/v1/echo").expect("B").0, 200, "{what}");
        drop(b);

        // Rotate, and wait until a client without a session gets the new certificate.
        project_pair(&vol, &second.cert_pem, &second.key_pem);
        wait_for("the rotated certificate on a new connection", || {
            HttpsConn::connect(tls_addr, "localhost", &fresh)
                .map(|c| c.peer_leaf() == second.der)
                .unwrap_or(false)
        });
        // A session from before the rotation still resumes, and serves requests.
        let mut c = HttpsConn::connect(tls_addr, "localhost", &resuming).expect("conn C");
        assert_eq!(
            c.tls.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{what}: the session did not survive the rotation"
        );
        assert_eq!(c.get("/v1/echo").expect("C").0, 200, "{what}");
        drop(c);
        drop(gw);
        let _ = std::fs::remove_dir_all(dir);
    }
}
