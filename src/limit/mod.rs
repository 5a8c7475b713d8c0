//! Keyed request rate limiting with the semantics of nginx `limit_req` (GCRA).
//!
//! # Algorithm
//!
//! Generic cell rate algorithm, in integer nanoseconds. For a limit of `rate_per_second`
//! with `burst`, the emission interval is `T = round(1e9 / rate)` ns and the tolerance is
//! `tau = burst * T`. Every key has a theoretical arrival time `TAT` (a fresh or forgotten
//! key has `TAT <= now`). A request at `now`:
//!
//! - `tat = max(TAT, now)`, `ahead = tat - now`;
//! - `ahead > tau`: **reject**, `TAT` unchanged; `retry_after = ahead - tau`, so a retry at
//!   exactly `now + retry_after` conforms and one a nanosecond earlier does not;
//! - otherwise `TAT = tat + T` and the request is admitted: at once with `nodelay`, or, in
//!   nginx's default delay mode, after `wait = ahead` (the instant its slot comes up;
//!   `Decision::Allow` when that wait is zero, `Decision::Delay` otherwise).
//!
//! This is nginx's `excess` bookkeeping (`excess = tat - now - T` after admission, in units of
//! `T`): with `rate=1r/s burst=5`, six simultaneous requests are admitted (delays 0..=5 s in
//! delay mode), the seventh is rejected. Over any window of `W` ns in which requests arrive
//! faster than the rate, a key is admitted at most `burst + 1 + floor(W / T)` requests.
//!
//! `remaining` is how many more requests would be admitted at this same instant
//! (`(tau + T - (TAT - now)) / T`); `reset` is `TAT - now`, the time until the bucket is full.
//!
//! Degenerate parameters never panic: `T` is clamped to `[1 ns, 2^62 ns]` (a rate above
//! 1e9/s behaves as 1e9/s; a zero, negative or NaN rate as one request per ~146 years, i.e.
//! fail closed after the burst), `tau` is clamped to `2^62` ns, and all time arithmetic
//! saturates towards a *later* `TAT`, which can only make a decision stricter.
//!
//! # Concurrency design
//!
//! One [`KeyedLimiter`] is shared by every worker (behind `Arc`) so a client cannot get N
//! times the rate by landing on N cores. Its state is split over [`SHARDS`] (256)
//! cache-line-aligned shards chosen by a per-limiter randomly keyed SipHash of the key. Each
//! shard is a `std::sync::RwLock<HashMap<u64 /* key hash */, AtomicU64 /* TAT */>>`:
//!
//! - **existing key (hot path)**: the shard's *read* lock (an atomic RMW on the shard's lock
//!   word to take it and one to drop it; any number of readers hold it at once), then a
//!   lock-free CAS loop on the key's `AtomicU64`. No mutual exclusion between cores and no
//!   global lock: a request waits only while a *new* key is being inserted into, or a sweep
//!   is running over, its own shard. The cost is that cores touching keys of the same shard
//!   bounce that shard's lock cache line (1/256 of key pairs), and cores hammering the same
//!   key also bounce its `TAT` line, which any exact shared limit must. Measured on a 2-vCPU
//!   VM: ~65-75 ns per `check` single-threaded for up to 10k keys (SipHash of the key, lock,
//!   CAS), excluding the clock read. A fully lock-free map (`papaya`) would save the two
//!   lock-word RMWs, at the price of a dependency and epoch-based reclamation; the sharded
//!   `RwLock` was preferred as simple and obviously correct.
//! - **new key**: the shard's *write* lock, briefly, to insert; it blocks readers of that one
//!   shard (1/256 of the keys) for the length of a hash-map insert.
//! - **eviction** ([`KeyedLimiter::evict_idle`], from a background thread): each shard's
//!   write lock in turn, for one `retain` over that shard.
//!
//! The read lock is held across the CAS, so an entry can never be removed while it is being
//! updated. Keys are stored as 64-bit hashes, not bytes: two distinct keys share a bucket
//! with probability about `n^2 / 2^65` (≈ 3e-8 for a million live keys), which is accepted
//! for the memory and hashing it saves. The hash key is random per limiter, so clients
//! cannot aim collisions.
//!
//! **Clock**: each shard keeps the largest `now` it has seen (in the same cache line as its
//! lock word, so it adds no line transfer), and a request uses `max(now, that)`: a clock
//! reading that goes backwards (two cores reading the clock and reaching the limiter in the
//! other order) is treated as the latest time seen. Sweeps advance it too, so a key
//! forgotten at `t` is never consulted again at a time before `t` (which would make
//! forgetting it observable).
//!
//! # Bounded memory and the full-table policy
//!
//! At most `max_keys` keys are stored (one global `AtomicUsize`, touched only when a key is
//! inserted or evicted). When a new key finds the table full, the inserting thread first
//! sweeps idle keys out of its own shard (under the write lock it already holds; at most
//! once per shard until the earliest stored `TAT` there has passed and at least 1 ms later,
//! so a table full of busy keys cannot turn every new key into a shard scan). If the table
//! is still full the request **fails open**: it gets the decision of a fresh key (admitted,
//! `remaining = burst`) without being stored, and [`KeyedLimiter::overflowed`] counts it.
//! Keys already tracked stay limited; rejecting every newcomer would let a flood of
//! distinct keys lock legitimate new clients out, so a gateway should size `max_keys` for
//! its key population, alert on the counter, and not turn a full table into an outage.

