//! Durability (issue #6): backup of the user's mailbox into the ring, maintenance of the
//! fragments this node holds, one backup per user (issue #15), and restore from the phrase.

use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::NodeConfig;
use crate::crypto::UserKeys;
use crate::durability;
use crate::mailbox::Mailbox;
use crate::overlay;
use crate::store::Store;

/// When the durability tasks run.
#[derive(Debug, Clone)]
pub struct DurabilityConfig {
    pub backup: durability::backup::BackupConfig,
    /// How often the backup task looks for new mail and at the ring.
    pub tick: Duration,
    /// When passes run: new mail within `schedule.backup_every`, re-coding, compaction.
    pub schedule: durability::schedule::ScheduleConfig,
    /// The owner's repair and lease renewal pass over its own bundles.
    pub maintain_every: Duration,
    /// The holders' pass over the fragments held for others (repair when owners are away,
    /// expiry of fragments nobody renews).
    pub holder_every: Duration,
    pub limits: durability::repair::RepairLimits,
    /// One backup per user (issue #15): another device's root this old is stale, and this
    /// device takes the backup over; the backing-up device republishes its root every quarter
    /// of it.
    pub takeover_after: Duration,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            backup: durability::backup::BackupConfig::default(),
            tick: Duration::from_secs(2),
            schedule: durability::schedule::ScheduleConfig::default(),
            maintain_every: Duration::from_secs(6 * 3600),
            holder_every: Duration::from_secs(3600),
            limits: durability::repair::RepairLimits::default(),
            takeover_after: Duration::from_secs(3 * 3600),
        }
    }
}

pub(super) fn spawn_durability(
    d: &DurabilityConfig,
    config: &NodeConfig,
    client: &overlay::Client,
    store: &Store,
    mailbox: Option<Mailbox>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    use durability::backup::Backup;
    let (c, s, token, cfg) = (client.clone(), store.clone(), cancel.clone(), d.clone());
    tasks.spawn(
        async move {
            // A first pass after the ring had time to fill the routing table.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + cfg.holder_every.min(Duration::from_secs(600)),
                cfg.holder_every,
            );
            let mut state = durability::repair::HolderState::default();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let pass = durability::repair::holder_pass(
                            &c, &s, &durability::ReedSolomon8, cfg.limits, overlay::now_secs(),
                            &mut state,
                        );
                        match pass.await {
                            Ok(st) => tracing::info!(?st, "holder maintenance pass"),
                            Err(e) => tracing::warn!("holder maintenance failed: {e}"),
                        }
                        // The pass read every held lease through the store's map.
                        s.release_resident();
                    }
                }
            }
        }
        .in_current_span(),
    );
    let Some(mailbox) = mailbox else {
        return;
    };
    // The user's share of the ring: contribution ÷ overhead, first for a large ring, then for
    // the ring as the backup passes see it.
    let contribution = config.overlay.contribution;
    let (ff, target) = (d.backup.failure_fraction, d.backup.target_loss);
    mailbox.set_quota(Some(durability::backup::quota(
        contribution,
        None,
        ff,
        target,
    )));
    let keys = UserKeys::from_seed(*config.user_keys.seed());
    let b = Backup::new(client.clone(), store.clone(), keys, d.backup.clone())
        .with_address(&config.address)
        .with_device(config.device_public);
    let (token, cfg, resident) = (cancel.clone(), d.clone(), store.clone());
    tasks.spawn(
        async move {
            use durability::backup::{Error as BackupError, PassOptions};
            use durability::schedule::{Decision, Schedule};
            let mut schedule = Schedule::new(cfg.schedule.clone());
            let mut tick = tokio::time::interval(cfg.tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The owner's first maintenance follows its first clean pass (it renews every
            // holder's lease with a signed one: holders drop fragments no valid lease names).
            let mut last_maintain: Option<tokio::time::Instant> = None;
            let mut passed_once = false;
            let mut devices = BackupTurn::new(cfg.takeover_after);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let routing = match b.ring_size().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("backup: no ring size: {e}");
                        0
                    }
                };
                let counter = match b.log_counter().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("backup: {e}");
                        continue;
                    }
                };
                let now = tokio::time::Instant::now();
                let decision = schedule.tick(now, routing, counter);
                let due = !matches!(decision, Decision::Wait);
                if !devices.mine(&b, &mut schedule, routing, due).await {
                    // Another device backs this user up: nothing is placed or maintained here.
                    if matches!(decision, Decision::Pass { .. }) {
                        schedule.passed(counter);
                    }
                    continue;
                }
                let opts = match decision {
                    Decision::Wait => None,
                    Decision::Pass {
                        ring,
                        force,
                        compact,
                    } => Some(PassOptions {
                        force,
                        compact,
                        ring: Some(ring),
                    }),
                    Decision::Check { ring, compact } => {
                        match b.needs_recode(ring, compact).await {
                            Ok(true) => Some(PassOptions {
                                force: false,
                                compact,
                                ring: Some(ring),
                            }),
                            Ok(false) => None,
                            Err(e) => {
                                tracing::warn!("backup check failed: {e}");
                                None
                            }
                        }
                    }
                };
                if let Some(opts) = opts {
                    match b.run_pass(opts).await {
                        Ok(r) => {
                            schedule.passed(counter);
                            passed_once = true;
                            if let Some(ring) = opts.ring {
                                let q =
                                    (contribution as f64 / b.params_for(ring).overhead()) as u64;
                                mailbox.set_quota(Some(q));
                            }
                            if r.bundles > 0 || r.recoded > 0 {
                                tracing::info!(?r, "backup pass");
                            }
                        }
                        Err(BackupError::NoPeers) => {
                            schedule.failed(now);
                            tracing::debug!("backup waits for a peer");
                        }
                        Err(e) => {
                            schedule.failed(now);
                            tracing::warn!("backup pass failed (retried): {e}");
                        }
                    }
                }
                if passed_once {
                    devices.heartbeat(&b).await;
                }
                let maintain_due = last_maintain.is_none_or(|t| t.elapsed() >= cfg.maintain_every);
                if passed_once && maintain_due {
                    last_maintain = Some(tokio::time::Instant::now());
                    match b.maintain(cfg.limits).await {
                        Ok(st) => tracing::info!(?st, "backup maintenance pass"),
                        Err(e) => tracing::warn!("backup maintenance failed: {e}"),
                    }
                    // A fresh expiry for the root even when no mail came in.
                    if let Err(e) = b.republish().await {
                        tracing::warn!("backup root not republished: {e}");
                    }
                    // Maintenance read every receipt and held fragment through the map.
                    resident.release_resident();
                }
            }
        }
        .in_current_span(),
    );
}

