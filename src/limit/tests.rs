//! Tests of the keyed limiter: GCRA formula tables, the nginx `limit_req` example, exact
//! `retry_after`, concurrent over-admission, eviction, the full-table policy and degenerate
//! inputs. All deterministic: every test passes its own `now_nanos`.

use super::*;
use std::sync::{Arc, Barrier};
use std::thread;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn params(rate_per_second: f64, burst: u32, nodelay: bool) -> LimitParams {
    LimitParams {
        rate_per_second,
        burst,
        nodelay,
    }
}

/// Decisions tallied by kind; `departures` are `arrival + wait` of admitted requests.
#[derive(Debug, Default)]
struct Tally {
    allowed: u64,
    delayed: u64,
    rejected: u64,
    departures: Vec<u64>,
}

impl Tally {
    fn record(&mut self, now: u64, d: Decision) {
        match d {
            Decision::Allow { .. } => {
                self.allowed += 1;
                self.departures.push(now);
            }
            Decision::Delay { wait, .. } => {
                self.delayed += 1;
                self.departures.push(now + wait.as_nanos() as u64);
            }
            Decision::Reject { .. } => self.rejected += 1,
        }
    }

    fn admitted(&self) -> u64 {
        self.allowed + self.delayed
    }
}

/// The asserted formula: requests arriving without letting the bucket refill (the key's
/// TAT never falls behind `now`) from `first` to `last`, with the request(s) at `last`
/// ending rejected, are admitted exactly `burst + 1 + floor((last - first) / T)` times.
fn gcra_formula(l: &KeyedLimiter, window: u64) -> u64 {
    u64::from(l.params().burst) + 1 + window / l.interval
}

#[test]
fn formula_table() {
    // (rate/s, burst, arrival step ns, window ns): arrivals at 0, step, 2*step, .. <= window,
    // then burst + 2 more at `window` so the last one is rejected. Every row keeps the
    // bucket from refilling: step <= tau, or step divides T when burst is 0.
    let rows: &[(f64, u32, u64, u64)] = &[
        (1.0, 5, 100 * MS, 10 * SEC),
        (1.0, 5, SEC, 10 * SEC),
        (10.0, 0, 10 * MS, 3 * SEC),
        (10.0, 0, 100 * MS, 3 * SEC + 50 * MS),
        (100.0, 20, MS, SEC),
        (0.5, 3, 250 * MS, 7 * SEC + 300 * MS),
        (3.0, 2, MS, 2 * SEC),
        (3.0, 1, 7 * MS, 5 * SEC + 123),
        (2.5, 1, 7 * MS, 4 * SEC + 400 * MS),
        (1000.0, 50, 100_000, SEC / 2),
        (1e6, 10, 100, MS),
        (7.0, 100, 13 * MS, 30 * SEC),
    ];
    for &(rate, burst, step, window) in rows {
        for nodelay in [true, false] {
            let l = KeyedLimiter::new(params(rate, burst, nodelay), 16);
            let mut t = Tally::default();
            let mut n = 0;
            let mut now = 0;
            while now <= window {
                t.record(now, l.check(b"k", now));
                n += 1;
                now += step;
            }
            for _ in 0..burst + 2 {
                t.record(window, l.check(b"k", window));
                n += 1;
            }
            let row =
                format!("rate={rate} burst={burst} step={step} window={window} nodelay={nodelay}");
            let expected = gcra_formula(&l, window);
            assert_eq!(t.admitted(), expected, "{row}: {t:?}");
            assert_eq!(t.rejected, n - expected, "{row}");
            if nodelay || burst == 0 {
                assert_eq!(t.delayed, 0, "{row}");
            } else {
                // Delay mode paces admitted requests out exactly T apart from the first.
                let paced: Vec<u64> = (0..expected).map(|k| k * l.interval).collect();
                assert_eq!(t.departures, paced, "{row}");
            }
            if rate == 1.0 || rate == 10.0 || rate == 100.0 || rate == 0.5 {
                // Whole-nanosecond intervals: the formula is also burst + 1 + floor(W * rate).
                let w_rate = (window as f64 / SEC as f64 * rate).floor() as u64;
                assert_eq!(expected, u64::from(burst) + 1 + w_rate, "{row}");
            }
        }
    }
}

