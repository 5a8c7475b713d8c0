//! The life of a client connection: read a request head within the slowloris deadline,
//! route it, forward it ([`forward`], over the stage modules below), and loop for the next
//! request on the same connection. Requests on one connection are handled strictly in
//! order, so pipelined requests are answered in order and never interleave.

pub mod admission;
pub mod attempt;
pub mod cache;
pub mod candidates;
pub mod client_watch;
pub mod failure;
pub mod forward;
pub mod headers;
pub mod idle;
pub mod io;
pub mod limit_headers;
pub mod pipe;
pub mod quota;
pub mod request_body;
pub mod retry;
pub mod tap;

use failure::Failure;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::listener::ClientStream;
use monoio::io::AsyncWriteRent;

use crate::bufio::{self, ReadBuf, ReadError};
use crate::error::{openai_error_body, ProxyError};
use crate::http::{self, BodyFraming, HeadLimits, RequestHead};
use crate::worker::Worker;

/// What became of one request, for the connection loop and the access log.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Whether the client connection can carry another request.
    pub keep_alive: bool,
    /// Status sent to the client (0 when none could be sent).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Upstream connect time of the last try (zero when pooled).
    pub connect: Option<Duration>,
    /// Last try's start to its response head.
    pub header: Option<Duration>,
    /// Last try's start to the end of its response body.
    pub response: Option<Duration>,
    /// For streamed responses: request start to the first body byte sent.
    pub ttfb: Option<Duration>,
    /// The upstream that answered (the last try's).
    pub upstream: Option<String>,
    /// The `[models]` entry that answered (index), on model-routed routes.
    pub model: Option<usize>,
    /// The response cache's verdict, on cached routes.
    pub cache: Option<crate::ai::cache::CacheStatus>,
    /// Why a response whose head went out ended early.
    pub truncated: Option<&'static str>,
    /// Tokens (prompt + completion) the response used, when its usage was read or estimated.
    pub tokens_used: Option<u64>,
    /// What the response cost at its model's prices, when its usage was known.
    pub cost_usd: Option<f64>,
    /// The route's and client's limits as admission left them, for the `x-ratelimit-*`
    /// headers of the response.
    pub rate: limit_headers::RateHeaders,
}

/// Read buffer a client connection takes from the worker's spares when request bytes
/// arrive (most request heads and small JSON bodies fit), and gives back once it is idle.
const READ_BUFFER: usize = 4096;

/// Serves one accepted client connection until it closes, errs, idles out or the worker
/// drains.
///
/// Between requests a connection holds no buffer and no request state: this future is only
/// the stream, an empty [`ReadBuf`] and the wait for readability (a poll op on io_uring, a
/// readiness wait on epoll; neither reads, so dropping it at the drain loses nothing). A
/// read buffer is taken from the worker when bytes are there, and everything a request
/// needs lives in one boxed future ([`serve_request`]) that exists while a request does.
pub async fn serve_connection(worker: Rc<Worker>, mut stream: ClientStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut rb = ReadBuf::new(0, 0);
    loop {
        let epoch = crate::task::poll_epoch();
        if rb.is_empty() {
            // Idle: no config snapshot held (an old generation is not kept alive by idle
            // clients), no buffer.
            if rb.capacity() > 0 {
                worker.give_buffer(rb.take_vec());
            }
            let (idle, max_header_bytes) = {
                let snap = worker.snapshot();
                let server = &snap.config.server;
                (server.idle_timeout, server.max_header_bytes)
            };
            rb.set_max(max_header_bytes);
            // The idle timeout and the drain are one slot in the worker's idle list, not a
            // timer of this connection's own (see `idle`).
            let got = monoio::select! {
                r = wait_for_bytes(&worker, &mut stream, &mut rb, idle) => Some(r),
                _ = worker.idle.wait(&worker.drain, idle) => None,
            };
            match got {
                Some(Ok(())) => {}
                Some(Err(ReadError::Io(e))) => {
                    tracing::debug!(%peer, error = %e, "client connection error while idle");
                    return;
                }
                _ => return,
            }
        }
        if !Box::pin(serve_request(&worker, &mut stream, &mut rb, peer, epoch)).await {
            return;
        }
    }
}

