//! The retry and fallback decision: after each attempt, whether to deliver what it produced,
//! try again (same model, another endpoint), fall back to the next model, or reconnect once
//! on a fresh connection. A pure function of the attempt and the request's retry state —
//! no I/O, no clock read, no randomness of its own — so every rule is tested by a table.
//!
//! The rules, as nginx's `proxy_next_upstream` and Pingora's `RetryType`:
//! - a try is repeated only for a condition in the route's `retry_on`, within `tries`
//!   (plus one per fallback model) and while the wait ends inside `retry_budget_ms`;
//! - never after the response head was accepted (the client may have bytes of it), never
//!   for a failure on the client's side, never when the request body was streamed rather
//!   than kept (it cannot be sent twice);
//! - a pooled connection that failed before any response byte was probably closed while
//!   idle: one free reconnect, not counted as a try;
//! - each retry moves to the next fallback model while there is one, at once; on the last
//!   candidate it waits the upstream's `Retry-After` or a jittered exponential backoff.

use std::time::{Duration, Instant};

use super::failure::{Failure, Phase};
use crate::config::RetryOn;

/// What one attempt produced, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// The upstream sent a response head with this status.
    Answered {
        /// Its status.
        status: u16,
        /// Its `Retry-After`, already capped.
        retry_after: Option<Duration>,
    },
    /// The attempt failed.
    Failed(&'a Failure),
    /// The candidate could not be tried at all: every endpoint ejected, or its provider
    /// shed. Not counted as a try.
    Unavailable,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deliver what the attempt produced: its response, or its error.
    Done,
    /// Try the same candidate again at once on a new connection (not counted as a try).
    Reconnect,
    /// Try again after `wait`, on the same candidate.
    Retry {
        /// Backoff or the upstream's `Retry-After`.
        wait: Duration,
        /// The `retry_on` condition that allowed it.
        reason: RetryOn,
    },
    /// Move on to the next candidate (fallback model) at once.
    Fallback {
        /// The condition that caused it; None when the candidate was unavailable.
        reason: Option<RetryOn>,
    },
}

/// One request's retry state: tries used, candidates left, whether the body can be sent
/// again, and the budget's deadline.
#[derive(Debug, Clone)]
pub struct RetryState<'a> {
    retry_on: &'a [RetryOn],
    max_tries: usize,
    tries_done: usize,
    tries_on_candidate: usize,
    fallbacks_left: usize,
    replayable: bool,
    reconnect_left: bool,
    deadline: Instant,
}

impl<'a> RetryState<'a> {
    /// State for a request with `candidates` places to go (≥ 1), whose body can be sent
    /// again when `replayable`, started at `started`.
    pub fn new(
        retry_on: &'a [RetryOn],
        tries: u32,
        budget: Duration,
        candidates: usize,
        replayable: bool,
        started: Instant,
    ) -> Self {
        let fallbacks = candidates.saturating_sub(1);
        Self {
            retry_on,
            // Retries on one model as `tries` says, plus one try for each fallback.
            max_tries: (tries.max(1) as usize).saturating_add(fallbacks),
            tries_done: 0,
            tries_on_candidate: 0,
            fallbacks_left: fallbacks,
            replayable,
            reconnect_left: true,
            deadline: started + budget,
        }
    }

    /// Whether the next attempt must use a new connection (after a reconnect, or on another
    /// try of the same endpoint set).
    pub fn fresh_connection(&self) -> bool {
        !self.reconnect_left || self.tries_on_candidate > 0
    }

    /// Tries made so far (reconnects not counted).
    pub fn tries_done(&self) -> usize {
        self.tries_done
    }

