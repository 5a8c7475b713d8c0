//! Translation between the OpenAI chat completions API (what clients speak) and Google's
//! Gemini API (`models/{model}:generateContent` and `:streamGenerateContent?alt=sse`, what an
//! `api = "gemini"` upstream speaks). Pure functions on bytes, sans-IO, like
//! [`super::anthropic`]: the request body, the whole JSON answer, an error body, and a stream
//! translator fed the response body in whatever pieces the socket delivers. A request field
//! without a Gemini equivalent is refused by name rather than dropped.
//!
//! Shapes follow the Gemini API reference (ai.google.dev/api: `GenerateContentRequest`,
//! `Content`, `Part`, `GenerationConfig`, `Tool`, `ToolConfig`, `GenerateContentResponse`,
//! `UsageMetadata`, and the error model of google.rpc.Status).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::sse::SseData;

/// The largest non-streaming answer (or error body, or stream event) kept whole for
/// translation.
pub const MAX_BODY: usize = 16 << 20;

/// Why a request cannot go to a Gemini upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The body is not a JSON object.
    #[error("request body is not a JSON object")]
    NotJson,
    /// A field (named by its path) has no Gemini equivalent in this gateway.
    #[error("`{0}` is not supported for this model (its upstream speaks the Gemini API)")]
    Unsupported(String),
    /// A field has a value that cannot be translated.
    #[error("`{0}`: {1}")]
    Invalid(String, &'static str),
}

/// The upstream request target for `model` under the upstream's base path: the streaming
/// method (with `alt=sse`, so the answer is an event stream) or the unary one. The model is
/// percent-encoded as one path segment (a model named by a client never steers the path).
pub fn target(base_path: &str, model: &str, stream: bool, out: &mut String) {
    out.push_str(base_path);
    out.push_str("/models/");
    for &b in model.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out.push_str(if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    });
}

fn unsupported(path: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported(path.into())
}

/// Text of a system message (a string or an array of `text` parts).
fn system_text(content: &Value, path: &str) -> Result<String, TranslateError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (t, p.get("text").and_then(Value::as_str)) {
                    ("text", Some(s)) => text.push_str(s),
                    _ => return Err(unsupported(format!("{path}[{j}].type={t}"))),
                }
            }
            Ok(text)
        }
        _ => Err(TranslateError::Invalid(
            path.to_string(),
            "must be a string or an array of text parts",
        )),
    }
}

/// An `image_url` part as Gemini inline data. Only `data:` URLs carry the image itself;
/// Gemini fetches no arbitrary URLs (its `fileData` takes Files API URIs), so an http(s)
/// image is refused by name rather than sent as a URI the provider would reject.
fn image_part(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::Invalid(format!("{path}.image_url"), "needs a url"))?;
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(unsupported(format!(
            "{path}.image_url.url (only data: URLs can go to a Gemini upstream)"
        )));
    };
    let Some((mime, data)) = rest.split_once(";base64,") else {
        return Err(TranslateError::Invalid(
            format!("{path}.image_url.url"),
            "a data: URL must be base64 (data:<type>;base64,<data>)",
        ));
    };
    if mime.is_empty() || data.is_empty() {
        return Err(TranslateError::Invalid(
            format!("{path}.image_url.url"),
            "a data: URL needs a media type and data",
        ));
    }
    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
}

/// A user or assistant message's content as Gemini parts.
fn parts_of(content: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    match content {
        Value::Null => Ok(()),
        Value::String(s) => {
            out.push(json!({ "text": s }));
            Ok(())
        }
        Value::Array(parts) => {
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or("");
                let ppath = format!("{path}[{j}]");
                match t {
                    "text" => match p.get("text").and_then(Value::as_str) {
                        Some(s) => out.push(json!({ "text": s })),
                        None => {
                            return Err(TranslateError::Invalid(ppath, "a text part needs text"))
                        }
                    },
                    "image_url" => out.push(image_part(p, &ppath)?),
                    _ => return Err(unsupported(format!("{ppath}.type={t}"))),
                }
            }
            Ok(())
        }
        _ => Err(TranslateError::Invalid(
            path.to_string(),
            "must be a string or an array of content parts",
        )),
    }
}