#![warn(missing_docs)]

pub mod spend;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The process-wide monotonic clock, in ns, that `now_nanos` should come from (re-exported
/// from [`crate::clock`] so that the limiter and all other shared state use one epoch).
pub use crate::clock::monotonic_nanos;

/// Number of shards a limiter's keys are spread over (a power of two).
pub const SHARDS: usize = 256;

/// Largest emission interval and tolerance, in ns (about 146 years); keeps sums in `u64`.
const MAX_SPAN_NS: u64 = 1 << 62;

/// Minimum gap between two full-table sweeps of the same shard on the request path.
const MIN_SWEEP_GAP_NS: u64 = 1_000_000;

/// The parameters of one limit, as in nginx `limit_req zone=... rate=... burst=... [nodelay]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitParams {
    /// Sustained rate in requests per second (must be > 0; see the module docs for clamping).
    pub rate_per_second: f64,
    /// Requests admitted above the rate at one instant (nginx `burst`).
    pub burst: u32,
    /// Admit burst requests at once (`true`) instead of delaying them to the rate (`false`,
    /// nginx's default).
    pub nodelay: bool,
}

/// The outcome of [`KeyedLimiter::check`] for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted now.
    Allow {
        /// Requests still admitted at this same instant after this one.
        remaining: u32,
        /// Time until the key's bucket is full again.
        reset: Duration,
    },
    /// Admitted, but must be held for `wait` before being forwarded (delay mode only).
    Delay {
        /// How long to hold the request before forwarding it.
        wait: Duration,
        /// Requests still admitted (each delayed) at this same instant after this one.
        remaining: u32,
        /// Time until the key's bucket is full again.
        reset: Duration,
    },
    /// Refused (nginx answers 503 by default; gateways usually answer 429).
    Reject {
        /// Earliest delay after which the same request would be admitted.
        retry_after: Duration,
        /// Time until the key's bucket is full again.
        reset: Duration,
    },
}

/// Passes an already keyed 64-bit hash through unchanged, for the shard maps.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the maps; fold anything else so it is still a hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TatMap = HashMap<u64, AtomicU64, BuildHasherDefault<PassThrough>>;

/// What a shard's lock protects.
struct ShardMap {
    /// Key hash → theoretical arrival time (ns, same clock as `now_nanos`).
    tats: TatMap,
    /// No full-table sweep of this shard before this time (ns).
    next_sweep: u64,
}

