//! Client authentication for `[auth]`: the presented key is hashed with sha256 and looked
//! up among the hashes read from the keys file (a mounted Secret). Plain keys exist only in
//! the request, never in the config or in memory beyond it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ai::{Auth, Client};
use crate::http::RequestHead;

/// Why a request was not authenticated (both answer 401; the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer`, `x-api-key` or `api-key` header.
    #[error("no API key given")]
    Missing,
    /// A key that matches no client.
    #[error("the API key is not known")]
    Unknown,
}

/// The key a request presents: `Authorization: Bearer KEY` (OpenAI), else `x-api-key`
/// (Anthropic) or `api-key` (Azure OpenAI) as SDKs send them.
///
/// This is the one reading of a client's key: `[auth]` and rate limits keyed by `api_key`
/// both call it, so one key spelled differently (`bearer  KEY `, `BEARER KEY`,
/// `Bearer<TAB>KEY`) is one client and one bucket. The scheme is matched
/// case-insensitively (RFC 9110 §11.1), whitespace around the scheme and the key is
/// ignored. A key with whitespace inside is not a token68 and is not a key. A credential
/// header sent twice is ambiguous (`Authorization` is a singleton field, and another hop
/// may read the other copy), so it presents no key at all.
pub fn presented_key(head: &RequestHead) -> Option<&[u8]> {
    match single(head, "authorization") {
        Single::Two => return None,
        Single::One(v) => {
            if let Some(key) = bearer(v) {
                return Some(key);
            }
        }
        Single::None => {}
    }
    for name in ["x-api-key", "api-key"] {
        match single(head, name) {
            Single::Two => return None,
            Single::One(v) => {
                let k = trim(v);
                if !k.is_empty() && !k.iter().any(u8::is_ascii_whitespace) {
                    return Some(k);
                }
            }
            Single::None => {}
        }
    }
    None
}

/// How many times a header appears: none, once (its value) or more.
enum Single<'a> {
    None,
    One(&'a [u8]),
    Two,
}

fn single<'a>(head: &'a RequestHead, name: &str) -> Single<'a> {
    let mut found = head.headers.iter().filter(|h| h.is(name));
    match (found.next(), found.next()) {
        (None, _) => Single::None,
        (Some(h), None) => Single::One(h.value),
        (Some(_), Some(_)) => Single::Two,
    }
}

/// The token of `Bearer TOKEN`, scheme case-insensitive, any whitespace around either part.
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = trim(v);
    let split = v.iter().position(u8::is_ascii_whitespace)?;
    let (scheme, rest) = v.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let key = trim(rest);
    (!key.is_empty() && !key.iter().any(u8::is_ascii_whitespace)).then_some(key)
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Finds the client whose key the request presents.
///
/// The lookup is by the key's sha256: bucket timing can only reveal bits of a digest, which
/// says nothing usable about any key (finding a key for a digest is a preimage attack). The
/// final comparison of the whole digest is constant-time all the same, so no byte-by-byte
/// early exit exists anywhere on the path.
pub fn authenticate<'a>(auth: &'a Auth, head: &RequestHead) -> Result<&'a Client, AuthError> {
    let key = presented_key(head).ok_or(AuthError::Missing)?;
    let digest: [u8; 32] = Sha256::digest(key).into();
    let found = auth
        .keys
        .get_key_value(&digest)
        .filter(|(stored, _)| bool::from(stored.ct_eq(&digest)))
        .and_then(|(_, &i)| auth.clients.get(i));
    found.ok_or(AuthError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request_head, HeadLimits};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn head(extra: &str) -> RequestHead {
        let raw = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{extra}\r\n");
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_request_line: 8192,
        };
        match parse_request_head(raw.as_bytes(), &limits) {
            Ok(Some((h, _))) => h,
            other => panic!("test head did not parse: {other:?}"),
        }
    }

    /// One key, however it is spelled, is one presented key (so one client and one
    /// rate-limit bucket); ambiguous or malformed credentials present none.
    #[test]
    fn presented_key_spellings() {
        let cases: &[(&str, Option<&str>)] = &[
            ("authorization: Bearer sk-1\r\n", Some("sk-1")),
            ("authorization: bearer  sk-1 \r\n", Some("sk-1")),
            ("authorization: BEARER sk-1\r\n", Some("sk-1")),
            ("authorization: bEaReR\tsk-1\r\n", Some("sk-1")),
            ("authorization:    Bearer sk-1\t\r\n", Some("sk-1")),
            ("x-api-key:  sk-1 \r\n", Some("sk-1")),
            ("api-key: sk-1\r\n", Some("sk-1")),
            // Not a bearer token: the other headers are looked at.
            (
                "authorization: Basic c2stMQ==\r\nx-api-key: sk-1\r\n",
                Some("sk-1"),
            ),
            ("authorization: Bearersk-1\r\n", None),
            ("authorization: Bearer\r\n", None),
            ("authorization: Bearer sk-1 sk-2\r\n", None),
            // Twice is ambiguous: no key, whatever the other headers say.
            (
                "authorization: Bearer sk-1\r\nauthorization: Bearer sk-2\r\n",
                None,
            ),
            (
                "authorization: Bearer sk-1\r\nAuthorization: Bearer sk-1\r\n",
                None,
            ),
            ("x-api-key: sk-1\r\nx-api-key: sk-2\r\n", None),
            ("", None),
        ];
        for (h, want) in cases {
            let hd = head(h);
            assert_eq!(presented_key(&hd), want.map(str::as_bytes), "{h:?}");
        }
    }

    #[test]
    fn keys_by_header_kind() {
        let digest: [u8; 32] = Sha256::digest(b"sk-team-a").into();
        let auth = Auth {
            keys: HashMap::from([(digest, 0)]),
            clients: vec![Client {
                name: Arc::from("team-a"),
                limit: None,
                token_limit: None,
                index: 0,
                budget: [None, None],
                scope: crate::config::LimitScope::Local,
            }],
        };
        let cases = [
            ("authorization: Bearer sk-team-a\r\n", Ok("team-a")),
            ("authorization: bearer   sk-team-a  \r\n", Ok("team-a")),
            ("x-api-key: sk-team-a\r\n", Ok("team-a")),
            ("api-key: sk-team-a\r\n", Ok("team-a")),
            (
                "authorization: Bearer sk-team-b\r\n",
                Err(AuthError::Unknown),
            ),
            (
                "authorization: Basic c2stdGVhbS1h\r\n",
                Err(AuthError::Missing),
            ),
            ("authorization: Bearer \r\n", Err(AuthError::Missing)),
            ("", Err(AuthError::Missing)),
        ];
        for (h, want) in cases {
            let got = authenticate(&auth, &head(h)).map(|c| &*c.name);
            assert_eq!(got, want, "{h:?}");
        }
    }
}
