//! `peerpost init`: create the identity, TLS certificate, password hash, config and store.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{now_secs, secret};
use crate::config::{self, Config};
use crate::crypto::{self, DeviceKey, UserKeys};
use crate::home::{self, Home, PublicIdentity};
use crate::store::Store;
use crate::tls;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Your mail address, e.g. alice@example.org.
    #[arg(long, value_name = "ADDR")]
    pub address: String,
    /// Protect the user key with the passphrase in this file (first line). Without it the key
    /// file is protected by its permissions (0600) only.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the IMAP/POP3/SMTP password from this file (first line). Without it, it is asked
    /// for on the terminal, or read from the first line of standard input.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Replace an existing identity. The old keys are destroyed: export their recovery phrase
    /// first if the mail stored under them still matters.
    #[arg(long)]
    pub force: bool,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let keys = UserKeys::generate()?;
    provision(
        home,
        &args.address,
        keys,
        args.password_file.as_deref(),
        args.passphrase_file.as_deref(),
        args.force,
    )?;
    eprintln!(
        "Next: write down your recovery phrase (`peerpost key export --phrase`); it is the only \
         way to get your mail back if this machine is lost."
    );
    Ok(())
}

/// Creates a complete home for `keys` (shared by `init` and `key import`). Everything that can
/// fail on user input is checked before the first file is written.
pub(crate) fn provision(
    home: &Home,
    address: &str,
    keys: UserKeys,
    password_file: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
    force: bool,
) -> Result<()> {
    home.check_not_initialized(force)?;
    let address = crypto::record::normalize_address(address)
        .map_err(|why| anyhow::anyhow!("--address {address:?} {why}"))?;
    let passphrase = match passphrase_file {
        Some(f) => {
            let p = secret::from_file(f, "passphrase")?;
            anyhow::ensure!(
                !p.is_empty(),
                "the passphrase file {} is empty",
                f.display()
            );
            Some(p)
        }
        None => None,
    };
    let password = secret::new_secret(password_file, "password")?;
    let hash = crypto::password::hash_password(&password)?;
    let device = DeviceKey::generate()?;

    home.create_dirs()?;
    home.write_user_key(&keys, passphrase.as_ref().map(|p| p.as_bytes()))?;
    home.write_device_key(&device)?;
    home.write_password_hash(&hash)?;
    tls::generate_self_signed(tls::default_names(), &home.tls_cert(), &home.tls_key())?;
    let config_path = home.config();
    if config_path.exists() {
        let backup = home.root().join("config.toml.bak");
        std::fs::rename(&config_path, &backup)
            .with_context(|| format!("cannot move the old config aside to {}", backup.display()))?;
        eprintln!("The previous config was moved to {}", backup.display());
    }
    home::write_atomic(&config_path, config::template(&address).as_bytes(), 0o644)?;
    let store_path = home.store();
    if store_path.exists() {
        // The old store's mailbox belongs to the replaced identity: keep it, out of the way.
        let aside = home.root().join(format!("store.replaced-{}", now_secs()));
        std::fs::rename(&store_path, &aside)
            .with_context(|| format!("cannot move the old store aside to {}", aside.display()))?;
        eprintln!(
            "The previous identity's store was moved to {}",
            aside.display()
        );
    }
    // The identity file goes last: its presence means "this home is complete".
    home.write_identity(&PublicIdentity {
        address: address.clone(),
        sign_key: crypto::hex(&keys.public().sign),
        enc_key: crypto::hex(&keys.public().enc),
        device_key: crypto::hex(&device.public()),
        created: now_secs(),
    })?;
    // Prove the written config loads, and create the store.
    Config::load(&config_path, home.root())?;
    Store::open(&home.store())?;

    println!(
        "Created the peerpost identity of {address} in {}",
        home.root().display()
    );
    println!("  user key fingerprint:   {}", keys.public().fingerprint());
    println!("  device key fingerprint: {}", device.fingerprint());
    println!(
        "  user key file:          {} ({})",
        home.user_key().display(),
        if passphrase.is_some() {
            "passphrase-protected"
        } else {
            "mode 0600, no passphrase"
        }
    );
    println!("  TLS certificate:        {}", home.tls_cert().display());
    println!("  config:                 {}", config_path.display());
    println!(
        "Ring statistics: on (stats.share = true). Once an hour this node shares a few \
         aggregate figures (version, uptime bucket, storage, mail volume, reachable or not), \
         split into random shares so that no peer learns yours; never who mails whom. \
         Set `share = false` under [stats] in the config to send nothing."
    );
    Ok(())
}
