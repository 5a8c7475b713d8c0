//! Cluster-scoped limits: the GCRA script Redis runs, the keys it runs on, the decision for
//! one request (one round trip, or none when a key was refused recently), and token
//! reservations settled when the response ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::conn::{Store, StoreError};
use super::resp::Value;
use crate::config::{ClusterSettings, LimitId, LimitSpec};
use crate::limit::KeyedLimiter;

/// The one server-side script: GCRA over any number of keys, all-or-nothing, on Redis's
/// own clock (`TIME`, microseconds) so pods whose clocks differ agree.
///
/// `ARGV[1]` is the mode; key `i` has four arguments from `ARGV[4i-2]`: the emission
/// interval `T` and tolerance `tau` (µs), the cost (requests or tokens) and whether the
/// limit delays (`1`) instead of admitting at once.
///
/// - `admit`: each key's `tat = max(TAT, now)`; if any key has `tat - now > tau` nothing is
///   written and `{0, i, retry_after_us, reset_us}` names the first refusing key; otherwise
///   every key with a cost gets `TAT = tat + cost·T` and `{1, 0, wait_us, 0}` comes back,
///   `wait_us` the longest `tat - now` among delaying keys (nginx's delay). A cost of 0 only
///   checks (a token budget before a request of unknown size).
/// - `charge`: `TAT = max(TAT, now) + cost·T` with no check (the cost may be negative: a
///   refund of an over-reservation); a `TAT` at or before `now` is deleted.
///
/// Keys expire a second after their bucket is full again, so Redis holds only keys in use.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function store(k, tat)
  if tat <= now then
    redis.call('DEL', k)
  else
    redis.call('SET', k, string.format('%.0f', math.ceil(tat)), 'PX',
      string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
  end
end
local n = #KEYS
if ARGV[1] == 'charge' then
  for i = 1, n do
    local tat = tonumber(redis.call('GET', KEYS[i])) or 0
    if tat < now then tat = now end
    store(KEYS[i], tat + tonumber(ARGV[4*i]) * tonumber(ARGV[4*i-2]))
  end
  return {1, 0, 0, 0}
end
local tats = {}
local wait = 0
for i = 1, n do
  local tau = tonumber(ARGV[4*i-1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if tat < now then tat = now end
  local ahead = tat - now
  if ahead > tau then
    return {0, i, math.ceil(ahead - tau), math.ceil(ahead)}
  end
  if ARGV[4*i+1] == '1' and ahead > wait then wait = ahead end
  tats[i] = tat
end
for i = 1, n do
  local cost = tonumber(ARGV[4*i])
  if cost > 0 then store(KEYS[i], tats[i] + cost * tonumber(ARGV[4*i-2])) end
end
return {1, 0, math.ceil(wait), 0}
"#;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests (`[limits.NAME]`).
    Requests,
    /// Tokens (a client's `tokens_per_minute`).
    Tokens,
}

/// One bucket a request is counted against in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The limit (index in `Config::limits`).
    pub limit: LimitId,
    /// What it counts.
    pub kind: Kind,
    /// The Redis key: `rg:{TAG}:HASH`, see [`redis_key`].
    pub key: String,
    /// Emission interval, µs.
    pub interval_us: f64,
    /// Tolerance (burst), µs.
    pub tolerance_us: f64,
    /// Units this request costs (0: check only).
    pub cost: u64,
    /// Whether an admitted request is held to the rate (nginx delay mode).
    pub delay: bool,
}

impl Entry {
    /// The bucket of `spec` for the key bytes `key`.
    pub fn new(limit: LimitId, spec: &LimitSpec, kind: Kind, key: &[u8], cost: u64) -> Entry {
        let interval_us = 1e6 / spec.rate_per_second.max(1e-9);
        Entry {
            limit,
            kind,
            key: redis_key(&spec.name, key),
            interval_us,
            tolerance_us: interval_us * f64::from(spec.burst),
            cost,
            delay: kind == Kind::Requests && !spec.nodelay,
        }
    }
}

/// The Redis key of `limit`'s bucket for `key`: `rg:{TAG}:HASH` where HASH is sha256 of
/// the limit's name and the key (so no client key or address is stored in clear) and TAG,
/// the hash-tag Redis Cluster places keys by, is sha256 of the key alone: every limit of
/// one subject (a client's request limit and its token budget) lands in one slot.
pub fn redis_key(limit: &str, key: &[u8]) -> String {
    let tag = Sha256::digest(key);
    let mut h = Sha256::new();
    h.update(limit.as_bytes());
    h.update([0]);
    h.update(key);
    let hash = h.finalize();
    let mut out = String::with_capacity(3 + 2 + 16 + 2 + 32);
    out.push_str("rg:{");
    hex_into(&mut out, &tag[..8]);
    out.push_str("}:");
    hex_into(&mut out, &hash[..16]);
    out
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// The store's answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admitted; hold the request for `wait` first (zero unless a limit delays).
    Admit {
        /// Delay-mode wait.
        wait: Duration,
    },
    /// Refused by entry `index` (from the store, or from the worker's refusal cache).
    Refuse {
        /// Index into the entries.
        index: usize,
        /// When a retry can be admitted.
        retry_after: Duration,
        /// When the bucket is full again.
        reset: Duration,
    },
    /// The store did not answer (down, slow, breaker open): the caller applies the
    /// configured fallback.
    Unavailable,
}

/// Keys a worker remembers as refused, so a client hammering a limit it already hit costs
/// no round trip until its retry time (per worker, bounded). A refusal is remembered with
/// the limit's parameters: a reload that changes them makes it void at once.
#[derive(Default)]
pub struct RefusalCache {
    until: RefCell<HashMap<String, (Instant, u64)>>,
}

/// The parameters a refusal was decided under.
fn params_of(e: &Entry) -> u64 {
    e.interval_us.to_bits() ^ e.tolerance_us.to_bits().rotate_left(29)
}

/// Most refused keys a worker remembers.
const MAX_REFUSED: usize = 16_384;

impl RefusalCache {
    /// The time left on a refusal of `e`'s bucket under its current parameters, if any.
    pub fn refused(&self, e: &Entry, now: Instant) -> Option<Duration> {
        let map = self.until.borrow();
        let (t, params) = *map.get(&e.key)?;
        (t > now && params == params_of(e)).then(|| t - now)
    }

    /// Remembers that `e`'s bucket is refused until `until`.
    pub fn remember(&self, e: &Entry, until: Instant, now: Instant) {
        let mut map = self.until.borrow_mut();
        if map.len() >= MAX_REFUSED {
            map.retain(|_, (t, _)| *t > now);
            if map.len() >= MAX_REFUSED {
                return;
            }
        }
        map.insert(e.key.clone(), (until, params_of(e)));
    }
}

/// Decides one request against `entries` in one round trip: EVALSHA, and EVAL when the
/// store lost the script (NOSCRIPT). A key refused recently is refused without a call.
pub async fn decide(
    store: &Store,
    refusals: &RefusalCache,
    cfg: &ClusterSettings,
    entries: &[Entry],
) -> Verdict {
    let now = Instant::now();
    for (index, e) in entries.iter().enumerate() {
        if let Some(left) = refusals.refused(e, now) {
            store.metrics.local_refusals.fetch_add(1, Ordering::Relaxed);
            return Verdict::Refuse {
                index,
                retry_after: left,
                reset: left,
            };
        }
    }
    match run_script(store, cfg, "admit", entries, |e| e.cost as i64).await {
        Ok(reply) => match parse(&reply, entries.len()) {
            Some(v) => {
                if let Verdict::Refuse {
                    index, retry_after, ..
                } = &v
                {
                    store.metrics.refusals.fetch_add(1, Ordering::Relaxed);
                    if let Some(e) = entries.get(*index) {
                        refusals.remember(e, now + *retry_after, now);
                    }
                }
                v
            }
            None => {
                store.metrics.calls_error.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reply = ?reply, "unexpected reply from the cluster limit script");
                Verdict::Unavailable
            }
        },
        Err(_) => Verdict::Unavailable,
    }
}

