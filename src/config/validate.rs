//! Checks a [`RawConfig`] and compiles it into a [`Config`], collecting every error at once
//! with its key path (`routes[2].upstream`) and the line it sits on, so an operator fixes a
//! broken ConfigMap in one pass instead of one error per `kubectl apply`.

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::compiled::*;
use super::raw::*;
use crate::router::RouteTable;
use crate::upstream::tls::{self, UpstreamTls};

/// One problem in a config, located by key path and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, `routes[0].upstream`; empty for file-level errors.
    pub path: String,
    /// 1-based line in `gateway.toml`, when it could be located.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, what is accepted.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.path.is_empty(), self.line) {
            (false, Some(l)) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
        }
    }
}

/// Every error found in one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Most keys one parse drops to find the next error (each costs a parse of the text).
const MAX_SCHEMA_ERRORS: usize = 32;

/// Reads the TOML into [`RawConfig`], reporting every unknown key and every value of the
/// wrong type, not only the first: after each such error the offending key is dropped from
/// a copy of the document and the copy parsed again. Lines and key paths refer to `text`.
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigErrors> {
    let first = match toml::from_str::<RawConfig>(text) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    let mut errors = vec![error_from_toml(text, &first)];
    // Not TOML at all: the syntax error is the one to fix first (and toml_edit is not asked:
    // its parser panics on some invalid documents).
    if text.parse::<toml::Table>().is_err() {
        return Err(ConfigErrors(errors));
    }
    let (Ok(original), Ok(mut doc)) = (
        toml_edit::Document::parse(text.to_string()),
        text.parse::<toml_edit::DocumentMut>(),
    ) else {
        // Not TOML at all: the syntax error is the one to fix first.
        return Err(ConfigErrors(errors));
    };
    let mut removed: Vec<String> = Vec::new();
    while errors.len() < MAX_SCHEMA_ERRORS {
        let Some(path) = errors
            .last()
            .map(|e| e.path.clone())
            .filter(|p| !p.is_empty())
        else {
            break;
        };
        if !remove_path(doc.as_table_mut(), &path) {
            break;
        }
        removed.push(path);
        let patched = doc.to_string();
        let e = match toml::from_str::<RawConfig>(&patched) {
            Ok(_) => break,
            Err(e) => e,
        };
        let mut err = error_from_toml(&patched, &e);
        // A required key dropped above is not a new error.
        if err.message.starts_with("missing field")
            && removed.iter().any(|r| {
                r.rsplit_once('.').map_or(r.as_str(), |(_, k)| k) == missing_field(&err.message)
            })
        {
            break;
        }
        err.line = line_of_path(&original, text, &err.path).or(err.line);
        errors.push(err);
    }
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(ConfigErrors(errors))
}

/// The field named by serde's "missing field `x`".
fn missing_field(message: &str) -> &str {
    message.split('`').nth(1).unwrap_or_default()
}

/// Drops the key at `path` (`routes[1].upstream`, `server.listen`); false when absent.
fn remove_path(table: &mut toml_edit::Table, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let (name, index) = match head.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (head, None),
    };
    let Some(rest) = rest else {
        return index.is_none() && table.remove(name).is_some();
    };
    match (table.get_mut(name), index) {
        (Some(toml_edit::Item::Table(t)), None) => remove_path(t, rest),
        (Some(toml_edit::Item::ArrayOfTables(a)), Some(i)) => {
            a.get_mut(i).is_some_and(|t| remove_path(t, rest))
        }
        (Some(toml_edit::Item::Value(toml_edit::Value::InlineTable(t))), None) => {
            !rest.contains('.') && t.remove(rest).is_some()
        }
        _ => false,
    }
}

/// Turns a serde/TOML error into a located [`ConfigError`], naming the key path at the
/// error's position when the text is still valid TOML (an unknown key, a wrong type), with
/// a hint: the nearest known key for a typo, "integer milliseconds" for a duration.
pub fn error_from_toml(text: &str, e: &toml::de::Error) -> ConfigError {
    // A key path only means something in valid TOML, and toml_edit 0.23's parser panics on
    // some invalid documents (`={[]` then `.`, found by the `config` fuzz target).
    let valid = text.parse::<toml::Table>().is_ok();
    let (line, path) = match e.span() {
        Some(span) => (
            Some(line_of_offset(text, span.start)),
            valid
                .then(|| toml_edit::Document::parse(text.to_string()).ok())
                .flatten()
                .and_then(|doc| path_at_offset(doc.as_table(), span.start, String::new()))
                .unwrap_or_default(),
        ),
        None => (None, String::new()),
    };
    let mut message = e.message().trim().to_string();
    if let Some(hint) = hint_for(&path, &message) {
        message.push_str("; ");
        message.push_str(&hint);
    }
    ConfigError {
        path,
        line,
        message,
    }
}

/// A hint for a schema error: the closest known key to an unknown one, the unit of a
/// duration.
fn hint_for(path: &str, message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = rest.split_once('`')?;
        let best = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|k| (edit_distance(unknown, k), k))
            .min()?;
        let close = best.0 <= 2.max(unknown.len() / 3);
        return close.then(|| format!("did you mean `{}`?", best.1));
    }
    if path.ends_with("_ms") && message.starts_with("invalid type") {
        return Some("durations are integer milliseconds (e.g. 30000 for 30 s)".to_string());
    }
    None
}

