//! When the owner's backup passes run (issue #20): a pure state machine the node's durability
//! task asks every tick, so the policy is tested without a ring.
//!
//! - No pass sizes n/k before the ring's size is *trusted*: the routing table has held peers,
//!   with sizes within [`RingWatch::tolerance`] of each other, for [`RingWatch::window`]. A
//!   node that starts in a ring of nine sees one peer for a moment, then nine; it waits for
//!   the nine to settle instead of coding for one.
//! - New mail (the store's log counter moved since the last clean pass) is placed at most
//!   `backup_every` after the previous pass, as small bundles if need be: mail is in the ring
//!   within about `backup_every` + one tick + the placement's time of its 250.
//! - Every `recode_every`, and at once when the trusted size moves, the node checks whether
//!   a bundle is below target ([`super::backup::Backup::to_recode`]); a pass re-codes it.
//! - Once mail has stopped arriving for `compact_after`, one compacting pass merges the small
//!   bundles into full ones (releasing the small ones).
//!
//! An idle node does nothing here but read a counter and the routing table's size.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Trust in the routing table's size as an estimate of the ring.
#[derive(Debug, Clone)]
pub struct RingWatch {
    /// How long the size must hold still.
    pub window: Duration,
    /// Largest spread (max − min) over the window, as a fraction of the max.
    pub tolerance: f64,
    samples: VecDeque<(Instant, usize)>,
}

/// Samples kept at most (a tick every second for a minute's window).
const MAX_SAMPLES: usize = 128;

impl RingWatch {
    pub fn new(window: Duration, tolerance: f64) -> RingWatch {
        RingWatch {
            window,
            tolerance,
            samples: VecDeque::new(),
        }
    }

    /// Records the size seen at `now`.
    pub fn observe(&mut self, now: Instant, size: usize) {
        self.samples.push_back((now, size));
        // Keep one sample older than the window: it shows the window is covered.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.duration_since(t) >= self.window)
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The ring's size when the samples cover the window, none is zero, and they agree
    /// within the tolerance; the smallest of them (the conservative estimate).
    pub fn trusted(&self, now: Instant) -> Option<usize> {
        let &(first, _) = self.samples.front()?;
        if now.duration_since(first) < self.window {
            return None;
        }
        let min = self.samples.iter().map(|&(_, s)| s).min()?;
        let max = self.samples.iter().map(|&(_, s)| s).max()?;
        let spread = (max - min) as f64;
        (min > 0 && spread <= self.tolerance * max as f64).then_some(min)
    }
}

/// The schedule's settings.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Longest new mail waits after the previous pass.
    pub backup_every: Duration,
    /// How often placed bundles are checked against the ring's target.
    pub recode_every: Duration,
    /// Quiet time after which small bundles are compacted.
    pub compact_after: Duration,
    /// After a failed pass, the next waits this long.
    pub retry_after: Duration,
    /// The ring must hold still this long before it is trusted ...
    pub settle: Duration,
    /// ... within this spread.
    pub tolerance: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            backup_every: Duration::from_secs(10),
            recode_every: Duration::from_secs(60),
            compact_after: Duration::from_secs(600),
            retry_after: Duration::from_secs(10),
            settle: Duration::from_secs(10),
            tolerance: 0.1,
        }
    }
}

/// What the node should do at this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (no trusted ring yet, or nothing due).
    Wait,
    /// Check the placed bundles against the ring of `ring`; run a pass if one needs it.
    Check { ring: usize, compact: bool },
    /// Run a pass for the ring of `ring` (`force`: publish the index even if nothing is new).
    Pass {
        ring: usize,
        force: bool,
        compact: bool,
    },
}

/// The owner's backup schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub config: ScheduleConfig,
    pub ring: RingWatch,
    /// The log counter at the start of the last clean pass (`None`: none yet in this run).
    passed: Option<u64>,
    /// The counter last seen, and since when.
    seen: Option<(u64, Instant)>,
    last_attempt: Option<Instant>,
    last_check: Option<Instant>,
    /// The trusted size at the last check.
    checked_ring: Option<usize>,
    /// Whether the quiet period since the last change was compacted already.
    compacted: bool,
}

