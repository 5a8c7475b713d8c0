//! Mock OpenAI-compatible LLM provider for ringgate's integration tests and
//! `cargo xtask demo` (through the `mock_provider` binary).
//!
//! A small, self-contained HTTP/1.1 server built on blocking `std::net`
//! (one thread per connection, keep-alive, buffered I/O, `TCP_NODELAY`).
//! Requests are parsed by hand, including chunked request bodies with chunk
//! extensions and trailers. Endpoints are matched by path *suffix*, so a
//! gateway may prepend or rewrite prefixes:
//!
//! | endpoint | methods | answer |
//! | --- | --- | --- |
//! | `.../chat/completions` | POST | `chat.completion` JSON, or SSE `chat.completion.chunk` events when `"stream": true` |
//! | `.../messages` | POST | Anthropic Messages API: a `message` JSON, or its SSE events (`message_start` ... `message_stop`) when `"stream": true`; requires `x-api-key` and `anthropic-version: 2023-06-01`; errors (and `x-mock-status`) in Anthropic's error shape |
//! | `.../models/{model}:generateContent`, `:streamGenerateContent[?alt=sse]` | POST | Gemini API: a `GenerateContentResponse`, or one per SSE event (CRLF-terminated) with `alt=sse`; requires `x-goog-api-key`; errors (and `x-mock-status`) in the google.rpc shape; a declared function is called once |
//! | `.../embeddings` | POST | embedding list, 8 floats per input |
//! | `.../models` | GET, HEAD | model list |
//! | `.../echo` | any | JSON describing the request |
//! | `.../upload` | POST, PUT | `{"bytes":N,"sha256":"hex"}` of the streamed body |
//! | `.../download?bytes=N[&framing=length\|chunked\|close]` | GET, HEAD | N pattern bytes, byte i = `i % 251` |
//! | `.../health` | GET, HEAD | `200 OK` |
//! | anything else | any | 404 with an OpenAI-shaped error |
//!
//! Tools, on both chat endpoints: when a request offers tools (OpenAI `tools[].function` or
//! Anthropic `tools[]`), does not forbid them (`tool_choice` none) and its last message is
//! not a tool result, the "model" calls the first tool: OpenAI `tool_calls` (streamed as
//! `tool_calls` deltas) or an Anthropic `tool_use` block after a text block (streamed as
//! `content_block_start` + `input_json_delta` fragments), finish reason `tool_calls` /
//! `tool_use`. The input has one value per schema property: `"mock-<name>"` for strings,
//! `1` for numbers, `true` for booleans.
//!
//! Request headers act as knobs on every endpoint: `x-mock-status`,
//! `x-mock-delay-ms`, `x-mock-chunks`, `x-mock-chunk-interval-ms`,
//! `x-mock-gate`, `x-mock-drop`, `x-mock-garbage`, `x-mock-early-100`,
//! `x-mock-close` and `x-mock-retry-after` (see [`MockProvider`]). Every
//! response carries `x-mock-conn` (connection serial, from 1) and
//! `x-mock-req` (request serial, from 1).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod gemini;

