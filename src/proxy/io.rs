//! Socket helpers every stage shares: writes that hand their owned buffer back for reuse
//! (monoio's I/O takes buffers by value), and the mapping of read/write errors to the side
//! that failed — a client's broken socket is never an upstream failure, nor the reverse.

use std::time::Duration;

use crate::bufio::{self, ReadError};
use crate::error::ProxyError;
use crate::http;
use crate::listener::ClientStream;
use crate::upstream::UpstreamStream;

/// A failed read from the client.
pub fn client_read_err(e: ReadError) -> ProxyError {
    match e {
        ReadError::Timeout => ProxyError::ClientTimeout,
        ReadError::Eof => ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
        ReadError::Full => ProxyError::ClientIo(std::io::Error::other("client buffer full")),
        ReadError::Io(e) => ProxyError::ClientIo(e),
    }
}

/// A failed read from the upstream.
pub fn upstream_read_err(e: ReadError) -> ProxyError {
    match e {
        ReadError::Timeout => ProxyError::UpstreamTimeout,
        ReadError::Eof => ProxyError::UpstreamClosed,
        ReadError::Full => ProxyError::UpstreamProtocol(http::HttpError::HeaderTooLarge),
        ReadError::Io(e) => ProxyError::UpstreamIo(e),
    }
}

/// A failed write to the upstream.
pub fn upstream_write_err(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamIo(e)
    }
}

/// Sends `buf` to the upstream, handing the buffer back for reuse.
pub async fn send_upstream(
    io: &mut UpstreamStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let (res, back) = bufio::write_all(io, std::mem::take(buf), timeout).await;
    if let Some(b) = back {
        *buf = b;
    }
    res.map_err(upstream_write_err)
}

/// Sends `buf` to the client, handing the buffer back for reuse.
pub async fn send_client(
    io: &mut ClientStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    let (res, back) = bufio::write_all(io, std::mem::take(buf), timeout).await;
    if let Some(b) = back {
        *buf = b;
    }
    res.map_err(ProxyError::ClientIo)
}

/// Sends the interim `100 Continue` a client with `Expect: 100-continue` waits for.
pub async fn send_continue(
    client: &mut ClientStream,
    scratch: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ProxyError> {
    scratch.clear();
    scratch.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    send_client(client, scratch, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_side_that_failed() {
        assert!(matches!(
            client_read_err(ReadError::Timeout),
            ProxyError::ClientTimeout
        ));
        assert!(matches!(
            client_read_err(ReadError::Eof),
            ProxyError::ClientIo(_)
        ));
        assert!(matches!(
            upstream_read_err(ReadError::Eof),
            ProxyError::UpstreamClosed
        ));
        assert!(matches!(
            upstream_read_err(ReadError::Timeout),
            ProxyError::UpstreamTimeout
        ));
        assert!(matches!(
            upstream_read_err(ReadError::Full),
            ProxyError::UpstreamProtocol(_)
        ));
        assert!(matches!(
            upstream_write_err(std::io::ErrorKind::TimedOut.into()),
            ProxyError::UpstreamTimeout
        ));
        assert!(matches!(
            upstream_write_err(std::io::ErrorKind::BrokenPipe.into()),
            ProxyError::UpstreamIo(_)
        ));
    }
}