/// Waits for an idle client's next bytes (or its close); the caller bounds the wait by the
/// idle timeout (`idle` is only the TLS read's own backstop). A plain socket is
/// waited on without a buffer; a TLS stream cannot be (rustls may already hold decrypted
/// bytes the socket no longer shows), so it reads into a buffer from the worker — TLS
/// connections carry rustls' own buffers anyway.
async fn wait_for_bytes(
    worker: &Worker,
    stream: &mut ClientStream,
    rb: &mut ReadBuf,
    idle: Duration,
) -> Result<(), ReadError> {
    match stream {
        ClientStream::Plain(s) => s.readable(false).await.map_err(ReadError::Io),
        ClientStream::Tls(..) => {
            rb.adopt(worker.take_buffer(READ_BUFFER));
            boxed_fill(rb, stream, idle).await.map(drop)
        }
    }
}

/// `rb.fill` on the heap. rustls' read future (and the timer in `fill`) is large; built
/// inside an `async fn`, even boxed at once, it would take room in that function's state,
/// i.e. in every plain connection's idle task. Built here, only the box's pointer is there.
fn boxed_fill<'a>(
    rb: &'a mut ReadBuf,
    stream: &'a mut ClientStream,
    timeout: Duration,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<usize, ReadError>> + 'a>> {
    Box::pin(rb.fill(stream, timeout))
}

/// Reads one request's head (bytes are waiting, or the client closed), handles the request
/// and answers it. Returns whether the connection carries on. `epoch` is the poll epoch
/// read before the connection last went idle.
async fn serve_request(
    worker: &Rc<Worker>,
    stream: &mut ClientStream,
    rb: &mut ReadBuf,
    peer: SocketAddr,
    epoch: u64,
) -> bool {
    if rb.capacity() == 0 {
        rb.adopt(worker.take_buffer(READ_BUFFER));
    }
    // The response-writing buffer is the worker's while a request runs, not the connection's.
    let mut scratch = Vec::new();
    // A request sees one config snapshot from its first byte to its last.
    let snap = worker.snapshot();
    let server = &snap.config.server;
    rb.set_max(server.max_header_bytes);
    let deadline = Instant::now() + server.header_read_timeout;
    let limits = HeadLimits {
        max_header_bytes: server.max_header_bytes,
        max_request_line: server.max_request_line_bytes,
    };
    let parsed = loop {
        if !rb.is_empty() {
            match http::parse_request_head(rb.data(), &limits) {
                Ok(Some(p)) => break Ok(p),
                Ok(None) => {}
                Err(e) => break Err(ProxyError::BadRequest(e)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(ProxyError::ClientTimeout);
        }
        match rb.fill(stream, left).await {
            Ok(_) => {}
            Err(ReadError::Timeout) => break Err(ProxyError::ClientTimeout),
            Err(ReadError::Full) => {
                break Err(ProxyError::BadRequest(http::HttpError::HeaderTooLarge));
            }
            Err(ReadError::Eof) | Err(ReadError::Io(_)) => return false,
        }
    };
    let (mut head, head_len) = match parsed {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%peer, error = %e, "rejected request head");
            worker.metrics.note_rejected_head();
            let id = worker.new_request_id();
            let _ = send_error(
                stream,
                &e,
                &id,
                false,
                false,
                &mut scratch,
                server.idle_timeout,
                server.server_header.as_deref(),
                &limit_headers::RateHeaders::default(),
            )
            .await;
            let _ = stream.shutdown().await;
            return false;
        }
    };
    rb.consume(head_len);
    scratch = worker.take_buffer(4096);
    let in_flight = GaugeSlot::enter(&worker.metrics.requests_in_flight);
    let outcome = handle_request(worker, &snap, stream, rb, &mut head, peer, &mut scratch).await;
    drop(in_flight);
    worker.give_buffer(scratch);
    if !outcome.keep_alive || worker.drain.is_draining() {
        let _ = stream.shutdown().await;
        return false;
    }
    // A request that never waited (its bytes were buffered, the kernel took the answer
    // at once: epoll does both inline) kept the worker to itself: give it back before
    // the next, or one pipelining client stalls every other connection of the worker.
    if crate::task::ran_without_waiting(epoch) {
        crate::task::yield_now().await;
    }
    true
}

/// What metrics and the access log need of a request besides its [`Outcome`].
struct LogContext<'a> {
    head: &'a RequestHead,
    request_id: &'a str,
    peer: SocketAddr,
    cfg: &'a crate::config::Config,
    /// The route that matched (or the models endpoint), once known.
    route: Option<&'a str>,
    /// The `[auth]` client's name, once authenticated.
    client: Option<&'a str>,
    start: Instant,
}

