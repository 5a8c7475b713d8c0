//! Golden tests of the Gemini translation, shaped after the Gemini API reference's examples
//! (ai.google.dev/api/generate-content: text, multi-turn, function calling, SSE streaming).

use super::*;

fn req(v: Value) -> Result<Value, TranslateError> {
    let body = serde_json::to_vec(&v).unwrap_or_default();
    request_to_gemini(&body).map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[test]
fn a_chat_with_tools_becomes_a_generate_content_request() {
    let got = req(json!({
        "model": "gemini-pro",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Boston?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temperature\":22}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": false}
        }}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_completion_tokens": 100,
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-1",
        "n": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    }));
    let want = json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in this picture, and the weather in Boston?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temperature": 22}}},
                {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
                {"text": "Thanks"}
            ]}
        ],
        "tools": [{"functionDeclarations": [{
            "name": "get_weather", "description": "Current weather",
            "parametersJsonSchema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": false}
        }]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"], "seed": 7,
            "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}
        }
    });
    assert_eq!(got, Ok(want));
}

#[test]
fn tool_choice_strings_map_to_modes() {
    for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
        let got =
            req(json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": choice}))
                .unwrap_or(Value::Null);
        assert_eq!(
            got["toolConfig"]["functionCallingConfig"]["mode"],
            json!(mode),
            "{choice}"
        );
    }
    let got = req(json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}))
        .unwrap_or(Value::Null);
    assert_eq!(
        got["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
}

#[test]
fn what_cannot_be_translated_is_refused_by_name() {
    let user = json!({"role": "user", "content": "hi"});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"messages": [user, {"role": "system", "content": "late"}]}),
            "messages[1].role=system after the conversation started",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}),
            "messages[0].name",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "messages[0].content[0].type=input_audio",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            "messages[0].content[0].image_url.url (only data: URLs can go to a Gemini upstream)",
        ),
        (
            json!({"messages": [user], "logit_bias": {"1": 2}}),
            "logit_bias",
        ),
        (json!({"messages": [user], "n": 2}), "n"),
        (
            json!({"messages": [user], "parallel_tool_calls": false}),
            "parallel_tool_calls",
        ),
        (
            json!({"messages": [user], "tools": [{"type": "web_search"}]}),
            "tools[0].type=web_search",
        ),
        (
            json!({"messages": [user], "response_format": {"type": "xml"}}),
            "response_format.type=xml",
        ),
        (
            json!({"messages": [user], "reasoning_effort": "high"}),
            "reasoning_effort",
        ),
        (
            json!({"messages": [user], "tool_choice": "sometimes"}),
            "tool_choice=sometimes",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(
            req(body.clone()),
            Err(TranslateError::Unsupported(field.into())),
            "{body}"
        );
    }
    let invalid: Vec<(Value, &str)> = vec![
        (json!({"messages": []}), "messages"),
        (json!({"messages": [user], "max_tokens": 0}), "max_tokens"),
        (
            json!({"messages": [user], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
    ];
    for (body, field) in invalid {
        match req(body.clone()) {
            Err(TranslateError::Invalid(f, _)) => assert_eq!(f, field, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    assert_eq!(request_to_gemini(b"[1]"), Err(TranslateError::NotJson));
}

#[test]
fn the_model_is_one_path_segment() {
    let mut t = String::new();
    target("/v1beta", "gemini-2.5-flash", false, &mut t);
    assert_eq!(t, "/v1beta/models/gemini-2.5-flash:generateContent");
    t.clear();
    target("", "../a b?c", true, &mut t);
    assert_eq!(t, "/models/..%2Fa%20b%3Fc:streamGenerateContent?alt=sse");
}

fn answer(body: Value) -> Value {
    let b = serde_json::to_vec(&body).unwrap_or_default();
    let out = response_to_openai(&b, 1_700_000_000, "gemini-x").unwrap_or_default();
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

#[test]
fn a_text_answer_and_its_usage() {
    let got = answer(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": true}, {"text": "Hello"}, {"text": " there"}
        ]}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                          "cachedContentTokenCount": 8, "totalTokenCount": 20},
        "modelVersion": "gemini-2.5-flash", "responseId": "abc"
    }));
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_700_000_000u64, "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20,
                      "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 3}}
        })
    );
    let usage = crate::ai::usage::usage_from_value(&got["usage"]);
    assert_eq!(
        usage.map(|u| (u.prompt, u.completion, u.cached_prompt)),
        Some((12, 8, 8))
    );
}

#[test]
fn a_function_call_answer() {
    let got = answer(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Boston"}}}
        ]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}
    }));
    assert_eq!(got["model"], json!("gemini-x"));
    assert_eq!(got["choices"][0]["finish_reason"], json!("tool_calls"));
    assert_eq!(
        got["choices"][0]["message"],
        json!({
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "call_0", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston\"}"}}]
        })
    );
}

#[test]
fn a_blocked_prompt_is_a_content_filter_finish() {
    let got = answer(
        json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}),
    );
    assert_eq!(got["choices"][0]["finish_reason"], json!("content_filter"));
    assert_eq!(got["usage"]["prompt_tokens"], json!(3));
    assert!(response_to_openai(b"{\"type\":\"message\"}", 0, "m").is_err());
    assert!(response_to_openai(b"not json", 0, "m").is_err());
}

