//! Every config shipped in examples/ and configmaps/ validates, and `ringgate check` reports
//! broken ones with key paths and lines and exit code 1.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run ringgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_shipped_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["examples", "configmaps"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("dir") {
            let path = entry.expect("entry").path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let is_config = ext == "toml"
                || (matches!(ext, "yaml" | "yml")
                    && std::fs::read_to_string(&path).is_ok_and(|t| t.contains("gateway.toml:")));
            if !is_config {
                continue;
            }
            let (code, text) = check(&path);
            assert_eq!(code, 0, "{}: {text}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} configs");
}

#[test]
fn check_reports_every_error_with_path_and_line() {
    let dir = std::env::temp_dir().join(format!("ringgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"nope\"\n\n[[routes]]\nname = \"r\"\nprefix = \"/v1/\"\nupstream = \"ghost\"\ntries = 0\n",
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, 1, "{text}");
    for want in [
        "line 2: server.listen",
        "line 7: routes[0].upstream",
        "line 8: routes[0].tries",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // A directory means DIR/gateway.toml.
    let (code, _) = check(&dir);
    assert_eq!(code, 1);
    std::fs::write(&file, "[server\n").expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, 1);
    assert!(text.contains("line 1"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_on_a_manifest_reports_the_manifests_own_lines() {
    let dir = std::env::temp_dir().join(format!("ringgate-check-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("cm.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  gateway.toml: |\n    [server]\n    listen = \"nope\"\n",
    )
    .expect("write");
    let (code, text) = check(&file);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("line 8: server.listen"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
