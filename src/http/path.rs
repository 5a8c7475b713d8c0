//! Request-path normalization before routing.
//!
//! A route's prefix is only a boundary if the gateway and the upstream agree on what a path
//! means. Upstreams resolve `..`, merge slashes, decode escapes and (Tomcat, Spring) strip
//! `;` parameters; if the gateway routed on the raw bytes, `/v1/chat/completions/../../admin`
//! would match the chat route and reach `/admin` upstream. So the path is normalized once,
//! right after parsing, and routing, rewriting, logging and the upstream all see the same
//! normal form (Envoy's `normalize_path` + `merge_slashes`, nginx's default URI handling):
//!
//! - dot segments are removed as in RFC 3986 §5.2.4; a `..` that would climb above the root
//!   is refused (nginx answers 400 too, where the RFC would silently drop it);
//! - consecutive slashes are merged;
//! - percent-escapes of unreserved characters (`ALPHA DIGIT - . _ ~`, RFC 3986 §2.3) are
//!   decoded, since they are equivalent to the plain character (§6.2.2.2) and an upstream
//!   decodes them anyway: `/v1/%63hat/completions` must take the chat route, not a catch-all
//!   one without its limits. Other escapes are kept byte for byte (Envoy does the same);
//! - refused (400), because an upstream may read them as a different path than the gateway
//!   routed: escaped `/` (`%2F`) and `\` (`%5C`) (Envoy's `path_with_escaped_slashes_action`
//!   set to reject), a dot segment written with escapes (`%2e%2e`), a dot segment carrying
//!   `;` parameters (`..;x`, which Tomcat resolves as `..`), a literal `\`, `%00`, a
//!   fragment `#`, and malformed escapes.
//!
//! A path that is already normal is returned borrowed: the common case allocates nothing.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (not origin-form).
    #[error("only origin-form targets (\"/path\") are accepted")]
    NotOriginForm,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape in the path")]
    BadEscape,
    /// `%2F`: an escaped slash, which upstreams may or may not split on.
    #[error("escaped slash (%2F) in the path")]
    EscapedSlash,
    /// `%5C` or a literal `\`, which some upstreams read as `/`.
    #[error("backslash in the path")]
    Backslash,
    /// `%00`, which C-based upstreams may read as the end of the path.
    #[error("escaped NUL (%00) in the path")]
    EscapedNul,
    /// A `.` or `..` segment spelled with `%2E`.
    #[error("dot segment written with percent-escapes in the path")]
    EscapedDotSegment,
    /// A `.` or `..` segment with `;` parameters (`..;x`), resolved as `..` by some upstreams.
    #[error("dot segment with ;parameters in the path")]
    DotSegmentParameter,
    /// A `..` above the root (`/../x`).
    #[error("the path climbs above the root with ..")]
    AboveRoot,
    /// A `#` fragment, which is never sent in a request target (RFC 9112 §3.2.1).
    #[error("fragment (#) in the request target")]
    Fragment,
}

/// RFC 3986 §2.3 unreserved characters: decoding their escapes never changes meaning.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XX` escape at `b[i]` stands for.
fn escape_at(b: &[u8], i: usize) -> Result<u8, PathError> {
    match (
        b.get(i + 1).copied().and_then(hex),
        b.get(i + 2).copied().and_then(hex),
    ) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadEscape),
    }
}

/// How many dots a segment name is made of, when it is made only of dots (literal or
/// `%2E`): `Some((dots, escaped))`.
fn dots_of(name: &[u8]) -> Option<(usize, bool)> {
    let (mut i, mut dots, mut escaped) = (0, 0, false);
    while i < name.len() {
        if name[i] == b'.' {
            i += 1;
        } else if name[i] == b'%' && escape_at(name, i) == Ok(b'.') {
            escaped = true;
            i += 3;
        } else {
            return None;
        }
        dots += 1;
    }
    Some((dots, escaped))
}

/// What a segment is, for dot-segment removal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seg {
    Plain,
    Dot,
    DotDot,
}

/// Classifies one segment (the bytes between two slashes), refusing the ambiguous forms.
fn classify(seg: &[u8]) -> Result<Seg, PathError> {
    let semi = seg.iter().position(|&b| b == b';');
    let name = &seg[..semi.unwrap_or(seg.len())];
    let kind = match dots_of(name) {
        Some((1, escaped)) => (Seg::Dot, escaped),
        Some((2, escaped)) => (Seg::DotDot, escaped),
        _ => return Ok(Seg::Plain),
    };
    match kind {
        (_, true) => Err(PathError::EscapedDotSegment),
        _ if semi.is_some() => Err(PathError::DotSegmentParameter),
        (s, false) => Ok(s),
    }
}