impl Schedule {
    pub fn new(config: ScheduleConfig) -> Schedule {
        Schedule {
            ring: RingWatch::new(config.settle, config.tolerance),
            config,
            passed: None,
            seen: None,
            last_attempt: None,
            last_check: None,
            checked_ring: None,
            compacted: false,
        }
    }

    /// One tick: the routing table holds `routing` peers and the store's log counter is
    /// `counter`.
    pub fn tick(&mut self, now: Instant, routing: usize, counter: u64) -> Decision {
        self.ring.observe(now, routing);
        if self.seen.is_none_or(|(c, _)| c != counter) {
            self.seen = Some((counter, now));
            self.compacted = false;
        }
        let Some(ring) = self.ring.trusted(now) else {
            return Decision::Wait;
        };
        let since = |t: Option<Instant>| t.map_or(Duration::MAX, |t| now.duration_since(t));
        if self.passed != Some(counter) {
            let wait = if self.passed.is_none() && self.last_attempt.is_none() {
                Duration::ZERO
            } else {
                self.config.backup_every
            };
            if since(self.last_attempt) >= wait {
                self.last_attempt = Some(now);
                self.last_check = Some(now);
                self.checked_ring = Some(ring);
                return Decision::Pass {
                    ring,
                    force: self.passed.is_none(),
                    compact: false,
                };
            }
            return Decision::Wait;
        }
        let quiet = self
            .seen
            .is_some_and(|(_, t)| now.duration_since(t) >= self.config.compact_after);
        let compact = quiet && !self.compacted;
        let moved = self.checked_ring.is_some_and(|r| {
            let (a, b) = (r.min(ring) as f64, r.max(ring) as f64);
            b - a > self.config.tolerance * b
        });
        if compact || moved || since(self.last_check) >= self.config.recode_every {
            if compact {
                self.compacted = true;
            }
            self.last_check = Some(now);
            self.checked_ring = Some(ring);
            return Decision::Check { ring, compact };
        }
        Decision::Wait
    }

    /// The pass started at the tick that read `counter` succeeded.
    pub fn passed(&mut self, counter: u64) {
        self.passed = Some(counter);
    }

    /// This device (re)starts backing up for the user (another device stopped, issue #15):
    /// the next tick on a trusted ring runs a forced pass at once, as after a start.
    pub fn again(&mut self) {
        self.passed = None;
        self.last_attempt = None;
    }