#[test]
fn formula_with_idle_gap_restarts_full() {
    // Two dense phases separated by more than tau + T: each is a fresh bucket.
    let l = KeyedLimiter::new(params(2.0, 3, true), 16);
    let mut t = Tally::default();
    for phase_start in [0, 60 * SEC] {
        for i in 0..=40 {
            let now = phase_start + i * 50 * MS;
            t.record(now, l.check(b"k", now));
        }
    }
    // Each phase: window 2 s, T = 0.5 s, burst 3 → 3 + 1 + 4 = 8.
    assert_eq!(t.admitted(), 2 * 8);
}

#[test]
fn nginx_example_nodelay() {
    let l = KeyedLimiter::new(params(1.0, 5, true), 16);
    let now = 1000 * SEC;
    for k in 0..6u32 {
        assert_eq!(
            l.check(b"client", now),
            Decision::Allow {
                remaining: 5 - k,
                reset: Duration::from_secs(u64::from(k) + 1),
            },
            "request {}",
            k + 1
        );
    }
    assert_eq!(
        l.check(b"client", now),
        Decision::Reject {
            retry_after: Duration::from_secs(1),
            reset: Duration::from_secs(6),
        }
    );
    // One second later exactly one more slot has opened.
    assert!(matches!(
        l.check(b"client", now + SEC),
        Decision::Allow { remaining: 0, .. }
    ));
    assert!(matches!(
        l.check(b"client", now + SEC),
        Decision::Reject { .. }
    ));
}

#[test]
fn nginx_example_delay() {
    let l = KeyedLimiter::new(params(1.0, 5, false), 16);
    let now = 1000 * SEC;
    assert_eq!(
        l.check(b"client", now),
        Decision::Allow {
            remaining: 5,
            reset: Duration::from_secs(1),
        }
    );
    for k in 1..6u32 {
        assert_eq!(
            l.check(b"client", now),
            Decision::Delay {
                wait: Duration::from_secs(u64::from(k)),
                remaining: 5 - k,
                reset: Duration::from_secs(u64::from(k) + 1),
            },
            "request {}",
            k + 1
        );
    }
    assert!(matches!(l.check(b"client", now), Decision::Reject { .. }));
}

#[test]
fn burst_zero_never_delays() {
    let l = KeyedLimiter::new(params(1.0, 0, false), 16);
    assert!(matches!(
        l.check(b"k", 0),
        Decision::Allow { remaining: 0, .. }
    ));
    assert_eq!(
        l.check(b"k", 400 * MS),
        Decision::Reject {
            retry_after: Duration::from_millis(600),
            reset: Duration::from_millis(600),
        }
    );
    assert!(matches!(l.check(b"k", SEC), Decision::Allow { .. }));
}

/// Tiny deterministic PRNG for parameter sweeps.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn retry_after_is_exact() {
    let mut rng = Lcg(7);
    let rates = [1.0, 3.0, 7.0, 0.3, 1234.5, 1e6, 0.001];
    for &rate in &rates {
        for burst in [0, 1, 2, 5, 17] {
            for nodelay in [true, false] {
                let l = KeyedLimiter::new(params(rate, burst, nodelay), 16);
                let mut now = 5 * SEC + rng.next() % SEC;
                for _round in 0..20 {
                    // Flood until rejected, then probe retry_after - 1 ns and retry_after.
                    let (retry_after, reset) = loop {
                        if let Decision::Reject { retry_after, reset } = l.check(b"k", now) {
                            break (retry_after.as_nanos() as u64, reset.as_nanos() as u64);
                        }
                    };
                    assert!(retry_after > 0 && retry_after <= reset);
                    let early = l.check(b"k", now + retry_after - 1);
                    assert!(
                        matches!(early, Decision::Reject { retry_after, .. }
                            if retry_after == Duration::from_nanos(1)),
                        "rate={rate} burst={burst}: {early:?}"
                    );
                    now += retry_after;
                    assert!(
                        !matches!(l.check(b"k", now), Decision::Reject { .. }),
                        "rate={rate} burst={burst}"
                    );
                    // Let some random time pass before the next flood.
                    now += rng.next() % (2 * l.interval.min(10 * SEC));
                }
            }
        }
    }
}

