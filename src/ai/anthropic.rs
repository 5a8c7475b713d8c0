//! Translation between the OpenAI chat completions API (what clients speak) and the
//! Anthropic Messages API (what an `api = "anthropic"` upstream speaks). Pure functions on
//! bytes, sans-IO: the request body, the whole JSON answer, an error body, and a stream
//! translator fed the response body in whatever pieces the socket delivers. A request field
//! that has no translation is refused by name rather than dropped, so a client never gets an
//! answer to a different question than the one it asked.

use serde_json::{json, Map, Value};

/// The `anthropic-version` header every request carries (the Messages API's stable version).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The largest non-streaming answer (or error body) kept whole for translation.
pub const MAX_BODY: usize = 16 << 20;

/// Why a request cannot go to an Anthropic upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The body is not a JSON object.
    #[error("request body is not a JSON object")]
    NotJson,
    /// A field (named by its path) has no Anthropic equivalent in this gateway.
    #[error("`{0}` is not supported for this model (its upstream speaks another API)")]
    Unsupported(String),
    /// A field has a value that cannot be translated.
    #[error("`{0}`: {1}")]
    Invalid(String, &'static str),
}

/// Top-level request fields accepted when null or at their no-op value, refused otherwise.
fn inert(key: &str, v: &Value) -> bool {
    match key {
        "n" => v.as_u64() == Some(1),
        "logprobs" => v.as_bool() == Some(false),
        "presence_penalty" | "frequency_penalty" => v.as_f64() == Some(0.0),
        _ => false,
    }
}

/// Text of a system message (a string or an array of `text` parts).
fn text_of(content: &Value, path: &str) -> Result<String, TranslateError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (t, p.get("text").and_then(Value::as_str)) {
                    ("text", Some(s)) => text.push_str(s),
                    _ => return Err(TranslateError::Unsupported(format!("{path}[{j}].type={t}"))),
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

/// An OpenAI `image_url` part as an Anthropic `image` block: a `data:` URL becomes a
/// base64 source, an http(s) URL a `url` source.
fn image_block(part: &Value, path: &str) -> Result<Value, TranslateError> {
    let img = part.get("image_url").unwrap_or(&Value::Null);
    let (url, detail) = match img {
        Value::String(u) => (u.as_str(), None),
        Value::Object(o) => {
            if let Some(k) = o
                .iter()
                .find(|(k, v)| !matches!(k.as_str(), "url" | "detail") && !v.is_null())
                .map(|(k, _)| k)
            {
                return Err(TranslateError::Unsupported(format!("{path}.image_url.{k}")));
            }
            let url = o.get("url").and_then(Value::as_str).unwrap_or("");
            (url, o.get("detail").and_then(Value::as_str))
        }
        _ => ("", None),
    };
    // `detail` chooses OpenAI's resolution; Anthropic has no such knob, so only the
    // default is accepted.
    if detail.is_some_and(|d| d != "auto") {
        return Err(TranslateError::Unsupported(format!(
            "{path}.image_url.detail"
        )));
    }
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((media, data)) = rest.split_once(";base64,") else {
            return Err(TranslateError::Invalid(
                format!("{path}.image_url.url"),
                "a data: URL must be base64 (data:<media type>;base64,...)",
            ));
        };
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        );
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(TranslateError::Invalid(
        format!("{path}.image_url.url"),
        "must be a data: or http(s) URL",
    ))
}

/// A user or assistant message's content as Anthropic content blocks, appended to `out`
/// (images only in user turns).
fn blocks_of(
    content: &Value,
    path: &str,
    images: bool,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    match content {
        Value::String(s) => out.push(json!({"type": "text", "text": s})),
        Value::Array(parts) => {
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (t, p.get("text").and_then(Value::as_str)) {
                    ("text", Some(s)) => out.push(json!({"type": "text", "text": s})),
                    ("image_url", _) if images => {
                        out.push(image_block(p, &format!("{path}[{j}]"))?)
                    }
                    _ => return Err(TranslateError::Unsupported(format!("{path}[{j}].type={t}"))),
                }
            }
        }
        Value::Null => {}
        _ => {
            return Err(TranslateError::Invalid(
                path.to_string(),
                "must be a string or an array of content parts",
            ))
        }
    }
    Ok(())
}

