//! One worker's connection to the cluster store, on the worker's own monoio runtime.
//!
//! A request never touches the socket: [`Store::call`] encodes its command into the
//! worker's outbox, queues a reply slot and waits for it at most `timeout`. The connection
//! task ([`run`]) owns the socket, split in halves: its writer sends whatever the outbox
//! holds in one write (requests of one event-loop turn are pipelined), its reader decodes
//! replies and hands each to the oldest waiting slot (Redis answers in order). Nothing here
//! blocks the worker and nothing is shared with another worker.
//!
//! With Redis Cluster, a `MOVED`/`ASK` reply is followed once within the call's deadline
//! over a connection to the named node (`run_node`); `MOVED` slots are remembered.
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
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
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

/// One connection's queues: what calls wrote and not yet sent, and the calls waiting for
/// a reply, in order.
#[derive(Default)]
struct LinkState {
    up: bool,
    /// A redirect target being connected: calls queue (bounded by their timeout) instead
    /// of failing at once.
    connecting: bool,
    outbox: Vec<u8>,
    waiting: VecDeque<Rc<Slot>>,
    /// The connection task, waiting for outbox bytes or a reset.
    writer: Option<Waker>,
    /// Drop the connection (a call timed out on it, or its settings went away).
    reset: bool,
}

/// A connection to one Redis node: the configured one, or a Redis Cluster node a
/// redirection named.
#[derive(Default)]
struct Link {
    st: RefCell<LinkState>,
}

impl Link {
    /// Whether a call may be queued on it now.
    fn accepts(&self) -> bool {
        let s = self.st.borrow();
        (s.up || s.connecting) && !s.reset
    }

    /// Neither up nor connecting: a redirection to it opens a new one.
    fn dead(&self) -> bool {
        let s = self.st.borrow();
        !s.up && !s.connecting
    }

    fn ask_reset(&self) {
        let mut s = self.st.borrow_mut();
        s.reset = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }

    fn set_up(&self) {
        let mut s = self.st.borrow_mut();
        s.up = true;
        s.connecting = false;
        s.reset = false;
    }

    /// Marks it down and fails every call still waiting on it.
    fn set_down(&self) {
        let waiting = {
            let mut s = self.st.borrow_mut();
            s.up = false;
            s.connecting = false;
            s.reset = false;
            s.outbox.clear();
            std::mem::take(&mut s.waiting)
        };
        for slot in waiting {
            slot.fill(Err(StoreError::Disconnected));
        }
    }
}

/// Redirect targets a worker keeps connections to, at most (a Redis Cluster has a few
/// masters; this only bounds what a misbehaving store could make a worker open).
const MAX_NODES: usize = 64;

struct Inner {
    breaker: Breaker,
    /// sha1 of the script, from `SCRIPT LOAD` on the configured node's connection (the
    /// same on every node: it is the script's digest).
    script_sha: Vec<u8>,
    /// The configured node's address, as connected.
    primary_addr: Option<SocketAddr>,
    /// Connections to the nodes `MOVED`/`ASK` named, and what they need to connect.
    nodes: HashMap<SocketAddr, Rc<Link>>,
    /// Slots a `MOVED` said live elsewhere.
    slots: HashMap<u16, SocketAddr>,
    /// How to reach and greet a node (from the configured one's settings).
    dial: Option<Rc<Dial>>,
}

/// The worker's handle on the cluster store (see the module docs). `!Send`: it lives on
/// its worker.
pub struct Store {
    primary: Rc<Link>,
    inner: RefCell<Inner>,
    /// This worker's store counters (published through its `WorkerMetrics`).
    pub metrics: Arc<ClusterMetrics>,
}

/// A Redis Cluster redirection: `MOVED slot ip:port` or `ASK slot ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// `ASK` (one command, preceded by `ASKING`) rather than `MOVED` (the slot moved).
    pub ask: bool,
    /// The slot.
    pub slot: u16,
    /// The node to ask.
    pub addr: SocketAddr,
}

