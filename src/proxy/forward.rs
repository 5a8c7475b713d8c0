//! One request's way through the gateway after routing, as an orchestrator over the stages
//! that each live in their own module:
//!
//! 1. [`admission`]: the route's in-flight slot, rate limits, the client's token budget;
//! 2. [`request_body`]: the body plan (kept whole, or streamed) and reading a kept body;
//! 3. [`candidates`]: where the request may go (model and fallbacks) and each one's request;
//! 4. [`cache`]: answer from the response cache, or plan to fill it;
//! 5. the try loop below: [`attempt`]s on endpoints the balancer picks, with
//!    [`retry::RetryState`] deciding after each one, [`quota`] shedding exhausted providers;
//! 6. [`pipe`]: the response to the client, through the [`tap`], then accounting, cache
//!    store and the connection back to the pool.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::attempt::{self, ClientSide, Exchange};
use super::candidates::{self, AiRequest, Candidate, UpstreamRequest};
use super::failure::{Failure, Phase};
use super::io::send_continue;
use super::request_body::{self, ReadLimits, RequestBody};
use super::retry::{self, Attempt, Next, RetryState};
use super::{admission, cache, pipe, quota, Outcome};
use crate::ai::cache::ResponseCache;
use crate::bufio::ReadBuf;
use crate::config::ai::Client;
use crate::config::{Config, LimitId, LimitSpec, Route, ServerSettings, Upstream};
use crate::error::ProxyError;
use crate::http::{BodyFraming, RequestHead};
use crate::limit::KeyedLimiter;
use crate::listener::ClientStream;
use crate::worker::Worker;

/// Everything the stages need to know about a routed request.
pub struct Request<'a> {
    /// The parsed client head.
    pub head: &'a RequestHead,
    /// The matched route.
    pub route: &'a Route,
    /// The route's rate limit and its limiter, if any.
    pub limit: Option<(&'a LimitSpec, &'a KeyedLimiter)>,
    /// The route's upstream; None for `route_by_model` routes (the model picks it).
    pub upstream: Option<&'a Upstream>,
    /// The whole config generation (models, upstreams, limits).
    pub config: &'a Config,
    /// The limiters of `config.limits`, same order.
    pub limiters: &'a [Arc<KeyedLimiter>],
    /// The authenticated `[auth]` client, if the route requires one.
    pub client: Option<&'a Client>,
    /// The client's spend cells, when it has a spend budget.
    pub spend: Option<&'a Arc<crate::limit::spend::ClientSpend>>,
    /// The response cache.
    pub cache: &'a ResponseCache,
    /// Server limits.
    pub server: &'a ServerSettings,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub client_tls: bool,
    /// The request id sent both ways.
    pub request_id: &'a str,
    /// When the request's head was parsed (for time to first byte).
    pub started: Instant,
}

impl<'a> Request<'a> {
    /// The limit at index `id` of the config and its limiter.
    pub fn limit_at(&self, id: Option<LimitId>) -> Option<(&'a LimitSpec, &'a KeyedLimiter)> {
        let i = id?;
        Some((
            self.config.limits.get(i)?.as_ref(),
            self.limiters.get(i)?.as_ref(),
        ))
    }
}

