//! Reference implementations the differential targets compare ringgate against. They are
//! written from the grammar down, whole-buffer and allocation-happy, sharing no code with
//! the streaming state machines they check: an incremental decoder and a line-by-line
//! validator agreeing on every input is the evidence, not either one alone.

use ringgate::ai::usage::{usage_from_value, Usage, MAX_EVENT_BYTES};
use serde::Deserialize;

/// Longest chunk-size line ringgate accepts, CRLF included.
pub const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section ringgate accepts, its final CRLF included.
pub const MAX_TRAILER: usize = 16 * 1024;
/// Most significant hex digits in a chunk size.
pub const MAX_SIZE_DIGITS: usize = 15;

/// How a chunked body ended, as far as the buffer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Last chunk and trailers complete; the body took this many bytes.
    Done(usize),
    /// Everything so far is valid; more bytes are needed.
    Incomplete,
    /// The framing is broken (or over a bound) somewhere in the buffer.
    Error,
}

/// A chunked body decoded by the reference: the payload up to where decoding stopped
/// (partial chunks included, as a streaming decoder hands them out) and how it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Payload bytes, in order.
    pub body: Vec<u8>,
    /// Where decoding stopped.
    pub ending: Ending,
}

fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Checks a size line's content (without CR/LF). `complete`: the CR was seen, so nothing
/// more may follow. Returns the size when the content is (so far) valid.
fn size_content(content: &[u8], complete: bool) -> Option<u64> {
    if content.iter().any(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    let (size_part, ext) = match content.iter().position(|&b| b == b';') {
        Some(i) => (&content[..i], Some(&content[i + 1..])),
        None => (content, None),
    };
    let hex_len = size_part
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    let (hex, after) = size_part.split_at(hex_len);
    if hex.is_empty() && (complete || !content.is_empty()) {
        return None;
    }
    if !after.iter().all(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    if ext.is_none() && complete && !after.is_empty() {
        return None;
    }
    if !ext.unwrap_or_default().iter().all(|&b| is_field_byte(b)) {
        return None;
    }
    let significant = &hex[hex.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > MAX_SIZE_DIGITS {
        return None;
    }
    let text = std::str::from_utf8(significant).ok()?;
    Some(if text.is_empty() {
        0
    } else {
        u64::from_str_radix(text, 16).ok()?
    })
}

enum SizeLine {
    Size(u64, usize),
    Incomplete,
    Error,
}

fn size_line(rest: &[u8]) -> SizeLine {
    let window = &rest[..rest.len().min(MAX_SIZE_LINE)];
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        let ok = lf >= 1 && window[lf - 1] == b'\r';
        return match size_content(&window[..lf.saturating_sub(1)], true) {
            Some(v) if ok => SizeLine::Size(v, lf + 1),
            _ => SizeLine::Error,
        };
    }
    let (content, complete) = match window.split_last() {
        Some((b'\r', c)) => (c, true),
        _ => (window, false),
    };
    if size_content(content, complete).is_none() || rest.len() > MAX_SIZE_LINE {
        SizeLine::Error
    } else {
        SizeLine::Incomplete
    }
}

fn trailers(rest: &[u8]) -> Ending {
    let window = &rest[..rest.len().min(MAX_TRAILER)];
    let too_big_or_more = if rest.len() > MAX_TRAILER {
        Ending::Error
    } else {
        Ending::Incomplete
    };
    let mut i = 0;
    loop {
        let mut j = i;
        while j < window.len() && is_field_byte(window[j]) {
            j += 1;
        }
        match (window.get(j), window.get(j + 1)) {
            (None, _) | (Some(b'\r'), None) => return too_big_or_more,
            (Some(b'\r'), Some(b'\n')) if j == i => return Ending::Done(j + 2),
            (Some(b'\r'), Some(b'\n')) => i = j + 2,
            _ => return Ending::Error,
        }
    }
}

/// Decodes a chunked body from the front of `buf` (RFC 9112 §7.1, ringgate's bounds).
pub fn decode_chunked(buf: &[u8]) -> Decoded {
    let mut body = Vec::new();
    let mut pos = 0;
    let ending = loop {
        let size = match size_line(&buf[pos..]) {
            SizeLine::Size(size, len) => {
                pos += len;
                size
            }
            SizeLine::Incomplete => break Ending::Incomplete,
            SizeLine::Error => break Ending::Error,
        };
        if size == 0 {
            break match trailers(&buf[pos..]) {
                Ending::Done(n) => Ending::Done(pos + n),
                other => other,
            };
        }
        let avail = (buf.len() - pos) as u64;
        let take = size.min(avail) as usize;
        body.extend_from_slice(&buf[pos..pos + take]);
        pos += take;
        if (take as u64) < size {
            break Ending::Incomplete;
        }
        match &buf[pos..] {
            [b'\r', b'\n', ..] => pos += 2,
            [] | [b'\r'] => break Ending::Incomplete,
            _ => break Ending::Error,
        }
    };
    Decoded { body, ending }
}

/// One SSE event as the reference splits a stream: its raw bytes and joined `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event's bytes, its lines' terminators and the blank line ending it included.
    pub raw: &'a [u8],
    /// The `data:` lines' values (one leading space removed), joined by `\n`.
    pub data: Vec<u8>,
    /// Ended by a blank line (the stream's unterminated tail is not).
    pub complete: bool,
}

/// Splits an event stream into events (lines end in CRLF, CR or LF; a blank line ends
/// an event), whole-buffer.
pub fn sse_events(stream: &[u8]) -> Vec<Event<'_>> {
    let mut events = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut data: Vec<u8> = Vec::new();
    let mut data_lines = 0;
    while i < stream.len() {
        let Some(p) = stream[i..].iter().position(|&b| b == b'\r' || b == b'\n') else {
            break;
        };
        let line = &stream[i..i + p];
        let term = if stream[i + p] == b'\r' && stream.get(i + p + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        i += p + term;
        if line.is_empty() {
            events.push(Event {
                raw: &stream[start..i],
                data: std::mem::take(&mut data),
                complete: true,
            });
            data_lines = 0;
            start = i;
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if data_lines > 0 {
                data.push(b'\n');
            }
            data_lines += 1;
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    if start < stream.len() {
        events.push(Event {
            raw: &stream[start..],
            data,
            complete: false,
        });
    }
    events
}

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

/// ringgate's rule for an event's data, restated: the usage it carries, and whether it is
/// the usage-only chunk (no `choices`, or none) that stripping removes. This is the one part
/// the SSE reference copies rather than derives: which JSON counts is policy, while the
/// byte accounting around it is what the differential target checks.
pub fn usage_rule(data: &[u8]) -> Option<(Usage, bool)> {
    const KEY: &[u8] = b"\"usage\"";
    let prefilter = data.windows(KEY.len()).enumerate().any(|(p, w)| {
        let mut it = data[p + KEY.len()..]
            .iter()
            .filter(|b| !b.is_ascii_whitespace());
        w == KEY && it.next() == Some(&b':') && it.next() == Some(&b'{')
    });
    if !prefilter {
        return None;
    }
    let probe: ChunkProbe = serde_json::from_slice(data).ok()?;
    let usage = usage_from_value(probe.usage.as_ref()?)?;
    Some((usage, probe.choices.as_ref().is_none_or(Vec::is_empty)))
}

/// What [`ringgate::ai::usage::SseScanner`] must produce for a whole stream (shorter than
/// [`MAX_EVENT_BYTES`], so no bound applies): the stream minus the usage-only events when
/// `strip`, the last usage seen, and whether an event was removed.
pub fn sse_expected(stream: &[u8], strip: bool) -> (Vec<u8>, Option<Usage>, bool) {
    assert!(
        stream.len() <= MAX_EVENT_BYTES,
        "the reference ignores bounds"
    );
    let mut out = Vec::new();
    let mut usage = None;
    let mut stripped = false;
    for ev in sse_events(stream) {
        let rule = if ev.complete {
            usage_rule(&ev.data)
        } else {
            None
        };
        if let Some((u, _)) = rule {
            usage = Some(u);
        }
        if strip && rule.is_some_and(|(_, usage_only)| usage_only) {
            stripped = true;
        } else if strip {
            out.extend_from_slice(ev.raw);
        }
    }
    (out, usage, stripped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_reference_reads_the_grammar() {
        let ok = decode_chunked(b"5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\nrest");
        assert_eq!(ok.body, b"hello");
        assert_eq!(ok.ending, Ending::Done(25));
        let cases: &[(&[u8], Ending)] = &[
            (b"", Ending::Incomplete),
            (b"5", Ending::Incomplete),
            (b"5 ;x\r", Ending::Incomplete),
            (b"5\r\nhel", Ending::Incomplete),
            (b"5\r\nhello\r", Ending::Incomplete),
            (b"0\r\n\r", Ending::Incomplete),
            (b"5 \r\n", Ending::Error),
            (b"\r\n", Ending::Error),
            (b" 5\r\n", Ending::Error),
            (b"5\n", Ending::Error),
            (b"5\r\nhelloX", Ending::Error),
            (b"1000000000000000\r\n", Ending::Error),
            (b"000000000000000000001\r\nx\r\n0\r\n\r\n", Ending::Done(31)),
            (b"0\r\nbad\x01\r\n\r\n", Ending::Error),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_chunked(input).ending,
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b'0'; MAX_SIZE_LINE];
        assert_eq!(decode_chunked(&long).ending, Ending::Incomplete);
        assert_eq!(
            decode_chunked(&[b'0'; MAX_SIZE_LINE + 1]).ending,
            Ending::Error
        );
    }

    #[test]
    fn sse_reference_splits_events_and_strips_usage_only_ones() {
        let s: &[u8] = b": hi\r\n\r\ndata: {\"choices\":[1],\"usage\":null}\n\ndata: {\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":3}}\r\rtail";
        let evs = sse_events(s);
        assert_eq!(evs.len(), 4);
        assert_eq!(
            evs[2].data,
            b"{\"choices\":[],\n\"usage\":{\"prompt_tokens\":3}}"
        );
        assert!(!evs[3].complete);
        let (out, usage, stripped) = sse_expected(s, true);
        assert_eq!(
            out,
            b": hi\r\n\r\ndata: {\"choices\":[1],\"usage\":null}\n\ntail"
        );
        assert_eq!(usage.map(|u| u.prompt), Some(3));
        assert!(stripped);
        let (out, usage2, _) = sse_expected(s, false);
        assert!(out.is_empty());
        assert_eq!(usage2, usage);
    }
}
