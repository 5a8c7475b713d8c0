//! Process orchestration: load the config, start the admin listener, the watcher, the DNS
//! refresher and the workers, then wait for SIGTERM/SIGINT and drain. `main.rs` only parses
//! the command line and calls [`run`] or [`check`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::config;
use crate::metrics::{Registry, WorkerMetrics};
use crate::reload::{watch, ConfigStore};
use crate::worker::{self, Shared};

/// `ringgate check PATH`: prints every error and returns the exit code (0 valid, 1 not).
pub fn check(path: &Path) -> i32 {
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let file = config::config_file_path(path);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return 1;
        }
    };
    // Errors in a manifest are reported at the manifest's own line numbers.
    let (text, line_offset) = if is_yaml {
        let found = std::str::from_utf8(&bytes)
            .map_err(|_| "the manifest is not UTF-8".to_string())
            .and_then(config::toml_block_in_configmap_yaml);
        match found {
            Ok((t, offset)) => (t.into_bytes(), offset),
            Err(msg) => {
                eprintln!("{}: {msg}", file.display());
                return 1;
            }
        }
    } else {
        (bytes, 0)
    };
    let base = file.parent().unwrap_or(Path::new("."));
    match config::load_bytes_with(&text, base, config::SecretFiles::Skip) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} routes, {} upstreams, {} limits; secret files not read)",
                file.display(),
                cfg.routes.len(),
                cfg.upstreams.len(),
                cfg.limits.len()
            );
            0
        }
        Err(errs) => {
            for e in &errs.0 {
                let mut e = e.clone();
                e.line = e.line.map(|l| l + line_offset);
                eprintln!("{}: {e}", file.display());
            }
            eprintln!("{}: {} error(s)", file.display(), errs.0.len());
            1
        }
    }
}

/// How the gateway was asked to run, besides its config.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print the bound addresses on stdout once every listener is up (see [`print_ports`]):
    /// how a supervisor that configured port 0 learns where the gateway listens.
    pub print_ports: bool,
}

/// Runs the gateway until SIGTERM/SIGINT, then drains. Returns the exit code.
pub fn run(path: &Path, opts: RunOptions) -> i32 {
    let file = config::config_file_path(path);
    if !watch::is_configmap_mount(&file) {
        tracing::warn!(path = %file.display(), "config path has no `..data` beside it: a plain file (edits to it are picked up), or in Kubernetes a subPath mount, which never receives ConfigMap updates: mount the ConfigMap as a directory");
    }
    let store = match ConfigStore::load_initial(&file) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{}: invalid config:\n{e}", file.display());
            return 1;
        }
    };
    let initial = store.current();
    crate::fds::raise_and_check(&initial.config);
    let server = initial.config.server.clone();
    let reload = initial.config.reload.clone();
    let admin_listen = initial.config.admin_listen;
    drop(initial);

    // A second instance would silently share the port through SO_REUSEPORT: refuse to start
    // when anyone already listens there.
    let listens = worker::Listens {
        plain: server.listen,
        tls: server.tls.as_ref().map(|t| t.listen),
    };
    // A port 0 is a fresh port the kernel picks: no one can be listening there yet.
    for addr in std::iter::once(listens.plain)
        .chain(listens.tls)
        .filter(|a| a.port() != 0)
    {
        if let Err(e) = probe_listen(addr) {
            eprintln!("cannot listen on {addr}: {e}");
            return 1;
        }
    }
    // Installed before any worker starts, so an early SIGTERM drains instead of killing.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return 1;
        }
    };

    let shared = Arc::new(Shared::new(store.clone()));
    let registry = Arc::new(Registry {
        workers: (0..server.workers)
            .map(|_| Arc::new(WorkerMetrics::default()))
            .collect(),
    });
    let _ = shared.registry.set(registry.clone());
    let admin_addr = match crate::admin::spawn(admin_listen, shared.clone(), registry.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cannot listen on admin address {admin_listen}: {e}");
            return 1;
        }
    };

    let watch_store = store.clone();
    let inputs_store = store.clone();
    let watcher = watch::spawn_watcher_with_inputs(
        file.clone(),
        store.current().inputs_sha256,
        watch::WatchOptions {
            debounce: reload.debounce,
            poll_interval: reload.poll_interval,
        },
        // Secret files of the current generation: their mounts are watched too.
        Box::new(move || inputs_store.current().config.watched_files.clone()),
        Box::new(move |snap| {
            let _ = watch_store.apply(snap);
        }),
    );
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config directory; live reload is off");
            None
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let dns_store = store.clone();
    let _dns = crate::upstream::dns::spawn_refresher(
        move |round| round(&dns_store.current().config),
        crate::upstream::dns::system_resolve,
        crate::upstream::dns::REFRESH_EVERY,
        stop.clone(),
    );

    // Rate-limit keys whose bucket is full again carry no information: forget them, off the
    // request path, so key state stays bounded over days.
    let evict_store = store.clone();
    let _evictor = spawn_periodic(
        "ringgate-limits",
        move || {
            let now = crate::clock::monotonic_nanos();
            for l in &evict_store.current().limiters {
                l.evict_idle(now);
            }
        },
        Duration::from_secs(10),
        stop.clone(),
    );

    let workers = match start_workers(&shared, &registry, listens, server.workers) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let listens = workers.listens;
    tracing::info!(listen = %listens.plain, tls_listen = ?listens.tls, admin = %admin_addr, workers = workers.handles.len(), "ringgate serving");
    if opts.print_ports {
        print_ports(listens, admin_addr);
    }

    let sig = signals.forever().next();
    tracing::info!(signal = ?sig, grace_ms = server.shutdown_grace.as_millis() as u64, "draining");
    stop.store(true, Ordering::Relaxed);
    drain(&shared, workers, server.shutdown_grace)
}

