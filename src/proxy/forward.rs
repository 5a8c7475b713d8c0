//! One request's exchange with the upstream: take a pooled connection (or connect), send the
//! re-framed head and stream the body, read the response head (skipping 1xx), stream the
//! response back flushing every read, and return the connection to the pool when the
//! exchange left it clean.
//!
//! A pooled connection the upstream closed while idle is caught by a peek before use
//! ([`crate::upstream::pool`]); the remaining race (closed between peek and write) is covered
//! by retrying once on a fresh connection when nothing of the response arrived and the
//! request body is still in hand.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::listener::ClientStream;
use monoio::io::AsyncReadRent;

use super::headers::{self, ClientFraming, UpstreamFraming};
use super::Outcome;
use crate::bufio::{self, ReadBuf, ReadError};
use crate::config::{RetryOn, ServerSettings, Upstream};
use crate::error::ProxyError;
use crate::http::{self, BodyFraming, ChunkEvent, ChunkedDecoder, RequestHead, ResponseHead};
use crate::upstream::{self, pool::UpConn, UpstreamStream};
use crate::worker::Worker;

/// Upper bound on an upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Everything the exchange needs to know about the request.
pub struct Request<'a> {
    /// The parsed client head.
    pub head: &'a RequestHead,
    /// The matched route.
    pub route: &'a crate::config::Route,
    /// The route's rate limit and its limiter, if any.
    pub limit: Option<(&'a crate::config::LimitSpec, &'a crate::limit::KeyedLimiter)>,
    /// The route's upstream.
    pub upstream: &'a Upstream,
    /// Server limits.
    pub server: &'a ServerSettings,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// The request id sent both ways.
    pub request_id: &'a str,
    /// When the request's head was parsed (for time to first byte).
    pub started: Instant,
}

enum Body {
    None,
    Retained(Vec<u8>),
    Length(u64),
    Chunked,
}

type Failure = (ProxyError, bool);

fn client_read_err(e: ReadError) -> ProxyError {
    match e {
        ReadError::Timeout => ProxyError::ClientTimeout,
        ReadError::Eof => ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
        ReadError::Full => ProxyError::ClientIo(std::io::Error::other("client buffer full")),
        ReadError::Io(e) => ProxyError::ClientIo(e),
    }
}

fn upstream_read_err(e: ReadError) -> ProxyError {
    match e {
        ReadError::Timeout => ProxyError::UpstreamTimeout,
        ReadError::Eof => ProxyError::UpstreamClosed,
        ReadError::Full => ProxyError::UpstreamProtocol(http::HttpError::HeaderTooLarge),
        ReadError::Io(e) => ProxyError::UpstreamIo(e),
    }
}

fn upstream_write_err(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamIo(e)
    }
}

/// Sends `buf` to the upstream, handing the buffer back for reuse.
async fn send(
    io: &mut UpstreamStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let (res, back) = bufio::write_all(io, std::mem::take(buf), timeout).await;
    if let Some(b) = back {
        *buf = b;
    }
    res.map_err(upstream_write_err)
}

/// Sends `buf` to the client, handing the buffer back for reuse.
async fn send_client(
    io: &mut ClientStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let (res, back) = bufio::write_all(io, std::mem::take(buf), timeout).await;
    if let Some(b) = back {
        *buf = b;
    }
    res.map_err(ProxyError::ClientIo)
}

