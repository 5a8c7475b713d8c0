//! One attempt: one exchange with one upstream endpoint — a pooled connection (or a new
//! one), the request head and body sent, the response head read (interim 1xx skipped).
//! Whatever fails is classified here, once, into a [`Failure`] that says whether the request
//! reached the upstream and whether its body is spent; the retry decision reads only that.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::failure::{Failure, UpstreamFault};
use super::forward::Request;
use super::io::{send_continue, send_upstream, upstream_read_err};
use super::request_body::{BodyStream, RequestBody};
use crate::bufio::ReadBuf;
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::http::{self, ResponseHead};
use crate::listener::ClientStream;
use crate::upstream::balance::EndpointSlot;
use crate::upstream::{self, pool::UpConn, UpstreamStream};
use crate::worker::Worker;

/// Upper bound on an upstream response head.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head received: the connection it came on, what was read past the head, and
/// the endpoint's in-flight slot, held until the response body is done.
pub struct Exchange {
    /// The upstream connection.
    pub conn: UpConn,
    /// Bytes read from it after the head (the body's start).
    pub upstream_buf: ReadBuf,
    /// The response head.
    pub resp: ResponseHead,
    /// Time spent connecting (zero on a pooled connection).
    pub connect_time: Duration,
    /// When the attempt started.
    pub started: Instant,
    /// The endpoint's in-flight count in the balancer.
    pub slot: EndpointSlot,
}

/// The client side of a request, lent to each attempt.
pub struct ClientSide<'a> {
    /// The client connection.
    pub client: &'a mut ClientStream,
    /// Bytes read from the client not yet used (the body's start).
    pub client_buf: &'a mut ReadBuf,
    /// The write buffer.
    pub scratch: &'a mut Vec<u8>,
    /// Whether `100 Continue` already went out.
    pub continue_sent: bool,
    /// The client left while a provider held its whole request, waiting to answer: the
    /// provider may bill for it though no usage will ever be read.
    pub left_waiting: bool,
}

/// One attempt on the endpoint of `slot`: a connection (pooled unless `fresh`), the head
/// and body, the response head.
#[allow(clippy::too_many_arguments)]
pub async fn attempt(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    up: &Upstream,
    slot: EndpointSlot,
    side: &mut ClientSide<'_>,
    up_head: &[u8],
    body: &RequestBody,
    fresh: bool,
) -> Result<Exchange, Failure> {
    let started = Instant::now();
    let route = req.route;
    let ep = slot.endpoint();
    let pooled = if fresh {
        None
    } else {
        worker.pool.borrow_mut().take(up, ep)
    };
    let mut connect_time = Duration::ZERO;
    let mut conn = match pooled {
        Some(c) => {
            worker.stats.note_upstream_connection(&up.name, true);
            c
        }
        None => {
            let stream = upstream::open(up, ep, route.connect_timeout_for(up))
                .await
                .map_err(Failure::upstream)?;
            connect_time = started.elapsed();
            worker.pool.borrow_mut().note_connect();
            worker.stats.note_upstream_connection(&up.name, false);
            UpConn {
                stream,
                requests: 0,
                reused: false,
            }
        }
    };
    let reused = conn.reused;
    side.scratch.clear();
    side.scratch.extend_from_slice(up_head);
    if let RequestBody::Retained(b) = body {
        side.scratch.extend_from_slice(b);
    }
    if let Err(e) = send_upstream(&mut conn.stream, side.scratch, route.send_timeout).await {
        let fault = UpstreamFault {
            stale_pooled: reused,
            body_spent: false,
        };
        return Err(Failure::upstream_with(e, fault));
    }
    let streamed = !body.replayable();
    if streamed {
        stream_body(req, &mut conn.stream, side, body).await?;
    }
    let mut upstream_buf = ReadBuf::from_vec(worker.take_buffer(8192), MAX_RESPONSE_HEAD);
    let head = worker
        .client_watch
        .unless_client_leaves(
            side.client.raw_fd(),
            read_response_head(&mut conn.stream, &mut upstream_buf, route.read_timeout),
            || (ProxyError::ClientClosed, false),
        )
        .await;
    match head {
        Ok(mut resp) => {
            if up.api == crate::config::Api::Anthropic && resp.status == 529 {
                // Anthropic's "overloaded" is what 503 means to retries, fallbacks, health
                // accounting and clients alike.
                resp.status = crate::ai::anthropic::map_status(resp.status);
                resp.reason = "Service Unavailable".to_string();
            }
            Ok(Exchange {
                conn,
                upstream_buf,
                resp,
                connect_time,
                started,
                slot,
            })
        }
        Err((ProxyError::ClientClosed, _)) => {
            // Nobody waits for this answer: the connection (and the provider's work on it)
            // is dropped here.
            side.left_waiting = true;
            worker.give_buffer(upstream_buf.into_vec());
            Err(Failure::request(ProxyError::ClientClosed))
        }
        Err((error, got_bytes)) => {
            worker.give_buffer(upstream_buf.into_vec());
            let closed = matches!(
                error,
                ProxyError::UpstreamClosed | ProxyError::UpstreamIo(_)
            );
            let fault = UpstreamFault {
                stale_pooled: reused && !got_bytes && closed && !streamed,
                body_spent: streamed,
            };
            Err(Failure::upstream_with(error, fault))
        }
    }
}

/// Streams a body that was not kept from the client to the upstream (after `100 Continue`
/// when the client waits for it). A failure on the client's side is the client's; on the
/// upstream's it leaves the body spent.
async fn stream_body(
    req: &Request<'_>,
    upstream: &mut UpstreamStream,
    side: &mut ClientSide<'_>,
    body: &RequestBody,
) -> Result<(), Failure> {
    let client_timeout = req.server.idle_timeout;
    if req.head.expect_continue && !side.continue_sent {
        send_continue(side.client, side.scratch, client_timeout).await?;
        side.continue_sent = true;
    }
    let mut copy = BodyStream {
        client: side.client,
        client_buf: side.client_buf,
        upstream,
        out: side.scratch,
        client_timeout,
        send_timeout: req.route.send_timeout,
    };
    let copied = match body {
        RequestBody::Streamed(n) => copy.length(*n).await,
        RequestBody::StreamedChunked => copy.chunked(req.server.max_body_bytes).await,
        RequestBody::None | RequestBody::Retained(_) => Ok(()),
    };
    copied.map_err(|e| {
        let client_side = matches!(
            e,
            ProxyError::ClientIo(_)
                | ProxyError::ClientTimeout
                | ProxyError::BadRequest(_)
                | ProxyError::BodyTooLarge { .. }
        );
        if client_side {
            Failure::request(e)
        } else {
            Failure::upstream_with(
                e,
                UpstreamFault {
                    stale_pooled: false,
                    body_spent: true,
                },
            )
        }
    })
}

/// Reads a response head, skipping interim 1xx responses. The flag says whether any byte
/// arrived (a connection that answered something is not a stale pooled one).
pub async fn read_response_head(
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
