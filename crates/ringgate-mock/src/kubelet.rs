//! A faithful, std-only re-enactment of kubelet's `AtomicWriter`
//! (`pkg/volume/util/atomic_writer.go`): how a ConfigMap mounted as a directory is laid out
//! and, above all, the exact order in which one update changes it.
//!
//! Layout of a projected volume directory `D`:
//!
//! ```text
//! D/gateway.toml -> ..data/gateway.toml
//! D/..data       -> ..2026_11_23_21_00_00.123456789
//! D/..2026_11_23_21_00_00.123456789/gateway.toml
//! ```
//!
//! One update, in order: (1) nothing is written when every key's bytes are unchanged and no
//! key was dropped; (2) a new `..<timestamp>` directory is created and every key written into
//! it; (3) the symlink `..data_tmp` is pointed at it; (4) `..data_tmp` is renamed onto `..data`
//! (the only atomic step); (5) missing visible links `KEY -> ..data/KEY` are created (existing
//! ones are never touched); (6) visible links of dropped keys are removed; (7) the old
//! timestamped directory is removed recursively.
//!
//! Used by the integration tests, `cargo xtask demo` and the reload bench.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the symlink that points at the current timestamped directory.
pub const DATA_DIR_NAME: &str = "..data";
/// Name of the symlink created next to `..data` and renamed onto it.
pub const NEW_DATA_DIR_NAME: &str = "..data_tmp";

/// Distinguishes timestamp directories created within one clock tick.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory that kubelet projects a ConfigMap into, updated exactly as kubelet does.
#[derive(Debug, Clone)]
pub struct ProjectedVolume {
    dir: PathBuf,
}

