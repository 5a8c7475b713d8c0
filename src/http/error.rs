//! Error type for the HTTP/1.1 framing layer.
//!
//! Every distinct reason a head or body is refused gets its own variant so the
//! proxy can log the precise cause (request-smuggling probes are worth seeing in
//! logs) while still mapping each one to a single HTTP status via
//! [`HttpError::status`]. Variants carry no payload so the type stays `Copy`-cheap,
//! `Eq`, and free of allocation on the error path.

/// Why a message head or body could not be framed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request line is not `method SP target SP HTTP-version CRLF`.
    #[error("malformed request line")]
    BadRequestLine,
    /// The request target is not in origin, absolute, authority or asterisk form.
    #[error("malformed request target")]
    BadTarget,
    /// The request line is longer than `HeadLimits::max_request_line`.
    #[error("request line too long")]
    UriTooLong,
    /// The head is longer than the configured byte limit.
    #[error("message head too large")]
    HeaderTooLarge,
    /// More header fields than the parser's fixed header array holds.
    #[error("too many header fields")]
    TooManyHeaders,
    /// A header line has an invalid name, an invalid byte in its value, or no colon.
    #[error("malformed header field")]
    BadHeader,
    /// A header line starts with whitespace (obsolete line folding, RFC 9112 §5.2).
    #[error("obsolete line folding in header")]
    ObsFold,
    /// Whitespace between a field name and its colon (RFC 9112 §5.1).
    #[error("whitespace between header name and colon")]
    WhitespaceBeforeColon,
    /// A line ends in LF without the preceding CR.
    #[error("bare LF line terminator")]
    BareLf,
    /// Both Content-Length and Transfer-Encoding are present.
    #[error("both Content-Length and Transfer-Encoding present")]
    ContentLengthAndTransferEncoding,
    /// Several Content-Length values that disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// A Content-Length value that is not a plain non-negative decimal fitting in u64.
    #[error("invalid Content-Length value")]
    BadContentLength,
    /// A transfer coding other than `chunked` that this gateway cannot decode.
    #[error("unsupported transfer coding")]
    UnsupportedTransferEncoding,
    /// Transfer-Encoding present but `chunked` is missing, not final, or repeated.
    #[error("chunked is not the final transfer coding exactly once")]
    ChunkedNotFinal,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: framing is faulty).
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    /// An HTTP/1.1 request without a Host header.
    #[error("missing Host header")]
    MissingHost,
    /// A Host value that is not `host [":" port]` (RFC 9112 §3.2 requires 400).
    #[error("invalid Host header")]
    BadHost,
    /// More than one Host header.
    #[error("multiple Host headers")]
    MultipleHost,
    /// An HTTP version other than 1.0 or 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// An Expect header asking for something other than `100-continue`.
    #[error("unsupported expectation")]
    UnsupportedExpectation,
    /// A response status line that is malformed or has a status below 100.
    #[error("malformed status line")]
    BadStatusLine,
    /// A chunk-size line that is not hex digits followed by extensions and CRLF.
    #[error("malformed chunk size line")]
    BadChunkSize,
    /// A chunk size with more than 15 significant hex digits.
    #[error("chunk size too large")]
    ChunkSizeOverflow,
    /// A chunk-size line (size plus extensions) longer than the decoder's bound.
    #[error("chunk size line too long")]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadChunkTerminator,
    /// A malformed trailer line after the last chunk.
    #[error("malformed trailer section")]
    BadTrailer,
    /// The trailer section is longer than the decoder's bound.
    #[error("trailer section too large")]
    TrailerTooLarge,
    /// The body is larger than the gateway accepts.
    #[error("body too large")]
    BodyTooLarge,
}

impl HttpError {
    /// The status to answer a client whose request caused this error.
    ///
    /// For errors found in an upstream response the proxy should answer 502
    /// instead; only `BadStatusLine` is response-only, so it maps to 502 here.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::UriTooLong => 414,
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders | HttpError::TrailerTooLarge => {
                431
            }
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedVersion => 505,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::UnsupportedExpectation => 417,
            HttpError::BadStatusLine => 502,
            HttpError::BadRequestLine
            | HttpError::BadTarget
            | HttpError::BadHeader
            | HttpError::ObsFold
            | HttpError::WhitespaceBeforeColon
            | HttpError::BareLf
            | HttpError::ContentLengthAndTransferEncoding
            | HttpError::ConflictingContentLength
            | HttpError::BadContentLength
            | HttpError::ChunkedNotFinal
            | HttpError::TransferEncodingInHttp10
            | HttpError::MissingHost
            | HttpError::BadHost
            | HttpError::MultipleHost
            | HttpError::BadChunkSize
            | HttpError::ChunkSizeOverflow
            | HttpError::ChunkLineTooLong
            | HttpError::BadChunkTerminator
            | HttpError::BadTrailer => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(HttpError::UriTooLong.status(), 414);
        assert_eq!(HttpError::HeaderTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
        assert_eq!(HttpError::ObsFold.status(), 400);
        assert_eq!(
            HttpError::ObsFold.to_string(),
            "obsolete line folding in header"
        );
    }
}
