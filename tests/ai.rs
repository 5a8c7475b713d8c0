//! The AI layer against two mock providers: routing by model and alias (with the provider's
//! model name), fallback to the second provider on 503 and on a dead provider, no fallback
//! after the first byte, token and cost accounting for JSON and SSE responses (the usage
//! chunk the gateway asked for never reaches the client), client keys (accepted, rejected,
//! limited by requests and by tokens; per-client token budgets: default and override,
//! independent, streamed usage charged, kept across a reload), the response cache (hit, miss, bypass, expiry) and
//! `/v1/models`. The official SDK goes through all of it in `openai_ai_layer`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::gateway::{request, spend_mock_failure, temp_dir, Conn, Driver, Gateway, Response};
use ringgate_mock::kubelet::ProjectedVolume;
use ringgate_mock::MockProvider;
use sha2::{Digest, Sha256};

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Config with two providers, models on both, one model-routed chat route.
fn config(a: &str, b: &str, extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.alpha]
url = "http://{a}/v1"
max_fails = 0

[upstreams.beta]
url = "http://{b}/v1"
max_fails = 0

[models.gpt-4o]
upstream = "alpha"
provider_model = "gpt-4o-2024-08-06"
aliases = ["gpt4", "default"]
fallbacks = ["backup"]
prompt_usd_per_mtok = 2.5
cached_prompt_usd_per_mtok = 1.25
completion_usd_per_mtok = 10.0

[models.backup]
upstream = "beta"
provider_model = "deepseek-chat"
prompt_usd_per_mtok = 0.28
completion_usd_per_mtok = 0.42

[models."claude-sonnet-4.5"]
upstream = "beta"
prompt_usd_per_mtok = 3.0
completion_usd_per_mtok = 15.0

{extra}

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
retry_on = ["error", "http_503"]
tries = 1
retry_budget_ms = 5000
read_timeout_ms = 3000
{route_extra}
"#
    )
}

fn chat(gw: &Gateway, body: &str, headers: &str) -> Response {
    request(
        gw.addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("request")
}

const HELLO: &str =
    r#"{"messages":[{"role":"user","content":"Say hello"}],"model":"gpt4","temperature":0.2}"#;

#[test]
fn routes_by_model_and_alias_rewriting_only_the_model() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock a");
    let b = MockProvider::start("127.0.0.1:0").expect("mock b");
    let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
    for driver in common::gateway::DRIVERS {
        let gw = Gateway::start(&config(&sa, &sb, "", ""), driver);
        let before = (a.request_count(), b.request_count());
        // (client model, which mock, model the provider must see)
        let cases = [
            ("gpt4", 'a', "gpt-4o-2024-08-06"),
            ("gpt-4o", 'a', "gpt-4o-2024-08-06"),
            ("default", 'a', "gpt-4o-2024-08-06"),
            ("claude-sonnet-4.5", 'b', "claude-sonnet-4.5"),
        ];
        for (model, which, provider_model) in cases {
            let body = HELLO.replace("gpt4", model);
            let r = chat(&gw, &body, "");
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            let mock = if which == 'a' { &a } else { &b };
            let seen = mock.requests().pop().expect("request reached the provider");
            let sent: serde_json::Value =
                serde_json::from_slice(&seen.body_prefix).expect("json body");
            assert_eq!(sent["model"], provider_model, "{model}");
            let mut want: serde_json::Value = serde_json::from_str(&body).expect("json");
            want["model"] = provider_model.into();
            assert_eq!(sent, want, "{model}: the rest of the body is unchanged");
            assert_eq!(r.json()["model"], provider_model);
        }
        assert_eq!(a.request_count() - before.0, 3);
        assert_eq!(b.request_count() - before.1, 1);

        // Unknown model: 404 in the OpenAI shape, naming only what the client sent.
        let r = chat(&gw, &HELLO.replace("gpt4", "gpt-5-secret"), "");
        assert_eq!(r.status, 404);
        let e = r.json();
        assert_eq!(e["error"]["code"], "model_not_found");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("gpt-5-secret") && !msg.contains("gpt-4o") && !msg.contains("alpha"));
        // Bad bodies: 400 with a reason.
        for (body, code) in [
            ("{not json", "invalid_json"),
            (r#"{"messages":[]}"#, "missing_model"),
            (r#"{"model":7}"#, "invalid_json"),
        ] {
            let r = chat(&gw, body, "");
            assert_eq!(r.status, 400, "{body}");
            assert_eq!(r.json()["error"]["code"], code, "{body}");
        }
        // A chunked body is read whole too.
        let mut c = Conn::connect(gw.addr);
        let chunked = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}\r\n{}\r\n0\r\n\r\n",
            HELLO.len(),
            HELLO
        );
        c.send(chunked.as_bytes()).expect("send");
        let r = c.read_response(false).expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
        // Keep-alive survives a 404 for an unknown model (its body was read).
        c.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{}",
                HELLO.len() + 4,
                HELLO.replace("gpt4", "nope1234")
            )
            .as_bytes(),
        )
        .expect("send");
        assert_eq!(c.read_response(false).expect("404").status, 404);
        c.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{}",
                HELLO.len(),
                HELLO
            )
            .as_bytes(),
        )
        .expect("send");
        assert_eq!(c.read_response(false).expect("200").status, 200);
    }
}