/// Runs the script in `mode` over `entries` (cost per entry from `cost`).
async fn run_script(
    store: &Store,
    cfg: &ClusterSettings,
    mode: &str,
    entries: &[Entry],
    cost: impl Fn(&Entry) -> i64,
) -> Result<Value, StoreError> {
    let numkeys = entries.len().to_string();
    let mut argv: Vec<String> = Vec::with_capacity(entries.len() * 4);
    for e in entries {
        argv.push(format!("{:.3}", e.interval_us));
        argv.push(format!("{:.3}", e.tolerance_us));
        argv.push(cost(e).to_string());
        argv.push(if e.delay { "1" } else { "0" }.to_string());
    }
    let sha = store.script_sha();
    let build = |head: &[u8], script: &[u8]| -> Vec<Vec<u8>> {
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(4 + entries.len() * 5);
        args.push(head.to_vec());
        args.push(script.to_vec());
        args.push(numkeys.as_bytes().to_vec());
        args.extend(entries.iter().map(|e| e.key.as_bytes().to_vec()));
        args.push(mode.as_bytes().to_vec());
        args.extend(argv.iter().map(|a| a.as_bytes().to_vec()));
        args
    };
    let args = build(b"EVALSHA", &sha);
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let reply = store.call(cfg, &refs).await?;
    match &reply {
        Value::Error(e) if e.starts_with(b"NOSCRIPT") => {
            store.metrics.noscript.fetch_add(1, Ordering::Relaxed);
            let args = build(b"EVAL", SCRIPT.as_bytes());
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            store.call(cfg, &refs).await
        }
        _ => Ok(reply),
    }
}

