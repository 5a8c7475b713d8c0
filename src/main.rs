//! The `ringgate` binary: parse the command line, set up logging, hand over to
//! [`ringgate::app`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// OpenAI-compatible AI API gateway: thread-per-core, io_uring, hot-reloaded config.
#[derive(Parser)]
#[command(name = "ringgate", version, about)]
struct Cli {
    /// Config: a TOML file, or a directory (a mounted ConfigMap) holding gateway.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// Once listening, print `ringgate ports listen=IP:PORT admin=IP:PORT [tls=IP:PORT]` on
    /// stdout: the addresses as bound, so a config with port 0 can be found.
    #[arg(long)]
    print_ports: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config (TOML file, directory or ConfigMap YAML) and print every error.
    Check {
        /// The config to check.
        path: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: in a pod or a file they corrupt every log line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("RINGGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match (cli.command, cli.config) {
        (Some(Command::Check { path }), _) => ringgate::app::check(&path),
        (None, Some(path)) => {
            init_logging();
            ringgate::task::install_panic_hook();
            ringgate::app::run(
                &path,
                ringgate::app::RunOptions {
                    print_ports: cli.print_ports,
                },
            )
        }
        (None, None) => {
            eprintln!("ringgate: --config PATH is required (see --help)");
            2
        }
    };
    std::process::exit(code);
}
