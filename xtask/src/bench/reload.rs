//! Scenario 3, reload under load: scenario 1's load runs against ringgate while its config
//! directory is re-projected the way kubelet updates a ConfigMap volume, each time moving
//! the `/probe/N` route. Counts failed requests and times `..data` rename -> first request
//! served by the new route.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use ringgate_mock::kubelet;

use super::load::{self, new_hist, Errors, LoadSpec};
use super::nginx::Nginx;
use super::sys::{self, Children, Cores};
use super::{report, RinggateProc, Settings};

/// What the scenario saw.
pub struct ReloadResult {
    pub reloads: usize,
    /// Config generations ringgate applied during the scenario (from /metrics).
    pub generations_applied: Option<u64>,
    /// Reloads ringgate rejected (from /metrics); a bench config is never invalid.
    pub rejected: Option<u64>,
    pub completed: u64,
    pub rps: f64,
    pub errors: Errors,
    /// `..data` rename -> first 200 from the new probe route, ns.
    pub to_serving: Histogram<u64>,
    /// Probes that saw neither 200 nor 404 (a failure), and reloads never seen within 5 s.
    pub probe_failures: u64,
    pub unseen: usize,
}

pub fn run(
    nginx: &Nginx,
    ringgate_bin: &Path,
    work: &Path,
    cores: Cores,
    s: &Settings,
    request: &Rc<Vec<u8>>,
) -> Result<ReloadResult, String> {
    let mut children = Children::default();
    let up_port = sys::free_port().map_err(|e| e.to_string())?;
    nginx.start_upstream(&mut children, "upstream-reload", up_port, cores.client)?;
    sys::wait_http(SocketAddr::from(([127, 0, 0, 1], up_port)), "/")?;
    let port = sys::free_port().map_err(|e| e.to_string())?;
    let admin = sys::free_port().map_err(|e| e.to_string())?;
    let volume =
        kubelet::ProjectedVolume::new(&work.join("reload-config")).map_err(|e| e.to_string())?;
    let project = |gen: usize, hook: &mut dyn FnMut(u8)| -> Result<bool, String> {
        let mut files = BTreeMap::new();
        files.insert(
            "gateway.toml".to_string(),
            RinggateProc::config(port, admin, up_port, gen, None).into_bytes(),
        );
        volume
            .project_with_hook(&files, hook)
            .map_err(|e| e.to_string())
    };
    project(0, &mut |_| {})?;
    let rg = RinggateProc::spawn(
        &mut children,
        ringgate_bin,
        volume.dir(),
        port,
        admin,
        cores.proxy,
    )?;
    let gen_before = metric(rg.admin, "ringgate_config_generation");
    let rejected_before = metric(
        rg.admin,
        "ringgate_config_reloads_total{result=\"rejected\"}",
    );

    // The load, on its own thread (pinned to the client core like this one).
    let stop = Arc::new(AtomicBool::new(false));
    let raw_request = (**request).clone();
    let (connections, warmup, addr) = (s.connections, s.warmup, rg.addr);
    let stop2 = stop.clone();
    let loader = std::thread::spawn(move || {
        load::run(&LoadSpec {
            addr,
            request: Rc::new(raw_request),
            connections,
            warmup,
            duration: Duration::from_secs(600),
            rate: None,
            stop: Some(stop2),
            tls: None,
        })
    });
    std::thread::sleep(s.warmup + Duration::from_millis(200));

    let mut to_serving = new_hist();
    let mut probe_failures = 0;
    let mut unseen = 0;
    let mut probe: Option<TcpStream> = None;
    for gen in 1..=s.reloads {
        if children.check_alive().is_err() {
            stop.store(true, Ordering::SeqCst);
            return Err("ringgate exited during the reload scenario".into());
        }
        let mut renamed = None;
        project(gen, &mut |step| {
            if step == 4 {
                renamed = Some(Instant::now());
            }
        })?;
        let renamed = renamed.ok_or("projection wrote nothing")?;
        let path = format!("/probe/{gen}");
        let mut seen = false;
        while renamed.elapsed() < Duration::from_secs(5) {
            match probe_once(&mut probe, rg.addr, &path) {
                Some(200) => {
                    let _ = to_serving.record((renamed.elapsed().as_nanos() as u64).max(1));
                    seen = true;
                    break;
                }
                Some(404) => std::thread::sleep(Duration::from_micros(200)),
                _ => {
                    probe_failures += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        if !seen {
            unseen += 1;
        }
        if gen % 10 == 0 || gen == s.reloads {
            progress!(
                "[3/4 reload {gen}/{}] rename -> serving p50 {}  max {}",
                s.reloads,
                report::fmt_ns(to_serving.value_at_quantile(0.5)),
                report::fmt_ns(to_serving.max())
            );
        }
        std::thread::sleep(Duration::from_millis(if s.quick { 20 } else { 50 }));
    }
    stop.store(true, Ordering::SeqCst);
    let result = loader
        .join()
        .map_err(|_| "load thread panicked".to_string())??;
    let gen_after = metric(rg.admin, "ringgate_config_generation");
    let rejected_after = metric(
        rg.admin,
        "ringgate_config_reloads_total{result=\"rejected\"}",
    );
    let rps = result.rps();
    progress!(
        "[3/4 reload] {} reloads under {:.0} req/s: failed requests {}",
        s.reloads,
        rps,
        result.errors.describe()
    );
    Ok(ReloadResult {
        reloads: s.reloads,
        generations_applied: gen_after.zip(gen_before).map(|(a, b)| (a - b) as u64),
        rejected: rejected_after
            .zip(rejected_before)
            .map(|(a, b)| (a - b) as u64),
        completed: result.completed,
        rps,
        errors: result.errors,
        to_serving,
        probe_failures,
        unseen,
    })
}

/// One `GET path` on a kept-alive probe connection (reconnecting when needed); the status.
fn probe_once(conn: &mut Option<TcpStream>, addr: SocketAddr, path: &str) -> Option<u16> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        *conn = Some(s);
    }
    let s = conn.as_mut()?;
    let mut keep = false;
    let status = (|| -> Option<u16> {
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").as_bytes())
            .ok()?;
        let mut got = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = sys::read_retry(s, &mut tmp).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&tmp[..n]);
            if let Ok(Some((status, keep_alive, _))) = load::complete_response(&got) {
                keep = keep_alive;
                return Some(status);
            }
        }
    })();
    if !keep {
        *conn = None;
    }
    status
}

/// A sample's value from ringgate's /metrics (`name` with its label set, exactly).
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = sys::http_get(admin, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}
