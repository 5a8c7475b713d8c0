//! Configuration: `gateway.toml` read (raw), checked (validate) and compiled into the
//! immutable [`Config`] the workers read through arc-swap.
//!
//! Only this module parses TOML. [`load_bytes`] is the one entry point: it returns either a
//! compiled config or every error found, each with its key path and line.

pub mod ai;
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
    toml_block_in_configmap_yaml(yaml).map(|(text, _)| text)
}

/// As [`toml_from_configmap_yaml`], also returning how many YAML lines precede the block, so
/// an error's TOML line can be reported as the manifest's line.
pub fn toml_block_in_configmap_yaml(yaml: &str) -> Option<(String, usize)> {
    let mut lines = yaml.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix(&format!("{CONFIG_FILE_NAME}:")) else {
            continue;
        };
        if !rest.trim_start().starts_with('|') {
            return None;
        }
        let key_indent = line.len() - trimmed.len();
        let mut out = String::new();
        let mut block_indent: Option<usize> = None;
        for (_, l) in lines.by_ref() {
            if l.trim().is_empty() {
                out.push('\n');
                continue;
            }
            let indent = l.len() - l.trim_start().len();
            if indent <= key_indent {
                break;
            }
            let bi = *block_indent.get_or_insert(indent);
            if indent < bi {
                break;
            }
            out.push_str(&l[bi..]);
            out.push('\n');
        }
        return Some((out, index + 1));
    }
    None
}
