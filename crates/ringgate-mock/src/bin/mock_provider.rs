//! Standalone mock OpenAI-compatible provider ([`ringgate_mock::MockProvider`]), for
//! `cargo xtask demo` and trying the gateway by hand.
//!
//! Usage: `cargo run -p ringgate-mock -- [--listen ADDR] [--idle-close-ms N] [--chunk-interval-ms N]`
//! (default listen address `127.0.0.1:9000`). Runs until killed.

use ringgate_mock::{MockOptions, MockProvider};
use std::process::ExitCode;

const USAGE: &str =
    "usage: mock_provider [--listen ADDR] [--idle-close-ms N] [--chunk-interval-ms N]";

/// Parses the command line into a listen address and options.
fn parse_args(args: impl Iterator<Item = String>) -> Result<(String, MockOptions), String> {
    let mut listen = "127.0.0.1:9000".to_string();
    let mut opts = MockOptions::default();
    let mut args = args;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => listen = value("--listen")?,
            "--idle-close-ms" => {
                let v = value("--idle-close-ms")?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--idle-close-ms: not a number: {v}"))?;
                opts.idle_close_ms = Some(ms);
            }
            "--chunk-interval-ms" => {
                let v = value("--chunk-interval-ms")?;
                opts.chunk_interval_ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--chunk-interval-ms: not a number: {v}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument: {other}\n{USAGE}")),
        }
    }
    Ok((listen, opts))
}

fn main() -> ExitCode {
    let (listen, opts) = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mock = match MockProvider::start_with(&listen, opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mock provider: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("mock provider listening on {}", mock.addr());
    mock.run_forever();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn flags_in_both_spellings() {
        let (listen, opts) = parse_args(args(&[])).expect("defaults");
        assert_eq!(listen, "127.0.0.1:9000");
        assert_eq!(opts.idle_close_ms, None);
        let (listen, opts) =
            parse_args(args(&["--listen=127.0.0.1:0", "--idle-close-ms", "250"])).expect("flags");
        assert_eq!(listen, "127.0.0.1:0");
        assert_eq!(opts.idle_close_ms, Some(250));
        assert!(parse_args(args(&["--idle-close-ms", "soon"])).is_err());
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--port", "1"])).is_err());
    }
}
