//! `cargo xtask <command>`: project automation in Rust, no shell scripts.
//! - `demo`: the mock provider and the gateway, fed through a kubelet-style projection of
//!   configmaps/ringgate-config.yaml that is re-projected whenever that file is saved.
//! - `deploy`: renders (and applies) the Kubernetes objects for ringgate.
//! - `bench`: ringgate against nginx and against no proxy, side by side (target/bench/report.md).

mod bench;
mod demo;
mod deploy;

/// A nested `cargo` that builds as a plain `cargo build` in the workspace would: without
/// the variables cargo set for the xtask itself, which change build scripts' fingerprints
/// and would rebuild ring, rustls and ringgate on every run.
pub fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

const USAGE: &str = "usage: cargo xtask <command> [--help]
  demo     the mock provider and the gateway on configmaps/, live-reloading (demo --help)
  deploy   render and apply the Kubernetes objects (deploy --help)
  bench    ringgate against nginx and no proxy, side by side (bench --help)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("deploy") => deploy::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
