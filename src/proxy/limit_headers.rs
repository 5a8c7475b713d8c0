//! The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers OpenAI sends on every
//! response, written by the gateway on every response of a route with a limit, from the
//! state the admission saw: the local limiter's, or the cluster store's when the limit is
//! cluster-scoped. Written straight into the response head, without `fmt`.
//!
//! What they mean for a GCRA bucket: `limit` is what the bucket admits at once (`burst + 1`
//! requests; `tokens_per_minute` tokens), `remaining` what it would admit right now, and
//! `reset` the time until it is full again, in OpenAI's (Go's) duration format: `20ms`,
//! `1s`, `1.5s`, `6m0s`, `1h2m3s`.

use std::time::Duration;

use super::headers::push_decimal;

/// One bucket's state after the request was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// What the bucket admits at once.
    pub limit: u64,
    /// What it admits right now.
    pub remaining: u64,
    /// Time until it is full again.
    pub reset: Duration,
}

/// The request and token buckets a response reports (the tightest of each, when a request
/// is counted against several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// The request limit (route or client) with the fewest requests remaining.
    pub requests: Option<BucketState>,
    /// The client's token budget.
    pub tokens: Option<BucketState>,
}

impl RateHeaders {
    /// Notes a request bucket; the one with fewer remaining wins.
    pub fn note_requests(&mut self, s: BucketState) {
        Self::keep_tightest(&mut self.requests, s);
    }

    /// Notes a token bucket; the one with fewer remaining wins.
    pub fn note_tokens(&mut self, s: BucketState) {
        Self::keep_tightest(&mut self.tokens, s);
    }

    fn keep_tightest(slot: &mut Option<BucketState>, s: BucketState) {
        match slot {
            Some(cur) if cur.remaining <= s.remaining => {}
            _ => *slot = Some(s),
        }
    }

    /// Whether there is nothing to report (the route has no limit).
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Whether an upstream header is one of the families written here (the gateway's own
    /// numbers replace the provider's: one value per header, and the client paces itself
    /// against the gateway's limit).
    pub fn replaces(&self, name: &str) -> bool {
        let Some(rest) = name
            .get(..12)
            .filter(|p| p.eq_ignore_ascii_case("x-ratelimit-"))
            .and_then(|_| name.get(12..))
        else {
            return false;
        };
        let family = |suffix: &str| {
            ["limit-", "remaining-", "reset-"].iter().any(|p| {
                rest.len() == p.len() + suffix.len()
                    && rest[..p.len()].eq_ignore_ascii_case(p)
                    && rest[p.len()..].eq_ignore_ascii_case(suffix)
            })
        };
        (self.requests.is_some() && family("requests"))
            || (self.tokens.is_some() && family("tokens"))
    }

    /// Appends the header lines (each ending in CRLF).
    pub fn write(&self, out: &mut Vec<u8>) {
        if let Some(s) = &self.requests {
            write_family(out, b"requests", s);
        }
        if let Some(s) = &self.tokens {
            write_family(out, b"tokens", s);
        }
    }
}

fn write_family(out: &mut Vec<u8>, suffix: &[u8], s: &BucketState) {
    for (name, value) in [("limit-", s.limit), ("remaining-", s.remaining)] {
        out.extend_from_slice(b"x-ratelimit-");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(b": ");
        push_decimal(out, value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-ratelimit-reset-");
    out.extend_from_slice(suffix);
    out.extend_from_slice(b": ");
    push_reset(out, s.reset);
    out.extend_from_slice(b"\r\n");
}

/// Appends `d` as OpenAI writes its resets (Go's `time.Duration` format, to the
/// millisecond, rounded up so a client that waits that long finds the bucket refilled):
/// `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
pub fn push_reset(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_nanos().div_ceil(1_000_000);
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    if ms == 0 {
        out.extend_from_slice(b"0s");
        return;
    }
    if ms < 1000 {
        push_decimal(out, ms);
        out.extend_from_slice(b"ms");
        return;
    }
    let (secs, frac) = (ms / 1000, ms % 1000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        push_decimal(out, h);
        out.push(b'h');
    }
    if h > 0 || m > 0 {
        push_decimal(out, m);
        out.push(b'm');
    }
    push_decimal(out, s);
    if frac > 0 {
        out.push(b'.');
        let digits = [frac / 100, (frac / 10) % 10, frac % 10];
        let used = if frac % 100 == 0 {
            1
        } else if frac % 10 == 0 {
            2
        } else {
            3
        };
        for d in &digits[..used] {
            out.push(b'0' + *d as u8);
        }
    }
    out.push(b's');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_written_as_openai_writes_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1250), "1.25s"),
            (Duration::from_millis(1001), "1.001s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(86_399), "23h59m59s"),
        ];
        for (d, want) in cases {
            let mut out = Vec::new();
            push_reset(&mut out, d);
            assert_eq!(String::from_utf8_lossy(&out), want, "{d:?}");
        }
    }

    #[test]
    fn the_tightest_bucket_is_reported_and_replaces_the_providers() {
        let mut h = RateHeaders::default();
        assert!(h.is_empty());
        assert!(!h.replaces("x-ratelimit-remaining-requests"));
        let s = |limit, remaining, ms| BucketState {
            limit,
            remaining,
            reset: Duration::from_millis(ms),
        };
        h.note_requests(s(11, 7, 200));
        h.note_requests(s(3, 2, 1500));
        h.note_requests(s(50, 9, 10));
        h.note_tokens(s(600, 590, 1000));
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "x-ratelimit-limit-requests: 3\r\nx-ratelimit-remaining-requests: 2\r\n\
             x-ratelimit-reset-requests: 1.5s\r\nx-ratelimit-limit-tokens: 600\r\n\
             x-ratelimit-remaining-tokens: 590\r\nx-ratelimit-reset-tokens: 1s\r\n"
        );
        assert!(h.replaces("X-RateLimit-Remaining-Requests"));
        assert!(h.replaces("x-ratelimit-reset-tokens"));
        assert!(!h.replaces("x-ratelimit-reset"));
        assert!(!h.replaces("x-ratelimit-limit-requestsx"));
        let only_requests = RateHeaders {
            requests: Some(s(1, 1, 0)),
            tokens: None,
        };
        assert!(!only_requests.replaces("x-ratelimit-limit-tokens"));
    }
}