impl ProjectedVolume {
    /// A volume rooted at `dir`, which is created (with parents) when missing. Nothing is
    /// projected yet: the directory holds no `..data` until the first [`ProjectedVolume::project`].
    pub fn new(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The volume's directory (what the pod sees as its mount point).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current `..data` link target, e.g. `..2026_11_23_21_00_00.123456789`.
    pub fn data_target(&self) -> io::Result<String> {
        let target = fs::read_link(self.dir.join(DATA_DIR_NAME))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// One kubelet update with the full set of keys (key name → bytes), steps (1)–(7) in
    /// kubelet's order. Returns `false` when step (1) found nothing to write.
    pub fn project(&self, files: &BTreeMap<String, Vec<u8>>) -> io::Result<bool> {
        self.project_with_hook(files, &mut |_| {})
    }

    /// Convenience for [`ProjectedVolume::project`] with a volume that holds exactly one key.
    pub fn project_one(&self, key: &str, bytes: &[u8]) -> io::Result<bool> {
        let mut files = BTreeMap::new();
        files.insert(key.to_string(), bytes.to_vec());
        self.project(&files)
    }

    /// Like [`ProjectedVolume::project`], but calls `between(step)` right after each numbered
    /// step (1..=7) so a test can act mid-update, e.g. read while the old directory is gone.
    /// When step (1) finds nothing to write, only `between(1)` is called.
    ///
    /// As in kubelet, a stale `..data_tmp` left by a crashed writer makes step (3) fail: the
    /// new timestamped directory is removed again and the error returned.
    pub fn project_with_hook(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        between: &mut dyn FnMut(u8),
    ) -> io::Result<bool> {
        for key in files.keys() {
            validate_key(key)?;
        }
        let data_link = self.dir.join(DATA_DIR_NAME);

        // (1) Compare with what `..data` currently holds.
        let old_ts_name = fs::read_link(&data_link).ok();
        let old_keys = match &old_ts_name {
            Some(name) => list_files(&self.dir.join(name))?,
            None => BTreeSet::new(),
        };
        let dropped: BTreeSet<String> = old_keys
            .iter()
            .filter(|k| !files.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = old_ts_name.is_none();
        if !changed {
            for (key, bytes) in files {
                match fs::read(data_link.join(key)) {
                    Ok(old) if old == *bytes => {}
                    _ => {
                        changed = true;
                        break;
                    }
                }
            }
        }
        between(1);
        if !changed && dropped.is_empty() {
            return Ok(false);
        }

        // (2) A new timestamped directory holding every key.
        let (ts_dir, ts_name) = self.new_timestamp_dir()?;
        if let Err(e) = write_payload(&ts_dir, files) {
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        between(2);

        // (3) `..data_tmp` -> the new directory (relative).
        let tmp_link = self.dir.join(NEW_DATA_DIR_NAME);
        if let Err(e) = symlink(Path::new(&ts_name), &tmp_link) {
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        between(3);

        // (4) The one atomic step.
        if let Err(e) = fs::rename(&tmp_link, &data_link) {
            let _ = fs::remove_file(&tmp_link);
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        between(4);

        // (5) Visible links that are missing; existing ones are never touched.
        let visible: BTreeSet<String> = files.keys().map(|k| top_component(k)).collect();
        for name in &visible {
            let link = self.dir.join(name);
            match fs::symlink_metadata(&link) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    symlink(&Path::new(DATA_DIR_NAME).join(name), &link)?;
                }
                Err(e) => return Err(e),
            }
        }
        between(5);

        // (6) Visible links of dropped keys.
        let old_visible: BTreeSet<String> = old_keys.iter().map(|k| top_component(k)).collect();
        for name in old_visible.difference(&visible) {
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        between(6);

        // (7) The old timestamped directory.
        if let Some(old) = old_ts_name {
            let old_path = self.dir.join(old);
            if old_path != ts_dir {
                match fs::remove_dir_all(&old_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        between(7);
        Ok(true)
    }

    /// Creates `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (UTC, 9 pseudo-random digits) with mode 0755,
    /// as `os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))` does.
    fn new_timestamp_dir(&self) -> io::Result<(PathBuf, String)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = format!("..{}.", utc_stamp(now.as_secs()));
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let seed = u64::from(now.subsec_nanos())
                ^ (u64::from(std::process::id()) << 32)
                ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let name = format!("{prefix}{:09}", mix(seed) % 1_000_000_000);
            let path = self.dir.join(&name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    set_mode(&path, 0o755)?;
                    return Ok((path, name));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not pick a fresh timestamp directory name",
        ))
    }
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC for `secs` since the UNIX epoch (no time-zone database needed).
pub fn utc_stamp(secs: u64) -> String {
    let (y, mo, d) = ringgate::civil::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    format!("{y:04}_{mo:02}_{d:02}_{h:02}_{m:02}_{s:02}")
}

/// splitmix64 finaliser: spreads the seed over all digits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Keys are relative paths without `..` components and must not start with `..`
/// (kubelet's `validatePath`).
fn validate_key(key: &str) -> io::Result<()> {
    let p = Path::new(key);
    let bad = key.is_empty()
        || key.starts_with("..")
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid key {key:?}"),
        ));
    }
    Ok(())
}

/// The first path component of a key: the name of its visible link.
fn top_component(key: &str) -> String {
    key.split('/').next().unwrap_or(key).to_string()
}

/// Every regular file under `root`, as `/`-separated paths relative to it.
fn list_files(root: &Path) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                stack.push((entry.path(), format!("{name}/")));
            } else {
                out.insert(name);
            }
        }
    }
    Ok(out)
}

/// Writes every key into `dir` (mode 0644), creating parent directories of nested keys.
fn write_payload(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
    for (key, bytes) in files {
        let path = dir.join(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes)?;
        set_mode(&path, 0o644)?;
    }
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "projected volumes need symlinks",
    ))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_is_kubelets_directory_format() {
        assert_eq!(utc_stamp(0), "1970_01_01_00_00_00");
        // 2026-11-23T21:00:05Z, the layout example above.
        assert_eq!(utc_stamp(1_795_467_605), "2026_11_23_21_00_05");
        assert_eq!(utc_stamp(951_825_599), "2000_02_29_11_59_59");
    }
}
