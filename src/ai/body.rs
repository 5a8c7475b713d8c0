//! Reads what routing needs from an OpenAI request body (`model`, `stream`,
//! `stream_options.include_usage`) and rewrites exactly those values when it must (the
//! provider's model name; `include_usage` so streamed usage can be counted), leaving every
//! other byte as the client sent it. No re-serialization: the top-level object is scanned
//! once for the byte spans of its members' values.
//!
//! The body is first validated whole by serde_json (bounded recursion); the span scanner
//! is iterative and never indexes out of bounds, so hostile input costs one linear pass.

use std::ops::Range;

/// What a request body says about routing and streaming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The `model` member (escapes decoded); None when absent.
    pub model: Option<String>,
    /// `stream` is literally `true`.
    pub stream: bool,
    /// `stream_options.include_usage`, when given as a boolean.
    pub include_usage: Option<bool>,
    model_span: Option<Range<usize>>,
    stream_options_span: Option<Range<usize>>,
    /// Index of the top-level object's closing `}`.
    object_end: usize,
    /// Whether the top-level object has any member.
    has_members: bool,
}

/// Why a body cannot be routed by model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not valid JSON (serde_json's message).
    NotJson(String),
    /// Valid JSON, but not an object.
    NotObject,
    /// `model` is present but not a string.
    ModelNotString,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::NotJson(e) => write!(f, "{e}"),
            BodyError::NotObject => f.write_str("the body must be a JSON object"),
            BodyError::ModelNotString => f.write_str("`model` must be a string"),
        }
    }
}

