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

/// A config that would take every route down is refused by `ringgate check` (exit 1, a
/// clear message), and so is a manifest whose `gateway.toml` kubectl would reject or apply
/// empty: never "ok (0 routes)".
#[test]
fn check_refuses_empty_configs_and_misindented_manifests() {
    let dir = std::env::temp_dir().join(format!("ringgate-check-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let toml = dir.join("gateway.toml");
    for (text, want) in [
        ("", "the config is empty"),
        ("[server]\nlisten = \"127.0.0.1:8080\"\n", "no [[routes]]"),
    ] {
        std::fs::write(&toml, text).expect("write");
        let (code, out) = check(&toml);
        assert_eq!(code, 1, "{text:?}: {out}");
        assert!(
            out.contains(want) && out.contains("allow_no_routes"),
            "{out}"
        );
        assert!(!out.contains("ok ("), "{out}");
    }
    std::fs::write(&toml, "[server]\nallow_no_routes = true\n").expect("write");
    let (code, out) = check(&toml);
    assert_eq!(code, 0, "{out}");

    let head = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
    let body = "[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\n";
    let indented = |n: usize| -> String {
        body.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let yaml = dir.join("cm.yaml");
    let cases: Vec<(String, &str)> = vec![
        // The block at the key's own indentation: YAML reads an empty string.
        (format!("{head}data:\n  gateway.toml: |\n{}", indented(2)), "line 6: the `gateway.toml: |` block is empty"),
        // The key not indented under data:, or under another key.
        (format!("{head}data:\ngateway.toml: |\n{}", indented(2)), "line 6: `gateway.toml` is not directly under"),
        (format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  gateway.toml: |\n{}data: {{}}\n", indented(4)), "line 5: `gateway.toml` is not directly under"),
        // A sibling key at another indentation: kubectl's YAML parser rejects it.
        (format!("{head}data:\n  other: x\n    gateway.toml: |\n{}", indented(6)), "line 7: `gateway.toml` is not directly under"),
        (format!("{head}data:\n    other: x\n  gateway.toml: |\n{}", indented(4)), "line 7: `gateway.toml` is indented 2 spaces but the keys above it under `data:` 4"),
        // A block line indented less than the first one: cut short, or a YAML error.
        (
            format!("{head}data:\n  gateway.toml: |\n{}   [[routes]]\n", indented(4)),
            "line 13: indented 3 spaces, less than the block's first line (4)",
        ),
    ];
    for (text, want) in &cases {
        std::fs::write(&yaml, text).expect("write");
        let (code, out) = check(&yaml);
        assert_eq!(code, 1, "{text}\n{out}");
        assert!(out.contains(want), "{text}\nwant {want:?} in:\n{out}");
        assert!(!out.contains("ok ("), "{out}");
    }
    // The same manifest, indented right, is fine.
    std::fs::write(
        &yaml,
        format!("{head}data:\n  gateway.toml: |\n{}", indented(4)),
    )
    .expect("write");
    let (code, out) = check(&yaml);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 routes"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `kubectl get configmap -o yaml` prints `gateway.toml` as one double-quoted scalar (escaped
/// newlines, long lines wrapped with a trailing backslash): `ringgate check` reads that form
/// too, so a config fetched from a cluster can be checked as it is.
#[test]
fn check_reads_the_double_quoted_form_kubectl_prints() {
    let dir = std::env::temp_dir().join(format!("ringgate-check-quoted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let yaml = dir.join("cm.yaml");
    let manifest = concat!(
        "apiVersion: v1\n",
        "data:\n",
        "  gateway.toml: \"[upstreams.u]\\nurl = \\\"http://127.0.0.1:1\\\"\\n\\n[[routes]]\\nname\n",
        "    = \\\"r\\\"\\nprefix = \\\"/\\\"\\nupstream = \\\"u\\\"\\nretry_budget_ms \\\n",
        "    = 30000\\n\"\n",
        "kind: ConfigMap\n",
        "metadata:\n",
        "  name: ringgate-config\n",
    );
    std::fs::write(&yaml, manifest).expect("write");
    let (code, out) = check(&yaml);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 routes"), "{out}");
    // The same form with an error in it is reported, not read as empty.
    std::fs::write(
        &yaml,
        manifest.replace("upstream = \\\"u\\\"", "upstream = \\\"ghost\\\""),
    )
    .expect("write");
    let (code, out) = check(&yaml);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].upstream"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
