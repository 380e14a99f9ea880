//! `peerpost import DIR | --mbox FILE`: bring existing mail into the mailbox.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};

use super::open;
use crate::home::Home;
use crate::mailbox::transfer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Maildir (with Maildir++ subfolders `.Name/`) to import: flags from file names, dates
    /// from mtimes, folders created as needed.
    #[arg(
        value_name = "DIR",
        required_unless_present = "mbox",
        conflicts_with = "mbox"
    )]
    pub dir: Option<PathBuf>,
    /// Import an mbox file instead.
    #[arg(long, value_name = "FILE")]
    pub mbox: Option<PathBuf>,
    /// Folder the mbox goes into.
    #[arg(long, value_name = "NAME", default_value = "INBOX", requires = "mbox")]
    pub folder: String,
    /// File holding the passphrase of a protected key (asked on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let config = open::config(home)?;
    let max = config.smtp.max_message_size;
    let rt = open::runtime()?;
    let report = rt.block_on(async {
        let mb = open::mailbox(home, args.passphrase_file.as_deref()).await?;
        let pb = open::progress_bar("importing");
        let progress = |done: u64, total: u64| {
            pb.set_length(total);
            pb.set_position(done);
        };
        let started = Instant::now();
        let report = match (&args.dir, &args.mbox) {
            (Some(dir), _) => transfer::import_maildir(&mb, dir, max, &progress).await?,
            (None, Some(file)) => {
                transfer::import_mbox(&mb, file, &args.folder, max, &progress).await?
            }
            (None, None) => bail!("give a Maildir DIR or --mbox FILE"),
        };
        pb.finish_and_clear();
        anyhow::Ok((report, started.elapsed()))
    })?;
    let (report, took) = report;
    let secs = took.as_secs_f64().max(1e-6);
    println!(
        "Imported {} messages ({:.1} MB) into {} folder(s) in {:.1} s ({:.0} messages/s).",
        report.imported,
        report.bytes as f64 / 1e6,
        report.folders.len(),
        secs,
        report.imported as f64 / secs
    );
    if !report.skipped.is_empty() {
        println!("Skipped {} message(s):", report.skipped.len());
        for (what, why) in &report.skipped {
            println!("  {what}: {why}");
        }
    }
    Ok(())
}
