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

use monoio::net::TcpStream;

use super::headers::{self, ClientFraming, UpstreamFraming};
use super::Outcome;
use crate::bufio::{self, ReadBuf, ReadError};
use crate::config::{ServerSettings, Upstream};
use crate::error::ProxyError;
use crate::http::{self, BodyFraming, ChunkEvent, ChunkedDecoder, RequestHead, ResponseHead};
use crate::upstream::{self, pool::UpConn};
use crate::worker::Worker;

/// Request bodies up to this size are read before connecting, so the request can be sent
/// again on a new connection when a pooled one turns out dead.
pub const RETAINED_BODY_BYTES: u64 = 64 * 1024;

/// Upper bound on an upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Everything the exchange needs to know about the request.
pub struct Request<'a> {
    /// The parsed client head.
    pub head: &'a RequestHead,
    /// The matched route.
    pub route: &'a crate::config::Route,
    /// The route's upstream.
    pub upstream: &'a Upstream,
    /// Server limits.
    pub server: &'a ServerSettings,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// The request id sent both ways.
    pub request_id: &'a str,
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
async fn send(io: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), ProxyError> {
    let (res, back) = bufio::write_all(io, std::mem::take(buf), timeout).await;
    if let Some(b) = back {
        *buf = b;
    }
    res.map_err(upstream_write_err)
}

/// Sends `buf` to the client, handing the buffer back for reuse.
async fn send_client(
    io: &mut TcpStream,
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
    client: &mut TcpStream,
    crb: &mut ReadBuf,
    scratch: &mut Vec<u8>,
) -> Result<Outcome, Failure> {
    let head = req.head;
    let route = req.route;
    let up = req.upstream;
    let client_timeout = req.server.idle_timeout;
    let max_body = req.server.max_body_bytes;

    let mut body = match head.framing {
        BodyFraming::None => Body::None,
        BodyFraming::Length(0) => Body::None,
        BodyFraming::Length(n) if n > max_body => {
            return Err((ProxyError::BodyTooLarge { limit: max_body }, false));
        }
        BodyFraming::Length(n) if n <= RETAINED_BODY_BYTES => {
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

    let ep = upstream::pick_endpoint(up, &w.rr);
    let started = Instant::now();
    let mut attempt = 0;
    let (mut conn, mut urb, resp, t_connect) = loop {
        attempt += 1;
        let mut connect_time = Duration::ZERO;
        let pooled = if attempt == 1 {
            w.pool.borrow_mut().take(up, ep)
        } else {
            None
        };
        let mut conn = match pooled {
            Some(c) => {
                w.metrics.note_reuse();
                c
            }
            None => {
                if up.scheme == crate::config::Scheme::Https {
                    return Err((ProxyError::TlsUnsupported(up.name.clone()), false));
                }
                let t0 = Instant::now();
                let stream = upstream::connect(up, ep, route.connect_timeout)
                    .await
                    .map_err(|e| (e, false))?;
                connect_time = t0.elapsed();
                w.pool.borrow_mut().note_connect();
                w.metrics.note_connect();
                UpConn {
                    stream,
                    requests: 0,
                    reused: false,
                }
            }
        };
        let replayable = matches!(body, Body::None | Body::Retained(_));
        scratch.clear();
        scratch.extend_from_slice(&up_head);
        if let Body::Retained(b) = &body {
            scratch.extend_from_slice(b);
        }
        if let Err(e) = send(&mut conn.stream, scratch, route.send_timeout).await {
            if conn.reused && replayable && attempt == 1 {
                tracing::debug!(upstream = %up.name, error = %e, "pooled connection failed on write; retrying on a new one");
                continue;
            }
            return Err((e, false));
        }
        match &body {
            Body::Length(n) => {
                if head.expect_continue && !continue_sent {
                    send_continue(client, scratch, client_timeout)
                        .await
                        .map_err(|e| (e, false))?;
                    continue_sent = true;
                }
                copy_length_body(
                    client,
                    crb,
                    &mut conn.stream,
                    *n,
                    scratch,
                    client_timeout,
                    route.send_timeout,
                )
                .await
                .map_err(|e| (e, false))?;
            }
            Body::Chunked => {
                if head.expect_continue && !continue_sent {
                    send_continue(client, scratch, client_timeout)
                        .await
                        .map_err(|e| (e, false))?;
                    continue_sent = true;
                }
                copy_chunked_request(
                    client,
                    crb,
                    &mut conn.stream,
                    max_body,
                    scratch,
                    client_timeout,
                    route.send_timeout,
                )
                .await
                .map_err(|e| (e, false))?;
            }
            Body::None | Body::Retained(_) => {}
        }
        let mut urb = ReadBuf::new(8192, MAX_RESPONSE_HEAD);
        match read_response_head(&mut conn.stream, &mut urb, route.read_timeout).await {
            Ok(resp) => break (conn, urb, resp, connect_time),
            Err((e, got_bytes)) => {
                let stale = matches!(e, ProxyError::UpstreamClosed | ProxyError::UpstreamIo(_));
                if conn.reused && replayable && !got_bytes && stale && attempt == 1 {
                    tracing::debug!(upstream = %up.name, error = %e, "pooled connection closed before responding; retrying on a new one");
                    continue;
                }
                return Err((e, false));
            }
        }
    };
    let t_header = started.elapsed();
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
    send_client(client, scratch, client_timeout)
        .await
        .map_err(|e| (e, true))?;

    let rechunk = cframing == ClientFraming::Chunked;
    let bytes_out = match uframing {
        BodyFraming::None => Ok(0),
        BodyFraming::Length(n) => {
            copy_response_length(
                &mut conn.stream,
                &mut urb,
                client,
                n,
                scratch,
                route.read_timeout,
                client_timeout,
            )
            .await
        }
        BodyFraming::Chunked => {
            copy_response_chunked(
                &mut conn.stream,
                &mut urb,
                client,
                rechunk,
                scratch,
                route.read_timeout,
                client_timeout,
            )
            .await
        }
        BodyFraming::CloseDelimited => {
            copy_response_until_close(
                &mut conn.stream,
                &mut urb,
                client,
                rechunk,
                scratch,
                route.read_timeout,
                client_timeout,
            )
            .await
        }
    }
    .map_err(|e| (e, true))?;

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
    })
}