    /// Decides what follows `attempt`, at `now`. `jitter(max)` returns a random duration in
    /// `[0, max)` for the backoff.
    pub fn next(
        &mut self,
        attempt: Attempt<'_>,
        now: Instant,
        jitter: &mut dyn FnMut(Duration) -> Duration,
    ) -> Next {
        let (cond, upstream_wait) = match attempt {
            Attempt::Unavailable => {
                return if self.take_fallback() {
                    Next::Fallback { reason: None }
                } else {
                    Next::Done
                };
            }
            Attempt::Answered {
                status,
                retry_after,
            } => {
                self.count_try();
                let cond = match status {
                    502 => RetryOn::Http502,
                    503 => RetryOn::Http503,
                    504 => RetryOn::Http504,
                    429 => RetryOn::Http429,
                    _ => return Next::Done,
                };
                (cond, retry_after)
            }
            Attempt::Failed(f) => {
                let fault = match f.phase {
                    Phase::Upstream(fault) => fault,
                    // The client's side, or after the response head: nothing to retry.
                    Phase::Request | Phase::Response => return Next::Done,
                };
                if fault.stale_pooled && self.reconnect_left && self.replayable {
                    self.reconnect_left = false;
                    return Next::Reconnect;
                }
                self.count_try();
                if fault.body_spent {
                    return Next::Done;
                }
                (f.retry_condition(), None)
            }
        };
        if !self.retry_on.contains(&cond) || !self.replayable || self.tries_done >= self.max_tries {
            return Next::Done;
        }
        // A fallback is another provider: this one's wait is not its wait.
        let wait = if self.fallbacks_left > 0 {
            Duration::ZERO
        } else {
            upstream_wait.unwrap_or_else(|| backoff(self.tries_on_candidate, jitter))
        };
        // Past the budget the client gets this answer (or error) rather than a wait.
        if now + wait >= self.deadline {
            return Next::Done;
        }
        if self.take_fallback() {
            return Next::Fallback { reason: Some(cond) };
        }
        Next::Retry { wait, reason: cond }
    }

    fn count_try(&mut self) {
        self.tries_done += 1;
        self.tries_on_candidate += 1;
    }

    fn take_fallback(&mut self) -> bool {
        if self.fallbacks_left == 0 {
            return false;
        }
        self.fallbacks_left -= 1;
        self.tries_on_candidate = 0;
        true
    }
}

/// Jittered exponential backoff after `n` tries: 25 ms, 50 ms, 100 ms ... up to 1.6 s, each
/// ±50 %.
pub fn backoff(n: usize, jitter: &mut dyn FnMut(Duration) -> Duration) -> Duration {
    let base = Duration::from_millis(25) * (1u32 << n.saturating_sub(1).min(6));
    base / 2 + jitter(base)
}

/// The metric label of a retry condition.
pub fn reason_label(c: RetryOn) -> &'static str {
    match c {
        RetryOn::Error => "error",
        RetryOn::Timeout => "timeout",
        RetryOn::Http502 => "http_502",
        RetryOn::Http503 => "http_503",
        RetryOn::Http504 => "http_504",
        RetryOn::Http429 => "http_429",
    }
}

#[cfg(test)]
mod tests {
    use super::super::failure::UpstreamFault;
    use super::*;
    use crate::error::ProxyError;

    const ALL: &[RetryOn] = &[
        RetryOn::Error,
        RetryOn::Timeout,
        RetryOn::Http502,
        RetryOn::Http503,
        RetryOn::Http504,
        RetryOn::Http429,
    ];
    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Half the backoff's range: the wait is then exactly its base.
    fn half(max: Duration) -> Duration {
        max / 2
    }

