//! Candidates: the places a request may go, in order. A plain route has one, its upstream;
//! a `route_by_model` route reads the body's `model` and goes to that model's upstream, then
//! to each of its `fallbacks`. For each candidate the body is rewritten where it must be
//! (`provider_model`, the `include_usage` the gateway adds) and the upstream head rebuilt.

use super::forward::Request;
use super::headers::{self, UpstreamFraming};
use super::request_body::RequestBody;
use crate::ai::body::RequestInfo;
use crate::ai::{anthropic, gemini};
use crate::config::ai::{Model, Models};
use crate::config::{Api, Upstream};
use crate::error::ProxyError;

/// One place a try can go: an upstream and, on model-routed routes, the model it serves.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Where the request goes.
    pub upstream: &'a Upstream,
    /// The `[models]` entry (index and definition), on model-routed routes.
    pub model: Option<(usize, &'a Model)>,
}

impl Candidate<'_> {
    /// The model's name, or "".
    pub fn model_name(&self) -> &str {
        self.model.map_or("", |(_, m)| m.name.as_str())
    }
}

/// What the AI layer learned of a model-routed request's body.
#[derive(Debug)]
pub struct AiRequest {
    /// The body as the client sent it (each candidate's body is derived from it).
    pub original: Vec<u8>,
    /// Where `model`, `stream` and `stream_options` are in it.
    pub info: RequestInfo,
    /// The gateway added `include_usage`, so the usage-only chunk must not reach the client.
    pub strip_usage_chunk: bool,
    /// The body in the upstream's API for each candidate model (by index) whose upstream
    /// speaks another API than the client, translated once up front so a refusal is known
    /// before any try.
    pub translated: Vec<(usize, Vec<u8>)>,
    /// The API the client speaks: OpenAI chat completions, or the Anthropic Messages API
    /// (`POST .../v1/messages`), whose answers and errors it then gets in Anthropic's shape.
    pub client: Api,
}

impl AiRequest {
    /// Whether the client asked for a stream.
    pub fn streaming(&self) -> bool {
        self.info.stream
    }
}

/// `body` (in `client`'s API) in the API of `upstream` for `model`, or None when they speak
/// the same one. An Anthropic client's request for a Gemini upstream goes through OpenAI's
/// shape, the one both translations share.
fn translate_request(
    client: Api,
    upstream: &Upstream,
    body: &[u8],
    model: &str,
) -> Option<Result<Vec<u8>, String>> {
    let to_openai =
        || anthropic::inbound::request_to_openai(body, model).map_err(|e| e.to_string());
    match (client, upstream.api) {
        (c, u) if c == u => None,
        (Api::Anthropic, Api::OpenAi) => Some(to_openai()),
        (Api::Anthropic, Api::Gemini) => {
            Some(to_openai().and_then(|b| gemini::request_to_gemini(&b).map_err(|e| e.to_string())))
        }
        (_, Api::Anthropic) => Some(
            anthropic::request_to_anthropic(body, model, upstream.default_max_tokens)
                .map_err(|e| e.to_string()),
        ),
        (_, Api::Gemini) => Some(gemini::request_to_gemini(body).map_err(|e| e.to_string())),
        // No client speaks Gemini's API: nothing to translate from.
        (_, Api::OpenAi) => None,
    }
}

/// The candidates of a model-routed request whose body (in `client`'s API) is `body`: the
/// model named in it, then its fallbacks (those whose upstream exists). Errors are the
/// client's: not JSON, no model, an unknown model, a field the model's upstream API cannot
/// be given.
pub fn by_model<'c>(
    models: &'c Models,
    upstreams: &'c [std::sync::Arc<Upstream>],
    body: Vec<u8>,
    client: Api,
) -> Result<(Vec<Candidate<'c>>, AiRequest), ProxyError> {
    let info = crate::ai::body::inspect(&body).map_err(|e| ProxyError::BadJson(e.to_string()))?;
    let name = info.model.as_deref().ok_or(ProxyError::MissingModel)?;
    let Some(&first) = models.by_name.get(name) else {
        return Err(ProxyError::UnknownModel(name.to_string()));
    };
    let fallbacks = models.list.get(first).map_or(&[][..], |m| &m.fallbacks[..]);
    let mut translated = Vec::new();
    let mut refusal = None;
    let candidates: Vec<Candidate<'c>> = std::iter::once(first)
        .chain(fallbacks.iter().copied())
        .filter_map(|idx| {
            let m = models.list.get(idx)?;
            let upstream = upstreams.get(m.upstream)?;
            let model = m.provider_model.as_deref().unwrap_or(&m.name);
            match translate_request(client, upstream, &body, model) {
                None => {}
                Some(Ok(b)) => translated.push((idx, b)),
                // A fallback that cannot take this request is skipped; the model asked for
                // refuses it, naming the field.
                Some(Err(e)) => {
                    if idx == first {
                        refusal = Some(e);
                    }
                    return None;
                }
            }
            Some(Candidate {
                upstream,
                model: Some((idx, m)),
            })
        })
        .collect();
    if let Some(e) = refusal {
        return Err(ProxyError::Untranslatable(e));
    }
    // An Anthropic client's stream is translated (or passed through) whole: only an
    // OpenAI client can be sent a usage chunk it did not ask for.
    let strip_usage_chunk =
        client == Api::OpenAi && info.stream && info.include_usage != Some(true);
    Ok((
        candidates,
        AiRequest {
            original: body,
            info,
            strip_usage_chunk,
            translated,
            client,
        },
    ))
}

