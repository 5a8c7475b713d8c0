//! Watching the client while the gateway waits on the upstream: a client that leaves stops
//! the spend. Without this a departed client is noticed only by the next write to it, and
//! an LLM provider keeps generating (and billing) for minutes while nobody waits.
//!
//! While an upstream wait runs (its response head, its next body bytes, a retry's backoff),
//! the client's socket sits in the worker's [`ClientWatch`] list; every [`CHECK_EVERY`] one
//! `poll(POLLRDHUP)` with a zero timeout over the whole list asks the kernel which clients
//! shut their side. It reads nothing, so it works the same under io_uring and epoll, plain
//! or TLS, and a wait costs a list slot: no timer and no syscall per chunk.
//!
//! How a half-close and pipelining are told apart: `POLLRDHUP`/`POLLHUP`/`POLLERR` mean the
//! client sent FIN or RST; pipelined request bytes only make the socket readable (`POLLIN`),
//! which is ignored (they stay in the socket for the next request). A client that sends FIN
//! after its request (a half-close) is taken as gone, as nginx does with
//! `proxy_ignore_client_abort off`: it can no longer be told apart from one that closed,
//! and an HTTP/1.1 client that wants its answer keeps its side open.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often a waiting request's client is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Whether the peer of `fd` has shut its side (FIN) or reset the connection, reading nothing.
pub fn peer_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd on a descriptor this connection owns; a zero timeout never
    // blocks the worker.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && is_closed(p.revents)
}

fn is_closed(revents: libc::c_short) -> bool {
    revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// One waiting request's entry.
struct Entry {
    fd: RawFd,
    waker: Option<Waker>,
    gone: bool,
}

/// A worker's watch list: the clients of requests waiting on an upstream right now. One
/// ticker task checks them all every [`CHECK_EVERY`] with a single `poll(2)` (zero
/// timeout), so a wait costs a slot in a list — no timer, no syscall of its own — and a
/// thousand paused streams cost one `poll` call a tick, not a thousand. The ticker sleeps
/// while the list is empty.
#[derive(Default)]
pub struct ClientWatch {
    entries: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
    ticker: Cell<Option<Waker>>,
    scratch: RefCell<Vec<libc::pollfd>>,
    keys: RefCell<Vec<usize>>,
}

impl ClientWatch {
    fn register(&self, fd: RawFd) -> usize {
        let entry = Entry {
            fd,
            waker: None,
            gone: false,
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

    /// Checks every registered client once; wakes the requests whose client left.
    fn check(&self) {
        let mut fds = self.scratch.borrow_mut();
        let mut keys = self.keys.borrow_mut();
        fds.clear();
        keys.clear();
        for (k, e) in self.entries.borrow().iter().enumerate() {
            if let Some(e) = e.as_ref().filter(|e| !e.gone) {
                fds.push(libc::pollfd {
                    fd: e.fd,
                    events: libc::POLLRDHUP,
                    revents: 0,
                });
                keys.push(k);
            }
        }
        if fds.is_empty() {
            return;
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds on descriptors the waiting
        // connections own; a zero timeout never blocks the worker.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        for (p, &k) in fds.iter().zip(keys.iter()) {
            if !is_closed(p.revents) {
                continue;
            }
            if let Some(Some(e)) = entries.get_mut(k) {
                e.gone = true;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// The ticker: runs for the worker's life, checking every [`CHECK_EVERY`] while
    /// anything is registered.
    pub async fn run(self: Rc<Self>) {
        loop {
            if self.live.get() == 0 {
                IdleUntilRegistered { watch: &self }.await;
            }
            monoio::time::sleep(CHECK_EVERY).await;
            self.check();
        }
    }

    /// Runs `op` unless the client of `fd` leaves first; then `op` is dropped — the caller
    /// must not reuse whatever `op` was reading (its upstream connection is closed, never
    /// pooled) — and the result is `left()`.
    pub async fn unless_client_leaves<T, E>(
        &self,
        fd: RawFd,
        op: impl Future<Output = Result<T, E>>,
        left: impl FnOnce() -> E,
    ) -> Result<T, E> {
        let gone = Gone {
            watch: self,
            key: self.register(fd),
        };
        monoio::select! {
            r = op => r,
            _ = gone => Err(left()),
        }
    }
}

/// Resolves once the registered client has left; unregisters on drop.
struct Gone<'a> {
    watch: &'a ClientWatch,
    key: usize,
}

impl Future for Gone<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut entries = self.watch.entries.borrow_mut();
        match entries.get_mut(self.key).and_then(Option::as_mut) {
            Some(e) if e.gone => Poll::Ready(()),
            Some(e) => {
                e.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.watch.unregister(self.key);
    }
}

/// Pending until a request registers (the ticker's idle wait).
struct IdleUntilRegistered<'a> {
    watch: &'a ClientWatch,
}

impl Future for IdleUntilRegistered<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.watch.live.get() > 0 {
            return Poll::Ready(());
        }
        self.watch.ticker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The watch list wakes exactly the waits whose client left, and frees its slots.
    #[test]
    fn the_watch_list_ends_the_waits_of_departed_clients_only() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pair = || {
            let c = TcpStream::connect(addr).expect("connect");
            let (s, _) = listener.accept().expect("accept");
            (c, s)
        };
        let (leaving, server_a) = pair();
        let (_staying, server_b) = pair();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let watch = Rc::new(ClientWatch::default());
            monoio::spawn(watch.clone().run());
            let never = std::future::pending::<Result<(), &str>>;
            let a = watch.unless_client_leaves(server_a.as_raw_fd(), never(), || "a left");
            let b = watch.unless_client_leaves(server_b.as_raw_fd(), never(), || "b left");
            let closer = async {
                monoio::time::sleep(Duration::from_millis(120)).await;
                drop(leaving);
                Ok::<(), &str>(())
            };
            let timeout = monoio::time::sleep(Duration::from_secs(5));
            let (first, _) = monoio::join!(
                async {
                    monoio::select! {
                        r = a => r,
                        r = b => r,
                        _ = timeout => Err("timed out"),
                    }
                },
                closer
            );
            assert_eq!(first, Err("a left"));
            assert_eq!(watch.live.get(), 0, "slots are freed when the waits end");
            // An operation that finishes first is not disturbed, and frees its slot.
            let done = watch
                .unless_client_leaves(server_b.as_raw_fd(), async { Ok::<u8, &str>(7) }, || {
                    "b left"
                })
                .await;
            assert_eq!(done, Ok(7));
            assert_eq!(watch.live.get(), 0);
        });
    }

    #[test]
    fn fin_and_reset_are_closes_pipelined_bytes_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pair = || {
            let c = TcpStream::connect(addr).expect("connect");
            let (s, _) = listener.accept().expect("accept");
            (c, s)
        };
        let settle = || std::thread::sleep(Duration::from_millis(20));

        let (mut client, server) = pair();
        assert!(!peer_closed(server.as_raw_fd()), "open");
        client
            .write_all(b"GET /next HTTP/1.1\r\n\r\n")
            .expect("pipeline");
        settle();
        assert!(!peer_closed(server.as_raw_fd()), "pipelined bytes");

        client.shutdown(Shutdown::Write).expect("half-close");
        settle();
        assert!(
            peer_closed(server.as_raw_fd()),
            "FIN (with bytes still unread)"
        );

        let (client, server) = pair();
        drop(client);
        settle();
        assert!(peer_closed(server.as_raw_fd()), "close");

        let (client, server) = pair();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(client);
        settle();
        assert!(peer_closed(server.as_raw_fd()), "RST");
    }
}