#[test]
fn clock_going_backwards_uses_latest_seen() {
    let l = KeyedLimiter::new(params(1.0, 0, true), 16);
    assert!(matches!(l.check(b"k", 10 * SEC), Decision::Allow { .. }));
    assert!(matches!(l.check(b"k", 11 * SEC), Decision::Allow { .. }));
    // 10.5 s arrives after 11 s was seen: treated as 11 s (retry after 1 s, not 1.5 s).
    assert_eq!(
        l.check(b"k", 10 * SEC + 500 * MS),
        Decision::Reject {
            retry_after: Duration::from_secs(1),
            reset: Duration::from_secs(1),
        }
    );
    assert!(matches!(
        l.check(b"k", 12 * SEC - 1),
        Decision::Reject { .. }
    ));
    assert!(matches!(l.check(b"k", 12 * SEC), Decision::Allow { .. }));
}

#[test]
fn threads_in_lockstep_admit_exactly_the_formula() {
    const THREADS: usize = 4;
    const TICKS: u64 = 300;
    const PER_TICK: usize = 16;
    for nodelay in [true, false] {
        let l = Arc::new(KeyedLimiter::new(params(10.0, 5, nodelay), 64));
        let step = l.interval / 3 + 7; // not a divisor of T
        let clock = Arc::new(AtomicU64::new(SEC));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let (l, clock, barrier) = (l.clone(), clock.clone(), barrier.clone());
                thread::spawn(move || {
                    let mut admitted = 0u64;
                    for _ in 0..TICKS {
                        barrier.wait();
                        let now = clock.load(Ordering::SeqCst);
                        for _ in 0..PER_TICK {
                            if !matches!(l.check(b"hot", now), Decision::Reject { .. }) {
                                admitted += 1;
                            }
                        }
                        if barrier.wait().is_leader() {
                            clock.fetch_add(step, Ordering::SeqCst);
                        }
                        let _ = id;
                    }
                    admitted
                })
            })
            .collect();
        let total: u64 = handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .sum();
        let window = (TICKS - 1) * step;
        assert_eq!(total, gcra_formula(&l, window), "nodelay={nodelay}");
    }
}

#[test]
fn threads_racing_admit_exactly_the_formula() {
    const THREADS: usize = 4;
    const CALLS: u64 = 50_000;
    // A small table, so noise keys also exercise the full-table sweep and the fail-open path.
    let l = Arc::new(KeyedLimiter::new(params(100.0, 5, true), 256));
    let step = l.interval / 8;
    // The hot key is stored first (at 0), so it is never the key left untracked.
    assert!(matches!(l.check(b"hot", 0), Decision::Allow { .. }));
    // Each call takes the next synthetic instant, so calls reach the limiter out of order.
    let clock = Arc::new(AtomicU64::new(step));
    let done = Arc::new(AtomicUsize::new(0));
    let evictor = {
        let (l, clock, done) = (l.clone(), clock.clone(), done.clone());
        thread::spawn(move || {
            // Sweeps race with the workers' inserts and CASes until they are all done.
            while done.load(Ordering::SeqCst) < THREADS {
                let _ = l.evict_idle(clock.load(Ordering::SeqCst));
                thread::yield_now();
            }
        })
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|id| {
            let (l, clock, done) = (l.clone(), clock.clone(), done.clone());
            thread::spawn(move || {
                let mut admitted = 0u64;
                for i in 0..CALLS {
                    let now = clock.fetch_add(step, Ordering::SeqCst);
                    if !matches!(l.check(b"hot", now), Decision::Reject { .. }) {
                        admitted += 1;
                    }
                    // Noise: other keys sharing shards, inserted, evicted, possibly overflowing.
                    let other = (id as u64 * CALLS + i) % 500;
                    let _ = l.check(&other.to_le_bytes(), now);
                }
                done.fetch_add(1, Ordering::SeqCst);
                admitted
            })
        })
        .collect();
    let mut total: u64 = 1;
    for h in handles {
        total += h.join().expect("worker panicked");
    }
    evictor.join().expect("evictor panicked");
    let last = clock.load(Ordering::SeqCst);
    for _ in 0..10 {
        if !matches!(l.check(b"hot", last), Decision::Reject { .. }) {
            total += 1;
        }
    }
    assert!(l.len() <= 256);
    // First admission at 0, the bucket never refills, the last request is rejected.
    assert_eq!(total, gcra_formula(&l, last));
}

