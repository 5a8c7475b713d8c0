//! Zero-restart reload end to end: configs projected exactly as kubelet's AtomicWriter does
//! into the directory the running gateway watches.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{request, wait_until, Conn, Driver, Gateway};
use ringgate_mock::MockProvider;

/// A config whose fallback route sends `/v1/*` to `target` with the path rewritten to
/// `/{tag}/...`, so every response tells which config served it.
fn config(target: &MockProvider, tag: &str, poll_ms: u64) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[reload]
debounce_ms = 50
poll_interval_ms = {poll_ms}

[upstreams.main]
url = "http://{addr}"

[[routes]]
name = "all"
prefix = "/v1/"
rewrite = "/{tag}/"
upstream = "main"
"#,
        addr = target.addr()
    )
}

/// The tag of the config that served a `/v1/echo` request.
fn served_by(gw: &Gateway) -> Option<String> {
    let r = request(
        gw.addr,
        "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .ok()?;
    if r.status != 200 {
        return None;
    }
    let path = r.json()["path"].as_str()?.to_string();
    path.trim_start_matches('/')
        .split('/')
        .next()
        .map(String::from)
}

/// The poll interval of the tests that check the digest dedupe: every 100 ms the watcher
/// re-reads the unchanged file, so a missing dedupe would reload (or reject) again and again.
const FAST_POLL_MS: u64 = 100;

#[test]
fn a_change_applies_and_identical_reapply_does_not() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "one", FAST_POLL_MS), Driver::IoUring);
    assert_eq!(served_by(&gw).as_deref(), Some("one"));
    assert_eq!(gw.metric("ringgate_config_generation"), Some(1.0));
    assert!(gw.project(&config(&a, "two", FAST_POLL_MS)));
    assert!(
        wait_until(Duration::from_secs(5), || served_by(&gw).as_deref()
            == Some("two")),
        "{}",
        gw.logs()
    );
    assert_eq!(gw.metric("ringgate_config_generation"), Some(2.0));
    let cfg = gw.admin_get("/config").json();
    assert_eq!(cfg["generation"], 2);
    assert_eq!(
        cfg["data_target"].as_str().map(String::from),
        gw.volume.data_target().ok()
    );
    assert_eq!(cfg["sha256"].as_str().map(str::len), Some(64));
    // kubelet writes nothing for identical bytes.
    assert!(!gw.project(&config(&a, "two", FAST_POLL_MS)));
    // A projection that swaps `..data` with the same gateway.toml (only an unrelated key
    // changed): the watcher sees the event and re-reads identical bytes.
    let mut files = BTreeMap::new();
    files.insert(
        "gateway.toml".to_string(),
        gw.render(&config(&a, "two", FAST_POLL_MS)).into_bytes(),
    );
    files.insert("unrelated.txt".to_string(), b"x".to_vec());
    assert!(gw.volume.project(&files).expect("project"));
    // Then a real change. Every re-read of identical bytes in between (the event above,
    // the 100 ms polls) would have counted a generation without the dedupe.
    assert!(gw.project(&config(&a, "three", FAST_POLL_MS)));
    assert!(
        wait_until(Duration::from_secs(5), || served_by(&gw).as_deref()
            == Some("three")),
        "{}",
        gw.logs()
    );
    assert_eq!(gw.metric("ringgate_config_generation"), Some(3.0));
    assert_eq!(
        gw.metric("ringgate_config_reloads_total{result=\"applied\"}"),
        Some(2.0)
    );
}

