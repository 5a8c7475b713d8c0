//! The config exactly as written in `gateway.toml`, read by serde.
//!
//! Every table denies unknown keys so a typo is an error instead of a silently ignored
//! setting, and no `flatten` is used because it defeats `deny_unknown_fields`. Nothing here is
//! checked beyond its TOML type: `validate` turns this into [`crate::config::Config`].

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Client-facing listener and its limits.
    #[serde(default)]
    pub server: RawServer,
    /// Admin listener (/metrics, /health, /ready, /config).
    #[serde(default)]
    pub admin: RawAdmin,
    /// How the config directory is watched.
    #[serde(default)]
    pub reload: RawReload,
    /// Named upstreams that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Named rate limits that routes refer to.
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimit>,
    /// Routes, matched exact before prefix, longest prefix first.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Models clients may ask for, by name: where each is served, its aliases, fallbacks and
    /// prices. Routes with `route_by_model = true` pick their upstream here.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Client API keys (optional): with it, routes answer 401 to requests without a known key.
    #[serde(default)]
    pub auth: Option<RawAuth>,
    /// The response cache's bounds (used by routes with `cache_ttl_ms`).
    #[serde(default)]
    pub cache: RawCache,
    /// The shared store (Redis) that limits with `scope = "cluster"` are kept in.
    #[serde(default)]
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: the Redis that cluster-scoped limits and token budgets live in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://[user@]host:port[/db]`, or `rediss://` for TLS (rustls; SNI and the
    /// certificate name from the host).
    pub redis_url: String,
    /// PEM file of the CA(s) that sign the Redis server's certificate (`rediss://` only);
    /// the webpki roots when absent.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// A file (a mounted Secret) holding the Redis password, sent with AUTH; never logged.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Longest a request waits for Redis, per call, in milliseconds.
    #[serde(default = "default_cluster_timeout")]
    pub timeout_ms: u64,
    /// What a cluster limit does while Redis is unavailable: "local" (the per-pod limiter
    /// at the limit divided by `replicas`) or "deny" (503).
    #[serde(default = "default_on_unavailable")]
    pub on_unavailable: String,
    /// Gateway replicas the local fallback divides a cluster limit by (the env var
    /// `RINGGATE_CLUSTER_REPLICAS`, when set, overrides it).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Consecutive failed calls after which a worker stops calling Redis for a while.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit breaker stays open before one call is tried again, ms.
    #[serde(default = "default_breaker_open")]
    pub breaker_open_ms: u64,
    /// Completion tokens reserved against a cluster token budget when a request names no
    /// `max_tokens` / `max_completion_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

fn default_cluster_timeout() -> u64 {
    20
}
fn default_on_unavailable() -> String {
    "local".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open() -> u64 {
    1000
}
fn default_max_tokens() -> u64 {
    1024
}

fn default_scope() -> String {
    "local".into()
}

/// One `[models.NAME]`: NAME is what clients send as `"model"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Name of the `[upstreams.NAME]` that serves it.
    pub upstream: String,
    /// The model name the provider expects, when it differs from NAME (the request body's
    /// `"model"` is rewritten to it; nothing else in the body changes).
    #[serde(default)]
    pub provider_model: Option<String>,
    /// Other names clients may use for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Other `[models.NAME]` entries (usually on other providers) tried in order, within the
    /// route's retry budget, when this one fails with one of the route's `retry_on`
    /// conditions before any response byte reached the client.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// US dollars per million prompt tokens that were not served from the provider's cache.
    #[serde(default)]
    pub prompt_usd_per_mtok: Option<f64>,
    /// US dollars per million cached prompt tokens; defaults to `prompt_usd_per_mtok`.
    #[serde(default)]
    pub cached_prompt_usd_per_mtok: Option<f64>,
    /// US dollars per million completion tokens.
    #[serde(default)]
    pub completion_usd_per_mtok: Option<f64>,
}

/// `[auth]`: client API keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// A file (a mounted Secret) of `NAME SHA256HEX` lines: each client's name and the
    /// sha256 of its key. Plain keys never appear in the config. Re-read on every reload.
    pub keys_file: String,
    /// `[limits.NAME]` applied to each client, keyed by the client's name.
    #[serde(default)]
    pub limit: Option<String>,
    /// Tokens (prompt + completion) each client may use per minute; none: unlimited.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// US dollars each client may spend per UTC day, at the `[models]` prices; none:
    /// unlimited.
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// US dollars each client may spend per UTC month; none: unlimited.
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
    /// Where client token and spend budgets are kept: "local" (per pod, default) or
    /// "cluster" (in the `[cluster]` store, shared by every replica).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Per-client overrides of `limit`, `tokens_per_minute`, the budgets and `scope`, by
    /// client name.
    #[serde(default)]
    pub clients: BTreeMap<String, RawClient>,
}

