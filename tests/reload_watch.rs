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
    // Long enough for the start-up read and two polls.
    std::thread::sleep(Duration::from_millis(600));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
}

#[test]
fn one_change_is_delivered_exactly_once() {
    let (_tmp, vol, file, seen, _w) = setup("once", opts(50, 30_000));
    let before = vol.data_target().expect("target");
    assert!(vol.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT), "no delivery");
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
    std::thread::sleep(Duration::from_millis(500));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
}

#[test]
fn a_burst_inside_the_debounce_window_ends_in_the_last_state() {
    let (_tmp, vol, _file, seen, _w) = setup("burst", opts(300, 30_000));
    for v in ["v2", "v3", "v4"] {
        assert!(vol.project_one(KEY, v.as_bytes()).expect("project"));
    }
    assert!(seen.wait_for(1, WAIT), "no delivery");
    std::thread::sleep(Duration::from_millis(700));
    // Each `..data` rename is read at once (it is the atomic commit of an update), so a burst
    // may deliver intermediate versions, each whole and in order, but it ends in the last.
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
    std::thread::sleep(Duration::from_millis(200));
    let first: Vec<_> = rx.try_iter().collect();
    assert!(
        !first.is_empty(),
        "the file watch fires once (its directory is deleted)"
    );

    for (i, v) in ["v3", "v4"].iter().enumerate() {
        assert!(vol.project_one(KEY, v.as_bytes()).expect("project"));
        assert!(seen.wait_for(i + 2, WAIT), "directory watch missed {v}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let later: Vec<_> = rx.try_iter().collect();
    assert!(later.is_empty(), "the file watch still reports: {later:?}");
    assert_eq!(seen.bodies(), vec!["v2", "v3", "v4"]);
}

#[test]
fn lost_events_are_caught_by_the_poll() {
    let (_tmp, vol, file, polled, _w) = setup("lost", opts(50, 300));
    let initial = read_snapshot(&file).expect("read").sha256;
    let events_only = Seen::default();
    let _w2 = spawn_watcher(
        file.clone(),
        initial,
        opts(50, 60_000),
        events_only.callback(),
    )
    .expect("spawn");
    std::thread::sleep(Duration::from_millis(100));
    // Rewrite the real file inside the current timestamped directory: nothing happens in the
    // watched directory itself, so inotify reports nothing.
    let target = vol.data_target().expect("target");
    fs::write(vol.dir().join(&target).join(KEY), b"v2").expect("write in place");
    assert!(polled.wait_for(1, WAIT), "the poll did not catch it");
    assert_eq!(polled.bodies(), vec!["v2"]);
    assert_eq!(polled.all()[0].data_target, Some(target));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        events_only.all().is_empty(),
        "inotify was not supposed to see this: {:?}",
        events_only.bodies()
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
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(seen.bodies(), vec!["v2", "v3"]);
}

#[test]
fn a_removed_and_recreated_directory_is_watched_again() {
    // A long poll: after the directory is back, later changes must arrive through inotify.
    let poll = Duration::from_millis(1500);
    let (_tmp, vol, _file, seen, _w) = setup(
        "recreate",
        WatchOptions {
            debounce: Duration::from_millis(20),
            poll_interval: poll,
        },
    );
    fs::remove_dir_all(vol.dir()).expect("remove");
    std::thread::sleep(Duration::from_millis(300));
    assert!(seen.all().is_empty(), "a missing file keeps the last state");
    let fresh = ProjectedVolume::new(vol.dir()).expect("recreate");
    assert!(fresh.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT), "recreated directory not noticed");
    // Watched again: the next change comes well before the next poll would.
    let t = Instant::now();
    assert!(fresh.project_one(KEY, b"v3").expect("project"));
    assert!(seen.wait_for(2, WAIT));
    assert!(
        t.elapsed() < poll / 2,
        "took {:?}: not watched again",
        t.elapsed()
    );
    assert_eq!(seen.bodies(), vec!["v2", "v3"]);
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
    std::thread::sleep(Duration::from_millis(500));
    assert!(seen.all().is_empty(), "{:?}", seen.bodies());
    // kubelet itself cannot go on until it is gone; once it is, updates flow again.
    fs::remove_file(vol.dir().join("..data_tmp")).expect("rm");
    assert!(vol.project_one(KEY, b"v2").expect("project"));
    assert!(seen.wait_for(1, WAIT));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.bodies(), vec!["v2"]);
}

#[test]
fn a_missing_file_keeps_the_last_state() {
    let (_tmp, vol, _file, seen, _w) = setup("missing", opts(30, 200));
    assert!(vol
        .project_one("renamed.toml", b"v2")
        .expect("drop the key"));
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
    std::thread::sleep(Duration::from_millis(100));
    fs::write(&file, b"v2").expect("write");
    assert!(seen.wait_for(1, WAIT));
    // Our own reads (open/close events) must not make it re-read in a loop: nothing further.
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
    let t = Instant::now();
    drop(w);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(vol.project_one(KEY, b"v2").expect("project"));
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
