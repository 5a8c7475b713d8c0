//! Thread-per-core workers: each is a pinned OS thread running its own monoio runtime
//! (io_uring, or epoll where io_uring is blocked), its own SO_REUSEPORT listeners (plain, and
//! TLS with `[server.tls]`; the accept loops are in [`crate::listener`]), its own
//! upstream pool and counters. Nothing on the request path is shared with another worker
//! except the config, read through arc-swap.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use monoio::net::{ListenerOpts, TcpListener};

use crate::metrics::{Driver, WorkerMetrics};
use crate::reload::{Active, ConfigStore};
use crate::upstream::pool::Pool;

/// State shared by all workers and the control threads.
pub struct Shared {
    /// The published config.
    pub store: Arc<ConfigStore>,
    /// Set on SIGTERM/SIGINT.
    pub draining: AtomicBool,
    /// Worker threads that ended before draining (a panic outside a connection, a runtime
    /// that could not be built): `/health` and `/ready` answer 503 while it is not zero.
    pub dead_workers: AtomicUsize,
    /// Client connections still open (requests in flight) when a worker's drain grace
    /// period ended: they were cut, and the process exits non-zero.
    pub cut_at_drain: AtomicUsize,
    /// The workers' metrics (their heartbeats), set once they exist.
    pub registry: std::sync::OnceLock<Arc<crate::metrics::Registry>>,
}

impl Shared {
    /// State for `store`, not draining, every worker alive.
    pub fn new(store: Arc<ConfigStore>) -> Shared {
        Shared {
            store,
            draining: AtomicBool::new(false),
            dead_workers: AtomicUsize::new(0),
            cut_at_drain: AtomicUsize::new(0),
            registry: std::sync::OnceLock::new(),
        }
    }

    /// Workers that cannot serve: ended before draining, or wedged (no heartbeat for
    /// [`crate::metrics::WEDGED_AFTER`]; not judged while draining, when workers finish one
    /// by one).
    pub fn workers_unhealthy(&self) -> usize {
        let wedged = match self.registry.get() {
            Some(r) if !self.draining.load(Ordering::Relaxed) => r.wedged_workers(),
            _ => 0,
        };
        self.workers_dead() + wedged
    }

    /// How many worker threads ended before draining.
    pub fn workers_dead(&self) -> usize {
        self.dead_workers.load(Ordering::Relaxed)
    }
}

/// Lives on a worker thread's stack from its first instruction: dropped when the thread
/// ends, by returning or by unwinding, and if that happens before draining the worker is
/// counted dead (`/health` and `/ready` go 503), since its share of the port is unserved.
struct WorkerLife {
    id: usize,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    /// Owned duplicates of this worker's listening sockets, once bound.
    listeners: RefCell<ListenerFds>,
}

impl Drop for WorkerLife {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        if panicked {
            self.metrics.note_panic();
        }
        if !self.shared.draining.load(Ordering::SeqCst) {
            // The main thread's duplicates keep the sockets open: stop them listening, or
            // the kernel would keep queueing this worker's share of clients for no one.
            stop_listening(&self.listeners.borrow());
            self.shared.dead_workers.fetch_add(1, Ordering::SeqCst);
            tracing::error!(
                worker = self.id,
                panicked,
                "worker thread ended before draining; /health and /ready now answer 503"
            );
        }
    }
}

