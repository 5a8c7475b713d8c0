//! Header fields and the field-level rules shared by requests and responses.
//!
//! Request and response heads both derive their body framing from
//! Content-Length / Transfer-Encoding and their persistence from Connection;
//! keeping those rules here means the two parsers cannot drift apart, which is
//! exactly the kind of disagreement request smuggling exploits.

use super::HttpError;

/// One header field as received, borrowed from its head's [`Headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Field name exactly as received (case preserved for re-emission).
    pub name: &'a str,
    /// Field value with surrounding whitespace removed; may hold obs-text bytes.
    pub value: &'a [u8],
}

impl Header<'_> {
    /// Case-insensitive comparison of the field name.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A head's header fields in received order, owned. Names and values live in one buffer,
/// so a head costs two allocations however many fields it has (an owned `String` and
/// `Vec` per field was the request path's largest allocation count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Per field: (name start, name end = value start, value end) in `bytes`.
    spans: Vec<(u32, u32, u32)>,
}

impl Headers {
    /// Room for `fields` fields holding `bytes` bytes of names and values together.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        // Heads are bounded by max_header_bytes (far below 4 GiB), so u32 offsets suffice.
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name.as_bytes());
        let mid = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        self.spans.push((start, mid, self.bytes.len() as u32));
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `i`-th field in received order.
    pub fn get(&self, i: usize) -> Option<Header<'_>> {
        let &(a, m, e) = self.spans.get(i)?;
        let (a, m, e) = (a as usize, m as usize, e as usize);
        Some(Header {
            // SAFETY: names enter only through `push(&str, ..)`, which copies a whole `str`
            // to `a..m`; the bytes are never changed afterwards. (Validating again on every
            // lookup showed up at 2.5% of the proxy's cycles.)
            name: unsafe { std::str::from_utf8_unchecked(&self.bytes[a..m]) },
            value: &self.bytes[m..e],
        })
    }

    /// The fields in received order.
    pub fn iter(&self) -> HeadersIter<'_> {
        HeadersIter {
            headers: self,
            next: 0,
        }
    }
}

/// Iterator over [`Headers`].
pub struct HeadersIter<'a> {
    headers: &'a Headers,
    next: usize,
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        let h = self.headers.get(self.next)?;
        self.next += 1;
        Some(h)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.headers.len() - self.next;
        (left, Some(left))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = Header<'a>;
    type IntoIter = HeadersIter<'a>;

    fn into_iter(self) -> HeadersIter<'a> {
        self.iter()
    }
}

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// so a proxy must not forward them. Never-forwarded names are listed even where
/// the RFC is softer (Proxy-Connection is non-standard but still hop-by-hop in practice).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True if `name` must not be forwarded: a fixed hop-by-hop header or one named
/// in the Connection header (`connection_tokens`, already lowercased).
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// Removes leading and trailing SP / HTAB (optional whitespace, RFC 9110 §5.6.3).
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Non-empty list elements of a comma-separated field value. Empty elements are
/// skipped because RFC 9110 §5.6.1 requires recipients to tolerate them.
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Appends the lowercased tokens of one Connection header value.
pub(crate) fn push_connection_tokens(value: &[u8], out: &mut Vec<String>) {
    for el in list_elements(value) {
        // Connection options are tokens; anything else cannot name a header, so
        // dropping it loses nothing and keeps junk out of the hop-by-hop set.
        if let Ok(s) = std::str::from_utf8(el) {
            if !out.iter().any(|t| t.eq_ignore_ascii_case(s)) {
                out.push(s.to_ascii_lowercase());
            }
        }
    }
}

/// Whether the connection persists after this message (RFC 9112 §9.3).
pub(crate) fn keep_alive(minor_version: u8, connection_tokens: &[String]) -> bool {
    if connection_tokens.iter().any(|t| t == "close") {
        return false;
    }
    minor_version >= 1 || connection_tokens.iter().any(|t| t == "keep-alive")
}

/// Folds one Content-Length field value into `acc`.
///
/// A list ("5, 5") is accepted only when every element is the same number,
/// because senders that merge duplicate fields produce exactly that; any
/// disagreement means two parties could pick different lengths.
pub(crate) fn fold_content_length(value: &[u8], acc: &mut Option<u64>) -> Result<(), HttpError> {
    let mut any = false;
    for el in value.split(|&b| b == b',') {
        let el = trim_ows(el);
        let n = parse_decimal(el)?;
        any = true;
        match *acc {
            Some(prev) if prev != n => return Err(HttpError::ConflictingContentLength),
            _ => *acc = Some(n),
        }
    }
    if !any {
        return Err(HttpError::BadContentLength);
    }
    Ok(())
}

/// Strict 1*DIGIT → u64; no sign, no whitespace, no overflow.
fn parse_decimal(s: &[u8]) -> Result<u64, HttpError> {
    if s.is_empty() {
        return Err(HttpError::BadContentLength);
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(HttpError::BadContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(HttpError::BadContentLength)?;
    }
    Ok(n)
}

/// Running summary of every Transfer-Encoding field in a message.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TransferCodings {
    /// Any Transfer-Encoding field was seen, even an empty one.
    pub present: bool,
    /// How many times `chunked` appears across all fields.
    pub chunked_count: u32,
    /// The last coding seen is `chunked`.
    pub chunked_last: bool,
    /// Some coding other than `chunked` appears.
    pub other: bool,
}

