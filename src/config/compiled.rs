//! The validated, compiled config the workers read: durations instead of millisecond
//! integers, parsed addresses and CIDRs, a route table ready to match, upstreams with their
//! endpoints and keys. Built once per reload, off the request path, then shared read-only.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::router::RouteTable;

/// One compiled config generation.
#[derive(Debug)]
pub struct Config {
    /// Client listener settings.
    pub server: ServerSettings,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Watcher timings.
    pub reload: ReloadSettings,
    /// Upstreams, indexed by [`UpstreamId`].
    pub upstreams: Vec<Arc<Upstream>>,
    /// Rate limits, indexed by [`LimitId`].
    pub limits: Vec<Arc<LimitSpec>>,
    /// Routes ready to match.
    pub routes: RouteTable,
    /// `[models]`: routing by model name, fallbacks, prices.
    pub models: super::ai::Models,
    /// `[auth]`: client keys, when configured.
    pub auth: Option<super::ai::Auth>,
    /// `[cache]`: response cache bounds.
    pub cache: super::ai::CacheSettings,
    /// `[cluster]`: the shared store of cluster-scoped limits, when configured.
    pub cluster: Option<Arc<ClusterSettings>>,
    /// Every file outside `gateway.toml` this generation was compiled from (`api_key_file`,
    /// `ca_file`, the `[auth]` keys file, `[server.tls]` certificates and keys). The watcher
    /// watches their directories too and re-applies the config when any of them changes, so
    /// a rotated Secret takes effect without a ConfigMap change. A new input read at compile
    /// time belongs here: collect its path in `validate_and_compile`.
    pub watched_files: Vec<std::path::PathBuf>,
}

impl Config {
    /// Takes over the runtime state that must outlive a reload from `old`, the generation
    /// this one replaces: a route's in-flight count (same name, both with `max_in_flight`;
    /// the requests still running on `old` keep counting against the new limit) and an
    /// upstream's provider-quota shedding (same name and URL: a provider that said "out of
    /// quota until T" is still shed after an unrelated reload or a key rotation).
    ///
    /// Called on a freshly compiled config, before it is published: its upstreams are not
    /// shared yet, so `Arc::get_mut` cannot fail.
    pub fn inherit_runtime_state(&mut self, old: &Config) {
        for route in self.routes.iter_mut() {
            if route.max_in_flight.is_none() {
                continue;
            }
            if let Some(prev) = old
                .routes
                .iter()
                .find(|r| r.name == route.name && r.max_in_flight.is_some())
            {
                route.in_flight = prev.in_flight.clone();
            }
        }
        for up in &mut self.upstreams {
            let Some(up) = Arc::get_mut(up) else {
                continue;
            };
            if let Some(prev) = old.upstreams.iter().find(|p| p.same_provider(up)) {
                up.shed_until = prev.shed_until.clone();
            }
        }
    }
}

/// `[server]`, compiled.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Client listener address.
    pub listen: SocketAddr,
    /// Worker threads (already resolved from 0 to the core count).
    pub workers: usize,
    /// Connections per process beyond which new ones are refused.
    pub max_connections: usize,
    /// Head limit, bytes.
    pub max_header_bytes: usize,
    /// Request line limit, bytes.
    pub max_request_line_bytes: usize,
    /// Body limit, bytes.
    pub max_body_bytes: u64,
    /// Slowloris cut-off.
    pub header_read_timeout: Duration,
    /// Idle keep-alive client connection lifetime.
    pub idle_timeout: Duration,
    /// Drain time after SIGTERM.
    pub shutdown_grace: Duration,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Bodies up to this size are kept for retries.
    pub max_retry_body_bytes: u64,
    /// Bytes of request bodies held in memory one worker may have at once.
    pub body_buffer_bytes: u64,
    /// Total time to receive a body read whole.
    pub body_read_timeout: Duration,
    /// What happens to request header names with `_` (`server.underscores_in_headers`).
    pub underscores_in_headers: UnderscoreHeaders,
    /// A config without routes is accepted (`server.allow_no_routes`).
    pub allow_no_routes: bool,
    /// `Server` header of gateway-made answers (`server.server_header`).
    pub server_header: Option<String>,
    /// `[server.tls]`: the HTTPS listener and its certificates, when configured.
    pub tls: Option<super::tls::ServerTls>,
}

/// `server.underscores_in_headers`: request header names containing `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    /// Not forwarded upstream, and not read by the gateway (nginx's default).
    #[default]
    Drop,
    /// Forwarded like any header.
    Allow,
    /// The request is answered 400.
    Reject,
}

