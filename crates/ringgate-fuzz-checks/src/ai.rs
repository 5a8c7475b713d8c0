//! The AI layer's parsers of untrusted bodies: the SSE usage scanner (observing, and
//! stripping the usage-only chunk), the JSON usage scanner, and the request-body inspector
//! and rewriter that model routing uses.

use ringgate::ai::body::{inspect, rewrite};
use ringgate::ai::usage::{
    usage_from_value, JsonUsageScanner, SseScanner, Usage, MAX_EVENT_BYTES, MAX_USAGE_BYTES,
};
use serde_json::Value;

use crate::reference::{sse_events, sse_expected, usage_rule};
use crate::Pieces;

/// The bytes stripping must have forwarded once `prefix` has been fed: every complete
/// event of it except the usage-only ones (nothing complete may be held back).
fn forwardable(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in sse_events(prefix).iter().filter(|e| e.complete) {
        if !usage_rule(&ev.data).is_some_and(|(_, usage_only)| usage_only) {
            out.extend_from_slice(ev.raw);
        }
    }
    out
}

/// Runs an `SseScanner` over `pieces`; with `prefixes`, also checks that after each piece
/// everything complete so far has been forwarded.
fn scan_sse(pieces: &[&[u8]], strip: bool, prefixes: bool) -> (Vec<u8>, Option<Usage>, bool) {
    let mut s = SseScanner::new(strip);
    let mut out = Vec::new();
    let mut fed = Vec::new();
    for piece in pieces {
        s.feed(piece, &mut out);
        fed.extend_from_slice(piece);
        if prefixes && strip {
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&forwardable(&fed)),
                "after {} bytes, complete events are held back (or too much was sent)",
                fed.len()
            );
        }
    }
    s.finish(&mut out);
    (out, s.usage(), s.stripped())
}

/// SSE scanner target. Flag bit 0: strip. Every split of the stream gives what one piece
/// gives, which is the stream minus its usage-only events (the reference); the usage read
/// is the same either way.
pub fn check_sse(data: &[u8]) {
    let p = Pieces::parse(data);
    let strip = p.flags & 1 == 1;
    let small = p.stream.len() <= MAX_EVENT_BYTES;
    let whole = scan_sse(&[p.stream], strip, false);
    let split = scan_sse(&p.pieces(), strip, small);
    assert_eq!(split, whole, "the split {:?} changed the result", p.cuts);
    if !strip {
        assert!(whole.0.is_empty(), "observing must not write");
    }
    if small {
        let want = sse_expected(p.stream, strip);
        assert_eq!(
            String::from_utf8_lossy(&whole.0),
            String::from_utf8_lossy(&want.0),
            "scanner and reference disagree on the forwarded bytes"
        );
        assert_eq!((whole.1, whole.2), (want.1, want.2), "usage / stripped");
    }
}

