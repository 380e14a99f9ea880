//! `peerpost key show | export --phrase | import --phrase`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use super::secret;
use crate::crypto::{self, UserKeys, phrase};
use crate::home::{Home, HomeError};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the address and the key fingerprints (compare them out of band).
    Show(ShowArgs),
    /// Print the user key as a 25-word recovery phrase (keep it offline; it is your mailbox).
    Export(ExportArgs),
    /// Create this home from a recovery phrase: same user keys, a new device key.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Export as a printable recovery phrase (25 words with a checksum).
    #[arg(long, required = true)]
    pub phrase: bool,
    /// File holding the passphrase of a protected key (asked for on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Import from a recovery phrase, read from --phrase-file, the terminal or standard input.
    #[arg(long, required = true)]
    pub phrase: bool,
    /// File holding the recovery phrase.
    #[arg(long, value_name = "FILE")]
    pub phrase_file: Option<PathBuf>,
    /// The mail address the key belongs to; without it, read from the key's newest backup
    /// index in the ring (joined through overlay.bootstrap / --bootstrap).
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// Protect the imported key with the passphrase in this file.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The IMAP/POP3/SMTP password for this node, from this file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Replace an existing identity in this home.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub join: super::restore::JoinArgs,
}

pub fn execute(cmd: Command, home: &Home) -> Result<()> {
    match cmd {
        Command::Show(args) => show(args, home),
        Command::Export(args) => export(args, home),
        Command::Import(args) => import(args, home),
    }
}

fn show(args: ShowArgs, home: &Home) -> Result<()> {
    let (id, user, device) = home.load_identity_keys()?;
    let user_fp = user.fingerprint();
    let device_fp = crypto::fingerprint(&[&device]);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "address": id.address,
                "user_fingerprint": user_fp,
                "device_fingerprint": device_fp,
                "sign_key": id.sign_key,
                "enc_key": id.enc_key,
                "device_key": id.device_key,
            })
        );
    } else {
        println!("address:            {}", id.address);
        println!("user fingerprint:   {user_fp}");
        println!("device fingerprint: {device_fp}");
    }
    Ok(())
}

/// Loads the user keys, asking for the passphrase when the key file needs one.
pub(crate) fn load_user_keys(
    home: &Home,
    passphrase_file: Option<&std::path::Path>,
) -> Result<UserKeys> {
    let pass = if home.user_key_is_protected()? {
        match secret::existing_secret(passphrase_file, "Passphrase of the user key")? {
            Some(p) => Some(p),
            None => bail!(
                "the user key is passphrase-protected: give --passphrase-file FILE (or run on a terminal)"
            ),
        }
    } else {
        None
    };
    match home.load_user_keys(pass.as_ref().map(|p| p.as_bytes())) {
        Err(HomeError::Key {
            source: crypto::Error::WrongPassphrase,
            ..
        }) => bail!("wrong passphrase for {}", home.user_key().display()),
        other => Ok(other?),
    }
}

fn export(args: ExportArgs, home: &Home) -> Result<()> {
    let id = home.load_identity()?;
    let keys = load_user_keys(home, args.passphrase_file.as_deref())?;
    if keys.public().fingerprint() != id.user_keys().map(|k| k.fingerprint()).unwrap_or_default() {
        bail!(
            "{} does not match the keys in {}: the home is inconsistent",
            home.user_key().display(),
            home.identity().display()
        );
    }
    let phrase = Zeroizing::new(phrase::encode(keys.seed()));
    eprintln!(
        "Recovery phrase of {} (user fingerprint {}).\n\
         Anyone with these words can read your mail: write them down and keep them offline.",
        id.address,
        keys.public().fingerprint()
    );
    for (row, chunk) in phrase.split(' ').collect::<Vec<_>>().chunks(5).enumerate() {
        let line: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{:>2}. {:<9}", row * 5 + i + 1, w))
            .collect();
        println!("{}", line.join(" ").trim_end());
    }
    Ok(())
}

fn import(args: ImportArgs, home: &Home) -> Result<()> {
    let text = secret::phrase(args.phrase_file.as_deref())?;
    let seed =
        Zeroizing::new(phrase::decode(&text).context("the recovery phrase was not accepted")?);
    let keys = UserKeys::from_seed(*seed);
    eprintln!(
        "Phrase accepted: user fingerprint {}",
        keys.public().fingerprint()
    );
    home.check_not_initialized(args.force)?;
    let address = match &args.address {
        Some(a) => a.clone(),
        None => super::restore::address_from_ring(home, &seed, &args.join)?,
    };
    super::init::provision(
        home,
        &address,
        keys,
        args.password_file.as_deref(),
        args.passphrase_file.as_deref(),
        args.force,
    )
}
