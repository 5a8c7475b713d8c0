//! Starts the real `ringgate` binary for integration tests: a config written into a
//! kubelet-style projected directory, listeners on port 0 whose bound ports the gateway
//! reports (`--print-ports`), a chosen I/O driver, and a SIGTERM on drop. Plus a minimal
//! blocking HTTP/1.1 client for assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ringgate_mock::kubelet::ProjectedVolume;

/// Which monoio driver the gateway runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring (the default).
    IoUring,
    /// epoll, forced with MONOIO_FORCE_LEGACY_DRIVER=1.
    Epoll,
}

/// Both drivers, for tests that must pass on each.
pub const DRIVERS: [Driver; 2] = [Driver::IoUring, Driver::Epoll];

/// A loopback port nobody listens on, for a test that needs a refused connection (a dead
/// upstream). Never used for a listener the test then expects to own: gateways bind port 0
/// and report their ports.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The environment variable that lets a test skip when a tool it runs (promtool, curl) is
/// not installed. Unset, a missing tool fails the test: CI installs them (`.ci/run`), and a
/// silent skip would pass without checking anything.
pub const ALLOW_SKIP_ENV: &str = "RINGGATE_TEST_ALLOW_SKIP";

/// `tool` is not installed: panics, unless [`ALLOW_SKIP_ENV`] is `1`, when it prints a
/// `SKIPPED` line and returns (the caller then skips its check).
pub fn tool_missing(tool: &str, hint: &str) {
    if std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: `{tool}` is not installed ({hint}); {ALLOW_SKIP_ENV}=1 allows it");
    } else {
        panic!("`{tool}` is not installed ({hint}); set {ALLOW_SKIP_ENV}=1 to skip instead");
    }
}

/// Runs `promtool check metrics` on `text`; a missing promtool fails the test unless
/// `RINGGATE_TEST_ALLOW_SKIP=1`, and then this is `None`.
pub fn promtool_check_metrics(text: &str) -> Option<(bool, String)> {
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tool_missing(
                "promtool",
                "Debian package `prometheus`; .ci/run installs it",
            );
            return None;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), msg))
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a config template's `{listen}` and `{admin}` become: port 0, which the gateway
/// resolves and reports.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// The addresses a gateway reported with `--print-ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The plain client listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The TLS client listener, with `[server.tls]`.
    pub tls: Option<SocketAddr>,
}

/// Parses `ringgate ports listen=A admin=B [tls=C]`.
pub fn parse_ports(line: &str) -> Option<Ports> {
    let rest = line.trim().strip_prefix("ringgate ports ")?;
    let (mut listen, mut admin, mut tls) = (None, None, None);
    for kv in rest.split(' ') {
        let (k, v) = kv.split_once('=')?;
        let a: SocketAddr = v.parse().ok()?;
        match k {
            "listen" => listen = Some(a),
            "admin" => admin = Some(a),
            "tls" => tls = Some(a),
            _ => return None,
        }
    }
    Some(Ports {
        listen: listen?,
        admin: admin?,
        tls,
    })
}

/// Reads the child's stdout on a thread until the ports line, then keeps draining it (so
/// the child never blocks on a full pipe). `Err` when stdout ended first (the child exited)
/// or nothing came within `limit`.
pub fn read_ports(stdout: ChildStdout, limit: Duration) -> Result<Ports, String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(p) = parse_ports(&line) {
                let _ = tx.send(p);
                break;
            }
        }
        drop(tx);
        for _ in lines {}
    });
    match rx.recv_timeout(limit) {
        Ok(p) => Ok(p),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err("the gateway exited before reporting its ports".into())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("the gateway reported no ports within {limit:?}"))
        }
    }
}

/// A unique temp dir for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "ringgate-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Client listener (as bound and reported by the gateway).
    pub addr: SocketAddr,
    /// Admin listener (as bound and reported).
    pub admin: SocketAddr,
    /// TLS client listener (as bound and reported), with `[server.tls]`.
    pub tls: Option<SocketAddr>,
    /// The projected ConfigMap directory it watches.
    pub volume: ProjectedVolume,
    /// Where its stderr (the logs) goes.
    pub log: PathBuf,
    /// Scratch dir of this gateway.
    pub dir: PathBuf,
}

/// Replaces `{listen}` and `{admin}` with port 0 on loopback.
pub fn render_any(template: &str) -> String {
    template
        .replace("{listen}", ANY_PORT)
        .replace("{admin}", ANY_PORT)
}

/// Replaces `{listen}` and `{admin}` in a config template.
pub fn render(template: &str, addr: SocketAddr, admin: SocketAddr) -> String {
    template
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &admin.to_string())
}

impl Gateway {
    /// Starts the gateway on `config` (a template with `{listen}` and `{admin}`).
    pub fn start(config: &str, driver: Driver) -> Gateway {
        Self::start_with_env(config, driver, &[])
    }

