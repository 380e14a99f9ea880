//! The directory record this node publishes for its user, and its republication.

use super::*;

#[derive(Clone)]
pub(super) struct Publisher {
    pub(super) client: overlay::Client,
    pub(super) address: String,
    pub(super) keys: std::sync::Arc<UserKeys>,
    /// The live devices of the user (just this one without a mailbox).
    pub(super) devices: tokio::sync::watch::Receiver<Vec<[u8; 32]>>,
    pub(super) lifetime: Duration,
    pub(super) last_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) certified: Option<std::sync::Arc<DirectoryRecord>>,
}

/// A certified record is republished until this long before it expires; then the node falls
/// back to self-signed records (and says that the certificate needs renewing).
const CERT_MARGIN_SECS: u64 = 3600;

impl Publisher {
    fn record(&self) -> Result<DirectoryRecord, crate::crypto::Error> {
        use std::sync::atomic::Ordering;
        let now = overlay::now_secs();
        if let Some(c) = &self.certified {
            let ours = c.keys == *self.keys.public()
                && c.address == self.address
                && self.devices.borrow().iter().all(|d| c.devices.contains(d));
            if ours && c.verify(now.saturating_add(CERT_MARGIN_SECS)).is_ok() {
                return Ok((**c).clone());
            }
            tracing::warn!(
                address = %self.address,
                "the ring certificate of this address has expired or names other keys: \
                 publishing a self-signed record (ask the ring's administrator for a new one: \
                 `peerpost ring request`, `ring issue`, `ring join --cert`)"
            );
        }
        // seq = unix time, strictly increasing even within one second.
        let prev = self.last_seq.load(Ordering::SeqCst);
        let seq = now.max(prev.saturating_add(1));
        self.last_seq.store(seq, Ordering::SeqCst);
        let mut devices = self.devices.borrow().clone();
        devices.truncate(crate::crypto::record::MAX_DEVICES);
        DirectoryRecord::new(
            &self.keys,
            &self.address,
            devices,
            seq,
            now,
            self.lifetime.as_secs(),
        )
    }

    pub(super) async fn publish(&self) -> Result<(), overlay::PublishError> {
        let record = self
            .record()
            .map_err(|e| overlay::Error::Start(e.to_string()))?;
        self.client.publish(record).await
    }

    pub(super) async fn run(mut self, every: Duration, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let _ = self.client.bootstrap().await;
            // Behind NAT, the relayed addresses go out with the directory record (and again
            // whenever they change): what a sender's notice push dials (issue #19).
            self.client.republish_addresses().await;
            let wait = match self.publish().await {
                Ok(()) => {
                    tracing::info!(address = %self.address, "directory record published");
                    backoff = Duration::from_secs(1);
                    every
                }
                Err(e) => {
                    tracing::debug!("publish: {e}");
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    backoff
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                // The device list changed: the record names the live devices at once.
                Ok(()) = self.devices.changed() => {}
            }
        }
    }
}
