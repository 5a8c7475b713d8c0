//! The load client: closed-loop, keep-alive HTTP/1.1 on a monoio runtime (io_uring, epoll
//! when io_uring is blocked) on the calling thread. Every path gets the same client, request
//! bytes and connection count; warm-up requests are not counted; latency goes to an
//! hdrhistogram in nanoseconds; every failure is counted by kind.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// What to send, where, how hard and for how long.
#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// A complete request (head and body), sent as-is on every iteration.
    pub request: Rc<Vec<u8>>,
    pub connections: usize,
    pub warmup: Duration,
    /// The measured window; with `stop`, the longest it may last.
    pub duration: Duration,
    /// Paced at this many requests/s in total, each connection at its share; sends that fall
    /// behind the pace are counted (`late_sends`). Closed loop when None.
    pub rate: Option<f64>,
    /// Ends the measured window early when set.
    pub stop: Option<Arc<AtomicBool>>,
    /// HTTPS: the client config and the name to send as SNI.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Conn {
    async fn open(spec: &LoadSpec) -> Result<Conn, ()> {
        let tcp = TcpStream::connect(spec.addr).await.map_err(|_| ())?;
        let _ = tcp.set_nodelay(true);
        match &spec.tls {
            None => Ok(Conn::Plain(tcp)),
            Some((config, name)) => monoio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map(|s| Conn::Tls(Box::new(s)))
                .map_err(|_| ()),
        }
    }

    async fn write_all(&mut self, b: Rc<Vec<u8>>) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(b).await.0.map(|_| ()),
            Conn::Tls(s) => s.write_all(b).await.0.map(|_| ()),
        }
    }

    async fn read(
        &mut self,
        buf: monoio::buf::SliceMut<Vec<u8>>,
    ) -> (std::io::Result<usize>, monoio::buf::SliceMut<Vec<u8>>) {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }
}

/// Failures by kind; any of them counts as a failed request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Errors {
    /// connect(2) failed.
    pub connect: u64,
    /// The connection broke (reset, EOF mid-response, write error) or a response was unreadable.
    pub io: u64,
    /// A response whose status was not 2xx.
    pub status: u64,
    /// A response that took longer than 10 s.
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.status + self.timeout
    }

    /// "0" or e.g. "3 (io 2, status 1)".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("connect", self.connect),
            ("io", self.io),
            ("status", self.status),
            ("timeout", self.timeout),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if parts.is_empty() {
            "0".into()
        } else {
            format!("{} ({})", self.total(), parts.join(", "))
        }
    }
}

/// One measured run.
pub struct LoadResult {
    /// Successful requests that completed inside the measured window.
    pub completed: u64,
    /// Successful requests over the whole run, warm-up included (for CPU per request).
    pub all_completed: u64,
    pub elapsed: Duration,
    /// Latency of those requests, nanoseconds.
    pub hist: Histogram<u64>,
    pub errors: Errors,
    /// Paced mode: sends that went out over 2 ms after their due time (the path fell behind).
    pub late_sends: u64,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A fresh latency histogram: 1 ns .. 100 s at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant, valid bounds")
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Warmup,
    Measure,
    Stop,
}

struct Shared {
    spec: LoadSpec,
    phase: Cell<Phase>,
    measure_start: Cell<Instant>,
    completed: Cell<u64>,
    all_completed: Cell<u64>,
    late_sends: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    errors: Cell<Errors>,
}

impl Shared {
    fn error(&self, f: impl FnOnce(&mut Errors)) {
        if self.phase.get() == Phase::Measure {
            let mut e = self.errors.get();
            f(&mut e);
            self.errors.set(e);
        }
    }
}

