//! `cargo xtask demo`: builds ringgate and the mock provider, projects
//! configmaps/ringgate-config.yaml into target/demo/config exactly as kubelet projects a
//! ConfigMap (pointed at the local mock instead of the real provider), starts both, sends one
//! request through, prints what to curl, and re-projects the ConfigMap each time the file is
//! saved so a live reload happens the way it does in a pod. `--once` stops after the first
//! request (used by CI so the demo cannot rot).

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
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn arg(args: &[String], name: &str, default: u16) -> u16 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// Runs the demo; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let port = arg(args, "--port", 8080);
    let mock_port = arg(args, "--mock-port", 9000);
    let admin_port = arg(args, "--admin-port", 9901);
    let once = args.iter().any(|a| a == "--once");
    let root = root();
    println!("demo: building ringgate and the mock provider ...");
    let status = Command::new(env!("CARGO"))
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
    let demo_dir = target.join("demo");
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
    match Command::new(target.join("debug/mock_provider"))
        .args(["--listen", &format!("127.0.0.1:{mock_port}")])
        .spawn()
    {
        Ok(c) => children.0.push(c),
        Err(e) => {
            eprintln!("demo: cannot start the mock provider: {e}");
            return 1;
        }
    }
    match Command::new(target.join("debug/ringgate"))
        .arg("--config")
        .arg(&config_dir)
        .spawn()
    {
        Ok(c) => children.0.push(c),
        Err(e) => {
            eprintln!("demo: cannot start ringgate: {e}");
            return 1;
        }
    }
    if !wait_ready(port) {
        eprintln!("demo: ringgate did not become ready on 127.0.0.1:{port}");
        return 1;
    }
    let body = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    match http(port, &req) {
        Ok(r) => println!("demo: one chat completion through the gateway:\n{r}\n"),
        Err(e) => {
            eprintln!("demo: request through the gateway failed: {e}");
            return 1;
        }
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
        for c in &mut children.0 {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("demo: a child exited ({st}); stopping");
                return 1;
            }
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