#[test]
fn rejected_configs_keep_the_old_one_serving_until_a_valid_one_arrives() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "good", FAST_POLL_MS), Driver::Epoll);
    let broken = [
        ("bad toml", "[server\nlisten = 1\n".to_string(), "line 1"),
        (
            "unknown key",
            config(&a, "x", 30_000).replace("[reload]", "[reload]\nbogus = 1"),
            "reload.bogus",
        ),
        (
            "missing upstream",
            config(&a, "x", 30_000).replace("upstream = \"main\"", "upstream = \"ghost\""),
            "routes[0].upstream",
        ),
        (
            "bad value",
            config(&a, "x", 30_000).replace("workers = 2", "workers = -3"),
            "server.workers",
        ),
        // An emptied ConfigMap key, or a config that lost its routes, would take every
        // route down: rejected like any broken config.
        ("empty file", String::new(), "the config is empty"),
        (
            "no routes",
            config(&a, "x", 30_000)
                .split("[[routes]]")
                .next()
                .unwrap_or_default()
                .to_string(),
            "no [[routes]]",
        ),
    ];
    for (i, (name, text, expect)) in broken.iter().enumerate() {
        assert!(gw.project(text));
        let want = (i + 1) as f64;
        assert!(
            wait_until(Duration::from_secs(5), || gw
                .metric("ringgate_config_reloads_total{result=\"rejected\"}")
                == Some(want)),
            "{name}: not rejected; {}",
            gw.logs()
        );
        assert_eq!(
            served_by(&gw).as_deref(),
            Some("good"),
            "{name}: the old config keeps serving"
        );
        assert_eq!(
            gw.metric("ringgate_config_last_reload_successful"),
            Some(0.0)
        );
        let cfg = gw.admin_get("/config").json();
        let msg = cfg["last_error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            msg.contains(expect),
            "{name}: /config last_error {msg:?} should name {expect}"
        );
        assert_eq!(cfg["generation"], 1);
    }
    assert!(
        gw.logs().contains("routes[0].upstream"),
        "the error is logged with its key path"
    );
    assert!(gw.project(&config(&a, "fixed", FAST_POLL_MS)));
    assert!(wait_until(Duration::from_secs(5), || served_by(&gw)
        .as_deref()
        == Some("fixed")));
    // Not retried while the bytes stayed the same: the 100 ms polls re-read each broken
    // config many times meanwhile, and each retry would have counted a rejection.
    assert_eq!(
        gw.metric("ringgate_config_reloads_total{result=\"rejected\"}"),
        Some(broken.len() as f64)
    );
    assert_eq!(
        gw.metric("ringgate_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(gw.metric("ringgate_config_generation"), Some(2.0));
}

/// Rolling back to the config that serves, after a rejected one, is a successful reload:
/// the alert clears, `/config` drops the stale error, and no new generation is made.
#[test]
fn rolling_back_to_the_serving_config_clears_the_failure() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let good = config(&a, "good", 30_000);
    let gw = Gateway::start(&good, Driver::IoUring);
    assert!(gw.project(&good.replace("upstream = \"main\"", "upstream = \"ghost\"")));
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .metric("ringgate_config_last_reload_successful")
            == Some(0.0)),
        "the broken config is rejected"
    );
    assert!(gw.admin_get("/config").json()["last_error"].is_object());
    assert!(gw.project(&good), "the rollback is projected");
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .metric("ringgate_config_last_reload_successful")
            == Some(1.0)),
        "the rollback clears the failure; log:\n{}",
        gw.logs()
    );
    let cfg = gw.admin_get("/config").json();
    assert!(cfg["last_error"].is_null(), "stale error: {cfg}");
    assert_eq!(cfg["generation"], 1, "same bytes: no new generation");
    assert_eq!(served_by(&gw).as_deref(), Some("good"));
    assert!(gw.logs().contains("rolled back"));
}

#[test]
fn three_swaps_inside_the_debounce_window_end_in_the_last() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "s0", 30_000), Driver::IoUring);
    for tag in ["s1", "s2", "s3"] {
        gw.project(&config(&a, tag, 30_000));
    }
    assert!(wait_until(Duration::from_secs(5), || served_by(&gw)
        .as_deref()
        == Some("s3")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_by(&gw).as_deref(), Some("s3"));
}

#[test]
fn a_key_added_and_removed_and_every_later_change_still_seen() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "k0", 30_000), Driver::IoUring);
    let mut files = BTreeMap::new();
    files.insert(
        "gateway.toml".to_string(),
        gw.render(&config(&a, "k1", 30_000)).into_bytes(),
    );
    files.insert("extra.txt".to_string(), b"hello".to_vec());
    assert!(gw.volume.project(&files).expect("project"));
    assert!(wait_until(Duration::from_secs(5), || served_by(&gw)
        .as_deref()
        == Some("k1")));
    files.remove("extra.txt");
    assert!(gw.volume.project(&files).expect("project"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_by(&gw).as_deref(), Some("k1"));
    // A watch on the file itself dies when kubelet deletes the old timestamped dir after the
    // first swap; the directory watch keeps seeing every change.
    for i in 2..7 {
        let tag = format!("k{i}");
        gw.project(&config(&a, &tag, 30_000));
        assert!(
            wait_until(Duration::from_secs(5), || served_by(&gw).as_deref()
                == Some(tag.as_str())),
            "change {i} not seen"
        );
    }
}

#[test]
fn lost_events_and_a_remounted_directory_are_caught_by_the_poll() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "p0", 500), Driver::IoUring);
    // Swap the whole mount for a new one: the inotify watch stays on the old inode, so only
    // the poll can notice.
    let dir = gw.volume.dir().to_path_buf();
    let aside = dir.with_extension("old");
    std::fs::rename(&dir, &aside).expect("unmount");
    let fresh = ringgate_mock::kubelet::ProjectedVolume::new(&dir).expect("remount");
    let mut files = BTreeMap::new();
    files.insert(
        "gateway.toml".to_string(),
        gw.render(&config(&a, "p1", 500)).into_bytes(),
    );
    fresh.project(&files).expect("project");
    assert!(
        wait_until(Duration::from_secs(8), || served_by(&gw).as_deref()
            == Some("p1")),
        "{}",
        gw.logs()
    );
    let _ = std::fs::remove_dir_all(aside);
}

