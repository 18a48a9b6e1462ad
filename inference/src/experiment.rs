//! Experiments: A/B(/n) tests of what the conversation engine does — the rules that pick offers
//! and the policy that chooses among them — with a verdict operators may read at any time.
//!
//! **Who is in which arm.** The customer, not the turn: a customer's arm is a hash of the
//! experiment's salt and the customer's keyed pseudonym, so it is stable across turns, channels,
//! restarts and servers, and needs no table. Weights split the hash space.
//!
//! **Is the split what it should be?** A sample-ratio mismatch (customers per arm far from the
//! weights: a bug in who reaches the engine, a bot that retries one arm) invalidates every
//! comparison; [`srm_p_value`] is the χ² test of the observed counts against the weights, and
//! the console flags p < 0.001.
//!
//! **May I look now?** Operators look every hour; a fixed-horizon test looked at every hour
//! finds "significant" differences that are not there. [`sequential`] is a mixture sequential
//! probability ratio test (mSPRT, Johari et al., "Always valid inference", 2017) on the
//! difference of per-customer means: its p-value and confidence interval stay valid however
//! often and whenever one looks, and stopping as soon as p < α keeps the error rate at α.
//!
//! **Can it answer sooner?** Much of why one customer buys and another does not was there
//! before the experiment: regulars buy, browsers do not. [`cuped`] (Deng et al., "Improving the
//! sensitivity of online controlled experiments by utilizing pre-experiment data", 2013)
//! subtracts from each customer's outcome the part their own past predicts — what they bought in
//! the days before the experiment first reached them, which no arm can have changed — and
//! compares what is left. The expected difference is the same, its variance is lower by the
//! squared correlation of past and outcome, and the sequential test runs on the adjusted
//! values: the same verdict with fewer customers. The slope is estimated from the data (pooled
//! within arms), which at the sample sizes verdicts need costs nothing measurable in error rate.
//!
//! **Were the arms alike before?** The same past is a second check of the split: arms drawn
//! by a hash buy alike before the experiment, so a difference far beyond chance
//! ([`balance_p_value`]) means something sends one kind of customer to one arm (a channel that
//! reaches one arm only, a bot that retries) — the comparison is adjusted for what the
//! covariate sees, not for whatever else that sorts.
use nudge_policy::PolicyVersion;
use nudge_strategy::engine::Strategy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use std::sync::Arc;

/// What an arm's policy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ArmPolicy {
    /// Whatever the server serves (the learned policy, or the rules' priority without one).
    Serving,
    /// No learned policy: the highest-priority offer the rules allow.
    RulesOnly,
    /// A policy version stored on this server.
    Version(String),
}

/// One arm as the operator defined it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// Shown in the console and written to every event (`A`, `bundle`, `rl`).
    pub name: String,
    /// Share of customers, relative to the other arms' weights.
    pub weight: u32,
    /// A rules version from the console's history (None: the serving rules).
    #[serde(default)]
    pub rules_version: Option<u32>,
    /// The policy that chooses among the offers the rules allow.
    pub policy: ArmPolicy,
    /// How this arm words offers: titles that replace the catalog's for its customers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wording: Vec<Wording>,
}

/// An offer's titles as one arm shows them (an empty title keeps the catalog's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wording {
    /// The offer's id in the catalog.
    pub offer: String,
    /// Chinese title.
    #[serde(default)]
    pub title_zh: String,
    /// English title.
    #[serde(default)]
    pub title_en: String,
}

/// An experiment as the operator defined it. The first arm is the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Unique; written to every event of the experiment.
    pub id: String,
    /// What it tests, in the operator's words.
    pub name: String,
    /// Mixed into the customer hash: each experiment splits customers anew.
    pub salt: String,
    /// The arms; the first is the control the others are compared with.
    pub arms: Vec<ArmSpec>,
    /// When it started (Unix ms) and who started it.
    pub started_ms: u64,
    /// The operator who started it.
    pub started_by: String,
}