/// An assistant's `tool_calls` as `functionCall` parts; remembers each call's id and name
/// (a later `tool` message names only the id, Gemini's answer needs the name).
fn function_calls(
    calls: &Value,
    path: &str,
    names: &mut HashMap<String, String>,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let Some(list) = calls.as_array() else {
        return Err(TranslateError::Invalid(
            path.to_string(),
            "must be an array",
        ));
    };
    for (k, c) in list.iter().enumerate() {
        let cpath = format!("{path}[{k}]");
        let kind = c.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            return Err(unsupported(format!("{cpath}.type={kind}")));
        }
        let f = c.get("function").unwrap_or(&Value::Null);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return Err(TranslateError::Invalid(
                format!("{cpath}.function.name"),
                "is required",
            ));
        };
        let args = match f.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(TranslateError::Invalid(
                        format!("{cpath}.function.arguments"),
                        "must be a JSON object in a string",
                    ))
                }
            },
            Some(_) => {
                return Err(TranslateError::Invalid(
                    format!("{cpath}.function.arguments"),
                    "must be a string",
                ))
            }
        };
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            names.insert(id.to_string(), name.to_string());
        }
        out.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    Ok(())
}

/// A `tool` message as a `functionResponse` part. Gemini takes a JSON object as the
/// response: a result that is one is sent as it is, anything else as `{"content": text}`.
fn function_response(
    obj: &Map<String, Value>,
    path: &str,
    names: &HashMap<String, String>,
) -> Result<Value, TranslateError> {
    let Some(id) = obj.get("tool_call_id").and_then(Value::as_str) else {
        return Err(TranslateError::Invalid(
            format!("{path}.tool_call_id"),
            "is required",
        ));
    };
    let Some(name) = names.get(id) else {
        return Err(TranslateError::Invalid(
            format!("{path}.tool_call_id"),
            "names no tool call of an earlier assistant message",
        ));
    };
    let text = match obj.get("content").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        c => system_text(c, &format!("{path}.content"))?,
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// Appends `parts` as a turn of `role`, joining it to the last turn when that has the same
/// role (Gemini expects turns to alternate; consecutive tool results are one turn).
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(p)) = last.get_mut("parts") {
                p.extend(parts);
                return;
            }
        }
    }
    contents.push(json!({"role": role, "parts": parts}));
}

/// The `messages` array as Gemini `contents` and the system instruction's text.
fn contents_of(list: &[Value]) -> Result<(Vec<Value>, Vec<String>), TranslateError> {
    let mut contents: Vec<Value> = Vec::new();
    let mut system: Vec<String> = Vec::new();
    // By id, the latest call under an id winning; a map, since a client's request may
    // hold tens of thousands of calls and results (a scan per result was quadratic).
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let Some(obj) = m.as_object() else {
            return Err(TranslateError::Invalid(path, "must be an object"));
        };
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
        let allowed: &[&str] = match role {
            "assistant" => &["role", "content", "tool_calls", "refusal"],
            "tool" => &["role", "content", "tool_call_id"],
            _ => &["role", "content"],
        };
        if let Some(k) = obj
            .iter()
            .find(|(k, v)| !allowed.contains(&k.as_str()) && !v.is_null())
            .map(|(k, _)| k)
        {
            return Err(unsupported(format!("{path}.{k}")));
        }
        let content = obj.get("content").unwrap_or(&Value::Null);
        let cpath = format!("{path}.content");
        match role {
            "system" | "developer" if contents.is_empty() => {
                system.push(system_text(content, &cpath)?);
            }
            "system" | "developer" => {
                return Err(unsupported(format!(
                    "{path}.role={role} after the conversation started"
                )))
            }
            "user" => {
                let mut parts = Vec::new();
                parts_of(content, &cpath, &mut parts)?;
                push_turn(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                parts_of(content, &cpath, &mut parts)?;
                if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
                    function_calls(calls, &format!("{path}.tool_calls"), &mut names, &mut parts)?;
                }
                push_turn(&mut contents, "model", parts);
            }
            "tool" => {
                let part = function_response(obj, &path, &names)?;
                push_turn(&mut contents, "user", vec![part]);
            }
            _ => return Err(unsupported(format!("{path}.role={role}"))),
        }
    }
    Ok((contents, system))
}

/// `tools` as one Gemini tool holding every function declaration. `parametersJsonSchema`
/// takes the client's JSON Schema as it is (the older `parameters` field takes only an
/// OpenAPI subset and would reject common schemas).
fn tools_of(v: &Value) -> Result<Value, TranslateError> {
    let Some(list) = v.as_array() else {
        return Err(TranslateError::Invalid("tools".into(), "must be an array"));
    };
    let mut decls = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            return Err(unsupported(format!("tools[{i}].type={kind}")));
        }
        let f = t.get("function").unwrap_or(&Value::Null);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return Err(TranslateError::Invalid(
                format!("tools[{i}].function.name"),
                "is required",
            ));
        };
        let mut d = Map::new();
        d.insert("name".into(), Value::String(name.to_string()));
        if let Some(desc) = f.get("description").filter(|v| !v.is_null()) {
            d.insert("description".into(), desc.clone());
        }
        if let Some(p) = f.get("parameters").filter(|v| !v.is_null()) {
            d.insert("parametersJsonSchema".into(), p.clone());
        }
        decls.push(Value::Object(d));
    }
    Ok(json!([{ "functionDeclarations": decls }]))
}

