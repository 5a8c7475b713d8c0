//! The response pipe: the upstream's response to the client. Picks the client framing
//! (`Content-Length` passed through, re-chunked, or close-delimited for HTTP/1.0), writes the
//! head together with the first body bytes already read, copies the body read by read —
//! flushing each one, so an SSE event never waits for the next — through the [`Tap`], then
//! counts usage, stores the answer in the cache and returns the connection to the pool when
//! the exchange left it clean.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;

use super::attempt::Exchange;
use super::cache::{self, CachePlan};
use super::candidates::{AiRequest, Candidate};
use super::client_watch::ClientWatch;
use super::failure::Failure;
use super::forward::Request;
use super::headers::{self, ClientFraming};
use super::io::{send_client, upstream_read_err};
use super::tap::{self, Tap};
use super::Outcome;
use crate::ai::cache::CacheStatus;
use crate::bufio::{ReadBuf, ReadError};
use crate::error::ProxyError;
use crate::http::{self, BodyFraming, ChunkEvent, ChunkedDecoder};
use crate::listener::ClientStream;
use crate::worker::Worker;

/// How the client receives a body the upstream framed as `upstream`: a filtered stream
/// changes length, so it is re-chunked; HTTP/1.0 clients cannot read chunks, so they get
/// the payload close-delimited.
pub fn client_framing(upstream: BodyFraming, filtered: bool, client_minor: u8) -> ClientFraming {
    match upstream {
        BodyFraming::None => ClientFraming::NoBody,
        BodyFraming::Length(n) if !filtered => ClientFraming::Length(n),
        _ if client_minor >= 1 => ClientFraming::Chunked,
        _ => ClientFraming::Close,
    }
}

/// Sends the exchange's response to the client and finishes the exchange: usage counted,
/// answer cached, connection pooled when clean. Failures after the head went out are
/// `Phase::Response`.
#[allow(clippy::too_many_arguments)]
pub async fn respond(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    exchange: Exchange,
    candidate: Candidate<'_>,
    ai: Option<&AiRequest>,
    cache_plan: CachePlan,
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let Exchange {
        mut conn,
        mut upstream_buf,
        resp,
        connect_time,
        started,
        slot,
    } = exchange;
    let head = req.head;
    let t_header = started.elapsed();
    outcome.upstream = Some(candidate.upstream.name.clone());
    outcome.model = candidate.model.map(|(i, _)| i);
    outcome.connect = Some(connect_time);
    outcome.header = Some(t_header);
    outcome.status = resp.status;
    conn.requests += 1;

    let uframing = http::response_framing(&head.method, &resp)
        .map_err(|e| Failure::request(ProxyError::UpstreamProtocol(e)))?;
    let mut tap = Tap::for_response(ai, candidate.upstream.api, &resp);
    let store_key = match cache_plan {
        CachePlan::Fill { key, .. }
            if !tap.translating()
                && cache::storable(
                    &resp,
                    uframing,
                    tap::is_event_stream(&resp),
                    req.cache.max_entry_bytes(),
                ) =>
        {
            tap.capture(req.cache.max_entry_bytes());
            Some(key)
        }
        _ => None,
    };

    let cframing = client_framing(uframing, tap.filter, head.minor_version);
    let keep_alive =
        head.keep_alive && cframing != ClientFraming::Close && !worker.drain.is_draining();
    let extra: &[u8] = match outcome.cache {
        Some(CacheStatus::Miss) => b"x-cache: MISS\r\n",
        Some(CacheStatus::Bypass) => b"x-cache: BYPASS\r\n",
        _ => b"",
    };
    scratch.clear();
    headers::write_client_head(
        scratch,
        &resp,
        cframing,
        req.request_id,
        keep_alive,
        extra,
        &outcome.rate,
    );

    let rechunk = cframing == ClientFraming::Chunked;
    let mut pipe = ResponsePipe {
        up: &mut conn.stream,
        upstream_buf: &mut upstream_buf,
        client,
        out: scratch,
        read_timeout: req.route.read_timeout,
        client_timeout: req.server.idle_timeout,
        first_body: None,
        tap,
        watch: &worker.client_watch,
        spares: worker,
        head_sent: false,
        decoded: 0,
        sent: 0,
    };
    // The head stays in `out`: the copiers send it with the body bytes already read, saving
    // a write per response (never waiting for more bytes to do so).
    let copied = match uframing {
        BodyFraming::None => pipe.flush().await.map(|()| 0),
        BodyFraming::Length(n) => pipe.length(n, rechunk).await,
        BodyFraming::Chunked => pipe.chunked(rechunk).await,
        BodyFraming::CloseDelimited => pipe.until_close(rechunk).await,
    };
    let first_body = pipe.first_body;
    let (head_sent, sent) = (pipe.head_sent, pipe.sent);
    let mut tap = std::mem::take(&mut pipe.tap);
    outcome.ttfb = first_body.map(|t| t.saturating_duration_since(req.started));
    outcome.response = Some(started.elapsed());
    if let Some((tokens, cost)) = tap::account_usage(worker, req, candidate, &tap, copied.is_err())
    {
        outcome.tokens_used = Some(tokens);
        outcome.cost_usd = Some(cost);
    }
    outcome.bytes_out = match copied {
        Ok(n) => n,
        Err(e) => {
            outcome.bytes_out = sent;
            // Nothing reached the client yet (a malformed first chunk, the upstream gone
            // before its body): it still gets an answer, a 502 in the OpenAI shape.
            return Err(if head_sent {
                Failure::response(e)
            } else {
                Failure::request(e)
            });
        }
    };
    if let (Some(key), Some(body)) = (store_key, tap.take_capture()) {
        cache::store(req, key, &resp, body);
    }

    let reusable = resp.keep_alive
        && upstream_buf.is_empty()
        && !matches!(uframing, BodyFraming::CloseDelimited);
    if reusable {
        worker
            .pool
            .borrow_mut()
            .put(candidate.upstream, slot.endpoint(), conn);
    }
    drop(slot);
    worker.give_buffer(upstream_buf.into_vec());
    worker.metrics.note_upstream_timing(connect_time, t_header);
    outcome.keep_alive = keep_alive;
    Ok(())
}

