//! Scenario 2, streaming: an in-process upstream answers every request with 50 SSE events
//! 20 ms apart (chunked, as providers send them) and notes when each event left it; clients
//! note when each event arrived. Same clock, so the difference is what the path added.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::load::new_hist;
use super::nginx::Nginx;
use super::sys::{self, Children, Cores};
use super::{report, Path3, RinggateProc, Settings};

/// Events per stream and the gap between them (performance.md).
pub const EVENTS: usize = 50;
pub const GAP: Duration = Duration::from_millis(20);

/// One path's streams.
pub struct SseResult {
    pub path: Path3,
    pub streams: usize,
    /// Request sent -> first event received, ns.
    pub ttfb: Histogram<u64>,
    /// Event written by the upstream -> event received by the client, ns.
    pub delay: Histogram<u64>,
    pub events: u64,
    /// Events that took more than 1 ms.
    pub late: u64,
    /// Streams that failed (status, broken, missing events).
    pub errors: u64,
}

type SentLog = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

struct Upstream {
    port: u16,
    sent: SentLog,
    stop: Arc<AtomicBool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn start_upstream() -> Result<Upstream, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let sent: SentLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent2, stop2) = (sent.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let sent = sent2.clone();
            std::thread::spawn(move || serve(conn, sent));
        }
    });
    Ok(Upstream { port, sent, stop })
}

/// Serves keep-alive requests on one connection until it closes.
fn serve(mut s: TcpStream, sent: SentLog) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        // One request: head, then a Content-Length body.
        let (id, total) = loop {
            if let Some(r) = parse_request(&buf) {
                break r;
            }
            match sys::read_retry(&mut s, &mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        buf.drain(..total);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut times = Vec::with_capacity(EVENTS);
        for i in 0..EVENTS {
            if i > 0 {
                std::thread::sleep(GAP);
            }
            let ev = format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"s\":{id},\"i\":{i},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
            );
            let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
            times.push(Instant::now());
            if s.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        if let Ok(mut m) = sent.lock() {
            m.insert(id, times);
        }
        let done = "data: [DONE]\n\n";
        if s.write_all(format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()).as_bytes())
            .is_err()
        {
            return;
        }
    }
}

/// (stream id from `x-bench-stream`, request length) once a whole request is in `b`.
fn parse_request(b: &[u8]) -> Option<(u64, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut id = 0;
    let mut len = 0;
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("x-bench-stream") {
            id = v.parse().unwrap_or(0);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap_or(0);
        }
    }
    (b.len() >= n + len).then_some((id, n + len))
}

/// One stream from the client's side: TTFB and each event's arrival time by index.
fn one_stream(addr: SocketAddr, id: u64) -> Result<(Duration, Vec<Option<Instant>>), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Count to fifty."}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\naccept: text/event-stream\r\nx-bench-stream: {id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let t0 = Instant::now();
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut tmp = [0u8; 16384];
    let mut head_len = None;
    let mut chunked = false;
    let mut decoded = Vec::new();
    let mut consumed = 0; // bytes of `raw` body decoded so far
    let mut scanned = 0; // bytes of `decoded` split into events so far
    let mut arrivals = vec![None; EVENTS];
    let mut first = None;
    loop {
        let n = sys::read_retry(&mut s, &mut tmp).map_err(|e| format!("read: {e}"))?;
        let now = Instant::now();
        if n == 0 {
            return Err("connection closed before [DONE]".into());
        }
        raw.extend_from_slice(&tmp[..n]);
        if head_len.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&raw) {
                Ok(httparse::Status::Complete(h)) => {
                    if resp.code != Some(200) {
                        return Err(format!("status {:?}", resp.code));
                    }
                    chunked = resp.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                    });
                    head_len = Some(h);
                    consumed = h;
                }
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(format!("bad response head: {e}")),
            }
        }
        // Decode what is complete.
        if chunked {
            while let Some((data, used)) = next_chunk(&raw[consumed..])? {
                decoded.extend_from_slice(data);
                consumed += used;
            }
        } else {
            decoded.extend_from_slice(&raw[consumed..]);
            consumed = raw.len();
        }
        // Split events.
        while let Some(end) = find(&decoded[scanned..], b"\n\n") {
            let ev = &decoded[scanned..scanned + end];
            scanned += end + 2;
            if ev.starts_with(b"data: [DONE]") {
                let ttfb = first
                    .map(|f: Instant| f - t0)
                    .ok_or("no event before [DONE]")?;
                return Ok((ttfb, arrivals));
            }
            if let Some(i) = field(ev, b"\"i\":") {
                if let Some(slot) = arrivals.get_mut(i) {
                    *slot = Some(now);
                }
                first.get_or_insert(now);
            }
        }
    }
}

