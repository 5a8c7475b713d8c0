//! The config directory watcher against real kubelet-style projections: every change is
//! delivered once, nothing is delivered twice, and it keeps working where a watch on the file
//! itself dies (after the first update) or where inotify sees nothing (lost events, remounts).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringgate::reload::watch::*;
use ringgate_mock::kubelet::{utc_stamp, ProjectedVolume};

const KEY: &str = "gateway.toml";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringgate-watch-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Snapshots delivered to `on_change`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Snapshot>>>);

impl Seen {
    fn callback(&self) -> Box<dyn FnMut(Snapshot) + Send> {
        let seen = self.0.clone();
        Box::new(move |s| seen.lock().expect("lock").push(s))
    }

    fn all(&self) -> Vec<Snapshot> {
        self.0.lock().expect("lock").clone()
    }

    fn bodies(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|s| String::from_utf8_lossy(&s.bytes).into_owned())
            .collect()
    }

    /// Waits up to `limit` until the bodies delivered so far satisfy `done`; returns whether
    /// they did.
    fn wait_until(&self, limit: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(&self.bodies()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done(&self.bodies())
    }

    /// Waits up to `limit` for `n` deliveries; returns whether they came.
    fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.0.lock().expect("lock").len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.0.lock().expect("lock").len() >= n
    }
}

fn opts(debounce_ms: u64, poll_ms: u64) -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(debounce_ms),
        poll_interval: Duration::from_millis(poll_ms),
    }
}