#[test]
fn inflight_requests_finish_on_the_config_they_started_with() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&a, "old", 30_000), Driver::IoUring);
    let mut c = Conn::connect(gw.addr);
    let before = a.request_count();
    c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\nx-mock-delay-ms: 1000\r\n\r\n")
        .expect("send");
    // The provider has it (and answers in a second): it left on the old config. (Not the
    // in-flight gauge: a finished request's slot may not be released yet when its answer
    // is read.)
    assert!(wait_until(Duration::from_secs(10), || a.request_count() > before));
    gw.project(&config(&a, "new", 30_000));
    assert!(wait_until(Duration::from_secs(5), || served_by(&gw)
        .as_deref()
        == Some("new")));
    let r = c.read_response(false).expect("slow response");
    assert_eq!(r.status, 200);
    assert!(r.json()["path"].as_str().unwrap_or("").starts_with("/old/"));
}

/// 200 projected changes under a steady keep-alive load: zero failed requests, every change
/// seen serving. Prints the rename-to-serving latency (p50, max) for the record.
#[test]
fn two_hundred_changes_under_load_fail_nothing() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Arc::new(Gateway::start(&config(&a, "g0", 30_000), Driver::IoUring));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for _ in 0..2 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        loaders.push(std::thread::spawn(move || {
            let mut c = Conn::connect(gw.addr);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(240) {
                let res = c
                    .send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\n\r\n")
                    .and_then(|_| c.read_response(false));
                match res {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        c = Conn::connect(gw.addr);
                        0
                    }
                };
            }
        }));
    }
    let mut latencies = Vec::new();
    for i in 1..=200 {
        let tag = format!("g{i}");
        let text = gw.render(&config(&a, &tag, 30_000));
        let mut files = BTreeMap::new();
        files.insert("gateway.toml".to_string(), text.into_bytes());
        let mut renamed = None;
        gw.volume
            .project_with_hook(&files, &mut |step| {
                if step == 4 {
                    renamed = Some(Instant::now());
                }
            })
            .expect("project");
        let renamed = renamed.expect("step 4 ran");
        let mut seen = None;
        while renamed.elapsed() < Duration::from_secs(5) {
            if served_by(&gw).as_deref() == Some(tag.as_str()) {
                seen = Some(renamed.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(seen.unwrap_or_else(|| panic!("change {i} never served; {}", gw.logs())));
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    latencies.sort();
    println!(
        "reload: 200 changes, rename->serving p50 {:?} max {:?}; {} requests ok, {} failed",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 200);
    assert_eq!(gw.metric("ringgate_config_generation"), Some(201.0));
}

#[test]
fn pools_survive_a_reload_unless_their_upstream_changed() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let one_worker = |tag: &str, keepalive: u32| {
        config(&a, tag, 30_000)
            .replace("workers = 2", "workers = 1")
            .replace("url = ", &format!("keepalive = {keepalive}\nurl = "))
    };
    let gw = Gateway::start(&one_worker("r0", 8), Driver::IoUring);
    let mut c = Conn::connect(gw.addr);
    let get = |c: &mut Conn| {
        c.send(b"GET /v1/echo HTTP/1.1\r\nhost: gw\r\n\r\n")
            .expect("send");
        let r = c.read_response(false).expect("response");
        assert_eq!(r.status, 200);
        r.json()["path"].as_str().unwrap_or("").to_string()
    };
    get(&mut c);
    assert_eq!(a.connections_accepted(), 1);
    // Only a route changed: the upstream's pooled connection is reused.
    gw.project(&one_worker("r1", 8));
    assert!(wait_until(Duration::from_secs(5), || get(&mut c).starts_with("/r1/")));
    assert_eq!(
        a.connections_accepted(),
        1,
        "pool kept across a reload that left the upstream alone"
    );
    // The upstream's definition changed: a new pool, so a new connection.
    gw.project(&one_worker("r2", 9));
    assert!(wait_until(Duration::from_secs(5), || get(&mut c).starts_with("/r2/")));
    assert_eq!(
        a.connections_accepted(),
        2,
        "a changed upstream gets a new pool"
    );
}

#[test]
fn a_plain_file_config_warns_that_it_never_updates() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let dir = common::gateway::temp_dir("plain");
    let file = dir.join("gateway.toml");
    let text = common::gateway::render_any(&config(&a, "plain", 30_000));
    std::fs::write(&file, text).expect("write");
    let log = dir.join("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("--config")
        .arg(&file)
        .arg("--print-ports")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let ports = common::gateway::read_ports(
        child.stdout.take().expect("stdout"),
        Duration::from_secs(10),
    );
    let up = ports.as_ref().is_ok_and(|p| {
        wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(None))
                && request(
                    p.listen,
                    "GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
                )
                .is_ok_and(|r| r.status == 200)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "{ports:?}\n{logs}");
    assert!(logs.contains("no `..data` beside it"), "{logs}");
    // A local file's edits are seen: the warning must not claim otherwise.
    assert!(logs.contains("edits to it are picked up"), "{logs}");
    let _ = std::fs::remove_dir_all(dir);
}
