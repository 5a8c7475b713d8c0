//! Zero-restart config: the published state ([`Active`]) behind one `ArcSwap`, and
//! [`ConfigStore::apply`] which turns a new snapshot of the mounted file into a new
//! generation — parse, validate, compile and resolve all happen here, off the request path —
//! or records why it was rejected while the old generation keeps serving.

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{self, Config, ConfigErrors, LimitSpec};
use crate::limit::spend::ClientSpend;
use crate::limit::{KeyedLimiter, LimitParams};
use watch::Snapshot;

/// One applied config generation and where it came from.
#[derive(Debug)]
pub struct Active {
    /// The compiled config.
    pub config: Config,
    /// 1 for the config loaded at start-up, +1 per applied reload.
    pub generation: u64,
    /// sha256 of the file's bytes.
    pub sha256: [u8; 32],
    /// Digest of the file's bytes and of every file in `config.watched_files`
    /// ([`watch::inputs_digest`]): a reload with the same digest changes nothing.
    pub inputs_sha256: [u8; 32],
    /// When it was applied.
    pub loaded_at: SystemTime,
    /// The file it was read from.
    pub source: PathBuf,
    /// `..data` target when mounted from a ConfigMap.
    pub data_target: Option<String>,
    /// The rate limiters of `config.limits`, same order. A reload hands over the limiter
    /// (and so every key's state) of each limit whose definition did not change.
    pub limiters: Vec<Arc<KeyedLimiter>>,
    /// The response cache; a reload keeps it (and its entries) while `[cache]` is unchanged.
    pub cache: Arc<crate::ai::cache::ResponseCache>,
    /// Spend cells of the `[auth]` clients with a spend budget, indexed like
    /// `config.auth.clients`; a reload hands each client's cells over by name.
    pub spend: Vec<Option<Arc<ClientSpend>>>,
}

/// The spend cells for `cfg`'s clients: those `old` had for the same name, new ones
/// otherwise (so a reload does not reset what a client spent).
fn spend_for(old: Option<&Active>, cfg: &Config) -> Vec<Option<Arc<ClientSpend>>> {
    let Some(auth) = &cfg.auth else {
        return Vec::new();
    };
    let previous: std::collections::HashMap<&str, &Arc<ClientSpend>> = old
        .and_then(|a| Some((a.config.auth.as_ref()?, &a.spend)))
        .map(|(auth, cells)| {
            auth.clients
                .iter()
                .zip(cells)
                .filter_map(|(c, s)| Some((&*c.name, s.as_ref()?)))
                .collect()
        })
        .unwrap_or_default();
    auth.clients
        .iter()
        .map(|c| {
            c.has_budget().then(|| {
                previous
                    .get(&*c.name)
                    .map_or_else(|| Arc::new(ClientSpend::default()), |s| (*s).clone())
            })
        })
        .collect()
}

/// The last rejected reload, for `/config` and logs.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Every error, one per line, with key paths and lines.
    pub message: String,
    /// sha256 of the rejected bytes.
    pub sha256: [u8; 32],
    /// When it was rejected.
    pub at: SystemTime,
}

/// The published config and the reload bookkeeping operators see.
pub struct ConfigStore {
    active: Arc<ArcSwap<Active>>,
    /// Limiters by limit definition, so unchanged limits keep their state across reloads.
    /// Locked only when a config is applied, never on the request path.
    limiters: Mutex<Vec<(LimitSpec, Arc<KeyedLimiter>)>>,
    base_dir: PathBuf,
    last_rejection: Mutex<Option<Rejection>>,
    /// Applied reloads (not counting the initial load).
    pub applied: AtomicU64,
    /// Rejected reloads.
    pub rejected: AtomicU64,
    /// Whether the last reload attempt succeeded.
    pub last_successful: AtomicBool,
    /// Applied reloads that changed the `[server.tls]` certificates.
    pub tls_applied: AtomicU64,
    /// Rejected reloads with an error under `server.tls` (e.g. a key that does not match
    /// its certificate): the previous certificates keep serving.
    pub tls_rejected: AtomicU64,
}