/// A volume holding `gateway.toml` = `v1`, and a watcher on it started from that state.
fn setup(name: &str, o: WatchOptions) -> (TempDir, ProjectedVolume, PathBuf, Seen, Watcher) {
    let tmp = TempDir::new(name);
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    assert!(vol.project_one(KEY, b"v1").expect("project"));
    let file = vol.dir().join(KEY);
    let initial = read_snapshot(&file).expect("initial read");
    let seen = Seen::default();
    let w = spawn_watcher(file.clone(), initial.sha256, o, seen.callback()).expect("spawn");
    (tmp, vol, file, seen, w)
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn sha256_hex_is_lowercase_hex() {
    let empty: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];
    assert_eq!(
        sha256_hex(&empty),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn read_snapshot_and_mount_detection() {
    let tmp = TempDir::new("read");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    vol.project_one(KEY, b"").expect("project");
    let file = vol.dir().join(KEY);
    let s = read_snapshot(&file).expect("read");
    assert_eq!(s.bytes, b"");
    assert_eq!(
        sha256_hex(&s.sha256),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(s.path, file);
    assert_eq!(s.data_target, Some(vol.data_target().expect("target")));
    assert!(is_configmap_mount(&file));

    let plain = tmp.0.join("plain.toml");
    fs::write(&plain, b"x").expect("write");
    assert!(!is_configmap_mount(&plain));
    let s = read_snapshot(&plain).expect("read plain");
    assert_eq!((s.bytes.as_slice(), s.data_target), (&b"x"[..], None));
    assert_eq!(
        read_snapshot(&tmp.0.join("missing.toml"))
            .map_err(|e| e.kind())
            .err(),
        Some(std::io::ErrorKind::NotFound)
    );
}

#[test]
fn initial_load_without_events_calls_nothing() {
    let (_tmp, _vol, _file, seen, _w) = setup("initial", opts(50, 200));
    // Not synchronisation: a bounded look (the start-up read and two polls) for a delivery
    // that must never come.
    std::thread::sleep(Duration::from_millis(600));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
}

#[test]
fn one_change_is_delivered_exactly_once() {
    let (_tmp, vol, file, seen, _w) = setup("once", opts(50, 30_000));
    let before = vol.data_target().expect("target");
    assert!(vol.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT), "no delivery");
    // Not synchronisation: a bounded look for a second delivery that must never come.
    std::thread::sleep(Duration::from_millis(300));
    let all = seen.all();
    assert_eq!(all.len(), 1, "{:?}", seen.bodies());
    assert_eq!(all[0].bytes, b"v2");
    assert_eq!(all[0].path, file);
    let after = vol.data_target().expect("target");
    assert_ne!(before, after);
    assert_eq!(all[0].data_target.as_deref(), Some(after.as_str()));
    assert_eq!(all[0].sha256, read_snapshot(&file).expect("read").sha256);
}

#[test]
fn identical_reproject_and_unrelated_events_deliver_nothing() {
    let (_tmp, vol, _file, seen, _w) = setup("same", opts(30, 200));
    assert!(!vol.project_one(KEY, b"v1").expect("project"));
    // Events in the directory that do not change the file: new key, then dropping it again.
    let mut files = BTreeMap::new();
    files.insert(KEY.to_string(), b"v1".to_vec());
    files.insert("other.txt".to_string(), b"o".to_vec());
    assert!(vol.project(&files).expect("project"));
    assert!(vol.project_one(KEY, b"v1").expect("project"));
    fs::write(vol.dir().join("unrelated"), b"u").expect("write");
    // Not synchronisation: a bounded look for a delivery that must never come (ten debounce
    // periods and more than two polls).
    std::thread::sleep(Duration::from_millis(500));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
}

#[test]
fn a_burst_inside_the_debounce_window_ends_in_the_last_state() {
    let (_tmp, vol, _file, seen, _w) = setup("burst", opts(300, 30_000));
    for v in ["v2", "v3", "v4"] {
        assert!(vol.project_one(KEY, v.as_bytes()).expect("project"));
    }
    // Each `..data` rename is read at once (it is the atomic commit of an update), so a burst
    // may deliver intermediate versions, each whole and in order, but it ends in the last.
    assert!(
        seen.wait_until(WAIT, |b| b.last().map(String::as_str) == Some("v4")),
        "v4 never delivered: {:?}",
        seen.bodies()
    );
    let bodies = seen.bodies();
    assert!(!bodies.is_empty() && bodies.len() <= 3, "{bodies:?}");
    assert_eq!(
        bodies.last().map(String::as_str),
        Some("v4"),
        "ends in the last state"
    );
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(sorted, bodies, "deliveries arrive in projection order");
    assert_eq!(
        seen.all().last().and_then(|s| s.data_target.clone()),
        Some(vol.data_target().expect("target"))
    );
}

#[test]
fn a_watch_on_the_file_dies_after_one_update_the_directory_watch_does_not() {
    use notify::{RecursiveMode, Watcher as _};
    let (_tmp, vol, file, seen, _w) = setup("filewatch", opts(30, 30_000));
    let (tx, rx) = mpsc::channel();
    let mut raw = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        let _ = tx.send(r);
    })
    .expect("raw watcher");
    // Follows the symlinks into the current timestamped directory, as every naive watcher does.
    raw.watch(&file, RecursiveMode::NonRecursive)
        .expect("watch file");

    assert!(vol.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT));
    // The file watch reports until its inode is deleted with the old directory: that
    // `Remove` is its last event (inotify drops the watch with it), so nothing it reported
    // for v2 can arrive after this loop.
    let deadline = Instant::now() + WAIT;
    let mut first = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(ev) => {
                let gone = matches!(&ev, Ok(e) if e.kind.is_remove());
                first.push(ev);
                if gone {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    assert!(
        first
            .iter()
            .any(|e| matches!(e, Ok(e) if e.kind.is_remove())),
        "the file watch fires (its file is deleted with the old directory): {first:?}"
    );

    for (i, v) in ["v3", "v4"].iter().enumerate() {
        assert!(vol.project_one(KEY, v.as_bytes()).expect("project"));
        assert!(seen.wait_for(i + 2, WAIT), "directory watch missed {v}");
    }
    // Not synchronisation: a bounded look for file-watch events that must never come.
    std::thread::sleep(Duration::from_millis(200));
    let later: Vec<_> = rx.try_iter().collect();
    assert!(later.is_empty(), "the file watch still reports: {later:?}");
    assert_eq!(seen.bodies(), vec!["v2", "v3", "v4"]);
}

#[test]
fn lost_events_are_caught_by_the_poll() {
    let tmp = TempDir::new("lost");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    assert!(vol.project_one(KEY, b"v1").expect("project"));
    let file = vol.dir().join(KEY);
    // Both watchers start from a sha that is not v1's, so each one's start-up read delivers
    // v1: the gate that says that read is over (a read after the rewrite below would see v2
    // without a poll or an event).
    let polled = Seen::default();
    let _w = spawn_watcher(file.clone(), [0; 32], opts(50, 300), polled.callback()).expect("spawn");
    let events_only = Seen::default();
    let _w2 = spawn_watcher(
        file.clone(),
        [0; 32],
        opts(50, 60_000),
        events_only.callback(),
    )
    .expect("spawn");
    assert!(polled.wait_for(1, WAIT), "no start-up read");
    assert!(events_only.wait_for(1, WAIT), "no start-up read");
    assert_eq!(
        (polled.bodies(), events_only.bodies()),
        (vec!["v1".to_string()], vec!["v1".to_string()])
    );
    // Rewrite the real file inside the current timestamped directory: nothing happens in the
    // watched directory itself, so inotify reports nothing.
    let target = vol.data_target().expect("target");
    fs::write(vol.dir().join(&target).join(KEY), b"v2").expect("write in place");
    assert!(polled.wait_for(2, WAIT), "the poll did not catch it");
    assert_eq!(polled.bodies(), vec!["v1", "v2"]);
    assert_eq!(polled.all()[1].data_target, Some(target));
    // Not synchronisation: a bounded look (six debounce periods; its poll is 60 s away) for
    // a delivery that must never come.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        events_only.bodies(),
        vec!["v1"],
        "inotify was not supposed to see this"
    );
}