/// Normalizes a request path (the target without its `?query`). Returns it borrowed when
/// it is already normal; see the module docs for the rules.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Pass 1: refuse what must be refused and find out whether anything changes.
    let mut dirty = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                match escape_at(b, i)? {
                    b'/' => return Err(PathError::EscapedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::EscapedNul),
                    c if is_unreserved(c) => dirty = true,
                    _ => {}
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            b'/' if b.get(i + 1) == Some(&b'/') => {
                dirty = true;
                i += 1;
            }
            _ => i += 1,
        }
    }
    for seg in b[1..].split(|&c| c == b'/') {
        if classify(seg)? != Seg::Plain {
            dirty = true;
        }
    }
    if !dirty {
        return Ok(Cow::Borrowed(path));
    }
    // Pass 2: rebuild. `out` holds "/seg/seg" (no trailing slash until the last segment).
    let mut out = String::with_capacity(path.len());
    let mut segs = path[1..].split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        match classify(seg.as_bytes())? {
            Seg::Dot => {}
            Seg::DotDot => {
                if out.is_empty() {
                    return Err(PathError::AboveRoot);
                }
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            Seg::Plain if seg.is_empty() => {}
            Seg::Plain => {
                out.push('/');
                push_decoded(&mut out, seg);
                continue;
            }
        }
        // A dot segment or an empty one at the end leaves the path ending in a slash.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Appends `seg` with its unreserved escapes decoded (pass 1 has validated every escape).
fn push_decoded(out: &mut String, seg: &str) {
    let b = seg.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Ok(c) = escape_at(b, i) {
                if is_unreserved(c) {
                    out.push_str(&seg[start..i]);
                    out.push(c as char);
                    i += 3;
                    start = i;
                    continue;
                }
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push_str(&seg[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/models/", "/v1/models/"),
            ("/v1/a..b/...", "/v1/a..b/..."),
            ("/v1/models/a%3Ab", "/v1/models/a%3Ab"),
            ("/v1/models/caf%C3%A9", "/v1/models/caf%C3%A9"),
            ("/v1/x;y=1", "/v1/x;y=1"),
            // RFC 3986 §5.2.4 examples and friends.
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/v1/chat/completions/../../admin", "/v1/admin"),
            ("/v1/chat/completions/../../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/..", "/"),
            ("/.", "/"),
            // Merged slashes.
            ("//v1//chat///completions", "/v1/chat/completions"),
            ("/v1//", "/v1/"),
            ("//", "/"),
            // Unreserved escapes decoded, others kept.
            ("/v1/%63hat/completions", "/v1/chat/completions"),
            ("/v1/%7euser/%2D%5f", "/v1/~user/-_"),
            ("/v1/a%2eb", "/v1/a.b"),
            ("/v1/%41%20b", "/v1/A%20b"),
            ("/v1//x/../y", "/v1/y"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn refused() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("v1/x", NotOriginForm),
            ("*", NotOriginForm),
            ("http://evil/x", NotOriginForm),
            ("", NotOriginForm),
            ("/v1/%2e%2e/admin", EscapedDotSegment),
            ("/v1/%2E%2E", EscapedDotSegment),
            ("/v1/.%2e/admin", EscapedDotSegment),
            ("/v1/%2e/x", EscapedDotSegment),
            ("/v1//x/%2e%2e/%2e%2e/admin", EscapedDotSegment),
            ("/v1/a%2Fb", EscapedSlash),
            ("/v1/..%2f..%2fadmin", EscapedSlash),
            ("/v1/a%5cb", Backslash),
            ("/v1/a\\b", Backslash),
            ("/v1/..;/admin", DotSegmentParameter),
            ("/v1/.;x/admin", DotSegmentParameter),
            ("/v1/a%00", EscapedNul),
            ("/v1/a%", BadEscape),
            ("/v1/a%4", BadEscape),
            ("/v1/a%zz", BadEscape),
            ("/..", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/v1/x#frag", Fragment),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(*want), "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/v1/chat/completions", "/v1/models/a%3Ab", "/v1/x/"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert!(matches!(normalize("/v1//x"), Ok(Cow::Owned(_))));
    }

    /// The normal form is a fixed point, so a normalized path never changes meaning again.
    #[test]
    fn idempotent() {
        for p in [
            "/a/b/../c/./d//e/",
            "/v1/%63hat/%41/..",
            "/x/%2Fy".replace("%2F", "%3F").as_str(),
        ] {
            let once = normalize(p).map(Cow::into_owned).expect("normal");
            assert!(
                matches!(normalize(&once), Ok(Cow::Borrowed(_))),
                "{p} -> {once}"
            );
        }
    }
}
