//! Replays every checked-in fuzz input on stable: `fuzz/corpus/<target>/seed-*` (the seeds) and
//! `fuzz/regressions/<target>/*` (inputs that once crashed a target, kept after the fix),
//! through the same check the fuzz target runs. A directory named after no target fails,
//! so a regression cannot be filed where nothing runs it.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs every file under `kind/<target>/`; returns how many ran.
fn replay(kind: &str) -> usize {
    let root = fuzz_dir().join(kind);
    let mut ran = 0;
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return 0;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let check = ringgate_fuzz_checks::target(&name)
            .unwrap_or_else(|| panic!("{kind}/{name}: no fuzz target of that name"));
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readable directory")
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.is_file())
            // libFuzzer adds its finds to corpus/<target>/ locally (git-ignored); the
            // checked-in seeds are the `seed-*` files.
            .filter(|p| {
                kind != "corpus"
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("readable input");
            eprintln!("{}", f.display());
            check(&data);
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_seed_passes_its_target() {
    let ran = replay("corpus");
    // Each target has a few seeds; an empty corpus means the path above broke.
    assert!(
        ran >= ringgate_fuzz_checks::TARGETS.len(),
        "only {ran} seeds"
    );
}

#[test]
fn every_regression_passes_its_target() {
    replay("regressions");
}