    /// As [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(config: &str, driver: Driver, env: &[(&str, &str)]) -> Gateway {
        Self::start_inner(config, driver, env, None)
    }

    /// As [`Gateway::start`], with `RLIMIT_NOFILE` set to `nofile` (soft and hard, so the
    /// gateway cannot raise it) in the child before it runs.
    pub fn start_with_nofile(config: &str, driver: Driver, nofile: u64) -> Gateway {
        Self::start_inner(config, driver, &[], Some(nofile))
    }

    fn start_inner(
        config: &str,
        driver: Driver,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Gateway {
        let dir = temp_dir("gw");
        let volume = ProjectedVolume::new(&dir.join("config")).expect("volume");
        let mut files = BTreeMap::new();
        files.insert("gateway.toml".to_string(), render_any(config).into_bytes());
        volume.project(&files).expect("project");
        let log = dir.join("gateway.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringgate"));
        cmd.arg("--config")
            .arg(volume.dir())
            .arg("--print-ports")
            .env("RINGGATE_LOG", "info,ringgate=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if driver == Driver::Epoll {
            cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        } else {
            cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; it only reads `lim`, copied into the
            // closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn ringgate");
        let stdout = child.stdout.take().expect("piped stdout");
        let ports = read_ports(stdout, Duration::from_secs(15));
        let ports = match ports {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let logs = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("{e}; log:\n{logs}");
            }
        };
        let mut gw = Gateway {
            child,
            addr: ports.listen,
            admin: ports.admin,
            tls: ports.tls,
            volume,
            log,
            dir,
        };
        gw.wait_healthy();
        gw
    }

    /// Polls `/health` on the reported port until 200; fails at once when the child exited
    /// (so a test never goes on to drive whatever else answers on that port).
    fn wait_healthy(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "gateway exited ({st}) before it was healthy; log:\n{}",
                    self.logs()
                );
            }
            if let Ok(r) = request(
                self.addr,
                "GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            ) {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not become healthy; log:\n{}", self.logs());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The config text a template becomes for this gateway: the same `{listen}`/`{admin}`
    /// (port 0) it started with, so a re-projection changes only what the test changed.
    pub fn render(&self, config: &str) -> String {
        render_any(config)
    }

    /// Re-projects the config (kubelet-style) with a new template.
    pub fn project(&self, config: &str) -> bool {
        let mut files = BTreeMap::new();
        files.insert("gateway.toml".to_string(), self.render(config).into_bytes());
        self.volume.project(&files).expect("project")
    }

    /// The gateway's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        request(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"),
        )
        .expect("admin request")
    }

    /// A metric's value from /metrics (the first sample whose name and labels start with `prefix`).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let body = self.admin_get("/metrics").text();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Polls the metric `name` (bounded: 5 s; stats are published once a second) until it
    /// equals `want`; the last value read otherwise, so callers compare the result with
    /// `Some(want)`.
    #[allow(dead_code)]
    pub fn wait_metric(&self, name: &str, want: f64) -> Option<f64> {
        let mut last = None;
        wait_until(Duration::from_secs(5), || {
            last = self.metric(name);
            last.is_some_and(|v| (v - want).abs() < 1e-6)
        });
        last
    }
}

/// Spends the one `x-mock-fail-first` failure for `key` of the mock provider at `mock`, so
/// that a request carrying the same failure knobs fails only at the other mock.
#[allow(dead_code)]
pub fn spend_mock_failure(mock: SocketAddr, key: &str) {
    let r = request(
        mock,
        &format!(
            "GET /v1/health HTTP/1.1\r\nhost: m\r\nx-mock-status: 503\r\nx-mock-fail-first: 1\r\n\
             x-mock-fail-key: {key}\r\nconnection: close\r\n\r\n"
        ),
    )
    .expect("spending the mock's failure");
    assert_eq!(r.status, 503);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    let mut c = Conn::new(s);
    c.read_response(raw.starts_with("HEAD "))
}

/// A keep-alive client connection: plain TCP by default, or any byte stream (a rustls
/// client stream for the TLS listener).
pub struct Conn<S: Read + Write = TcpStream> {
    /// The socket.
    pub stream: S,
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    /// Connects with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn::new(s)
    }
}

impl<S: Read + Write> Conn<S> {
    /// Wraps a connected socket.
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)?;
        self.stream.flush()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads until the peer closes the connection (end of stream, or a reset: a close with
    /// input left unread resets; over TLS, a TCP close without close_notify); returns
    /// everything unread. A read timeout (10 s after [`Conn::connect`]) is an error, never
    /// "closed": the peer kept the connection open.
    pub fn read_to_close(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads the head of one response (status, headers).
    pub fn read_head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return Ok((status, headers));
            }
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads one chunk of a chunked body; None at the last chunk.
    pub fn read_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk line {line:?}")))?;
                while self.buf.len() < end + 2 + size + 2 {
                    if self.fill()? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                let data = self.buf[end + 2..end + 2 + size].to_vec();
                self.buf.drain(..end + 2 + size + 2);
                return Ok(if size == 0 { None } else { Some(data) });
            }
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads and discards `n` body bytes without keeping them; returns the count read.
    pub fn count_body(&mut self, n: u64) -> std::io::Result<u64> {
        let mut got = self.buf.len().min(n as usize) as u64;
        self.buf.drain(..got as usize);
        let mut tmp = vec![0u8; 1 << 18];
        while got < n {
            let k = self.stream.read(&mut tmp)?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        Ok(got)
    }

    /// Reads one whole response.
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let (status, headers) = self.read_head()?;
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(c) = self.read_chunk()? {
                body.extend_from_slice(&c);
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            body = self.buf.drain(..len).collect();
        } else {
            body = self.read_to_close()?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}