/// The next complete chunk at the start of `b`: (its data, bytes used), or None when the
/// chunk is not all here yet (or it is the last, empty one).
fn next_chunk(b: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    let Some(eol) = find(b, b"\r\n") else {
        return Ok(None);
    };
    let hex = std::str::from_utf8(&b[..eol]).map_err(|e| e.to_string())?;
    let hex = hex.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(hex, 16).map_err(|e| format!("chunk size {hex:?}: {e}"))?;
    if size == 0 || b.len() < eol + 2 + size + 2 {
        return Ok(None);
    }
    Ok(Some((&b[eol + 2..eol + 2 + size], eol + 2 + size + 2)))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn field(ev: &[u8], key: &[u8]) -> Option<usize> {
    let at = find(ev, key)? + key.len();
    let digits: String = ev[at..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .map(|&c| c as char)
        .collect();
    digits.parse().ok()
}

/// Runs the SSE scenario over direct, nginx and ringgate.
pub fn run(
    nginx: &Nginx,
    ringgate_bin: &Path,
    work: &Path,
    cores: Cores,
    s: &Settings,
) -> Result<Vec<SseResult>, String> {
    let upstream = start_upstream()?;
    let mut children = Children::default();
    let nginx_port = sys::free_port().map_err(|e| e.to_string())?;
    nginx.start_proxy(
        &mut children,
        "proxy-sse",
        nginx_port,
        upstream.port,
        cores.proxy,
        None,
    )?;
    let rg = RinggateProc::start(
        &mut children,
        ringgate_bin,
        &work.join("ringgate-sse"),
        upstream.port,
        cores.proxy,
        None,
    )?;
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    sys::wait_http(nginx_addr, "/health").map_err(|e| {
        format!(
            "nginx (SSE) not ready: {e}\n{}",
            nginx.error_log("proxy-sse")
        )
    })?;
    let targets = [
        (
            Path3::Direct,
            SocketAddr::from(([127, 0, 0, 1], upstream.port)),
        ),
        (Path3::Nginx, nginx_addr),
        (Path3::Ringgate, rg.addr),
    ];
    let mut results: Vec<SseResult> = Path3::ALL
        .iter()
        .map(|&path| SseResult {
            path,
            streams: 0,
            ttfb: new_hist(),
            delay: new_hist(),
            events: 0,
            late: 0,
            errors: 0,
        })
        .collect();
    let next_id = AtomicU64::new(1);
    for round in 0..s.sse_rounds {
        for k in 0..3 {
            let (path, addr) = targets[(round + k) % 3];
            children.check_alive()?;
            let ids: Vec<u64> = (0..s.sse_streams)
                .map(|_| next_id.fetch_add(1, Ordering::SeqCst))
                .collect();
            let handles: Vec<_> = ids
                .iter()
                .map(|&id| std::thread::spawn(move || (id, one_stream(addr, id))))
                .collect();
            let r = &mut results[path as usize];
            for h in handles {
                let Ok((id, outcome)) = h.join() else {
                    r.errors += 1;
                    continue;
                };
                r.streams += 1;
                let (ttfb, arrivals) = match outcome {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("bench: SSE stream via {} failed: {e}", path.name());
                        r.errors += 1;
                        continue;
                    }
                };
                let _ = r.ttfb.record(ttfb.as_nanos() as u64);
                let sent = upstream
                    .sent
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&id))
                    .unwrap_or_default();
                let mut missing = false;
                for (i, arrival) in arrivals.iter().enumerate() {
                    match (arrival, sent.get(i)) {
                        (Some(a), Some(t)) => {
                            let d = a.saturating_duration_since(*t);
                            let _ = r.delay.record((d.as_nanos() as u64).max(1));
                            r.events += 1;
                            if d > Duration::from_millis(1) {
                                r.late += 1;
                            }
                        }
                        _ => missing = true,
                    }
                }
                if missing {
                    r.errors += 1;
                }
            }
            progress!(
                "[2/4 SSE {}/{}] {:<8} {} streams x {EVENTS} events: TTFB p50 {}  event delay p50 {}  max {}  >1ms {}  errors {}",
                round * 3 + k + 1,
                s.sse_rounds * 3,
                path.name(),
                s.sse_streams,
                report::fmt_ns(r.ttfb.value_at_quantile(0.5)),
                report::fmt_ns(r.delay.value_at_quantile(0.5)),
                report::fmt_ns(r.delay.max()),
                r.late,
                r.errors
            );
        }
    }
    drop(children);
    Ok(results)
}

/// Gap between the events of a slow stream (the memory scenario): long enough that the
/// proxies spend nearly all their time waiting on it, as with a model thinking.
const SLOW_GAP: Duration = Duration::from_millis(500);

