//! `cargo xtask bench`: ringgate side by side with nginx and with no proxy at all, on this
//! machine, in one run (method: README.md, section Benchmarks).
//!
//! Scenarios, in order:
//! 1. throughput: closed-loop keep-alive POSTs of a chat completion through direct / nginx
//!    (the seed article's location) / ringgate (the same route), rounds alternating the order,
//!    then the three paths again at one fixed request rate for latency at the same load;
//! 2. SSE: 50 events 20 ms apart from an in-process upstream; TTFB and the delay between an
//!    event leaving the upstream and reaching the client;
//! 3. reload under load: the config directory re-projected kubelet-style while the load runs;
//!    failed requests and the time from the `..data` rename to the first request the new
//!    route serves;
//! 4. memory: RSS of each proxy holding many idle keep-alive client connections;
//! 5. cluster limits: the same route with a `scope = "cluster"` limit (Redis on loopback)
//!    and with a local one, paced at the same rate: the latency and CPU the store adds.
//!
//! The proxy under test runs on one core, the client and the upstream on the other. Writes
//! target/bench/report.md, target/bench/latency.svg and target/bench/results.json.

/// A progress line: `bench [  12.3 s] what happened`, on stdout as it happens.
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::bench::progress_line(format!($($arg)*))
    };
}

mod cluster;
mod load;
mod nginx;
mod reload;
mod report;
mod sse;
mod sys;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{LoadResult, LoadSpec};
use sys::{Children, Cores};

/// Settings of one bench run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub sse_streams: usize,
    pub sse_rounds: usize,
    pub reloads: usize,
    pub idle_connections: usize,
    /// Concurrent slow SSE streams for the memory scenario.
    pub streams: usize,
    /// Run only the memory scenario (`--only memory`).
    pub only_memory: bool,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Self, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut s = if quick {
            Settings {
                quick,
                rounds: 1,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(2),
                connections: 32,
                sse_streams: 4,
                sse_rounds: 1,
                reloads: 10,
                idle_connections: 1000,
                streams: 100,
                only_memory: false,
            }
        } else {
            Settings {
                quick,
                rounds: 5,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(10),
                connections: 64,
                sse_streams: 8,
                sse_rounds: 3,
                reloads: 100,
                idle_connections: 10_000,
                streams: 1000,
                only_memory: false,
            }
        };
        let mut i = 0;
        while i < args.len() {
            let value = || {
                args.get(i + 1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("{} needs a number", args[i]))
            };
            match args[i].as_str() {
                "--quick" => {}
                "--rounds" => s.rounds = value()?.max(1) as usize,
                "--duration" => s.duration = Duration::from_secs(value()?.max(1)),
                "--warmup" => s.warmup = Duration::from_secs(value()?),
                "--connections" => s.connections = value()?.max(1) as usize,
                "--reloads" => s.reloads = value()?.max(1) as usize,
                "--idle-connections" => s.idle_connections = value()? as usize,
                "--streams" => s.streams = value()? as usize,
                "--only" => match args.get(i + 1).map(String::as_str) {
                    Some("memory") => s.only_memory = true,
                    _ => return Err(format!("--only takes: memory\n{USAGE}")),
                },
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
            i += if args[i] == "--quick" { 1 } else { 2 };
        }
        Ok(s)
    }
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--rounds N] [--duration SECS] [--warmup SECS] [--connections N] [--reloads N] [--idle-connections N] [--streams N] [--only memory]

Direct, nginx (the seed's config) and ringgate side by side on this machine, in rotated
rounds: throughput and CPU per request, latency at the same load, SSE event delay, reload
under load, idle-connection memory; and what a scope = \"cluster\" limit adds (redis-server on
loopback, when installed) against a local one. Writes target/bench/report.md, latency.svg, results.json.
Builds ringgate and the load client with --release first. Installs nginx-light with apt-get
when nginx is missing (needs root), and pins the proxy to core 0, client and upstream to core 1.

  --quick               one short round of everything (~1 min; CI runs it)      default off
  --rounds N            rounds per scenario                                     default 5 (quick 1)
  --duration SECS       seconds per measured run                                default 10 (quick 2)
  --warmup SECS         seconds of warm-up before each run, not counted         default 2 (quick 0.5)
  --connections N       keep-alive connections of the closed-loop client        default 64 (quick 32)
  --reloads N           config re-projections in the reload scenario            default 100 (quick 10)
  --idle-connections N  idle keep-alive connections for the memory scenario     default 10000 (quick 1000)
  --streams N           concurrent slow SSE streams for the memory scenario     default 1000 (quick 100)
  --only memory         only the memory scenario (idle connections, streams); writes memory.md
  -h, --help            this text (nothing is built)";

