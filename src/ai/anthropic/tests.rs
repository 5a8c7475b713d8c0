//! Golden cases of the OpenAI ⇄ Anthropic translation.

use super::*;

fn req(body: &str) -> Result<Value, TranslateError> {
    request_to_anthropic(body.as_bytes(), "claude-x", 4096)
        .map(|b| serde_json::from_slice(&b).unwrap_or_else(|e| panic!("output is JSON: {e}")))
}

#[test]
fn requests_translate() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"claude-x","max_tokens":4096,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            r#"{"model":"c","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"temperature":0.2,"top_p":0.9,"stop":"END","user":"u1",
                "messages":[{"role":"system","content":"be brief"},{"role":"developer","content":[{"type":"text","text":"really"}]},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":"ok"},{"role":"user","content":"more"}]}"#,
            r#"{"model":"claude-x","stream":true,"max_tokens":50,"temperature":0.2,"top_p":0.9,"stop_sequences":["END"],"metadata":{"user_id":"u1"},
                "system":"be brief\n\nreally",
                "messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":"ok"},{"role":"user","content":"more"}]}"#,
        ),
        (
            r#"{"model":"c","max_completion_tokens":7,"stop":["x","y"],"n":1,"logprobs":false,"tools":null,"messages":[{"role":"user","content":"hi","name":null}]}"#,
            r#"{"model":"claude-x","max_tokens":7,"stop_sequences":["x","y"],"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ];
    for (input, want) in cases {
        let want: Value = serde_json::from_str(want).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            req(input).unwrap_or_else(|e| panic!("{input}: {e}")),
            want,
            "{input}"
        );
    }
}