#[test]
fn models_endpoint_lists_names_and_aliases() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let s = a.addr().to_string();
    let gw = Gateway::start(&config(&s, &s, "", ""), Driver::IoUring);
    let r = request(
        gw.addr,
        "GET /v1/models HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    for want in ["gpt-4o", "gpt4", "default", "backup", "claude-sonnet-4.5"] {
        assert!(ids.contains(&want), "{want} in {ids:?}");
    }
    assert!(v["data"][0]["created"].as_u64().is_some());
    let one = request(
        gw.addr,
        "GET /v1/models/gpt4 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("one");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "gpt4");
    assert_eq!(one.json()["owned_by"], "alpha");
    let none = request(
        gw.addr,
        "GET /v1/models/nope HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .expect("none");
    assert_eq!(none.status, 404);
    assert_eq!(a.request_count(), 0, "answered by the gateway");
}

#[test]
fn falls_back_to_the_next_provider_before_the_first_byte_only() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock a");
    let b = MockProvider::start("127.0.0.1:0").expect("mock b");
    let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
    let gw = Gateway::start(&config(&sa, &sb, "", ""), Driver::IoUring);

    // 503 from alpha: the request moves to beta's model, with beta's model name. (The knob
    // headers reach beta too: beta has already served its one failure for this key.)
    spend_mock_failure(b.addr(), "fb1");
    let r = chat(
        &gw,
        HELLO,
        "x-mock-status: 503\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: fb1\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.request_count(), 1);
    let seen = b.requests().pop().expect("fallback reached beta");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(sent["model"], "deepseek-chat");
    assert_eq!(
        gw.wait_metric("ringgate_model_fallbacks_total{model=\"gpt-4o\"}", 1.0),
        Some(1.0)
    );

    // Stream that breaks after its first event: the client keeps what it got; no fallback.
    let before_b = b.request_count();
    let body = HELLO.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    let mut c = Conn::connect(gw.addr);
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-drop: mid-body\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let (status, _) = c.read_head().expect("head");
    assert_eq!(status, 200);
    let rest = c
        .read_to_close()
        .expect("the cut stream's connection closes");
    assert!(
        String::from_utf8_lossy(&rest).contains("data: "),
        "first event arrived"
    );
    assert_eq!(
        b.request_count(),
        before_b,
        "no fallback after the first byte"
    );

    // A dead provider (connection refused) falls back too.
    let dead = common::gateway::free_port();
    let gw2 = Gateway::start(
        &config(&format!("127.0.0.1:{dead}"), &sb, "", ""),
        Driver::Epoll,
    );
    let r = chat(&gw2, HELLO, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "deepseek-chat");
}

#[test]
fn tokens_and_cost_from_json_and_sse_with_the_added_usage_chunk_stripped() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock a");
    let s = a.addr().to_string();
    let gw = Gateway::start(&config(&s, &s, "", ""), Driver::IoUring);

    // Non-streaming: usage from the JSON body, 3 of the prompt tokens cached.
    let r = chat(
        &gw,
        HELLO,
        "x-mock-chunks: 7\r\nx-mock-cached-tokens: 3\r\n",
    );
    assert_eq!(r.status, 200);
    let u = &r.json()["usage"];
    let p1 = u["prompt_tokens"].as_u64().expect("usage");
    assert_eq!(u["completion_tokens"], 7);

    // Streaming without include_usage: the gateway asks for it and strips the extra chunk.
    let body = HELLO.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    let r = chat(&gw, &body, "x-mock-chunks: 4\r\n");
    assert_eq!(r.status, 200);
    let text = r.text();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 5, "4 content events and [DONE]: {text}");
    for e in &events[..4] {
        let v: serde_json::Value =
            serde_json::from_str(e.trim_start_matches("data: ")).expect("event json");
        assert!(!v["choices"].as_array().expect("choices").is_empty(), "{e}");
    }
    assert_eq!(events[4], "data: [DONE]");
    let upstream_saw = a.requests().pop().expect("request");
    let sent: serde_json::Value = serde_json::from_slice(&upstream_saw.body_prefix).expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Streaming with include_usage: the client gets its usage chunk.
    let body2 = HELLO.replace(
        "\"temperature\"",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"temperature\"",
    );
    let r = chat(&gw, &body2, "x-mock-chunks: 2\r\n");
    let text = r.text();
    let usage_event = text
        .split("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .expect("usage chunk kept for a client that asked");
    let v: serde_json::Value =
        serde_json::from_str(usage_event.trim_start_matches("data: ")).expect("json");
    let p3 = v["usage"]["prompt_tokens"].as_u64().expect("usage");

    // Same prompt, so the same prompt tokens each time: p1 == p3.
    assert_eq!(p1, p3);
    let prompt = (3 * p1) as f64;
    let completion = (7 + 4 + 2) as f64;
    assert_eq!(
        gw.wait_metric(
            "ringgate_tokens_total{model=\"gpt-4o\",kind=\"completion\"}",
            completion
        ),
        Some(completion)
    );
    assert_eq!(
        gw.metric("ringgate_tokens_total{model=\"gpt-4o\",kind=\"prompt\"}"),
        Some(prompt)
    );
    assert_eq!(
        gw.metric("ringgate_tokens_total{model=\"gpt-4o\",kind=\"cached_prompt\"}"),
        Some(3.0)
    );
    let want_cost = ((prompt - 3.0) * 2.5 + 3.0 * 1.25 + completion * 10.0) / 1e6;
    let cost = gw
        .metric("ringgate_cost_usd_total{model=\"gpt-4o\"}")
        .expect("cost");
    assert!(
        (cost - want_cost).abs() < 1e-9,
        "cost {cost} want {want_cost}"
    );
}