/// `tool_choice` as Gemini's function calling mode.
fn tool_config_of(v: &Value) -> Result<Value, TranslateError> {
    let config = match v {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            other => return Err(unsupported(format!("tool_choice={other}"))),
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => {
                    json!({"mode": "ANY", "allowedFunctionNames": [n]})
                }
                _ => {
                    return Err(TranslateError::Invalid(
                        "tool_choice".into(),
                        "must be auto, none, required or {type: function, function: {name}}",
                    ))
                }
            }
        }
        _ => {
            return Err(TranslateError::Invalid(
                "tool_choice".into(),
                "must be a string or an object",
            ))
        }
    };
    Ok(json!({ "functionCallingConfig": config }))
}

/// `response_format` into the generation config: JSON mode and structured output map to
/// Gemini's `responseMimeType` and `responseJsonSchema`.
fn response_format(v: &Value, gen: &mut Map<String, Value>) -> Result<(), TranslateError> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let Some(schema) = v.get("json_schema").and_then(|s| s.get("schema")) else {
                return Err(TranslateError::Invalid(
                    "response_format.json_schema.schema".into(),
                    "is required",
                ));
            };
            gen.insert("responseMimeType".into(), json!("application/json"));
            gen.insert("responseJsonSchema".into(), schema.clone());
        }
        Some(other) => return Err(unsupported(format!("response_format.type={other}"))),
        None => {
            return Err(TranslateError::Invalid(
                "response_format.type".into(),
                "is required",
            ))
        }
    }
    Ok(())
}

/// Top-level request fields accepted when at their no-op value, refused otherwise.
fn inert(key: &str, v: &Value) -> bool {
    match key {
        "n" => v.as_u64() == Some(1),
        "logprobs" => v.as_bool() == Some(false),
        // Gemini may always call several functions at once: only the default can be kept.
        "parallel_tool_calls" => v.as_bool() == Some(true),
        _ => false,
    }
}

/// The OpenAI chat completions request `body` as a Gemini `GenerateContentRequest`. The
/// model goes in the path ([`target`]), and so does streaming: `stream` is read by the
/// caller and not sent. `user` (an end-user id for the provider's abuse monitoring, which
/// changes nothing in the answer) has no Gemini field and is the one field left out.
pub fn request_to_gemini(body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(TranslateError::NotJson);
    };
    let mut out = Map::new();
    let mut gen = Map::new();
    let mut contents = Vec::new();
    let mut system = Vec::new();
    for (key, v) in &req {
        if v.is_null() {
            continue;
        }
        let number = |name: &str, gen: &mut Map<String, Value>| {
            if v.is_number() {
                gen.insert(name.into(), v.clone());
                Ok(())
            } else {
                Err(TranslateError::Invalid(key.clone(), "must be a number"))
            }
        };
        match key.as_str() {
            "model" | "stream" | "stream_options" | "user" => {}
            "messages" => {
                let Some(list) = v.as_array() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be an array"));
                };
                (contents, system) = contents_of(list)?;
            }
            "max_tokens" | "max_completion_tokens" => {
                let Some(n) = v.as_u64().filter(|&n| n > 0) else {
                    return Err(TranslateError::Invalid(
                        key.clone(),
                        "must be a positive integer",
                    ));
                };
                let n = gen
                    .get("maxOutputTokens")
                    .and_then(Value::as_u64)
                    .map_or(n, |m| m.min(n));
                gen.insert("maxOutputTokens".into(), Value::from(n));
            }
            "temperature" => number("temperature", &mut gen)?,
            "top_p" => number("topP", &mut gen)?,
            "presence_penalty" => number("presencePenalty", &mut gen)?,
            "frequency_penalty" => number("frequencyPenalty", &mut gen)?,
            "seed" => {
                if !v.is_i64() {
                    return Err(TranslateError::Invalid(key.clone(), "must be an integer"));
                }
                gen.insert("seed".into(), v.clone());
            }
            "stop" => {
                let seqs = match v {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => {
                        return Err(TranslateError::Invalid(
                            key.clone(),
                            "must be a string or an array of strings",
                        ))
                    }
                };
                gen.insert("stopSequences".into(), Value::Array(seqs));
            }
            "tools" => {
                out.insert("tools".into(), tools_of(v)?);
            }
            "tool_choice" => {
                out.insert("toolConfig".into(), tool_config_of(v)?);
            }
            "response_format" => response_format(v, &mut gen)?,
            k if inert(k, v) => {}
            k => return Err(unsupported(k)),
        }
    }
    if contents.is_empty() {
        return Err(TranslateError::Invalid(
            "messages".into(),
            "must hold at least one user or assistant message",
        ));
    }
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    out.insert("contents".into(), Value::Array(contents));
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|_| TranslateError::NotJson)
}

