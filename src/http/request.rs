//! Request-head parsing: bytes from a client into an owned [`RequestHead`] with
//! its body framing decided.
//!
//! This is the gateway's front door, so it applies the RFC 9112 §6 and
//! request-smuggling hardening rules on top of httparse: anything two HTTP
//! implementations could frame differently is rejected here, before a byte is
//! forwarded upstream.

use super::headers::{
    fold_content_length, keep_alive, list_elements, push_connection_tokens, TransferCodings,
};
use super::scan::{
    classify_header_error, reject_bare_lf, skip_empty_lines, start_line_len, version_error,
};
use super::{BodyFraming, HeadLimits, Headers, HttpError, MAX_HEADERS};

/// A parsed request head, owned so the read buffer can be reused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method, case preserved (methods are case-sensitive).
    pub method: String,
    /// Request target as received (origin, absolute, authority or asterisk form).
    pub target: String,
    /// HTTP/1.x minor version: 0 or 1.
    pub minor_version: u8,
    /// All header fields in received order, hop-by-hop ones included.
    pub headers: Headers,
    /// How the request body is delimited: `None`, `Length` or `Chunked`.
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` (HTTP/1.1 only; ignored for 1.0).
    pub expect_continue: bool,
    /// Lowercased tokens of all Connection headers, for hop-by-hop stripping.
    pub connection_tokens: Vec<String>,
}

impl RequestHead {
    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.is(name)).map(|h| h.value)
    }

    /// The target without its `?query`.
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(i) => &self.target[..i],
            None => &self.target,
        }
    }

    /// The part of the target after the first `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.find('?').map(|i| &self.target[i + 1..])
    }

    /// Replaces the target's path with its normal form ([`super::path::normalize`]), query
    /// kept, so routing, rewriting and the upstream all read the same path. Allocates only
    /// when the path changes.
    pub fn normalize_path(&mut self) -> Result<(), super::path::PathError> {
        let normal = match super::path::normalize(self.path())? {
            std::borrow::Cow::Borrowed(_) => return Ok(()),
            std::borrow::Cow::Owned(p) => p,
        };
        let mut target = normal;
        if let Some(q) = self.query() {
            target.push('?');
            target.push_str(q);
        }
        self.target = target;
        Ok(())
    }
}

/// Parses a request head from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed and `buf` is still within `limits`;
/// `Ok(Some((head, head_len)))` means the head occupied `buf[..head_len]`
/// (leading empty lines included) and any body or pipelined request follows.
/// Limits are enforced on incomplete input too, so the caller never buffers
/// more than `max_header_bytes` waiting for a head.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let start = skip_empty_lines(buf);
    if start_line_len(buf, start, limits.max_request_line).is_none()
        && buf.len().saturating_sub(start) > limits.max_request_line
    {
        return Err(HttpError::UriTooLong);
    }

    // Never hand httparse more than the limit: a head that does not end within
    // it is too large however much more arrives, and this bounds rescanning.
    let scan = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match httparse::ParserConfig::default().parse_request(&mut req, scan) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_header_bytes {
                Err(HttpError::HeaderTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(map_error(e, scan, start)),
    };
    reject_bare_lf(&scan[..head_len])?;

    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        // httparse fills all three before reporting Complete.
        return Err(HttpError::BadRequestLine);
    };
    if minor_version > 1 {
        return Err(HttpError::UnsupportedVersion);
    }
    check_target(method, target)?;

    let mut content_length = None;
    let mut te = TransferCodings::default();
    let mut hosts = 0u32;
    let mut connection_tokens = Vec::new();
    let mut expect_continue = false;
    let mut headers = Headers::with_capacity(req.headers.len(), head_len);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            fold_content_length(h.value, &mut content_length)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.add(h.value);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !is_valid_host(h.value) {
                return Err(HttpError::BadHost);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            push_connection_tokens(h.value, &mut connection_tokens);
        } else if name.eq_ignore_ascii_case("expect") && minor_version == 1 {
            // RFC 9110 §10.1.1: the only expectation defined is 100-continue;
            // anything else must get 417 rather than be silently dropped.
            for el in list_elements(h.value) {
                if el.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HttpError::UnsupportedExpectation);
                }
            }
        }
        headers.push(name, h.value);
    }

    if hosts > 1 {
        return Err(HttpError::MultipleHost);
    }
    if hosts == 0 && minor_version == 1 {
        return Err(HttpError::MissingHost);
    }

    let framing = if te.present {
        if minor_version == 0 {
            return Err(HttpError::TransferEncodingInHttp10);
        }
        if content_length.is_some() {
            return Err(HttpError::ContentLengthAndTransferEncoding);
        }
        te.require_chunked()?;
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::None
    };

    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        headers,
        framing,
        keep_alive: keep_alive(minor_version, &connection_tokens),
        expect_continue,
        connection_tokens,
    };
    Ok(Some((head, head_len)))
}

