//! Anthropic clients in: a `POST /v1/messages` request (the Anthropic Messages API) sent to
//! an OpenAI-compatible upstream. The request becomes an OpenAI chat completions body, and
//! the answer, an error, or the `chat.completion.chunk` stream becomes the Anthropic message,
//! error or event stream (`message_start`, `content_block_start`/`delta`/`stop`,
//! `message_delta` with usage, `message_stop`), each event written as its chunk arrives.
//! Pure functions on bytes, sans-IO; a field with no translation is refused by name.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::{TranslateError, MAX_BODY};
use crate::ai::sse::SseData;

/// Whether a request path is the Anthropic Messages endpoint (`.../v1/messages`): such a
/// request speaks Anthropic's API, and the gateway answers it (errors included) in kind.
pub fn is_messages_path(path: &str) -> bool {
    path.ends_with("/v1/messages")
}

/// Anthropic's error `type` for an HTTP status (its API reference's table).
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 411 | 415 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Writes Anthropic's error body for `status` and `message` into `out`.
pub fn error_body(status: u16, message: &str, out: &mut Vec<u8>) {
    let v = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    // Serializing a json! value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// An OpenAI error body (`{"error":{"message":..}}`) of `status` as Anthropic's.
pub fn error_from_openai(body: &[u8], status: u16) -> Vec<u8> {
    let v = serde_json::from_slice::<Value>(body).ok();
    let message = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .map_or_else(|| format!("the upstream answered {status}"), str::to_string);
    let mut out = Vec::with_capacity(message.len() + 64);
    error_body(status, &message, &mut out);
    out
}

/// Text of Anthropic `system` (a string or an array of text blocks).
fn system_text(v: &Value) -> Result<String, TranslateError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (j, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => {
                        if !text.is_empty() {
                            text.push_str("\n\n");
                        }
                        text.push_str(t);
                    }
                    (t, _) => {
                        return Err(TranslateError::Unsupported(format!(
                            "system[{j}].type={}",
                            t.unwrap_or("")
                        )))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(TranslateError::Invalid(
            "system".into(),
            "must be a string or an array of text blocks",
        )),
    }
}

/// Fields of a content block other than those it is translated from. `cache_control` is
/// a caching hint: OpenAI-compatible providers cache prompt prefixes on their own.
fn check_block(b: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), TranslateError> {
    match b
        .iter()
        .find(|(k, v)| {
            !v.is_null()
                && !known.contains(&k.as_str())
                && !matches!(k.as_str(), "type" | "cache_control")
        })
        .map(|(k, _)| k)
    {
        Some(k) => Err(TranslateError::Unsupported(format!("{path}.{k}"))),
        None => Ok(()),
    }
}

/// An Anthropic image block as an OpenAI `image_url` part.
fn image_part(b: &Map<String, Value>, path: &str) -> Result<Value, TranslateError> {
    check_block(b, &["source"], path)?;
    let src = b.get("source").unwrap_or(&Value::Null);
    let s = |k: &str| src.get(k).and_then(Value::as_str);
    let url = match (s("type"), s("media_type"), s("data"), s("url")) {
        (Some("base64"), Some(media), Some(data), _) => format!("data:{media};base64,{data}"),
        (Some("url"), _, _, Some(url)) => url.to_string(),
        _ => {
            return Err(TranslateError::Unsupported(format!(
                "{path}.source.type={}",
                s("type").unwrap_or("")
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` block as an OpenAI `tool` message.
fn tool_message(b: &Map<String, Value>, path: &str) -> Result<Value, TranslateError> {
    check_block(b, &["tool_use_id", "content", "is_error"], path)?;
    let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
        return Err(TranslateError::Invalid(
            format!("{path}.tool_use_id"),
            "is required",
        ));
    };
    let mut text = match b.get("content").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut text = String::new();
            for (k, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (t, _) => {
                        return Err(TranslateError::Unsupported(format!(
                            "{path}.content[{k}].type={}",
                            t.unwrap_or("")
                        )))
                    }
                }
            }
            text
        }
        _ => {
            return Err(TranslateError::Invalid(
                format!("{path}.content"),
                "must be a string or an array of text blocks",
            ))
        }
    };
    // OpenAI tool messages have no error flag: the model is told in the text.
    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        text.insert_str(0, "Error: ");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// One Anthropic message as OpenAI messages, appended to `out` (a user turn with tool
/// results becomes `tool` messages first, as OpenAI wants them right after the call).
fn message(m: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let Some(obj) = m.as_object() else {
        return Err(TranslateError::Invalid(
            path.to_string(),
            "must be an object",
        ));
    };
    if let Some(k) = obj
        .iter()
        .find(|(k, v)| !matches!(k.as_str(), "role" | "content") && !v.is_null())
        .map(|(k, _)| k)
    {
        return Err(TranslateError::Unsupported(format!("{path}.{k}")));
    }
    let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
    if !matches!(role, "user" | "assistant") {
        return Err(TranslateError::Unsupported(format!("{path}.role={role}")));
    }
    let content = obj.get("content").unwrap_or(&Value::Null);
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(TranslateError::Invalid(
                format!("{path}.content"),
                "must be a string or an array of content blocks",
            ))
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let Some(b) = b.as_object() else {
            return Err(TranslateError::Invalid(bpath, "must be an object"));
        };
        let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
        match (ty, role) {
            ("text", _) => {
                check_block(b, &["text", "citations"], &bpath)?;
                let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": t}));
            }
            ("image", "user") => parts.push(image_part(b, &bpath)?),
            ("tool_result", "user") => out.push(tool_message(b, &bpath)?),
            ("tool_use", "assistant") => {
                check_block(b, &["id", "name", "input"], &bpath)?;
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(TranslateError::Invalid(bpath, "needs an id and a name"));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            _ => return Err(TranslateError::Unsupported(format!("{bpath}.type={ty}"))),
        }
    }
    if role == "assistant" {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let mut msg = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            if text.is_empty() {
                msg["content"] = Value::Null;
            }
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// Anthropic `tools` as OpenAI function tools.
fn tools_of(v: &Value) -> Result<Value, TranslateError> {
    let Some(list) = v.as_array() else {
        return Err(TranslateError::Invalid("tools".into(), "must be an array"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let Some(t) = t.as_object() else {
            return Err(TranslateError::Invalid(path, "must be an object"));
        };
        // Server tools (web search, code execution, ...) run at Anthropic.
        let ty = t.get("type").and_then(Value::as_str).unwrap_or("custom");
        if ty != "custom" {
            return Err(TranslateError::Unsupported(format!("{path}.type={ty}")));
        }
        check_block(t, &["name", "description", "input_schema", "strict"], &path)?;
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(TranslateError::Invalid(
                format!("{path}.name"),
                "is required",
            ));
        };
        let mut f = json!({"name": name});
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            f["description"] = d.clone();
        }
        if let Some(s) = t.get("input_schema").filter(|s| !s.is_null()) {
            f["parameters"] = s.clone();
        }
        if let Some(strict) = t.get("strict").and_then(Value::as_bool) {
            f["strict"] = Value::Bool(strict);
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

/// An Anthropic Messages body as an OpenAI chat completions body for `model` (the
/// provider's name for it). A stream asks for the usage chunk: Anthropic streams always
/// report usage.
pub fn request_to_openai(body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(TranslateError::NotJson);
    };
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    let mut messages = Vec::new();
    if let Some(s) = req.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": system_text(s)?}));
    }
    for (key, v) in &req {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "system" => {}
            "messages" => {
                let Some(list) = v.as_array() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be an array"));
                };
                for (i, m) in list.iter().enumerate() {
                    message(m, &format!("messages[{i}]"), &mut messages)?;
                }
            }
            "max_tokens" => {
                let Some(n) = v.as_u64().filter(|&n| n > 0) else {
                    return Err(TranslateError::Invalid(
                        key.clone(),
                        "must be a positive integer",
                    ));
                };
                out.insert("max_tokens".into(), Value::from(n));
            }
            "temperature" | "top_p" => {
                if !v.is_number() {
                    return Err(TranslateError::Invalid(key.clone(), "must be a number"));
                }
                out.insert(key.clone(), v.clone());
            }
            "stop_sequences" => {
                if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                    return Err(TranslateError::Invalid(
                        key.clone(),
                        "must be an array of strings",
                    ));
                }
                out.insert("stop".into(), v.clone());
            }
            "stream" => {
                let Some(b) = v.as_bool() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be a boolean"));
                };
                out.insert("stream".into(), Value::Bool(b));
                if b {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "metadata" => match v.as_object() {
                Some(m) if m.keys().all(|k| k == "user_id") => {
                    if let Some(u) = m.get("user_id").filter(|u| !u.is_null()) {
                        out.insert("user".into(), u.clone());
                    }
                }
                _ => return Err(TranslateError::Unsupported("metadata".into())),
            },
            "tools" => {
                out.insert("tools".into(), tools_of(v)?);
            }
            "tool_choice" => {
                let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
                let choice = match ty {
                    "auto" => json!("auto"),
                    "any" => json!("required"),
                    "none" => json!("none"),
                    "tool" => match v.get("name").and_then(Value::as_str) {
                        Some(n) => json!({"type": "function", "function": {"name": n}}),
                        None => {
                            return Err(TranslateError::Invalid(
                                "tool_choice.name".into(),
                                "is required",
                            ))
                        }
                    },
                    _ => {
                        return Err(TranslateError::Unsupported(format!(
                            "tool_choice.type={ty}"
                        )))
                    }
                };
                out.insert("tool_choice".into(), choice);
                if v.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
            // Structured outputs (GA `output_config.format`, or the beta's `output_format`).
            "output_config" | "output_format" => {
                let (format, path) = if key == "output_config" {
                    if let Some(k) = v
                        .as_object()
                        .and_then(|o| o.keys().find(|k| k.as_str() != "format"))
                    {
                        return Err(TranslateError::Unsupported(format!("output_config.{k}")));
                    }
                    (
                        v.get("format").unwrap_or(&Value::Null),
                        "output_config.format",
                    )
                } else {
                    (v, "output_format")
                };
                match (
                    format.get("type").and_then(Value::as_str),
                    format.get("schema"),
                ) {
                    (Some("json_schema"), Some(schema)) if schema.is_object() => {
                        out.insert(
                            "response_format".into(),
                            json!({"type": "json_schema", "json_schema": {"name": "output", "strict": true, "schema": schema}}),
                        );
                    }
                    _ if format.is_null() => {}
                    _ => {
                        return Err(TranslateError::Invalid(
                            path.into(),
                            "must be {\"type\":\"json_schema\",\"schema\":{...}}",
                        ))
                    }
                }
            }
            // Extended thinking switched off is the OpenAI default.
            "thinking" if v.get("type").and_then(Value::as_str) == Some("disabled") => {}
            k => return Err(TranslateError::Unsupported(k.to_string())),
        }
    }
    if messages.iter().all(|m| m["role"] == "system") {
        return Err(TranslateError::Invalid(
            "messages".into(),
            "must hold at least one message",
        ));
    }
    out.insert("messages".into(), Value::Array(messages));
    serde_json::to_vec(&Value::Object(out)).map_err(|_| TranslateError::NotJson)
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage counts, as Anthropic reports them.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    prompt: u64,
    completion: u64,
    cached: u64,
}

impl Counts {
    fn from(u: &Value) -> Counts {
        let usage = crate::ai::usage::usage_from_value(u).unwrap_or_default();
        Counts {
            prompt: usage.prompt,
            completion: usage.completion,
            cached: usage.cached_prompt,
        }
    }

    /// Anthropic's `input_tokens` leaves out cache reads; OpenAI's `prompt_tokens` has them.
    fn anthropic(&self) -> Value {
        json!({
            "input_tokens": self.prompt.saturating_sub(self.cached),
            "output_tokens": self.completion,
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": 0,
        })
    }
}

/// A tool call's `arguments` string as a `tool_use` input (an object; `{}` for none).
fn input_of(arguments: Option<&str>) -> Value {
    match arguments.map(str::trim) {
        None | Some("") => json!({}),
        Some(a) => match serde_json::from_str::<Value>(a) {
            Ok(v @ Value::Object(_)) => v,
            // Not an object: handed over whole rather than lost.
            _ => json!({ "arguments": a }),
        },
    }
}

/// An OpenAI `chat.completion` as an Anthropic message.
pub fn response_from_openai(body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| TranslateError::NotJson)?;
    let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return Err(TranslateError::Invalid(
            "choices".into(),
            "the answer is not a chat completion",
        ));
    };
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(&[][..], |v| v)
    {
        let f = c.get("function").unwrap_or(&Value::Null);
        content.push(json!({
            "type": "tool_use",
            "id": c.get("id").cloned().unwrap_or(Value::Null),
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "input": input_of(f.get("arguments").and_then(Value::as_str)),
        }));
    }
    let counts = v.get("usage").map(Counts::from).unwrap_or_default();
    let out = json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": choice.get("finish_reason").and_then(Value::as_str).map(stop_reason),
        "stop_sequence": null,
        "usage": counts.anthropic(),
    });
    serde_json::to_vec(&out).map_err(|_| TranslateError::NotJson)
}

/// The content block open in the Anthropic stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text,
    /// A `tool_use` block for the OpenAI tool call of this index.
    Tool(u64),
}

/// The most OpenAI tool calls of one stream whose late argument fragments are still filed
/// under their block (far beyond any real answer's parallel calls). Past it a new call's
/// fragments reach its block only while the block is open; later ones are dropped, as
/// fragments of an unknown call are.
pub const MAX_STREAM_TOOLS: usize = 4096;

/// Turns an OpenAI `chat.completion.chunk` stream into Anthropic Messages events as each
/// chunk completes (only an incomplete event is held). `message_delta` (with the usage,
/// which OpenAI sends after the finish reason) and `message_stop` go out at `[DONE]`.
#[derive(Debug)]
pub struct ToAnthropicStream {
    sse: SseData,
    started: bool,
    done: bool,
    /// The open block and its Anthropic index.
    open: Block,
    index: u64,
    /// Anthropic block index of each OpenAI tool call index seen (the latest call under
    /// an index wins), at most [`MAX_STREAM_TOOLS`] of them: a lookup per argument
    /// fragment stays O(1) and the map bounded however many calls an upstream starts.
    tools: HashMap<u64, u64>,
    stop: Option<&'static str>,
    counts: Counts,
}

impl Default for ToAnthropicStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ToAnthropicStream {
    /// A translator at the start of a stream.
    pub fn new() -> Self {
        ToAnthropicStream {
            sse: SseData::default(),
            started: false,
            done: false,
            open: Block::None,
            index: 0,
            tools: HashMap::new(),
            stop: None,
            counts: Counts::default(),
        }
    }

    /// Whether the stream reached its end (`[DONE]` or an error).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds a piece of the body; what it completes is appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.feed(bytes, |data| self.dispatch(data, out));
        self.sse = sse;
    }

    /// End of the body: an unterminated event is read, and a stream that ended cleanly
    /// without `[DONE]` (some providers omit it) is closed.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.finish(|data| self.dispatch(data, out));
        if self.started && !self.done {
            self.end(out);
        }
    }

    fn event(name: &str, v: &Value, out: &mut Vec<u8>) {
        if out.len() > MAX_BODY {
            return;
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
        out.extend_from_slice(b"\n\n");
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open != Block::None {
            Self::event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.index}),
                out,
            );
            self.index += 1;
            self.open = Block::None;
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.close_block(out);
        let usage = self.counts.anthropic();
        Self::event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage}),
            out,
        );
        Self::event("message_stop", &json!({"type": "message_stop"}), out);
        self.done = true;
    }

    fn dispatch(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data == b"[DONE]" {
            if self.started {
                self.end(out);
            }
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = chunk.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream's stream failed");
            let v = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            Self::event("error", &v, out);
            self.done = true;
            return;
        }
        if !self.started {
            self.started = true;
            // OpenAI reports usage only in its last chunk, so the counts are not known yet.
            // No estimate: 0 here, and `message_delta` carries every count (cumulative, as
            // Anthropic's own are), which the SDKs take over for the final message.
            Self::event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": chunk.get("id").cloned().unwrap_or(Value::Null),
                    "type": "message", "role": "assistant", "content": [],
                    "model": chunk.get("model").cloned().unwrap_or(Value::Null),
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
                out,
            );
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.counts = Counts::from(u);
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open != Block::Text {
                self.close_block(out);
                Self::event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": self.index,
                        "content_block": {"type": "text", "text": ""}}),
                    out,
                );
                self.open = Block::Text;
            }
            Self::event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.index,
                    "delta": {"type": "text_delta", "text": t}}),
                out,
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .map_or(&[][..], |v| v)
        {
            let ti = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let f = call.get("function").unwrap_or(&Value::Null);
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                self.close_block(out);
                Self::event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": self.index,
                        "content_block": {"type": "tool_use", "id": id,
                            "name": f.get("name").cloned().unwrap_or(Value::Null), "input": {}}}),
                    out,
                );
                self.open = Block::Tool(ti);
                if self.tools.len() < MAX_STREAM_TOOLS || self.tools.contains_key(&ti) {
                    self.tools.insert(ti, self.index);
                }
            }
            let Some(args) = f
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            else {
                continue;
            };
            // Fragments of a call whose block is closed keep its index (an accumulating
            // client files them under it).
            let index = match self.open {
                Block::Tool(open) if open == ti => self.index,
                _ => match self.tools.get(&ti) {
                    Some(&b) => b,
                    None => continue,
                },
            };
            Self::event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                out,
            );
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(f));
        }
    }
}

#[cfg(test)]
mod tests;
