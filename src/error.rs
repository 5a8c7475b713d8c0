//! The one error type of the request path and the one place that turns it into an HTTP
//! status and an OpenAI-shaped body (`{"error":{"message","type","code"}}`).

use crate::http::HttpError;

/// Everything that can end a request before or while it is proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something HTTP/1.1 forbids.
    #[error("{0}")]
    BadRequest(#[from] HttpError),
    /// The request target is not an origin-form path we route.
    #[error("invalid request target: {0}")]
    BadTarget(&'static str),
    /// The request path is refused by normalization (escaped slashes, escaped dot
    /// segments, `..` above the root, ...): it could mean another path upstream.
    #[error("invalid request path: {0}")]
    BadPath(crate::http::path::PathError),
    /// A header name holds `_` and `server.underscores_in_headers` is "reject".
    #[error("header names with underscores are not accepted")]
    UnderscoreHeader,
    /// No route matched.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A route matches the path but not the method, or the method is never forwarded
    /// (TRACE, CONNECT).
    #[error("method {method} is not allowed here (allowed: {allow})")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// The `Allow` header value: what the resource accepts.
        allow: String,
    },
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client stopped sending the body before it was complete.
    #[error("client body read timed out")]
    ClientTimeout,
    /// The client closed or reset the connection.
    #[error("client connection failed: {0}")]
    ClientIo(std::io::Error),
    /// The client closed its connection while the gateway waited on the upstream.
    #[error("client closed the connection before the response was complete")]
    ClientClosed,
    /// Could not resolve the upstream's host.
    #[error("could not resolve upstream host {0}")]
    Resolve(String),
    /// Could not connect to any address of the upstream.
    #[error("upstream connect failed: {0}")]
    Connect(std::io::Error),
    /// Connecting took longer than `connect_timeout_ms`.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// The TLS handshake with the upstream failed; the message says whether it was the
    /// upstream's certificate.
    #[error("{0}")]
    UpstreamTls(String),
    /// Reading from or writing to the upstream failed.
    #[error("upstream connection failed: {0}")]
    UpstreamIo(std::io::Error),
    /// The upstream closed before a full response head.
    #[error("upstream closed the connection before responding")]
    UpstreamClosed,
    /// The upstream did not answer within `read_timeout_ms` / `send_timeout_ms`.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream's response is not valid HTTP/1.1.
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(HttpError),
    /// The upstream switched protocols although no upgrade was asked for.
    #[error("upstream answered 101 Switching Protocols to a request without Upgrade")]
    UnexpectedUpgrade,
    /// The client is over a `[limits.NAME]` rate.
    #[error("rate limit `{limit}` exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// Limit name.
        limit: String,
        /// Seconds until a request would be admitted (rounded up).
        retry_after_secs: u64,
        /// What the limit admits at once (`burst + 1`): `x-ratelimit-limit-requests`.
        capacity: u64,
        /// Time until the client's bucket is full again.
        reset: std::time::Duration,
    },
    /// The route has `max_in_flight` requests running.
    #[error("route {0} is at its concurrency limit")]
    RouteBusy(String),
    /// The worker holds `server.body_buffer_bytes` of request bodies already.
    #[error("the gateway is holding too many request bodies; retry shortly")]
    BodyBufferFull,
    /// The provider reported its quota nearly spent; new requests wait for its reset.
    #[error(
        "upstream {upstream} is near its provider rate limit; retry after {retry_after_secs} s"
    )]
    ProviderQuota {
        /// Upstream name.
        upstream: String,
        /// Seconds until the provider's reset.
        retry_after_secs: u64,
    },
    /// Every endpoint of the upstream is ejected by passive health checks.
    #[error("every endpoint of upstream {0} is ejected after repeated failures")]
    NoHealthyEndpoint(String),
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    Draining,
    /// `[auth]` found no key, or an unknown one.
    #[error("{}", match .0 {
        crate::ai::auth::AuthError::Missing => "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
        crate::ai::auth::AuthError::Unknown => "Incorrect API key provided.",
    })]
    Unauthorized(crate::ai::auth::AuthError),
    /// A model-routed request's body is not a JSON object.
    #[error("the request body is not valid JSON: {0}")]
    BadJson(String),
    /// A model-routed request names no model.
    #[error("you must provide a model parameter")]
    MissingModel,
    /// The request has a field the model's provider API cannot be given (named in it).
    #[error("{0}")]
    Untranslatable(String),
    /// The provider's answer could not be translated to OpenAI's shape (not the shape its
    /// API documents, or larger than a translation buffers).
    #[error("the upstream's answer could not be translated: {0}")]
    UntranslatableAnswer(&'static str),
    /// The requested model is not configured (the message lists nothing else).
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    /// The client has spent its `tokens_per_minute`.
    #[error("token limit of client `{client}` exceeded; retry after {retry_after_secs} s")]
    TokensExhausted {
        /// Client name.
        client: String,
        /// Seconds until the budget allows a request again (rounded up).
        retry_after_secs: u64,
        /// The budget, tokens: `x-ratelimit-limit-tokens`.
        capacity: u64,
        /// Time until the budget is whole again.
        reset: std::time::Duration,
    },
    /// The client has spent its `budget_usd_per_day` or `budget_usd_per_month`.
    #[error("client `{client}` has spent its budget of {budget_usd:.2} USD for this {window}; it renews at the start of the next {window} (UTC)")]
    BudgetExhausted {
        /// Client name.
        client: String,
        /// "day" or "month".
        window: &'static str,
        /// The budget, US dollars.
        budget_usd: f64,
        /// Seconds until the window ends.
        retry_after_secs: u64,
    },
    /// A cluster limit could not be checked (the store is unavailable) and
    /// `[cluster] on_unavailable = "deny"`.
    #[error("the shared limit store is unavailable; retry shortly")]
    ClusterUnavailable,
}

