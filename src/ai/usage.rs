//! Token usage read from responses as they stream through, without holding them back:
//! [`JsonUsageScanner`] finds the top-level `usage` object of a JSON response fed in any
//! pieces; [`SseScanner`] reads `data:` events of a `text/event-stream` for the usage chunk
//! and, when the gateway itself added `stream_options.include_usage`, removes that chunk
//! so the client sees exactly the stream it asked for.
//!
//! Both work on untrusted bytes: bounded buffers, no recursion, no panics.

use serde::Deserialize;

/// Longest `usage` value kept (real ones are a few hundred bytes).
pub const MAX_USAGE_BYTES: usize = 8 * 1024;
/// Largest SSE event inspected; bigger events pass through unread (and are never stripped).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Tokens one response used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// The part of `prompt` served from the provider's prompt cache.
    pub cached_prompt: u64,
}

fn num(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// Reads a parsed `usage` value. Accepts OpenAI chat (`prompt_tokens`, `completion_tokens`,
/// `prompt_tokens_details.cached_tokens`), the Responses API (`input_tokens`,
/// `output_tokens`, `input_tokens_details.cached_tokens`), DeepSeek
/// (`prompt_cache_hit_tokens`) and Anthropic-style (`cache_read_input_tokens`, which
/// Anthropic does not include in `input_tokens`, so it is added). Missing counts are 0; a
/// `usage` that is not an object is None.
pub fn usage_from_value(v: &serde_json::Value) -> Option<Usage> {
    if !v.is_object() {
        return None;
    }
    let mut prompt = num(v, "prompt_tokens");
    let completion = num(v, "completion_tokens")
        .or_else(|| num(v, "output_tokens"))
        .unwrap_or(0);
    let details = v
        .get("prompt_tokens_details")
        .or_else(|| v.get("input_tokens_details"))
        .and_then(|d| num(d, "cached_tokens"));
    let mut cached = details.or_else(|| num(v, "prompt_cache_hit_tokens"));
    if prompt.is_none() {
        let input = num(v, "input_tokens").unwrap_or(0);
        match num(v, "cache_read_input_tokens") {
            Some(read) => {
                let created = num(v, "cache_creation_input_tokens").unwrap_or(0);
                prompt = Some(input.saturating_add(read).saturating_add(created));
                cached = Some(read);
            }
            None => prompt = Some(input),
        }
    }
    let prompt = prompt.unwrap_or(0);
    Some(Usage {
        prompt,
        completion,
        cached_prompt: cached.unwrap_or(0).min(prompt),
    })
}

/// Parses a `usage` object's JSON text (see [`usage_from_value`]).
pub fn parse_usage(obj: &[u8]) -> Option<Usage> {
    usage_from_value(&serde_json::from_slice(obj).ok()?)
}

/// Finds the top-level `"usage"` object of a JSON response fed in arbitrary pieces. Keeps
/// at most [`MAX_USAGE_BYTES`] of it and nothing else of the body.
#[derive(Debug, Default)]
pub struct JsonUsageScanner {
    depth: u32,
    in_str: bool,
    esc: bool,
    /// At depth 1, the next string is a member name.
    expect_key: bool,
    in_key: bool,
    key: [u8; 5],
    key_len: usize,
    /// The last depth-1 member name was `usage`; its value has not started.
    usage_next: bool,
    capturing: bool,
    buf: Vec<u8>,
    usage: Option<Usage>,
}

impl JsonUsageScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes the next piece of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.capturing {
                if self.buf.len() < MAX_USAGE_BYTES {
                    self.buf.push(b);
                } else {
                    self.capturing = false;
                    self.buf.clear();
                }
            }
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                    if self.in_key {
                        self.in_key = false;
                        self.expect_key = false;
                        self.usage_next = self.key_len == 5 && &self.key == b"usage";
                    }
                } else if self.in_key {
                    if let Some(slot) = self.key.get_mut(self.key_len) {
                        *slot = b;
                    }
                    self.key_len = self.key_len.saturating_add(1);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_str = true;
                    if self.depth == 1 && self.expect_key {
                        self.in_key = true;
                        self.key_len = 0;
                    } else if self.depth == 1 && self.usage_next {
                        self.usage_next = false;
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 1 && self.usage_next && !self.capturing {
                        self.usage_next = false;
                        if b == b'{' {
                            self.capturing = true;
                            self.buf.clear();
                            self.buf.push(b);
                        }
                    }
                    self.depth = self.depth.saturating_add(1);
                    if self.depth == 1 && b == b'{' {
                        self.expect_key = true;
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.capturing && self.depth == 1 {
                        self.capturing = false;
                        self.usage = parse_usage(&self.buf).or(self.usage);
                        self.buf.clear();
                    }
                }
                b',' if self.depth == 1 => {
                    self.expect_key = true;
                    self.usage_next = false;
                }
                b' ' | b'\t' | b'\r' | b'\n' | b':' | b',' => {}
                _ => {
                    // A scalar value (`"usage": null`) ends any hope for this member.
                    if self.depth == 1 {
                        self.usage_next = false;
                    }
                }
            }
        }
    }

    /// The usage found so far (the last top-level `usage` object wins).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// Watches an SSE stream (the decoded body of a `text/event-stream` response) for usage,
