//! Opening this home's mailbox engine for a command (store, keys, engine).

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::home::Home;
use crate::mailbox::Mailbox;
use crate::store::Store;

/// The validated config of a home.
pub fn config(home: &Home) -> Result<Config> {
    home.load_identity()?;
    Ok(Config::load(&home.config(), home.root())?)
}

/// Opens the store and the mailbox engine (asks for the passphrase if the key needs one).
pub async fn mailbox(home: &Home, passphrase_file: Option<&Path>) -> Result<Mailbox> {
    let (_, _, device) = home.load_identity_keys()?;
    let keys = super::key::load_user_keys(home, passphrase_file)?;
    let store = Store::open(&home.store())?;
    Mailbox::open(store, keys, device)
        .await
        .context("cannot open the mailbox")
}

/// A multi-threaded runtime for a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A progress bar on stderr (drawn only on a terminal), with messages/s.
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let pb =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} messages ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}
