//! Byte-level checks on raw heads that httparse does not do, or does not report precisely.
//!
//! httparse accepts bare LF line endings and reports obs-fold, whitespace before
//! a colon and a bad name all as one `HeaderName` error. These helpers add the
//! missing rejection and recover the precise cause for logs; they run either
//! once over a complete head or only on the error path, so the hot path pays
//! a single linear scan.

use super::HttpError;

/// RFC 9110 §5.6.2 tchar: the bytes allowed in methods and field names.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a field value or reason phrase: HTAB, SP, VCHAR, obs-text.
pub(crate) fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Index just past the empty lines httparse skips before a start line
/// (RFC 9112 §2.2 lets a server ignore them).
pub(crate) fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\r', b'\n', ..]) => i += 2,
            Some([b'\n', ..]) => i += 1,
            _ => return i,
        }
    }
}

/// Length of the start line beginning at `start` (terminator excluded), or
/// `None` if no CR/LF appears within `limit + 1` bytes of it. Bounded so a
/// huge incomplete buffer is not rescanned on every read.
pub(crate) fn start_line_len(buf: &[u8], start: usize, limit: usize) -> Option<usize> {
    let end = buf.len().min(start.saturating_add(limit).saturating_add(1));
    buf.get(start..end)?
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
}

/// Rejects any LF not preceded by CR; httparse accepts them, and a peer that
/// does not could see a different set of header lines.
pub(crate) fn reject_bare_lf(head: &[u8]) -> Result<(), HttpError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(HttpError::BareLf);
        }
        prev = b;
    }
    Ok(())
}

/// Works out why httparse rejected a header name, from the raw bytes.
pub(crate) fn classify_header_error(buf: &[u8]) -> HttpError {
    let start = skip_empty_lines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    // The first line is the start line, which httparse had already accepted.
    let mut lines = rest.split(|&b| b == b'\n').skip(1);
    for line in lines.by_ref() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return HttpError::ObsFold;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return HttpError::BadHeader;
        };
        let name = &line[..colon];
        if matches!(name.last(), Some(b' ' | b'\t')) {
            return HttpError::WhitespaceBeforeColon;
        }
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return HttpError::BadHeader;
        }
    }
    HttpError::BadHeader
}

/// Tells a well-formed but unsupported version (505) from a garbled start line (400).
/// `token` is the version field: the last word of a request line or the first
/// of a status line.
pub(crate) fn version_error(token: &[u8], otherwise: HttpError) -> HttpError {
    match token {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HttpError::UnsupportedVersion
        }
        _ => otherwise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf() {
        assert_eq!(reject_bare_lf(b"a\r\nb\r\n\r\n"), Ok(()));
        assert_eq!(reject_bare_lf(b"a\nb"), Err(HttpError::BareLf));
        assert_eq!(reject_bare_lf(b"\n"), Err(HttpError::BareLf));
    }

    #[test]
    fn start_line() {
        assert_eq!(skip_empty_lines(b"\r\n\nGET"), 3);
        assert_eq!(skip_empty_lines(b"\r"), 0);
        assert_eq!(start_line_len(b"GET / HTTP/1.1\r\n", 0, 14), Some(14));
        assert_eq!(start_line_len(b"GET / HTTP/1.1\r\n", 0, 13), None);
        assert_eq!(start_line_len(b"GET", 0, 13), None);
        assert_eq!(start_line_len(b"", 5, 13), None);
    }

    #[test]
    fn classify() {
        let cases: Vec<(&[u8], HttpError)> = vec![
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", HttpError::ObsFold),
            (b"GET / HTTP/1.1\r\n\tA: b\r\n\r\n", HttpError::ObsFold),
            (
                b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
                HttpError::WhitespaceBeforeColon,
            ),
            (
                b"GET / HTTP/1.1\r\nA\t: b\r\n\r\n",
                HttpError::WhitespaceBeforeColon,
            ),
            (b"GET / HTTP/1.1\r\nA(: b\r\n\r\n", HttpError::BadHeader),
            (b"GET / HTTP/1.1\r\n: b\r\n\r\n", HttpError::BadHeader),
            (b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", HttpError::BadHeader),
            (b"", HttpError::BadHeader),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify_header_error(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn versions() {
        let other = HttpError::BadRequestLine;
        assert_eq!(
            version_error(b"HTTP/2.0", other.clone()),
            HttpError::UnsupportedVersion
        );
        assert_eq!(
            version_error(b"HTTP/1.2", other.clone()),
            HttpError::UnsupportedVersion
        );
        assert_eq!(version_error(b"HTTP/1.10", other.clone()), other);
        assert_eq!(version_error(b"HTTX/1.1", other.clone()), other);
    }
}
