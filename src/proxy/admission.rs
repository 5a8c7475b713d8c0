//! Admission: whether a routed request may go on at all — the route's `max_in_flight`
//! slot, the route's rate limit, the authenticated client's own limit, its token budget and
//! its spend budgets. Runs before the body is read, so a refused request costs no upstream
//! work; what each limit said is kept for the response's `x-ratelimit-*` headers.
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
use super::limit_headers::{BucketState, RateHeaders};
use crate::cluster::limits::{
    self as cl, ClusterReservation, Entry, Kind, LocalReservation, Reservation, Verdict,
};
use crate::config::ai::{Client, Price};
use crate::config::{LimitId, LimitKey, LimitScope, LimitSpec, OnUnavailable};
use crate::error::ProxyError;
use crate::http::RequestHead;
use crate::limit::spend::{micros, Window};
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

/// Budgets whose decision waits for the request body (see [`reserve`]).
#[derive(Debug, Default)]
pub struct Deferred {
    /// Cluster limits decided with the reservation (one round trip).
    entries: Vec<Entry>,
    /// The client's cluster token budget.
    token: Option<LimitId>,
    /// The client's spend budgets (in its scope).
    spend: bool,
}

/// Admits `req` or says why not; the limits' state goes to `rate` (the `x-ratelimit-*`
/// headers). The returned slot must live until the response is done; the [`Deferred`]
/// part goes to [`reserve`] once the body is known.
pub async fn admit<'r>(
    worker: &Rc<Worker>,
    req: &Request<'r>,
    rate: &mut RateHeaders,
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
            _ => check(worker, spec, limiter, &key.as_bytes(), rate).await?,
        }
    }
    let mut wait_for_body = false;
    if let Some(c) = req.client {
        if let Some((spec, limiter)) = req.limit_at(c.limit) {
            match (spec.scope, c.limit) {
                (LimitScope::Cluster { .. }, Some(id)) => {
                    let e = Entry::new(id, spec, Kind::Requests, c.name.as_bytes(), 1);
                    deferred.entries.push(e);
                }
                _ => check(worker, spec, limiter, c.name.as_bytes(), rate).await?,
            }
        }
        if let Some((spec, limiter)) = req.limit_at(c.token_limit) {
            match (spec.scope, c.token_limit) {
                // The reservation needs the body: decided with the rest in `reserve`.
                (LimitScope::Cluster { .. }, Some(id)) if route.route_by_model => {
                    deferred.token = Some(id);
                    wait_for_body = true;
                }
                // Elsewhere no usage is read: only whether the budget is in debt.
                (LimitScope::Cluster { .. }, Some(id)) => {
                    let e = Entry::new(id, spec, Kind::Tokens, c.name.as_bytes(), 0);
                    deferred.entries.push(e);
                }
                _ => peek_tokens(worker, req, spec, limiter, c.name.as_bytes(), rate)?,
            }
        }
        if c.has_budget() {
            let cluster = matches!(c.scope, LimitScope::Cluster { .. });
            if route.route_by_model {
                // The estimate to reserve is priced from the body.
                deferred.spend = true;
                wait_for_body |= cluster;
            } else if cluster {
                for (w, budget) in budgets(c) {
                    let e = Entry::spend(w, budget, c.name.as_bytes(), 0);
                    deferred.entries.push(e);
                }
            } else if let Some(cells) = req.spend {
                for (w, budget) in budgets(c) {
                    let (id, ends_in) = w.now();
                    if cells.cells[w.index()].spent(id) >= budget {
                        return Err(over_budget(worker, c, w, budget, ends_in));
                    }
                }
            }
        }
    }
    if !wait_for_body && !deferred.entries.is_empty() {
        cluster_check(worker, req, &deferred.entries, rate).await?;
        deferred.entries.clear();
    }
    Ok((slot, deferred))
}

/// The client's spend budgets: (window, micro-dollars).
fn budgets(c: &Client) -> impl Iterator<Item = (Window, u64)> + '_ {
    Window::ALL
        .into_iter()
        .filter_map(|w| Some((w, c.budget[w.index()]?)))
}

/// The 429 `insufficient_quota` for client `c` over its `window` budget.
fn over_budget(
    worker: &Worker,
    c: &Client,
    window: Window,
    budget: u64,
    ends_in: std::time::Duration,
) -> ProxyError {
    worker.stats.note_ratelimit_rejection(match window {
        Window::Day => "budget_usd_per_day",
        Window::Month => "budget_usd_per_month",
    });
    ProxyError::BudgetExhausted {
        client: c.name.to_string(),
        window: window.label(),
        budget_usd: budget as f64 / 1e6,
        retry_after_secs: whole_seconds(ends_in),
    }
}

