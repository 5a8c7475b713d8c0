//! `cargo xtask demo`: builds ringgate and the mock provider, projects
//! configmaps/ringgate-config.yaml into target/demo/config exactly as kubelet projects a
//! ConfigMap (pointed at the local mock instead of the real provider), starts both, sends one
//! request through, prints what to curl, and re-projects the ConfigMap each time the file is
//! saved so a live reload happens the way it does in a pod. `--once` stops after the first
//! request (used by CI so the demo cannot rot).
//!
//! It reports success only for its own processes: every port is checked free before anything
//! starts (a busy one is an error naming the flag to change), the children must still be
//! running after the request went through, and each demo keeps its state in a directory of
//! its own (`target/demo/<port>`). The children die with the demo whatever stops it
//! (`PR_SET_PDEATHSIG`: Ctrl-C, SIGTERM, SIGHUP, a closed terminal, even SIGKILL).
//!
//! When `redis-server` is installed it also shows cluster-scoped limits: a private Redis on
//! an ephemeral loopback port, two more gateway processes sharing it with one
//! `scope = "cluster"` limit, and requests alternating between them that together get what
//! one gateway would give (without `redis-server` it says so and skips that part).

use ringgate_mock::kubelet;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        // Last started, first stopped: the gateways before what they depend on.
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `cargo xtask demo --help`.
pub const USAGE: &str =
    "usage: cargo xtask demo [--port N] [--mock-port N] [--admin-port N] [--once]

Runs the mock provider and the gateway on configmaps/ringgate-config.yaml (projected into
target/demo/<port> the way kubelet projects a ConfigMap), sends one chat completion
through, prints what to try, and re-projects the ConfigMap each time you save it.
With redis-server installed it first shows one scope = \"cluster\" limit shared by two
more gateways through a private Redis on an ephemeral loopback port (skipped, saying so,
without it).

  --port N        the gateway's client port (default 8080)
  --mock-port N   the mock provider's port (default 9000)
  --admin-port N  the gateway's admin port: /metrics /config /ready (default 9901)
  --once          stop after the first request (CI runs this)
  -h, --help      this text (nothing is built)";

/// The demo's settings.
#[derive(Debug, PartialEq)]
struct Options {
    port: u16,
    mock_port: u16,
    admin_port: u16,
    once: bool,
}

/// Parses the demo's flags: `--flag value` or `--flag=value`; anything else is an error.
fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        port: 8080,
        mock_port: 9000,
        admin_port: 9901,
        once: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut port = |name: &str| -> Result<u16, String> {
            let v = inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a port number"))?;
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{name} {v}: not a port number (1-65535)"))
        };
        match flag {
            "--port" => o.port = port("--port")?,
            "--mock-port" => o.mock_port = port("--mock-port")?,
            "--admin-port" => o.admin_port = port("--admin-port")?,
            "--once" if inline.is_none() => o.once = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let ports = [o.port, o.mock_port, o.admin_port];
    if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
        return Err(format!("the three ports must differ: {ports:?}"));
    }
    Ok(Some(o))
}

/// Fails when `port` is taken on the loopback address the demo binds, naming the flag.
fn check_free(port: u16, flag: &str) -> Result<(), String> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            format!("port {port} is not free ({e}): another demo or service holds it; choose another with {flag} N")
        })
}