/// Proxies one request. On error, the flag tells whether the response head already went to
/// the client (then the connection must be cut instead of answered).
pub async fn forward(
    w: &Rc<Worker>,
    req: &Request<'_>,
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    scratch: &mut Vec<u8>,
) -> Result<Outcome, Failure> {
    let head = req.head;
    let route = req.route;
    let up = req.upstream;
    let client_timeout = req.server.idle_timeout;
    let max_body = req.server.max_body_bytes;

    let _in_flight = match InFlight::enter(route) {
        Some(g) => g,
        None => return Err((ProxyError::RouteBusy(route.name.clone()), false)),
    };
    if let Some((spec, limiter)) = req.limit {
        admit(w, req, spec, limiter).await.map_err(|e| (e, false))?;
    }
    let shed_until = up.shed_until.load(std::sync::atomic::Ordering::Relaxed);
    if shed_until != 0 {
        let now = crate::clock::monotonic_nanos();
        if now < shed_until {
            return Err((
                ProxyError::ProviderQuota {
                    upstream: up.name.clone(),
                    retry_after_secs: (shed_until - now).div_ceil(1_000_000_000),
                },
                false,
            ));
        }
    }
    let mut body = match head.framing {
        BodyFraming::None => Body::None,
        BodyFraming::Length(0) => Body::None,
        BodyFraming::Length(n) if n > max_body => {
            return Err((ProxyError::BodyTooLarge { limit: max_body }, false));
        }
        BodyFraming::Length(n) if n <= req.server.max_retry_body_bytes => {
            Body::Retained(Vec::with_capacity(n as usize))
        }
        BodyFraming::Length(n) => Body::Length(n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited => Body::Chunked,
    };
    let mut continue_sent = false;
    if let Body::Retained(buf) = &mut body {
        if head.expect_continue {
            send_continue(client, scratch, client_timeout)
                .await
                .map_err(|e| (e, false))?;
            continue_sent = true;
        }
        let n = match head.framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        while (buf.len() as u64) < n {
            if crb.is_empty() {
                crb.fill(client, client_timeout)
                    .await
                    .map_err(|e| (client_read_err(e), false))?;
            }
            let k = crb.available(n - buf.len() as u64);
            buf.extend_from_slice(&crb.data()[..k]);
            crb.consume(k);
        }
    }

    let mut target = String::with_capacity(head.target.len() + up.base_path.len());
    crate::router::upstream_target(route, &up.base_path, head.path(), head.query(), &mut target);
    let upstream_framing = match &body {
        Body::None => {
            if head.method == "POST" || head.method == "PUT" || head.method == "PATCH" {
                UpstreamFraming::Length(0)
            } else {
                UpstreamFraming::None
            }
        }
        Body::Retained(b) => UpstreamFraming::Length(b.len() as u64),
        Body::Length(n) => UpstreamFraming::Length(*n),
        Body::Chunked => UpstreamFraming::Chunked,
    };
    let mut up_head = Vec::with_capacity(512 + head.headers.len() * 48);
    headers::write_upstream_head(&mut up_head, req, &target, upstream_framing);

    let started = Instant::now();
    let deadline = started + route.retry_budget;
    let state = w.balancer.state(up);
    let replayable = matches!(body, Body::None | Body::Retained(_));
    let mut tried: Vec<usize> = Vec::with_capacity(route.tries as usize);
    let mut stale_retry_left = true;
    let mut ctx = TryCtx {
        client,
        crb,
        scratch,
        up_head: &up_head,
        continue_sent,
    };
    let mut try_started;
    let (ep, mut conn, mut urb, resp, t_connect) = loop {
        let now = Instant::now();
        let Some(ep) = w.balancer.pick(up, &state, &tried, now) else {
            return Err((ProxyError::NoHealthyEndpoint(up.name.clone()), false));
        };
        tried.push(ep);
        state.start(ep);
        let t0 = Instant::now();
        try_started = t0;
        let result = try_once(
            w,
            req,
            &mut ctx,
            &body,
            ep,
            tried.len() > 1 || !stale_retry_left,
        )
        .await;
        state.finish(ep);
        let (reason, wait) = match result {
            Ok(ex) => {
                let cond = match ex.resp.status {
                    502 => Some(RetryOn::Http502),
                    503 => Some(RetryOn::Http503),
                    504 => Some(RetryOn::Http504),
                    429 => Some(RetryOn::Http429),
                    _ => None,
                };
                let retryable = cond.filter(|c| route.retry_on.contains(c));
                if matches!(
                    cond,
                    Some(RetryOn::Http502 | RetryOn::Http503 | RetryOn::Http504)
                ) {
                    state.failure(ep, up, Instant::now());
                } else {
                    state.success(ep, t0.elapsed(), Instant::now());
                }
                note_provider_quota(up, &ex.resp);
                match retryable {
                    Some(c) if replayable && tried.len() < route.tries as usize => {
                        // An upstream's Retry-After is honoured, but only within the budget:
                        // past it, the client gets this answer rather than a wait.
                        let wait = retry_after(&ex.resp).unwrap_or_else(|| backoff(w, tried.len()));
                        if Instant::now() + wait >= deadline {
                            break (ep, ex.conn, ex.urb, ex.resp, ex.connect_time);
                        }
                        // The rejected response is dropped with its connection: its body is
                        // never read, so the connection cannot be reused.
                        (c, wait)
                    }
                    _ => break (ep, ex.conn, ex.urb, ex.resp, ex.connect_time),
                }
            }
            Err(fail) => {
                if fail.client_side {
                    return Err((fail.err, false));
                }
                if fail.stale && stale_retry_left && replayable {
                    // A pooled connection the upstream closed in the race before our write:
                    // one more go on a fresh connection, not counted as a try.
                    tracing::debug!(upstream = %up.name, error = %fail.err, "pooled connection was closed; retrying on a new one");
                    stale_retry_left = false;
                    tried.pop();
                    continue;
                }
                state.failure(ep, up, Instant::now());
                let cond = match fail.err {
                    ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => RetryOn::Timeout,
                    _ => RetryOn::Error,
                };
                let wait = backoff(w, tried.len());
                let retryable = route.retry_on.contains(&cond)
                    && replayable
                    && !fail.body_consumed
                    && tried.len() < route.tries as usize
                    && Instant::now() + wait < deadline;
                if !retryable {
                    return Err((fail.err, false));
                }
                tracing::debug!(upstream = %up.name, error = %fail.err, "try failed; retrying");
                (cond, wait)
            }
        };
        tracing::debug!(route = %route.name, reason = retry_reason(reason), wait_ms = wait.as_millis() as u64, "retrying");
        w.stats.note_retry(&route.name, retry_reason(reason));
        monoio::time::sleep(wait).await;
    };
    let client = ctx.client;
    let scratch = ctx.scratch;
    let t_header = try_started.elapsed();
    conn.requests += 1;

    let uframing = http::response_framing(&head.method, &resp)
        .map_err(|e| (ProxyError::UpstreamProtocol(e), false))?;
    // HTTP/1.0 clients cannot read chunked bodies: they get the payload close-delimited.
    let cframing = match uframing {
        BodyFraming::None | BodyFraming::Length(_) => ClientFraming::AsIs,
        BodyFraming::Chunked | BodyFraming::CloseDelimited if head.minor_version >= 1 => {
            ClientFraming::Chunked
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => ClientFraming::Close,
    };
    let keep_alive = head.keep_alive && cframing != ClientFraming::Close && !w.drain.is_draining();
    scratch.clear();
    headers::write_client_head(scratch, &resp, cframing, req.request_id, keep_alive);
    // The head stays in `scratch`: the body copiers send it together with the body bytes
    // already read, saving a write per response (never waiting for more bytes to do so).
    if matches!(uframing, BodyFraming::None) {
        send_client(client, scratch, client_timeout)
            .await
            .map_err(|e| (e, true))?;
    }

    let rechunk = cframing == ClientFraming::Chunked;
    let mut pipe = ResponsePipe {
        up: &mut conn.stream,
        urb: &mut urb,
        client,
        out: scratch,
        read_timeout: route.read_timeout,
        client_timeout,
        first_body: None,
    };
    let copied = match uframing {
        BodyFraming::None => Ok(0),
        BodyFraming::Length(n) => pipe.length(n).await,
        BodyFraming::Chunked => pipe.chunked(rechunk).await,
        BodyFraming::CloseDelimited => pipe.until_close(rechunk).await,
    };
    let first_body = pipe.first_body;
    let bytes_out = copied.map_err(|e| (e, true))?;

    let reusable =
        resp.keep_alive && urb.is_empty() && !matches!(uframing, BodyFraming::CloseDelimited);
    if reusable {
        w.pool.borrow_mut().put(up, ep, conn);
    }
    w.metrics.note_upstream_timing(t_connect, t_header);
    let bytes_in = match head.framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    Ok(Outcome {
        keep_alive,
        status: resp.status,
        bytes_out,
        bytes_in,
        connect: Some(t_connect),
        header: Some(t_header),
        response: Some(try_started.elapsed()),
        ttfb: first_body.map(|t| t.saturating_duration_since(req.started)),
    })
}

async fn send_continue(
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    scratch.clear();
    scratch.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    send_client(client, scratch, timeout).await
}

/// Reads a response head, skipping interim 1xx responses. The flag says whether any byte
/// arrived (a connection that answered something is not a stale pooled one).
async fn read_response_head(
    io: &mut UpstreamStream,
    rb: &mut ReadBuf,
    timeout: Duration,
) -> Result<ResponseHead, (ProxyError, bool)> {
    let mut got = false;
    loop {
        match http::parse_response_head(rb.data(), MAX_RESPONSE_HEAD) {
            Ok(Some((resp, len))) => {
                rb.consume(len);
                if resp.status == 101 {
                    return Err((ProxyError::UnexpectedUpgrade, true));
                }
                if (100..200).contains(&resp.status) {
                    continue;
                }
                return Ok(resp);
            }
            Ok(None) => {}
            Err(e) => return Err((ProxyError::UpstreamProtocol(e), true)),
        }
        match rb.fill(io, timeout).await {
            Ok(_) => got = true,
            Err(e) => return Err((upstream_read_err(e), got)),
        }
    }
}

async fn copy_length_body(
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    up: &mut UpstreamStream,
    n: u64,
    out: &mut Vec<u8>,
    client_timeout: Duration,
    send_timeout: Duration,
) -> Result<(), ProxyError> {
    let mut remaining = n;
    while remaining > 0 {
        if crb.is_empty() {
            crb.fill(client, client_timeout)
                .await
                .map_err(client_read_err)?;
        }
        let k = crb.available(remaining);
        out.clear();
        out.extend_from_slice(&crb.data()[..k]);
        crb.consume(k);
        remaining -= k as u64;
        send(up, out, send_timeout).await?;
    }
    Ok(())
}

async fn copy_chunked_request(
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    up: &mut UpstreamStream,
    max_body: u64,
    out: &mut Vec<u8>,
    client_timeout: Duration,
    send_timeout: Duration,
) -> Result<(), ProxyError> {
    let mut dec = ChunkedDecoder::new();
    let mut total: u64 = 0;
    loop {
        out.clear();
        let done =
            reframe_chunks(&mut dec, crb, out, true, &mut total).map_err(ProxyError::BadRequest)?;
        if total > max_body {
            return Err(ProxyError::BodyTooLarge { limit: max_body });
        }
        if !out.is_empty() {
            send(up, out, send_timeout).await?;
        }
        if done {
            return Ok(());
        }
        crb.fill(client, client_timeout)
            .await
            .map_err(client_read_err)?;
    }
}

/// Decodes every whole chunk in `rb` into `out` — re-framed as chunks when `rechunk`, bare
/// payload otherwise — adding payload bytes to `total`. Returns whether the body ended.
fn reframe_chunks(
    dec: &mut ChunkedDecoder,
    rb: &mut ReadBuf,
    out: &mut Vec<u8>,
    rechunk: bool,
    total: &mut u64,
) -> Result<bool, http::HttpError> {
    loop {
        let (used, ev) = dec.decode(rb.data())?;
        match ev {
            ChunkEvent::Data(r) => {
                *total += r.len() as u64;
                if rechunk {
                    http::encode_chunk_header(r.len(), out);
                }
                out.extend_from_slice(&rb.data()[r]);
                if rechunk {
                    out.extend_from_slice(http::CHUNK_END);
                }
                rb.consume(used);
            }
            ChunkEvent::Done => {
                rb.consume(used);
                if rechunk {
                    out.extend_from_slice(http::LAST_CHUNK);
                }
                return Ok(true);
            }
            ChunkEvent::NeedMore => {
                rb.consume(used);
                return Ok(false);
            }
        }
    }
}

/// The response side of an exchange: the upstream and its read buffer, the client, and the
/// buffer that still holds the response head (sent with the first body bytes).
struct ResponsePipe<'a, U> {
    up: &'a mut U,
    urb: &'a mut ReadBuf,
    client: &'a mut ClientStream,
    out: &'a mut Vec<u8>,
    read_timeout: Duration,
    client_timeout: Duration,
    /// When the first body byte went to the client (streams' time to first byte).
    first_body: Option<Instant>,
}

impl<U: AsyncReadRent> ResponsePipe<'_, U> {
    /// Sends what `out` holds (head and/or body) and empties it.
    async fn flush(&mut self) -> Result<(), ProxyError> {
        send_client(self.client, self.out, self.client_timeout).await?;
        self.out.clear();
        Ok(())
    }

    /// Copies a `Content-Length` body of `n` bytes.
    async fn length(&mut self, n: u64) -> Result<u64, ProxyError> {
        let mut remaining = n;
        if remaining == 0 || (self.urb.is_empty() && !self.out.is_empty()) {
            self.flush().await?;
        }
        while remaining > 0 {
            if self.urb.is_empty() {
                self.urb
                    .fill(self.up, self.read_timeout)
                    .await
                    .map_err(upstream_read_err)?;
            }
            let k = self.urb.available(remaining);
            self.out.extend_from_slice(&self.urb.data()[..k]);
            self.urb.consume(k);
            remaining -= k as u64;
            self.flush().await?;
        }
        Ok(n)
    }

    /// Copies a chunked body, re-chunked (or bare for HTTP/1.0 clients), flushing every read.
    async fn chunked(&mut self, rechunk: bool) -> Result<u64, ProxyError> {
        let mut dec = ChunkedDecoder::new();
        let mut total = 0u64;
        loop {
            let done = reframe_chunks(&mut dec, self.urb, self.out, rechunk, &mut total)
                .map_err(ProxyError::UpstreamProtocol)?;
            // Whatever arrived goes out now: an SSE event never waits for the next one.
            if !self.out.is_empty() {
                self.flush().await?;
                if total > 0 && self.first_body.is_none() {
                    self.first_body = Some(Instant::now());
                }
            }
            if done {
                return Ok(total);
            }
            self.urb
                .fill(self.up, self.read_timeout)
                .await
                .map_err(upstream_read_err)?;
        }
    }

    /// Copies a body that ends when the upstream closes, chunked for HTTP/1.1 clients so
    /// their connection survives.
    async fn until_close(&mut self, rechunk: bool) -> Result<u64, ProxyError> {
        let mut total = 0u64;
        if !self.out.is_empty() {
            self.flush().await?;
        }
        loop {
            if !self.urb.is_empty() {
                let data = self.urb.data();
                let n = data.len();
                if rechunk {
                    http::encode_chunk_header(n, self.out);
                }
                self.out.extend_from_slice(data);
                if rechunk {
                    self.out.extend_from_slice(http::CHUNK_END);
                }
                total += n as u64;
                self.urb.consume(n);
                self.flush().await?;
                self.first_body.get_or_insert_with(Instant::now);
            }
            match self.urb.fill(self.up, self.read_timeout).await {
                Ok(_) => {}
                Err(ReadError::Eof) => break,
                Err(e) => return Err(upstream_read_err(e)),
            }
        }
        if rechunk {
            self.out.extend_from_slice(http::LAST_CHUNK);
            self.flush().await?;
        }
        Ok(total)
    }
}

