//! The one failure type of the request path: the error and how far the exchange had got,
//! which decides everything that may follow — an error response, another try, or only
//! cutting the connection. Modelled on Pingora's `Error` carrying its `RetryType`.

use crate::config::RetryOn;
use crate::error::ProxyError;

/// Why a request ended without a complete response, and what that still allows.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong (it alone decides the status, in [`ProxyError::classify`]).
    pub error: ProxyError,
    /// Where it went wrong.
    pub phase: Phase,
}

/// How far the exchange had got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before or beside the upstream exchange, on the gateway's or the client's side
    /// (admission, routing, reading the client's body): answered with the error's status
    /// while the client still waits, never retried.
    Request,
    /// The upstream failed before its response head was accepted.
    Upstream(UpstreamFault),
    /// The response head already went to the client: the only honest signal left is to cut
    /// the connection.
    Response,
}

/// What an upstream failure before the response head means for another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamFault {
    /// A pooled connection failed before any response byte arrived: the upstream probably
    /// closed it while idle, so the request never reached it.
    pub stale_pooled: bool,
    /// The streamed request body was (partly) sent: it is gone and cannot be sent again.
    pub body_spent: bool,
}

impl Failure {
    /// A failure answered with its status (admission, routing, the client's body).
    pub fn request(error: ProxyError) -> Self {
        Self {
            error,
            phase: Phase::Request,
        }
    }

    /// An upstream failure before its response head, with nothing spent.
    pub fn upstream(error: ProxyError) -> Self {
        Self::upstream_with(error, UpstreamFault::default())
    }

    /// An upstream failure before its response head.
    pub fn upstream_with(error: ProxyError, fault: UpstreamFault) -> Self {
        Self {
            error,
            phase: Phase::Upstream(fault),
        }
    }

    /// A failure after the response head went to the client.
    pub fn response(error: ProxyError) -> Self {
        Self {
            error,
            phase: Phase::Response,
        }
    }

    /// Whether the response head already reached the client.
    pub fn response_started(&self) -> bool {
        self.phase == Phase::Response
    }

    /// The `retry_on` condition this failure falls under.
    pub fn retry_condition(&self) -> RetryOn {
        match self.error {
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => RetryOn::Timeout,
            _ => RetryOn::Error,
        }
    }
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure::request(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_phases() {
        let cases: [(Failure, RetryOn, bool); 5] = [
            (
                Failure::upstream(ProxyError::ConnectTimeout),
                RetryOn::Timeout,
                false,
            ),
            (
                Failure::upstream(ProxyError::UpstreamTimeout),
                RetryOn::Timeout,
                false,
            ),
            (
                Failure::upstream(ProxyError::UpstreamClosed),
                RetryOn::Error,
                false,
            ),
            (
                Failure::response(ProxyError::UpstreamClosed),
                RetryOn::Error,
                true,
            ),
            (ProxyError::MissingModel.into(), RetryOn::Error, false),
        ];
        for (f, cond, started) in cases {
            assert_eq!(f.retry_condition(), cond, "{f:?}");
            assert_eq!(f.response_started(), started, "{f:?}");
        }
        assert_eq!(
            Failure::from(ProxyError::MissingModel).phase,
            Phase::Request
        );
    }
}