/// The three paths of scenario 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path3 {
    Direct,
    Nginx,
    Ringgate,
}

impl Path3 {
    pub const ALL: [Path3; 3] = [Path3::Direct, Path3::Nginx, Path3::Ringgate];

    pub fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct",
            Path3::Nginx => "nginx",
            Path3::Ringgate => "ringgate",
        }
    }
}

/// One closed-loop run of one path, with the proxy's CPU time over the window.
pub struct Run {
    pub path: Path3,
    /// Over TLS (the proxy terminates HTTPS; the upstream leg stays plain).
    pub https: bool,
    pub result: LoadResult,
    /// CPU seconds the proxy process tree used during the run (None for direct).
    pub proxy_cpu: Option<f64>,
    /// Share of the proxy core's time the hypervisor gave to someone else during the run.
    pub steal: f64,
    /// How busy the client core (load client + upstream) was: near 1.0, req/s measures the
    /// client side, not the proxy.
    pub client_busy: f64,
}

/// Everything the report is made of.
pub struct Results {
    pub settings: Settings,
    pub cores: Cores,
    pub setup: Vec<String>,
    pub runs: Vec<Run>,
    pub same_load_rate: f64,
    pub same_load: Vec<Run>,
    pub sse: Vec<sse::SseResult>,
    pub reload: Option<reload::ReloadResult>,
    pub memory: Vec<(Path3, u64, u64, usize)>,
    /// Scenario 5, or why it was skipped.
    pub cluster: Option<Result<cluster::ClusterResult, String>>,
    /// (path, RSS before, RSS with the streams, streams held), KiB.
    pub stream_memory: Vec<(Path3, u64, u64, usize)>,
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Prints one progress line with the time since the bench started.
pub fn progress_line(msg: String) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("bench [{t:6.1} s] {msg}");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs the bench; returns the exit code (non-zero only when the harness itself failed).
pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        // `| head` closes the pipe early: not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), format!("{USAGE}\n").as_bytes());
        return 0;
    }
    if let Err(e) = Settings::parse(args) {
        eprintln!("bench: {e}");
        return 2;
    }
    // `cargo xtask` builds without optimizations; a debug load client would be the bottleneck
    // it is meant to measure around. Re-run this command from a release build.
    if cfg!(debug_assertions) {
        progress!("building the load client with optimizations (cargo run --release -p xtask) ...");
        let status = crate::cargo()
            .current_dir(root())
            .args(["run", "--release", "--quiet", "-p", "xtask", "--", "bench"])
            .args(args)
            .status();
        return match status {
            Ok(s) => s.code().unwrap_or(1),
            Err(e) => {
                eprintln!("bench: cargo run --release: {e}");
                1
            }
        };
    }
    let settings = match Settings::parse(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench: {e}");
            return 2;
        }
    };
    match run_all(settings) {
        Ok(path) => {
            progress!("report written to {}", path.display());
            0
        }
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

fn run_all(settings: Settings) -> Result<PathBuf, String> {
    let started = Instant::now();
    let cores = Cores::detect();
    let mut setup = Vec::new();
    if cores.proxy == cores.client {
        setup.push("only one CPU: proxy, client and upstream share core 0 (ratios still compare like with like)".to_string());
    }
    sys::raise_nofile();
    // The client (this thread and everything it spawns) lives on the client core.
    sys::pin_current_thread(cores.client)
        .map_err(|e| format!("pinning to core {}: {e}", cores.client))?;

    progress!("building ringgate (release) ...");
    let status = crate::cargo()
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "ringgate",
            "--bin",
            "ringgate",
        ])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let ringgate_bin = target_dir().join("release/ringgate");
    let (nginx_bin, how) = sys::find_or_install_nginx()?;
    progress!("nginx: {how}");
    setup.push(format!("nginx: {how} ({})", sys::nginx_version(&nginx_bin)));
    setup.push("load client: the xtask's own closed-loop HTTP/1.1 client (monoio, hdrhistogram), same for every path".into());

    let out_dir = target_dir().join("bench");
    let work = out_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let nginx = nginx::Nginx::new(&nginx_bin, &work.join("nginx"))?;

    let mut results = Results {
        settings: settings.clone(),
        cores,
        setup,
        runs: Vec::new(),
        same_load_rate: 0.0,
        same_load: Vec::new(),
        sse: Vec::new(),
        reload: None,
        memory: Vec::new(),
        cluster: None,
        stream_memory: Vec::new(),
    };

    // ---- scenario 1: throughput and latency --------------------------------------------
    let mut children = Children::default();
    let up_port = sys::free_port().map_err(|e| e.to_string())?;
    nginx.start_upstream(&mut children, "upstream", up_port, cores.client)?;
    let nginx_port = sys::free_port().map_err(|e| e.to_string())?;
    let nginx_tls_port = sys::free_port().map_err(|e| e.to_string())?;
    let certs = tls::generate()?;
    nginx.start_proxy(
        &mut children,
        "proxy",
        nginx_port,
        up_port,
        cores.proxy,
        Some((nginx_tls_port, &certs)),
    )?;
    let rg = RinggateProc::start(
        &mut children,
        &ringgate_bin,
        &work.join("ringgate"),
        up_port,
        cores.proxy,
        Some(&certs),
    )?;
    let rg_tls = rg
        .tls_addr
        .ok_or("ringgate started without its TLS listener")?;
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let tls_client = Some((certs.client.clone(), certs.server_name.clone()));
    let plain = [
        (Path3::Direct, addr(up_port), None),
        (Path3::Nginx, addr(nginx_port), children.pid("proxy")),
        (Path3::Ringgate, rg.addr, children.pid("ringgate")),
    ];
    // Every path of the rotation: the three plain ones, then both proxies over HTTPS.
    let targets = [
        (plain[0], false),
        (plain[1], false),
        (plain[2], false),
        (
            (Path3::Nginx, addr(nginx_tls_port), children.pid("proxy")),
            true,
        ),
        ((Path3::Ringgate, rg_tls, children.pid("ringgate")), true),
    ];
    for (p, a, _) in &plain {
        let probe = if *p == Path3::Direct { "/" } else { "/health" };
        sys::wait_http(*a, probe).map_err(|e| {
            format!(
                "{} not ready: {e}\n{}",
                p.name(),
                nginx.error_log(if *p == Path3::Nginx {
                    "proxy"
                } else {
                    "upstream"
                })
            )
        })?;
    }
    let request = Rc::new(load::chat_request("bench"));
    let rounds = if settings.only_memory {
        0
    } else {
        settings.rounds
    };
    let total = rounds * targets.len();
    let mut n = 0;
    for round in 0..rounds {
        for k in 0..targets.len() {
            let ((path, a, pid), https) = targets[(round + k) % targets.len()];
            n += 1;
            children.check_alive()?;
            let tls = if https { tls_client.clone() } else { None };
            let run = measure(path, https, a, pid, &request, &settings, None, tls)?;
            progress!(
                "[1/4 throughput {n}/{total}] round {} {:<14} {:>9.0} req/s  p50 {}  p99 {}  errors {}  steal {:.0}%  client core {:.0}%",
                round + 1,
                format!("{}{}", path.name(), if https { " https" } else { "" }),
                run.result.rps(),
                report::fmt_ns(run.result.hist.value_at_quantile(0.5)),
                report::fmt_ns(run.result.hist.value_at_quantile(0.99)),
                run.result.errors.describe(),
                run.steal * 100.0,
                run.client_busy * 100.0
            );
            results.runs.push(run);
        }
    }
    // Same load for every path: 60% of the slowest proxy's median, so nobody is saturated.
    let median_of = |p: Path3| {
        report::median(
            results
                .runs
                .iter()
                .filter(|r| r.path == p && !r.https)
                .map(|r| r.result.rps())
                .collect(),
        )
    };
    let rate = (median_of(Path3::Nginx).min(median_of(Path3::Ringgate)) * 0.6).max(100.0);
    results.same_load_rate = rate;
    // In rounds too, order rotated: one paced run per path is at the mercy of the host.
    let total = rounds * plain.len();
    let mut n = 0;
    for round in 0..rounds {
        for k in 0..plain.len() {
            let (path, a, pid) = plain[(round + k) % plain.len()];
            n += 1;
            children.check_alive()?;
            let run = measure(path, false, a, pid, &request, &settings, Some(rate), None)?;
            progress!(
                "[1/4 same load {n}/{total}] round {} {:<8} at {:.0} req/s: p50 {}  p99 {}  p99.9 {}  errors {}  steal {:.0}%",
                round + 1,
                path.name(),
                rate,
                report::fmt_ns(run.result.hist.value_at_quantile(0.5)),
                report::fmt_ns(run.result.hist.value_at_quantile(0.99)),
                report::fmt_ns(run.result.hist.value_at_quantile(0.999)),
                run.result.errors.describe(),
                run.steal * 100.0
            );
            results.same_load.push(run);
        }
    }

    // ---- scenario 4 (run now, while the proxies are up): idle connections -------------
    if settings.idle_connections > 0 {
        for (path, a, pid) in &plain[1..] {
            let Some(pid) = pid else { continue };
            let before = sys::rss_kib_tree(*pid);
            let (held, problem) = hold_idle(*a, settings.idle_connections);
            let after = sys::rss_kib_tree(*pid);
            progress!(
                "[4/4 memory] {:<8} RSS {} KiB idle -> {} KiB with {} idle keep-alive connections{}",
                path.name(),
                before,
                after,
                held.len(),
                problem.as_deref().map(|p| format!(" (stopped early: {p})")).unwrap_or_default()
            );
            results.memory.push((*path, before, after, held.len()));
        }
    }
    drop(children);
    if settings.streams > 0 {
        results.stream_memory =
            sse::stream_memory(&nginx, &ringgate_bin, &work, cores, settings.streams)?;
    }
    if settings.only_memory {
        return report::write_memory(&out_dir, &results);
    }

    // ---- scenario 2: SSE ------------------------------------------------------------------
    results.sse = sse::run(&nginx, &ringgate_bin, &work, cores, &settings)?;

    // ---- scenario 3: reload under load ----------------------------------------------------
    results.reload = Some(reload::run(
        &nginx,
        &ringgate_bin,
        &work,
        cores,
        &settings,
        &request,
    )?);

    // ---- scenario 5: cluster limits ----------------------------------------------------
    results.cluster = Some(cluster::run(
        &nginx,
        &ringgate_bin,
        &work,
        cores,
        &settings,
        results.same_load_rate,
    )?);

    results.setup.push(format!(
        "total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    report::write(&out_dir, &results)
}

/// One run of `path`: closed loop, or paced at `rate` req/s in total when given.
#[allow(clippy::too_many_arguments)]
fn measure(
    path: Path3,
    https: bool,
    addr: SocketAddr,
    pid: Option<u32>,
    request: &Rc<Vec<u8>>,
    s: &Settings,
    rate: Option<f64>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> Result<Run, String> {
    let spec = LoadSpec {
        addr,
        request: request.clone(),
        connections: s.connections,
        warmup: s.warmup,
        duration: s.duration,
        rate,
        stop: None,
        tls,
    };
    let cpu_before = pid.map(sys::cpu_seconds_tree);
    let proxy_before = sys::core_ticks(sys::PROXY_CORE);
    let client_before = sys::core_ticks(sys::CLIENT_CORE);
    let result = load::run(&spec)?;
    let proxy_cpu = pid
        .zip(cpu_before)
        .map(|(p, b)| sys::cpu_seconds_tree(p) - b);
    let (_, steal) = sys::core_ticks(sys::PROXY_CORE).since(&proxy_before);
    let (client_busy, _) = sys::core_ticks(sys::CLIENT_CORE).since(&client_before);
    Ok(Run {
        path,
        https,
        steal,
        client_busy,
        result,
        proxy_cpu,
    })
}

/// Opens `n` connections to `addr`, makes each a kept-alive connection with one
/// `GET /health`, and returns them (held open by the caller) with the reason it stopped
/// early, if it did.
fn hold_idle(addr: SocketAddr, n: usize) -> (Vec<std::net::TcpStream>, Option<String>) {
    use std::io::Write;
    let mut held = Vec::with_capacity(n);
    let mut buf = [0u8; 1024];
    let mut problem = None;
    for _ in 0..n {
        let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                problem = Some(format!("connect: {e}"));
                break;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if let Err(e) = s.write_all(b"GET /health HTTP/1.1\r\nhost: bench\r\n\r\n") {
            problem = Some(format!("write: {e}"));
            break;
        }
        let mut got = Vec::new();
        let outcome = loop {
            match sys::read_retry(&mut s, &mut buf) {
                Ok(0) => break Err("closed".to_string()),
                Err(e) => break Err(format!("read: {e}")),
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    match load::complete_response(&got) {
                        Ok(Some((200, true, _))) => break Ok(()),
                        Ok(Some((status, keep_alive, _))) => {
                            break Err(format!("status {status}, keep-alive {keep_alive}"))
                        }
                        Ok(None) => {}
                        Err(()) => break Err("unparsable response".into()),
                    }
                }
            }
        };
        if let Err(e) = outcome {
            problem = Some(e);
            break;
        }
        held.push(s);
    }
    // Let the proxy settle its per-connection state after the last request.
    std::thread::sleep(Duration::from_millis(300));
    (held, problem)
}

/// A ringgate process with the bench's config.
pub struct RinggateProc {
    pub addr: SocketAddr,
    /// The `[server.tls]` listener, when started with certificates.
    pub tls_addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl RinggateProc {
    /// The bench's ringgate config: one worker, the chat route equivalent to nginx's location,
    /// and a `/probe/{probe}` route the reload scenario moves.
    pub fn config(
        port: u16,
        admin: u16,
        upstream_port: u16,
        probe: usize,
        tls_port: Option<u16>,
    ) -> String {
        let tls = tls_port
            .map(|p| {
                format!(
                    "\n[server.tls]\nlisten = \"127.0.0.1:{p}\"\ncert_file = \"tls.crt\"\nkey_file = \"tls.key\"\n"
                )
            })
            .unwrap_or_default();
        format!(
            r#"# Written by cargo xtask bench: the seed's chat location, one worker.
[server]
listen = "127.0.0.1:{port}"
workers = 1
max_connections = 20000
idle_timeout_ms = 300000
shutdown_grace_ms = 1000

[admin]
listen = "127.0.0.1:{admin}"

[upstreams.holy_sheep_chat]
url = "http://127.0.0.1:{upstream_port}"
keepalive = 64
keepalive_timeout_ms = 60000
keepalive_requests = 10000000
connect_timeout_ms = 10000

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
upstream = "holy_sheep_chat"
send_timeout_ms = 300000
read_timeout_ms = 300000
retry_on = ["error", "timeout", "http_502", "http_503", "http_504"]
tries = 3
retry_budget_ms = 30000

[[routes]]
name = "probe"
exact = "/probe/{probe}"
rewrite = "/probe"
upstream = "holy_sheep_chat"
{tls}"#
        )
    }

    /// Starts ringgate (named `ringgate` among `children`) with its config projected into
    /// `dir` as kubelet projects a ConfigMap.
    pub fn start(
        children: &mut Children,
        bin: &Path,
        dir: &Path,
        upstream_port: u16,
        core: usize,
        tls: Option<&tls::BenchTls>,
    ) -> Result<Self, String> {
        let port = sys::free_port().map_err(|e| e.to_string())?;
        let admin = sys::free_port().map_err(|e| e.to_string())?;
        let tls_port = match tls {
            Some(_) => Some(sys::free_port().map_err(|e| e.to_string())?),
            None => None,
        };
        // Mounted the way a pod gets it: a kubelet-projected ConfigMap directory (with the
        // certificate pair beside it, as a projected Secret would put it).
        let volume = ringgate_mock::kubelet::ProjectedVolume::new(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "gateway.toml".to_string(),
            Self::config(port, admin, upstream_port, 0, tls_port).into_bytes(),
        );
        if let Some(t) = tls {
            files.insert("tls.crt".to_string(), t.cert_pem.clone().into_bytes());
            files.insert("tls.key".to_string(), t.key_pem.clone().into_bytes());
        }
        volume
            .project(&files)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut me = Self::spawn(children, bin, dir, port, admin, core)?;
        me.tls_addr = tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        Ok(me)
    }

    /// Spawns ringgate on `config` (a file or a projected directory).
    pub fn spawn(
        children: &mut Children,
        bin: &Path,
        config: &Path,
        port: u16,
        admin: u16,
        core: usize,
    ) -> Result<Self, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .env("RINGGATE_LOG", "warn")
            .stdout(Stdio::null());
        sys::pin_command(&mut cmd, core);
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
        children.push("ringgate", child);
        let me = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_addr: None,
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        sys::wait_http(me.addr, "/health")?;
        Ok(me)
    }
}
