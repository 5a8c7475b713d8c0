//! The exact-match response cache of routes with `cache_ttl_ms`: non-streaming responses
//! keyed by the sha256 of everything the answer may depend on ([`KeyParts`]: route, method,
//! rewritten path and query, model, the client's identity, body), bounded in bytes, shared by
//! all workers (a hit on one core serves a request on another).
//!
//! It is the one structure besides the rate limiter that workers share on the request path:
//! quick_cache's sharded locks are held for a hash lookup and an `Arc` clone, and only
//! routes with `cache_ttl_ms` touch it. Entries past their TTL are treated as absent and
//! replaced by the next store; the byte bound evicts the least useful entries first
//! (CLOCK-Pro), so memory stays within `cache.max_bytes` whatever the traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::ai::CacheSettings;

/// A cached response, ready to be written back.
#[derive(Debug)]
pub struct CachedResponse {
    /// Status code (only 200s are stored).
    pub status: u16,
    /// The end-to-end header lines as the upstream sent them (`name: value\r\n` each),
    /// without framing, hop-by-hop or per-request headers.
    pub headers: Vec<u8>,
    /// The whole body.
    pub body: Vec<u8>,
    /// When it was stored.
    pub stored: Instant,
    /// How long it may be served.
    pub ttl: Duration,
}

impl CachedResponse {
    /// Whether it may still be served at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.ttl
    }
}

/// The cache's verdict on one request, as `x-cache`, metrics and the access log show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from the cache.
    Hit = 0,
    /// Looked up and not found: the answer is stored if it qualifies.
    Miss = 1,
    /// Not looked up (`Cache-Control: no-cache` or `no-store`).
    Bypass = 2,
}

impl CacheStatus {
    /// The `x-cache` value and metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// Everything a cached answer may depend on. Two requests share an entry only when every
/// part is equal.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// Route name.
    pub route: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Path after the route's rewrite, with the query.
    pub target: &'a str,
    /// Model name ("" on plain routes).
    pub model: &'a str,
    /// Who asks: the `[auth]` client's name, or the credentials the client sent; None on
    /// routes that share answers between clients.
    pub identity: Option<&'a [u8]>,
    /// The request body.
    pub body: &'a [u8],
}

/// The key of `parts`; hashed, so keys are 32 bytes whatever the body size. Every part is
/// length-prefixed, so no byte can move from one part to the next with the same key.
pub fn key(parts: &KeyParts<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    let identity = parts.identity.unwrap_or_default();
    for part in [
        parts.route.as_bytes(),
        parts.method.as_bytes(),
        parts.target.as_bytes(),
        parts.model.as_bytes(),
        &[u8::from(parts.identity.is_some())][..],
        identity,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(parts.body);
    h.finalize().into()
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<[u8; 32], Arc<CachedResponse>> for ByteWeight {
    fn weight(&self, _: &[u8; 32], v: &Arc<CachedResponse>) -> u64 {
        // Per-entry bookkeeping counted too, so many tiny entries also stay bounded.
        (v.headers.len() + v.body.len() + 160) as u64
    }
}

/// The shared cache.
pub struct ResponseCache {
    settings: CacheSettings,
    entries: quick_cache::sync::Cache<[u8; 32], Arc<CachedResponse>, ByteWeight>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("settings", &self.settings)
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl ResponseCache {
    /// An empty cache within `settings`.
    pub fn new(settings: CacheSettings) -> Self {
        // quick_cache wants an item estimate to size its shards: assume ~4 KiB responses.
        let items = (settings.max_bytes / 4096).clamp(64, 1 << 20) as usize;
        Self {
            settings,
            entries: quick_cache::sync::Cache::with_weighter(items, settings.max_bytes, ByteWeight),
        }
    }

    /// The bounds it was built with (a reload with other bounds builds a new cache).
    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// A fresh entry for `key`.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Arc<CachedResponse>> {
        self.entries.get(key).filter(|e| e.fresh(now))
    }

    /// Stores a response (callers check `max_entry_bytes` while capturing it).
    pub fn put(&self, key: [u8; 32], value: CachedResponse) {
        self.entries.insert(key, Arc::new(value));
    }

    /// Largest body stored.
    pub fn max_entry_bytes(&self) -> u64 {
        self.settings.max_entry_bytes
    }

    /// Entries held (including expired ones not yet replaced or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as weighed for the bound.
    pub fn bytes(&self) -> u64 {
        self.entries.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize, ttl_ms: u64) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: b"content-type: application/json\r\n".to_vec(),
            body: vec![b'x'; body],
            stored: Instant::now(),
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[test]
    fn every_part_separates_keys() {
        let base = KeyParts {
            route: "chat",
            method: "POST",
            target: "/v1/chat/completions",
            model: "gpt",
            identity: Some(b"team-a"),
            body: b"{}",
        };
        let k = key(&base);
        let variants = [
            KeyParts {
                route: "chat2",
                ..base
            },
            KeyParts {
                method: "GET",
                ..base
            },
            KeyParts {
                target: "/v1/chat/completions?x=1",
                ..base
            },
            KeyParts {
                model: "gpt2",
                ..base
            },
            KeyParts {
                identity: Some(b"team-b"),
                ..base
            },
            KeyParts {
                identity: None,
                ..base
            },
            KeyParts {
                identity: Some(b""),
                body: b"{}",
                ..base
            },
            KeyParts {
                body: b"{ }",
                ..base
            },
        ];
        let mut seen = std::collections::HashSet::from([k]);
        for v in &variants {
            assert!(seen.insert(key(v)), "{v:?} collides");
        }
        // Length-prefixed parts: moving a byte between parts changes the key.
        let a = KeyParts {
            route: "ab",
            model: "c",
            ..base
        };
        let b = KeyParts {
            route: "a",
            model: "bc",
            ..base
        };
        assert_ne!(key(&a), key(&b));
        let a = KeyParts {
            target: "/files/A",
            identity: None,
            body: b"",
            ..base
        };
        let b = KeyParts {
            target: "/files/B",
            ..a
        };
        assert_ne!(key(&a), key(&b), "GET /files/A and /files/B share an entry");
    }

    #[test]
    fn expiry_and_byte_bound() {
        let c = ResponseCache::new(CacheSettings {
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 17,
        });
        let now = Instant::now();
        c.put([1; 32], entry(10, 60_000));
        assert!(c.get(&[1; 32], now).is_some());
        c.put([2; 32], entry(10, 0));
        assert!(c.get(&[2; 32], now).is_none(), "a zero TTL is never fresh");
        for i in 0..200u8 {
            c.put([i; 32], entry(100_000, 60_000));
        }
        assert!(c.bytes() <= 1 << 20, "held {} bytes", c.bytes());
    }
}