#[test]
fn a_replaced_directory_is_watched_again() {
    let (tmp, vol, _file, seen, _w) = setup("remount", opts(50, 300));
    // Swap the whole mount: the old inotify watch stays on the renamed-away inode.
    let aside = tmp.0.join("config.old");
    fs::rename(vol.dir(), &aside).expect("rename away");
    let fresh = ProjectedVolume::new(vol.dir()).expect("remount");
    assert!(fresh.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT), "remount not noticed");
    assert_eq!(seen.bodies(), vec!["v2"]);
    // Changes to the old, renamed-away copy are not ours.
    ProjectedVolume::new(&aside)
        .expect("old")
        .project_one(KEY, b"stale")
        .expect("project");
    assert!(fresh.project_one(KEY, b"v3").expect("project"));
    assert!(seen.wait_for(2, WAIT));
    // Not synchronisation: a bounded look for a further delivery that must never come.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(seen.bodies(), vec!["v2", "v3"]);
}

#[test]
fn a_removed_and_recreated_directory_is_watched_again() {
    // The poll is an hour away, so within this test only an event can make the watcher read.
    // The recreated directory itself has no watch yet: a change to an input file in a
    // sibling directory (a mounted Secret) is the event that makes it look again.
    let tmp = TempDir::new("recreate");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    assert!(vol.project_one(KEY, b"v1").expect("project"));
    let file = vol.dir().join(KEY);
    let secrets = tmp.0.join("secrets");
    fs::create_dir_all(&secrets).expect("secrets dir");
    let secret = secrets.join("key");
    fs::write(&secret, b"s1").expect("secret");
    let inputs = vec![secret.clone()];
    let initial = inputs_digest(b"v1", &inputs);
    let seen = Seen::default();
    let _w = spawn_watcher_with_inputs(
        file,
        initial,
        WatchOptions {
            debounce: Duration::from_millis(20),
            poll_interval: Duration::from_secs(3600),
        },
        Box::new(move || inputs.clone()),
        seen.callback(),
    )
    .expect("spawn");

    fs::remove_dir_all(vol.dir()).expect("remove");
    // Not synchronisation: a bounded look (fifteen debounce periods) for a delivery that
    // must never come while the file is missing.
    std::thread::sleep(Duration::from_millis(300));
    assert!(seen.all().is_empty(), "a missing file keeps the last state");
    let fresh = ProjectedVolume::new(vol.dir()).expect("recreate");
    assert!(fresh.project_one(KEY, b"v2").expect("project"));
    fs::write(&secret, b"s2").expect("secret");
    // v2 may come twice (with the old secret, then the new) if the removal was handled
    // only after the recreation; either way it comes, and before v3.
    assert!(
        seen.wait_until(WAIT, |b| b.iter().any(|x| x == "v2")),
        "recreated directory not noticed"
    );
    // Watched again: with no poll in reach, only the new watch can deliver v3.
    assert!(fresh.project_one(KEY, b"v3").expect("project"));
    assert!(
        seen.wait_until(WAIT, |b| b.iter().any(|x| x == "v3")),
        "the recreated directory is not watched: {:?}",
        seen.bodies()
    );
    let mut bodies = seen.bodies();
    bodies.dedup();
    assert_eq!(bodies, vec!["v2", "v3"]);
}