/// How many leading body bytes a [`RecordedRequest`] keeps.
const PREFIX_LIMIT: usize = 64 * 1024;
/// Largest JSON body the chat and embeddings endpoints will parse.
const JSON_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Largest request head (request line plus headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request head or trailer section.
const MAX_HEADERS: usize = 256;
/// Longest chunk-size line (with extensions) or trailer line.
const MAX_LINE: usize = 8 * 1024;
/// How long a gated stream waits for [`MockProvider::release_gate`].
const GATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer sizes and the download write size.
const IO_CHUNK: usize = 64 * 1024;
/// Default number of SSE content events, which is also the `completion_tokens` reported.
pub const DEFAULT_CHUNKS: u64 = 5;
/// Upper bound on `x-mock-chunks`.
const MAX_CHUNKS: u64 = 1_000_000;
/// Stack size of connection threads.
const CONN_STACK: usize = 512 * 1024;
/// Tokens the mock "model" emits, cycled.
const TOKENS: [&str; 8] = [
    "Hello",
    " from",
    " the",
    " ringgate",
    " mock",
    " provider",
    ".",
    " Bye",
];

/// Options for [`MockProvider::start_with`].
#[derive(Clone, Debug, Default)]
pub struct MockOptions {
    /// Server closes a keep-alive connection that stays idle (no byte of a
    /// next request) this many milliseconds, to test stale pooled
    /// connections. `None` keeps idle connections open.
    pub idle_close_ms: Option<u64>,
    /// Every response waits this long first: a slow endpoint for load-balancing tests.
    pub base_delay_ms: u64,
    /// Pause between SSE events when the request sets no `x-mock-chunk-interval-ms` (the
    /// demo spaces them so a newcomer sees streaming happen).
    pub chunk_interval_ms: u64,
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request target as sent, including any query string.
    pub path: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded body length in bytes (after de-chunking).
    pub body_len: u64,
    /// Lowercase hex SHA-256 of the decoded body.
    pub body_sha256: String,
    /// First 64 KiB of the decoded body.
    pub body_prefix: Vec<u8>,
}

impl RecordedRequest {
    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A running mock provider; dropping it stops the listener (bounded wait)
/// and shuts down every open connection.
///
/// Knobs (request headers, honoured on every endpoint):
/// - `x-mock-status: N` (200..=599, 200 = no-op): status N with an
///   OpenAI-shaped error body; no body for 204/304 or HEAD.
/// - `x-mock-delay-ms: N`: sleep before the response head.
/// - `x-mock-chunks: N`, `x-mock-chunk-interval-ms: N`: SSE content events
///   (default 5; also the token count of non-stream answers) and the sleep
///   between them.
/// - `x-mock-gate: 1`: streaming chat sends its first event, then waits for
///   [`MockProvider::release_gate`] (10 s at most, then closes).
/// - `x-mock-drop: before-response | mid-body`: close without answering, or
///   after the head and half the body (streams: after the first event).
/// - `x-mock-garbage: 1`: answer bytes that are not HTTP, then close.
/// - `x-mock-early-100: 1`: send `100 Continue` before the response.
/// - `x-mock-close: 1`: answer `Connection: close` and close.
/// - `x-mock-retry-after: N`: add `Retry-After: N`.
/// - `x-mock-fail-first: N` (with optional `x-mock-fail-key: K`): the status, drop, delay and
///   garbage knobs apply only to the first N requests with that key this mock sees.
/// - `x-mock-cached-tokens: N`: chat usage reports N of the prompt tokens as cached.
/// - `x-mock-header: name=value`: add that header to the response (one per `x-mock-header`
///   request header; send several for several).
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    accept_done: mpsc::Receiver<()>,
}

struct Shared {
    opts: MockOptions,
    stop: AtomicBool,
    record: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    request_serial: AtomicU64,
    connections: AtomicUsize,
    gate: Mutex<u64>,
    gate_cv: Condvar,
    live: Mutex<HashMap<u64, TcpStream>>,
    fail_counts: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MockProvider {
    /// Starts a mock listening on `listen` (`"127.0.0.1:0"` for an
    /// ephemeral port) with default options.
    pub fn start(listen: &str) -> io::Result<MockProvider> {
        Self::start_with(listen, MockOptions::default())
    }

    /// Starts a mock listening on `listen` with `opts`.
    pub fn start_with(listen: &str, opts: MockOptions) -> io::Result<MockProvider> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            opts,
            stop: AtomicBool::new(false),
            record: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            request_serial: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            gate: Mutex::new(0),
            gate_cv: Condvar::new(),
            live: Mutex::new(HashMap::new()),
            fail_counts: Mutex::new(HashMap::new()),
        });
        let (done_tx, accept_done) = mpsc::channel();
        let sh = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || {
                accept_loop(&listener, &sh);
                let _ = done_tx.send(());
            })?;
        Ok(MockProvider {
            addr,
            shared,
            accept_thread: Some(accept_thread),
            accept_done,
        })
    }

    /// Address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order of arrival of its full body.
    /// A request is recorded before its response is sent.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Releases every gated stream (`x-mock-gate: 1`) whose request arrived
    /// before this call.
    pub fn release_gate(&self) {
        let mut g = lock(&self.shared.gate);
        *g += 1;
        self.shared.gate_cv.notify_all();
    }

    /// Serves until the process is killed. Requests are no longer recorded,
    /// since nobody can read them, so memory stays flat under load.
    pub fn run_forever(mut self) {
        self.shared.record.store(false, Ordering::SeqCst);
        if let Some(h) = self.accept_thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.gate);
            self.shared.gate_cv.notify_all();
        }
        for (_, s) in lock(&self.shared.live).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept() so the listener thread sees `stop`.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = self.accept_thread.take() {
            if self
                .accept_done
                .recv_timeout(Duration::from_secs(2))
                .is_ok()
            {
                let _ = h.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let res = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match res {
            Ok((stream, _)) => {
                let serial = shared.connections.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                let sh = Arc::clone(shared);
                // A failed spawn drops the stream: the client sees a close.
                let _ = thread::Builder::new()
                    .name(format!("mock-conn-{serial}"))
                    .stack_size(CONN_STACK)
                    .spawn(move || serve_connection(&sh, stream, serial));
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// What happens to the connection after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Read the next request.
    KeepAlive,
    /// Flush, send FIN, drain briefly, close.
    Close,
    /// Close at once.
    Abort,
}

fn serve_connection(shared: &Shared, stream: TcpStream, conn: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    if let Ok(s) = stream.try_clone() {
        lock(&shared.live).insert(conn, s);
    }
    let mut reader = BufReader::with_capacity(IO_CHUNK, stream);
    let mut writer = BufWriter::with_capacity(IO_CHUNK, write_half);
    let idle = shared.opts.idle_close_ms.map(Duration::from_millis);
    let outcome = loop {
        if shared.stop.load(Ordering::SeqCst) || !wait_for_request(&mut reader, idle) {
            break Outcome::Abort;
        }
        let outcome = match read_head(&mut reader) {
            Ok(head) => handle_request(shared, conn, head, &mut reader, &mut writer),
            Err(HeadError::Io) => Outcome::Abort,
            Err(HeadError::Bad(status, msg)) => {
                let mut resp = Resp::new(&mut writer, conn, 0, false);
                let _ = resp.error(status, &msg);
                Outcome::Close
            }
        };
        if outcome != Outcome::KeepAlive {
            break outcome;
        }
    };
    lock(&shared.live).remove(&conn);
    match outcome {
        Outcome::Close => graceful_close(reader, writer),
        _ => {
            let _ = writer.get_ref().shutdown(Shutdown::Both);
        }
    }
}

/// Flush, half-close, and drain what the peer still sends for a short while
/// so that unread input does not turn our FIN into a RST.
fn graceful_close(mut reader: BufReader<TcpStream>, mut writer: BufWriter<TcpStream>) {
    let _ = writer.flush();
    let _ = writer.get_ref().shutdown(Shutdown::Write);
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while Instant::now() < deadline && total < (1 << 20) {
        match reader.get_mut().read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Waits for the first byte of the next request. False on EOF, error or
/// idle timeout.
fn wait_for_request(reader: &mut BufReader<TcpStream>, idle: Option<Duration>) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    if idle.is_some() {
        let _ = reader.get_ref().set_read_timeout(idle);
    }
    let ready = loop {
        match reader.fill_buf() {
            Ok(b) => break !b.is_empty(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if idle.is_some() {
        let _ = reader.get_ref().set_read_timeout(None);
    }
    ready
}

// ---------------------------------------------------------------------------
// Request parsing

struct RequestHead {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            false
        } else if self.minor == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            true
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

enum HeadError {
    Io,
    Bad(u16, String),
}

impl From<io::Error> for HeadError {
    fn from(_: io::Error) -> Self {
        HeadError::Io
    }
}

/// Reads one line (without CR LF / LF) of at most `max` bytes into `out`.
/// Returns `Ok(false)` on EOF before any byte.
fn read_line_limited(
    reader: &mut BufReader<TcpStream>,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    out.clear();
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if out.is_empty() {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (found, used) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (true, i + 1),
            None => (false, buf.len()),
        };
        if out.len() + used > max + 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        out.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if found {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(true);
        }
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Result<RequestHead, HeadError> {
    let mut line = Vec::with_capacity(256);
    let mut total = 0usize;
    // RFC 9112 2.2: ignore at least one empty line before the request line.
    let request_line = loop {
        if !read_line_limited(reader, &mut line, MAX_HEAD_BYTES)? {
            return Err(HeadError::Io);
        }
        total += line.len() + 2;
        if total > MAX_HEAD_BYTES {
            return Err(HeadError::Bad(431, "request head too large".into()));
        }
        if !line.is_empty() {
            break String::from_utf8_lossy(&line).into_owned();
        }
    };
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(HeadError::Bad(400, "malformed request line".into())),
    };
    if !method.bytes().all(is_tchar) {
        return Err(HeadError::Bad(400, "malformed method".into()));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => {
            return Err(HeadError::Bad(505, "HTTP version not supported".into()));
        }
        _ => return Err(HeadError::Bad(400, "malformed HTTP version".into())),
    };
    let mut headers = Vec::new();
    loop {
        if !read_line_limited(reader, &mut line, MAX_HEAD_BYTES)? {
            return Err(HeadError::Io);
        }
        total += line.len() + 2;
        if total > MAX_HEAD_BYTES || headers.len() >= MAX_HEADERS {
            return Err(HeadError::Bad(431, "request head too large".into()));
        }
        if line.is_empty() {
            break;
        }
        headers.push(
            parse_field(&line)
                .ok_or_else(|| HeadError::Bad(400, "malformed header field".into()))?,
        );
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `name: value`; rejects obs-fold and whitespace before the colon.
fn parse_field(line: &[u8]) -> Option<(String, String)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let value = String::from_utf8_lossy(&line[colon + 1..]);
    Some((
        String::from_utf8_lossy(name).into_owned(),
        value.trim_matches(|c| c == ' ' || c == '\t').to_string(),
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
}

fn request_body_framing(head: &RequestHead) -> Result<BodyFraming, String> {
    let te: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(last) = te.last() {
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(BodyFraming::Chunked)
        } else {
            Err("unsupported transfer-encoding".into())
        };
    }
    let mut len: Option<u64> = None;
    for (_, v) in head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid content-length".into());
            }
            let n: u64 = part
                .parse()
                .map_err(|_| "invalid content-length".to_string())?;
            if len.is_some_and(|l| l != n) {
                return Err("conflicting content-length".into());
            }
            len = Some(n);
        }
    }
    Ok(BodyFraming::Length(len.unwrap_or(0)))
}

/// Consumes a request body as it streams in: hash, length, 64 KiB prefix,
/// and (for JSON endpoints) the whole body up to [`JSON_BODY_LIMIT`].
struct BodySink {
    hasher: Sha256,
    len: u64,
    prefix: Vec<u8>,
    full: Option<Vec<u8>>,
    full_overflow: bool,
}

impl BodySink {
    fn new(keep_full: bool) -> Self {
        BodySink {
            hasher: Sha256::new(),
            len: 0,
            prefix: Vec::new(),
            full: keep_full.then(Vec::new),
            full_overflow: false,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
        if self.prefix.len() < PREFIX_LIMIT {
            let take = (PREFIX_LIMIT - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
        }
        if let Some(full) = &mut self.full {
            if full.len() + data.len() > JSON_BODY_LIMIT {
                self.full = None;
                self.full_overflow = true;
            } else {
                full.extend_from_slice(data);
            }
        }
    }
}

enum BodyError {
    Io,
    Bad(String),
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            BodyError::Bad(e.to_string())
        } else {
            BodyError::Io
        }
    }
}

/// Copies exactly `n` bytes from `reader` into `sink`.
fn copy_exact(
    reader: &mut BufReader<TcpStream>,
    mut n: u64,
    sink: &mut BodySink,
) -> io::Result<()> {
    while n > 0 {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        sink.feed(&buf[..take]);
        reader.consume(take);
        n -= take as u64;
    }
    Ok(())
}

fn read_body(
    reader: &mut BufReader<TcpStream>,
    framing: BodyFraming,
    sink: &mut BodySink,
) -> Result<(), BodyError> {
    match framing {
        BodyFraming::Length(n) => Ok(copy_exact(reader, n, sink)?),
        BodyFraming::Chunked => read_chunked(reader, sink),
    }
}

fn read_chunked(reader: &mut BufReader<TcpStream>, sink: &mut BodySink) -> Result<(), BodyError> {
    let mut line = Vec::with_capacity(64);
    loop {
        if !read_line_limited(reader, &mut line, MAX_LINE)? {
            return Err(BodyError::Io);
        }
        // chunk-size [ BWS ";" chunk-ext ]
        let size_end = line
            .iter()
            .position(|&b| b == b';' || b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let size_hex = &line[..size_end];
        if size_hex.is_empty() || size_hex.len() > 15 || !size_hex.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(BodyError::Bad("malformed chunk size".into()));
        }
        let rest = &line[size_end..];
        let rest_trimmed: Vec<u8> = rest
            .iter()
            .copied()
            .skip_while(|&b| b == b' ' || b == b'\t')
            .collect();
        if !rest_trimmed.is_empty() && rest_trimmed[0] != b';' {
            return Err(BodyError::Bad("malformed chunk extension".into()));
        }
        let size = size_hex
            .iter()
            .fold(0u64, |acc, &b| (acc << 4) | u64::from(hex_val(b)));
        if size == 0 {
            // Trailer section, ends with an empty line.
            let mut count = 0usize;
            loop {
                if !read_line_limited(reader, &mut line, MAX_LINE)? {
                    return Err(BodyError::Io);
                }
                if line.is_empty() {
                    return Ok(());
                }
                count += 1;
                if count > MAX_HEADERS || parse_field(&line).is_none() {
                    return Err(BodyError::Bad("malformed trailer section".into()));
                }
            }
        }
        copy_exact(reader, size, sink)?;
        if !read_line_limited(reader, &mut line, MAX_LINE)? || !line.is_empty() {
            return Err(BodyError::Bad("missing CRLF after chunk data".into()));
        }
    }
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Knobs and routing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropMode {
    BeforeResponse,
    MidBody,
}

#[derive(Default)]
struct Knobs {
    status: Option<u16>,
    delay_ms: u64,
    chunks: Option<u64>,
    interval_ms: u64,
    gate: bool,
    drop: Option<DropMode>,
    garbage: bool,
    early_100: bool,
    close: bool,
    retry_after: Option<String>,
    cached_tokens: u64,
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some(s) if s == "1" || s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes"))
}

fn num(v: Option<&str>) -> Option<u64> {
    v.and_then(|s| s.trim().parse().ok())
}

impl Knobs {
    fn from_head(head: &RequestHead) -> Knobs {
        let h = |n| head.header(n);
        Knobs {
            status: num(h("x-mock-status"))
                .filter(|s| (201..=599).contains(s))
                .map(|s| s as u16),
            delay_ms: num(h("x-mock-delay-ms")).unwrap_or(0),
            chunks: num(h("x-mock-chunks")).map(|n| n.min(MAX_CHUNKS)),
            interval_ms: num(h("x-mock-chunk-interval-ms")).unwrap_or(0),
            cached_tokens: num(h("x-mock-cached-tokens")).unwrap_or(0),
            gate: truthy(h("x-mock-gate")),
            drop: match h("x-mock-drop").map(str::trim) {
                Some(v) if v.eq_ignore_ascii_case("before-response") => {
                    Some(DropMode::BeforeResponse)
                }
                Some(v) if v.eq_ignore_ascii_case("mid-body") => Some(DropMode::MidBody),
                _ => None,
            },
            garbage: truthy(h("x-mock-garbage")),
            early_100: truthy(h("x-mock-early-100")),
            close: truthy(h("x-mock-close")),
            retry_after: h("x-mock-retry-after")
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| (0x21..0x7f).contains(&b)))
                .map(str::to_string),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Messages,
    Gemini,
    Embeddings,
    Models,
    Echo,
    Upload,
    Download,
    Health,
    NotFound,
}

/// Splits a request target into (path, query), accepting absolute-form.
fn split_target(target: &str) -> (&str, &str) {
    let mut t = target;
    if let Some(i) = t.find("://") {
        let after = &t[i + 3..];
        t = after.find('/').map_or("/", |j| &after[j..]);
    }
    match t.split_once('?') {
        Some((p, q)) => (p, q),
        None => (t, ""),
    }
}

fn route(path: &str) -> Endpoint {
    let p = path.trim_end_matches('/');
    if gemini::method_of(p).is_some() {
        Endpoint::Gemini
    } else if p.ends_with("/chat/completions") {
        Endpoint::Chat
    } else if p.ends_with("/messages") {
        Endpoint::Messages
    } else if p.ends_with("/embeddings") {
        Endpoint::Embeddings
    } else if p.ends_with("/models") {
        Endpoint::Models
    } else if p.ends_with("/echo") {
        Endpoint::Echo
    } else if p.ends_with("/upload") {
        Endpoint::Upload
    } else if p.ends_with("/download") {
        Endpoint::Download
    } else if p.ends_with("/health") {
        Endpoint::Health
    } else {
        Endpoint::NotFound
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------
// Responses

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
    Empty,
}

struct Resp<'a> {
    w: &'a mut BufWriter<TcpStream>,
    head_only: bool,
    keep_alive: bool,
    http10: bool,
    conn: u64,
    req: u64,
    retry_after: Option<String>,
    extra_headers: Vec<(String, String)>,
    drop_mid: bool,
    framing: Framing,
}

impl<'a> Resp<'a> {
    fn new(w: &'a mut BufWriter<TcpStream>, conn: u64, req: u64, keep_alive: bool) -> Self {
        Resp {
            w,
            head_only: false,
            keep_alive,
            http10: false,
            conn,
            req,
            retry_after: None,
            extra_headers: Vec::new(),
            drop_mid: false,
            framing: Framing::Empty,
        }
    }

    fn head(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        framing: Framing,
        extra: &[(&str, &str)],
    ) -> io::Result<()> {
        let framing = if framing == Framing::Chunked && self.http10 {
            Framing::Close
        } else {
            framing
        };
        if framing == Framing::Close {
            self.keep_alive = false;
        }
        self.framing = framing;
        let mut h = String::with_capacity(320);
        let _ = write!(
            h,
            "HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: ringgate-mock\r\n",
            reason(status),
            http_date()
        );
        if let Some(ct) = content_type {
            let _ = write!(h, "Content-Type: {ct}\r\n");
        }
        match framing {
            Framing::Length(n) => {
                let _ = write!(h, "Content-Length: {n}\r\n");
            }
            Framing::Chunked => h.push_str("Transfer-Encoding: chunked\r\n"),
            Framing::Close | Framing::Empty => {}
        }
        if !self.keep_alive {
            h.push_str("Connection: close\r\n");
        } else if self.http10 {
            h.push_str("Connection: keep-alive\r\n");
        }
        let _ = write!(
            h,
            "x-mock-conn: {}\r\nx-mock-req: {}\r\n",
            self.conn, self.req
        );
        if let Some(ra) = &self.retry_after {
            let _ = write!(h, "Retry-After: {ra}\r\n");
        }
        for (k, v) in &self.extra_headers {
            let _ = write!(h, "{k}: {v}\r\n");
        }
        for (k, v) in extra {
            let _ = write!(h, "{k}: {v}\r\n");
        }
        h.push_str("\r\n");
        self.w.write_all(h.as_bytes())
    }

    /// Writes body bytes in the current framing (one HTTP chunk if chunked).
    fn body(&mut self, data: &[u8]) -> io::Result<()> {
        if self.head_only || data.is_empty() {
            return Ok(());
        }
        if self.framing == Framing::Chunked {
            write!(self.w, "{:x}\r\n", data.len())?;
            self.w.write_all(data)?;
            self.w.write_all(b"\r\n")
        } else {
            self.w.write_all(data)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    fn finish(&mut self) -> io::Result<Outcome> {
        if self.framing == Framing::Chunked && !self.head_only {
            self.w.write_all(b"0\r\n\r\n")?;
        }
        self.w.flush()?;
        Ok(if self.keep_alive {
            Outcome::KeepAlive
        } else {
            Outcome::Close
        })
    }

    /// Sends a complete Content-Length framed response (or none for 204/304).
    fn full(
        &mut self,
        status: u16,
        ct: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> io::Result<Outcome> {
        if status == 204 || status == 304 {
            self.head(status, None, Framing::Empty, extra)?;
            return self.finish();
        }
        self.head(status, Some(ct), Framing::Length(body.len() as u64), extra)?;
        if self.drop_mid {
            self.body(&body[..body.len() / 2])?;
            self.flush()?;
            return Ok(Outcome::Abort);
        }
        self.body(body)?;
        self.finish()
    }

    fn json(&mut self, status: u16, v: &Value) -> io::Result<Outcome> {
        let body = serde_json::to_vec(v).unwrap_or_default();
        self.full(status, "application/json", &body, &[])
    }

    fn error(&mut self, status: u16, message: &str) -> io::Result<Outcome> {
        self.json(status, &error_json(status, message))
    }
}

fn error_json(status: u16, message: &str) -> Value {
    let (ty, code) = match status {
        400 | 422 => ("invalid_request_error", "invalid_request"),
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("permission_error", "permission_denied"),
        404 => ("invalid_request_error", "not_found"),
        405 => ("invalid_request_error", "method_not_allowed"),
        408 => ("timeout", "timeout"),
        409 => ("invalid_request_error", "conflict"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("requests", "rate_limit_exceeded"),
        431 => ("invalid_request_error", "headers_too_large"),
        500 => ("server_error", "internal_error"),
        502 => ("server_error", "bad_gateway"),
        503 => ("server_error", "service_unavailable"),
        504 => ("server_error", "gateway_timeout"),
        s if s >= 500 => ("server_error", "server_error"),
        _ => ("mock_error", "mock_status"),
    };
    json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Mock Status",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// IMF-fixdate for the `Date` header.
fn http_date() -> String {
    imf_fixdate(unix_now())
}

/// `secs` since the Unix epoch as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn imf_fixdate(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday.
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = ringgate::civil::civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// ---------------------------------------------------------------------------
// Request handling

fn handle_request(
    shared: &Shared,
    conn: u64,
    head: RequestHead,
    reader: &mut BufReader<TcpStream>,
    writer: &mut BufWriter<TcpStream>,
) -> Outcome {
    let req = shared.request_serial.fetch_add(1, Ordering::SeqCst) + 1;
    let gate_snapshot = *lock(&shared.gate);
    let mut knobs = Knobs::from_head(&head);
    if head.header("x-mock-chunk-interval-ms").is_none() {
        knobs.interval_ms = shared.opts.chunk_interval_ms;
    }
    // `x-mock-fail-first: N` limits the failure knobs (status, drop, delay) to the first N
    // requests this mock sees with the same `x-mock-fail-key`, so retries can succeed.
    if let Some(n) = num(head.header("x-mock-fail-first")) {
        let key = head.header("x-mock-fail-key").unwrap_or("").to_string();
        let mut counts = lock(&shared.fail_counts);
        let seen = counts.entry(key).or_insert(0);
        *seen += 1;
        if *seen > n {
            knobs.status = None;
            knobs.drop = None;
            knobs.delay_ms = 0;
            knobs.garbage = false;
        }
    }
    let (path, query) = split_target(&head.target);
    let endpoint = route(path);

    let framing = match request_body_framing(&head) {
        Ok(f) => f,
        Err(msg) => {
            let _ = Resp::new(writer, conn, req, false).error(400, &msg);
            return Outcome::Close;
        }
    };
    let expects_continue = head.minor == 1
        && framing != BodyFraming::Length(0)
        && head.has_token("expect", "100-continue");
    if expects_continue && !send_continue(writer) {
        return Outcome::Abort;
    }
    let mut sink = BodySink::new(matches!(
        endpoint,
        Endpoint::Chat | Endpoint::Messages | Endpoint::Gemini | Endpoint::Embeddings
    ));
    match read_body(reader, framing, &mut sink) {
        Ok(()) => {}
        Err(BodyError::Io) => return Outcome::Abort,
        Err(BodyError::Bad(msg)) => {
            let _ = Resp::new(writer, conn, req, false).error(400, &msg);
            return Outcome::Close;
        }
    }
    let BodySink {
        hasher,
        len: body_len,
        prefix,
        full,
        full_overflow,
    } = sink;
    let recorded = RecordedRequest {
        method: head.method.clone(),
        path: head.target.clone(),
        headers: head.headers.clone(),
        body_len,
        body_sha256: hex(&hasher.finalize()),
        body_prefix: prefix,
    };

    if knobs.early_100 && !send_continue(writer) {
        return Outcome::Abort;
    }
    let ctx = Ctx {
        shared,
        knobs: &knobs,
        head: &head,
        path,
        query,
        recorded: &recorded,
        body: full.as_deref(),
        body_overflow: full_overflow,
        gate_snapshot,
        req,
    };
    if shared.record.load(Ordering::SeqCst) {
        lock(&shared.requests).push(recorded.clone());
    }

    if knobs.delay_ms + shared.opts.base_delay_ms > 0 {
        thread::sleep(Duration::from_millis(
            knobs.delay_ms + shared.opts.base_delay_ms,
        ));
    }
    if knobs.drop == Some(DropMode::BeforeResponse) {
        return Outcome::Abort;
    }
    if knobs.garbage {
        let _ = writer
            .write_all(b"THIS IS NOT HTTP \x00\xff\xfe garbage from ringgate-mock\r\n\r\n")
            .and_then(|()| writer.flush());
        return Outcome::Close;
    }

    // RFC 9112 6.1: a request with both Transfer-Encoding and Content-Length
    // may be a smuggling attempt; answer it, then close.
    let smuggle_risk =
        head.header("transfer-encoding").is_some() && head.header("content-length").is_some();
    let keep_alive = head.wants_keep_alive()
        && !knobs.close
        && !smuggle_risk
        && !shared.stop.load(Ordering::SeqCst);
    let mut resp = Resp::new(writer, conn, req, keep_alive);
    resp.head_only = head.method == "HEAD";
    resp.http10 = head.minor == 0;
    resp.retry_after = knobs.retry_after.clone();
    resp.extra_headers = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-mock-header"))
        .filter_map(|(_, v)| v.split_once('='))
        .filter(|(k, v)| {
            !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && v.bytes().all(|b| (0x20..0x7f).contains(&b))
        })
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    resp.drop_mid = knobs.drop == Some(DropMode::MidBody);

    let result = match knobs.status {
        Some(st) if endpoint == Endpoint::Gemini => gemini::error(
            &mut resp,
            st,
            &format!("mock error: status {st} requested via x-mock-status"),
        ),
        Some(st) if endpoint == Endpoint::Messages => anthropic_error(
            &mut resp,
            st,
            &format!("mock error: status {st} requested via x-mock-status"),
        ),
        Some(st) => resp.error(
            st,
            &format!("mock error: status {st} requested via x-mock-status"),
        ),
        None => dispatch(&ctx, endpoint, &mut resp),
    };
    result.unwrap_or(Outcome::Abort)
}

/// Writes an interim `100 Continue`; false if the peer is gone.
fn send_continue(writer: &mut BufWriter<TcpStream>) -> bool {
    writer
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .and_then(|()| writer.flush())
        .is_ok()
}

struct Ctx<'a> {
    shared: &'a Shared,
    knobs: &'a Knobs,
    head: &'a RequestHead,
    path: &'a str,
    query: &'a str,
    recorded: &'a RecordedRequest,
    body: Option<&'a [u8]>,
    body_overflow: bool,
    gate_snapshot: u64,
    req: u64,
}

fn method_not_allowed(resp: &mut Resp<'_>, ctx: &Ctx<'_>, allow: &str) -> io::Result<Outcome> {
    let body = serde_json::to_vec(&error_json(
        405,
        &format!("method {} not allowed; use {allow}", ctx.head.method),
    ))
    .unwrap_or_default();
    resp.full(405, "application/json", &body, &[("Allow", allow)])
}

fn dispatch(ctx: &Ctx<'_>, endpoint: Endpoint, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let m = ctx.head.method.as_str();
    let get_like = m == "GET" || m == "HEAD";
    match endpoint {
        Endpoint::Chat if m == "POST" => chat(ctx, resp),
        Endpoint::Messages if m == "POST" => messages(ctx, resp),
        Endpoint::Messages => anthropic_error(resp, 405, "use POST"),
        Endpoint::Gemini if m == "POST" => gemini::generate(ctx, resp),
        Endpoint::Gemini => gemini::error(resp, 405, "use POST"),
        Endpoint::Embeddings if m == "POST" => embeddings(ctx, resp),
        Endpoint::Models if get_like => resp.json(200, &models_json()),
        Endpoint::Echo => echo(ctx, resp),
        Endpoint::Upload if m == "POST" || m == "PUT" => resp.json(
            200,
            &json!({"bytes": ctx.recorded.body_len, "sha256": ctx.recorded.body_sha256}),
        ),
        Endpoint::Download if get_like => download(ctx, resp),
        Endpoint::Health if get_like => resp.full(200, "text/plain", b"OK", &[]),
        Endpoint::Chat | Endpoint::Embeddings => method_not_allowed(resp, ctx, "POST"),
        Endpoint::Upload => method_not_allowed(resp, ctx, "POST, PUT"),
        Endpoint::Models | Endpoint::Download | Endpoint::Health => {
            method_not_allowed(resp, ctx, "GET, HEAD")
        }
        Endpoint::NotFound => resp.error(
            404,
            &format!("Invalid URL ({} {})", ctx.head.method, ctx.head.target),
        ),
    }
}

/// Parses the JSON body of chat/embeddings, or answers the error itself.
fn json_body(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> Result<Value, io::Result<Outcome>> {
    if ctx.body_overflow {
        return Err(resp.error(413, "request body too large for the mock"));
    }
    match serde_json::from_slice::<Value>(ctx.body.unwrap_or_default()) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(resp.error(400, "We could not parse the JSON body of your request.")),
    }
}

/// The `prompt_tokens` the mock reports for a chat completion request with these
/// `messages`, so a test can check a client saw the provider's own count.
pub fn chat_prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|m| {
            3 + match m.get("content") {
                Some(Value::String(s)) => estimate_tokens(s),
                Some(other) => estimate_tokens(&other.to_string()),
                None => 0,
            }
        })
        .sum::<u64>()
        + 3
}

fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The tool call the mock "model" makes for `req` (either API's shape), if any: the first
/// offered tool's name and an input with one value per schema property.
fn mock_tool_call(req: &Value) -> Option<(String, Value)> {
    let tool = req.get("tools")?.as_array()?.first()?;
    let (name, schema) = match tool.get("function") {
        Some(f) => (f.get("name")?, f.get("parameters")),
        None => (tool.get("name")?, tool.get("input_schema")),
    };
    let choice = req.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none")
        || choice.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("none")
    {
        return None;
    }
    let last = req.get("messages")?.as_array()?.last()?;
    let tool_result = last.get("role").and_then(Value::as_str) == Some("tool")
        || last
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
    if tool_result {
        return None;
    }
    let mut input = serde_json::Map::new();
    if let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    {
        for (k, p) in props {
            let v = match p.get("type").and_then(Value::as_str) {
                Some("number" | "integer") => json!(1),
                Some("boolean") => json!(true),
                Some("string") => json!(format!("mock-{k}")),
                _ => Value::Null,
            };
            input.insert(k.clone(), v);
        }
    }
    Some((name.as_str()?.to_string(), Value::Object(input)))
}

/// `s` in pieces of about `n` bytes, cut on character boundaries (tool input fragments).
fn fragments(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}

fn chat(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let req = match json_body(ctx, resp) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return resp.error(400, "you must provide a model parameter");
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return resp.error(400, "'messages' is a required property");
    };
    let prompt_tokens = chat_prompt_tokens(messages);
    let n = ctx.knobs.chunks.unwrap_or(DEFAULT_CHUNKS);
    let id = format!("chatcmpl-mock{}", ctx.req);
    let created = unix_now();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
        "prompt_tokens_details": {"cached_tokens": ctx.knobs.cached_tokens.min(prompt_tokens)},
    });
    let token = |i: u64| TOKENS[(i % TOKENS.len() as u64) as usize];
    let call = mock_tool_call(&req);
    let call_id = format!("call_mock{}", ctx.req);

    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let content: String = (0..n).map(token).collect();
        if let Some((name, input)) = &call {
            return resp.json(
                200,
                &json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                            "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": input.to_string()},
                        }]},
                        "logprobs": null,
                        "finish_reason": "tool_calls",
                    }],
                    "usage": usage,
                }),
            );
        }
        return resp.json(
            200,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ringgate_mock",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
        );
    }

    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |delta: Value, finish: Option<&str>, with_usage: bool| -> Vec<u8> {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ringgate_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            v["usage"] = if with_usage {
                usage.clone()
            } else {
                Value::Null
            };
        }
        sse(&v)
    };
    resp.head(
        200,
        Some("text/event-stream"),
        Framing::Chunked,
        &[("Cache-Control", "no-cache")],
    )?;
    // Content events: the first carries the role, the last the finish reason.
    let events = n.max(1);
    for i in 0..events {
        if i > 0 && ctx.knobs.interval_ms > 0 {
            thread::sleep(Duration::from_millis(ctx.knobs.interval_ms));
        }
        let mut delta = serde_json::Map::new();
        if i == 0 {
            delta.insert("role".into(), json!("assistant"));
        }
        if n > 0 {
            delta.insert("content".into(), json!(token(i)));
        }
        let finish = (i + 1 == events && call.is_none()).then_some("stop");
        resp.body(&chunk(Value::Object(delta), finish, false))?;
        resp.flush()?;
        if i == 0 {
            if resp.drop_mid {
                return Ok(Outcome::Abort);
            }
            if ctx.knobs.gate && !wait_gate(ctx.shared, ctx.gate_snapshot) {
                return Ok(Outcome::Abort);
            }
        }
    }
    if let Some((name, input)) = &call {
        let start = json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}]});
        resp.body(&chunk(start, None, false))?;
        for part in fragments(&input.to_string(), 7) {
            let d = json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]});
            resp.body(&chunk(d, None, false))?;
        }
        resp.body(&chunk(json!({}), Some("tool_calls"), false))?;
        resp.flush()?;
    }
    if include_usage {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ringgate_mock",
            "choices": [],
        });
        v["usage"] = usage.clone();
        resp.body(&sse(&v))?;
        resp.flush()?;
    }
    resp.body(b"data: [DONE]\n\n")?;
    resp.finish()
}