/// The running workers: their threads, the addresses they serve, and the main thread's own
/// duplicates of their listening sockets (what the drain shuts down).
struct Workers {
    handles: Vec<std::thread::JoinHandle<()>>,
    listens: worker::Listens,
    listener_fds: Vec<Arc<std::os::fd::OwnedFd>>,
}

/// Starts `count` workers. The first binds alone: a configured port 0 becomes whatever port
/// the kernel gave it, and every later worker joins that one port through SO_REUSEPORT
/// (binding port 0 each would give each worker a port of its own).
fn start_workers(
    shared: &Arc<Shared>,
    registry: &Registry,
    mut listens: worker::Listens,
    count: usize,
) -> Result<Workers, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    log_worker_count(count, cores);
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    let mut listener_fds = Vec::new();
    for (id, m) in registry.workers.iter().enumerate() {
        let h = worker::spawn(id, shared.clone(), m.clone(), listens, cores, tx.clone())
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        handles.push(h);
        if id == 0 {
            let b = await_bound(&rx)?;
            listens = worker::Listens {
                plain: b.plain,
                tls: b.tls,
            };
            listener_fds.extend(b.fds);
        }
    }
    drop(tx);
    for _ in 1..handles.len() {
        listener_fds.extend(await_bound(&rx)?.fds);
    }
    Ok(Workers {
        handles,
        listens,
        listener_fds,
    })
}

/// Drains on SIGTERM: marks the process draining, wakes the workers' accepts through the
/// main thread's own duplicates of the listening sockets, waits up to the grace period (plus
/// a margin) for the workers, and returns the exit code: 1 when requests were cut.
fn drain(shared: &Shared, workers: Workers, grace: Duration) -> i32 {
    shared.draining.store(true, Ordering::SeqCst);
    worker::stop_listening(&workers.listener_fds);
    let deadline = std::time::Instant::now() + grace + Duration::from_secs(2);
    let mut stuck = 0usize;
    for h in workers.handles {
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            stuck += 1;
        }
    }
    let cut = shared.cut_at_drain.load(Ordering::SeqCst);
    if cut > 0 || stuck > 0 {
        // An orchestrator reads the exit code: a drain that cut requests is not a clean stop.
        tracing::error!(
            cut_connections = cut,
            stuck_workers = stuck,
            grace_ms = grace.as_millis() as u64,
            "stopped: the grace period ended with requests in flight; they were cut"
        );
        return 1;
    }
    tracing::info!("stopped");
    0
}

/// Says at start-up how many workers run and why: with `workers = 0` the count follows what
/// the process may use — its CPU affinity and its cgroup's CPU quota (a pod's CPU limit),
/// as `available_parallelism` reads them — not the node's core count.
fn log_worker_count(workers: usize, available: usize) {
    let quota = cgroup_cpu_quota();
    let affinity = {
        // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity for this process.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let ok =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        (ok == 0).then(|| unsafe { libc::CPU_COUNT(&set) } as usize)
    };
    tracing::info!(
        workers,
        available_parallelism = available,
        cpu_affinity = ?affinity,
        cgroup_cpu_quota = ?quota,
        "workers: one per CPU the process may use (server.workers = 0), else as configured"
    );
}

/// The cgroup v2 CPU quota in CPUs (`cpu.max`: "quota period"), when one is set.
fn cgroup_cpu_quota() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (period > 0.0).then_some(quota / period)
}

/// Waits (bounded) for one worker's bind report.
fn await_bound(rx: &mpsc::Receiver<worker::BindReport>) -> Result<worker::Bound, String> {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(report) => report,
        Err(_) => Err("workers did not start within 10 s".into()),
    }
}

/// Prints the one machine-readable line `ringgate ports listen=IP:PORT admin=IP:PORT
/// [tls=IP:PORT]` on stdout and flushes it: every address as bound, so port 0 is resolved.
fn print_ports(listens: worker::Listens, admin: std::net::SocketAddr) {
    use std::io::Write;
    let mut line = format!("ringgate ports listen={} admin={admin}", listens.plain);
    if let Some(t) = listens.tls {
        line.push_str(&format!(" tls={t}"));
    }
    let mut out = std::io::stdout().lock();
    // Nobody reading stdout is no reason to stop serving.
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Binds and listens once without SO_REUSEPORT (but with SO_REUSEADDR, so TIME_WAIT from a
/// previous run does not matter): fails when another process already listens on the port,
/// which the workers' SO_REUSEPORT listeners would otherwise silently share.
fn probe_listen(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1)?;
    Ok(())
}

/// Runs `task` on its own thread every `every` until `stop` is set (checked every 200 ms, so
/// shutdown never waits a whole period).
fn spawn_periodic(
    name: &str,
    task: impl Fn() + Send + 'static,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let step = Duration::from_millis(200);
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                waited += step;
                if waited >= every {
                    waited = Duration::ZERO;
                    task();
                }
            }
        })
}
