//! The tap: what the gateway reads from a response body while it streams through — token
//! usage (a JSON body or an SSE stream), and a copy of the body when it is to be cached —
//! and the accounting of that usage once the body ends (or breaks: what was used was used).

use super::candidates::{AiRequest, Candidate};
use super::forward::Request;
use crate::ai::usage::{JsonUsageScanner, SseScanner};
use crate::ai::{anthropic, gemini};
use crate::config::Api;
use crate::http::ResponseHead;
use crate::worker::Worker;

/// What is read from a response body on its way through. In `filter` mode the SSE scanner
/// decides what is forwarded (it removes the usage chunk the gateway asked for), or the
/// translation of an Anthropic body does.
#[derive(Default)]
pub struct Tap {
    json: Option<JsonUsageScanner>,
    sse: Option<SseScanner>,
    /// The SSE scanner's output replaces the payload.
    pub filter: bool,
    capture: Option<Vec<u8>>,
    capture_max: usize,
    /// The filtered bytes of the last `observe` or `finish` (reused across reads).
    pub filtered: Vec<u8>,
    /// Bytes of the request body, for a prompt estimate.
    prompt_bytes: u64,
    /// Translation of an Anthropic upstream's body to OpenAI's shape (it runs first: the
    /// scanners read the translated body).
    translate: Option<Translate>,
    /// The translated bytes of the last piece (reused across reads).
    translated: Vec<u8>,
    /// Whether a stream translation produced anything yet: a provider's event stream in
    /// which it found no event is not an answer (a JSON body under `text/event-stream`, an
    /// empty stream), and must not reach the client as an empty success.
    translated_any: bool,
    /// Why the body could not be translated, once it is known.
    failed: Option<&'static str>,
    /// An Anthropic client's answer from an OpenAI upstream, translated to Anthropic's
    /// shape after the scanners read it.
    outbound: Option<Outbound>,
    /// An Anthropic stream passed through to an Anthropic client: translated only for the
    /// scanners to read its usage.
    shadow: Option<anthropic::StreamTranslator>,
}

/// How an OpenAI body becomes an Anthropic one (for an Anthropic client).
enum Outbound {
    /// An event stream, chunk by chunk.
    Stream(anthropic::inbound::ToAnthropicStream),
    /// A chat completion, translated once whole.
    Message(Vec<u8>),
    /// An error body of this status, translated once whole.
    Error(Vec<u8>, u16),
}

impl Outbound {
    /// Reads a piece; a stream's completed events go to `out` now.
    fn feed(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Outbound::Stream(t) => t.feed(payload, out),
            Outbound::Message(b) | Outbound::Error(b, _) => {
                if b.len() + payload.len() > anthropic::MAX_BODY {
                    return Err("larger than 16 MiB");
                }
                b.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    /// End of the body: what is left, translated, goes to `out`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Outbound::Stream(t) => t.finish(out),
            Outbound::Message(b) => {
                let body = anthropic::inbound::response_from_openai(b)
                    .map_err(|_| "not a chat completion")?;
                out.extend_from_slice(&body);
            }
            Outbound::Error(b, status) => {
                out.extend_from_slice(&anthropic::inbound::error_from_openai(b, *status));
            }
        }
        Ok(())
    }
}

/// Now, in Unix seconds (the `created` of translated chunks).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How an Anthropic or Gemini body becomes an OpenAI one.
enum Translate {
    /// An Anthropic event stream, event by event.
    Stream(anthropic::StreamTranslator),
    /// A Gemini event stream, event by event.
    GeminiStream(gemini::StreamTranslator),
    /// An answer of this API, translated once whole (the model asked for, in case the
    /// answer names none).
    Message(Vec<u8>, Api, String),
    /// An error body of this API and status, translated once whole.
    Error(Vec<u8>, Api, u16),
}

