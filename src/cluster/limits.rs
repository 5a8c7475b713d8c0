//! Cluster-scoped limits: the script Redis runs (GCRA, and spend budgets), the keys it runs
//! on, the decision for one request (one round trip, or none when a key was refused
//! recently) with each key's state for the `x-ratelimit-*` headers, and the token and spend
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
use crate::limit::spend::{ClientSpend, Window};
use crate::limit::KeyedLimiter;
use crate::proxy::limit_headers::BucketState;

/// The one server-side script: GCRA and spend budgets over any number of keys,
/// all-or-nothing, on Redis's own clock (`TIME`, microseconds) so pods whose clocks differ
/// agree.
///
/// `ARGV[1]` is the mode; key `i` has four arguments from `ARGV[4i-2]`: `a`, `b`, the cost
/// and a flag. For a GCRA key (flag `0`, or `1` when the limit delays instead of admitting
/// at once) `a` is the emission interval `T` and `b` the tolerance `tau` (µs), the cost in
/// requests or tokens; its value is its `TAT`. For a spend key (flag `s`) `a` is the time
/// until its window ends (ms), `b` the budget and the cost in micro-dollars; its value is
/// the window's spend.
///
/// - `admit`: a GCRA key refuses when `max(TAT, now) - now > tau`, a spend key when its
///   spend is at or over its budget; then nothing is written and `{0, i, retry_after_us,
///   reset_us}` names the first refusing key. Otherwise every key with a cost is charged
///   (`TAT = max(TAT, now) + cost·T`; spend `+= cost`) and `{1, 0, wait_us, 0, s_1..s_n}`
///   comes back: `wait_us` the longest `tat - now` among delaying keys (nginx's delay) and
///   `s_i` each key's state after the request (`TAT - now` in µs, or the spend), which the
///   `x-ratelimit-*` headers report. A cost of 0 only checks.
/// - `charge`: every key is charged its cost with no check (it may be negative: a refund
///   of an over-reservation); `{1, 0, 0, 0, s_1..s_n}` as above.
///
/// GCRA keys expire a second after their bucket is full again, spend keys an hour after
/// their window ends (a request running across midnight settles in the window it was
/// reserved in), so Redis holds only keys in use.
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
local function spend(i, cost)
  local v = redis.call('INCRBY', KEYS[i], string.format('%.0f', cost))
  redis.call('PEXPIRE', KEYS[i], string.format('%.0f', tonumber(ARGV[4*i-2]) + 3600000))
  return v
end
local n = #KEYS
local out = {1, 0, 0, 0}
if ARGV[1] == 'charge' then
  for i = 1, n do
    local cost = tonumber(ARGV[4*i])
    if ARGV[4*i+1] == 's' then
      out[4+i] = spend(i, cost)
    else
      local tat = tonumber(redis.call('GET', KEYS[i])) or 0
      if tat < now then tat = now end
      tat = tat + cost * tonumber(ARGV[4*i-2])
      store(KEYS[i], tat)
      if tat < now then tat = now end
      out[4+i] = math.ceil(tat - now)
    end
  end
  return out
end
local vals = {}
local wait = 0
for i = 1, n do
  local b = tonumber(ARGV[4*i-1])
  local v = tonumber(redis.call('GET', KEYS[i])) or 0
  if ARGV[4*i+1] == 's' then
    if v >= b then
      local ends = math.ceil(tonumber(ARGV[4*i-2]) * 1000)
      return {0, i, ends, ends}
    end
  else
    if v < now then v = now end
    local ahead = v - now
    if ahead > b then
      return {0, i, math.ceil(ahead - b), math.ceil(ahead)}
    end
    if ARGV[4*i+1] == '1' and ahead > wait then wait = ahead end
  end
  vals[i] = v
end
out[3] = math.ceil(wait)
for i = 1, n do
  local cost = tonumber(ARGV[4*i])
  if ARGV[4*i+1] == 's' then
    if cost > 0 then out[4+i] = spend(i, cost) else out[4+i] = vals[i] end
  else
    local tat = vals[i]
    if cost > 0 then
      tat = tat + cost * tonumber(ARGV[4*i-2])
      store(KEYS[i], tat)
    end
    out[4+i] = math.ceil(tat - now)
  end
end
return out
"#;

/// Completion tokens estimated for a request that names no maximum, when `[cluster]` does
/// not say (`cluster.default_max_tokens`'s default).
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests (`[limits.NAME]`).
    Requests,
    /// Tokens (a client's `tokens_per_minute`).
    Tokens,
    /// Micro-dollars a client spent in a window (its `budget_usd_per_day` / `_month`), and
    /// the window's id.
    Spend(Window, u32),
}

