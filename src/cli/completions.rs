//! `peerpost completions SHELL`: the shell completion script for every subcommand and flag,
//! generated from the same clap definition the binary parses with (so it cannot drift).
//!
//! bash: `source <(peerpost completions bash)`, or install it as
//! `/usr/share/bash-completion/completions/peerpost` (scripts/install does).

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to write the completion script for.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: Shell,
}

pub fn execute(args: Args) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "peerpost", &mut out);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .context("cannot write the completion script to stdout")
}