/// optionally removing the usage-only chunk the gateway asked for on the client's behalf.
#[derive(Debug)]
pub struct SseScanner {
    strip: bool,
    /// The current line so far (only kept while it may be a `data:` line within bounds).
    line: Vec<u8>,
    line_over: bool,
    /// The current event's joined `data` (bounded).
    data: Vec<u8>,
    data_lines: usize,
    data_over: bool,
    /// Strip mode: the current event's raw bytes, held until the event is complete.
    raw: Vec<u8>,
    /// Strip mode: the current event outgrew the bound and streams through unread.
    passthrough: bool,
    /// The previous piece ended in `\r`: a leading `\n` belongs to that line ending.
    last_cr: bool,
    /// Strip mode: whether the event that ended at that `\r` was dropped.
    last_dropped: bool,
    /// The line that ended at that `\r` ended its event.
    cr_ended_event: bool,
    usage: Option<Usage>,
    stripped: bool,
    /// Events with data other than `[DONE]` and the usage-only chunk: the basis of an
    /// estimate when a stream ends without its usage.
    data_events: u64,
}

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

impl SseScanner {
    /// `strip_usage_chunk`: the client did not ask for usage; the gateway did, so the chunk
    /// that carries only usage (`choices` empty) must not reach the client.
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            strip: strip_usage_chunk,
            line: Vec::new(),
            line_over: false,
            data: Vec::new(),
            data_lines: 0,
            data_over: false,
            raw: Vec::new(),
            passthrough: false,
            last_cr: false,
            last_dropped: false,
            cr_ended_event: false,
            usage: None,
            stripped: false,
            data_events: 0,
        }
    }

    /// Completed events that carried data (not `[DONE]`, not the usage-only chunk).
    pub fn data_events(&self) -> u64 {
        self.data_events
    }

    /// Observes the next piece. When stripping, appends to `out` what is to be forwarded:
    /// every complete event but the usage-only one, byte for byte; an incomplete event is
    /// held until its end (a client cannot act on half an event, so nothing is delayed).
    /// When not stripping, `out` is untouched: the caller forwards the original bytes.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        // An empty piece says nothing about a `\r` that ended the last one: the `\n` that
        // may follow is still to come.
        if bytes.is_empty() {
            return;
        }
        if self.last_cr {
            self.last_cr = false;
            if let Some((b'\n', rest)) = bytes.split_first() {
                if !self.cr_ended_event {
                    self.take_raw(b"\n", out);
                } else if self.strip && !self.last_dropped {
                    out.push(b'\n');
                }
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            let Some(p) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.take_partial(bytes, out);
                return;
            };
            let term = match (bytes[p], bytes.get(p + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => {
                    self.last_cr = true;
                    1
                }
                _ => 1,
            };
            let (piece, rest) = bytes.split_at(p + term);
            self.take_partial(&piece[..p], out);
            self.take_raw(&piece[p..], out);
            self.cr_ended_event = self.end_line(out);
            bytes = rest;
        }
    }

    /// End of stream: when stripping, forwards whatever is held (an unterminated last event
    /// is passed on as it is).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.strip {
            out.append(&mut self.raw);
        }
        self.line.clear();
        self.data.clear();
    }

    /// The last usage seen (cumulative per-chunk usage: the last one wins).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether it strips the usage-only chunk (and so writes what is to be forwarded).
    pub fn strips(&self) -> bool {
        self.strip
    }

    /// Whether a usage-only chunk was removed.
    pub fn stripped(&self) -> bool {
        self.stripped
    }

    /// Bytes of the current line (no terminator).
    fn take_partial(&mut self, b: &[u8], out: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        if !self.line_over {
            if self.line.len() + b.len() <= MAX_EVENT_BYTES {
                self.line.extend_from_slice(b);
            } else {
                self.line_over = true;
                self.line.clear();
            }
        }
        self.take_raw(b, out);
    }

    /// Raw bytes of the current event, in strip mode.
    fn take_raw(&mut self, b: &[u8], out: &mut Vec<u8>) {
        if !self.strip {
            return;
        }
        if self.passthrough {
            out.extend_from_slice(b);
        } else if self.raw.len() + b.len() > MAX_EVENT_BYTES {
            // Too big to hold: forward it unread from here on.
            self.passthrough = true;
            out.append(&mut self.raw);
            out.extend_from_slice(b);
        } else {
            self.raw.extend_from_slice(b);
        }
    }

    /// Ends the current line; returns whether it ended the event.
    fn end_line(&mut self, out: &mut Vec<u8>) -> bool {
        let over = std::mem::take(&mut self.line_over);
        if self.line.is_empty() && !over {
            self.end_event(out);
            return true;
        }
        if !over {
            if let Some(v) = self.line.strip_prefix(b"data:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                if self.data_lines > 0 {
                    self.data.push(b'\n');
                }
                self.data_lines += 1;
                if self.data.len() + v.len() <= MAX_EVENT_BYTES {
                    self.data.extend_from_slice(v);
                } else {
                    self.data_over = true;
                }
            }
        } else if self.line.is_empty() {
            self.data_over = true;
        }
        self.line.clear();
        false
    }

    fn end_event(&mut self, out: &mut Vec<u8>) {
        let mut drop_it = false;
        if !self.data_over && has_usage_object(&self.data) {
            if let Ok(probe) = serde_json::from_slice::<ChunkProbe>(&self.data) {
                if let Some(u) = probe.usage.as_ref().and_then(usage_from_value) {
                    self.usage = Some(u);
                    drop_it = self.strip
                        && !self.passthrough
                        && probe.choices.as_ref().is_none_or(Vec::is_empty);
                }
            }
        }
        if self.data_lines > 0 && !drop_it && self.data.trim_ascii() != b"[DONE]" {
            self.data_events += 1;
        }
        if self.strip {
            if drop_it {
                self.stripped = true;
                self.raw.clear();
            } else {
                out.append(&mut self.raw);
            }
        }
        self.last_dropped = drop_it;
        self.passthrough = false;
        self.data.clear();
        self.data_lines = 0;
        self.data_over = false;
    }
}