/// An assistant message's `tool_calls` as `tool_use` blocks appended to `out`.
fn tool_uses(calls: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let Some(calls) = calls.as_array() else {
        return Err(TranslateError::Invalid(
            path.to_string(),
            "must be an array",
        ));
    };
    for (j, c) in calls.iter().enumerate() {
        let cpath = format!("{path}[{j}]");
        let t = c.get("type").and_then(Value::as_str).unwrap_or("function");
        if t != "function" {
            return Err(TranslateError::Unsupported(format!("{cpath}.type={t}")));
        }
        let f = c.get("function").unwrap_or(&Value::Null);
        let (Some(id), Some(name)) = (
            c.get("id").and_then(Value::as_str),
            f.get("name").and_then(Value::as_str),
        ) else {
            return Err(TranslateError::Invalid(
                cpath,
                "needs an id and a function name",
            ));
        };
        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
        let input = if args.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(args) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(TranslateError::Invalid(
                        format!("{cpath}.function.arguments"),
                        "must be a JSON object in a string",
                    ))
                }
            }
        };
        out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(())
}

/// A `role: "tool"` message as a `tool_result` block.
fn tool_result(obj: &Map<String, Value>, path: &str) -> Result<Value, TranslateError> {
    let Some(id) = obj.get("tool_call_id").and_then(Value::as_str) else {
        return Err(TranslateError::Invalid(
            format!("{path}.tool_call_id"),
            "is required on a tool message",
        ));
    };
    let cpath = format!("{path}.content");
    let content = match obj.get("content").unwrap_or(&Value::Null) {
        Value::String(s) => Value::String(s.clone()),
        c => {
            let mut blocks = Vec::new();
            blocks_of(c, &cpath, false, &mut blocks)?;
            Value::Array(blocks)
        }
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// OpenAI `tools` as Anthropic tools.
fn tools_of(v: &Value) -> Result<Value, TranslateError> {
    let Some(list) = v.as_array() else {
        return Err(TranslateError::Invalid("tools".into(), "must be an array"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let ty = t.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "function" {
            return Err(TranslateError::Unsupported(format!("{path}.type={ty}")));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(TranslateError::Invalid(
                format!("{path}.function"),
                "must be an object",
            ));
        };
        let mut tool = Map::new();
        for (k, v) in f {
            match (k.as_str(), v) {
                (_, Value::Null) => {}
                ("name", Value::String(_)) => {
                    tool.insert("name".into(), v.clone());
                }
                ("description", Value::String(_)) => {
                    tool.insert("description".into(), v.clone());
                }
                ("parameters", Value::Object(_)) => {
                    tool.insert("input_schema".into(), v.clone());
                }
                ("strict", Value::Bool(false)) => {}
                // Strict tool use (schema-valid inputs) is generally available.
                ("strict", Value::Bool(true)) => {
                    tool.insert("strict".into(), Value::Bool(true));
                }
                _ => return Err(TranslateError::Unsupported(format!("{path}.function.{k}"))),
            }
        }
        if !tool.contains_key("name") {
            return Err(TranslateError::Invalid(
                format!("{path}.function.name"),
                "is required",
            ));
        }
        // Anthropic requires a schema; OpenAI's default for none is "no arguments".
        tool.entry("input_schema")
            .or_insert_with(|| json!({"type": "object", "properties": {}}));
        out.push(Value::Object(tool));
    }
    Ok(Value::Array(out))
}

/// OpenAI `tool_choice` as Anthropic's.
fn tool_choice_of(v: &Value) -> Result<Value, TranslateError> {
    let invalid = || {
        TranslateError::Invalid(
            "tool_choice".into(),
            "must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}",
        )
    };
    Ok(match v {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => return Err(invalid()),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            json!({"type": "tool", "name": name})
        }
        _ => return Err(invalid()),
    })
}

/// OpenAI `response_format` as Anthropic's `output_config.format` (structured outputs, GA:
/// no beta header): a JSON schema maps, plain text is the default (None), and schema-less
/// JSON mode (`json_object`) has no equivalent.
fn output_format(v: &Value) -> Result<Option<Value>, TranslateError> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            // `name`, `description` and `strict` label or tighten OpenAI's decoding;
            // Anthropic's is always constrained to the schema.
            let Some(schema) = v
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| s.is_object())
            else {
                return Err(TranslateError::Invalid(
                    "response_format.json_schema.schema".into(),
                    "must be a JSON schema object",
                ));
            };
            Ok(Some(json!({"type": "json_schema", "schema": schema})))
        }
        t => Err(TranslateError::Unsupported(format!(
            "response_format.type={}",
            t.unwrap_or("")
        ))),
    }
}

