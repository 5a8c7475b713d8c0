//! Endpoint choice and passive health, per worker.
//!
//! Each worker keeps its own view of every upstream's endpoints (in-flight count, peak-EWMA
//! latency, consecutive failures, ejection), so choosing an endpoint touches no memory shared
//! with another core. The price is that each worker learns an endpoint is down on its own:
//! with N workers an endpoint sees up to N × `max_fails` failures before every worker has
//! ejected it — the same trade nginx makes with per-worker `max_fails` without a shared zone.
//!
//! Policies: `round_robin`; `least_request` (fewest in flight on this worker, ties in turn);
//! `p2c_ewma` (two random healthy endpoints, the one with the lower peak-EWMA latency × (in
//! flight + 1) wins, as Finagle and Linkerd do). An endpoint with `max_fails` consecutive
//! failures is ejected for `fail_timeout_ms`, doubled for each ejection in a row (capped at
//! 32×), then tried again; all ejected: the caller answers 503 at once. As in nginx, an
//! upstream with a single endpoint never ejects it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::{Balance, Upstream};

/// Decay time of the latency average: older samples weigh e^(-age/τ).
const EWMA_TAU: Duration = Duration::from_secs(10);

/// One endpoint as this worker sees it.
#[derive(Debug)]
pub struct EndpointState {
    inflight: Cell<u32>,
    ewma_micros: Cell<f64>,
    last_sample: Cell<Option<Instant>>,
    fails: Cell<u32>,
    ejections: Cell<u32>,
    ejected_until: Cell<Option<Instant>>,
}

impl EndpointState {
    fn new() -> Self {
        Self {
            inflight: Cell::new(0),
            ewma_micros: Cell::new(0.0),
            last_sample: Cell::new(None),
            fails: Cell::new(0),
            ejections: Cell::new(0),
            ejected_until: Cell::new(None),
        }
    }

    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until.get().is_none_or(|t| now >= t)
    }

    /// Peak-EWMA cost at `now`: the average decays towards zero while no sample arrives
    /// (as Finagle's does), so an endpoint that was slow once is tried again in time.
    fn cost(&self, now: Instant) -> f64 {
        let age = self
            .last_sample
            .get()
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let decayed = self.ewma_micros.get() * (-age / EWMA_TAU.as_secs_f64()).exp();
        decayed * f64::from(self.inflight.get() + 1)
    }

    /// Requests in flight to this endpoint from this worker.
    pub fn inflight(&self) -> u32 {
        self.inflight.get()
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        !self.healthy(now)
    }
}

/// The endpoints of one upstream as this worker sees them.
#[derive(Debug)]
pub struct UpstreamState {
    endpoints: Vec<EndpointState>,
    cursor: Cell<usize>,
}

impl UpstreamState {
    /// Endpoint states, in the upstream's endpoint order.
    pub fn endpoints(&self) -> &[EndpointState] {
        &self.endpoints
    }

    /// Counts a request to `ep` in flight until the returned slot is dropped: the caller
    /// holds it until the response body is finished, so a long stream weighs on
    /// `least_request` and `p2c_ewma` for as long as it runs.
    pub fn enter(self: &Rc<Self>, ep: usize) -> EndpointSlot {
        if let Some(e) = self.endpoints.get(ep) {
            e.inflight.set(e.inflight.get() + 1);
        }
        EndpointSlot {
            state: self.clone(),
            ep,
        }
    }

    /// Records a success and its latency (time to response head).
    pub fn success(&self, ep: usize, latency: Duration, now: Instant) {
        let Some(e) = self.endpoints.get(ep) else {
            return;
        };
        e.fails.set(0);
        e.ejections.set(0);
        let sample = latency.as_secs_f64() * 1e6;
        let old = e.ewma_micros.get();
        let next = match e.last_sample.get() {
            None => sample,
            // Peak-EWMA: jump to a worse sample at once, decay towards better ones.
            Some(_) if sample > old => sample,
            Some(t) => {
                let w = (-(now.saturating_duration_since(t).as_secs_f64())
                    / EWMA_TAU.as_secs_f64())
                .exp();
                old * w + sample * (1.0 - w)
            }
        };
        e.ewma_micros.set(next);
        e.last_sample.set(Some(now));
    }

