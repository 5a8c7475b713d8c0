//! OpenAI clients through the gateway to an `api = "gemini"` upstream (the mock's
//! `generateContent` / `streamGenerateContent?alt=sse` endpoints): the request translated
//! (model and method in the path, `x-goog-api-key`, `systemInstruction`, `contents`,
//! `generationConfig`, tools), JSON and streamed answers translated back with their usage
//! counted, tool calls both ways, a field with no translation refused by name, Gemini
//! errors in OpenAI's shape, a fallback across formats, and the official `openai` SDK.

mod common;

use std::process::Command;

use common::gateway::{request, spend_mock_failure, temp_dir, Driver, Gateway, Response};
use ringgate_mock::MockProvider;
use serde_json::{json, Value};

const KEY: &str = "AIza-test-key-0123";

/// An OpenAI mock `oa` and a Gemini mock `gem`; `gemini` falls back to `gpt`.
fn config(oa: &str, gem: &str, key_file: &str) -> String {
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

[upstreams.gem]
url = "http://{gem}/v1beta"
api = "gemini"
api_key_file = "{key_file}"
max_fails = 0

[models.gpt]
upstream = "oa"

[models.gemini]
upstream = "gem"
provider_model = "gemini-2.5-flash"
fallbacks = ["gpt"]

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
retry_on = ["http_503"]
tries = 1
retry_budget_ms = 5000
read_timeout_ms = 3000

[[routes]]
name = "messages"
exact = "/v1/messages"
route_by_model = true
"#
    )
}

fn start() -> (MockProvider, MockProvider, Gateway) {
    let oa = MockProvider::start("127.0.0.1:0").expect("openai mock");
    let gem = MockProvider::start("127.0.0.1:0").expect("gemini mock");
    let dir = temp_dir("gemini-key");
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let cfg = config(
        &oa.addr().to_string(),
        &gem.addr().to_string(),
        &key_file.display().to_string(),
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    (oa, gem, gw)
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

const ASK: &str = r#"{"model":"gemini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}],"temperature":0.3,"max_tokens":64,"stop":["\n\n"]}"#;

#[test]
fn openai_chat_is_translated_to_and_from_gemini() {
    let (oa, gem, gw) = start();
    let knobs = "x-mock-cached-tokens: 2\r\n";

    let r = chat(&gw, ASK, knobs);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gemini-2.5-flash");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the ringgate mock"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(oa.request_count(), 0);
    let seen = gem.requests().pop().expect("gemini mock reached");
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
    assert_eq!(seen.header("authorization"), None, "no bearer to Gemini");
    let sent: Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(
        sent,
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "generationConfig": {"temperature": 0.3, "maxOutputTokens": 64, "stopSequences": ["\n\n"]}
        })
    );

    // Streamed, usage not asked for: OpenAI chunks, no usage chunk, [DONE].
    let stream = ASK.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    let r = chat(&gw, &stream, knobs);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = gem.requests().pop().expect("gemini mock reached");
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    let evs = events(&r);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{evs:?}");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the ringgate mock");
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(Value::from("stop"))
    );

    // With include_usage: the usage chunk before [DONE], Gemini's totals.
    let stream_usage = ASK.replace(
        "\"temperature\"",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"temperature\"",
    );
    let r = chat(&gw, &stream_usage, knobs);
    let evs = events(&r);
    let usage: Value = serde_json::from_str(&evs[evs.len() - 2]).expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    let m = |kind: &str| format!("ringgate_tokens_total{{model=\"gemini\",kind=\"{kind}\"}}");
    assert_eq!(gw.wait_metric(&m("completion"), 15.0), Some(15.0));
    assert_eq!(gw.metric(&m("prompt")), Some(3.0 * prompt as f64));
    assert_eq!(gw.metric(&m("cached_prompt")), Some(6.0));
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}}]"#;

#[test]
fn tool_calls_go_both_ways() {
    let (_oa, gem, gw) = start();
    let ask = format!(
        r#"{{"model":"gemini","messages":[{{"role":"user","content":"Weather in Boston?"}}],"tools":{TOOLS},"tool_choice":"required"}}"#
    );
    let r = chat(&gw, &ask, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"location":"Boston"}"#);
    let sent: Value =
        serde_json::from_slice(&gem.requests().pop().expect("reached").body_prefix).expect("json");
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["required"],
        json!(["location"])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );

    // Streamed: one tool-call delta with the whole call, then the finish.
    let r = chat(
        &gw,
        &ask.replace("\"tools\"", "\"stream\":true,\"tools\""),
        "",
    );
    let evs = events(&r);
    let chunks: Vec<Value> = evs
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    let delta = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .expect("a tool call delta");
    assert_eq!(delta[0]["index"], 0);
    assert_eq!(delta[0]["function"]["name"], "get_weather");
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(Value::from("tool_calls"))
    );

    // The tool's answer goes back as a functionResponse; the model then answers in text.
    let id = call["id"].as_str().expect("call id");
    let follow = format!(
        r#"{{"model":"gemini","messages":[{{"role":"user","content":"Weather in Boston?"}},{{"role":"assistant","content":null,"tool_calls":[{call}]}},{{"role":"tool","tool_call_id":"{id}","content":"{{\"temp_c\":21}}"}}],"tools":{TOOLS}}}"#
    );
    let r = chat(&gw, &follow, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    let sent: Value =
        serde_json::from_slice(&gem.requests().pop().expect("reached").body_prefix).expect("json");
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Boston?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Boston"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}]}
        ])
    );
}

