//! Admission: whether a routed request may go on at all — the route's `max_in_flight`
//! slot, the route's rate limit, the authenticated client's own limit, and its token
//! budget. Runs before the body is read, so a refused request costs no upstream work.
//!
//! Limits with `scope = "cluster"` are gathered and decided together in the cluster store
//! (one round trip, [`crate::cluster::limits::decide`]); on model-routed routes whose
//! client has a cluster token budget that decision waits for the body ([`reserve`]), since
//! the tokens to reserve depend on it.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::forward::Request;
use super::headers;
use crate::cluster::limits::{self as cl, Entry, Kind, Reservation, ReservedIn, Verdict};
use crate::config::{LimitId, LimitKey, LimitScope, LimitSpec, OnUnavailable};
use crate::error::ProxyError;
use crate::http::RequestHead;
use crate::limit::{Decision, KeyedLimiter};
use crate::worker::Worker;

/// A slot in a route's process-wide in-flight count, released on drop. Routes without
/// `max_in_flight` never touch the shared counter.
#[derive(Debug)]
pub struct InFlight<'a>(Option<&'a AtomicUsize>);

impl<'a> InFlight<'a> {
    /// Takes a slot of `count` under `max`, or None when all are taken.
    pub fn enter(max: Option<usize>, count: &'a AtomicUsize) -> Option<Self> {
        let Some(max) = max else {
            return Some(InFlight(None));
        };
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Some(count)))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Cluster limits whose decision waits for the request body (see [`reserve`]).
#[derive(Debug, Default)]
pub struct Deferred {
    entries: Vec<Entry>,
    /// The client's cluster token budget.
    token: Option<LimitId>,
}

/// Admits `req` or says why not. The returned slot must live until the response is done;
/// the [`Deferred`] part goes to [`reserve`] once the body is known.
pub async fn admit<'r>(
    worker: &Rc<Worker>,
    req: &Request<'r>,
) -> Result<(InFlight<'r>, Deferred), ProxyError> {
    let route = req.route;
    let slot = InFlight::enter(route.max_in_flight, &route.in_flight)
        .ok_or_else(|| ProxyError::RouteBusy(route.name.clone()))?;
    let mut deferred = Deferred::default();
    if let Some((spec, limiter)) = req.limit {
        let ip = headers::real_client_ip(req);
        let key = limit_key(&spec.key, req.head, req.client.map(|c| &*c.name), &ip);
        match (spec.scope, route.limit) {
            (LimitScope::Cluster { .. }, Some(id)) => {
                let e = Entry::new(id, spec, Kind::Requests, &key.as_bytes(), 1);
                deferred.entries.push(e);
            }
            _ => check(worker, spec, limiter, &key.as_bytes()).await?,
        }
    }
    if let Some(c) = req.client {
        if let Some((spec, limiter)) = req.limit_at(c.limit) {
            match (spec.scope, c.limit) {
                (LimitScope::Cluster { .. }, Some(id)) => {
                    let e = Entry::new(id, spec, Kind::Requests, c.name.as_bytes(), 1);
                    deferred.entries.push(e);
                }
                _ => check(worker, spec, limiter, c.name.as_bytes()).await?,
            }
        }
        if let Some((spec, limiter)) = req.limit_at(c.token_limit) {
            match (spec.scope, c.token_limit) {
                // The reservation needs the body: decided with the rest in `reserve`.
                (LimitScope::Cluster { .. }, Some(id)) if route.route_by_model => {
                    deferred.token = Some(id);
                }
                // Elsewhere no usage is read: only whether the budget is in debt.
                (LimitScope::Cluster { .. }, Some(id)) => {
                    let e = Entry::new(id, spec, Kind::Tokens, c.name.as_bytes(), 0);
                    deferred.entries.push(e);
                }
                _ => {
                    if let Decision::Reject { retry_after, .. } =
                        limiter.peek(c.name.as_bytes(), crate::clock::monotonic_nanos())
                    {
                        worker.stats.note_ratelimit_rejection(&spec.name);
                        return Err(ProxyError::TokensExhausted {
                            client: c.name.to_string(),
                            retry_after_secs: whole_seconds(retry_after),
                        });
                    }
                }
            }
        }
    }
    if deferred.token.is_none() && !deferred.entries.is_empty() {
        cluster_check(worker, req, &deferred.entries).await?;
        deferred.entries.clear();
    }
    Ok((slot, deferred))
}