impl Redirect {
    /// Reads an error reply; None when it is not a redirection this client can follow (a
    /// host name instead of an address is not: workers never resolve names).
    pub fn parse(e: &[u8]) -> Option<Redirect> {
        let text = std::str::from_utf8(e).ok()?;
        let mut parts = text.split_ascii_whitespace();
        let ask = match parts.next()? {
            "MOVED" => false,
            "ASK" => true,
            _ => return None,
        };
        let slot = parts.next()?.parse::<u16>().ok().filter(|&s| s < 16384)?;
        let addr = parts.next()?.parse::<SocketAddr>().ok()?;
        Some(Redirect { ask, slot, addr })
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the
/// first `{...}` with something inside), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 16383
}

/// The key a command is routed by: an `EVAL`/`EVALSHA`'s first key, else the first
/// argument. None for commands without one.
fn command_key<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let cmd = args.first()?;
    if cmd.eq_ignore_ascii_case(b"EVALSHA") || cmd.eq_ignore_ascii_case(b"EVAL") {
        let n: u32 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        if n == 0 {
            return None;
        }
        return args.get(3).copied();
    }
    args.get(1).copied()
}

impl Store {
    /// A store handle with no connection yet; [`run`] connects it.
    pub fn new(metrics: Arc<ClusterMetrics>) -> Store {
        Store {
            primary: Rc::new(Link::default()),
            inner: RefCell::new(Inner {
                breaker: Breaker::new(),
                script_sha: Vec::new(),
                primary_addr: None,
                nodes: HashMap::new(),
                slots: HashMap::new(),
                dial: None,
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
    /// the store answered. A Redis Cluster redirection is followed once, within the same
    /// timeout: to the node it names (connected on first use), after `ASKING` for `ASK`;
    /// a `MOVED` slot is remembered, so its next calls go straight there.
    pub async fn call(&self, cfg: &ClusterSettings, args: &[&[u8]]) -> Result<Value, StoreError> {
        let now = Instant::now();
        if !self.inner.borrow().breaker.allows(now) {
            self.metrics
                .calls_breaker_open
                .fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::BreakerOpen);
        }
        let deadline = now + cfg.timeout;
        let link = match command_key(args) {
            Some(key) => self.route(key_slot(key)),
            None => self.primary.clone(),
        };
        let mut result = self.exchange(&link, args, false, deadline).await;
        if let Ok(Value::Error(e)) = &result {
            if let Some(r) = Redirect::parse(e) {
                let counter = if r.ask {
                    &self.metrics.redirects_ask
                } else {
                    &self.metrics.redirects_moved
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if !r.ask {
                    self.inner.borrow_mut().slots.insert(r.slot, r.addr);
                }
                let link = self.node(r.addr);
                result = self.exchange(&link, args, r.ask, deadline).await;
            }
        }
        let took = now.elapsed();
        match &result {
            Ok(_) => {
                self.metrics.note_call_ok(took);
                self.inner.borrow_mut().breaker.success();
                self.metrics.breaker_open.store(0, Ordering::Relaxed);
            }
            Err(StoreError::NotConnected) => {
                self.metrics
                    .calls_unavailable
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let c = if *e == StoreError::Timeout {
                    &self.metrics.calls_timeout
                } else {
                    &self.metrics.calls_error
                };
                c.fetch_add(1, Ordering::Relaxed);
                let mut i = self.inner.borrow_mut();
                self.failure_locked(&mut i, cfg);
            }
        }
        result
    }

    /// Queues `args` (after `ASKING` when `asking`) on `link` and waits for the reply
    /// until `deadline`; a timeout drops that connection.
    async fn exchange(
        &self,
        link: &Link,
        args: &[&[u8]],
        asking: bool,
        deadline: Instant,
    ) -> Result<Value, StoreError> {
        let slot = {
            if !link.accepts() {
                return Err(StoreError::NotConnected);
            }
            let mut s = link.st.borrow_mut();
            if asking {
                resp::encode(&mut s.outbox, &[b"ASKING"]);
                // Its `+OK` lands in a slot nobody waits on.
                s.waiting.push_back(Rc::new(Slot::default()));
            }
            resp::encode(&mut s.outbox, args);
            let slot = Rc::new(Slot::default());
            s.waiting.push_back(slot.clone());
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            slot
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, SlotWait(slot)).await {
            Ok(r) => r,
            Err(_) => {
                link.ask_reset();
                Err(StoreError::Timeout)
            }
        }
    }

    /// The connection a slot's calls go to: the node a `MOVED` named, else the
    /// configured one.
    fn route(&self, slot: u16) -> Rc<Link> {
        let addr = self.inner.borrow().slots.get(&slot).copied();
        match addr {
            Some(a) => self.node(a),
            None => self.primary.clone(),
        }
    }

    /// The connection to `addr`, opened (in a task of its own) when there is none.
    fn node(&self, addr: SocketAddr) -> Rc<Link> {
        let mut i = self.inner.borrow_mut();
        if i.primary_addr == Some(addr) {
            return self.primary.clone();
        }
        if let Some(l) = i.nodes.get(&addr) {
            if !l.dead() {
                return l.clone();
            }
        }
        let Some(dial) = i.dial.clone() else {
            return Rc::new(Link::default()); // not connected at all: fails at once
        };
        if i.nodes.len() >= MAX_NODES {
            i.nodes.retain(|_, l| !l.dead());
            if i.nodes.len() >= MAX_NODES {
                return Rc::new(Link::default());
            }
        }
        let link = Rc::new(Link::default());
        link.st.borrow_mut().connecting = true;
        i.nodes.insert(addr, link.clone());
        monoio::spawn(run_node(link.clone(), dial, addr, self.metrics.clone()));
        link
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

    fn set_up(&self, sha: Vec<u8>, dial: Rc<Dial>) {
        {
            let mut i = self.inner.borrow_mut();
            i.script_sha = sha;
            i.primary_addr = Some(dial.addr);
            i.dial = Some(dial);
        }
        self.primary.set_up();
        // The breaker is not closed here: a store that completes handshakes but never
        // answers a call must still open it. Only an answered call closes it.
        self.metrics.up.store(1, Ordering::Relaxed);
        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the connection down and fails every call still waiting on it; connections
    /// to redirect targets and the slots learnt are dropped with it (they were opened
    /// with the settings of the connection that ended).
    fn set_down(&self) {
        let nodes = {
            let mut i = self.inner.borrow_mut();
            i.slots.clear();
            i.dial = None;
            i.primary_addr = None;
            std::mem::take(&mut i.nodes)
        };
        for l in nodes.values() {
            l.ask_reset();
        }
        self.primary.set_down();
        self.metrics.up.store(0, Ordering::Relaxed);
    }

    fn breaker_open_until(&self) -> Option<Instant> {
        let i = self.inner.borrow();
        i.breaker.open_until().filter(|&t| Instant::now() < t)
    }
}

/// A connection to a node a redirection named: connects, serves until it breaks, a call
/// on it times out or the configured connection ends; never reconnects by itself (the
/// next redirection to the node opens a new one).
async fn run_node(link: Rc<Link>, dial: Rc<Dial>, addr: SocketAddr, metrics: Arc<ClusterMetrics>) {
    let dial = Dial {
        addr,
        ..(*dial).clone()
    };
    match connect(&dial).await {
        Ok((stream, _sha)) => {
            if link.st.borrow().reset {
                link.set_down();
                return;
            }
            link.set_up();
            metrics.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%addr, "cluster store: connected to a redirect target");
            let why = match stream {
                Conn::Plain(s) => serve(&link, s, std::future::pending()).await,
                Conn::Tls(s) => serve(&link, *s, std::future::pending()).await,
            };
            tracing::debug!(%addr, reason = why, "cluster store: redirect target connection closed");
        }
        Err(e) => {
            metrics.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, error = %e, "cluster store: cannot connect to a redirect target");
        }
    }
    link.set_down();
}

/// Waits until the outbox holds bytes (returns them, swapped with `spare`) or a reset is
/// asked for (returns None).
struct OutboxWait<'a> {
    link: &'a Link,
    spare: Option<Vec<u8>>,
}

impl Future for OutboxWait<'_> {
    type Output = Option<Vec<u8>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.link.st.borrow_mut();
        if s.reset {
            return Poll::Ready(None);
        }
        if !s.outbox.is_empty() {
            let mut spare = self.spare.take().unwrap_or_default();
            spare.clear();
            std::mem::swap(&mut spare, &mut s.outbox);
            return Poll::Ready(Some(spare));
        }
        s.writer = Some(cx.waker().clone());
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
        let attempted = match Dial::of(&cfg) {
            Ok(d) => {
                let dial = Rc::new(d);
                connect(&dial).await.map(|(s, sha)| (s, sha, dial))
            }
            Err(e) => Err(e),
        };
        match attempted {
            Ok((stream, sha, dial)) => {
                attempt = 0;
                store.set_up(sha, dial.clone());
                tracing::info!(worker = w.id, host = %cfg.host, port = cfg.port, tls = cfg.tls.is_some(), "cluster store connected");
                let why = match stream {
                    Conn::Plain(s) => serve(&store.primary, s, watch(&w, &cfg)).await,
                    Conn::Tls(s) => serve(&store.primary, *s, watch(&w, &cfg)).await,
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

/// How to reach and greet one node: the configured one, or (the same settings at another
/// address) a node a redirection named.
#[derive(Clone)]
struct Dial {
    addr: SocketAddr,
    tls: Option<crate::upstream::tls::UpstreamTls>,
    username: Option<String>,
    password: Option<crate::config::Secret>,
    db: u32,
    limit: Duration,
}

impl Dial {
    fn of(cfg: &ClusterSettings) -> Result<Dial, ConnectError> {
        Ok(Dial {
            addr: *cfg.addrs.load().first().ok_or(ConnectError::Unresolved)?,
            tls: cfg.tls.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            db: cfg.db,
            limit: handshake_timeout(cfg),
        })
    }
}

async fn connect(cfg: &Dial) -> Result<(Conn, Vec<u8>), ConnectError> {
    let limit = cfg.limit;
    let addr = cfg.addr;
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
    cfg: &Dial,
    mut stream: S,
    deadline: Instant,
) -> Result<(S, Vec<u8>), ConnectError> {
    let limit = deadline.saturating_duration_since(Instant::now());
    let timed_out = || ConnectError::Timeout(cfg.limit.as_millis() as u64);
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
                Ok(None) if buf.len() > resp::MAX_REPLY => {
                    return Err(ConnectError::Refused("reply too large".into()))
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
fn hello_commands(cfg: &Dial) -> (Vec<u8>, usize) {
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

/// Runs one connection until it ends (or `stop` says why it should); returns why.
async fn serve<S>(link: &Link, stream: S, stop: impl Future<Output = &'static str>) -> &'static str
where
    S: AsyncReadRent + AsyncWriteRent + Split,
{
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        let mut spare = Some(Vec::with_capacity(4096));
        loop {
            let wait = OutboxWait {
                link,
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
                        let slot = link.st.borrow_mut().waiting.pop_front();
                        match slot {
                            Some(s) => s.fill(Ok(v)),
                            None => return "a reply nobody asked for",
                        }
                    }
                    Ok(None) if buf.len() > resp::MAX_REPLY => return "reply too large",
                    Ok(None) => break,
                    Err(_) => return "malformed reply",
                }
            }
        }
    };
    monoio::select! {
        why = writer => why,
        why = reader => why,
        why = stop => why,
    }
}

/// Ends the configured node's connection when the worker drains or the `[cluster]`
/// settings it was opened with change.
async fn watch(w: &Worker, cfg: &ClusterSettings) -> &'static str {
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
    fn key_slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` and the Redis Cluster spec's CRC16 check value.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31C3 & 16383);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"rg:{abc}:x"), key_slot(b"rg:{abc}:y"));
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(key_slot(b"foo{}{bar}"), {
            let whole = b"foo{}{bar}";
            key_slot_raw(whole)
        });
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    fn key_slot_raw(key: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in key {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc & 16383
    }

    #[test]
    fn redirections_parse_and_commands_route_by_their_first_key() {
        assert_eq!(
            Redirect::parse(b"MOVED 3999 127.0.0.1:6381"),
            Some(Redirect {
                ask: false,
                slot: 3999,
                addr: "127.0.0.1:6381".parse().expect("addr")
            })
        );
        let r = Redirect::parse(b"ASK 12 [::1]:7000").expect("ask");
        assert!(r.ask && r.slot == 12);
        for not in [
            &b"ERR wrong"[..],
            b"MOVED 3999",
            b"MOVED 16384 127.0.0.1:1",
            b"MOVED 1 redis-0.redis:6379",
            b"NOSCRIPT No matching script",
        ] {
            assert_eq!(
                Redirect::parse(not),
                None,
                "{}",
                String::from_utf8_lossy(not)
            );
        }
        assert_eq!(
            command_key(&[b"EVALSHA", b"sha", b"2", b"k1", b"k2", b"arg"]),
            Some(&b"k1"[..])
        );
        assert_eq!(command_key(&[b"EVAL", b"src", b"0", b"arg"]), None);
        assert_eq!(command_key(&[b"GET", b"k"]), Some(&b"k"[..]));
        assert_eq!(command_key(&[b"PING"]), None);
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
