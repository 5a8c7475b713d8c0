//! "The request path allocates only the first time it meets a name": checked with a
//! counting global allocator, which is why this is a test binary of its own (the allocator
//! is process-wide; the count is per thread, so the harness's other threads never add to it).

use std::sync::Arc;
use std::time::Duration;

use ringgate::metrics::{LocalStats, Observation, WorkerMetrics};

mod counting_alloc;
use counting_alloc::allocations;

fn obs(route: &str, status: u16, micros: u64) -> Observation<'_> {
    Observation {
        route: Some(route),
        upstream: Some("mock"),
        method: "POST",
        status,
        bytes_in: 10,
        bytes_out: 100,
        total: Duration::from_micros(micros),
        connect: Some(Duration::from_micros(micros / 4)),
        header: Some(Duration::from_micros(micros / 2)),
        response: Some(Duration::from_micros(micros.saturating_sub(1))),
        ttfb: Some(Duration::from_micros(micros / 3)),
        model: None,
        client: None,
        cache: None,
        truncated: (status == 499).then_some("client_closed"),
    }
}

const ROUTES: [&str; 4] = ["chat", "embeddings", "models", "fallback"];
/// Past the histograms' tracked range: their first record grows them to full size.
const HUGE_MICROS: u64 = 2 * 3_600_000_000;

#[test]
fn recording_a_known_route_allocates_nothing() {
    let l = LocalStats::new(Arc::new(WorkerMetrics::default()));
    // A route's first request: names interned, histograms created at full size.
    for r in ROUTES {
        for status in [200, 499] {
            l.observe(&obs(r, status, HUGE_MICROS));
        }
        l.note_retry(r, "error");
        l.note_model_request("gpt-4o", Some("team-a"));
        l.note_fallback("gpt-4o");
    }
    // Publishing zeroes the delta and keeps its keys and histograms.
    l.publish();

    let before = allocations();
    for i in 0..20_000u64 {
        let r = ROUTES[(i % 4) as usize];
        let status = [200, 404, 499, 502][(i % 7 % 4) as usize];
        l.observe(&obs(r, status, 1 + (i * 7919) % 5_000_000));
        l.note_retry(r, "error");
        l.note_model_request("gpt-4o", Some("team-a"));
        l.note_fallback("gpt-4o");
    }
    assert_eq!(
        allocations() - before,
        0,
        "recording known routes, models and clients allocated"
    );

    // The counter sees this thread's allocations: a new name is interned.
    let before = allocations();
    l.observe(&obs("a-new-route", 200, 10));
    assert!(allocations() > before, "the allocation counter is live");
}
