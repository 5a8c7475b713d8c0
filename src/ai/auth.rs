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
pub fn presented_key(head: &RequestHead) -> Option<&[u8]> {
    if let Some(v) = head.header("authorization") {
        let v = trim(v);
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let key = trim(&v[7..]);
            return (!key.is_empty()).then_some(key);
        }
    }
    ["x-api-key", "api-key"]
        .iter()
        .filter_map(|h| head.header(h))
        .map(trim)
        .find(|k| !k.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
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

    #[test]
    fn keys_by_header_kind() {
        let digest: [u8; 32] = Sha256::digest(b"sk-team-a").into();
        let auth = Auth {
            keys: HashMap::from([(digest, 0)]),
            clients: vec![Client {
                name: Arc::from("team-a"),
                limit: None,
                token_limit: None,
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