    fn answered(status: u16) -> Attempt<'static> {
        Attempt::Answered {
            status,
            retry_after: None,
        }
    }

    fn failure(e: ProxyError, stale_pooled: bool, body_spent: bool) -> Failure {
        Failure::upstream_with(
            e,
            UpstreamFault {
                stale_pooled,
                body_spent,
            },
        )
    }

    /// One attempt against a fresh state: (what, retry_on, tries, candidates, replayable,
    /// the attempt, what must follow).
    type Case<'a> = (&'a str, &'a [RetryOn], u32, usize, bool, Attempt<'a>, Next);

    #[test]
    fn first_attempt_table() {
        let refused = failure(
            ProxyError::Connect(std::io::ErrorKind::ConnectionRefused.into()),
            false,
            false,
        );
        let timed_out = failure(ProxyError::UpstreamTimeout, false, false);
        let connect_timeout = failure(ProxyError::ConnectTimeout, false, false);
        let stale = failure(ProxyError::UpstreamClosed, true, false);
        let spent = failure(ProxyError::UpstreamClosed, false, true);
        let client = Failure::request(ProxyError::ClientTimeout);
        let midway = Failure::response(ProxyError::UpstreamClosed);
        let retry = |reason, wait| Next::Retry { wait, reason };
        let cases: Vec<Case<'_>> = vec![
            (
                "200 is delivered",
                ALL,
                3,
                1,
                true,
                answered(200),
                Next::Done,
            ),
            (
                "500 is never retried",
                ALL,
                3,
                1,
                true,
                answered(500),
                Next::Done,
            ),
            (
                "502 retried",
                ALL,
                3,
                1,
                true,
                answered(502),
                retry(RetryOn::Http502, MS(25)),
            ),
            (
                "503 retried",
                ALL,
                3,
                1,
                true,
                answered(503),
                retry(RetryOn::Http503, MS(25)),
            ),
            (
                "504 retried",
                ALL,
                3,
                1,
                true,
                answered(504),
                retry(RetryOn::Http504, MS(25)),
            ),
            (
                "429 retried",
                ALL,
                3,
                1,
                true,
                answered(429),
                retry(RetryOn::Http429, MS(25)),
            ),
            (
                "502 not in retry_on",
                &[RetryOn::Error],
                3,
                1,
                true,
                answered(502),
                Next::Done,
            ),
            (
                "429 not in retry_on",
                &[RetryOn::Http502],
                3,
                1,
                true,
                answered(429),
                Next::Done,
            ),
            (
                "error retried",
                ALL,
                3,
                1,
                true,
                Attempt::Failed(&refused),
                retry(RetryOn::Error, MS(25)),
            ),
            (
                "error not in retry_on",
                &[RetryOn::Timeout],
                3,
                1,
                true,
                Attempt::Failed(&refused),
                Next::Done,
            ),
            (
                "timeout retried",
                ALL,
                3,
                1,
                true,
                Attempt::Failed(&timed_out),
                retry(RetryOn::Timeout, MS(25)),
            ),
            (
                "connect timeout is a timeout",
                &[RetryOn::Timeout],
                3,
                1,
                true,
                Attempt::Failed(&connect_timeout),
                retry(RetryOn::Timeout, MS(25)),
            ),
            (
                "timeout not in retry_on",
                &[RetryOn::Error],
                3,
                1,
                true,
                Attempt::Failed(&timed_out),
                Next::Done,
            ),
            ("one try only", ALL, 1, 1, true, answered(502), Next::Done),
            (
                "body not kept: no retry",
                ALL,
                3,
                1,
                false,
                answered(502),
                Next::Done,
            ),
            (
                "body not kept: no retry on error",
                ALL,
                3,
                1,
                false,
                Attempt::Failed(&refused),
                Next::Done,
            ),
            (
                "body spent: no retry",
                ALL,
                3,
                1,
                true,
                Attempt::Failed(&spent),
                Next::Done,
            ),
            (
                "stale pooled: reconnect",
                ALL,
                3,
                1,
                true,
                Attempt::Failed(&stale),
                Next::Reconnect,
            ),
            (
                "stale pooled: reconnect even with retry_on empty",
                &[],
                1,
                1,
                true,
                Attempt::Failed(&stale),
                Next::Reconnect,
            ),
            (
                "stale pooled, body not kept: no reconnect",
                ALL,
                3,
                1,
                false,
                Attempt::Failed(&stale),
                Next::Done,
            ),
            (
                "client side: never",
                ALL,
                3,
                2,
                true,
                Attempt::Failed(&client),
                Next::Done,
            ),
            (
                "after the first response byte: never",
                ALL,
                3,
                2,
                true,
                Attempt::Failed(&midway),
                Next::Done,
            ),
            (
                "502 with a fallback: at once",
                ALL,
                1,
                2,
                true,
                answered(502),
                Next::Fallback {
                    reason: Some(RetryOn::Http502),
                },
            ),
            (
                "error with a fallback: at once",
                ALL,
                1,
                3,
                true,
                Attempt::Failed(&refused),
                Next::Fallback {
                    reason: Some(RetryOn::Error),
                },
            ),
            (
                "fallback needs a retry_on match",
                &[RetryOn::Timeout],
                1,
                2,
                true,
                answered(503),
                Next::Done,
            ),
            (
                "unavailable with a fallback",
                &[],
                1,
                2,
                true,
                Attempt::Unavailable,
                Next::Fallback { reason: None },
            ),
            (
                "unavailable, nowhere else",
                ALL,
                3,
                1,
                true,
                Attempt::Unavailable,
                Next::Done,
            ),
        ];
        for (what, retry_on, tries, candidates, replayable, attempt, want) in cases {
            let t0 = Instant::now();
            let mut st = RetryState::new(
                retry_on,
                tries,
                Duration::from_secs(30),
                candidates,
                replayable,
                t0,
            );
            assert_eq!(st.next(attempt, t0, &mut half), want, "{what}");
        }
    }

    #[test]
    fn retry_after_is_honoured_within_the_budget_only() {
        let t0 = Instant::now();
        let ra = |s| Attempt::Answered {
            status: 429,
            retry_after: Some(Duration::from_secs(s)),
        };
        let mut st = RetryState::new(ALL, 3, Duration::from_secs(10), 1, true, t0);
        assert_eq!(
            st.next(ra(2), t0, &mut half),
            Next::Retry {
                wait: Duration::from_secs(2),
                reason: RetryOn::Http429
            }
        );
        // A wait that would end past the budget: the client gets the 429 now.
        assert_eq!(st.next(ra(20), t0, &mut half), Next::Done);
        // Late in the budget even a short backoff does not fit.
        let mut st = RetryState::new(ALL, 3, MS(100), 1, true, t0);
        assert_eq!(st.next(answered(502), t0 + MS(90), &mut half), Next::Done);
        // Retry-After of a provider with a fallback is not waited for.
        let mut st = RetryState::new(ALL, 1, Duration::from_secs(10), 2, true, t0);
        assert_eq!(
            st.next(ra(20), t0, &mut half),
            Next::Fallback {
                reason: Some(RetryOn::Http429)
            }
        );
        // Nor does a fallback start once the budget is spent.
        let mut st = RetryState::new(ALL, 1, MS(100), 2, true, t0);
        assert_eq!(st.next(answered(502), t0 + MS(100), &mut half), Next::Done);
    }

    #[test]
    fn tries_are_counted_and_backoff_grows() {
        let t0 = Instant::now();
        let mut st = RetryState::new(ALL, 4, Duration::from_secs(30), 1, true, t0);
        let mut waits = Vec::new();
        while let Next::Retry { wait, .. } = st.next(answered(503), t0, &mut half) {
            waits.push(wait);
        }
        assert_eq!(waits, [MS(25), MS(50), MS(100)]);
        assert_eq!(st.tries_done(), 4);
    }

    #[test]
    fn reconnect_is_free_and_once() {
        let t0 = Instant::now();
        let stale = failure(
            ProxyError::UpstreamIo(std::io::ErrorKind::BrokenPipe.into()),
            true,
            false,
        );
        let mut st = RetryState::new(&[], 1, Duration::from_secs(30), 1, true, t0);
        assert!(!st.fresh_connection());
        assert_eq!(
            st.next(Attempt::Failed(&stale), t0, &mut half),
            Next::Reconnect
        );
        assert_eq!(st.tries_done(), 0);
        assert!(st.fresh_connection());
        // The second stale failure is an ordinary error, and `retry_on` is empty.
        assert_eq!(st.next(Attempt::Failed(&stale), t0, &mut half), Next::Done);
        assert_eq!(st.tries_done(), 1);
    }

    /// A model with two fallbacks and tries = 2: each fallback once, then the last
    /// candidate's remaining try after a backoff, then the last answer.
    #[test]
    fn fallback_order_then_retries_on_the_last() {
        let t0 = Instant::now();
        let mut st = RetryState::new(ALL, 2, Duration::from_secs(30), 3, true, t0);
        let seq: Vec<Next> = (0..5)
            .map(|_| st.next(answered(503), t0, &mut half))
            .collect();
        let fb = Next::Fallback {
            reason: Some(RetryOn::Http503),
        };
        assert_eq!(
            seq,
            [
                fb,
                fb,
                Next::Retry {
                    wait: MS(25),
                    reason: RetryOn::Http503
                },
                Next::Done,
                Next::Done
            ]
        );
        assert!(st.fresh_connection());
    }

    #[test]
    fn backoff_is_jittered_around_its_base() {
        assert_eq!(
            backoff(1, &mut |_| Duration::ZERO),
            MS(12) + Duration::from_micros(500)
        );
        assert_eq!(
            backoff(2, &mut |m| m - Duration::from_nanos(1)),
            MS(75) - Duration::from_nanos(1)
        );
        assert_eq!(backoff(50, &mut half), MS(1600));
        assert_eq!(reason_label(RetryOn::Http429), "http_429");
    }
}