/// A worker's own state; lives on its thread only.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    cache: RefCell<Cache<Arc<ArcSwap<Active>>, Arc<Active>>>,
    /// The generation requests on this worker hold: an `Rc` so taking it per request is a
    /// non-atomic increment instead of contended traffic on the shared `Arc`'s counter.
    #[allow(clippy::redundant_allocation)]
    local: RefCell<Rc<Arc<Active>>>,
    /// Idle upstream connections of this worker.
    pub pool: RefCell<Pool>,
    /// Endpoint choice and passive health of this worker.
    pub balancer: crate::upstream::balance::Balancer,
    /// Wakes idle connections when draining starts.
    pub drain: DrainSignal,
    /// This worker's counters.
    pub metrics: Arc<WorkerMetrics>,
    /// This worker's per-route/upstream/limit statistics, published once a second.
    pub stats: crate::metrics::LocalStats,
    /// The clients of requests waiting on an upstream, checked together every 50 ms.
    pub client_watch: Rc<crate::proxy::client_watch::ClientWatch>,
    /// Idle keep-alive connections' deadlines (one ticker instead of a timer each).
    pub idle: Rc<crate::proxy::idle::IdleList>,
    /// Bytes of kept request bodies this worker holds (`server.body_buffer_bytes`).
    pub body_budget: crate::proxy::request_body::BodyBudget,
    /// This worker's connection to the cluster store (idle without `[cluster]`).
    pub store: Rc<crate::cluster::Store>,
    /// Cluster-limit keys this worker saw refused, until their retry time.
    pub refusals: crate::cluster::limits::RefusalCache,
    /// Spare I/O buffers, so a request does not allocate (and free) its upstream read
    /// buffer: worker-local, so taking one is a `Vec::pop`, no lock.
    spare_buffers: RefCell<Vec<Vec<u8>>>,
    active: Cell<usize>,
    max_connections: usize,
    id_seed: u64,
    id_counter: Cell<u64>,
}

/// Spare buffers a worker keeps at most, and the largest one it keeps.
const MAX_SPARE_BUFFERS: usize = 256;
const MAX_SPARE_BUFFER_BYTES: usize = 64 * 1024;

impl Worker {
    /// An empty buffer with at least `capacity` bytes of room, from the spares when one fits.
    pub fn take_buffer(&self, capacity: usize) -> Vec<u8> {
        let mut spare = self.spare_buffers.borrow_mut();
        match spare.pop() {
            Some(b) if b.capacity() >= capacity => b,
            Some(b) => {
                spare.push(b);
                Vec::with_capacity(capacity)
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Gives a buffer back for reuse (dropped when the spares are full or it grew large; one
    /// without an allocation is ignored).
    pub fn give_buffer(&self, mut b: Vec<u8>) {
        let mut spare = self.spare_buffers.borrow_mut();
        if spare.len() < MAX_SPARE_BUFFERS
            && b.capacity() > 0
            && b.capacity() <= MAX_SPARE_BUFFER_BYTES
        {
            b.clear();
            spare.push(b);
        }
    }

    /// The current config generation as a worker-local handle: cloning it is a non-atomic
    /// increment, and the shared `ArcSwap` is only touched when a new generation appears.
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Active>> {
        let mut cache = self.cache.borrow_mut();
        let cur = cache.load();
        let mut local = self.local.borrow_mut();
        if !Arc::ptr_eq(&**local, cur) {
            *local = Rc::new(cur.clone());
        }
        local.clone()
    }

    /// Admits a new client connection within this worker's share of `max_connections`:
    /// the guard counts it open until dropped. None (counted as refused) when full.
    pub fn admit(self: &Rc<Self>) -> Option<ConnGuard> {
        if self.active.get() >= self.max_connections {
            self.metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.active.set(self.active.get() + 1);
        self.metrics
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard { w: self.clone() })
    }

    /// A new request id, unique per process: a per-worker random seed and a counter.
    pub fn new_request_id(&self) -> String {
        let n = self.id_counter.get().wrapping_add(1);
        self.id_counter.set(n);
        // Hex by hand: `format!` costs a formatter pass per request for a fixed-width id.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for v in [self.id_seed, n] {
            for shift in (0..16).rev() {
                id.push(HEX[((v >> (shift * 4)) & 0xf) as usize] as char);
            }
        }
        id
    }
}

/// An open client connection, counted in [`Worker::admit`] until dropped.
pub struct ConnGuard {
    w: Rc<Worker>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.w.active.set(self.w.active.get().saturating_sub(1));
        self.w
            .metrics
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A one-shot broadcast to every connection of a worker that draining began.
#[derive(Default)]
pub struct DrainSignal {
    started: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl DrainSignal {
    /// Whether draining began.
    pub fn is_draining(&self) -> bool {
        self.started.get()
    }

    /// Begins draining and wakes every waiter.
    pub fn start(&self) {
        self.started.set(true);
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves once draining began.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            sig: self,
            slot: None,
        }
    }
}

/// Future of [`DrainSignal::wait`]; frees its waker slot on drop.
pub struct DrainWait<'a> {
    sig: &'a DrainSignal,
    slot: Option<usize>,
}

impl std::future::Future for DrainWait<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.sig.started.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.sig.waiters.borrow_mut();
        let slot = match self.slot {
            Some(s) => s,
            None => {
                let s = self.sig.free.borrow_mut().pop().unwrap_or_else(|| {
                    waiters.push(None);
                    waiters.len() - 1
                });
                s
            }
        };
        if let Some(w) = waiters.get_mut(slot) {
            *w = Some(cx.waker().clone());
        }
        drop(waiters);
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            if let Some(w) = self.sig.waiters.borrow_mut().get_mut(s) {
                *w = None;
            }
            self.sig.free.borrow_mut().push(s);
        }
    }
}

