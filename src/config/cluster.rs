//! `[cluster]` validated and compiled: the Redis URL taken apart, the password read from
//! its Secret file (a config input, so a rotation re-applies the config), and the scope of
//! each limit (`scope = "cluster"`) resolved against it.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compiled::{ClusterSettings, LimitScope, OnUnavailable, Secret};
use super::raw::RawCluster;
use super::validate::Errors;
use crate::upstream::tls::{self, UpstreamTls};

/// The env var that overrides `[cluster] replicas` (set it from the Deployment, e.g. to the
/// autoscaler's maximum: Kubernetes' downward API exposes no replica count).
pub const REPLICAS_ENV: &str = "RINGGATE_CLUSTER_REPLICAS";

/// Compiles `[cluster]`; the password file's path goes to `watched`.
pub(super) fn compile_cluster(
    raw: &RawCluster,
    base_dir: &Path,
    secrets: super::SecretFiles,
    watched: &mut Vec<PathBuf>,
    errs: &mut Errors,
) -> Option<Arc<ClusterSettings>> {
    let target = parse_redis_url(&raw.redis_url);
    if let Err(e) = &target {
        errs.push("cluster.redis_url", e.clone());
    }
    let on_unavailable = match raw.on_unavailable.as_str() {
        "local" => OnUnavailable::Local,
        "deny" => OnUnavailable::Deny,
        other => {
            errs.push(
                "cluster.on_unavailable",
                format!("`{other}` is not one of local, deny"),
            );
            OnUnavailable::Local
        }
    };
    if !(1..=60_000).contains(&raw.timeout_ms) {
        errs.push("cluster.timeout_ms", "must be within 1..=60000");
    }
    if !(1..=10_000).contains(&raw.replicas) {
        errs.push("cluster.replicas", "must be within 1..=10000");
    }
    if !(1..=1000).contains(&raw.breaker_failures) {
        errs.push("cluster.breaker_failures", "must be within 1..=1000");
    }
    if !(1..=600_000).contains(&raw.breaker_open_ms) {
        errs.push("cluster.breaker_open_ms", "must be within 1..=600000");
    }
    if raw.default_max_tokens > 10_000_000 {
        errs.push("cluster.default_max_tokens", "at most 10000000");
    }
    let replicas = match std::env::var(REPLICAS_ENV) {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                errs.push(
                    "cluster.replicas",
                    format!("{REPLICAS_ENV} must be a number within 1..=10000"),
                );
                raw.replicas
            }
        },
        Err(_) => raw.replicas,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let password = match &raw.password_file {
        None => None,
        Some(f) if f.trim().is_empty() => {
            errs.push("cluster.password_file", "must not be empty");
            None
        }
        Some(f) => {
            let p = base_dir.join(f);
            watched.push(p.clone());
            if secrets == super::SecretFiles::Skip {
                None
            } else {
                match std::fs::read(&p) {
                    Ok(bytes) => {
                        // A trailing newline is how most editors and `echo` write a file.
                        let pw = bytes.trim_ascii_end();
                        if pw.is_empty() {
                            errs.push("cluster.password_file", format!("{} is empty", p.display()));
                            None
                        } else {
                            pw.hash(&mut hasher);
                            Some(Secret(pw.to_vec()))
                        }
                    }
                    Err(e) => {
                        errs.push(
                            "cluster.password_file",
                            format!("cannot read {}: {e}", p.display()),
                        );
                        None
                    }
                }
            }
        }
    };
    let tls = compile_tls(
        raw,
        target.as_ref().ok(),
        base_dir,
        secrets,
        watched,
        &mut hasher,
        errs,
    );
    let target = target.ok()?;
    target.hash(&mut hasher);
    let addrs = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => Vec::new(),
    };
    Some(Arc::new(ClusterSettings {
        host: target.host,
        port: target.port,
        addrs: arc_swap::ArcSwap::from_pointee(addrs),
        username: target.username,
        db: target.db,
        password,
        tls,
        timeout: std::time::Duration::from_millis(raw.timeout_ms),
        on_unavailable,
        replicas,
        breaker_failures: raw.breaker_failures,
        breaker_open: std::time::Duration::from_millis(raw.breaker_open_ms),
        default_max_tokens: raw.default_max_tokens,
        fingerprint: hasher.finish(),
    }))
}