impl ServerSettings {
    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// `[reload]`, compiled.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    /// Quiet time after an event.
    pub debounce: Duration,
    /// Fallback re-read interval.
    pub poll_interval: Duration,
}

/// Index of an upstream in [`Config::upstreams`].
pub type UpstreamId = usize;
/// Index of a limit in [`Config::limits`].
pub type LimitId = usize;

/// Scheme of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS (rustls).
    Https,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    /// Each endpoint in turn.
    RoundRobin,
    /// Fewest in-flight requests on this worker.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency.
    P2cEwma,
}

/// A `host:port` peer of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP literal as written.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Upstream {
    /// Whether `other` is the same provider account's endpoint set: same name, scheme, host
    /// and path (keys, timeouts and pools may differ).
    pub fn same_provider(&self, other: &Upstream) -> bool {
        self.name == other.name
            && self.scheme == other.scheme
            && self.host_header == other.host_header
            && self.base_path == other.base_path
            && self.endpoints == other.endpoints
    }
}

impl Endpoint {
    /// `host:port`, with IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// Scheme from the URL.
    pub scheme: Scheme,
    /// `Host` header value sent upstream (the URL's authority, port omitted when default).
    pub host_header: String,
    /// The URL's path without a trailing slash, prepended to request paths ("" for none).
    pub base_path: String,
    /// Peers: the URL's own first, then `endpoints`.
    pub endpoints: Vec<Endpoint>,
    /// Resolved addresses of each endpoint, same order; refreshed off the worker threads by
    /// [`crate::upstream::dns`]. IP literals are filled at compile time.
    pub addrs: Vec<arc_swap::ArcSwap<Vec<SocketAddr>>>,
    /// Policy over `endpoints`.
    pub balance: Balance,
    /// Idle connections kept per worker.
    pub keepalive: usize,
    /// Idle lifetime of a pooled connection.
    pub keepalive_timeout: Duration,
    /// Requests after which a connection is retired.
    pub keepalive_requests: u64,
    /// Connect timeout when the route sets none.
    pub connect_timeout: Duration,
    /// The wire format the upstream speaks.
    pub api: Api,
    /// `max_tokens` for an Anthropic request that set none.
    pub default_max_tokens: u32,
    /// The provider key, replacing the client's: the `Authorization` value (`Bearer ...`)
    /// for OpenAI upstreams, the bare key for Anthropic (sent as `x-api-key`) and Gemini
    /// (sent as `x-goog-api-key`) ones.
    /// Never logged: [`Secret`]'s Debug prints a placeholder.
    pub authorization: Option<Secret>,
    /// TLS settings (one shared rustls client config) for `https://` upstreams; None for
    /// plain ones.
    pub tls: Option<crate::upstream::tls::UpstreamTls>,
    /// Consecutive failures that eject an endpoint (0: never).
    pub max_fails: u32,
    /// Base ejection time.
    pub fail_timeout: Duration,
    /// Provider remaining-requests floor under which new requests are shed.
    pub shed_below_remaining_requests: Option<u64>,
    /// Provider remaining-tokens floor under which new requests are shed.
    pub shed_below_remaining_tokens: Option<u64>,
    /// Until when (ns on [`crate::clock::monotonic_nanos`]'s clock) new requests are shed
    /// because the provider said it is nearly out of quota; 0 when not shedding. Shared by
    /// all workers: written only when a provider's headers cross the floor. A reload hands
    /// it to the next generation's upstream of the same name and URL.
    pub shed_until: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Hash of everything that defines this upstream; a reload keeps the pools of upstreams
    /// whose fingerprint did not change.
    pub fingerprint: u64,
}

/// The wire format an upstream speaks (`api` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// OpenAI-compatible: requests and answers pass through as they are.
    #[default]
    OpenAi,
    /// The Anthropic Messages API: chat completions are translated both ways.
    Anthropic,
    /// Google's Gemini API (`generateContent`): chat completions are translated both ways.
    Gemini,
}

/// A secret value whose Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a rate limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The real client IP (X-Forwarded-For believed only from trusted proxies).
    ClientIp,
    /// The client's API key (Authorization bearer token).
    ApiKey,
    /// A named request header (lowercase).
    Header(String),
    /// The authenticated client's name (`[auth]`); the client IP when there is none.
    Client,
}

/// A compiled `[limits.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    /// Name from the config.
    pub name: String,
    /// Sustained rate per key.
    pub rate_per_second: f64,
    /// Requests above the rate allowed at once.
    pub burst: u32,
    /// What the limit is keyed by.
    pub key: LimitKey,
    /// Excess within burst passes at once (true) or waits to the rate (false).
    pub nodelay: bool,
    /// Where the limit's state lives.
    pub scope: LimitScope,
}