impl std::error::Error for BodyError {}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `i` (its opening quote).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End (exclusive) of the JSON value starting at `i`.
fn skip_value(b: &[u8], mut i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(&c) = b.get(i) {
                match c {
                    b'"' => {
                        i = skip_string(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        _ => {
            while let Some(&c) = b.get(i) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                    break;
                }
                i += 1;
            }
            i
        }
    }
}

/// One object member: the name's span (quotes included) and the value's span.
type Member = (Range<usize>, Range<usize>);

/// The members of the object starting at `start` (its `{`) and the index of its closing
/// `}`. Assumes valid JSON.
fn members(b: &[u8], start: usize) -> (Vec<Member>, usize) {
    let mut out = Vec::new();
    let mut i = skip_ws(b, start + 1);
    loop {
        match b.get(i) {
            Some(b'"') => {
                let k_end = skip_string(b, i);
                let key = i..k_end;
                i = skip_ws(b, k_end);
                i = skip_ws(b, i + 1); // ':'
                let v_end = skip_value(b, i);
                out.push((key, i..v_end));
                i = skip_ws(b, v_end);
                if b.get(i) == Some(&b',') {
                    i = skip_ws(b, i + 1);
                }
            }
            Some(b'}') | None => return (out, i.min(b.len())),
            Some(_) => i += 1,
        }
    }
}

fn key_is(b: &[u8], key: &Range<usize>, name: &str) -> bool {
    let raw = b.get(key.clone()).unwrap_or_default();
    if raw.len() == name.len() + 2 && raw.get(1..raw.len() - 1) == Some(name.as_bytes()) {
        return true;
    }
    // A name written with escapes (`"mod\u0065l"`) is rare: decode to compare.
    raw.contains(&b'\\') && serde_json::from_slice::<String>(raw).is_ok_and(|k| k == name)
}

/// Inspects a request body. Duplicate top-level names: the last one counts, as serde_json
/// (and so most providers) would read it.
pub fn inspect(body: &[u8]) -> Result<RequestInfo, BodyError> {
    let start = if body.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(body.get(start..).unwrap_or_default())
        .map_err(|e| BodyError::NotJson(e.to_string()))?;
    let start = skip_ws(body, start);
    if body.get(start) != Some(&b'{') {
        return Err(BodyError::NotObject);
    }
    let (list, end) = members(body, start);
    let mut info = RequestInfo {
        object_end: end,
        has_members: !list.is_empty(),
        ..RequestInfo::default()
    };
    for (k, v) in &list {
        let value = body.get(v.clone()).unwrap_or_default();
        if key_is(body, k, "model") {
            // Judged after the loop: only the last `model` counts, so an earlier
            // non-string one must not refuse the body.
            info.model_span = Some(v.clone());
        } else if key_is(body, k, "stream") {
            info.stream = value == b"true";
        } else if key_is(body, k, "stream_options") {
            info.stream_options_span = Some(v.clone());
            info.include_usage = None;
            if value.first() == Some(&b'{') {
                let (inner, _) = members(body, v.start);
                for (ik, iv) in inner {
                    if key_is(body, &ik, "include_usage") {
                        info.include_usage = match body.get(iv) {
                            Some(b"true") => Some(true),
                            Some(b"false") => Some(false),
                            _ => None,
                        };
                    }
                }
            }
        }
    }
    if let Some(span) = &info.model_span {
        let value = body.get(span.clone()).unwrap_or_default();
        if value.first() != Some(&b'"') {
            return Err(BodyError::ModelNotString);
        }
        info.model =
            Some(serde_json::from_slice::<String>(value).map_err(|_| BodyError::ModelNotString)?);
    }
    Ok(info)
}

/// Writes `body` to `out` with the model replaced by `new_model` (when given) and
/// `stream_options.include_usage` set to true (when `add_include_usage`); every other byte
/// is unchanged.
pub fn rewrite(
    body: &[u8],
    info: &RequestInfo,
    new_model: Option<&str>,
    add_include_usage: bool,
    out: &mut Vec<u8>,
) {
    // Edits as (span replaced, bytes put there), applied in order.
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    if let (Some(m), Some(span)) = (new_model, &info.model_span) {
        let mut v = Vec::with_capacity(m.len() + 2);
        let _ = serde_json::to_writer(&mut v, m);
        edits.push((span.clone(), v));
    }
    if add_include_usage {
        match &info.stream_options_span {
            None => {
                let sep: &[u8] = if info.has_members { b"," } else { b"" };
                let mut v = sep.to_vec();
                v.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
                edits.push((info.object_end..info.object_end, v));
            }
            Some(span) if body.get(span.start) == Some(&b'{') => {
                let (inner, _) = members(body, span.start);
                match inner
                    .iter()
                    .rev()
                    .find(|(k, _)| key_is(body, k, "include_usage"))
                {
                    Some((_, v)) => edits.push((v.clone(), b"true".to_vec())),
                    None => {
                        let at = span.start + 1;
                        let mut v = br#""include_usage":true"#.to_vec();
                        if !inner.is_empty() {
                            v.push(b',');
                        }
                        edits.push((at..at, v));
                    }
                }
            }
            Some(span) => edits.push((span.clone(), br#"{"include_usage":true}"#.to_vec())),
        }
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut at = 0;
    for (r, v) in edits {
        out.extend_from_slice(body.get(at..r.start).unwrap_or_default());
        out.extend_from_slice(&v);
        at = r.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn reads_model_and_stream() {
        let cases: [(&str, Option<&str>, bool, Option<bool>); 8] = [
            (
                r#"{"model":"gpt-4o","messages":[]}"#,
                Some("gpt-4o"),
                false,
                None,
            ),
            (
                r#" {"messages":[{"role":"user","content":"{\"model\":\"x\"}"}], "model" : "m" , "stream":true}"#,
                Some("m"),
                true,
                None,
            ),
            (r#"{"model":"a","model":"b"}"#, Some("b"), false, None),
            // Found by the `body` fuzz target: the last `model` counts, whatever came before.
            (r#"{"model":{},"model":"a"}"#, Some("a"), false, None),
            (r#"{"mod\u0065l":"gpt\u002d4"}"#, Some("gpt-4"), false, None),
            (
                r#"{"stream":"true","stream_options":{"include_usage":false}}"#,
                None,
                false,
                Some(false),
            ),
            (
                r#"{"stream":true,"stream_options":{"x":1,"include_usage":true}}"#,
                None,
                true,
                Some(true),
            ),
            ("\u{feff}{}", None, false, None),
        ];
        for (body, model, stream, usage) in cases {
            let i = inspect(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(i.model.as_deref(), model, "{body}");
            assert_eq!(i.stream, stream, "{body}");
            assert_eq!(i.include_usage, usage, "{body}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_object_with_a_string_model() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "NotJson"),
            (b"{\"model\":", "NotJson"),
            (b"{} x", "NotJson"),
            (b"[1]", "NotObject"),
            (b"{\"model\":42}", "ModelNotString"),
            (b"{\"model\":\"a\",\"model\":null}", "ModelNotString"),
            (b"\xff", "NotJson"),
        ];
        for (body, want) in cases {
            let got = inspect(body).map(|_| ()).map_err(|e| format!("{e:?}"));
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with(want)),
                "{:?}: {got:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn rewritten(body: &str, model: Option<&str>, usage: bool) -> String {
        let info = inspect(body.as_bytes()).unwrap_or_default();
        let mut out = Vec::new();
        rewrite(body.as_bytes(), &info, model, usage, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn rewrites_only_what_it_must() {
        let cases: [(&str, Option<&str>, bool, &str); 7] = [
            (
                r#"{"model": "a", "x" :1}"#,
                Some("b\"c"),
                false,
                r#"{"model": "b\"c", "x" :1}"#,
            ),
            (
                r#"{"model":"a","stream":true}"#,
                None,
                true,
                r#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{ }"#,
                None,
                true,
                r#"{ "stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":{"include_usage":false},"model":"a"}"#,
                Some("z"),
                true,
                r#"{"stream_options":{"include_usage":true},"model":"z"}"#,
            ),
            (
                r#"{"stream_options":{"x":1}}"#,
                None,
                true,
                r#"{"stream_options":{"include_usage":true,"x":1}}"#,
            ),
            (
                r#"{"stream_options":{}}"#,
                None,
                true,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":null}"#,
                None,
                true,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (body, model, usage, want) in cases {
            let got = rewritten(body, model, usage);
            assert_eq!(got, want, "{body}");
            assert!(serde_json::from_str::<Value>(&got).is_ok(), "{got}");
        }
        let same = r#"{"model":"a","messages":[{"content":"é\n"}]}"#;
        assert_eq!(rewritten(same, None, false), same);
    }

    #[test]
    fn generated_bodies_round_trip() {
        // A small deterministic generator: members in varying order and spacing.
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut members: Vec<(String, Value)> = vec![
                ("model".into(), json!(format!("m-{}", next() % 100))),
                (
                    "messages".into(),
                    json!([{"role":"user","content":"hi \"there\" {[]}"}]),
                ),
                ("temperature".into(), json!(0.5)),
                ("nested".into(), json!({"a":[1,2,{"model":"inner"}]})),
            ];
            if next() % 2 == 0 {
                members.push(("stream".into(), json!(true)));
            }
            if next() % 3 == 0 {
                members.push(("stream_options".into(), json!({"other": 1})));
            }
            let n = members.len();
            for i in 0..n {
                members.swap(i, (next() as usize) % n);
            }
            let ws = if next() % 2 == 0 { " " } else { "" };
            let body = format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let got: Value =
                serde_json::from_str(&rewritten(&body, Some("p"), true)).unwrap_or(Value::Null);
            let mut want: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            want["model"] = json!("p");
            match want.get_mut("stream_options") {
                Some(o) => o["include_usage"] = json!(true),
                None => want["stream_options"] = json!({"include_usage": true}),
            }
            assert_eq!(got, want, "{body}");
        }
    }
}