#[test]
fn a_stale_data_tmp_is_ignored() {
    let (_tmp, vol, _file, seen, _w) = setup("stale", opts(30, 200));
    // Left behind by a writer that crashed between its steps (3) and (4), pointing at a
    // complete directory with other bytes.
    let bogus = vol.dir().join("..2000_01_01_00_00_00.000000001");
    fs::create_dir(&bogus).expect("mkdir");
    fs::write(bogus.join(KEY), b"never").expect("write");
    std::os::unix::fs::symlink(
        "..2000_01_01_00_00_00.000000001",
        vol.dir().join("..data_tmp"),
    )
    .expect("symlink");
    // Not synchronisation: a bounded look (more than two polls) for a delivery that must
    // never come.
    std::thread::sleep(Duration::from_millis(500));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
    // kubelet itself cannot go on until it is gone; once it is, updates flow again.
    fs::remove_file(vol.dir().join("..data_tmp")).expect("rm");
    assert!(vol.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT));
    // Not synchronisation: a bounded look for a further delivery that must never come.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.bodies(), vec!["v2"]);
}

#[test]
fn a_missing_file_keeps_the_last_state() {
    let (_tmp, vol, _file, seen, _w) = setup("missing", opts(30, 200));
    assert!(vol
        .project_one("renamed.toml", b"v2")
        .expect("drop the key"));
    // Not synchronisation: a bounded look (more than two polls) for a delivery that must
    // never come.
    std::thread::sleep(Duration::from_millis(500));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
    assert!(vol.project_one(KEY, b"v3").expect("restore"));
    assert!(seen.wait_for(1, WAIT));
    assert_eq!(seen.bodies(), vec!["v3"]);
}

#[test]
fn a_plain_file_in_a_directory_is_watched_too() {
    let tmp = TempDir::new("plain");
    let file = tmp.0.join(KEY);
    fs::write(&file, b"v1").expect("write");
    let initial = read_snapshot(&file).expect("read").sha256;
    let seen = Seen::default();
    let _w =
        spawn_watcher(file.clone(), initial, opts(30, 30_000), seen.callback()).expect("spawn");
    // The watch exists once `spawn_watcher` returns: no wait before the write.
    fs::write(&file, b"v2").expect("write");
    assert!(seen.wait_for(1, WAIT));
    // Our own reads (open/close events) must not make it re-read in a loop: nothing further
    // (a bounded look, not synchronisation).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.bodies(), vec!["v2"]);
    assert_eq!(seen.all()[0].data_target, None);
}

