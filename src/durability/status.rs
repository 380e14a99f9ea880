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
    /// What loss the ring, at its current size, lets new bundles survive (a small ring, e.g.
    /// an organization's own: issue #16), when checked.
    #[serde(default)]
    pub survives: Option<Survival>,
}

/// The n/k the calculator picks for a ring of `ring` nodes, and the loss it survives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Survival {
    /// Nodes of the ring (the peers this node knows).
    pub ring: usize,
    pub n: u16,
    pub k: u16,
    /// Any this many of a bundle's holders may fail at once and it still rebuilds (n − k).
    pub any_nodes: usize,
    /// P(loss of one bundle) if `failure_fraction` of the ring failed at once.
    pub loss: f64,
    /// Whether `loss` is within the configured `loss_probability`.
    pub meets_target: bool,
}

/// [`Survival`] for a ring of `ring` nodes under `config`.
pub fn survival(config: &backup::BackupConfig, ring: usize) -> Option<Survival> {
    if ring == 0 {
        return None;
    }
    let p = config.params_for(ring);
    let failed = (ring as f64 * config.failure_fraction).ceil() as usize;
    let loss = loss_hypergeometric(ring, failed, usize::from(p.n), usize::from(p.k));
    Some(Survival {
        ring,
        n: p.n,
        k: p.k,
        any_nodes: usize::from(p.n.saturating_sub(p.k)),
        loss,
        meets_target: loss <= config.target_loss,
    })
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
    st.survives = survival(config, ring);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A small ring (an organization's own) says what it survives; a bigger one survives more.
    #[test]
    fn a_small_ring_says_what_loss_it_survives() {
        let config = backup::BackupConfig::default();
        assert!(survival(&config, 0).is_none());
        let small = survival(&config, 5).unwrap();
        assert!(
            small.n <= 5 && small.k >= 1 && small.k <= small.n,
            "{small:?}"
        );
        assert_eq!(small.any_nodes, usize::from(small.n - small.k));
        let big = survival(&config, 60).unwrap();
        assert!(big.meets_target, "{big:?}");
        assert!(big.any_nodes > small.any_nodes, "{small:?} {big:?}");
        // What it reports is the calculator's own loss for that n/k.
        let failed = (5.0f64 * 0.6).ceil() as usize;
        let loss = loss_hypergeometric(5, failed, usize::from(small.n), usize::from(small.k));
        assert_eq!(small.loss, loss);
        assert_eq!(small.meets_target, loss <= config.target_loss);
    }
}
