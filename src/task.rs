//! What wraps the task serving one client connection: a panic inside it is caught at the
//! connection ([`guarded`]), and a connection that keeps finding work without ever waiting
//! gives the worker back between requests ([`ran_without_waiting`], [`yield_now`]).
//!
//! monoio 0.2 does not catch task panics (`task/harness.rs`, "for efficiency we do not
//! catch"): a panic while serving one client would unwind through the runtime and end the
//! worker thread, its listener and every other connection on it. [`CatchUnwind`] polls the
//! connection's future inside `catch_unwind`, so a panic ends only that future: its locals
//! (the client stream, a pooled upstream connection, the connection's admission guard) are
//! dropped by the unwinding itself, the panic is counted in `ringgate_panics_total` and logged
//! with the peer and the request id. This relies on `panic = "unwind"` (the default; no
//! profile may set `abort`).
//!
//! The default panic hook prints an unstructured multi-line message to stderr, which breaks
//! `RINGGATE_LOG_FORMAT=json` log shipping; [`install_panic_hook`] replaces it with one
//! `tracing` event. A panic inside a connection is not logged by the hook: it records the
//! location for the catcher, which logs one line with everything. A backtrace is captured
//! only when `RUST_BACKTRACE` asks for one, as with the default hook.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::metrics::WorkerMetrics;

thread_local! {
    /// Bumped on every poll of a guarded connection future: a connection that reads the
    /// same value before and after a request ran it without ever being suspended.
    static POLL_EPOCH: Cell<u64> = const { Cell::new(0) };
    /// The request id of the connection being polled (swapped in and out by [`CatchUnwind`],
    /// so interleaved connections on one worker never see each other's id).
    static REQUEST_ID: RefCell<String> = const { RefCell::new(String::new()) };
    /// Whether a guarded connection future is being polled: its panics are the catcher's to
    /// log, not the hook's.
    static IN_CONNECTION: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic inside a connection happened (and its backtrace, when enabled),
    /// left by the hook for the catcher.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// Records the id of the request the current connection is serving, for the panic log.
pub fn set_request_id(id: &str) {
    REQUEST_ID.with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            r.clear();
            r.push_str(id);
        }
    });
}

/// The worker's poll epoch (see [`ran_without_waiting`]).
pub fn poll_epoch() -> u64 {
    POLL_EPOCH.with(Cell::get)
}

/// Whether the calling connection has not been suspended since it read `epoch`: everything
/// it did since (reads from its buffer, writes the kernel took at once — the epoll driver
/// does both inline) ran inside one poll, and the worker's other tasks have been waiting.
pub fn ran_without_waiting(epoch: u64) -> bool {
    poll_epoch() == epoch
}

/// A panic caught while polling a connection's future.
#[derive(Debug)]
pub struct Caught {
    /// The panic's message.
    pub message: String,
    /// Where it happened (`file:line:col`), when the hook was installed.
    pub location: Option<String>,
    /// The backtrace, when the hook was installed and `RUST_BACKTRACE` asks for one.
    pub backtrace: Option<String>,
}

/// A future polled inside `catch_unwind`: `Err` instead of unwinding into the runtime.
pub struct CatchUnwind<F> {
    fut: F,
    request_id: String,
}

impl<F> CatchUnwind<F> {
    /// Wraps `fut`.
    pub fn new(fut: F) -> Self {
        CatchUnwind {
            fut,
            request_id: String::new(),
        }
    }