#[test]
fn read_snapshot_mid_update_never_mixes_projections() {
    let tmp = TempDir::new("midupdate");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    vol.project_one(KEY, b"v1").expect("project");
    let file = vol.dir().join(KEY);
    let old = vol.data_target().expect("old target");
    let mut files = BTreeMap::new();
    files.insert(KEY.to_string(), b"v2".to_vec());
    let dir = vol.dir().to_path_buf();
    let mut checked = Vec::new();
    vol.project_with_hook(&files, &mut |step| {
        let s = read_snapshot(&file).expect("read mid-update");
        let now = fs::read_link(dir.join("..data"))
            .expect("..data")
            .to_string_lossy()
            .into_owned();
        assert_eq!(s.data_target.as_deref(), Some(now.as_str()), "step {step}");
        let expected: &[u8] = if now == old { b"v1" } else { b"v2" };
        assert_eq!(s.bytes, expected, "step {step}");
        if step == 7 {
            assert!(
                !dir.join(&old).exists(),
                "old directory deleted before this read"
            );
        }
        checked.push(step);
    })
    .expect("project");
    assert_eq!(checked, (1..=7).collect::<Vec<u8>>());
}

#[test]
fn read_snapshot_under_concurrent_updates_is_always_consistent() {
    let tmp = TempDir::new("concurrent");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    vol.project_one(KEY, b"0").expect("project");
    let file = vol.dir().join(KEY);
    let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    written.insert(vol.data_target().expect("target"), b"0".to_vec());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut snaps = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) && snaps.len() < 200_000 {
                match read_snapshot(&file) {
                    Ok(s) => snaps.push((s.data_target, s.bytes)),
                    Err(e) => errors.push(format!("{:?}: {e}", e.kind())),
                }
            }
            (snaps, errors)
        })
    };
    for i in 1..=200 {
        let body = format!("{i}").into_bytes();
        let mut files = BTreeMap::new();
        files.insert(KEY.to_string(), body.clone());
        let mut target = None;
        vol.project_with_hook(&files, &mut |step| {
            if step == 4 {
                target = fs::read_link(vol_dir(&file).join("..data")).ok();
            }
        })
        .expect("project");
        let target = target.expect("step 4");
        written.insert(target.to_string_lossy().into_owned(), body);
    }
    stop.store(true, Ordering::Relaxed);
    let (snaps, errors) = reader.join().expect("reader");
    assert!(!snaps.is_empty());
    for (target, bytes) in &snaps {
        let target = target.as_ref().expect("..data target");
        assert_eq!(
            written.get(target),
            Some(bytes),
            "snapshot of {target} has the wrong bytes"
        );
    }
    // A read fails only when `..data` changed during each of its five tries, which needs
    // this test's back-to-back updates *and* a preempted reader; never with another error.
    assert!(
        errors.iter().all(|e| e.starts_with("Interrupted")),
        "{errors:?}"
    );
    assert!(errors.len() * 100 < snaps.len(), "{} errors", errors.len());
}

fn vol_dir(file: &Path) -> PathBuf {
    file.parent().expect("parent").to_path_buf()
}

#[test]
fn dropping_the_watcher_stops_it() {
    let (_tmp, vol, _file, seen, w) = setup("drop", opts(20, 50));
    drop(w);
    assert!(vol.project_one(KEY, b"v2").expect("project"));
    // Not synchronisation: a bounded look (six polls) for a delivery that must never come.
    std::thread::sleep(Duration::from_millis(300));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
}

#[test]
fn a_panicking_handler_does_not_stop_the_watcher() {
    let tmp = TempDir::new("panic");
    let vol = ProjectedVolume::new(&tmp.0.join("config")).expect("volume");
    vol.project_one(KEY, b"v1").expect("project");
    let file = vol.dir().join(KEY);
    let initial = read_snapshot(&file).expect("read").sha256;
    let seen = Seen::default();
    let mut inner = seen.callback();
    let _w = spawn_watcher(
        file,
        initial,
        opts(20, 30_000),
        Box::new(move |s| {
            let boom = s.bytes == b"boom";
            inner(s);
            assert!(!boom, "handler panics on purpose");
        }),
    )
    .expect("spawn");
    assert!(vol.project_one(KEY, b"boom").expect("project"));
    assert!(seen.wait_for(1, WAIT));
    assert!(vol.project_one(KEY, b"v3").expect("project"));
    assert!(seen.wait_for(2, WAIT), "watcher died with the handler");
    assert_eq!(seen.bodies(), vec!["boom", "v3"]);
}

