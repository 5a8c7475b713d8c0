//! The response cache stage: whether this request may be answered from the cache, the
//! lookup, whether the upstream's answer may be stored, the store, and serving a hit.
//!
//! What may share an entry is decided here and only here: the key
//! ([`crate::ai::cache::KeyParts`]) covers the method, the path after the route's rewrite with
//! its query, the model, the body and — unless the route sets `cache_shared` — who asks (the
//! `[auth]` client, else any credentials the client sent). Only `GET`, `HEAD` and JSON `POST`
//! requests whose body was kept are cached; only complete `200` answers without `no-store`,
//! `private` or `Set-Cookie` are stored.

use std::sync::Arc;
use std::time::Instant;

use super::candidates::{AiRequest, Candidate};
use super::forward::Request;
use super::headers;
use super::io::send_client;
use super::request_body::RequestBody;
use super::Outcome;
use crate::ai::cache::{self as store, CacheStatus, CachedResponse, KeyParts};
use crate::error::ProxyError;
use crate::http::{self, BodyFraming, RequestHead, ResponseHead};
use crate::listener::ClientStream;

/// What the cache does for one request.
#[derive(Debug)]
pub enum CachePlan {
    /// Not cached: no `cache_ttl_ms`, a stream, a method or body the cache does not take.
    Off,
    /// A fresh stored answer to serve.
    Hit(Arc<CachedResponse>),
    /// Not served from the cache; the answer is stored under `key` when it qualifies.
    /// `status` is `Miss`, or `Bypass` for `no-cache` (the fresh answer is still stored).
    Fill {
        /// Where the answer goes.
        key: [u8; 32],
        /// The verdict shown to the client.
        status: CacheStatus,
    },
    /// `no-store`: neither looked up nor stored.
    NoStore,
}

impl CachePlan {
    /// The verdict for `x-cache`, metrics and the access log; None when not cached.
    pub fn status(&self) -> Option<CacheStatus> {
        match self {
            CachePlan::Off => None,
            CachePlan::Hit(_) => Some(CacheStatus::Hit),
            CachePlan::Fill { status, .. } => Some(*status),
            CachePlan::NoStore => Some(CacheStatus::Bypass),
        }
    }
}

/// The client's `Cache-Control` / `Pragma` request directives that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// Do not answer from the cache (the answer may be stored).
    pub no_cache: bool,
    /// Neither answer from nor store into the cache.
    pub no_store: bool,
}

/// The request's cache directives.
pub fn directives(head: &RequestHead) -> Directives {
    let mut d = Directives::default();
    for h in head.headers.iter().filter(|h| {
        h.name.eq_ignore_ascii_case("cache-control") || h.name.eq_ignore_ascii_case("pragma")
    }) {
        d.no_cache |= contains_token(h.value, b"no-cache");
        d.no_store |= contains_token(h.value, b"no-store");
    }
    d
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|part| {
        let t = part.trim_ascii();
        let name = t.split(|&b| b == b'=').next().unwrap_or_default();
        name.eq_ignore_ascii_case(token)
    })
}

/// Whether the cache may answer a request with this method and content type: safe methods,
/// and POSTs of JSON (the AI APIs' requests are POSTs whose answer depends on the body only).
pub fn cacheable_request(head: &RequestHead) -> bool {
    match head.method.as_str() {
        "GET" | "HEAD" => true,
        "POST" => head.header("content-type").is_none_or(|v| {
            let mime = v.split(|&b| b == b';').next().unwrap_or_default();
            mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
        }),
        _ => false,
    }
}

/// Who asks, for the key: the `[auth]` client's name, else every credential header the
/// client sent (it may reach the upstream and change the answer). None on shared routes.
fn identity<'a>(req: &Request<'a>, buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    if req.route.cache_shared {
        return None;
    }
    if let Some(c) = req.client {
        return Some(c.name.as_bytes());
    }
    for name in ["authorization", "x-api-key", "api-key"] {
        for h in req
            .head
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
        {
            buf.extend_from_slice(&(h.value.len() as u64).to_le_bytes());
            buf.extend_from_slice(h.value);
        }
    }
    Some(buf)
}

