//! The body plan: whether the request body is kept in memory (so it can be read by the AI
//! layer, keyed by the cache, and sent again on a retry or to a fallback) or streamed to the
//! upstream as it arrives (large bodies; never retried), and the copying either way.
//!
//! A kept body is memory a client makes the gateway hold, so it is bounded twice: each
//! worker's kept bodies share `server.body_buffer_bytes` ([`BodyBudget`]: a request that
//! does not fit now is refused before its body is read, 503 with `Retry-After`), and a kept
//! body must arrive within `server.body_read_timeout_ms` from its first byte to its last
//! (408), however slowly its bytes trickle in.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::io::{client_read_err, send_upstream};
use super::pipe::reframe_chunks;
use crate::bufio::ReadBuf;
use crate::error::ProxyError;
use crate::http::{BodyFraming, ChunkedDecoder};
use crate::listener::ClientStream;
use crate::upstream::UpstreamStream;

/// The request body, as the exchange will send it.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    None,
    /// Read whole before the first try: it can be sent any number of times.
    Retained(Vec<u8>),
    /// `Content-Length` bytes streamed from the client during the try.
    Streamed(u64),
    /// A chunked body streamed (re-chunked) from the client during the try.
    StreamedChunked,
}

impl RequestBody {
    /// Whether the body can be sent again (to another endpoint or a fallback).
    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::None | RequestBody::Retained(_))
    }
}

/// The plan for a body of `framing`. `whole` routes (model-routed, cached) need it in hand;
/// others keep it only up to `max_retry` so a retry can re-send it. Over `max_body`: 413.
pub fn plan(
    framing: BodyFraming,
    whole: bool,
    max_body: u64,
    max_retry: u64,
) -> Result<RequestBody, ProxyError> {
    let keep_up_to = if whole { max_body } else { max_retry };
    Ok(match framing {
        BodyFraming::None | BodyFraming::Length(0) => RequestBody::None,
        BodyFraming::Length(n) if n > max_body => {
            return Err(ProxyError::BodyTooLarge { limit: max_body });
        }
        // Allocated only once the worker's budget has room for it (`read_whole`).
        BodyFraming::Length(n) if n <= keep_up_to => RequestBody::Retained(Vec::new()),
        BodyFraming::Length(n) => RequestBody::Streamed(n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited if whole => {
            RequestBody::Retained(Vec::new())
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => RequestBody::StreamedChunked,
    })
}

/// The bytes of kept request bodies one worker holds, against `server.body_buffer_bytes`.
/// Worker-local: reserving is a `Cell` update, no atomic.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: Cell<u64>,
}

impl BodyBudget {
    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Reserves `bytes` of a budget of `limit`: 413 when it could never fit, 503 when it does
    /// not fit now.
    pub fn reserve(&self, bytes: u64, limit: u64) -> Result<BodyReservation<'_>, ProxyError> {
        let mut r = BodyReservation {
            budget: self,
            bytes: 0,
            limit,
        };
        r.grow_to(bytes)?;
        Ok(r)
    }
}

/// Budget held by one kept body, released on drop.
#[derive(Debug)]
pub struct BodyReservation<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
    limit: u64,
}

impl BodyReservation<'_> {
    /// Grows the reservation to `bytes` (a chunked body as it arrives).
    pub fn grow_to(&mut self, bytes: u64) -> Result<(), ProxyError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        if bytes > self.limit {
            return Err(ProxyError::BodyTooLarge { limit: self.limit });
        }
        let others = self.budget.held.get() - self.bytes;
        if others.saturating_add(bytes) > self.limit {
            return Err(ProxyError::BodyBufferFull);
        }
        self.budget.held.set(others + bytes);
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.budget
            .held
            .set(self.budget.held.get().saturating_sub(self.bytes));
    }
}

/// Limits on reading a kept body.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest body (`server.max_body_bytes`).
    pub max: u64,
    /// Longest wait for the client's next bytes.
    pub idle: Duration,
    /// When the whole body must be in.
    pub deadline: Instant,
    /// Budget bytes per body byte: a model-routed body is held twice (as sent, and as
    /// rewritten for the candidate).
    pub copies: u64,
}

/// Reads from the client within both the idle timeout and the body's deadline.
async fn fill_within(
    client: &mut ClientStream,
    client_buf: &mut ReadBuf,
    limits: &ReadLimits,
) -> Result<(), ProxyError> {
    let left = limits.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProxyError::ClientTimeout);
    }
    client_buf
        .fill(client, left.min(limits.idle))
        .await
        .map_err(client_read_err)?;
    Ok(())
}