/// The TLS client config of a `rediss://` store: trust from `ca_file` (read now, its bytes
/// in the fingerprint so a rotated CA reconnects) or the webpki roots; SNI from the host.
fn compile_tls(
    raw: &RawCluster,
    target: Option<&RedisTarget>,
    base_dir: &Path,
    secrets: super::SecretFiles,
    watched: &mut Vec<PathBuf>,
    hasher: &mut impl Hasher,
    errs: &mut Errors,
) -> Option<UpstreamTls> {
    let target = target?;
    if !target.tls {
        if raw.ca_file.is_some() {
            errs.push("cluster.ca_file", "only applies to a rediss:// redis_url");
        }
        return None;
    }
    let ca = match &raw.ca_file {
        None => None,
        Some(f) if f.trim().is_empty() => {
            errs.push("cluster.ca_file", "must not be empty");
            return None;
        }
        Some(f) => {
            let p = base_dir.join(f);
            watched.push(p.clone());
            if secrets == super::SecretFiles::Skip {
                None
            } else {
                match std::fs::read(&p) {
                    Ok(bytes) => {
                        bytes.hash(hasher);
                        Some((p, bytes))
                    }
                    Err(e) => {
                        errs.push(
                            "cluster.ca_file",
                            format!("cannot read {}: {e}", p.display()),
                        );
                        return None;
                    }
                }
            }
        }
    };
    let config =
        match tls::client_config_with_alpn(ca.as_ref().map(|(_, b)| b.as_slice()), Vec::new()) {
            Ok(c) => c,
            Err(e) => {
                let file = ca.as_ref().map(|(p, _)| p.display().to_string());
                errs.push(
                    "cluster.ca_file",
                    format!("{}: {e}", file.unwrap_or_default()),
                );
                return None;
            }
        };
    match tls::server_name(&target.host) {
        Ok(server_name) => Some(UpstreamTls {
            config,
            server_name,
        }),
        Err(e) => {
            errs.push("cluster.redis_url", e);
            None
        }
    }
}

/// A limit's `scope` value against the `[cluster]` it needs.
pub(super) fn compile_scope(
    value: &str,
    path: &str,
    cluster: Option<&ClusterSettings>,
    cluster_declared: bool,
    errs: &mut Errors,
) -> LimitScope {
    match value {
        "local" => LimitScope::Local,
        "cluster" => match cluster {
            Some(c) => LimitScope::Cluster {
                replicas: c.replicas,
            },
            None => {
                if !cluster_declared {
                    errs.push(path, "scope = \"cluster\" needs a [cluster] section");
                }
                LimitScope::Local
            }
        },
        other => {
            errs.push(path, format!("`{other}` is not one of local, cluster"));
            LimitScope::Local
        }
    }
}

/// The parts of a `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisTarget {
    /// Host name or IP literal (brackets removed).
    pub host: String,
    /// Port (6379 by default).
    pub port: u16,
    /// ACL user, when the URL names one (`redis://user@host`).
    pub username: Option<String>,
    /// Database index from the path (`/2`), 0 by default.
    pub db: u32,
    /// `rediss://`: TLS.
    pub tls: bool,
}