/// Owned duplicates (`dup`) of a worker's listening sockets: the main thread shuts the
/// sockets down through them to start draining. A raw descriptor number would not do: a
/// worker that died has closed its listener, and the number may name another file since.
pub type ListenerFds = Vec<Arc<OwnedFd>>;

/// What a worker reports once its listeners are bound, or why binding failed.
pub type BindReport = Result<Bound, String>;

/// A worker's bound listeners: what the main thread needs to stop them, and the addresses
/// the kernel gave them (a configured port 0 becomes the port every later worker joins).
#[derive(Debug)]
pub struct Bound {
    /// Owned duplicates of the listening sockets, for the drain.
    pub fds: ListenerFds,
    /// The plain listener's address as bound.
    pub plain: SocketAddr,
    /// The TLS listener's address as bound, with `[server.tls]`.
    pub tls: Option<SocketAddr>,
}

/// An owned duplicate of the listening socket `l` (close-on-exec).
pub fn dup_listener(l: &impl AsRawFd) -> std::io::Result<Arc<OwnedFd>> {
    // SAFETY: `l` is borrowed for the call, so its descriptor is open while it is duplicated.
    let fd = unsafe { BorrowedFd::borrow_raw(l.as_raw_fd()) };
    fd.try_clone_to_owned().map(Arc::new)
}

