//! Scenario 5: what a `scope = "cluster"` limit adds to a request. One ringgate, two routes
//! to the same upstream that differ only in their limit's scope (`local`: the process-wide
//! GCRA; `cluster`: one `EVALSHA` to a `redis-server` on loopback per request), paced at one
//! moderate rate (a quarter of the common paced load, 200..2000 req/s), in rounds that
//! alternate the order. The added latency is the cluster route's
//! quantile minus the local route's, per round; CPU is the ringgate's and the Redis's per
//! request. Skipped (and said so in the report) when `redis-server` is not installed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::load::{self, LoadResult, LoadSpec};
use super::sys::{self, Children, Cores};
use super::Settings;

/// One paced run of one route.
pub struct ClusterRun {
    /// `local` or `cluster`.
    pub scope: &'static str,
    pub result: LoadResult,
    /// ringgate's CPU seconds over the run.
    pub gateway_cpu: f64,
    /// redis-server's CPU seconds over the run.
    pub redis_cpu: f64,
}

/// The scenario's outcome.
pub struct ClusterResult {
    /// The paced rate, req/s.
    pub rate: f64,
    pub runs: Vec<ClusterRun>,
    /// Store calls that failed (timeouts, errors) during the cluster runs: fallbacks would
    /// make the cluster numbers the local limiter's.
    pub store_failures: f64,
    pub redis_version: String,
}

impl ClusterResult {
    /// The quantile's added latency per round (cluster − local), ns; rounds pair the runs
    /// in the order they ran.
    pub fn added(&self, q: f64) -> Vec<i64> {
        let of = |scope: &str| -> Vec<u64> {
            self.runs
                .iter()
                .filter(|r| r.scope == scope)
                .map(|r| r.result.hist.value_at_quantile(q))
                .collect()
        };
        of("cluster")
            .iter()
            .zip(of("local"))
            .map(|(c, l)| *c as i64 - l as i64)
            .collect()
    }

    /// CPU µs per request of `scope`'s runs: (gateway, redis).
    pub fn cpu_us(&self, scope: &str) -> (f64, f64) {
        let runs: Vec<&ClusterRun> = self.runs.iter().filter(|r| r.scope == scope).collect();
        let n: u64 = runs.iter().map(|r| r.result.all_completed).sum();
        let per = |f: &dyn Fn(&ClusterRun) -> f64| {
            runs.iter().map(|r| f(r)).sum::<f64>() / (n.max(1) as f64) * 1e6
        };
        (per(&|r| r.gateway_cpu), per(&|r| r.redis_cpu))
    }
}

fn config(port: u16, admin: u16, upstream_port: u16, redis_port: u16) -> String {
    let route = |scope: &str| {
        format!(
            "[limits.{scope}]\nrate_per_second = 1000000.0\nburst = 1000000\nkey = \"client_ip\"\nnodelay = true\nscope = \"{scope}\"\n\n\
             [[routes]]\nname = \"chat_{scope}\"\nprefix = \"/{scope}/v1/chat/completions\"\nrewrite = \"/chat/completions\"\n\
             upstream = \"chat\"\nlimit = \"{scope}\"\n\n"
        )
    };
    format!(
        "# Written by cargo xtask bench (cluster limits): two routes, one limit scope each.\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nmax_connections = 20000\nidle_timeout_ms = 300000\nshutdown_grace_ms = 1000\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [upstreams.chat]\nurl = \"http://127.0.0.1:{upstream_port}\"\nkeepalive = 64\nkeepalive_requests = 10000000\n\n\
         [cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}\"\ntimeout_ms = 50\n\n{}{}",
        route("local"),
        route("cluster")
    )
}