/// Decides and looks up: the plan for this request (the lookup is counted).
pub fn lookup(
    worker: &crate::worker::Worker,
    req: &Request<'_>,
    first: Candidate<'_>,
    ai: Option<&AiRequest>,
    body: &RequestBody,
) -> CachePlan {
    let Some(_) = req.route.cache_ttl else {
        return CachePlan::Off;
    };
    let body: &[u8] = match (ai, body) {
        (Some(a), _) if a.streaming() => return CachePlan::Off,
        (Some(a), _) => &a.original,
        (None, RequestBody::Retained(b)) => b,
        (None, RequestBody::None) => &[],
        (None, _) => return CachePlan::Off,
    };
    if !cacheable_request(req.head) {
        return CachePlan::Off;
    }
    let d = directives(req.head);
    let plan = if d.no_store {
        CachePlan::NoStore
    } else {
        let mut target = String::with_capacity(req.head.target.len());
        crate::router::upstream_target(
            req.route,
            "",
            req.head.path(),
            req.head.query(),
            &mut target,
        );
        let mut id_buf = Vec::new();
        let key = store::key(&KeyParts {
            route: &req.route.name,
            method: &req.head.method,
            target: &target,
            model: first.model_name(),
            identity: identity(req, &mut id_buf),
            body,
        });
        if d.no_cache {
            CachePlan::Fill {
                key,
                status: CacheStatus::Bypass,
            }
        } else {
            match req.cache.get(&key, Instant::now()) {
                Some(hit) => CachePlan::Hit(hit),
                None => CachePlan::Fill {
                    key,
                    status: CacheStatus::Miss,
                },
            }
        }
    };
    if let Some(s) = plan.status() {
        worker.stats.note_cache(&req.route.name, s);
    }
    plan
}

/// Whether the upstream's answer may be stored: a `200` that is not an event stream, with no
/// `no-store`, `private` or `Set-Cookie`, framed so its end is known, within the entry bound.
pub fn storable(resp: &ResponseHead, framing: BodyFraming, is_sse: bool, max_entry: u64) -> bool {
    resp.status == 200
        && !is_sse
        && !resp
            .header("cache-control")
            .is_some_and(|v| contains_token(v, b"no-store") || contains_token(v, b"private"))
        && resp.header("set-cookie").is_none()
        && match framing {
            BodyFraming::Length(n) => n <= max_entry,
            BodyFraming::Chunked => true,
            _ => false,
        }
}

/// Stores a complete answer under `key`.
pub fn store(req: &Request<'_>, key: [u8; 32], resp: &ResponseHead, body: Vec<u8>) {
    let Some(ttl) = req.route.cache_ttl else {
        return;
    };
    let mut hdrs = Vec::with_capacity(256);
    headers::cacheable_header_lines(resp, &mut hdrs);
    req.cache.put(
        key,
        CachedResponse {
            status: resp.status,
            headers: hdrs,
            body,
            stored: Instant::now(),
            ttl,
        },
    );
}

