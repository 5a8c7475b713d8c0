//! Watching the mounted config for changes, the way kubelet actually changes it.
//!
//! A ConfigMap mounted as a directory `D` looks like this:
//!
//! ```text
//! D/gateway.toml -> ..data/gateway.toml
//! D/..data       -> ..2026_11_23_21_00_00.123456789
//! D/..2026_11_23_21_00_00.123456789/gateway.toml
//! ```
//!
//! kubelet updates it by writing a new timestamped directory, renaming a fresh `..data_tmp`
//! symlink onto `..data` (the one atomic step) and then deleting the old directory. A watch on
//! the file itself follows the symlink into the old directory and dies with it after the first
//! update, so this module watches the *directory*, treats every event in it (and every watcher
//! error or overflow) only as a hint, debounces, and re-reads the file through its visible path.
//! A snapshot is delivered when its sha256 differs from the last one delivered. A periodic poll
//! catches whatever inotify cannot report (lost events, a remounted or replaced directory).
//!
//! Secrets given as files (`api_key_file`, `ca_file`, the `[auth]` keys file, TLS
//! certificates and keys) are mounted the same way (cert-manager and kubectl write Secrets
//! that kubelet projects exactly like ConfigMaps). [`spawn_watcher_with_inputs`] also
//! watches the directories of those files, and dedupes on [`inputs_digest`] — the config
//! bytes *and* those files' bytes — so a rotated Secret re-applies the unchanged config while
//! an unchanged set does not.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};

/// The symlink kubelet points at the current timestamped directory.
const DATA_LINK: &str = "..data";
/// How many times [`read_snapshot`] reads before giving up on a directory that keeps changing.
const READ_TRIES: usize = 5;
/// The poll interval is never shorter than this, so a zero setting cannot spin.
const MIN_POLL: Duration = Duration::from_millis(10);
/// A steady stream of events postpones a read by at most this many debounce periods.
const MAX_DEBOUNCE_PERIODS: u32 = 5;
/// How long dropping a [`Watcher`] waits for its thread (e.g. inside a slow `on_change`).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// One consistent read of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub sha256: [u8; 32],
    /// The visible file that was read (e.g. `/etc/ringgate/gateway.toml`).
    pub path: PathBuf,
    /// The `..data` link target the bytes came from, when mounted from a ConfigMap.
    pub data_target: Option<String>,
}

/// Lower-case hex of a sha256 digest.
pub fn sha256_hex(d: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 over the config bytes and, in order, each input file's path and bytes (or a marker
/// when it cannot be read): what a generation was compiled from. With no input files this is
/// exactly `sha256(config_bytes)`.
pub fn inputs_digest(config_bytes: &[u8], files: &[PathBuf]) -> [u8; 32] {
    if files.is_empty() {
        return Sha256::digest(config_bytes).into();
    }
    let mut h = Sha256::new();
    h.update(Sha256::digest(config_bytes));
    for f in files {
        let path = f.as_os_str().as_encoded_bytes();
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        match fs::read(f) {
            Ok(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(&b);
            }
            Err(_) => h.update([0]),
        }
    }
    h.finalize().into()
}

/// The directory holding `file` (`.` for a bare file name).
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The `..data` target beside `file`, if there is one.
fn data_target(file: &Path) -> Option<String> {
    fs::read_link(parent_dir(file).join(DATA_LINK))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Reads the visible file; if `..data` beside it changed target during the read, reads again
/// (bounded: 5 tries), so a snapshot never mixes two projections: `data_target` is the
/// projection the bytes were read from.
///
/// Fails with the read's error (e.g. `NotFound`) when the file cannot be read while `..data`
/// is stable, and with [`io::ErrorKind::Interrupted`] when `..data` changed during every try.
pub fn read_snapshot(file: &Path) -> io::Result<Snapshot> {
    for _ in 0..READ_TRIES {
        let before = data_target(file);
        let read = fs::read(file);
        let after = data_target(file);
        if before != after {
            continue;
        }
        let bytes = read?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        return Ok(Snapshot {
            bytes,
            sha256,
            path: file.to_path_buf(),
            data_target: after,
        });
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        format!(
            "{}: `..data` changed during each of {READ_TRIES} reads",
            file.display()
        ),
    ))
}

/// `true` when `..data` exists beside the file (a ConfigMap mounted as a directory). When it
/// is `false` (a `subPath` mount or a plain file) kubelet never updates the file in place, so
/// start-up should warn that edits to the ConfigMap will not reach this pod.
pub fn is_configmap_mount(file: &Path) -> bool {
    fs::symlink_metadata(parent_dir(file).join(DATA_LINK)).is_ok()
}

/// Timing of [`spawn_watcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Quiet time after the last event before the file is re-read (default 200 ms). A
    /// steady stream of events delays a read by at most five of these.
    pub debounce: Duration,
    /// Re-read this often even without events (default 30 s); also how often a vanished
    /// directory is looked for again. Values under 10 ms are raised to 10 ms.
    pub poll_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// What the watcher thread receives.
enum Msg {
    /// Anything the notify watcher reported.
    Notify(notify::Result<Event>),
    /// [`Watcher`] was dropped.
    Stop,
}

/// A running directory watcher. Dropping it stops its thread (waiting at most 2 s, e.g. for
/// an `on_change` in progress) and the underlying notify watcher.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    tx: Sender<Msg>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("stopped", &self.stop.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            match self.done.recv_timeout(STOP_WAIT) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!("config watcher thread did not stop in time; leaving it behind");
                }
            }
        }
    }
}