/// A Gemini `finishReason` as OpenAI's `finish_reason`.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => "content_filter",
        _ => "stop",
    }
}

/// Token counts from `usageMetadata` (each response of a stream carries the totals so far).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    prompt: u64,
    candidates: u64,
    thoughts: u64,
    cached: u64,
    tool_prompt: u64,
}

impl Tokens {
    fn update(&mut self, u: &Value) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(v) = n("promptTokenCount") {
            self.prompt = v;
        }
        if let Some(v) = n("candidatesTokenCount") {
            self.candidates = v;
        }
        if let Some(v) = n("thoughtsTokenCount") {
            self.thoughts = v;
        }
        if let Some(v) = n("cachedContentTokenCount") {
            self.cached = v;
        }
        if let Some(v) = n("toolUsePromptTokenCount") {
            self.tool_prompt = v;
        }
    }

    /// OpenAI's usage object. Gemini's prompt count includes cached content; thinking
    /// tokens are billed as output, as OpenAI counts reasoning tokens in completion tokens.
    fn openai(&self) -> Value {
        let prompt = self.prompt.saturating_add(self.tool_prompt);
        let completion = self.candidates.saturating_add(self.thoughts);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": self.cached.min(prompt)},
            "completion_tokens_details": {"reasoning_tokens": self.thoughts},
        })
    }
}

/// What one response's first candidate says: its text, its function calls, its finish.
struct Turn {
    text: String,
    calls: Vec<Value>,
    finish: Option<&'static str>,
}

/// Reads `candidates[0]` (thought summaries are not answer text and are left out). A
/// response with no candidate and a `promptFeedback.blockReason` was refused as a whole.
fn turn_of(resp: &Value, calls_before: usize) -> Turn {
    let mut turn = Turn {
        text: String::new(),
        calls: Vec::new(),
        finish: None,
    };
    let cand = resp
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(cand) = cand else {
        if resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some()
        {
            turn.finish = Some("content_filter");
        }
        return turn;
    };
    let parts = cand
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], |p| p);
    for p in parts {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            turn.text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let index = calls_before + turn.calls.len();
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{index}"), str::to_string);
            let args = fc.get("args").cloned().unwrap_or_else(|| json!({}));
            turn.calls.push(json!({
                "index": index,
                "id": id,
                "type": "function",
                "function": {
                    "name": fc.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": serde_json::to_string(&args).unwrap_or_default(),
                },
            }));
        }
    }
    turn.finish = cand
        .get("finishReason")
        .and_then(Value::as_str)
        .filter(|r| *r != "FINISH_REASON_UNSPECIFIED")
        .map(finish_reason);
    turn
}

/// Gemini answers a function call with finish reason STOP; OpenAI says `tool_calls`.
fn finish_with_calls(finish: Option<&'static str>, any_calls: bool) -> Option<&'static str> {
    match finish {
        Some("stop") if any_calls => Some("tool_calls"),
        f => f,
    }
}

fn str_or<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}

/// A whole Gemini `GenerateContentResponse` as an OpenAI chat completion. `model` is the
/// name the answer reports when the provider gave no `modelVersion`.
pub fn response_to_openai(
    body: &[u8],
    created: u64,
    model: &str,
) -> Result<Vec<u8>, TranslateError> {
    let resp: Value = serde_json::from_slice(body).map_err(|_| TranslateError::NotJson)?;
    if !resp.is_object()
        || (resp.get("candidates").is_none() && resp.get("promptFeedback").is_none())
    {
        return Err(TranslateError::Invalid(
            "candidates".into(),
            "the answer is not a Gemini GenerateContentResponse",
        ));
    }
    let mut turn = turn_of(&resp, 0);
    let mut tokens = Tokens::default();
    if let Some(u) = resp.get("usageMetadata") {
        tokens.update(u);
    }
    let calls = std::mem::take(&mut turn.calls);
    let mut message = json!({
        "role": "assistant",
        "content": if turn.text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(turn.text) },
    });
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|mut c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("index");
                }
                c
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let any_calls = message.get("tool_calls").is_some();
    let out = json!({
        "id": format!("chatcmpl-{}", str_or(&resp, "responseId", "gemini")),
        "object": "chat.completion",
        "created": created,
        "model": str_or(&resp, "modelVersion", model),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_with_calls(turn.finish, any_calls).unwrap_or("stop"),
        }],
        "usage": tokens.openai(),
    });
    serde_json::to_vec(&out).map_err(|_| TranslateError::NotJson)
}