impl Translate {
    /// Reads a piece; a stream's completed events go to `out` now.
    fn feed(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Translate::Stream(t) => t.feed(payload, out),
            Translate::GeminiStream(t) => t.feed(payload, out),
            Translate::Message(b, ..) | Translate::Error(b, ..) => {
                if b.len() + payload.len() > anthropic::MAX_BODY.min(gemini::MAX_BODY) {
                    return Err("larger than 16 MiB");
                }
                b.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    /// End of the body: what is left, translated, goes to `out`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Translate::Stream(t) => t.finish(out),
            Translate::GeminiStream(t) => t.finish(out),
            Translate::Message(b, api, model) => {
                let body = match api {
                    Api::Gemini => gemini::response_to_openai(b, unix_now(), model)
                        .map_err(|_| "not a Gemini GenerateContentResponse")?,
                    _ => anthropic::response_to_openai(b, unix_now())
                        .map_err(|_| "not an Anthropic message")?,
                };
                out.extend_from_slice(&body);
            }
            Translate::Error(b, api, status) => out.extend_from_slice(&match api {
                Api::Gemini => gemini::error_to_openai(b, *status),
                _ => anthropic::error_to_openai(b, *status),
            }),
        }
        Ok(())
    }
}

/// Bytes per prompt token in an estimate (OpenAI's rule of thumb for English text).
const BYTES_PER_TOKEN: u64 = 4;

/// Whether a response is an event stream.
pub fn is_event_stream(resp: &ResponseHead) -> bool {
    resp.header("content-type")
        .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"))
}

impl Tap {
    /// The tap for `resp`: usage is read from 2xx bodies of model-routed requests that are
    /// not content-encoded.
    ///
    /// An Anthropic or Gemini upstream's body (answers and errors alike) is translated to
    /// OpenAI's shape first; it is then forwarded re-chunked, since its length changes.
    pub fn for_response(ai: Option<&AiRequest>, api: Api, resp: &ResponseHead) -> Tap {
        let mut tap = Tap::default();
        let Some(ai) = ai else {
            return tap;
        };
        let identity = resp
            .header("content-encoding")
            .is_none_or(|v| v.eq_ignore_ascii_case(b"identity"));
        // The gateway dropped `accept-encoding`, so an encoded body is not one it asked for.
        let ok = (200..300).contains(&resp.status);
        if identity {
            // First the provider's shape to OpenAI's (what the scanners read)...
            let translate = match (ai.client, api) {
                (Api::OpenAi, Api::Anthropic) | (_, Api::Gemini) => Some(if !ok {
                    Translate::Error(Vec::new(), api, resp.status)
                } else if is_event_stream(resp) {
                    match api {
                        Api::Gemini => Translate::GeminiStream(gemini::StreamTranslator::new(
                            unix_now(),
                            ai.info.model.as_deref().unwrap_or(""),
                        )),
                        _ => Translate::Stream(anthropic::StreamTranslator::new(unix_now())),
                    }
                } else {
                    Translate::Message(Vec::new(), api, ai.info.model.clone().unwrap_or_default())
                }),
                _ => None,
            };
            // ...then OpenAI's to an Anthropic client's.
            let outbound = (ai.client == Api::Anthropic && api != Api::Anthropic).then(|| {
                if !ok {
                    Outbound::Error(Vec::new(), resp.status)
                } else if is_event_stream(resp) {
                    Outbound::Stream(anthropic::inbound::ToAnthropicStream::new())
                } else {
                    Outbound::Message(Vec::new())
                }
            });
            // An Anthropic stream passed through to an Anthropic client: a JSON message's
            // usage is read as it is, a stream's through a translation.
            if ai.client == Api::Anthropic && api == Api::Anthropic && ok && is_event_stream(resp) {
                tap.shadow = Some(anthropic::StreamTranslator::new(0));
            }
            tap.filter = translate.is_some() || outbound.is_some();
            tap.translate = translate;
            tap.outbound = outbound;
        }
        if !(200..300).contains(&resp.status) || !identity {
            return tap;
        }
        tap.prompt_bytes = ai.original.len() as u64;
        if is_event_stream(resp) {
            tap.sse = Some(SseScanner::new(ai.strip_usage_chunk));
            tap.filter |= ai.strip_usage_chunk;
        } else {
            tap.json = Some(JsonUsageScanner::new());
        }
        tap
    }

