//! The `peerpost` binary: parse arguments, set up logging, dispatch. Everything else is in the
//! library (src/lib.rs has the map).

use std::process::ExitCode;

use clap::Parser;
use peerpost::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerpost: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