#[test]
fn refusals_errors_and_a_fallback_across_formats() {
    let (oa, gem, gw) = start();
    let r = chat(
        &gw,
        r#"{"model":"gemini","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":1}}"#,
        "",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("`logit_bias`") && m.contains("Gemini")));
    assert_eq!(gem.request_count(), 0, "refused before any try");

    // RESOURCE_EXHAUSTED: a 429 in OpenAI's shape (not a fallback condition here).
    let r = chat(&gw, ASK, "x-mock-status: 429\r\n");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(oa.request_count(), 0);

    // UNAVAILABLE (503): the OpenAI fallback answers (its one failure spent beforehand).
    spend_mock_failure(oa.addr(), "g1");
    let r = chat(
        &gw,
        ASK,
        "x-mock-status: 503\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: g1\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-mock")));
    let seen = oa
        .requests()
        .pop()
        .expect("fallback reached the openai mock");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("x-goog-api-key"), None);
}

#[test]
fn the_openai_sdk_talks_to_gemini_through_the_gateway() {
    let (_oa, _gem, gw) = start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_gemini.py");
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
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json line");
    assert_eq!(seen["chat"], "Hello from the ringgate mock", "{seen}");
    assert_eq!(seen["chat_model"], "gemini-2.5-flash", "{seen}");
    assert_eq!(seen["stream"], "Hello from the ringgate mock", "{seen}");
    assert!(
        seen["stream_usage_total"].as_u64().is_some_and(|n| n > 5),
        "{seen}"
    );
    assert_eq!(seen["tool_name"], "get_weather", "{seen}");
    assert_eq!(seen["tool_args"], json!({"location": "Boston"}), "{seen}");
    assert_eq!(seen["stream_tool_name"], "get_weather", "{seen}");
    assert_eq!(seen["after_tool"], "stop", "{seen}");
    assert_eq!(seen["rate_limited"], "RateLimitError", "{seen}");
}

/// An Anthropic client on `/v1/messages` to a Gemini model: its request goes through
/// OpenAI's shape to Gemini's, and the answer (a message, or its events) comes back in
/// Anthropic's shape with Gemini's usage.
#[test]
fn an_anthropic_client_reaches_a_gemini_model() {
    let (_oa, gem, gw) = start();
    let ask = r#"{"model":"gemini","max_tokens":50,"system":"Be brief.","messages":[{"role":"user","content":"Say hello"}]}"#;
    let send = |body: &str| {
        request(
            gw.addr,
            &format!(
                "POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
                 x-api-key: client-token\r\nanthropic-version: 2023-06-01\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .expect("request")
    };
    let r = send(ask);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "Hello from the ringgate mock");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 5);
    let seen = gem.requests().pop().expect("gemini mock reached");
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the client's key stays here"
    );
    assert_eq!(seen.header("anthropic-version"), None);
    let sent: Value = serde_json::from_slice(&seen.body_prefix).expect("json");
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 50);

    // Streamed: Anthropic's events, text as it arrives, usage in message_delta.
    let r = send(&ask.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for ev in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("event: {ev}")),
            "{ev} missing:\n{text}"
        );
    }
    let deltas: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(deltas, "Hello from the ringgate mock");
    assert_eq!(
        gem.requests().pop().map(|r| r.path),
        Some("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".to_string())
    );
    let m = "ringgate_tokens_total{model=\"gemini\",kind=\"completion\"}";
    assert_eq!(gw.wait_metric(m, 10.0), Some(10.0));
}

/// A "Gemini" upstream that answers a stream request with a JSON body under
/// `text/event-stream`: the client must not get an empty success (nginx would pass the
/// bytes through; a translating gateway that finds no event has no answer to give).
#[test]
fn a_stream_with_no_event_in_it_is_not_an_empty_success() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        // The request: its head, then the body its content-length announces.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        let body = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"hi"}]},"finishReason":"STOP"}]}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let dir = temp_dir("gemini-json-stream");
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let cfg = config(
        "127.0.0.1:9",
        &upstream.to_string(),
        &key_file.display().to_string(),
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let ask = ASK.replace("\"temperature\"", "\"stream\":true,\"temperature\"");
    match request(
        gw.addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{ask}",
            ask.len()
        ),
    ) {
        // The head may have gone out before the body proved empty: then the stream is cut
        // (no last chunk), which every client reads as a failed stream.
        Err(_) => {}
        Ok(r) => assert_eq!(r.status, 502, "an empty success: {r:?}"),
    }
    let _ = server.join();
}
