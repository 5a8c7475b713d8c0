//! The `Date` header of responses the gateway writes itself (RFC 9110 §6.6.1: an origin with
//! a clock must send it), in IMF-fixdate form, formatted once per second per thread.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const LEN: usize = 29;

thread_local! {
    static CACHED: Cell<(u64, [u8; LEN])> = const { Cell::new((u64::MAX, [0; LEN])) };
}

/// The current time as an IMF-fixdate (cached for the second, per thread: no lock).
pub fn now() -> [u8; LEN] {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let text = imf_fixdate(secs);
        c.set((secs, text));
        text
    })
}

/// Seconds since the Unix epoch as an IMF-fixdate.
pub fn imf_fixdate(secs: u64) -> [u8; LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil::civil_from_days(days);
    let mut out = [0u8; LEN];
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    out[..3].copy_from_slice(DAYS[((days + 4).rem_euclid(7)) as usize]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(d as u64));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(m as usize).clamp(1, 12) - 1]);
    out[11] = b' ';
    let y = y.clamp(0, 9999) as u64;
    out[12..14].copy_from_slice(&two(y / 100));
    out[14..16].copy_from_slice(&two(y % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(rem / 3600));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(rem / 60 % 60));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(rem % 60));
    out[25..].copy_from_slice(b" GMT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let cases = [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_795_468_800, "Mon, 23 Nov 2026 21:20:00 GMT"),
        ];
        for (secs, want) in cases {
            assert_eq!(std::str::from_utf8(&imf_fixdate(secs)), Ok(want), "{secs}");
        }
        assert_eq!(now().len(), LEN);
        assert!(now().ends_with(b" GMT"));
    }
}