/// Watches the DIRECTORY holding `file` (never the file itself: that watch would die with
/// kubelet's first update). Every event there — including watcher errors, overflow
/// (`Rescan`) and removal of the directory — is a hint: after `opts.debounce` of quiet the
/// file is re-read through its visible path with [`read_snapshot`], and `on_change` is called
/// when the sha256 differs from the last snapshot delivered. `initial_sha256` is the sha of
/// the config already loaded, so that one is not delivered again.
///
/// The file is also re-read every `opts.poll_interval` without any event (lost events,
/// remounts), and once a debounce period after start (a change between the initial load and
/// the watch).
/// When the directory disappears or is replaced, the watch is re-established on hints and at
/// every poll until it is back, then the file is re-read. A missing or unreadable file is
/// logged with `tracing::warn!` and the last state kept (`on_change` is not called). A panic
/// in `on_change` is logged and the watcher goes on.
///
/// Fails only when the watcher thread cannot be started; if the directory cannot be watched
/// at start, this warns and relies on polling until it can.
pub fn spawn_watcher(
    file: PathBuf,
    initial_sha256: [u8; 32],
    opts: WatchOptions,
    on_change: Box<dyn FnMut(Snapshot) + Send>,
) -> io::Result<Watcher> {
    spawn_watcher_with_inputs(file, initial_sha256, opts, Box::new(Vec::new), on_change)
}

/// The files a config read besides itself, asked again before every check (the set changes
/// when a reload adds or removes a secret file).
pub type InputFiles = Box<dyn Fn() -> Vec<PathBuf> + Send>;