    /// The last request id the wrapped future recorded with [`set_request_id`].
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Caught>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` nor
        // exposed unpinned; `request_id` is not pinned (plain data, moved freely).
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        POLL_EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
        let outer_id = REQUEST_ID.with(|r| r.replace(std::mem::take(&mut this.request_id)));
        let outer_in = IN_CONNECTION.with(|c| c.replace(true));
        // Unwind safety: a panic leaves the inner future half-run; it is never polled again
        // (we return Ready) and is dropped with this wrapper. Worker state it borrowed is in
        // `RefCell`s (released by the unwinding) and poison-tolerant mutexes.
        let res = catch_unwind(AssertUnwindSafe(|| fut.poll(cx)));
        IN_CONNECTION.with(|c| c.set(outer_in));
        this.request_id = REQUEST_ID.with(|r| r.replace(outer_id));
        match res {
            Ok(p) => p.map(Ok),
            Err(payload) => {
                let (location, backtrace) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .map_or((None, None), |(l, b)| (Some(l), b));
                Poll::Ready(Err(Caught {
                    message: payload_message(&*payload),
                    location,
                    backtrace,
                }))
            }
        }
    }
}

fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// The future serving one client connection of a worker, as spawned: a panic inside it is
/// counted (`ringgate_panics_total`), logged with the peer and the request id, and ends only
/// that future (dropping its stream closes the connection). `keep` (the connection's
/// admission slot) lives exactly as long as the task.
///
/// A hand-written future rather than an `async fn`: an async wrapper keeps its argument and
/// the pinned copy it polls side by side in its state (and an `async move` block around it
/// a third), which tripled every connection's task — 8.8 KiB of 9 KiB measured.
pub fn guarded<F: Future<Output = ()>, K>(
    metrics: Arc<WorkerMetrics>,
    worker: usize,
    peer: SocketAddr,
    fut: F,
    keep: K,
) -> Guarded<F, K> {
    Guarded {
        inner: CatchUnwind::new(fut),
        metrics,
        worker,
        peer,
        _keep: keep,
    }
}

/// See [`guarded`].
pub struct Guarded<F, K> {
    inner: CatchUnwind<F>,
    metrics: Arc<WorkerMetrics>,
    worker: usize,
    peer: SocketAddr,
    _keep: K,
}

impl<F: Future<Output = ()>, K> Future for Guarded<F, K> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `inner` is structurally pinned (never moved out nor exposed unpinned); the
        // other fields are plain data.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        match inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(c)) => {
                this.metrics.note_panic();
                let id = this.inner.request_id();
                tracing::error!(
                    worker = this.worker,
                    peer = %this.peer,
                    request_id = if id.is_empty() { "-" } else { id },
                    location = c.location.as_deref().unwrap_or("-"),
                    panic = %c.message,
                    backtrace = c.backtrace.as_deref().unwrap_or("-"),
                    "panic while serving a connection; closed that connection only"
                );
                Poll::Ready(())
            }
        }
    }
}

/// Replaces the default panic hook (see the module header): one structured log event per
/// panic outside a connection; inside one, the location is left for the catcher's log line.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let bt = std::backtrace::Backtrace::capture();
        let bt = (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
        if IN_CONNECTION.with(Cell::get) {
            LAST_PANIC.with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    *p = Some((location.unwrap_or_else(|| "-".into()), bt));
                }
            });
            return;
        }
        let message = payload_message(info.payload());
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("-"),
            location = location.as_deref().unwrap_or("-"),
            panic = %message,
            backtrace = bt.as_deref().unwrap_or("-"),
            "panic"
        );
    }));
}

/// Gives the worker's other ready tasks a turn before this one continues.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future of [`yield_now`].
///
/// Waking itself from inside its own poll would not do: monoio 0.2.4 re-queues a task
/// notified while running at the *front* of the run queue (`yield_now` in
/// `scheduler.rs`, `push_front`), so it would run again at once. Instead a one-line helper
/// task is spawned (queued at the back) and wakes this one when it runs, which queues it
/// behind every task that was ready before it. When the queue stays busy the runtime still
/// polls the driver every few rounds (`block_on`'s `max_round`), so sockets of waiting
/// clients are seen too.
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        let waker = cx.waker().clone();
        monoio::spawn(async move { waker.wake() });
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_panicking_future_is_caught_and_its_neighbours_keep_running() {
        rt().block_on(async {
            let progress = Rc::new(Cell::new(0u32));
            let p = progress.clone();
            let neighbour = monoio::spawn(async move {
                for _ in 0..10 {
                    p.set(p.get() + 1);
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            });
            let caught = monoio::spawn(async {
                CatchUnwind::new(async {
                    set_request_id("req-1");
                    monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                    let big: f64 = "1e300".parse().unwrap_or(0.0);
                    // The panic of the known trigger (forward.rs `parse_reset`).
                    let _ = std::time::Duration::from_secs_f64(big);
                })
                .await
            });
            let res = caught.await;
            let err = res.expect_err("the panic is caught");
            assert!(err.message.contains("Duration"), "{}", err.message);
            neighbour.await;
            assert_eq!(progress.get(), 10);
            // The worker's runtime is still usable after the panic.
            assert_eq!(monoio::spawn(async { 7 }).await, 7);
        });
    }

    #[test]
    fn guarded_counts_the_panic_and_keeps_the_request_id() {
        let metrics = std::sync::Arc::new(crate::metrics::WorkerMetrics::default());
        rt().block_on(async {
            let mut g = std::pin::pin!(CatchUnwind::new(async {
                set_request_id("abc");
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                panic!("boom");
            }));
            let r = g.as_mut().await;
            assert_eq!(r.map_err(|c| c.message).err().as_deref(), Some("boom"));
            assert_eq!(g.request_id(), "abc");
            // Outside a connection the thread's id slot is untouched.
            assert_eq!(REQUEST_ID.with(|r| r.borrow().clone()), "");
        });
        rt().block_on(async {
            let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
            guarded(
                metrics.clone(),
                0,
                peer,
                async { panic!("in a connection") },
                (),
            )
            .await;
            guarded(metrics.clone(), 0, peer, async {}, ()).await;
        });
        assert_eq!(metrics.panics(), 1);
    }

    #[test]
    fn the_epoch_moves_only_when_a_guarded_future_is_suspended() {
        rt().block_on(async {
            let seen = Rc::new(Cell::new((false, false)));
            let s = seen.clone();
            CatchUnwind::new(async move {
                let e = poll_epoch();
                let without = ran_without_waiting(e);
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                s.set((without, ran_without_waiting(e)));
            })
            .await
            .expect("no panic");
            assert_eq!(seen.get(), (true, false));
        });
    }

    #[test]
    fn yield_now_lets_a_task_queued_behind_run_first() {
        rt().block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let o = order.clone();
            let a = monoio::spawn(async move {
                for i in 0..3 {
                    o.borrow_mut().push(("a", i));
                    yield_now().await;
                }
            });
            let o = order.clone();
            let b = monoio::spawn(async move {
                for i in 0..3 {
                    o.borrow_mut().push(("b", i));
                    yield_now().await;
                }
            });
            a.await;
            b.await;
            let got: Vec<&str> = order.borrow().iter().map(|(n, _)| *n).collect();
            assert_eq!(got, ["a", "b", "a", "b", "a", "b"]);
        });
    }
}
