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
    let raw = validate::parse_raw(text)?;
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
    if let Some(quoted) = rest.strip_prefix('"') {
        // What `kubectl get configmap -o yaml` prints: one double-quoted scalar. Its lines
        // are not the TOML's, so errors are reported at the TOML's own lines.
        let mut text = quoted.to_string();
        for l in &lines[k + 1..] {
            text.push('\n');
            text.push_str(l);
        }
        return yaml_double_quoted(&text)
            .map(|t| (t, 0))
            .map_err(|e| format!("{}: {e}", at(k)));
    }
    if !rest.starts_with('|') {
        return Err(format!(
            "{}: only the block form `{CONFIG_FILE_NAME}: |` and the double-quoted form \
             `{CONFIG_FILE_NAME}: \"...\"` are understood",
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

/// Decodes a YAML double-quoted scalar whose opening quote was already taken; `text` runs to
/// the end of the manifest (only what precedes the closing quote is used). Escapes as YAML
/// 1.2 defines them; a line break folds to a space, an empty line to a newline, and a
/// backslash before a line break joins the lines.
fn yaml_double_quoted(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let skip_indent = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(out),
            '\\' => {
                let Some(e) = chars.next() else { break };
                match e {
                    '\n' => skip_indent(&mut chars),
                    'n' => out.push('\n'),
                    't' | '\t' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'v' => out.push('\u{b}'),
                    'f' => out.push('\u{c}'),
                    'e' => out.push('\u{1b}'),
                    ' ' => out.push(' '),
                    '"' => out.push('"'),
                    '/' => out.push('/'),
                    '\\' => out.push('\\'),
                    'N' => out.push('\u{85}'),
                    '_' => out.push('\u{a0}'),
                    'L' => out.push('\u{2028}'),
                    'P' => out.push('\u{2029}'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(n).collect();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == n)
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad escape \\{e}{hex} in the quoted value"))?;
                        out.push(ch);
                    }
                    other => return Err(format!("unknown escape \\{other} in the quoted value")),
                }
            }
            '\n' => {
                // Folding: trailing blanks before the break go, and so does the indentation
                // after it; one break is a space, each further (empty) line a newline.
                while out.ends_with(' ') || out.ends_with('\t') {
                    out.pop();
                }
                let mut breaks = 0;
                loop {
                    skip_indent(&mut chars);
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                        breaks += 1;
                    } else {
                        break;
                    }
                }
                if breaks == 0 {
                    out.push(' ');
                } else {
                    out.extend(std::iter::repeat_n('\n', breaks));
                }
            }
            c => out.push(c),
        }
    }
    Err("the double-quoted value is not closed".to_string())
}