/// A child process that dies with the demo, whatever stops the demo.
fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure only makes that one call between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ConfigMap's gateway.toml with the provider swapped for the local mock.
fn render(
    manifest: &Path,
    port: u16,
    mock_port: u16,
    admin_port: u16,
    key_file: &Path,
) -> Result<String, String> {
    let yaml =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let toml = ringgate::config::toml_from_configmap_yaml(&yaml)
        .ok_or_else(|| format!("{}: no `gateway.toml: |` key", manifest.display()))?;
    let mut out = String::new();
    for line in toml.lines() {
        let t = line.trim_start();
        let replaced = if t.starts_with("url = \"https://api.holysheep.ai") {
            format!("url = \"http://127.0.0.1:{mock_port}/v1\"")
        } else if t.starts_with("api_key_file") {
            format!("api_key_file = \"{}\"", key_file.display())
        } else if t.starts_with("listen = \"0.0.0.0:8080\"") {
            format!("listen = \"127.0.0.1:{port}\"")
        } else if t.starts_with("listen = \"0.0.0.0:9901\"") {
            format!("listen = \"127.0.0.1:{admin_port}\"")
        } else if t.starts_with("trusted_proxies") {
            "trusted_proxies = [\"127.0.0.1\"]".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    Ok(out)
}

fn http(port: u16, req: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn wait_ready(port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = http(
            port,
            "GET /health HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n",
        ) {
            if r.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Whether every child still runs (one that exited is reported).
fn children_alive(children: &mut Children) -> bool {
    for c in &mut children.0 {
        if let Ok(Some(st)) = c.try_wait() {
            eprintln!("demo: a child process exited ({st}); stopping");
            return false;
        }
    }
    true
}

/// A port the kernel had free a moment ago (for the cluster part's private processes).
fn ephemeral_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The cluster part's burst and rate: small, so the shared limit shows in a few requests.
const CLUSTER_BURST: u32 = 4;
const CLUSTER_RATE: f64 = 0.5;
const CLUSTER_REQUESTS: usize = 12;

/// Two gateways sharing one `scope = "cluster"` limit through a private `redis-server`:
/// requests alternate between them, and together they admit what one would. Skipped,
/// saying so, when `redis-server` is not installed; its processes end before it returns.
fn cluster_demo(target: &Path, demo_dir: &Path, mock_port: u16) -> Result<(), String> {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_err()
    {
        println!("demo: redis-server is not installed, so the cluster-limits part is skipped (apt-get install redis-server to see one limit shared by two gateways).");
        return Ok(());
    }
    let redis_port = ephemeral_port()?;
    let redis_dir = demo_dir.join("redis");
    std::fs::create_dir_all(&redis_dir).map_err(|e| e.to_string())?;
    let mut children = Children(Vec::new());
    let redis = spawn_tied(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&redis_dir)
            .stdout(std::process::Stdio::null()),
    )
    .map_err(|e| format!("cannot start redis-server: {e}"))?;
    children.0.push(redis);
    let start = Instant::now();
    let ping = || -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", redis_port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    };
    while !ping() {
        if start.elapsed() > Duration::from_secs(10) || !children_alive(&mut children) {
            return Err(format!(
                "redis-server did not answer on 127.0.0.1:{redis_port}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut gateways = Vec::new();
    for name in ["A", "B"] {
        let (port, admin) = (ephemeral_port()?, ephemeral_port()?);
        let dir = demo_dir.join(format!("cluster-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [upstreams.mock]\nurl = \"http://127.0.0.1:{mock_port}\"\n\n\
             [cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}\"\ntimeout_ms = 100\n\n\
             [limits.shared]\nrate_per_second = {CLUSTER_RATE}\nburst = {CLUSTER_BURST}\nkey = \"header:x-user\"\nscope = \"cluster\"\n\n\
             [[routes]]\nname = \"limited\"\nprefix = \"/v1/\"\nupstream = \"mock\"\nlimit = \"shared\"\n"
        );
        std::fs::write(dir.join("gateway.toml"), config).map_err(|e| e.to_string())?;
        // Their logs go to a file beside their config (the demo's own output stays short).
        let log = std::fs::File::create(dir.join("ringgate.log")).map_err(|e| e.to_string())?;
        let child = spawn_tied(
            Command::new(target.join("debug/ringgate"))
                .arg("--config")
                .arg(dir.join("gateway.toml"))
                .stdout(std::process::Stdio::null())
                .stderr(log),
        )
        .map_err(|e| format!("cannot start ringgate: {e}"))?;
        children.0.push(child);
        gateways.push((name, port, admin));
    }
    for &(name, port, admin) in &gateways {
        let start = Instant::now();
        loop {
            let up = http(
                admin,
                "GET /metrics HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n",
            )
            .is_ok_and(|m| m.lines().any(|l| l == "ringgate_cluster_store_up 1"));
            if up {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) || !children_alive(&mut children) {
                return Err(format!(
                    "gateway {name} (127.0.0.1:{port}) never reached the Redis"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("demo: cluster limits: two gateways (A, B) share limit `shared` (rate {CLUSTER_RATE}/s, burst {CLUSTER_BURST}, scope = \"cluster\") through redis-server on 127.0.0.1:{redis_port}; {CLUSTER_REQUESTS} requests from one client, alternating:");
    let started = Instant::now();
    let mut line = String::new();
    let mut admitted: usize = 0;
    for i in 0..CLUSTER_REQUESTS {
        let (name, port, _) = gateways[i % 2];
        let r = http(
            port,
            "GET /v1/echo HTTP/1.1\r\nhost: demo\r\nx-user: demo-client\r\nconnection: close\r\n\r\n",
        )
        .map_err(|e| format!("gateway {name}: {e}"))?;
        let status = r.get(9..12).unwrap_or("???").to_string();
        match status.as_str() {
            "200" => admitted += 1,
            "429" => {}
            other => return Err(format!("gateway {name} answered {other}:\n{r}")),
        }
        line.push_str(&format!(" {name}:{status}"));
    }
    let elapsed = started.elapsed();
    let one = CLUSTER_BURST as usize + 1 + (elapsed.as_secs_f64() * CLUSTER_RATE).floor() as usize;
    println!("  {}", line.trim_start());
    println!("  admitted {admitted} of {CLUSTER_REQUESTS} in {:.0} ms: what ONE gateway admits (burst + 1 = {one}), not two gateways' worth ({}); per-pod limits would have let {} through.", elapsed.as_secs_f64() * 1e3, 2 * one, 2 * one);
    if admitted.abs_diff(one) > 1 {
        return Err(format!(
            "the two gateways admitted {admitted}, one would admit {one}"
        ));
    }
    if !children_alive(&mut children) {
        return Err("a cluster-demo process exited".into());
    }
    println!(
        "  (their logs: {}/cluster-{{A,B}}/ringgate.log; both stop now)",
        demo_dir.display()
    );
    Ok(())
}

/// Runs the demo; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let Options {
        port,
        mock_port,
        admin_port,
        once,
    } = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            let _ =
                std::io::Write::write_all(&mut std::io::stdout(), format!("{USAGE}\n").as_bytes());
            return 0;
        }
        Err(e) => {
            eprintln!("demo: {e}\n{USAGE}");
            return 2;
        }
    };
    for (p, flag) in [
        (port, "--port"),
        (mock_port, "--mock-port"),
        (admin_port, "--admin-port"),
    ] {
        if let Err(e) = check_free(p, flag) {
            eprintln!("demo: {e}");
            return 1;
        }
    }
    let root = root();
    println!("demo: building ringgate and the mock provider (cargo build, debug) ...");
    let status = crate::cargo()
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "ringgate",
            "--bin",
            "ringgate",
            "-p",
            "ringgate-mock",
            "--bin",
            "mock_provider",
        ])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("demo: build failed");
        return 1;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // One directory per demo: two demos on different ports never share a projection.
    let demo_dir = target.join("demo").join(port.to_string());
    let config_dir = demo_dir.join("config");
    let _ = std::fs::remove_dir_all(&demo_dir);
    let secrets = demo_dir.join("secrets");
    if let Err(e) = std::fs::create_dir_all(&secrets)
        .and_then(|_| std::fs::write(secrets.join("api-key"), "demo-provider-key\n"))
    {
        eprintln!("demo: {e}");
        return 1;
    }
    let manifest = root.join("configmaps/ringgate-config.yaml");
    let volume = match kubelet::ProjectedVolume::new(&config_dir) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("demo: {e}");
            return 1;
        }
    };
    let project = |volume: &kubelet::ProjectedVolume| -> Result<bool, String> {
        let text = render(
            &manifest,
            port,
            mock_port,
            admin_port,
            &secrets.join("api-key"),
        )?;
        let mut files = BTreeMap::new();
        files.insert("gateway.toml".to_string(), text.into_bytes());
        volume.project(&files).map_err(|e| e.to_string())
    };
    if let Err(e) = project(&volume) {
        eprintln!("demo: {e}");
        return 1;
    }
    let mut children = Children(Vec::new());
    println!("demo: starting the mock provider on 127.0.0.1:{mock_port} and ringgate on 127.0.0.1:{port} ...");
    match spawn_tied(Command::new(target.join("debug/mock_provider")).args([
        "--listen",
        &format!("127.0.0.1:{mock_port}"),
        // Spaced SSE events, so streaming is visible with curl -N.
        "--chunk-interval-ms",
        "150",
    ])) {
        Ok(c) => children.0.push(c),
        Err(e) => {
            eprintln!("demo: cannot start the mock provider: {e}");
            return 1;
        }
    }
    match spawn_tied(
        Command::new(target.join("debug/ringgate"))
            .arg("--config")
            .arg(&config_dir),
    ) {
        Ok(c) => children.0.push(c),
        Err(e) => {
            eprintln!("demo: cannot start ringgate: {e}");
            return 1;
        }
    }
    if !wait_ready(port) || !children_alive(&mut children) {
        eprintln!("demo: ringgate did not become ready on 127.0.0.1:{port}");
        return 1;
    }
    let body = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    match http(port, &req) {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {
            println!("demo: one chat completion through the gateway:\n{r}\n")
        }
        Ok(r) => {
            eprintln!("demo: the gateway answered, but not 200:\n{r}");
            return 1;
        }
        Err(e) => {
            eprintln!("demo: request through the gateway failed: {e}");
            return 1;
        }
    }
    // The answers above must have come from this demo's processes.
    if !children_alive(&mut children) {
        return 1;
    }
    if let Err(e) = cluster_demo(&target, &demo_dir, mock_port) {
        eprintln!("demo: cluster limits: {e}");
        return 1;
    }
    println!("ringgate is serving on http://127.0.0.1:{port} (admin http://127.0.0.1:{admin_port}), mock provider on :{mock_port}.");
    println!("Try:");
    println!("  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' -d '{body}'");
    println!("  curl -sN http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    println!("  curl -s http://127.0.0.1:{port}/v1/models");
    println!("  curl -s http://127.0.0.1:{admin_port}/config");
    println!("  curl -s http://127.0.0.1:{admin_port}/metrics | grep ringgate_config");
    println!(
        "Edit and save {} to see a live reload (kubelet-style projection into {}). Ctrl-C stops.",
        manifest.display(),
        config_dir.display()
    );
    if once {
        return 0;
    }
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let mut seen = mtime(&manifest);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if !children_alive(&mut children) {
            return 1;
        }
        let now = mtime(&manifest);
        if now != seen {
            seen = now;
            match project(&volume) {
                Ok(true) => println!("demo: re-projected the ConfigMap (..data -> {}); watch ringgate_config_generation", volume.data_target().unwrap_or_default()),
                Ok(false) => println!("demo: ConfigMap saved unchanged; kubelet writes nothing"),
                Err(e) => eprintln!("demo: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        let ok = |s: &str| parse(&args(s)).expect(s).expect(s);
        assert_eq!(ok("").port, 8080);
        let o = ok("--port 18080 --mock-port=19000 --admin-port 19901 --once");
        assert_eq!(
            o,
            Options {
                port: 18080,
                mock_port: 19000,
                admin_port: 19901,
                once: true
            }
        );
        assert_eq!(parse(&args("--help")), Ok(None));
        for bad in [
            "--port 22abc",
            "--port",
            "--port 0",
            "--port 70000",
            "--bogus",
            "--once=1",
            "--port 9000",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad} accepted");
        }
    }

    /// The children of a demo die with it: `PR_SET_PDEATHSIG` fires when the thread that
    /// spawned them ends (the demo spawns them from its main thread, which ends with it).
    #[test]
    fn tied_children_die_with_their_parent() {
        let child = std::thread::spawn(|| spawn_tied(Command::new("sleep").arg("30")))
            .join()
            .expect("spawner")
            .expect("sleep");
        let mut child = child;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = status.expect("the child outlived its parent");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_busy_port_is_named_with_its_flag() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let err = check_free(port, "--mock-port").expect_err("busy");
        assert!(
            err.contains(&port.to_string()) && err.contains("--mock-port"),
            "{err}"
        );
        drop(held);
        assert!(check_free(port, "--port").is_ok());
    }
}