/// A Secret-like directory holding the client keys file.
fn keys_volume(lines: &str) -> ProjectedVolume {
    let dir = temp_dir("keys");
    let v = ProjectedVolume::new(&dir.join("keys")).expect("volume");
    let mut files = BTreeMap::new();
    files.insert("keys".to_string(), lines.as_bytes().to_vec());
    v.project(&files).expect("project keys");
    v
}

#[test]
fn client_keys_are_checked_named_and_limited() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let s = a.addr().to_string();
    let keys = keys_volume(&format!(
        "# name sha256\nteam-a {}\nteam-b sha256:{}\n",
        sha_hex("sk-team-a-123"),
        sha_hex("sk-team-b-456")
    ));
    let auth = format!(
        r#"
[limits.per-client]
rate_per_second = 0.001
burst = 1
key = "client"

[auth]
keys_file = "{}/keys"
tokens_per_minute = 1000000

[auth.clients.team-b]
limit = "per-client"
tokens_per_minute = 30
"#,
        keys.dir().display()
    );
    let gw = Gateway::start(&config(&s, &s, &auth, ""), Driver::IoUring);

    let r = chat(&gw, HELLO, "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = chat(&gw, HELLO, "authorization: Bearer sk-wrong\r\n");
    assert_eq!(r.status, 401);
    let before = a.request_count();
    for _ in 0..3 {
        let r = chat(&gw, HELLO, "authorization: Bearer sk-team-a-123\r\n");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        a.request_count() - before,
        3,
        "401s never reach the provider"
    );
    let seen = a.requests().pop().expect("request");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's key stays at the gateway"
    );

    // team-b: one request per ~1000 s, and 30 tokens a minute.
    // burst = 1: two at once, then the third is refused.
    for _ in 0..2 {
        let r = chat(&gw, HELLO, "x-api-key: sk-team-b-456\r\n");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = chat(&gw, HELLO, "x-api-key: sk-team-b-456\r\n");
    assert_eq!(r.status, 429, "request limit per client");
    assert!(r.header("retry-after").is_some());

    assert_eq!(
        gw.wait_metric("ringgate_client_requests_total{client=\"team-a\"}", 3.0),
        Some(3.0)
    );
    assert_eq!(
        gw.metric("ringgate_auth_failures_total{reason=\"missing\"}"),
        Some(1.0)
    );
    assert_eq!(
        gw.metric("ringgate_auth_failures_total{reason=\"unknown\"}"),
        Some(1.0)
    );
    assert!(
        gw.metric("ringgate_client_tokens_total{client=\"team-a\",kind=\"prompt\"}")
            .unwrap_or(0.0)
            > 0.0
    );
    let logs = gw.logs();
    assert!(logs.contains("client=\"team-a\"") || logs.contains("\"client\":\"team-a\""));
    assert!(!logs.contains("sk-team-a-123"), "keys never logged");
}