/// Levenshtein distance (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// The deepest key path whose key or value spans `offset`.
fn path_at_offset(table: &toml_edit::Table, offset: usize, prefix: String) -> Option<String> {
    for (key, item) in table.iter() {
        let here = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        let key_span = table.key(key).and_then(|k| k.span());
        match item {
            toml_edit::Item::Table(t) => {
                if let Some(p) = path_at_offset(t, offset, here.clone()) {
                    return Some(p);
                }
                // The table's own span: a missing required key is reported there.
                if contains(key_span, offset) || contains(t.span(), offset) {
                    return Some(here);
                }
            }
            toml_edit::Item::ArrayOfTables(arr) => {
                for (i, t) in arr.iter().enumerate() {
                    let indexed = format!("{here}[{i}]");
                    if let Some(p) = path_at_offset(t, offset, indexed.clone()) {
                        return Some(p);
                    }
                    if contains(t.span(), offset) {
                        return Some(indexed);
                    }
                }
            }
            _ => {
                if contains(key_span, offset) || contains(item.span(), offset) {
                    return Some(here);
                }
            }
        }
    }
    None
}

/// Finds the line of a key path such as `routes[1].upstream` (or its closest existing
/// parent, for a missing key).
fn line_of_path(doc: &toml_edit::Document<String>, text: &str, path: &str) -> Option<usize> {
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best: Option<usize> = None;
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let key_span = item
            .as_table_like()
            .and_then(|t| t.get_key_value(name))
            .and_then(|(k, _)| k.span());
        let Some(next) = item.get(name) else { break };
        item = next;
        if let Some(s) = key_span.or_else(|| item.span()) {
            best = Some(s.start);
        }
        if let Some(i) = index {
            let Some(next) = item.get(i) else { break };
            item = next;
            let span = match item {
                toml_edit::Item::Table(t) => t.span(),
                other => other.span(),
            };
            if let Some(s) = span {
                best = Some(s.start);
            }
        }
    }
    best.map(|o| line_of_offset(text, o))
}

/// Collects errors with their lines while a config is validated.
pub(super) struct Errors<'a> {
    list: Vec<ConfigError>,
    doc: Option<toml_edit::Document<String>>,
    text: &'a str,
}

impl Errors<'_> {
    /// Records one error at `path`.
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self
            .doc
            .as_ref()
            .and_then(|d| line_of_path(d, self.text, &path));
        self.list.push(ConfigError {
            path,
            line,
            message: message.into(),
        });
    }
}

fn ms(path: &str, v: u64, min: u64, max: u64, errs: &mut Errors) -> Duration {
    if v < min || v > max {
        errs.push(
            path,
            format!("{v} is out of range {min}..={max} (milliseconds)"),
        );
    }
    Duration::from_millis(v)
}

