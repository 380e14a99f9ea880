//! How many of each FUSE operation the mount served and how long each took, for the node's
//! metrics (the peerpost side exports them; this crate knows no metrics library). Lock-free:
//! one atomic counter, sum and bucket per operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The operations counted (others, e.g. xattr probes, count as `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Releasedir,
    Readdir,
    Readdirplus,
    Fsyncdir,
    Statfs,
    Create,
    Other,
}

pub const OPS: [Op; 22] = [
    Op::Lookup,
    Op::Getattr,
    Op::Setattr,
    Op::Mkdir,
    Op::Unlink,
    Op::Rmdir,
    Op::Rename,
    Op::Link,
    Op::Open,
    Op::Read,
    Op::Write,
    Op::Flush,
    Op::Release,
    Op::Fsync,
    Op::Opendir,
    Op::Releasedir,
    Op::Readdir,
    Op::Readdirplus,
    Op::Fsyncdir,
    Op::Statfs,
    Op::Create,
    Op::Other,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Releasedir => "releasedir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Create => "create",
            Op::Other => "other",
        }
    }
}

/// Upper bounds (seconds) of the latency buckets; a last one is +Inf.
pub const BUCKETS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 0.5, 2.0,
];

#[derive(Default)]
struct Counters {
    count: AtomicU64,
    nanos: AtomicU64,
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// Per-operation counts and latencies.
#[derive(Default)]
pub struct OpStats {
    ops: [Counters; OPS.len()],
}

impl std::fmt::Debug for OpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpStats")
    }
}

/// One operation's figures so far.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSnapshot {
    pub op: Op,
    pub count: u64,
    pub seconds: f64,
    /// (upper bound, count in this bucket): `BUCKETS` then +Inf.
    pub buckets: Vec<(f64, u64)>,
}

/// Records the operation's time when dropped (at the end of the handler).
pub struct Timer<'a> {
    stats: &'a OpStats,
    op: Op,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.stats.record(self.op, self.started.elapsed());
    }
}

impl OpStats {
    fn index(op: Op) -> usize {
        OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1)
    }

    /// Starts timing `op`.
    pub fn start(&self, op: Op) -> Timer<'_> {
        Timer {
            stats: self,
            op,
            started: Instant::now(),
        }
    }

    pub fn record(&self, op: Op, took: std::time::Duration) {
        let c = &self.ops[Self::index(op)];
        c.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.nanos.fetch_add(nanos, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|ub| secs <= *ub)
            .unwrap_or(BUCKETS.len());
        c.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Every operation's figures (those never served too, at zero).
    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        OPS.iter()
            .zip(&self.ops)
            .map(|(op, c)| OpSnapshot {
                op: *op,
                count: c.count.load(Ordering::Relaxed),
                seconds: c.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                buckets: BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(c.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn operations_land_in_their_buckets() {
        let s = OpStats::default();
        s.record(Op::Read, Duration::from_micros(30));
        s.record(Op::Read, Duration::from_millis(3));
        s.record(Op::Read, Duration::from_secs(5));
        drop(s.start(Op::Rename));
        let snap = s.snapshot();
        let read = snap.iter().find(|o| o.op == Op::Read).unwrap();
        assert_eq!(read.count, 3);
        assert_eq!(read.buckets[0], (0.000_05, 1));
        assert_eq!(read.buckets[5], (0.005, 1));
        assert_eq!(read.buckets[BUCKETS.len()], (f64::INFINITY, 1));
        assert!((read.seconds - 5.00303).abs() < 1e-6);
        assert_eq!(snap.iter().find(|o| o.op == Op::Rename).unwrap().count, 1);
        assert_eq!(snap.len(), OPS.len());
    }
}