/// An OpenAI chat completions body as an Anthropic Messages body for `model`, with
/// `default_max_tokens` when the client set no limit (Anthropic requires one).
pub fn request_to_anthropic(
    body: &[u8],
    model: &str,
    default_max_tokens: u32,
) -> Result<Vec<u8>, TranslateError> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(TranslateError::NotJson);
    };
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    let mut max_tokens: Option<u64> = None;
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut tool_choice: Option<Value> = None;
    let mut parallel = true;
    for (key, v) in &req {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "stream_options" => {}
            "messages" => {
                let Some(list) = v.as_array() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be an array"));
                };
                // Whether the last Anthropic message is a user turn made of tool results,
                // which the next tool result joins.
                let mut in_results = false;
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
                        return Err(TranslateError::Unsupported(format!("{path}.{k}")));
                    }
                    let content = obj.get("content").unwrap_or(&Value::Null);
                    let cpath = format!("{path}.content");
                    match role {
                        "system" | "developer" if messages.is_empty() => {
                            system.push(text_of(content, &cpath)?);
                        }
                        "system" | "developer" => {
                            return Err(TranslateError::Unsupported(format!(
                                "{path}.role={role} after the conversation started"
                            )))
                        }
                        "tool" => {
                            let block = tool_result(obj, &path)?;
                            match messages.last_mut().and_then(|m| m.get_mut("content")) {
                                Some(Value::Array(blocks)) if in_results => blocks.push(block),
                                _ => messages.push(json!({"role": "user", "content": [block]})),
                            }
                            in_results = true;
                            continue;
                        }
                        "user" if content.is_string() => {
                            messages.push(json!({"role": "user", "content": content}));
                        }
                        "user" => {
                            let mut blocks = Vec::new();
                            blocks_of(content, &cpath, true, &mut blocks)?;
                            messages.push(json!({"role": "user", "content": blocks}));
                        }
                        "assistant" => match obj.get("tool_calls").filter(|c| !c.is_null()) {
                            None if content.is_string() => {
                                messages.push(json!({"role": "assistant", "content": content}))
                            }
                            calls => {
                                let mut blocks = Vec::new();
                                blocks_of(content, &cpath, false, &mut blocks)?;
                                // An empty text block is refused by Anthropic.
                                blocks
                                    .retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
                                if let Some(calls) = calls {
                                    tool_uses(calls, &format!("{path}.tool_calls"), &mut blocks)?;
                                }
                                messages.push(json!({"role": "assistant", "content": blocks}));
                            }
                        },
                        _ => {
                            return Err(TranslateError::Unsupported(format!("{path}.role={role}")))
                        }
                    }
                    in_results = false;
                }
            }
            "max_tokens" | "max_completion_tokens" => {
                let Some(n) = v.as_u64().filter(|&n| n > 0) else {
                    return Err(TranslateError::Invalid(
                        key.clone(),
                        "must be a positive integer",
                    ));
                };
                max_tokens = Some(max_tokens.map_or(n, |m| m.min(n)));
            }
            "temperature" | "top_p" => {
                if !v.is_number() {
                    return Err(TranslateError::Invalid(key.clone(), "must be a number"));
                }
                out.insert(key.clone(), v.clone());
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
                out.insert("stop_sequences".into(), Value::Array(seqs));
            }
            "stream" => {
                let Some(b) = v.as_bool() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be a boolean"));
                };
                out.insert("stream".into(), Value::Bool(b));
            }
            "user" => {
                out.insert("metadata".into(), json!({ "user_id": v }));
            }
            "tools" => {
                out.insert("tools".into(), tools_of(v)?);
            }
            "tool_choice" => tool_choice = Some(tool_choice_of(v)?),
            "parallel_tool_calls" => {
                let Some(b) = v.as_bool() else {
                    return Err(TranslateError::Invalid(key.clone(), "must be a boolean"));
                };
                parallel = b;
            }
            "response_format" => {
                if let Some(format) = output_format(v)? {
                    out.insert("output_config".into(), json!({ "format": format }));
                }
            }
            k if inert(k, v) => {}
            k => return Err(TranslateError::Unsupported(k.to_string())),
        }
    }
    if messages.is_empty() {
        return Err(TranslateError::Invalid(
            "messages".into(),
            "must hold at least one user or assistant message",
        ));
    }
    // Without tools there is nothing to call in parallel (and no tool_choice to carry it).
    if !parallel && out.contains_key("tools") {
        let mut choice = tool_choice
            .take()
            .unwrap_or_else(|| json!({"type": "auto"}));
        // `none` takes no option: no tool is called at all.
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        tool_choice = Some(choice);
    }
    if let Some(c) = tool_choice {
        out.insert("tool_choice".into(), c);
    }
    out.insert(
        "max_tokens".into(),
        Value::from(max_tokens.unwrap_or(u64::from(default_max_tokens))),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    serde_json::to_vec(&Value::Object(out)).map_err(|_| TranslateError::NotJson)
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Token counts of an Anthropic `usage` object: (input incl. cache, output, cache read).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl Tokens {
    /// Updates the counts `u` reports (message_delta reports cumulative ones).
    fn update(&mut self, u: &Value) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(v) = n("input_tokens") {
            self.input = v;
        }
        if let Some(v) = n("output_tokens") {
            self.output = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.cache_read = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.cache_creation = v;
        }
    }

    /// OpenAI's `usage` object: Anthropic's `input_tokens` excludes cached tokens, OpenAI's
    /// `prompt_tokens` includes them.
    fn openai(&self) -> Value {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }
}

