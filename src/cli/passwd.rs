//! `peerpost passwd`: change the password the IMAP, POP3 and SMTP servers ask for.

use std::path::PathBuf;

use anyhow::Result;

use super::secret;
use crate::crypto;
use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the new password from this file (first line). Without it, it is asked for on the
    /// terminal, or read from the first line of standard input.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let id = home.load_identity()?;
    let password = secret::new_secret(args.password_file.as_deref(), "password")?;
    let hash = crypto::password::hash_password(&password)?;
    home.write_password_hash(&hash)?;
    println!("Password changed for {}.", id.address);
    Ok(())
}