/// The request as one candidate's upstream receives it: the head (and, for model-routed
/// requests, the body in `RequestBody::Retained`). Buffers are reused across candidates.
pub struct UpstreamRequest {
    /// The head bytes to send.
    pub head: Vec<u8>,
    /// The request target (reused buffer).
    target: String,
}

impl UpstreamRequest {
    /// Empty buffers sized for `req`.
    pub fn new(req: &Request<'_>) -> Self {
        Self {
            head: Vec::with_capacity(512 + req.head.headers.len() * 48),
            target: String::with_capacity(req.head.target.len() + 64),
        }
    }

    /// Builds the head (and, for model-routed requests, the body) for `candidate`.
    pub fn prepare(
        &mut self,
        req: &Request<'_>,
        candidate: Candidate<'_>,
        ai: Option<&AiRequest>,
        body: &mut RequestBody,
    ) {
        let up = candidate.upstream;
        let translate = ai.is_some_and(|a| a.client != up.api);
        if let (Some(a), RequestBody::Retained(b)) = (ai, &mut *body) {
            b.clear();
            if translate {
                let idx = candidate.model.map(|(i, _)| i);
                if let Some((_, t)) = a.translated.iter().find(|(i, _)| Some(*i) == idx) {
                    b.extend_from_slice(t);
                }
            } else {
                let provider_model = candidate
                    .model
                    .and_then(|(_, m)| m.provider_model.as_deref());
                crate::ai::body::rewrite(
                    &a.original,
                    &a.info,
                    provider_model,
                    a.strip_usage_chunk,
                    b,
                );
            }
        }
        let head = req.head;
        self.target.clear();
        match (up.api, ai) {
            // The Messages API has one endpoint, whatever path the client used.
            (Api::Anthropic, Some(_)) => {
                self.target.push_str(&up.base_path);
                self.target.push_str("/messages");
            }
            // Gemini names the model and the streaming method in the path.
            (Api::Gemini, Some(a)) => {
                let model = candidate.model.map_or("", |(_, m)| {
                    m.provider_model.as_deref().unwrap_or(m.name.as_str())
                });
                gemini::target(&up.base_path, model, a.streaming(), &mut self.target);
            }
            // An Anthropic client's request, translated: the chat completions endpoint
            // under the upstream's base, as `/messages` is under Anthropic's.
            (_, Some(_)) if translate => {
                self.target.push_str(&up.base_path);
                self.target.push_str("/chat/completions");
            }
            _ => crate::router::upstream_target(
                req.route,
                &up.base_path,
                head.path(),
                head.query(),
                &mut self.target,
            ),
        }
        let framing = match &*body {
            RequestBody::None => {
                if matches!(head.method.as_str(), "POST" | "PUT" | "PATCH") {
                    UpstreamFraming::Length(0)
                } else {
                    UpstreamFraming::None
                }
            }
            RequestBody::Retained(b) => UpstreamFraming::Length(b.len() as u64),
            RequestBody::Streamed(n) => UpstreamFraming::Length(*n),
            RequestBody::StreamedChunked => UpstreamFraming::Chunked,
        };
        self.head.clear();
        headers::write_upstream_head(&mut self.head, req, up, &self.target, framing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[upstreams.a]
url = "http://127.0.0.1:9"
[upstreams.b]
url = "http://127.0.0.1:10"
[models.big]
upstream = "a"
fallbacks = ["small", "other"]
[models.small]
upstream = "b"
provider_model = "small-v2"
[models.other]
upstream = "a"
[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
route_by_model = true
"#;

    fn config() -> crate::config::Config {
        crate::config::load_bytes(CONFIG.as_bytes(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    #[test]
    fn model_then_fallbacks_in_order() {
        let cfg = config();
        let body = br#"{"model":"big","messages":[],"stream":true}"#.to_vec();
        let (cands, ai) =
            by_model(&cfg.models, &cfg.upstreams, body, Api::OpenAi).expect("routable");
        let names: Vec<(&str, &str)> = cands
            .iter()
            .map(|c| (c.model_name(), c.upstream.name.as_str()))
            .collect();
        assert_eq!(names, [("big", "a"), ("small", "b"), ("other", "a")]);
        assert!(ai.streaming());
        assert!(ai.strip_usage_chunk, "the gateway asks for usage itself");
        let (cands, ai) = by_model(
            &cfg.models,
            &cfg.upstreams,
            br#"{"model":"small"}"#.to_vec(),
            Api::OpenAi,
        )
        .expect("routable");
        assert_eq!(
            cands.len(),
            1,
            "fallbacks are not transitive from the fallback"
        );
        assert!(!ai.streaming() && !ai.strip_usage_chunk);
    }

    #[test]
    fn client_errors() {
        let cfg = config();
        let cases: [(&[u8], &str); 4] = [
            (b"not json", "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (br#"{"messages":[]}"#, "missing_model"),
            (br#"{"model":"gpt-9"}"#, "model_not_found"),
        ];
        for (body, code) in cases {
            let err = by_model(&cfg.models, &cfg.upstreams, body.to_vec(), Api::OpenAi)
                .err()
                .unwrap_or_else(|| panic!("{} routed", String::from_utf8_lossy(body)));
            assert_eq!(err.classify().2, code, "{}", String::from_utf8_lossy(body));
        }
    }
}