/// The script's `{admitted, index, a, b}` as a verdict (None: not that shape).
fn parse(v: &Value, n: usize) -> Option<Verdict> {
    let Value::Array(Some(items)) = v else {
        return None;
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(x)) => Some(*x),
        _ => None,
    };
    let us = |x: i64| Duration::from_micros(u64::try_from(x).unwrap_or(0));
    match int(0)? {
        1 => Some(Verdict::Admit { wait: us(int(2)?) }),
        0 => {
            let index = usize::try_from(int(1)?).ok()?.checked_sub(1)?;
            let (retry_after, reset) = (us(int(2)?), us(int(3)?));
            (index < n).then_some(Verdict::Refuse {
                index,
                retry_after,
                reset,
            })
        }
        _ => None,
    }
}

/// Tokens reserved against a token budget at admission, settled with the real usage when
/// the response ends: the difference is debited or refunded. Dropped unsettled (the request
/// failed, or ended before any usage was known), the whole reservation is refunded.
pub struct Reservation {
    path: ReservedIn,
    reserved: u64,
    done: bool,
}

/// Where a reservation was made.
pub enum ReservedIn {
    /// In the store (the settle is one more call, off the request path).
    Cluster {
        /// The worker's store.
        store: Rc<Store>,
        /// The settings it was made under.
        cfg: Arc<ClusterSettings>,
        /// The bucket.
        entry: Entry,
    },
    /// In the local fallback limiter (the store was unavailable at admission): nothing was
    /// reserved there, the real usage is charged at the end as for a local budget.
    Local {
        /// The fallback limiter.
        limiter: Arc<KeyedLimiter>,
        /// The bucket's key there (the store's key: fallback limiters are keyed alike).
        key: String,
    },
}

impl Reservation {
    /// A reservation of `reserved` tokens made in `path`.
    pub fn new(path: ReservedIn, reserved: u64) -> Reservation {
        Reservation {
            path,
            reserved,
            done: false,
        }
    }

    /// Settles with the tokens the response used (None: no usage was known, refund all).
    pub fn settle(mut self, used: Option<u64>) {
        self.finish(used.unwrap_or(0));
    }

