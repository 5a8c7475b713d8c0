//! Response-head parsing and RFC 9112 §6.3 body-length rules for upstream responses.
//!
//! The gateway re-frames every response it relays, so it must know exactly where
//! an upstream body ends; getting that wrong desynchronises the pooled upstream
//! connection and can splice one client's response into another's.

use super::headers::{fold_content_length, keep_alive, push_connection_tokens, TransferCodings};
use super::scan::{classify_header_error, skip_empty_lines, version_error};
use super::{BodyFraming, Headers, HttpError, MAX_HEADERS};

/// A parsed response head, owned so the read buffer can be reused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Three-digit status code, 100..=999.
    pub status: u16,
    /// Reason phrase as received; empty if absent or not UTF-8.
    pub reason: String,
    /// HTTP/1.x minor version: 0 or 1.
    pub minor_version: u8,
    /// All header fields in received order, hop-by-hop ones included.
    pub headers: Headers,
    /// Lowercased tokens of all Connection headers, for hop-by-hop stripping.
    pub connection_tokens: Vec<String>,
    /// Whether the upstream offers to keep the connection open. A
    /// close-delimited body still ends the connection whatever this says.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.is(name)).map(|h| h.value)
    }
}

/// Parses a response head from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed and `buf` is shorter than
/// `max_header_bytes`; `Ok(Some((head, head_len)))` means the head occupied
/// `buf[..head_len]`. Bare-LF line endings are accepted here (RFC 9112 §2.2
/// allows it) because the head is re-serialised before any client sees it;
/// everything else is as strict as for requests. Body framing is decided
/// separately by [`response_framing`], which needs the request method.
pub fn parse_response_head(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let scan = &buf[..buf.len().min(max_header_bytes)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match httparse::ParserConfig::default().parse_response(&mut resp, scan) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_header_bytes {
                Err(HttpError::HeaderTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(map_error(e, scan)),
    };
    let (Some(minor_version), Some(status)) = (resp.version, resp.code) else {
        return Err(HttpError::BadStatusLine);
    };
    if minor_version > 1 {
        return Err(HttpError::UnsupportedVersion);
    }
    // httparse guarantees three digits but lets 0xx through; no such class exists.
    if status < 100 {
        return Err(HttpError::BadStatusLine);
    }

    let mut connection_tokens = Vec::new();
    let mut headers = Headers::with_capacity(resp.headers.len(), head_len);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            push_connection_tokens(h.value, &mut connection_tokens);
        }
        headers.push(h.name, h.value);
    }
    let head = ResponseHead {
        status,
        reason: resp.reason.unwrap_or_default().to_owned(),
        minor_version,
        headers,
        keep_alive: keep_alive(minor_version, &connection_tokens),
        connection_tokens,
    };
    Ok(Some((head, head_len)))
}

fn map_error(e: httparse::Error, scan: &[u8]) -> HttpError {
    match e {
        httparse::Error::HeaderName => classify_header_error(scan),
        httparse::Error::HeaderValue => HttpError::BadHeader,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            let rest = scan.get(skip_empty_lines(scan)..).unwrap_or_default();
            let version = rest.split(|&b| b == b' ').next().unwrap_or_default();
            version_error(version, HttpError::BadStatusLine)
        }
        _ => HttpError::BadStatusLine,
    }
}

