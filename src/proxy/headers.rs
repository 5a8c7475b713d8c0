//! Header rewriting between the two sides: what the upstream receives (hop-by-hop headers
//! and, by default, names with `_` stripped, re-framed, `Host`, `x-request-id`, `X-Real-IP`, `X-Forwarded-For`, the
//! upstream key) and what the client receives back.

use std::io::Write as _;
use std::net::IpAddr;

use super::forward::Request;
use crate::config::{Api, ServerSettings, UnderscoreHeaders};
use crate::http::{is_hop_by_hop, RequestHead, ResponseHead};
use crate::worker::Worker;

/// The request id: the client's `x-request-id` when it is sane, otherwise a new one.
pub fn request_id(head: &RequestHead, worker: &Worker) -> String {
    match head.header("x-request-id") {
        Some(v) if (1..=128).contains(&v.len()) && v.iter().all(|b| (0x21..0x7f).contains(b)) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => worker.new_request_id(),
    }
}

/// The Host header without its port, lowercase, for host-matched routes.
pub fn host_without_port(head: &RequestHead) -> Option<String> {
    let h = std::str::from_utf8(head.header("host")?).ok()?.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.split(':').next().unwrap_or(h)
    };
    Some(host.to_ascii_lowercase())
}

/// The real client IP: the peer, unless the peer is a trusted proxy, in which case the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, server: &ServerSettings) -> IpAddr {
    if !server.is_trusted(peer) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    let mut last = peer;
    for part in xff.rsplit(',') {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            // Unparseable entries were added by someone we cannot vouch for.
            return last;
        };
        if !server.is_trusted(ip) {
            return ip;
        }
        last = ip;
    }
    last
}

/// The real client IP of a request head from `peer` (see [`client_ip`]).
pub fn client_ip_of(
    head: &RequestHead,
    peer: std::net::SocketAddr,
    server: &ServerSettings,
) -> IpAddr {
    if !server.is_trusted(peer.ip()) {
        return peer.ip();
    }
    client_ip(peer.ip(), joined_xff(head).as_deref(), server)
}

/// The real client IP of a request (see [`client_ip`]).
pub fn real_client_ip(req: &Request<'_>) -> IpAddr {
    client_ip_of(req.head, req.peer, req.server)
}

/// All X-Forwarded-For values of the request joined, in order.
fn joined_xff(head: &RequestHead) -> Option<String> {
    let mut out: Option<String> = None;
    for h in &head.headers {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            let v = String::from_utf8_lossy(h.value);
            match &mut out {
                Some(s) => {
                    s.push_str(", ");
                    s.push_str(v.trim());
                }
                None => out = Some(v.trim().to_string()),
            }
        }
    }
    out
}

