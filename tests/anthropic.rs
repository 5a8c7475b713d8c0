//! OpenAI clients through the gateway to an `api = "anthropic"` upstream (the mock's
//! Messages endpoint): the request translated (path, `x-api-key` + `anthropic-version`,
//! `system`, the configured `default_max_tokens`), JSON and streamed answers translated back
//! with their usage counted, a field with no translation refused by name, Anthropic errors in
//! OpenAI's shape (529 as 503), fallbacks across the two formats both ways, and tools,
//! tool results and images translated with tool calls coming back (answers and streams).

mod common;

use common::gateway::{request, spend_mock_failure, temp_dir, Driver, Gateway, Response};
use ringgate_mock::MockProvider;
use serde_json::Value;

const KEY: &str = "sk-ant-test-0123";

/// An OpenAI mock `oa`, an Anthropic mock `anth`; `gpt` falls back to `claude`,
/// `claude-first` to `gpt-solo`.
fn config(oa: &str, anth: &str, key_file: &str) -> String {
    format!(
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
api_key_file = "{key_file}"
default_max_tokens = 333
max_fails = 0

[models.gpt]
upstream = "oa"
fallbacks = ["claude"]

[models.gpt-solo]
upstream = "oa"

[models.claude]
upstream = "anth"
provider_model = "claude-sonnet-4-5"

[models.claude-first]
upstream = "anth"
fallbacks = ["gpt-solo"]

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
retry_on = ["http_503"]
tries = 1
retry_budget_ms = 5000
read_timeout_ms = 3000
"#
    )
}

fn start() -> (MockProvider, MockProvider, Gateway) {
    let oa = MockProvider::start("127.0.0.1:0").expect("openai mock");
    let anth = MockProvider::start("127.0.0.1:0").expect("anthropic mock");
    let dir = temp_dir("anthropic-key");
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let cfg = config(
        &oa.addr().to_string(),
        &anth.addr().to_string(),
        &key_file.display().to_string(),
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    (oa, anth, gw)
}

fn chat(gw: &Gateway, body: &str, headers: &str) -> Response {
    request(
        gw.addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             authorization: Bearer client-token\r\ncontent-length: {}\r\n{headers}\
             connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("request")
}

/// The `data:` payloads of an SSE body.
fn events(r: &Response) -> Vec<String> {
    r.text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

const ASK: &str = r#"{"model":"claude","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}],"temperature":0.3,"stop":["\n\n"]}"#;

#[test]
fn openai_chat_is_translated_to_and_from_anthropic() {
    let (oa, anth, gw) = start();
    let knobs = "x-mock-cached-tokens: 2\r\n";

    // Plain: the Messages request as Anthropic documents it, the answer as OpenAI's.
    let r = chat(&gw, ASK, knobs);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("msg_mock")));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the ringgate mock"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(oa.request_count(), 0);
    let seen = anth.requests().pop().expect("anthropic mock reached");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None, "no bearer to Anthropic");
    let sent: Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 333, "default_max_tokens");
    assert_eq!(sent["stop_sequences"], serde_json::json!(["\n\n"]));
    assert_eq!(sent["messages"].as_array().map(Vec::len), Some(1));

    // Streamed, usage not asked for: chunks as OpenAI sends them, no usage chunk.
    let stream = ASK.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    let r = chat(&gw, &stream, knobs);
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{evs:?}");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "the usage chunk was not asked for"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the ringgate mock");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(Value::from("stop"))
    );

    // Streamed with include_usage: the usage chunk, before [DONE].
    let stream_usage = ASK.replace(
        "\"temperature\"",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"temperature\"",
    );
    let r = chat(&gw, &stream_usage, knobs);
    let evs = events(&r);
    let usage: Value = serde_json::from_str(&evs[evs.len() - 2]).expect("usage chunk");
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    // All three counted, cache reads included in the prompt.
    let m = |kind: &str| format!("ringgate_tokens_total{{model=\"claude\",kind=\"{kind}\"}}");
    assert_eq!(gw.wait_metric(&m("completion"), 15.0), Some(15.0));
    assert_eq!(gw.metric(&m("prompt")), Some(3.0 * prompt as f64));
    assert_eq!(gw.metric(&m("cached_prompt")), Some(6.0));
}