/// What one successful try returns: the connection, its read buffer and the response head.
struct Exchange {
    conn: UpConn,
    urb: ReadBuf,
    resp: ResponseHead,
    connect_time: Duration,
}

/// Why one try failed.
struct TryFail {
    err: ProxyError,
    /// The failure was the client's (reading its body), not the upstream's.
    client_side: bool,
    /// A pooled connection failed before any response byte: likely closed while idle.
    stale: bool,
    /// The streamed request body was (partly) consumed: it cannot be sent again.
    body_consumed: bool,
}

impl TryFail {
    fn upstream(err: ProxyError) -> Self {
        Self {
            err,
            client_side: false,
            stale: false,
            body_consumed: false,
        }
    }
}

/// The client side of a request, lent to each try.
struct TryCtx<'a> {
    client: &'a mut ClientStream,
    crb: &'a mut ReadBuf,
    scratch: &'a mut Vec<u8>,
    up_head: &'a [u8],
    continue_sent: bool,
}

/// One try on endpoint `ep`: connection (pooled unless `fresh`), head and body, response head.
async fn try_once(
    w: &Rc<Worker>,
    req: &Request<'_>,
    ctx: &mut TryCtx<'_>,
    body: &Body,
    ep: usize,
    fresh: bool,
) -> Result<Exchange, TryFail> {
    let up = req.upstream;
    let route = req.route;
    let client_timeout = req.server.idle_timeout;
    let pooled = if fresh {
        None
    } else {
        w.pool
            .borrow_mut()
            .take(up, ep, !matches!(body, Body::None | Body::Retained(_)))
    };
    let mut connect_time = Duration::ZERO;
    let mut conn = match pooled {
        Some(c) => {
            w.stats.note_upstream_connection(&up.name, true);
            c
        }
        None => {
            let t0 = Instant::now();
            let stream = upstream::open(up, ep, route.connect_timeout)
                .await
                .map_err(TryFail::upstream)?;
            connect_time = t0.elapsed();
            w.pool.borrow_mut().note_connect();
            w.stats.note_upstream_connection(&up.name, false);
            UpConn {
                stream,
                requests: 0,
                reused: false,
            }
        }
    };
    let reused = conn.reused;
    ctx.scratch.clear();
    ctx.scratch.extend_from_slice(ctx.up_head);
    if let Body::Retained(b) = body {
        ctx.scratch.extend_from_slice(b);
    }
    if let Err(e) = send(&mut conn.stream, ctx.scratch, route.send_timeout).await {
        return Err(TryFail {
            stale: reused,
            ..TryFail::upstream(e)
        });
    }
    if matches!(body, Body::Length(_) | Body::Chunked)
        && req.head.expect_continue
        && !ctx.continue_sent
    {
        send_continue(ctx.client, ctx.scratch, client_timeout)
            .await
            .map_err(|e| TryFail {
                client_side: true,
                ..TryFail::upstream(e)
            })?;
        ctx.continue_sent = true;
    }
    let streamed = match body {
        Body::Length(n) => Some(
            copy_length_body(
                ctx.client,
                ctx.crb,
                &mut conn.stream,
                *n,
                ctx.scratch,
                client_timeout,
                route.send_timeout,
            )
            .await,
        ),
        Body::Chunked => Some(
            copy_chunked_request(
                ctx.client,
                ctx.crb,
                &mut conn.stream,
                req.server.max_body_bytes,
                ctx.scratch,
                client_timeout,
                route.send_timeout,
            )
            .await,
        ),
        Body::None | Body::Retained(_) => None,
    };
    if let Some(Err(e)) = streamed {
        let client_side = matches!(
            e,
            ProxyError::ClientIo(_)
                | ProxyError::ClientTimeout
                | ProxyError::BadRequest(_)
                | ProxyError::BodyTooLarge { .. }
        );
        return Err(TryFail {
            err: e,
            client_side,
            stale: false,
            body_consumed: true,
        });
    }
    let mut urb = ReadBuf::new(8192, MAX_RESPONSE_HEAD);
    match read_response_head(&mut conn.stream, &mut urb, route.read_timeout).await {
        Ok(resp) => Ok(Exchange {
            conn,
            urb,
            resp,
            connect_time,
        }),
        Err((e, got_bytes)) => {
            let closed = matches!(e, ProxyError::UpstreamClosed | ProxyError::UpstreamIo(_));
            Err(TryFail {
                stale: reused && !got_bytes && closed && streamed.is_none(),
                body_consumed: streamed.is_some(),
                ..TryFail::upstream(e)
            })
        }
    }
}