/// `GET /metrics` value of a plain sample line `name value`.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the scenario, or returns why it was skipped.
pub fn run(
    nginx: &super::nginx::Nginx,
    ringgate_bin: &Path,
    work: &Path,
    cores: Cores,
    settings: &Settings,
    rate: f64,
) -> Result<Result<ClusterResult, String>, String> {
    let version = match Command::new("redis-server").arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            let why = "redis-server is not installed (apt-get install redis-server): the cluster-limits path was not measured".to_string();
            progress!("[5/5 cluster limits] skipped: {why}");
            return Ok(Err(why));
        }
    };
    let mut children = Children::default();
    let up_port = sys::free_port().map_err(|e| e.to_string())?;
    nginx.start_upstream(&mut children, "upstream", up_port, cores.client)?;
    let redis_port = sys::free_port().map_err(|e| e.to_string())?;
    let dir = work.join("cluster");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The store runs on the proxy's core: the client's is saturated by the load client and
    // the upstream (a store queued behind them measures the host, not the round trip),
    // while ringgate at this rate leaves its core mostly idle, and idle exactly while it
    // waits for the store's answer. Its CPU is reported on its own.
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null());
    sys::pin_command(&mut cmd, cores.proxy);
    children.push(
        "redis",
        cmd.spawn().map_err(|e| format!("redis-server: {e}"))?,
    );
    let start = Instant::now();
    while !redis_ping(redis_port) {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "redis-server did not answer on 127.0.0.1:{redis_port}"
            ));
        }
        children.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = sys::free_port().map_err(|e| e.to_string())?;
    let admin_port = sys::free_port().map_err(|e| e.to_string())?;
    // Projected like a ConfigMap, as the other scenarios' config is.
    let config = dir.join("config");
    let volume = ringgate_mock::kubelet::ProjectedVolume::new(&config)
        .map_err(|e| format!("{}: {e}", config.display()))?;
    volume
        .project(&std::collections::BTreeMap::from([(
            "gateway.toml".to_string(),
            self::config(port, admin_port, up_port, redis_port).into_bytes(),
        )]))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    // Its own list, declared after the store's: dropped (stopped) first, so it never sees
    // its Redis go away.
    let mut gateway = Children::default();
    let rg = super::RinggateProc::spawn(
        &mut gateway,
        ringgate_bin,
        &config,
        port,
        admin_port,
        cores.proxy,
    )?;
    let start = Instant::now();
    while metric(rg.admin, "ringgate_cluster_store_up") != Some(1.0) {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("the bench's ringgate never connected to its redis-server".into());
        }
        gateway.check_alive()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let request = |scope: &str| {
        let r = load::chat_request("bench");
        let text = String::from_utf8_lossy(&r).replacen(
            "POST /v1/chat/completions",
            &format!("POST /{scope}/v1/chat/completions"),
            1,
        );
        Rc::new(text.into_bytes())
    };
    let requests = [("local", request("local")), ("cluster", request("cluster"))];
    let (gw_pid, redis_pid) = (gateway.pid("ringgate"), children.pid("redis"));
    // Well below the proxy's capacity, unlike the common paced load: the store shares the
    // proxy's core, and what is measured is a request's added round trip, not queueing on
    // a saturated core.
    let rate = (rate * 0.25).clamp(200.0, 2000.0);
    let failures_before = store_failures(rg.admin);
    let mut runs = Vec::new();
    for round in 0..settings.rounds {
        for k in 0..2 {
            let (scope, req) = &requests[(round + k) % 2];
            children.check_alive()?;
            gateway.check_alive()?;
            let spec = LoadSpec {
                addr: rg.addr,
                request: req.clone(),
                connections: settings.connections,
                warmup: settings.warmup,
                duration: settings.duration,
                rate: Some(rate),
                stop: None,
                tls: None,
            };
            let cpu = |pid: Option<u32>| pid.map_or(0.0, sys::cpu_seconds_tree);
            let (g0, r0) = (cpu(gw_pid), cpu(redis_pid));
            let result = load::run(&spec)?;
            let (g1, r1) = (cpu(gw_pid), cpu(redis_pid));
            progress!(
                "[5/5 cluster limits] round {} {:<7} at {:.0} req/s: p50 {}  p99 {}  errors {}",
                round + 1,
                scope,
                rate,
                super::report::fmt_ns(result.hist.value_at_quantile(0.5)),
                super::report::fmt_ns(result.hist.value_at_quantile(0.99)),
                result.errors.describe()
            );
            runs.push(ClusterRun {
                scope,
                result,
                gateway_cpu: g1 - g0,
                redis_cpu: r1 - r0,
            });
        }
    }
    let store_failures = store_failures(rg.admin) - failures_before;
    Ok(Ok(ClusterResult {
        rate,
        runs,
        store_failures,
        redis_version: version,
    }))
}

/// Whether a Redis answers PING on `port`.
fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
        && s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && &buf == b"+PONG\r\n"
}

/// Store calls that did not get an answer (each fell back to the local limiter).
fn store_failures(admin: SocketAddr) -> f64 {
    ["timeout", "error", "not_connected", "breaker_open"]
        .iter()
        .filter_map(|r| {
            metric(
                admin,
                &format!("ringgate_cluster_calls_total{{result=\"{r}\"}}"),
            )
        })
        .sum()
}