fn parse_listen(path: &str, s: &str, errs: &mut Errors) -> SocketAddr {
    match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errs.push(
                path,
                format!(
                    "`{s}` is not an `ip:port` address (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}

/// Validates `raw` (whose source text is `text`) and compiles it. All errors are returned
/// together.
pub fn validate_and_compile(
    raw: &RawConfig,
    text: &str,
    base_dir: &Path,
    secrets: super::SecretFiles,
) -> Result<Config, super::ConfigErrors> {
    let mut errs = Errors {
        list: Vec::new(),
        doc: toml_edit::Document::parse(text.to_string()).ok(),
        text,
    };

    let server = compile_server(&raw.server, &mut errs);
    let admin_listen = parse_listen("admin.listen", &raw.admin.listen, &mut errs);
    if admin_listen.port() != 0 && admin_listen == server.listen {
        errs.push("admin.listen", "must differ from server.listen");
    }
    let reload = ReloadSettings {
        debounce: ms(
            "reload.debounce_ms",
            raw.reload.debounce_ms,
            10,
            10_000,
            &mut errs,
        ),
        poll_interval: ms(
            "reload.poll_interval_ms",
            raw.reload.poll_interval_ms,
            100,
            3_600_000,
            &mut errs,
        ),
    };

    let mut upstreams = Vec::new();
    let mut upstream_names = Vec::new();
    for (name, u) in &raw.upstreams {
        let path = format!("upstreams.{name}");
        if let Some(up) = compile_upstream(name, u, &path, base_dir, secrets, &mut errs) {
            upstreams.push(Arc::new(up));
        }
        upstream_names.push(name.clone());
    }

    let mut cluster_files = Vec::new();
    let cluster = raw.cluster.as_ref().and_then(|c| {
        super::cluster::compile_cluster(c, base_dir, secrets, &mut cluster_files, &mut errs)
    });
    let mut limits = Vec::new();
    let mut limit_names = Vec::new();
    for (name, l) in &raw.limits {
        let path = format!("limits.{name}");
        let mut spec = compile_limit(name, l, &path, &mut errs);
        spec.scope = super::cluster::compile_scope(
            &l.scope,
            &format!("{path}.scope"),
            cluster.as_deref(),
            raw.cluster.is_some(),
            &mut errs,
        );
        // A header the gateway drops or refuses cannot key a limit: the limit would count
        // something the upstream never sees.
        if let LimitKey::Header(h) = &spec.key {
            if h.contains('_') && server.underscores_in_headers != UnderscoreHeaders::Allow {
                errs.push(
                    format!("{path}.key"),
                    "header names with `_` are dropped or refused unless server.underscores_in_headers = \"allow\"",
                );
            }
        }
        limits.push(Arc::new(spec));
        limit_names.push(name.clone());
    }

    let models = super::ai::compile_models(raw, &upstream_names, &mut errs);
    let mut ai_files = Vec::new();
    let auth = raw.auth.as_ref().and_then(|a| {
        super::ai::compile_auth(
            a,
            base_dir,
            secrets,
            &limit_names,
            &mut limits,
            &mut ai_files,
            (cluster.as_deref(), raw.cluster.is_some()),
            &mut errs,
        )
    });
    if let Some(a) = &raw.auth {
        super::ai::check_budgets_priced(a, &models, &mut errs);
    }
    let cache = super::ai::compile_cache(&raw.cache, &mut errs);

    // Inputs read besides gateway.toml: their changes re-apply the config (reload::watch).
    let mut watched_files = Vec::new();
    for u in raw.upstreams.values() {
        for f in [&u.api_key_file, &u.ca_file].into_iter().flatten() {
            if !f.trim().is_empty() {
                watched_files.push(base_dir.join(f));
            }
        }
    }
    watched_files.append(&mut ai_files);
    watched_files.append(&mut cluster_files);
    let mut server = server;
    if let Some(t) = &raw.server.tls {
        server.tls = super::tls::compile_server_tls(
            t,
            base_dir,
            secrets,
            &[server.listen, admin_listen],
            &mut watched_files,
            &mut errs,
        );
    }
    watched_files.sort();
    watched_files.dedup();

    let mut routes = Vec::new();
    let mut seen_names = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !seen_names.insert(r.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate route name `{}`", r.name),
            );
        }
        if let Some(route) = compile_route(
            r,
            &path,
            &upstream_names,
            &upstreams,
            &limit_names,
            &models,
            &mut errs,
        ) {
            routes.push(route);
        }
    }

    if raw.routes.is_empty() && !raw.server.allow_no_routes {
        // An empty or truncated file (a mis-indented ConfigMap key, a half-written apply)
        // parses as all defaults and no routes: serving it would answer every request 404.
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        errs.push(
            "",
            if blank {
                "the config is empty (no [[routes]]): serving it would take every route down; \
                 set server.allow_no_routes = true to run without routes"
            } else {
                "no [[routes]]: every request would be answered 404; \
                 set server.allow_no_routes = true to run without routes"
            },
        );
    }

    if errs.list.is_empty() {
        Ok(Config {
            server,
            admin_listen,
            reload,
            upstreams,
            limits,
            routes: RouteTable::new(routes),
            models,
            auth,
            cache,
            cluster,
            watched_files,
        })
    } else {
        Err(super::ConfigErrors(errs.list))
    }
}

fn compile_server(s: &RawServer, errs: &mut Errors) -> ServerSettings {
    let listen = parse_listen("server.listen", &s.listen, errs);
    let workers = if s.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        s.workers
    };
    if s.workers > 1024 {
        errs.push("server.workers", "at most 1024");
    }
    if s.max_connections == 0 {
        errs.push("server.max_connections", "must be at least 1");
    }
    if !(1024..=1 << 20).contains(&s.max_header_bytes) {
        errs.push("server.max_header_bytes", "must be within 1024..=1048576");
    }
    if !(256..=1 << 20).contains(&s.max_request_line_bytes) {
        errs.push(
            "server.max_request_line_bytes",
            "must be within 256..=1048576",
        );
    }
    if s.max_body_bytes == 0 {
        errs.push("server.max_body_bytes", "must be at least 1");
    }
    let mut trusted = Vec::new();
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        match p.parse::<IpNet>() {
            Ok(n) => trusted.push(n),
            Err(_) => match p.parse::<IpAddr>() {
                Ok(ip) => trusted.push(IpNet::from(ip)),
                Err(_) => errs.push(
                    format!("server.trusted_proxies[{i}]"),
                    format!("`{p}` is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"),
                ),
            },
        }
    }
    ServerSettings {
        listen,
        workers,
        max_connections: s.max_connections,
        max_header_bytes: s.max_header_bytes,
        max_request_line_bytes: s.max_request_line_bytes,
        max_body_bytes: s.max_body_bytes,
        header_read_timeout: ms(
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms,
            1,
            3_600_000,
            errs,
        ),
        idle_timeout: ms(
            "server.idle_timeout_ms",
            s.idle_timeout_ms,
            1,
            86_400_000,
            errs,
        ),
        shutdown_grace: ms(
            "server.shutdown_grace_ms",
            s.shutdown_grace_ms,
            0,
            3_600_000,
            errs,
        ),
        trusted_proxies: trusted,
        max_retry_body_bytes: s.max_retry_body_bytes,
        body_buffer_bytes: s.body_buffer_bytes,
        body_read_timeout: ms(
            "server.body_read_timeout_ms",
            s.body_read_timeout_ms,
            1,
            86_400_000,
            errs,
        ),
        underscores_in_headers: match s.underscores_in_headers.as_str() {
            "drop" => UnderscoreHeaders::Drop,
            "allow" => UnderscoreHeaders::Allow,
            "reject" => UnderscoreHeaders::Reject,
            other => {
                errs.push(
                    "server.underscores_in_headers",
                    format!("`{other}` is not one of drop, allow, reject"),
                );
                UnderscoreHeaders::Drop
            }
        },
        allow_no_routes: s.allow_no_routes,
        server_header: match &s.server_header {
            Some(v)
                if v.is_empty()
                    || v.len() > 64
                    || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
            {
                errs.push(
                    "server.server_header",
                    "must be 1 to 64 printable ASCII characters".to_string(),
                );
                None
            }
            other => other.clone(),
        },
        tls: None,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port.
pub fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port?,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (s, default_port?),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    ok.then(|| (host.to_ascii_lowercase(), port))
}

