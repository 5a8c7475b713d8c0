//! target/bench/report.md (tables, ratios against performance.md's targets, setup),
//! latency.svg (latency by percentile of the three paths at the same load) and results.json.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use super::cluster;
use super::{Path3, Results, Run};

/// "87 µs", "1.24 ms", "2.1 s".
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Median of `v` (mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// The plain-HTTP runs of `p`.
fn runs_of(runs: &[Run], p: Path3) -> Vec<&Run> {
    runs.iter().filter(|r| r.path == p && !r.https).collect()
}

/// The HTTPS runs of `p`.
fn https_runs_of(runs: &[Run], p: Path3) -> Vec<&Run> {
    runs.iter().filter(|r| r.path == p && r.https).collect()
}

fn cpu_per_request_us(runs: &[&Run]) -> f64 {
    median(
        runs.iter()
            .filter_map(|x| {
                x.proxy_cpu
                    .map(|c| c * 1e6 / x.result.all_completed.max(1) as f64)
            })
            .collect(),
    )
}

fn q_median(runs: &[&Run], q: f64) -> u64 {
    median(
        runs.iter()
            .map(|r| r.result.hist.value_at_quantile(q) as f64)
            .collect(),
    ) as u64
}

/// The proxy core's time stolen by the hypervisor during a run; "–" for direct (the core
/// is idle then, and an idle vCPU's time can show up as steal).
fn lost(x: &Run) -> String {
    if x.path == Path3::Direct {
        "–".into()
    } else {
        format!("{:.0}%", x.steal * 100.0)
    }
}

/// All the runs' latencies in one histogram.
fn merged(runs: &[&Run]) -> Histogram<u64> {
    let mut h = super::load::new_hist();
    for x in runs {
        let _ = h.add(&x.result.hist);
    }
    h
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// Ratio of ringgate's req/s to `other`'s, per round (same round = closest in time).
fn round_ratios(r: &Results, other: Path3) -> Vec<f64> {
    (0..r.settings.rounds)
        .filter_map(|i| {
            let pick = |p: Path3| runs_of(&r.runs, p).get(i).map(|x| x.result.rps());
            match (pick(Path3::Ringgate), pick(other)) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            }
        })
        .collect()
}

pub fn write(dir: &Path, r: &Results) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = String::new();
    let s = &r.settings;
    let _ = writeln!(
        md,
        "# ringgate bench{}\n",
        if s.quick {
            " (--quick: a smoke run, not a measurement)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}`. Method: README.md, section Benchmarks. All numbers \
         come from this one run on this machine; compare within the run only.\n",
        if s.quick { " --quick" } else { "" }
    );
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(md, "- ringgate: {}", git_rev());
    let _ = writeln!(
        md,
        "- pinning: proxy (nginx or ringgate, one worker each) on core {}; load client and upstream on core {}",
        r.cores.proxy, r.cores.client
    );
    let _ = writeln!(
        md,
        "- load: {} keep-alive connections, POST /v1/chat/completions ({} byte request), {} round(s) of {} s per path after {} s warm-up (not counted), path order rotated each round",
        s.connections,
        super::load::chat_request("bench").len(),
        s.rounds,
        s.duration.as_secs(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- upstream: nginx `return 200` of a {} byte chat.completion JSON, one worker",
        super::nginx::COMPLETION_JSON.len()
    );
    for line in &r.setup {
        let _ = writeln!(md, "- {line}");
    }

    // --- throughput
    let _ = writeln!(
        md,
        "\n## 1. Throughput (closed loop, {} connections)\n",
        s.connections
    );
    let _ = writeln!(md, "| path | req/s (median) | req/s range | p50 | p99 | p99.9 | errors | proxy CPU per request |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut med = [0.0f64; 3];
    for p in Path3::ALL {
        let runs = runs_of(&r.runs, p);
        let rps: Vec<f64> = runs.iter().map(|x| x.result.rps()).collect();
        let (lo, hi) = min_max(&rps);
        med[p as usize] = median(rps.clone());
        let errors: u64 = runs.iter().map(|x| x.result.errors.total()).sum();
        let cpu = cpu_per_request_us(&runs);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} – {:.0} | {} | {} | {} | {} | {} |",
            p.name(),
            med[p as usize],
            lo,
            hi,
            fmt_ns(q_median(&runs, 0.5)),
            fmt_ns(q_median(&runs, 0.99)),
            fmt_ns(q_median(&runs, 0.999)),
            errors,
            if p == Path3::Direct {
                "–".to_string()
            } else {
                format!("{cpu:.1} µs")
            }
        );
    }
    let steals: Vec<f64> = r
        .runs
        .iter()
        .filter(|x| x.path != Path3::Direct)
        .map(|x| x.steal * 100.0)
        .collect();
    let (slo, shi) = min_max(&steals);
    let busy: Vec<f64> = r
        .runs
        .iter()
        .filter(|x| x.path != Path3::Direct)
        .map(|x| x.client_busy * 100.0)
        .collect();
    let _ = writeln!(
        md,
        "\nThe proxy core's time stolen by the hypervisor during the proxy runs: {slo:.0}% – {shi:.0}% \
         (median {:.0}%); a run with a high share is slow whatever the path, which is why paths \
         alternate and medians are reported. The client core (load client + upstream) was busy \
         {:.0}% (median) during the proxy runs: near 100%, requests/s is capped by the client side and \
         the proxies' CPU per request is the better comparison (section \"capacity\" below). Per run:\n",
        median(steals.clone()),
        median(busy)
    );
    let _ = writeln!(md, "| round | path | req/s | p99 | proxy CPU per request | proxy core stolen | client core busy |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|");
    let per_round = r.runs.len() / r.settings.rounds.max(1);
    for (i, x) in r.runs.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {}{} | {:.0} | {} | {} | {} | {:.0}% |",
            i / per_round.max(1) + 1,
            x.path.name(),
            if x.https { " https" } else { "" },
            x.result.rps(),
            fmt_ns(x.result.hist.value_at_quantile(0.99)),
            x.proxy_cpu.map_or("–".into(), |c| format!(
                "{:.1} µs",
                c * 1e6 / x.result.all_completed.max(1) as f64
            )),
            lost(x),
            x.client_busy * 100.0
        );
    }
    let _ = writeln!(md, "\nLatency columns are the median over rounds of each round's percentile. Proxy CPU = user+system time of the proxy's processes / requests it served (warm-up included on both sides).");

    // --- HTTPS
    let _ = writeln!(md, "\n## 1a. HTTPS against plain HTTP (same rounds, same client; TLS terminated by the proxy, one handshake per connection)\n");
    let _ = writeln!(md, "| proxy | plain req/s | HTTPS req/s | HTTPS / plain | HTTPS p50 | HTTPS p99 | HTTPS errors | CPU per request plain → HTTPS |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in [Path3::Nginx, Path3::Ringgate] {
        let plain = runs_of(&r.runs, p);
        let tls = https_runs_of(&r.runs, p);
        if tls.is_empty() {
            continue;
        }
        let pr = median(plain.iter().map(|x| x.result.rps()).collect());
        let tr = median(tls.iter().map(|x| x.result.rps()).collect());
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {:.1} → {:.1} µs |",
            p.name(),
            pr,
            tr,
            ratio(tr, pr),
            fmt_ns(q_median(&tls, 0.5)),
            fmt_ns(q_median(&tls, 0.99)),
            tls.iter().map(|x| x.result.errors.total()).sum::<u64>(),
            cpu_per_request_us(&plain),
            cpu_per_request_us(&tls)
        );
    }
    let _ = writeln!(md, "\nThe client is the same rustls (ring provider) client for both proxies; ringgate terminates with rustls (ring), nginx with OpenSSL.");

    // --- same load
    let _ = writeln!(
        md,
        "\n## 1b. Latency at the same load ({:.0} req/s for every path, paced)\n",
        r.same_load_rate
    );
    let _ = writeln!(
        md,
        "| path | p50 | p90 | p99 (rounds' range) | p99.9 | max | added p99 vs direct | errors | sends > 2 ms late | proxy core stolen (median) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let p99_rounds = |p: Path3| -> Vec<f64> {
        r.same_load
            .iter()
            .filter(|x| x.path == p)
            .map(|x| x.result.hist.value_at_quantile(0.99) as f64)
            .collect()
    };
    let direct_p99 = median(p99_rounds(Path3::Direct)) as u64;
    let mut p99 = [0u64; 3];
    for p in Path3::ALL {
        let runs: Vec<&Run> = r.same_load.iter().filter(|x| x.path == p).collect();
        if runs.is_empty() {
            continue;
        }
        let h = merged(&runs);
        let (lo, hi) = min_max(&p99_rounds(p));
        p99[p as usize] = median(p99_rounds(p)) as u64;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({} – {}) | {} | {} | {} | {} | {} of {} | {} |",
            p.name(),
            fmt_ns(h.value_at_quantile(0.5)),
            fmt_ns(h.value_at_quantile(0.9)),
            fmt_ns(p99[p as usize]),
            fmt_ns(lo as u64),
            fmt_ns(hi as u64),
            fmt_ns(h.value_at_quantile(0.999)),
            fmt_ns(h.max()),
            if p == Path3::Direct {
                "–".into()
            } else {
                fmt_ns(p99[p as usize].saturating_sub(direct_p99))
            },
            runs.iter().map(|x| x.result.errors.total()).sum::<u64>(),
            runs.iter().map(|x| x.result.late_sends).sum::<u64>(),
            runs.iter().map(|x| x.result.completed).sum::<u64>(),
            if p == Path3::Direct {
                "–".into()
            } else {
                format!(
                    "{:.0}%",
                    median(runs.iter().map(|x| x.steal * 100.0).collect())
                )
            }
        );
    }
    let won = (0..r.settings.rounds)
        .filter(|&i| {
            let at = |p: Path3| p99_rounds(p).get(i).copied();
            matches!((at(Path3::Ringgate), at(Path3::Nginx)), (Some(g), Some(n)) if g <= n)
        })
        .count();
    let _ = writeln!(
        md,
        "\nPercentiles over all rounds' requests together, except p99: the median of the rounds' p99 (and their range). ringgate's p99 was ≤ nginx's in {won} of {} rounds.",
        r.settings.rounds
    );
    let _ = writeln!(md, "\nPlot: [latency.svg](latency.svg) (latency by percentile, this load). Latency is timed from each request's actual send; a send that fell over 2 ms behind the pace (its connection's previous response was late) is counted in its own column, so a stall cannot hide.");

    // --- SSE
    let _ = writeln!(
        md,
        "\n## 2. SSE streaming ({} events 20 ms apart per stream)\n",
        super::sse::EVENTS
    );
    let _ = writeln!(md, "| path | streams | TTFB p50 | TTFB p99 | TTFB overhead vs direct (p50) | event delay p50 | p99 | max | events > 1 ms | failed streams |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let direct_ttfb = r
        .sse
        .iter()
        .find(|x| x.path == Path3::Direct)
        .map_or(0, |x| x.ttfb.value_at_quantile(0.5));
    for x in &r.sse {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} |",
            x.path.name(),
            x.streams,
            fmt_ns(x.ttfb.value_at_quantile(0.5)),
            fmt_ns(x.ttfb.value_at_quantile(0.99)),
            if x.path == Path3::Direct {
                "–".into()
            } else {
                fmt_ns(x.ttfb.value_at_quantile(0.5).saturating_sub(direct_ttfb))
            },
            fmt_ns(x.delay.value_at_quantile(0.5)),
            fmt_ns(x.delay.value_at_quantile(0.99)),
            fmt_ns(x.delay.max()),
            x.late,
            x.events,
            x.errors
        );
    }

    // --- reload
    if let Some(rl) = &r.reload {
        let _ = writeln!(md, "\n## 3. Reload under load\n");
        let _ = writeln!(md, "| reloads (kubelet-style re-projections) | applied by ringgate | rejected | requests served | req/s during | failed requests | rename → serving p50 | p99 | max | probe failures | never seen |");
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            rl.reloads,
            rl.generations_applied.map_or("?".into(), |g| g.to_string()),
            rl.rejected.map_or("?".into(), |g| g.to_string()),
            rl.completed,
            rl.rps,
            rl.errors.describe(),
            fmt_ns(rl.to_serving.value_at_quantile(0.5)),
            fmt_ns(rl.to_serving.value_at_quantile(0.99)),
            fmt_ns(rl.to_serving.max()),
            rl.probe_failures,
            rl.unseen
        );
        let _ = writeln!(md, "\nEach re-projection moves the `/probe/N` route; the time is from kubelet's `..data` rename to the first `200` from the new path (probed every 0.2 ms on a kept-alive connection).");
    }

    memory_sections(&mut md, r);

    // --- cluster limits
    match &r.cluster {
        Some(Ok(c)) => {
            let _ = writeln!(md, "\n## 5. Cluster limits (Redis on loopback)\n");
            let _ = writeln!(md, "One ringgate, two routes to the same upstream whose limits differ only in `scope`; paced at {:.0} req/s, rounds alternating the order. {}.\n", c.rate, c.redis_version);
            let _ = writeln!(md, "| route's limit | p50 | p99 | p99.9 | errors | ringgate CPU / request | redis CPU / request |");
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
            for scope in ["local", "cluster"] {
                let runs: Vec<&cluster::ClusterRun> =
                    c.runs.iter().filter(|x| x.scope == scope).collect();
                let q = |q: f64| {
                    median(
                        runs.iter()
                            .map(|x| x.result.hist.value_at_quantile(q) as f64)
                            .collect(),
                    ) as u64
                };
                let errors: u64 = runs.iter().map(|x| x.result.errors.total()).sum();
                let (g, rd) = c.cpu_us(scope);
                let _ = writeln!(
                    md,
                    "| {scope} | {} | {} | {} | {errors} | {g:.1} µs | {rd:.1} µs |",
                    fmt_ns(q(0.5)),
                    fmt_ns(q(0.99)),
                    fmt_ns(q(0.999)),
                );
            }
            let med = |v: Vec<i64>| median(v.into_iter().map(|x| x as f64).collect());
            let _ = writeln!(
                md,
                "\nAdded by the store (cluster − local, median of the rounds): p50 {:+.0} µs, p99 {:+.0} µs; store calls that failed and fell back: {}.",
                med(c.added(0.5)) / 1e3,
                med(c.added(0.99)) / 1e3,
                c.store_failures
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(
                md,
                "\n## 5. Cluster limits (Redis on loopback)\n\nSkipped: {why}."
            );
        }
        None => {}
    }

    // --- ratios and targets
    let rn = ratio(med[2], med[1]);
    let rd = ratio(med[2], med[0]);
    let (rn_lo, rn_hi) = min_max(&round_ratios(r, Path3::Nginx));
    let (rd_lo, rd_hi) = min_max(&round_ratios(r, Path3::Direct));
    let _ = writeln!(md, "\n## Ratios and performance.md's targets\n");
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(md, "| throughput ringgate ≥ 1.2 × nginx | {rn:.2} × (per round {rn_lo:.2} – {rn_hi:.2}) | {} |", mark(rn >= 1.2));
    let (cn, cg) = (
        cpu_per_request_us(&runs_of(&r.runs, Path3::Nginx)),
        cpu_per_request_us(&runs_of(&r.runs, Path3::Ringgate)),
    );
    let _ = writeln!(
        md,
        "| capacity (requests one busy core serves = 1 s / CPU per request): ringgate ≥ 1.2 × nginx | {:.2} × ({:.0} vs {:.0} req/s per core; {:.1} vs {:.1} µs) | {} |",
        ratio(cn, cg),
        ratio(1e6, cg),
        ratio(1e6, cn),
        cg,
        cn,
        mark(ratio(cn, cg) >= 1.2)
    );
    let _ = writeln!(md, "| throughput ringgate ≥ 0.85 × direct | {rd:.2} × (per round {rd_lo:.2} – {rd_hi:.2}) | {} |", mark(rd >= 0.85));
    let _ = writeln!(
        md,
        "| p99 at the same load: ringgate ≤ nginx | {} vs {} | {} |",
        fmt_ns(p99[2]),
        fmt_ns(p99[1]),
        mark(p99[2] <= p99[1])
    );
    if r.sse.len() == 3 {
        let (n, g) = (&r.sse[1], &r.sse[2]);
        let _ = writeln!(
            md,
            "| SSE: every event forwarded within 1 ms | {} of {} events over 1 ms (max {}) | {} |",
            g.late,
            g.events,
            fmt_ns(g.delay.max()),
            mark(g.late == 0 && g.errors == 0)
        );
        let (gt, nt) = (
            g.ttfb.value_at_quantile(0.5).saturating_sub(direct_ttfb),
            n.ttfb.value_at_quantile(0.5).saturating_sub(direct_ttfb),
        );
        let _ = writeln!(
            md,
            "| SSE: TTFB overhead ≤ nginx's | {} vs {} | {} |",
            fmt_ns(gt),
            fmt_ns(nt),
            mark(gt <= nt)
        );
    }
    if let Some(rl) = &r.reload {
        let ok = rl.errors.total() == 0 && rl.probe_failures == 0;
        let _ = writeln!(
            md,
            "| reload: 0 failed requests | {} failed of {} | {} |",
            rl.errors.total() + rl.probe_failures,
            rl.completed,
            mark(ok)
        );
        let p50 = rl.to_serving.value_at_quantile(0.5);
        let _ = writeln!(
            md,
            "| reload: rename → serving p50 < 50 ms, max < 250 ms | p50 {}, max {} | {} |",
            fmt_ns(p50),
            fmt_ns(rl.to_serving.max()),
            mark(p50 < 50_000_000 && rl.to_serving.max() < 250_000_000 && rl.unseen == 0)
        );
    }
    if let Some(Ok(c)) = &r.cluster {
        let added = median(c.added(0.99).into_iter().map(|x| x as f64).collect());
        let _ = writeln!(
            md,
            "| cluster limits: p99 added ≤ 0.3 ms (Redis on loopback) | {:+.0} µs ({} store failures) | {} |",
            added / 1e3,
            c.store_failures,
            mark(added <= 300_000.0 && c.store_failures == 0.0)
        );
    }
    memory_targets(&mut md, r);

    let md_path = dir.join("report.md");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg = svg(r);
    std::fs::write(dir.join("latency.svg"), svg).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), json(r, med, rn, rd)).map_err(|e| e.to_string())?;
    println!("\n{md}");
    Ok(md_path)
}

