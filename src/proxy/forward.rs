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
use crate::ai::cache::{CachedResponse, ResponseCache};
use crate::bufio::{self, ReadBuf, ReadError};
use crate::config::ai::{Client, Model};
use crate::config::{Config, RetryOn, ServerSettings, Upstream};
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
    /// The route's upstream; None for `route_by_model` routes (the model picks it).
    pub upstream: Option<&'a Upstream>,
    /// The whole config generation (models, upstreams, limits).
    pub config: &'a Config,
    /// The limiters of `config.limits`, same order.
    pub limiters: &'a [std::sync::Arc<crate::limit::KeyedLimiter>],
    /// The authenticated `[auth]` client, if the route requires one.
    pub client: Option<&'a Client>,
    /// The response cache.
    pub cache: &'a ResponseCache,
    /// Server limits.
    pub server: &'a ServerSettings,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub client_tls: bool,
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

/// One place a try can go: an upstream and, on model-routed routes, the model it serves.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    up: &'a Upstream,
    model: Option<(usize, &'a Model)>,
}

/// What the AI layer learned of a model-routed request's body.
struct AiRequest {
    /// The original body bytes (the per-candidate body is derived from them).
    original: Vec<u8>,
    info: crate::ai::body::RequestInfo,
    /// The gateway added `include_usage`, so the usage-only chunk must not reach the client.
    strip_usage_chunk: bool,
}

/// How the cache treats this request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    /// Not a cached route, or a streaming request.
    Off,
    /// Looked up and missed: store the response.
    Miss,
    /// `Cache-Control: no-cache`: not looked up, but the fresh response is stored.
    Refresh,
    /// `Cache-Control: no-store`: neither looked up nor stored.
    NoStore,
}

