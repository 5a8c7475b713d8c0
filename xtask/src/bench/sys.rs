//! The machine side of the bench: CPU pinning, finding (or installing) nginx, child processes
//! that die with the bench, ports, readiness, RSS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The core the proxy under test is pinned to.
pub const PROXY_CORE: usize = 0;
/// The core the load client and the upstream share (on a machine with two or more).
pub const CLIENT_CORE: usize = 1;

/// The two cores the bench uses: the proxy gets `proxy`, the client and upstream share `client`
/// (performance.md: both proxies get the same share of the machine).
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    pub proxy: usize,
    pub client: usize,
}

impl Cores {
    /// Core 0 for the proxy and core 1 for the rest, or everything on core 0 (with a warning
    /// in the report) on a one-core machine.
    pub fn detect() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n >= 2 {
            Cores {
                proxy: 0,
                client: 1,
            }
        } else {
            Cores {
                proxy: 0,
                client: 0,
            }
        }
    }
}

/// Pins the calling thread to `core` (and, through inheritance, threads it spawns later).
pub fn pin_current_thread(core: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `cmd` start pinned to `core` (the child's every thread inherits it).
pub fn pin_command(cmd: &mut Command, core: usize) {
    // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
    // sched_setaffinity on a stack value.
    unsafe {
        cmd.pre_exec(move || pin_current_thread(core));
    }
}

/// Raises the open-files soft limit to the hard limit (many client connections).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit write and read a plain struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Child processes killed (and reaped) when the bench ends, however it ends.
#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    pub fn push(&mut self, name: &str, child: Child) {
        self.0.push((name.to_string(), child));
    }

    /// Fails when one of the children already exited (it would make every number wrong).
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (name, c) in &mut self.0 {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!("{name} exited unexpectedly ({st})"));
            }
        }
        Ok(())
    }

    /// The pid of the child called `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }
}

fn terminate(c: &mut Child) {
    // SIGTERM first so nginx's master takes its workers down with it.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            terminate(c);
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `GET path` on `addr` answers with any HTTP status (bounded: 20 s).
pub fn wait_http(addr: SocketAddr, path: &str) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        match http_get(addr, path) {
            Ok((status, _)) if status > 0 => return Ok(()),
            Ok(_) => last = "no status line".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{addr} did not answer GET {path} within 20 s: {last}"
    ))
}

/// One `GET` with `Connection: close`; returns (status, whole response text).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

/// Resident set size of `pid` and all its descendants, in KiB (from /proc).
pub fn rss_kib_tree(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += rss_kib(p);
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) used so far by `pid` and its live descendants, in seconds.
pub fn cpu_seconds_tree(pid: u32) -> f64 {
    let tck = {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    };
    let mut total = 0u64;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                total += get(11) + get(12);
            }
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total as f64 / tck
}

/// Finds nginx (PATH, /usr/sbin) or installs Debian's `nginx-light` with apt-get when
/// running as root. Returns the binary and a sentence saying what was done.
pub fn find_or_install_nginx() -> Result<(PathBuf, String), String> {
    if let Some(p) = find_nginx() {
        return Ok((p.clone(), format!("found {}", p.display())));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || which("apt-get").is_none() {
        return Err("nginx not found and cannot be installed here (needs root and apt-get): install Debian's nginx-light".into());
    }
    progress!("nginx not found; installing Debian's nginx-light with apt-get ...");
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let updated = quiet(Command::new("apt-get").args(["update", "-qq"]));
    let installed = quiet(Command::new("apt-get").args(["install", "-y", "-qq", "nginx-light"]))
        || quiet(Command::new("apt-get").args(["install", "-y", "-qq", "nginx"]));
    if !installed {
        return Err(format!(
            "apt-get install nginx-light failed (apt-get update ok: {updated})"
        ));
    }
    // Debian's package starts a system nginx on :80; the bench runs its own instances.
    let _ = Command::new("nginx")
        .args(["-s", "stop"])
        .stderr(Stdio::null())
        .status();
    find_nginx()
        .map(|p| {
            (
                p.clone(),
                format!("installed Debian's nginx-light ({})", p.display()),
            )
        })
        .ok_or_else(|| "nginx-light installed but no nginx binary found".into())
}

fn find_nginx() -> Option<PathBuf> {
    which("nginx").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.exists().then_some(p)
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `nginx -v`'s version string, for the report.
pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|| "nginx (unknown version)".into())
}

/// `read(2)` that retries when a signal interrupted it (std's `read` does not).
pub fn read_retry(s: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One core's CPU time counters from /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTicks {
    /// Idle and iowait: the core had nothing to run.
    pub idle: u64,
    /// Steal: the hypervisor ran someone else on it.
    pub steal: u64,
    pub total: u64,
}

impl CoreTicks {
    /// Share of `self - before` that was (busy, stolen).
    pub fn since(&self, before: &CoreTicks) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        ((total - idle - steal).max(0.0) / total, steal / total)
    }
}

/// The counters of `core` (zeros when /proc/stat is unreadable).
pub fn core_ticks(core: usize) -> CoreTicks {
    let prefix = format!("cpu{core} ");
    let Some(line) = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_string)
    }) else {
        return CoreTicks::default();
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    CoreTicks {
        idle: get(3) + get(4),
        steal: get(7),
        total: (0..8).map(get).sum(),
    }
}
