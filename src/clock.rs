//! One process-wide monotonic clock in nanoseconds, for state that several threads compare
//! (rate-limit arrival times, provider-quota shedding) and so cannot hold an `Instant` in an
//! atomic.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic, never 0 after the first).
pub fn monotonic_nanos() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_nanos() as u64).saturating_add(1)
}
