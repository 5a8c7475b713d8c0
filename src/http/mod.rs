//! Sans-IO HTTP/1.1 framing: parse request and response heads, decide body
//! framing, decode and encode chunked bodies, and serialise re-framed heads.
//!
//! The proxy owns sockets and buffers; this module only looks at bytes it is
//! handed and says how many it consumed. Keeping framing free of I/O makes every
//! smuggling-relevant decision (which bytes are head, which are body, where the
//! body ends) unit-testable byte by byte. Parsing is deliberately strict: a
//! gateway that accepts what its upstreams or peers read differently is the
//! classic request-smuggling setup, so ambiguity is an error, never a guess.

mod chunked;
pub mod date;
mod error;
mod headers;
pub mod path;
mod request;
mod response;
mod scan;

pub use chunked::{
    encode_chunk, encode_chunk_header, ChunkEvent, ChunkedDecoder, CHUNK_END, LAST_CHUNK,
};
pub use error::HttpError;
pub use headers::{is_hop_by_hop, Header, Headers, HeadersIter};
pub use request::{parse_request_head, RequestHead};
pub use response::{parse_response_head, response_framing, ResponseHead};

use scan::{is_field_byte, is_tchar};

/// Most header fields one head may carry; the parser's stack array has this many slots.
pub const MAX_HEADERS: usize = 128;

/// Size bounds applied while a head is still arriving, so a slow or hostile
/// peer cannot make the gateway buffer without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes in the whole head, start line and final empty line included (over → 431).
    pub max_header_bytes: usize,
    /// Bytes in the request line, CRLF excluded (over → 414).
    pub max_request_line: usize,
}

impl Default for HeadLimits {
    /// 64 KiB head and 8 KiB request line: generous for API clients, still bounded.
    fn default() -> Self {
        HeadLimits {
            max_header_bytes: 64 * 1024,
            max_request_line: 8 * 1024,
        }
    }
}

/// How the body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (may be 0, kept distinct so `Content-Length: 0` can be forwarded).
    Length(u64),
    /// Chunked transfer coding; decode with [`ChunkedDecoder`].
    Chunked,
    /// Response only: the body runs until the upstream closes the connection.
    CloseDelimited,
}

/// Serialises an HTTP/1.1 request head into `out`.
///
/// This is the last step before bytes reach an upstream, so it refuses to emit
/// anything that could split the message: header fields with a non-token name or
/// a CR/LF/NUL/control byte in the value are dropped, target bytes outside
/// VCHAR are percent-encoded and non-token bytes in the method are dropped.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
) {
    out.reserve(
        method.len()
            + target.len()
            + 14
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
            + 2,
    );
    out.extend(method.bytes().filter(|&b| is_tchar(b)));
    out.push(b' ');
    for b in target.bytes() {
        if (0x21..0x7f).contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&percent(b));
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, headers);
}

/// Serialises an HTTP/1.1 response head into `out`.
///
/// An empty `reason` is replaced by [`reason_phrase`]; a status outside
/// 100..=999 cannot be written as three digits and becomes 500. Header fields
/// are filtered as in [`write_request_head`], and unsafe reason bytes dropped.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[(&str, &[u8])],
) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let reason = if reason.is_empty() {
        reason_phrase(status)
    } else {
        reason
    };
    out.reserve(
        15 + reason.len()
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
            + 2,
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    // The guard above keeps status to three digits, so each `as u8` is exact.
    out.push(b'0' + (status / 100) as u8);
    out.push(b'0' + (status / 10 % 10) as u8);
    out.push(b'0' + (status % 10) as u8);
    out.push(b' ');
    out.extend(reason.bytes().filter(|&b| is_field_byte(b)));
    out.extend_from_slice(b"\r\n");
    write_fields(out, headers);
}

/// Writes header lines and the terminating empty line, skipping unsafe fields.
fn write_fields(out: &mut Vec<u8>, headers: &[(&str, &[u8])]) {
    for (name, value) in headers {
        let name_ok = !name.is_empty() && name.bytes().all(is_tchar);
        if !name_ok || !value.iter().all(|&b| is_field_byte(b)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn percent(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]
}

/// Canonical reason phrase for `status` (RFC 9110 §15), or "" if it has none.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_encoding() {
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "POST",
            "/v1/chat?x=1",
            &[("Host", b"a.example"), ("Content-Length", b"5")],
        );
        assert_eq!(
            out,
            b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n"
        );
        // Round-trips through our own parser.
        let (head, n) = parse_request_head(&out, &HeadLimits::default())
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!(head.framing, BodyFraming::Length(5));
    }

    #[test]
    fn request_head_encoding_refuses_injection() {
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "GE\r\nT",
            "/a b\r\n\u{e9}",
            &[
                ("Host", b"h"),
                ("X-Evil", b"a\r\nInjected: 1"),
                ("Bad Name", b"v"),
                ("", b"v"),
                ("X-Nul", b"a\0b"),
                ("X-Ok", b"caf\xc3\xa9\tx"),
            ],
        );
        assert_eq!(
            out,
            b"GET /a%20b%0D%0A%C3%A9 HTTP/1.1\r\nHost: h\r\nX-Ok: caf\xc3\xa9\tx\r\n\r\n"
        );
    }

    #[test]
    fn response_head_encoding() {
        let cases: Vec<(u16, &str, &[u8])> = vec![
            (200, "", b"HTTP/1.1 200 OK\r\n"),
            (404, "Nope", b"HTTP/1.1 404 Nope\r\n"),
            (599, "", b"HTTP/1.1 599 \r\n"),
            (42, "", b"HTTP/1.1 500 Internal Server Error\r\n"),
            (1000, "", b"HTTP/1.1 500 Internal Server Error\r\n"),
            (200, "O\r\nK", b"HTTP/1.1 200 OK\r\n"),
        ];
        for (status, reason, want) in cases {
            let mut out = Vec::new();
            write_response_head(&mut out, status, reason, &[]);
            let mut expected = want.to_vec();
            expected.extend_from_slice(b"\r\n");
            assert_eq!(out, expected, "{status} {reason:?}");
        }
        let mut out = Vec::new();
        write_response_head(&mut out, 204, "", &[("Server", b"ringgate")]);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: ringgate\r\n\r\n");
    }

    /// The consumption contract end to end: head, chunked body, then the next
    /// pipelined request, each starting exactly where the previous one ended.
    #[test]
    fn request_then_chunked_body_then_pipelined_request() {
        let input: &[u8] =
            b"POST /v1/chat HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\nT: 1\r\n\r\n\
            GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
        let limits = HeadLimits::default();
        let (head, mut pos) = parse_request_head(input, &limits).ok().flatten().unwrap();
        assert_eq!(head.framing, BodyFraming::Chunked);
        let mut dec = ChunkedDecoder::new();
        let mut body = Vec::new();
        loop {
            let (n, ev) = dec.decode(&input[pos..]).unwrap();
            match ev {
                ChunkEvent::Data(r) => body.extend_from_slice(&input[pos..][r]),
                ChunkEvent::Done => {
                    pos += n;
                    break;
                }
                ChunkEvent::NeedMore => panic!("body is complete"),
            }
            pos += n;
        }
        assert_eq!(body, b"abcdef");
        let (next, n) = parse_request_head(&input[pos..], &limits)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((next.target.as_str(), pos + n), ("/next", input.len()));
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(799), "");
    }
}
