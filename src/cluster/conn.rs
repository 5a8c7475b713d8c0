//! One worker's connection to the cluster store, on the worker's own monoio runtime.
//!
//! A request never touches the socket: [`Store::call`] encodes its command into the
//! worker's outbox, queues a reply slot and waits for it at most `timeout`. The connection
//! task ([`run`]) owns the socket, split in halves: its writer sends whatever the outbox
//! holds in one write (requests of one event-loop turn are pipelined), its reader decodes
//! replies and hands each to the oldest waiting slot (Redis answers in order). Nothing here
//! blocks the worker and nothing is shared with another worker.
//!
//! Failure handling, all per worker:
//! - a call that is not answered within `timeout` fails at once for its request, and the
//!   connection is dropped (its state is unknown: a late reply would land in the wrong
//!   slot) and reopened;
//! - calls while the connection is down fail at once (no waiting for a reconnect);
//! - reconnects back off exponentially (50 ms doubling to 2 s, jittered);
//! - [`Breaker`]: after `breaker_failures` consecutive failures (timeouts, I/O errors,
//!   failed connection attempts) calls fail at once for `breaker_open_ms`; then the
//!   connection is reopened and the next call decides: answered, it closes; failed, it
//!   opens again. Only an answered call closes it (a store that completes the handshake
//!   and then never answers must still open it).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};
use monoio::net::TcpStream;

use super::resp::{self, Value};
use super::ClusterMetrics;
use crate::config::ClusterSettings;
use crate::worker::Worker;

/// Why a call to the store did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No connection is up (connecting, backing off).
    #[error("cluster store not connected")]
    NotConnected,
    /// The breaker is open: calls are not tried for a while.
    #[error("cluster store circuit breaker open")]
    BreakerOpen,
    /// No reply within `timeout_ms`.
    #[error("cluster store call timed out")]
    Timeout,
    /// The connection broke while the call waited.
    #[error("cluster store connection lost")]
    Disconnected,
    /// The reply made no sense for the command (or was not RESP).
    #[error("cluster store protocol error: {0}")]
    Protocol(String),
}

