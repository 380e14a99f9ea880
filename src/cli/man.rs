//! `peerpost man [--dir DIR]`: manual pages generated from the CLI definition (roff, section
//! 1): `peerpost.1` and one page per subcommand (`peerpost-run.1`, `peerpost-key-show.1`, …),
//! so the pages say exactly what `--help` says.
//!
//! Without `--dir` the main page goes to stdout (`peerpost man | man -l -`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write every page (peerpost.1, peerpost-run.1, …) into this directory (created if
    /// missing) instead of printing peerpost.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn execute(args: Args) -> Result<()> {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    // Fills in the subcommands' display names (`peerpost-run`), which name their pages.
    cmd.build();
    match args.dir {
        None => {
            let mut out = Vec::new();
            page(cmd)
                .render(&mut out)
                .context("cannot render peerpost.1")?;
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .context("cannot write the page to stdout")
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut written = Vec::new();
            write_pages(&cmd, &dir, &mut written)?;
            for p in &written {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .manual("peerpost manual")
        .source(format!("peerpost {}", env!("CARGO_PKG_VERSION")))
}

/// This command's page, then its subcommands' (depth first), into `dir`.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let path = page(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("cannot write a manual page into {}", dir.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