/// Proxies one routed request: the stages in order. A failure says how far it got
/// ([`Failure::phase`]): the caller answers it, or cuts the connection when the response
/// had started.
pub async fn forward(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    client: &mut ClientStream,
    client_buf: &mut ReadBuf,
    scratch: &mut Vec<u8>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let (_slot, deferred) = admission::admit(worker, req, &mut outcome.rate).await?;

    // Model-routed requests and cached routes need the whole body in hand: to read the
    // model, to key the cache, and to re-send it to a fallback.
    let route = req.route;
    let whole = route.route_by_model || route.cache_ttl.is_some();
    let server = req.server;
    let mut body = request_body::plan(
        req.head.framing,
        whole,
        server.max_body_bytes,
        server.max_retry_body_bytes,
    )?;
    let mut continue_sent = false;
    // Held until the response is done: the kept body (and its rewrites) live that long.
    let mut _body_reservation = None;
    if let RequestBody::Retained(buf) = &mut body {
        let limits = ReadLimits {
            max: server.max_body_bytes,
            idle: server.idle_timeout,
            deadline: Instant::now() + server.body_read_timeout,
            copies: if route.route_by_model { 2 } else { 1 },
        };
        // Room is checked before `100 Continue`: a refused client never sends its body.
        let mut reservation = worker.body_budget.reserve(0, server.body_buffer_bytes)?;
        if let BodyFraming::Length(n) = req.head.framing {
            reservation.grow_to(n.saturating_mul(limits.copies))?;
        }
        if req.head.expect_continue {
            send_continue(client, scratch, server.idle_timeout).await?;
            continue_sent = true;
        }
        request_body::read_whole(
            client,
            client_buf,
            req.head.framing,
            buf,
            &mut reservation,
            &limits,
        )
        .await?;
        _body_reservation = Some(reservation);
        // Only a body fully read counts: the connection loop keeps a connection whose
        // request failed only when nothing of that request is left on the wire.
        outcome.bytes_in = buf.len() as u64;
    }

    // A cluster token reservation: settled below with the usage, refunded when dropped.
    let mut reservation = None;
    // The prices it was reserved at.
    let mut reserved_price = None;
    let (candidates, ai) = if route.route_by_model {
        let bytes = match &mut body {
            RequestBody::Retained(b) => std::mem::take(b),
            _ => Vec::new(),
        };
        let client = if crate::ai::anthropic::inbound::is_messages_path(req.head.path()) {
            crate::config::Api::Anthropic
        } else {
            crate::config::Api::OpenAi
        };
        let (list, ai) =
            candidates::by_model(&req.config.models, &req.config.upstreams, bytes, client)?;
        body = RequestBody::Retained(Vec::with_capacity(ai.original.len() + 48));
        // Reserved at the highest prices among the model and its fallbacks: whichever
        // answers, the reservation covers its estimate, so concurrent requests that fall
        // back to a pricier model cannot together run past the budget.
        let price = crate::config::ai::Price::ceiling(list.iter().filter_map(|c| c.model?.1.price));
        reserved_price = price;
        reservation = admission::reserve(
            worker,
            req,
            deferred,
            &ai.original,
            price,
            &mut outcome.rate,
        )
        .await?;
        (list, Some(ai))
    } else {
        let list = req.upstream.map(|upstream| Candidate {
            upstream,
            model: None,
        });
        (list.into_iter().collect(), None)
    };
    let Some(&first) = candidates.first() else {
        return Err(ProxyError::NoRoute {
            method: req.head.method.clone(),
            path: req.head.path().to_string(),
        }
        .into());
    };
    outcome.model = first.model.map(|(i, _)| i);

    let cache_plan = cache::lookup(worker, req, first, ai.as_ref(), &body);
    outcome.cache = cache_plan.status();
    if let cache::CachePlan::Hit(hit) = &cache_plan {
        let draining = worker.drain.is_draining();
        return cache::serve_hit(req, draining, client, scratch, hit, outcome)
            .await
            .map_err(Failure::response);
    }

    let mut side = ClientSide {
        client,
        client_buf,
        scratch,
        continue_sent,
        left_waiting: false,
    };
    let (exchange, answered_by) =
        match exchange(worker, req, &candidates, ai.as_ref(), &mut body, &mut side).await {
            Ok(x) => x,
            Err(f) => {
                if let (true, Some(ai)) = (side.left_waiting, &ai) {
                    // The provider had the request: its prompt was read, and may well be
                    // billed, whatever the client does next. Charged at the reserved prices
                    // rather than refunded, so leaving just before each answer is not a way
                    // around a token or spend budget.
                    let prompt = (ai.original.len() as u64).div_ceil(4);
                    super::tap::charge_local_tokens(req, prompt);
                    if let Some(r) = reservation {
                        let price = reserved_price.map_or(0.0, |p| p.prompt);
                        r.settle(crate::cluster::limits::Used {
                            tokens: Some(prompt),
                            micros: Some(crate::limit::spend::micros(prompt as f64 * price)),
                        });
                    }
                }
                return Err(f);
            }
        };
    if let RequestBody::Streamed(n) = body {
        outcome.bytes_in = n;
    }
    let (client, scratch) = (side.client, side.scratch);
    // The request is sent; its response can take minutes (a stream). The client's read
    // buffer goes back to the worker meanwhile unless it holds the next request's bytes
    // (the connection takes one again when it reads).
    if side.client_buf.is_empty() && side.client_buf.capacity() > 0 {
        worker.give_buffer(side.client_buf.take_vec());
    }
    let result = pipe::respond(
        worker,
        req,
        exchange,
        answered_by,
        ai.as_ref(),
        cache_plan,
        client,
        scratch,
        outcome,
    )
    .await;
    if let Some(r) = reservation {
        r.settle(crate::cluster::limits::Used {
            tokens: outcome.tokens_used,
            micros: outcome.cost_usd.map(crate::limit::spend::micros),
        });
    }
    result
}

