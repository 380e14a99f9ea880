//! Command-line interface: one file per subcommand, each with an `Args` struct and an
//! `execute`. Only subcommands that work are listed; `send` arrives with the layer it needs.

pub mod autoconfig;
pub mod completions;
pub mod demo;
pub mod device;
pub mod export;
pub mod import;
pub mod init;
pub mod key;
pub mod lookup;
pub mod man;
pub mod mount;
pub mod open;
pub mod passwd;
pub mod restore;
pub mod ring;
pub mod run;
pub mod secret;
pub mod send;
pub mod stats;
pub mod status;
pub mod sync;
pub mod trust;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::home::Home;

/// Serverless, encrypted, peer-to-peer email.
///
/// Each user runs a node; the nodes store everyone's mail encrypted, signed and
/// erasure-coded across the ring. Start with `peerpost init --address you@example.org`.
#[derive(Debug, Parser)]
#[command(name = "peerpost", version, propagate_version = true)]
pub struct Cli {
    /// Directory holding this node's config, keys and store (several nodes can run side by
    /// side with different homes).
    #[arg(long, global = true, env = "PEERPOST_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `run`'s arguments costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity (keys), a TLS certificate and a commented config file.
    Init(init::Args),
    /// Change the password the IMAP, POP3 and SMTP servers ask for.
    Passwd(passwd::Args),
    /// Show, export or import the user's keys.
    #[command(subcommand)]
    Key(key::Command),
    /// List, add or remove this user's devices (several nodes sharing one mailbox).
    #[command(subcommand)]
    Device(device::Command),
    /// Join the overlay and serve this user's mail (IMAP, POP3, SMTP intake and submission,
    /// delivery, backup into the ring; --mount for the Maildir) and peers until SIGINT or SIGTERM.
    Run(run::Args),
    /// Look up an address in the directory through the running node.
    Lookup(lookup::Args),
    /// Pin an address to the key its owner gave you (--list, --remove): only a record with
    /// that key is believed for it.
    Trust(trust::Args),
    /// Show this node's identity, configuration, store, and the running node (if any).
    Status(status::Args),
    /// Show the ring's statistics: nodes, versions, storage offered and used, mail volume
    /// (aggregates only; `stats.share = false` opts this node out).
    Stats(stats::Args),
    /// Import mail from a Maildir (with subfolders) or an mbox file.
    Import(import::Args),
    /// Write the mailbox as a Maildir that Dovecot and mutt read as is.
    Export(export::Args),
    /// Keep a plain Maildir directory and the mailbox in step, both ways.
    Sync(sync::Args),
    /// Serve the mailbox as a Maildir over FUSE (for Dovecot and mutt) until Ctrl-C.
    Mount(mount::Args),
    /// Send a message read on stdin through the running node, like sendmail (mutt: set
    /// sendmail="peerpost send").
    Send(send::Args),
    /// Start a 5-node ring on this machine (alice, bob, … @demo.test), send bob a welcome
    /// message from alice over the overlay, and print how to read it; Ctrl-C stops it.
    Demo(demo::Args),
    /// Rebuild the mailbox from the ring with the recovery phrase alone (a new machine).
    Restore(restore::Args),
    /// Organizational rings: create one, certify its members, join one.
    #[command(subcommand)]
    Ring(ring::Command),
    /// Print the mail-client settings of this node: Thunderbird autoconfig XML or an Apple
    /// .mobileconfig profile (IMAP, POP3 and submission ports from the config).
    Autoconfig(autoconfig::Args),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Write the manual pages (peerpost.1 on stdout, or every page into --dir).
    Man(man::Args),
}

impl Cli {
    pub fn home(&self) -> Home {
        Home::new(self.home.clone().unwrap_or_else(Home::default_root))
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home();
    match cli.command {
        Command::Init(args) => init::execute(args, &home),
        Command::Passwd(args) => passwd::execute(args, &home),
        Command::Key(cmd) => key::execute(cmd, &home),
        Command::Device(cmd) => device::execute(cmd, &home),
        Command::Run(args) => run::execute(args, &home),
        Command::Lookup(args) => lookup::execute(args, &home),
        Command::Trust(args) => trust::execute(args, &home),
        Command::Status(args) => status::execute(args, &home),
        Command::Stats(args) => stats::execute(args, &home),
        Command::Import(args) => import::execute(args, &home),
        Command::Export(args) => export::execute(args, &home),
        Command::Sync(args) => sync::execute(args, &home),
        Command::Mount(args) => mount::execute(args, &home),
        Command::Send(args) => send::execute(args, &home),
        Command::Demo(args) => demo::execute(args),
        Command::Restore(args) => restore::execute(args, &home),
        Command::Ring(cmd) => ring::execute(cmd, &home),
        Command::Autoconfig(args) => autoconfig::execute(args, &home),
        Command::Completions(args) => completions::execute(args),
        Command::Man(args) => man::execute(args),
    }
}

/// Unix time in seconds.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
