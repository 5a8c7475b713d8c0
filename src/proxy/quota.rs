//! Provider quota: what an upstream says of its own limits, and shedding on it. A provider's
//! `Retry-After` paces the next try; its `x-ratelimit-remaining-*` falling under the
//! upstream's `shed_below_remaining_*` floor sheds new requests (429 at once, or a fallback)
//! until the `x-ratelimit-reset-*` time it gave.
//!
//! Every value here comes from an upstream and is untrusted: parsing never panics, and what
//! it yields is capped (a reset of 10^300 seconds is an hour).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::Upstream;
use crate::http::ResponseHead;

/// Longest wait a provider's `Retry-After` may impose on a try.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Longest a provider's reset may shed an upstream.
pub const MAX_SHED: Duration = Duration::from_secs(3600);

/// Shedding when the provider said its quota is low but not when it resets.
const DEFAULT_SHED: Duration = Duration::from_secs(1);

/// An upstream's `Retry-After` in seconds (the HTTP-date form is not honoured: providers send
/// seconds), capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(resp: &ResponseHead) -> Option<Duration> {
    parse_retry_after(resp.header("retry-after")?)
}

/// A `Retry-After` value in (possibly fractional) seconds, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &[u8]) -> Option<Duration> {
    let secs: f64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// OpenAI-style reset durations: "1s", "6m0s", "20ms", "1h2m3.5s", or bare seconds.
/// Saturates at `Duration::MAX` instead of overflowing; None for anything else.
pub fn parse_reset(v: &str) -> Option<Duration> {
    let v = v.trim();
    // A real reset is a handful of bytes; a long one is not worth scanning.
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    let bytes = v.as_bytes();
    let mut total = 0f64;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let n: f64 = v.get(start..i)?.parse().ok()?;
        let unit = match (bytes.get(i), bytes.get(i + 1)) {
            (None, _) => 1.0,
            (Some(b'h'), _) => 3600.0,
            (Some(b'm'), Some(b's')) => {
                i += 1;
                0.001
            }
            (Some(b'm'), _) => 60.0,
            (Some(b's'), _) => 1.0,
            _ => return None,
        };
        i += 1;
        total += n * unit;
    }
    if !total.is_finite() || total < 0.0 {
        return Some(Duration::MAX);
    }
    Some(Duration::try_from_secs_f64(total).unwrap_or(Duration::MAX))
}

/// How long to shed `up` after this response: the provider's reset of whichever quota fell
/// under its floor (the longer of the two), capped at [`MAX_SHED`]; None when neither did.
pub fn shed_after(up: &Upstream, resp: &ResponseHead) -> Option<Duration> {
    let check = |floor: Option<u64>, remaining: &str, reset: &str| -> Option<Duration> {
        let floor = floor?;
        let rem: u64 = std::str::from_utf8(resp.header(remaining)?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if rem >= floor {
            return None;
        }
        let reset = resp
            .header(reset)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(parse_reset)
            .unwrap_or(DEFAULT_SHED);
        Some(reset.min(MAX_SHED))
    };
    let requests = check(
        up.shed_below_remaining_requests,
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    );
    let tokens = check(
        up.shed_below_remaining_tokens,
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    );
    requests.max(tokens)
}

/// When the provider reports its quota nearly spent, sheds new requests to `up` until its
/// reset (shared by all workers, and handed to the next config generation).
pub fn note_response(up: &Upstream, resp: &ResponseHead) {
    if up.shed_below_remaining_requests.is_none() && up.shed_below_remaining_tokens.is_none() {
        return;
    }
    if let Some(d) = shed_after(up, resp) {
        let until = crate::clock::monotonic_nanos()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        up.shed_until.fetch_max(until, Ordering::Relaxed);
        tracing::warn!(upstream = %up.name, shed_for_ms = d.as_millis() as u64, "provider quota nearly spent; shedding new requests until its reset");
    }
}

/// Seconds until `up`'s provider quota resets, while new requests to it are shed.
pub fn shedding(up: &Upstream) -> Option<u64> {
    shed_remaining(
        up.shed_until.load(Ordering::Relaxed),
        crate::clock::monotonic_nanos(),
    )
}

/// Whole seconds (rounded up) from `now` to `until`; None when not in the future.
fn shed_remaining(until: u64, now: u64) -> Option<u64> {
    (until != 0 && now < until).then(|| (until - now).div_ceil(1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_formats() {
        let ms = |v: &str| parse_reset(v).map(|d| d.as_millis() as u64);
        let cases = [
            ("1s", Some(1000)),
            ("6m0s", Some(360_000)),
            ("20ms", Some(20)),
            ("1h2m3.5s", Some(3_723_500)),
            ("2", Some(2000)),
            ("0.5s", Some(500)),
            (" 3s ", Some(3000)),
            ("x", None),
            ("", None),
            ("s", None),
            ("1x", None),
            ("1.2.3s", None),
            ("-1s", None),
            ("ms", None),
        ];
        for (v, want) in cases {
            assert_eq!(ms(v), want, "{v:?}");
        }
    }

    /// Values that once reached `Duration::from_secs_f64` and killed the worker.
    #[test]
    fn hostile_resets_saturate_instead_of_panicking() {
        for v in [
            "99999999999999999999999999999s",
            "18446744073709551616",
            "9999999999999999999h",
            "5124095576030431h",
        ] {
            assert_eq!(parse_reset(v), Some(Duration::MAX), "{v}");
        }
        assert_eq!(parse_reset("1e300s"), None);
        assert_eq!(parse_reset(&"9".repeat(65)), None);
        assert_eq!(parse_reset("inf"), None);
        assert_eq!(parse_reset("NaN"), None);
    }

    #[test]
    fn retry_after_values() {
        let cases: [(&[u8], Option<u64>); 7] = [
            (b"2", Some(2000)),
            (b" 0.25 ", Some(250)),
            (b"1e300", Some(60_000)),
            (b"-1", None),
            (b"inf", None),
            (b"Wed, 21 Oct 2015 07:28:00 GMT", None),
            (b"\xff", None),
        ];
        for (v, want) in cases {
            assert_eq!(
                parse_retry_after(v).map(|d| d.as_millis() as u64),
                want,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn remaining_seconds_round_up() {
        assert_eq!(shed_remaining(0, 5), None);
        assert_eq!(shed_remaining(10, 10), None);
        assert_eq!(shed_remaining(10, 9), Some(1));
        assert_eq!(shed_remaining(3_000_000_001, 1), Some(3));
    }
}
