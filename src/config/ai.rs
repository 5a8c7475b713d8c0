//! The AI layer's part of the config: `[models]` (routing by model name, aliases,
//! fallbacks, prices), `[auth]` (client keys as sha256 hashes from a mounted Secret file,
//! per-client limits) and `[cache]`, validated and compiled like the rest (every error at
//! once, with key paths), so a reload changes them as atomically as routes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compiled::{LimitId, LimitKey, LimitSpec, UpstreamId};
use super::raw::{RawAuth, RawCache, RawConfig};
use super::validate::Errors;

/// Most models (names and aliases) one config may define.
pub const MAX_MODEL_NAMES: usize = 1000;
/// Most client keys one keys file may hold.
pub const MAX_CLIENT_KEYS: usize = 100_000;

/// Prices of one model, in US dollars per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per prompt token not served from the provider's prompt cache.
    pub prompt: f64,
    /// Per cached prompt token.
    pub cached_prompt: f64,
    /// Per completion token.
    pub completion: f64,
}

impl Price {
    /// The highest of each price in `prices`: what a request that may be answered by any
    /// of them reserves against a spend budget (None when none is priced).
    pub fn ceiling(prices: impl IntoIterator<Item = Price>) -> Option<Price> {
        prices.into_iter().reduce(|a, b| Price {
            prompt: a.prompt.max(b.prompt),
            cached_prompt: a.cached_prompt.max(b.cached_prompt),
            completion: a.completion.max(b.completion),
        })
    }

    /// Dollars for one response's usage (`cached_prompt` is a part of `prompt`).
    pub fn cost(&self, u: &crate::ai::usage::Usage) -> f64 {
        let cached = u.cached_prompt.min(u.prompt);
        (u.prompt - cached) as f64 * self.prompt
            + cached as f64 * self.cached_prompt
            + u.completion as f64 * self.completion
    }
}

/// A compiled `[models.NAME]`.
#[derive(Debug)]
pub struct Model {
    /// NAME: the metric label and what `/v1/models` lists.
    pub name: String,
    /// The upstream serving it.
    pub upstream: UpstreamId,
    /// The name sent to the provider when it differs from what the client sent.
    pub provider_model: Option<String>,
    /// Other names clients may use.
    pub aliases: Vec<String>,
    /// Models tried in order when this one fails before answering (indexes in
    /// [`Models::list`]).
    pub fallbacks: Vec<usize>,
    /// Prices, when configured.
    pub price: Option<Price>,
}

/// Every configured model and the name index.
#[derive(Debug, Default)]
pub struct Models {
    /// Models in config order (sorted by name, as TOML tables are read).
    pub list: Vec<Model>,
    /// Names and aliases to indexes in `list`.
    pub by_name: HashMap<String, usize>,
    /// The `GET /v1/models` response body, rendered once per config.
    pub list_json: Vec<u8>,
    /// Upstream names by index (`owned_by` in `/v1/models`).
    owners: Vec<String>,
    /// When this config was compiled (`created` in `/v1/models`), Unix seconds.
    created: u64,
}

impl Models {
    /// The model a client's `"model"` names (an alias resolves to its model).
    pub fn find(&self, name: &str) -> Option<&Model> {
        self.list.get(*self.by_name.get(name)?)
    }

    /// Whether any model is configured (then the gateway answers `/v1/models`).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The `GET /v1/models/{id}` body for one name or alias.
    pub fn one_json(&self, name: &str) -> Option<Vec<u8>> {
        let m = self.find(name)?;
        let owner = self.owners.get(m.upstream).map_or("", String::as_str);
        serde_json::to_vec(&model_object(name, owner, self.created)).ok()
    }
}

/// A client of `[auth]`.
#[derive(Debug)]
pub struct Client {
    /// The name from the keys file: the label in logs and metrics (never the key).
    pub name: Arc<str>,
    /// Request limit applied per client (index in [`super::Config::limits`]).
    pub limit: Option<LimitId>,
    /// Token budget per minute (index of its synthesized limit in
    /// [`super::Config::limits`]); charged after each response with its usage.
    pub token_limit: Option<LimitId>,
    /// Its index in [`Auth::clients`] (and in the generation's spend cells).
    pub index: usize,
    /// Spend budgets in micro-dollars, indexed by [`crate::limit::spend::Window::index`]
    /// (day, month).
    pub budget: [Option<u64>; 2],
    /// Where its token and spend budgets are kept.
    pub scope: super::LimitScope,
}