/// For a model-routed request whose client has a cluster token budget: decides the
/// deferred cluster limits and reserves the request's token estimate (its `max_tokens`
/// or the configured default, plus its prompt) in one round trip. The reservation is
/// settled with the real usage when the response ends, refunded if it is dropped.
pub async fn reserve(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    deferred: Deferred,
    body: &[u8],
) -> Result<Option<Reservation>, ProxyError> {
    let (Some(id), Some(cfg), Some(c)) = (deferred.token, &req.config.cluster, req.client) else {
        return Ok(None);
    };
    let (Some(spec), Some(fallback)) = (req.config.limits.get(id), req.limiters.get(id)) else {
        return Ok(None);
    };
    let estimate = cl::token_estimate(body, cfg.default_max_tokens);
    let mut entries = deferred.entries;
    entries.push(Entry::new(
        id,
        spec,
        Kind::Tokens,
        c.name.as_bytes(),
        estimate,
    ));
    let in_store = cluster_check(worker, req, &entries).await?;
    let Some(entry) = entries.pop() else {
        return Ok(None);
    };
    let path = if in_store {
        ReservedIn::Cluster {
            store: worker.store.clone(),
            cfg: cfg.clone(),
            entry,
        }
    } else {
        // Admitted by the fallback: the usage is charged there at the end.
        ReservedIn::Local {
            limiter: fallback.clone(),
            key: entry.key,
        }
    };
    Ok(Some(Reservation::new(path, estimate)))
}

/// Decides cluster `entries` in the store: Ok(true) when the store admitted them,
/// Ok(false) when the local fallback did (the store being unavailable).
async fn cluster_check(
    worker: &Worker,
    req: &Request<'_>,
    entries: &[Entry],
) -> Result<bool, ProxyError> {
    let Some(cfg) = &req.config.cluster else {
        return Ok(true);
    };
    let metrics = &worker.store.metrics;
    match cl::decide(&worker.store, &worker.refusals, cfg, entries).await {
        Verdict::Admit { wait } => {
            if !wait.is_zero() {
                monoio::time::sleep(wait).await;
            }
            Ok(true)
        }
        Verdict::Refuse {
            index,
            retry_after,
            reset,
        } => {
            let Some((e, spec)) = entries
                .get(index)
                .and_then(|e| Some((e, req.config.limits.get(e.limit)?)))
            else {
                return Err(ProxyError::ClusterUnavailable);
            };
            worker.stats.note_ratelimit_rejection(&spec.name);
            Err(refusal(req, e.kind, spec, retry_after, reset))
        }
        Verdict::Unavailable => match cfg.on_unavailable {
            OnUnavailable::Deny => {
                metrics.fallback_deny.fetch_add(1, Ordering::Relaxed);
                Err(ProxyError::ClusterUnavailable)
            }
            OnUnavailable::Local => {
                metrics.fallback_local.fetch_add(1, Ordering::Relaxed);
                // The per-pod limiters of cluster limits run at the limit divided by the
                // replica count (see `reload::limiters_for`), keyed by the same hash.
                for e in entries {
                    let Some((spec, limiter)) = req.limit_at(Some(e.limit)) else {
                        continue;
                    };
                    let key = e.key.as_bytes();
                    match e.kind {
                        Kind::Requests => check(worker, spec, limiter, key).await?,
                        Kind::Tokens => {
                            let now = crate::clock::monotonic_nanos();
                            if let Decision::Reject { retry_after, reset } = limiter.peek(key, now)
                            {
                                worker.stats.note_ratelimit_rejection(&spec.name);
                                return Err(refusal(req, e.kind, spec, retry_after, reset));
                            }
                        }
                    }
                }
                Ok(false)
            }
        },
    }
}

/// The 429 for a refusal by limit `spec`.
fn refusal(
    req: &Request<'_>,
    kind: Kind,
    spec: &LimitSpec,
    retry_after: std::time::Duration,
    reset: std::time::Duration,
) -> ProxyError {
    match kind {
        Kind::Requests => ProxyError::RateLimited {
            limit: spec.name.clone(),
            retry_after_secs: whole_seconds(retry_after),
            rate: spec.rate_per_second,
            reset,
        },
        Kind::Tokens => ProxyError::TokensExhausted {
            client: req.client.map(|c| c.name.to_string()).unwrap_or_default(),
            retry_after_secs: whole_seconds(retry_after),
        },
    }
}

/// What a rate limit counts a request against.
#[derive(Debug, PartialEq, Eq)]
pub enum LimitKeyValue<'a> {
    /// Bytes of the request (a header value, a client name).
    Bytes(&'a [u8]),
    /// The real client address.
    Ip(IpAddr),
}

impl LimitKeyValue<'_> {
    /// The key's bytes (an address is formatted on a small stack buffer).
    fn as_bytes(&self) -> KeyBytes<'_> {
        match self {
            LimitKeyValue::Bytes(b) => KeyBytes::Borrowed(b),
            LimitKeyValue::Ip(ip) => {
                let mut buf = [0u8; 48];
                let len = {
                    use std::io::Write;
                    let mut cur = std::io::Cursor::new(&mut buf[..]);
                    // An IPv6 address is at most 45 bytes: the write cannot run out of room.
                    let _ = write!(cur, "{ip}");
                    cur.position() as usize
                };
                KeyBytes::Ip(buf, len)
            }
        }
    }
}

