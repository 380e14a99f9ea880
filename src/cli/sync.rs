//! `peerpost sync DIR`: keep a plain Maildir and the mailbox in step, both ways.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::open;
use crate::home::Home;
use crate::sync::Syncer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Maildir to keep in step (created if missing; Maildir++ folders as `.Name/`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// One pass, then exit (instead of watching until SIGINT/SIGTERM).
    #[arg(long)]
    pub once: bool,
    /// File holding the passphrase of a protected key (asked on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let config = open::config(home)?;
    let rt = open::runtime()?;
    rt.block_on(async {
        let mb = open::mailbox(home, args.passphrase_file.as_deref()).await?;
        let syncer = Syncer::new(mb, &args.dir, config.smtp.max_message_size)
            .with_context(|| format!("cannot use {}", args.dir.display()))?;
        let report_line = |r: &crate::sync::PassReport| {
            eprintln!("sync: {r}");
            for (what, why) in &r.problems {
                eprintln!("sync: skipped {what}: {why}");
            }
        };
        if args.once {
            let r = syncer.pass().await?;
            report_line(&r);
            return Ok(());
        }
        eprintln!(
            "sync: keeping {} in step (Ctrl-C to stop)",
            syncer.root().display()
        );
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals.cancel();
        });
        syncer.run(shutdown, report_line).await?;
        eprintln!("sync: stopped");
        anyhow::Ok(())
    })
}