/// The OpenAI error `type` (and `code`) for a google.rpc status name.
fn error_kind(status: &str, http: u16) -> (&'static str, &'static str) {
    match status {
        "RESOURCE_EXHAUSTED" => ("rate_limit_error", "rate_limit_exceeded"),
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            ("invalid_request_error", "invalid_request_error")
        }
        "UNAUTHENTICATED" => ("authentication_error", "invalid_api_key"),
        "PERMISSION_DENIED" => ("permission_error", "permission_denied"),
        "NOT_FOUND" => ("invalid_request_error", "model_not_found"),
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" => ("server_error", "upstream_error"),
        _ if http == 429 => ("rate_limit_error", "rate_limit_exceeded"),
        _ if http >= 500 => ("server_error", "upstream_error"),
        _ => ("upstream_error", "upstream_error"),
    }
}

/// A Gemini error (`{"error": {code, message, status}}`, or a one-element array of it, as
/// the streaming method answers) in OpenAI's shape.
fn openai_error(v: Option<&Value>, http: u16) -> Value {
    let v = v.map(|v| v.as_array().and_then(|a| a.first()).unwrap_or(v));
    let inner = v.map(|v| v.get("error").unwrap_or(v));
    let status = inner
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (kind, code) = error_kind(status, http);
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(
            || format!("the Gemini upstream answered {http}"),
            str::to_string,
        );
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A Gemini error body as an OpenAI error body.
pub fn error_to_openai(body: &[u8], status: u16) -> Vec<u8> {
    let v = serde_json::from_slice::<Value>(body).ok();
    serde_json::to_vec(&openai_error(v.as_ref(), status)).unwrap_or_default()
}

/// Translates a Gemini event stream (`alt=sse`: one `GenerateContentResponse` per event)
/// into OpenAI `chat.completion.chunk` events as each arrives: text parts become content
/// deltas, function calls tool-call deltas (Gemini sends each call whole), the finish reason
/// a final chunk, then one usage chunk (Gemini's last totals) and `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    sse: SseData,
    id: String,
    model: String,
    created: u64,
    started: bool,
    calls: usize,
    tokens: Tokens,
    done: bool,
}

impl StreamTranslator {
    /// A translator for a stream started at `created`, reporting `model` until the
    /// provider names its `modelVersion`.
    pub fn new(created: u64, model: &str) -> Self {
        Self {
            sse: SseData::new(MAX_BODY),
            id: String::new(),
            model: model.to_string(),
            created,
            started: false,
            calls: 0,
            tokens: Tokens::default(),
            done: false,
        }
    }

    /// Whether the stream reached its finish (what follows is not forwarded).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds the next piece of the upstream body; translated events go to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.feed(bytes, |data| self.event(data, out));
        self.sse = sse;
    }

    /// End of the body: an event still unterminated is translated.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.finish(|data| self.event(data, out));
        self.sse = sse;
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        push_event(&c, out);
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Ok(resp) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if resp.get("error").is_some() {
            push_event(&openai_error(Some(&resp), 500), out);
            self.done = true;
            return;
        }
        if !self.started {
            self.id = format!("chatcmpl-{}", str_or(&resp, "responseId", "gemini"));
            if let Some(m) = resp.get("modelVersion").and_then(Value::as_str) {
                self.model = m.to_string();
            }
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
        if let Some(u) = resp.get("usageMetadata") {
            self.tokens.update(u);
        }
        let turn = turn_of(&resp, self.calls);
        if !turn.text.is_empty() {
            self.chunk(json!({ "content": turn.text }), None, out);
        }
        if !turn.calls.is_empty() {
            self.calls += turn.calls.len();
            self.chunk(json!({ "tool_calls": turn.calls }), None, out);
        }
        if let Some(f) = finish_with_calls(turn.finish, self.calls > 0) {
            self.chunk(json!({}), Some(f), out);
            let c = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.tokens.openai(),
            });
            push_event(&c, out);
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.done = true;
        }
    }
}

fn push_event(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests;