/// Reads a kept body whole into `buf`: `Content-Length` bytes, or a chunked body bounded by
/// `limits.max`, growing `reservation` as it arrives.
pub async fn read_whole(
    client: &mut ClientStream,
    client_buf: &mut ReadBuf,
    framing: BodyFraming,
    buf: &mut Vec<u8>,
    reservation: &mut BodyReservation<'_>,
    limits: &ReadLimits,
) -> Result<(), ProxyError> {
    if let BodyFraming::Length(n) = framing {
        reservation.grow_to(n.saturating_mul(limits.copies))?;
        buf.reserve_exact(usize::try_from(n).unwrap_or(usize::MAX));
        while (buf.len() as u64) < n {
            if client_buf.is_empty() {
                fill_within(client, client_buf, limits).await?;
            }
            let k = client_buf.available(n - buf.len() as u64);
            buf.extend_from_slice(&client_buf.data()[..k]);
            client_buf.consume(k);
        }
        return Ok(());
    }
    let mut dec = ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        let done = reframe_chunks(&mut dec, client_buf, buf, false, &mut total, None)
            .map_err(ProxyError::BadRequest)?;
        if total > limits.max {
            return Err(ProxyError::BodyTooLarge { limit: limits.max });
        }
        reservation.grow_to((buf.capacity() as u64).saturating_mul(limits.copies))?;
        if done {
            return Ok(());
        }
        fill_within(client, client_buf, limits).await?;
    }
}

/// Where a streamed body goes and how long each side may stall.
pub struct BodyStream<'a> {
    /// The client the body comes from, and its read buffer.
    pub client: &'a mut ClientStream,
    /// Bytes of the client already read.
    pub client_buf: &'a mut ReadBuf,
    /// The upstream it goes to.
    pub upstream: &'a mut UpstreamStream,
    /// Write buffer.
    pub out: &'a mut Vec<u8>,
    /// Longest wait for the client's next bytes.
    pub client_timeout: Duration,
    /// Longest wait for a write upstream.
    pub send_timeout: Duration,
}

impl BodyStream<'_> {
    /// Copies `n` bytes of a `Content-Length` body.
    pub async fn length(&mut self, n: u64) -> Result<(), ProxyError> {
        let mut remaining = n;
        while remaining > 0 {
            if self.client_buf.is_empty() {
                self.client_buf
                    .fill(self.client, self.client_timeout)
                    .await
                    .map_err(client_read_err)?;
            }
            let k = self.client_buf.available(remaining);
            self.out.clear();
            self.out.extend_from_slice(&self.client_buf.data()[..k]);
            self.client_buf.consume(k);
            remaining -= k as u64;
            send_upstream(self.upstream, self.out, self.send_timeout).await?;
        }
        Ok(())
    }

    /// Copies a chunked body, re-chunked read by read, bounded by `max_body`.
    pub async fn chunked(&mut self, max_body: u64) -> Result<(), ProxyError> {
        let mut dec = ChunkedDecoder::new();
        let mut total: u64 = 0;
        loop {
            self.out.clear();
            let done = reframe_chunks(&mut dec, self.client_buf, self.out, true, &mut total, None)
                .map_err(ProxyError::BadRequest)?;
            if total > max_body {
                return Err(ProxyError::BodyTooLarge { limit: max_body });
            }
            if !self.out.is_empty() {
                send_upstream(self.upstream, self.out, self.send_timeout).await?;
            }
            if done {
                return Ok(());
            }
            self.client_buf
                .fill(self.client, self.client_timeout)
                .await
                .map_err(client_read_err)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        use BodyFraming::*;
        let (max, retry) = (1000, 100);
        let cases: [(BodyFraming, bool, Result<RequestBody, u64>); 11] = [
            (None, false, Ok(RequestBody::None)),
            (Length(0), true, Ok(RequestBody::None)),
            (Length(100), false, Ok(RequestBody::Retained(Vec::new()))),
            (Length(101), false, Ok(RequestBody::Streamed(101))),
            (Length(101), true, Ok(RequestBody::Retained(Vec::new()))),
            (Length(1000), true, Ok(RequestBody::Retained(Vec::new()))),
            (Length(1001), true, Err(1000)),
            (Length(1001), false, Err(1000)),
            (Chunked, false, Ok(RequestBody::StreamedChunked)),
            (Chunked, true, Ok(RequestBody::Retained(Vec::new()))),
            (CloseDelimited, false, Ok(RequestBody::StreamedChunked)),
        ];
        for (framing, whole, want) in cases {
            let got = plan(framing, whole, max, retry).map_err(|e| match e {
                ProxyError::BodyTooLarge { limit } => limit,
                other => panic!("{other}"),
            });
            assert_eq!(got, want, "{framing:?} whole={whole}");
        }
        assert!(RequestBody::None.replayable());
        assert!(RequestBody::Retained(vec![1]).replayable());
        assert!(!RequestBody::Streamed(5).replayable());
        assert!(!RequestBody::StreamedChunked.replayable());
    }

    #[test]
    fn the_budget_is_shared_and_released() {
        let budget = BodyBudget::default();
        let a = budget.reserve(600, 1000).expect("fits");
        let refused = budget.reserve(500, 1000).map(|_| ());
        assert!(
            matches!(refused, Err(ProxyError::BodyBufferFull)),
            "{refused:?}"
        );
        assert!(matches!(
            budget.reserve(1001, 1000).map(|_| ()),
            Err(ProxyError::BodyTooLarge { limit: 1000 })
        ));
        let mut b = budget.reserve(0, 1000).expect("nothing yet");
        b.grow_to(400).expect("still fits");
        assert_eq!(budget.held(), 1000);
        assert!(matches!(b.grow_to(401), Err(ProxyError::BodyBufferFull)));
        b.grow_to(100).expect("shrinking is a no-op");
        assert_eq!(budget.held(), 1000);
        drop(a);
        assert_eq!(budget.held(), 400);
        b.grow_to(900).expect("room again");
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
