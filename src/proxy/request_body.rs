//! The body plan: whether the request body is kept in memory (so it can be read by the AI
//! layer, keyed by the cache, and sent again on a retry or to a fallback) or streamed to the
//! upstream as it arrives (large bodies; never retried), and the copying either way.

use std::time::Duration;

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
        BodyFraming::Length(n) if n <= keep_up_to => {
            RequestBody::Retained(Vec::with_capacity(n as usize))
        }
        BodyFraming::Length(n) => RequestBody::Streamed(n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited if whole => {
            RequestBody::Retained(Vec::new())
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => RequestBody::StreamedChunked,
    })
}

/// Reads a retained body whole into `buf`: `Content-Length` bytes, or a chunked body
/// bounded by `max`.
pub async fn read_whole(
    client: &mut ClientStream,
    crb: &mut ReadBuf,
    framing: BodyFraming,
    buf: &mut Vec<u8>,
    max: u64,
    timeout: Duration,
) -> Result<(), ProxyError> {
    if let BodyFraming::Length(n) = framing {
        while (buf.len() as u64) < n {
            if crb.is_empty() {
                crb.fill(client, timeout).await.map_err(client_read_err)?;
            }
            let k = crb.available(n - buf.len() as u64);
            buf.extend_from_slice(&crb.data()[..k]);
            crb.consume(k);
        }
        return Ok(());
    }
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

/// Where a streamed body goes and how long each side may stall.
pub struct BodyStream<'a> {
    /// The client the body comes from, and its read buffer.
    pub client: &'a mut ClientStream,
    /// Bytes of the client already read.
    pub crb: &'a mut ReadBuf,
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
            if self.crb.is_empty() {
                self.crb
                    .fill(self.client, self.client_timeout)
                    .await
                    .map_err(client_read_err)?;
            }
            let k = self.crb.available(remaining);
            self.out.clear();
            self.out.extend_from_slice(&self.crb.data()[..k]);
            self.crb.consume(k);
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
            let done = reframe_chunks(&mut dec, self.crb, self.out, true, &mut total, None)
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
            self.crb
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
}
