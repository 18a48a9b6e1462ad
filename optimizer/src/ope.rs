//! Off-policy estimates of a target policy's value from logs of another policy: inverse
//! propensity scoring (IPS), self-normalised IPS (SNIPS) and doubly robust (DR), each with a
//! 95 % normal-approximation interval from the per-sample contributions (SNIPS by the delta
//! method).

/// One logged decision, as the estimators see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub reward: f64,
    /// Probability the logging policy gave the logged option.
    pub propensity: f64,
    /// Probability the target policy gives the logged option in the same context.
    pub target_prob: f64,
    /// Reward model's estimate for the logged option.
    pub q_logged: f64,
    /// Reward model's estimate under the target policy: Σₐ π(a|x) q̂(x, a).
    pub q_target: f64,
}

pub use nudge_records::audit::{Estimate, Estimates};

pub(crate) const Z95: f64 = 1.959_963_984_540_054;

pub(crate) fn mean_ci(c: &[f64]) -> Estimate {
    let n = c.len();
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            n,
        };
    }
    let m = c.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        c.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let half = Z95 * (var / n as f64).sqrt();
    Estimate {
        value: m,
        lo: m - half,
        hi: m + half,
        n,
    }
}

fn weight(s: &Sample) -> f64 {
    s.target_prob / s.propensity
}

pub fn ips(samples: &[Sample]) -> Estimate {
    mean_ci(&samples.iter().map(|s| weight(s) * s.reward).collect::<Vec<_>>())
}

pub fn snips(samples: &[Sample]) -> Estimate {
    let n = samples.len();
    let wsum: f64 = samples.iter().map(weight).sum();
    if n == 0 || wsum <= 0.0 {
        return mean_ci(&[]);
    }
    let v = samples.iter().map(|s| weight(s) * s.reward).sum::<f64>() / wsum;
    let wbar = wsum / n as f64;
    let infl: Vec<f64> = samples.iter().map(|s| weight(s) * (s.reward - v) / wbar).collect();
    let e = mean_ci(&infl);
    let half = (e.hi - e.lo) / 2.0;
    Estimate {
        value: v,
        lo: v - half,
        hi: v + half,
        n,
    }
}

pub fn doubly_robust(samples: &[Sample]) -> Estimate {
    mean_ci(
        &samples
            .iter()
            .map(|s| s.q_target + weight(s) * (s.reward - s.q_logged))
            .collect::<Vec<_>>(),
    )
}

pub fn effective_samples(samples: &[Sample]) -> f64 {
    let (sum, sq) = samples
        .iter()
        .map(weight)
        .fold((0.0, 0.0), |(s, q), w| (s + w, q + w * w));
    if sq > 0.0 {
        sum * sum / sq
    } else {
        0.0
    }
}

pub fn estimate(samples: &[Sample]) -> Estimates {
    Estimates {
        ips: ips(samples),
        snips: snips(samples),
        dr: doubly_robust(samples),
        effective_samples: effective_samples(samples),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> Vec<Sample> {
        // rewards 1,0,1,0; logging propensities ½,½,¼,¼; target probabilities 1,0,½,½.
        [(1.0, 0.5, 1.0), (0.0, 0.5, 0.0), (1.0, 0.25, 0.5), (0.0, 0.25, 0.5)]
            .into_iter()
            .map(|(reward, propensity, target_prob)| Sample {
                reward,
                propensity,
                target_prob,
                q_logged: 0.5,
                q_target: 0.5,
            })
            .collect()
    }

    #[test]
    fn estimators_equal_hand_computed_values() {
        let s = logs();
        // Weights 2, 0, 2, 2. IPS = (2 + 0 + 2 + 0) / 4 = 1; contributions 2,0,2,0 have sample
        // variance 4/3, so the half-width is 1.96 · √(4/3 / 4).
        let e = ips(&s);
        assert!((e.value - 1.0).abs() < 1e-12);
        assert!((e.hi - e.value - Z95 * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // SNIPS = 4 / 6.
        let e = snips(&s);
        assert!((e.value - 4.0 / 6.0).abs() < 1e-12);
        // Influence w(r − ⅔)/1.5: 2/9·... = [4/9, 0, 4/9, −8/9]; mean 0, variance (16+16+64)/81/3.
        let var: f64 = (16.0 + 16.0 + 64.0) / 81.0 / 3.0;
        assert!((e.hi - e.value - Z95 * (var / 4.0).sqrt()).abs() < 1e-12, "{e:?}");
        // DR: 0.5 + w(r − 0.5) = 1.5, 0.5, 1.5, −0.5 → 0.75.
        let e = doubly_robust(&s);
        assert!((e.value - 0.75).abs() < 1e-12);
        let var: f64 = (0.75f64.powi(2) * 2.0 + 0.25f64.powi(2) + 1.25f64.powi(2)) / 3.0;
        assert!((e.lo - (0.75 - Z95 * (var / 4.0).sqrt())).abs() < 1e-12);
        // Effective sample size: (2 + 0 + 2 + 2)² / (4 + 0 + 4 + 4) = 3.
        assert!((effective_samples(&s) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn on_policy_logs_estimate_the_observed_mean() {
        // Target = logging policy: every weight is 1, all three give the plain mean.
        let s: Vec<Sample> = [1.0, 0.0, 0.0, 1.0, 1.0]
            .iter()
            .map(|&r| Sample {
                reward: r,
                propensity: 0.2,
                target_prob: 0.2,
                q_logged: 0.3,
                q_target: 0.3,
            })
            .collect();
        let e = estimate(&s);
        for v in [e.ips.value, e.snips.value, e.dr.value] {
            assert!((v - 0.6).abs() < 1e-12);
        }
        assert!((e.effective_samples - 5.0).abs() < 1e-12);
    }
}