/// JSON usage scanner target: every split gives what one piece gives; on a plain JSON
/// object (no escapes, one `"usage"`, small) it is serde_json's reading of `usage`.
pub fn check_json_usage(data: &[u8]) {
    let p = Pieces::parse(data);
    let scan = |pieces: &[&[u8]]| {
        let mut s = JsonUsageScanner::new();
        for piece in pieces {
            s.feed(piece);
        }
        s.usage()
    };
    let whole = scan(&[p.stream]);
    assert_eq!(scan(&p.pieces()), whole, "the split {:?} changed", p.cuts);
    let key = b"\"usage\"";
    let plain = p.stream.len() < MAX_USAGE_BYTES
        && !p.stream.contains(&b'\\')
        && p.stream.windows(key.len()).filter(|w| w == key).count() == 1;
    if !plain {
        return;
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(p.stream) {
        let want = m.get("usage").and_then(usage_from_value);
        assert_eq!(whole, want, "scanner and serde_json disagree");
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Body inspector and rewriter target. Layout: flags (bit 0 add `include_usage`, bit 1
/// replace the model), a length byte and that many bytes of new model name, the body.
/// `inspect` agrees with serde_json; `rewrite` changes exactly `model` and
/// `stream_options.include_usage` (compared as serde_json values) and re-inspects to them.
pub fn check_body(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let len = usize::from(data.get(1).copied().unwrap_or(0));
    let name_bytes = data.get(2..(2 + len).min(data.len())).unwrap_or_default();
    let body = data.get(2 + name_bytes.len()..).unwrap_or_default();
    let new_model = String::from_utf8_lossy(name_bytes).into_owned();
    let add = flags & 1 == 1;
    let replace = flags & 2 == 2;

    let start = if body.starts_with(BOM) { 3 } else { 0 };
    let value = serde_json::from_slice::<Value>(&body[start..]).ok();
    let info = match inspect(body) {
        Ok(info) => info,
        Err(e) => {
            if let Some(Value::Object(m)) = &value {
                assert!(
                    m.get("model").is_some_and(|v| !v.is_string()),
                    "a JSON object refused: {e}"
                );
            }
            return;
        }
    };
    let Some(Value::Object(obj)) = value else {
        // serde_json's Value refuses numbers out of f64 range that inspect's validation
        // (which ignores values) accepts; nothing to compare then.
        assert!(
            value.is_none(),
            "inspect accepted a JSON value that is not an object"
        );
        return;
    };
    assert_eq!(
        info.model.as_deref(),
        obj.get("model").and_then(Value::as_str)
    );
    assert_eq!(info.stream, obj.get("stream") == Some(&Value::Bool(true)));
    assert_eq!(
        info.include_usage,
        obj.get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
    );

    let mut out = Vec::new();
    let model = replace.then_some(new_model.as_str());
    rewrite(body, &info, model, add, &mut out);
    assert_eq!(out.starts_with(BOM), start == 3);
    let again: Value = match serde_json::from_slice(&out[start..]) {
        Ok(v) => v,
        Err(e) => panic!(
            "rewrite made invalid JSON ({e}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    let mut want = obj.clone();
    if let (Some(m), true) = (model, obj.contains_key("model")) {
        want.insert("model".into(), Value::String(m.into()));
    }
    if add {
        match want.get_mut("stream_options") {
            Some(Value::Object(o)) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            _ => {
                let mut o = serde_json::Map::new();
                o.insert("include_usage".into(), Value::Bool(true));
                want.insert("stream_options".into(), Value::Object(o));
            }
        }
    }
    assert_eq!(again, Value::Object(want), "rewrite changed other members");
    let info2 = match inspect(&out) {
        Ok(i) => i,
        Err(e) => panic!("the rewritten body does not inspect: {e}"),
    };
    if add {
        assert_eq!(info2.include_usage, Some(true));
    }
    if let (Some(m), true) = (model, info.model.is_some()) {
        assert_eq!(info2.model.as_deref(), Some(m));
    }
}

/// What a translated stream wrote must be SSE events whose data is JSON or `[DONE]`.
fn assert_events(out: &[u8]) {
    for ev in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let data = ev
            .strip_prefix(b"data: ")
            .unwrap_or_else(|| panic!("not a data line: {:?}", String::from_utf8_lossy(ev)));
        assert!(
            data == b"[DONE]" || serde_json::from_slice::<Value>(data).is_ok(),
            "not JSON: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

/// Runs the provider's stream translator over `pieces` (flag bit 0: Gemini, else Anthropic).
fn translate_stream(gemini: bool, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    if gemini {
        let mut t = ringgate::ai::gemini::StreamTranslator::new(1, "m");
        for p in pieces {
            t.feed(p, &mut out);
        }
        t.finish(&mut out);
    } else {
        let mut t = ringgate::ai::anthropic::StreamTranslator::new(1);
        for p in pieces {
            t.feed(p, &mut out);
        }
        t.finish(&mut out);
    }
    out
}

/// Provider translation target (Anthropic and Gemini). Flag bit 0 picks Gemini, bit 1 the
/// provider's side. Client side: the request translation never panics and what it returns is
/// a JSON object. Provider side: a stream translates the same whatever its split, into
/// well-formed events; a whole answer or an error body translates to JSON or is refused.
pub fn check_translate(data: &[u8]) {
    let p = Pieces::parse(data);
    let gemini = p.flags & 1 == 1;
    if p.flags & 2 == 0 {
        let out = if gemini {
            ringgate::ai::gemini::request_to_gemini(p.stream).ok()
        } else {
            ringgate::ai::anthropic::request_to_anthropic(p.stream, "m", 16).ok()
        };
        if let Some(body) = out {
            assert!(
                serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object()),
                "a translated request is not a JSON object"
            );
        }
        return;
    }
    let whole = translate_stream(gemini, &[p.stream]);
    let split = translate_stream(gemini, &p.pieces());
    assert_eq!(
        String::from_utf8_lossy(&split),
        String::from_utf8_lossy(&whole),
        "the split {:?} changed the translation",
        p.cuts
    );
    assert_events(&whole);
    let answer = if gemini {
        ringgate::ai::gemini::response_to_openai(p.stream, 1, "m").ok()
    } else {
        ringgate::ai::anthropic::response_to_openai(p.stream, 1).ok()
    };
    if let Some(a) = answer {
        assert!(
            serde_json::from_slice::<Value>(&a).is_ok(),
            "answer not JSON"
        );
    }
    let err = if gemini {
        ringgate::ai::gemini::error_to_openai(p.stream, 500)
    } else {
        ringgate::ai::anthropic::error_to_openai(p.stream, 500)
    };
    assert!(
        serde_json::from_slice::<Value>(&err).is_ok(),
        "error not JSON"
    );
}