#[test]
fn token_budget_refuses_once_spent() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let s = a.addr().to_string();
    let keys = keys_volume(&format!("team-c {}\n", sha_hex("sk-c")));
    let auth = format!(
        "[auth]\nkeys_file = \"{}/keys\"\ntokens_per_minute = 25\n",
        keys.dir().display()
    );
    let gw = Gateway::start(&config(&s, &s, &auth, ""), Driver::Epoll);
    // Each answer uses ~20 prompt + 20 completion tokens: the first spends the budget.
    let r = chat(
        &gw,
        HELLO,
        "authorization: Bearer sk-c\r\nx-mock-chunks: 20\r\n",
    );
    assert_eq!(r.status, 200);
    let r = chat(&gw, HELLO, "authorization: Bearer sk-c\r\n");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "tokens");
    assert!(
        r.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            >= 1
    );
}

/// Waits (bounded: 5 s) until the shared response cache holds at least `n` entries.
fn wait_for_cache_entries(gw: &Gateway, n: usize) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if gw.metric("ringgate_cache_entries").unwrap_or(0.0) >= n as f64 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the cache never held {n} entries");
}

#[test]
fn response_cache_hits_misses_bypasses_and_expires() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let s = a.addr().to_string();
    let gw = Gateway::start(&config(&s, &s, "", "cache_ttl_ms = 1500"), Driver::IoUring);
    let n0 = a.request_count();
    let r1 = chat(&gw, HELLO, "");
    assert_eq!(r1.header("x-cache"), Some("MISS"));
    // The entry is stored once the last byte went to the client, so a request racing in on
    // the other worker may still miss; a real client's next request is not that fast.
    wait_for_cache_entries(&gw, 1);
    let r2 = chat(&gw, HELLO, "");
    assert_eq!(r2.header("x-cache"), Some("HIT"));
    assert_eq!(r2.body, r1.body, "the cached body is the first one");
    assert_eq!(r2.header("content-type"), r1.header("content-type"));
    assert!(r2.header("age").is_some());
    assert_ne!(r2.header("x-request-id"), r1.header("x-request-id"));
    assert_eq!(
        a.request_count() - n0,
        1,
        "a hit never reaches the provider"
    );
    let r3 = chat(&gw, HELLO, "cache-control: no-cache\r\n");
    assert_eq!(r3.header("x-cache"), Some("BYPASS"));
    assert_eq!(a.request_count() - n0, 2);
    // Another body is another entry; a streaming request is never cached.
    let r4 = chat(&gw, &HELLO.replace("0.2", "0.3"), "");
    assert_eq!(r4.header("x-cache"), Some("MISS"));
    let stream = HELLO.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    assert_eq!(chat(&gw, &stream, "").header("x-cache"), None);
    // Past the TTL the entry is not served.
    std::thread::sleep(Duration::from_millis(1600));
    let r5 = chat(&gw, HELLO, "");
    assert_eq!(r5.header("x-cache"), Some("MISS"));
    assert_eq!(
        gw.wait_metric(
            "ringgate_cache_requests_total{route=\"chat\",result=\"hit\"}",
            1.0
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.wait_metric(
            "ringgate_cache_requests_total{route=\"chat\",result=\"miss\"}",
            3.0
        ),
        Some(3.0)
    );
    assert!(gw.metric("ringgate_cache_bytes").unwrap_or(0.0) > 0.0);
}