/// Appends one piece of response payload to `out` (as a chunk when `rechunk`), through the
/// tap when there is one.
pub fn emit(tap: Option<&mut Tap>, out: &mut Vec<u8>, rechunk: bool, payload: &[u8]) {
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

/// Appends `data` to `out`, as one chunk when `rechunk` (nothing for empty data: an empty
/// chunk would end the body).
pub fn push_framed(out: &mut Vec<u8>, rechunk: bool, data: &[u8]) {
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
pub fn reframe_chunks(
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
pub struct ResponsePipe<'a, U> {
    up: &'a mut U,
    upstream_buf: &'a mut ReadBuf,
    client: &'a mut ClientStream,
    out: &'a mut Vec<u8>,
    read_timeout: Duration,
    client_timeout: Duration,
    /// When the first body byte went to the client (streams' time to first byte).
    first_body: Option<Instant>,
    /// What is read from the body on its way through.
    tap: Tap,
    /// Where the client is watched while the pipe waits on the upstream.
    watch: &'a ClientWatch,
    /// The worker's spare buffers: `out` goes back there while the pipe waits.
    spares: &'a Worker,
    /// Whether the response head reached the client.
    head_sent: bool,
    /// Payload bytes read from the upstream and put in `out`.
    decoded: u64,
    /// Payload bytes written to the client.
    sent: u64,
}

/// The write buffer a pipe takes back from the worker after a wait (the size the
/// connection takes per request).
const OUT_BUFFER: usize = 4096;

/// What a read from the upstream found.
enum Filled {
    /// More bytes.
    Data,
    /// The upstream closed.
    Eof,
}

impl<U: AsyncReadRent> ResponsePipe<'_, U> {
    /// The tap's verdict on the body so far: one it cannot translate fails the exchange.
    fn check(&self) -> Result<(), ProxyError> {
        match self.tap.failed() {
            Some(why) => Err(ProxyError::UntranslatableAnswer(why)),
            None => Ok(()),
        }
    }

    /// Sends what `out` holds (head and/or body) and empties it.
    async fn flush(&mut self) -> Result<(), ProxyError> {
        send_client(self.client, self.out, self.client_timeout).await?;
        self.out.clear();
        self.head_sent = true;
        self.sent = self.decoded;
        Ok(())
    }

    /// Reads more of the body, unless the client leaves first (then the upstream connection
    /// is abandoned: the provider stops generating for nobody).
    async fn fill(&mut self) -> Result<Filled, ProxyError> {
        // An SSE stream spends nearly all its life here: the emptied write buffer is the
        // worker's meanwhile, not the stream's (4 KiB of each paused stream).
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.spares.give_buffer(std::mem::take(self.out));
        }
        let filled = self.fill_inner().await;
        if self.out.capacity() == 0 {
            *self.out = self.spares.take_buffer(OUT_BUFFER);
        }
        filled
    }

    async fn fill_inner(&mut self) -> Result<Filled, ProxyError> {
        let fd = self.client.raw_fd();
        let (upstream_buf, up, timeout) =
            (&mut *self.upstream_buf, &mut *self.up, self.read_timeout);
        let read = async move {
            match upstream_buf.fill(up, timeout).await {
                Ok(_) => Ok(Filled::Data),
                Err(ReadError::Eof) => Ok(Filled::Eof),
                Err(e) => Err(upstream_read_err(e)),
            }
        };
        self.watch
            .unless_client_leaves(fd, read, || ProxyError::ClientClosed)
            .await
    }

    /// Reads more of a body that must not end yet.
    async fn fill_more(&mut self) -> Result<(), ProxyError> {
        match self.fill().await? {
            Filled::Data => Ok(()),
            Filled::Eof => Err(ProxyError::UpstreamClosed),
        }
    }

    /// Copies a `Content-Length` body of `n` bytes (re-chunked when the tap filters it).
    async fn length(&mut self, n: u64, rechunk: bool) -> Result<u64, ProxyError> {
        let mut remaining = n;
        if remaining == 0 && rechunk {
            self.out.extend_from_slice(http::LAST_CHUNK);
        }
        if remaining == 0
            || (self.upstream_buf.is_empty() && !self.out.is_empty() && !self.tap.whole())
        {
            self.flush().await?;
        }
        while remaining > 0 {
            if self.upstream_buf.is_empty() {
                self.fill_more().await?;
            }
            let k = self.upstream_buf.available(remaining);
            self.decoded += k as u64;
            emit(
                Some(&mut self.tap),
                self.out,
                rechunk,
                &self.upstream_buf.data()[..k],
            );
            self.upstream_buf.consume(k);
            remaining -= k as u64;
            if remaining == 0 && (rechunk || self.tap.filter) {
                self.tap.finish();
                push_framed(self.out, rechunk, &self.tap.filtered);
                if rechunk {
                    self.out.extend_from_slice(http::LAST_CHUNK);
                }
            }
            self.check()?;
            if !self.out.is_empty() && (remaining == 0 || !self.tap.whole()) {
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
                self.upstream_buf,
                self.out,
                rechunk,
                &mut total,
                Some(&mut self.tap),
            )
            .map_err(ProxyError::UpstreamProtocol)?;
            self.decoded = total;
            self.check()?;
            // Whatever arrived goes out now: an SSE event never waits for the next one.
            if !self.out.is_empty() && (done || !self.tap.whole()) {
                self.flush().await?;
                if total > 0 && self.first_body.is_none() {
                    self.first_body = Some(Instant::now());
                }
            }
            if done {
                return Ok(total);
            }
            self.fill_more().await?;
        }
    }

    /// Copies a body that ends when the upstream closes, chunked for HTTP/1.1 clients so
    /// their connection survives.
    async fn until_close(&mut self, rechunk: bool) -> Result<u64, ProxyError> {
        let mut total = 0u64;
        if !self.out.is_empty() && !self.tap.whole() {
            self.flush().await?;
        }
        loop {
            if !self.upstream_buf.is_empty() {
                let n = self.upstream_buf.len();
                emit(
                    Some(&mut self.tap),
                    self.out,
                    rechunk,
                    self.upstream_buf.data(),
                );
                total += n as u64;
                self.decoded = total;
                self.upstream_buf.consume(n);
                self.check()?;
                if !self.out.is_empty() && !self.tap.whole() {
                    self.flush().await?;
                    self.first_body.get_or_insert_with(Instant::now);
                }
            }
            if let Filled::Eof = self.fill().await? {
                break;
            }
        }
        self.tap.finish();
        self.check()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_framings() {
        use BodyFraming as U;
        use ClientFraming as C;
        let cases = [
            (U::None, false, 1, C::NoBody),
            (U::None, true, 0, C::NoBody),
            (U::Length(5), false, 1, C::Length(5)),
            (U::Length(5), false, 0, C::Length(5)),
            (U::Length(5), true, 1, C::Chunked),
            (U::Length(5), true, 0, C::Close),
            (U::Chunked, false, 1, C::Chunked),
            (U::Chunked, false, 0, C::Close),
            (U::CloseDelimited, false, 1, C::Chunked),
            (U::CloseDelimited, false, 0, C::Close),
        ];
        for (up, filtered, minor, want) in cases {
            assert_eq!(
                client_framing(up, filtered, minor),
                want,
                "{up:?} {filtered} 1.{minor}"
            );
        }
    }

    /// Every split of a chunked body re-frames to the same bytes.
    #[test]
    fn reframing_is_independent_of_read_boundaries() {
        let body = b"5\r\nhello\r\n3;ext=1\r\n, w\r\n4\r\norld\r\n0\r\nx-trailer: 1\r\n\r\n";
        let want = b"5\r\nhello\r\n3\r\n, w\r\n4\r\norld\r\n0\r\n\r\n";
        for split in 0..=body.len() {
            let mut dec = ChunkedDecoder::new();
            let mut rb = ReadBuf::new(128, 1024);
            let mut out = Vec::new();
            let mut total = 0;
            let mut done = false;
            for part in [&body[..split], &body[split..]] {
                if done {
                    break;
                }
                rb.extend_for_test(part);
                done = reframe_chunks(&mut dec, &mut rb, &mut out, true, &mut total, None)
                    .expect("valid body");
            }
            assert!(done, "split at {split}");
            assert_eq!(total, 12);
            let mut joined = Vec::new();
            let mut cursor = &out[..];
            // Re-chunking may split differently; compare the decoded payloads.
            let mut dec = ChunkedDecoder::new();
            loop {
                let (used, ev) = dec.decode(cursor).expect("re-framed body decodes");
                match ev {
                    ChunkEvent::Data(r) => joined.extend_from_slice(&cursor[r]),
                    ChunkEvent::Done => break,
                    ChunkEvent::NeedMore => panic!("re-framed body is incomplete"),
                }
                cursor = &cursor[used..];
            }
            assert_eq!(joined, b"hello, world", "split at {split}");
            if split == 0 || split == body.len() {
                assert_eq!(out, want);
            }
        }
    }
}