/// Stops the sockets behind `fds` listening: a pending accept on them fails (EINVAL), which
/// ends the worker's accept loops; clients still in their backlogs are reset.
pub fn stop_listening(fds: &[Arc<OwnedFd>]) {
    for fd in fds {
        // SAFETY: shutdown on a descriptor we own; no memory involved.
        unsafe {
            libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// The addresses a worker listens on.
#[derive(Debug, Clone, Copy)]
pub struct Listens {
    /// `server.listen` (plain HTTP).
    pub plain: SocketAddr,
    /// `server.tls.listen`, when `[server.tls]` was configured at start-up.
    pub tls: Option<SocketAddr>,
}

/// Starts worker `id` on its own thread.
pub fn spawn(
    id: usize,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    listen: Listens,
    cores: usize,
    bound: mpsc::Sender<BindReport>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringgate-w{id}"))
        .spawn(move || {
            let life = WorkerLife {
                id,
                shared: shared.clone(),
                metrics: metrics.clone(),
                listeners: RefCell::new(Vec::new()),
            };
            if let Err(e) = monoio::utils::bind_to_cpu_set([id % cores.max(1)]) {
                tracing::warn!(worker = id, error = ?e, "could not pin worker to a core");
            }
            let force_legacy = std::env::var("MONOIO_FORCE_LEGACY_DRIVER").is_ok_and(|v| v == "1" || v == "true");
            if !force_legacy {
                match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .with_entries(1024)
                    .build()
                {
                    Ok(mut rt) => {
                        tracing::info!(worker = id, driver = "io_uring", "worker started");
                        metrics.set_driver(Driver::IoUring);
                        rt.block_on(run(id, shared, metrics, listen, bound, &life));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(worker = id, error = %e, "io_uring unavailable (seccomp, kernel.io_uring_disabled or memlock); falling back to epoll");
                    }
                }
            }
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
                Ok(mut rt) => {
                    tracing::info!(worker = id, driver = "epoll", forced = force_legacy, "worker started");
                    metrics.set_driver(Driver::Epoll);
                    rt.block_on(run(id, shared, metrics, listen, bound, &life));
                }
                Err(e) => {
                    let _ = bound.send(Err(format!("worker {id}: cannot build an I/O runtime: {e}")));
                }
            }
        })
}

async fn run(
    id: usize,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    listen: Listens,
    bound: mpsc::Sender<BindReport>,
    life: &WorkerLife,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let bind = |addr: SocketAddr| {
        TcpListener::bind_with_config(addr, &opts)
            .map_err(|e| format!("worker {id}: cannot listen on {addr}: {e}"))
    };
    let listener = match bind(listen.plain) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let tls_listener = match listen.tls.map(bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let dups = std::iter::once(dup_listener(&listener))
        .chain(tls_listener.as_ref().map(dup_listener))
        .collect::<std::io::Result<ListenerFds>>();
    let fds = match dups {
        Ok(f) => f,
        Err(e) => {
            let _ = bound.send(Err(format!(
                "worker {id}: cannot duplicate a listener: {e}"
            )));
            return;
        }
    };
    let plain = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = bound.send(Err(format!(
                "worker {id}: cannot read the listener's address: {e}"
            )));
            return;
        }
    };
    let tls = match tls_listener.as_ref().map(|l| l.local_addr()).transpose() {
        Ok(a) => a,
        Err(e) => {
            let _ = bound.send(Err(format!(
                "worker {id}: cannot read the TLS listener's address: {e}"
            )));
            return;
        }
    };
    life.listeners.replace(fds.clone());
    let _ = bound.send(Ok(Bound { fds, plain, tls }));
    drop(bound);

    let cell = shared.store.cell();
    let initial = cell.load_full();
    let workers = initial.config.server.workers.max(1);
    let max_connections = initial.config.server.max_connections.div_ceil(workers);
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(id);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    let w = Rc::new(Worker {
        id,
        shared: shared.clone(),
        cache: RefCell::new(Cache::new(cell)),
        local: RefCell::new(Rc::new(initial)),
        pool: RefCell::new(Pool::default()),
        balancer: crate::upstream::balance::Balancer::new(seed),
        drain: DrainSignal::default(),
        stats: crate::metrics::LocalStats::new(metrics.clone()),
        body_budget: Default::default(),
        client_watch: Default::default(),
        idle: Default::default(),
        store: Rc::new(crate::cluster::Store::new(metrics.cluster.clone())),
        refusals: Default::default(),
        metrics,
        spare_buffers: RefCell::new(Vec::new()),
        active: Cell::new(0),
        max_connections,
        id_seed: seed,
        id_counter: Cell::new(0),
    });

    monoio::spawn(sweep_pools(w.clone()));
    monoio::spawn(w.client_watch.clone().run());
    monoio::spawn(w.idle.clone().run());
    monoio::spawn(heartbeat(w.clone()));
    monoio::spawn(crate::cluster::conn::run(w.clone(), w.store.clone()));

    // Both accept loops end when the main thread shuts their sockets down (SIGTERM).
    let tls_task =
        tls_listener.map(|l| monoio::spawn(crate::listener::tls::accept_tls(w.clone(), l)));
    crate::listener::accept_plain(w.clone(), listener).await;
    if let Some(t) = tls_task {
        t.await;
    }
    w.drain.start();
    w.idle.wake_all();
    let grace = w.snapshot().config.server.shutdown_grace;
    let deadline = Instant::now() + grace;
    while w.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    w.stats.publish();
    if w.active.get() > 0 {
        w.shared
            .cut_at_drain
            .fetch_add(w.active.get(), Ordering::SeqCst);
        tracing::warn!(
            worker = id,
            open = w.active.get(),
            "grace period over; closing remaining connections"
        );
    } else {
        tracing::info!(worker = id, "drained");
    }
}

/// Once a second, for as long as the worker's event loop turns: proves the worker is not
/// wedged ([`Shared::workers_unhealthy`]).
async fn heartbeat(w: Rc<Worker>) {
    loop {
        w.metrics.beat();
        monoio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Once a second: drop idle connections of upstreams that a reload removed or changed, and
/// those past their keep-alive timeout.
async fn sweep_pools(w: Rc<Worker>) {
    while !w.drain.is_draining() {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let snap = w.snapshot();
        let live: HashSet<u64> = snap
            .config
            .upstreams
            .iter()
            .map(|u| u.fingerprint)
            .collect();
        let ups = &snap.config.upstreams;
        w.balancer.retain(&live);
        let mut pool = w.pool.borrow_mut();
        pool.retain(&live, |fp| {
            ups.iter()
                .find(|u| u.fingerprint == fp)
                .map(|u| u.keepalive_timeout)
        });
        let now = Instant::now();
        for up in ups {
            let state = w.balancer.state(up);
            let busy: u32 = state.endpoints().iter().map(|e| e.inflight()).sum();
            let ejected = state
                .endpoints()
                .iter()
                .filter(|e| e.is_ejected(now))
                .count();
            w.stats.set_upstream_gauges(
                &up.name,
                pool.idle_for(up.fingerprint) as u64,
                u64::from(busy),
                ejected as u64,
            );
        }
        drop(pool);
        w.stats.publish();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Shared state over a minimal config written to a temp dir.
    pub(crate) fn test_shared(tag: &str) -> Arc<Shared> {
        let dir = std::env::temp_dir().join(format!("ringgate-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("gateway.toml");
        let cfg = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                   [upstreams.u]\nurl = \"http://127.0.0.1:1\"\n\
                   [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
        std::fs::write(&file, cfg).expect("write config");
        let store = ConfigStore::load_initial(&file).expect("config");
        Arc::new(Shared::new(Arc::new(store)))
    }

    fn life(shared: &Arc<Shared>, metrics: &Arc<WorkerMetrics>) -> WorkerLife {
        WorkerLife {
            id: 0,
            shared: shared.clone(),
            metrics: metrics.clone(),
            listeners: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn a_worker_thread_that_dies_is_counted_dead_and_a_drained_one_is_not() {
        let shared = test_shared("life");
        let metrics = Arc::new(WorkerMetrics::default());
        let (s, m) = (shared.clone(), metrics.clone());
        let died = std::thread::spawn(move || {
            let _life = life(&s, &m);
            panic!("outside any connection");
        })
        .join();
        assert!(died.is_err());
        assert_eq!(shared.workers_dead(), 1);
        assert_eq!(metrics.panics(), 1);

        // A runtime that cannot be built returns from the thread without a panic: dead too.
        let (s, m) = (shared.clone(), metrics.clone());
        std::thread::spawn(move || drop(life(&s, &m)))
            .join()
            .expect("thread");
        assert_eq!(shared.workers_dead(), 2);
        assert_eq!(metrics.panics(), 1);

        // Ending after draining began is the normal way out.
        shared.draining.store(true, Ordering::SeqCst);
        let (s, m) = (shared.clone(), metrics.clone());
        std::thread::spawn(move || drop(life(&s, &m)))
            .join()
            .expect("thread");
        assert_eq!(shared.workers_dead(), 2);
    }

    #[test]
    fn draining_goes_through_owned_dups_never_reused_numbers() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let number = l.as_raw_fd();
        let dup = dup_listener(&l).expect("dup");
        assert_ne!(dup.as_raw_fd(), number, "a descriptor of its own");
        // Through the dup, a blocked accept on the worker's listener is woken.
        let accepting = std::thread::spawn(move || {
            let r = l.accept().map(|_| ());
            drop(l); // the worker's listener closes; its number is free for reuse
            r
        });
        std::thread::sleep(Duration::from_millis(50));
        stop_listening(std::slice::from_ref(&dup));
        assert!(accepting.join().expect("thread").is_err(), "accept woken");

        // The freed number goes to an unrelated socket: draining again must not touch it.
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a =
            std::net::TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        let (mut b, _) = other.accept().expect("accept");
        let mut held = vec![other];
        let reused = [a.as_raw_fd(), b.as_raw_fd(), held[0].as_raw_fd()].contains(&number);
        while !reused && held.len() < 64 {
            let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let hit = s.as_raw_fd() == number;
            held.push(s);
            if hit {
                break;
            }
        }
        stop_listening(std::slice::from_ref(&dup));
        a.write_all(b"x").expect("write");
        let mut buf = [0u8; 1];
        b.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(
            b.read(&mut buf).expect("read"),
            1,
            "the unrelated socket still works"
        );
        for h in &held {
            let c = std::net::TcpStream::connect(h.local_addr().expect("addr"));
            assert!(c.is_ok(), "an unrelated listener still listens");
        }
    }
}