// ---------------------------------------------------------------------------------------
// The kubelet helper itself: the layout and update order these tests rely on.
// ---------------------------------------------------------------------------------------

fn link(p: &Path) -> String {
    fs::read_link(p)
        .expect("readlink")
        .to_string_lossy()
        .into_owned()
}

fn ts_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data" && n != "..data_tmp")
        .collect();
    v.sort();
    v
}

fn key_map(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn utc_stamp_matches_known_dates() {
    assert_eq!(utc_stamp(0), "1970_01_01_00_00_00");
    assert_eq!(utc_stamp(951_782_400), "2000_02_29_00_00_00");
    assert_eq!(utc_stamp(1_795_467_600), "2026_11_23_21_00_00");
    assert_eq!(utc_stamp(4_107_542_399), "2100_02_28_23_59_59");
}

#[test]
fn layout_after_one_projection() {
    let tmp = TempDir::new("k-one");
    let dir = tmp.0.join("config");
    let vol = ProjectedVolume::new(&dir).expect("new");
    assert!(
        vol.data_target().is_err(),
        "no ..data before the first projection"
    );
    assert!(vol
        .project(&key_map(&[("gateway.toml", "a = 1\n"), ("extra.txt", "x")]))
        .expect("project"));

    let target = vol.data_target().expect("..data");
    assert_eq!(link(&dir.join("..data")), target);
    assert!(target.starts_with(".."), "{target}");
    let (stamp, digits) = target[2..].split_once('.').expect("dot");
    assert_eq!(stamp.len(), "2026_11_23_21_00_00".len(), "{target}");
    assert_eq!(digits.len(), 9, "{target}");
    assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{target}");

    assert_eq!(link(&dir.join("gateway.toml")), "..data/gateway.toml");
    assert_eq!(link(&dir.join("extra.txt")), "..data/extra.txt");
    assert_eq!(
        fs::read(dir.join("gateway.toml")).expect("read"),
        b"a = 1\n"
    );
    assert_eq!(
        fs::read(dir.join(&target).join("gateway.toml")).expect("read"),
        b"a = 1\n"
    );
    assert!(fs::symlink_metadata(dir.join("..data_tmp")).is_err());
    assert_eq!(ts_dirs(&dir), vec![target.clone()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(&target))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
    }
}

#[test]
fn layout_after_two_projections_and_identical_reproject() {
    let tmp = TempDir::new("k-two");
    let dir = tmp.0.join("config");
    let vol = ProjectedVolume::new(&dir).expect("new");
    assert!(vol
        .project(&key_map(&[
            ("gateway.toml", "a = 1\n"),
            ("old.txt", "gone soon")
        ]))
        .expect("first"));
    let first = vol.data_target().expect("first target");
    let gw_link_before = fs::symlink_metadata(dir.join("gateway.toml")).expect("meta");

    assert!(vol
        .project(&key_map(&[("gateway.toml", "a = 2\n"), ("new.txt", "n")]))
        .expect("second"));
    let second = vol.data_target().expect("second target");
    assert_ne!(first, second);
    assert_eq!(
        ts_dirs(&dir),
        vec![second.clone()],
        "old timestamp dir removed"
    );
    assert!(
        fs::symlink_metadata(dir.join("old.txt")).is_err(),
        "dropped key's link removed"
    );
    assert_eq!(link(&dir.join("new.txt")), "..data/new.txt");
    assert_eq!(link(&dir.join("gateway.toml")), "..data/gateway.toml");
    assert_eq!(
        fs::read(dir.join("gateway.toml")).expect("read"),
        b"a = 2\n"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let after = fs::symlink_metadata(dir.join("gateway.toml")).expect("meta");
        assert_eq!(
            gw_link_before.ino(),
            after.ino(),
            "existing visible link never touched"
        );
    }

    // Identical bytes, same keys: nothing is written at all.
    assert!(!vol
        .project(&key_map(&[("gateway.toml", "a = 2\n"), ("new.txt", "n")]))
        .expect("third"));
    assert_eq!(vol.data_target().expect("target"), second);
    assert_eq!(ts_dirs(&dir), vec![second.clone()]);

    // Same bytes but a key dropped: that is a write.
    assert!(vol.project_one("gateway.toml", b"a = 2\n").expect("fourth"));
    assert_ne!(vol.data_target().expect("target"), second);
    assert!(fs::symlink_metadata(dir.join("new.txt")).is_err());
}

#[test]
fn hook_sees_the_steps_in_kubelet_order() {
    let tmp = TempDir::new("k-hook");
    let dir = tmp.0.join("config");
    let vol = ProjectedVolume::new(&dir).expect("new");
    vol.project_one("gateway.toml", b"v1").expect("first");
    let old = vol.data_target().expect("old");
    let mut seen = Vec::new();
    let d = dir.clone();
    let old2 = old.clone();
    let changed = vol
        .project_with_hook(&key_map(&[("gateway.toml", "v2")]), &mut |step| {
            let data = fs::read_link(d.join("..data"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = fs::symlink_metadata(d.join("..data_tmp")).is_ok();
            let old_exists = d.join(&old2).exists();
            seen.push((step, data == old2, tmp, old_exists, ts_dirs(&d).len()));
        })
        .expect("second");
    assert!(changed);
    assert_eq!(
        seen,
        vec![
            (1, true, false, true, 1),
            (2, true, false, true, 2),
            (3, true, true, true, 2),
            (4, false, false, true, 2),
            (5, false, false, true, 2),
            (6, false, false, true, 2),
            (7, false, false, false, 1),
        ]
    );
    let mut steps = Vec::new();
    assert!(!vol
        .project_with_hook(&key_map(&[("gateway.toml", "v2")]), &mut |s| steps.push(s))
        .expect("same"));
    assert_eq!(steps, vec![1]);
}

#[test]
fn stale_data_tmp_fails_the_update_like_kubelet() {
    let tmp = TempDir::new("k-stale");
    let dir = tmp.0.join("config");
    let vol = ProjectedVolume::new(&dir).expect("new");
    vol.project_one("gateway.toml", b"v1").expect("first");
    let target = vol.data_target().expect("target");
    std::os::unix::fs::symlink("..nowhere", dir.join("..data_tmp")).expect("stale");
    assert!(vol.project_one("gateway.toml", b"v2").is_err());
    assert_eq!(vol.data_target().expect("target"), target);
    assert_eq!(
        ts_dirs(&dir),
        vec![target],
        "the half-made directory is cleaned up"
    );
    fs::remove_file(dir.join("..data_tmp")).expect("rm");
    assert!(vol.project_one("gateway.toml", b"v2").expect("retry"));
    assert_eq!(fs::read(dir.join("gateway.toml")).expect("read"), b"v2");
}

#[test]
fn many_updates_in_a_row_get_distinct_names() {
    let tmp = TempDir::new("k-many");
    let dir = tmp.0.join("config");
    let vol = ProjectedVolume::new(&dir).expect("new");
    let mut names = std::collections::BTreeSet::new();
    for i in 0..50 {
        assert!(vol
            .project_one("k", format!("{i}").as_bytes())
            .expect("project"));
        assert!(names.insert(vol.data_target().expect("target")));
        assert_eq!(ts_dirs(&dir).len(), 1);
    }
}
