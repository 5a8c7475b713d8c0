//! `cargo xtask <command>`: project automation in Rust, no shell scripts.
//! - `demo`: the mock provider and the gateway, fed through a kubelet-style projection of
//!   configmaps/ringgate-config.yaml that is re-projected whenever that file is saved.
//! - `deploy`: renders (and applies) the Kubernetes objects for ringgate.
//! - `bench`: ringgate against nginx and against no proxy, side by side (target/bench/report.md).

mod bench;
mod demo;
mod deploy;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("deploy") => deploy::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask demo [--port 8080] [--mock-port 9000] [--admin-port 9901] [--once]");
            eprintln!("       cargo xtask deploy --help");
            eprintln!("       cargo xtask bench [--quick] [--rounds N] [--duration SECS] [--connections N]");
            2
        }
    };
    std::process::exit(code);
}
