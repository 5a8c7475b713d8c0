//! The admin listener: `/metrics`, `/health`, `/ready`, `/config`, `/stats`. Blocking std
//! I/O off the workers' event loops, one short request per connection, each connection on
//! its own short-lived thread (at most [`MAX_CONCURRENT`]) under a whole-request deadline
//! ([`HEAD_DEADLINE`]): a slow, idle or half-sent client cannot delay the kubelet's probes
//! behind it.
//!
//! - `/health`: 200 while the process runs and every worker thread lives; 503 once one
//!   ended before draining (its share of the port is unserved: restart the pod).
//! - `/ready`: 200 once a config is loaded and every worker has started, 503 before that,
//!   while draining and once a worker died.
//! - `/metrics`: Prometheus text ([`crate::metrics::render`]).
//! - `/config`: JSON of the active config generation and the last rejected reload.
//! - `/stats`: JSON of per-route counts and hdrhistogram percentiles
//!   ([`crate::metrics::stats_json`]).
//! - `/budgets`: JSON of each `[auth]` client's spend budgets and what it spent in the
//!   current UTC day and month.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::{self, HeadLimits};
use crate::metrics::Registry;
use crate::reload::watch::sha256_hex;
use crate::worker::Shared;

/// Admin connections served at once; more are closed at once (a scraper retries, a probe
/// counts a failure — better than queueing behind a flood).
pub const MAX_CONCURRENT: usize = 64;

/// Time a client has to send its whole request head (a kubelet probe sends it at once).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// Binds the admin listener (so a busy port fails start-up) and serves it: an accept thread
/// handing each connection to its own thread.
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            let mut errors = crate::fds::AcceptErrors::new("admin".into());
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => dispatch(s, &shared, &registry, &open),
                    Err(e) => {
                        errors.note(&e, 0);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

/// Serves `s` on a thread of its own, unless [`MAX_CONCURRENT`] are busy.
fn dispatch(s: TcpStream, shared: &Arc<Shared>, registry: &Arc<Registry>, open: &Arc<AtomicUsize>) {
    if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
        open.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!("admin listener busy; connection closed");
        return;
    }
    let (shared, registry, slot) = (shared.clone(), registry.clone(), open.clone());
    let spawned = std::thread::Builder::new()
        .name("ringgate-admin-conn".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Err(e) = serve(s, &shared, &registry) {
                tracing::debug!(error = %e, "admin request failed");
            }
            slot.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        open.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "cannot start an admin connection thread");
    }
}

fn serve(mut s: TcpStream, shared: &Shared, registry: &Registry) -> std::io::Result<()> {
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let deadline = std::time::Instant::now() + HEAD_DEADLINE;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let limits = HeadLimits {
        max_header_bytes: 8192,
        max_request_line: 4096,
    };
    let head = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        match http::parse_request_head(&buf[..len], &limits) {
            Ok(Some((h, _))) => break h,
            Ok(None) if len < buf.len() => continue,
            _ => {
                return respond(&mut s, 400, "text/plain", b"bad request\n", false);
            }
        }
    };
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return respond(
            &mut s,
            405,
            "text/plain",
            b"method not allowed\n",
            head_only,
        );
    }
    match head.path() {
        "/health" if shared.workers_unhealthy() > 0 => respond(
            &mut s,
            503,
            "text/plain",
            b"a worker died or is wedged",
            head_only,
        ),
        "/health" => respond(&mut s, 200, "text/plain", b"OK", head_only),
        "/ready" => {
            if shared.workers_unhealthy() > 0 {
                respond(
                    &mut s,
                    503,
                    "text/plain",
                    b"a worker died or is wedged",
                    head_only,
                )
            } else if shared.draining.load(Ordering::Relaxed) {
                respond(&mut s, 503, "text/plain", b"draining", head_only)
            } else if shared.store.current().generation == 0 || !registry.workers_started() {
                respond(&mut s, 503, "text/plain", b"starting", head_only)
            } else {
                respond(&mut s, 200, "text/plain", b"ready", head_only)
            }
        }
        "/stats" => {
            let body = crate::metrics::stats_json(registry).to_string();
            respond(&mut s, 200, "application/json", body.as_bytes(), head_only)
        }
        "/metrics" => {
            let body = crate::metrics::render(registry, &shared.store);
            respond(
                &mut s,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
        }
        "/budgets" => {
            let body = budgets_json(shared);
            respond(&mut s, 200, "application/json", body.as_bytes(), head_only)
        }
        "/config" => {
            let body = config_json(shared);
            respond(&mut s, 200, "application/json", body.as_bytes(), head_only)
        }
        _ => respond(&mut s, 404, "text/plain", b"not found\n", head_only),
    }
}