/// One bucket a request is counted against in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The limit (index in `Config::limits`; unused for [`Kind::Spend`]).
    pub limit: LimitId,
    /// What it counts.
    pub kind: Kind,
    /// The Redis key: `rg:{TAG}:HASH`, see [`redis_key`].
    pub key: String,
    /// Emission interval, µs (for spend: ms until the window ends).
    pub interval_us: f64,
    /// Tolerance (burst), µs (for spend: the budget, micro-dollars).
    pub tolerance_us: f64,
    /// Units this request costs (0: check only; micro-dollars for spend).
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

    /// The bucket of a client's spend budget in `window` (the one running now): `budget`
    /// and `cost` in micro-dollars. The key names the window, so a new day or month starts
    /// a new key.
    pub fn spend(window: Window, budget: u64, client: &[u8], cost: u64) -> Entry {
        let (id, ends_in) = window.now();
        let mut name = String::with_capacity(16);
        name.push_str("spend:");
        name.push_str(window.label());
        name.push(':');
        name.push_str(&id.to_string());
        Entry {
            limit: 0,
            kind: Kind::Spend(window, id),
            key: redis_key(&name, client),
            interval_us: ends_in.as_millis() as f64,
            tolerance_us: budget as f64,
            cost,
            delay: false,
        }
    }

    /// The script's flag for this key.
    fn flag(&self) -> &'static str {
        match self.kind {
            Kind::Spend(..) => "s",
            _ if self.delay => "1",
            _ => "0",
        }
    }

    /// A GCRA key's state from the script (`TAT - now`, µs) as the headers report it;
    /// None for spend keys.
    pub fn bucket_state(&self, state: i64) -> Option<BucketState> {
        let t = self.interval_us.max(1e-9);
        let ahead = state.max(0) as f64;
        let (limit, remaining) = match self.kind {
            // What the next requests may take at once: `(tau + T - ahead) / T`.
            Kind::Requests => (
                (self.tolerance_us / t).round() as u64 + 1,
                ((self.tolerance_us + t - ahead) / t).floor(),
            ),
            // Tokens the budget holds: `(tau - ahead) / T`.
            Kind::Tokens => (
                (self.tolerance_us / t).round() as u64,
                ((self.tolerance_us - ahead) / t).floor(),
            ),
            Kind::Spend(..) => return None,
        };
        Some(BucketState {
            limit,
            remaining: remaining.max(0.0) as u64,
            reset: Duration::from_micros(state.max(0) as u64),
        })
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
        /// Each entry's state after the request (see [`SCRIPT`]), in order.
        states: Vec<i64>,
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
            // Spend refusals are never remembered (a refund may reopen the budget), so a
            // hit is always a GCRA key.
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
                        if !matches!(e.kind, Kind::Spend(..)) {
                            refusals.remember(e, now + *retry_after, now);
                        }
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
        argv.push(e.flag().to_string());
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

/// The script's `{admitted, index, a, b, states...}` as a verdict (None: not that shape).
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
        1 => {
            let states = (0..n).map(|i| int(4 + i)).collect::<Option<Vec<i64>>>()?;
            (items.len() == 4 + n).then_some(Verdict::Admit {
                wait: us(int(2)?),
                states,
            })
        }
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

/// What a response used, for settling its reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    /// Tokens (prompt + completion), when known.
    pub tokens: Option<u64>,
    /// Micro-dollars at the answering model's prices, when known.
    pub micros: Option<u64>,
}

/// What was reserved at admission against a client's token budget and spend budgets,
/// settled with the real usage when the response ends: the difference is debited or
/// refunded. Dropped unsettled (the request failed, or ended before any usage was known),
/// the whole reservation is refunded.
#[derive(Default)]
pub struct Reservation {
    cluster: Option<ClusterReservation>,
    local: Vec<LocalReservation>,
    done: bool,
}

/// The part of a reservation made in the store (its settle is one more call, off the
/// request path).
pub struct ClusterReservation {
    /// The worker's store.
    pub store: Rc<Store>,
    /// The settings it was made under.
    pub cfg: Arc<ClusterSettings>,
    /// The buckets, each with the amount reserved in it as its cost.
    pub entries: Vec<Entry>,
    /// The client's spend cells, which record the spend the store reports.
    pub spend: Option<Arc<ClientSpend>>,
}

/// One reservation made in this process: a local budget, or the fallback of a cluster one
/// while the store was unavailable at admission.
pub enum LocalReservation {
    /// A token budget's limiter: nothing is reserved there, the real usage is charged at
    /// the end.
    Tokens {
        /// The limiter.
        limiter: Arc<KeyedLimiter>,
        /// The bucket's key there.
        key: String,
    },
    /// A spend cell in which `reserved` micro-dollars were reserved.
    Spend {
        /// The client's cells.
        spend: Arc<ClientSpend>,
        /// The fallback cell (a cluster budget's) rather than the budget's own.
        fallback: bool,
        /// Which window.
        window: Window,
        /// The window's id when reserved.
        id: u32,
        /// Micro-dollars reserved.
        reserved: u64,
    },
}

impl Reservation {
    /// A reservation made in the store and/or in this process.
    pub fn new(cluster: Option<ClusterReservation>, local: Vec<LocalReservation>) -> Reservation {
        Reservation {
            cluster,
            local,
            done: false,
        }
    }