/// Tools, tool calls, tool results and images, in the shapes of OpenAI's and Anthropic's
/// API references (the `get_weather` example of Anthropic's tool use guide).
#[test]
fn tools_and_images_translate() {
    let input = r#"{"model":"c","parallel_tool_calls":false,"tool_choice":"required",
        "tools":[{"type":"function","function":{"name":"get_weather","description":"Get the current weather in a given location",
            "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]},"strict":false}},
            {"type":"function","function":{"name":"now"}}],
        "messages":[
          {"role":"user","content":[{"type":"text","text":"What is in this image, and the weather?"},
            {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4AAQ"}},
            {"type":"image_url","image_url":{"url":"https://upload.wikimedia.org/a.jpg","detail":"auto"}}]},
          {"role":"assistant","content":null,"refusal":null,"tool_calls":[
            {"id":"toolu_01A","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"San Francisco, CA\"}"}},
            {"id":"toolu_01B","type":"function","function":{"name":"now","arguments":""}}]},
          {"role":"tool","tool_call_id":"toolu_01A","content":"15 degrees"},
          {"role":"tool","tool_call_id":"toolu_01B","content":[{"type":"text","text":"noon"}]},
          {"role":"user","content":"thanks"},
          {"role":"assistant","content":"Let me check.","tool_calls":[{"id":"toolu_01C","type":"function","function":{"name":"now","arguments":"{}"}}]},
          {"role":"tool","tool_call_id":"toolu_01C","content":"1pm"}]}"#;
    let want = json!({
        "model": "claude-x", "max_tokens": 4096,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "tools": [
            {"name": "get_weather", "description": "Get the current weather in a given location",
             "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "noon"}]},
            ]},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01C", "name": "now", "input": {}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01C", "content": "1pm"}]},
        ],
    });
    assert_eq!(req(input).unwrap_or_else(|e| panic!("{e}")), want);
    // Each tool_choice form; parallel_tool_calls only where a choice can carry it.
    let user = r#""messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"f"}}]"#;
    for (extra, choice) in [
        (r#""tool_choice":"auto""#, json!({"type": "auto"})),
        (
            r#""tool_choice":"none","parallel_tool_calls":false"#,
            json!({"type": "none"}),
        ),
        (
            r#""tool_choice":{"type":"function","function":{"name":"f"}}"#,
            json!({"type": "tool", "name": "f"}),
        ),
        (
            r#""parallel_tool_calls":false"#,
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (r#""parallel_tool_calls":true"#, Value::Null),
    ] {
        let out = req(&format!("{{{user},{extra}}}")).unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(
            out.get("tool_choice").cloned().unwrap_or(Value::Null),
            choice,
            "{extra}"
        );
    }
    let out = req(r#"{"messages":[{"role":"user","content":"a"}],"parallel_tool_calls":false,"response_format":{"type":"text"}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.get("tool_choice"), None, "no tools, nothing to choose");
    assert_eq!(out.get("output_config"), None, "text is the default");
    // Structured outputs: a JSON schema, and strict tools.
    let out = req(r#"{"messages":[{"role":"user","content":"a"}],
        "tools":[{"type":"function","function":{"name":"f","strict":true,"parameters":{"type":"object","properties":{},"additionalProperties":false}}}],
        "response_format":{"type":"json_schema","json_schema":{"name":"contact","strict":true,"schema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],"additionalProperties":false}}}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out["output_config"],
        json!({"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}}})
    );
    assert_eq!(out["tools"][0]["strict"], true);
}

#[test]
fn tool_use_answers_translate() {
    // The tool use guide's example answer.
    let body = br#"{"id":"msg_01Aq9w938a90dw8q","model":"claude-x","stop_reason":"tool_use","role":"assistant","type":"message",
        "content":[{"type":"text","text":"I'll check the weather."},
          {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"location":"San Francisco, CA","unit":"celsius"}}],
        "usage":{"input_tokens":10,"output_tokens":5}}"#;
    let out: Value = serde_json::from_slice(&response_to_openai(body, 1).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["content"], "I'll check the weather.");
    assert_eq!(
        msg["tool_calls"],
        json!([{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                "function": {"name": "get_weather", "arguments": r#"{"location":"San Francisco, CA","unit":"celsius"}"#}}])
    );
    let body = br#"{"id":"m","type":"message","model":"c","stop_reason":"tool_use","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"usage":{"input_tokens":1,"output_tokens":1}}"#;
    let out: Value = serde_json::from_slice(&response_to_openai(body, 1).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out["choices"][0]["message"]["content"],
        Value::Null,
        "only tool calls: no content"
    );
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

#[test]
fn untranslatable_fields_are_refused_by_name() {
    let user = r#"[{"role":"user","content":"hi"}]"#;
    let cases: &[(String, &str)] = &[
        (format!(r#"{{"messages":{user},"response_format":{{"type":"json_object"}}}}"#), "response_format.type=json_object"),
        (format!(r#"{{"messages":{user},"tools":[{{"type":"custom","custom":{{"name":"x"}}}}]}}"#), "tools[0].type=custom"),
        (r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png","detail":"low"}}]}]}"#.into(), "messages[0].content[0].image_url.detail"),
        (r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#.into(), "messages[0].content[0].type=input_audio"),
        (r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x"}}]}]}"#.into(), "messages[0].content[0].type=image_url"),
        (r#"{"messages":[{"role":"user","content":"a","tool_calls":[]}]}"#.into(), "messages[0].tool_calls"),
        (r#"{"messages":[{"role":"function","content":"r"}]}"#.into(), "messages[0].role=function"),
        (format!(r#"{{"messages":{user},"n":2}}"#), "n"),
        (format!(r#"{{"messages":{user},"logprobs":true}}"#), "logprobs"),
        (format!(r#"{{"messages":{user},"top_logprobs":2}}"#), "top_logprobs"),
        (format!(r#"{{"messages":{user},"presence_penalty":0.5}}"#), "presence_penalty"),
        (format!(r#"{{"messages":{user},"seed":1}}"#), "seed"),
        (r#"{"messages":[{"role":"user","content":"a","name":"bob"}]}"#.into(), "messages[0].name"),
        (r#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":"s"}]}"#.into(), "messages[1].role=system after the conversation started"),
    ];
    for (input, field) in cases {
        assert_eq!(
            req(input),
            Err(TranslateError::Unsupported((*field).to_string())),
            "{input}"
        );
    }
    let invalid: &[(&str, &str)] = &[
        (
            r#"{"messages":[{"role":"system","content":"s"}]}"#,
            "messages",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":0}"#,
            "max_tokens",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"stop":3}"#,
            "stop",
        ),
        (
            r#"{"messages":[{"role":"user","content":7}]}"#,
            "messages[0].content",
        ),
        (r#"{"messages":{}}"#, "messages"),
        (
            r#"{"messages":[{"role":"tool","content":"r"}]}"#,
            "messages[0].tool_call_id",
        ),
        (
            r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]}]}"#,
            "messages[0].content[0].image_url.url",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}"#,
            "messages[0].content[0].image_url.url",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"tool_choice":"sometimes"}"#,
            "tool_choice",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"description":"d"}}]}"#,
            "tools[0].function.name",
        ),
    ];
    for (input, field) in invalid {
        match req(input) {
            Err(TranslateError::Invalid(f, _)) => assert_eq!(f, *field, "{input}"),
            other => panic!("{input}: {other:?}"),
        }
    }
    assert_eq!(req("[1]"), Err(TranslateError::NotJson));
}

#[test]
fn responses_translate() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
        "content":[{"type":"text","text":"Hello"},{"type":"text","text":" there"}],
        "stop_reason":"max_tokens","stop_sequence":null,
        "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":4,"cache_creation_input_tokens":2}}"#;
    let out: Value = serde_json::from_slice(&response_to_openai(body, 77).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let want = json!({
        "id": "msg_1", "object": "chat.completion", "created": 77, "model": "claude-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 16, "completion_tokens": 5, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 4}},
    });
    assert_eq!(out, want);
    let u = crate::ai::usage::usage_from_value(&out["usage"]).unwrap_or_default();
    assert_eq!((u.prompt, u.completion, u.cached_prompt), (16, 5, 4));
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
    ] {
        assert_eq!(finish_reason(stop), finish);
    }
    assert!(response_to_openai(b"{\"type\":\"error\"}", 0).is_err());
    assert!(response_to_openai(b"nope", 0).is_err());
}

#[test]
fn errors_translate() {
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let v: Value = serde_json::from_slice(&error_to_openai(body, 529)).unwrap_or_default();
    assert_eq!(
        v,
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
    let v: Value = serde_json::from_slice(&error_to_openai(b"<html>", 502)).unwrap_or_default();
    assert_eq!(v["error"]["message"], "the Anthropic upstream answered 502");
    assert_eq!(
        (map_status(529), map_status(429), map_status(200)),
        (503, 429, 200)
    );
}

/// A stream as Anthropic's API reference shows it (CRLF in one place, as proxies may send).
pub const STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1,\"cache_read_input_tokens\":5}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\r\n\r\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo \\u00e9\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[test]
fn stream_translates_event_by_event() {
    let mut t = StreamTranslator::new(5);
    let mut out = Vec::new();
    t.feed(STREAM, &mut out);
    t.finish(&mut out);
    assert!(t.done());
    let text = String::from_utf8(out).unwrap_or_default();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 6, "{text}");
    let chunk = |i: usize| -> Value {
        serde_json::from_str(events[i].trim_start_matches("data: ")).unwrap_or_default()
    };
    assert_eq!(
        chunk(0)["choices"][0]["delta"],
        json!({"role":"assistant","content":""})
    );
    assert_eq!(chunk(0)["id"], "msg_9");
    assert_eq!(chunk(0)["object"], "chat.completion.chunk");
    assert_eq!(chunk(1)["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(chunk(2)["choices"][0]["delta"]["content"], "lo é");
    assert_eq!(chunk(3)["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunk(4)["choices"], json!([]));
    assert_eq!(
        chunk(4)["usage"],
        json!({"prompt_tokens":30,"completion_tokens":15,"total_tokens":45,"prompt_tokens_details":{"cached_tokens":5}})
    );
    assert_eq!(events[5], "data: [DONE]");
}

#[test]
fn stream_output_is_independent_of_splits() {
    let whole = {
        let mut t = StreamTranslator::new(5);
        let mut out = Vec::new();
        t.feed(STREAM, &mut out);
        t.finish(&mut out);
        out
    };
    for a in 0..=STREAM.len() {
        // Every single split, and every pair of splits 37 bytes apart.
        for b in [a, (a + 37).min(STREAM.len())] {
            let mut t = StreamTranslator::new(5);
            let mut out = Vec::new();
            t.feed(&STREAM[..a], &mut out);
            t.feed(&STREAM[a..b], &mut out);
            t.feed(&STREAM[b..], &mut out);
            t.finish(&mut out);
            assert_eq!(out, whole, "split at {a},{b}");
        }
    }
    // Nothing waits for the next event: each event's chunk is out once its blank line is.
    let first_end = STREAM.windows(2).position(|w| w == b"\n\n").unwrap_or(0) + 2;
    let mut t = StreamTranslator::new(5);
    let mut out = Vec::new();
    t.feed(&STREAM[..first_end], &mut out);
    assert!(out.starts_with(b"data: {") && out.ends_with(b"\n\n"));
}

#[test]
fn stream_error_event_becomes_an_openai_error() {
    let mut t = StreamTranslator::new(5);
    let mut out = Vec::new();
    t.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\ndata: {\"type\":\"message_stop\"}\n\n", &mut out);
    t.finish(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "data: {\"error\":{\"code\":\"overloaded_error\",\"message\":\"Overloaded\",\"param\":null,\"type\":\"overloaded_error\"}}\n\n"
    );
}

/// The streaming guide's "tool use" example: a text block, then a `tool_use` block whose
/// input arrives as `input_json_delta` fragments.
pub const TOOL_STREAM: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisc\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"o, CA\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"now\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn translate_whole(stream: &[u8]) -> Vec<u8> {
    let mut t = StreamTranslator::new(5);
    let mut out = Vec::new();
    t.feed(stream, &mut out);
    t.finish(&mut out);
    out
}

#[test]
fn tool_use_stream_becomes_tool_call_deltas() {
    let text = String::from_utf8(translate_whole(TOOL_STREAM)).unwrap_or_default();
    let deltas: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .map(|c| c["choices"][0]["delta"].clone())
        .collect();
    let want = [
        json!({"role": "assistant", "content": ""}),
        json!({"content": "Okay"}),
        json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisc"}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "o, CA\"}"}}]}),
        json!({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function", "function": {"name": "now", "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        json!({}),
        Value::Null,
    ];
    assert_eq!(deltas, want, "{text}");
    assert!(text.contains("\"finish_reason\":\"tool_calls\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn tool_stream_output_is_independent_of_splits() {
    let whole = translate_whole(TOOL_STREAM);
    for a in 0..=TOOL_STREAM.len() {
        for b in [a, (a + 53).min(TOOL_STREAM.len())] {
            let mut t = StreamTranslator::new(5);
            let mut out = Vec::new();
            t.feed(&TOOL_STREAM[..a], &mut out);
            t.feed(&TOOL_STREAM[a..b], &mut out);
            t.feed(&TOOL_STREAM[b..], &mut out);
            t.finish(&mut out);
            assert_eq!(out, whole, "split at {a},{b}");
        }
    }
    // Each fragment is out as soon as its event is: nothing waits for the block's end.
    let upto = TOOL_STREAM
        .windows(7)
        .position(|w| w == b"o, CA\\\"")
        .unwrap_or(0);
    let end = upto
        + TOOL_STREAM[upto..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or(0)
        + 2;
    let mut t = StreamTranslator::new(5);
    let mut out = Vec::new();
    t.feed(&TOOL_STREAM[..end], &mut out);
    let text = String::from_utf8_lossy(&out);
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    let last: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or_default();
    assert_eq!(
        last["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "o, CA\"}",
        "{text}"
    );
}