/// Answers from the cache: the stored status, headers and body, with `x-cache: HIT` and the
/// entry's `age`.
pub async fn serve_hit(
    req: &Request<'_>,
    draining: bool,
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
    hit: &CachedResponse,
    outcome: &mut Outcome,
) -> Result<(), ProxyError> {
    let keep_alive = req.head.keep_alive && !draining;
    scratch.clear();
    scratch.extend_from_slice(b"HTTP/1.1 ");
    headers::push_decimal(scratch, u64::from(hit.status));
    scratch.push(b' ');
    scratch.extend_from_slice(http::reason_phrase(hit.status).as_bytes());
    scratch.extend_from_slice(b"\r\n");
    scratch.extend_from_slice(&hit.headers);
    scratch.extend_from_slice(b"content-length: ");
    headers::push_decimal(scratch, hit.body.len() as u64);
    scratch.extend_from_slice(b"\r\ndate: ");
    scratch.extend_from_slice(&crate::http::date::now());
    if let Some(v) = &req.server.server_header {
        scratch.extend_from_slice(b"\r\nserver: ");
        scratch.extend_from_slice(v.as_bytes());
    }
    scratch.extend_from_slice(b"\r\nx-cache: HIT\r\nage: ");
    headers::push_decimal(scratch, hit.stored.elapsed().as_secs());
    scratch.extend_from_slice(b"\r\nx-request-id: ");
    scratch.extend_from_slice(req.request_id.as_bytes());
    scratch.extend_from_slice(b"\r\n");
    outcome.rate.write(scratch);
    if !keep_alive {
        scratch.extend_from_slice(b"connection: close\r\n");
    }
    scratch.extend_from_slice(b"\r\n");
    if req.head.method != "HEAD" {
        scratch.extend_from_slice(&hit.body);
    }
    send_client(client, scratch, req.server.idle_timeout).await?;
    outcome.status = hit.status;
    outcome.bytes_out = hit.body.len() as u64;
    outcome.keep_alive = keep_alive;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request_head, parse_response_head, HeadLimits};

    fn head(raw: &str) -> RequestHead {
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_request_line: 8192,
        };
        parse_request_head(raw.as_bytes(), &limits)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("bad test head {raw:?}"))
            .0
    }

    #[test]
    fn request_directives() {
        let cases = [
            ("", Directives::default()),
            (
                "cache-control: no-cache\r\n",
                Directives {
                    no_cache: true,
                    no_store: false,
                },
            ),
            (
                "cache-control: max-age=0, No-Store\r\n",
                Directives {
                    no_cache: false,
                    no_store: true,
                },
            ),
            (
                "pragma: no-cache\r\n",
                Directives {
                    no_cache: true,
                    no_store: false,
                },
            ),
            ("cache-control: no-cachex\r\n", Directives::default()),
            (
                "cache-control: no-cache=\"x\"\r\n",
                Directives {
                    no_cache: true,
                    no_store: false,
                },
            ),
        ];
        for (extra, want) in cases {
            let h = head(&format!("GET / HTTP/1.1\r\nhost: a\r\n{extra}\r\n"));
            assert_eq!(directives(&h), want, "{extra:?}");
        }
    }

    #[test]
    fn cacheable_methods_and_types() {
        let cases = [
            ("GET", "", true),
            ("HEAD", "", true),
            ("POST", "", true),
            ("POST", "content-type: application/json\r\n", true),
            (
                "POST",
                "content-type: Application/JSON; charset=utf-8\r\n",
                true,
            ),
            (
                "POST",
                "content-type: multipart/form-data; boundary=x\r\n",
                false,
            ),
            (
                "POST",
                "content-type: application/x-www-form-urlencoded\r\n",
                false,
            ),
            ("PUT", "", false),
            ("DELETE", "", false),
            ("PATCH", "", false),
        ];
        for (method, extra, want) in cases {
            let h = head(&format!("{method} / HTTP/1.1\r\nhost: a\r\n{extra}\r\n"));
            assert_eq!(cacheable_request(&h), want, "{method} {extra:?}");
        }
    }

    #[test]
    fn storable_answers() {
        let resp = |extra: &str, status: u16| {
            let raw = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\n");
            parse_response_head(raw.as_bytes(), 8192)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("bad test response {raw:?}"))
                .0
        };
        let len = BodyFraming::Length(2);
        let cases = [
            ("", 200, len, false, true),
            ("", 201, len, false, false),
            ("", 200, len, true, false),
            ("cache-control: no-store\r\n", 200, len, false, false),
            (
                "cache-control: private, max-age=60\r\n",
                200,
                len,
                false,
                false,
            ),
            ("set-cookie: s=1\r\n", 200, len, false, false),
            ("", 200, BodyFraming::Length(11), false, false),
            ("", 200, BodyFraming::Chunked, false, true),
            ("", 200, BodyFraming::CloseDelimited, false, false),
        ];
        for (extra, status, framing, sse, want) in cases {
            assert_eq!(
                storable(&resp(extra, status), framing, sse, 10),
                want,
                "{status} {extra:?} {framing:?} sse={sse}"
            );
        }
    }
}