    /// A pass failed: the next attempt waits `retry_after`.
    pub fn failed(&mut self, now: Instant) {
        self.last_attempt = Some(
            now + self
                .config
                .retry_after
                .saturating_sub(self.config.backup_every),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn ring_is_trusted_only_once_settled() {
        let t0 = Instant::now();
        let mut w = RingWatch::new(secs(10), 0.1);
        w.observe(t0, 1);
        assert_eq!(w.trusted(t0), None, "one sample covers no window");
        for s in 1..=4 {
            w.observe(t0 + secs(s), 9);
        }
        // 1 then 9: not settled while the 1 is in the window.
        assert_eq!(w.trusted(t0 + secs(4)), None);
        for s in 5..=15 {
            w.observe(t0 + secs(s), 9);
        }
        assert_eq!(w.trusted(t0 + secs(15)), Some(9));
        w.observe(t0 + secs(16), 0);
        assert_eq!(
            w.trusted(t0 + secs(16)),
            None,
            "an empty table is never trusted"
        );
    }

    #[test]
    fn wobble_within_tolerance_is_trusted_as_its_minimum() {
        let t0 = Instant::now();
        let mut w = RingWatch::new(secs(10), 0.1);
        for s in 0..=12 {
            w.observe(t0 + secs(s), if s % 2 == 0 { 100 } else { 95 });
        }
        assert_eq!(w.trusted(t0 + secs(12)), Some(95));
    }

    /// Ticks every second from `from` to `to`, returning the decisions that were not Wait.
    fn run(
        s: &mut Schedule,
        t0: Instant,
        from: u64,
        to: u64,
        ring: usize,
        counter: u64,
    ) -> Vec<(u64, Decision)> {
        (from..=to)
            .filter_map(|i| {
                let d = s.tick(t0 + secs(i), ring, counter);
                if let Decision::Pass { .. } = d {
                    s.passed(counter);
                }
                (d != Decision::Wait).then_some((i, d))
            })
            .collect()
    }

    #[test]
    fn first_pass_waits_for_a_settled_ring_then_runs_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        assert_eq!(
            s.tick(t0, 0, 5),
            Decision::Wait,
            "no peers: nothing is read"
        );
        assert_eq!(s.tick(t0 + secs(1), 1, 5), Decision::Wait);
        let d = run(&mut s, t0, 2, 12, 9, 5);
        assert_eq!(
            d.first(),
            Some(&(
                12,
                Decision::Pass {
                    ring: 9,
                    force: true,
                    compact: false
                }
            )),
            "the first pass runs once nine peers held for 10 s, not for the one seen first: {d:?}"
        );
    }

    #[test]
    fn new_mail_is_placed_within_backup_every() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        run(&mut s, t0, 0, 20, 9, 5);
        // Mail arrives at 21 s, right after the pass at 10 s.
        let d = run(&mut s, t0, 21, 40, 9, 6);
        let (at, first) = d[0];
        assert!(
            matches!(first, Decision::Pass { force: false, .. }),
            "{d:?}"
        );
        assert!(at <= 21 + 10, "placed at {at} s");
        // Nothing new: no more passes, only checks every recode_every.
        let d = run(&mut s, t0, 41, 200, 9, 6);
        assert!(
            d.iter().all(|(_, d)| matches!(d, Decision::Check { .. })),
            "{d:?}"
        );
        assert!(d.len() <= 3, "checks at most once a minute: {d:?}");
    }

    #[test]
    fn a_growing_ring_is_checked_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        run(&mut s, t0, 0, 20, 10, 5);
        // The ring grows to 40 at 30 s: trusted again at 40 s, checked then.
        run(&mut s, t0, 21, 29, 10, 5);
        let d = run(&mut s, t0, 30, 45, 40, 5);
        assert_eq!(
            d.first(),
            Some(&(
                40,
                Decision::Check {
                    ring: 40,
                    compact: false
                }
            )),
            "{d:?}"
        );
    }

    #[test]
    fn quiet_mailbox_is_compacted_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        run(&mut s, t0, 0, 20, 9, 5);
        let d = run(&mut s, t0, 21, 1300, 9, 5);
        let compactions: Vec<_> = d
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Check { compact: true, .. }))
            .collect();
        assert_eq!(compactions.len(), 1, "{compactions:?}");
        assert!(compactions[0].0 >= 600, "{compactions:?}");
    }

    #[test]
    fn taking_over_runs_a_forced_pass_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        run(&mut s, t0, 0, 20, 9, 5);
        assert_eq!(s.tick(t0 + secs(21), 9, 5), Decision::Wait);
        s.again();
        assert_eq!(
            s.tick(t0 + secs(22), 9, 5),
            Decision::Pass {
                ring: 9,
                force: true,
                compact: false
            }
        );
    }

    #[test]
    fn failed_pass_is_retried_after_retry_after() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::default());
        for i in 0..10 {
            s.tick(t0 + secs(i), 9, 5);
        }
        assert!(matches!(s.tick(t0 + secs(10), 9, 5), Decision::Pass { .. }));
        s.failed(t0 + secs(10));
        let next = (11..60)
            .find(|&i| matches!(s.tick(t0 + secs(i), 9, 5), Decision::Pass { .. }))
            .expect("retried");
        assert_eq!(next, 20);
    }
}