/// Whether `data` holds `"usage"` followed by `:` and an object: the cheap test that keeps
/// the `"usage":null` of every ordinary chunk from being parsed.
fn has_usage_object(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(p) = data
        .get(from..)
        .and_then(|d| d.windows(KEY.len()).position(|w| w == KEY))
    {
        let after = from + p + KEY.len();
        let mut it = data.get(after..).unwrap_or_default().iter();
        let mut next = || it.find(|b| !b.is_ascii_whitespace()).copied();
        if next() == Some(b':') && next() == Some(b'{') {
            return true;
        }
        from = after;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}"#;

    fn stream(crlf: bool) -> String {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut s = String::new();
        s.push_str(&format!(": ping{nl}{nl}"));
        for i in 0..5 {
            s.push_str(&format!(
                r#"data: {{"id":"c","choices":[{{"index":0,"delta":{{"content":"w{i}"}}}}],"usage":null}}{nl}{nl}"#
            ));
        }
        s.push_str(&format!(
            r#"data: {{"id":"c","choices":[],"usage":{USAGE}}}{nl}{nl}"#
        ));
        s.push_str(&format!("data: [DONE]{nl}{nl}"));
        s
    }

    fn run(input: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, Option<Usage>, bool) {
        let mut sc = SseScanner::new(strip);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            sc.feed(&input[prev..c], &mut out);
            prev = c;
        }
        sc.finish(&mut out);
        (out, sc.usage(), sc.stripped())
    }

    const WANT: Usage = Usage {
        prompt: 12,
        completion: 5,
        cached_prompt: 4,
    };

    #[test]
    fn sse_strip_and_usage_at_every_split() {
        for crlf in [false, true] {
            let s = stream(crlf);
            let usage_event_start = s.find(r#"data: {"id":"c","choices":[]"#).unwrap_or(0);
            let usage_event_end = s.find("data: [DONE]").unwrap_or(0);
            let mut expected = s.as_bytes().to_vec();
            expected.drain(usage_event_start..usage_event_end);
            for cut in 0..=s.len() {
                let (out, u, stripped) = run(s.as_bytes(), &[cut], true);
                assert_eq!(out, expected, "crlf={crlf} cut={cut}");
                assert_eq!(u, Some(WANT), "cut={cut}");
                assert!(stripped);
                // An empty piece in between (found by the `sse` fuzz target) changes nothing,
                // also right after a `\r` whose `\n` is still to come.
                let (out, _, _) = run(s.as_bytes(), &[cut, cut], true);
                assert_eq!(out, expected, "crlf={crlf} empty piece at {cut}");
                let (out, u, stripped) = run(s.as_bytes(), &[cut], false);
                assert!(out.is_empty(), "non-strip mode never writes");
                assert_eq!(u, Some(WANT));
                assert!(!stripped);
            }
            let every: Vec<usize> = (1..s.len()).collect();
            assert_eq!(run(s.as_bytes(), &every, true).0, expected);
        }
    }

    #[test]
    fn sse_edge_cases() {
        // Content and usage in one chunk: counted, never stripped.
        let s = format!("data: {{\"choices\":[{{\"delta\":{{}}}}],\"usage\" : {USAGE}}}\n\n");
        let (out, u, stripped) = run(s.as_bytes(), &[], true);
        assert_eq!(out, s.as_bytes());
        assert_eq!(u, Some(WANT));
        assert!(!stripped);
        // Cumulative usage in every chunk: the last wins.
        let s = "data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                 data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9}}\n\n";
        assert_eq!(
            run(s.as_bytes(), &[], false).1.map(|u| u.completion),
            Some(9)
        );
        // A \r ending one piece and \n starting the next is one line ending.
        let s = stream(true);
        let at = s.find("\r\n").map_or(0, |p| p + 1);
        assert_eq!(run(s.as_bytes(), &[at], false).1, Some(WANT));
        // An event over the bound streams through unread; memory stays bounded.
        let big = format!("data: {}\n\n", "x".repeat(MAX_EVENT_BYTES + 10));
        let (out, _, _) = run(big.as_bytes(), &[100, 200_000], true);
        assert_eq!(out, big.as_bytes());
        // Multi-line data is joined with \n before parsing.
        let s = format!("data: {{\"choices\":[],\ndata: \"usage\":{USAGE}}}\n\n");
        let (out, u, _) = run(s.as_bytes(), &[], true);
        assert!(out.is_empty());
        assert_eq!(u, Some(WANT));
        // Unterminated last event is forwarded at finish.
        let (out, _, _) = run(b"data: {\"choices\":[{}]}", &[], true);
        assert_eq!(out, b"data: {\"choices\":[{}]}");
    }

    #[test]
    fn json_usage_at_every_split() {
        let body = format!(
            r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"a \"usage\": {{}} b"}},"usage":{{"prompt_tokens":999}}}}],"usage":{USAGE},"system_fingerprint":null}}"#
        );
        for cut in 0..=body.len() {
            let mut sc = JsonUsageScanner::new();
            sc.feed(&body.as_bytes()[..cut]);
            sc.feed(&body.as_bytes()[cut..]);
            assert_eq!(sc.usage(), Some(WANT), "cut={cut}");
        }
        let cases: [(&str, Option<Usage>); 5] = [
            (r#"{"usage":null}"#, None),
            (r#"["usage",{"prompt_tokens":1}]"#, None),
            (r#"{"a":{"usage":{"prompt_tokens":1}}}"#, None),
            (
                r#"{"usage":{"input_tokens":10,"output_tokens":2,"input_tokens_details":{"cached_tokens":3}}}"#,
                Some(Usage {
                    prompt: 10,
                    completion: 2,
                    cached_prompt: 3,
                }),
            ),
            (
                r#"{"usage":{"input_tokens":10,"output_tokens":2,"cache_read_input_tokens":30}}"#,
                Some(Usage {
                    prompt: 40,
                    completion: 2,
                    cached_prompt: 30,
                }),
            ),
        ];
        for (body, want) in cases {
            let mut sc = JsonUsageScanner::new();
            sc.feed(body.as_bytes());
            assert_eq!(sc.usage(), want, "{body}");
        }
        // Not JSON at all: nothing found, nothing kept.
        let mut sc = JsonUsageScanner::new();
        sc.feed(&[b'{'; 100_000]);
        assert_eq!(sc.usage(), None);
        assert!(sc.buf.len() <= MAX_USAGE_BYTES);
    }

    #[test]
    fn deepseek_cache_hits() {
        let u = parse_usage(
            br#"{"prompt_tokens":100,"completion_tokens":7,"prompt_cache_hit_tokens":60}"#,
        );
        assert_eq!(
            u,
            Some(Usage {
                prompt: 100,
                completion: 7,
                cached_prompt: 60
            })
        );
    }
}