/// Key bytes, borrowed or formatted in place.
enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Ip([u8; 48], usize),
}

impl std::ops::Deref for KeyBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Ip(b, n) => &b[..*n],
        }
    }
}

/// The key a limit counts this request against. A request without what the limit is keyed
/// by (no API key, no such header, no `[auth]` client) falls back to its address, so
/// anonymous clients are not unlimited.
pub fn limit_key<'a>(
    key: &'a LimitKey,
    head: &'a RequestHead,
    client: Option<&'a str>,
    ip: &IpAddr,
) -> LimitKeyValue<'a> {
    let by = match key {
        LimitKey::ClientIp => None,
        LimitKey::Client => client.map(str::as_bytes),
        // The key as `[auth]` reads it: one key however it is spelled is one bucket.
        LimitKey::ApiKey => crate::ai::auth::presented_key(head),
        LimitKey::Header(name) => head.header(name),
    };
    match by {
        Some(b) => LimitKeyValue::Bytes(b),
        None => LimitKeyValue::Ip(*ip),
    }
}

/// Applies one rate limit: admits, holds the request to the rate (`nodelay = false`), or
/// refuses with 429.
async fn check(
    worker: &Worker,
    spec: &LimitSpec,
    limiter: &KeyedLimiter,
    key: &[u8],
) -> Result<(), ProxyError> {
    match limiter.check(key, crate::clock::monotonic_nanos()) {
        Decision::Allow { .. } => Ok(()),
        Decision::Delay { wait, .. } => {
            monoio::time::sleep(wait).await;
            Ok(())
        }
        Decision::Reject { retry_after, reset } => {
            worker.stats.note_ratelimit_rejection(&spec.name);
            Err(ProxyError::RateLimited {
                limit: spec.name.clone(),
                retry_after_secs: whole_seconds(retry_after),
                rate: spec.rate_per_second,
                reset,
            })
        }
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request_head, HeadLimits};
    use std::time::Duration;

    #[test]
    fn in_flight_slots_are_bounded_and_released() {
        let count = AtomicUsize::new(0);
        let a = InFlight::enter(Some(2), &count).expect("first slot");
        let b = InFlight::enter(Some(2), &count).expect("second slot");
        assert!(InFlight::enter(Some(2), &count).is_none());
        assert_eq!(count.load(Ordering::Relaxed), 2);
        drop(a);
        let c = InFlight::enter(Some(2), &count).expect("a freed slot");
        drop((b, c));
        assert_eq!(count.load(Ordering::Relaxed), 0);
        // Unlimited routes never touch the counter.
        let free = InFlight::enter(None, &count).expect("no limit");
        assert_eq!(count.load(Ordering::Relaxed), 0);
        drop(free);
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn keys_fall_back_to_the_address() {
        let raw =
            b"POST /v1/x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer k1\r\nx-team: blue\r\n\r\n";
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_request_line: 8192,
        };
        let (head, _) = parse_request_head(raw, &limits)
            .expect("valid head")
            .expect("complete head");
        let bare = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let (anon, _) = parse_request_head(bare, &limits)
            .expect("valid head")
            .expect("complete head");
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let team = LimitKey::Header("x-team".into());
        let cases: [(&LimitKey, &RequestHead, Option<&str>, &[u8]); 8] = [
            (&LimitKey::ClientIp, &head, Some("acme"), b"10.1.2.3"),
            (&LimitKey::ApiKey, &head, None, b"k1"),
            (&LimitKey::ApiKey, &anon, None, b"10.1.2.3"),
            (&team, &head, None, b"blue"),
            (&team, &anon, None, b"10.1.2.3"),
            (&LimitKey::Client, &head, Some("acme"), b"acme"),
            (&LimitKey::Client, &head, None, b"10.1.2.3"),
            (&LimitKey::ClientIp, &anon, None, b"10.1.2.3"),
        ];
        for (key, h, client, want) in cases {
            let got = limit_key(key, h, client, &ip);
            assert_eq!(&*got.as_bytes(), want, "{key:?} {client:?}");
        }
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .expect("ip");
        let k = LimitKeyValue::Ip(v6);
        assert_eq!(&*k.as_bytes(), v6.to_string().as_bytes());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let cases = [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (60_000, 60)];
        for (ms, secs) in cases {
            assert_eq!(whole_seconds(Duration::from_millis(ms)), secs, "{ms} ms");
        }
    }
}