#[test]
fn evict_idle_drops_only_full_buckets() {
    let l = KeyedLimiter::new(params(1.0, 2, true), 1000);
    for i in 0..100u32 {
        let _ = l.check(&i.to_le_bytes(), 0);
    }
    // Key 0 used three times: TAT = 3 s; others TAT = 1 s.
    let _ = l.check(&0u32.to_le_bytes(), 0);
    let _ = l.check(&0u32.to_le_bytes(), 0);
    assert_eq!(l.len(), 100);
    assert_eq!(l.evict_idle(SEC - 1), 0);
    assert_eq!(l.evict_idle(SEC), 99);
    assert_eq!(l.len(), 1);
    // Key 0 is still limited: full burst used, one slot back at 1 s.
    assert!(matches!(
        l.check(&0u32.to_le_bytes(), SEC),
        Decision::Allow { remaining: 0, .. }
    ));
    assert!(matches!(
        l.check(&0u32.to_le_bytes(), SEC),
        Decision::Reject { .. }
    ));
    assert_eq!(l.evict_idle(10 * SEC), 1);
    assert!(l.is_empty());
}

#[test]
fn eviction_changes_no_decision() {
    let mut rng = Lcg(42);
    for nodelay in [true, false] {
        let kept = KeyedLimiter::new(params(5.0, 3, nodelay), 10_000);
        let evicted = KeyedLimiter::new(params(5.0, 3, nodelay), 10_000);
        let mut now = SEC;
        for i in 0..20_000 {
            now += rng.next() % (20 * MS);
            let key = (rng.next() % 40).to_le_bytes();
            assert_eq!(
                kept.check(&key, now),
                evicted.check(&key, now),
                "request {i}"
            );
            if i % 97 == 0 {
                evicted.evict_idle(now);
            }
        }
        assert!(evicted.len() <= kept.len());
    }
}

#[test]
fn full_table_fails_open_and_bounds_memory() {
    let l = KeyedLimiter::new(params(1.0, 2, false), 10);
    for i in 0..100u32 {
        // Every new key gets a fresh key's decision, stored or not.
        assert_eq!(
            l.check(&i.to_le_bytes(), 0),
            Decision::Allow {
                remaining: 2,
                reset: Duration::from_secs(1),
            }
        );
        assert!(l.len() <= 10);
    }
    assert_eq!(l.len(), 10);
    assert_eq!(l.overflowed(), 90);
    // Stored keys are still limited.
    let stored: Vec<u32> = (0..100u32)
        .filter(|i| {
            let h = l.hasher.hash_one(i.to_le_bytes());
            l.shard(h).read().tats.contains_key(&h)
        })
        .collect();
    assert_eq!(stored.len(), 10);
    let k = stored[0].to_le_bytes();
    assert!(matches!(l.check(&k, 0), Decision::Delay { .. }));
    assert!(matches!(l.check(&k, 0), Decision::Delay { .. }));
    assert!(matches!(l.check(&k, 0), Decision::Reject { .. }));
    // Once idle keys are evicted, new keys are tracked again.
    assert_eq!(l.evict_idle(5 * SEC), 10);
    let _ = l.check(b"new", 5 * SEC);
    assert_eq!(l.len(), 1);
    assert_eq!(l.overflowed(), 90);
}

#[test]
fn full_table_sweeps_idle_keys_of_the_inserting_shard() {
    let l = KeyedLimiter::new(params(1.0, 0, true), 1);
    let _ = l.check(b"a", 0);
    let shard_of = |k: &[u8]| (l.hasher.hash_one(k) >> 32) as usize & (SHARDS - 1);
    let target = shard_of(b"a");
    let same: Vec<u8> = (0u32..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| shard_of(k) == target)
        .unwrap_or_default();
    // Table full, "a" still busy at 0.5 s: not stored, fails open.
    assert!(matches!(l.check(&same, SEC / 2), Decision::Allow { .. }));
    assert_eq!(l.overflowed(), 1);
    // At 2 s "a" is idle: the insert sweeps it out and stores the new key.
    assert!(matches!(l.check(&same, 2 * SEC), Decision::Allow { .. }));
    assert_eq!(l.overflowed(), 1);
    assert_eq!(l.len(), 1);
    assert!(matches!(l.check(&same, 2 * SEC), Decision::Reject { .. }));
}