fn compile_upstream(
    name: &str,
    u: &RawUpstream,
    path: &str,
    base_dir: &Path,
    secrets: super::SecretFiles,
    errs: &mut Errors,
) -> Option<Upstream> {
    if !valid_name(name) {
        errs.push(
            path,
            "upstream names use letters, digits, `_` and `-` (at most 64)",
        );
    }
    let (scheme, rest, default_port) = if let Some(r) = u.url.strip_prefix("http://") {
        (Scheme::Http, r, 80)
    } else if let Some(r) = u.url.strip_prefix("https://") {
        (Scheme::Https, r, 443)
    } else {
        errs.push(
            format!("{path}.url"),
            format!("`{}` must start with http:// or https://", u.url),
        );
        return None;
    };
    if rest.contains(['?', '#', '@']) {
        errs.push(
            format!("{path}.url"),
            "query, fragment and user info are not allowed in an upstream url",
        );
    }
    let (authority, base_path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let Some((host, port)) = split_host_port(authority, Some(default_port)) else {
        errs.push(
            format!("{path}.url"),
            format!("`{authority}` is not a valid host[:port]"),
        );
        return None;
    };
    let host_header = if port == default_port {
        authority.split(':').next().unwrap_or(authority).to_string()
    } else {
        authority.to_string()
    };
    let host_header = if authority.starts_with('[') {
        authority.to_string()
    } else {
        host_header
    };
    let mut endpoints = vec![Endpoint { host, port }];
    for (i, e) in u.endpoints.iter().enumerate() {
        match split_host_port(e, None) {
            Some((h, p)) => endpoints.push(Endpoint { host: h, port: p }),
            None => errs.push(
                format!("{path}.endpoints[{i}]"),
                format!("`{e}` is not `host:port`"),
            ),
        }
    }
    let balance = match u.balance.as_str() {
        "round_robin" => Balance::RoundRobin,
        "least_request" => Balance::LeastRequest,
        "p2c_ewma" => Balance::P2cEwma,
        other => {
            errs.push(
                format!("{path}.balance"),
                format!("`{other}` is not one of round_robin, least_request, p2c_ewma"),
            );
            Balance::RoundRobin
        }
    };
    if u.keepalive > 100_000 {
        errs.push(format!("{path}.keepalive"), "at most 100000");
    }
    if u.keepalive_requests == 0 {
        errs.push(format!("{path}.keepalive_requests"), "must be at least 1");
    }
    let keepalive_timeout = ms(
        &format!("{path}.keepalive_timeout_ms"),
        u.keepalive_timeout_ms,
        1,
        86_400_000,
        errs,
    );
    let connect_timeout = ms(
        &format!("{path}.connect_timeout_ms"),
        u.connect_timeout_ms,
        1,
        3_600_000,
        errs,
    );

    let api = match u.api.as_deref().unwrap_or("openai") {
        "openai" => Api::OpenAi,
        "anthropic" => Api::Anthropic,
        "gemini" => Api::Gemini,
        other => {
            errs.push(
                format!("{path}.api"),
                format!("`{other}` is not one of openai, anthropic, gemini"),
            );
            Api::OpenAi
        }
    };
    let default_max_tokens = match u.default_max_tokens {
        Some(_) if api != Api::Anthropic => {
            errs.push(
                format!("{path}.default_max_tokens"),
                "only for api = \"anthropic\"",
            );
            0
        }
        Some(n) if !(1..=1_000_000).contains(&n) => {
            errs.push(format!("{path}.default_max_tokens"), "must be 1..=1000000");
            0
        }
        Some(n) => n,
        None => 4096,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    u.hash(&mut hasher);
    let authorization = match &u.api_key_file {
        None => None,
        Some(f) if f.trim().is_empty() => {
            errs.push(format!("{path}.api_key_file"), "must not be empty");
            None
        }
        Some(_) if secrets == super::SecretFiles::Skip => None,
        Some(f) => {
            let p = base_dir.join(f);
            match std::fs::read(&p) {
                Ok(bytes) => {
                    let key = String::from_utf8_lossy(&bytes).trim().to_string();
                    if key.is_empty() {
                        errs.push(
                            format!("{path}.api_key_file"),
                            format!("{} is empty", p.display()),
                        );
                        None
                    } else if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                        errs.push(
                            format!("{path}.api_key_file"),
                            format!("{} holds characters not allowed in a header", p.display()),
                        );
                        None
                    } else {
                        key.hash(&mut hasher);
                        Some(Secret(match api {
                            Api::OpenAi => format!("Bearer {key}").into_bytes(),
                            Api::Anthropic | Api::Gemini => key.into_bytes(),
                        }))
                    }
                }
                Err(e) => {
                    errs.push(
                        format!("{path}.api_key_file"),
                        format!("cannot read {}: {e}", p.display()),
                    );
                    None
                }
            }
        }
    };
    let tls = compile_tls(
        u,
        scheme,
        &endpoints,
        path,
        base_dir,
        secrets,
        &mut hasher,
        errs,
    );
    let addrs = endpoints
        .iter()
        .map(|e| {
            let literal = e
                .host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, e.port));
            arc_swap::ArcSwap::from_pointee(literal.into_iter().collect())
        })
        .collect();
    let fail_timeout = ms(
        &format!("{path}.fail_timeout_ms"),
        u.fail_timeout_ms,
        1,
        3_600_000,
        errs,
    );
    Some(Upstream {
        name: name.to_string(),
        addrs,
        max_fails: u.max_fails,
        fail_timeout,
        shed_below_remaining_requests: u.shed_below_remaining_requests,
        shed_below_remaining_tokens: u.shed_below_remaining_tokens,
        shed_until: std::sync::Arc::default(),
        scheme,
        host_header,
        base_path: base_path.to_string(),
        endpoints,
        balance,
        keepalive: u.keepalive,
        keepalive_timeout,
        keepalive_requests: u.keepalive_requests,
        connect_timeout,
        authorization,
        api,
        default_max_tokens,
        tls,
        fingerprint: hasher.finish(),
    })
}

