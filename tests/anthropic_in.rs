//! Anthropic clients in: `POST /v1/messages` with a gateway client key in `x-api-key`,
//! routed by `model` — passed through to an `api = "anthropic"` upstream (the provider's key
//! instead of the client's, the provider's model name), translated to and from OpenAI chat
//! for an OpenAI-compatible one (answers, event streams, tool use, errors) — with tokens and
//! cost counted from the provider's usage, and the gateway's own errors in Anthropic's shape.

mod common;

use common::gateway::{request, temp_dir, Driver, Gateway, Response};
use ringgate_mock::MockProvider;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const UPSTREAM_KEY: &str = "sk-ant-upstream-0123";
const CLIENT_KEY: &str = "sk-gw-team-a";

fn start() -> (MockProvider, MockProvider, Gateway) {
    let oa = MockProvider::start("127.0.0.1:0").expect("openai mock");
    let anth = MockProvider::start("127.0.0.1:0").expect("anthropic mock");
    let dir = temp_dir("anthropic-in");
    std::fs::write(dir.join("key"), format!("{UPSTREAM_KEY}\n")).expect("key file");
    let sha: String = Sha256::digest(CLIENT_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(dir.join("keys"), format!("team-a {sha}\n")).expect("keys file");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.oa]
url = "http://{oa}/v1"
max_fails = 0

[upstreams.anth]
url = "http://{anth}/v1"
api = "anthropic"
api_key_file = "{dir}/key"
max_fails = 0

[models.gpt]
upstream = "oa"
provider_model = "gpt-4o-mini"
prompt_usd_per_mtok = 1000000.0
completion_usd_per_mtok = 500000.0

[models.claude]
upstream = "anth"
provider_model = "claude-sonnet-4-5"

[models.claude-fb]
upstream = "anth"
provider_model = "claude-sonnet-4-5"
fallbacks = ["gpt"]

[auth]
keys_file = "{dir}/keys"

[[routes]]
name = "messages"
exact = "/v1/messages"
route_by_model = true
retry_on = ["http_503"]
tries = 1
read_timeout_ms = 3000
"#,
        oa = oa.addr(),
        anth = anth.addr(),
        dir = dir.display(),
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    (oa, anth, gw)
}

fn messages(gw: &Gateway, body: &str, headers: &str) -> Response {
    request(
        gw.addr,
        &format!(
            "POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             anthropic-version: 2023-06-01\r\ncontent-length: {}\r\n{headers}\
             connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("request")
}

fn keyed(gw: &Gateway, body: &str) -> Response {
    messages(gw, body, &format!("x-api-key: {CLIENT_KEY}\r\n"))
}

/// (event name, data) of an Anthropic event stream.
fn events(r: &Response) -> Vec<(String, Value)> {
    r.text()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).expect("event data is JSON");
                }
            }
            (name, data)
        })
        .collect()
}

const ASK: &str = r#"{"model":"MODEL","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hello"}]}"#;
const TOOLS: &str = r#""tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}]"#;

#[test]
fn anthropic_clients_pass_through_to_anthropic_upstreams() {
    let (oa, anth, gw) = start();
    let r = keyed(&gw, &ASK.replace("MODEL", "claude"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"][0]["text"], "Hello from the ringgate mock");
    let input = v["usage"]["input_tokens"].as_u64().expect("input tokens");
    let seen = anth.requests().pop().expect("reached");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(
        seen.header("x-api-key"),
        Some(UPSTREAM_KEY),
        "the provider's key, never the client's"
    );
    let sent: Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(
        sent["system"], "Be brief.",
        "the body is Anthropic's already"
    );
    assert_eq!(oa.request_count(), 0);

    // A stream passes through byte for byte in Anthropic's events; its usage is counted.
    let body = ASK
        .replace("MODEL", "claude")
        .replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"");
    let r = messages(
        &gw,
        &body,
        &format!("x-api-key: {CLIENT_KEY}\r\nx-mock-cached-tokens: 2\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r);
    assert_eq!(evs.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(evs.last().map(|e| e.0.as_str()), Some("message_stop"));
    let m = |kind: &str| format!("ringgate_tokens_total{{model=\"claude\",kind=\"{kind}\"}}");
    assert_eq!(gw.wait_metric(&m("completion"), 10.0), Some(10.0));
    assert_eq!(gw.metric(&m("prompt")), Some(2.0 * input as f64));
    assert_eq!(gw.metric(&m("cached_prompt")), Some(2.0));
}

#[test]
fn anthropic_clients_reach_openai_upstreams_translated() {
    let (oa, anth, gw) = start();
    let r = keyed(&gw, &ASK.replace("MODEL", "gpt"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello from the ringgate mock"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 5);
    let input = v["usage"]["input_tokens"].as_u64().expect("input tokens");
    let seen = oa.requests().pop().expect("reached the openai mock");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the client's key stays at the gateway"
    );
    assert_eq!(
        seen.header("anthropic-version"),
        None,
        "nor do Anthropic's headers"
    );
    let sent: Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    );
    assert_eq!(
        (sent["model"].clone(), sent["max_tokens"].clone()),
        (json!("gpt-4o-mini"), json!(64))
    );
    assert_eq!(anth.request_count(), 0);

    // Streamed: Anthropic's events, text then the usage in message_delta.
    let body = ASK
        .replace("MODEL", "gpt")
        .replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"");
    let r = keyed(&gw, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r);
    let names: Vec<&str> = evs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello from the ringgate mock");
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["usage"]["input_tokens"], input);
    let sent: Value =
        serde_json::from_slice(&oa.requests().pop().expect("reached").body_prefix).expect("json");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    // Tool use, answered and streamed.
    let tools = ASK
        .replace("MODEL", "gpt")
        .replace("\"system\"", &format!("{TOOLS},\"system\""));
    let r = keyed(&gw, &tools);
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let call = v["content"]
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["input"], json!({"location": "mock-location"}));
    let r = keyed(
        &gw,
        &tools.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""),
    );
    let evs = events(&r);
    let start = evs
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    let idx = start.1["index"].clone();
    let args: String = evs
        .iter()
        .filter(|(_, d)| d["index"] == idx && d["delta"]["type"] == "input_json_delta")
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"mock-location"}"#);
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");

    // Four answers; tokens and dollars from the provider's usage, as OpenAI reported it.
    let m = |kind: &str| format!("ringgate_tokens_total{{model=\"gpt\",kind=\"{kind}\"}}");
    assert_eq!(gw.wait_metric(&m("completion"), 20.0), Some(20.0));
    let prompt = gw.metric(&m("prompt")).expect("prompt tokens");
    assert!(prompt >= 4.0 * input as f64, "{prompt}");
    let cost = gw
        .metric("ringgate_cost_usd_total{model=\"gpt\"}")
        .expect("cost");
    assert!(
        (cost - (prompt + 0.5 * 20.0)).abs() < 1e-3,
        "{cost} for {prompt} prompt tokens"
    );
}

