//! `peerpost export DIR`: write the mailbox as a Maildir that Dovecot and mutt read as is.

use std::path::PathBuf;

use anyhow::Result;

use super::open;
use crate::home::Home;
use crate::mailbox::transfer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the Maildir (must be absent or empty).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// File holding the passphrase of a protected key (asked on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    open::config(home)?;
    let rt = open::runtime()?;
    let report = rt.block_on(async {
        let mb = open::mailbox(home, args.passphrase_file.as_deref()).await?;
        let pb = open::progress_bar("exporting");
        let progress = |done: u64, total: u64| {
            pb.set_length(total);
            pb.set_position(done);
        };
        let r = transfer::export_maildir(&mb, &args.dir, &progress).await?;
        pb.finish_and_clear();
        anyhow::Ok(r)
    })?;
    println!(
        "Exported {} messages ({:.1} MB) in {} folder(s) to {}.",
        report.exported,
        report.bytes as f64 / 1e6,
        report.folders,
        args.dir.display()
    );
    Ok(())
}
