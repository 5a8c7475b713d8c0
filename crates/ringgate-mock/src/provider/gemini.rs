//! The mock's Gemini API: `POST .../models/{model}:generateContent` and
//! `:streamGenerateContent` (`?alt=sse` for server-sent events, else one JSON array), as the
//! Gemini API reference describes them: `x-goog-api-key` required, `contents` required,
//! errors in the google.rpc shape (`{"error": {code, message, status}}`), `usageMetadata`
//! with `cachedContentTokenCount` from `x-mock-cached-tokens`. When the request declares
//! functions and its last turn is not a function's answer, the model calls the first
//! declared function (with `{"location": "Boston"}`), so tool round trips can be tested.

use super::{
    estimate_tokens, sse_crlf, wait_gate, Ctx, Framing, Outcome, Resp, DEFAULT_CHUNKS, TOKENS,
};
use serde_json::{json, Value};
use std::io;
use std::thread;
use std::time::Duration;

/// The google.rpc status name the Gemini API gives an HTTP status.
pub(super) fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// An error in the Gemini API's shape.
pub(super) fn error(resp: &mut Resp<'_>, status: u16, message: &str) -> io::Result<Outcome> {
    resp.json(
        status,
        &json!({"error": {"code": status, "message": message, "status": status_name(status)}}),
    )
}

/// The model and method of a Gemini path (`.../models/{model}:{method}`).
pub(super) fn method_of(path: &str) -> Option<(&str, &str)> {
    let (before, method) = path.rsplit_once(':')?;
    let model = before.rsplit_once("/models/")?.1;
    matches!(method, "generateContent" | "streamGenerateContent").then_some((model, method))
}

fn text_len(v: &Value) -> u64 {
    match v {
        Value::String(s) => estimate_tokens(s),
        other => estimate_tokens(&other.to_string()),
    }
}

/// `generateContent` / `streamGenerateContent`.
pub(super) fn generate(ctx: &Ctx<'_>, resp: &mut Resp<'_>) -> io::Result<Outcome> {
    let Some((model, method)) = method_of(ctx.path.trim_end_matches('/')) else {
        return error(resp, 404, "unknown method");
    };
    if ctx.head.header("x-goog-api-key").is_none_or(str::is_empty) {
        return error(
            resp,
            403,
            "Method doesn't allow unregistered callers. Please use API Key.",
        );
    }
    let Some(req) = ctx
        .body
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(Value::is_object)
    else {
        return error(resp, 400, "Invalid JSON payload received.");
    };
    let Some(contents) = req.get("contents").and_then(Value::as_array) else {
        return error(
            resp,
            400,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    };
    let prompt: u64 = contents.iter().map(|c| 3 + text_len(c)).sum::<u64>()
        + req.get("systemInstruction").map_or(0, text_len);
    let cached = ctx.knobs.cached_tokens.min(prompt);
    let n = ctx.knobs.chunks.unwrap_or(DEFAULT_CHUNKS);
    let response_id = format!("mock{}", ctx.req);
    let token = |i: u64| TOKENS[(i % TOKENS.len() as u64) as usize];
    let call = calls_a_function(&req, contents);
    let usage = |candidates: Option<u64>| {
        let mut u = json!({"promptTokenCount": prompt, "cachedContentTokenCount": cached});
        if let Some(c) = candidates {
            u["candidatesTokenCount"] = json!(c);
            u["totalTokenCount"] = json!(prompt + c);
        }
        u
    };
    let response = |parts: Value, finish: Option<&str>, candidates: Option<u64>| {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        json!({"candidates": [cand], "usageMetadata": usage(candidates),
               "modelVersion": model, "responseId": response_id})
    };
    if method == "generateContent" {
        let parts = match &call {
            Some(name) => json!([{"functionCall": {"name": name, "args": {"location": "Boston"}}}]),
            None => json!([{"text": (0..n).map(token).collect::<String>()}]),
        };
        return resp.json(200, &response(parts, Some("STOP"), Some(n)));
    }
    let sse = ctx.query.split('&').any(|kv| kv == "alt=sse");
    let mut events = Vec::new();
    if let Some(name) = &call {
        events.push(response(
            json!([{"functionCall": {"name": name, "args": {"location": "Boston"}}}]),
            Some("STOP"),
            Some(n),
        ));
    } else {
        for i in 0..n.max(1) {
            let last = i + 1 == n.max(1);
            events.push(response(
                json!([{"text": if n > 0 { token(i) } else { "" }}]),
                last.then_some("STOP"),
                last.then_some(n),
            ));
        }
    }
    if !sse {
        return resp.json(200, &Value::Array(events));
    }
    resp.head(200, Some("text/event-stream"), Framing::Chunked, &[])?;
    for (i, ev) in events.iter().enumerate() {
        if i > 0 && ctx.knobs.interval_ms > 0 {
            thread::sleep(Duration::from_millis(ctx.knobs.interval_ms));
        }
        resp.body(&sse_crlf(ev))?;
        resp.flush()?;
        if i == 0 {
            if resp.drop_mid {
                return Ok(Outcome::Abort);
            }
            if ctx.knobs.gate && !wait_gate(ctx.shared, ctx.gate_snapshot) {
                return Ok(Outcome::Abort);
            }
        }
    }
    resp.finish()
}

/// The first declared function, when the request declares any and its last turn is not
/// a function's answer (function calling mode NONE calls nothing).
fn calls_a_function(req: &Value, contents: &[Value]) -> Option<String> {
    if req.pointer("/toolConfig/functionCallingConfig/mode") == Some(&json!("NONE")) {
        return None;
    }
    let answered = contents
        .last()
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
    if answered {
        return None;
    }
    req.pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}