/// As [`spawn_watcher`], and also for the config's input files: `inputs()` names them (the
/// current generation's `watched_files`); their parent directories are watched too (events
/// there are hints like any other, a `..data` rename reads at once), the set is looked up
/// again after every delivery and poll, and `on_change` is called when
/// [`inputs_digest`] of the config bytes and those files differs from the last one delivered.
/// `initial_digest` is the digest of the generation already loaded.
pub fn spawn_watcher_with_inputs(
    file: PathBuf,
    initial_digest: [u8; 32],
    opts: WatchOptions,
    inputs: InputFiles,
    on_change: Box<dyn FnMut(Snapshot) + Send>,
) -> io::Result<Watcher> {
    let initial_sha256 = initial_digest;
    let (tx, rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let dir = parent_dir(&file);
    let mut state = Loop {
        dir,
        file,
        opts: WatchOptions {
            debounce: opts.debounce,
            poll_interval: opts.poll_interval.max(MIN_POLL),
        },
        tx: tx.clone(),
        rx,
        stop: stop.clone(),
        on_change,
        last_sha: initial_sha256,
        inputs,
        input_watch: None,
        watch: None,
        watch_problem: None,
        read_problem: None,
    };
    // Establish the watch before returning, so no change made after this call is missed.
    state.ensure_watch();
    state.ensure_input_watch();
    let thread = std::thread::Builder::new()
        .name("ringgate-watch".into())
        .spawn(move || {
            state.run();
            let _ = done_tx.send(());
        })?;
    Ok(Watcher {
        stop,
        tx,
        done,
        thread: Some(thread),
    })
}

/// The live notify watch and the directory inode it is attached to.
struct ActiveWatch {
    _watcher: RecommendedWatcher,
    identity: Option<(u64, u64)>,
}

/// A watched secret directory and its inode (None while it does not exist).
type WatchedDir = (PathBuf, Option<(u64, u64)>);

/// The watcher thread's state.
struct Loop {
    dir: PathBuf,
    file: PathBuf,
    opts: WatchOptions,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
    on_change: Box<dyn FnMut(Snapshot) + Send>,
    /// Digest ([`inputs_digest`]) of the last snapshot delivered.
    last_sha: [u8; 32],
    /// The config's input files (secrets), asked before each check.
    inputs: InputFiles,
    /// The watch on the input files' directories: which directories (and their inodes).
    input_watch: Option<(Vec<WatchedDir>, Option<RecommendedWatcher>)>,
    watch: Option<ActiveWatch>,
    /// The last watch problem logged at warn level, so a persisting one is not repeated.
    watch_problem: Option<String>,
    /// The same for read problems.
    read_problem: Option<String>,
}

impl Loop {
    fn run(&mut self) {
        // Start as if hinted: the initial load happened before the watch existed, so a change
        // in between would otherwise wait for the first poll.
        let start = Instant::now();
        let mut read_at: Option<Instant> = Some(after(start, self.opts.debounce));
        let mut first_hint: Option<Instant> = Some(start);
        let mut next_poll = after(start, self.opts.poll_interval);
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let due = read_at.map_or(next_poll, |r| r.min(next_poll));
            if now >= due {
                read_at = None;
                first_hint = None;
                self.ensure_watch();
                self.check();
                self.ensure_input_watch();
                next_poll = after(Instant::now(), self.opts.poll_interval);
                continue;
            }
            match self.rx.recv_timeout(due - now) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Msg::Notify(res)) => {
                    if !is_hint(&res) {
                        continue;
                    }
                    let now = Instant::now();
                    if commits_projection(&res) {
                        // The `..data` rename is kubelet's one atomic step: from here on the
                        // visible path reads the whole new version, and nothing kubelet does
                        // afterwards changes it. Waiting out the debounce would only add
                        // latency; the sha256 dedupe absorbs any extra read.
                        read_at = Some(now);
                        continue;
                    }
                    let first = *first_hint.get_or_insert(now);
                    let latest = after(
                        first,
                        self.opts.debounce.saturating_mul(MAX_DEBOUNCE_PERIODS),
                    );
                    read_at = Some(after(now, self.opts.debounce).min(latest));
                }
            }
        }
    }

    /// Makes sure the directory is watched, and watched on its current inode: re-watches after
    /// the directory was removed and recreated or replaced, drops the watch when it is gone.
    fn ensure_watch(&mut self) {
        let identity = match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => dir_identity(&m),
            Ok(_) => {
                self.watch = None;
                report(
                    &mut self.watch_problem,
                    format!("{} is not a directory", self.dir.display()),
                );
                return;
            }
            Err(e) => {
                self.watch = None;
                report(
                    &mut self.watch_problem,
                    format!(
                        "config directory {} is unavailable ({e}); looking for it again every {:?}",
                        self.dir.display(),
                        self.opts.poll_interval
                    ),
                );
                return;
            }
        };
        if let Some(w) = &self.watch {
            if w.identity == identity {
                return;
            }
            tracing::info!(dir = %self.dir.display(), "config directory was replaced; watching the new one");
        }
        // Drop the old watch before making the new one.
        self.watch = None;
        let tx = self.tx.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let _ = tx.send(Msg::Notify(res));
        })
        .and_then(|mut w| {
            w.watch(&self.dir, RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        match made {
            Ok(w) => {
                tracing::debug!(dir = %self.dir.display(), "watching config directory");
                if self.watch_problem.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "watching the config directory again");
                }
                self.watch = Some(ActiveWatch {
                    _watcher: w,
                    identity,
                });
            }
            Err(e) => report(
                &mut self.watch_problem,
                format!(
                    "cannot watch {} ({e}); relying on the {:?} poll",
                    self.dir.display(),
                    self.opts.poll_interval
                ),
            ),
        }
    }

    /// Watches the directories of the input files (except the config's own, watched
    /// already): rebuilt when the set of directories changes or one was replaced (a Secret
    /// remounted), dropped when there are none. Directories that do not exist yet are left
    /// to the poll.
    fn ensure_input_watch(&mut self) {
        let mut dirs: Vec<PathBuf> = (self.inputs)().iter().map(|f| parent_dir(f)).collect();
        dirs.sort();
        dirs.dedup();
        dirs.retain(|d| *d != self.dir);
        let wanted: Vec<WatchedDir> = dirs
            .into_iter()
            .map(|d| {
                let id = fs::metadata(&d)
                    .ok()
                    .filter(|m| m.is_dir())
                    .and_then(|m| dir_identity(&m));
                (d, id)
            })
            .collect();
        if self
            .input_watch
            .as_ref()
            .is_some_and(|(have, _)| *have == wanted)
        {
            return;
        }
        if wanted.is_empty() {
            self.input_watch = None;
            return;
        }
        let tx = self.tx.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let _ = tx.send(Msg::Notify(res));
        });
        let watcher = match made {
            Ok(mut w) => {
                for (d, id) in &wanted {
                    if id.is_none() {
                        continue;
                    }
                    match w.watch(d, RecursiveMode::NonRecursive) {
                        Ok(()) => tracing::debug!(dir = %d.display(), "watching secret directory"),
                        Err(e) => report(
                            &mut self.watch_problem,
                            format!("cannot watch {} ({e}); relying on the poll", d.display()),
                        ),
                    }
                }
                Some(w)
            }
            Err(e) => {
                report(
                    &mut self.watch_problem,
                    format!("cannot watch secret directories ({e}); relying on the poll"),
                );
                None
            }
        };
        self.input_watch = Some((wanted, watcher));
    }

    /// Re-reads the file and delivers it when it changed.
    fn check(&mut self) {
        let snap = match read_snapshot(&self.file) {
            Ok(s) => s,
            Err(e) => {
                report(
                    &mut self.read_problem,
                    format!(
                        "cannot read {} ({e}); keeping the current config",
                        self.file.display()
                    ),
                );
                return;
            }
        };
        self.read_problem = None;
        let digest = inputs_digest(&snap.bytes, &(self.inputs)());
        if digest == self.last_sha {
            return;
        }
        tracing::debug!(sha256 = %sha256_hex(&snap.sha256), data_target = ?snap.data_target, "config file changed");
        self.last_sha = digest;
        let on_change = &mut self.on_change;
        if catch_unwind(AssertUnwindSafe(|| on_change(snap))).is_err() {
            tracing::error!("config change handler panicked; the watcher goes on");
        }
    }
}