impl Client {
    /// Whether the client has a spend budget.
    pub fn has_budget(&self) -> bool {
        self.budget.iter().any(Option::is_some)
    }
}

/// Compiled `[auth]`.
#[derive(Debug)]
pub struct Auth {
    /// sha256 of each key to its client (index in `clients`).
    pub keys: HashMap<[u8; 32], usize>,
    /// The clients, in keys-file order.
    pub clients: Vec<Client>,
}

/// Compiled `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Memory bound of the whole cache, bytes.
    pub max_bytes: u64,
    /// Largest response cached, bytes.
    pub max_entry_bytes: u64,
}

/// The name prefix of the limits synthesized for `tokens_per_minute`.
pub const TOKEN_LIMIT_PREFIX: &str = "tokens_per_minute:";

fn model_object(id: &str, owner: &str, created: u64) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": owner})
}

/// Compiles `[models]`; `upstream_names` are the `[upstreams]` keys in index order.
pub(super) fn compile_models(
    raw: &RawConfig,
    upstream_names: &[String],
    errs: &mut Errors,
) -> Models {
    let names: Vec<&String> = raw.models.keys().collect();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut list = Vec::new();
    for (i, (name, m)) in raw.models.iter().enumerate() {
        let path = format!("models.{}", toml_key(name));
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            errs.push(&path, "model names are 1 to 256 printable characters");
        }
        by_name.insert(name.clone(), i);
        let upstream = match upstream_names.iter().position(|n| *n == m.upstream) {
            Some(u) => u,
            None => {
                errs.push(
                    format!("{path}.upstream"),
                    format!(
                        "no upstream named `{}` (defined: {})",
                        m.upstream,
                        upstream_names.join(", ")
                    ),
                );
                0
            }
        };
        if let Some(p) = &m.provider_model {
            if p.is_empty() {
                errs.push(format!("{path}.provider_model"), "must not be empty");
            }
        }
        let mut fallbacks = Vec::new();
        for (j, f) in m.fallbacks.iter().enumerate() {
            match names.iter().position(|n| *n == f) {
                Some(k) if k == i => errs.push(
                    format!("{path}.fallbacks[{j}]"),
                    "a model cannot fall back to itself",
                ),
                Some(k) if fallbacks.contains(&k) => errs.push(
                    format!("{path}.fallbacks[{j}]"),
                    format!("`{f}` is listed twice"),
                ),
                Some(k) => fallbacks.push(k),
                None => errs.push(
                    format!("{path}.fallbacks[{j}]"),
                    format!("no model named `{f}` (fallbacks name other [models] entries)"),
                ),
            }
        }
        let mut price_of = |key: &str, v: Option<f64>| -> Option<f64> {
            let v = v?;
            if !(v.is_finite() && (0.0..=1_000_000.0).contains(&v)) {
                errs.push(
                    format!("{path}.{key}"),
                    format!("{v} is not a price within 0..=1000000 (USD per million tokens)"),
                );
            }
            Some(v / 1e6)
        };
        let prompt = price_of("prompt_usd_per_mtok", m.prompt_usd_per_mtok);
        let cached = price_of("cached_prompt_usd_per_mtok", m.cached_prompt_usd_per_mtok);
        let completion = price_of("completion_usd_per_mtok", m.completion_usd_per_mtok);
        let price = match (prompt, completion) {
            (Some(p), Some(c)) => Some(Price {
                prompt: p,
                cached_prompt: cached.unwrap_or(p),
                completion: c,
            }),
            (None, None) if cached.is_none() => None,
            _ => {
                errs.push(
                    &path,
                    "set both prompt_usd_per_mtok and completion_usd_per_mtok (or neither)",
                );
                None
            }
        };
        list.push(Model {
            name: name.clone(),
            upstream,
            provider_model: m.provider_model.clone(),
            aliases: m.aliases.clone(),
            fallbacks,
            price,
        });
    }
    for (i, (name, m)) in raw.models.iter().enumerate() {
        let path = format!("models.{}", toml_key(name));
        for (j, a) in m.aliases.iter().enumerate() {
            if a.is_empty() || a.len() > 256 {
                errs.push(
                    format!("{path}.aliases[{j}]"),
                    "must be 1 to 256 characters",
                );
            }
            match by_name.get(a) {
                Some(&k) if k == i && names.get(k).is_some_and(|n| *n == a) => errs.push(
                    format!("{path}.aliases[{j}]"),
                    "an alias must differ from the model's name",
                ),
                Some(&k) => errs.push(
                    format!("{path}.aliases[{j}]"),
                    format!(
                        "`{a}` already names model `{}`",
                        names.get(k).map_or("?", |n| n.as_str())
                    ),
                ),
                None => {
                    by_name.insert(a.clone(), i);
                }
            }
        }
    }
    if by_name.len() > MAX_MODEL_NAMES {
        errs.push(
            "models",
            format!("at most {MAX_MODEL_NAMES} names and aliases"),
        );
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut data = Vec::new();
    for m in &list {
        let owner = upstream_names.get(m.upstream).cloned().unwrap_or_default();
        for id in std::iter::once(&m.name).chain(m.aliases.iter()) {
            data.push(model_object(id, &owner, created));
        }
    }
    let list_json = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
        .unwrap_or_default();
    Models {
        list,
        by_name,
        list_json,
        owners: upstream_names.to_vec(),
        created,
    }
}