/// An error in the Anthropic shape, its `type` as the API reference maps statuses.
fn anthropic_error(resp: &mut Resp<'_>, status: u16, message: &str) -> io::Result<Outcome> {
    let ty = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    resp.json(
        status,
        &json!({"type": "error", "error": {"type": ty, "message": message}}),
    )
}

/// The Anthropic Messages API: `x-api-key` and `anthropic-version` required, `max_tokens`
/// required; `x-mock-chunks` text deltas, `x-mock-cached-tokens` as cache reads.
fn messages(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    if ctx.head.header("x-api-key").is_none_or(str::is_empty) {
        return anthropic_error(resp, 401, "x-api-key header is required");
    }
    if ctx.head.header("anthropic-version") != Some("2023-06-01") {
        return anthropic_error(resp, 400, "anthropic-version header must be 2023-06-01");
    }
    let Some(req) = ctx
        .body
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
    else {
        return anthropic_error(resp, 400, "body is not JSON");
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return anthropic_error(resp, 400, "model: Field required");
    };
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return anthropic_error(resp, 400, "max_tokens: Field required");
    }
    let Some(msgs) = req.get("messages").and_then(Value::as_array) else {
        return anthropic_error(resp, 400, "messages: Field required");
    };
    let text_len = |v: Option<&Value>| match v {
        Some(Value::String(s)) => estimate_tokens(s),
        Some(other) => estimate_tokens(&other.to_string()),
        None => 0,
    };
    let prompt: u64 = msgs
        .iter()
        .map(|m| 3 + text_len(m.get("content")))
        .sum::<u64>()
        + text_len(req.get("system"));
    let cached = ctx.knobs.cached_tokens.min(prompt);
    let input = prompt - cached;
    let n = ctx.knobs.chunks.unwrap_or(DEFAULT_CHUNKS);
    let id = format!("msg_mock{}", ctx.req);
    let token = |i: u64| TOKENS[(i % TOKENS.len() as u64) as usize];
    let call = mock_tool_call(&req);
    let tool_id = format!("toolu_mock{}", ctx.req);
    let stop_reason = if call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let content: String = (0..n).map(token).collect();
        let mut blocks = vec![json!({"type": "text", "text": content})];
        if let Some((name, input)) = &call {
            blocks.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}));
        }
        return resp.json(
            200,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": blocks,
                "stop_reason": stop_reason, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": n,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached},
            }),
        );
    }
    let event = |name: &str, v: Value| -> Vec<u8> {
        let mut out = format!("event: {name}\n").into_bytes();
        out.extend_from_slice(&sse(&v));
        out
    };
    resp.head(
        200,
        Some("text/event-stream"),
        Framing::Chunked,
        &[("Cache-Control", "no-cache")],
    )?;
    resp.body(&event(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}}),
    ))?;
    resp.body(&event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    ))?;
    resp.body(&event("ping", json!({"type": "ping"})))?;
    resp.flush()?;
    for i in 0..n {
        if i > 0 && ctx.knobs.interval_ms > 0 {
            thread::sleep(Duration::from_millis(ctx.knobs.interval_ms));
        }
        resp.body(&event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": token(i)}}),
        ))?;
        resp.flush()?;
        if i == 0 && resp.drop_mid {
            return Ok(Outcome::Abort);
        }
    }
    resp.body(&event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ))?;
    if let Some((name, input)) = &call {
        resp.body(&event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
        ))?;
        let json = input.to_string();
        for part in std::iter::once("").chain(fragments(&json, 7)) {
            resp.body(&event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
            ))?;
        }
        resp.body(&event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ))?;
        resp.flush()?;
    }
    resp.body(&event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": n}}),
    ))?;
    resp.body(&event("message_stop", json!({"type": "message_stop"})))?;
    resp.finish()
}