    /// Takes the part reserved in this process out (it is then no longer refunded on drop).
    pub fn take_local(&mut self) -> Vec<LocalReservation> {
        std::mem::take(&mut self.local)
    }

    /// Whether nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none() && self.local.is_empty()
    }

    /// Settles with what the response used (unknown amounts refund their reservation).
    pub fn settle(mut self, used: Used) {
        self.finish(used);
    }

    fn finish(&mut self, used: Used) {
        if self.done {
            return;
        }
        self.done = true;
        let tokens = used.tokens.unwrap_or(0);
        let micros = used.micros.unwrap_or(0);
        let delta = |used: u64, reserved: u64| {
            i64::try_from(used)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(reserved).unwrap_or(i64::MAX))
        };
        for item in &self.local {
            match item {
                LocalReservation::Tokens { limiter, key } => {
                    limiter.charge(key.as_bytes(), tokens, crate::clock::monotonic_nanos())
                }
                LocalReservation::Spend {
                    spend,
                    fallback,
                    window,
                    id,
                    reserved,
                } => {
                    let cells = if *fallback {
                        &spend.fallback
                    } else {
                        &spend.cells
                    };
                    if let Some(c) = cells.get(window.index()) {
                        c.add(*id, delta(micros, *reserved));
                    }
                }
            }
        }
        let Some(ClusterReservation {
            store,
            cfg,
            mut entries,
            spend,
        }) = self.cluster.take()
        else {
            return;
        };
        for e in &mut entries {
            let used = match e.kind {
                Kind::Spend(..) => micros,
                _ => tokens,
            };
            // The cost now carries the difference to charge (read back as i64 below).
            e.cost = delta(used, e.cost) as u64;
        }
        entries.retain(|e| e.cost != 0);
        if entries.is_empty() {
            return;
        }
        // Off the request path: the client has its answer already.
        monoio::spawn(async move {
            let r = run_script(&store, &cfg, "charge", &entries, |e| e.cost as i64).await;
            let ok = match &r {
                Ok(Value::Array(Some(items))) => {
                    if let Some(sp) = &spend {
                        record_spend(sp, &entries, items);
                    }
                    true
                }
                _ => false,
            };
            let c = if ok {
                &store.metrics.settles_ok
            } else {
                &store.metrics.settles_failed
            };
            c.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Records the spend the store reported for `entries` (the script's `s_i`, from `items[4]`)
/// in the client's cells, for metrics and `/budgets`.
fn record_spend(spend: &ClientSpend, entries: &[Entry], items: &[Value]) {
    for (i, e) in entries.iter().enumerate() {
        if let (Kind::Spend(w, id), Some(Value::Int(v))) = (e.kind, items.get(4 + i)) {
            if let Some(c) = spend.cells.get(w.index()) {
                c.set(id, u64::try_from(*v).unwrap_or(0));
            }
        }
    }
}

/// [`record_spend`] from an admission's states.
pub fn record_spend_states(spend: &ClientSpend, entries: &[Entry], states: &[i64]) {
    for (e, v) in entries.iter().zip(states) {
        if let Kind::Spend(w, id) = e.kind {
            if let Some(c) = spend.cells.get(w.index()) {
                c.set(id, u64::try_from(*v).unwrap_or(0));
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(Used::default());
    }
}

/// Tokens to reserve for a model request: the completion it may produce (`max_tokens`, or
/// `max_completion_tokens`, else `default_max`) plus the prompt at 4 bytes a token.
pub fn token_estimate(body: &[u8], default_max: u64) -> u64 {
    let (prompt, completion) = token_estimate_parts(body, default_max);
    completion.saturating_add(prompt)
}

/// [`token_estimate`]'s parts: (prompt, completion), which are priced apart.
pub fn token_estimate_parts(body: &[u8], default_max: u64) -> (u64, u64) {
    #[derive(serde::Deserialize)]
    struct Max {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
    }
    let completion = serde_json::from_slice::<Max>(body)
        .ok()
        .and_then(|m| m.max_completion_tokens.or(m.max_tokens))
        .unwrap_or(default_max);
    ((body.len() as u64).div_ceil(4), completion)
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
        let arr = |v: &[i64]| Value::Array(Some(v.iter().map(|&x| Value::Int(x)).collect()));
        assert_eq!(
            parse(&arr(&[1, 0, 1500, 0, 7, 9]), 2),
            Some(Verdict::Admit {
                wait: Duration::from_micros(1500),
                states: vec![7, 9],
            })
        );
        assert_eq!(parse(&arr(&[1, 0, 0, 0, 7]), 2), None, "a state short");
        assert_eq!(
            parse(&arr(&[0, 2, 200_000, 1_200_000]), 2),
            Some(Verdict::Refuse {
                index: 1,
                retry_after: Duration::from_millis(200),
                reset: Duration::from_millis(1200)
            })
        );
        assert_eq!(parse(&arr(&[0, 3, 1, 1]), 2), None, "index out of range");
        assert_eq!(parse(&arr(&[0, 0, 1, 1]), 2), None);
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