#[test]
fn errors_are_in_anthropic_shape() {
    let (_oa, anth, gw) = start();
    let check = |r: &Response, status: u16, ty: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], ty, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    };
    check(
        &messages(&gw, &ASK.replace("MODEL", "gpt"), ""),
        401,
        "authentication_error",
    );
    check(
        &messages(&gw, &ASK.replace("MODEL", "gpt"), "x-api-key: wrong\r\n"),
        401,
        "authentication_error",
    );
    check(
        &keyed(&gw, &ASK.replace("MODEL", "nope")),
        404,
        "not_found_error",
    );
    let r = keyed(
        &gw,
        &ASK.replace("MODEL", "gpt")
            .replace("\"system\"", "\"top_k\":5,\"system\""),
    );
    check(&r, 400, "invalid_request_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("`top_k`")));
    // An OpenAI upstream's error, in Anthropic's shape with its status.
    let r = messages(
        &gw,
        &ASK.replace("MODEL", "gpt"),
        &format!("x-api-key: {CLIENT_KEY}\r\nx-mock-status: 429\r\n"),
    );
    check(&r, 429, "rate_limit_error");
    // An Anthropic upstream's error passes as it is.
    let r = messages(
        &gw,
        &ASK.replace("MODEL", "claude"),
        &format!("x-api-key: {CLIENT_KEY}\r\nx-mock-status: 400\r\n"),
    );
    check(&r, 400, "invalid_request_error");
    assert!(anth.request_count() >= 1);
}

#[test]
fn an_anthropic_client_falls_back_across_formats() {
    let (oa, anth, gw) = start();
    // Spend the OpenAI mock's one failure for this key, so only the Anthropic mock fails.
    let r = request(
        oa.addr(),
        "GET /v1/health HTTP/1.1\r\nhost: m\r\nx-mock-status: 529\r\nx-mock-fail-first: 1\r\n\
         x-mock-fail-key: fb\r\nconnection: close\r\n\r\n",
    )
    .expect("prewarm");
    assert_eq!(r.status, 529);
    // Claude is overloaded (529, a 503 to retry_on): the GPT fallback answers, translated.
    let r = messages(
        &gw,
        &ASK.replace("MODEL", "claude-fb"),
        &format!(
            "x-api-key: {CLIENT_KEY}\r\nx-mock-status: 529\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: fb\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["content"][0]["text"], "Hello from the ringgate mock");
    assert_eq!(anth.request_count(), 1);
    assert_eq!(
        oa.requests().pop().map(|r| r.path),
        Some("/v1/chat/completions".to_string())
    );
}

/// Without `[auth]` a client brings its own provider key. The Anthropic SDK always sends
/// its key as `x-api-key`: that is an Anthropic credential, and when the gateway
/// translates the request for an OpenAI-compatible upstream (another company's API) it
/// must not go along — only the credential of the upstream's own API may (`Authorization`
/// for OpenAI). Passed through to an Anthropic upstream without a configured key, it is
/// the key that upstream needs.
#[test]
fn an_anthropic_clients_own_key_never_reaches_another_providers_api() {
    let oa = MockProvider::start("127.0.0.1:0").expect("openai mock");
    let anth = MockProvider::start("127.0.0.1:0").expect("anthropic mock");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.oa]
url = "http://{oa}/v1"

[upstreams.anth]
url = "http://{anth}/v1"
api = "anthropic"

[models.gpt]
upstream = "oa"

[models.claude]
upstream = "anth"

[[routes]]
name = "messages"
exact = "/v1/messages"
route_by_model = true
"#,
        oa = oa.addr(),
        anth = anth.addr(),
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let own = "x-api-key: sk-ant-client-own\r\nauthorization: Bearer sk-openai-client-own\r\n";
    let r = messages(&gw, &ASK.replace("MODEL", "gpt"), own);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = oa.requests().pop().expect("reached the openai mock");
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the client's Anthropic key does not go to an OpenAI-compatible provider"
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-openai-client-own"),
        "the client's own OpenAI credential does"
    );
    let r = messages(&gw, &ASK.replace("MODEL", "claude"), own);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = anth.requests().pop().expect("reached the anthropic mock");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-client-own"));
    assert_eq!(seen.header("authorization"), None);
}
