//! Trust at the edge, end to end through the real binary and the mock provider: requests
//! reach only what their route allows (normalized paths, method sets, underscore headers).

mod common;

use common::gateway::{request, Gateway, Response, DRIVERS};
use ringgate_mock::MockProvider;

fn config(mock: &MockProvider, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1
{server_extra}

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
upstream = "mock"

[[routes]]
name = "public"
prefix = "/public/"
upstream = "mock"

[[routes]]
name = "embeddings"
exact = "/v1/embeddings"
methods = ["POST"]
rewrite = "/embeddings"
upstream = "mock"
"#,
        mock = mock.addr()
    )
}

fn get(gw: &Gateway, target: &str, extra: &str) -> Response {
    request(
        gw.addr,
        &format!("GET {target} HTTP/1.1\r\nhost: gw\r\n{extra}connection: close\r\n\r\n"),
    )
    .expect("response")
}

/// Paths are normalized before routing: the upstream only ever receives a path under the
/// route it matched, and ambiguous spellings are refused before reaching it.
#[test]
fn paths_are_normalized_before_routing_and_never_leave_the_prefix() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock, ""), DRIVERS[0]);
    // (target, the gateway's status, what the upstream receives — None: nothing)
    let cases: &[(&str, u16, Option<&str>)] = &[
        (
            "/v1//chat//completions?a=1",
            200,
            Some("/v1/chat/completions?a=1"),
        ),
        ("/v1/%63hat/completions", 200, Some("/v1/chat/completions")),
        (
            "/v1/chat/completions/../../../public/x",
            200,
            Some("/v1/public/x"),
        ),
        ("/v1/chat/completions/../../admin", 404, None),
        ("/v1/chat/completions/../../../admin", 404, None),
        ("/v1/chat/completions/%2e%2e/%2e%2e/admin", 400, None),
        ("/v1//x/%2e%2e/%2E%2E/admin", 400, None),
        ("/v1/chat/completions/..;/..;/admin", 400, None),
        ("/v1/chat/completions/..%2f..%2fadmin", 400, None),
        ("/v1/chat/completions/..%5c..%5cadmin", 400, None),
        ("/public/../../etc/passwd", 400, None),
    ];
    for (target, status, upstream) in cases {
        let before = mock.request_count();
        let r = get(&gw, target, "");
        // Requests that reach the mock get its answer (a 405 for GET on chat); only the
        // gateway's own refusals are checked by status.
        if upstream.is_none() {
            assert_eq!(r.status, *status, "{target}: {}", r.text());
            assert!(
                r.json()["error"]["message"].is_string(),
                "{target}: OpenAI error shape: {}",
                r.text()
            );
        }
        let seen = mock.requests();
        match upstream {
            Some(want) => {
                assert_eq!(seen.len(), before + 1, "{target}");
                assert_eq!(
                    seen.last().map(|r| r.path.as_str()),
                    Some(*want),
                    "{target}"
                );
            }
            None => assert_eq!(seen.len(), before, "{target} reached the upstream"),
        }
    }
    for r in mock.requests() {
        assert!(
            r.path.starts_with("/v1/chat/completions") || r.path.starts_with("/v1/public/"),
            "upstream received {} outside every route's prefix",
            r.path
        );
    }
}

