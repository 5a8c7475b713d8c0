//! The zero-restart path of a Kubernetes deployment, end to end without a cluster: the
//! shipped ConfigMap (configmaps/ringgate-config.yaml) is pointed at the mock provider and
//! projected exactly as kubelet projects a ConfigMap volume into the directory a running
//! gateway watches; then an edited ConfigMap (a new route, a tightened rate limit) is
//! projected the same way, as `kubectl apply` + the kubelet sync would. The new route and the
//! new limit serve, the process id is the same, and a steady client loop running through the
//! change sees no failed request.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{request, Driver, Gateway, Response};
use ringgate_mock::MockProvider;

/// The manifest's gateway.toml as a harness template: provider → the mock, key file → a temp
/// file, listeners → `{listen}`/`{admin}` (free loopback ports), trusted proxies → loopback.
/// Each replacement must happen, so a reshaped manifest fails here rather than silently.
fn template_from_manifest(manifest_yaml: &str, mock: SocketAddr, key_file: &Path) -> String {
    let toml =
        ringgate::config::toml_from_configmap_yaml(manifest_yaml).expect("gateway.toml: | key");
    let mut hits = [0usize; 5];
    let mut out = String::new();
    for line in toml.lines() {
        let t = line.trim_start();
        let replaced = if t.starts_with("url = \"https://api.holysheep.ai") {
            hits[0] += 1;
            format!("url = \"http://{mock}/v1\"")
        } else if t.starts_with("api_key_file") {
            hits[1] += 1;
            format!("api_key_file = \"{}\"", key_file.display())
        } else if t.starts_with("listen = \"0.0.0.0:8080\"") {
            hits[2] += 1;
            "listen = \"{listen}\"".to_string()
        } else if t.starts_with("listen = \"0.0.0.0:9901\"") {
            hits[3] += 1;
            "listen = \"{admin}\"".to_string()
        } else if t.starts_with("trusted_proxies") {
            hits[4] += 1;
            "trusted_proxies = [\"127.0.0.1\"]".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    assert!(
        hits.iter().all(|&n| n == 1),
        "manifest changed shape: {hits:?}"
    );
    out
}

/// The user's edit: `[limits.general]` tightened to 1/s with a burst of 1, and a new route.
fn edited(template: &str) -> String {
    let mut out = String::new();
    let mut section = String::new();
    let mut changed = 0;
    for line in template.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        }
        if section == "[limits.general]" && t.starts_with("rate_per_second") {
            out.push_str("rate_per_second = 1\n");
            changed += 1;
        } else if section == "[limits.general]" && t.starts_with("burst") {
            out.push_str("burst = 1\n");
            changed += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(changed, 2, "no [limits.general] rate/burst to edit");
    out.push_str(
        "\n[[routes]]\nname = \"k8s-new\"\nprefix = \"/v1/k8s/\"\nrewrite = \"/k8s-new/\"\nupstream = \"holysheep\"\n",
    );
    out
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<Response> {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The upstream path the mock saw for `GET /v1/k8s/echo`.
fn k8s_echo_path(gw: &Gateway) -> Option<String> {
    let r = get(gw.addr, "/v1/k8s/echo").ok()?;
    (r.status == 200).then(|| r.json()["path"].as_str().map(String::from))?
}

/// Statuses of `n` back-to-back embeddings requests.
fn embeddings_burst(gw: &Gateway, n: usize) -> Vec<Response> {
    let body = r#"{"model":"text-embedding-3-small","input":"hi"}"#;
    (0..n)
        .map(|_| post(gw.addr, "/v1/embeddings", body).expect("embeddings request"))
        .collect()
}

#[test]
fn configmap_edit_applies_without_restart_or_failed_requests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("configmaps/ringgate-config.yaml"))
        .expect("configmaps/ringgate-config.yaml");
    let mock = MockProvider::start("127.0.0.1:0").expect("mock provider");
    let secrets = common::gateway::temp_dir("k8s-secrets");
    let key_file = secrets.join("api-key");
    std::fs::write(&key_file, "test-provider-key\n").expect("key file");
    let v1 = template_from_manifest(&manifest, mock.addr(), &key_file);

    // Generation 1: the manifest as shipped.
    let mut gw = Gateway::start(&v1, Driver::IoUring);
    assert_eq!(gw.metric("ringgate_config_generation"), Some(1.0));
    assert_eq!(
        k8s_echo_path(&gw).as_deref(),
        Some("/v1/k8s/echo"),
        "before the edit /v1/k8s/ falls to the fallback route"
    );
    let before = embeddings_burst(&gw, 5);
    assert!(
        before.iter().all(|r| r.status == 200),
        "{:?}",
        before.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let chat = post(
        gw.addr,
        "/v1/chat/completions",
        r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .expect("chat");
    assert_eq!(chat.status, 200, "{}", chat.text());
    let upstream_auth = mock
        .requests()
        .last()
        .and_then(|r| r.header("authorization").map(String::from));
    assert_eq!(upstream_auth.as_deref(), Some("Bearer test-provider-key"));

    // A steady client through the change: bounded by a flag, a deadline and a count.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, ok, addr) = (stop.clone(), ok.clone(), gw.addr);
        std::thread::spawn(move || {
            let body = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"steady"}]}"#;
            let start = Instant::now();
            let mut failures = Vec::new();
            for i in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(30) {
                    break;
                }
                match post(addr, "/v1/chat/completions", body) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("#{i}: status {} {}", r.status, r.text())),
                    Err(e) => failures.push(format!("#{i}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failures
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ok_before_edit = ok.load(Ordering::Relaxed);

    // Generation 2: the edited ConfigMap, projected as kubelet does (new ..<timestamp> dir,
    // ..data swapped by rename, old dir removed).
    assert!(gw.project(&edited(&v1)), "kubelet wrote nothing");
    let start = Instant::now();
    let mut path = None;
    while start.elapsed() < Duration::from_secs(10) {
        path = k8s_echo_path(&gw);
        if path.as_deref() == Some("/v1/k8s-new/echo") {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        path.as_deref(),
        Some("/v1/k8s-new/echo"),
        "the new route never served; log:\n{}",
        gw.logs()
    );
    // Let the client run on the new generation for a while too.
    let seen = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < seen + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().expect("client thread");
    let total_ok = ok.load(Ordering::Relaxed);
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(
        ok_before_edit >= 20 && total_ok >= ok_before_edit + 20,
        "client barely ran: {ok_before_edit} then {total_ok}"
    );

    // The tightened limit serves: 1/s with a burst of 1, so a quick burst of 5 is refused
    // after the first two, with Retry-After.
    let after = embeddings_burst(&gw, 5);
    let statuses: Vec<u16> = after.iter().map(|r| r.status).collect();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    let refused: Vec<&Response> = after.iter().filter(|r| r.status == 429).collect();
    assert!(refused.len() >= 2, "{statuses:?}");
    assert!(refused.iter().all(|r| r.header("retry-after").is_some()));

    // Same process, one more generation, the reload counted as applied: the child never
    // exited, and a restarted gateway would count its generations from 1 again.
    assert!(gw.is_running(), "gateway process gone; log:\n{}", gw.logs());
    assert_eq!(gw.metric("ringgate_config_generation"), Some(2.0));
    assert_eq!(
        gw.metric("ringgate_config_last_reload_successful"),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(secrets);
}