/// `[auth.clients.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// `[limits.NAME]` for this client instead of `auth.limit`.
    #[serde(default)]
    pub limit: Option<String>,
    /// Tokens per minute for this client instead of `auth.tokens_per_minute`.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// `budget_usd_per_day` for this client instead of `auth.budget_usd_per_day`.
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// `budget_usd_per_month` for this client instead of `auth.budget_usd_per_month`.
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
    /// `scope` of this client's token and spend budgets instead of `auth.scope`.
    #[serde(default)]
    pub scope: Option<String>,
}

/// `[cache]`: bounds of the exact-match response cache shared by all workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// Memory for cached responses (bodies and heads), in bytes.
    pub max_bytes: u64,
    /// Responses larger than this are not cached, in bytes.
    pub max_entry_bytes: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Plain HTTP/1.1 listen address, `host:port`.
    pub listen: String,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Open client connections per process beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Limit on a request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// Limit on a request line alone, in bytes.
    pub max_request_line_bytes: usize,
    /// Limit on a request body, in bytes.
    pub max_body_bytes: u64,
    /// Time a client has to send a complete request head (slowloris cut-off).
    pub header_read_timeout_ms: u64,
    /// Time an idle keep-alive client connection is kept open (checked every 250 ms).
    pub idle_timeout_ms: u64,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// CIDRs whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<String>,
    /// Request bodies up to this size are kept in memory so a failed try can be re-sent;
    /// larger bodies stream through and are never retried.
    pub max_retry_body_bytes: u64,
    /// Memory one worker may hold in request bodies read whole (model-routed and cached
    /// routes, bodies kept for retries), in bytes. A request whose body does not fit now
    /// gets 503 with `Retry-After`; one that could never fit gets 413.
    pub body_buffer_bytes: u64,
    /// Time a client has to send a body the gateway reads whole, start to end (a client
    /// trickling bytes within `idle_timeout_ms` each cannot hold its buffer for longer).
    pub body_read_timeout_ms: u64,
    /// What to do with request header names containing `_`: "drop" (default: not forwarded,
    /// as nginx's `underscores_in_headers off`), "allow" (forwarded) or "reject" (400).
    /// CGI-style upstreams map `-` and `_` to the same variable, so `X_Forwarded_For` could
    /// pass for the `X-Forwarded-For` the gateway sets.
    pub underscores_in_headers: String,
    /// Serve a config with no `[[routes]]` (every request a 404). Off by default, so an empty
    /// or truncated `gateway.toml` is rejected instead of taking every route down.
    pub allow_no_routes: bool,
    /// `Server` header on the answers the gateway writes itself (errors, `/health`,
    /// `/v1/models`, cache hits); none by default, as nginx's `server_tokens` can be turned
    /// off. Proxied answers keep the upstream's.
    pub server_header: Option<String>,
    /// An HTTPS listener beside the plain one (optional). Its certificate and key files are
    /// watched like the config: a rotated pair is served to new connections at once.
    pub tls: Option<RawServerTls>,
}

/// `[server.tls]`: the TLS listener and its certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// HTTPS listen address, `host:port` (e.g. "0.0.0.0:8443"); like `server.listen`, a
    /// change takes effect at the next restart.
    pub listen: String,
    /// PEM file with the default certificate chain (leaf first); relative to the config
    /// directory, like `api_key_file`. Served when no `[[server.tls.sni]]` entry matches.
    pub cert_file: String,
    /// PEM file with the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Time a client has to complete the TLS handshake; the connection is closed after it.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Further certificates, chosen by the name the client asks for (SNI).
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

/// One `[[server.tls.sni]]` entry: a certificate served for some names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    /// Names (`api.example.com`) or one-label wildcards (`*.example.com`) this certificate
    /// is served for. Exact names win over wildcards; unmatched names get the default.
    pub server_names: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            workers: 0,
            max_connections: 10_000,
            max_header_bytes: 65_536,
            max_request_line_bytes: 16_384,
            max_body_bytes: 10_485_760,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 25_000,
            trusted_proxies: Vec::new(),
            max_retry_body_bytes: 65_536,
            body_buffer_bytes: 67_108_864,
            body_read_timeout_ms: 60_000,
            underscores_in_headers: "drop".into(),
            allow_no_routes: false,
            server_header: None,
            tls: None,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Admin listen address, `host:port`.
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9901".into(),
        }
    }
}

