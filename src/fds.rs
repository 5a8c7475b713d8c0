//! The descriptor budget: `RLIMIT_NOFILE` raised at start-up and compared with what the
//! config can open, and what an accept loop does when the process is out of descriptors.
//!
//! At `EMFILE`/`ENFILE` the kernel keeps completing handshakes into the listen backlog, so a
//! gateway that merely backs off leaves new clients hanging there until their own timeout
//! (and logs the error on every retry). Each accept loop instead holds one spare descriptor
//! ([`Spare`], `/dev/null`): on `EMFILE` it closes the spare, accepts the waiting clients
//! and closes them at once (they see a reset or EOF now, and retry elsewhere — another pod
//! behind the Service), then re-opens the spare. This is libuv's and libev's answer (nginx
//! only stops accepting for 500 ms and logs each failure). Failures are logged at most once a
//! second per loop, with the count of the ones not logged ([`AcceptErrors`]).

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Descriptors besides clients and pools: listeners, the runtime's ring or epoll, eventfds,
/// the watcher, the admin listener, logs, and a spare per accept loop.
const BASE_SLACK: u64 = 64;
/// The same per worker.
const SLACK_PER_WORKER: u64 = 8;

/// What the config may hold open at once: every client connection, every worker's idle
/// upstream pools, and slack. (In-flight requests hold an upstream connection each beyond
/// the idle pools; that is not counted, as not every client is mid-request.)
pub fn descriptors_needed(cfg: &Config) -> u64 {
    let workers = cfg.server.workers.max(1) as u64;
    let pools: u64 = cfg.upstreams.iter().map(|u| u.keepalive as u64).sum();
    cfg.server.max_connections as u64 + pools * workers + BASE_SLACK + SLACK_PER_WORKER * workers
}

/// `RLIMIT_NOFILE` as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (an unprivileged process may), then logs
/// once, with numbers, if it is still below what `cfg` needs. Returns the soft limit.
pub fn raise_and_check(cfg: &Config) -> Option<u64> {
    let (soft, hard) = match nofile_limit() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return None;
        }
    };
    let mut now = soft;
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            now = hard;
            tracing::debug!(from = soft, to = hard, "raised the soft descriptor limit");
        } else {
            let e = io::Error::last_os_error();
            tracing::warn!(soft, hard, error = %e, "cannot raise the soft descriptor limit");
        }
    }
    let need = descriptors_needed(cfg);
    if now < need {
        let workers = cfg.server.workers.max(1);
        let pools: usize = cfg.upstreams.iter().map(|u| u.keepalive).sum();
        tracing::warn!(
            limit = now,
            hard,
            needed = need,
            max_connections = cfg.server.max_connections,
            upstream_keepalive = pools,
            workers,
            "RLIMIT_NOFILE is below what max_connections plus the upstream pools (keepalive x workers) and slack can open; past it new clients are refused (raise the limit or lower max_connections)"
        );
    }
    Some(now)
}

/// Whether an accept failed for want of descriptors (per process or system-wide).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// One descriptor held back so that, at `EMFILE`, the accept loop can still accept the
/// clients waiting in the backlog and close them at once.
#[derive(Debug)]
pub struct Spare(Option<OwnedFd>);

impl Spare {
    /// Opens the spare (none when even that fails; the loop then only backs off).
    pub fn new() -> Spare {
        let mut s = Spare(None);
        s.reopen();
        s
    }

    /// Whether the spare is held.
    pub fn held(&self) -> bool {
        self.0.is_some()
    }

    fn reopen(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        }
    }

    /// Closes the spare, accepts and closes up to `max` clients waiting on `listener`, then
    /// re-opens the spare. Returns how many were refused; `None` without a spare.
    pub fn refuse_waiting(&mut self, listener: RawFd, max: usize) -> Option<usize> {
        drop(self.0.take()?);
        let n = refuse_backlog(listener, max);
        self.reopen();
        Some(n)
    }
}

impl Default for Spare {
    fn default() -> Self {
        Spare::new()
    }
}

/// Accepts (non-blocking, whatever the listener's mode: io_uring listeners are blocking)
/// and closes at once up to `max` waiting connections; stops at an empty backlog or error.
fn refuse_backlog(listener: RawFd, max: usize) -> usize {
    // SAFETY: fcntl on a descriptor the caller's listener owns; flags restored below. The
    // worker owns the listener alone and no accept of its is in flight here.
    let flags = unsafe { libc::fcntl(listener, libc::F_GETFL) };
    if flags < 0 {
        return 0;
    }
    let nonblocking = flags & libc::O_NONBLOCK != 0;
    if !nonblocking {
        // SAFETY: as above.
        unsafe { libc::fcntl(listener, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
    let mut n = 0;
    while n < max {
        // SAFETY: accept4 with null address pointers; the new descriptor is ours to close.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            break;
        }
        // Reset rather than FIN: the client learns at once that this connection is refused,
        // even with a request already sent.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt and close on the descriptor accept4 just gave us.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::close(fd);
        }
        n += 1;
    }
    if !nonblocking {
        // SAFETY: restores the flags read above.
        unsafe { libc::fcntl(listener, libc::F_SETFL, flags) };
    }
    n
}

/// Accept failures of one accept loop, logged at most once a second with the count of
/// those not logged since.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: String,
    last_log: Option<Instant>,
    suppressed: u64,
    refused: u64,
}

impl AcceptErrors {
    /// For the accept loop named `listener` in logs (`w0/plain`, `admin`).
    pub fn new(listener: String) -> Self {
        AcceptErrors {
            listener,
            last_log: None,
            suppressed: 0,
            refused: 0,
        }
    }

    /// Notes a failed accept (and how many waiting clients were refused because of it);
    /// logs when a second has passed since the last line.
    pub fn note(&mut self, e: &io::Error, refused: usize) {
        self.refused += refused as u64;
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        let limit = nofile_limit().map_or(0, |l| l.0);
        tracing::warn!(
            listener = %self.listener,
            error = %e,
            suppressed = self.suppressed,
            refused = self.refused,
            nofile_limit = limit,
            "accept failed (at most one line a second; `suppressed` failures since the last line, `refused` waiting clients closed at once for want of descriptors)"
        );
        self.last_log = Some(now);
        self.suppressed = 0;
        self.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn errors_are_logged_at_most_once_a_second_and_counted() {
        let mut a = AcceptErrors::new("w0/plain".into());
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        for _ in 0..100 {
            a.note(&e, 1);
        }
        assert!(a.last_log.is_some());
        assert_eq!(a.suppressed, 99);
        assert_eq!(a.refused, 99);
        assert!(out_of_descriptors(&e));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn the_spare_lets_waiting_clients_be_refused_at_once() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut spare = Spare::new();
        assert!(spare.held());
        // The listener is blocking (as io_uring ones are): this must not hang.
        assert_eq!(spare.refuse_waiting(l.as_raw_fd(), 10), Some(3));
        assert!(spare.held(), "re-opened");
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => {}
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
                Ok(_) => panic!("no data expected"),
            }
        }
        // Flags restored: the listener is still blocking.
        // SAFETY: reading flags of our own listener.
        let flags = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
}