/// A local token budget: refused while in debt; its state goes to `rate`.
fn peek_tokens(
    worker: &Worker,
    req: &Request<'_>,
    spec: &LimitSpec,
    limiter: &KeyedLimiter,
    key: &[u8],
    rate: &mut RateHeaders,
) -> Result<(), ProxyError> {
    match limiter.peek(key, crate::clock::monotonic_nanos()) {
        Decision::Reject { retry_after, reset } => {
            worker.stats.note_ratelimit_rejection(&spec.name);
            Err(refusal(req, Kind::Tokens, spec, retry_after, reset))
        }
        Decision::Allow { remaining, reset }
        | Decision::Delay {
            remaining, reset, ..
        } => {
            rate.note_tokens(BucketState {
                limit: u64::from(spec.burst),
                remaining: u64::from(remaining),
                reset,
            });
            Ok(())
        }
    }
}

/// For a model-routed request: reserves its estimate against the client's cluster token
/// budget (its `max_tokens` or the configured default, plus its prompt) and its spend
/// budgets (that estimate at the highest prices of the model and its fallbacks), deciding
/// the deferred cluster limits in the same round trip. Settled with the real usage when the response ends,
/// refunded if dropped.
pub async fn reserve(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    deferred: Deferred,
    body: &[u8],
    price: Option<Price>,
    rate: &mut RateHeaders,
) -> Result<Option<Reservation>, ProxyError> {
    let Some(c) = req.client else {
        return Ok(None);
    };
    let default_max = req
        .config
        .cluster
        .as_ref()
        .map_or(cl::DEFAULT_MAX_TOKENS, |c| c.default_max_tokens);
    let (prompt, completion) = cl::token_estimate_parts(body, default_max);
    let tokens = prompt.saturating_add(completion);
    let cost = price.map_or(0, |p| {
        micros(prompt as f64 * p.prompt + completion as f64 * p.completion)
    });
    let mut entries = deferred.entries;
    let mut local = Vec::new();
    if let Some(id) = deferred.token {
        if let Some(spec) = req.config.limits.get(id) {
            entries.push(Entry::new(
                id,
                spec,
                Kind::Tokens,
                c.name.as_bytes(),
                tokens,
            ));
        }
    }
    if deferred.spend {
        if matches!(c.scope, LimitScope::Cluster { .. }) {
            for (w, budget) in budgets(c) {
                entries.push(Entry::spend(w, budget, c.name.as_bytes(), cost));
            }
        } else if let Some(cells) = req.spend {
            for (w, budget) in budgets(c) {
                let (id, ends_in) = w.now();
                if cells.cells[w.index()]
                    .try_reserve(id, budget, cost)
                    .is_none()
                {
                    // What another window reserved is refunded as it drops.
                    drop(Reservation::new(None, local));
                    return Err(over_budget(worker, c, w, budget, ends_in));
                }
                local.push(LocalReservation::Spend {
                    spend: cells.clone(),
                    fallback: false,
                    window: w,
                    id,
                    reserved: cost,
                });
            }
        }
    }
    if entries.is_empty() {
        let r = Reservation::new(None, local);
        return Ok((!r.is_empty()).then_some(r));
    }
    // Refunds the local part when the store refuses.
    let mut held = Reservation::new(None, local);
    let decided = cluster_check(worker, req, &entries, rate).await?;
    let mut local = held.take_local();
    let cluster = match (decided, &req.config.cluster) {
        (Admitted::InStore, Some(cfg)) => {
            // A spend reserved at 0 (no candidate has prices) still settles.
            entries.retain(|e| e.kind != Kind::Requests);
            (!entries.is_empty()).then(|| ClusterReservation {
                store: worker.store.clone(),
                cfg: cfg.clone(),
                entries,
                spend: req.spend.cloned(),
            })
        }
        (Admitted::InStore, None) => None,
        (Admitted::Fallback(items), _) => {
            local.extend(items);
            None
        }
    };
    Ok(Some(Reservation::new(cluster, local)))
}

/// How the store decided cluster entries.
enum Admitted {
    /// The store admitted them.
    InStore,
    /// The store was unavailable and the per-pod fallback admitted them, reserving these.
    Fallback(Vec<LocalReservation>),
}