async fn send_continue(
    client: &mut TcpStream,
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
    io: &mut TcpStream,
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
    client: &mut TcpStream,
    crb: &mut ReadBuf,
    up: &mut TcpStream,
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
    client: &mut TcpStream,
    crb: &mut ReadBuf,
    up: &mut TcpStream,
    max_body: u64,
    out: &mut Vec<u8>,
    client_timeout: Duration,
    send_timeout: Duration,
) -> Result<(), ProxyError> {
    let mut dec = ChunkedDecoder::new();
    let mut total: u64 = 0;
    loop {
        out.clear();
        let mut done = false;
        loop {
            let (used, ev) = dec.decode(crb.data()).map_err(ProxyError::BadRequest)?;
            match ev {
                ChunkEvent::Data(r) => {
                    total += r.len() as u64;
                    if total > max_body {
                        return Err(ProxyError::BodyTooLarge { limit: max_body });
                    }
                    http::encode_chunk_header(r.len(), out);
                    out.extend_from_slice(&crb.data()[r]);
                    out.extend_from_slice(http::CHUNK_END);
                    crb.consume(used);
                }
                ChunkEvent::Done => {
                    crb.consume(used);
                    out.extend_from_slice(http::LAST_CHUNK);
                    done = true;
                    break;
                }
                ChunkEvent::NeedMore => {
                    crb.consume(used);
                    break;
                }
            }
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

async fn copy_response_length(
    up: &mut TcpStream,
    urb: &mut ReadBuf,
    client: &mut TcpStream,
    n: u64,
    out: &mut Vec<u8>,
    read_timeout: Duration,
    client_timeout: Duration,
) -> Result<u64, ProxyError> {
    let mut remaining = n;
    while remaining > 0 {
        if urb.is_empty() {
            urb.fill(up, read_timeout)
                .await
                .map_err(upstream_read_err)?;
        }
        let k = urb.available(remaining);
        out.clear();
        out.extend_from_slice(&urb.data()[..k]);
        urb.consume(k);
        remaining -= k as u64;
        send_client(client, out, client_timeout).await?;
    }
    Ok(n)
}

async fn copy_response_chunked(
    up: &mut TcpStream,
    urb: &mut ReadBuf,
    client: &mut TcpStream,
    rechunk: bool,
    out: &mut Vec<u8>,
    read_timeout: Duration,
    client_timeout: Duration,
) -> Result<u64, ProxyError> {
    let mut dec = ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        out.clear();
        let mut done = false;
        loop {
            let (used, ev) = dec
                .decode(urb.data())
                .map_err(ProxyError::UpstreamProtocol)?;
            match ev {
                ChunkEvent::Data(r) => {
                    total += r.len() as u64;
                    if rechunk {
                        http::encode_chunk_header(r.len(), out);
                    }
                    out.extend_from_slice(&urb.data()[r]);
                    if rechunk {
                        out.extend_from_slice(http::CHUNK_END);
                    }
                    urb.consume(used);
                }
                ChunkEvent::Done => {
                    urb.consume(used);
                    if rechunk {
                        out.extend_from_slice(http::LAST_CHUNK);
                    }
                    done = true;
                    break;
                }
                ChunkEvent::NeedMore => {
                    urb.consume(used);
                    break;
                }
            }
        }
        // Whatever arrived goes out now: an SSE event never waits for the next one.
        if !out.is_empty() {
            send_client(client, out, client_timeout).await?;
        }
        if done {
            return Ok(total);
        }
        urb.fill(up, read_timeout)
            .await
            .map_err(upstream_read_err)?;
    }
}

async fn copy_response_until_close(
    up: &mut TcpStream,
    urb: &mut ReadBuf,
    client: &mut TcpStream,
    rechunk: bool,
    out: &mut Vec<u8>,
    read_timeout: Duration,
    client_timeout: Duration,
) -> Result<u64, ProxyError> {
    let mut total = 0u64;
    loop {
        if !urb.is_empty() {
            out.clear();
            let data = urb.data();
            if rechunk {
                http::encode_chunk_header(data.len(), out);
            }
            out.extend_from_slice(data);
            if rechunk {
                out.extend_from_slice(http::CHUNK_END);
            }
            total += data.len() as u64;
            let n = data.len();
            urb.consume(n);
            send_client(client, out, client_timeout).await?;
        }
        match urb.fill(up, read_timeout).await {
            Ok(_) => {}
            Err(ReadError::Eof) => break,
            Err(e) => return Err(upstream_read_err(e)),
        }
    }
    if rechunk {
        out.clear();
        out.extend_from_slice(http::LAST_CHUNK);
        send_client(client, out, client_timeout).await?;
    }
    Ok(total)
}