/// Where a limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// In this process (shared by its workers).
    Local,
    /// In the `[cluster]` store; while it is unavailable, in this process at the limit
    /// divided by `replicas` (or refused, with `on_unavailable = "deny"`).
    Cluster {
        /// The divisor of the local fallback.
        replicas: u32,
    },
}

/// What a cluster limit does while the store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// The per-pod limiter at the limit divided by the replica count.
    Local,
    /// 503: nothing is admitted without the shared state.
    Deny,
}

/// A compiled `[cluster]`.
#[derive(Debug)]
pub struct ClusterSettings {
    /// Redis host (a name is resolved off the workers, like upstream hosts).
    pub host: String,
    /// Redis port.
    pub port: u16,
    /// Resolved addresses of `host` (one entry, the address itself, for an IP literal).
    pub addrs: arc_swap::ArcSwap<Vec<SocketAddr>>,
    /// ACL user name from the URL, if any.
    pub username: Option<String>,
    /// Logical database (the URL's path).
    pub db: u32,
    /// Password from `password_file`.
    pub password: Option<Secret>,
    /// TLS (`rediss://`): the rustls client config (`ca_file` or the webpki roots, no ALPN)
    /// and the host as SNI name.
    pub tls: Option<crate::upstream::tls::UpstreamTls>,
    /// Longest wait for one call on the request path.
    pub timeout: Duration,
    /// Fallback while the store is unavailable.
    pub on_unavailable: OnUnavailable,
    /// Replica count the local fallback divides by.
    pub replicas: u32,
    /// Consecutive failures that open a worker's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open.
    pub breaker_open: Duration,
    /// Completion tokens reserved when a request names no maximum.
    pub default_max_tokens: u64,
    /// Digest of what the connection depends on (address, user, db, password, TLS and its
    /// CA file's bytes): a reload
    /// that changes it makes every worker reconnect.
    pub fingerprint: u64,
}

/// Retry conditions, as `proxy_next_upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Connect or I/O error before a response.
    Error,
    /// Timeout before a response.
    Timeout,
    /// Upstream answered 502.
    Http502,
    /// Upstream answered 503.
    Http503,
    /// Upstream answered 504.
    Http504,
    /// Upstream answered 429.
    Http429,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name, for metrics and logs.
    pub name: String,
    /// What the path must be.
    pub matcher: PathMatch,
    /// Uppercase methods accepted; empty accepts `router::DEFAULT_METHODS` (GET, HEAD, POST,
    /// PUT, PATCH, DELETE, OPTIONS). TRACE and CONNECT are never accepted.
    pub methods: Vec<String>,
    /// Lowercase host (no port) required, if any.
    pub host: Option<String>,
    /// Replacement for the matched part of the path.
    pub rewrite: Option<String>,
    /// Upstream the route sends to; None when it is picked by model (`route_by_model`).
    pub upstream: Option<UpstreamId>,
    /// The upstream is chosen by the body's `"model"`; tokens and cost are counted.
    pub route_by_model: bool,
    /// With `[auth]`: requests need a client key.
    pub auth: bool,
    /// Non-streaming responses are cached this long (None: no caching).
    pub cache_ttl: Option<Duration>,
    /// Cached answers are shared between clients (the key leaves their identity out).
    pub cache_shared: bool,
    /// Rate limit applied, if any.
    pub limit: Option<LimitId>,
    /// Connect timeout, when the route sets one (else the upstream's).
    pub connect_timeout: Option<Duration>,
    /// Timeout between two writes upstream.
    pub send_timeout: Duration,
    /// Timeout between two reads from upstream.
    pub read_timeout: Duration,
    /// Conditions that allow another try.
    pub retry_on: Vec<RetryOn>,
    /// Attempts in all.
    pub tries: u32,
    /// Time within which all tries must start.
    pub retry_budget: Duration,
    /// Process-wide in-flight cap (None: unlimited).
    pub max_in_flight: Option<usize>,
    /// Requests in flight on this route (all workers), counted only with `max_in_flight`.
    /// A reload hands the counter to the next generation's route of the same name (see
    /// [`Config::inherit_runtime_state`]), so requests still running on the old generation
    /// keep counting against the limit.
    pub in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Route {
    /// The connect timeout for a try on `up`: the route's own, else the upstream's.
    pub fn connect_timeout_for(&self, up: &Upstream) -> Duration {
        self.connect_timeout.unwrap_or(up.connect_timeout)
    }
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
}
