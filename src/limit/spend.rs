//! Spend budgets: what an `[auth]` client may spend in US dollars per UTC day and per UTC
//! month, at the configured prices. A budget admits a request while the client's spend in
//! the current window (reservations of requests still running included) is below it, so a
//! client stops within one request of its limit.
//!
//! Amounts are integer micro-dollars. A window's state is one `AtomicU64` per client and
//! window: the window's id in the top [`ID_BITS`] bits (days or months since the epoch), the
//! micro-dollars in the rest, updated by compare-and-swap — a new window starts at zero with
//! no sweep, and no lock is taken. The cells of a client outlive reloads (handed over by
//! name, see `reload`), like limiters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bits of a cell holding the window id (days since 1970 fit until the year 4840).
const ID_BITS: u32 = 20;
/// Bits holding micro-dollars: up to about 17.5 million dollars a window.
const MICROS_BITS: u32 = 64 - ID_BITS;
/// Largest amount a cell holds; more saturates.
pub const MAX_MICROS: u64 = (1 << MICROS_BITS) - 1;

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// From 00:00 UTC to the next 00:00 UTC.
    Day,
    /// From the 1st, 00:00 UTC, to the next month's.
    Month,
}

impl Window {
    /// Both, in the order of [`ClientSpend`]'s cells.
    pub const ALL: [Window; 2] = [Window::Day, Window::Month];

    /// The metric label and the name in `/budgets`.
    pub fn label(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The index of this window's cell.
    pub fn index(self) -> usize {
        match self {
            Window::Day => 0,
            Window::Month => 1,
        }
    }

    /// The window holding Unix time `unix_ms`: its id (days or months since 1970, masked
    /// to [`ID_BITS`]) and the time until it ends.
    pub fn at(self, unix_ms: u64) -> (u32, Duration) {
        let day = (unix_ms / 86_400_000) as i64;
        let (id, end_day) = match self {
            Window::Day => (day, day + 1),
            Window::Month => {
                let (y, m, _) = crate::civil::civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    (y - 1970) * 12 + (m - 1),
                    crate::civil::days_from_civil(ny, nm, 1),
                )
            }
        };
        let end_ms = u64::try_from(end_day)
            .unwrap_or(0)
            .saturating_mul(86_400_000);
        let mask = (1u64 << ID_BITS) - 1;
        (
            (u64::try_from(id).unwrap_or(0) & mask) as u32,
            Duration::from_millis(end_ms.saturating_sub(unix_ms)),
        )
    }

    /// [`Window::at`] now.
    pub fn now(self) -> (u32, Duration) {
        self.at(unix_ms_now())
    }
}

/// Unix time in milliseconds (0 before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Dollars to micro-dollars, rounded to the nearest (negative, NaN: 0; saturating).
pub fn micros(usd: f64) -> u64 {
    if usd.is_nan() || usd <= 0.0 {
        return 0;
    }
    let m = (usd * 1e6).round();
    if m >= MAX_MICROS as f64 {
        MAX_MICROS
    } else {
        m as u64
    }
}

/// One client's spend in one window.
#[derive(Debug, Default)]
pub struct SpendCell(AtomicU64);

fn pack(id: u32, micros: u64) -> u64 {
    (u64::from(id) << MICROS_BITS) | micros.min(MAX_MICROS)
}

fn unpack(v: u64) -> (u32, u64) {
    ((v >> MICROS_BITS) as u32, v & MAX_MICROS)
}

impl SpendCell {
    /// Micro-dollars spent (and reserved) in window `id`; 0 when the cell still holds an
    /// earlier window.
    pub fn spent(&self, id: u32) -> u64 {
        match unpack(self.0.load(Ordering::Acquire)) {
            (i, m) if i == id => m,
            _ => 0,
        }
    }

    /// Admits a request while the window's spend is below `budget`, reserving `cost`
    /// micro-dollars; returns the spend after the reservation, or None (refused).
    pub fn try_reserve(&self, id: u32, budget: u64, cost: u64) -> Option<u64> {
        let mut after = 0;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let spent = match unpack(v) {
                    (i, m) if i == id => m,
                    _ => 0,
                };
                if spent >= budget {
                    return None;
                }
                after = spent.saturating_add(cost).min(MAX_MICROS);
                Some(pack(id, after))
            })
            .ok()
            .map(|_| after)
    }

    /// Adds `delta` micro-dollars (a refund when negative) to window `id`: the settlement of
    /// a reservation made in it. Dropped when the cell has moved on to a later window (the
    /// reservation stays counted in the window it was made in).
    pub fn add(&self, id: u32, delta: i64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (i, m) = unpack(v);
                let base = match i {
                    i if i == id => m,
                    // The cell is on a later window: this settle's window is over.
                    i if i > id => return None,
                    // An earlier window (or a cell never used): only a debit starts `id`.
                    _ if delta < 0 => return None,
                    _ => 0,
                };
                let next = if delta < 0 {
                    base.saturating_sub(delta.unsigned_abs())
                } else {
                    base.saturating_add(delta as u64)
                };
                Some(pack(id, next))
            });
    }

    /// Records `micros` as the window's spend (what the cluster store reported).
    /// A report about an earlier window than the cell's is ignored.
    pub fn set(&self, id: u32, micros: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (unpack(v).0 <= id).then_some(pack(id, micros))
            });
    }
}