/// One unit of a gauge, released on drop (also when a panic unwinds the request).
struct GaugeSlot<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> GaugeSlot<'a> {
    fn enter(gauge: &'a std::sync::atomic::AtomicI64) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        GaugeSlot(gauge)
    }
}

impl Drop for GaugeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Routes and forwards one request whose head has been read: screens it, answers `/health`
/// and `/v1/models` itself, routes and authenticates it, hands it to [`forward::forward`],
/// and answers (or cuts) whatever failed.
async fn handle_request(
    worker: &Rc<Worker>,
    snap: &crate::reload::Active,
    client: &mut ClientStream,
    rb: &mut ReadBuf,
    head: &mut RequestHead,
    peer: SocketAddr,
    scratch: &mut Vec<u8>,
) -> Outcome {
    let start = Instant::now();
    // Everything after this line (routing, rewriting, the upstream, the log) reads the
    // normalized path.
    let target = head.normalize_path();
    let head: &RequestHead = head;
    let cfg = &snap.config;
    let request_id = headers::request_id(head, worker);
    crate::task::set_request_id(&request_id);
    let path = head.path();
    if path == "/health" && (head.method == "GET" || head.method == "HEAD") {
        return health(worker, head, client, &request_id, scratch, &cfg.server).await;
    }

    let mut log = LogContext {
        head,
        request_id: &request_id,
        peer,
        cfg,
        route: None,
        client: None,
        start,
    };
    let mut outcome = Outcome::default();
    let result: Result<(), Failure> = async {
        screen(cfg, head, target)?;
        if !cfg.models.is_empty() && (path == "/v1/models" || path.starts_with("/v1/models/")) {
            log.route = Some(MODELS_ROUTE);
            if let Some(auth) = &cfg.auth {
                log.client = Some(&authenticate(worker, auth, head)?.name);
            }
            return models_endpoint(
                worker,
                cfg,
                head,
                client,
                &request_id,
                scratch,
                &mut outcome,
            )
            .await;
        }
        let (route, upstream) = find_route(cfg, head)?;
        log.route = Some(&route.name);
        let authed = match (&cfg.auth, route.auth) {
            (Some(auth), true) => Some(authenticate(worker, auth, head)?),
            _ => None,
        };
        log.client = authed.map(|c| &*c.name);
        let limit = route
            .limit
            .and_then(|i| Some((cfg.limits.get(i)?.as_ref(), snap.limiters.get(i)?.as_ref())));
        let req = forward::Request {
            head,
            route,
            limit,
            upstream,
            config: cfg,
            limiters: &snap.limiters,
            client: authed,
            spend: authed.and_then(|c| snap.spend.get(c.index)?.as_ref()),
            cache: &snap.cache,
            server: &cfg.server,
            peer,
            client_tls: client.is_tls(),
            request_id: &request_id,
            started: start,
        };
        forward::forward(worker, &req, client, rb, scratch, &mut outcome).await
    }
    .await;
    match result {
        Ok(()) => {
            record(worker, &log, &outcome);
            outcome
        }
        Err(failure) => answer_failure(worker, &log, failure, outcome, client, scratch).await,
    }
}

/// `GET /health` on the client listener (the seed's probe): 200, or 503 once a worker
/// thread died (its listener's clients go unserved: let the probe restart the pod).
async fn health(
    worker: &Worker,
    head: &RequestHead,
    client: &mut ClientStream,
    request_id: &str,
    scratch: &mut Vec<u8>,
    server: &crate::config::ServerSettings,
) -> Outcome {
    let (status, body): (u16, &[u8]) = match worker.shared.workers_unhealthy() {
        0 => (200, b"OK"),
        _ => (503, b"a worker died or is wedged"),
    };
    // A request that is rejected before its body is read leaves the body on the wire, so
    // the connection cannot carry another request; nor can one of a draining worker, which
    // closes it after this answer (the answer says so).
    let keep_alive =
        head.keep_alive && matches!(head.framing, BodyFraming::None) && !worker.drain.is_draining();
    let head_only = head.method == "HEAD";
    let ok = respond_plain(
        client,
        status,
        body,
        head_only,
        request_id,
        keep_alive,
        scratch,
        server.idle_timeout,
        server.server_header.as_deref(),
    )
    .await;
    Outcome {
        keep_alive: ok && keep_alive,
        status,
        ..Outcome::default()
    }
}