#[test]
fn zero_max_keys_tracks_nothing() {
    let l = KeyedLimiter::new(params(1.0, 0, true), 0);
    for _ in 0..5 {
        assert!(matches!(l.check(b"k", 0), Decision::Allow { .. }));
    }
    assert_eq!(l.len(), 0);
    assert_eq!(l.overflowed(), 5);
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let rates = [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        1e-300,
        1e-9,
        1e9,
        1e12,
        f64::MAX,
    ];
    let nows = [0, 1, SEC, u64::MAX / 2, u64::MAX - 1, u64::MAX, 3, 0];
    for &rate in &rates {
        for burst in [0, 1, u32::MAX] {
            for nodelay in [true, false] {
                let l = KeyedLimiter::new(params(rate, burst, nodelay), 4);
                assert!((1..=MAX_SPAN_NS).contains(&l.interval));
                assert!(l.tolerance <= MAX_SPAN_NS);
                for &now in &nows {
                    for key in [&b""[..], b"a", b"b", &[0xff; 300][..]] {
                        let _ = l.check(key, now);
                    }
                    let _ = l.evict_idle(now);
                }
            }
        }
    }
    // A huge rate is clamped to one request per ns; a nonsense rate fails closed after burst.
    let fast = KeyedLimiter::new(params(1e12, 0, true), 4);
    assert!(matches!(fast.check(b"k", 10), Decision::Allow { .. }));
    assert!(matches!(fast.check(b"k", 10), Decision::Reject { .. }));
    assert!(matches!(fast.check(b"k", 11), Decision::Allow { .. }));
    let nan = KeyedLimiter::new(params(f64::NAN, 1, true), 4);
    assert!(matches!(nan.check(b"k", 0), Decision::Allow { .. }));
    assert!(matches!(nan.check(b"k", 0), Decision::Allow { .. }));
    assert!(matches!(nan.check(b"k", SEC), Decision::Reject { .. }));
}

#[test]
fn limiter_is_send_sync_and_clock_is_monotonic() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KeyedLimiter>();
    let a = monotonic_nanos();
    let b = monotonic_nanos();
    assert!(b >= a);
}

#[test]
fn shard_lock_word_and_clock_share_one_cache_line() {
    // Relied on by the module docs: `max_seen` costs no extra cache-line transfer.
    assert!(std::mem::size_of::<Shard>() <= 128);
    assert!(std::mem::size_of::<RwLock<ShardMap>>() + std::mem::size_of::<AtomicU64>() <= 64);
}

#[test]
fn charged_budget_holds_back_until_paid() {
    // 60 tokens per minute = 1 token/s, a minute's worth of burst.
    let l = KeyedLimiter::new(
        LimitParams {
            rate_per_second: 1.0,
            burst: 60,
            nodelay: true,
        },
        100,
    );
    let s = 1_000_000_000u64;
    let t0 = 1000 * s;
    assert!(matches!(l.peek(b"team", t0), Decision::Allow { .. }));
    l.charge(b"team", 50, t0);
    assert!(
        matches!(l.peek(b"team", t0), Decision::Allow { .. }),
        "within the budget"
    );
    l.charge(b"team", 30, t0);
    match l.peek(b"team", t0) {
        Decision::Reject { retry_after, .. } => assert_eq!(retry_after.as_secs(), 20),
        other => panic!("80 of 60 tokens spent must be refused, got {other:?}"),
    }
    assert!(
        matches!(l.peek(b"other", t0), Decision::Allow { .. }),
        "keys are separate"
    );
    assert!(
        matches!(l.peek(b"team", t0 + 20 * s), Decision::Allow { .. }),
        "paid off"
    );
}
