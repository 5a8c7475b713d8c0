//! The official SDKs through the gateway across formats: the `openai` Python SDK to a
//! model on an Anthropic upstream (chat, stream, tools, usage), and the `anthropic` Python
//! SDK against `/v1/messages` (message, stream, tool use) to a model on an Anthropic upstream
//! and to one on an OpenAI upstream. The token metrics equal the usage the SDK was given,
//! which is the provider's, and the streamed message the `anthropic` SDK rebuilds carries the
//! OpenAI upstream's exact counts. `.ci/run` installs both packages.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::{temp_dir, tool_missing, Driver, Gateway};
use ringgate_mock::MockProvider;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CLIENT_KEY: &str = "sk-gw-sdk-client";

fn start() -> (MockProvider, MockProvider, Gateway) {
    let oa = MockProvider::start("127.0.0.1:0").expect("openai mock");
    let anth = MockProvider::start("127.0.0.1:0").expect("anthropic mock");
    let dir = temp_dir("anthropic-sdk");
    std::fs::write(dir.join("key"), "sk-ant-upstream\n").expect("key file");
    let sha: String = Sha256::digest(CLIENT_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(dir.join("keys"), format!("sdk {sha}\n")).expect("keys file");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.oa]
url = "http://{oa}/v1"

[upstreams.anth]
url = "http://{anth}/v1"
api = "anthropic"
api_key_file = "{dir}/key"

[models.claude-via-openai-sdk]
upstream = "anth"
provider_model = "claude-sonnet-4-5"

[models.claude-via-anthropic-sdk]
upstream = "anth"
provider_model = "claude-sonnet-4-5"

[models.gpt-via-anthropic-sdk]
upstream = "oa"
provider_model = "gpt-4o-mini"

[auth]
keys_file = "{dir}/keys"

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true

[[routes]]
name = "messages"
exact = "/v1/messages"
route_by_model = true
"#,
        oa = oa.addr(),
        anth = anth.addr(),
        dir = dir.display(),
    );
    (oa, anth, Gateway::start(&cfg, Driver::IoUring))
}

/// Runs `tests/sdk/{script}` with the base URL, the client key and the model; its JSON
/// line, or None when the SDK is not installed (and skipping is allowed).
fn run(script: &str, module: &str, base: &str, model: &str, gw: &Gateway) -> Option<Value> {
    let has = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        tool_missing(
            &format!("python3 -m {module}"),
            &format!("pip install {module}"),
        );
        return None;
    }
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([&path, base, CLIENT_KEY, model])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
    Some(serde_json::from_slice(&out.stdout).expect("one JSON line"))
}

/// Polls `ringgate_tokens_total` for `model` (bounded: 5 s; stats are published once a
/// second) until both counts equal what the SDK saw.
fn assert_tokens(gw: &Gateway, model: &str, seen: &Value) {
    let metric = |kind: &str| {
        gw.metric(&format!(
            "ringgate_tokens_total{{model=\"{model}\",kind=\"{kind}\"}}"
        ))
    };
    let want = (
        seen["prompt_tokens"].as_f64(),
        seen["completion_tokens"].as_f64(),
    );
    assert!(want.0.is_some_and(|p| p > 0.0), "{seen}");
    let start = Instant::now();
    let mut got = (None, None);
    while start.elapsed() < Duration::from_secs(5) {
        got = (metric("prompt"), metric("completion"));
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        got, want,
        "tokens counted for {model} vs the usage the SDK saw"
    );
}