/// Serves one slow stream per request until the proxy closes the connection or `stop`:
/// the head, then one small event every [`SLOW_GAP`].
fn serve_slow(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while parse_request(&buf).is_none() {
        match sys::read_retry(&mut s, &mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let ev = format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"i\":{i},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
        );
        if s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
            .is_err()
        {
            return;
        }
        i += 1;
        std::thread::sleep(SLOW_GAP);
    }
}

/// Opens `n` streams through `addr`, each held once its first event arrived; returns them
/// with the reason it stopped early, if it did.
fn hold_streams(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<String>) {
    let body = r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Think slowly."}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut held = Vec::with_capacity(n);
    let mut tmp = [0u8; 4096];
    for _ in 0..n {
        let opened = (|| -> Result<TcpStream, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(req.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut got = Vec::new();
            // The head and the first whole event.
            loop {
                let k = sys::read_retry(&mut s, &mut tmp).map_err(|e| format!("read: {e}"))?;
                if k == 0 {
                    return Err("closed before the first event".into());
                }
                got.extend_from_slice(&tmp[..k]);
                if !got.starts_with(b"HTTP/1.1 200") {
                    if got.len() >= 12 {
                        return Err(format!("answer {:?}", String::from_utf8_lossy(&got[..12])));
                    }
                    continue;
                }
                if find(&got, b"\"i\":0").is_some() && find(&got, b"\n\n\r\n").is_some() {
                    return Ok(s);
                }
            }
        })();
        match opened {
            Ok(s) => held.push(s),
            Err(e) => return (held, Some(e)),
        }
    }
    (held, None)
}

/// The memory scenario's streaming half: RSS of nginx and of ringgate each carrying `n`
/// concurrent slow SSE streams (the clients hold their connections and read nothing more;
/// the events wait in the kernel's socket buffers, outside both proxies). Returns
/// (path, RSS before KiB, RSS with the streams KiB, streams held).
pub fn stream_memory(
    nginx: &Nginx,
    ringgate_bin: &Path,
    work: &Path,
    cores: Cores,
    n: usize,
) -> Result<Vec<(Path3, u64, u64, usize)>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let stop = stop2.clone();
            // Small stacks: a thousand of these sleep at once.
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || serve_slow(conn, stop));
        }
    });
    let finish = |stop: &AtomicBool| {
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", port));
    };
    let mut children = Children::default();
    let nginx_port = sys::free_port().map_err(|e| e.to_string())?;
    let started = (|| -> Result<RinggateProc, String> {
        nginx.start_proxy(
            &mut children,
            "proxy-streams",
            nginx_port,
            port,
            cores.proxy,
            None,
        )?;
        RinggateProc::start(
            &mut children,
            ringgate_bin,
            &work.join("ringgate-streams"),
            port,
            cores.proxy,
            None,
        )
    })();
    let rg = match started {
        Ok(rg) => rg,
        Err(e) => {
            finish(&stop);
            return Err(e);
        }
    };
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    let mut out = Vec::new();
    for (path, addr, pid) in [
        (Path3::Nginx, nginx_addr, children.pid("proxy-streams")),
        (Path3::Ringgate, rg.addr, children.pid("ringgate")),
    ] {
        let Some(pid) = pid else { continue };
        if let Err(e) = sys::wait_http(addr, "/health") {
            finish(&stop);
            return Err(format!("{} (streams) not ready: {e}", path.name()));
        }
        // One stream first: lazily built state (pools, route caches) is not per stream.
        drop(hold_streams(addr, 1));
        std::thread::sleep(Duration::from_millis(300));
        let before = sys::rss_kib_tree(pid);
        let (held, problem) = hold_streams(addr, n);
        // Two events' time: every stream has been through a wait and a forward since.
        std::thread::sleep(SLOW_GAP * 2);
        let after = sys::rss_kib_tree(pid);
        progress!(
            "[4/4 memory] {:<8} RSS {} KiB -> {} KiB with {} concurrent slow SSE streams ({:.2} KiB each){}",
            path.name(),
            before,
            after,
            held.len(),
            (after as f64 - before as f64) / held.len().max(1) as f64,
            problem.as_deref().map(|p| format!(" (stopped early: {p})")).unwrap_or_default()
        );
        out.push((path, before, after, held.len()));
        drop(held);
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(children);
    finish(&stop);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_decode_only_when_whole() {
        assert_eq!(
            next_chunk(b"3\r\nabc\r\n4").expect("ok"),
            Some((&b"abc"[..], 8))
        );
        assert_eq!(next_chunk(b"3\r\nab").expect("ok"), None);
        assert_eq!(next_chunk(b"0\r\n\r\n").expect("ok"), None);
        assert!(next_chunk(b"zz\r\n").is_err());
        assert_eq!(field(b"data: {\"s\":7,\"i\":42,}", b"\"i\":"), Some(42));
    }
}