/// Consecutive-failure circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Closed, no failures.
    pub fn new() -> Breaker {
        Breaker {
            failures: 0,
            open_until: None,
        }
    }

    /// Whether a call may be tried at `now` (closed, or open but past its open period).
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|t| now >= t)
    }

    /// When an open breaker lets a call through again.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// A success closes it.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// A failure: at `threshold` consecutive ones (and after each further one) the breaker
    /// opens for `open_for`. Returns whether this failure opened it.
    pub fn failure(&mut self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= threshold.max(1) {
            let was_closed = self.open_until.is_none();
            self.open_until = Some(now + open_for);
            was_closed
        } else {
            false
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

/// Where one call's reply lands.
#[derive(Default)]
struct Slot {
    reply: RefCell<Option<Result<Value, StoreError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, r: Result<Value, StoreError>) {
        *self.reply.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct SlotWait(Rc<Slot>);

impl Future for SlotWait {
    type Output = Result<Value, StoreError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.0.reply.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Inner {
    up: bool,
    outbox: Vec<u8>,
    waiting: VecDeque<Rc<Slot>>,
    /// The connection task, waiting for outbox bytes or a reset.
    writer: Option<Waker>,
    /// Drop the connection (a call timed out on it).
    reset: bool,
    breaker: Breaker,
    /// sha1 of the script, from `SCRIPT LOAD` on this connection.
    script_sha: Vec<u8>,
}

/// The worker's handle on the cluster store (see the module docs). `!Send`: it lives on
/// its worker.
pub struct Store {
    inner: RefCell<Inner>,
    /// This worker's store counters (published through its `WorkerMetrics`).
    pub metrics: Arc<ClusterMetrics>,
}

impl Store {
    /// A store handle with no connection yet; [`run`] connects it.
    pub fn new(metrics: Arc<ClusterMetrics>) -> Store {
        Store {
            inner: RefCell::new(Inner {
                up: false,
                outbox: Vec::new(),
                waiting: VecDeque::new(),
                writer: None,
                reset: false,
                breaker: Breaker::new(),
                script_sha: Vec::new(),
            }),
            metrics,
        }
    }

    /// The sha1 of the limit script as loaded on the current connection.
    pub fn script_sha(&self) -> Vec<u8> {
        self.inner.borrow().script_sha.clone()
    }

    /// Sends one command and waits at most `cfg.timeout` for its reply. Fails at once when
    /// the breaker is open or no connection is up. A Redis error reply is `Ok(Value::Error)`:
    /// the store answered.
    pub async fn call(&self, cfg: &ClusterSettings, args: &[&[u8]]) -> Result<Value, StoreError> {
        let now = Instant::now();
        let slot = {
            let mut i = self.inner.borrow_mut();
            if !i.breaker.allows(now) {
                self.metrics
                    .calls_breaker_open
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::BreakerOpen);
            }
            if !i.up || i.reset {
                self.metrics
                    .calls_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::NotConnected);
            }
            resp::encode(&mut i.outbox, args);
            let slot = Rc::new(Slot::default());
            i.waiting.push_back(slot.clone());
            if let Some(w) = i.writer.take() {
                w.wake();
            }
            slot
        };
        let result = match monoio::time::timeout(cfg.timeout, SlotWait(slot)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        let took = now.elapsed();
        match &result {
            Ok(_) => {
                self.metrics.note_call_ok(took);
                self.inner.borrow_mut().breaker.success();
                self.metrics.breaker_open.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                let c = if *e == StoreError::Timeout {
                    &self.metrics.calls_timeout
                } else {
                    &self.metrics.calls_error
                };
                c.fetch_add(1, Ordering::Relaxed);
                let mut i = self.inner.borrow_mut();
                if *e == StoreError::Timeout {
                    i.reset = true;
                    if let Some(w) = i.writer.take() {
                        w.wake();
                    }
                }
                self.failure_locked(&mut i, cfg);
            }
        }
        result
    }

    fn failure_locked(&self, i: &mut Inner, cfg: &ClusterSettings) {
        if i.breaker
            .failure(Instant::now(), cfg.breaker_failures, cfg.breaker_open)
        {
            self.metrics.breaker_opens.fetch_add(1, Ordering::Relaxed);
            self.metrics.breaker_open.store(1, Ordering::Relaxed);
            tracing::warn!(
                open_ms = cfg.breaker_open.as_millis() as u64,
                "cluster store circuit breaker opened; cluster limits use their fallback"
            );
        }
    }

    fn failure(&self, cfg: &ClusterSettings) {
        let mut i = self.inner.borrow_mut();
        self.failure_locked(&mut i, cfg);
    }

    fn set_up(&self, sha: Vec<u8>) {
        let mut i = self.inner.borrow_mut();
        i.up = true;
        i.reset = false;
        i.script_sha = sha;
        // The breaker is not closed here: a store that completes handshakes but never
        // answers a call must still open it. Only an answered call closes it.
        self.metrics.up.store(1, Ordering::Relaxed);
        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the connection down and fails every call still waiting on it.
    fn set_down(&self) {
        let waiting = {
            let mut i = self.inner.borrow_mut();
            i.up = false;
            i.reset = false;
            i.outbox.clear();
            std::mem::take(&mut i.waiting)
        };
        self.metrics.up.store(0, Ordering::Relaxed);
        for s in waiting {
            s.fill(Err(StoreError::Disconnected));
        }
    }

    fn breaker_open_until(&self) -> Option<Instant> {
        let i = self.inner.borrow();
        i.breaker.open_until().filter(|&t| Instant::now() < t)
    }
}

/// Waits until the outbox holds bytes (returns them, swapped with `spare`) or a reset is
/// asked for (returns None).
struct OutboxWait<'a> {
    store: &'a Store,
    spare: Option<Vec<u8>>,
}

impl Future for OutboxWait<'_> {
    type Output = Option<Vec<u8>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut i = self.store.inner.borrow_mut();
        if i.reset {
            return Poll::Ready(None);
        }
        if !i.outbox.is_empty() {
            let mut spare = self.spare.take().unwrap_or_default();
            spare.clear();
            std::mem::swap(&mut spare, &mut i.outbox);
            return Poll::Ready(Some(spare));
        }
        i.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The worker's connection task: connects while `[cluster]` is configured, serves the
/// connection until it breaks, a call times out, the settings change or the worker drains,
/// and reconnects with backoff. Spawned once per worker.
pub async fn run(w: Rc<Worker>, store: Rc<Store>) {
    let mut attempt: u32 = 0;
    let mut was_up = true; // so the first failure is logged
    while !w.drain.is_draining() {
        let snap = w.snapshot();
        let Some(cfg) = snap.config.cluster.clone() else {
            drop(snap);
            monoio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        drop(snap);
        if let Some(until) = store.breaker_open_until() {
            let wait = until.saturating_duration_since(Instant::now());
            monoio::time::sleep(wait.min(Duration::from_secs(1))).await;
            continue;
        }
        match connect(&cfg).await {
            Ok((stream, sha)) => {
                attempt = 0;
                store.set_up(sha);
                tracing::info!(worker = w.id, host = %cfg.host, port = cfg.port, tls = cfg.tls.is_some(), "cluster store connected");
                let why = match stream {
                    Conn::Plain(s) => serve(&w, &store, &cfg, s).await,
                    Conn::Tls(s) => serve(&w, &store, &cfg, *s).await,
                };
                store.set_down();
                was_up = true;
                if w.drain.is_draining() {
                    break;
                }
                tracing::warn!(
                    worker = w.id,
                    reason = why,
                    "cluster store connection closed; reconnecting"
                );
                // A store that accepts and then drops every connection must not make
                // this a busy loop.
                monoio::time::sleep(backoff(0)).await;
            }
            Err(e) => {
                store
                    .metrics
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                store.failure(&cfg);
                if was_up {
                    tracing::warn!(worker = w.id, host = %cfg.host, port = cfg.port, error = %e, "cluster store unavailable; cluster limits use their fallback while it is");
                    was_up = false;
                }
                attempt = attempt.saturating_add(1);
                monoio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    store.set_down();
}

/// 50 ms doubling to 2 s, each scaled by a factor in [0.5, 1) so workers and pods that
/// lost the store together do not reconnect in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(50)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(2));
    let nanos = Instant::now().elapsed().subsec_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    base.mul_f64(frac)
}

/// Why a connection attempt failed (logged; never holds the password).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("host not resolved yet")]
    Unresolved,
    #[error("connect: {0}")]
    Io(std::io::Error),
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("refused the handshake: {0}")]
    Refused(String),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
}

/// A connection to the store: plain, or TLS (`rediss://`) over TCP.
enum Conn {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

/// Time the handshake (connect, AUTH, SELECT, SCRIPT LOAD) may take: off the request path,
/// so more generous than a call's `timeout`.
fn handshake_timeout(cfg: &ClusterSettings) -> Duration {
    cfg.timeout.max(Duration::from_millis(500))
}

async fn connect(cfg: &ClusterSettings) -> Result<(Conn, Vec<u8>), ConnectError> {
    let limit = handshake_timeout(cfg);
    let addr = *cfg.addrs.load().first().ok_or(ConnectError::Unresolved)?;
    let timed_out = || ConnectError::Timeout(limit.as_millis() as u64);
    let deadline = Instant::now() + limit;
    let stream = match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => return Err(timed_out()),
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &cfg.tls else {
        let (s, sha) = hello(cfg, stream, deadline).await?;
        return Ok((Conn::Plain(s), sha));
    };
    // The TLS handshake shares the attempt's time limit: a peer that stalls it is a failed
    // attempt like any other (never a hang), and so is a certificate that does not verify.
    let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
    let left = deadline.saturating_duration_since(Instant::now());
    let stream =
        match monoio::time::timeout(left, connector.connect(tls.server_name.clone(), stream)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Tls(e.to_string())),
            Err(_) => return Err(timed_out()),
        };
    let (s, sha) = hello(cfg, stream, deadline).await?;
    Ok((Conn::Tls(Box::new(s)), sha))
}

/// AUTH, SELECT and SCRIPT LOAD, pipelined, answered before `deadline`; returns the stream
/// and the script's sha1.
async fn hello<S: AsyncReadRent + AsyncWriteRent>(
    cfg: &ClusterSettings,
    mut stream: S,
    deadline: Instant,
) -> Result<(S, Vec<u8>), ConnectError> {
    let limit = deadline.saturating_duration_since(Instant::now());
    let timed_out = || ConnectError::Timeout(handshake_timeout(cfg).as_millis() as u64);
    let cmds = hello_commands(cfg);
    let expected = cmds.1;
    let handshake = async {
        let (r, _) = stream.write_all(cmds.0).await;
        r.map_err(ConnectError::Io)?;
        // TLS writes are buffered until flushed.
        stream.flush().await.map_err(ConnectError::Io)?;
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut replies = Vec::new();
        while replies.len() < expected {
            match resp::decode(&buf) {
                Ok(Some((v, used))) => {
                    buf.drain(..used);
                    replies.push(v);
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Refused(e.to_string())),
            }
            let chunk = Vec::with_capacity(512);
            let (r, chunk) = stream.read(chunk).await;
            match r {
                Ok(0) => return Err(ConnectError::Closed),
                Ok(_) => buf.extend_from_slice(&chunk),
                Err(e) => return Err(ConnectError::Io(e)),
            }
        }
        Ok(replies)
    };
    let replies = match monoio::time::timeout(limit, handshake).await {
        Ok(r) => r?,
        Err(_) => return Err(timed_out()),
    };
    let mut sha = Vec::new();
    for v in replies {
        match v {
            Value::Error(e) => {
                return Err(ConnectError::Refused(
                    String::from_utf8_lossy(&e).into_owned(),
                ))
            }
            Value::Bulk(Some(b)) => sha = b,
            _ => {}
        }
    }
    if sha.is_empty() {
        return Err(ConnectError::Refused("SCRIPT LOAD gave no sha1".into()));
    }
    Ok((stream, sha))
}

/// The handshake's commands, pipelined, and how many replies they get.
fn hello_commands(cfg: &ClusterSettings) -> (Vec<u8>, usize) {
    let mut cmds = Vec::new();
    let mut expected = 0;
    if let Some(pw) = &cfg.password {
        match &cfg.username {
            Some(u) => resp::encode(&mut cmds, &[b"AUTH", u.as_bytes(), &pw.0]),
            None => resp::encode(&mut cmds, &[b"AUTH", &pw.0]),
        }
        expected += 1;
    }
    if cfg.db != 0 {
        resp::encode(&mut cmds, &[b"SELECT", cfg.db.to_string().as_bytes()]);
        expected += 1;
    }
    resp::encode(
        &mut cmds,
        &[b"SCRIPT", b"LOAD", super::limits::SCRIPT.as_bytes()],
    );
    expected += 1;
    (cmds, expected)
}

/// Runs one connection until it ends; returns why.
async fn serve<S>(w: &Worker, store: &Store, cfg: &ClusterSettings, stream: S) -> &'static str
where
    S: AsyncReadRent + AsyncWriteRent + Split,
{
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        let mut spare = Some(Vec::with_capacity(4096));
        loop {
            let wait = OutboxWait {
                store,
                spare: spare.take(),
            };
            let Some(bytes) = wait.await else {
                return "a call timed out";
            };
            let (r, bytes) = wr.write_all(bytes).await;
            if r.is_err() {
                return "write failed";
            }
            // TLS buffers records until flushed (a no-op on plain TCP).
            if wr.flush().await.is_err() {
                return "write failed";
            }
            spare = Some(bytes);
        }
    };
    let reader = async {
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = Vec::with_capacity(4096);
        loop {
            chunk.clear();
            let (r, c) = rd.read(chunk).await;
            chunk = c;
            match r {
                Ok(0) => return "closed by the store",
                Ok(_) => buf.extend_from_slice(&chunk),
                Err(_) => return "read failed",
            }
            loop {
                match resp::decode(&buf) {
                    Ok(Some((v, used))) => {
                        buf.drain(..used);
                        let slot = store.inner.borrow_mut().waiting.pop_front();
                        match slot {
                            Some(s) => s.fill(Ok(v)),
                            None => return "a reply nobody asked for",
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return "malformed reply",
                }
            }
        }
    };
    let watch = async {
        loop {
            monoio::time::sleep(Duration::from_millis(250)).await;
            if w.drain.is_draining() {
                return "draining";
            }
            let same = w
                .snapshot()
                .config
                .cluster
                .as_ref()
                .is_some_and(|c| c.fingerprint == cfg.fingerprint);
            if !same {
                return "the [cluster] settings changed";
            }
        }
    };
    monoio::select! {
        why = writer => why,
        why = reader => why,
        why = watch => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_closes_on_success() {
        let t0 = Instant::now();
        let open_for = Duration::from_secs(1);
        let mut b = Breaker::new();
        assert!(!b.failure(t0, 3, open_for));
        assert!(!b.failure(t0, 3, open_for));
        assert!(b.allows(t0), "two failures of three");
        b.success();
        assert!(!b.failure(t0, 3, open_for));
        assert!(!b.failure(t0, 3, open_for));
        assert!(
            b.failure(t0, 3, open_for),
            "the third consecutive one opens it"
        );
        assert!(!b.allows(t0 + Duration::from_millis(999)));
        assert!(b.allows(t0 + open_for), "half-open after the open period");
        // A failed trial re-opens it (without counting a new opening).
        assert!(!b.failure(t0 + open_for, 3, open_for));
        assert!(!b.allows(t0 + open_for + Duration::from_millis(1)));
        b.success();
        assert!(b.allows(t0));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = Duration::from_millis(50)
                .saturating_mul(1 << attempt.min(6))
                .min(Duration::from_secs(2));
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
    }
}
