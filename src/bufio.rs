//! Owned-buffer I/O helpers over monoio's rent-style traits: a read buffer that parsers look
//! into and consume from, and writes of whole buffers. Every buffer has a fixed bound so a
//! slow or hostile peer cannot make one grow.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// Bytes read from a socket but not yet consumed: `buf[pos..]`.
pub struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    max: usize,
}

/// Why a read with a deadline ended without data.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection.
    Eof,
    /// The deadline passed; the connection must be closed (a cancelled io_uring read may
    /// have lost bytes).
    Timeout,
    /// The buffer is at its bound and nothing was consumed.
    Full,
    /// The socket failed.
    Io(io::Error),
}

impl ReadBuf {
    /// A buffer starting at `initial` bytes that may grow to `max`.
    pub fn new(initial: usize, max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(initial.min(max)),
            pos: 0,
            max,
        }
    }

    /// A buffer reusing `buf`'s allocation (its contents are dropped), bounded by `max`.
    pub fn from_vec(mut buf: Vec<u8>, max: usize) -> Self {
        buf.clear();
        Self { buf, pos: 0, max }
    }

    /// The allocation back, for reuse.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// The allocation's size: zero while the connection holds no buffer.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes the allocation out (for the worker's spares), leaving an empty buffer with
    /// none. Only for an empty buffer: unconsumed bytes would be lost.
    pub fn take_vec(&mut self) -> Vec<u8> {
        self.pos = 0;
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        b
    }

    /// Reads into `buf`'s allocation from now on (an empty buffer only; its previous
    /// allocation, if any, is dropped).
    pub fn adopt(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.buf = buf;
        self.pos = 0;
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Number of unconsumed bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Sets the bound on this buffer (heads and bodies have different ones).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Reads more bytes from `io`, waiting at most `timeout`. Returns the count read.
    pub async fn fill<S: AsyncReadRent>(
        &mut self,
        io: &mut S,
        timeout: Duration,
    ) -> Result<usize, ReadError> {
        if self.pos > 0 && (self.buf.len() == self.buf.capacity() || self.pos >= self.buf.len() / 2)
        {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() >= self.max {
            return Err(ReadError::Full);
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            let want = (self.buf.capacity() * 2).max(4096).min(self.max);
            self.buf.reserve_exact(want - self.buf.len());
        }
        let len = self.buf.len();
        let cap = self.buf.capacity().min(len + (self.max - len));
        let buf = std::mem::take(&mut self.buf);
        let read = io.read(buf.slice_mut(len..cap));
        match monoio::time::timeout(timeout, read).await {
            Err(_) => Err(ReadError::Timeout),
            Ok((res, slice)) => {
                self.buf = slice.into_inner();
                match res {
                    Ok(0) => Err(ReadError::Eof),
                    Ok(n) => Ok(n),
                    Err(e) => Err(ReadError::Io(e)),
                }
            }
        }
    }

    /// Appends bytes as if read (unit tests and fuzz targets of the parsers that consume
    /// from a `ReadBuf`; the proxy itself only fills from sockets).
    pub fn extend_for_test(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes up to `n` unconsumed bytes out as a slice range of `data()` starting at 0.
    pub fn available(&self, n: u64) -> usize {
        (self.len() as u64).min(n) as usize
    }
}

/// Writes all of `buf` within `timeout`; returns the buffer for reuse.
pub async fn write_all<S: AsyncWriteRent, B: IoBuf + 'static>(
    io: &mut S,
    buf: B,
    timeout: Duration,
) -> (io::Result<()>, Option<B>) {
    match monoio::time::timeout(timeout, io.write_all(buf)).await {
        Err(_) => (
            Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
            None,
        ),
        Ok((res, buf)) => (res.map(|_| ()), Some(buf)),
    }
}

/// Whether an idle pooled socket is still usable: no EOF, no unexpected bytes waiting.
/// A non-blocking peek, so a connection the upstream closed while idle is never handed to a
/// request.
pub fn idle_socket_is_alive(fd: std::os::fd::RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv into a valid one-byte buffer on a descriptor we own; MSG_PEEK leaves the
    // socket's data untouched and MSG_DONTWAIT never blocks the worker.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
    } else {
        false
    }
}