    fn finish(&mut self, used: u64) {
        if self.done {
            return;
        }
        self.done = true;
        match &self.path {
            ReservedIn::Local { limiter, key } => {
                limiter.charge(key.as_bytes(), used, crate::clock::monotonic_nanos());
            }
            ReservedIn::Cluster { store, cfg, entry } => {
                let delta = i64::try_from(used)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(i64::try_from(self.reserved).unwrap_or(i64::MAX));
                if delta == 0 {
                    return;
                }
                let (store, cfg, entry) = (store.clone(), cfg.clone(), entry.clone());
                // Off the request path: the client has its answer already.
                monoio::spawn(async move {
                    let r =
                        run_script(&store, &cfg, "charge", std::slice::from_ref(&entry), |_| {
                            delta
                        })
                        .await;
                    let c = match r {
                        Ok(Value::Array(_)) => &store.metrics.settles_ok,
                        _ => &store.metrics.settles_failed,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                });
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(0);
    }
}

/// Tokens to reserve for a model request: the completion it may produce (`max_tokens`, or
/// `max_completion_tokens`, else `default_max`) plus the prompt at 4 bytes a token.
pub fn token_estimate(body: &[u8], default_max: u64) -> u64 {
    #[derive(serde::Deserialize)]
    struct Max {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
    }
    let completion = serde_json::from_slice::<Max>(body)
        .ok()
        .and_then(|m| m.max_completion_tokens.or(m.max_tokens))
        .unwrap_or(default_max);
    completion.saturating_add((body.len() as u64).div_ceil(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_and_tagged_by_subject() {
        let a = redis_key("per-client", b"10.1.2.3");
        let b = redis_key("tokens_per_minute:100:cluster", b"10.1.2.3");
        let c = redis_key("per-client", b"10.1.2.4");
        assert!(!a.contains("10.1.2.3"), "no address in clear: {a}");
        assert_eq!(a.len(), "rg:{}:".len() + 16 + 32);
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_string();
        assert_eq!(tag(&a), tag(&b), "one subject, one slot");
        assert_ne!(tag(&a), tag(&c));
        assert_ne!(a, b, "one bucket per limit");
        assert_eq!(a, redis_key("per-client", b"10.1.2.3"), "stable");
    }

    #[test]
    fn script_replies_become_verdicts() {
        let arr = |v: [i64; 4]| Value::Array(Some(v.iter().map(|&x| Value::Int(x)).collect()));
        assert_eq!(
            parse(&arr([1, 0, 1500, 0]), 2),
            Some(Verdict::Admit {
                wait: Duration::from_micros(1500)
            })
        );
        assert_eq!(
            parse(&arr([0, 2, 200_000, 1_200_000]), 2),
            Some(Verdict::Refuse {
                index: 1,
                retry_after: Duration::from_millis(200),
                reset: Duration::from_millis(1200)
            })
        );
        assert_eq!(parse(&arr([0, 3, 1, 1]), 2), None, "index out of range");
        assert_eq!(parse(&arr([0, 0, 1, 1]), 2), None);
        assert_eq!(parse(&Value::Error(b"ERR".to_vec()), 1), None);
    }

    #[test]
    fn refused_keys_are_remembered_until_their_retry_time_under_their_parameters() {
        let spec = |burst| LimitSpec {
            name: "l".into(),
            rate_per_second: 2.0,
            burst,
            key: crate::config::LimitKey::ClientIp,
            nodelay: true,
            scope: crate::config::LimitScope::Cluster { replicas: 1 },
        };
        let e = Entry::new(0, &spec(3), Kind::Requests, b"k", 1);
        let other = Entry::new(0, &spec(3), Kind::Requests, b"other", 1);
        let c = RefusalCache::default();
        let t0 = Instant::now();
        c.remember(&e, t0 + Duration::from_millis(300), t0);
        assert_eq!(c.refused(&e, t0), Some(Duration::from_millis(300)));
        assert_eq!(c.refused(&other, t0), None);
        assert_eq!(c.refused(&e, t0 + Duration::from_millis(300)), None);
        let reloaded = Entry::new(0, &spec(4), Kind::Requests, b"k", 1);
        assert_eq!(reloaded.key, e.key);
        assert_eq!(
            c.refused(&reloaded, t0),
            None,
            "a changed limit decides afresh"
        );
    }

    #[test]
    fn token_estimates_take_the_request_maximum_and_the_prompt() {
        let body = br#"{"model":"m","max_tokens":100,"messages":[]}"#;
        assert_eq!(
            token_estimate(body, 7),
            100 + (body.len() as u64).div_ceil(4)
        );
        let body = br#"{"model":"m","max_completion_tokens":50,"max_tokens":100}"#;
        assert_eq!(
            token_estimate(body, 7),
            50 + (body.len() as u64).div_ceil(4)
        );
        let body = br#"{"model":"m"}"#;
        assert_eq!(token_estimate(body, 7), 7 + 4);
    }
}