#[test]
fn untranslatable_fields_are_refused_and_errors_translated() {
    let (_oa, anth, gw) = start();
    let json_mode = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#;
    let r = chat(&gw, json_mode, "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("`response_format.type=json_object`")));
    assert_eq!(anth.request_count(), 0, "refused before any try");

    // Anthropic errors: the OpenAI shape, the same status, 529 as 503.
    for (st, want, ty) in [
        (429, 429, "rate_limit_error"),
        (529, 503, "overloaded_error"),
    ] {
        let r = chat(&gw, ASK, &format!("x-mock-status: {st}\r\n"));
        assert_eq!(r.status, want, "{}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["type"], ty, "{}", r.text());
        assert!(e["message"]
            .as_str()
            .is_some_and(|m| m.contains("mock error")));
    }
}

#[test]
fn fallbacks_cross_formats_both_ways() {
    let (oa, anth, gw) = start();
    // gpt's provider answers 503: the Claude fallback answers, in OpenAI's shape.
    spend_mock_failure(anth.addr(), "f1");
    let gpt = ASK.replace("\"claude\"", "\"gpt\"");
    let r = chat(
        &gw,
        &gpt,
        "x-mock-status: 503\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: f1\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.json()["model"], "claude-sonnet-4-5");
    assert_eq!((oa.request_count(), anth.request_count()), (1, 2));
    assert_eq!(
        gw.wait_metric(
            "ringgate_tokens_total{model=\"claude\",kind=\"completion\"}",
            5.0
        ),
        Some(5.0)
    );

    // Claude overloaded (529): that is a 503, so the OpenAI fallback answers.
    spend_mock_failure(oa.addr(), "f2");
    let first = ASK.replace("\"claude\"", "\"claude-first\"");
    let r = chat(
        &gw,
        &first,
        "x-mock-status: 529\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: f2\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-mock")),
        "{}",
        r.text()
    );
    let seen = oa
        .requests()
        .pop()
        .expect("fallback reached the openai mock");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("x-api-key"), None);
}

const TOOLS: &str = r#""tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}}],"tool_choice":"required""#;

#[test]
fn tools_go_to_anthropic_and_tool_calls_come_back() {
    let (_oa, anth, gw) = start();
    let ask = format!(
        r#"{{"model":"claude","messages":[{{"role":"user","content":[{{"type":"text","text":"weather?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,iVBORw0KGgo="}}}}]}}],{TOOLS}}}"#
    );
    let r = chat(&gw, &ask, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        r#"{"location":"mock-location"}"#
    );
    let id = call["id"].as_str().expect("call id").to_string();
    assert!(id.starts_with("toolu_mock"), "{id}");
    let sent: Value =
        serde_json::from_slice(&anth.requests().pop().expect("reached").body_prefix).expect("json");
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["required"][0], "location");
    assert_eq!(sent["tool_choice"], serde_json::json!({"type": "any"}));
    assert_eq!(
        sent["messages"][0]["content"][1]["source"],
        serde_json::json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );

    // The tool's result goes back as a tool_result block; the model then answers in text.
    let follow = format!(
        r#"{{"model":"claude","messages":[{{"role":"user","content":"weather?"}},
        {{"role":"assistant","content":null,"tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"get_weather","arguments":"{{\"location\":\"Paris\"}}"}}}}]}},
        {{"role":"tool","tool_call_id":"{id}","content":"sunny"}}],{TOOLS}}}"#
    );
    let r = chat(&gw, &follow, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["finish_reason"],
        "stop",
        "{}",
        r.text()
    );
    let sent: Value =
        serde_json::from_slice(&anth.requests().pop().expect("reached").body_prefix).expect("json");
    assert_eq!(
        sent["messages"][1]["content"][0],
        serde_json::json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(
        sent["messages"][2],
        serde_json::json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny"}]})
    );

    // Streamed: tool_calls deltas (id and name first, then argument fragments).
    let r = chat(
        &gw,
        &ask.replace("\"model\"", "\"stream\":true,\"model\""),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r);
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert!(calls.len() > 2, "{evs:?}");
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert!(calls[0][0]["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("toolu_mock")));
    let args: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"mock-location"}"#);
    assert!(calls.iter().all(|c| c[0]["index"] == 0));
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(Value::from("tool_calls"))
    );
}