/// Why an experiment definition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The field, e.g. `arms[1].weight`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl ExperimentSpec {
    /// Checks what does not depend on the server's state (names, weights, arm count).
    pub fn check(&self) -> Result<(), SpecError> {
        let err = |field: String, reason: &str| SpecError {
            field,
            reason: reason.to_string(),
        };
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(err("name".into(), "1–200 bytes"));
        }
        if !(2..=8).contains(&self.arms.len()) {
            return Err(err("arms".into(), "an experiment has 2 to 8 arms"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in self.arms.iter().enumerate() {
            let ok = !a.name.is_empty()
                && a.name.len() <= 32
                && a.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(err(format!("arms[{i}].name"), "1–32 letters, digits, `-` or `_`"));
            }
            if !names.insert(&a.name) {
                return Err(err(format!("arms[{i}].name"), "two arms have this name"));
            }
            if a.weight == 0 || a.weight > 10_000 {
                return Err(err(format!("arms[{i}].weight"), "must be 1 to 10000"));
            }
            let mut worded = std::collections::HashSet::new();
            for (j, w) in a.wording.iter().enumerate() {
                let at = |f: &str| format!("arms[{i}].wording[{j}].{f}");
                if !worded.insert(&w.offer) {
                    return Err(err(at("offer"), "this offer is worded twice"));
                }
                if w.title_zh.is_empty() && w.title_en.is_empty() {
                    return Err(err(at("title_en"), "give a title (English, Chinese or both)"));
                }
                for (f, t) in [("title_zh", &w.title_zh), ("title_en", &w.title_en)] {
                    if t.chars().count() > 200 || t.chars().any(char::is_control) {
                        return Err(err(at(f), "at most 200 characters, on one line"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The arm `customer` (a keyed pseudonym) is in.
    pub fn arm_of(&self, customer: &str) -> usize {
        let weights: Vec<u32> = self.arms.iter().map(|a| a.weight).collect();
        assign(&self.salt, customer, &weights)
    }
}

/// The arm a unit falls in: `sha256(salt, 0, unit)` as a point in [0, 1), split by `weights`.
pub fn assign(salt: &str, unit: &str, weights: &[u32]) -> usize {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(unit.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    // Uniform in [0, total): the high 64 bits of hash × total.
    let point = ((u128::from(u64::from_be_bytes(first)) * u128::from(total)) >> 64) as u64;
    let mut acc = 0;
    for (i, &w) in weights.iter().enumerate() {
        acc += u64::from(w);
        if point < acc {
            return i;
        }
    }
    weights.len() - 1
}

/// The χ² test of `observed` units per arm against the split `weights` promises: the p-value of
/// a split at least this uneven by chance (1 with fewer than 2 arms or no units).
pub fn srm_p_value(observed: &[u64], weights: &[u32]) -> f64 {
    let n: u64 = observed.iter().sum();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if observed.len() < 2 || n == 0 || total <= 0.0 {
        return 1.0;
    }
    let chi2: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = n as f64 * f64::from(w) / total;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    match ChiSquared::new((observed.len() - 1) as f64) {
        Ok(d) => (1.0 - d.cdf(chi2)).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// Per-unit values of one arm, summarised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Units (customers).
    pub n: u64,
    /// Mean per unit.
    pub mean: f64,
    /// Variance per unit (n − 1 denominator).
    pub var: f64,
}

impl Sample {
    /// Summarises `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Sample {
        // Welford: one pass, stable.
        let (mut n, mut mean, mut m2) = (0u64, 0.0, 0.0);
        for x in values {
            n += 1;
            let d = x - mean;
            mean += d / n as f64;
            m2 += d * (x - mean);
        }
        let var = if n > 1 { m2 / (n - 1) as f64 } else { 0.0 };
        Sample { n, mean, var }
    }

    /// A 95 % fixed-horizon interval of the mean (normal approximation).
    pub fn interval95(&self) -> (f64, f64) {
        if self.n == 0 {
            return (0.0, 0.0);
        }
        let half = 1.959_963_984_540_054 * (self.var / self.n as f64).sqrt();
        (self.mean - half, self.mean + half)
    }
}

/// Per-unit pairs of one arm, summarised: `x` measured before the unit was exposed (a
/// covariate no arm can have changed), `y` the outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Paired {
    /// Units.
    pub n: u64,
    /// Mean of `x`.
    pub mean_x: f64,
    /// Mean of `y`.
    pub mean_y: f64,
    /// Σ(x − x̄)².
    sxx: f64,
    /// Σ(y − ȳ)².
    syy: f64,
    /// Σ(x − x̄)(y − ȳ).
    sxy: f64,
}

impl Paired {
    /// Summarises `(x, y)` pairs.
    pub fn of(pairs: impl IntoIterator<Item = (f64, f64)>) -> Paired {
        let mut p = Paired::default();
        for (x, y) in pairs {
            p.push(x, y);
        }
        p
    }

    /// Adds one unit (Welford's co-moments: one pass, stable).
    pub fn push(&mut self, x: f64, y: f64) {
        self.n += 1;
        let n = self.n as f64;
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        let dy = y - self.mean_y;
        self.mean_y += dy / n;
        self.sxx += dx * (x - self.mean_x);
        self.syy += dy * (y - self.mean_y);
        self.sxy += dx * (y - self.mean_y);
    }

    /// The outcomes alone.
    pub fn outcome(&self) -> Sample {
        self.sample(self.mean_y, self.syy)
    }

    /// The covariates alone.
    pub fn covariate(&self) -> Sample {
        self.sample(self.mean_x, self.sxx)
    }

    fn sample(&self, mean: f64, ss: f64) -> Sample {
        let var = if self.n > 1 { ss / (self.n - 1) as f64 } else { 0.0 };
        Sample { n: self.n, mean, var }
    }
}

/// The two-sided p-value of a difference in means at least this large between two samples
/// drawn alike (Welch's z, normal approximation): 1 with fewer than two units a side or no
/// variance.
pub fn balance_p_value(control: &Sample, treatment: &Sample) -> f64 {
    if control.n < 2 || treatment.n < 2 {
        return 1.0;
    }
    let se = (control.var / control.n as f64 + treatment.var / treatment.n as f64).sqrt();
    if se <= 0.0 || !se.is_finite() {
        return 1.0;
    }
    let z = ((treatment.mean - control.mean) / se).abs();
    match Normal::new(0.0, 1.0) {
        Ok(n) => (2.0 * (1.0 - n.cdf(z))).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// Two arms' outcomes less what each unit's covariate predicts: compare these instead of the
/// outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Adjusted {
    /// The control's adjusted outcomes.
    pub control: Sample,
    /// The treatment's.
    pub treatment: Sample,
    /// The slope of outcome on covariate, pooled within the two arms.
    pub theta: f64,
    /// The share of the variance of the difference of means that the adjustment removed.
    pub variance_reduction: f64,
}

/// CUPED: `y − θ(x − x̄)` per unit, θ the within-arm regression slope of `y` on `x` and `x̄`
/// the covariate's mean over both arms; summarised without revisiting the units. `None` when
/// there is nothing to adjust for (fewer than two units a side, a covariate that does not vary)
/// or the adjustment would not narrow the comparison; compare the outcomes as they are then.
pub fn cuped(control: &Paired, treatment: &Paired) -> Option<Adjusted> {
    if control.n < 2 || treatment.n < 2 {
        return None;
    }
    let sxx = control.sxx + treatment.sxx;
    if sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let theta = (control.sxy + treatment.sxy) / sxx;
    let (nc, nt) = (control.n as f64, treatment.n as f64);
    let mean_x = (control.mean_x * nc + treatment.mean_x * nt) / (nc + nt);
    let adjust = |p: &Paired| Sample {
        n: p.n,
        mean: p.mean_y - theta * (p.mean_x - mean_x),
        var: ((p.syy - 2.0 * theta * p.sxy + theta * theta * p.sxx) / (p.n - 1) as f64).max(0.0),
    };
    let (c, t) = (adjust(control), adjust(treatment));
    let raw = control.outcome().var / nc + treatment.outcome().var / nt;
    let adjusted = c.var / nc + t.var / nt;
    let variance_reduction = 1.0 - adjusted / raw;
    (raw > 0.0 && variance_reduction > 0.0).then_some(Adjusted {
        control: c,
        treatment: t,
        theta,
        variance_reduction,
    })
}

/// A treatment arm against the control, valid at any look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sequential {
    /// Treatment mean − control mean.
    pub diff: f64,
    /// The always-valid (1 − α) confidence interval of `diff`.
    pub low: f64,
    /// Its upper end.
    pub high: f64,
    /// The always-valid p-value of "no difference" (1/Λ, at most 1).
    pub p_value: f64,
}

/// The mSPRT of `treatment − control` with a normal mixture N(0, τ²) over the effect, τ = a fifth
/// of the control's mean (effects of about ±20 % are what a shop's offer experiments look for;
/// a smaller τ finds small effects sooner and large ones later), and the normal approximation of
/// the difference of means. `None` until each side has two units
/// and some variance.
pub fn sequential(control: &Sample, treatment: &Sample, alpha: f64) -> Option<Sequential> {
    if control.n < 2 || treatment.n < 2 {
        return None;
    }
    let v = control.var / control.n as f64 + treatment.var / treatment.n as f64;
    if v <= 0.0 || !v.is_finite() {
        return None;
    }
    let tau = (0.2 * control.mean.abs()).max(1e-9);
    let t2 = tau * tau;
    let d = treatment.mean - control.mean;
    let log_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
    let p_value = (-log_lambda).exp().min(1.0);
    let half = ((v * (v + t2) / t2) * (2.0 * (1.0 / alpha).ln() + ((v + t2) / v).ln())).sqrt();
    Some(Sequential {
        diff: d,
        low: d - half,
        high: d + half,
        p_value,
    })
}

/// An arm's policy, resolved.
#[derive(Clone)]
pub(crate) enum ArmChooser {
    /// What the server serves at the time of the turn.
    Serving,
    /// No policy: the rules' priority.
    RulesOnly,
    /// This version.
    Version(Arc<PolicyVersion>),
}

/// An experiment being served: each arm's strategy (its own rules over the serving catalog, or
/// the serving strategy itself) and its policy, resolved once when it starts and again when the
/// catalog or rules reload.
pub(crate) struct Running {
    pub spec: ExperimentSpec,
    /// The rules text of each arm that has its own.
    pub rules: Vec<Option<String>>,
    /// Each arm's strategy; `None`: the serving one.
    pub strategies: Vec<Option<Arc<Strategy>>>,
    pub choosers: Vec<ArmChooser>,
}

impl Running {
    /// The arm `customer` is in: its index, strategy (or `base`) and policy (`serving`
    /// resolved).
    pub fn arm(
        &self,
        customer: &str,
        base: &Arc<Strategy>,
        serving: Option<Arc<PolicyVersion>>,
    ) -> (usize, Arc<Strategy>, Option<Arc<PolicyVersion>>) {
        let i = self.spec.arm_of(customer);
        let strategy = self
            .strategies
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or_else(|| base.clone());
        let policy = match self.choosers.get(i) {
            Some(ArmChooser::RulesOnly) => None,
            Some(ArmChooser::Version(v)) => Some(v.clone()),
            Some(ArmChooser::Serving) | None => serving,
        };
        (i, strategy, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_customer_stays_in_one_arm_and_the_split_follows_the_weights() {
        let w = [1, 3];
        assert_eq!(assign("s", "cust-1", &w), assign("s", "cust-1", &w));
        let n = 40_000;
        let in_b = (0..n).filter(|i| assign("s", &format!("c{i}"), &w) == 1).count();
        let share = in_b as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
        // Another salt splits anew: about half of B's customers are in B again.
        let again = (0..n)
            .filter(|i| assign("s", &format!("c{i}"), &w) == 1 && assign("t", &format!("c{i}"), &w) == 1)
            .count();
        assert!(((again as f64 / in_b as f64) - 0.75).abs() < 0.02);
    }

    #[test]
    fn srm_flags_an_uneven_split_and_not_an_even_one() {
        // χ²(1) = 4.0 → p = 0.0455 (tables); 500/500 → 1.
        let p = srm_p_value(&[480, 520], &[1, 1]);
        assert!((p - 0.2059).abs() < 1e-3, "{p}");
        assert!((srm_p_value(&[450, 550], &[1, 1]) - 0.001_565).abs() < 1e-5);
        assert_eq!(srm_p_value(&[500, 500], &[1, 1]), 1.0);
        // 1:3 split observed as 1:3 is fine; observed 1:1 is a mismatch.
        assert!(srm_p_value(&[250, 750], &[1, 3]) > 0.99);
        assert!(srm_p_value(&[500, 500], &[1, 3]) < 1e-10);
    }

    #[test]
    fn samples_and_intervals() {
        let s = Sample::of([1.0, 0.0, 1.0, 0.0]);
        assert_eq!((s.n, s.mean), (4, 0.5));
        assert!((s.var - 1.0 / 3.0).abs() < 1e-12);
        let (lo, hi) = s.interval95();
        assert!((hi - lo - 2.0 * 1.959_963_984_540_054 * (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
    }

    /// Under no difference, an analyst who looks after every 50 customers and stops at the first
    /// p < 0.05 is wrong in at most 5 % of experiments with the sequential test — and far more
    /// often with a fixed-horizon z-test looked at the same way. With a real lift of 20 % the
    /// sequential test finds it.
    #[test]
    fn peeking_does_not_inflate_false_positives_but_a_real_lift_is_found() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (runs, looks, step) = (300, 40, 50);
        let (mut seq_false, mut z_false) = (0, 0);
        for _ in 0..runs {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (mut seq_hit, mut z_hit) = (false, false);
            for _ in 0..looks {
                for _ in 0..step {
                    a.push(f64::from(u8::from(rng.random_bool(0.2))));
                    b.push(f64::from(u8::from(rng.random_bool(0.2))));
                }
                let (sa, sb) = (Sample::of(a.iter().copied()), Sample::of(b.iter().copied()));
                if sequential(&sa, &sb, 0.05).is_some_and(|s| s.p_value < 0.05) {
                    seq_hit = true;
                }
                let se = (sa.var / sa.n as f64 + sb.var / sb.n as f64).sqrt();
                if se > 0.0 && ((sb.mean - sa.mean) / se).abs() > 1.96 {
                    z_hit = true;
                }
            }
            seq_false += usize::from(seq_hit);
            z_false += usize::from(z_hit);
        }
        let (seq_rate, z_rate) = (seq_false as f64 / runs as f64, z_false as f64 / runs as f64);
        eprintln!("false positives after {looks} looks: sequential {seq_rate:.3}, fixed-horizon z-test {z_rate:.3}");
        assert!(seq_rate <= 0.05, "sequential false positives {seq_rate}");
        assert!(z_rate > 0.12, "peeking at a z-test should mislead often: {z_rate}");

        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            a.push(f64::from(u8::from(rng.random_bool(0.2))));
            b.push(f64::from(u8::from(rng.random_bool(0.24))));
        }
        let s = sequential(&Sample::of(a), &Sample::of(b), 0.05).unwrap();
        assert!(s.p_value < 0.05 && s.low > 0.0 && (s.diff - 0.04).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn cuped_is_the_comparison_of_each_customer_adjusted_by_hand() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut draw = |n: usize, lift: f64| -> Vec<(f64, f64)> {
            (0..n)
                .map(|_| {
                    let x = f64::from(rng.random_range(0..4u8));
                    (x, 2.0 * x + lift + rng.random::<f64>())
                })
                .collect()
        };
        let (a, b) = (draw(500, 0.0), draw(700, 0.3));
        let (pa, pb) = (Paired::of(a.iter().copied()), Paired::of(b.iter().copied()));
        assert_eq!(pa.outcome(), Sample::of(a.iter().map(|p| p.1)));
        // Two passes: the pooled within-arm slope, then each unit less what its x predicts.
        fn centred(v: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
            let (mx, my) = (
                v.iter().map(|p| p.0).sum::<f64>() / v.len() as f64,
                v.iter().map(|p| p.1).sum::<f64>() / v.len() as f64,
            );
            v.iter().map(move |p| (p.0 - mx, p.1 - my))
        }
        let sxy: f64 = centred(&a).chain(centred(&b)).map(|(x, y)| x * y).sum();
        let sxx: f64 = centred(&a).chain(centred(&b)).map(|(x, _)| x * x).sum();
        let theta = sxy / sxx;
        let mean_x = a.iter().chain(&b).map(|p| p.0).sum::<f64>() / 1200.0;
        let by_hand = |v: &[(f64, f64)]| Sample::of(v.iter().map(|p| p.1 - theta * (p.0 - mean_x)));
        let adj = cuped(&pa, &pb).expect("x predicts y");
        for (got, want) in [(adj.control, by_hand(&a)), (adj.treatment, by_hand(&b))] {
            assert_eq!(got.n, want.n);
            assert!(
                (got.mean - want.mean).abs() < 1e-9 && (got.var - want.var).abs() < 1e-9,
                "{got:?} {want:?}"
            );
        }
        assert!((adj.theta - 2.0).abs() < 0.05, "{}", adj.theta);
        // y is 2x + noise of variance 1/12: the past explains almost all of it.
        assert!(adj.variance_reduction > 0.9, "{adj:?}");
        let s = sequential(&adj.control, &adj.treatment, 0.05).unwrap();
        assert!((s.diff - 0.3).abs() < 0.05 && s.p_value < 1e-6, "{s:?}");
        // No history that varies, or too few customers: nothing to adjust.
        let flat = Paired::of(a.iter().map(|p| (1.0, p.1)));
        assert_eq!(cuped(&flat, &flat), None);
        assert_eq!(cuped(&Paired::of([(1.0, 1.0)]), &pb), None);
    }

    /// Customers who bought before buy again: a quarter of them are regulars (70 % buy in a
    /// month, before and during the experiment), the rest rarely buy (2 %). Adjusting for the
    /// purchases before the experiment keeps the sequential test's error rate under α when one
    /// peeks after every 50 customers, and finds a 30 % lift with fewer customers.
    #[test]
    fn cuped_keeps_peeking_valid_and_finds_a_lift_sooner() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut customer = |lift: f64| -> (f64, f64) {
            let q = if rng.random_bool(0.25) { 0.7 } else { 0.02 };
            let before = f64::from(u8::from(rng.random_bool(q))) + f64::from(u8::from(rng.random_bool(q)));
            (before, f64::from(u8::from(rng.random_bool((q * lift).min(1.0)))))
        };
        let (runs, looks, step) = (300, 40, 50);
        // Customers seen when p first fell under α (None: never, within the looks).
        let mut first_hit = |lift: f64, adjusted: bool| -> Vec<Option<u64>> {
            (0..runs)
                .map(|_| {
                    let (mut a, mut b) = (Paired::default(), Paired::default());
                    for look in 1..=looks {
                        for _ in 0..step {
                            let (x, y) = customer(1.0);
                            a.push(x, y);
                            let (x, y) = customer(lift);
                            b.push(x, y);
                        }
                        let s = match (adjusted, cuped(&a, &b)) {
                            (true, Some(adj)) => sequential(&adj.control, &adj.treatment, 0.05),
                            _ => sequential(&a.outcome(), &b.outcome(), 0.05),
                        };
                        if s.is_some_and(|s| s.p_value < 0.05) {
                            return Some(2 * look * step);
                        }
                    }
                    None
                })
                .collect()
        };
        let rate = |hits: &[Option<u64>]| hits.iter().filter(|h| h.is_some()).count() as f64 / hits.len() as f64;
        let (null_raw, null_cuped) = (rate(&first_hit(1.0, false)), rate(&first_hit(1.0, true)));
        let (lift_raw, lift_cuped) = (first_hit(1.3, false), first_hit(1.3, true));
        // Customers to a verdict, a run that never got one counted at the last look.
        let median = |hits: &[Option<u64>]| {
            let mut n: Vec<u64> = hits.iter().map(|h| h.unwrap_or(2 * looks * step)).collect();
            n.sort_unstable();
            n[n.len() / 2]
        };
        eprintln!(
            "false positives after {looks} looks: unadjusted {null_raw:.3}, CUPED {null_cuped:.3}; \
             a 30 % lift found in {:.2} / {:.2} of runs, median customers to the verdict {} / {}",
            rate(&lift_raw),
            rate(&lift_cuped),
            median(&lift_raw),
            median(&lift_cuped)
        );
        assert!(null_cuped <= 0.05, "CUPED false positives {null_cuped}");
        assert!(rate(&lift_cuped) > rate(&lift_raw), "CUPED finds the lift more often");
        assert!(
            (median(&lift_cuped) as f64) < 0.8 * median(&lift_raw) as f64,
            "CUPED answers with fewer customers"
        );
    }

    #[test]
    fn arms_drawn_alike_are_balanced_and_a_sorted_split_is_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut arm = |n: usize, regulars: f64| {
            Paired::of((0..n).map(|_| (f64::from(u8::from(rng.random_bool(regulars))), 0.0))).covariate()
        };
        let (a, b) = (arm(2_000, 0.3), arm(2_000, 0.3));
        assert!(balance_p_value(&a, &b) > 0.01, "{}", balance_p_value(&a, &b));
        // z = 0.05 / √(2 · 0.21 / 2000) ≈ 3.45 → p ≈ 5.6e-4; further apart, far below.
        let c = arm(2_000, 0.4);
        assert!(balance_p_value(&a, &c) < 1e-6, "{}", balance_p_value(&a, &c));
        let s = |mean: f64| Sample {
            n: 2_000,
            mean,
            var: 0.21,
        };
        assert!((balance_p_value(&s(0.3), &s(0.35)) - 5.6e-4).abs() < 0.5e-4);
        assert_eq!(balance_p_value(&s(0.3), &Sample::default()), 1.0);
    }
}