impl ProxyError {
    /// HTTP status, OpenAI error `type` and `code` for this error.
    pub fn classify(&self) -> (u16, &'static str, &'static str) {
        match self {
            ProxyError::BadRequest(e) => {
                let code = match e.status() {
                    413 => "request_too_large",
                    414 => "uri_too_long",
                    431 => "headers_too_large",
                    505 => "http_version_not_supported",
                    501 => "not_implemented",
                    _ => "bad_request",
                };
                (e.status(), "invalid_request_error", code)
            }
            ProxyError::BadTarget(_) | ProxyError::BadPath(_) | ProxyError::UnderscoreHeader => {
                (400, "invalid_request_error", "bad_request")
            }
            ProxyError::NoRoute { .. } => (404, "invalid_request_error", "route_not_found"),
            ProxyError::MethodNotAllowed { .. } => {
                (405, "invalid_request_error", "method_not_allowed")
            }
            ProxyError::BodyTooLarge { .. } => (413, "invalid_request_error", "request_too_large"),
            ProxyError::ClientTimeout => (408, "invalid_request_error", "request_timeout"),
            ProxyError::ClientIo(_) => (400, "invalid_request_error", "client_error"),
            // nginx's 499: logged and counted, never sent (nobody is there to read it).
            ProxyError::ClientClosed => (499, "invalid_request_error", "client_closed_request"),
            ProxyError::Resolve(_) | ProxyError::Connect(_) => {
                (502, "upstream_error", "upstream_unreachable")
            }
            ProxyError::UpstreamTls(_) => (502, "upstream_error", "upstream_tls_error"),
            ProxyError::UpstreamIo(_) | ProxyError::UpstreamClosed => {
                (502, "upstream_error", "upstream_connection_failed")
            }
            ProxyError::UpstreamProtocol(_) | ProxyError::UnexpectedUpgrade => {
                (502, "upstream_error", "upstream_bad_response")
            }
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => {
                (504, "upstream_error", "upstream_timeout")
            }
            ProxyError::RateLimited { .. } => (429, "rate_limit_error", "rate_limit_exceeded"),
            ProxyError::RouteBusy(_) => (503, "server_error", "route_at_capacity"),
            ProxyError::BodyBufferFull => (503, "server_error", "body_buffer_full"),
            ProxyError::ProviderQuota { .. } => (429, "rate_limit_error", "upstream_rate_limited"),
            ProxyError::NoHealthyEndpoint(_) => (503, "upstream_error", "no_healthy_upstream"),
            ProxyError::Draining => (503, "server_error", "shutting_down"),
            ProxyError::ClusterUnavailable => (503, "server_error", "cluster_store_unavailable"),
            ProxyError::Unauthorized(_) => (401, "invalid_request_error", "invalid_api_key"),
            ProxyError::BadJson(_) => (400, "invalid_request_error", "invalid_json"),
            ProxyError::MissingModel => (400, "invalid_request_error", "missing_model"),
            ProxyError::Untranslatable(_) => {
                (400, "invalid_request_error", "unsupported_parameter")
            }
            ProxyError::UntranslatableAnswer(_) => (502, "upstream_error", "upstream_bad_response"),
            ProxyError::UnknownModel(_) => (404, "invalid_request_error", "model_not_found"),
            ProxyError::TokensExhausted { .. } => (429, "tokens", "rate_limit_exceeded"),
            // OpenAI's answer when an account's credit is spent; its SDKs raise
            // RateLimitError for it.
            ProxyError::BudgetExhausted { .. } => (429, "insufficient_quota", "insufficient_quota"),
        }
    }

    /// Seconds for a `Retry-After` header, for errors that invite a retry.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ProxyError::ProviderQuota {
                retry_after_secs, ..
            }
            | ProxyError::RateLimited {
                retry_after_secs, ..
            }
            | ProxyError::TokensExhausted {
                retry_after_secs, ..
            }
            | ProxyError::BudgetExhausted {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ProxyError::RouteBusy(_)
            | ProxyError::BodyBufferFull
            | ProxyError::NoHealthyEndpoint(_)
            | ProxyError::Draining
            | ProxyError::ClusterUnavailable => Some(1),
            _ => None,
        }
    }

    /// The `Allow` header a 405 must carry (RFC 9110 §15.5.6).
    pub fn allow(&self) -> Option<&str> {
        match self {
            ProxyError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }

    /// Why a response whose head went out ended early, for metrics and the access log.
    pub fn truncation_reason(&self) -> &'static str {
        match self {
            ProxyError::ClientClosed | ProxyError::ClientIo(_) | ProxyError::ClientTimeout => {
                "client_closed"
            }
            ProxyError::UpstreamClosed => "upstream_closed",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamProtocol(_) => "upstream_malformed",
            _ => "upstream_error",
        }
    }

    /// Whether the client is gone (it closed, or a write to it failed): nothing can be sent,
    /// and the request is recorded as 499.
    pub fn client_gone(&self) -> bool {
        matches!(self, ProxyError::ClientClosed | ProxyError::ClientIo(_))
    }

    /// Whether the error happened before anything reached the upstream, so a retry on a new
    /// connection cannot double a request.
    pub fn is_connect_phase(&self) -> bool {
        matches!(
            self,
            ProxyError::Resolve(_) | ProxyError::Connect(_) | ProxyError::ConnectTimeout
        )
    }
}

/// Writes the OpenAI error body for `message` into `out`.
pub fn openai_error_body(message: &str, kind: &str, code: &str, out: &mut Vec<u8>) {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": code, "param": null }
    });
    // Serializing a json! value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &body);
}