fn sse(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    let _ = serde_json::to_writer(&mut out, v);
    out.extend_from_slice(b"\n\n");
    out
}

/// An SSE event ended by CRLF CRLF, as Google's servers write them.
fn sse_crlf(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    let _ = serde_json::to_writer(&mut out, v);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Blocks until a gate release newer than `snapshot`; false on timeout/stop.
fn wait_gate(shared: &Shared, snapshot: u64) -> bool {
    let deadline = Instant::now() + GATE_TIMEOUT;
    let mut g = lock(&shared.gate);
    loop {
        if *g > snapshot {
            return true;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        g = match shared.gate_cv.wait_timeout(g, deadline - now) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    }
}

fn embeddings(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let req = match json_body(ctx, resp) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("text-embedding-3-small")
        .to_string();
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            vec![Value::Array(a.clone()).to_string()]
        }
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect(),
        _ => return resp.error(400, "'input' must be a string or a non-empty array"),
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += estimate_tokens(text);
            let digest = Sha256::digest(text.as_bytes());
            let vec: Vec<f64> = digest[..8]
                .iter()
                .map(|&b| (f64::from(b) / 127.5 - 1.0) * 1000.0)
                .map(|x| x.round() / 1000.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vec})
        })
        .collect();
    resp.json(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

fn models_json() -> Value {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "ringgate-mock"});
    json!({
        "object": "list",
        "data": [
            model("gpt-4.1"),
            model("gpt-4.1-mini"),
            model("gpt-4o"),
            model("text-embedding-3-small"),
        ],
    })
}

