//! How durable the user's own mail is, for `peerpost status`: the bundles of the backup, the
//! fragments of each found in the ring now, the loss probability that follows, repairs done.

use serde::{Deserialize, Serialize};

use super::backup::{self, Kind};
use super::params::loss_hypergeometric;
use super::repair;
use crate::overlay;
use crate::store::Store;

/// Bundles whose fragments one status request looks for at most (each costs n lookups).
pub const MAX_CHECKED: usize = 32;

/// One bundle as found in the ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleHealth {
    /// First 8 bytes of the bundle id, hex.
    pub bundle: String,
    pub kind: String,
    pub n: u16,
    pub k: u16,
    /// Fragments found on live peers now.
    pub found: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DurabilityStatus {
    /// Bundles of message bodies and of log segments.
    pub body_bundles: usize,
    pub log_bundles: usize,
    /// Bytes in placed bundles.
    pub bytes: u64,
    /// Bytes of bodies and log entries not yet placed (the next pass places them).
    pub pending_bytes: u64,
    /// Sequence number of the last backup root published (unix time).
    pub root_seq: Option<u64>,
    /// Some placed bundle is not yet listed by the published root's index (a pass is between
    /// placing and publishing, or was stopped there: the next one publishes).
    #[serde(default)]
    pub unpublished: bool,
    /// Fragments this node re-created (owner and holder repairs).
    pub repairs: u64,
    /// Peers the node knows (the ring as it sees it), when checked.
    pub ring: Option<usize>,
    /// The bundles checked in the ring (at most [`MAX_CHECKED`], the newest index first).
    pub checked: Vec<BundleHealth>,
    /// P(some checked bundle is lost) if `failure_fraction` of the ring failed now, given the
    /// fragments found; `None` when nothing was checked.
    pub loss_now: Option<f64>,
    pub failure_fraction: f64,
    /// Bundles coded with an n/k below what the ring now supports (re-coded by the node's
    /// next check, within a minute), when checked.
    pub below_target: Option<usize>,
}

/// What the store alone says (no ring needed).
pub async fn local(store: &Store) -> Result<DurabilityStatus, backup::Error> {
    let entries = backup::entries(store).await?;
    let (bodies, logs) = backup::pending(store).await?;
    Ok(DurabilityStatus {
        pending_bytes: bodies + logs,
        body_bundles: entries.iter().filter(|e| e.kind == Kind::Bodies).count(),
        log_bundles: entries.iter().filter(|e| e.kind == Kind::Log).count(),
        bytes: entries.iter().map(|e| e.bytes).sum(),
        root_seq: backup::state(store).await?.map(|(s, _)| s),
        unpublished: backup::unpublished(store).await?,
        repairs: backup::repairs(store).await?,
        ..DurabilityStatus::default()
    })
}

/// The local view plus the fragments of up to [`MAX_CHECKED`] bundles located in the ring.
pub async fn check(
    client: &overlay::Client,
    store: &Store,
    config: &backup::BackupConfig,
) -> Result<DurabilityStatus, backup::Error> {
    let failure_fraction = config.failure_fraction;
    let mut st = local(store).await?;
    st.failure_fraction = failure_fraction;
    let ring = client.status().await?.routing_table;
    st.ring = Some(ring);
    let mut entries = backup::entries(store).await?;
    st.below_target = Some(
        entries
            .iter()
            .filter(|e| config.below_target(e.receipt.params, ring))
            .count(),
    );
    if let Some((_, index)) = backup::state(store).await? {
        entries.insert(0, index);
    }
    let failed = (ring as f64 * failure_fraction).ceil() as usize;
    let mut survive = 1.0f64;
    for e in entries.iter().take(MAX_CHECKED) {
        let found = repair::locate(client, Some(store), &e.receipt)
            .await
            .iter()
            .flatten()
            .count();
        let (n, k) = (e.receipt.params.n, e.receipt.params.k);
        survive *= 1.0 - loss_hypergeometric(ring.max(found), failed, found, usize::from(k));
        st.checked.push(BundleHealth {
            bundle: crate::crypto::hex(&e.receipt.bundle.as_bytes()[..8]),
            kind: format!("{:?}", e.kind).to_lowercase(),
            n,
            k,
            found,
        });
    }
    if !st.checked.is_empty() {
        st.loss_now = Some((1.0 - survive).clamp(0.0, 1.0));
    }
    Ok(st)
}