/// One shard; aligned so two shards' lock words never share a cache line.
#[repr(align(128))]
struct Shard {
    map: RwLock<ShardMap>,
    /// Largest `now` any request or sweep of this shard has used.
    max_seen: AtomicU64,
}

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, ShardMap> {
        // Nothing panics while the lock is held, and the map is valid after any panic anyway.
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ShardMap> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `max(now, the latest time seen by this shard)`, recording `now`.
    fn observe(&self, now: u64) -> u64 {
        let seen = self.max_seen.load(Ordering::Relaxed);
        if now <= seen {
            return seen;
        }
        self.max_seen.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// One limit's state for all keys, shared by all worker threads (`Send + Sync`), behind `Arc`.
pub struct KeyedLimiter {
    params: LimitParams,
    /// Emission interval `T`, ns, in `[1, MAX_SPAN_NS]`.
    interval: u64,
    /// Tolerance `tau = burst * T`, ns, at most `MAX_SPAN_NS`.
    tolerance: u64,
    max_keys: usize,
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// Stored keys over all shards (never above `max_keys`).
    len: AtomicUsize,
    /// New keys admitted untracked because the table was full.
    overflowed: AtomicU64,
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("params", &self.params)
            .field("interval_ns", &self.interval)
            .field("tolerance_ns", &self.tolerance)
            .field("max_keys", &self.max_keys)
            .field("len", &self.len())
            .field("overflowed", &self.overflowed())
            .finish_non_exhaustive()
    }
}

/// `T` in ns for a rate, clamped to `[1, MAX_SPAN_NS]`; a rate that is not > 0 gets the max.
fn interval_nanos(rate_per_second: f64) -> u64 {
    let t = (1e9 / rate_per_second).round();
    // Also catches a rate that is NaN (t NaN) or not > 0 (t negative or infinite).
    if t.is_nan() || rate_per_second <= 0.0 || t >= MAX_SPAN_NS as f64 {
        MAX_SPAN_NS
    } else if t < 1.0 {
        1
    } else {
        t as u64
    }
}

impl KeyedLimiter {
    /// A limiter for `params` storing at most `max_keys` keys (see the module docs for what
    /// happens to new keys when it is full; `max_keys == 0` tracks nothing and fails open).
    pub fn new(params: LimitParams, max_keys: usize) -> Self {
        let interval = interval_nanos(params.rate_per_second);
        let tolerance = u64::from(params.burst)
            .saturating_mul(interval)
            .min(MAX_SPAN_NS);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(ShardMap {
                    tats: TatMap::default(),
                    next_sweep: 0,
                }),
                max_seen: AtomicU64::new(0),
            })
            .collect();
        Self {
            params,
            interval,
            tolerance,
            max_keys,
            hasher: RandomState::new(),
            shards,
            len: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Decides one request for `key` arriving at `now_nanos` (a [`monotonic_nanos`]
    /// reading; callers pass it so tests are deterministic) and records it if admitted.
    ///
    /// A key already stored costs its shard's shared read lock and a CAS loop; a new key
    /// takes its shard's write lock for one insert (and, when the table is full, at most one
    /// sweep of that shard, see the module docs). Never panics.
    pub fn check(&self, key: &[u8], now_nanos: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        {
            let map = shard.read();
            let now = shard.observe(now_nanos);
            if let Some(tat) = map.tats.get(&hash) {
                return self.update(tat, now);
            }
        }
        self.insert(shard, hash, now_nanos)
    }

    /// For budgets charged after the fact (tokens per minute): whether `key` may start a
    /// request at `now_nanos`, without recording anything. Rejects while the key's debt
    /// (charges beyond the rate) exceeds the burst tolerance.
    pub fn peek(&self, key: &[u8], now_nanos: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let map = shard.read();
        let now = shard.observe(now_nanos);
        let tat = map
            .tats
            .get(&hash)
            .map_or(0, |c| c.load(Ordering::Acquire))
            .max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            Decision::Reject {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
                reset: Duration::from_nanos(ahead),
            }
        } else {
            let remaining = (self.tolerance - ahead) / self.interval;
            Decision::Allow {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset: Duration::from_nanos(ahead),
            }
        }
    }

    /// Charges `cost` units to `key` at `now_nanos` (tokens a response used). The charge
    /// always lands, even past the tolerance: the debt then holds back the key's next
    /// requests ([`peek`](Self::peek)) until the rate has paid it off.
    pub fn charge(&self, key: &[u8], cost: u64, now_nanos: u64) {
        if cost == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let add = cost.saturating_mul(self.interval).min(MAX_SPAN_NS);
        let bump = |cell: &AtomicU64, now: u64| {
            let cap = now.saturating_add(MAX_SPAN_NS);
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.max(now).saturating_add(add).min(cap))
            });
        };
        {
            let map = shard.read();
            let now = shard.observe(now_nanos);
            if let Some(cell) = map.tats.get(&hash) {
                bump(cell, now);
                return;
            }
        }
        let mut map = shard.write();
        let now = shard.observe(now_nanos);
        if !map.tats.contains_key(&hash) {
            if !self.reserve_slot() || map.tats.try_reserve(1).is_err() {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            map.tats.insert(hash, AtomicU64::new(0));
        }
        if let Some(cell) = map.tats.get(&hash) {
            bump(cell, now);
        }
    }

    /// The parameters this limiter was built with.
    pub fn params(&self) -> &LimitParams {
        &self.params
    }

    /// Number of keys currently stored.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many new keys were admitted without being stored because the table was full
    /// (export it as a metric; a growing value means `max_keys` is too small or a flood of
    /// distinct keys is under way).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Drops keys whose `TAT` is not after `now_nanos` (their bucket is full again, so
    /// forgetting them changes no decision) and returns how many were dropped. Call it
    /// periodically (e.g. every second) from a background thread, never from the request
    /// path: it takes each shard's write lock in turn for one pass over that shard.
    pub fn evict_idle(&self, now_nanos: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write();
            let now = shard.observe(now_nanos);
            removed += self.sweep(&mut map, now);
            // Give memory back after a flood of keys has gone idle.
            if map.tats.capacity() > 64 && map.tats.len() < map.tats.capacity() / 4 {
                map.tats.shrink_to_fit();
            }
        }
        removed
    }

    fn shard(&self, hash: u64) -> &Shard {
        // Bits 32.. pick the shard: the maps index buckets by the low bits and tag them with
        // the top 7, so neither is constant within a shard.
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    /// The GCRA step on one key's `TAT` cell at (already clamped) `now`.
    fn update(&self, cell: &AtomicU64, now: u64) -> Decision {
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let tat = current.max(now);
            let ahead = tat - now;
            if ahead > self.tolerance {
                return Decision::Reject {
                    retry_after: Duration::from_nanos(ahead - self.tolerance),
                    reset: Duration::from_nanos(ahead),
                };
            }
            let next = tat.saturating_add(self.interval);
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.admitted(ahead, next - now),
                Err(actual) => current = actual,
            }
        }
    }

    /// The decision for an admitted request that waited `ahead` and left `TAT - now = reset`.
    fn admitted(&self, ahead: u64, reset: u64) -> Decision {
        let remaining = (self.tolerance + self.interval).saturating_sub(reset) / self.interval;
        let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
        let reset = Duration::from_nanos(reset);
        if ahead == 0 || self.params.nodelay {
            Decision::Allow { remaining, reset }
        } else {
            Decision::Delay {
                wait: Duration::from_nanos(ahead),
                remaining,
                reset,
            }
        }
    }

    /// Slow path for a key not found under the read lock.
    fn insert(&self, shard: &Shard, hash: u64, now_nanos: u64) -> Decision {
        let mut map = shard.write();
        let now = shard.observe(now_nanos);
        if let Some(tat) = map.tats.get(&hash) {
            // Another thread inserted it between our read and write locks.
            return self.update(tat, now);
        }
        if !self.reserve_slot() {
            if now >= map.next_sweep {
                self.sweep(&mut map, now);
            }
            if !self.reserve_slot() {
                return self.untracked(now);
            }
        }
        if map.tats.try_reserve(1).is_err() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return self.untracked(now);
        }
        let cell = map.tats.entry(hash).or_insert(AtomicU64::new(0));
        self.update(cell, now)
    }

    /// Fail-open decision for a new key that cannot be stored: that of a fresh key.
    fn untracked(&self, now: u64) -> Decision {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.update(&AtomicU64::new(0), now)
    }

    /// Counts one more stored key if that stays within `max_keys`.
    fn reserve_slot(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Removes the keys of one (write-locked) shard whose `TAT <= now`; returns how many.
    fn sweep(&self, map: &mut ShardMap, now: u64) -> usize {
        let before = map.tats.len();
        let mut earliest = u64::MAX;
        map.tats.retain(|_, tat| {
            let tat = *tat.get_mut();
            let keep = tat > now;
            if keep {
                earliest = earliest.min(tat);
            }
            keep
        });
        map.next_sweep = earliest.max(now.saturating_add(MIN_SWEEP_GAP_NS));
        let removed = before - map.tats.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}
