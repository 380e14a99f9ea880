//! The FUSE mount's operations as metric families: `peerpost_mount_operations_total{op}`
//! and `peerpost_mount_operation_seconds{op}` (a histogram), read from the mount's own
//! lock-free counters at each scrape (the fs crate knows no metrics library).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

/// One operation's figures: (name, count, seconds in all, per-bucket counts ending +Inf).
pub type OpFigures = (&'static str, u64, f64, Vec<(f64, u64)>);

/// Gives the mount's figures at scrape time.
pub type Source = Box<dyn Fn() -> Vec<OpFigures> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Registered once; empty until a mount is watched.
#[derive(Default)]
pub(super) struct MountCollector {
    pub(super) source: Arc<Mutex<Option<Source>>>,
}

impl std::fmt::Debug for MountCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountCollector")
    }
}

impl Collector for MountCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = match &*self.source.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => f(),
            None => return Ok(()),
        };
        {
            let mut family = encoder.encode_descriptor(
                "mount_operations",
                "FUSE operations the mount served, by operation",
                None,
                MetricType::Counter,
            )?;
            for (op, count, _, _) in &figures {
                let labels = OpLabel { op };
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "mount_operation",
            "Time to serve a FUSE operation, by operation",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (op, count, seconds, buckets) in &figures {
            let labels = OpLabel { op };
            family
                .encode_family(&labels)?
                .encode_histogram::<OpLabel>(*seconds, *count, buckets, None)?;
        }
        Ok(())
    }
}