impl TransferCodings {
    /// Folds one Transfer-Encoding field value in; fields combine in order.
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for el in list_elements(value) {
            let chunked = el.eq_ignore_ascii_case(b"chunked");
            if chunked {
                self.chunked_count = self.chunked_count.saturating_add(1);
            } else {
                self.other = true;
            }
            self.chunked_last = chunked;
        }
    }

    /// The only acceptable shape: exactly one coding, `chunked`.
    ///
    /// Anything else is refused rather than passed through, since a proxy that
    /// strips Transfer-Encoding (hop-by-hop) while forwarding still-coded bytes
    /// would corrupt the message.
    pub fn require_chunked(&self) -> Result<(), HttpError> {
        if self.chunked_count != 1 || !self.chunked_last {
            return Err(HttpError::ChunkedNotFinal);
        }
        if self.other {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, field values in order, expected outcome)
    type Case<T> = (&'static str, Vec<&'static [u8]>, Result<T, HttpError>);

    #[test]
    fn hop_by_hop() {
        let toks = vec!["x-foo".to_string()];
        for n in [
            "Connection",
            "keep-alive",
            "PROXY-CONNECTION",
            "Proxy-Authenticate",
            "proxy-authorization",
            "TE",
            "Trailer",
            "transfer-encoding",
            "Upgrade",
            "X-Foo",
        ] {
            assert!(is_hop_by_hop(n, &toks), "{n}");
        }
        for n in [
            "Host",
            "Content-Length",
            "Trailers",
            "x-bar",
            "Authorization",
        ] {
            assert!(!is_hop_by_hop(n, &toks), "{n}");
        }
    }

    #[test]
    fn content_length_folding() {
        let cases: Vec<Case<u64>> = vec![
            ("single", vec![b"5"], Ok(5)),
            ("zero", vec![b"0"], Ok(0)),
            ("leading zeros", vec![b"007"], Ok(7)),
            ("max", vec![b"18446744073709551615"], Ok(u64::MAX)),
            ("same list", vec![b"5, 5"], Ok(5)),
            ("same twice", vec![b"5", b"5"], Ok(5)),
            (
                "differing list",
                vec![b"5, 6"],
                Err(HttpError::ConflictingContentLength),
            ),
            (
                "differing fields",
                vec![b"5", b"6"],
                Err(HttpError::ConflictingContentLength),
            ),
            (
                "overflow",
                vec![b"18446744073709551616"],
                Err(HttpError::BadContentLength),
            ),
            ("plus", vec![b"+5"], Err(HttpError::BadContentLength)),
            ("minus", vec![b"-5"], Err(HttpError::BadContentLength)),
            ("hex", vec![b"0x5"], Err(HttpError::BadContentLength)),
            ("empty", vec![b""], Err(HttpError::BadContentLength)),
            (
                "empty element",
                vec![b"5,,5"],
                Err(HttpError::BadContentLength),
            ),
            (
                "inner space",
                vec![b"5 5"],
                Err(HttpError::BadContentLength),
            ),
            ("float", vec![b"5.0"], Err(HttpError::BadContentLength)),
        ];
        for (name, values, want) in cases {
            let mut acc = None;
            let got = values
                .iter()
                .try_for_each(|v| fold_content_length(v, &mut acc))
                .map(|()| acc.unwrap_or(u64::MAX));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn transfer_codings() {
        let cases: Vec<Case<()>> = vec![
            ("chunked", vec![b"chunked"], Ok(())),
            ("case", vec![b"ChUnKeD"], Ok(())),
            ("empty elements", vec![b" , chunked ,"], Ok(())),
            (
                "gzip chunked",
                vec![b"gzip, chunked"],
                Err(HttpError::UnsupportedTransferEncoding),
            ),
            (
                "split fields",
                vec![b"gzip", b"chunked"],
                Err(HttpError::UnsupportedTransferEncoding),
            ),
            (
                "chunked gzip",
                vec![b"chunked, gzip"],
                Err(HttpError::ChunkedNotFinal),
            ),
            (
                "twice",
                vec![b"chunked, chunked"],
                Err(HttpError::ChunkedNotFinal),
            ),
            (
                "twice fields",
                vec![b"chunked", b"chunked"],
                Err(HttpError::ChunkedNotFinal),
            ),
            (
                "chunkedx",
                vec![b"chunkedx"],
                Err(HttpError::ChunkedNotFinal),
            ),
            (
                "identity",
                vec![b"identity"],
                Err(HttpError::ChunkedNotFinal),
            ),
            ("empty", vec![b""], Err(HttpError::ChunkedNotFinal)),
            (
                "params",
                vec![b"chunked;q=1"],
                Err(HttpError::ChunkedNotFinal),
            ),
        ];
        for (name, values, want) in cases {
            let mut te = TransferCodings::default();
            values.iter().for_each(|v| te.add(v));
            assert!(te.present);
            assert_eq!(te.require_chunked(), want, "{name}");
        }
    }

    #[test]
    fn connection_tokens_and_keep_alive() {
        let mut t = Vec::new();
        push_connection_tokens(b"Keep-Alive, , X-Foo", &mut t);
        push_connection_tokens(b"x-foo", &mut t);
        assert_eq!(t, vec!["keep-alive".to_string(), "x-foo".to_string()]);
        assert!(keep_alive(1, &[]));
        assert!(!keep_alive(0, &[]));
        assert!(keep_alive(0, &t));
        assert!(!keep_alive(1, &["close".to_string()]));
        assert!(!keep_alive(
            0,
            &["keep-alive".to_string(), "close".to_string()]
        ));
    }

    #[test]
    fn trimming() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
    }
}