/// Requests no route may see: TRACE and CONNECT (405), a path the normalizer refused
/// (400), header names with `_` under `underscores_in_headers = "reject"` (400).
fn screen(
    cfg: &crate::config::Config,
    head: &RequestHead,
    target: Result<(), crate::http::path::PathError>,
) -> Result<(), ProxyError> {
    if crate::router::is_never_forwarded(&head.method) {
        let allow = target
            .is_ok()
            .then(|| {
                let host = headers::host_without_port(head);
                cfg.routes.allowed_methods(host.as_deref(), head.path())
            })
            .flatten()
            .unwrap_or_else(|| crate::router::DEFAULT_ALLOW.to_string());
        return Err(ProxyError::MethodNotAllowed {
            method: head.method.clone(),
            allow,
        });
    }
    target.map_err(ProxyError::BadPath)?;
    if cfg.server.underscores_in_headers == crate::config::UnderscoreHeaders::Reject
        && head.headers.iter().any(|h| h.name.contains('_'))
    {
        return Err(ProxyError::UnderscoreHeader);
    }
    Ok(())
}

/// The route for `head` and its upstream (None on model-routed routes): 404 when no route
/// serves the path, 405 with `Allow` when one serves it with other methods.
fn find_route<'c>(
    cfg: &'c crate::config::Config,
    head: &RequestHead,
) -> Result<
    (
        &'c crate::config::Route,
        Option<&'c crate::config::Upstream>,
    ),
    ProxyError,
> {
    let path = head.path();
    let host = headers::host_without_port(head);
    let no_route = || ProxyError::NoRoute {
        method: head.method.clone(),
        path: path.to_string(),
    };
    let Some(route) = cfg.routes.find(&head.method, host.as_deref(), path) else {
        return Err(match cfg.routes.allowed_methods(host.as_deref(), path) {
            Some(allow) => ProxyError::MethodNotAllowed {
                method: head.method.clone(),
                allow,
            },
            None => no_route(),
        });
    };
    let upstream = match route.upstream {
        Some(i) => Some(cfg.upstreams.get(i).ok_or_else(no_route)?.as_ref()),
        None => None,
    };
    Ok((route, upstream))
}

/// The `[auth]` client presenting `head`'s key; failures are counted by reason.
fn authenticate<'a>(
    worker: &Worker,
    auth: &'a crate::config::ai::Auth,
    head: &RequestHead,
) -> Result<&'a crate::config::ai::Client, ProxyError> {
    crate::ai::auth::authenticate(auth, head).map_err(|e| {
        worker
            .stats
            .note_auth_failure(e == crate::ai::auth::AuthError::Unknown);
        ProxyError::Unauthorized(e)
    })
}

/// The one place a [`Failure`] becomes what the client sees: an error answer in the OpenAI
/// shape while nothing was sent, a cut connection once the response had started, nothing
/// at all when the client is gone (recorded as 499).
async fn answer_failure(
    worker: &Worker,
    log: &LogContext<'_>,
    failure: Failure,
    mut outcome: Outcome,
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
) -> Outcome {
    let (head, request_id) = (log.head, log.request_id);
    let response_started = failure.response_started();
    let e = failure.error;
    let (status, _, _) = e.classify();
    if response_started {
        // The status line is out: the only honest signal left is to cut the connection.
        let reason = e.truncation_reason();
        if e.client_gone() {
            tracing::info!(request_id = %request_id, bytes_out = outcome.bytes_out, error = %e, "client left mid-response; upstream connection closed");
            outcome.status = 499;
        } else {
            tracing::warn!(request_id = %request_id, bytes_out = outcome.bytes_out, reason, error = %e, "response cut short after its head went out; closing the client connection");
        }
        outcome.truncated = Some(reason);
        record(worker, log, &outcome);
        outcome.keep_alive = false;
        return outcome;
    }
    if e.client_gone() {
        tracing::info!(request_id = %request_id, error = %e, "client left before the response");
    } else if status >= 500 {
        tracing::warn!(request_id = %request_id, error = %e, "request failed");
    }
    outcome.status = if e.client_gone() { 499 } else { status };
    if e.client_gone() {
        record(worker, log, &outcome);
        return Outcome::default();
    }
    // A malformed request closes the connection: what follows it cannot be trusted.
    let malformed = matches!(
        e,
        ProxyError::ClientTimeout
            | ProxyError::BadTarget(_)
            | ProxyError::BadPath(_)
            | ProxyError::BadRequest(_)
            | ProxyError::BadJson(_)
    );
    // A request rejected before its body was read leaves the body on the wire; a body that
    // was read (model-routed routes read it before deciding) does not stop the connection
    // from carrying the next request.
    let body_left = !matches!(head.framing, BodyFraming::None) && outcome.bytes_in == 0;
    let keep =
        head.keep_alive && !body_left && !worker.drain.is_draining() && status < 500 && !malformed;
    let timeout = log.cfg.server.idle_timeout;
    let server_header = log.cfg.server.server_header.as_deref();
    // An Anthropic client (the Messages endpoint) reads errors in Anthropic's shape.
    let anthropic = crate::ai::anthropic::inbound::is_messages_path(head.path());
    let sent = send_error(
        client,
        &e,
        request_id,
        keep,
        anthropic,
        scratch,
        timeout,
        server_header,
        &outcome.rate,
    )
    .await;
    // The access log counts what the gateway wrote itself, as it counts proxied bytes.
    outcome.bytes_out = sent.unwrap_or(0);
    record(worker, log, &outcome);
    Outcome {
        keep_alive: keep && sent.is_some(),
        status,
        ..Outcome::default()
    }
}

