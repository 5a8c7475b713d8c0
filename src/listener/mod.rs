//! The client side of a connection: the accept loops of a worker's listeners and
//! [`ClientStream`], what the proxy reads requests from and writes responses to. One enum over
//! every kind of accepted connection, so the proxy's code is written once and a branch per
//! I/O call is the whole cost of supporting more than one kind.
//!
//! [`accept_plain`] serves `server.listen`; [`tls::accept_tls`] serves `server.tls.listen`
//! (handshake under a deadline, then the same proxy loop). Both count against the worker's
//! share of `max_connections` and both stop when the main thread shuts the listening sockets
//! down at SIGTERM.

pub mod tls;

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::{TcpListener, TcpStream};
use monoio::BufResult;

use crate::worker::Worker;

/// An accepted client connection.
pub enum ClientStream {
    /// A connection on the plain HTTP listener (`server.listen`).
    Plain(TcpStream),
    /// A connection on the TLS listener (`server.tls.listen`), handshake done. Boxed: it
    /// carries rustls' connection state and buffers.
    Tls(
        Box<monoio_rustls::ServerTlsStream<TcpStream>>,
        /// The TCP socket under it (rustls' stream does not expose it).
        std::os::fd::RawFd,
    ),
}

impl ClientStream {
    /// Disables Nagle: responses are written whole or as stream chunks that must not wait.
    /// TLS sockets had it set before their handshake (the TCP stream is inside rustls' now).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.set_nodelay(on),
            ClientStream::Tls(..) => Ok(()),
        }
    }

    /// The client's TCP socket, for readiness checks that read nothing.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            ClientStream::Plain(s) => s.as_raw_fd(),
            ClientStream::Tls(_, fd) => *fd,
        }
    }

    /// Whether the client connected over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(..))
    }
}

/// A client that closes without `close_notify` is read as EOF, like a plain close: request
/// framing already tells a complete request from a truncated one.
fn tls_eof<T>(res: BufResult<usize, T>) -> BufResult<usize, T> {
    match res {
        (Err(e), b) if e.kind() == io::ErrorKind::UnexpectedEof => (Ok(0), b),
        other => other,
    }
}

/// Accepts plain connections on `listener` until the worker drains (the main thread shuts
/// the socket down, which fails the pending accept), spawning one proxy task each.
pub async fn accept_plain(w: Rc<Worker>, listener: TcpListener) {
    let mut failures = AcceptFailures::new(w.id, "plain");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(guard) = w.admit() else {
                    drop(stream);
                    continue;
                };
                // No `async move` wrapper: it would hold the serving future twice (see
                // `task::guarded`), and an idle keep-alive connection is this task alone.
                let serve =
                    crate::proxy::serve_connection(w.clone(), ClientStream::Plain(stream), peer);
                monoio::spawn(crate::task::guarded(
                    w.metrics.clone(),
                    w.id,
                    peer,
                    serve,
                    guard,
                ));
            }
            Err(e) => {
                if w.shared.draining.load(Ordering::Relaxed) {
                    break;
                }
                failures.handle(&w, &listener, &e).await;
            }
        }
    }
}

/// What an accept loop does about a failed accept (see [`crate::fds`]): out of descriptors,
/// refuse the waiting clients at once through the spare descriptor; otherwise, or without a
/// spare, back off briefly instead of spinning on the error. Logged at most once a second.
pub(crate) struct AcceptFailures {
    spare: crate::fds::Spare,
    errors: crate::fds::AcceptErrors,
}

/// Waiting clients refused per failed accept at most, so the loop gets back to its runtime.
const MAX_REFUSED_AT_ONCE: usize = 256;

impl AcceptFailures {
    /// For worker `worker`'s listener named `listener` in logs (`plain`, `tls`).
    pub(crate) fn new(worker: usize, listener: &'static str) -> Self {
        AcceptFailures {
            spare: crate::fds::Spare::new(),
            errors: crate::fds::AcceptErrors::new(format!("w{worker}/{listener}")),
        }
    }

    /// Handles one failed accept on `listener`.
    pub(crate) async fn handle(&mut self, w: &Worker, listener: &TcpListener, e: &io::Error) {
        use std::os::fd::AsRawFd;
        let refused = if crate::fds::out_of_descriptors(e) {
            self.spare
                .refuse_waiting(listener.as_raw_fd(), MAX_REFUSED_AT_ONCE)
        } else {
            None
        };
        self.errors.note(e, refused.unwrap_or(0));
        match refused {
            Some(n) if n > 0 => {
                w.metrics
                    .refused_connections
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            _ => monoio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl AsyncReadRent for ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.read(buf).await,
            ClientStream::Tls(s, _) => tls_eof(s.read(buf).await),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.readv(buf).await,
            ClientStream::Tls(s, _) => tls_eof(s.readv(buf).await),
        }
    }
}

impl AsyncWriteRent for ClientStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.write(buf).await,
            ClientStream::Tls(s, _) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.writev(buf).await,
            ClientStream::Tls(s, _) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush().await,
            ClientStream::Tls(s, _) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.shutdown().await,
            ClientStream::Tls(s, _) => s.shutdown().await,
        }
    }
}