/// The TLS settings of an https upstream: SNI from the URL's host, trust from `ca_file` (read
/// and parsed now; its bytes go into the fingerprint) or the webpki roots.
// Each argument is a distinct input of the upstream being compiled.
#[allow(clippy::too_many_arguments)]
fn compile_tls(
    u: &RawUpstream,
    scheme: Scheme,
    endpoints: &[Endpoint],
    path: &str,
    base_dir: &Path,
    secrets: super::SecretFiles,
    hasher: &mut impl Hasher,
    errs: &mut Errors,
) -> Option<UpstreamTls> {
    if scheme != Scheme::Https {
        if u.ca_file.is_some() {
            errs.push(
                format!("{path}.ca_file"),
                "only applies to https:// upstreams",
            );
        }
        return None;
    }
    let ca = match &u.ca_file {
        None => None,
        Some(f) if f.trim().is_empty() => {
            errs.push(format!("{path}.ca_file"), "must not be empty");
            return None;
        }
        Some(_) if secrets == super::SecretFiles::Skip => None,
        Some(f) => {
            let p = base_dir.join(f);
            match std::fs::read(&p) {
                Ok(bytes) => {
                    bytes.hash(hasher);
                    Some((p, bytes))
                }
                Err(e) => {
                    errs.push(
                        format!("{path}.ca_file"),
                        format!("cannot read {}: {e}", p.display()),
                    );
                    return None;
                }
            }
        }
    };
    let config = match tls::client_config(ca.as_ref().map(|(_, b)| b.as_slice())) {
        Ok(c) => c,
        Err(e) => {
            let file = ca.as_ref().map(|(p, _)| p.display().to_string());
            errs.push(
                format!("{path}.ca_file"),
                format!("{}: {e}", file.unwrap_or_default()),
            );
            return None;
        }
    };
    let host = endpoints.first().map(|e| e.host.as_str()).unwrap_or("");
    match tls::server_name(host) {
        Ok(server_name) => Some(UpstreamTls {
            config,
            server_name,
        }),
        Err(e) => {
            errs.push(format!("{path}.url"), e);
            None
        }
    }
}