impl ConfigStore {
    /// Loads and compiles the initial config from `file`.
    pub fn load_initial(file: &Path) -> Result<ConfigStore, String> {
        let snap = watch::read_snapshot(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let cfg = config::load_bytes(&snap.bytes, &base_dir).map_err(|e| e.to_string())?;
        let inputs_sha256 = watch::inputs_digest(&snap.bytes, &cfg.watched_files);
        crate::upstream::dns::resolve_config(&cfg);
        let limiters = Mutex::new(Vec::new());
        let active = Active {
            limiters: limiters_for(&limiters, &cfg),
            spend: spend_for(None, &cfg),
            cache: Arc::new(crate::ai::cache::ResponseCache::new(cfg.cache)),
            config: cfg,
            generation: 1,
            sha256: snap.sha256,
            inputs_sha256,
            loaded_at: SystemTime::now(),
            source: snap.path,
            data_target: snap.data_target,
        };
        Ok(ConfigStore {
            active: Arc::new(ArcSwap::from_pointee(active)),
            limiters,
            base_dir,
            last_rejection: Mutex::new(None),
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_successful: AtomicBool::new(true),
            tls_applied: AtomicU64::new(0),
            tls_rejected: AtomicU64::new(0),
        })
    }

    /// The current generation (a reference-counted snapshot).
    pub fn current(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The swap cell itself, for per-worker caches.
    pub fn cell(&self) -> Arc<ArcSwap<Active>> {
        self.active.clone()
    }

    /// The last rejected reload, if any.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection.lock().ok().and_then(|g| g.clone())
    }

    /// Tries to make `snap` the new generation. On error the old one keeps serving and the
    /// rejection is recorded.
    ///
    /// Nothing happens when neither the config bytes nor any file the current generation
    /// read (`watched_files`: keys, CAs, certificates) changed. The digest is taken before
    /// compiling, so a file that changes during the compile makes the next check differ and
    /// re-apply, never the reverse.
    pub fn apply(&self, snap: Snapshot) -> Result<u64, ConfigErrors> {
        let old = self.current();
        let pre = watch::inputs_digest(&snap.bytes, &old.config.watched_files);
        if pre == old.inputs_sha256 {
            // The generation that serves is what the mount holds again: a rollback after a
            // rejected config. The failure it replaced is over, so is its alert.
            if !self.last_successful.swap(true, Ordering::Relaxed) {
                if let Ok(mut g) = self.last_rejection.lock() {
                    *g = None;
                }
                tracing::info!(generation = old.generation, sha256 = %watch::sha256_hex(&old.sha256), "config rolled back to the serving generation; the rejected one is cleared");
            }
            return Ok(old.generation);
        }
        match config::load_bytes(&snap.bytes, &self.base_dir) {
            Ok(mut cfg) => {
                cfg.inherit_runtime_state(&old.config);
                if cfg.server.listen != old.config.server.listen
                    || cfg.server.workers != old.config.server.workers
                    || cfg.admin_listen != old.config.admin_listen
                {
                    tracing::warn!("server.listen, server.workers and admin.listen take effect at the next restart; the rest of the new config applies now");
                }
                let inputs_sha256 = if cfg.watched_files == old.config.watched_files {
                    pre
                } else {
                    watch::inputs_digest(&snap.bytes, &cfg.watched_files)
                };
                self.note_tls_change(&old.config, &cfg);
                crate::upstream::dns::resolve_config(&cfg);
                let generation = old.generation + 1;
                let cache = if old.cache.settings() == cfg.cache {
                    old.cache.clone()
                } else {
                    Arc::new(crate::ai::cache::ResponseCache::new(cfg.cache))
                };
                self.active.store(Arc::new(Active {
                    limiters: limiters_for(&self.limiters, &cfg),
                    spend: spend_for(Some(&old), &cfg),
                    cache,
                    config: cfg,
                    generation,
                    sha256: snap.sha256,
                    inputs_sha256,
                    loaded_at: SystemTime::now(),
                    source: snap.path,
                    data_target: snap.data_target.clone(),
                }));
                self.applied.fetch_add(1, Ordering::Relaxed);
                self.last_successful.store(true, Ordering::Relaxed);
                tracing::info!(generation, sha256 = %watch::sha256_hex(&snap.sha256), data_target = ?snap.data_target, "config applied");
                Ok(generation)
            }
            Err(errs) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                if errs.0.iter().any(|e| e.path.starts_with("server.tls")) {
                    self.tls_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "TLS certificates rejected; the previous certificates keep serving"
                    );
                }
                self.last_successful.store(false, Ordering::Relaxed);
                tracing::error!(sha256 = %watch::sha256_hex(&snap.sha256), errors = %errs, "config rejected; the previous config keeps serving");
                if let Ok(mut g) = self.last_rejection.lock() {
                    *g = Some(Rejection {
                        message: errs.to_string(),
                        sha256: snap.sha256,
                        at: SystemTime::now(),
                    });
                }
                Err(errs)
            }
        }
    }
}