/// An Anthropic message (non-streaming answer) as an OpenAI `chat.completion`; `created`
/// is the Unix time to stamp it with.
pub fn response_to_openai(body: &[u8], created: u64) -> Result<Vec<u8>, TranslateError> {
    let msg: Value = serde_json::from_slice(body).map_err(|_| TranslateError::NotJson)?;
    if msg.get("type").and_then(Value::as_str) != Some("message") {
        return Err(TranslateError::Invalid(
            "type".into(),
            "the answer is not an Anthropic message",
        ));
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[][..], |v| v)
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(calls);
    }
    let mut tokens = Tokens::default();
    if let Some(u) = msg.get("usage") {
        tokens.update(u);
    }
    let finish = msg
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let out = json!({
        "id": msg.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish,
        }],
        "usage": tokens.openai(),
    });
    serde_json::to_vec(&out).map_err(|_| TranslateError::NotJson)
}

/// The OpenAI error object for an Anthropic error value (`{"type":"error","error":{...}}`,
/// or its inner object).
fn openai_error(v: Option<&Value>, status: u16) -> Value {
    let inner = v.map(|v| v.get("error").unwrap_or(v));
    let kind = inner
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("upstream_error");
    let message = inner
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(
            || format!("the Anthropic upstream answered {status}"),
            str::to_string,
        );
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
}