/// The try loop: attempts on the candidates' endpoints until one yields a response to
/// deliver (returned with the candidate that gave it) or the retry state gives up.
async fn exchange<'c>(
    worker: &Rc<Worker>,
    req: &Request<'_>,
    candidates: &[Candidate<'c>],
    ai: Option<&AiRequest>,
    body: &mut RequestBody,
    side: &mut ClientSide<'_>,
) -> Result<(Exchange, Candidate<'c>), Failure> {
    let route = req.route;
    let mut current = 0usize;
    let mut upstream_req = UpstreamRequest::new(req);
    switch_to(
        worker,
        req,
        candidates[current],
        ai,
        body,
        &mut upstream_req,
    );
    let mut retry = RetryState::new(
        &route.retry_on,
        route.tries,
        route.retry_budget,
        candidates.len(),
        body.replayable(),
        Instant::now(),
    );
    // Endpoints of the current candidate already tried: a retry goes elsewhere if it can.
    let mut tried = Tried::default();
    let mut jitter = |max: Duration| worker.balancer.jitter(max);
    loop {
        let candidate = candidates[current];
        let up = candidate.upstream;
        let state = worker.balancer.state(up);
        let shed = quota::shedding(up);
        let picked = match shed {
            Some(_) => None,
            None => worker
                .balancer
                .pick(up, &state, tried.as_slice(), Instant::now()),
        };
        let (result, next) = match picked {
            None => {
                let next = retry.next(Attempt::Unavailable, Instant::now(), &mut jitter);
                let error = match shed {
                    Some(retry_after_secs) => ProxyError::ProviderQuota {
                        upstream: up.name.clone(),
                        retry_after_secs,
                    },
                    None => ProxyError::NoHealthyEndpoint(up.name.clone()),
                };
                (Err(Failure::request(error)), next)
            }
            Some(ep) => {
                tried.push(ep);
                let fresh = retry.fresh_connection();
                let slot = state.enter(ep);
                let body_ref = &*body;
                let result = attempt::attempt(
                    worker,
                    req,
                    up,
                    slot,
                    side,
                    &upstream_req.head,
                    body_ref,
                    fresh,
                )
                .await;
                let now = Instant::now();
                let next = match &result {
                    Ok(ex) => {
                        let status = ex.resp.status;
                        if matches!(status, 502..=504) {
                            state.failure(ep, up, now);
                        } else {
                            state.success(ep, now.saturating_duration_since(ex.started), now);
                        }
                        quota::note_response(up, &ex.resp);
                        let retry_after = quota::retry_after(&ex.resp);
                        retry.next(
                            Attempt::Answered {
                                status,
                                retry_after,
                            },
                            now,
                            &mut jitter,
                        )
                    }
                    Err(f) => {
                        let next = retry.next(Attempt::Failed(f), now, &mut jitter);
                        if next == Next::Reconnect {
                            // Closed while idle, most likely: not the endpoint's fault.
                            tracing::debug!(upstream = %up.name, error = %f.error, "pooled connection was closed; retrying on a new one");
                            tried.pop();
                        } else if matches!(f.phase, Phase::Upstream(_)) {
                            state.failure(ep, up, now);
                        }
                        next
                    }
                };
                (result, next)
            }
        };
        match next {
            Next::Done => return result.map(|ex| (ex, candidate)),
            Next::Reconnect => continue,
            Next::Retry { wait, reason } => {
                worker
                    .stats
                    .note_retry(&route.name, retry::reason_label(reason));
                tracing::debug!(route = %route.name, reason = retry::reason_label(reason), wait_ms = wait.as_millis() as u64, "retrying");
                drop(result);
                let backoff = async {
                    monoio::time::sleep(wait).await;
                    Ok(())
                };
                let fd = side.client.raw_fd();
                worker
                    .client_watch
                    .unless_client_leaves(fd, backoff, || {
                        Failure::request(ProxyError::ClientClosed)
                    })
                    .await?;
            }
            Next::Fallback { reason } => {
                let next_cand = candidates[(current + 1).min(candidates.len() - 1)];
                if let Some(reason) = reason {
                    worker
                        .stats
                        .note_retry(&route.name, retry::reason_label(reason));
                }
                if let Some((_, m)) = candidate.model {
                    worker.stats.note_fallback(&m.name);
                    tracing::info!(route = %route.name, from = %m.name, to = %next_cand.model_name(), reason = reason.map_or("unavailable", retry::reason_label), "falling back to the next model");
                }
                current = (current + 1).min(candidates.len() - 1);
                switch_to(worker, req, next_cand, ai, body, &mut upstream_req);
                tried.clear();
            }
        }
    }
}

/// Prepares the request for `candidate` and counts it on the candidate's model.
fn switch_to(
    worker: &Worker,
    req: &Request<'_>,
    candidate: Candidate<'_>,
    ai: Option<&AiRequest>,
    body: &mut RequestBody,
    upstream_req: &mut UpstreamRequest,
) {
    upstream_req.prepare(req, candidate, ai, body);
    if let Some((_, m)) = candidate.model {
        worker
            .stats
            .note_model_request(&m.name, req.client.map(|c| &*c.name));
    }
}

/// The endpoints a request already tried on its current candidate, on the stack: a route
/// makes at most 10 tries (validated), so a request never allocates for this.
#[derive(Default)]
struct Tried {
    eps: [usize; 16],
    len: usize,
}

impl Tried {
    /// Records `ep` (beyond the capacity, which validation keeps out of reach, it is not
    /// recorded: avoiding tried endpoints is a preference, not a guarantee).
    fn push(&mut self, ep: usize) {
        if let Some(slot) = self.eps.get_mut(self.len) {
            *slot = ep;
            self.len += 1;
        }
    }

    /// Forgets the last one (a reconnect to the same endpoint is not another try).
    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// Forgets all (a fallback starts on another upstream).
    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_slice(&self) -> &[usize] {
        &self.eps[..self.len]
    }
}