    /// Also keeps a copy of the body, up to `max` bytes (past it the copy is dropped).
    pub fn capture(&mut self, max: u64) {
        self.capture = Some(Vec::new());
        self.capture_max = usize::try_from(max).unwrap_or(usize::MAX);
    }

    /// The captured body, when the whole of it was kept.
    pub fn take_capture(&mut self) -> Option<Vec<u8>> {
        self.capture.take()
    }

    /// Reads one piece of payload; in filter mode what is to be forwarded is in `filtered`.
    pub fn observe(&mut self, payload: &[u8]) {
        if let Some(t) = &mut self.shadow {
            let mut translated = std::mem::take(&mut self.translated);
            translated.clear();
            t.feed(payload, &mut translated);
            self.scan(&translated);
            self.translated = translated;
            return;
        }
        // The provider's shape to OpenAI's, scanned, then (for an Anthropic client) to
        // Anthropic's: what the client gets.
        let mut translated = std::mem::take(&mut self.translated);
        translated.clear();
        let openai: &[u8] = match &mut self.translate {
            Some(t) => {
                if self.failed.is_none() {
                    if let Err(e) = t.feed(payload, &mut translated) {
                        self.failed = Some(e);
                    }
                }
                self.translated_any |= !translated.is_empty();
                &translated
            }
            None => payload,
        };
        self.scan(openai);
        if self.outbound.is_some() {
            self.filtered.clear();
            if let (Some(o), None) = (&mut self.outbound, self.failed) {
                if let Err(e) = o.feed(openai, &mut self.filtered) {
                    self.failed = Some(e);
                }
            }
        }
        self.translated = translated;
    }

    /// Why the body could not be translated (the exchange then fails as a bad answer).
    pub fn failed(&self) -> Option<&'static str> {
        self.failed
    }

    /// Whether the body is translated only once whole (a message or an error): the
    /// response head then waits for it, so a body that cannot be translated is still a 502.
    pub fn whole(&self) -> bool {
        matches!(
            self.translate,
            Some(Translate::Message(..) | Translate::Error(..))
        ) || matches!(
            self.outbound,
            Some(Outbound::Message(_) | Outbound::Error(..))
        )
    }

    /// Whether the body is being translated (it is then not cached: the cache keeps what
    /// the upstream sent).
    pub fn translating(&self) -> bool {
        self.translate.is_some() || self.outbound.is_some()
    }

    /// Reads one piece of (translated) payload; in filter mode what is to be forwarded is
    /// in `filtered`.
    fn scan(&mut self, payload: &[u8]) {
        self.filtered.clear();
        let translating = self.translate.is_some();
        if let Some(j) = &mut self.json {
            j.feed(payload);
        }
        match &mut self.sse {
            Some(s) if s.strips() => s.feed(payload, &mut self.filtered),
            Some(s) => {
                // Not stripping, the scanner forwards nothing itself: only a translation
                // filters, and its bytes go out as they are.
                let mut none = Vec::new();
                s.feed(payload, &mut none);
                if translating {
                    self.filtered.extend_from_slice(payload);
                }
            }
            None if translating => self.filtered.extend_from_slice(payload),
            None => {}
        }
        if let Some(c) = &mut self.capture {
            if c.len() + payload.len() > self.capture_max {
                self.capture = None;
            } else {
                c.extend_from_slice(payload);
            }
        }
    }

    /// End of the body: in filter mode, what the SSE scanner still held goes to `filtered`.
    pub fn finish(&mut self) {
        if let Some(t) = &mut self.shadow {
            let mut tail = Vec::new();
            t.finish(&mut tail);
            self.scan(&tail);
            // Nothing of the translation is forwarded: the client gets the upstream's bytes.
            self.filtered.clear();
            return;
        }
        let mut tail = Vec::new();
        if let (Some(t), None) = (&mut self.translate, self.failed) {
            if let Err(e) = t.finish(&mut tail) {
                self.failed = Some(e);
            }
            self.translated_any |= !tail.is_empty();
            if !self.translated_any
                && matches!(t, Translate::Stream(_) | Translate::GeminiStream(_))
                && self.failed.is_none()
            {
                self.failed = Some("the provider's event stream held no event");
            }
        }
        if !tail.is_empty() {
            self.scan(&tail);
        } else {
            self.filtered.clear();
        }
        if self.outbound.is_some() {
            // What the translation still held goes through the client's translation too.
            self.filtered.clear();
            if let (Some(o), None) = (&mut self.outbound, self.failed) {
                let fed = if tail.is_empty() {
                    Ok(())
                } else {
                    o.feed(&tail, &mut self.filtered)
                };
                if let Err(e) = fed.and_then(|()| o.finish(&mut self.filtered)) {
                    self.failed = Some(e);
                }
            }
            return;
        }
        if let (Some(s), true) = (&mut self.sse, self.filter) {
            if s.strips() {
                s.finish(&mut self.filtered);
            }
        }
    }

    /// The usage the body reported so far.
    pub fn usage(&self) -> Option<crate::ai::usage::Usage> {
        match (&self.sse, &self.json) {
            (Some(s), _) => s.usage(),
            (None, Some(j)) => j.usage(),
            _ => None,
        }
    }

    /// For a stream that ended (or broke) without reporting its usage after sending data:
    /// an estimate — the prompt at [`BYTES_PER_TOKEN`] bytes a token, one completion token
    /// per data event (OpenAI-style streams send about one token per chunk). What was
    /// generated was paid for, so it is counted and charged rather than dropped.
    ///
    /// A 2xx answer (a JSON body, or a stream before its first data event) that `broke`
    /// before its usage is estimated at its prompt alone: the provider read the prompt and
    /// bills it, and a client that hangs up before the usage arrives must not make the
    /// request free.
    pub fn estimated_usage(&self, broke: bool) -> Option<crate::ai::usage::Usage> {
        let events = self.sse.as_ref().map_or(0, SseScanner::data_events);
        let answered = self.sse.is_some() || self.json.is_some();
        (events > 0 || (broke && answered)).then(|| crate::ai::usage::Usage {
            prompt: self.prompt_bytes.div_ceil(BYTES_PER_TOKEN),
            completion: events,
            cached_prompt: 0,
        })
    }
}