/// `[reload]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    /// Quiet time after a filesystem event before the config is re-read.
    pub debounce_ms: u64,
    /// Re-read interval that catches lost events and remounts.
    pub poll_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            debounce_ms: 200,
            poll_interval_ms: 30_000,
        }
    }
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://` or `https://` URL; its path is prepended to every upstream request path.
    pub url: String,
    /// Extra `host:port` peers serving the same upstream.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Load-balancing policy over the endpoints.
    #[serde(default = "default_balance")]
    pub balance: String,
    /// Idle connections kept per worker.
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Requests after which a pooled connection is retired.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u64,
    /// Default connect timeout for routes that do not set one; per resolved address, for its
    /// TCP connect and TLS handshake together (as nginx's `proxy_connect_timeout`, per attempt).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The provider's wire format: `openai` (the default), `anthropic` (the Messages API;
    /// `url` is its base, e.g. `https://api.anthropic.com/v1`) or `gemini` (Google's
    /// `generateContent`; `url` e.g. `https://generativelanguage.googleapis.com/v1beta`).
    #[serde(default)]
    pub api: Option<String>,
    /// `max_tokens` sent to an `anthropic` upstream when the client set none (Anthropic
    /// requires one); 4096 when unset.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// File holding the provider key, sent as `Authorization: Bearer` (as `x-api-key` to an
    /// `anthropic` upstream, as `x-goog-api-key` to a `gemini` one).
    #[serde(default)]
    pub api_key_file: Option<String>,
    /// PEM file of the CA certificates trusted for an `https://` upstream, instead of the
    /// built-in webpki roots; relative to the config directory, like `api_key_file`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Consecutive failures after which an endpoint is ejected (0: never), as nginx `max_fails`.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long an ejected endpoint rests before it is tried again, as nginx `fail_timeout`.
    #[serde(default = "default_fail_timeout_ms")]
    pub fail_timeout_ms: u64,
    /// Shed new requests with 429 while the provider's `x-ratelimit-remaining-requests` is
    /// below this, until its `x-ratelimit-reset-requests`.
    #[serde(default)]
    pub shed_below_remaining_requests: Option<u64>,
    /// The same for `x-ratelimit-remaining-tokens` / `x-ratelimit-reset-tokens`.
    #[serde(default)]
    pub shed_below_remaining_tokens: Option<u64>,
}

fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout_ms() -> u64 {
    10_000
}

fn default_balance() -> String {
    "round_robin".into()
}
fn default_keepalive() -> usize {
    64
}
fn default_keepalive_timeout_ms() -> u64 {
    60_000
}
fn default_keepalive_requests() -> u64 {
    1_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// `[limits.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Sustained rate per key.
    pub rate_per_second: f64,
    /// Requests allowed above the rate.
    #[serde(default)]
    pub burst: u32,
    /// `client_ip`, `api_key` or `header:NAME`.
    #[serde(default = "default_limit_key")]
    pub key: String,
    /// true: excess within the burst passes at once; false: it waits to the rate.
    #[serde(default = "default_true")]
    pub nodelay: bool,
    /// "local" (per pod, default) or "cluster" (kept in the `[cluster]` store, shared by
    /// every replica).
    #[serde(default = "default_scope")]
    pub scope: String,
}

fn default_limit_key() -> String {
    "client_ip".into()
}
fn default_true() -> bool {
    true
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in metrics and logs.
    pub name: String,
    /// Path prefix to match (plain string prefix, as nginx `location`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact path to match.
    #[serde(default)]
    pub exact: Option<String>,
    /// Methods accepted; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host (without port) the request must carry.
    #[serde(default)]
    pub host: Option<String>,
    /// Replacement for the matched prefix.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Name of an `[upstreams.NAME]`; not used (and optional) with `route_by_model`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Pick the upstream by the request body's `"model"` from `[models]` (a bounded read of
    /// the JSON body, which is then forwarded unchanged unless the model maps to a
    /// `provider_model`). Also turns on token and cost accounting for the route.
    #[serde(default)]
    pub route_by_model: bool,
    /// With `[auth]`: whether this route requires a client key (default true).
    #[serde(default = "default_true")]
    pub auth: bool,
    /// Cache non-streaming responses (exact match on method, rewritten path and query, model,
    /// body and the client's identity) for this long.
    #[serde(default)]
    pub cache_ttl_ms: Option<u64>,
    /// Share cached answers between clients: leave the client's identity (its `[auth]` name
    /// or the API key it sent) out of the cache key. Only for answers that depend on nothing
    /// but the request (default false).
    #[serde(default)]
    pub cache_shared: bool,
    /// Name of a `[limits.NAME]`.
    #[serde(default)]
    pub limit: Option<String>,
    /// Connect timeout, per resolved address of the endpoint; defaults to the upstream's.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Timeout between two writes to the upstream.
    #[serde(default = "default_io_timeout_ms")]
    pub send_timeout_ms: u64,
    /// Timeout between two reads from the upstream, as nginx `proxy_read_timeout`.
    #[serde(default = "default_io_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Conditions that allow another try.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// Attempts in all, the first included.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Time within which all tries must start, as `proxy_next_upstream_timeout`.
    #[serde(default = "default_retry_budget_ms")]
    pub retry_budget_ms: u64,
    /// Never buffer the response (always true today; kept for the contract).
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Requests in flight on this route, process-wide, beyond which new ones get 503.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

fn default_io_timeout_ms() -> u64 {
    60_000
}
fn default_tries() -> u32 {
    1
}
fn default_retry_budget_ms() -> u64 {
    30_000
}