/// Quotes a TOML key when it is not bare (model names often hold dots: `"gpt-4.1"`).
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Compiles `[auth]`: reads the keys file (unless `secrets` says skip), resolves limits, and
/// appends one synthesized limit per distinct `tokens_per_minute` to `limits` (so token
/// budgets keep their state across reloads like any other limit). `cluster` is the compiled
/// `[cluster]` and whether one was written (for `scope = "cluster"`).
#[allow(clippy::too_many_arguments)]
pub(super) fn compile_auth(
    raw: &RawAuth,
    base_dir: &Path,
    secrets: super::SecretFiles,
    limit_names: &[String],
    limits: &mut Vec<Arc<LimitSpec>>,
    watched: &mut Vec<PathBuf>,
    cluster: (Option<&super::ClusterSettings>, bool),
    errs: &mut Errors,
) -> Option<Auth> {
    let scope_of = |path: String, v: &str, errs: &mut Errors| {
        super::cluster::compile_scope(v, &path, cluster.0, cluster.1, errs)
    };
    let default_scope = scope_of("auth.scope".into(), &raw.scope, errs);
    let limit_of = |path: String, name: &Option<String>, errs: &mut Errors| -> Option<LimitId> {
        let n = name.as_ref()?;
        let i = limit_names.iter().position(|l| l == n);
        if i.is_none() {
            errs.push(path, format!("no limit named `{n}`"));
        }
        i
    };
    let default_limit = limit_of("auth.limit".into(), &raw.limit, errs);
    let check_tpm = |path: String, v: Option<u64>, errs: &mut Errors| {
        if v == Some(0) {
            errs.push(path, "must be at least 1 (omit it for no token limit)");
        }
    };
    check_tpm("auth.tokens_per_minute".into(), raw.tokens_per_minute, errs);
    let budget_of = |path: String, v: Option<f64>, errs: &mut Errors| -> Option<u64> {
        let v = v?;
        let max = crate::limit::spend::MAX_MICROS as f64 / 1e6;
        if !(v.is_finite() && v > 0.0 && v <= max) {
            errs.push(
                path,
                format!("{v} is not a budget within (0, {max:.0}] US dollars (omit it for none)"),
            );
            return None;
        }
        Some(crate::limit::spend::micros(v).max(1))
    };
    let default_budget = [
        budget_of(
            "auth.budget_usd_per_day".into(),
            raw.budget_usd_per_day,
            errs,
        ),
        budget_of(
            "auth.budget_usd_per_month".into(),
            raw.budget_usd_per_month,
            errs,
        ),
    ];
    let mut overrides = BTreeMap::new();
    for (name, c) in &raw.clients {
        let path = format!("auth.clients.{}", toml_key(name));
        let l = limit_of(format!("{path}.limit"), &c.limit, errs);
        check_tpm(
            format!("{path}.tokens_per_minute"),
            c.tokens_per_minute,
            errs,
        );
        let scope = c
            .scope
            .as_deref()
            .map(|v| scope_of(format!("{path}.scope"), v, errs));
        let budget = [
            budget_of(
                format!("{path}.budget_usd_per_day"),
                c.budget_usd_per_day,
                errs,
            ),
            budget_of(
                format!("{path}.budget_usd_per_month"),
                c.budget_usd_per_month,
                errs,
            ),
        ];
        overrides.insert(name.as_str(), (l, c.tokens_per_minute, scope, budget));
    }
    if raw.keys_file.trim().is_empty() {
        errs.push("auth.keys_file", "must not be empty");
        return None;
    }
    let file = base_dir.join(&raw.keys_file);
    watched.push(file.clone());
    let entries = if secrets == super::SecretFiles::Skip {
        Vec::new()
    } else {
        match std::fs::read(&file) {
            Ok(bytes) => match parse_keys_file(&bytes) {
                Ok(e) => e,
                Err(msgs) => {
                    for m in msgs {
                        errs.push("auth.keys_file", format!("{}: {m}", file.display()));
                    }
                    return None;
                }
            },
            Err(e) => {
                errs.push(
                    "auth.keys_file",
                    format!("cannot read {}: {e}", file.display()),
                );
                return None;
            }
        }
    };
    let mut token_limits: BTreeMap<(u64, bool), LimitId> = BTreeMap::new();
    let mut token_limit_for =
        |tpm: u64, scope: super::LimitScope, limits: &mut Vec<Arc<LimitSpec>>| -> LimitId {
            let shared = scope != super::LimitScope::Local;
            *token_limits.entry((tpm, shared)).or_insert_with(|| {
                // One name per budget size and scope: the cluster key is derived from it.
                let suffix = if shared { ":cluster" } else { "" };
                limits.push(Arc::new(LimitSpec {
                    name: format!("{TOKEN_LIMIT_PREFIX}{tpm}{suffix}"),
                    rate_per_second: tpm as f64 / 60.0,
                    burst: u32::try_from(tpm).unwrap_or(u32::MAX),
                    key: LimitKey::Client,
                    nodelay: true,
                    scope,
                }));
                limits.len() - 1
            })
        };
    let mut keys = HashMap::new();
    let mut clients = Vec::new();
    for (name, hash) in entries {
        let (l, tpm, scope, budget) =
            overrides
                .get(name.as_str())
                .copied()
                .unwrap_or((None, None, None, [None, None]));
        let scope = scope.unwrap_or(default_scope);
        let tpm = tpm.or(raw.tokens_per_minute).filter(|&t| t > 0);
        let index = clients.len();
        keys.insert(hash, index);
        clients.push(Client {
            name: Arc::from(name.as_str()),
            limit: l.or(default_limit),
            token_limit: tpm.map(|t| token_limit_for(t, scope, limits)),
            index,
            budget: [
                budget[0].or(default_budget[0]),
                budget[1].or(default_budget[1]),
            ],
            scope,
        });
    }
    Some(Auth { keys, clients })
}