/// TRACE and CONNECT are never forwarded, whatever the route; a route without `methods`
/// takes the default set; a method the route does not take is a 405 with `Allow`.
#[test]
fn methods_outside_the_route_are_405_with_allow() {
    const DEFAULT_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock, ""), DRIVERS[0]);
    let cases: &[(&str, &str, &str)] = &[
        ("TRACE", "/public/x", DEFAULT_ALLOW),
        ("TRACE", "/nowhere", DEFAULT_ALLOW),
        ("CONNECT", "example.com:443", DEFAULT_ALLOW),
        ("PROPFIND", "/public/x", DEFAULT_ALLOW),
        ("GET", "/v1/embeddings", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
    ];
    for (method, target, allow) in cases {
        let r = request(
            gw.addr,
            &format!("{method} {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"),
        )
        .expect("response");
        assert_eq!(r.status, 405, "{method} {target}: {}", r.text());
        assert_eq!(r.header("allow"), Some(*allow), "{method} {target}");
        assert_eq!(
            r.json()["error"]["code"],
            "method_not_allowed",
            "{method} {target}"
        );
    }
    assert_eq!(mock.request_count(), 0, "nothing was forwarded");
    // The default set still reaches the upstream, and a path no route serves stays 404.
    let r = request(
        gw.addr,
        "DELETE /public/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("response");
    assert_ne!(r.status, 405, "{}", r.text());
    assert_eq!(
        mock.requests().last().map(|r| r.method.as_str()),
        Some("DELETE")
    );
    assert_eq!(get(&gw, "/nowhere", "").status, 404);
}

/// Header names with `_` are dropped before the upstream by default, so `X_Forwarded_For`
/// cannot pass for the `X-Forwarded-For` the gateway sets; "allow" forwards them and
/// "reject" answers 400.
#[test]
fn underscore_headers_are_dropped_by_default_allowed_or_rejected_on_request() {
    let sent = "X_Forwarded_For: 6.6.6.6\r\nx_custom: a\r\nx-ok: b\r\n";
    for (mode, status) in [("", 0), ("allow", 0), ("drop", 0), ("reject", 400)] {
        let mock = MockProvider::start("127.0.0.1:0").expect("mock");
        let extra = if mode.is_empty() {
            String::new()
        } else {
            format!("underscores_in_headers = \"{mode}\"")
        };
        let gw = Gateway::start(&config(&mock, &extra), DRIVERS[0]);
        let r = get(&gw, "/public/x", sent);
        let seen = mock.requests();
        if status != 0 {
            assert_eq!(r.status, status, "{mode}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "bad_request", "{mode}");
            assert!(seen.is_empty(), "{mode}: forwarded");
            continue;
        }
        let up = seen.last().expect("forwarded");
        let names: Vec<&str> = up.headers.iter().map(|(n, _)| n.as_str()).collect();
        let forwarded = mode == "allow";
        assert_eq!(
            up.header("x_custom").is_some(),
            forwarded,
            "{mode}: {names:?}"
        );
        assert_eq!(
            up.header("X_Forwarded_For").is_some(),
            forwarded,
            "{mode}: {names:?}"
        );
        assert_eq!(up.header("x-ok"), Some("b"), "{mode}");
        assert_eq!(up.header("x-forwarded-for"), Some("127.0.0.1"), "{mode}");
    }
}

/// A limit keyed by `api_key` reads the key through `ai::auth::presented_key`, so one key
/// spelled three ways is one bucket. Ignored until `admit` in src/proxy/forward.rs (being
/// rewritten elsewhere) calls `presented_key` instead of reading the raw header; it fails
/// today with [200, 200, 200].
#[test]
fn api_key_limit_is_one_bucket_however_the_key_is_spelled() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let text = config(&mock, "").replace(
        "[[routes]]\nname = \"public\"\nprefix = \"/public/\"\nupstream = \"mock\"\n",
        "[[routes]]\nname = \"public\"\nprefix = \"/public/\"\nupstream = \"mock\"\nlimit = \"k\"\n\n[limits.k]\nrate_per_second = 0.01\nburst = 1\nkey = \"api_key\"\n",
    );
    assert!(text.contains("[limits.k]"), "{text}");
    let gw = Gateway::start(&text, DRIVERS[0]);
    let statuses: Vec<u16> = [
        "authorization: Bearer sk-a\r\n",
        "authorization: bearer  sk-a \r\n",
        "authorization: BEARER\tsk-a\r\n",
    ]
    .iter()
    .map(|h| get(&gw, "/public/echo", h).status)
    .collect();
    assert_eq!(statuses, vec![200, 200, 429]);
    // Another key has its own bucket.
    assert_eq!(
        get(&gw, "/public/echo", "authorization: Bearer sk-b\r\n").status,
        200
    );
}

/// Every answer the gateway writes itself carries a `Date` (RFC 9110 §6.6.1), as the
/// upstream's answers do.
#[test]
fn gateway_made_answers_carry_a_date() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock, ""), DRIVERS[0]);
    let is_date = |v: Option<&str>| {
        v.is_some_and(|d| d.len() == 29 && d.ends_with(" GMT") && d.as_bytes()[3] == b',')
    };
    for (what, r) in [
        ("/health", get(&gw, "/health", "")),
        ("404", get(&gw, "/nowhere", "")),
        ("405", get(&gw, "/v1/embeddings", "")),
        ("400", get(&gw, "/v1/%2e%2e/x", "")),
        ("admin", gw.admin_get("/ready")),
        ("proxied", get(&gw, "/public/echo", "")),
    ] {
        assert!(is_date(r.header("date")), "{what}: {:?}", r.headers);
    }
}

/// The access log counts the bytes of answers the gateway wrote itself, as it counts
/// proxied ones.
#[test]
fn the_access_log_counts_gateway_made_answers() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock, ""), DRIVERS[0]);
    let r = get(&gw, "/nowhere-at-all", "x-request-id: count-me-404\r\n");
    assert_eq!(r.status, 404);
    let start = std::time::Instant::now();
    let line = loop {
        let logs = gw.logs();
        if let Some(l) = logs
            .lines()
            .find(|l| l.contains("count-me-404") && l.contains("access"))
        {
            break l.to_string();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "no access line:\n{logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let want = format!("bytes_out={}", r.body.len());
    assert!(line.contains(&want), "{line} lacks {want}");
}

/// `server.server_header` names the gateway on the answers it writes itself; by default it
/// sends none, and a proxied answer keeps the upstream's.
#[test]
fn the_server_header_is_configurable() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let gw = Gateway::start(&config(&mock, ""), DRIVERS[0]);
    assert_eq!(get(&gw, "/nowhere", "").header("server"), None);
    drop(gw);
    let gw = Gateway::start(
        &config(&mock, "server_header = \"acme-gateway\""),
        DRIVERS[0],
    );
    for target in ["/nowhere", "/health"] {
        let r = get(&gw, target, "");
        assert_eq!(r.header("server"), Some("acme-gateway"), "{target}");
    }
    let proxied = get(&gw, "/public/echo", "");
    assert_eq!(proxied.header("server"), Some("ringgate-mock"));
}