/// Jittered exponential backoff before try `n + 1`: 25 ms, 50 ms, 100 ms ... (±50 %).
fn backoff(w: &Worker, n: usize) -> Duration {
    let base = Duration::from_millis(25) * (1u32 << n.saturating_sub(1).min(6));
    base / 2 + w.balancer.jitter(base)
}

/// The metric label of a retry condition.
fn retry_reason(c: RetryOn) -> &'static str {
    match c {
        RetryOn::Error => "error",
        RetryOn::Timeout => "timeout",
        RetryOn::Http502 => "http_502",
        RetryOn::Http503 => "http_503",
        RetryOn::Http504 => "http_504",
        RetryOn::Http429 => "http_429",
    }
}

/// An upstream's `Retry-After` in seconds (the HTTP-date form is not honoured: providers send
/// seconds), capped at one minute.
fn retry_after(resp: &ResponseHead) -> Option<Duration> {
    let v = std::str::from_utf8(resp.header("retry-after")?)
        .ok()?
        .trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(60.0)))
}

/// OpenAI-style reset durations: "1s", "6m0s", "20ms", "1h2m3.5s".
pub fn parse_reset(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = v.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()?;
        any = true;
    }
    (any && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

/// When the provider reports its quota nearly spent, shed new requests until its reset.
fn note_provider_quota(up: &Upstream, resp: &ResponseHead) {
    let check = |floor: Option<u64>, remaining: &str, reset: &str| -> Option<Duration> {
        let floor = floor?;
        let rem: u64 = std::str::from_utf8(resp.header(remaining)?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if rem >= floor {
            return None;
        }
        let reset = resp
            .header(reset)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(parse_reset)
            .unwrap_or(Duration::from_secs(1));
        Some(reset.min(Duration::from_secs(3600)))
    };
    let shed = [
        check(
            up.shed_below_remaining_requests,
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        check(
            up.shed_below_remaining_tokens,
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    ]
    .into_iter()
    .flatten()
    .max();
    if let Some(d) = shed {
        let until = crate::clock::monotonic_nanos().saturating_add(d.as_nanos() as u64);
        up.shed_until
            .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(upstream = %up.name, shed_for_ms = d.as_millis() as u64, "provider quota nearly spent; shedding new requests until its reset");
    }
}

/// Applies the route's rate limit: admits, holds the request to the rate (`nodelay =
/// false`), or refuses with 429.
async fn admit(
    w: &Rc<Worker>,
    req: &Request<'_>,
    spec: &crate::config::LimitSpec,
    limiter: &crate::limit::KeyedLimiter,
) -> Result<(), ProxyError> {
    use crate::config::LimitKey;
    let ip;
    let key: &[u8] = match &spec.key {
        LimitKey::ApiKey => match req.head.header("authorization") {
            Some(v) => v,
            // No key: limit by address, so anonymous clients are not unlimited.
            None => {
                ip = headers::real_client_ip(req).to_string();
                ip.as_bytes()
            }
        },
        LimitKey::Header(name) => match req.head.header(name) {
            Some(v) => v,
            None => {
                ip = headers::real_client_ip(req).to_string();
                ip.as_bytes()
            }
        },
        LimitKey::ClientIp => {
            ip = headers::real_client_ip(req).to_string();
            ip.as_bytes()
        }
    };
    match limiter.check(key, crate::clock::monotonic_nanos()) {
        crate::limit::Decision::Allow { .. } => Ok(()),
        crate::limit::Decision::Delay { wait, .. } => {
            monoio::time::sleep(wait).await;
            Ok(())
        }
        crate::limit::Decision::Reject { retry_after, reset } => {
            w.stats.note_ratelimit_rejection(&spec.name);
            Err(ProxyError::RateLimited {
                limit: spec.name.clone(),
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                rate: spec.rate_per_second,
                reset,
            })
        }
    }
}

/// A slot in a route's process-wide in-flight count, released on drop. Routes without
/// `max_in_flight` never touch the shared counter.
struct InFlight<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl<'a> InFlight<'a> {
    /// Takes a slot, or None when the route is at `max_in_flight`.
    fn enter(route: &'a crate::config::Route) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let Some(max) = route.max_in_flight else {
            return Some(InFlight(None));
        };
        if route.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            route.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Some(&route.in_flight)))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_reset;
    use std::time::Duration;

    #[test]
    fn reset_formats() {
        let cases = [
            ("1s", Some(1000)),
            ("6m0s", Some(360_000)),
            ("20ms", Some(20)),
            ("1h2m3.5s", Some(3_723_500)),
            ("2", Some(2000)),
            ("x", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_reset(v).map(|d| d.as_millis() as u64), want, "{v}");
        }
        assert_eq!(parse_reset("0.5s"), Some(Duration::from_millis(500)));
    }
}