/// A client's spend cells: one per [`Window`] (authoritative for a local budget; for a
/// cluster budget, the last spend the store reported to this pod), and one per window for
/// the per-pod fallback while the store is unavailable.
#[derive(Debug, Default)]
pub struct ClientSpend {
    /// Spend per window, indexed by [`Window::index`].
    pub cells: [SpendCell; 2],
    /// The per-pod fallback of a cluster budget, indexed alike.
    pub fallback: [SpendCell; 2],
}

/// One client's budget in one window, as `/budgets` and the metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    /// The client's name.
    pub client: std::sync::Arc<str>,
    /// The window.
    pub window: Window,
    /// "local" or "cluster".
    pub scope: &'static str,
    /// The budget, US dollars.
    pub budget_usd: f64,
    /// Spent (and reserved by requests still running) in the current window, US dollars:
    /// for a cluster budget, the latest the store reported to this pod.
    pub spent_usd: f64,
    /// When the window ends, Unix milliseconds.
    pub resets_at_ms: u64,
}

/// The budget rows of `clients` (a generation's `[auth]` clients and its spend cells).
pub fn rows(
    clients: &[crate::config::ai::Client],
    cells: &[Option<std::sync::Arc<ClientSpend>>],
) -> Vec<BudgetRow> {
    let now = unix_ms_now();
    let mut out = Vec::new();
    for (c, cell) in clients.iter().zip(cells) {
        let Some(cell) = cell else { continue };
        for w in Window::ALL {
            let Some(budget) = c.budget[w.index()] else {
                continue;
            };
            let (id, resets_in) = w.at(now);
            out.push(BudgetRow {
                client: c.name.clone(),
                window: w,
                scope: match c.scope {
                    crate::config::LimitScope::Local => "local",
                    crate::config::LimitScope::Cluster { .. } => "cluster",
                },
                budget_usd: budget as f64 / 1e6,
                spent_usd: cell.cells[w.index()].spent(id) as f64 / 1e6,
                resets_at_ms: now.saturating_add(resets_in.as_millis() as u64),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_days_and_months() {
        // 2026-12-08T03:20:00Z
        let t = crate::civil::days_from_civil(2026, 12, 8) as u64 * 86_400_000 + 12_000_000;
        let (day, left) = Window::Day.at(t);
        assert_eq!(
            u64::from(day),
            crate::civil::days_from_civil(2026, 12, 8) as u64
        );
        assert_eq!(left, Duration::from_millis(86_400_000 - 12_000_000));
        let (month, left) = Window::Month.at(t);
        assert_eq!(month, (2026 - 1970) * 12 + 11);
        // December has 31 days: 23 days and 20h40m to 2027-01-01.
        assert_eq!(
            left,
            Duration::from_millis(23 * 86_400_000 + 86_400_000 - 12_000_000)
        );
        let next = crate::civil::days_from_civil(2027, 1, 1) as u64 * 86_400_000;
        assert_eq!(Window::Month.at(next).0, month + 1);
        assert_eq!(Window::Month.at(next - 1).0, month);
    }

    #[test]
    fn a_budget_admits_while_below_and_settles_by_difference() {
        let c = SpendCell::default();
        assert_eq!(c.try_reserve(7, 1000, 600), Some(600));
        assert_eq!(c.try_reserve(7, 1000, 600), Some(1200), "below: admitted");
        assert_eq!(c.try_reserve(7, 1000, 1), None, "at or over: refused");
        c.add(7, -700);
        assert_eq!(c.spent(7), 500);
        assert_eq!(c.try_reserve(7, 1000, 10), Some(510));
        // A new window starts at zero; a settle of the old one no longer lands.
        assert_eq!(c.spent(8), 0);
        assert_eq!(c.try_reserve(8, 1000, 5), Some(5));
        c.add(7, 400);
        c.add(7, -400);
        assert_eq!(c.spent(8), 5);
        c.set(7, 99);
        assert_eq!(c.spent(8), 5, "a late report of the old window is ignored");
        c.add(8, -50);
        assert_eq!(c.spent(8), 0, "refunds never go below zero");
        assert_eq!(micros(0.0125), 12_500);
        assert_eq!(micros(-1.0), 0);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(micros(1e30), MAX_MICROS);
    }
}
