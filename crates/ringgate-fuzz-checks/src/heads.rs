//! Request and response heads: parse, then re-encode with ringgate's own head writers and
//! parse again, which must give the same head (the identity the proxy relies on when it
//! rebuilds heads). Also: a head cut short is never an error when the whole head is fine
//! (the verdict must not depend on how TCP split the bytes).
//!
//! Inputs are structure-aware: the first byte picks raw bytes (odd) or a head built from
//! [`arbitrary`] fields (even), so the fuzzer spends its time past httparse's first check,
//! on Content-Length / Transfer-Encoding / Host / Connection / Expect combinations.

use arbitrary::{Arbitrary, Unstructured};
use ringgate::http::{
    parse_request_head, parse_response_head, reason_phrase, response_framing, write_request_head,
    write_response_head, HeadLimits, RequestHead, ResponseHead,
};

/// Response heads are bounded at 64 KiB by the proxy.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Limits that never refuse a re-encoded head (re-encoding may lengthen it a little).
const UNBOUNDED: HeadLimits = HeadLimits {
    max_header_bytes: usize::MAX / 2,
    max_request_line: usize::MAX / 2,
};

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Post,
    Head,
    Options,
    Connect,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Path(Vec<Segment>, Option<String>),
    Asterisk,
    Absolute(String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Segment {
    Word(String),
    Dot,
    DotDot,
    Empty,
    Escape(u8),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    ContentType,
    RetryAfter,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Number(u64),
    Chunked,
    Codings(Vec<String>),
    Close,
    KeepAlive,
    Continue,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Field {
    name: Name,
    /// Spaces/tabs before the colon is illegal; around the value is OWS.
    space_before_colon: bool,
    ows: u8,
    value: Value,
}

#[derive(Arbitrary, Debug)]
struct RequestSpec {
    leading_crlf: u8,
    method: Method,
    target: Target,
    minor: u8,
    fields: Vec<Field>,
    bare_lf: bool,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct ResponseSpec {
    minor: u8,
    status: u16,
    reason: String,
    fields: Vec<Field>,
    bare_lf: bool,
    body: Vec<u8>,
}

fn write_fields(out: &mut Vec<u8>, fields: &[Field], eol: &[u8]) {
    for f in fields {
        let name: &[u8] = match &f.name {
            Name::Host => b"Host",
            Name::ContentLength => b"Content-Length",
            Name::TransferEncoding => b"Transfer-Encoding",
            Name::Connection => b"connection",
            Name::Expect => b"Expect",
            Name::ContentType => b"Content-Type",
            Name::RetryAfter => b"Retry-After",
            Name::Other(s) => s.as_bytes(),
        };
        out.extend_from_slice(name);
        if f.space_before_colon {
            out.push(b' ');
        }
        out.push(b':');
        let ows: &[u8] = match f.ows % 4 {
            0 => b"",
            1 => b" ",
            2 => b"\t",
            _ => b" \t ",
        };
        out.extend_from_slice(ows);
        match &f.value {
            Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::Chunked => out.extend_from_slice(b"chunked"),
            Value::Codings(c) => out.extend_from_slice(c.join(", ").as_bytes()),
            Value::Close => out.extend_from_slice(b"close"),
            Value::KeepAlive => out.extend_from_slice(b"keep-alive"),
            Value::Continue => out.extend_from_slice(b"100-continue"),
            Value::Raw(v) => out.extend_from_slice(v),
        }
        out.extend_from_slice(ows);
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
}

fn request_bytes(s: &RequestSpec) -> Vec<u8> {
    let eol: &[u8] = if s.bare_lf { b"\n" } else { b"\r\n" };
    let mut out = Vec::new();
    for _ in 0..s.leading_crlf % 3 {
        out.extend_from_slice(b"\r\n");
    }
    let method = match &s.method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
        Method::Connect => "CONNECT",
        Method::Other(m) => m,
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    match &s.target {
        Target::Path(segs, query) => {
            for seg in segs {
                out.push(b'/');
                match seg {
                    Segment::Word(w) => out.extend_from_slice(w.as_bytes()),
                    Segment::Dot => out.push(b'.'),
                    Segment::DotDot => out.extend_from_slice(b".."),
                    Segment::Empty => {}
                    Segment::Escape(b) => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
                }
            }
            if segs.is_empty() {
                out.push(b'/');
            }
            if let Some(q) = query {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        Target::Asterisk => out.push(b'*'),
        Target::Absolute(rest) => {
            out.extend_from_slice(b"http://");
            out.extend_from_slice(rest.as_bytes());
        }
        Target::Raw(t) => out.extend_from_slice(t.as_bytes()),
    }
    out.extend_from_slice(format!(" HTTP/1.{}", s.minor % 3).as_bytes());
    out.extend_from_slice(eol);
    write_fields(&mut out, &s.fields, eol);
    out.extend_from_slice(&s.body);
    out
}

fn response_bytes(s: &ResponseSpec) -> Vec<u8> {
    let eol: &[u8] = if s.bare_lf { b"\n" } else { b"\r\n" };
    let mut out =
        format!("HTTP/1.{} {:03} {}", s.minor % 3, s.status % 1000, s.reason).into_bytes();
    out.extend_from_slice(eol);
    write_fields(&mut out, &s.fields, eol);
    out.extend_from_slice(&s.body);
    out
}

/// The head bytes a check works on: raw (first byte odd) or built from fields.
fn head_input(
    data: &[u8],
    build: impl FnOnce(&mut Unstructured<'_>) -> Option<Vec<u8>>,
) -> Vec<u8> {
    match data.split_first() {
        Some((flag, rest)) if flag & 1 == 0 => {
            build(&mut Unstructured::new(rest)).unwrap_or_default()
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// `http::write_request_head`'s target encoding: bytes outside VCHAR percent-encoded.
fn encoded_target(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    for b in t.bytes() {
        if (0x21..0x7f).contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Request head target: parse with the default limits; prefixes; normalization;
/// re-encode → parse identity for HTTP/1.1 heads.
pub fn check_request_head(data: &[u8]) {
    let buf = head_input(data, |u| {
        Some(request_bytes(&RequestSpec::arbitrary(u).ok()?))
    });
    let limits = HeadLimits::default();
    let Ok(Some((head, n))) = parse_request_head(&buf, &limits) else {
        return;
    };
    assert!(n <= buf.len() && n <= limits.max_header_bytes);
    for cut in [n - 1, n / 2, n.saturating_sub(2)] {
        match parse_request_head(&buf[..cut], &limits) {
            Ok(None) => {}
            other => panic!("prefix {cut} of a valid {n}-byte head: {other:?}"),
        }
    }
    let mut normal = head.clone();
    if normal.normalize_path().is_ok() {
        let again = normal.target.clone();
        assert!(normal.normalize_path().is_ok(), "normal form refused");
        assert_eq!(normal.target, again, "normalization is not idempotent");
        assert_eq!(normal.query(), head.query(), "the query changed");
    }
    if head.minor_version != 1 {
        // The writer speaks HTTP/1.1 only; a 1.0 head means something else as 1.1.
        return;
    }
    let fields: Vec<(&str, &[u8])> = head.headers.iter().map(|h| (h.name, h.value)).collect();
    let mut out = Vec::new();
    write_request_head(&mut out, &head.method, &head.target, &fields);
    let again = reparse_request(&out);
    let want = RequestHead {
        target: encoded_target(&head.target),
        ..head
    };
    assert_eq!(
        again, want,
        "parse -> write_request_head -> parse changed the head"
    );
}

fn reparse_request(out: &[u8]) -> RequestHead {
    match parse_request_head(out, &UNBOUNDED) {
        Ok(Some((h, m))) if m == out.len() => h,
        other => panic!(
            "re-encoded head {:?} does not parse: {other:?}",
            String::from_utf8_lossy(out)
        ),
    }
}

/// Response head target: parse, framing for every method, prefixes, and re-encode →
/// parse identity through `http::write_response_head` for HTTP/1.1 heads.
pub fn check_response_head(data: &[u8]) {
    let buf = head_input(data, |u| {
        Some(response_bytes(&ResponseSpec::arbitrary(u).ok()?))
    });
    let Ok(Some((head, n))) = parse_response_head(&buf, MAX_RESPONSE_HEAD) else {
        return;
    };
    assert!(n <= buf.len());
    for cut in [n - 1, n / 2] {
        match parse_response_head(&buf[..cut], MAX_RESPONSE_HEAD) {
            Ok(None) => {}
            other => panic!("prefix {cut} of a valid {n}-byte head: {other:?}"),
        }
    }
    let methods = ["GET", "HEAD", "POST", "CONNECT"];
    let framings: Vec<_> = methods.iter().map(|m| response_framing(m, &head)).collect();
    let _ = ringgate::proxy::quota::retry_after(&head);
    if head.minor_version != 1 {
        return;
    }
    let fields: Vec<(&str, &[u8])> = head.headers.iter().map(|h| (h.name, h.value)).collect();
    let mut out = Vec::new();
    write_response_head(&mut out, head.status, &head.reason, &fields);
    let again = match parse_response_head(&out, usize::MAX / 2) {
        Ok(Some((h, m))) if m == out.len() => h,
        other => panic!(
            "re-encoded head {:?} does not parse: {other:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    let want = ResponseHead {
        reason: if head.reason.is_empty() {
            reason_phrase(head.status).to_string()
        } else {
            head.reason.clone()
        },
        ..head
    };
    assert_eq!(
        again, want,
        "parse -> write_response_head -> parse changed the head"
    );
    for (m, f) in methods.iter().zip(framings) {
        assert_eq!(response_framing(m, &again), f, "framing for {m} changed");
    }
}