/// The route label of requests the gateway answers itself from `[models]`.
pub const MODELS_ROUTE: &str = "(models)";

/// `GET /v1/models` and `GET /v1/models/{id}`, answered from `[models]` (names and aliases).
#[allow(clippy::too_many_arguments)]
async fn models_endpoint(
    worker: &Rc<Worker>,
    cfg: &crate::config::Config,
    head: &RequestHead,
    client: &mut ClientStream,
    request_id: &str,
    scratch: &mut Vec<u8>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let path = head.path();
    if head.method != "GET" && head.method != "HEAD" {
        return Err(ProxyError::MethodNotAllowed {
            method: head.method.clone(),
            allow: "GET, HEAD".into(),
        }
        .into());
    }
    let one;
    let body: &[u8] = match path.strip_prefix("/v1/models/") {
        None => &cfg.models.list_json,
        Some(id) => {
            let id = percent_decode(id);
            one = cfg
                .models
                .one_json(&id)
                .ok_or(ProxyError::UnknownModel(id))?;
            &one
        }
    };
    let keep_alive =
        head.keep_alive && matches!(head.framing, BodyFraming::None) && !worker.drain.is_draining();
    let len = body.len().to_string();
    let date = http::date::now();
    let mut hdrs: Vec<(&str, &[u8])> = vec![
        ("date", &date),
        ("content-type", b"application/json"),
        ("content-length", len.as_bytes()),
        ("x-request-id", request_id.as_bytes()),
    ];
    if let Some(v) = &cfg.server.server_header {
        hdrs.push(("server", v.as_bytes()));
    }
    if !keep_alive {
        hdrs.push(("connection", b"close"));
    }
    scratch.clear();
    http::write_response_head(scratch, 200, "", &hdrs);
    if head.method != "HEAD" {
        scratch.extend_from_slice(body);
    }
    let buf = std::mem::take(scratch);
    let (res, buf) = bufio::write_all(client, buf, cfg.server.idle_timeout).await;
    if let Some(b) = buf {
        *scratch = b;
    }
    res.map_err(|e| Failure::response(ProxyError::ClientIo(e)))?;
    outcome.status = 200;
    outcome.bytes_out = body.len() as u64;
    outcome.keep_alive = keep_alive;
    Ok(())
}

/// Decodes `%XX` escapes of a path segment (model ids may hold `/` or `:` escaped).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts one finished request and writes its access-log line.
fn record(worker: &Worker, log: &LogContext<'_>, o: &Outcome) {
    let total = log.start.elapsed();
    let cfg = log.cfg;
    let obs = crate::metrics::Observation {
        route: log.route,
        upstream: o.upstream.as_deref(),
        method: &log.head.method,
        status: o.status,
        bytes_in: o.bytes_in,
        bytes_out: o.bytes_out,
        total,
        connect: o.connect,
        header: o.header,
        response: o.response,
        ttfb: o.ttfb,
        model: o
            .model
            .and_then(|i| cfg.models.list.get(i))
            .map(|m| m.name.as_str()),
        client: log.client,
        cache: o.cache.map(crate::ai::cache::CacheStatus::label),
        truncated: o.truncated,
    };
    worker.stats.observe(&obs);
    worker.metrics.note_request(o.status, total);
    let client_ip = headers::client_ip_of(log.head, log.peer, &cfg.server);
    crate::metrics::access_log(&obs, log.request_id, log.head.path(), client_ip);
}