fn compile_limit(name: &str, l: &RawLimit, path: &str, errs: &mut Errors) -> LimitSpec {
    if !valid_name(name) {
        errs.push(
            path,
            "limit names use letters, digits, `_` and `-` (at most 64)",
        );
    }
    if !(l.rate_per_second.is_finite() && l.rate_per_second > 0.0 && l.rate_per_second <= 1e9) {
        errs.push(
            format!("{path}.rate_per_second"),
            "must be a number above 0",
        );
    }
    if l.burst > 1_000_000 {
        errs.push(format!("{path}.burst"), "at most 1000000");
    }
    let key = match l.key.as_str() {
        "client_ip" => LimitKey::ClientIp,
        "api_key" => LimitKey::ApiKey,
        "client" => LimitKey::Client,
        other => match other.strip_prefix("header:") {
            Some(h) if !h.is_empty() && h.bytes().all(is_tchar) => {
                LimitKey::Header(h.to_ascii_lowercase())
            }
            _ => {
                errs.push(
                    format!("{path}.key"),
                    format!("`{other}` is not one of client_ip, api_key, client, header:NAME"),
                );
                LimitKey::ClientIp
            }
        },
    };
    LimitSpec {
        name: name.to_string(),
        rate_per_second: l.rate_per_second,
        burst: l.burst,
        key,
        nodelay: l.nodelay,
        scope: LimitScope::Local,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn compile_route(
    r: &RawRoute,
    path: &str,
    upstream_names: &[String],
    upstreams: &[Arc<Upstream>],
    limit_names: &[String],
    models: &super::ai::Models,
    errs: &mut Errors,
) -> Option<Route> {
    if r.name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    let matcher = match (&r.prefix, &r.exact) {
        (Some(p), None) => Some(PathMatch::Prefix(p.clone())),
        (None, Some(e)) => Some(PathMatch::Exact(e.clone())),
        (Some(_), Some(_)) => {
            errs.push(path, "set either `prefix` or `exact`, not both");
            None
        }
        (None, None) => {
            errs.push(path, "set `prefix` or `exact`");
            None
        }
    };
    if let Some(PathMatch::Prefix(p) | PathMatch::Exact(p)) = &matcher {
        let key = if r.prefix.is_some() {
            "prefix"
        } else {
            "exact"
        };
        if !p.starts_with('/') {
            errs.push(
                format!("{path}.{key}"),
                format!("`{p}` must start with `/`"),
            );
        } else {
            // Requests are routed on their normalized path, so a prefix that is not normal
            // would never match.
            match crate::http::path::normalize(p) {
                Ok(n) if n == p.as_str() => {}
                Ok(n) => errs.push(
                    format!("{path}.{key}"),
                    format!("`{p}` is matched against normalized paths and would never match; write `{n}`"),
                ),
                Err(e) => errs.push(format!("{path}.{key}"), format!("`{p}`: {e}")),
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        if !rw.is_empty() && !rw.starts_with('/') {
            errs.push(
                format!("{path}.rewrite"),
                format!("`{rw}` must be empty or start with `/`"),
            );
        }
    }
    let mut methods = BTreeSet::new();
    for (i, m) in r.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(is_tchar) {
            errs.push(
                format!("{path}.methods[{i}]"),
                format!("`{m}` is not an HTTP method"),
            );
        } else if crate::router::is_never_forwarded(&m.to_ascii_uppercase()) {
            errs.push(
                format!("{path}.methods[{i}]"),
                format!("`{m}` is never forwarded (TRACE and CONNECT are answered 405)"),
            );
        }
        methods.insert(m.to_ascii_uppercase());
    }
    let upstream = match (&r.upstream, r.route_by_model) {
        (Some(name), false) => match upstream_names.iter().position(|n| n == name) {
            Some(i) => Some(i),
            None => {
                let known = upstream_names.join(", ");
                errs.push(
                    format!("{path}.upstream"),
                    format!("no upstream named `{name}` (defined: {known})"),
                );
                None
            }
        },
        (None, false) => {
            errs.push(
                format!("{path}.upstream"),
                "set `upstream`, or `route_by_model = true` to pick it from [models]",
            );
            None
        }
        (Some(_), true) => {
            errs.push(
                format!("{path}.upstream"),
                "a route_by_model route takes its upstream from [models]; remove `upstream`",
            );
            None
        }
        (None, true) => {
            if models.is_empty() {
                errs.push(
                    format!("{path}.route_by_model"),
                    "needs at least one [models.NAME] entry",
                );
            }
            None
        }
    };
    let cache_ttl = r
        .cache_ttl_ms
        .map(|v| ms(&format!("{path}.cache_ttl_ms"), v, 1, 30 * 86_400_000, errs));
    let limit = match &r.limit {
        None => None,
        Some(l) => match limit_names.iter().position(|n| n == l) {
            Some(i) => Some(i),
            None => {
                errs.push(format!("{path}.limit"), format!("no limit named `{l}`"));
                None
            }
        },
    };
    let mut retry_on = Vec::new();
    for (i, c) in r.retry_on.iter().enumerate() {
        let cond = match c.as_str() {
            "error" => RetryOn::Error,
            "timeout" => RetryOn::Timeout,
            "http_502" => RetryOn::Http502,
            "http_503" => RetryOn::Http503,
            "http_504" => RetryOn::Http504,
            "http_429" => RetryOn::Http429,
            other => {
                errs.push(
                    format!("{path}.retry_on[{i}]"),
                    format!("`{other}` is not one of error, timeout, http_502, http_503, http_504, http_429"),
                );
                continue;
            }
        };
        retry_on.push(cond);
    }
    if r.max_in_flight == Some(0) {
        errs.push(
            format!("{path}.max_in_flight"),
            "must be at least 1 (omit it for no limit)",
        );
    }
    if !(1..=10).contains(&r.tries) {
        errs.push(format!("{path}.tries"), "must be within 1..=10");
    }
    let _ = upstreams;
    let connect_timeout = r
        .connect_timeout_ms
        .map(|v| ms(&format!("{path}.connect_timeout_ms"), v, 1, 3_600_000, errs));
    let send_timeout = ms(
        &format!("{path}.send_timeout_ms"),
        r.send_timeout_ms,
        1,
        86_400_000,
        errs,
    );
    let read_timeout = ms(
        &format!("{path}.read_timeout_ms"),
        r.read_timeout_ms,
        1,
        86_400_000,
        errs,
    );
    let retry_budget = ms(
        &format!("{path}.retry_budget_ms"),
        r.retry_budget_ms,
        1,
        86_400_000,
        errs,
    );
    Some(Route {
        name: r.name.clone(),
        matcher: matcher?,
        methods: methods.into_iter().collect(),
        host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
        rewrite: r.rewrite.clone(),
        upstream,
        route_by_model: r.route_by_model,
        auth: r.auth,
        cache_ttl,
        cache_shared: r.cache_shared,
        limit,
        connect_timeout,
        send_timeout,
        read_timeout,
        retry_on,
        tries: r.tries,
        retry_budget,
        max_in_flight: r.max_in_flight,
        in_flight: std::sync::Arc::default(),
    })
}

#[cfg(test)]
mod tests {

    /// Every schema error at once, in line order, each with its hint.
    #[test]
    fn every_schema_error_is_reported_with_a_hint() {
        let text = "[server]\nlisen = \"127.0.0.1:1\"\nidle_timeout_ms = \"60s\"\nworkers = \"two\"\n[upstreams.u]\nurl = \"http://127.0.0.1:1\"\nkeepalve = 3\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\nread_timeout_ms = 1.5\n";
        let errs = match parse_raw(text) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0,
        };
        let got: Vec<(Option<usize>, &str)> =
            errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(2), "server.lisen"),
                (Some(3), "server.idle_timeout_ms"),
                (Some(4), "server.workers"),
                (Some(7), "upstreams.u.keepalve"),
                (Some(12), "routes[0].read_timeout_ms"),
            ]
        );
        assert!(
            errs[0].message.ends_with("did you mean `listen`?"),
            "{}",
            errs[0]
        );
        assert!(
            errs[3].message.ends_with("did you mean `keepalive`?"),
            "{}",
            errs[3]
        );
        assert!(
            errs[1].message.contains("integer milliseconds"),
            "{}",
            errs[1]
        );
        assert!(
            errs[4].message.contains("integer milliseconds"),
            "{}",
            errs[4]
        );
        assert!(!errs[2].message.contains("milliseconds"), "{}", errs[2]);
        // A required key of the wrong type is one error, not also a "missing field".
        let errs = match parse_raw("[upstreams.u]\nurl = 3\n") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0,
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        // A far-off name gets no guess.
        let errs = match parse_raw("[server]\nzzzzzzzz = 1\n") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0,
        };
        assert!(!errs[0].message.contains("did you mean"), "{}", errs[0]);
    }

    use super::*;

    fn errors_of(toml_text: &str) -> Vec<ConfigError> {
        match crate::config::load_bytes(toml_text.as_bytes(), Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.mock]
url = "http://127.0.0.1:9000/v1"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
upstream = "mock"
"#;

    #[test]
    fn good_config_compiles() {
        let cfg = crate::config::load_bytes(GOOD.as_bytes(), Path::new(".")).expect("valid");
        assert_eq!(cfg.upstreams[0].base_path, "/v1");
        assert_eq!(cfg.upstreams[0].host_header, "127.0.0.1:9000");
        assert_eq!(cfg.routes.len(), 1);
    }

    /// `api` picks the wire format; `default_max_tokens` belongs to Anthropic upstreams only.
    #[test]
    fn upstream_api_is_validated() {
        let with = |extra: &str| {
            GOOD.replace(
                "url = \"http://127.0.0.1:9000/v1\"\n",
                &format!("url = \"http://127.0.0.1:9000/v1\"\n{extra}\n"),
            )
        };
        let cfg = crate::config::load_bytes(GOOD.as_bytes(), Path::new(".")).expect("valid");
        assert_eq!(
            (cfg.upstreams[0].api, cfg.upstreams[0].default_max_tokens),
            (Api::OpenAi, 4096)
        );
        let cfg = crate::config::load_bytes(
            with("api = \"anthropic\"\ndefault_max_tokens = 512").as_bytes(),
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(
            (cfg.upstreams[0].api, cfg.upstreams[0].default_max_tokens),
            (Api::Anthropic, 512)
        );
        let cfg = crate::config::load_bytes(with("api = \"gemini\"").as_bytes(), Path::new("."))
            .expect("valid");
        assert_eq!(cfg.upstreams[0].api, Api::Gemini);
        let cases = [
            (
                "api = \"gemini\"\ndefault_max_tokens = 10",
                "upstreams.mock.default_max_tokens",
                "only for",
            ),
            ("api = \"cohere\"", "upstreams.mock.api", "not one of"),
            (
                "default_max_tokens = 10",
                "upstreams.mock.default_max_tokens",
                "only for",
            ),
            (
                "api = \"anthropic\"\ndefault_max_tokens = 0",
                "upstreams.mock.default_max_tokens",
                "1..=",
            ),
        ];
        for (extra, path, msg) in cases {
            let errs = errors_of(&with(extra));
            assert!(
                errs.iter()
                    .any(|e| e.path == path && e.message.contains(msg)),
                "{extra}: {errs:?}"
            );
        }
    }

    #[test]
    fn server_header_is_printable_and_short() {
        for (value, ok) in [
            ("acme", true),
            ("", false),
            ("a\tb", false),
            (&"x".repeat(65), false),
        ] {
            let text = GOOD.replace(
                "[server]\n",
                &format!("[server]\nserver_header = {value:?}\n"),
            );
            let errs = errors_of(&text);
            let flagged = errs.iter().any(|e| e.path == "server.server_header");
            assert_eq!(!flagged, ok, "{value:?}: {errs:?}");
        }
    }

    /// Invalid TOML that panics toml_edit 0.23's parser is one located error, not a panic
    /// (found by the `config` fuzz target; a panic here would stop the reload thread).
    #[test]
    fn toml_that_panics_toml_edit_is_an_error() {
        let errs = errors_of("={[]\n.");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, Some(1));
    }

    /// Each broken config names the key path and line of its mistake.
    #[test]
    fn errors_carry_path_and_line() {
        let cases: &[(&str, &str, &str, usize)] = &[
            ("unknown key", "[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n", "server.listn", 3),
            ("bad listen", "[server]\nlisten = \"nope\"\n", "server.listen", 2),
            (
                "missing upstream",
                "[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"ghost\"\n",
                "routes[0].upstream",
                4,
            ),
            (
                "bad balance",
                "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\nbalance = \"random\"\n",
                "upstreams.a.balance",
                3,
            ),
            ("wrong type", "[server]\nworkers = \"two\"\n", "server.workers", 2),
            (
                "ca_file on http",
                "[upstreams.a]\nurl = \"http://h:1\"\nca_file = \"ca.pem\"\n",
                "upstreams.a.ca_file",
                3,
            ),
            (
                "missing ca_file",
                "[upstreams.a]\nurl = \"https://h\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "upstreams.a.ca_file",
                3,
            ),
            (
                "bad retry",
                "[upstreams.a]\nurl = \"http://h:1\"\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"a\"\nretry_on = [\"oops\"]\n",
                "routes[0].retry_on[0]",
                7,
            ),
        ];
        for (name, text, path, line) in cases {
            let errs = errors_of(text);
            let found = errs.iter().find(|e| e.path == *path);
            let Some(e) = found else {
                panic!("{name}: no error at {path}; got {errs:?}");
            };
            assert_eq!(e.line, Some(*line), "{name}: {e}");
        }
    }

    #[test]
    fn https_upstreams_get_one_tls_config_and_plain_ones_none() {
        let text = GOOD.replace("http://127.0.0.1:9000/v1", "https://api.example.com/v1");
        let cfg = crate::config::load_bytes(text.as_bytes(), Path::new(".")).expect("valid");
        let tls = cfg.upstreams[0].tls.as_ref().expect("tls settings");
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(cfg.upstreams[0].endpoints[0].port, 443);
        let plain = crate::config::load_bytes(GOOD.as_bytes(), Path::new(".")).expect("valid");
        assert!(plain.upstreams[0].tls.is_none());
    }

    #[test]
    fn all_errors_at_once() {
        let text = "[server]\nlisten = \"x\"\n[admin]\nlisten = \"y\"\n[[routes]]\nname = \"r\"\nprefix = \"nope\"\nupstream = \"z\"\n";
        let errs = errors_of(text);
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "server.listen",
            "admin.listen",
            "routes[0].prefix",
            "routes[0].upstream",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn underscores_in_headers_is_validated_and_guards_limit_keys() {
        let with = |server: &str, key: &str| {
            let text = GOOD.replace(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"127.0.0.1:8080\"\n{server}"),
            ) + &format!("[limits.l]\nrate_per_second = 1.0\nkey = \"{key}\"\n");
            errors_of(&text)
        };
        let cfg = crate::config::load_bytes(GOOD.as_bytes(), Path::new(".")).expect("valid");
        assert_eq!(cfg.server.underscores_in_headers, UnderscoreHeaders::Drop);
        let errs = with("underscores_in_headers = \"keep\"", "client_ip");
        assert!(
            errs.iter()
                .any(|e| e.path == "server.underscores_in_headers"),
            "{errs:?}"
        );
        // A limit keyed on a header the gateway drops or refuses is an error...
        for mode in [
            "",
            "underscores_in_headers = \"drop\"",
            "underscores_in_headers = \"reject\"",
        ] {
            let errs = with(mode, "header:x_user");
            assert!(
                errs.iter().any(|e| e.path == "limits.l.key"),
                "{mode}: {errs:?}"
            );
        }
        // ...unless such headers are allowed; dashes are always fine.
        assert_eq!(
            with("underscores_in_headers = \"allow\"", "header:x_user"),
            vec![]
        );
        assert_eq!(with("", "header:x-user"), vec![]);
    }

    /// No error about a secret file quotes its content (errors reach logs and `/config`).
    #[test]
    fn secret_file_errors_never_echo_the_secret() {
        let dir = std::env::temp_dir().join(format!("ringgate-secret-errs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = "sk-live-7f3a9c1e5b";
        let h = "b".repeat(64);
        let cases = [
            // api_key_file: a key with a line break or a space in it cannot be a header.
            (
                "api",
                format!("{secret}\nsecond line"),
                "upstreams.mock.api_key_file",
            ),
            (
                "api",
                format!("Bearer {secret}"),
                "upstreams.mock.api_key_file",
            ),
            // [auth] keys file: a plaintext key where its sha256 belongs, either way round.
            (
                "keys",
                format!("team-a {h}\nteam-b {secret}\n"),
                "auth.keys_file",
            ),
            ("keys", format!("{secret} team-b\n"), "auth.keys_file"),
            ("keys", format!("{secret}\n"), "auth.keys_file"),
        ];
        for (kind, content, path) in cases {
            std::fs::write(dir.join("secret"), &content).expect("write");
            let extra = match kind {
                "api" => "api_key_file = \"secret\"\n",
                _ => "[auth]\nkeys_file = \"secret\"\n",
            };
            let text = GOOD.replace(
                "url = \"http://127.0.0.1:9000/v1\"\n",
                &format!(
                    "url = \"http://127.0.0.1:9000/v1\"\n{}",
                    if kind == "api" { extra } else { "" }
                ),
            ) + if kind == "keys" { extra } else { "" };
            let err = match crate::config::load_bytes(text.as_bytes(), &dir) {
                Ok(_) => panic!("{content:?} accepted"),
                Err(e) => e,
            };
            assert!(err.0.iter().any(|e| e.path == path), "{content:?}: {err}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(secret), "{content:?}: {shown}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A config that would take every route down is an error unless opted into.
    #[test]
    fn no_routes_is_an_error_unless_allowed() {
        for (text, want) in [
            ("", "the config is empty"),
            ("# nothing yet\n\n", "the config is empty"),
            ("[server]\nlisten = \"127.0.0.1:8080\"\n", "no [[routes]]"),
        ] {
            let errs = errors_of(text);
            assert!(
                errs.iter().any(|e| e.message.contains(want)),
                "{text:?}: {errs:?}"
            );
            assert!(
                errs.iter().any(|e| e.message.contains("allow_no_routes")),
                "{errs:?}"
            );
        }
        let allowed = "[server]\nallow_no_routes = true\n";
        let cfg = crate::config::load_bytes(allowed.as_bytes(), Path::new(".")).expect("opted in");
        assert!(cfg.routes.is_empty());
    }

    /// Route matchers are compared with normalized request paths, so they must be normal.
    #[test]
    fn route_paths_must_be_normal() {
        for (bad, path) in [
            ("/v1//chat", "routes[0].prefix"),
            ("/v1/./chat", "routes[0].prefix"),
            ("/v1/%63hat", "routes[0].prefix"),
            ("/v1/a%2Fb", "routes[0].prefix"),
        ] {
            let text = GOOD.replace(
                "prefix = \"/v1/chat/completions\"",
                &format!("prefix = \"{bad}\""),
            );
            let errs = errors_of(&text);
            assert!(errs.iter().any(|e| e.path == path), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:80", None), Some(("a.b".into(), 80)));
        assert_eq!(split_host_port("[::1]:8", None), Some(("::1".into(), 8)));
        assert_eq!(
            split_host_port("host", Some(443)),
            Some(("host".into(), 443))
        );
        assert_eq!(split_host_port("host", None), None);
        assert_eq!(split_host_port("ho st:1", None), None);
    }
}
