//! The idle timeout of keep-alive connections, kept by the worker instead of by each
//! connection: a list of (deadline, waker) slots and one ticker task that expires them.
//!
//! A monoio timer is 640 bytes (its entry is cache-padded, 128-aligned): inside every idle
//! connection's task it was the largest thing an idle connection held. A slot here is ~40
//! bytes in one `Vec`, and the ticker reads the clock once a tick for every connection. The
//! price is precision: an idle connection is closed between `idle_timeout` and
//! `idle_timeout` + [`TICK`] after its last request, which an idle timeout of seconds does
//! not notice. The wait also ends when the worker starts draining.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::worker::DrainSignal;

/// How often the ticker expires idle connections (the idle timeout's precision).
pub const TICK: Duration = Duration::from_millis(250);

/// One waiting connection.
struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    expired: bool,
}

/// A worker's idle connections: their deadlines and wakers (see the module header).
#[derive(Default)]
pub struct IdleList {
    entries: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    ticker: Cell<Option<Waker>>,
}

/// Why an [`IdleWait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// The idle timeout passed.
    TimedOut,
    /// The worker is draining.
    Draining,
}

impl IdleList {
    /// Resolves when `timeout` has passed (give or take [`TICK`]) or `drain` began. Holds a
    /// slot from its first poll until it is dropped.
    pub fn wait<'a>(&'a self, drain: &'a DrainSignal, timeout: Duration) -> IdleWait<'a> {
        IdleWait {
            list: self,
            drain,
            timeout,
            key: None,
        }
    }

    /// Wakes every waiting connection (the drain began: they see it when polled).
    pub fn wake_all(&self) {
        for e in self.entries.borrow_mut().iter_mut().flatten() {
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
    }

    /// Marks the waits whose deadline is not after `now` expired and wakes them.
    fn expire(&self, now: Instant) {
        for e in self.entries.borrow_mut().iter_mut().flatten() {
            if !e.expired && e.deadline <= now {
                e.expired = true;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
    }

    fn register(&self, deadline: Instant, waker: Waker) -> usize {
        let entry = Entry {
            deadline,
            waker: Some(waker),
            expired: false,
        };
        let mut entries = self.entries.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(k) => {
                entries[k] = Some(entry);
                k
            }
            None => {
                entries.push(Some(entry));
                entries.len() - 1
            }
        };
        self.live.set(self.live.get() + 1);
        if let Some(t) = self.ticker.take() {
            t.wake();
        }
        key
    }

    fn unregister(&self, key: usize) {
        if let Some(slot) = self.entries.borrow_mut().get_mut(key) {
            if slot.take().is_some() {
                self.live.set(self.live.get() - 1);
                self.free.borrow_mut().push(key);
            }
        }
    }

    /// The ticker: every [`TICK`] while any connection waits, expires the due ones. Sleeps
    /// while none does. Runs for the worker's life.
    pub async fn run(self: Rc<Self>) {
        loop {
            if self.live.get() == 0 {
                UntilRegistered { list: &self }.await;
            }
            monoio::time::sleep(TICK).await;
            self.expire(Instant::now());
        }
    }
}

/// Future of [`IdleList::wait`].
pub struct IdleWait<'a> {
    list: &'a IdleList,
    drain: &'a DrainSignal,
    timeout: Duration,
    key: Option<usize>,
}

impl Future for IdleWait<'_> {
    type Output = IdleEnd;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IdleEnd> {
        if self.drain.is_draining() {
            return Poll::Ready(IdleEnd::Draining);
        }
        match self.key {
            None => {
                let deadline = Instant::now() + self.timeout;
                self.key = Some(self.list.register(deadline, cx.waker().clone()));
                Poll::Pending
            }
            Some(k) => {
                let mut entries = self.list.entries.borrow_mut();
                match entries.get_mut(k).and_then(Option::as_mut) {
                    Some(e) if e.expired => Poll::Ready(IdleEnd::TimedOut),
                    Some(e) => {
                        if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            e.waker = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                    // Not reachable: the slot is ours until drop. Ending the wait is the
                    // safe answer (the connection closes).
                    None => Poll::Ready(IdleEnd::TimedOut),
                }
            }
        }
    }
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.list.unregister(k);
        }
    }
}

/// Resolves once a wait registers (the ticker's sleep while nobody is idle).
struct UntilRegistered<'a> {
    list: &'a IdleList,
}

impl Future for UntilRegistered<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.list.live.get() > 0 {
            return Poll::Ready(());
        }
        self.list.ticker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_wait_expires_after_its_timeout_and_frees_its_slot() {
        rt().block_on(async {
            let list = Rc::new(IdleList::default());
            let drain = DrainSignal::default();
            monoio::spawn(list.clone().run());
            let started = Instant::now();
            let end = list.wait(&drain, Duration::from_millis(30)).await;
            assert_eq!(end, IdleEnd::TimedOut);
            assert!(started.elapsed() >= Duration::from_millis(30));
            assert_eq!(list.live.get(), 0);
            // A long wait beside a short one: only the short one ends.
            let long = list.wait(&drain, Duration::from_secs(3600));
            let mut long = std::pin::pin!(long);
            let short = list.wait(&drain, Duration::from_millis(1));
            monoio::select! {
                _ = long.as_mut() => panic!("the long wait ended first"),
                e = short => assert_eq!(e, IdleEnd::TimedOut),
            }
            assert_eq!(list.live.get(), 1);
        });
    }

    #[test]
    fn draining_ends_every_wait() {
        rt().block_on(async {
            let list = Rc::new(IdleList::default());
            let drain = Rc::new(DrainSignal::default());
            monoio::spawn(list.clone().run());
            let (l2, d2) = (list.clone(), drain.clone());
            let waiter =
                monoio::spawn(async move { l2.wait(&d2, Duration::from_secs(3600)).await });
            // Let the waiter register, then drain.
            for _ in 0..1000 {
                if list.live.get() > 0 {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(list.live.get(), 1, "the waiter never registered");
            drain.start();
            list.wake_all();
            assert_eq!(waiter.await, IdleEnd::Draining);
            assert_eq!(list.live.get(), 0);
        });
    }
}
