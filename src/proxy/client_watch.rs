//! Watching the client while the gateway waits on the upstream: a client that leaves stops
//! the spend. Without this a departed client is noticed only by the next write to it, and
//! an LLM provider keeps generating (and billing) for minutes while nobody waits.
//!
//! While an upstream wait runs (its response head, its next body bytes, a retry's backoff),
//! a check every [`CHECK_EVERY`] asks the kernel whether the client's side of the socket was
//! shut: `poll(POLLRDHUP)` with a zero timeout on the raw socket, which reads nothing. So the
//! watch costs a timer per wait and one `poll` per 50 ms of waiting — never a syscall per
//! chunk — and works the same under io_uring and epoll, plain or TLS.
//!
//! How a half-close and pipelining are told apart: `POLLRDHUP`/`POLLHUP`/`POLLERR` mean the
//! client sent FIN or RST; pipelined request bytes only make the socket readable (`POLLIN`),
//! which is ignored (they stay in the socket for the next request). A client that sends FIN
//! after its request (a half-close) is taken as gone, as nginx does with
//! `proxy_ignore_client_abort off`: it can no longer be told apart from one that closed,
//! and an HTTP/1.1 client that wants its answer keeps its side open.

use std::future::Future;
use std::os::fd::RawFd;
use std::time::Duration;

/// How often a waiting request checks its client.
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
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Resolves once the client of `fd` is gone.
async fn gone(fd: RawFd) {
    loop {
        monoio::time::sleep(CHECK_EVERY).await;
        if peer_closed(fd) {
            return;
        }
    }
}

/// Runs `op` unless the client of `fd` leaves first; then `op` is dropped — the caller must
/// not reuse whatever `op` was reading (its upstream connection is closed, never pooled) —
/// and the result is `left()`.
pub async fn unless_client_leaves<T, E>(
    fd: RawFd,
    op: impl Future<Output = Result<T, E>>,
    left: impl FnOnce() -> E,
) -> Result<T, E> {
    monoio::select! {
        r = op => r,
        _ = gone(fd) => Err(left()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

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