/// KiB of RSS per connection a memory row measured.
fn per_conn(row: &(Path3, u64, u64, usize)) -> f64 {
    (row.2 as f64 - row.1 as f64) / row.3.max(1) as f64
}

/// Sections 4 and 4b: RSS with idle keep-alive connections and with slow SSE streams.
fn memory_sections(md: &mut String, r: &Results) {
    for (rows, title, what) in [
        (
            &r.memory,
            "4. Memory with idle keep-alive connections",
            "connections held",
        ),
        (
            &r.stream_memory,
            "4b. Memory with concurrent slow SSE streams",
            "streams held",
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n## {title}\n");
        let _ = writeln!(
            md,
            "| path | RSS before | RSS after | {what} | per connection |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for row in rows {
            let _ = writeln!(
                md,
                "| {} | {} KiB | {} KiB | {} | {:.2} KiB |",
                row.0.name(),
                row.1,
                row.2,
                row.3,
                per_conn(row)
            );
        }
    }
    if !r.memory.is_empty() || !r.stream_memory.is_empty() {
        let _ = writeln!(
            md,
            "\nRSS of the proxy's whole process tree (nginx: master + worker). Idle connections \
             made one `GET /health` each; streams are SSE answers whose upstream sends an event \
             every 500 ms, held open by clients that stopped reading after the first event."
        );
    }
}

/// The memory rows of the targets table.
fn memory_targets(md: &mut String, r: &Results) {
    if let [n, g] = &r.memory[..] {
        let (gk, nk) = (per_conn(g), per_conn(n));
        let _ = writeln!(md, "| idle keep-alive connection ≤ 1 KiB (nginx {nk:.2} KiB) | {gk:.2} KiB ({} connections) | {} |", g.3, mark(gk <= 1.0));
    }
    if let [n, g] = &r.stream_memory[..] {
        let (gk, nk) = (per_conn(g), per_conn(n));
        let _ = writeln!(
            md,
            "| active SSE stream ≤ nginx's | {gk:.2} KiB vs {nk:.2} KiB ({} streams) | {} |",
            g.3,
            mark(gk <= nk)
        );
    }
}

/// `--only memory`: the memory sections alone, in `memory.md` (report.md is left as the last
/// full run wrote it).
pub fn write_memory(dir: &Path, r: &Results) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = format!(
        "# ringgate bench: memory only\n\nWritten by `cargo xtask bench --only memory`. Machine: {}.\n",
        machine()
    );
    memory_sections(&mut md, r);
    let _ = writeln!(md, "\n| target | measured | |\n|---|---|---|");
    memory_targets(&mut md, r);
    let path = dir.join("memory.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\n{md}");
    Ok(path)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Not available_parallelism: this process is pinned to one core by now.
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{n} CPUs ({cpu}), Linux {}, load average at the end {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(super::root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown revision".into())
}

/// Latency (µs, linear) against percentile (log scale of 1/(1-q): 0, 90, 99, 99.9, 99.99).
fn svg(r: &Results) -> String {
    let (w, h) = (820.0, 500.0);
    let (l, rt, t, b) = (80.0, 150.0, 50.0, 60.0);
    let pw = w - l - rt;
    let ph = h - t - b;
    let colors = ["#6b7280", "#059669", "#d97706"];
    let merged_by_path: Vec<(Path3, Histogram<u64>)> = Path3::ALL
        .iter()
        .map(|&p| {
            let runs: Vec<&Run> = r.same_load.iter().filter(|x| x.path == p).collect();
            (p, merged(&runs))
        })
        .filter(|(_, h)| !h.is_empty())
        .collect();
    let series: Vec<(Path3, &Histogram<u64>)> =
        merged_by_path.iter().map(|(p, h)| (*p, h)).collect();
    let qs: Vec<f64> = (0..=80).map(|i| i as f64 * 0.05).collect(); // log10(1/(1-q)) from 0 to 4
    let ymax_ns = series
        .iter()
        .map(|(_, hist)| hist.value_at_quantile(0.9999))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let x = |lx: f64| l + lx / 4.0 * pw;
    let y = |ns: f64| t + ph - (ns / ymax_ns).min(1.0) * ph;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="25" font-size="15" text-anchor="middle">Latency by percentile at {:.0} req/s (same load for every path)</text>"#,
        l + pw / 2.0,
        r.same_load_rate
    );
    for (i, label) in ["0", "90", "99", "99.9", "99.99"].iter().enumerate() {
        let xx = x(i as f64);
        let _ = writeln!(
            o,
            r##"<line x1="{xx}" y1="{t}" x2="{xx}" y2="{}" stroke="#e5e7eb"/><text x="{xx}" y="{}" text-anchor="middle">p{label}</text>"##,
            t + ph,
            t + ph + 18.0
        );
    }
    for i in 0..=5 {
        let ns = ymax_ns * i as f64 / 5.0;
        let yy = y(ns);
        let _ = writeln!(
            o,
            r##"<line x1="{l}" y1="{yy}" x2="{}" y2="{yy}" stroke="#e5e7eb"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 6.0,
            yy + 4.0,
            fmt_ns(ns as u64)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        l + pw / 2.0,
        h - 15.0
    );
    for (k, (p, hist)) in series.iter().enumerate() {
        let pts: Vec<String> = qs
            .iter()
            .map(|&lx| {
                let q = 1.0 - 10f64.powf(-lx);
                format!(
                    "{:.1},{:.1}",
                    x(lx),
                    y(hist.value_at_quantile(q.min(0.99999)) as f64)
                )
            })
            .collect();
        let c = colors[k % colors.len()];
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = t + 20.0 + k as f64 * 22.0;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 15.0,
            l + pw + 40.0,
            l + pw + 46.0,
            ly + 4.0,
            p.name()
        );
    }
    o.push_str("</svg>\n");
    o
}

fn json(r: &Results, med: [f64; 3], rn: f64, rd: f64) -> String {
    let v = serde_json::json!({
        "quick": r.settings.quick,
        "rps_median": { "direct": med[0], "nginx": med[1], "ringgate": med[2] },
        "ratio_ringgate_nginx": rn,
        "ratio_ringgate_direct": rd,
        "same_load_rate": r.same_load_rate,
        "same_load_p99_ns_median": Path3::ALL.iter().map(|&p| (p.name(), median(r.same_load.iter().filter(|x| x.path == p).map(|x| x.result.hist.value_at_quantile(0.99) as f64).collect()))).collect::<std::collections::BTreeMap<_, _>>(),
        "errors": r.runs.iter().map(|x| x.result.errors.total()).sum::<u64>(),
        "reload_failed_requests": r.reload.as_ref().map(|x| x.errors.total() + x.probe_failures),
        "reload_to_serving_p50_ns": r.reload.as_ref().map(|x| x.to_serving.value_at_quantile(0.5)),
        "reload_to_serving_max_ns": r.reload.as_ref().map(|x| x.to_serving.max()),
        "sse_late_events": r.sse.iter().map(|x| (x.path.name(), x.late)).collect::<std::collections::BTreeMap<_, _>>(),
        "cluster_added_p50_ns": r.cluster.as_ref().and_then(|c| c.as_ref().ok()).map(|c| median(c.added(0.5).into_iter().map(|x| x as f64).collect())),
        "cluster_added_p99_ns": r.cluster.as_ref().and_then(|c| c.as_ref().ok()).map(|c| median(c.added(0.99).into_iter().map(|x| x as f64).collect())),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
