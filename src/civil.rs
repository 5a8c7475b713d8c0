//! Proleptic Gregorian dates ↔ days since the Unix epoch (Howard Hinnant's algorithms), so
//! certificate expiry, kubelet-style timestamps and HTTP dates need no time-zone database.
//! The one copy: the gateway reads X.509 `notAfter` and stamps `/config` times with it, and
//! the test crate (`ringgate-mock`) formats its `Date` headers and `..data` names with it.

/// Days since 1970-01-01 of the date `y`-`m`-`d` (month 1..=12, day 1..=31); negative
/// before the epoch.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month 1..=12, day 1..=31)` that is `days` days after 1970-01-01;
/// the inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        for (date, days) in [
            ((1970, 1, 1), 0),
            ((2000, 3, 1), 11_017),
            ((2038, 1, 19), 24_855),
            ((2000, 2, 29), 11_016),
            ((1969, 12, 31), -1),
            ((1600, 1, 1), -135_140),
        ] {
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }

    fn month_len(y: i64, m: i64) -> i64 {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn round_trip_across_centuries_and_leap_days() {
        // Every day from 1899-01-01 to 2101-12-31 (1900 and 2100 not leap, 2000 leap): each
        // day number is the calendar successor of the one before, and maps back to itself.
        let first = days_from_civil(1899, 1, 1);
        let last = days_from_civil(2101, 12, 31);
        let mut prev = (1898, 12, 31);
        for n in first..=last {
            let date = civil_from_days(n);
            let (y, m, d) = prev;
            let successor = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m == 12 {
                (y + 1, 1, 1)
            } else {
                (y, m + 1, 1)
            };
            assert_eq!(date, successor, "day {n}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), n);
            prev = date;
        }
        assert_eq!(prev, (2101, 12, 31));
    }
}