#[test]
fn openai_ai_layer() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock a");
    let b = MockProvider::start("127.0.0.1:0").expect("mock b");
    let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
    let keys = keys_volume(&format!("sdk {}\n", sha_hex("sk-sdk-client")));
    let auth = format!("[auth]\nkeys_file = \"{}/keys\"\n", keys.dir().display());
    let gw = Gateway::start(
        &config(&sa, &sb, &auth, "cache_ttl_ms = 60000"),
        Driver::IoUring,
    );
    spend_mock_failure(b.addr(), "sdk-fb");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_ai_layer.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", gw.addr))
        .output()
        .expect("python3 runs (install the SDK with `pip install openai`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stderr}\ngateway log:\n{}",
        gw.logs()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json line");
    assert!(
        seen["models"].as_array().is_some_and(|m| m.len() >= 5),
        "{seen}"
    );
    assert_eq!(seen["chat_model"], "gpt-4o-2024-08-06");
    assert_eq!(seen["cache"], serde_json::json!(["MISS", "HIT"]));
    assert!(seen["stream_pieces"].as_u64().unwrap_or(0) >= 2, "{seen}");
    assert_eq!(seen["stream_chunks_without_choices"], 0, "{seen}");
    assert!(seen["stream_usage_total"].as_u64().is_some(), "{seen}");
    assert_eq!(seen["fallback_model"], "deepseek-chat", "{seen}");
    assert_eq!(seen["bad_key"], "AuthenticationError");
    assert_eq!(seen["unknown_model"], "NotFoundError");
    assert_eq!(
        gw.wait_metric("ringgate_client_requests_total{client=\"sdk\"}", 5.0),
        Some(5.0),
        "requests counted for the client"
    );
}

/// Sends a chat request on its own connection and waits until its access line is in the
/// log: the usage is charged before the line is written, so the next request sees it.
fn charged_chat(gw: &Gateway, body: &str, headers: &str) -> Response {
    let r = chat(gw, body, headers);
    let id = r.header("x-request-id").unwrap_or_default().to_string();
    assert!(!id.is_empty(), "no x-request-id");
    assert!(
        common::gateway::wait_until(Duration::from_secs(10), || gw
            .logs()
            .lines()
            .any(|l| l.contains("ringgate::access") && l.contains(&id))),
        "no access line for {id}"
    );
    r
}