/// Parses `redis[s]://[user@]host[:port][/db]`. A password in the URL is refused: it would
/// be shown wherever the config is (use `password_file`).
pub fn parse_redis_url(url: &str) -> Result<RedisTarget, String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("redis://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (r, true)
    } else {
        return Err("must start with redis:// or rediss://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let username = match userinfo {
        Some(u) if u.contains(':') => {
            return Err("a password in the URL is refused (it would be shown with the config); use password_file".into())
        }
        Some("") | None => None,
        Some(u) => Some(u.to_string()),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or("unclosed `[` in the host")?;
        let port = v6[end + 1..].strip_prefix(':');
        (&v6[..end], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    let db = if path.is_empty() {
        0
    } else {
        path.parse::<u32>()
            .map_err(|_| format!("path `/{path}` is not a database number"))?
    };
    Ok(RedisTarget {
        host: host.to_string(),
        port,
        username,
        db,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitScope;

    const BASE: &str = r#"
[upstreams.u]
url = "http://127.0.0.1:9000"
[[routes]]
name = "r"
prefix = "/"
upstream = "u"
limit = "l"
"#;

    fn load(extra: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        crate::config::load_bytes(format!("{BASE}{extra}").as_bytes(), Path::new("."))
    }

    #[test]
    fn scope_is_validated_against_cluster() {
        let local = load("[limits.l]\nrate_per_second = 1.0\n").expect("valid");
        assert_eq!(local.limits[0].scope, LimitScope::Local, "default local");
        assert!(local.cluster.is_none());
        let e = load("[limits.l]\nrate_per_second = 1.0\nscope = \"cluster\"\n")
            .expect_err("no [cluster]");
        assert!(e.0.iter().any(|e| e.path == "limits.l.scope"), "{e}");
        let e =
            load("[limits.l]\nrate_per_second = 1.0\nscope = \"global\"\n").expect_err("bad scope");
        assert!(e.0.iter().any(|e| e.path == "limits.l.scope"), "{e}");
        let ok = load(
            "[cluster]\nredis_url = \"redis://10.0.0.5/1\"\nreplicas = 4\non_unavailable = \"deny\"\n\
             [limits.l]\nrate_per_second = 1.0\nscope = \"cluster\"\n",
        )
        .expect("valid");
        assert_eq!(ok.limits[0].scope, LimitScope::Cluster { replicas: 4 });
        let c = ok.cluster.as_ref().expect("cluster");
        assert_eq!(
            (c.db, c.timeout.as_millis(), c.on_unavailable),
            (1, 20, crate::config::OnUnavailable::Deny)
        );
        assert_eq!(
            **c.addrs.load(),
            vec!["10.0.0.5:6379".parse::<SocketAddr>().expect("addr")]
        );
        for (extra, path) in [
            ("on_unavailable = \"maybe\"", "cluster.on_unavailable"),
            ("timeout_ms = 0", "cluster.timeout_ms"),
            ("replicas = 0", "cluster.replicas"),
            ("breaker_failures = 0", "cluster.breaker_failures"),
            (
                "password_file = \"/nonexistent/ringgate-pw\"",
                "cluster.password_file",
            ),
            ("ca_file = \"ca.pem\"", "cluster.ca_file"),
        ] {
            let e = load(&format!(
                "[cluster]\nredis_url = \"redis://h\"\n{extra}\n[limits.l]\nrate_per_second = 1.0\n"
            ))
            .expect_err(extra);
            assert!(e.0.iter().any(|e| e.path == path), "{extra}: {e}");
        }
    }

    #[test]
    fn rediss_builds_a_tls_config_and_checks_its_ca_file() {
        let cfg = |extra: &str| {
            format!(
                "[cluster]\nredis_url = \"rediss://redis.internal:6380\"\n{extra}\n\
                 [limits.l]\nrate_per_second = 1.0\n"
            )
        };
        let ok = load(&cfg("")).expect("webpki roots");
        let c = ok.cluster.as_ref().expect("cluster");
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(
            format!("{:?}", tls.server_name),
            format!("{:?}", tls::server_name("redis.internal").expect("name"))
        );
        assert!(
            tls.config.alpn_protocols.is_empty(),
            "Redis negotiates no ALPN"
        );
        let dir = std::env::temp_dir().join(format!("ringgate-cluster-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("junk.pem");
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        for (extra, why) in [
            ("ca_file = \"/nonexistent/ringgate-ca.pem\"", "missing"),
            (&*format!("ca_file = \"{}\"", not_pem.display()), "not PEM"),
            ("ca_file = \"\"", "empty"),
        ] {
            let e = load(&cfg(extra)).expect_err(why);
            assert!(
                e.0.iter().any(|e| e.path == "cluster.ca_file"),
                "{why}: {e}"
            );
        }
        let ca =
            rcgen::generate_simple_self_signed(vec!["redis.internal".to_string()]).expect("ca");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write");
        let a = load(&cfg(&format!("ca_file = \"{}\"", ca_path.display()))).expect("valid");
        let a_c = a.cluster.as_ref().expect("cluster");
        assert!(a_c.tls.is_some());
        assert!(
            a.watched_files.contains(&ca_path),
            "the CA file is a watched input"
        );
        let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).expect("ca");
        std::fs::write(&ca_path, other.cert.pem()).expect("write");
        let b = load(&cfg(&format!("ca_file = \"{}\"", ca_path.display()))).expect("valid");
        assert_ne!(
            a_c.fingerprint,
            b.cluster.as_ref().expect("cluster").fingerprint,
            "a rotated CA makes the workers reconnect"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_urls_parse_or_say_why_not() {
        let t = parse_redis_url("redis://ringgate-redis:6380/2").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.username),
            ("ringgate-redis", 6380, 2, None)
        );
        let t = parse_redis_url("redis://gw@[::1]").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.username.as_deref()),
            ("::1", 6379, Some("gw"))
        );
        let t = parse_redis_url("rediss://gw@redis.internal:6380").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls, t.username.as_deref()),
            ("redis.internal", 6380, true, Some("gw"))
        );
        assert!(!parse_redis_url("redis://h").expect("valid").tls);
        for bad in [
            "rediss://",
            "rediss://u:pw@h",
            "http://h",
            "redis://:pw@h",
            "redis://u:pw@h",
            "redis://h:0",
            "redis://h:x",
            "redis:///0",
            "redis://h/x",
        ] {
            assert!(parse_redis_url(bad).is_err(), "{bad}");
        }
        let e = parse_redis_url("redis://u:hunter2@h").expect_err("refused");
        assert!(!e.contains("hunter2"), "a password is never echoed: {e}");
    }
}