impl ConfigStore {
    /// Logs and counts what a reload does to the TLS listener: new certificates (applied to
    /// new connections at once) and the restart-only changes.
    fn note_tls_change(&self, old: &Config, new: &Config) {
        match (&old.server.tls, &new.server.tls) {
            (Some(o), Some(n)) => {
                if o.listen != n.listen {
                    tracing::warn!(old = %o.listen, new = %n.listen, "server.tls.listen takes effect at the next restart");
                }
                if o.fingerprint != n.fingerprint {
                    self.tls_applied.fetch_add(1, Ordering::Relaxed);
                    let names: Vec<_> = n.certificates.iter().flat_map(|c| c.server_names.iter()).collect();
                    tracing::info!(?names, "TLS certificates applied; new connections get them");
                }
            }
            (None, Some(_)) => tracing::warn!("[server.tls] was added: the TLS listener starts at the next restart"),
            (Some(_), None) => tracing::warn!("[server.tls] was removed: the TLS listener keeps serving its last certificates until the next restart"),
            (None, None) => {}
        }
    }
}

/// Most keys one limit tracks; past it idle keys are evicted first (see [`KeyedLimiter`]).
pub const MAX_KEYS_PER_LIMIT: usize = 100_000;

/// The limiters for `cfg.limits`, reusing the registry's limiter for every limit whose
/// definition (name, rate, burst, key, nodelay) is unchanged; the registry then holds
/// exactly the current ones.
fn limiters_for(
    registry: &Mutex<Vec<(LimitSpec, Arc<KeyedLimiter>)>>,
    cfg: &Config,
) -> Vec<Arc<KeyedLimiter>> {
    let mut reg = match registry.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let out: Vec<(LimitSpec, Arc<KeyedLimiter>)> = cfg
        .limits
        .iter()
        .map(|spec| {
            let kept = reg
                .iter()
                .find(|(s, _)| *s == **spec)
                .map(|(_, l)| l.clone());
            let limiter = kept.unwrap_or_else(|| {
                // A cluster limit's local limiter is its fallback while the store is
                // unavailable: each replica takes its share of the limit.
                let share = match spec.scope {
                    crate::config::LimitScope::Local => 1,
                    crate::config::LimitScope::Cluster { replicas } => replicas.max(1),
                };
                Arc::new(KeyedLimiter::new(
                    LimitParams {
                        rate_per_second: spec.rate_per_second / f64::from(share),
                        burst: spec.burst / share,
                        nodelay: spec.nodelay,
                    },
                    MAX_KEYS_PER_LIMIT,
                ))
            });
            ((**spec).clone(), limiter)
        })
        .collect();
    let list = out.iter().map(|(_, l)| l.clone()).collect();
    *reg = out;
    list
}