/// Runs `spec` on a new runtime on this thread; returns when the window closed and every
/// connection finished its request in flight (bounded).
pub fn run(spec: &LoadSpec) -> Result<LoadResult, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .build()
        .map_err(|e| format!("load client runtime: {e}"))?;
    let spec = spec.clone();
    rt.block_on(async move {
        let shared = Rc::new(Shared {
            spec: spec.clone(),
            phase: Cell::new(Phase::Warmup),
            measure_start: Cell::new(Instant::now()),
            completed: Cell::new(0),
            all_completed: Cell::new(0),
            late_sends: Cell::new(0),
            hist: RefCell::new(new_hist()),
            errors: Cell::new(Errors::default()),
        });
        let mut tasks = Vec::with_capacity(spec.connections);
        for k in 0..spec.connections {
            tasks.push(monoio::spawn(connection(shared.clone(), k)));
        }
        monoio::time::sleep(spec.warmup).await;
        shared.measure_start.set(Instant::now());
        shared.phase.set(Phase::Measure);
        match &spec.stop {
            None => monoio::time::sleep(spec.duration).await,
            Some(flag) => {
                let end = Instant::now() + spec.duration;
                while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        shared.phase.set(Phase::Stop);
        let elapsed = shared.measure_start.get().elapsed();
        // Let in-flight requests finish so connections close cleanly; bounded.
        let _ = monoio::time::timeout(Duration::from_secs(11), async {
            for t in tasks {
                t.await;
            }
        })
        .await;
        let hist = shared.hist.borrow().clone();
        Ok(LoadResult {
            completed: shared.completed.get(),
            all_completed: shared.all_completed.get(),
            late_sends: shared.late_sends.get(),
            elapsed,
            hist,
            errors: shared.errors.get(),
        })
    })
}

async fn connection(shared: Rc<Shared>, k: usize) {
    let mut stream: Option<Conn> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    // Paced mode: this connection's sends are due every `interval`, staggered by `k`.
    let interval = shared
        .spec
        .rate
        .map(|r| Duration::from_secs_f64(shared.spec.connections as f64 / r.max(1.0)));
    let mut due =
        interval.map(|i| Instant::now() + i.mul_f64(k as f64 / shared.spec.connections as f64));
    while shared.phase.get() != Phase::Stop {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match Conn::open(&shared.spec).await {
                Ok(s) => {
                    buf.clear();
                    stream.insert(s)
                }
                Err(()) => {
                    shared.error(|e| e.connect += 1);
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if let (Some(d), Some(i)) = (due.as_mut(), interval) {
            let scheduled = *d;
            *d += i;
            let now = Instant::now();
            if scheduled > now {
                monoio::time::sleep(scheduled - now).await;
            } else if now - scheduled > Duration::from_millis(2) {
                // The previous response came too late to keep the pace: counted, so a
                // stall shows up even though latency is timed from the actual send (the
                // runtime's timer is only ms-precise, so timing from the due time would
                // charge its lateness to the path under test).
                if shared.phase.get() == Phase::Measure {
                    shared.late_sends.set(shared.late_sends.get() + 1);
                }
                // Do not try to catch up with a burst: resume the pace from now.
                *d = now + i;
            }
        }
        let started = Instant::now();
        let res = s.write_all(shared.spec.request.clone()).await;
        if res.is_err() {
            shared.error(|e| e.io += 1);
            stream = None;
            continue;
        }
        let outcome =
            monoio::time::timeout(Duration::from_secs(10), read_response(s, &mut buf)).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok((status, keep_alive))) => {
                if (200..300).contains(&status) {
                    shared.all_completed.set(shared.all_completed.get() + 1);
                }
                if shared.phase.get() == Phase::Measure && started >= shared.measure_start.get() {
                    if (200..300).contains(&status) {
                        shared.completed.set(shared.completed.get() + 1);
                        let ns = done.duration_since(started).as_nanos() as u64;
                        let _ = shared.hist.borrow_mut().record(ns.max(1));
                    } else {
                        shared.error(|e| e.status += 1);
                    }
                }
                if !keep_alive {
                    stream = None;
                }
            }
            Ok(Err(())) => {
                shared.error(|e| e.io += 1);
                stream = None;
            }
            Err(_) => {
                shared.error(|e| e.timeout += 1);
                stream = None;
            }
        }
    }
}

/// Reads one response into `buf` (which may hold bytes already read); leaves any bytes after
/// it in `buf`. Returns (status, whether the connection stays open).
async fn read_response(s: &mut Conn, buf: &mut Vec<u8>) -> Result<(u16, bool), ()> {
    loop {
        if let Some((status, keep_alive, total)) = complete_response(buf)? {
            buf.drain(..total);
            return Ok((status, keep_alive));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let taken = std::mem::take(buf);
        let len = taken.len();
        let cap = taken.capacity();
        let (res, slice) = s
            .read(monoio::buf::IoBufMut::slice_mut(taken, len..cap))
            .await;
        *buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
    }
}

/// When `buf` starts with a whole response: (status, keep-alive, its length in bytes).
pub fn complete_response(buf: &[u8]) -> Result<Option<(u16, bool, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = resp.code.ok_or(())?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| ())?;
            content_length = Some(v.trim().parse().map_err(|_| ())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    let body = &buf[head_len..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((status, keep_alive, head_len)));
    }
    if chunked {
        return Ok(chunked_len(body)?.map(|n| (status, keep_alive, head_len + n)));
    }
    match content_length {
        Some(n) if body.len() >= n => Ok(Some((status, keep_alive, head_len + n))),
        Some(_) => Ok(None),
        // Close-delimited bodies are not produced by any path under test.
        None => Err(()),
    }
}

/// Length of a complete chunked body at the start of `b` (through the last CRLF after the
/// trailers), or None when more bytes are needed.
pub fn chunked_len(b: &[u8]) -> Result<Option<usize>, ()> {
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&b[pos..]) else {
            return Ok(None);
        };
        let line = &b[pos..pos + eol];
        let hex = line.split(|&c| c == b';').next().unwrap_or(line);
        let hex = std::str::from_utf8(hex).map_err(|_| ())?.trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| ())?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find_crlf(&b[pos..]) else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        pos += size + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The request every path gets: a chat completion POST with a ~150-byte body, keep-alive.
pub fn chat_request(host: &str) -> Vec<u8> {
    let body = r#"{"model":"gpt-4.1","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello in five words."}],"max_tokens":32}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         authorization: Bearer sk-bench\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_delimited_by_length_and_chunks() {
        // (bytes, trailing bytes of a next response, expected (status, keep-alive) when whole)
        type Case = (&'static [u8], usize, Option<(u16, bool)>);
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", 0, Some((200, true))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1", 8, Some((200, true))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nhi", 0, None),
            (b"HTTP/1.1 503 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 0, Some((503, false))),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", 0, Some((200, true))),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n", 0, None),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=1\r\nhi\r\n0\r\nt: 1\r\n\r\n", 0, Some((200, true))),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", 0, Some((200, false))),
        ];
        for (input, trailing, want) in cases {
            let got = complete_response(input).expect("parses");
            let want = want.map(|(st, ka)| (st, ka, input.len() - trailing));
            assert_eq!(got, want, "{}", String::from_utf8_lossy(input));
        }
        assert!(complete_response(b"NOT HTTP\r\n\r\n").is_err());
    }
}