/// Decides cluster `entries` in the store (their state goes to `rate`), or by the
/// configured fallback when the store is unavailable.
async fn cluster_check(
    worker: &Worker,
    req: &Request<'_>,
    entries: &[Entry],
    rate: &mut RateHeaders,
) -> Result<Admitted, ProxyError> {
    let Some(cfg) = &req.config.cluster else {
        return Ok(Admitted::InStore);
    };
    let metrics = &worker.store.metrics;
    match cl::decide(&worker.store, &worker.refusals, cfg, entries).await {
        Verdict::Admit { wait, states } => {
            for (e, &st) in entries.iter().zip(&states) {
                match (e.kind, e.bucket_state(st)) {
                    (Kind::Requests, Some(b)) => rate.note_requests(b),
                    (Kind::Tokens, Some(b)) => rate.note_tokens(b),
                    _ => {}
                }
            }
            if let Some(cells) = req.spend {
                cl::record_spend_states(cells, entries, &states);
            }
            if !wait.is_zero() {
                monoio::time::sleep(wait).await;
            }
            Ok(Admitted::InStore)
        }
        Verdict::Refuse {
            index,
            retry_after,
            reset,
        } => {
            let Some(e) = entries.get(index) else {
                return Err(ProxyError::ClusterUnavailable);
            };
            if let (Kind::Spend(w, _), Some(c)) = (e.kind, req.client) {
                return Err(over_budget(
                    worker,
                    c,
                    w,
                    e.tolerance_us as u64,
                    retry_after,
                ));
            }
            let Some(spec) = req.config.limits.get(e.limit) else {
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
                fallback(worker, req, entries, cfg.replicas, rate)
                    .await
                    .map(Admitted::Fallback)
            }
        },
    }
}

/// The per-pod fallback of cluster `entries`: limits and token budgets by their limiters,
/// which run at the limit divided by the replica count (see `reload::limiters_for`), keyed
/// by the same hash; spend budgets by the client's fallback cells at the budget divided by
/// `replicas`.
async fn fallback(
    worker: &Worker,
    req: &Request<'_>,
    entries: &[Entry],
    replicas: u32,
    rate: &mut RateHeaders,
) -> Result<Vec<LocalReservation>, ProxyError> {
    let mut made = Vec::new();
    let refund = |made: Vec<LocalReservation>| drop(Reservation::new(None, made));
    for e in entries {
        if let Kind::Spend(w, id) = e.kind {
            let (Some(c), Some(cells)) = (req.client, req.spend) else {
                continue;
            };
            let budget = (e.tolerance_us as u64 / u64::from(replicas.max(1))).max(1);
            let cell = &cells.fallback[w.index()];
            if cell.try_reserve(id, budget, e.cost).is_none() {
                refund(made);
                let (_, ends_in) = w.now();
                return Err(over_budget(worker, c, w, budget, ends_in));
            }
            made.push(LocalReservation::Spend {
                spend: cells.clone(),
                fallback: true,
                window: w,
                id,
                reserved: e.cost,
            });
            continue;
        }
        let Some((spec, limiter)) = req.limit_at(Some(e.limit)) else {
            continue;
        };
        let key = e.key.as_bytes();
        let decided = match e.kind {
            Kind::Tokens => peek_tokens(worker, req, spec, limiter, key, rate).map(|()| {
                if e.cost > 0 {
                    made.push(LocalReservation::Tokens {
                        limiter: req.limiters[e.limit].clone(),
                        key: e.key.clone(),
                    });
                }
            }),
            _ => check(worker, spec, limiter, key, rate).await,
        };
        if let Err(err) = decided {
            refund(made);
            return Err(err);
        }
    }
    Ok(made)
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
        Kind::Tokens => ProxyError::TokensExhausted {
            client: req.client.map(|c| c.name.to_string()).unwrap_or_default(),
            retry_after_secs: whole_seconds(retry_after),
            capacity: u64::from(spec.burst),
            reset,
        },
        _ => ProxyError::RateLimited {
            limit: spec.name.clone(),
            retry_after_secs: whole_seconds(retry_after),
            capacity: u64::from(spec.burst) + 1,
            reset,
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

/// Applies one rate limit: admits (its state to `rate`), holds the request to the rate
/// (`nodelay = false`), or refuses with 429.
async fn check(
    worker: &Worker,
    spec: &LimitSpec,
    limiter: &KeyedLimiter,
    key: &[u8],
    rate: &mut RateHeaders,
) -> Result<(), ProxyError> {
    let state = |remaining: u32, reset| BucketState {
        limit: u64::from(spec.burst) + 1,
        remaining: u64::from(remaining),
        reset,
    };
    match limiter.check(key, crate::clock::monotonic_nanos()) {
        Decision::Allow { remaining, reset } => {
            rate.note_requests(state(remaining, reset));
            Ok(())
        }
        Decision::Delay {
            wait,
            remaining,
            reset,
        } => {
            rate.note_requests(state(remaining, reset));
            monoio::time::sleep(wait).await;
            Ok(())
        }
        Decision::Reject { retry_after, reset } => {
            worker.stats.note_ratelimit_rejection(&spec.name);
            Err(ProxyError::RateLimited {
                limit: spec.name.clone(),
                retry_after_secs: whole_seconds(retry_after),
                capacity: u64::from(spec.burst) + 1,
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
