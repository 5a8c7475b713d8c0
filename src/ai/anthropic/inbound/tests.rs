//! Golden cases of the Anthropic-client translation (Anthropic request → OpenAI chat;
//! OpenAI answer, error and stream → Anthropic's).

use super::*;

fn req(body: &str) -> Result<Value, TranslateError> {
    request_to_openai(body.as_bytes(), "gpt-x")
        .map(|b| serde_json::from_slice(&b).unwrap_or_else(|e| panic!("output is JSON: {e}")))
}

#[test]
fn requests_translate() {
    // The Messages API reference's shapes: system blocks with cache_control, tools, a
    // tool_use turn and its tool_result, images by base64 and by URL.
    let input = r#"{"model":"claude-x","max_tokens":1024,"stream":true,"temperature":0.5,"top_p":0.9,
        "stop_sequences":["END"],"metadata":{"user_id":"u-1"},"thinking":{"type":"disabled"},
        "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral"}},{"type":"text","text":"Really."}],
        "tools":[{"name":"get_weather","description":"Get the current weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}],
        "tool_choice":{"type":"any","disable_parallel_tool_use":true},
        "messages":[
          {"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/4AAQ"}},
             {"type":"image","source":{"type":"url","url":"https://upload.wikimedia.org/a.jpg"}},{"type":"text","text":"Weather there?"}]},
          {"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"location":"San Francisco, CA"}}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A","content":"15 degrees"},{"type":"text","text":"And tomorrow?"}]},
          {"role":"assistant","content":[{"type":"tool_use","id":"toolu_01B","name":"get_weather","input":{}}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01B","content":[{"type":"text","text":"no data"}],"is_error":true}]}]}"#;
    let want = json!({
        "model": "gpt-x", "max_tokens": 1024, "stream": true, "stream_options": {"include_usage": true},
        "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}],
        "tool_choice": "required", "parallel_tool_calls": false,
        "messages": [
            {"role": "system", "content": "You are terse.\n\nReally."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
                {"type": "text", "text": "Weather there?"}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_01A", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
            {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01B", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": "Error: no data"},
        ],
    });
    assert_eq!(req(input).unwrap_or_else(|e| panic!("{e}")), want);
    // Structured outputs and strict tools.
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false});
    let out = req(&format!(
        r#"{{"max_tokens":5,"messages":[{{"role":"user","content":"a"}}],"output_config":{{"format":{{"type":"json_schema","schema":{schema}}}}},
            "tools":[{{"name":"f","strict":true,"input_schema":{schema}}}]}}"#
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "strict": true, "schema": schema}})
    );
    assert_eq!(out["tools"][0]["function"]["strict"], true);
    let beta = req(&format!(
        r#"{{"max_tokens":5,"messages":[{{"role":"user","content":"a"}}],"output_format":{{"type":"json_schema","schema":{schema}}}}}"#
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(beta["response_format"], out["response_format"]);
    let plain = req(r#"{"model":"c","max_tokens":5,"system":"s","messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"tool","name":"f"}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plain,
        json!({"model": "gpt-x", "max_tokens": 5, "tool_choice": {"type": "function", "function": {"name": "f"}},
               "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]})
    );
}

#[test]
fn untranslatable_fields_are_refused_by_name() {
    let user = r#""max_tokens":5,"messages":[{"role":"user","content":"hi"}]"#;
    let cases: &[(String, &str)] = &[
        (format!(r#"{{{user},"top_k":5}}"#), "top_k"),
        (format!(r#"{{{user},"thinking":{{"type":"enabled","budget_tokens":1024}}}}"#), "thinking"),
        (format!(r#"{{{user},"metadata":{{"other":1}}}}"#), "metadata"),
        (format!(r#"{{{user},"tools":[{{"type":"web_search_20250305","name":"web_search"}}]}}"#), "tools[0].type=web_search_20250305"),
        (format!(r#"{{{user},"tool_choice":{{"type":"sometimes"}}}}"#), "tool_choice.type=sometimes"),
        (r#"{"max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}"#.into(), "messages[0].content[0].type=document"),
        (r#"{"max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"..."}]}]}"#.into(), "messages[0].content[0].type=thinking"),
        (r#"{"max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#.into(), "messages[0].content[0].source.type=file"),
        (r#"{"max_tokens":5,"system":[{"type":"image"}],"messages":[{"role":"user","content":"a"}]}"#.into(), "system[0].type=image"),
        (r#"{"max_tokens":5,"messages":[{"role":"system","content":"a"}]}"#.into(), "messages[0].role=system"),
        (format!(r#"{{{user},"output_config":{{"effort":"high"}}}}"#), "output_config.effort"),
    ];
    for (input, field) in cases {
        assert_eq!(
            req(input),
            Err(TranslateError::Unsupported((*field).to_string())),
            "{input}"
        );
    }
    assert!(
        matches!(req(r#"{"max_tokens":5,"messages":[]}"#), Err(TranslateError::Invalid(f, _)) if f == "messages")
    );
    assert_eq!(req("[]"), Err(TranslateError::NotJson));
}

#[test]
fn answers_and_errors_translate() {
    // OpenAI's API reference chat completion with a tool call.
    let body = br#"{"id":"chatcmpl-abc123","object":"chat.completion","created":1699896916,"model":"gpt-4o-mini",
        "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function",
          "function":{"name":"get_current_weather","arguments":"{\n\"location\": \"Boston, MA\"\n}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],
        "usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99,"prompt_tokens_details":{"cached_tokens":64}}}"#;
    let out: Value = serde_json::from_slice(&response_from_openai(body).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        json!({"id": "chatcmpl-abc123", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
               "content": [{"type": "tool_use", "id": "call_abc123", "name": "get_current_weather", "input": {"location": "Boston, MA"}}],
               "stop_reason": "tool_use", "stop_sequence": null,
               "usage": {"input_tokens": 18, "output_tokens": 17, "cache_read_input_tokens": 64, "cache_creation_input_tokens": 0}})
    );
    let u = crate::ai::usage::usage_from_value(&out["usage"]).unwrap_or_default();
    assert_eq!(
        (u.prompt, u.completion, u.cached_prompt),
        (82, 17, 64),
        "the same usage read back"
    );
    let text = br#"{"id":"c","model":"m","choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}]}"#;
    let out: Value =
        serde_json::from_slice(&response_from_openai(text).unwrap_or_default()).unwrap_or_default();
    assert_eq!(out["content"], json!([{"type": "text", "text": "Hi"}]));
    assert_eq!(out["stop_reason"], "max_tokens");
    assert!(response_from_openai(b"{\"error\":{}}").is_err());

    let e: Value = serde_json::from_slice(&error_from_openai(
        br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        429,
    ))
    .unwrap_or_default();
    assert_eq!(
        e,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    let e: Value = serde_json::from_slice(&error_from_openai(b"<html>", 502)).unwrap_or_default();
    assert_eq!(e["error"]["type"], "api_error");
    assert_eq!(
        (
            error_type(400),
            error_type(401),
            error_type(404),
            error_type(503)
        ),
        (
            "invalid_request_error",
            "authentication_error",
            "not_found_error",
            "overloaded_error"
        )
    );
    assert!(is_messages_path("/v1/messages") && !is_messages_path("/v1/chat/completions"));
}

/// OpenAI's streaming reference: a text delta, then a tool call whose arguments arrive in
/// fragments, the finish reason, the usage chunk (`include_usage`), `[DONE]`.
const STREAM: &[u8] = b"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \\u00e9\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":12,\"total_tokens\":42,\"prompt_tokens_details\":{\"cached_tokens\":10}}}\n\n\
data: [DONE]\n\n";

fn whole(stream: &[u8]) -> Vec<u8> {
    let mut t = ToAnthropicStream::new();
    let mut out = Vec::new();
    t.feed(stream, &mut out);
    t.finish(&mut out);
    out
}

#[test]
fn stream_becomes_anthropic_events() {
    let text = String::from_utf8(whole(STREAM)).unwrap_or_default();
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap_or(("", ""));
            (
                name.trim_start_matches("event: "),
                serde_json::from_str(data.trim_start_matches("data: ")).unwrap_or_default(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    assert!(
        events.iter().all(|(n, v)| v["type"] == *n),
        "each event's data names it"
    );
    assert_eq!(events[0].1["message"]["id"], "chatcmpl-123");
    assert_eq!(events[0].1["message"]["model"], "gpt-4o-mini");
    assert_eq!(
        events[2].1["delta"],
        json!({"type": "text_delta", "text": "Let me é"})
    );
    assert_eq!(
        events[4].1,
        json!({"type": "content_block_start", "index": 1, "content_block":
            {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {}}})
    );
    assert_eq!(
        events[5].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"location\":"})
    );
    assert_eq!(events[6].1["index"], 1);
    assert_eq!(
        events[8].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0}})
    );
}

#[test]
fn stream_output_is_independent_of_splits() {
    let all = whole(STREAM);
    for a in 0..=STREAM.len() {
        for b in [a, (a + 41).min(STREAM.len())] {
            let mut t = ToAnthropicStream::new();
            let mut out = Vec::new();
            t.feed(&STREAM[..a], &mut out);
            t.feed(&STREAM[a..b], &mut out);
            t.feed(&STREAM[b..], &mut out);
            t.finish(&mut out);
            assert_eq!(out, all, "split at {a},{b}");
        }
    }
    // The first text delta is out once its chunk is, before the next chunk arrives.
    let second_end = STREAM
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0)
        + 4;
    let mut t = ToAnthropicStream::new();
    let mut out = Vec::new();
    t.feed(&STREAM[..second_end], &mut out);
    let text = String::from_utf8_lossy(&out);
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(
        last.starts_with("event: content_block_delta\n") && last.contains("Let me é"),
        "{text}"
    );
    assert!(!t.done());
}

#[test]
fn stream_error_becomes_an_anthropic_error_event() {
    let out = whole(
        b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\ndata: [DONE]\n\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "event: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"
    );
}

/// One event of `tool_calls` deltas.
fn tool_event(calls: Vec<Value>) -> Vec<u8> {
    let mut e = b"data: ".to_vec();
    e.extend_from_slice(
        json!({"choices": [{"delta": {"tool_calls": calls}}]})
            .to_string()
            .as_bytes(),
    );
    e.extend_from_slice(b"\n\n");
    e
}

#[test]
fn a_hostile_upstream_cannot_grow_the_tool_call_table() {
    // A stream that starts far more calls than any answer makes, then sends fragments for
    // an index it never started: the table of calls stays bounded (it grew one entry per
    // call, and each fragment scanned all of it: quadratic CPU on the worker).
    let mut t = ToAnthropicStream::new();
    let mut out = Vec::new();
    let starts = (0..MAX_STREAM_TOOLS as u64 + 5000)
        .map(|i| json!({"index": i, "id": format!("c{i}"), "function": {"name": "f"}}))
        .collect();
    t.feed(&tool_event(starts), &mut out);
    assert_eq!(t.tools.len(), MAX_STREAM_TOOLS);
    out.clear();
    t.feed(
        &tool_event(vec![
            json!({"index": u64::MAX, "function": {"arguments": "x"}}),
        ]),
        &mut out,
    );
    assert!(out.is_empty(), "a fragment of an unknown call is dropped");
    // A late fragment of an early call is still filed under its block; one of the last
    // call (past the bound) still reaches its block while it is open.
    t.feed(
        &tool_event(vec![json!({"index": 1, "function": {"arguments": "{}"}})]),
        &mut out,
    );
    let last = MAX_STREAM_TOOLS as u64 + 4999;
    t.feed(
        &tool_event(vec![
            json!({"index": last, "function": {"arguments": "{}"}}),
        ]),
        &mut out,
    );
    let deltas: Vec<Value> = events_of(&out)
        .into_iter()
        .filter(|v| v["type"] == "content_block_delta")
        .map(|v| v["index"].clone())
        .collect();
    // Call i opened block i (no text came first).
    assert_eq!(deltas, [json!(1), json!(last)]);
}

/// The data of each event in `out`.
fn events_of(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter_map(|e| e.split_once("data: "))
        .map(|(_, d)| serde_json::from_str(d).unwrap_or_default())
        .collect()
}

#[test]
fn a_reused_tool_call_index_files_fragments_under_its_latest_block() {
    let mut t = ToAnthropicStream::new();
    let mut out = Vec::new();
    let stream = [
        tool_event(vec![
            json!({"index": 0, "id": "a", "function": {"name": "f"}}),
        ]),
        tool_event(vec![
            json!({"index": 0, "id": "b", "function": {"name": "g"}}),
        ]),
        tool_event(vec![
            json!({"index": 7, "id": "c", "function": {"name": "h"}}),
        ]),
        tool_event(vec![json!({"index": 0, "function": {"arguments": "{}"}})]),
    ]
    .concat();
    t.feed(&stream, &mut out);
    let last = events_of(&out).pop().unwrap_or_default();
    assert_eq!(
        (&last["type"], &last["index"]),
        (&json!("content_block_delta"), &json!(1)),
        "block 1 holds call `b`, the latest under index 0"
    );
}