/// Sends a gateway-made error in the OpenAI shape (Anthropic's when `anthropic`), with the
/// `x-ratelimit-*` headers of `rate` (a refusal's own bucket reported as spent). Returns the
/// body bytes written, None when the write failed.
#[allow(clippy::too_many_arguments)]
pub async fn send_error(
    client: &mut ClientStream,
    e: &ProxyError,
    request_id: &str,
    keep_alive: bool,
    anthropic: bool,
    scratch: &mut Vec<u8>,
    timeout: Duration,
    server_header: Option<&str>,
    rate: &limit_headers::RateHeaders,
) -> Option<u64> {
    let (status, kind, code) = e.classify();
    let mut body = Vec::with_capacity(160);
    if anthropic {
        crate::ai::anthropic::inbound::error_body(status, &e.to_string(), &mut body);
    } else {
        openai_error_body(&e.to_string(), kind, code, &mut body);
    }
    let len = body.len().to_string();
    let date = http::date::now();
    let mut hdrs: Vec<(&str, &[u8])> = vec![
        ("date", &date),
        ("content-type", b"application/json"),
        ("content-length", len.as_bytes()),
        ("x-request-id", request_id.as_bytes()),
    ];
    if let Some(v) = server_header {
        hdrs.push(("server", v.as_bytes()));
    }
    let retry_after = e.retry_after_secs().map(|s| s.to_string());
    if let Some(ra) = &retry_after {
        hdrs.push(("retry-after", ra.as_bytes()));
    }
    // The headers OpenAI clients read to pace themselves; the refusing bucket is spent.
    let mut rate = *rate;
    match e {
        ProxyError::RateLimited {
            capacity, reset, ..
        } => {
            rate.requests = Some(limit_headers::BucketState {
                limit: *capacity,
                remaining: 0,
                reset: *reset,
            });
        }
        ProxyError::TokensExhausted {
            capacity, reset, ..
        } => {
            rate.tokens = Some(limit_headers::BucketState {
                limit: *capacity,
                remaining: 0,
                reset: *reset,
            });
        }
        // Waiting hours is no retry: OpenAI's SDKs read this and raise at once.
        ProxyError::BudgetExhausted { .. } => hdrs.push(("x-should-retry", b"false")),
        _ => {}
    }
    if let Some(allow) = e.allow() {
        hdrs.push(("allow", allow.as_bytes()));
    }
    if matches!(e, ProxyError::Unauthorized(_)) {
        hdrs.push(("www-authenticate", b"Bearer"));
    }
    if !keep_alive {
        hdrs.push(("connection", b"close"));
    }
    scratch.clear();
    http::write_response_head(scratch, status, "", &hdrs);
    if !rate.is_empty() && scratch.ends_with(b"\r\n\r\n") {
        // Before the blank line that ends the head.
        scratch.truncate(scratch.len() - 2);
        rate.write(scratch);
        scratch.extend_from_slice(b"\r\n");
    }
    scratch.extend_from_slice(&body);
    let buf = std::mem::take(scratch);
    let (res, buf) = bufio::write_all(client, buf, timeout).await;
    if let Some(b) = buf {
        *scratch = b;
    }
    res.ok().map(|()| body.len() as u64)
}

#[allow(clippy::too_many_arguments)]
async fn respond_plain(
    client: &mut ClientStream,
    status: u16,
    body: &[u8],
    head_only: bool,
    request_id: &str,
    keep_alive: bool,
    scratch: &mut Vec<u8>,
    timeout: Duration,
    server_header: Option<&str>,
) -> bool {
    let len = body.len().to_string();
    let date = http::date::now();
    let mut hdrs: Vec<(&str, &[u8])> = vec![
        ("date", &date),
        ("content-type", b"text/plain; charset=utf-8"),
        ("content-length", len.as_bytes()),
        ("x-request-id", request_id.as_bytes()),
    ];
    if let Some(v) = server_header {
        hdrs.push(("server", v.as_bytes()));
    }
    if !keep_alive {
        hdrs.push(("connection", b"close"));
    }
    scratch.clear();
    http::write_response_head(scratch, status, "", &hdrs);
    if !head_only {
        scratch.extend_from_slice(body);
    }
    let buf = std::mem::take(scratch);
    let (res, buf) = bufio::write_all(client, buf, timeout).await;
    if let Some(b) = buf {
        *scratch = b;
    }
    res.is_ok()
}
