//! Parsers of smaller inputs: provider quota headers (`Retry-After`, `x-ratelimit-reset-*`),
//! the `[auth]` keys file, certificate and key PEM (with the leaf's notAfter), the whole
//! TOML config (validate and compile), and the request-path normalizer.

use std::path::Path;
use std::time::Duration;

use ringgate::config::{self, ai::parse_keys_file, tls, SecretFiles};
use ringgate::http::path::normalize;
use ringgate::proxy::quota::{parse_reset, parse_retry_after, MAX_RETRY_AFTER};
use rustls::pki_types::pem::PemObject;

/// Quota target: `Retry-After` is capped and never negative; a reset duration never
/// panics, and plain seconds read as themselves.
pub fn check_quota(data: &[u8]) {
    if let Some(d) = parse_retry_after(data) {
        assert!(d <= MAX_RETRY_AFTER);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let reset = parse_reset(text);
    let t = text.trim();
    if !t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().unwrap_or_default();
        assert_eq!(reset, Some(Duration::from_secs(secs)), "{t:?}");
        assert_eq!(parse_reset(&format!("{t}s")), reset);
    }
}

/// The messages a keys-file problem may take, digits replaced by `#`: anything else
/// might carry the line's content (a key pasted where its hash belongs).
const KEYS_FILE_PROBLEMS: &[&str] = &[
    "is not UTF-#",
    "line #: expected `NAME SHA#HEX` (two fields; the line is not shown)",
    "line #: expected `NAME SHA#HEX` where SHA#HEX is the key's sha#, # hex digits (e.g. `printf %s \"$KEY\" | sha#sum`), never the key itself (the line is not shown)",
    "line #: client names use letters, digits, `_-.@` (at most #)",
    "line #: the client name of line # is listed again",
    "line #: the same key as line #",
    "at most # keys",
];

fn digits_masked(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Keys file target: every problem is one of the fixed messages (never the line's
/// content); accepted entries have valid, unique names and hashes.
pub fn check_keys_file(data: &[u8]) {
    match parse_keys_file(data) {
        Ok(entries) => {
            for (i, (name, hash)) in entries.iter().enumerate() {
                assert!(!name.is_empty() && name.len() <= 64);
                assert!(entries[..i].iter().all(|(n, h)| n != name && h != hash));
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in problems {
                let masked = digits_masked(&p);
                assert!(
                    KEYS_FILE_PROBLEMS.contains(&masked.as_str()),
                    "unexpected problem text: {p:?}"
                );
            }
        }
    }
}

/// TLS target. The input is a certificate chain PEM, a NUL byte, and a key PEM (without a
/// NUL, the same bytes serve as both). The pair check never panics and never quotes the key
/// file in its message; every certificate that parses, and the raw input taken as DER,
/// yields a notAfter or None.
pub fn check_tls_pem(data: &[u8]) {
    let (cert, key) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let _ = tls::not_after_unix(data);
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(cert).flatten() {
        let _ = tls::not_after_unix(&der);
    }
    let provider = rustls::crypto::ring::default_provider();
    if let Err((which, msg)) = tls::certified_key(cert, key, &provider) {
        if which == tls::Which::Key {
            // What the message says with no key at all is fixed wording, not a quote: a key
            // file whose line happens to be a piece of it (the fuzzer found one) is no leak.
            let fixed = match tls::certified_key(cert, b"", &provider) {
                Err((_, m)) => m,
                Ok(_) => String::new(),
            };
            for line in key.split(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let line = line.trim();
                assert!(
                    line.len() < 16 || !msg.contains(line) || fixed.contains(line),
                    "the key file is quoted: {msg}"
                );
            }
        }
    }
}

/// Config target: any bytes through parse, validate and compile, secret files not read
/// (their paths could name anything on the fuzzing machine). A config that compiles
/// compiles again to the same routes; errors all carry a message.
pub fn check_config(data: &[u8]) {
    let base = Path::new("/nonexistent/ringgate-fuzz");
    match config::load_bytes_with(data, base, SecretFiles::Skip) {
        Ok(c) => {
            let again = config::load_bytes_with(data, base, SecretFiles::Skip);
            assert!(again.is_ok_and(
                |a| a.upstreams.len() == c.upstreams.len() && a.limits.len() == c.limits.len()
            ));
        }
        Err(errs) => {
            assert!(!errs.0.is_empty());
            assert!(errs.0.iter().all(|e| !e.message.is_empty()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::toml_block_in_configmap_yaml(text);
    }
}

/// Path normalizer target: the normal form is normal (idempotent, rooted, no dot or empty
/// segments, no escaped unreserved byte), and a path left as is was normal already.
pub fn check_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(normal) = normalize(&text) else {
        return;
    };
    let n: &str = &normal;
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//"), "{n:?}");
    for seg in n[1..].split('/') {
        assert!(seg != "." && seg != "..", "dot segment left in {n:?}");
    }
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let hex = std::str::from_utf8(b.get(i + 1..i + 3).unwrap_or_default()).unwrap_or("zz");
        let c = u8::from_str_radix(hex, 16).unwrap_or(b'/');
        assert!(
            !(c.is_ascii_alphanumeric() || b"-._~".contains(&c)),
            "escaped unreserved byte left in {n:?}"
        );
    }
    match normalize(n) {
        Ok(std::borrow::Cow::Borrowed(m)) => assert_eq!(m, n),
        other => panic!("{n:?} (from {text:?}) is not normal: {other:?}"),
    }
}
