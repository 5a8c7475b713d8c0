//! ringgate: an OpenAI-compatible AI API gateway for Kubernetes.
//!
//! Code map (one line a module; ARCHITECTURE.md tells the request's life):
//! - [`ai`]: model routing, client keys, token usage and cost, the response cache.
//! - [`app`]: start-up, signals, drain — what `main` calls.
//! - [`config`]: `gateway.toml` read (raw), validated (every error, with key paths and
//!   lines) and compiled. The only module that parses TOML.
//! - [`reload`]: the published config behind arc-swap; [`reload::watch`] watches the
//!   mounted ConfigMap directory.
//! - [`worker`]: one pinned monoio runtime per core (io_uring or epoll), its listener, drain.
//! - [`http`]: HTTP/1.1 framing over httparse, to the hardening list of field-notes §4.
//! - [`listener`]: the accepted client connection (plain TCP; TLS with `[server.tls]`).
//! - [`limit`]: GCRA rate limiting (nginx `limit_req` semantics) shared by all workers.
//! - [`router`]: exact/prefix route matching and upstream path rewriting.
//! - [`proxy`]: a client connection's loop and one request's exchange with the upstream.
//! - [`upstream`]: per-worker keep-alive pools, DNS off the workers, connecting.
//! - [`metrics`]: per-worker counters, summed and rendered for Prometheus.
//! - [`admin`]: `/metrics`, `/health`, `/ready`, `/config` on the admin listener.
//! - [`fds`]: the descriptor budget: `RLIMIT_NOFILE` at start-up, refusing clients at `EMFILE`.
//! - [`error`]: the request path's one error type and its HTTP status.
//! - [`bufio`]: bounded owned-buffer I/O over monoio.
//! - [`clock`]: the process-wide monotonic clock shared state is stamped with.
//! - [`civil`]: calendar dates ↔ days since the Unix epoch (certificate expiry, test dates).
//! - [`task`]: a connection's task: panics caught at the connection, yielding between requests.

pub mod admin;
pub mod ai;
pub mod app;
pub mod bufio;
pub mod civil;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fds;
pub mod http;
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod task;
pub mod upstream;
pub mod worker;