fn echo(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let mut headers = serde_json::Map::new();
    for (name, value) in &ctx.recorded.headers {
        let key = name.to_ascii_lowercase();
        match headers.get_mut(&key) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(value);
            }
            _ => {
                headers.insert(key, Value::String(value.clone()));
            }
        }
    }
    resp.json(
        200,
        &json!({
            "method": ctx.recorded.method,
            "path": ctx.recorded.path,
            "headers": headers,
            "body_len": ctx.recorded.body_len,
            "body_sha256": ctx.recorded.body_sha256,
        }),
    )
}

/// Pattern buffer: byte i = i % 251, with slack so any offset can serve a
/// full 64 KiB write.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| (0..IO_CHUNK + 251).map(|i| (i % 251) as u8).collect())
}

fn download(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let Some(total) = query_param(ctx.query, "bytes").and_then(|v| v.parse::<u64>().ok()) else {
        return resp.error(400, "download needs ?bytes=N");
    };
    let framing = match query_param(ctx.query, "framing") {
        None | Some("length") => Framing::Length(total),
        Some("chunked") => Framing::Chunked,
        Some("close") => Framing::Close,
        Some(_) => return resp.error(400, "framing must be length, chunked or close"),
    };
    resp.head(200, Some("application/octet-stream"), framing, &[])?;
    let limit = if resp.drop_mid { total / 2 } else { total };
    let pat = pattern();
    let mut pos = 0u64;
    if !resp.head_only {
        while pos < limit {
            let n = (limit - pos).min(IO_CHUNK as u64) as usize;
            let off = (pos % 251) as usize;
            resp.body(&pat[off..off + n])?;
            pos += n as u64;
        }
    }
    if resp.drop_mid {
        resp.flush()?;
        return Ok(Outcome::Abort);
    }
    resp.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate_matches_known_dates() {
        // RFC 9110's example, the epoch, and a leap day.
        assert_eq!(imf_fixdate(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(951_825_599), "Tue, 29 Feb 2000 11:59:59 GMT");
    }
}
