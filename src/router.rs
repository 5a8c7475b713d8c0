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
    pub fn find<'a>(&'a self, method: &str, host: Option<&str>, path: &str) -> Option<&'a Route> {
        self.candidates(host, path)
            .find(|r| allows_method(r, method))
    }

    /// The routes whose path and host match, in matching order (method not considered).
    fn candidates<'a: 'b, 'b>(
        &'a self,
        host: Option<&'b str>,
        path: &'b str,
    ) -> impl Iterator<Item = &'a Route> + 'b {
        let exact = self.exact.get(path).into_iter().flatten();
        let prefixes = self.prefixes.iter().filter(move |&&i| {
            matches!(&self.routes[i].matcher, PathMatch::Prefix(p) if path.starts_with(p.as_str()))
        });
        exact
            .chain(prefixes)
            .map(|&i| &self.routes[i])
            .filter(move |r| r.host.as_deref().is_none_or(|h| host == Some(h)))
    }

    /// The `Allow` value for a path some route matches but not with the request's method
    /// (the union of those routes' methods, in a stable order); None when no route matches
    /// the path and host at all (a 404, not a 405). Only called on the error path.
    pub fn allowed_methods(&self, host: Option<&str>, path: &str) -> Option<String> {
        let mut set = std::collections::BTreeSet::new();
        for r in self.candidates(host, path) {
            if r.methods.is_empty() {
                set.extend(DEFAULT_METHODS.iter().copied());
            } else {
                set.extend(
                    r.methods
                        .iter()
                        .map(String::as_str)
                        .filter(|m| !is_never_forwarded(m)),
                );
            }
        }
        if set.is_empty() {
            return None;
        }
        // Method order of RFC 9110 §9.3 for the usual ones, then the rest alphabetically.
        let mut list: Vec<&str> = DEFAULT_METHODS
            .iter()
            .copied()
            .filter(|m| set.contains(m))
            .collect();
        list.extend(set.iter().filter(|m| !DEFAULT_METHODS.contains(m)));
        Some(list.join(", "))
    }
}

/// Methods a route without `methods` accepts (what an OpenAI-style API uses). TRACE and
/// CONNECT are never among them, nor accepted by any route.
pub const DEFAULT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The `Allow` value when no route says otherwise.
pub const DEFAULT_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// TRACE would reflect the request (cookies, keys the gateway added) back to the client;
/// CONNECT would turn the gateway into an open tunnel. Neither is ever forwarded.
pub fn is_never_forwarded(method: &str) -> bool {
    method == "TRACE" || method == "CONNECT"
}

/// Whether `route` accepts `method`: its own `methods`, or [`DEFAULT_METHODS`].
pub fn allows_method(route: &Route, method: &str) -> bool {
    if is_never_forwarded(method) {
        return false;
    }
    if route.methods.is_empty() {
        DEFAULT_METHODS.contains(&method)
    } else {
        route.methods.iter().any(|m| m == method)
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
            // Routes without `methods` take the default set, never TRACE or CONNECT.
            ("DELETE", None, "/v1/files/x", Some("fallback")),
            ("TRACE", None, "/v1/files/x", None),
            ("CONNECT", None, "/v1/files/x", None),
            ("PROPFIND", None, "/v1/files/x", None),
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
    fn allow_lists_what_the_matching_routes_accept() {
        let t = RouteTable::new(vec![
            route(
                "m",
                PathMatch::Exact("/v1/models".into()),
                &["GET", "HEAD"],
                None,
                None,
            ),
            route(
                "e",
                PathMatch::Prefix("/v1/e".into()),
                &["POST", "TRACE"],
                None,
                None,
            ),
            route(
                "h",
                PathMatch::Prefix("/v1/".into()),
                &["PUT"],
                Some("h.local"),
                None,
            ),
        ]);
        assert!(t.find("POST", None, "/v1/models").is_none());
        assert_eq!(
            t.allowed_methods(None, "/v1/models").as_deref(),
            Some("GET, HEAD")
        );
        // TRACE in a route's list (refused by validation anyway) is never allowed.
        assert!(t.find("TRACE", None, "/v1/e").is_none());
        assert_eq!(t.allowed_methods(None, "/v1/e").as_deref(), Some("POST"));
        assert_eq!(
            t.allowed_methods(Some("h.local"), "/v1/x").as_deref(),
            Some("PUT")
        );
        // Another host, or no path match: 404, not 405.
        assert_eq!(t.allowed_methods(None, "/v1/x"), None);
        assert_eq!(t.allowed_methods(None, "/v2"), None);
        assert_eq!(
            table().allowed_methods(None, "/v1/models").as_deref(),
            Some(DEFAULT_ALLOW)
        );
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