/// `t + d`, saturating at a year from `t` (an absurd setting must not panic).
fn after(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    t.checked_add(d.min(YEAR)).unwrap_or(t)
}

/// Logs `msg` at warn level once, then at debug level while it stays the problem in `slot`.
fn report(slot: &mut Option<String>, msg: String) {
    if slot.as_deref() == Some(msg.as_str()) {
        tracing::debug!("{msg}");
    } else {
        tracing::warn!("{msg}");
        *slot = Some(msg);
    }
}

/// Whether a notify report should trigger a re-read: everything but pure access events
/// (opens and reads, which our own reads of a plain file would otherwise cause forever).
fn is_hint(res: &notify::Result<Event>) -> bool {
    match res {
        Ok(ev) if ev.need_rescan() => {
            tracing::debug!("config watcher overflowed; re-reading");
            true
        }
        Ok(ev) => !matches!(
            ev.kind,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        ),
        Err(e) => {
            tracing::debug!(error = %e, "config watcher error; re-reading");
            true
        }
    }
}

/// Whether the event is kubelet swapping `..data` (the rename that publishes a new version).
fn commits_projection(res: &notify::Result<Event>) -> bool {
    let Ok(ev) = res else { return false };
    matches!(
        ev.kind,
        EventKind::Modify(notify::event::ModifyKind::Name(_)) | EventKind::Create(_)
    ) && ev
        .paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "..data"))
}

/// Device and inode of the directory, to notice it was replaced under the same path.
#[cfg(unix)]
fn dir_identity(m: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn dir_identity(_m: &fs::Metadata) -> Option<(u64, u64)> {
    None
}