#[test]
fn errors_take_openai_shape_and_meaning() {
    let cases: [(&[u8], u16, &str, &str, &str); 5] = [
        (br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
         429, "rate_limit_error", "rate_limit_exceeded", "Resource has been exhausted (e.g. check quota)."),
        (br#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#,
         503, "server_error", "upstream_error", "The model is overloaded."),
        (br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#,
         400, "invalid_request_error", "invalid_request_error", "API key not valid."),
        (br#"{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}"#,
         404, "invalid_request_error", "model_not_found", "models/x is not found"),
        (b"<html>bad gateway</html>", 502, "server_error", "upstream_error", "the Gemini upstream answered 502"),
    ];
    for (body, status, kind, code, message) in cases {
        let v: Value =
            serde_json::from_slice(&error_to_openai(body, status)).unwrap_or(Value::Null);
        assert_eq!(
            v,
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        );
    }
}

/// A streamed answer as Gemini sends it with `alt=sse` (events end in CRLF CRLF): text in
/// pieces, a function call, and the last event with the finish reason and the totals.
const STREAM: &[u8] = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The weather\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" in Boston:\"}],\"role\": \"model\"},\"index\": 0}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Boston\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 7,\"totalTokenCount\": 16},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n";

fn translate(pieces: &[&[u8]]) -> Vec<u8> {
    let mut t = StreamTranslator::new(1, "asked");
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out);
    }
    t.finish(&mut out);
    out
}

fn events(out: &[u8]) -> Vec<Value> {
    out.split(|&b| b == b'\n')
        .filter_map(|l| l.strip_prefix(b"data: "))
        .map(|d| serde_json::from_slice(d).unwrap_or(json!("[DONE]")))
        .collect()
}

#[test]
fn a_stream_becomes_chunks_as_each_event_arrives() {
    let whole = translate(&[STREAM]);
    let ev = events(&whole);
    let deltas: Vec<&Value> = ev.iter().map(|e| &e["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "The weather"}));
    assert_eq!(deltas[2], &json!({"content": " in Boston:"}));
    assert_eq!(
        deltas[3],
        &json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston\"}"}}]})
    );
    assert_eq!(ev[4]["choices"][0]["finish_reason"], json!("tool_calls"));
    assert_eq!(ev[5]["choices"], json!([]));
    assert_eq!(ev[5]["usage"]["prompt_tokens"], json!(9));
    assert_eq!(ev[5]["usage"]["completion_tokens"], json!(7));
    assert_eq!(ev[6], json!("[DONE]"));
    assert_eq!(ev.len(), 7);
    assert!(ev[..6]
        .iter()
        .all(|e| e["id"] == json!("chatcmpl-r1") && e["model"] == json!("gemini-2.5-flash")));
    // The first event is translated before the rest arrives: nothing is held back.
    let first_end = STREAM
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    let mut t = StreamTranslator::new(1, "asked");
    let mut out = Vec::new();
    t.feed(&STREAM[..first_end], &mut out);
    assert_eq!(events(&out).len(), 2);
    assert!(!t.done());
}

#[test]
fn every_split_of_the_stream_gives_the_same_translation() {
    let whole = translate(&[STREAM]);
    let step = 7;
    for i in (0..=STREAM.len()).step_by(step) {
        for j in (i..=STREAM.len()).step_by(step) {
            assert_eq!(
                translate(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]),
                whole,
                "split at {i},{j}"
            );
        }
    }
    for i in 0..=STREAM.len() {
        assert_eq!(
            translate(&[&STREAM[..i], &STREAM[i..]]),
            whole,
            "split at {i}"
        );
    }
}

#[test]
fn an_error_event_ends_the_stream_in_openai_shape() {
    let out = translate(&[b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\ndata: {\"error\":{\"code\":503,\"message\":\"overloaded\",\"status\":\"UNAVAILABLE\"}}\n\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"late\"}]}}]}\n\n"]);
    let ev = events(&out);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2]["error"]["type"], json!("server_error"));
    assert_eq!(ev[2]["error"]["message"], json!("overloaded"));
}

#[test]
fn garbage_and_a_stream_cut_short_end_without_done() {
    let out = translate(&[b"data: {not json\n\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\n"]);
    let ev = events(&out);
    assert_eq!(ev.len(), 2);
    assert!(!out.ends_with(b"[DONE]\n\n"));
}

#[test]
fn tool_results_find_their_call_by_id_however_many_there_are() {
    // A colliding id names the latest call under it.
    let got = req(json!({"model": "g", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x", "content": "1"},
        {"role": "assistant", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "second", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x", "content": "2"},
    ]}))
    .unwrap_or_default();
    let names: Vec<&Value> = got["contents"]
        .as_array()
        .map_or(&[][..], |c| c)
        .iter()
        .filter_map(|c| c["parts"][0].get("functionResponse"))
        .map(|r| &r["name"])
        .collect();
    assert_eq!(names, [&json!("first"), &json!("second")]);
    // A client's 10 MiB body can hold ~80k calls and as many results naming the first one:
    // each result scanned every call (quadratic: 40k of each took 27 s of a worker's CPU in
    // a debug build). With the lookup by id this is a plain linear translation; without it
    // this test runs for about half a minute (no clock is asserted, by the test rules).
    let n = 40_000;
    let calls: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("c{i}"), "type": "function", "function": {"name": "f", "arguments": "{}"}}))
        .collect();
    let mut msgs = vec![
        json!({"role": "user", "content": "hi"}),
        json!({"role": "assistant", "tool_calls": calls}),
    ];
    msgs.extend((0..n).map(|_| json!({"role": "tool", "tool_call_id": "c0", "content": ""})));
    let got = req(json!({"model": "g", "messages": msgs})).unwrap_or_default();
    assert_eq!(
        got["contents"][2]["parts"].as_array().map(Vec::len),
        Some(n)
    );
}
