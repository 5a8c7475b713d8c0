//! "Picking an endpoint allocates nothing": the pick runs for every request, so it is checked
//! with a counting global allocator, which is why this is a test binary of its own (the
//! allocator is process-wide; the count is per thread, so the harness's other threads never
//! add to it).

use std::path::Path;
use std::time::{Duration, Instant};

use ringgate::upstream::balance::Balancer;

mod counting_alloc;
use counting_alloc::allocations;

/// An upstream of five endpoints balanced by `balance`, two failures eject for 100 ms.
fn upstream(balance: &str) -> std::sync::Arc<ringgate::config::Upstream> {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.five]\nurl = \"http://127.0.0.1:1\"\n\
         endpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\", \"127.0.0.1:5\"]\n\
         balance = \"{balance}\"\nmax_fails = 2\nfail_timeout_ms = 100\n\
         [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"five\"\n"
    );
    let cfg = ringgate::config::load_bytes(toml.as_bytes(), Path::new("."))
        .unwrap_or_else(|e| panic!("test config: {e}"));
    cfg.upstreams
        .iter()
        .find(|u| u.name == "five")
        .cloned()
        .expect("upstream five")
}

#[test]
fn picking_an_endpoint_allocates_nothing() {
    for balance in ["round_robin", "least_request", "p2c_ewma"] {
        let up = upstream(balance);
        let b = Balancer::new(42);
        // The state is made once per upstream per worker; that may allocate, picks may not.
        let st = b.state(&up);
        let t0 = Instant::now();
        for (ep, ms) in [(0, 5), (1, 50), (2, 500), (3, 1), (4, 20)] {
            st.success(ep, Duration::from_millis(ms), t0);
        }
        let held = st.enter(3);
        // Endpoint 1 ejected, so every policy has something to skip.
        st.failure(1, &up, t0);
        assert!(st.failure(1, &up, t0));
        let tried = [0usize, 4];
        let mut picked = [0usize; 5];

        let before = allocations();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            // Fresh picks, then retries that must avoid the tried ones, then every endpoint
            // tried (falls back to any healthy one).
            let p = b.pick(&up, &st, &[], now);
            let q = b.pick(&up, &st, &tried, now);
            let r = b.pick(&up, &st, &[0, 1, 2, 3, 4], now);
            for x in [p, q, r].into_iter().flatten() {
                picked[x] += 1;
            }
            assert!(
                !matches!(q, Some(0 | 4)),
                "{balance}: a tried endpoint {q:?}"
            );
        }
        let allocs = allocations() - before;
        assert_eq!(allocs, 0, "{balance}: {allocs} allocations in 3000 picks");
        assert_eq!(picked[1], 0, "{balance}: the ejected endpoint was picked");
        assert_eq!(picked.iter().sum::<usize>(), 3000, "{balance}: {picked:?}");
        drop(held);
    }
}