/// Proxies one request. On error, the flag tells whether the response head already went to
/// the client (then the connection must be cut instead of answered).
pub async fn forward(
    w: &Rc<Worker>,
    req: &Request<'_>,
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    scratch: &mut Vec<u8>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let head = req.head;
    let route = req.route;
    let client_timeout = req.server.idle_timeout;
    let max_body = req.server.max_body_bytes;

    let _in_flight = match InFlight::enter(route) {
        Some(g) => g,
        None => return Err((ProxyError::RouteBusy(route.name.clone()), false)),
    };
    if let Some((spec, limiter)) = req.limit {
        admit(w, req, spec, limiter, None)
            .await
            .map_err(|e| (e, false))?;
    }
    if let Some(c) = req.client {
        if let Some((spec, limiter)) = limit_at(req, c.limit) {
            admit(w, req, spec, limiter, Some(c.name.as_bytes()))
                .await
                .map_err(|e| (e, false))?;
        }
        if let Some((spec, limiter)) = limit_at(req, c.token_limit) {
            if let crate::limit::Decision::Reject { retry_after, .. } =
                limiter.peek(c.name.as_bytes(), crate::clock::monotonic_nanos())
            {
                w.stats.note_ratelimit_rejection(&spec.name);
                return Err((
                    ProxyError::TokensExhausted {
                        client: c.name.to_string(),
                        retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                    },
                    false,
                ));
            }
        }
    }

    // Model-routed requests and cached routes need the whole body in hand: to read the
    // model, to key the cache, and to re-send it to a fallback.
    let whole_body = route.route_by_model || route.cache_ttl.is_some();
    let retain_up_to = if whole_body {
        max_body
    } else {
        req.server.max_retry_body_bytes
    };
    let mut body = match head.framing {
        BodyFraming::None => Body::None,
        BodyFraming::Length(0) => Body::None,
        BodyFraming::Length(n) if n > max_body => {
            return Err((ProxyError::BodyTooLarge { limit: max_body }, false));
        }
        BodyFraming::Length(n) if n <= retain_up_to => {
            Body::Retained(Vec::with_capacity(n as usize))
        }
        BodyFraming::Length(n) => Body::Length(n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited if whole_body => {
            Body::Retained(Vec::new())
        }
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
        match head.framing {
            BodyFraming::Length(n) => {
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
            _ => read_chunked_body(client, crb, buf, max_body, client_timeout)
                .await
                .map_err(|e| (e, false))?,
        }
    }
    // Only a body fully read counts here: the connection loop keeps a connection whose
    // request failed only when nothing of that request is left on the wire.
    if let Body::Retained(b) = &body {
        outcome.bytes_in = b.len() as u64;
    }

    // The places a try can go: the route's upstream, or the model's and its fallbacks'.
    let mut ai: Option<AiRequest> = None;
    let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(1);
    if route.route_by_model {
        let bytes = match &mut body {
            Body::Retained(b) => std::mem::take(b),
            _ => Vec::new(),
        };
        let info = crate::ai::body::inspect(&bytes)
            .map_err(|e| (ProxyError::BadJson(e.to_string()), false))?;
        let name = info
            .model
            .as_deref()
            .ok_or((ProxyError::MissingModel, false))?;
        let models = &req.config.models;
        let Some(&first) = models.by_name.get(name) else {
            return Err((ProxyError::UnknownModel(name.to_string()), false));
        };
        for idx in std::iter::once(first).chain(
            models
                .list
                .get(first)
                .map(|m| m.fallbacks.clone())
                .unwrap_or_default(),
        ) {
            if let Some(m) = models.list.get(idx) {
                if let Some(up) = req.config.upstreams.get(m.upstream) {
                    candidates.push(Candidate {
                        up,
                        model: Some((idx, m)),
                    });
                }
            }
        }
        let strip_usage_chunk = info.stream && info.include_usage != Some(true);
        body = Body::Retained(Vec::with_capacity(bytes.len() + 48));
        ai = Some(AiRequest {
            original: bytes,
            info,
            strip_usage_chunk,
        });
    } else if let Some(up) = req.upstream {
        candidates.push(Candidate { up, model: None });
    }
    let Some(&first) = candidates.first() else {
        return Err((
            ProxyError::NoRoute {
                method: head.method.clone(),
                path: head.path().to_string(),
            },
            false,
        ));
    };
    outcome.model = first.model.map(|(i, _)| i);

    // The response cache: exact match on route, model and body, non-streaming only.
    let streaming = ai.as_ref().is_some_and(|a| a.info.stream);
    let mut cache_key = None;
    let mut cache_mode = CacheMode::Off;
    if let (Some(ttl), false) = (route.cache_ttl, streaming) {
        let body_bytes: &[u8] = match (&ai, &body) {
            (Some(a), _) => &a.original,
            (None, Body::Retained(b)) => b,
            _ => &[],
        };
        let retained = ai.is_some() || matches!(body, Body::Retained(_) | Body::None);
        if retained {
            let model_name = first.model.map_or("", |(_, m)| m.name.as_str());
            let key = crate::ai::cache::key(&route.name, model_name, body_bytes);
            let directives = cache_directives(head);
            cache_mode = if directives.no_store {
                CacheMode::NoStore
            } else if directives.no_cache {
                CacheMode::Refresh
            } else {
                CacheMode::Miss
            };
            if cache_mode == CacheMode::Miss {
                if let Some(hit) = req.cache.get(&key, Instant::now()) {
                    w.stats.note_cache(&route.name, 0);
                    outcome.cache = Some("HIT");
                    let _ = ttl;
                    return serve_cached(w, req, client, scratch, &hit, outcome).await;
                }
                w.stats.note_cache(&route.name, 1);
                outcome.cache = Some("MISS");
            } else {
                w.stats.note_cache(&route.name, 2);
                outcome.cache = Some("BYPASS");
            }
            cache_key = Some(key);
        }
    }

    let mut cand_idx = 0usize;
    let mut up_head = Vec::with_capacity(512 + head.headers.len() * 48);
    let mut target = String::with_capacity(head.target.len() + 64);
    prepare_candidate(
        req,
        first,
        ai.as_ref(),
        &mut body,
        &mut up_head,
        &mut target,
    );
    if let Some((_, m)) = first.model {
        w.stats
            .note_model_request(&m.name, req.client.map(|c| &*c.name));
    }

    let started = Instant::now();
    let deadline = started + route.retry_budget;
    let mut cand = first;
    let mut state = w.balancer.state(cand.up);
    let replayable = matches!(body, Body::None | Body::Retained(_));
    // Retries on one model as `tries` says, plus one try for each fallback.
    let max_tries = route.tries as usize + candidates.len() - 1;
    let mut tries_done = 0usize;
    let mut tried: Vec<usize> = Vec::with_capacity(route.tries as usize);
    let mut stale_retry_left = true;
    let mut ctx = TryCtx {
        client,
        crb,
        scratch,
        up_head,
        continue_sent,
    };
    let mut try_started;
    let (ep, mut conn, mut urb, resp, t_connect) = loop {
        let up = cand.up;
        let now = Instant::now();
        let shedding = shed_for(up);
        let picked = if shedding.is_some() {
            None
        } else {
            w.balancer.pick(up, &state, &tried, now)
        };
        let Some(ep) = picked else {
            // This provider is ejected everywhere: its fallback may still be up.
            if cand_idx + 1 < candidates.len() {
                cand_idx += 1;
                if let Some((_, m)) = cand.model {
                    w.stats.note_fallback(&m.name);
                }
                cand = candidates[cand_idx];
                switch_candidate(
                    w,
                    req,
                    cand,
                    ai.as_ref(),
                    &mut body,
                    &mut ctx.up_head,
                    &mut target,
                );
                state = w.balancer.state(cand.up);
                tried.clear();
                continue;
            }
            if let Some(retry_after_secs) = shedding {
                return Err((
                    ProxyError::ProviderQuota {
                        upstream: up.name.clone(),
                        retry_after_secs,
                    },
                    false,
                ));
            }
            return Err((ProxyError::NoHealthyEndpoint(up.name.clone()), false));
        };
        tried.push(ep);
        tries_done += 1;
        state.start(ep);
        let t0 = Instant::now();
        try_started = t0;
        let result = try_once(
            w,
            req,
            up,
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
                    Some(c) if replayable && tries_done < max_tries => {
                        // An upstream's Retry-After is honoured, but only within the budget:
                        // past it, the client gets this answer rather than a wait. A fallback
                        // is another provider: its wait is not this one's.
                        let wait = if cand_idx + 1 < candidates.len() {
                            Duration::ZERO
                        } else {
                            retry_after(&ex.resp).unwrap_or_else(|| backoff(w, tried.len()))
                        };
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
                    tries_done -= 1;
                    continue;
                }
                state.failure(ep, up, Instant::now());
                let cond = match fail.err {
                    ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => RetryOn::Timeout,
                    _ => RetryOn::Error,
                };
                let wait = if cand_idx + 1 < candidates.len() {
                    Duration::ZERO
                } else {
                    backoff(w, tried.len())
                };
                let retryable = route.retry_on.contains(&cond)
                    && replayable
                    && !fail.body_consumed
                    && tries_done < max_tries
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
        if cand_idx + 1 < candidates.len() {
            cand_idx += 1;
            if let Some((_, m)) = cand.model {
                w.stats.note_fallback(&m.name);
                tracing::info!(route = %route.name, from = %m.name, to = %candidates[cand_idx].model.map_or("", |(_, m)| m.name.as_str()), reason = retry_reason(reason), "falling back to the next model");
            }
            cand = candidates[cand_idx];
            switch_candidate(
                w,
                req,
                cand,
                ai.as_ref(),
                &mut body,
                &mut ctx.up_head,
                &mut target,
            );
            state = w.balancer.state(cand.up);
            tried.clear();
        }
        monoio::time::sleep(wait).await;
    };
    let up = cand.up;
    if let Body::Length(n) = body {
        outcome.bytes_in = n;
    }
    outcome.upstream = Some(up.name.clone());
    outcome.model = cand.model.map(|(i, _)| i);
    let client = ctx.client;
    let scratch = ctx.scratch;
    let t_header = try_started.elapsed();
    outcome.connect = Some(t_connect);
    outcome.header = Some(t_header);
    outcome.status = resp.status;
    conn.requests += 1;

    let uframing = http::response_framing(&head.method, &resp)
        .map_err(|e| (ProxyError::UpstreamProtocol(e), false))?;

    // Token accounting reads 2xx bodies that are not content-encoded.
    let identity = resp
        .header("content-encoding")
        .is_none_or(|v| v.eq_ignore_ascii_case(b"identity"));
    let is_sse = resp
        .header("content-type")
        .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"));
    let mut tap = Tap::default();
    if ai.is_some() && (200..300).contains(&resp.status) && identity {
        if is_sse {
            let strip = ai.as_ref().is_some_and(|a| a.strip_usage_chunk);
            tap.sse = Some(crate::ai::usage::SseScanner::new(strip));
            tap.filter = strip;
        } else {
            tap.json = Some(crate::ai::usage::JsonUsageScanner::new());
        }
    }
    let store = cache_key.is_some()
        && matches!(cache_mode, CacheMode::Miss | CacheMode::Refresh)
        && resp.status == 200
        && !is_sse
        && !resp
            .header("cache-control")
            .is_some_and(|v| contains_token(v, b"no-store") || contains_token(v, b"private"))
        && match uframing {
            BodyFraming::Length(n) => n <= req.cache.max_entry_bytes(),
            BodyFraming::Chunked => true,
            _ => false,
        };
    if store {
        tap.capture = Some(Vec::new());
        tap.capture_max = req.cache.max_entry_bytes() as usize;
    }

    // HTTP/1.0 clients cannot read chunked bodies: they get the payload close-delimited. A
    // filtered stream changes length, so it is re-framed as chunks too.
    let cframing = match uframing {
        BodyFraming::None => ClientFraming::AsIs,
        BodyFraming::Length(_) if !tap.filter => ClientFraming::AsIs,
        _ if head.minor_version >= 1 => ClientFraming::Chunked,
        _ => ClientFraming::Close,
    };
    let keep_alive = head.keep_alive && cframing != ClientFraming::Close && !w.drain.is_draining();
    scratch.clear();
    let extra: &[u8] = match outcome.cache {
        Some("MISS") => b"x-cache: MISS\r\n",
        Some("BYPASS") => b"x-cache: BYPASS\r\n",
        _ => b"",
    };
    headers::write_client_head(scratch, &resp, cframing, req.request_id, keep_alive, extra);
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
        read_timeout: req.route.read_timeout,
        client_timeout,
        first_body: None,
        tap,
    };
    let copied = match uframing {
        BodyFraming::None => Ok(0),
        BodyFraming::Length(n) => pipe.length(n, rechunk).await,
        BodyFraming::Chunked => pipe.chunked(rechunk).await,
        BodyFraming::CloseDelimited => pipe.until_close(rechunk).await,
    };
    let first_body = pipe.first_body;
    let tap = std::mem::take(&mut pipe.tap);
    outcome.ttfb = first_body.map(|t| t.saturating_duration_since(req.started));
    outcome.response = Some(try_started.elapsed());
    let bytes_out = match copied {
        Ok(n) => n,
        Err(e) => {
            account_usage(w, req, cand, &tap);
            return Err((e, true));
        }
    };
    outcome.bytes_out = bytes_out;
    account_usage(w, req, cand, &tap);
    if let (Some(key), Some(body)) = (cache_key, tap.capture) {
        if let Some(ttl) = route.cache_ttl {
            let mut hdrs = Vec::with_capacity(256);
            headers::cacheable_header_lines(&resp, &mut hdrs);
            req.cache.put(
                key,
                CachedResponse {
                    status: resp.status,
                    headers: hdrs,
                    body,
                    stored: Instant::now(),
                    ttl,
                },
            );
        }
    }

    let reusable =
        resp.keep_alive && urb.is_empty() && !matches!(uframing, BodyFraming::CloseDelimited);
    if reusable {
        w.pool.borrow_mut().put(up, ep, conn);
    }
    w.give_buffer(urb.into_vec());
    w.metrics.note_upstream_timing(t_connect, t_header);
    outcome.keep_alive = keep_alive;
    Ok(())
}

/// Seconds until `up`'s provider quota resets, while new requests to it are shed.
fn shed_for(up: &Upstream) -> Option<u64> {
    let until = up.shed_until.load(std::sync::atomic::Ordering::Relaxed);
    if until == 0 {
        return None;
    }
    let now = crate::clock::monotonic_nanos();
    (now < until).then(|| (until - now).div_ceil(1_000_000_000))
}

/// The limit at index `id` of the config and its limiter.
fn limit_at<'a>(
    req: &Request<'a>,
    id: Option<crate::config::LimitId>,
) -> Option<(&'a crate::config::LimitSpec, &'a crate::limit::KeyedLimiter)> {
    let i = id?;
    Some((
        req.config.limits.get(i)?.as_ref(),
        req.limiters.get(i)?.as_ref(),
    ))
}

/// Builds the upstream head and (for model-routed requests) the body for `cand`.
fn prepare_candidate(
    req: &Request<'_>,
    cand: Candidate<'_>,
    ai: Option<&AiRequest>,
    body: &mut Body,
    up_head: &mut Vec<u8>,
    target: &mut String,
) {
    let up = cand.up;
    if let (Some(a), Body::Retained(b)) = (ai, &mut *body) {
        b.clear();
        let provider_model = cand.model.and_then(|(_, m)| m.provider_model.as_deref());
        crate::ai::body::rewrite(&a.original, &a.info, provider_model, a.strip_usage_chunk, b);
    }
    let head = req.head;
    target.clear();
    crate::router::upstream_target(req.route, &up.base_path, head.path(), head.query(), target);
    let upstream_framing = match &*body {
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
    up_head.clear();
    headers::write_upstream_head(up_head, req, up, target, upstream_framing);
}

/// Moves the request on to a fallback model (counted on the new model).
fn switch_candidate(
    w: &Worker,
    req: &Request<'_>,
    cand: Candidate<'_>,
    ai: Option<&AiRequest>,
    body: &mut Body,
    up_head: &mut Vec<u8>,
    target: &mut String,
) {
    prepare_candidate(req, cand, ai, body, up_head, target);
    if let Some((_, m)) = cand.model {
        w.stats
            .note_model_request(&m.name, req.client.map(|c| &*c.name));
    }
}

/// Counts the tokens and dollars a response reported, and charges the client's token
/// budget. Runs also when the stream broke midway: what was used was used.
fn account_usage(w: &Worker, req: &Request<'_>, cand: Candidate<'_>, tap: &Tap) {
    let Some((_, model)) = cand.model else {
        return;
    };
    let usage = match (&tap.sse, &tap.json) {
        (Some(s), _) => s.usage(),
        (None, Some(j)) => j.usage(),
        _ => None,
    };
    let Some(u) = usage else {
        return;
    };
    let cost = model.price.map_or(0.0, |p| p.cost(&u));
    let client = req.client;
    w.stats
        .note_usage(&model.name, client.map(|c| &*c.name), &u, cost);
    if let Some(c) = client {
        if let Some((_, limiter)) = limit_at(req, c.token_limit) {
            limiter.charge(
                c.name.as_bytes(),
                u.prompt.saturating_add(u.completion),
                crate::clock::monotonic_nanos(),
            );
        }
    }
}

/// The client's `Cache-Control` request directives that matter here.
struct CacheDirectives {
    no_cache: bool,
    no_store: bool,
}

fn cache_directives(head: &RequestHead) -> CacheDirectives {
    let mut d = CacheDirectives {
        no_cache: false,
        no_store: false,
    };
    for h in head.headers.iter().filter(|h| {
        h.name.eq_ignore_ascii_case("cache-control") || h.name.eq_ignore_ascii_case("pragma")
    }) {
        d.no_cache |= contains_token(h.value, b"no-cache");
        d.no_store |= contains_token(h.value, b"no-store");
    }
    d
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|part| {
        let t = part.trim_ascii();
        let name = t.split(|&b| b == b'=').next().unwrap_or_default();
        name.eq_ignore_ascii_case(token)
    })
}

/// Answers from the cache: the stored status, headers and body, with `x-cache: HIT` and
/// the entry's `age`.
async fn serve_cached(
    w: &Rc<Worker>,
    req: &Request<'_>,
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
    hit: &CachedResponse,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let keep_alive = req.head.keep_alive && !w.drain.is_draining();
    scratch.clear();
    scratch.extend_from_slice(b"HTTP/1.1 ");
    scratch.extend_from_slice(hit.status.to_string().as_bytes());
    scratch.push(b' ');
    scratch.extend_from_slice(http::reason_phrase(hit.status).as_bytes());
    scratch.extend_from_slice(b"\r\n");
    scratch.extend_from_slice(&hit.headers);
    scratch.extend_from_slice(b"content-length: ");
    scratch.extend_from_slice(hit.body.len().to_string().as_bytes());
    scratch.extend_from_slice(b"\r\nx-cache: HIT\r\nage: ");
    scratch.extend_from_slice(hit.stored.elapsed().as_secs().to_string().as_bytes());
    scratch.extend_from_slice(b"\r\nx-request-id: ");
    scratch.extend_from_slice(req.request_id.as_bytes());
    scratch.extend_from_slice(b"\r\n");
    if !keep_alive {
        scratch.extend_from_slice(b"connection: close\r\n");
    }
    scratch.extend_from_slice(b"\r\n");
    if req.head.method != "HEAD" {
        scratch.extend_from_slice(&hit.body);
    }
    send_client(client, scratch, req.server.idle_timeout)
        .await
        .map_err(|e| (e, true))?;
    outcome.status = hit.status;
    outcome.bytes_out = hit.body.len() as u64;
    outcome.keep_alive = keep_alive;
    Ok(())
}

/// Reads a whole chunked request body into `buf`, bounded by `max`.
async fn read_chunked_body(
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    buf: &mut Vec<u8>,
    max: u64,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let mut dec = ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        let done = reframe_chunks(&mut dec, crb, buf, false, &mut total, None)
            .map_err(ProxyError::BadRequest)?;
        if total > max {
            return Err(ProxyError::BodyTooLarge { limit: max });
        }
        if done {
            return Ok(());
        }
        crb.fill(client, timeout).await.map_err(client_read_err)?;
    }
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
        let done = reframe_chunks(&mut dec, crb, out, true, &mut total, None)
            .map_err(ProxyError::BadRequest)?;
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

/// What the gateway reads from a response body while it streams through: token usage
/// (JSON or SSE), and the body itself when it is to be cached. In `filter` mode the SSE
/// scanner decides what is forwarded (it removes the usage chunk the gateway asked for).
#[derive(Default)]
struct Tap {
    json: Option<crate::ai::usage::JsonUsageScanner>,
    sse: Option<crate::ai::usage::SseScanner>,
    filter: bool,
    capture: Option<Vec<u8>>,
    capture_max: usize,
    /// Scratch for the filtered bytes (reused across reads).
    filtered: Vec<u8>,
}

impl Tap {
    fn observe(&mut self, payload: &[u8]) {
        if let Some(j) = &mut self.json {
            j.feed(payload);
        }
        if let Some(s) = &mut self.sse {
            self.filtered.clear();
            s.feed(payload, &mut self.filtered);
        }
        if let Some(c) = &mut self.capture {
            if c.len() + payload.len() > self.capture_max {
                self.capture = None;
            } else {
                c.extend_from_slice(payload);
            }
        }
    }

    /// End of the body: in filter mode, what the SSE scanner still held.
    fn finish(&mut self) {
        self.filtered.clear();
        if let (Some(s), true) = (&mut self.sse, self.filter) {
            s.finish(&mut self.filtered);
        }
    }
}

/// Appends one piece of response payload to `out` (as a chunk when `rechunk`), through the
/// tap when there is one.
fn emit(tap: Option<&mut Tap>, out: &mut Vec<u8>, rechunk: bool, payload: &[u8]) {
    let data = match tap {
        Some(t) => {
            t.observe(payload);
            if t.filter {
                push_framed(out, rechunk, &t.filtered);
                return;
            }
            payload
        }
        None => payload,
    };
    push_framed(out, rechunk, data);
}

fn push_framed(out: &mut Vec<u8>, rechunk: bool, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if rechunk {
        http::encode_chunk_header(data.len(), out);
    }
    out.extend_from_slice(data);
    if rechunk {
        out.extend_from_slice(http::CHUNK_END);
    }
}

/// Decodes every whole chunk in `rb` into `out` — re-framed as chunks when `rechunk`, bare
/// payload otherwise — adding payload bytes to `total`. Returns whether the body ended (the
/// last chunk is then written too when `rechunk`).
fn reframe_chunks(
    dec: &mut ChunkedDecoder,
    rb: &mut ReadBuf,
    out: &mut Vec<u8>,
    rechunk: bool,
    total: &mut u64,
    mut tap: Option<&mut Tap>,
) -> Result<bool, http::HttpError> {
    loop {
        let (used, ev) = dec.decode(rb.data())?;
        match ev {
            ChunkEvent::Data(r) => {
                *total += r.len() as u64;
                emit(tap.as_deref_mut(), out, rechunk, &rb.data()[r]);
                rb.consume(used);
            }
            ChunkEvent::Done => {
                rb.consume(used);
                if let Some(t) = tap {
                    t.finish();
                    push_framed(out, rechunk, &t.filtered);
                }
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
    /// What is read from the body on its way through.
    tap: Tap,
}

impl<U: AsyncReadRent> ResponsePipe<'_, U> {
    /// Sends what `out` holds (head and/or body) and empties it.
    async fn flush(&mut self) -> Result<(), ProxyError> {
        send_client(self.client, self.out, self.client_timeout).await?;
        self.out.clear();
        Ok(())
    }

    /// Copies a `Content-Length` body of `n` bytes (re-chunked when the tap filters it).
    async fn length(&mut self, n: u64, rechunk: bool) -> Result<u64, ProxyError> {
        let mut remaining = n;
        if remaining == 0 && rechunk {
            self.out.extend_from_slice(http::LAST_CHUNK);
        }
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
            emit(
                Some(&mut self.tap),
                self.out,
                rechunk,
                &self.urb.data()[..k],
            );
            self.urb.consume(k);
            remaining -= k as u64;
            if remaining == 0 && rechunk {
                self.tap.finish();
                push_framed(self.out, rechunk, &self.tap.filtered);
                self.out.extend_from_slice(http::LAST_CHUNK);
            }
            if !self.out.is_empty() {
                self.flush().await?;
            }
        }
        Ok(n)
    }

    /// Copies a chunked body, re-chunked (or bare for HTTP/1.0 clients), flushing every read.
    async fn chunked(&mut self, rechunk: bool) -> Result<u64, ProxyError> {
        let mut dec = ChunkedDecoder::new();
        let mut total = 0u64;
        loop {
            let done = reframe_chunks(
                &mut dec,
                self.urb,
                self.out,
                rechunk,
                &mut total,
                Some(&mut self.tap),
            )
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
                let n = self.urb.len();
                emit(Some(&mut self.tap), self.out, rechunk, self.urb.data());
                total += n as u64;
                self.urb.consume(n);
                if !self.out.is_empty() {
                    self.flush().await?;
                    self.first_body.get_or_insert_with(Instant::now);
                }
            }
            match self.urb.fill(self.up, self.read_timeout).await {
                Ok(_) => {}
                Err(ReadError::Eof) => break,
                Err(e) => return Err(upstream_read_err(e)),
            }
        }
        self.tap.finish();
        push_framed(self.out, rechunk, &self.tap.filtered);
        if rechunk {
            self.out.extend_from_slice(http::LAST_CHUNK);
        }
        if !self.out.is_empty() {
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
    up_head: Vec<u8>,
    continue_sent: bool,
}

/// One try on endpoint `ep`: connection (pooled unless `fresh`), head and body, response head.
async fn try_once(
    w: &Rc<Worker>,
    req: &Request<'_>,
    up: &Upstream,
    ctx: &mut TryCtx<'_>,
    body: &Body,
    ep: usize,
    fresh: bool,
) -> Result<Exchange, TryFail> {
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
            let stream = upstream::open(up, ep, route.connect_timeout_for(up))
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
    ctx.scratch.extend_from_slice(&ctx.up_head);
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
    let mut urb = ReadBuf::from_vec(w.take_buffer(8192), MAX_RESPONSE_HEAD);
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
    key_override: Option<&[u8]>,
) -> Result<(), ProxyError> {
    use crate::config::LimitKey;
    let ip;
    let key: &[u8] = match (&spec.key, key_override) {
        (_, Some(k)) => k,
        (LimitKey::Client, None) => match req.client {
            Some(c) => c.name.as_bytes(),
            None => {
                ip = headers::real_client_ip(req).to_string();
                ip.as_bytes()
            }
        },
        (key, None) => match key {
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
            LimitKey::ClientIp | LimitKey::Client => {
                ip = headers::real_client_ip(req).to_string();
                ip.as_bytes()
            }
        },
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