/// Turns httparse's coarse error into the precise cause, reading the raw bytes.
fn map_error(e: httparse::Error, scan: &[u8], start: usize) -> HttpError {
    let line = request_line(scan, start);
    match e {
        httparse::Error::HeaderName => classify_header_error(scan),
        httparse::Error::HeaderValue => HttpError::BadHeader,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            // Only a line of exactly three fields has a version field to judge.
            let mut fields = line.split(|&b| b == b' ');
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(_), Some(_), Some(version), None) => {
                    version_error(version, HttpError::BadRequestLine)
                }
                _ => HttpError::BadRequestLine,
            }
        }
        // A NewLine error after a request line that ends in a good version
        // must have come from the header section.
        httparse::Error::NewLine
            if matches!(
                line,
                [.., b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1']
            ) =>
        {
            HttpError::BadHeader
        }
        _ => HttpError::BadRequestLine,
    }
}

/// The request line starting at `start`, terminator excluded (all of the rest if unterminated).
fn request_line(buf: &[u8], start: usize) -> &[u8] {
    let rest = buf.get(start..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// RFC 9112 §3.2: which target forms each method may use. Rejecting the rest
/// keeps odd targets (e.g. `GET foo`) from reaching routing with undefined meaning.
fn check_target(method: &str, target: &str) -> Result<(), HttpError> {
    let ok = if method == "CONNECT" {
        // authority-form only: host:port, no path.
        !target.is_empty() && !target.contains('/') && target != "*"
    } else if target.starts_with('/') {
        true
    } else if target == "*" {
        method == "OPTIONS"
    } else {
        is_absolute_form(target)
    };
    if ok {
        Ok(())
    } else {
        Err(HttpError::BadTarget)
    }
}

/// RFC 3986 `host [":" port]` characters (reg-name, IP literal, IPv4, port).
/// Routing and logging key on Host, so bytes like `/`, `@` or spaces that could
/// make two components disagree about the authority are refused.
fn is_valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// `scheme "://" ...` with an RFC 3986 scheme.
fn is_absolute_form(target: &str) -> bool {
    let Some(colon) = target.find("://") else {
        return false;
    };
    let scheme = &target.as_bytes()[..colon];
    matches!(scheme.first(), Some(b) if b.is_ascii_alphabetic())
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_request_line: 64,
    };

    fn parse(input: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_request_head(input, &LIMITS)
    }

    /// Pins down what httparse itself does with the default (strict) config, so
    /// an httparse upgrade that changes it fails here rather than in production.
    #[test]
    fn httparse_baseline() {
        fn raw(input: &[u8]) -> Result<httparse::Status<usize>, httparse::Error> {
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut slots);
            httparse::ParserConfig::default().parse_request(&mut req, input)
        }
        // Enforced by httparse:
        assert_eq!(
            raw(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        assert_eq!(
            raw(b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        assert_eq!(
            raw(b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n"),
            Err(httparse::Error::HeaderValue)
        );
        assert_eq!(
            raw(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
            Err(httparse::Error::HeaderValue)
        );
        assert_eq!(
            raw(b"GET / HTTP/2.0\r\n\r\n"),
            Err(httparse::Error::Version)
        );
        assert_eq!(raw(b"GET  / HTTP/1.1\r\n\r\n"), Err(httparse::Error::Token));
        assert_eq!(raw(b" / HTTP/1.1\r\n\r\n"), Err(httparse::Error::Token));
        // Not enforced by httparse, so parse_request_head adds these:
        assert_eq!(
            raw(b"GET / HTTP/1.1\nHost: a\n\n"),
            Ok(httparse::Status::Complete(24))
        );
        assert_eq!(
            raw(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
            Ok(httparse::Status::Complete(32))
        );
        assert_eq!(
            raw(b"GET x HTTP/1.1\r\n\r\n"),
            Ok(httparse::Status::Complete(18))
        );
        // Leading empty lines are skipped and counted in the length.
        assert_eq!(
            raw(b"\r\nGET / HTTP/1.1\r\n\r\n"),
            Ok(httparse::Status::Complete(20))
        );
    }

    #[test]
    fn rejections() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(60));
        let long_incomplete = format!("GET /{}", "a".repeat(80));
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1000)
        );
        let big_incomplete = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}", "b".repeat(1100));
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let many_limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_request_line: 64,
        };

        let cases: Vec<(&str, Vec<u8>, HeadLimits, HttpError)> = vec![
            ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), LIMITS, HttpError::ContentLengthAndTransferEncoding),
            ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".to_vec(), LIMITS, HttpError::ContentLengthAndTransferEncoding),
            ("two differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(), LIMITS, HttpError::ConflictingContentLength),
            ("CL list differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n".to_vec(), LIMITS, HttpError::ConflictingContentLength),
            ("CL non-digit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("CL plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("CL minus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n".to_vec(), LIMITS, HttpError::BadContentLength),
            ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(), LIMITS, HttpError::UnsupportedTransferEncoding),
            ("TE chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(), LIMITS, HttpError::ChunkedNotFinal),
            ("TE chunkedx", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n".to_vec(), LIMITS, HttpError::ChunkedNotFinal),
            ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(), LIMITS, HttpError::ChunkedNotFinal),
            ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), LIMITS, HttpError::ChunkedNotFinal),
            ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n".to_vec(), LIMITS, HttpError::ChunkedNotFinal),
            ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), LIMITS, HttpError::TransferEncodingInHttp10),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(), LIMITS, HttpError::WhitespaceBeforeColon),
            ("tab before colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n".to_vec(), LIMITS, HttpError::WhitespaceBeforeColon),
            ("obs-fold space", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n".to_vec(), LIMITS, HttpError::ObsFold),
            ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n".to_vec(), LIMITS, HttpError::ObsFold),
            ("space before first header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n".to_vec(), LIMITS, HttpError::ObsFold),
            ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("CR in value", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("LF in value", b"GET / HTTP/1.1\r\nHost: a\nb: c\r\n\r\n".to_vec(), LIMITS, HttpError::BareLf),
            ("control in value", b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("bare LF head", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), LIMITS, HttpError::BareLf),
            ("bare LF leading line", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BareLf),
            ("bad header name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("empty header name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n".to_vec(), LIMITS, HttpError::BadHeader),
            ("request line too long", long_target.into_bytes(), LIMITS, HttpError::UriTooLong),
            ("request line too long, incomplete", long_incomplete.into_bytes(), LIMITS, HttpError::UriTooLong),
            ("head too large", big_head.into_bytes(), LIMITS, HttpError::HeaderTooLarge),
            ("head too large, incomplete", big_incomplete.into_bytes(), LIMITS, HttpError::HeaderTooLarge),
            ("too many headers", many.into_bytes(), many_limits, HttpError::TooManyHeaders),
            ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::UnsupportedVersion),
            ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::UnsupportedVersion),
            ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("HTTP/1.10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("trailing space after version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), LIMITS, HttpError::MissingHost),
            ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n".to_vec(), LIMITS, HttpError::MultipleHost),
            ("Host with slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHost),
            ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n".to_vec(), LIMITS, HttpError::BadHost),
            ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), LIMITS, HttpError::BadHost),
            ("Host with obs-text", b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n".to_vec(), LIMITS, HttpError::BadHost),
            ("two Hosts on 1.0", b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::MultipleHost),
            ("empty method", b" / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("bad method char", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("non-ascii target", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("relative target", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadTarget),
            ("asterisk on GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadTarget),
            ("CONNECT with path", b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadTarget),
            ("bad scheme", b"GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadTarget),
            ("unknown expectation", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n".to_vec(), LIMITS, HttpError::UnsupportedExpectation),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("garbage text", b"hello world\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("NUL in request line", b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), LIMITS, HttpError::BadRequestLine),
            ("bare CR ends headers", b"GET / HTTP/1.1\r\nHost: a\r\n\rX".to_vec(), LIMITS, HttpError::BadHeader),
        ];
        for (name, input, limits, want) in cases {
            let got = parse_request_head(&input, &limits);
            assert_eq!(got.map(|o| o.map(|(_, n)| n)), Err(want.clone()), "{name}");
            // Every rejection maps to a client-error or 5xx status.
            assert!(want.status() >= 400, "{name}");
        }
    }

    #[test]
    fn statuses_of_limit_errors() {
        let long = format!("GET /{}", "a".repeat(80));
        assert_eq!(
            parse(long.as_bytes()).map(|_| ()).map_err(|e| e.status()),
            Err(414)
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "b".repeat(1100));
        assert_eq!(
            parse(big.as_bytes()).map(|_| ()).map_err(|e| e.status()),
            Err(431)
        );
    }

    /// Where the head of a well-formed test input ends, found independently of the parser.
    fn head_end(input: &[u8]) -> usize {
        let start = skip_empty_lines(input);
        start
            + input[start..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
            + 4
    }

    struct Want {
        method: &'static str,
        target: &'static str,
        minor: u8,
        framing: BodyFraming,
        keep_alive: bool,
        expect_continue: bool,
        tokens: &'static [&'static str],
    }

    fn valid_cases() -> Vec<(&'static str, &'static [u8], Want)> {
        const fn w(
            method: &'static str,
            target: &'static str,
            minor: u8,
            framing: BodyFraming,
            keep_alive: bool,
        ) -> Want {
            Want {
                method,
                target,
                minor,
                framing,
                keep_alive,
                expect_continue: false,
                tokens: &[],
            }
        }
        vec![
            ("simple GET", b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n", w("GET", "/v1/models", 1, BodyFraming::None, true)),
            ("POST with CL", b"POST /v1/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", w("POST", "/v1/chat", 1, BodyFraming::Length(5), true)),
            ("CL zero", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", w("POST", "/", 1, BodyFraming::Length(0), true)),
            ("CL repeated same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", w("POST", "/", 1, BodyFraming::Length(5), true)),
            ("CL list same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", w("POST", "/", 1, BodyFraming::Length(5), true)),
            ("chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", w("POST", "/", 1, BodyFraming::Chunked, true)),
            ("chunked any case", b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n", w("POST", "/", 1, BodyFraming::Chunked, true)),
            ("connection close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Want { tokens: &["close"], ..w("GET", "/", 1, BodyFraming::None, false) }),
            ("1.0 default close", b"GET / HTTP/1.0\r\n\r\n", w("GET", "/", 0, BodyFraming::None, false)),
            ("1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", Want { tokens: &["keep-alive"], ..w("GET", "/", 0, BodyFraming::None, true) }),
            ("1.0 ignores expect", b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", w("GET", "/", 0, BodyFraming::None, false)),
            ("expect continue", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", Want { expect_continue: true, ..w("POST", "/", 1, BodyFraming::Length(1), true) }),
            ("connection tokens", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Foo, Upgrade\r\nConnection: close\r\n\r\n", Want { tokens: &["x-foo", "upgrade", "close"], ..w("GET", "/", 1, BodyFraming::None, false) }),
            ("leading CRLF", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", w("GET", "/", 1, BodyFraming::None, true)),
            ("absolute form", b"GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n", w("GET", "http://a/x?y", 1, BodyFraming::None, true)),
            ("authority form", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", w("CONNECT", "a:443", 1, BodyFraming::None, true)),
            ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", w("OPTIONS", "*", 1, BodyFraming::None, true)),
            ("IPv6 host and port", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", w("GET", "/", 1, BodyFraming::None, true)),
            ("empty host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", w("GET", "/", 1, BodyFraming::None, true)),
            ("obs-text value", b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", w("GET", "/", 1, BodyFraming::None, true)),
            ("extension method", b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n", w("PROPFIND", "/", 1, BodyFraming::None, true)),
        ]
    }

    #[test]
    fn valid_requests() {
        for (name, input, want) in valid_cases() {
            let (head, n) = match parse(input) {
                Ok(Some(v)) => v,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(n, head_end(input), "{name}");
            assert_eq!(head.method, want.method, "{name}");
            assert_eq!(head.target, want.target, "{name}");
            assert_eq!(head.minor_version, want.minor, "{name}");
            assert_eq!(head.framing, want.framing, "{name}");
            assert_eq!(head.keep_alive, want.keep_alive, "{name}");
            assert_eq!(head.expect_continue, want.expect_continue, "{name}");
            assert_eq!(head.connection_tokens, want.tokens, "{name}");
        }
    }

    #[test]
    fn incremental_prefixes() {
        for (name, input, _) in valid_cases() {
            let len = head_end(input);
            for end in 0..len {
                assert_eq!(parse(&input[..end]), Ok(None), "{name}: prefix {end}");
            }
            let got = parse(&input[..len]);
            assert!(matches!(got, Ok(Some((_, n))) if n == len), "{name}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        // A request line of exactly max_request_line bytes and a head of
        // exactly max_header_bytes bytes are accepted; one more byte is not.
        let target = format!("/{}", "a".repeat(64 - "GET  HTTP/1.1".len() - 1));
        let line = format!("GET {target} HTTP/1.1");
        assert_eq!(line.len(), 64);
        let req = format!("{line}\r\nHost: a\r\n\r\n");
        assert!(matches!(parse(req.as_bytes()), Ok(Some(_))));
        for end in 0..req.len() {
            assert_eq!(parse(&req.as_bytes()[..end]), Ok(None), "prefix {end}");
        }
        let req = format!("GET {target}a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(parse(req.as_bytes()), Err(HttpError::UriTooLong));

        let pad = 1024 - "GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".len();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(pad)
        );
        assert_eq!(req.len(), 1024);
        assert!(matches!(parse(req.as_bytes()), Ok(Some((_, 1024)))));
        for end in 0..req.len() {
            assert_eq!(parse(&req.as_bytes()[..end]), Ok(None), "prefix {end}");
        }
        let req = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}b\r\n\r\n",
            "b".repeat(pad)
        );
        assert_eq!(parse(req.as_bytes()), Err(HttpError::HeaderTooLarge));
        // A complete head followed by more bytes than the limit is still fine.
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        req.extend_from_slice(&[b'x'; 4096]);
        assert!(matches!(parse(&req), Ok(Some((_, 27)))));
    }

    #[test]
    fn normalize_path_keeps_the_query() {
        let raw = b"GET /v1//a/../b?x=/../y HTTP/1.1\r\nHost: h\r\n\r\n";
        let Ok(Some((mut head, _))) = parse(raw) else {
            panic!("did not parse");
        };
        assert_eq!(head.normalize_path(), Ok(()));
        assert_eq!(head.target, "/v1/b?x=/../y");
        assert_eq!(head.path(), "/v1/b");
        let raw = b"GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n";
        let Ok(Some((mut head, _))) = parse(raw) else {
            panic!("did not parse");
        };
        assert!(head.normalize_path().is_err());
    }

    #[test]
    fn header_count_limit() {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..MAX_HEADERS {
            req.push_str(&format!("X{i}: v\r\n"));
        }
        req.push_str("\r\n");
        let limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_request_line: 64,
        };
        let (head, n) = parse_request_head(req.as_bytes(), &limits)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((head.headers.len(), n), (MAX_HEADERS, req.len()));
    }

    #[test]
    fn pipelined() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let (first, n1) = parse(input).ok().flatten().unwrap();
        assert_eq!(n1, head_end(input));
        assert_eq!(first.framing, BodyFraming::Length(3));
        assert_eq!(&input[n1..n1 + 3], b"abc");
        let (second, n2) = parse(&input[n1 + 3..]).ok().flatten().unwrap();
        assert_eq!(n1 + 3 + n2, input.len());
        assert_eq!(second.path(), "/b");
        assert_eq!(second.query(), Some("q=1"));
        assert!(!second.keep_alive);

        let two_gets: &[u8] =
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
        let (a, n) = parse(two_gets).ok().flatten().unwrap();
        assert_eq!((a.target.as_str(), n), ("/1", 28));
        let (b, m) = parse(&two_gets[n..]).ok().flatten().unwrap();
        assert_eq!((b.target.as_str(), n + m), ("/2", two_gets.len()));
    }

    #[test]
    fn accessors() {
        let (head, _) = parse(b"GET /p/q HTTP/1.1\r\nHost: a\r\nX-Key: 1\r\nx-key: 2\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(head.header("X-KEY"), Some(&b"1"[..]));
        assert_eq!(head.header("host"), Some(&b"a"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.path(), "/p/q");
        assert_eq!(head.query(), None);
        assert_eq!(head.headers.len(), 3);
        assert_eq!(head.headers.get(1).map(|h| h.name), Some("X-Key"));
        let (head, _) = parse(b"GET /p? HTTP/1.1\r\nHost: a\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((head.path(), head.query()), ("/p", Some("")));
    }

    /// Deterministic pseudo-random inputs built from HTTP-ish fragments: the
    /// parser must never panic and must agree with itself on every prefix.
    #[test]
    fn no_panic_on_noise() {
        const FRAGS: &[&[u8]] = &[
            b"GET",
            b" ",
            b"/",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"\r\n",
            b"\n",
            b"\r",
            b"Host",
            b":",
            b"Content-Length",
            b"Transfer-Encoding",
            b"chunked",
            b"5",
            b",",
            b"\t",
            b"\0",
            b"\xff",
            b"?",
            b"*",
            b"CONNECT",
            b"a",
            b"Connection",
            b"close",
            b"Expect",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let limits = HeadLimits {
            max_header_bytes: 128,
            max_request_line: 40,
        };
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.extend_from_slice(FRAGS[(seed % FRAGS.len() as u64) as usize]);
            }
            for end in 0..=input.len() {
                if let Ok(Some((_, n))) = parse_request_head(&input[..end], &limits) {
                    assert!(n <= end && n <= limits.max_header_bytes);
                }
            }
        }
    }
}
