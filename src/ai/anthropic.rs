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
    #[error("`{0}` is not supported for this model (its upstream speaks the Anthropic API)")]
    Unsupported(String),
    /// A field has a value that cannot be translated.
    #[error("`{0}`: {1}")]
    Invalid(String, &'static str),
}

/// Top-level request fields accepted when null or at their no-op value, refused otherwise.
fn inert(key: &str, v: &Value) -> bool {
    match key {
        "n" => v.as_u64() == Some(1),
        "logprobs" | "parallel_tool_calls" => v.as_bool() == Some(false),
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

/// A user or assistant message's content in Anthropic's shape.
fn content_of(content: &Value, path: &str) -> Result<Value, TranslateError> {
    match content {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let t = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (t, p.get("text").and_then(Value::as_str)) {
                    ("text", Some(s)) => out.push(json!({"type": "text", "text": s})),
                    _ => return Err(TranslateError::Unsupported(format!("{path}[{j}].type={t}"))),
                }
            }
            Ok(Value::Array(out))
        }
        _ => Err(TranslateError::Invalid(
            path.to_string(),
            "must be a string or an array of text parts",
        )),
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
                for (i, m) in list.iter().enumerate() {
                    let path = format!("messages[{i}]");
                    let Some(obj) = m.as_object() else {
                        return Err(TranslateError::Invalid(path, "must be an object"));
                    };
                    if let Some(k) = obj
                        .iter()
                        .find(|(k, v)| !matches!(k.as_str(), "role" | "content") && !v.is_null())
                        .map(|(k, _)| k)
                    {
                        return Err(TranslateError::Unsupported(format!("{path}.{k}")));
                    }
                    let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
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
                        "user" | "assistant" => messages
                            .push(json!({"role": role, "content": content_of(content, &cpath)?})),
                        _ => {
                            return Err(TranslateError::Unsupported(format!("{path}.role={role}")))
                        }
                    }
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
    for block in msg
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[][..], |v| v)
    {
        if block.get("type").and_then(Value::as_str) == Some("text") {
            text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
        }
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
            "message": {"role": "assistant", "content": text},
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
    /// The incomplete line.
    line: Vec<u8>,
    /// The `data:` lines of the current event, joined.
    data: Vec<u8>,
    /// The previous byte was `\r` (a `\n` right after it ends nothing more).
    last_cr: bool,
    id: String,
    model: String,
    created: u64,
    tokens: Tokens,
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
        for &b in bytes {
            if b == b'\n' && self.last_cr {
                self.last_cr = false;
                continue;
            }
            self.last_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                self.end_line(out);
            } else if self.line.len() < MAX_BODY {
                self.line.push(b);
            }
        }
    }

    /// End of the body: an event still unterminated is dispatched.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(rest) = self.line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(rest);
        }
        self.line.clear();
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

    fn dispatch(&mut self, out: &mut Vec<u8>) {
        if self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        if self.done {
            return;
        }
        let Ok(ev) = serde_json::from_slice::<Value>(&data) else {
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
                if let Some(t) = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.chunk(json!({ "content": t }), None, out);
                }
            }
            "content_block_delta" => {
                let d = ev.get("delta").unwrap_or(&Value::Null);
                if d.get("type").and_then(Value::as_str) == Some("text_delta") {
                    let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                    self.chunk(json!({ "content": t }), None, out);
                }
            }
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
            // ping, content_block_stop, and event types added later carry nothing to say.
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