/// A spend budget counts dollars at the `[models]` prices: with no priced model it would
/// never stop anyone, so it is an error (at the first budget's key path).
pub(super) fn check_budgets_priced(raw: &RawAuth, models: &Models, errs: &mut Errors) {
    if models.list.iter().any(|m| m.price.is_some()) {
        return;
    }
    let top = [
        ("auth.budget_usd_per_day", raw.budget_usd_per_day),
        ("auth.budget_usd_per_month", raw.budget_usd_per_month),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .map(|(p, _)| p.to_string());
    let per_client = raw.clients.iter().flat_map(|(name, c)| {
        let path = format!("auth.clients.{}", toml_key(name));
        [
            ("budget_usd_per_day", c.budget_usd_per_day),
            ("budget_usd_per_month", c.budget_usd_per_month),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(move |(k, _)| format!("{path}.{k}"))
    });
    if let Some(path) = top.chain(per_client).next() {
        errs.push(
            path,
            "spend budgets need prices: set prompt_usd_per_mtok and completion_usd_per_mtok on the [models] entries",
        );
    }
}

/// Parses a keys file: one `NAME SHA256HEX` per line (`sha256:` before the hex is accepted),
/// `#` comments and blank lines ignored. Returns every problem, by line.
///
/// The file is a Secret and a broken line is most often a key pasted where its hash
/// belongs, so problems name the line number and what was expected, never the line's
/// content (they reach logs and `/config`).
pub fn parse_keys_file(bytes: &[u8]) -> Result<Vec<(String, [u8; 32])>, Vec<String>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Err(vec!["is not UTF-8".into()]),
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut seen_names = std::collections::HashMap::new();
    let mut seen_hashes = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut parts = line.split_whitespace();
        let (Some(name), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            problems.push(format!(
                "line {n}: expected `NAME SHA256HEX` (two fields; the line is not shown)"
            ));
            continue;
        };
        let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
        let Some(hash) = decode_sha256_hex(hex) else {
            problems.push(format!(
                "line {n}: expected `NAME SHA256HEX` where SHA256HEX is the key's sha256, 64 hex \
                 digits (e.g. `printf %s \"$KEY\" | sha256sum`), never the key itself \
                 (the line is not shown)"
            ));
            continue;
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
            || name.len() > 64
        {
            problems.push(format!(
                "line {n}: client names use letters, digits, `_-.@` (at most 64)"
            ));
            continue;
        }
        if let Some(first) = seen_names.insert(name.to_string(), n) {
            problems.push(format!(
                "line {n}: the client name of line {first} is listed again"
            ));
            continue;
        }
        if let Some(first) = seen_hashes.insert(hash, n) {
            problems.push(format!("line {n}: the same key as line {first}"));
            continue;
        }
        out.push((name.to_string(), hash));
    }
    if out.len() > MAX_CLIENT_KEYS {
        problems.push(format!("at most {MAX_CLIENT_KEYS} keys"));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Compiles `[cache]`.
pub(super) fn compile_cache(raw: &RawCache, errs: &mut Errors) -> CacheSettings {
    if !(1 << 20..=1 << 40).contains(&raw.max_bytes) {
        errs.push("cache.max_bytes", "must be within 1048576..=1099511627776");
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > raw.max_bytes / 8 {
        errs.push(
            "cache.max_entry_bytes",
            "must be at least 1 and at most an eighth of cache.max_bytes",
        );
    }
    CacheSettings {
        max_bytes: raw.max_bytes,
        max_entry_bytes: raw.max_entry_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_lines() {
        let h = "a".repeat(64);
        let good = format!(
            "# clients\n\nteam-a {h}\nteam-b sha256:{}\n",
            "B".repeat(64)
        );
        let got = parse_keys_file(good.as_bytes()).unwrap_or_default();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "team-a");
        assert_eq!(got[0].1, [0xaa; 32]);
        assert_eq!(got[1].1, [0xbb; 32]);
        let cases: [(&str, &str); 5] = [
            (
                "team-a sk-plainkey",
                "line 1: expected `NAME SHA256HEX` where SHA256HEX is the key's sha256",
            ),
            ("team-a", "line 1: expected"),
            ("bad/name aaaa", "sha256"),
            (
                "x {h}\nx {h2}",
                "line 2: the client name of line 1 is listed again",
            ),
            ("x {h}\n\ny {h}", "line 3: the same key as line 1"),
        ];
        for (text, want) in cases {
            let text = text.replace("{h}", &h).replace("{h2}", &"c".repeat(64));
            let errs = parse_keys_file(text.as_bytes()).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "{text:?}: {errs:?} should mention {want}"
            );
        }
    }

    /// A key pasted where its hash belongs, in any position, never appears in the errors.
    #[test]
    fn keys_file_errors_never_quote_the_line() {
        let secret = "sk-live-7f3a9c1e5b";
        let h = "a".repeat(64);
        for text in [
            format!("team-a {secret}"),
            format!("{secret} team-a"),
            secret.to_string(),
            format!("team-a {secret} extra"),
            format!("{secret} {h}\n{secret} {h}"),
            format!("team-a {h}\n{secret} {h}"),
            format!("{secret}/x {h}"),
        ] {
            let errs = parse_keys_file(text.as_bytes()).err().unwrap_or_default();
            assert!(!errs.is_empty(), "{text:?} accepted");
            for e in &errs {
                assert!(e.starts_with("line "), "{e}");
                assert!(!e.contains("sk-live"), "{text:?}: {e}");
            }
        }
    }

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let p = Price {
            prompt: 2e-6,
            cached_prompt: 1e-6,
            completion: 8e-6,
        };
        let u = crate::ai::usage::Usage {
            prompt: 1000,
            completion: 100,
            cached_prompt: 400,
        };
        let c = p.cost(&u);
        assert!((c - (600.0 * 2e-6 + 400.0 * 1e-6 + 100.0 * 8e-6)).abs() < 1e-12);
    }
}