/// Counts the tokens and dollars a response reported, and charges the client's local token
/// budget (cluster token budgets and spend budgets are settled by their reservation, with
/// the tokens and dollars returned here). Runs also when the body `broke` midway: what was
/// used was used.
pub fn account_usage(
    worker: &Worker,
    req: &Request<'_>,
    candidate: Candidate<'_>,
    tap: &Tap,
    broke: bool,
) -> Option<(u64, f64)> {
    let (_, model) = candidate.model?;
    let (u, estimated) = match tap.usage() {
        Some(u) => (u, false),
        None => (tap.estimated_usage(broke)?, true),
    };
    let tokens = u.prompt.saturating_add(u.completion);
    let cost = model.price.map_or(0.0, |p| p.cost(&u));
    let client = req.client;
    worker
        .stats
        .note_usage(&model.name, client.map(|c| &*c.name), &u, cost, estimated);
    charge_local_tokens(req, tokens);
    Some((tokens, cost))
}

/// Charges the client's local token budget (a cluster one is settled by its reservation).
pub fn charge_local_tokens(req: &Request<'_>, tokens: u64) {
    if let Some(c) = req.client {
        if let Some((spec, limiter)) = req.limit_at(c.token_limit) {
            if spec.scope == crate::config::LimitScope::Local {
                limiter.charge(c.name.as_bytes(), tokens, crate::clock::monotonic_nanos());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_dropped_past_its_bound() {
        let mut t = Tap::default();
        t.capture(5);
        t.observe(b"abc");
        t.observe(b"de");
        assert_eq!(t.take_capture().as_deref(), Some(&b"abcde"[..]));
        let mut t = Tap::default();
        t.capture(5);
        t.observe(b"abc");
        t.observe(b"def");
        t.observe(b"g");
        assert_eq!(t.take_capture(), None, "a partial body is never cached");
    }

    #[test]
    fn a_stream_without_usage_is_estimated() {
        let mut t = Tap {
            sse: Some(SseScanner::new(true)),
            prompt_bytes: 41,
            ..Tap::default()
        };
        assert_eq!(
            t.estimated_usage(false),
            None,
            "nothing generated, nothing estimated"
        );
        let u = t.estimated_usage(true).expect("a broken answer's prompt");
        assert_eq!((u.prompt, u.completion), (11, 0));
        for i in 0..3 {
            t.observe(
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"w{i}\"}}}}]}}\n\n")
                    .as_bytes(),
            );
        }
        t.observe(b": keep-alive\n\n");
        assert_eq!(t.usage(), None, "the stream broke before its usage");
        let u = t.estimated_usage(false).expect("an estimate");
        assert_eq!((u.prompt, u.completion), (11, 3));
        t.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n");
        assert_eq!(t.usage().map(|u| (u.prompt, u.completion)), Some((9, 4)));
        assert_eq!(
            t.sse.as_ref().map(SseScanner::data_events),
            Some(3),
            "neither the usage chunk nor [DONE] is a data event"
        );
    }

    #[test]
    fn translated_answers_are_read_whole_and_bounded() {
        let mut t = Tap {
            json: Some(JsonUsageScanner::new()),
            translate: Some(Translate::Message(
                Vec::new(),
                Api::Anthropic,
                String::new(),
            )),
            filter: true,
            ..Tap::default()
        };
        assert!(t.whole());
        let body = br#"{"id":"m","type":"message","model":"c","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#;
        for piece in body.chunks(7) {
            t.observe(piece);
            assert!(
                t.filtered.is_empty(),
                "nothing goes out before the whole answer"
            );
        }
        t.finish();
        assert_eq!(t.failed(), None);
        assert!(t.filtered.starts_with(br#"{"choices""#));
        assert_eq!(t.usage().map(|u| (u.prompt, u.completion)), Some((3, 1)));
        // Not a message: the exchange fails (a 502) rather than forwarding it untranslated.
        let mut t = Tap {
            translate: Some(Translate::Message(
                Vec::new(),
                Api::Anthropic,
                String::new(),
            )),
            filter: true,
            ..Tap::default()
        };
        t.observe(b"<html>");
        t.finish();
        assert_eq!(t.failed(), Some("not an Anthropic message"));
        // Past the bound the body is not kept.
        let mut t = Tap {
            translate: Some(Translate::Error(Vec::new(), Api::Anthropic, 500)),
            filter: true,
            ..Tap::default()
        };
        t.observe(&vec![b' '; anthropic::MAX_BODY]);
        assert_eq!(t.failed(), None);
        t.observe(b"x");
        assert_eq!(t.failed(), Some("larger than 16 MiB"));
    }

    /// A provider stream in which the translator finds no event (a JSON body under
    /// `text/event-stream`, or nothing) fails the exchange instead of an empty success; a
    /// stream that translated something and then broke is not this failure.
    #[test]
    fn a_stream_without_a_single_event_is_a_failure() {
        let gemini = || gemini::StreamTranslator::new(1, "m");
        for body in [
            &br#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}"#[..],
            b"",
        ] {
            let mut t = Tap {
                translate: Some(Translate::GeminiStream(gemini())),
                filter: true,
                ..Tap::default()
            };
            t.observe(body);
            t.finish();
            assert_eq!(
                t.failed(),
                Some("the provider's event stream held no event"),
                "{body:?}"
            );
        }
        let mut t = Tap {
            translate: Some(Translate::Stream(anthropic::StreamTranslator::new(1))),
            filter: true,
            ..Tap::default()
        };
        t.observe(br#"{"type":"message","content":[]}"#);
        t.finish();
        assert!(t.failed().is_some());
        let mut t = Tap {
            translate: Some(Translate::GeminiStream(gemini())),
            filter: true,
            ..Tap::default()
        };
        t.observe(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\n\n");
        t.finish();
        assert_eq!(t.failed(), None, "cut short, not empty");
    }

    #[test]
    fn json_usage_is_read_in_pieces() {
        let mut t = Tap {
            json: Some(JsonUsageScanner::new()),
            ..Tap::default()
        };
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        for piece in body.chunks(5) {
            t.observe(piece);
        }
        let u = t.usage().expect("usage");
        assert_eq!((u.prompt, u.completion), (7, 3));
    }
}