#[test]
fn openai_sdk_to_an_anthropic_upstream() {
    let (_oa, anth, gw) = start();
    let base = format!("http://{}/v1", gw.addr);
    let model = "claude-via-openai-sdk";
    let Some(seen) = run("openai_to_anthropic.py", "openai", &base, model, &gw) else {
        return;
    };
    assert_eq!(
        seen["chat_content"], "Hello from the ringgate mock",
        "{seen}"
    );
    assert_eq!(seen["chat_model"], "claude-sonnet-4-5");
    assert!(seen["stream_pieces"].as_u64().unwrap_or(0) >= 2, "{seen}");
    assert_eq!(seen["stream_text"], "Hello from the ringgate mock");
    assert_eq!(seen["tool_finish"], "tool_calls");
    assert_eq!(seen["tool_name"], "get_weather");
    assert_eq!(seen["tool_args"], json!({"city": "mock-city"}));
    assert_eq!(
        seen["answer_finish"], "stop",
        "after the tool result, text: {seen}"
    );
    assert_eq!(seen["streamed_finish"], "tool_calls");
    assert_eq!(seen["streamed_tool_name"], "get_weather");
    assert_eq!(seen["streamed_tool_args"], json!({"city": "mock-city"}));
    assert!(anth.request_count() >= 5);
    assert_tokens(&gw, model, &seen);
}

fn anthropic_sdk(model: &str, provider_model: &str) {
    let (oa, anth, gw) = start();
    let base = format!("http://{}", gw.addr);
    let Some(seen) = run("anthropic_client.py", "anthropic", &base, model, &gw) else {
        return;
    };
    assert_eq!(seen["text"], "Hello from the ringgate mock", "{seen}");
    assert_eq!(seen["model"], provider_model);
    assert_eq!(seen["stop_reason"], "end_turn");
    assert!(seen["stream_pieces"].as_u64().unwrap_or(0) >= 2, "{seen}");
    assert_eq!(seen["stream_text"], "Hello from the ringgate mock");
    assert_eq!(seen["stream_stop_reason"], "end_turn");
    assert_eq!(seen["tool_stop_reason"], "tool_use");
    assert_eq!(seen["tool_name"], "get_weather");
    assert_eq!(seen["tool_input"], json!({"city": "mock-city"}));
    assert_eq!(
        seen["answer_stop_reason"], "end_turn",
        "after the tool result: {seen}"
    );
    assert_eq!(seen["streamed_tool_name"], "get_weather");
    assert_eq!(seen["streamed_tool_input"], json!({"city": "mock-city"}));
    assert_eq!(seen["streamed_tool_stop_reason"], "tool_use");
    let reached = if provider_model.starts_with("claude") {
        (0, 5)
    } else {
        (5, 0)
    };
    assert_eq!((oa.request_count(), anth.request_count()), reached);
    if !provider_model.starts_with("claude") {
        assert_stream_usage_is_the_providers(&oa, &seen);
    }
    assert_tokens(&gw, model, &seen);
}

/// The SDK's streamed message (`get_final_message()`) reports the OpenAI upstream's own
/// counts. OpenAI sends usage only in its last chunk, after `message_start` has gone out
/// with 0 input tokens; the real counts must come in `message_delta`, whose cumulative
/// values the SDK takes over.
fn assert_stream_usage_is_the_providers(oa: &MockProvider, seen: &Value) {
    let streamed: Vec<Value> = oa
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body_prefix).ok())
        .filter(|b| b["stream"] == json!(true) && b["tools"].is_null())
        .collect();
    assert_eq!(streamed.len(), 1, "one plain stream to the upstream");
    let messages = streamed[0]["messages"].as_array().expect("messages");
    let prompt = ringgate_mock::provider::chat_prompt_tokens(messages);
    assert_eq!(
        seen["stream_usage"],
        json!({
            "input_tokens": prompt,
            "output_tokens": ringgate_mock::provider::DEFAULT_CHUNKS,
            "cache_read_input_tokens": 0,
        }),
        "{seen}"
    );
}

#[test]
fn anthropic_sdk_to_an_anthropic_upstream() {
    anthropic_sdk("claude-via-anthropic-sdk", "claude-sonnet-4-5");
}

#[test]
fn anthropic_sdk_to_an_openai_upstream() {
    anthropic_sdk("gpt-via-anthropic-sdk", "gpt-4o-mini");
}