/// Per-client token budgets end to end: the default budget and a client's override, each
/// client's budget its own, streamed usage charged like JSON usage, the refusal's type, and
/// the spent budgets kept across a reload. Every answer uses a few prompt tokens and as many
/// completion tokens as `x-mock-chunks` asks: 100 is over the 25-token default (a debt that
/// holds the client back for minutes) and well within the 1000-token override.
#[test]
fn token_budgets_per_client_end_to_end() {
    let a = MockProvider::start("127.0.0.1:0").expect("mock");
    let s = a.addr().to_string();
    let keys = keys_volume(&format!(
        "small-a {}\nsmall-b {}\nbig {}\n",
        sha_hex("sk-small-a"),
        sha_hex("sk-small-b"),
        sha_hex("sk-big")
    ));
    let auth = |extra: &str| {
        format!(
            "[auth]\nkeys_file = \"{}/keys\"\ntokens_per_minute = 25\n\n\
             [auth.clients.big]\ntokens_per_minute = 1000\n{extra}",
            keys.dir().display()
        )
    };
    let gw = Gateway::start(&config(&s, &s, &auth(""), ""), Driver::IoUring);
    let key =
        |k: &str, chunks: u32| format!("authorization: Bearer {k}\r\nx-mock-chunks: {chunks}\r\n");
    let refused = |r: &Response, who: &str| {
        assert_eq!(r.status, 429, "{who}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "tokens", "{who}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded", "{who}");
        assert!(r.header("retry-after").is_some(), "{who}");
    };

    // The default budget: one 108-token answer spends it.
    let r = charged_chat(&gw, HELLO, &key("sk-small-a", 100));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 100, "{}", r.text());
    refused(&charged_chat(&gw, HELLO, &key("sk-small-a", 1)), "small-a");

    // Another client's budget is its own; its streamed usage is charged too.
    let stream =
        r#"{"messages":[{"role":"user","content":"Say hello"}],"model":"gpt4","stream":true}"#;
    let r = charged_chat(&gw, stream, &key("sk-small-b", 100));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("[DONE]"), "{}", r.text());
    refused(&charged_chat(&gw, HELLO, &key("sk-small-b", 1)), "small-b");

    // The override: what refuses a default client twice over is within big's budget...
    for _ in 0..3 {
        let r = charged_chat(&gw, HELLO, &key("sk-big", 100));
        assert_eq!(r.status, 200, "big within its override: {}", r.text());
    }
    // ...which is still a budget: 1008 more tokens spend it.
    let r = charged_chat(&gw, HELLO, &key("sk-big", 1000));
    assert_eq!(r.status, 200, "{}", r.text());
    refused(&charged_chat(&gw, HELLO, &key("sk-big", 1)), "big");

    // A reload that leaves the budgets' sizes alone keeps what was spent.
    let generation = gw.metric("ringgate_config_generation").expect("generation");
    assert!(gw.project(&config(
        &s,
        &s,
        &auth("\n[auth.clients.unrelated]\ntokens_per_minute = 7\n"),
        ""
    )));
    assert!(
        common::gateway::wait_until(Duration::from_secs(20), || gw
            .metric("ringgate_config_generation")
            .is_some_and(|g| g > generation)),
        "the reload never applied: {}",
        gw.logs()
    );
    refused(
        &charged_chat(&gw, HELLO, &key("sk-small-a", 1)),
        "small-a after reload",
    );
    refused(
        &charged_chat(&gw, HELLO, &key("sk-small-b", 1)),
        "small-b after reload",
    );
    refused(
        &charged_chat(&gw, HELLO, &key("sk-big", 1)),
        "big after reload",
    );
}
