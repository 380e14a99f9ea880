//! How many fragments, and how many of them rebuild an object: chosen from the survival target
//! and the ring's size.
//!
//! Model (Glacier's): a fraction `f` of the ring's `N` nodes fails at the same moment; an
//! object's `n` fragments sit on `n` distinct nodes; it is lost when fewer than `k` fragments
//! survive. The surviving fragments then follow the hypergeometric distribution (`n` draws from
//! `N` nodes of which `N − ⌈fN⌉` survive); for an unknown or very large ring, the binomial with
//! `p = 1 − f`. The calculator picks the cheapest `n/k` (storage overhead) with
//! `P(loss) ≤ target`, `n ≤ max_n` and `n ≤ N`. A small ring ends up with few, large
//! fragments or full replication on every node — whatever the model says is cheapest.

/// The erasure-code parameters of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Fragments made.
    pub n: u16,
    /// Fragments needed to rebuild.
    pub k: u16,
}

impl Params {
    pub fn overhead(&self) -> f64 {
        f64::from(self.n) / f64::from(self.k)
    }
}

/// The calculator's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub params: Params,
    /// P(loss) of one object under the model, with these parameters.
    pub loss: f64,
    /// Whether the target could be met at all (if not, `params` is the best there is).
    pub meets_target: bool,
}

/// The most fragments per bundle (GF(2^8) Reed–Solomon allows 256 shards in all).
pub const MAX_N: u16 = 128;

/// ln(i!) for i = 0..=n.
fn log_factorials(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n + 1);
    v.push(0.0);
    let mut acc = 0.0;
    for i in 1..=n {
        acc += (i as f64).ln();
        v.push(acc);
    }
    v
}

/// P(fewer than `k` of `n` fragments survive) when `failed` of `ring` nodes fail.
pub fn loss_hypergeometric(ring: usize, failed: usize, n: usize, k: usize) -> f64 {
    if n > ring || failed > ring {
        return 1.0;
    }
    let survivors = ring - failed;
    let lf = log_factorials(ring);
    let ln_choose =
        |a: usize, b: usize| -> Option<f64> { (b <= a).then(|| lf[a] - lf[b] - lf[a - b]) };
    let Some(total) = ln_choose(ring, n) else {
        return 1.0;
    };
    let mut p = 0.0;
    for x in 0..k.min(n + 1) {
        if let (Some(a), Some(b)) = (ln_choose(survivors, x), ln_choose(failed, n - x)) {
            p += (a + b - total).exp();
        }
    }
    p.min(1.0)
}

/// P(fewer than `k` of `n` fragments survive) when each fails independently with
/// probability `f` (the limit of a large ring).
pub fn loss_binomial(f: f64, n: usize, k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if f <= 0.0 {
        return if k <= n { 0.0 } else { 1.0 };
    }
    if f >= 1.0 {
        return 1.0;
    }
    let lf = log_factorials(n);
    let (ls, lf_) = ((1.0 - f).ln(), f.ln());
    let mut p = 0.0;
    for x in 0..k.min(n + 1) {
        let ln = lf[n] - lf[x] - lf[n - x] + x as f64 * ls + (n - x) as f64 * lf_;
        p += ln.exp();
    }
    p.min(1.0)
}

/// Picks `n` and `k`. `ring = None` uses the binomial (large-ring) model.
pub fn choose(ring: Option<usize>, failure_fraction: f64, target: f64, max_n: u16) -> Choice {
    let max_n = usize::from(max_n.clamp(1, MAX_N));
    let max_n = ring.map_or(max_n, |r| max_n.min(r.max(1)));
    let failed = ring.map(|r| (r as f64 * failure_fraction).ceil() as usize);
    let loss = |n: usize, k: usize| match (ring, failed) {
        (Some(r), Some(fl)) => loss_hypergeometric(r, fl, n, k),
        _ => loss_binomial(failure_fraction, n, k),
    };
    let mut best: Option<(f64, Choice)> = None;
    let mut fallback: Option<Choice> = None;
    for n in 1..=max_n {
        // The largest k that meets the target (loss grows with k).
        let (mut lo, mut hi) = (1usize, n);
        if loss(n, 1) > target {
            let c = Choice {
                params: Params { n: n as u16, k: 1 },
                loss: loss(n, 1),
                meets_target: false,
            };
            if fallback.is_none_or(|f| c.loss < f.loss) {
                fallback = Some(c);
            }
            continue;
        }
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if loss(n, mid) <= target {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        let c = Choice {
            params: Params {
                n: n as u16,
                k: lo as u16,
            },
            loss: loss(n, lo),
            meets_target: true,
        };
        let overhead = c.params.overhead();
        if best.is_none_or(|(o, _)| overhead < o - 1e-12) {
            best = Some((overhead, c));
        }
    }
    best.map(|(_, c)| c).or(fallback).unwrap_or(Choice {
        params: Params { n: 1, k: 1 },
        loss: 1.0,
        meets_target: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glacier_and_cheaper_codes_for_a_large_ring() {
        // ePOST's Glacier: 48 fragments, any 5, for 60 % simultaneous failure at 1e-6.
        let c = choose(None, 0.6, 1e-6, 48);
        assert_eq!(c.params, Params { n: 48, k: 5 });
        assert!(c.loss <= 1e-6 && c.meets_target);
        // More fragments per bundle cost less for the same promise (DESIGN.md: ≈5.6×, ≈4.9×).
        let c = choose(None, 0.6, 1e-6, 96);
        assert_eq!(c.params, Params { n: 95, k: 17 });
        let c = choose(None, 0.6, 1e-6, 128);
        assert_eq!(c.params, Params { n: 127, k: 26 });
        assert!((c.params.overhead() - 4.88).abs() < 0.01);
    }

    #[test]
    fn a_finite_ring_is_at_least_as_safe_as_the_binomial_says() {
        // Drawing without replacement concentrates the survivors: for the same n and k the
        // hypergeometric loss is below the binomial one.
        for (n, k) in [(48, 5), (20, 4), (10, 2)] {
            let hg = loss_hypergeometric(1000, 600, n, k);
            let bin = loss_binomial(0.6, n, k);
            assert!(hg <= bin * 1.0001, "n={n} k={k}: {hg} vs {bin}");
        }
    }

    #[test]
    fn small_rings_fall_back_to_replication_or_few_fragments() {
        // Five nodes, three fail: two survive for sure, so 5 fragments of which any 2 rebuild
        // lose nothing.
        let c = choose(Some(5), 0.6, 1e-6, MAX_N);
        assert_eq!(c.params, Params { n: 5, k: 2 });
        assert_eq!(c.loss, 0.0);
        // Two nodes, both may... one fails (ceil(1.2) = 2: all fail): nothing helps.
        let c = choose(Some(2), 0.6, 1e-6, MAX_N);
        assert!(!c.meets_target);
        // One node that survives 0 % failure.
        let c = choose(Some(1), 0.0, 1e-6, MAX_N);
        assert_eq!(c.params, Params { n: 1, k: 1 });
    }

    #[test]
    fn probabilities_are_probabilities() {
        assert!((loss_binomial(0.6, 10, 11) - 1.0).abs() < 1e-9);
        assert_eq!(loss_binomial(0.6, 10, 0), 0.0);
        let p = loss_hypergeometric(100, 60, 48, 5);
        assert!(p > 0.0 && p < 1e-6);
    }
}
