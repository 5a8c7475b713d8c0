//! The JSON access log as a contract (`RINGGATE_LOG_FORMAT=json`, target `ringgate::access`),
//! read from the real binary's log: exactly one line per request for a 2xx, a 4xx, a 401, a
//! 429, a 504 and a cache hit; every field present with the request's values; `request_id`
//! equal to the `x-request-id` the client got; the query string never logged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::gateway::{request, temp_dir, wait_until, Driver, Gateway, Response};
use ringgate_mock::kubelet::ProjectedVolume;
use ringgate_mock::MockProvider;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields on every access line, whatever the outcome.
const ALWAYS: [&str; 15] = [
    "method",
    "path",
    "status",
    "route",
    "upstream",
    "bytes_in",
    "bytes_out",
    "request_id",
    "client_ip",
    "request_time",
    "model",
    "client",
    "cache",
    "truncated",
    "target",
];

/// Timings present once an upstream answered (plus `ttfb` for a stream).
const UPSTREAM_TIMINGS: [&str; 3] = [
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_response_time",
];

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(mock: &MockProvider, keys: &ProjectedVolume) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.alpha]
url = "http://{mock}/v1"
max_fails = 0

[models.gpt-4o]
upstream = "alpha"

[limits.one]
rate_per_second = 0.001
burst = 1
key = "client"

[auth]
keys_file = "{keys}/keys"

[auth.clients.limited]
limit = "one"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
read_timeout_ms = 300
cache_ttl_ms = 60000
"#,
        mock = mock.addr(),
        keys = keys.dir().display()
    )
}

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// One chat request; the query must never reach the log.
fn chat(gw: &Gateway, body: &str, headers: &str) -> Response {
    request(
        gw.addr,
        &format!(
            "POST /v1/chat/completions?api-version=secret-query HTTP/1.1\r\nhost: gw\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("request")
}

/// The access lines of the log so far, parsed.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "ringgate::access")
        .collect()
}

#[test]
fn one_json_access_line_per_request_with_every_field() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let dir = temp_dir("access-keys");
    let keys = ProjectedVolume::new(&dir.join("keys")).expect("volume");
    let mut files = BTreeMap::new();
    files.insert(
        "keys".to_string(),
        format!(
            "team-a {}\nlimited {}\n",
            sha_hex("sk-team-a"),
            sha_hex("sk-limited")
        )
        .into_bytes(),
    );
    keys.project(&files).expect("keys");
    let gw = Gateway::start_with_env(
        &config(&mock, &keys),
        Driver::IoUring,
        &[("RINGGATE_LOG_FORMAT", "json")],
    );
    let team_a = "authorization: Bearer sk-team-a\r\n";
    // burst = 1 lets two through at once; the third is refused.
    let limited = "authorization: Bearer sk-limited\r\ncache-control: no-cache\r\n";
    let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"another"}]}"#;

    // (name, response, expected status, expected cache field)
    let mut cases: Vec<(&str, Response, u16)> = Vec::new();
    cases.push(("2xx", chat(&gw, BODY, team_a), 200));
    // The first answer is stored once the response completed; poll until the cache holds it.
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("ringgate_cache_entries")
        .unwrap_or(0.0)
        >= 1.0));
    cases.push(("hit", chat(&gw, BODY, team_a), 200));
    let stream = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    cases.push(("stream", chat(&gw, stream, team_a), 200));
    cases.push((
        "4xx",
        chat(&gw, r#"{"model":"no-such-model","messages":[]}"#, team_a),
        404,
    ));
    cases.push((
        "401",
        chat(&gw, BODY, "authorization: Bearer sk-nope\r\n"),
        401,
    ));
    cases.push(("limited-ok", chat(&gw, other, limited), 200));
    cases.push(("limited-ok", chat(&gw, other, limited), 200));
    cases.push(("429", chat(&gw, other, limited), 429));
    cases.push((
        "504",
        chat(
            &gw,
            other,
            &format!("{team_a}x-mock-delay-ms: 3000\r\ncache-control: no-cache\r\n"),
        ),
        504,
    ));

    for (name, r, status) in &cases {
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        assert!(
            r.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{name}: no x-request-id"
        );
    }
    assert_eq!(cases[0].1.header("x-cache"), Some("MISS"));
    assert_eq!(cases[1].1.header("x-cache"), Some("HIT"));

    // Written once each response is sent: wait until every request has its line.
    let ids: Vec<String> = cases
        .iter()
        .map(|(_, r, _)| r.header("x-request-id").unwrap_or_default().to_string())
        .collect();
    let settled = wait_until(Duration::from_secs(10), || {
        let lines = access_lines(&gw);
        ids.iter()
            .all(|id| lines.iter().any(|l| l["request_id"] == id.as_str()))
    });
    assert!(settled, "missing access lines:\n{}", gw.logs());
    let lines = access_lines(&gw);
    // Nothing but these requests and the harness's health probes was logged.
    for l in &lines {
        let id = l["request_id"].as_str().unwrap_or_default();
        assert!(
            ids.iter().any(|i| i == id) || l["path"] == "/health",
            "an access line for no request of this test: {l}"
        );
    }
    assert!(
        !gw.logs().contains("secret-query"),
        "the query reached the log"
    );

    for ((name, r, status), id) in cases.iter().zip(&ids) {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["request_id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{name}: one line per request: {mine:?}");
        let l = mine[0];
        for f in ALWAYS {
            assert!(l.get(f).is_some(), "{name}: field {f} missing: {l}");
        }
        assert_eq!(l["method"], "POST", "{name}: {l}");
        assert_eq!(
            l["path"], "/v1/chat/completions",
            "{name}: query stripped: {l}"
        );
        assert_eq!(l["status"], *status, "{name}: {l}");
        assert_eq!(l["route"], "chat", "{name}: {l}");
        assert_eq!(l["client_ip"], "127.0.0.1", "{name}: {l}");
        assert!(l["request_time"].as_f64().is_some(), "{name}: {l}");
        assert!(l["bytes_out"].as_u64().is_some(), "{name}: {l}");
        assert!(l["bytes_in"].as_u64().is_some(), "{name}: {l}");
        let client = match *name {
            "401" => "-",
            "limited-ok" | "429" => "limited",
            _ => "team-a",
        };
        assert_eq!(l["client"], client, "{name}: {l}");
        if matches!(*name, "2xx" | "limited-ok" | "stream") {
            assert_eq!(l["upstream"], "alpha", "{name}: {l}");
            assert_eq!(l["model"], "gpt-4o", "{name}: {l}");
            for f in UPSTREAM_TIMINGS {
                assert!(l[f].as_f64().is_some(), "{name}: timing {f} missing: {l}");
            }
        }
        if matches!(*name, "2xx" | "limited-ok" | "hit") {
            assert_eq!(
                l["bytes_out"].as_u64(),
                Some(r.body.len() as u64),
                "{name}: {l}"
            );
        }
        // Time to first byte is a stream's figure; absent timings are omitted, not zero.
        assert_eq!(
            l.get("ttfb").is_some(),
            *name == "stream",
            "{name}: ttfb: {l}"
        );
        let cache = match *name {
            "hit" => "HIT",
            "504" => "BYPASS",
            "2xx" => "MISS",
            "limited-ok" => "BYPASS",
            "stream" => "-",
            _ => "",
        };
        if !cache.is_empty() {
            assert_eq!(l["cache"], cache, "{name}: {l}");
        }
    }
}