    /// Records a failure; ejects the endpoint after `max_fails` in a row. Returns whether
    /// this failure ejected it.
    pub fn failure(&self, ep: usize, up: &Upstream, now: Instant) -> bool {
        let Some(e) = self.endpoints.get(ep) else {
            return false;
        };
        let fails = e.fails.get() + 1;
        e.fails.set(fails);
        // As nginx: a lone endpoint is never ejected; with nowhere else to send traffic,
        // ejecting it would only turn a blip into a `fail_timeout`-long outage.
        if up.max_fails > 0 && fails >= up.max_fails && self.endpoints.len() > 1 {
            let n = e.ejections.get().min(5);
            e.ejections.set(e.ejections.get() + 1);
            e.fails.set(0);
            e.ejected_until
                .set(Some(now + up.fail_timeout * (1u32 << n)));
            return true;
        }
        false
    }
}

/// One request in flight to an endpoint, as the balancer counts it; released on drop.
#[derive(Debug)]
pub struct EndpointSlot {
    state: Rc<UpstreamState>,
    ep: usize,
}

impl EndpointSlot {
    /// The endpoint's index.
    pub fn endpoint(&self) -> usize {
        self.ep
    }

    /// The upstream's state this slot counts in.
    pub fn state(&self) -> &UpstreamState {
        &self.state
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        if let Some(e) = self.state.endpoints.get(self.ep) {
            e.inflight.set(e.inflight.get().saturating_sub(1));
        }
    }
}

/// All upstreams' endpoint states of one worker, keyed by upstream fingerprint so they
/// survive reloads that leave the upstream alone.
#[derive(Default)]
pub struct Balancer {
    states: RefCell<HashMap<u64, Rc<UpstreamState>>>,
    rng: Cell<u64>,
}