/// Appends `n` in decimal (the formatter machinery is measurable at this rate).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends an IP address as text; IPv4 by hand, IPv6 through its `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (k, octet) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        // io::Write for Vec<u8> cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// How the request body is framed upstream.
pub enum UpstreamFraming {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the upstream request head into `out`.
///
/// Header names with `_` are dropped under `underscores_in_headers = "drop"` (nginx's and
/// Envoy's default): a CGI-style upstream maps `X_Forwarded_For` and `X-Forwarded-For` to one
/// variable, so a client could otherwise forge the headers the gateway sets.
///
/// With `[auth]`, the client's key is the gateway's, never the provider's: it is not
/// forwarded. On model-routed routes `accept-encoding` is dropped so the response arrives
/// uncompressed and its token usage can be read (and, for Anthropic and Gemini upstreams,
/// translated) (compression pays little on loopback and
/// in-cluster hops; the client's own hop can still be compressed by an ingress).
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    req: &Request<'_>,
    up: &crate::config::Upstream,
    target: &str,
    framing: UpstreamFraming,
) {
    let (head, server, peer, request_id) = (req.head, req.server, req.peer, req.request_id);
    let strip_client_key = req.client.is_some();
    let strip_encoding = req.route.route_by_model;
    // An Anthropic or Gemini upstream is reached only through translation: the client's
    // OpenAI bearer token is never a key for it, and the gateway picks the API version.
    let anthropic = up.api == Api::Anthropic;
    let translated = up.api != Api::OpenAi;
    // An Anthropic client's request translated for another API: its API's headers
    // (`anthropic-version`, `anthropic-beta`) mean nothing there, and its `x-api-key` (the
    // Anthropic SDK's credential, sent when the client brings its own key) is a secret of
    // another provider: it must not reach this one.
    let from_anthropic = up.api != Api::Anthropic
        && req.route.route_by_model
        && crate::ai::anthropic::inbound::is_messages_path(head.path());
    let drop_underscores = server.underscores_in_headers == UnderscoreHeaders::Drop;
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(up.host_header.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        let n = h.name;
        if is_hop_by_hop(n, &head.connection_tokens)
            || n.eq_ignore_ascii_case("host")
            || n.eq_ignore_ascii_case("content-length")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("x-request-id")
            || n.eq_ignore_ascii_case("x-real-ip")
            || n.eq_ignore_ascii_case("x-forwarded-for")
            || n.eq_ignore_ascii_case("x-forwarded-proto")
            || ((up.authorization.is_some() || strip_client_key || translated)
                && n.eq_ignore_ascii_case("authorization"))
            || ((strip_client_key || (translated && up.authorization.is_some()))
                && (n.eq_ignore_ascii_case("x-api-key")
                    || n.eq_ignore_ascii_case("api-key")
                    || n.eq_ignore_ascii_case("x-goog-api-key")))
            || (anthropic && n.eq_ignore_ascii_case("anthropic-version"))
            || (from_anthropic
                && ((n.len() > 10 && n.as_bytes()[..10].eq_ignore_ascii_case(b"anthropic-"))
                    || n.eq_ignore_ascii_case("x-api-key")))
            || (strip_encoding && n.eq_ignore_ascii_case("accept-encoding"))
            || (drop_underscores && n.contains('_'))
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match (up.api, &up.authorization) {
        (Api::OpenAi, Some(auth)) => {
            out.extend_from_slice(b"authorization: ");
            out.extend_from_slice(&auth.0);
            out.extend_from_slice(b"\r\n");
        }
        (Api::OpenAi, None) => {}
        (Api::Anthropic, key) => {
            if let Some(key) = key {
                out.extend_from_slice(b"x-api-key: ");
                out.extend_from_slice(&key.0);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"anthropic-version: ");
            out.extend_from_slice(crate::ai::anthropic::ANTHROPIC_VERSION.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (Api::Gemini, Some(key)) => {
            out.extend_from_slice(b"x-goog-api-key: ");
            out.extend_from_slice(&key.0);
            out.extend_from_slice(b"\r\n");
        }
        (Api::Gemini, None) => {}
    }
    let xff = joined_xff(head);
    let real = client_ip(peer.ip(), xff.as_deref(), server);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\nx-real-ip: ");
    push_ip(out, real);
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    if server.is_trusted(peer.ip()) {
        if let Some(x) = &xff {
            out.extend_from_slice(x.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    push_ip(out, peer.ip());
    // The scheme the client used to reach the gateway (the client's own value is dropped).
    out.extend_from_slice(if req.client_tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    match framing {
        UpstreamFraming::None => {}
        UpstreamFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        UpstreamFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body (HEAD, 204, 304): the upstream's `Content-Length`, if any, describes the
    /// representation and is passed on.
    NoBody,
    /// `Content-Length: n`, written by the gateway from the framing it reads the body by:
    /// never the upstream's header, which its `Connection` options could have stripped.
    Length(u64),
    /// Re-chunked (upstream chunked, or close-delimited to an HTTP/1.1 client).
    Chunked,
    /// Close-delimited (only to HTTP/1.0 clients).
    Close,
}

/// The response's end-to-end header lines worth replaying from the cache: everything but
/// hop-by-hop, framing, per-request ids and the upstream's own rate-limit state.
pub fn cacheable_header_lines(resp: &ResponseHead, out: &mut Vec<u8>) {
    for h in &resp.headers {
        let n = h.name;
        if is_hop_by_hop(n, &resp.connection_tokens)
            || n.eq_ignore_ascii_case("content-length")
            || n.eq_ignore_ascii_case("x-request-id")
            || n.eq_ignore_ascii_case("date")
            || n.eq_ignore_ascii_case("set-cookie")
            || n.len() >= 12 && n[..12].eq_ignore_ascii_case("x-ratelimit-")
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the client response head into `out`; `extra` holds further header lines
/// (`x-cache: MISS\r\n`); `rate` the gateway's `x-ratelimit-*` headers, which replace the
/// upstream's of the same families.
pub fn write_client_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    framing: ClientFraming,
    request_id: &str,
    keep_alive: bool,
    extra: &[u8],
    rate: &super::limit_headers::RateHeaders,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    let reason = if resp.reason.is_empty() {
        crate::http::reason_phrase(resp.status)
    } else {
        resp.reason.as_str()
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
        let n = h.name;
        if is_hop_by_hop(n, &resp.connection_tokens) || n.eq_ignore_ascii_case("x-request-id") {
            continue;
        }
        if framing != ClientFraming::NoBody && n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if !rate.is_empty() && rate.replaces(n) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    rate.write(out);
    match framing {
        ClientFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::NoBody | ClientFraming::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the upstream's head says, the client's head has exactly the framing the
    /// gateway reads the body by, and every line ends in CRLF.
    #[test]
    fn client_heads_carry_the_gateways_framing() {
        let resp = |raw: &[u8]| {
            crate::http::parse_response_head(raw, 8192)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(raw)))
                .0
        };
        // (upstream head, framing, what the client head must hold, what it must not).
        type Case = (
            &'static [u8],
            ClientFraming,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: [Case; 6] = [
            // Connection naming the framing header would strip it: the gateway writes its own.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n",
                ClientFraming::Length(5),
                &["content-length: 5\r\n"],
                &["Content-Length", "Connection"],
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: transfer-encoding, content-length\r\n\r\n",
                ClientFraming::Chunked,
                &["transfer-encoding: chunked\r\n"],
                &["ontent-length"],
            ),
            // A lone LF ends a line for httparse; the client gets CRLF.
            (
                b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n",
                ClientFraming::Length(2),
                &["\r\nX-A: b\r\n", "content-length: 2\r\n"],
                &["Content-Length"],
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                ClientFraming::NoBody,
                &["Content-Length: 10\r\n"],
                &["transfer-encoding"],
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                ClientFraming::Chunked,
                &["transfer-encoding: chunked\r\n"],
                &["Transfer-Encoding"],
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\n",
                ClientFraming::Close,
                &["connection: close\r\n"],
                &["content-length", "transfer-encoding"],
            ),
        ];
        for (raw, framing, must, must_not) in cases {
            let mut out = Vec::new();
            let keep_alive = framing != ClientFraming::Close;
            write_client_head(
                &mut out,
                &resp(raw),
                framing,
                "rid",
                keep_alive,
                b"",
                &Default::default(),
            );
            let text = String::from_utf8_lossy(&out);
            for m in must {
                assert!(text.contains(m), "{text:?} lacks {m:?}");
            }
            for m in must_not {
                assert!(!text.contains(m), "{text:?} has {m:?}");
            }
            assert!(text.ends_with("\r\n\r\n"));
            assert!(
                !text.replace("\r\n", "").contains(['\r', '\n']),
                "bare CR or LF in {text:?}"
            );
        }
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_would() {
        for n in [0u64, 7, 10, 99, 100, 65_535, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes());
        }
    }
    use std::time::Duration;

    fn server(trusted: &[&str]) -> ServerSettings {
        ServerSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            workers: 1,
            max_connections: 1,
            max_header_bytes: 1024,
            max_request_line_bytes: 1024,
            max_body_bytes: 1,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            trusted_proxies: trusted.iter().map(|s| s.parse().expect("cidr")).collect(),
            max_retry_body_bytes: 0,
            body_buffer_bytes: 0,
            body_read_timeout: Duration::from_secs(1),
            underscores_in_headers: Default::default(),
            allow_no_routes: false,
            server_header: None,
            tls: None,
        }
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let s = server(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let cases = [
            // untrusted peer: its X-Forwarded-For is ignored
            ("203.0.113.9", Some("1.2.3.4"), "203.0.113.9"),
            // trusted ingress: the right-most untrusted entry
            ("10.1.1.1", Some("1.2.3.4"), "1.2.3.4"),
            ("10.1.1.1", Some("6.6.6.6, 1.2.3.4, 10.2.2.2"), "1.2.3.4"),
            ("10.1.1.1", None, "10.1.1.1"),
            ("10.1.1.1", Some("garbage, 1.2.3.4"), "1.2.3.4"),
            ("10.1.1.1", Some("1.2.3.4, garbage"), "10.1.1.1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(client_ip(ip(peer), xff, &s), ip(want), "{peer} {xff:?}");
        }
    }
}