/// Body length of `head`, a response to a `request_method` request (RFC 9112 §6.3).
///
/// HEAD responses, 1xx, 204, 304 and 2xx answers to CONNECT have no body.
/// Otherwise a single final `chunked` coding gives `Chunked`, a valid
/// Content-Length gives `Length`, and neither gives `CloseDelimited`.
/// Both headers, conflicting lengths, Transfer-Encoding on HTTP/1.0, or any
/// coding besides `chunked` are errors: RFC 9112 would fall back to reading
/// until close for some of these, but a proxy that strips the hop-by-hop
/// Transfer-Encoding header cannot pass still-coded bytes on faithfully.
pub fn response_framing(
    request_method: &str,
    head: &ResponseHead,
) -> Result<BodyFraming, HttpError> {
    let status = head.status;
    if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request_method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status))
    {
        return Ok(BodyFraming::None);
    }
    let mut content_length = None;
    let mut te = TransferCodings::default();
    for h in &head.headers {
        if h.is("content-length") {
            fold_content_length(h.value, &mut content_length)?;
        } else if h.is("transfer-encoding") {
            te.add(h.value);
        }
    }
    if te.present {
        if head.minor_version == 0 {
            return Err(HttpError::TransferEncodingInHttp10);
        }
        if content_length.is_some() {
            return Err(HttpError::ContentLengthAndTransferEncoding);
        }
        return match te.require_chunked() {
            Ok(()) => Ok(BodyFraming::Chunked),
            Err(_) => Err(HttpError::UnsupportedTransferEncoding),
        };
    }
    Ok(match content_length {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::CloseDelimited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, request method, response head, expected framing)
    type FramingCase = (
        &'static str,
        &'static str,
        &'static [u8],
        Result<BodyFraming, HttpError>,
    );

    fn parse(input: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        parse_response_head(input, 1024)
    }

    fn head(input: &[u8]) -> ResponseHead {
        match parse(input) {
            Ok(Some((h, n))) => {
                assert_eq!(n, input.len());
                h
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    /// What httparse does with responses under the default config.
    #[test]
    fn httparse_baseline() {
        fn raw(input: &[u8]) -> Result<httparse::Status<usize>, httparse::Error> {
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut resp = httparse::Response::new(&mut slots);
            httparse::ParserConfig::default().parse_response(&mut resp, input)
        }
        assert_eq!(
            raw(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        assert_eq!(
            raw(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        // Accepted by httparse; a status below 100 is rejected by us.
        assert_eq!(
            raw(b"HTTP/1.1 099 OK\r\n\r\n"),
            Ok(httparse::Status::Complete(19))
        );
        assert_eq!(
            raw(b"HTTP/1.1 200 OK\nA: b\n\n"),
            Ok(httparse::Status::Complete(22))
        );
    }

    #[test]
    fn valid_responses() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-A\r\n\r\n");
        assert_eq!(
            (h.status, h.reason.as_str(), h.minor_version),
            (200, "OK", 1)
        );
        assert_eq!(h.header("content-length"), Some(&b"2"[..]));
        assert_eq!(h.connection_tokens, vec!["x-a".to_string()]);
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.reason, "Service Unavailable");
        let h = head(b"HTTP/1.1 204\r\n\r\n");
        assert_eq!((h.status, h.reason.as_str()), (204, ""));
        let h = head(b"HTTP/1.1 200 OK\nX: y\n\n");
        assert_eq!(h.header("x"), Some(&b"y"[..]));
    }

    #[test]
    fn rejections() {
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(1100));
        let cases: Vec<(&str, Vec<u8>, HttpError)> = vec![
            (
                "status below 100",
                b"HTTP/1.1 099 X\r\n\r\n".to_vec(),
                HttpError::BadStatusLine,
            ),
            (
                "four-digit status",
                b"HTTP/1.1 2000 X\r\n\r\n".to_vec(),
                HttpError::BadStatusLine,
            ),
            (
                "no status",
                b"HTTP/1.1 OK\r\n\r\n".to_vec(),
                HttpError::BadStatusLine,
            ),
            (
                "version 2",
                b"HTTP/2.0 200 OK\r\n\r\n".to_vec(),
                HttpError::UnsupportedVersion,
            ),
            (
                "garbage",
                b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
                HttpError::BadStatusLine,
            ),
            (
                "space before colon",
                b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n".to_vec(),
                HttpError::WhitespaceBeforeColon,
            ),
            (
                "obs-fold",
                b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n".to_vec(),
                HttpError::ObsFold,
            ),
            (
                "NUL",
                b"HTTP/1.1 200 OK\r\nA: \0\r\n\r\n".to_vec(),
                HttpError::BadHeader,
            ),
            ("too large", big.into_bytes(), HttpError::HeaderTooLarge),
        ];
        for (name, input, want) in cases {
            assert_eq!(
                parse(&input).map(|o| o.map(|(_, n)| n)),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn incremental() {
        let input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        let len = input.len() - 2;
        for end in 0..len {
            assert_eq!(parse(&input[..end]), Ok(None), "prefix {end}");
        }
        assert!(matches!(parse(input), Ok(Some((_, n))) if n == len));
    }

    #[test]
    fn framing() {
        let cases: Vec<FramingCase> = vec![
            (
                "HEAD with CL",
                "HEAD",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "HEAD chunked",
                "HEAD",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "204",
                "GET",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "304 with CL",
                "GET",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "100",
                "POST",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "101",
                "GET",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "CONNECT 200",
                "CONNECT",
                b"HTTP/1.1 200 OK\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "CONNECT 407",
                "CONNECT",
                b"HTTP/1.1 407 X\r\nContent-Length: 3\r\n\r\n",
                Ok(BodyFraming::Length(3)),
            ),
            (
                "200 CL",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
                Ok(BodyFraming::Length(42)),
            ),
            (
                "200 CL 0",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Ok(BodyFraming::Length(0)),
            ),
            (
                "200 chunked",
                "POST",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(BodyFraming::Chunked),
            ),
            (
                "200 neither",
                "GET",
                b"HTTP/1.1 200 OK\r\n\r\n",
                Ok(BodyFraming::CloseDelimited),
            ),
            (
                "1.0 neither",
                "GET",
                b"HTTP/1.0 200 OK\r\n\r\n",
                Ok(BodyFraming::CloseDelimited),
            ),
            (
                "404 CL",
                "GET",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n",
                Ok(BodyFraming::Length(9)),
            ),
            (
                "CL same twice",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
                Ok(BodyFraming::Length(4)),
            ),
            (
                "CL and TE",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(HttpError::ContentLengthAndTransferEncoding),
            ),
            (
                "CL conflict",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                Err(HttpError::ConflictingContentLength),
            ),
            (
                "CL bad",
                "GET",
                b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
                Err(HttpError::BadContentLength),
            ),
            (
                "TE gzip",
                "GET",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(HttpError::UnsupportedTransferEncoding),
            ),
            (
                "TE gzip, chunked",
                "GET",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(HttpError::UnsupportedTransferEncoding),
            ),
            (
                "TE on 1.0",
                "GET",
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(HttpError::TransferEncodingInHttp10),
            ),
        ];
        for (name, method, input, want) in cases {
            assert_eq!(response_framing(method, &head(input)), want, "{name}");
        }
    }

    #[test]
    fn no_panic_on_noise() {
        const FRAGS: &[&[u8]] = &[
            b"HTTP/1.1",
            b" ",
            b"200",
            b"099",
            b"OK",
            b"\r\n",
            b"\n",
            b"\r",
            b":",
            b"X",
            b"Content-Length",
            b"Transfer-Encoding",
            b"chunked",
            b"7",
            b",",
            b"\t",
            b"\0",
            b"\xff",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 30) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.extend_from_slice(FRAGS[(seed % FRAGS.len() as u64) as usize]);
            }
            for end in 0..=input.len() {
                if let Ok(Some((h, n))) = parse_response_head(&input[..end], 96) {
                    assert!(n <= end);
                    let _ = response_framing("GET", &h);
                }
            }
        }
    }
}