/// RFC 3339 UTC time, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `/budgets`: one entry per client and window with a spend budget.
fn budgets_json(shared: &Shared) -> String {
    let cur = shared.store.current();
    let rows = match &cur.config.auth {
        Some(auth) => crate::limit::spend::rows(&auth.clients, &cur.spend),
        None => Vec::new(),
    };
    let budgets: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "client": &*r.client,
                "window": r.window.label(),
                "scope": r.scope,
                "budget_usd": r.budget_usd,
                "spent_usd": r.spent_usd,
                "remaining_usd": (r.budget_usd - r.spent_usd).max(0.0),
                "resets_at": rfc3339(UNIX_EPOCH + Duration::from_millis(r.resets_at_ms)),
            })
        })
        .collect();
    serde_json::json!({ "budgets": budgets }).to_string()
}

fn config_json(shared: &Shared) -> String {
    let cur = shared.store.current();
    let last_error = shared.store.last_rejection().map(|r| {
        serde_json::json!({
            "message": r.message,
            "sha256": sha256_hex(&r.sha256),
            "at": rfc3339(r.at),
        })
    });
    let cfg = &cur.config;
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "match": match &r.matcher {
                    crate::config::PathMatch::Exact(p) => format!("exact {p}"),
                    crate::config::PathMatch::Prefix(p) => format!("prefix {p}"),
                },
                "upstream": r.upstream.and_then(|i| cfg.upstreams.get(i)).map(|u| u.name.clone()),
                "route_by_model": r.route_by_model,
                "cache_ttl_ms": r.cache_ttl.map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let models: Vec<_> = cfg
        .models
        .list
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "aliases": m.aliases,
                "upstream": cfg.upstreams.get(m.upstream).map(|u| u.name.clone()),
                "fallbacks": m.fallbacks.iter().filter_map(|&f| cfg.models.list.get(f)).map(|f| f.name.clone()).collect::<Vec<_>>(),
                "priced": m.price.is_some(),
            })
        })
        .collect();
    let upstreams: Vec<_> = cfg
        .upstreams
        .iter()
        .map(|u| {
            serde_json::json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(|e| e.authority()).collect::<Vec<_>>(),
                "api_key": u.authorization.is_some(),
            })
        })
        .collect();
    serde_json::json!({
        "generation": cur.generation,
        "models": models,
        "auth_clients": cfg.auth.as_ref().map(|a| a.clients.len()),
        "sha256": sha256_hex(&cur.sha256),
        "inputs_sha256": sha256_hex(&cur.inputs_sha256),
        "watched_files": cfg.watched_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "tls": cfg.server.tls.as_ref().map(|t| serde_json::json!({
            "listen": t.listen.to_string(),
            "certificates": t.certificates.iter().map(|c| serde_json::json!({
                "server_names": c.server_names,
                "cert_file": c.cert_file.display().to_string(),
                "not_after": c.not_after,
            })).collect::<Vec<_>>(),
        })),
        "loaded_at": rfc3339(cur.loaded_at),
        "source": cur.source.display().to_string(),
        "data_target": cur.data_target,
        "last_reload_successful": shared.store.last_successful.load(Ordering::Relaxed),
        "last_error": last_error,
        "routes": routes,
        "upstreams": upstreams,
    })
    .to_string()
}

fn respond(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    let len = body.len().to_string();
    let date = http::date::now();
    http::write_response_head(
        &mut out,
        status,
        "",
        &[
            ("date", &date),
            ("content-type", ctype.as_bytes()),
            ("content-length", len.as_bytes()),
            ("connection", b"close"),
        ],
    );
    if !head_only {
        out.extend_from_slice(body);
    }
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or("").to_string()
    }

    #[test]
    fn a_dead_worker_turns_health_and_ready_503() {
        use std::sync::atomic::Ordering;
        let shared = crate::worker::tests::test_shared("admin");
        let m = std::sync::Arc::new(crate::metrics::WorkerMetrics::default());
        m.set_driver(crate::metrics::Driver::Epoll);
        let registry = std::sync::Arc::new(crate::metrics::Registry { workers: vec![m] });
        let addr = super::spawn(
            "127.0.0.1:0".parse().expect("addr"),
            shared.clone(),
            registry,
        )
        .expect("admin");
        assert_eq!(get(addr, "/health"), "HTTP/1.1 200 OK");
        assert_eq!(get(addr, "/ready"), "HTTP/1.1 200 OK");
        shared.dead_workers.fetch_add(1, Ordering::SeqCst);
        assert!(get(addr, "/health").starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_468_800_250)),
            "2026-11-23T21:20:00.250Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
