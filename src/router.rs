//! Route matching: exact paths first, then prefixes longest first, each filtered by method and
//! host, in declaration order among equals. Built once per config; matching allocates nothing.

use std::collections::HashMap;

use crate::config::{PathMatch, Route};

/// The compiled route table of one config generation.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, Vec<usize>>,
    /// Indices of prefix routes, longest prefix first, then declaration order.
    prefixes: Vec<usize>,
}

impl RouteTable {
    /// Orders `routes` for matching.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefixes = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.matcher {
                PathMatch::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(_) => prefixes.push(i),
            }
        }
        prefixes.sort_by_key(|&i| match &routes[i].matcher {
            PathMatch::Prefix(p) => (std::cmp::Reverse(p.len()), i),
            PathMatch::Exact(_) => (std::cmp::Reverse(0), i),
        });
        Self {
            routes,
            exact,
            prefixes,
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All routes in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// All routes, mutable (a new generation takes over runtime state before it is published).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Route> {
        self.routes.iter_mut()
    }

    /// The route for a request; `host` is the Host header without its port, lowercase.
    pub fn find(&self, method: &str, host: Option<&str>, path: &str) -> Option<&Route> {
        let accepts = |r: &&Route| {
            (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
                && r.host.as_deref().is_none_or(|h| host == Some(h))
        };
        if let Some(list) = self.exact.get(path) {
            if let Some(r) = list.iter().map(|&i| &self.routes[i]).find(accepts) {
                return Some(r);
            }
        }
        self.prefixes
            .iter()
            .map(|&i| &self.routes[i])
            .filter(|r| matches!(&r.matcher, PathMatch::Prefix(p) if path.starts_with(p.as_str())))
            .find(accepts)
    }
}

/// The path sent upstream: the matched prefix replaced by `rewrite` (exact routes replace the
/// whole path), then the upstream URL's path prepended. `query` is kept as is.
pub fn upstream_target(
    route: &Route,
    base_path: &str,
    path: &str,
    query: Option<&str>,
    out: &mut String,
) {
    out.clear();
    out.push_str(base_path);
    let rest = match (&route.rewrite, &route.matcher) {
        (Some(rw), PathMatch::Prefix(p)) => {
            out.push_str(rw);
            path.get(p.len()..).unwrap_or("")
        }
        (Some(rw), PathMatch::Exact(_)) => {
            out.push_str(rw);
            ""
        }
        (None, _) => path,
    };
    // Join without doubling or losing the slash between the parts.
    if out.ends_with('/') && rest.starts_with('/') {
        out.push_str(&rest[1..]);
    } else if !out.is_empty()
        && !out.ends_with('/')
        && !rest.is_empty()
        && !rest.starts_with('/')
        && route.rewrite.is_none()
    {
        out.push('/');
        out.push_str(rest);
    } else {
        out.push_str(rest);
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(
        name: &str,
        m: PathMatch,
        methods: &[&str],
        host: Option<&str>,
        rewrite: Option<&str>,
    ) -> Route {
        Route {
            name: name.into(),
            matcher: m,
            methods: methods.iter().map(|s| s.to_string()).collect(),
            host: host.map(Into::into),
            rewrite: rewrite.map(Into::into),
            upstream: Some(0),
            route_by_model: false,
            auth: true,
            cache_ttl: None,
            cache_shared: false,
            limit: None,
            connect_timeout: None,
            send_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            retry_on: vec![],
            tries: 1,
            retry_budget: Duration::from_secs(1),
            max_in_flight: None,
            in_flight: Default::default(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route(
                "fallback",
                PathMatch::Prefix("/v1/".into()),
                &[],
                None,
                None,
            ),
            route(
                "chat",
                PathMatch::Prefix("/v1/chat/completions".into()),
                &["POST"],
                None,
                Some("/chat/completions"),
            ),
            route(
                "models",
                PathMatch::Exact("/v1/models".into()),
                &["GET"],
                None,
                Some("/models"),
            ),
            route(
                "internal",
                PathMatch::Prefix("/v1/chat".into()),
                &[],
                Some("internal.local"),
                None,
            ),
        ])
    }

    #[test]
    fn matching_order() {
        let t = table();
        let cases = [
            ("POST", None, "/v1/chat/completions", Some("chat")),
            ("GET", None, "/v1/chat/completions", Some("fallback")),
            (
                "POST",
                Some("internal.local"),
                "/v1/chat/x",
                Some("internal"),
            ),
            ("POST", None, "/v1/chat/x", Some("fallback")),
            ("GET", None, "/v1/models", Some("models")),
            ("POST", None, "/v1/models", Some("fallback")),
            ("GET", None, "/v2/x", None),
        ];
        for (m, h, p, want) in cases {
            assert_eq!(
                t.find(m, h, p).map(|r| r.name.as_str()),
                want,
                "{m} {h:?} {p}"
            );
        }
    }

    #[test]
    fn targets() {
        let t = table();
        let mut out = String::new();
        let chat = t.find("POST", None, "/v1/chat/completions").expect("chat");
        upstream_target(chat, "/v1", "/v1/chat/completions", Some("a=1"), &mut out);
        assert_eq!(out, "/v1/chat/completions?a=1");
        let fb = t.find("GET", None, "/v1/files").expect("fallback");
        upstream_target(fb, "", "/v1/files", None, &mut out);
        assert_eq!(out, "/v1/files");
        upstream_target(fb, "/api/", "/v1/files", None, &mut out);
        assert_eq!(out, "/api/v1/files");
        let models = t.find("GET", None, "/v1/models").expect("models");
        upstream_target(models, "", "/v1/models", None, &mut out);
        assert_eq!(out, "/models");
    }
}