/// Which of the user's devices backs up (issue #15; durability/backup/share.rs): asked
/// before every pass and every heartbeat.
struct BackupTurn {
    takeover_after: Duration,
    /// `None` until the first look (then every change is logged).
    turn: Option<durability::backup::Turn>,
    checked: Option<tokio::time::Instant>,
    republished: Option<tokio::time::Instant>,
}

impl BackupTurn {
    fn new(takeover_after: Duration) -> Self {
        BackupTurn {
            takeover_after,
            turn: None,
            checked: None,
            republished: None,
        }
    }

    /// Whether this device backs up now; looks at the user's newest root when a pass is
    /// `due` or a heartbeat has passed. Taking over restarts `schedule` with a forced pass.
    async fn mine(
        &mut self,
        b: &durability::backup::Backup,
        schedule: &mut durability::schedule::Schedule,
        routing: usize,
        due: bool,
    ) -> bool {
        use durability::backup::Turn;
        let beat = durability::backup::heartbeat(self.takeover_after);
        let stale = self.checked.is_none_or(|t| t.elapsed() >= beat);
        if routing > 0 && (due || stale) {
            self.checked = Some(tokio::time::Instant::now());
            match b.turn(self.takeover_after).await {
                Ok(t) if Some(t) != self.turn => {
                    match t {
                        Turn::Mine => {
                            tracing::info!("backup: this device backs up the user's mailbox now");
                            schedule.again();
                        }
                        Turn::Removed => tracing::warn!(
                            "backup: this device was removed from the user's device list: it \
                             no longer backs up"
                        ),
                        Turn::Theirs { device, seq } => tracing::info!(
                            "backup: device {} backs up the user's mailbox (root {seq}); this \
                             device waits",
                            device.map_or("(unnamed)".to_string(), |d| d[..8]
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>())
                        ),
                    }
                    self.turn = Some(t);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("backup: whose turn is unknown: {e}"),
            }
        }
        !matches!(self.turn, Some(Turn::Theirs { .. } | Turn::Removed))
    }

    /// The backing-up device republishes its root every heartbeat, so the others see it alive.
    async fn heartbeat(&mut self, b: &durability::backup::Backup) {
        let beat = durability::backup::heartbeat(self.takeover_after);
        if self.republished.is_some_and(|t| t.elapsed() < beat) {
            return;
        }
        self.republished = Some(tokio::time::Instant::now());
        if let Err(e) = b.republish().await {
            tracing::debug!("backup root not republished: {e}");
        }
    }
}

/// What [`restore_mailbox`] rebuilt.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    pub bundles: usize,
    pub bytes: u64,
    pub objects: usize,
    pub log_entries: usize,
    pub folders: usize,
    pub messages: usize,
}

/// Restores a user's mailbox from the ring into `store` (a fresh home's): bodies into the
/// store, log entries verified and merged by the engine. Returns the opened engine.
pub async fn restore_mailbox(
    client: &overlay::Client,
    store: &Store,
    keys: &UserKeys,
    device_public: [u8; 32],
    progress: &(dyn Fn(durability::restore::Progress) + Sync),
) -> Result<(Mailbox, RestoreSummary), RestoreError> {
    let restored = durability::restore::restore(client, store, keys, progress).await?;
    let mailbox = Mailbox::open(
        store.clone(),
        UserKeys::from_seed(*keys.seed()),
        device_public,
    )
    .await?;
    let log_entries = restored.entries.len();
    let mut entries = restored.entries;
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(2048));
        mailbox.merge_entries(entries).await?;
        entries = rest;
    }
    let folders = mailbox.folders();
    let summary = RestoreSummary {
        bundles: restored.bundles,
        bytes: restored.bytes,
        objects: restored.objects,
        log_entries,
        folders: folders.len(),
        messages: folders.iter().map(|f| f.exists).sum(),
    };
    Ok((mailbox, summary))
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(transparent)]
    Ring(#[from] durability::restore::RestoreError),
    #[error("the restored mailbox was refused: {0}")]
    Mailbox(#[from] crate::mailbox::Error),
}