/// An Anthropic error body as OpenAI's error shape (the status itself is mapped by the
/// caller: 529 `overloaded_error` is 503).
pub fn error_to_openai(body: &[u8], status: u16) -> Vec<u8> {
    let v = serde_json::from_slice::<Value>(body).ok();
    serde_json::to_vec(&openai_error(v.as_ref(), status)).unwrap_or_default()
}

/// The status a client (and the retry policy) sees for an Anthropic status: 529
/// ("overloaded") means what 503 means.
pub fn map_status(status: u16) -> u16 {
    if status == 529 {
        503
    } else {
        status
    }
}

/// Turns an Anthropic Messages event stream into OpenAI `chat.completion.chunk` events, as
/// each event completes: only an incomplete event is held. Always emits the usage chunk
/// (`choices: []`) before `[DONE]`; the gateway's SSE scanner removes it when the client
/// did not ask for it.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    /// The event being read.
    sse: super::sse::SseData,
    id: String,
    model: String,
    created: u64,
    tokens: Tokens,
    /// Tool calls started so far (the next one's OpenAI `index`).
    tools: u32,
    /// The OpenAI index of the tool call whose block is open (Anthropic streams one
    /// content block at a time).
    tool: Option<u32>,
    /// The stream ended (`message_stop` or `error`): later bytes are ignored.
    done: bool,
}

impl StreamTranslator {
    /// A translator stamping chunks with `created` (Unix seconds).
    pub fn new(created: u64) -> Self {
        Self {
            created,
            ..Self::default()
        }
    }

    /// Whether the stream reached its end (`message_stop` or an `error` event).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds a piece of the body; what it completes is appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.feed(bytes, |data| self.dispatch(data, out));
        self.sse = sse;
    }

    /// End of the body: an event still unterminated is dispatched.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut sse = std::mem::take(&mut self.sse);
        sse.finish(|data| self.dispatch(data, out));
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

    fn dispatch(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let m = ev.get("message").unwrap_or(&Value::Null);
                let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                self.id = s("id");
                self.model = s("model");
                if let Some(u) = m.get("usage") {
                    self.tokens.update(u);
                }
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            "content_block_start" => {
                let b = ev.get("content_block").unwrap_or(&Value::Null);
                self.tool = None;
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tools;
                        self.tools += 1;
                        self.tool = Some(index);
                        let call = json!({
                            "index": index,
                            "id": b.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                        });
                        self.chunk(json!({ "tool_calls": [call] }), None, out);
                    }
                    _ => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.chunk(json!({ "content": t }), None, out);
                        }
                    }
                }
            }
            "content_block_delta" => {
                let d = ev.get("delta").unwrap_or(&Value::Null);
                match (d.get("type").and_then(Value::as_str), self.tool) {
                    (Some("text_delta"), _) => {
                        let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                        self.chunk(json!({ "content": t }), None, out);
                    }
                    (Some("input_json_delta"), Some(index)) => {
                        let part = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        if !part.is_empty() {
                            let call = json!({"index": index, "function": {"arguments": part}});
                            self.chunk(json!({ "tool_calls": [call] }), None, out);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => self.tool = None,
            "message_delta" => {
                if let Some(u) = ev.get("usage") {
                    self.tokens.update(u);
                }
                if let Some(r) = ev
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.chunk(json!({}), Some(finish_reason(r)), out);
                }
            }
            "message_stop" => {
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
            "error" => {
                push_event(&openai_error(Some(&ev), 500), out);
                self.done = true;
            }
            // ping, and event types added later, carry nothing to say.
            _ => {}
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

pub mod inbound;