impl Balancer {
    /// A balancer whose random choices start from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            states: RefCell::new(HashMap::new()),
            rng: Cell::new(seed | 1),
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: enough for picking endpoints; no shared RNG state.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random duration in `[0, max)`, for backoff jitter.
    pub fn jitter(&self, max: Duration) -> Duration {
        let nanos = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next_random() % nanos)
    }

    /// This worker's state for `up`.
    pub fn state(&self, up: &Upstream) -> Rc<UpstreamState> {
        let mut states = self.states.borrow_mut();
        states
            .entry(up.fingerprint)
            .or_insert_with(|| {
                Rc::new(UpstreamState {
                    endpoints: up.endpoints.iter().map(|_| EndpointState::new()).collect(),
                    cursor: Cell::new(self.rng.get() as usize),
                })
            })
            .clone()
    }

    /// Drops the states of upstreams no longer configured.
    pub fn retain(&self, live: &std::collections::HashSet<u64>) {
        self.states.borrow_mut().retain(|fp, _| live.contains(fp));
    }

    /// Picks an endpoint, avoiding `tried` when another healthy one exists. None when every
    /// endpoint is ejected.
    pub fn pick(
        &self,
        up: &Upstream,
        st: &UpstreamState,
        tried: &[usize],
        now: Instant,
    ) -> Option<usize> {
        let n = st.endpoints.len();
        if n == 0 {
            return None;
        }
        let healthy = |i: usize| st.endpoints[i].healthy(now);
        let fresh = |i: usize| healthy(i) && !tried.contains(&i);
        let any_fresh = (0..n).any(fresh);
        let ok = |i: usize| if any_fresh { fresh(i) } else { healthy(i) };
        if !(0..n).any(ok) {
            return None;
        }
        let ok = &ok;
        // Round robin and least request start one further along on every pick, so ties
        // rotate.
        let in_turn = || {
            let start = st.cursor.get();
            st.cursor.set(start.wrapping_add(1));
            (0..n).map(move |k| (start + k) % n).filter(move |&i| ok(i))
        };
        match up.balance {
            Balance::RoundRobin => in_turn().next(),
            Balance::LeastRequest => in_turn().min_by_key(|&i| st.endpoints[i].inflight.get()),
            Balance::P2cEwma => {
                // Two distinct candidates drawn uniformly by rank among the eligible ones,
                // found by walking the endpoint list: O(n) in a handful of endpoints and no
                // allocation, since this runs for every request.
                let eligible = (0..n).filter(move |&i| ok(i));
                let m = eligible.clone().count();
                if m < 2 {
                    return eligible.clone().next();
                }
                let ra = (self.next_random() % m as u64) as usize;
                let mut rb = (self.next_random() % (m as u64 - 1)) as usize;
                if rb >= ra {
                    rb += 1;
                }
                let a = eligible.clone().nth(ra)?;
                let b = eligible.clone().nth(rb)?;
                let (ca, cb) = (st.endpoints[a].cost(now), st.endpoints[b].cost(now));
                Some(if cb < ca { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The balancer with synthetic instants: no sockets, no sleeps.

    use std::sync::Arc;

    use super::*;

    /// The upstreams `one` (a lone endpoint) and `three` (three endpoints, `balance` as
    /// given), `max_fails = 2`, `fail_timeout_ms = 100`.
    fn upstreams(balance: &str) -> (Arc<Upstream>, Arc<Upstream>) {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.one]\nurl = \"http://127.0.0.1:1\"\nmax_fails = 2\nfail_timeout_ms = 100\n\
             [upstreams.three]\nurl = \"http://127.0.0.1:1\"\n\
             endpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\nbalance = \"{balance}\"\n\
             max_fails = 2\nfail_timeout_ms = 100\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"three\"\n"
        );
        let cfg = crate::config::load_bytes(toml.as_bytes(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let find = |n: &str| {
            cfg.upstreams
                .iter()
                .find(|u| u.name == n)
                .cloned()
                .unwrap_or_else(|| panic!("upstream {n}"))
        };
        (find("one"), find("three"))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ejected_after_max_fails_in_a_row_and_back_after_fail_timeout() {
        let (_, up) = upstreams("round_robin");
        let b = Balancer::new(7);
        let st = b.state(&up);
        let t0 = Instant::now();
        assert!(!st.failure(0, &up, t0), "one failure is not max_fails");
        // A success in between resets the count.
        st.success(0, 10 * MS, t0);
        assert!(!st.failure(0, &up, t0));
        assert!(st.failure(0, &up, t0), "the second failure in a row ejects");
        assert!(st.endpoints()[0].is_ejected(t0));
        assert!(st.endpoints()[0].is_ejected(t0 + 99 * MS));
        assert!(!st.endpoints()[0].is_ejected(t0 + 100 * MS));
        // While ejected it is never picked; the others still are.
        for _ in 0..30 {
            let p = b
                .pick(&up, &st, &[], t0 + 50 * MS)
                .expect("a healthy endpoint");
            assert_ne!(p, 0);
        }
        let after: Vec<usize> = (0..30)
            .filter_map(|_| b.pick(&up, &st, &[], t0 + 100 * MS))
            .collect();
        assert!(after.contains(&0), "tried again once fail_timeout ended");
    }

    #[test]
    fn ejection_doubles_in_a_row_up_to_32_times_and_a_success_resets_it() {
        let (_, up) = upstreams("round_robin");
        let st = Balancer::new(1).state(&up);
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..8 {
            assert!(!st.failure(1, &up, now));
            assert!(st.failure(1, &up, now));
            let until = st.endpoints()[1].ejected_until.get().expect("ejected");
            lengths.push((until - now).as_millis());
            now = until;
        }
        assert_eq!(lengths, [100, 200, 400, 800, 1600, 3200, 3200, 3200]);
        st.success(1, 5 * MS, now);
        assert!(!st.failure(1, &up, now));
        assert!(st.failure(1, &up, now));
        let until = st.endpoints()[1].ejected_until.get().expect("ejected");
        assert_eq!(
            (until - now).as_millis(),
            100,
            "a success starts the doubling over"
        );
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected() {
        let (one, _) = upstreams("round_robin");
        let b = Balancer::new(3);
        let st = b.state(&one);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(!st.failure(0, &one, t0));
        }
        assert!(!st.endpoints()[0].is_ejected(t0));
        assert_eq!(b.pick(&one, &st, &[], t0), Some(0));
    }

    #[test]
    fn every_endpoint_ejected_picks_none() {
        let (_, up) = upstreams("least_request");
        let b = Balancer::new(3);
        let st = b.state(&up);
        let t0 = Instant::now();
        for ep in 0..3 {
            st.failure(ep, &up, t0);
            assert!(st.failure(ep, &up, t0));
        }
        assert_eq!(b.pick(&up, &st, &[], t0), None);
        assert!(b.pick(&up, &st, &[], t0 + 100 * MS).is_some());
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let (_, up) = upstreams("round_robin");
        let b = Balancer::new(9);
        let st = b.state(&up);
        let now = Instant::now();
        let picks: Vec<usize> = (0..9).filter_map(|_| b.pick(&up, &st, &[], now)).collect();
        for w in picks.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 3, "{picks:?}");
        }
    }

    #[test]
    fn least_request_follows_the_in_flight_slots() {
        let (_, up) = upstreams("least_request");
        let b = Balancer::new(5);
        let st = b.state(&up);
        let now = Instant::now();
        // Endpoint 0 holds two requests, endpoint 1 one: endpoint 2 wins every pick.
        let held = [st.enter(0), st.enter(0), st.enter(1)];
        for _ in 0..10 {
            assert_eq!(b.pick(&up, &st, &[], now), Some(2));
        }
        let more = st.enter(2);
        let more2 = st.enter(2);
        // Now 2/1/2: endpoint 1.
        for _ in 0..10 {
            assert_eq!(b.pick(&up, &st, &[], now), Some(1));
        }
        // Slots released on drop: the counts follow.
        drop(held);
        assert_eq!(
            st.endpoints()
                .iter()
                .map(EndpointState::inflight)
                .collect::<Vec<_>>(),
            [0, 0, 2]
        );
        let picks: Vec<usize> = (0..10).filter_map(|_| b.pick(&up, &st, &[], now)).collect();
        assert!(!picks.contains(&2), "{picks:?}");
        assert!(
            picks.contains(&0) && picks.contains(&1),
            "ties taken in turn: {picks:?}"
        );
        drop((more, more2));
    }

    #[test]
    fn tried_endpoints_are_avoided_while_another_is_healthy() {
        for balance in ["round_robin", "least_request", "p2c_ewma"] {
            let (_, up) = upstreams(balance);
            let b = Balancer::new(11);
            let st = b.state(&up);
            let now = Instant::now();
            for _ in 0..20 {
                assert_eq!(b.pick(&up, &st, &[0, 2], now), Some(1), "{balance}");
            }
            // Every endpoint tried: any healthy one again, not none.
            assert!(b.pick(&up, &st, &[0, 1, 2], now).is_some(), "{balance}");
            // The fresh one ejected: a tried healthy one rather than none.
            st.failure(1, &up, now);
            st.failure(1, &up, now);
            let p = b.pick(&up, &st, &[0, 2], now);
            assert!(matches!(p, Some(0) | Some(2)), "{balance}: {p:?}");
        }
    }

    #[test]
    fn p2c_ewma_compares_two_distinct_endpoints_and_skips_the_ejected() {
        let (_, up) = upstreams("p2c_ewma");
        let b = Balancer::new(17);
        let st = b.state(&up);
        let t0 = Instant::now();
        st.success(0, 2 * MS, t0);
        st.success(1, 20 * MS, t0);
        st.success(2, 200 * MS, t0);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[b.pick(&up, &st, &[], t0).expect("healthy")] += 1;
        }
        // The slowest loses every pair, so it is never picked if the two draws are always
        // distinct; the fastest wins the two pairs (of three) it is in.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > 0, "{counts:?}");
        // The fastest ejected: the other two are always the pair, the faster of them wins.
        st.failure(0, &up, t0);
        assert!(st.failure(0, &up, t0));
        for _ in 0..50 {
            assert_eq!(b.pick(&up, &st, &[], t0), Some(1));
        }
        // One eligible left: it, without a draw.
        st.failure(1, &up, t0);
        assert!(st.failure(1, &up, t0));
        for _ in 0..10 {
            assert_eq!(b.pick(&up, &st, &[], t0), Some(2));
        }
    }

    #[test]
    fn p2c_ewma_prefers_the_fast_endpoint_and_forgets_a_slow_sample_in_time() {
        let (_, up) = upstreams("p2c_ewma");
        let b = Balancer::new(13);
        let st = b.state(&up);
        let t0 = Instant::now();
        st.success(0, 200 * MS, t0);
        st.success(1, 2 * MS, t0);
        st.success(2, 200 * MS, t0);
        let picks: Vec<usize> = (0..200).filter_map(|_| b.pick(&up, &st, &[], t0)).collect();
        let fast = picks.iter().filter(|&&p| p == 1).count();
        // p2c: the fast endpoint wins every pair it is in (2 of 3 pairs).
        assert!(fast > 100, "fast picked {fast} of 200");
        // Peak: a worse sample counts at once.
        st.success(1, 400 * MS, t0);
        assert!(st.endpoints()[1].cost(t0) > st.endpoints()[0].cost(t0));
        // Decay: with no new sample the cost falls towards zero (τ = 10 s).
        let c0 = st.endpoints()[1].cost(t0);
        let c10 = st.endpoints()[1].cost(t0 + Duration::from_secs(10));
        assert!((c10 / c0 - (-1.0f64).exp()).abs() < 1e-6, "{c0} -> {c10}");
        // A better sample is averaged in, not jumped to.
        st.success(1, 2 * MS, t0 + Duration::from_secs(1));
        let e = st.endpoints()[1].ewma_micros.get();
        assert!(e > 2_000.0 && e < 400_000.0, "{e}");
        // In-flight requests weigh on the cost.
        let before = st.endpoints()[0].cost(t0);
        let _slot = st.enter(0);
        assert!((st.endpoints()[0].cost(t0) - 2.0 * before).abs() < 1e-6);
    }
}
