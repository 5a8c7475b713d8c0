//! Configuration: `gateway.toml` read (raw), checked (validate) and compiled into the
//! immutable [`Config`] the workers read through arc-swap.
//!
//! Only this module parses TOML. [`load_bytes`] is the one entry point: it returns either a
//! compiled config or every error found, each with its key path and line.

pub mod ai;
pub mod cluster;
pub mod compiled;
pub mod raw;
pub mod tls;
pub mod validate;

pub use compiled::*;
pub use validate::{ConfigError, ConfigErrors};

use std::path::{Path, PathBuf};

/// The file name looked for when `--config` names a directory (a mounted ConfigMap).
pub const CONFIG_FILE_NAME: &str = "gateway.toml";

/// Resolves `--config PATH`: a file is used as is, a directory means `PATH/gateway.toml`.
pub fn config_file_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CONFIG_FILE_NAME)
    } else {
        path.to_path_buf()
    }
}

/// Parses, validates and compiles config bytes. `base_dir` resolves relative file paths
/// (api keys) so a config works the same from any working directory.
pub fn load_bytes(bytes: &[u8], base_dir: &Path) -> Result<Config, ConfigErrors> {
    load_bytes_with(bytes, base_dir, SecretFiles::Read)
}

/// Whether compiling a config reads the secret files it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFiles {
    /// Read them (serving): a missing or empty key file is an error.
    Read,
    /// Do not touch them (`ringgate check` on a workstation, where the Secret is not
    /// mounted): only their paths are checked.
    Skip,
}

/// As [`load_bytes`], choosing whether secret files are read.
pub fn load_bytes_with(
    bytes: &[u8],
    base_dir: &Path,
    secrets: SecretFiles,
) -> Result<Config, ConfigErrors> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: None,
            message: format!("config is not UTF-8: {e}"),
        }])
    })?;
    let raw: raw::RawConfig = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![validate::error_from_toml(text, &e)]))?;
    validate::validate_and_compile(&raw, text, base_dir, secrets)
}

/// Pulls the `gateway.toml` text out of a ConfigMap manifest (YAML), so
/// `ringgate check configmaps/x.yaml` validates what users apply. Only the block-scalar form
/// (`gateway.toml: |`) that kubectl users write is understood.
pub fn toml_from_configmap_yaml(yaml: &str) -> Option<String> {
    toml_block_in_configmap_yaml(yaml)
        .ok()
        .map(|(text, _)| text)
}

/// As [`toml_from_configmap_yaml`], also returning how many YAML lines precede the block, so
/// an error's TOML line can be reported as the manifest's line.
///
/// A manifest kubectl would reject, or apply without a `data.gateway.toml`, is an error here
/// (with its line), never an empty config: the key must sit directly under the top-level
/// `data:`, its block must be indented deeper than the key, every line of the block at
/// least as deep as the block's first line, and no indentation may use tabs.
pub fn toml_block_in_configmap_yaml(yaml: &str) -> Result<(String, usize), String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let key = format!("{CONFIG_FILE_NAME}:");
    let Some(k) = lines.iter().position(|l| l.trim_start().starts_with(&key)) else {
        return Err(format!(
            "no `{CONFIG_FILE_NAME}: |` key found in the ConfigMap manifest"
        ));
    };
    let key_line = lines[k];
    let key_indent = indent(key_line);
    let at = |i: usize| format!("line {}", i + 1);
    if key_line[key_indent..].starts_with('\t') {
        return Err(format!("{}: YAML indentation must not use tabs", at(k)));
    }
    // The key's parent is the nearest line above it that is indented less.
    let parent = lines[..k].iter().rposition(|l| {
        !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) < key_indent
    });
    let under_data = parent.is_some_and(|p| lines[p].trim_end() == "data:");
    // `data:` itself is top-level: its own indentation is zero (trim_end keeps it).
    if key_indent == 0 || !under_data {
        return Err(format!(
            "{}: `{CONFIG_FILE_NAME}` is not directly under the top-level `data:` (check its \
             indentation): the ConfigMap would hold no {CONFIG_FILE_NAME}",
            at(k)
        ));
    }
    // Sibling keys under `data:` must share one indentation, or YAML rejects the manifest.
    if let Some(p) = parent {
        if let Some(first) = lines[p + 1..k]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            if indent(first) != key_indent {
                return Err(format!(
                    "{}: `{CONFIG_FILE_NAME}` is indented {key_indent} spaces but the keys \
                     above it under `data:` {}",
                    at(k),
                    indent(first)
                ));
            }
        }
    }
    let rest = key_line.trim_start()[key.len()..].trim_start();
    if !rest.starts_with('|') {
        return Err(format!(
            "{}: only the block form `{CONFIG_FILE_NAME}: |` is understood",
            at(k)
        ));
    }
    let mut out = String::new();
    let mut block_indent: Option<usize> = None;
    for (i, l) in lines.iter().enumerate().skip(k + 1) {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let ind = indent(l);
        if ind <= key_indent {
            break;
        }
        let bi = *block_indent.get_or_insert(ind);
        if ind < bi {
            return Err(format!(
                "{}: indented {ind} spaces, less than the block's first line ({bi}): \
                 YAML would reject the manifest or cut {CONFIG_FILE_NAME} short here",
                at(i)
            ));
        }
        out.push_str(&l[bi..]);
        out.push('\n');
    }
    if block_indent.is_none() {
        return Err(format!(
            "{}: the `{CONFIG_FILE_NAME}: |` block is empty: its lines must be indented \
             deeper than the key",
            at(k)
        ));
    }
    Ok((out, k + 1))
}
